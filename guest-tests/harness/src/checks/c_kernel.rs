//! c. The kernel's CXL core and the accelerator module: modules load, the module
//! binds, and sysfs shows the memdev, endpoint port, decoders and the region.

use super::{need, Ctx};
use crate::kmsg;
use crate::report::Reporter;
use crate::sys::{self, CXL_DEVICES};
use cxl_regs::layout;
use std::path::Path;

pub const MODULE: &str = "cxl_accel_t2";
const CORE_MODULES: [&str; 4] = ["libnvdimm", "cxl_pmem", "cxl_acpi", "cxl_mem"];

fn attr(dev: &str, name: &str) -> Result<String, String> {
    sys::read_attr(format!("{CXL_DEVICES}/{dev}/{name}"))
}
fn num(dev: &str, name: &str) -> Result<u64, String> {
    sys::read_num(format!("{CXL_DEVICES}/{dev}/{name}"))
}

/// The CXL memdev (`memN`) whose parent is the PCI device at sysfs path `dev`.
pub fn memdev_of(dev: &str) -> Option<String> {
    let dev = sys::canonical(dev)?;
    sys::list_dir(CXL_DEVICES)
        .into_iter()
        .filter(|d| d.starts_with("mem"))
        .find(|d| {
            sys::canonical(format!("{CXL_DEVICES}/{d}"))
                .and_then(|p| p.parent().map(|q| q.to_path_buf()))
                .as_deref()
                == Some(dev.as_path())
        })
}

/// Decoders of port id `port` (names `decoder<port>.<i>`), sorted by index.
pub fn port_decoders(port: u32) -> Vec<String> {
    let pfx = format!("decoder{port}.");
    let mut v: Vec<(u32, String)> = sys::list_dir(CXL_DEVICES)
        .into_iter()
        .filter_map(|d| {
            d.strip_prefix(&pfx)
                .and_then(|i| i.parse().ok())
                .map(|i| (i, d.clone()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|x| x.1).collect()
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    // The CXL core will claim HDM/RAS in BAR0, which revokes existing user mappings
    // of those pages; map again afterwards.
    ctx.bars = Default::default();

    // c.1 loads the CXL core once, for every accelerator (checks::per_device hands
    // its result on).
    if ctx.index == 0 {
        core_modules(ctx, rep);
    }
    device(ctx, rep);
}

fn core_modules(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check(
        "c.1",
        "modprobe libnvdimm, cxl_pmem, cxl_acpi, cxl_mem; CXL root appears",
        || {
            // The firmware step must have committed the decoders first.
            let _ = need(&ctx.committed, "firmware step (b.4)")?;
            for m in CORE_MODULES {
                sys::modprobe(m, &[])?;
            }
            sys::wait_for(5000, || {
                Path::new(&format!("{CXL_DEVICES}/root0"))
                    .exists()
                    .then_some(())
            })
            .ok_or_else(|| format!("no root0 in {CXL_DEVICES}: {}", kmsg::tail(&["cxl"], 5)))?;
            ctx.cxl_modules = true;
            Ok(format!(
                "{CXL_DEVICES}: {}",
                sys::list_dir(CXL_DEVICES).join(" ")
            ))
        },
    );
}

/// c.2 to c.7, for each accelerator.
fn device(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check("c.2", "cxl_accel_t2 loads and binds the device", || {
        if !ctx.cxl_modules {
            return Err("prerequisite missing: CXL core modules (c.1)".into());
        }
        let bdf = need(&ctx.bdf, "device (a.1)")?;
        let mut params = Vec::new();
        if (ctx.cfg.vendor, ctx.cfg.device)
            != (layout::DEFAULT_VENDOR_ID, layout::DEFAULT_DEVICE_ID)
        {
            params.push(format!("vendor={:#x}", ctx.cfg.vendor));
            params.push(format!("device={:#x}", ctx.cfg.device));
        }
        sys::modprobe(MODULE, &params)?;
        let dev = ctx.dev_path()?;
        let drv = sys::wait_for(10_000, || {
            (sys::link_name(format!("{dev}/driver")).as_deref() == Some(MODULE)).then_some(())
        });
        if drv.is_none() {
            return Err(format!(
                "driver is {:?}; kernel: {}",
                sys::link_name(format!("{dev}/driver")),
                kmsg::tail(&[&bdf, "cxl"], 6)
            ));
        }
        let start = sys::read_num(format!("{dev}/cxl_region_start"))?;
        let size = sys::read_num(format!("{dev}/cxl_region_size"))?;
        ctx.module_range = Some((start, size));
        ctx.bound = true;
        Ok(format!(
            "{bdf}; module reports region HPA {start:#x}+{size:#x}"
        ))
    });

    rep.check(
        "c.3",
        "memdev of the device, bound to cxl_mem; module reports capacity and serial",
        || {
            if !ctx.bound {
                return Err("prerequisite missing: module bound (c.2)".into());
            }
            let dsn = need(&ctx.dsn, "DSN (a.2)")?;
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            let mem = memdev_of(&ctx.dev_path()?).ok_or("no memN whose parent is the device")?;
            ctx.memdev = Some(mem.clone());
            let drv = sys::link_name(format!("{CXL_DEVICES}/{mem}/driver"));
            if drv.as_deref() != Some("cxl_mem") {
                return Err(format!("{mem}: driver {drv:?}, expected cxl_mem"));
            }
            let devp = ctx.dev_path()?;
            let mcap = sys::read_num(format!("{devp}/cxl_capacity"))?;
            let mser = sys::read_num(format!("{devp}/cxl_serial"))?;
            if mcap != cap || mser != dsn {
                return Err(format!(
                    "module: capacity {mcap:#x} (DVSEC {cap:#x}), serial {mser:#x} (DSN {dsn:#x})"
                ));
            }
            // A DEVMEM memdev (7.3's cxl_memdev_type) has no serial or ram/size
            // attributes; a class memdev has them, and then they must agree.
            let mut extra = String::from("no memdev attributes (DEVMEM)");
            if let Ok(serial) = num(&mem, "serial") {
                let ram = num(&mem, "ram/size")?;
                if serial != dsn || ram != cap {
                    return Err(format!(
                        "{mem}: serial {serial:#x} (DSN {dsn:#x}), ram/size {ram:#x} (capacity {cap:#x})"
                    ));
                }
                extra = format!("serial {serial:#x}, ram/size {ram:#x}");
            }
            Ok(format!("{mem} (cxl_mem); module: capacity {mcap:#x}, serial {mser:#x}; {extra}"))
        },
    );

    rep.check("c.4", "endpoint port of the memdev", || {
        let mem = need(&ctx.memdev, "memdev (c.3)")?;
        let ep = sys::list_dir(CXL_DEVICES)
            .into_iter()
            .filter(|d| d.starts_with("endpoint"))
            .find(|d| {
                sys::link_name(format!("{CXL_DEVICES}/{d}/uport")).as_deref() == Some(mem.as_str())
            })
            .ok_or_else(|| {
                format!(
                    "no endpointN with uport {mem}: {}",
                    kmsg::tail(&["cxl", &mem], 5)
                )
            })?;
        let id: u32 = ep["endpoint".len()..]
            .parse()
            .map_err(|_| format!("odd name {ep}"))?;
        ctx.ep_id = Some(id);
        Ok(format!("{ep}, decoders {}", port_decoders(id).join(" ")))
    });

    rep.check("c.5", "endpoint decoder 0: target_type accelerator covering the committed range", || {
        let id = need(&ctx.ep_id, "endpoint port (c.4)")?;
        let (base, size) = need(&ctx.committed, "firmware commit (b.4)")?;
        let d = format!("decoder{id}.0");
        let got = (
            attr(&d, "target_type")?,
            num(&d, "start")?,
            num(&d, "size")?,
            attr(&d, "mode")?,
            num(&d, "dpa_resource")?,
            num(&d, "dpa_size")?,
        );
        let want = ("accelerator".to_string(), base, size, "ram".to_string(), 0, size);
        if got != want {
            return Err(format!("{d}: (target_type, start, size, mode, dpa_resource, dpa_size) = {got:x?}, want {want:x?}"));
        }
        let region = attr(&d, "region").unwrap_or_default();
        if !region.is_empty() {
            ctx.region = Some(region.clone());
        }
        Ok(format!("{d}: accelerator {base:#x}+{size:#x}, DPA 0+{size:#x}, region {region:?}"))
    });

    let switch = ctx.cfg.topology.switch();
    rep.check(
        "c.6",
        if switch {
            "switch and host bridge port decoders: target_type accelerator, same range"
        } else {
            "host bridge decoder: target_type accelerator, same range"
        },
        || {
            let id = need(&ctx.ep_id, "endpoint port (c.4)")?;
            let (base, size) = need(&ctx.committed, "firmware commit (b.4)")?;
            // The ports above the endpoint, nearest first: the sysfs path of
            // endpointN runs root0/portA[/portB]/endpointN.
            let ep = sys::canonical(format!("{CXL_DEVICES}/endpoint{id}"))
                .ok_or_else(|| format!("realpath endpoint{id}"))?;
            let ports: Vec<u32> = ep
                .ancestors()
                .skip(1)
                .filter_map(|p| p.file_name()?.to_str()?.strip_prefix("port")?.parse().ok())
                .collect();
            let want = if switch { 2 } else { 1 };
            if ports.len() != want {
                return Err(format!(
                    "endpoint{id} sits below ports {ports:?}, expected {want} (path {})",
                    ep.display()
                ));
            }
            let mut found = Vec::new();
            for port in ports {
                let d = port_decoders(port)
                    .into_iter()
                    .find(|d| num(d, "start").ok() == Some(base))
                    .ok_or_else(|| {
                        format!(
                            "port{port}: no decoder starts at {base:#x}: {:?}",
                            port_decoders(port)
                        )
                    })?;
                let tt = attr(&d, "target_type")?;
                let sz = num(&d, "size")?;
                if tt != "accelerator" || sz != size {
                    return Err(format!(
                        "{d}: target_type {tt}, size {sz:#x}, want accelerator {size:#x}"
                    ));
                }
                found.push(format!("{d}: accelerator {base:#x}+{sz:#x}"));
            }
            Ok(found.join("; "))
        },
    );

    rep.check(
        "c.7",
        "committed region of that size; HPA range equals the module's report",
        || {
            let (base, size) = need(&ctx.committed, "firmware commit (b.4)")?;
            let (mstart, msize) = need(&ctx.module_range, "module report (c.2)")?;
            let id = need(&ctx.ep_id, "endpoint port (c.4)")?;
            let region = match ctx.region.clone() {
                Some(r) => r,
                None => sys::list_dir(CXL_DEVICES)
                    .into_iter()
                    .filter(|d| d.starts_with("region"))
                    .find(|r| num(r, "resource").ok() == Some(base))
                    .ok_or("no region with that resource")?,
            };
            let got = (
                num(&region, "commit")?,
                num(&region, "resource")?,
                num(&region, "size")?,
            );
            if got != (1, base, size) {
                return Err(format!(
                    "{region}: (commit, resource, size) = {got:x?}, want (1, {base:#x}, {size:#x})"
                ));
            }
            let t0 = attr(&region, "target0")?;
            if t0 != format!("decoder{id}.0") {
                return Err(format!("{region}: target0 {t0}, want decoder{id}.0"));
            }
            if (mstart, msize) != (base, size) {
                return Err(format!(
                    "module reports {mstart:#x}+{msize:#x}, region {base:#x}+{size:#x}"
                ));
            }
            let locked = attr(&region, "locked").unwrap_or_default();
            ctx.region = Some(region.clone());
            Ok(format!(
                "{region}: commit 1, {base:#x}+{size:#x}, target0 {t0}, locked {locked}"
            ))
        },
    );
}
