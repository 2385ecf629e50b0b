//! b. The firmware step, before any CXL module loads: parse the CEDT, commit every
//! HDM decoder on each accelerator's path, as a BIOS does: the host bridge's
//! (through /dev/mem at its CHBS), a switch upstream port's (through its BAR, per its
//! Register Locator), and the endpoint's decoder 0 (through resource0), then HDM
//! Global Enable and DVSEC Mem_Enable.
//!
//! The plan (`plan`): each accelerator's region is half its capacity, placed in the
//! window of its host bridge after the regions of the accelerators before it on that
//! host bridge; it takes the host bridge's next HDM decoder (and the switch upstream
//! port's next), since decoders commit in index order (the kernel refuses a
//! committed decoder above an uncommitted one: drivers/cxl/core/hdm.c,
//! init_hdm_decoder, "Committed out of order").

use super::{need, Ctx};
use crate::cedt;
use crate::hdmprog::{self, DecoderState, Outcome, Program};
use crate::mmio::{MmioMap, Regs};
use crate::pcicfg::ConfigSpace;
use crate::report::{Outcome as CheckOutcome, Reporter};
use crate::sys;
use cxl_regs::dvsec;

const CEDT_PATH: &str = "/sys/firmware/acpi/tables/CEDT";
/// Modules that must not be loaded before the firmware step.
const CXL_MODULES: [&str; 4] = ["cxl_acpi", "cxl_mem", "cxl_pmem", "cxl_accel_t2"];

fn wait_1ms() {
    sys::sleep_ms(1);
}

/// Commit decoder `n` of the HDM Decoder Capability at `hdm` as firmware does:
/// `base` and `size`, one way, not locked, with `skip_or_targets`; device-coherent
/// (an accelerator's HDM-D) or host-only (a memory expander's HDM-H). Returns the
/// decoder as read back and " (was committed)" when it already was.
pub(crate) fn commit_decoder<R: Regs + ?Sized>(
    r: &R,
    hdm: u64,
    n: u32,
    base: u64,
    size: u64,
    skip_or_targets: u64,
    host_only: bool,
) -> Result<(DecoderState, &'static str), String> {
    let p = Program {
        base,
        size,
        iw: 0,
        ig: 0,
        host_only,
        lock_on_commit: false,
        skip_or_targets,
    };
    let (o, st) = hdmprog::commit(r, hdm, n, &p, &wait_1ms)?;
    let was = if o == Outcome::AlreadyCommitted {
        " (was committed)"
    } else {
        ""
    };
    Ok((st, was))
}

/// Place each accelerator's region and pick its decoders (see the module doc).
/// Accelerators whose host bridge or capacity is unknown (a failed a.3 or a.5) get
/// no plan; their b checks report the missing prerequisite.
pub fn plan(ctxs: &mut [Ctx]) {
    // (host bridge or upstream port, decoders taken, window bytes taken)
    let mut used: Vec<(String, u32, u64)> = Vec::new();
    let mut take = |key: &str, size: u64| -> (u32, u64) {
        let i = match used.iter().position(|u| u.0 == key) {
            Some(i) => i,
            None => {
                used.push((key.to_string(), 0, 0));
                used.len() - 1
            }
        };
        let got = (used[i].1, used[i].2);
        used[i].1 += 1;
        used[i].2 += size;
        got
    };
    for c in ctxs.iter_mut() {
        let (Some(hb), Some(cap)) = (c.host_bridge.clone(), c.capacity) else {
            continue;
        };
        let size = Ctx::region_size(cap);
        let (dec, off) = take(&hb, size);
        c.hb_decoder = Some(dec);
        c.window_offset = Some(off);
        if let Some(sw) = &c.switch {
            c.usp_decoder = Some(take(&sw.usp, size).0);
        }
    }
}

/// The HDM Decoder Capability of a PCI function (a switch upstream port, a
/// cxl-type3): the component block its Register Locator DVSEC names (CXL r3.1
/// §8.1.9), mapped through sysfs resourceN. Returns the mapping, the capability's
/// offset in it, and where it is, for reports.
pub(crate) fn component_hdm(bdf: &str) -> Result<(MmioMap, u64, String), String> {
    let p = format!("{}/{bdf}", sys::PCI_DEVICES);
    let cs = ConfigSpace::new(
        std::fs::read(format!("{p}/config")).map_err(|e| format!("{bdf} config: {e}"))?,
    );
    let rl = cs
        .find_dvsec(dvsec::CXL_VENDOR_ID, dvsec::ID_REGISTER_LOCATOR)
        .ok_or_else(|| format!("{bdf} has no Register Locator DVSEC"))?;
    let blocks = cs.register_blocks(rl);
    let &(bir, _, off) = blocks
        .iter()
        .find(|b| b.1 == dvsec::register_locator::BLOCK_COMPONENT)
        .ok_or_else(|| format!("{bdf}: no component block in {blocks:x?}"))?;
    let map = MmioMap::open_resource(&format!("{p}/resource{bir}"))?;
    let hdm = hdmprog::find_hdm(&map, off)?;
    Ok((map, hdm, format!("BAR{bir}+{hdm:#x}")))
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    if ctx.index > 0 {
        return run_device(ctx, rep);
    }
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
    run_device(ctx, rep);
}

/// b.2 to b.5, for each accelerator.
fn run_device(ctx: &mut Ctx, rep: &mut Reporter) {
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
            let offset = need(&ctx.window_offset, "firmware plan (a.3, a.5)")?;
            let want = offset + Ctx::region_size(capacity);
            // The host bridge's own window: one way, this host bridge its only target.
            let cfmws = c
                .cfmws
                .iter()
                .find(|w| w.targets == [chbs.uid])
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "no one-way CFMWS targets uid {} alone: {:x?}",
                        chbs.uid, c.cfmws
                    )
                })?;
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
                errs.push(format!(
                    "window size {:#x} < {want:#x} (this region and those before it)",
                    cfmws.size
                ));
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

    let switch = ctx.cfg.topology.switch();
    rep.check(
        "b.3",
        if switch {
            "host bridge (/dev/mem) and switch upstream port (its BAR) HDM decoders committed, Global Enable"
        } else {
            "host bridge HDM decoder committed (/dev/mem), Global Enable"
        },
        || {
            let chbs = need(&ctx.chbs, "CHBS (b.2)")?;
            let w = need(&ctx.cfmws, "CFMWS (b.2)")?;
            let port = need(&ctx.port_number, "root port number (a.3)")?;
            let capacity = need(&ctx.capacity, "capacity (a.5)")?;
            let n = need(&ctx.hb_decoder, "firmware plan (a.3, a.5)")?;
            let base = w.base + need(&ctx.window_offset, "firmware plan (a.3, a.5)")?;
            let size = Ctx::region_size(capacity);
            let map = MmioMap::open(
                "/dev/mem",
                chbs.base,
                cxl_regs::component::BLOCK_SIZE as usize,
            )?;
            let hdm = hdmprog::find_hdm(&map, 0)?;
            let cap = hdmprog::read_cap(&map, hdm)?;
            if cap.targets == 0 || n >= cap.decoders {
                return Err(format!(
                    "host bridge HDM capability {:#x}: {} decoders, {} targets; decoder {n} wanted",
                    cap.raw, cap.decoders, cap.targets
                ));
            }
            let (st, was) = commit_decoder(&map, hdm, n, base, size, port as u64, false)?;
            let g = hdmprog::global_enable(&map, hdm)?;
            let mut detail = format!(
                "host bridge: {} decoders; decoder {n} {:#x}+{:#x} target {port} ctrl {:#x}{was}; global {g:#x}",
                cap.decoders, st.base, st.size, st.ctrl,
            );
            if switch {
                let sw = ctx
                    .switch
                    .clone()
                    .ok_or("prerequisite missing: switch ports (a.3)")?;
                let m = need(&ctx.usp_decoder, "firmware plan (a.3, a.5)")?;
                let (umap, uhdm, at) = component_hdm(&sw.usp)?;
                let ucap = hdmprog::read_cap(&umap, uhdm)?;
                if m >= ucap.decoders {
                    return Err(format!(
                        "{detail}; upstream port {}: {} decoders, decoder {m} wanted",
                        sw.usp, ucap.decoders
                    ));
                }
                let (ust, uwas) =
                    commit_decoder(&umap, uhdm, m, base, size, sw.dsp_port as u64, false)?;
                let ug = hdmprog::global_enable(&umap, uhdm)?;
                detail.push_str(&format!(
                    "; upstream port {} ({at}): {} decoders; decoder {m} {:#x}+{:#x} target {} ctrl {:#x}{uwas}; global {ug:#x}",
                    sw.usp, ucap.decoders, ust.base, ust.size, sw.dsp_port, ust.ctrl
                ));
            }
            Ok(detail)
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

/// Commit the endpoint's decoder 0 (through resource0) as firmware does: at the
/// accelerator's place in its host bridge's window (the plan), half the capacity,
/// DPA skip 0, device-coherent. Records the range in `ctx.committed`. Also what the
/// lifecycle checks run again after a reset that clears CXL.mem state.
pub fn commit_endpoint_decoder(ctx: &mut Ctx) -> CheckOutcome {
    let w = need(&ctx.cfmws, "CFMWS (b.2)")?;
    let capacity = need(&ctx.capacity, "capacity (a.5)")?;
    let base = w.base + need(&ctx.window_offset, "firmware plan (a.3, a.5)")?;
    let (bir, comp) = ctx.block(dvsec::register_locator::BLOCK_COMPONENT)?;
    let size = Ctx::region_size(capacity);
    let bar0 = ctx.bar(bir)?;
    let hdm = hdmprog::find_hdm(bar0, comp)?;
    let cap = hdmprog::read_cap(bar0, hdm)?;
    let (st, was) = commit_decoder(bar0, hdm, 0, base, size, 0, false)?;
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
    let (ctrl, after) = mem_enable(&bdf, dv)?;
    Ok(format!(
        "HDM global control {g:#x}; DVSEC Control {ctrl:#06x} -> {after:#06x}"
    ))
}

/// Set Mem_Enable in the CXL Device DVSEC Control register at config offset `dv` of
/// `bdf` (CXL r3.1 §8.1.3.2), after HDM Global Enable; the device must then report
/// Memory_Active in Range 1 Size Low (§8.1.3.8.2). Returns Control before and after.
pub(crate) fn mem_enable(bdf: &str, dv: usize) -> Result<(u16, u16), String> {
    let ctrl_off = (dv + dvsec::device::CTRL) as u64;
    let cfg = format!("{}/{bdf}/config", sys::PCI_DEVICES);
    let read = |off: u64, len: usize| -> Result<u32, String> {
        let b = std::fs::read(&cfg).map_err(|e| format!("{cfg}: {e}"))?;
        let o = off as usize;
        let bytes = b
            .get(o..o + len)
            .ok_or_else(|| format!("{cfg}: {} bytes, no {len} at {off:#x}", b.len()))?;
        Ok(bytes.iter().rev().fold(0, |v, &x| v << 8 | x as u32))
    };
    let ctrl = read(ctrl_off, 2)? as u16;
    sys::config_write(
        bdf,
        ctrl_off,
        &(ctrl | dvsec::device::CTRL_MEM_ENABLE).to_le_bytes(),
    )?;
    let after = read(ctrl_off, 2)? as u16;
    if after & dvsec::device::CTRL_MEM_ENABLE == 0 {
        return Err(format!(
            "DVSEC Control reads {after:#06x} after setting Mem_Enable"
        ));
    }
    let lo = read((dv + dvsec::device::range_size_low(0)) as u64, 4)?;
    if lo & dvsec::device::RANGE_MEM_ACTIVE == 0 {
        return Err(format!("Range 1 Size Low {lo:#x}: Memory_Active clear"));
    }
    Ok((ctrl, after))
}
