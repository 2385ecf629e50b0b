//! b. The firmware step, before any CXL module loads: parse the CEDT, commit the
//! host bridge's HDM decoder 0 (through /dev/mem) and the endpoint's decoder 0
//! (through resource0), then HDM Global Enable and DVSEC Mem_Enable.

use super::{need, Ctx};
use crate::cedt;
use crate::hdmprog::{self, DecoderState, Outcome, Program};
use crate::mmio::{MmioMap, Regs};
use crate::report::{Outcome as CheckOutcome, Reporter};
use crate::sys;
use cxl_regs::dvsec;

const CEDT_PATH: &str = "/sys/firmware/acpi/tables/CEDT";
/// Modules that must not be loaded before the firmware step.
const CXL_MODULES: [&str; 4] = ["cxl_acpi", "cxl_mem", "cxl_pmem", "cxl_accel_t2"];

fn wait_1ms() {
    sys::sleep_ms(1);
}

/// Commit decoder 0 of the HDM Decoder Capability at `hdm` as firmware does: `base`
/// and `size`, one way, device-coherent, not locked, with `skip_or_targets`. Returns
/// the decoder as read back and " (was committed)" when it already was.
fn commit_decoder0<R: Regs + ?Sized>(
    r: &R,
    hdm: u64,
    base: u64,
    size: u64,
    skip_or_targets: u64,
) -> Result<(DecoderState, &'static str), String> {
    let p = Program {
        base,
        size,
        iw: 0,
        ig: 0,
        host_only: false,
        lock_on_commit: false,
        skip_or_targets,
    };
    let (o, st) = hdmprog::commit(r, hdm, 0, &p, &wait_1ms)?;
    let was = if o == Outcome::AlreadyCommitted {
        " (was committed)"
    } else {
        ""
    };
    Ok((st, was))
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check("b.1", "no CXL module loaded yet", || {
        let loaded: Vec<String> = sys::loaded_modules()
            .into_iter()
            .filter(|m| CXL_MODULES.contains(&m.as_str()))
            .collect();
        let devs = sys::list_dir(sys::CXL_DEVICES);
        if !loaded.is_empty() || !devs.is_empty() {
            return Err(format!("loaded {loaded:?}, /sys/bus/cxl/devices {devs:?}"));
        }
        Ok(String::new())
    });

    rep.check(
        "b.2",
        "CEDT: CHBS of the host bridge and a CFMWS that targets it",
        || {
            let capacity = need(&ctx.capacity, "capacity (a.5)")?;
            let t = std::fs::read(CEDT_PATH).map_err(|e| format!("{CEDT_PATH}: {e}"))?;
            let c = cedt::parse(&t)?;
            let chbs = match (ctx.hb_uid, c.chbs.as_slice()) {
                (Some(uid), list) => list.iter().find(|h| h.uid == uid).cloned(),
                (None, [one]) => Some(one.clone()),
                _ => None,
            }
            .ok_or_else(|| {
                format!(
                    "no CHBS for host bridge uid {:?} in {:x?}",
                    ctx.hb_uid, c.chbs
                )
            })?;
            if chbs.cxl_version != cedt::CHBS_VERSION_CXL20 {
                return Err(format!(
                    "CHBS {chbs:x?}: {}, expected a CXL 2.0 host bridge",
                    cedt::chbs_version_name(chbs.cxl_version)
                ));
            }
            if chbs.length < cxl_regs::component::BLOCK_SIZE as u64 {
                return Err(format!(
                    "CHBS {chbs:x?}: component block shorter than 64 KiB"
                ));
            }
            let want = Ctx::region_size(capacity);
            let cfmws = c
                .cfmws
                .iter()
                .find(|w| w.targets.contains(&chbs.uid))
                .cloned()
                .ok_or_else(|| format!("no CFMWS targets uid {}: {:x?}", chbs.uid, c.cfmws))?;
            let mut errs = Vec::new();
            if cfmws.ways() != Some(1) {
                errs.push(format!(
                    "window interleaves {:?} ways, expected 1",
                    cfmws.ways()
                ));
            }
            if cfmws.restrictions & cedt::RESTRICT_DEVICE_COHERENT == 0 {
                errs.push(format!(
                    "window restrictions {:#x} exclude device-coherent (Type-2) memory",
                    cfmws.restrictions
                ));
            }
            if cfmws.restrictions & cedt::RESTRICT_VOLATILE == 0 {
                errs.push(format!(
                    "window restrictions {:#x} exclude volatile memory",
                    cfmws.restrictions
                ));
            }
            if cfmws.size < want {
                errs.push(format!("window size {:#x} < region {want:#x}", cfmws.size));
            }
            let detail = format!(
                "CHBS uid {} base {:#x}; CFMWS base {:#x} size {:#x} restrictions {:#x} ({})",
                chbs.uid,
                chbs.base,
                cfmws.base,
                cfmws.size,
                cfmws.restrictions,
                cedt::restriction_names(cfmws.restrictions).join(",")
            );
            ctx.chbs = Some(chbs);
            ctx.cfmws = Some(cfmws);
            if errs.is_empty() {
                Ok(detail)
            } else {
                Err(format!("{}: {detail}", errs.join("; ")))
            }
        },
    );

    rep.check(
        "b.3",
        "host bridge HDM decoder 0 committed (/dev/mem), Global Enable",
        || {
            let chbs = need(&ctx.chbs, "CHBS (b.2)")?;
            let w = need(&ctx.cfmws, "CFMWS (b.2)")?;
            let port = need(&ctx.port_number, "root port number (a.3)")?;
            let capacity = need(&ctx.capacity, "capacity (a.5)")?;
            let map = MmioMap::open(
                "/dev/mem",
                chbs.base,
                cxl_regs::component::BLOCK_SIZE as usize,
            )?;
            let hdm = hdmprog::find_hdm(&map, 0)?;
            let cap = hdmprog::read_cap(&map, hdm)?;
            if cap.targets == 0 {
                return Err(format!(
                    "host bridge HDM capability {:#x}: no targets",
                    cap.raw
                ));
            }
            let size = Ctx::region_size(capacity);
            let (st, was) = commit_decoder0(&map, hdm, w.base, size, port as u64)?;
            let g = hdmprog::global_enable(&map, hdm)?;
            Ok(format!(
                "{} decoders; decoder 0 {:#x}+{:#x} target {port} ctrl {:#x}{was}; global {g:#x}",
                cap.decoders, st.base, st.size, st.ctrl,
            ))
        },
    );

    rep.check(
        "b.4",
        "endpoint HDM decoder 0 committed (resource0): DEVMEM, half the capacity",
        || commit_endpoint_decoder(ctx),
    );

    rep.check(
        "b.5",
        "endpoint HDM Global Enable, then DVSEC Mem_Enable",
        || enable_endpoint_memory(ctx),
    );
}

/// Commit the endpoint's decoder 0 (through resource0) as firmware does: the CFMWS
/// base, half the capacity, DPA skip 0, device-coherent. Records the range in
/// `ctx.committed`. Also what the lifecycle checks run again after a reset that
/// clears CXL.mem state.
pub fn commit_endpoint_decoder(ctx: &mut Ctx) -> CheckOutcome {
    let w = need(&ctx.cfmws, "CFMWS (b.2)")?;
    let capacity = need(&ctx.capacity, "capacity (a.5)")?;
    let (bir, comp) = ctx.block(dvsec::register_locator::BLOCK_COMPONENT)?;
    let size = Ctx::region_size(capacity);
    let bar0 = ctx.bar(bir)?;
    let hdm = hdmprog::find_hdm(bar0, comp)?;
    let cap = hdmprog::read_cap(bar0, hdm)?;
    let (st, was) = commit_decoder0(bar0, hdm, w.base, size, 0)?;
    ctx.committed = Some((st.base, st.size));
    Ok(format!(
        "{} decoders at BAR{bir}+{hdm:#x}; decoder 0 HPA {:#x}+{:#x} DPA skip 0 ctrl {:#x}{was}",
        cap.decoders, st.base, st.size, st.ctrl,
    ))
}

/// HDM Decoder Global Enable, then DVSEC Mem_Enable, on the endpoint (after
/// [`commit_endpoint_decoder`]).
pub fn enable_endpoint_memory(ctx: &mut Ctx) -> CheckOutcome {
    let (_, _) = need(&ctx.committed, "endpoint decoder commit (b.4)")?;
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    let dv = need(&ctx.dvsec_dev, "DVSEC id 0 (a.4)")?;
    let (bir, comp) = ctx.block(dvsec::register_locator::BLOCK_COMPONENT)?;
    let bar0 = ctx.bar(bir)?;
    let hdm = hdmprog::find_hdm(bar0, comp)?;
    let g = hdmprog::global_enable(bar0, hdm)?;
    let ctrl_off = (dv + dvsec::device::CTRL) as u64;
    let cfg = format!("{}/config", ctx.dev_path()?);
    let read16 = |off: u64| -> Result<u16, String> {
        let b = std::fs::read(&cfg).map_err(|e| format!("{cfg}: {e}"))?;
        let o = off as usize;
        Ok(u16::from_le_bytes([b[o], b[o + 1]]))
    };
    let ctrl = read16(ctrl_off)?;
    sys::config_write(
        &bdf,
        ctrl_off,
        &(ctrl | dvsec::device::CTRL_MEM_ENABLE).to_le_bytes(),
    )?;
    let after = read16(ctrl_off)?;
    if after & dvsec::device::CTRL_MEM_ENABLE == 0 {
        return Err(format!(
            "DVSEC Control reads {after:#06x} after setting Mem_Enable"
        ));
    }
    let lo_off = (dv + dvsec::device::range_size_low(0)) as u64;
    let b = std::fs::read(&cfg).map_err(|e| format!("{cfg}: {e}"))?;
    let o = lo_off as usize;
    let lo = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if lo & dvsec::device::RANGE_MEM_ACTIVE == 0 {
        return Err(format!("Range 1 Size Low {lo:#x}: Memory_Active clear"));
    }
    Ok(format!(
        "HDM global control {g:#x}; DVSEC Control {ctrl:#06x} -> {after:#06x}"
    ))
}
