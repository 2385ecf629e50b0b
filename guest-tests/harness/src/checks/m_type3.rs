//! m. QEMU's cxl-type3 beside the accelerator (topology with-type3), checked in the
//! phases of the run:
//! - m.1, after a: the memory expander sits on another root port of the
//!   accelerator's host bridge;
//! - m.2, in the firmware step (after b): its decoders are committed as a BIOS
//!   commits a memory expander's: the host bridge's next HDM decoder and the
//!   expander's decoder 0, host-only (HDM-H), over all its volatile memory, in the
//!   host bridge's window after the accelerator's region; HDM Global Enable and
//!   DVSEC Mem_Enable;
//! - m.3 and m.4, after c: cxl_pci binds it, its memdev shows its capacity, and
//!   the kernel assembles its RAM region beside the accelerator's, which stays
//!   as it was;
//! - m.5, at the end: data written through its region's HPA reads back (QEMU routes
//!   a window's accesses to cxl-type3 devices).
//!
//! A region that userspace creates (`cxl create-region`) cannot be committed in this
//! guest: the kernel refuses to commit one when the CPU cannot invalidate caches by
//! memory region, which x86 reports under any hypervisor
//! (drivers/cxl/core/region.c, cxl_region_invalidate_memregion: "Failed to
//! synchronize CPU cache state"). Firmware-committed regions do not need it.

use super::b_firmware::{commit_decoder, component_hdm, mem_enable};
use super::c_kernel::port_decoders;
use super::{need, Ctx};
use crate::cedt;
use crate::hdmprog;
use crate::mmio::{MmioMap, Regs};
use crate::pcicfg::{ConfigSpace, PCIE_TYPE_ROOT_PORT};
use crate::report::Reporter;
use crate::sys::{self, CXL_DEVICES, PCI_DEVICES};
use cxl_regs::{dvsec, pci};

/// Class code of a CXL memory device (CXL r3.1 §8.1.12.1: base 05h, sub 02h,
/// programming interface 10h).
const CLASS_CXL_MEMDEV: u64 = 0x05_02_10;
/// Seed of the m.5 pattern ("CXLT3PM5"): the word at HPA `a` is `a ^ SEED`.
const SEED: u64 = 0x4358_4c54_3350_4d35;

fn num(dev: &str, name: &str) -> Result<u64, String> {
    sys::read_num(format!("{CXL_DEVICES}/{dev}/{name}"))
}
fn attr(dev: &str, name: &str) -> Result<String, String> {
    sys::read_attr(format!("{CXL_DEVICES}/{dev}/{name}"))
}

/// What the checks found about the cxl-type3.
#[derive(Debug, Clone, Default)]
pub struct Type3 {
    pub bdf: Option<String>,
    /// Port number of its root port (the host bridge decoder's target).
    pub port_number: Option<u8>,
    /// HPA range its decoders were committed with (m.2).
    pub committed: Option<(u64, u64)>,
    /// Host bridge decoder index it took.
    pub hb_decoder: Option<u32>,
    pub memdev: Option<String>,
    pub region: Option<String>,
}

/// m.1 (after a).
pub fn placement(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check(
        "m.1",
        "QEMU's cxl-type3 (class 0x050210) on another root port of the accelerator's host bridge",
        || {
            let hb = need(&ctx.host_bridge, "accelerator's host bridge (a.3)")?;
            let rp = need(&ctx.root_port, "accelerator's root port (a.3)")?;
            let found: Vec<String> = sys::list_dir(PCI_DEVICES)
                .into_iter()
                .filter(|b| {
                    sys::read_num(format!("{PCI_DEVICES}/{b}/class")).ok() == Some(CLASS_CXL_MEMDEV)
                })
                .collect();
            let bdf = match found.as_slice() {
                [one] => one.clone(),
                other => return Err(format!("{} CXL memory devices: {other:?}", other.len())),
            };
            let real = sys::canonical(format!("{PCI_DEVICES}/{bdf}"))
                .ok_or_else(|| format!("realpath {bdf}"))?;
            let parent = real.parent().ok_or("no parent")?;
            let name = |p: Option<&std::path::Path>| {
                p.and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let (prp, phb) = (name(Some(parent)), name(parent.parent()));
            let pcs = ConfigSpace::new(
                std::fs::read(parent.join("config")).map_err(|e| format!("{prp} config: {e}"))?,
            );
            let port = pcs
                .find_cap(pci::CAP_ID_EXP)
                .and_then(|exp| pcs.u32(exp + pci::EXP_LNKCAP))
                .map(|l| (l >> pci::EXP_LNKCAP_PORT_SHIFT) as u8);
            ctx.type3.bdf = Some(bdf.clone());
            ctx.type3.port_number = port;
            if pcs.pcie_type() != Some(PCIE_TYPE_ROOT_PORT) || phb != hb || prp == rp {
                return Err(format!(
                    "{bdf} sits on {prp} (PCIe type {:?}) of {phb}; the accelerator on {rp} of {hb}",
                    pcs.pcie_type()
                ));
            }
            Ok(format!(
                "{bdf} on root port {prp} (port number {port:?}) of {phb}; accelerator on {rp}"
            ))
        },
    );
}

/// m.2 (the firmware step, after the accelerator's b checks).
pub fn firmware(ctx: &mut Ctx, rep: &mut Reporter) {
    let size = ctx.cfg.type3_size;
    rep.check(
        "m.2",
        "cxl-type3 decoders committed as firmware would: host bridge's next, the expander's decoder 0 host-only after the accelerator's region; Global Enable, Mem_Enable",
        || {
            let bdf = need(&ctx.type3.bdf, "cxl-type3 (m.1)")?;
            let port = need(&ctx.type3.port_number, "cxl-type3 root port number (m.1)")?;
            let chbs = need(&ctx.chbs, "CHBS (b.2)")?;
            let w: cedt::Cfmws = need(&ctx.cfmws, "CFMWS (b.2)")?;
            let (abase, asize) = need(&ctx.committed, "accelerator's commit (b.4)")?;
            let n = need(&ctx.hb_decoder, "firmware plan (a.3, a.5)")? + 1;
            let base = abase + asize;
            if base + size > w.base + w.size {
                return Err(format!(
                    "window {:#x}+{:#x} has no room for {size:#x} at {base:#x}",
                    w.base, w.size
                ));
            }
            if w.restrictions & cedt::RESTRICT_HOST_ONLY_COHERENT == 0 {
                return Err(format!("window restrictions {:#x} exclude host-only memory", w.restrictions));
            }
            let map = MmioMap::open("/dev/mem", chbs.base, cxl_regs::component::BLOCK_SIZE as usize)?;
            let hdm = hdmprog::find_hdm(&map, 0)?;
            let (hst, hwas) = commit_decoder(&map, hdm, n, base, size, port as u64, true)?;
            let (emap, ehdm, at) = component_hdm(&bdf)?;
            let (est, ewas) = commit_decoder(&emap, ehdm, 0, base, size, 0, true)?;
            let g = hdmprog::global_enable(&emap, ehdm)?;
            let cs = ConfigSpace::new(
                std::fs::read(format!("{PCI_DEVICES}/{bdf}/config")).map_err(|e| format!("{bdf} config: {e}"))?,
            );
            let dv = cs
                .find_dvsec(dvsec::CXL_VENDOR_ID, dvsec::ID_CXL_DEVICE)
                .ok_or_else(|| format!("{bdf} has no CXL Device DVSEC"))?;
            let (c0, c1) = mem_enable(&bdf, dv)?;
            ctx.type3.committed = Some((base, size));
            ctx.type3.hb_decoder = Some(n);
            Ok(format!(
                "host bridge decoder {n} {:#x}+{:#x} target {port} ctrl {:#x}{hwas}; {bdf} ({at}) decoder 0 ctrl {:#x}{ewas}; global {g:#x}; DVSEC Control {c0:#06x} -> {c1:#06x}",
                hst.base, hst.size, hst.ctrl, est.ctrl
            ))
        },
    );
}

/// m.3 and m.4 (after c).
pub fn kernel(ctx: &mut Ctx, rep: &mut Reporter) {
    let size = ctx.cfg.type3_size;
    rep.check(
        "m.3",
        &format!(
            "cxl_pci binds the cxl-type3; its memdev, bound to cxl_mem, has {} MiB of volatile capacity",
            size >> 20
        ),
        || {
            let bdf = need(&ctx.type3.bdf, "cxl-type3 (m.1)")?;
            sys::modprobe("cxl_pci", &[])?;
            let dev = format!("{PCI_DEVICES}/{bdf}");
            sys::wait_for(10_000, || {
                (sys::link_name(format!("{dev}/driver")).as_deref() == Some("cxl_pci")).then_some(())
            })
            .ok_or_else(|| {
                format!(
                    "driver {:?}; kernel: {}",
                    sys::link_name(format!("{dev}/driver")),
                    crate::kmsg::tail(&[&bdf, "cxl"], 5)
                )
            })?;
            let mem = sys::wait_for(10_000, || {
                super::c_kernel::memdev_of(&dev).filter(|d| {
                    sys::link_name(format!("{CXL_DEVICES}/{d}/driver")).as_deref() == Some("cxl_mem")
                })
            })
            .ok_or_else(|| format!("no memN of {bdf} bound to cxl_mem: {}", crate::kmsg::tail(&["cxl"], 5)))?;
            ctx.type3.memdev = Some(mem.clone());
            let ram = num(&mem, "ram/size")?;
            if ram != size {
                return Err(format!("{mem}: ram/size {ram:#x}, expected {size:#x}"));
            }
            Ok(format!("{mem}: ram/size {ram:#x}"))
        },
    );

    rep.check(
        "m.4",
        "the kernel assembles the cxl-type3's RAM region (expander) beside the accelerator's, which is untouched",
        || {
            let mem = need(&ctx.type3.memdev, "cxl-type3 memdev (m.3)")?;
            let (base, tsize) = need(&ctx.type3.committed, "cxl-type3 commit (m.2)")?;
            let n = need(&ctx.type3.hb_decoder, "cxl-type3 commit (m.2)")?;
            let (abase, asize) = need(&ctx.committed, "accelerator's commit (b.4)")?;
            let aregion = need(&ctx.region, "accelerator's region (c.7)")?;
            // The region whose HPA is the expander's, once the kernel has assembled it.
            let region = sys::wait_for(5000, || {
                sys::list_dir(CXL_DEVICES)
                    .into_iter()
                    .filter(|d| d.starts_with("region"))
                    .find(|r| num(r, "resource").ok() == Some(base))
            })
            .ok_or_else(|| format!("no region at {base:#x}: {}", crate::kmsg::tail(&["cxl", "region"], 6)))?;
            ctx.type3.region = Some(region.clone());
            let mut errs = Vec::new();
            let got = (num(&region, "commit")?, num(&region, "size")?, attr(&region, "mode").unwrap_or_default());
            if got != (1, tsize, "ram".to_string()) {
                errs.push(format!("{region} (commit, size, mode) = {got:x?}, want (1, {tsize:#x}, ram)"));
            }
            // Its endpoint decoder is the expander's decoder 0 (decoderK.0 of endpointK,
            // whose uport is the memdev), host-only.
            let t0 = attr(&region, "target0")?;
            let ep = t0
                .strip_prefix("decoder")
                .and_then(|d| d.strip_suffix(".0"))
                .map(|k| format!("endpoint{k}"))
                .unwrap_or_default();
            let uport = sys::link_name(format!("{CXL_DEVICES}/{ep}/uport"));
            let ttype = attr(&t0, "target_type").unwrap_or_default();
            if ep.is_empty() || ttype != "expander" || uport.as_deref() != Some(mem.as_str()) {
                errs.push(format!("{region}/target0 {t0}: target_type {ttype:?}, endpoint of {uport:?}, want decoder 0 of {mem}'s endpoint, expander"));
            }
            // The host bridge routes it with decoder n, the accelerator's with the one
            // before; both on the same port.
            let hb_port = sys::canonical(format!("{CXL_DEVICES}/{t0}"))
                .and_then(|p| {
                    p.ancestors()
                        .filter_map(|a| a.file_name()?.to_str()?.strip_prefix("port")?.parse::<u32>().ok())
                        .next()
                })
                .ok_or_else(|| format!("no port above {t0}"))?;
            let decs = port_decoders(hb_port);
            let find = |start: u64| decs.iter().find(|d| num(d, "start").ok() == Some(start)).cloned();
            let (tdec, adec) = (find(base), find(abase));
            let want_t = format!("decoder{hb_port}.{n}");
            let want_a = format!("decoder{hb_port}.{}", n - 1);
            if tdec.as_deref() != Some(want_t.as_str()) || attr(&want_t, "target_type").as_deref() != Ok("expander") {
                errs.push(format!("expander's host bridge decoder {tdec:?}, want {want_t} (expander)"));
            }
            if adec.as_deref() != Some(want_a.as_str()) || attr(&want_a, "target_type").as_deref() != Ok("accelerator") {
                errs.push(format!("accelerator's host bridge decoder {adec:?}, want {want_a} (accelerator)"));
            }
            let acc = (num(&aregion, "commit")?, num(&aregion, "resource")?, num(&aregion, "size")?);
            if acc != (1, abase, asize) {
                errs.push(format!("accelerator's {aregion} now (commit, resource, size) = {acc:x?}"));
            }
            let detail = format!(
                "{region} {base:#x}+{tsize:#x} via {want_t} ({t0}); accelerator's {aregion} {abase:#x}+{asize:#x} via {want_a}, commit 1"
            );
            if errs.is_empty() {
                Ok(detail)
            } else {
                Err(format!("{}: {detail}", errs.join("; ")))
            }
        },
    );
}

/// m.5 (at the end).
pub fn data(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check(
        "m.5",
        "a pattern written through the cxl-type3 region's HPA (/dev/mem) reads back",
        || {
            let region = need(&ctx.type3.region, "cxl-type3 region (m.4)")?;
            let (start, size) = need(&ctx.type3.committed, "cxl-type3 commit (m.2)")?;
            let len = 4096u64;
            let mut at = Vec::new();
            for off in [0, size - len] {
                let m = MmioMap::open("/dev/mem", start + off, len as usize)?;
                let word = |i: u64| (start + off + 8 * i) ^ SEED;
                for i in 0..len / 8 {
                    m.write64(8 * i, word(i));
                }
                if let Some(i) = (0..len / 8).find(|&i| m.read64(8 * i) != word(i)) {
                    return Err(format!(
                        "{region}: HPA {:#x} reads {:#x}, wrote {:#x}",
                        start + off + 8 * i,
                        m.read64(8 * i),
                        word(i)
                    ));
                }
                at.push(format!("{:#x}", start + off));
            }
            Ok(format!("{region}: 4 KiB at HPA {}", at.join(", ")))
        },
    );
}
