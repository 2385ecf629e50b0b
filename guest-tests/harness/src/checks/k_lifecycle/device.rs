//! The device's side of the lifecycle checks, read and written directly while the
//! driver is unbound: CXL.mem state (HDM decoders, HDM Global Control, the CXL
//! Device DVSEC's Control, Lock and Range 1 Base), device memory through BAR2, and a
//! CXL Reset driven through the DVSEC as CXL r3.1 §9.7 has it.

use crate::cfgsave::SavedConfig;
use crate::checks::{g_bar2, j_hpa, need, Ctx, LIFECYCLE_DPA};
use crate::hdmprog::{self, DecoderState};
use crate::mmio::Regs;
use crate::pcicfg::ConfigSpace;
use cxl_regs::dvsec::{self, device as dev};
use std::time::{Duration, Instant};

/// The word at DPA `a` of the lifecycle pattern holds `a ^ LIFE_SEED`.
pub const LIFE_SEED: u64 = 0x4358_4c4c_4946_452e; // "CXLLIFE."
pub const BLOCK: u64 = 4096;

/// CXL.mem state as the device shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CxlMem {
    pub decoders: Vec<DecoderState>,
    pub global_control: u32,
    /// DVSEC CXL Control (§8.1.3.2).
    pub control: u16,
    /// DVSEC CXL Lock (§8.1.3.6).
    pub lock: u16,
    /// DVSEC Range 1 Base (§8.1.3.10, .11), high and low.
    pub range1_base: (u32, u32),
}

impl CxlMem {
    pub fn mem_enable(&self) -> bool {
        self.control & dev::CTRL_MEM_ENABLE != 0
    }
    pub fn config_lock(&self) -> bool {
        self.lock & dev::LOCK_CONFIG_LOCK != 0
    }
    pub fn global_enable(&self) -> bool {
        self.global_control & cxl_regs::hdm::GCTRL_HDM_DECODER_ENABLE != 0
    }
    /// `decoder N: ctrl C` for each decoder, for messages.
    pub fn describe(&self) -> String {
        let d: Vec<String> = self
            .decoders
            .iter()
            .enumerate()
            .map(|(i, s)| format!("decoder {i} {:#x}+{:#x} ctrl {:#x}", s.base, s.size, s.ctrl))
            .collect();
        format!(
            "{}; global control {:#x}; DVSEC Control {:#06x}, Lock {:#06x}",
            d.join(", "),
            self.global_control,
            self.control,
            self.lock
        )
    }
}

/// The device's config space, read now, and the CXL Device DVSEC's offset in it.
fn config(ctx: &Ctx) -> Result<(ConfigSpace, usize), String> {
    let dv = need(&ctx.dvsec_dev, "DVSEC id 0 (a.4)")?;
    let p = format!("{}/config", ctx.dev_path()?);
    let b = std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?;
    if b.len() < cxl_regs::pci::CONFIG_SPACE_SIZE {
        return Err(format!("{p}: {} bytes (not root?)", b.len()));
    }
    Ok((ConfigSpace::new(b), dv))
}

fn cfg16(cs: &ConfigSpace, off: usize) -> Result<u16, String> {
    cs.u16(off)
        .ok_or_else(|| format!("config space ends before {off:#x}"))
}

fn cfg32(cs: &ConfigSpace, off: usize) -> Result<u32, String> {
    cs.u32(off)
        .ok_or_else(|| format!("config space ends before {off:#x}"))
}

/// The HDM Decoder Capability in BAR0 (mapped anew: the CXL core claims and
/// releases those pages as the driver binds and unbinds).
fn hdm(ctx: &mut Ctx) -> Result<(u8, u64, u32), String> {
    let (bir, comp) = ctx.block(dvsec::register_locator::BLOCK_COMPONENT)?;
    let bar0 = ctx.bar(bir)?;
    let hdm = hdmprog::find_hdm(bar0, comp)?;
    let n = hdmprog::read_cap(bar0, hdm)?.decoders;
    Ok((bir, hdm, n))
}

/// Read the CXL.mem state (the driver must be unbound: the CXL core owns the HDM
/// registers while it is bound).
pub fn cxl_mem(ctx: &mut Ctx) -> Result<CxlMem, String> {
    let (bir, hdm_off, n) = hdm(ctx)?;
    let bar0 = ctx.bar(bir)?;
    let decoders = (0..n)
        .map(|i| hdmprog::read_decoder(bar0, hdm_off, i))
        .collect();
    let global_control = bar0.read32(hdm_off + cxl_regs::hdm::GLOBAL_CONTROL as u64);
    let (cs, dv) = config(ctx)?;
    Ok(CxlMem {
        decoders,
        global_control,
        control: cfg16(&cs, dv + dev::CTRL)?,
        lock: cfg16(&cs, dv + dev::LOCK)?,
        range1_base: (
            cfg32(&cs, dv + dev::range_base_high(0))?,
            cfg32(&cs, dv + dev::range_base_low(0))?,
        ),
    })
}

/// Commit the endpoint's decoder 0 as the firmware step does, with Lock On Commit
/// when `lock`; a committed decoder with other programming is uncommitted first.
pub fn commit_decoder0(ctx: &mut Ctx, lock: bool) -> Result<DecoderState, String> {
    let (base, size) = need(&ctx.committed, "firmware commit (b.4)")?;
    let (bir, hdm_off, _) = hdm(ctx)?;
    let bar0 = ctx.bar(bir)?;
    let p = hdmprog::Program {
        base,
        size,
        iw: 0,
        ig: 0,
        host_only: false,
        lock_on_commit: lock,
        skip_or_targets: 0,
    };
    hdmprog::commit(bar0, hdm_off, 0, &p, &|| crate::sys::sleep_ms(1)).map(|x| x.1)
}

/// Set CONFIG_LOCK in the DVSEC CXL Lock register (§8.1.3.6, RWO): the DVSEC's RWL
/// fields (Control, Range Base) freeze until a conventional reset.
pub fn set_config_lock(ctx: &Ctx) -> Result<(), String> {
    let bdf = need(&ctx.bdf, "device (a.1)")?;
    let (cs, dv) = config(ctx)?;
    let lock = cfg16(&cs, dv + dev::LOCK)? | dev::LOCK_CONFIG_LOCK;
    crate::sys::config_write(&bdf, (dv + dev::LOCK) as u64, &lock.to_le_bytes())
}

/// DVSEC CXL Capability and Capability3.
pub fn capabilities(ctx: &Ctx) -> Result<(u16, u16), String> {
    let (cs, dv) = config(ctx)?;
    Ok((cfg16(&cs, dv + dev::CAP)?, cfg16(&cs, dv + dev::CAP3)?))
}

/// The lifecycle pattern for the block at DPA `dpa`.
pub fn life_pattern(dpa: u64) -> Vec<u8> {
    (0..BLOCK / 8)
        .flat_map(|i| ((dpa + 8 * i) ^ LIFE_SEED).to_le_bytes())
        .collect()
}

/// Write the lifecycle pattern at DPA [`LIFECYCLE_DPA`] through BAR2.
pub fn write_life_pattern(ctx: &mut Ctx) -> Result<(), String> {
    let dpa = LIFECYCLE_DPA;
    ctx.bar2()?.write_bytes(dpa, &life_pattern(dpa));
    Ok(())
}

pub fn read_block(ctx: &mut Ctx, dpa: u64) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; BLOCK as usize];
    ctx.bar2()?.read_bytes(dpa, &mut b);
    Ok(b)
}

/// Whether the lifecycle pattern is intact.
pub fn check_life_pattern(ctx: &mut Ctx) -> Result<(), String> {
    let dpa = LIFECYCLE_DPA;
    let got = read_block(ctx, dpa)?;
    match j_hpa::mismatch("DPA", dpa, &got, &life_pattern(dpa)) {
        Some(m) => Err(format!("lifecycle pattern: {m}")),
        None => Ok(()),
    }
}

/// DPAs of the blocks that hold data: the lifecycle pattern, check g's pattern
/// (which scripts/e2e looks for in the memory file after the run) and check j's HPA
/// pattern (decoder 0's DPA base is 0: the firmware step commits DPA skip 0).
pub fn data_blocks(capacity: u64, region_size: u64) -> Vec<u64> {
    let mut v = vec![LIFECYCLE_DPA];
    v.extend(g_bar2::pattern_offsets(capacity));
    v.extend(j_hpa::block_offsets(region_size));
    v
}

/// CXL Reset Timeout (CXL r3.1 §8.1.3.1, DVSEC CXL Capability bits 10:8): 000b
/// 10 ms, 001b 100 ms, 010b 1 s, 011b 10 s, 100b 100 s; the rest reserved.
pub fn reset_timeout(cap: u16) -> Option<Duration> {
    let ms = match (cap >> 8) & 0b111 {
        0b000 => 10,
        0b001 => 100,
        0b010 => 1_000,
        0b011 => 10_000,
        0b100 => 100_000,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// How a CXL Reset went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// Status2 when it ended.
    pub status2: u16,
    /// From the write of Initiate CXL Reset to Reset Complete or Error.
    pub took: Duration,
    pub timeout: Duration,
    /// What was done before the reset (the cache flush), for the detail.
    pub steps: Vec<String>,
}

/// Poll Status2 through `cfg` every millisecond until `done(status2)` or `limit`.
fn poll_status2(
    cfg: &SavedConfig,
    off: usize,
    limit: Duration,
    done: impl Fn(u16) -> bool,
) -> Result<(u16, Duration), String> {
    let t0 = Instant::now();
    loop {
        let s = cfg.read16(off)?;
        if done(s) || t0.elapsed() > limit {
            return Ok((s, t0.elapsed()));
        }
        crate::sys::sleep_ms(1);
    }
}

/// A CXL Reset through the DVSEC (CXL r3.1 §9.7; the registers of §8.1.3.4-.5),
/// with CXL Reset Mem Clr Enable (§9.7.1) when `mem_clr`:
/// - a Cache Capable device is quiesced first: Disable Caching, then Initiate Cache
///   Write Back and Invalidation, and Cache Invalid awaited (§9.6);
/// - Initiate CXL Reset, then Status2 polled for Reset Complete or Reset Error for
///   up to the advertised CXL Reset Timeout (and a second as much, to tell a slow
///   device from a dead one);
/// - the header, which the reset's CXL.io part returns to its defaults, is written
///   back from `saved` (the kernel performs no CXL Reset, so nothing else does).
pub fn cxl_reset(ctx: &Ctx, saved: &SavedConfig, mem_clr: bool) -> Result<ResetReport, String> {
    let dv = need(&ctx.dvsec_dev, "DVSEC id 0 (a.4)")?;
    let cap = saved.read16(dv + dev::CAP)?;
    let timeout = reset_timeout(cap)
        .ok_or_else(|| format!("DVSEC CXL Capability {cap:#06x}: reserved CXL Reset Timeout"))?;
    let (ctrl2, status2) = (dv + dev::CTRL2, dv + dev::STATUS2);
    let mut steps = Vec::new();
    let mut c2 = saved.read16(ctrl2)? & dev::CTRL2_DISABLE_CACHING;
    if cap & dev::CAP_CACHE_CAPABLE != 0 {
        c2 |= dev::CTRL2_DISABLE_CACHING;
        saved.write16(ctrl2, c2)?;
        if cap & dev::CAP_CACHE_WBI_CAPABLE != 0 {
            saved.write16(ctrl2, c2 | dev::CTRL2_INITIATE_CACHE_WBI)?;
            let (s, t) = poll_status2(saved, status2, timeout, |s| {
                s & dev::STATUS2_CACHE_INVALID != 0
            })?;
            if s & dev::STATUS2_CACHE_INVALID == 0 {
                return Err(format!(
                    "Cache Invalid not set {} ms after Initiate Cache Write Back and Invalidation (Status2 {s:#06x})",
                    t.as_millis()
                ));
            }
            steps.push(format!(
                "cache written back and invalid after {} us",
                t.as_micros()
            ));
        }
    }
    if mem_clr {
        c2 |= dev::CTRL2_CXL_RESET_MEM_CLR_ENABLE;
    }
    saved.write16(ctrl2, c2 | dev::CTRL2_INITIATE_CXL_RESET)?;
    let ended = |s: u16| s & (dev::STATUS2_CXL_RESET_COMPLETE | dev::STATUS2_CXL_RESET_ERROR) != 0;
    let (s, took) = poll_status2(saved, status2, 2 * timeout, ended)?;
    saved.restore_saved_state()?;
    if !ended(s) {
        return Err(format!(
            "neither Reset Complete nor Reset Error {} ms after Initiate CXL Reset (Status2 {s:#06x})",
            took.as_millis()
        ));
    }
    Ok(ResetReport {
        status2: s,
        took,
        timeout,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_timeouts_per_the_spec_table() {
        assert_eq!(reset_timeout(0x0000), Some(Duration::from_millis(10)));
        // the device's Capability, 0x09d7: timeout field 001b
        assert_eq!(reset_timeout(0x09d7), Some(Duration::from_millis(100)));
        assert_eq!(reset_timeout(0x0200), Some(Duration::from_secs(1)));
        assert_eq!(reset_timeout(0x0300), Some(Duration::from_secs(10)));
        assert_eq!(reset_timeout(0x0400), Some(Duration::from_secs(100)));
        assert_eq!(reset_timeout(0x0500), None);
        assert_eq!(reset_timeout(0x0700), None);
    }

    #[test]
    fn data_blocks_avoid_each_other() {
        let v = data_blocks(512 << 20, 256 << 20);
        for (i, a) in v.iter().enumerate() {
            for b in &v[i + 1..] {
                assert!(
                    a + BLOCK <= *b || b + BLOCK <= *a,
                    "{a:#x} and {b:#x} overlap"
                );
            }
        }
        assert!(v.contains(&super::LIFECYCLE_DPA));
    }

    #[test]
    fn pattern_is_dpa_xor_seed() {
        let p = life_pattern(5 << 20);
        assert_eq!(
            u64::from_le_bytes(p[8..16].try_into().unwrap()),
            ((5 << 20) + 8) ^ LIFE_SEED
        );
    }
}
