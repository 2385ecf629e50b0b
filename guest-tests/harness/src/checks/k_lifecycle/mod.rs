//! k. Lifecycle (issue 11): what ndctl's test/cxl-type2.sh checks on the kernel's
//! `cxl_test` mock, on this PCI device, with the guest's cxl-cli, then resets, a
//! hot-unplug and a logical removal.
//!
//! Each step is one function. After each, the kernel log of the step holds no
//! `WARNING`, `BUG` or `Call Trace` (ndctl's check_dmesg), or the step fails. A step
//! the kernel refuses (a reset method, say) is a `skip` with the kernel's errno; a
//! step that fails exactly as a documented kernel defect makes it fail is an `xfail`
//! (see `report`). The group runs last and leaves the device attached, with the data
//! of checks g and j in device memory.
//!
//! - k.1 the kernel log since boot is clean;
//! - k.2, k.3 driver unbind: the region, the memdev and the binding are gone and the
//!   module's remove path ran; bind: the region is back at the same HPA;
//! - k.4 to k.8 `cxl disable-region` hides the region (listed with `-i`);
//!   `destroy-region` and `commit` = 0 are refused and it stays listed;
//!   `disable-memdev` is refused; `enable-region` brings it back;
//! - k.9, k.10 the root decoder's `delete_region`: absent on a Type-2-only window;
//!   where the window also takes Type-3 memory, a write of the attached region's
//!   name; then a rebind re-assembles the region;
//! - k.11 to k.13 the memdev's port (the host bridge) `cxl disable-port -f`, then
//!   `enable-port` and a bind: the region is back (or the known 7.3 defect, and the
//!   state is recovered by reloading cxl_acpi);
//! - k.14, k.15 FLR with the driver unbound (decoder 0 locked, CONFIG_LOCK set):
//!   CXL.mem state and device memory untouched (CXL r3.1 §9.5); rebind;
//! - k.16, k.17 secondary bus reset (`cxl_bus`): CXL.mem state cleared (§9.1,
//!   §9.2); the firmware step again, rebind;
//! - k.18 to k.20 CXL Reset through the DVSEC (§9.7): Reset Complete within the
//!   advertised timeout, unlocked decoders uncommitted, memory kept; with Mem Clr, a
//!   locked decoder kept and memory zeroed; the firmware step again, rebind;
//! - k.21, k.22 hot-unplug and re-plug by the host (QMP device_del, device_add on the
//!   same backend socket; `cxltest.hotplug=on`, scripts/run-vm --hotplug);
//! - k.23, k.24 logical hot-removal (sysfs `remove`) and rescan.

mod device;
mod kernel;

use super::{b_firmware, c_kernel, g_bar2, need, Ctx};
use crate::cfgsave::SavedConfig;
use crate::kmsg::{self, Kmsg};
use crate::report::{NotPassed, Reporter, StepOutcome, Verdict};
use crate::sys::{self, CXL_DEVICES};
use cxl_regs::dvsec::device as dev;
use cxl_regs::hdm;
use kernel::{bind, bound, unbind, wait_attached, wait_detached};

/// How long the kernel gets to attach or detach the device after a step.
const ATTACH_MS: u64 = 15_000;
/// How long the host gets to unplug or re-plug the device.
const HOTPLUG_MS: u64 = 90_000;

/// What the lifecycle steps share.
#[derive(Default)]
struct Life {
    kmsg: Option<Kmsg>,
    /// What the kernel logged during the current step.
    log: Vec<String>,
    /// The driver is bound and the region attached at the firmware's range: what
    /// most steps start from.
    attached: bool,
    region: Option<String>,
    memdev: Option<String>,
    /// The memdev's port, while it is disabled (k.11).
    port: Option<String>,
    /// The CXL Reset of k.18 worked.
    cxl_reset: bool,
    /// The host unplugged the device (k.21).
    unplugged: bool,
    /// Host requests made so far.
    requests: u32,
}

type Step = fn(&mut Ctx, &mut Life) -> StepOutcome;

impl Life {
    /// The kernel log of the current step, read up to now.
    fn log(&mut self) -> &[String] {
        if let Some(k) = self.kmsg.as_mut() {
            self.log.extend(k.read_new());
        }
        &self.log
    }

    fn logged(&mut self, needle: &str) -> bool {
        self.log().iter().any(|l| l.contains(needle))
    }

    /// Run `f` as check `id`; fail it if the kernel logged an alarm meanwhile.
    fn step(
        &mut self,
        ctx: &mut Ctx,
        rep: &mut Reporter,
        id: &str,
        title: &str,
        f: Step,
    ) -> Verdict {
        self.log.clear();
        rep.step(id, title, || {
            let r = f(ctx, self);
            if self.kmsg.is_none() {
                return Err("cannot read /dev/kmsg".into());
            }
            let found = kmsg::alarms(self.log());
            let alarms = found.join(" | ");
            if alarms.is_empty() {
                return r;
            }
            // Beside a cxl-type3 (topology with-type3), taking the shared host
            // bridge port down tears down the expander's RAM region too, and the
            // kernel cannot invalidate CPU caches by memory region under a hypervisor:
            // it WARNs in cxl_region_invalidate_memregion ("Failed to synchronize CPU
            // cache state", drivers/cxl/core/region.c) and goes on. Nothing else.
            let invalidate = "cxl_region_invalidate_memregion";
            if ctx.cfg.topology.type3()
                && found.iter().any(|a| a.contains(invalidate))
                && found
                    .iter()
                    .all(|a| a.contains(invalidate) || a.trim() == "Call Trace:")
            {
                if let Ok(d) = r {
                    return Err(NotPassed::KnownKernelIssue(format!(
                        "the cxl-type3's region went with the port, and the kernel WARNed that it \
                         cannot invalidate CPU caches by region under a hypervisor: {alarms}; \
                         otherwise ok: {d}"
                    )));
                }
            }
            let outcome = match r {
                Ok(d) => format!("otherwise ok: {d}"),
                Err(NotPassed::Fail(e)) => format!("and: {e}"),
                Err(NotPassed::Skip(e)) => format!("skipped: {e}"),
                Err(NotPassed::KnownKernelIssue(e)) => format!("known issue: {e}"),
            };
            Err(NotPassed::Fail(format!("kernel log: {alarms}; {outcome}")))
        })
    }

    fn need_attached(&self) -> Result<(), NotPassed> {
        if self.attached {
            Ok(())
        } else {
            Err("prerequisite missing: driver bound and region attached (an earlier k step)".into())
        }
    }

    /// Bind the driver and wait for the region at the firmware's range.
    fn attach(&mut self, ctx: &mut Ctx) -> Result<String, String> {
        let bdf = need(&ctx.bdf, "device (a.1)")?;
        let (base, size) = need(&ctx.committed, "firmware commit (b.4)")?;
        // the CXL core claims the HDM registers: user mappings go stale
        ctx.bars = Default::default();
        bind(&bdf)?;
        let a = wait_attached(&bdf, base, size, ATTACH_MS)?;
        self.attached = true;
        self.region = Some(a.region.clone());
        self.memdev = Some(a.memdev.clone());
        Ok(format!(
            "{} of {} at {base:#x}+{size:#x}",
            a.region, a.memdev
        ))
    }

    /// Wait until the region, the memdev and the binding are gone, and check that
    /// the module's remove path ran.
    fn detached(&mut self, ctx: &mut Ctx) -> Result<String, String> {
        let bdf = need(&ctx.bdf, "device (a.1)")?;
        let (base, _) = need(&ctx.committed, "firmware commit (b.4)")?;
        self.attached = false;
        ctx.bars = Default::default();
        wait_detached(&bdf, base, ATTACH_MS)?;
        let line = kernel::detached_line(&bdf);
        if !self.logged(&line) {
            return Err(format!(
                "the kernel log has no {line:?}: the module's remove path did not run"
            ));
        }
        Ok(format!(
            "{} and {} gone, module logged \"detached\"",
            self.region.as_deref().unwrap_or("region"),
            self.memdev.as_deref().unwrap_or("memdev")
        ))
    }

    /// Unbind the driver from an attached device.
    fn detach(&mut self, ctx: &mut Ctx) -> Result<String, String> {
        unbind(&need(&ctx.bdf, "device (a.1)")?)?;
        self.detached(ctx)
    }

    fn region(&self) -> Result<String, NotPassed> {
        self.region
            .clone()
            .ok_or_else(|| "prerequisite missing: region name".into())
    }
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    let mut life = Life {
        kmsg: Kmsg::open().ok(),
        ..Default::default()
    };
    // Checks c and i left the device attached; find the region as it is now.
    if let (Some(bdf), Some((base, size))) = (ctx.bdf.clone(), ctx.committed) {
        if let Ok(a) = wait_attached(&bdf, base, size, 0) {
            life.attached = true;
            life.region = Some(a.region);
            life.memdev = Some(a.memdev);
        }
    }
    let steps: [(&str, &str, Step); 24] = [
        ("k.1", "kernel log since boot: no WARNING, BUG or Call Trace", log_clean),
        ("k.2", "driver unbind: region, memdev and binding gone, remove path ran", unbind_driver),
        ("k.3", "driver bind: region back at the same HPA", bind_driver),
        ("k.4", "cxl disable-region: not listed, listed with -i", disable_region),
        ("k.5", "cxl destroy-region refused, region still listed with -i", destroy_region_refused),
        ("k.6", "echo 0 > commit refused, region still listed with -i", uncommit_refused),
        ("k.7", "cxl disable-memdev refused, memdev still listed", disable_memdev_refused),
        ("k.8", "cxl enable-region: listed again", enable_region),
        ("k.9", "root decoder delete_region: absent, or refused for the attached region", delete_region),
        ("k.10", "driver rebind: region at the same HPA", rebind),
        ("k.11", "cxl disable-port -f of the memdev's port: region, memdev and binding gone", disable_port),
        ("k.12", "cxl enable-port, driver bind: region back", enable_port),
        ("k.13", "region attached after the port cycle (reloading cxl_acpi if it was not)", after_port_cycle),
        ("k.14", "FLR with the driver unbound: locked decoder, Mem_Enable, CONFIG_LOCK and memory kept", flr),
        ("k.15", "driver bind after the FLR: region back, memory intact", bind_after_flr),
        ("k.16", "secondary bus reset (cxl_bus) with the driver unbound: CXL.mem state cleared", bus_reset),
        ("k.17", "firmware step again, driver bind: region back", firmware_and_bind),
        ("k.18", "CXL Reset (DVSEC): Reset Complete in time, unlocked decoders uncommitted, memory kept", cxl_reset),
        ("k.19", "CXL Reset with Mem Clr: locked decoder kept, memory zeroed", cxl_reset_mem_clr),
        ("k.20", "firmware step after the CXL Resets, driver bind: region back", firmware_and_bind),
        ("k.21", "hot-unplug by the host (QMP device_del): device removed, remove path ran", hot_unplug),
        ("k.22", "re-plug by the host (QMP device_add, same backend socket): power-on state, region back", hot_replug),
        ("k.23", "logical hot-removal (sysfs remove): device removed, remove path ran", sysfs_remove),
        ("k.24", "PCI rescan: device back, driver bound, region back", rescan),
    ];
    for (id, title, f) in steps {
        life.step(ctx, rep, id, title, f);
    }
}

// --- k.1 to k.3 ---------------------------------------------------------------------

fn log_clean(_: &mut Ctx, life: &mut Life) -> StepOutcome {
    let n = life.log().len();
    Ok(format!("{n} messages"))
}

fn unbind_driver(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    life.need_attached()?;
    Ok(life.detach(ctx)?)
}

fn bind_driver(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    Ok(life.attach(ctx)?)
}

// --- k.4 to k.8: ndctl's test_dev_removal --------------------------------------------

fn disable_region(_: &mut Ctx, life: &mut Life) -> StepOutcome {
    life.need_attached()?;
    let r = life.region()?;
    sys::run("cxl", &["disable-region", &r])?;
    if kernel::region_listed(&r, false)? {
        return Err(format!("{r} still in `cxl list -R`").into());
    }
    let idle = kernel::cxl_list(&["-R", "-i", "-r", &r])?;
    let state = idle
        .first()
        .and_then(|o| o.get("state"))
        .and_then(|s| s.as_str())
        .ok_or_else(|| format!("`cxl list -R -i` does not list {r} as disabled: {idle:?}"))?;
    Ok(format!("{r}: `cxl list -R -i` shows state {state}"))
}

fn destroy_region_refused(_: &mut Ctx, life: &mut Life) -> StepOutcome {
    let r = life.region()?;
    let refused = match sys::run("cxl", &["destroy-region", &r]) {
        Ok(out) => return Err(format!("cxl destroy-region {r} succeeded: {out}").into()),
        Err(e) => e,
    };
    if !kernel::region_listed(&r, true)? {
        return Err(format!("{r} no longer listed with -i").into());
    }
    let why = refused.lines().next().unwrap_or("").to_string();
    Ok(format!("{why}; {r} still listed"))
}

fn uncommit_refused(_: &mut Ctx, life: &mut Life) -> StepOutcome {
    let r = life.region()?;
    let commit = format!("{CXL_DEVICES}/{r}/commit");
    let why = match sys::write_attr(&commit, "0") {
        Ok(()) => return Err(format!("writing 0 to {commit} succeeded").into()),
        Err(e) => sys::errno(&e),
    };
    let now = sys::read_num(&commit)?;
    if now != 1 || !kernel::region_listed(&r, true)? {
        return Err(format!("{r}: commit reads {now}, listed with -i: no").into());
    }
    Ok(format!("{why}; commit still 1, {r} listed with -i"))
}

fn disable_memdev_refused(_: &mut Ctx, life: &mut Life) -> StepOutcome {
    let m = life
        .memdev
        .clone()
        .ok_or("prerequisite missing: memdev name")?;
    let refused = match sys::run("cxl", &["disable-memdev", &m]) {
        Ok(out) => return Err(format!("cxl disable-memdev {m} succeeded: {out}").into()),
        Err(e) => e,
    };
    let listed = kernel::cxl_list(&["-M"])?
        .iter()
        .any(|o| o.get("memdev").and_then(|v| v.as_str()) == Some(m.as_str()));
    if !listed {
        return Err(format!("{m} no longer in `cxl list -M`").into());
    }
    // The refusal is cxl-cli's own (it will not disable a memdev of an active
    // region); with -f it would go ahead and the kernel tears the device down.
    let why = refused.lines().next().unwrap_or("").to_string();
    Ok(format!("{why}; {m} still listed"))
}

fn enable_region(_: &mut Ctx, life: &mut Life) -> StepOutcome {
    let r = life.region()?;
    sys::run("cxl", &["enable-region", &r])?;
    if !kernel::region_listed(&r, false)? {
        return Err(format!("{r} not in `cxl list -R` after enable-region").into());
    }
    Ok(format!("{r} listed"))
}

// --- k.9, k.10: the root decoder's delete_region ---------------------------------------

fn delete_region(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    life.need_attached()?;
    let r = life.region()?;
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    let (base, size) = need(&ctx.committed, "firmware commit (b.4)")?;
    let w = need(&ctx.cfmws, "CFMWS (b.2)")?;
    let rd = sys::canonical(format!("{CXL_DEVICES}/{r}"))
        .and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .ok_or_else(|| format!("no parent of {r}"))?;
    let window = format!(
        "{rd} (CFMWS restrictions {:#x}: {})",
        w.restrictions,
        crate::cedt::restriction_names(w.restrictions).join(",")
    );
    let attr = format!("{CXL_DEVICES}/{rd}/delete_region");
    let type3 = w.restrictions & crate::cedt::RESTRICT_HOST_ONLY_COHERENT != 0;
    if !std::path::Path::new(&attr).exists() {
        if type3 {
            return Err(format!("{window} admits Type-3 memory but has no delete_region").into());
        }
        return Ok(format!("{window} has no delete_region"));
    }
    if !type3 {
        return Err(format!("{window} is Type-2-only but has delete_region").into());
    }
    if let Err(e) = sys::write_attr(&attr, &r) {
        return Ok(format!(
            "{window} has delete_region; writing {r} was refused: {}",
            sys::errno(&e)
        ));
    }
    // The kernel took the deletion: what is left of the attachment?
    let gone = kernel::region_at(base).is_none() && !kernel::region_listed(&r, true)?;
    let iomem = std::fs::read_to_string("/proc/iomem").unwrap_or_default();
    let reserved = iomem
        .lines()
        .any(|l| l.trim_end().ends_with(&format!(": {r}")));
    let dev = kernel::dev_path(&bdf);
    let held = sys::read_num(format!("{dev}/cxl_region_start")).ok();
    life.attached = false;
    if gone && bound(&bdf) && held == Some(base) && !reserved {
        return Err(NotPassed::KnownKernelIssue(format!(
            "{window} has delete_region, and writing {r} to it succeeded while {} held the region: \
             {r} is unregistered and /proc/iomem no longer reserves {base:#x}+{size:#x}, while the driver \
             stays bound and still holds that range (devm_cxl_probe_mem gave it). The same region refuses commit=0 (k.6, \
             CXL_REGION_F_LOCK); drivers/cxl/core/region.c delete_region_store does not look at that flag",
            c_kernel::MODULE
        )));
    }
    Err(format!(
        "writing {r} to {attr} succeeded: region gone {gone}, driver bound {}, module's start {held:x?}, \
         /proc/iomem reserves it {reserved}",
        bound(&bdf)
    )
    .into())
}

fn rebind(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    if !bound(&bdf) {
        return Err("prerequisite missing: driver bound (k.9)".into());
    }
    // after k.9 the region may be gone while the driver is bound; the unbind still
    // runs the remove path
    unbind(&bdf)?;
    let d = life.detached(ctx)?;
    let a = life.attach(ctx)?;
    Ok(format!("unbound ({d}); bound: {a}"))
}

// --- k.11 to k.13: ndctl's cycle_root_port ----------------------------------------------

fn disable_port(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    life.need_attached()?;
    let m = life
        .memdev
        .clone()
        .ok_or("prerequisite missing: memdev name")?;
    let ports = kernel::cxl_list(&["-m", &m, "-P"])?;
    let port = ports
        .first()
        .and_then(|o| o.get("port"))
        .and_then(|p| p.as_str())
        .map(String::from)
        .ok_or_else(|| format!("`cxl list -m {m} -P` names no port: {ports:?}"))?;
    sys::run("cxl", &["disable-port", &port, "-f"])?;
    life.port = Some(port.clone());
    let d = life.detached(ctx)?;
    Ok(format!("{port} disabled; {d}"))
}

fn enable_port(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    let port = life
        .port
        .clone()
        .ok_or("prerequisite missing: disabled port (k.11)")?;
    let id: u32 = port
        .strip_prefix("port")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("odd port name {port}"))?;
    sys::run("cxl", &["enable-port", &port])?;
    let attached = match life.attach(ctx) {
        Ok(a) => return Ok(format!("{port} enabled; {a}")),
        Err(e) => e,
    };
    // The 7.3 defect: the port's commit_end survives the disable, so the re-probed
    // port counts the decoder the firmware committed as out of order.
    let signature = format!("decoder{id}.0: Committed out of order");
    let committed =
        sys::read_attr(format!("{CXL_DEVICES}/{port}/decoders_committed")).unwrap_or_default();
    let decoders = c_kernel::port_decoders(id);
    let seen = format!(
        "{attached}; {port} has decoders [{}] and decoders_committed {}",
        decoders.join(" "),
        committed.trim()
    );
    if life.logged(&signature) && decoders.is_empty() {
        return Err(NotPassed::KnownKernelIssue(format!(
            "the re-enabled {port} logged \"{signature}\" and \"Failed to initialize decoder{id}.0\": \
             the decoder the firmware committed at index 0 stays committed while the port is disabled, \
             but {port}'s commit_end (0) survives the unbind (the region is locked, so no decoder reset \
             reaps it, and only cxl_port_alloc sets it to -1), and drivers/cxl/core/hdm.c \
             init_hdm_decoder finds decoder 0 committed while it counts one committed decoder \
             already. {seen}"
        )));
    }
    Err(format!("{port} enabled, region not back: {seen}").into())
}

fn after_port_cycle(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    let (base, size) = need(&ctx.committed, "firmware commit (b.4)")?;
    if wait_attached(&bdf, base, size, 0).is_ok() {
        return Ok(format!("no reload needed: {}", life.attach(ctx)?));
    }
    // Only a new port object forgets the stale commit_end: cxl_acpi creates them.
    unbind(&bdf)?;
    sys::run("modprobe", &["-r", "cxl_acpi"])?;
    sys::run("modprobe", &["cxl_acpi"])?;
    sys::wait_for(5_000, || {
        std::path::Path::new(&format!("{CXL_DEVICES}/root0"))
            .exists()
            .then_some(())
    })
    .ok_or("no root0 after reloading cxl_acpi")?;
    Ok(format!("reloaded cxl_acpi; {}", life.attach(ctx)?))
}

// --- k.14 to k.17: FLR and secondary bus reset -----------------------------------------

fn flr(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    life.need_attached()?;
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    device::write_life_pattern(ctx)?;
    life.detach(ctx)?;
    // A firmware that locks its decoder, and locks the DVSEC
    let d0 = device::commit_decoder0(ctx, true)?;
    device::set_config_lock(ctx)?;
    let before = device::cxl_mem(ctx)?;
    if !(d0.committed() && d0.locked() && before.config_lock() && before.mem_enable()) {
        return Err(format!("set-up: {}", before.describe()).into());
    }
    let offered = kernel::reset_with(&bdf, "flr")?;
    ctx.bars = Default::default();
    let after = device::cxl_mem(ctx)?;
    if after != before {
        return Err(format!(
            "CXL.mem state changed: before {}; after {}",
            before.describe(),
            after.describe()
        )
        .into());
    }
    device::check_life_pattern(ctx)?;
    Ok(format!(
        "reset_method offered: {offered}; kept: {}; pattern at DPA {:#x} intact",
        after.describe(),
        super::LIFECYCLE_DPA
    ))
}

fn bind_after_flr(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    let a = life.attach(ctx)?;
    device::check_life_pattern(ctx)?;
    Ok(format!("{a}; pattern intact"))
}

fn bus_reset(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    life.need_attached()?;
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    device::write_life_pattern(ctx)?;
    life.detach(ctx)?;
    let before = device::cxl_mem(ctx)?;
    let (_, cap3) = device::capabilities(ctx)?;
    kernel::reset_with(&bdf, "cxl_bus")?;
    ctx.bars = Default::default();
    let after = device::cxl_mem(ctx)?;
    let mut errs = Vec::new();
    for (i, d) in after.decoders.iter().enumerate() {
        if d.ctrl & (hdm::CTRL_COMMITTED | hdm::CTRL_LOCK_ON_COMMIT) != 0 {
            errs.push(format!("decoder {i} ctrl {:#x}", d.ctrl));
        }
    }
    if after.global_enable() || after.mem_enable() || after.config_lock() {
        errs.push(format!(
            "global control {:#x}, DVSEC Control {:#06x}, Lock {:#06x}",
            after.global_control, after.control, after.lock
        ));
    }
    if !errs.is_empty() {
        return Err(format!("not at power-on values: {}", errs.join("; ")).into());
    }
    // Volatile HDM across a hot reset is what Capability3 says (CXL r3.1 §8.1.3.16).
    let mem = if cap3 & dev::CAP3_VOLATILE_HOT != 0 {
        device::check_life_pattern(ctx)?;
        "memory kept, as DVSEC Capability3 advertises"
    } else {
        "memory not checked (Capability3: not preserved)"
    };
    Ok(format!(
        "before: {}; after: decoders uncommitted and unlocked, HDM and Mem_Enable off, CONFIG_LOCK clear; {mem}",
        before.describe()
    ))
}

fn firmware_and_bind(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    if life.attached {
        return Err(NotPassed::Skip(
            "nothing to restore: the device is still attached (the reset steps before were skipped)"
                .into(),
        ));
    }
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    if bound(&bdf) {
        return Err("prerequisite missing: driver unbound".into());
    }
    ctx.bars = Default::default();
    // A decoder a CXL Reset kept (locked) stays as it is; otherwise commit it.
    let st = device::cxl_mem(ctx)?;
    let commit = match st.decoders.first() {
        Some(d) if d.committed() => format!("decoder 0 kept (ctrl {:#x})", d.ctrl),
        _ => b_firmware::commit_endpoint_decoder(ctx)?,
    };
    let enable = b_firmware::enable_endpoint_memory(ctx)?;
    Ok(format!("{commit}; {enable}; {}", life.attach(ctx)?))
}

// --- k.18 to k.20: CXL Reset --------------------------------------------------------------

/// Whether the device advertises CXL Reset (and Mem Clr, with `mem_clr`) in its
/// DVSEC CXL Capability (§8.1.3.1); a skip if not.
fn cxl_reset_capable(ctx: &Ctx, mem_clr: bool) -> Result<(), NotPassed> {
    let (cap, _) = device::capabilities(ctx)?;
    if cap & dev::CAP_CXL_RESET_CAPABLE == 0 {
        return Err(NotPassed::Skip(format!(
            "DVSEC CXL Capability {cap:#06x}: not CXL Reset Capable"
        )));
    }
    if mem_clr && cap & dev::CAP_CXL_RESET_MEM_CLR_CAPABLE == 0 {
        return Err(NotPassed::Skip(format!(
            "DVSEC CXL Capability {cap:#06x}: not CXL Reset Mem Clr Capable"
        )));
    }
    Ok(())
}

/// Unbind and save the config space, before a CXL Reset.
fn before_cxl_reset(ctx: &mut Ctx, life: &mut Life) -> Result<SavedConfig, NotPassed> {
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    if life.attached {
        life.detach(ctx)?;
    }
    ctx.bars = Default::default();
    Ok(SavedConfig::take(&bdf)?)
}

/// Check how a CXL Reset ended (§8.1.3.5): Reset Complete, no Reset Error, within
/// the CXL Reset Timeout the device advertises (§8.1.3.1).
fn reset_ended_well(r: &device::ResetReport) -> Result<String, String> {
    let done = r.status2 & dev::STATUS2_CXL_RESET_COMPLETE != 0;
    let error = r.status2 & dev::STATUS2_CXL_RESET_ERROR != 0;
    if !done || error || r.took > r.timeout {
        return Err(format!(
            "Status2 {:#06x} after {} ms (Reset Complete {done}, Reset Error {error}; timeout {} ms)",
            r.status2,
            r.took.as_millis(),
            r.timeout.as_millis()
        ));
    }
    let mut steps = r.steps.clone();
    steps.push(format!(
        "Reset Complete after {:.1} ms of the {} ms advertised",
        r.took.as_secs_f64() * 1e3,
        r.timeout.as_millis()
    ));
    Ok(steps.join(", "))
}

fn cxl_reset(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    cxl_reset_capable(ctx, false)?;
    life.need_attached()?;
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    // 7.3 offers no CXL Reset method; a kernel that does would list it here.
    let methods = sys::read_attr(format!("{}/reset_method", kernel::dev_path(&bdf)))?;
    device::write_life_pattern(ctx)?;
    let saved = before_cxl_reset(ctx, life)?;
    let before = device::cxl_mem(ctx)?;
    let r = device::cxl_reset(ctx, &saved, false)?;
    ctx.bars = Default::default();
    let ended = reset_ended_well(&r)?;
    let after = device::cxl_mem(ctx)?;
    let mut errs = Vec::new();
    for (i, (b, a)) in before.decoders.iter().zip(&after.decoders).enumerate() {
        // CXL r3.1 §9.7 and Table 8-1 (RWL): a decoder committed with Lock On
        // Commit keeps its programming; the others return to their defaults
        let want_committed = b.committed() && b.locked();
        if a.committed() != want_committed {
            errs.push(format!("decoder {i} ctrl {:#x} -> {:#x}", b.ctrl, a.ctrl));
        }
    }
    if after.global_enable() {
        errs.push(format!("HDM global control {:#x}", after.global_control));
    }
    // Mem_Enable is RWL: kept under CONFIG_LOCK (§8.1.3.6), cleared otherwise
    let want_mem = before.config_lock() && before.mem_enable();
    if after.mem_enable() != want_mem {
        errs.push(format!(
            "DVSEC Control {:#06x} -> {:#06x} (Lock {:#06x})",
            before.control, after.control, before.lock
        ));
    }
    if !errs.is_empty() {
        return Err(format!("after the CXL Reset: {}", errs.join("; ")).into());
    }
    device::check_life_pattern(ctx)?;
    life.cxl_reset = true;
    let kernel_method = if methods.split_whitespace().any(|m| m == "cxl_reset") {
        "the kernel offers cxl_reset too"
    } else {
        "the kernel offers no CXL Reset method"
    };
    Ok(format!(
        "{ended}; decoders uncommitted, HDM and Mem_Enable off; memory kept without Mem Clr; \
         reset_method: {methods} ({kernel_method})"
    ))
}

fn cxl_reset_mem_clr(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    cxl_reset_capable(ctx, true)?;
    if !life.cxl_reset {
        return Err("prerequisite missing: a CXL Reset that worked (k.18)".into());
    }
    let saved = before_cxl_reset(ctx, life)?;
    let cap = need(&ctx.capacity, "capacity (a.5)")?;
    let (_, size) = need(&ctx.committed, "firmware commit (b.4)")?;
    let d0 = device::commit_decoder0(ctx, true)?;
    device::write_life_pattern(ctx)?;
    // What earlier checks left for the host to find, saved to be written back
    let blocks: Vec<(u64, Vec<u8>)> = device::data_blocks(cap, size)
        .into_iter()
        .map(|dpa| device::read_block(ctx, dpa).map(|b| (dpa, b)))
        .collect::<Result<_, _>>()?;
    let r = device::cxl_reset(ctx, &saved, true);
    ctx.bars = Default::default();
    let mut errs = Vec::new();
    let ended = r
        .map_err(|e| errs.push(e))
        .and_then(|r| reset_ended_well(&r).map_err(|e| errs.push(e)));
    let after = device::cxl_mem(ctx)?;
    match after.decoders.first() {
        Some(a) if a.committed() && a.locked() && (a.base, a.size) == (d0.base, d0.size) => {}
        a => errs.push(format!("locked decoder 0 not kept: {a:x?}")),
    }
    let mut nonzero = Vec::new();
    for (dpa, _) in &blocks {
        let b = device::read_block(ctx, *dpa)?;
        if let Some(i) = b.iter().position(|&x| x != 0) {
            nonzero.push(format!("DPA {:#x} reads {:#04x}", dpa + i as u64, b[i]));
        }
    }
    // Put back what the host will look for, whatever happened
    for (dpa, b) in &blocks {
        ctx.bar2()?.write_bytes(*dpa, b);
    }
    if !nonzero.is_empty() {
        errs.push(format!("memory not zeroed: {}", nonzero.join(", ")));
    }
    match (ended, errs.is_empty()) {
        (Ok(e), true) => Ok(format!(
            "{e}; decoder 0 still committed and locked (ctrl {:#x}); {} blocks zeroed (DPA {}), then restored",
            after.decoders[0].ctrl,
            blocks.len(),
            blocks.iter().map(|b| format!("{:#x}", b.0)).collect::<Vec<_>>().join(",")
        )),
        _ => Err(errs.join("; ").into()),
    }
}

// --- k.21 to k.24: hot-unplug and logical removal ---------------------------------------

fn host_request(life: &mut Life, verb: &str) {
    life.requests += 1;
    crate::report::host_request(life.requests, verb);
}

fn hot_unplug(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    if !ctx.cfg.hotplug {
        return Err(NotPassed::Skip(
            "the host offers no hot-plug (cxltest.hotplug=on, scripts/run-vm --hotplug; unmodified \
             QEMU 11.1.3 aborts when a vfio-user-pci device is unplugged)"
                .into(),
        ));
    }
    life.need_attached()?;
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    host_request(life, "unplug");
    sys::wait_for(HOTPLUG_MS, || (!kernel::present(&bdf)).then_some(())).ok_or_else(|| {
        format!(
            "{bdf} still present {} s after the request",
            HOTPLUG_MS / 1000
        )
    })?;
    life.unplugged = true;
    Ok(format!("{bdf} removed; {}", life.detached(ctx)?))
}

fn hot_replug(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    if !ctx.cfg.hotplug {
        return Err(NotPassed::Skip(
            "the host offers no hot-plug (see k.21)".into(),
        ));
    }
    if !life.unplugged {
        return Err("prerequisite missing: the device unplugged (k.21)".into());
    }
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    host_request(life, "plug");
    sys::wait_for(HOTPLUG_MS, || kernel::present(&bdf).then_some(())).ok_or_else(|| {
        format!(
            "{bdf} not back {} s after the request; PCI devices: {}",
            HOTPLUG_MS / 1000,
            sys::list_dir(sys::PCI_DEVICES).join(" ")
        )
    })?;
    life.unplugged = false;
    // The driver probes at hot-add and fails: no region without the firmware step.
    // Wait for the probe to end: meanwhile the CXL core claims BAR0's HDM
    // registers, and a user mapping of them would go away under the harness.
    let probe = format!("{} {bdf}: ", c_kernel::MODULE);
    let ended = sys::wait_for(ATTACH_MS, || {
        life.log()
            .iter()
            .rev()
            .find(|l| {
                l.starts_with(&probe) && (l.contains("attach failed") || l.contains("attached:"))
            })
            .cloned()
    })
    .ok_or_else(|| {
        format!("no end of the driver's probe in the kernel log within {ATTACH_MS} ms")
    })?;
    if bound(&bdf) || !ended.contains("attach failed") {
        return Err(format!("the driver attached before the firmware step: {ended}").into());
    }
    ctx.bars = Default::default();
    // QEMU resets the device when it connects (vfio-user DEVICE_RESET): a new
    // connection shows the power-on state, with device memory kept by the backend
    let st = device::cxl_mem(ctx)?;
    if st.decoders.iter().any(|d| d.committed()) || st.mem_enable() || st.global_enable() {
        return Err(format!(
            "not at power-on values after the re-plug: {}",
            st.describe()
        )
        .into());
    }
    let cap = need(&ctx.capacity, "capacity (a.5)")?;
    for dpa in g_bar2::pattern_offsets(cap) {
        let got = device::read_block(ctx, dpa)?;
        if let Some(m) = super::j_hpa::mismatch("DPA", dpa, &got, &g_bar2::pattern(dpa)) {
            return Err(format!("check g's pattern lost across the re-plug: {m}").into());
        }
    }
    let commit = b_firmware::commit_endpoint_decoder(ctx)?;
    let enable = b_firmware::enable_endpoint_memory(ctx)?;
    Ok(format!(
        "{bdf} back at power-on, g's pattern kept; {commit}; {enable}; {}",
        life.attach(ctx)?
    ))
}

fn sysfs_remove(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    life.need_attached()?;
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    sys::write_attr(format!("{}/remove", kernel::dev_path(&bdf)), "1")
        .map_err(|e| format!("remove {bdf}: {}", sys::errno(&e)))?;
    if kernel::present(&bdf) {
        return Err(format!("{bdf} still present after remove").into());
    }
    Ok(format!("{bdf} removed; {}", life.detached(ctx)?))
}

fn rescan(ctx: &mut Ctx, life: &mut Life) -> StepOutcome {
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    if kernel::present(&bdf) {
        return Err("prerequisite missing: the device removed (k.23)".into());
    }
    sys::write_attr("/sys/bus/pci/rescan", "1")
        .map_err(|e| format!("rescan: {}", sys::errno(&e)))?;
    if !kernel::present(&bdf) {
        return Err(format!("{bdf} not back after the rescan").into());
    }
    // The decoders stayed committed: the driver's probe at enumeration attaches
    Ok(format!("{bdf} back; {}", life.attach(ctx)?))
}
