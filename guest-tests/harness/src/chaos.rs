//! z. The hostile guest (issue 6): `cxl-guest-test chaos --seconds N`.
//!
//! Before the firmware step and before any CXL module loads (random writes to the
//! HDM registers commit random decoders; the reset must clear them), random values at
//! random widths (1/2/4/8 bytes) go to random offsets of all of BAR0 and BAR4
//! (resource0/resource4, mmapped) and of config space (the sysfs `config` file,
//! pwrite), interleaved with reads, for N seconds. Half the offsets fall on the live
//! register files (HDM, RAS, mailbox, DMA engine, MSI-X, the PCI header and
//! capabilities); the other half of the writes sweep each range in order, 8 bytes at
//! a time, until every byte has been written once (about 20 s for BAR0), then land
//! uniformly, as the reads do. One access in eight is unaligned. Some accesses are
//! whole mailbox commands and DMA transfers with random contents.
//!
//! The guest itself must survive, so a few bits are held back, and the header is
//! healed when the device stops answering through its BARs:
//! - the DMA engine may only read guest RAM (Control's direction bit is cleared in
//!   every write that covers it), and only in slices where Bus Master Enable is on;
//! - in those slices MSI-X Enable is held off, because QEMU's emulated MSI-X table
//!   holds random addresses and an MSI write goes to guest memory; in the other
//!   slices Bus Master Enable is held off (which also drops MSI writes in QEMU);
//! - every 64 accesses a probe reads the vendor id and the engine id: if they are
//!   wrong (a BAR moved, Memory Space off, D3hot, a chaos FLR in flight), the header
//!   is written back from the snapshot.
//!
//! Then the header and the capabilities' control registers are restored (the kernel
//! saves them before a reset and restores them after), and the function is reset
//! twice through sysfs `reset`, each time after decoder 0 was committed with Lock on
//! Commit:
//! - with the kernel's first method (`flr`: the backend sees Initiate FLR in a config
//!   write). An FLR resets CXL.io state only (CXL r3.1 §9.5): afterwards config space
//!   is as before the chaos except the CXL Device DVSEC's control registers, which,
//!   like the HDM decoders and HDM Global Control, are as just before the FLR (decoder
//!   0 still committed and locked, whatever the chaos left in the others); the DMA
//!   engine and the mailbox are idle;
//! - with `cxl_bus` (SBR on the CXL root port, which QEMU turns into vfio-user
//!   DEVICE_RESET), a conventional reset: config space, the HDM decoders, the DMA
//!   engine and the mailbox are as at power-on.
//!
//! The chaos may itself start CXL Resets (DVSEC CXL Control2 Initiate CXL Reset):
//! the device's registers then read all ones for the reset's duration, which the
//! probes see and heal like an FLR. The caller then runs the checks of test
//! mode.

use crate::cfgsave::{CfgLayout, SavedConfig};
use crate::config::Config;
use crate::hdmprog::{self, DecoderState};
use crate::mbox;
use crate::mmio::{MmioMap, Regs};
use crate::pcicfg::ConfigSpace;
use crate::report::Reporter;
use crate::sys::{self, PCI_DEVICES};
use cxl_regs::dvsec::{self, register_locator as rl};
use cxl_regs::layout::{self, engine as e};
use cxl_regs::{mailbox as mb, pci};
use std::time::{Duration, Instant};

/// Modules that must not be loaded before the chaos (as in check b.1).
const CXL_MODULES: [&str; 4] = ["cxl_acpi", "cxl_mem", "cxl_pmem", "cxl_accel_t2"];
/// Accesses between two probes of the device.
const PROBE_EVERY: u64 = 64;
/// A slice of constant Bus Master / MSI-X policy, in ms (random in [MIN, 2*MIN)).
const SLICE_MS: u64 = 750;
/// Progress line period.
const PROGRESS: Duration = Duration::from_secs(5);
/// The device must answer again within this long after a heal.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(5);
/// Guest RAM of run-vm's VM (`-m 1G`): where DMA bursts pick their source.
const GUEST_RAM: u64 = 1 << 30;

// --- randomness -------------------------------------------------------------------

/// SplitMix64: small, seedable, good enough to pick offsets and values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    /// A width of 1, 2, 4 or 8 bytes.
    pub fn width(&mut self) -> usize {
        1 << self.below(4)
    }
    /// A register value: mostly random, sometimes all ones, zero, one bit or small.
    pub fn value(&mut self) -> u64 {
        match self.below(10) {
            0 => !0,
            1 => 0,
            2 => 1 << self.below(64),
            3 => self.below(16),
            _ => self.next(),
        }
    }
}

/// A `width`-aligned offset in `[0, len)`: half the time in one of the `hot`
/// windows (clipped to `len`), otherwise the next offset of a sweep from `cursor`
/// while one is given and not past the end (so that every byte gets written; its
/// accesses are 8 bytes wide, to finish sooner), else uniform. `len` must be at
/// least 8. Returns the offset, the width to use, and whether it came from the sweep.
pub fn pick_offset(
    rng: &mut Rng,
    len: u64,
    width: usize,
    hot: &[(u64, u64)],
    cursor: Option<&mut u64>,
) -> (u64, usize, bool) {
    let align = |o: u64, w: usize| o.min(len - w as u64) & !(w as u64 - 1);
    if !hot.is_empty() && rng.chance(50) {
        let (start, end) = hot[rng.below(hot.len() as u64) as usize];
        let o = start + rng.below(end.saturating_sub(start).max(1));
        return (align(o, width), width, false);
    }
    match cursor {
        Some(c) if *c < len => {
            // Aligned down, so [off, off + w) always covers *c: no byte is skipped.
            let w = 8;
            let off = align(*c, w);
            *c = off + w as u64;
            (off, w, true)
        }
        _ => (align(rng.below(len), width), width, false),
    }
}

// --- guarding the guest --------------------------------------------------------------

/// What chaos config writes may not do in the current slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Bus Master Enable on (DMA may read guest RAM; MSI-X held off), or held off.
    pub bus_master: bool,
}

/// Adjust the bytes of a chaos config write at `off` so that the guest survives:
/// Bus Master Enable clear unless the policy allows it, MSI-X Enable clear when Bus
/// Master is allowed. Returns whether the write initiates an FLR.
pub fn guard_config(off: usize, bytes: &mut [u8], l: &CfgLayout, p: Policy) -> bool {
    let mut flr = false;
    for (i, b) in bytes.iter_mut().enumerate() {
        let o = off + i;
        if o == pci::COMMAND && !p.bus_master {
            *b &= !(pci::CMD_BUS_MASTER as u8);
        }
        if o == l.msix + pci::MSIX_FLAGS + 1 && p.bus_master {
            *b &= !((pci::MSIX_FLAGS_ENABLE >> 8) as u8);
        }
        if o == l.exp + pci::EXP_DEVCTL + 1 && *b & (pci::EXP_DEVCTL_BCR_FLR >> 8) as u8 != 0 {
            flr = true;
        }
    }
    flr
}

/// Clear the engine's direction-to-guest bit in a chaos BAR4 write at `off` of
/// `width` bytes (`value` little-endian): the engine may never write guest RAM.
pub fn guard_bar4(off: u64, width: usize, value: u64) -> u64 {
    let ctrl = layout::ENGINE_OFFSET + e::CONTROL;
    if (off..off + width as u64).contains(&ctrl) {
        let shift = 8 * (ctrl - off);
        value & !((e::CONTROL_DIR_TO_GUEST as u64) << shift)
    } else {
        value
    }
}

/// Offsets (and before/after bytes) where two config snapshots differ.
pub fn config_diff(before: &[u8], after: &[u8]) -> Vec<(usize, u8, u8)> {
    let n = before.len().max(after.len());
    (0..n)
        .filter_map(|i| {
            let (a, b) = (
                before.get(i).copied().unwrap_or(0),
                after.get(i).copied().unwrap_or(0),
            );
            (a != b).then_some((i, a, b))
        })
        .collect()
}

/// Describe differing bytes as dwords: `off: before -> after`, at most `max`.
pub fn describe_diff(before: &[u8], after: &[u8], max: usize) -> String {
    let mut dwords: Vec<usize> = config_diff(before, after)
        .iter()
        .map(|d| d.0 & !3)
        .collect();
    dwords.dedup();
    let rd = |b: &[u8], o: usize| {
        let mut w = [0u8; 4];
        for (k, x) in w.iter_mut().enumerate() {
            *x = b.get(o + k).copied().unwrap_or(0);
        }
        u32::from_le_bytes(w)
    };
    let mut parts: Vec<String> = dwords
        .iter()
        .take(max)
        .map(|&o| {
            format!(
                "{o:#05x}: {:#010x} -> {:#010x}",
                rd(before, o),
                rd(after, o)
            )
        })
        .collect();
    if dwords.len() > max {
        parts.push(format!("... {} dwords in all", dwords.len()));
    }
    parts.join(", ")
}

// --- device access -------------------------------------------------------------------

/// A whole BAR mapped through sysfs resourceN (by [`MmioMap`]), with accesses of
/// every width.
struct RawBar {
    map: MmioMap,
    what: String,
}

impl RawBar {
    fn open(path: &str) -> Result<Self, String> {
        Ok(Self {
            map: MmioMap::open_resource(path)?,
            what: path.to_string(),
        })
    }

    /// One load of `width` bytes at any offset inside the BAR, aligned or not (an
    /// unaligned one is a single x86 `mov`; QEMU splits it for the device).
    fn read_any(&self, off: u64, width: usize) -> u64 {
        if off.is_multiple_of(width as u64) {
            return self.read(off, width);
        }
        let p = self.inside(off, width);
        // SAFETY: `p..p + width` is inside the mapping (checked in `inside`); a plain
        // load through inline assembly has no alignment requirement on x86.
        unsafe { unaligned::load(p, width) }
    }

    /// One store of `width` bytes at any offset inside the BAR, aligned or not.
    fn write_any(&self, off: u64, width: usize, v: u64) {
        if off.is_multiple_of(width as u64) {
            return self.write(off, width, v);
        }
        let p = self.inside(off, width);
        // SAFETY: as in `read_any`.
        unsafe { unaligned::store(p, width, v) }
    }

    fn inside(&self, off: u64, width: usize) -> *mut u8 {
        assert!(
            matches!(width, 1 | 2 | 4 | 8) && off + width as u64 <= self.map.len() as u64,
            "{}: {width}-byte access at {off:#x} outside {:#x} bytes",
            self.what,
            self.map.len()
        );
        // SAFETY: in bounds per the assertion.
        unsafe { self.map.as_ptr().add(off as usize) }
    }

    fn at(&self, off: u64, width: usize) -> *mut u8 {
        assert!(
            matches!(width, 1 | 2 | 4 | 8)
                && off.is_multiple_of(width as u64)
                && off + width as u64 <= self.map.len() as u64,
            "{}: {width}-byte access at {off:#x} outside {:#x} bytes or unaligned",
            self.what,
            self.map.len()
        );
        // SAFETY: in bounds per the assertion.
        unsafe { self.map.as_ptr().add(off as usize) }
    }

    fn read(&self, off: u64, width: usize) -> u64 {
        let p = self.at(off, width);
        // SAFETY: in bounds and aligned (checked in `at`); one access of that width.
        unsafe {
            match width {
                1 => std::ptr::read_volatile(p) as u64,
                2 => std::ptr::read_volatile(p as *const u16) as u64,
                4 => std::ptr::read_volatile(p as *const u32) as u64,
                _ => std::ptr::read_volatile(p as *const u64),
            }
        }
    }

    fn write(&self, off: u64, width: usize, v: u64) {
        let p = self.at(off, width);
        // SAFETY: in bounds and aligned (checked in `at`); one access of that width.
        unsafe {
            match width {
                1 => std::ptr::write_volatile(p, v as u8),
                2 => std::ptr::write_volatile(p as *mut u16, v as u16),
                4 => std::ptr::write_volatile(p as *mut u32, v as u32),
                _ => std::ptr::write_volatile(p as *mut u64, v),
            }
        }
    }
}

/// Unaligned MMIO loads and stores: one instruction each, so the access reaches QEMU
/// as the guest issued it. Elsewhere than x86-64, bytewise (never used there: the
/// harness runs in an x86-64 guest).
mod unaligned {
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn load(p: *const u8, width: usize) -> u64 {
        use std::arch::asm;
        let v: u64;
        // SAFETY (caller): p..p+width is mapped and readable.
        unsafe {
            match width {
                1 => return u64::from(std::ptr::read_volatile(p)),
                2 => {
                    let x: u16;
                    asm!("mov {0:x}, word ptr [{1}]", out(reg) x, in(reg) p, options(nostack, preserves_flags));
                    v = u64::from(x);
                }
                4 => {
                    let x: u32;
                    asm!("mov {0:e}, dword ptr [{1}]", out(reg) x, in(reg) p, options(nostack, preserves_flags));
                    v = u64::from(x);
                }
                _ => {
                    asm!("mov {0}, qword ptr [{1}]", out(reg) v, in(reg) p, options(nostack, preserves_flags))
                }
            }
        }
        v
    }

    #[cfg(target_arch = "x86_64")]
    pub unsafe fn store(p: *mut u8, width: usize, v: u64) {
        use std::arch::asm;
        // SAFETY (caller): p..p+width is mapped and writable.
        unsafe {
            match width {
                1 => std::ptr::write_volatile(p, v as u8),
                2 => {
                    asm!("mov word ptr [{0}], {1:x}", in(reg) p, in(reg) v as u16, options(nostack, preserves_flags))
                }
                4 => {
                    asm!("mov dword ptr [{0}], {1:e}", in(reg) p, in(reg) v as u32, options(nostack, preserves_flags))
                }
                _ => {
                    asm!("mov qword ptr [{0}], {1}", in(reg) p, in(reg) v, options(nostack, preserves_flags))
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn load(p: *const u8, width: usize) -> u64 {
        let mut b = [0u8; 8];
        for (i, x) in b.iter_mut().enumerate().take(width) {
            // SAFETY (caller): p..p+width is mapped.
            *x = unsafe { std::ptr::read_volatile(p.add(i)) };
        }
        u64::from_le_bytes(b)
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn store(p: *mut u8, width: usize, v: u64) {
        for (i, x) in v.to_le_bytes().iter().enumerate().take(width) {
            // SAFETY (caller): p..p+width is mapped.
            unsafe { std::ptr::write_volatile(p.add(i), *x) };
        }
    }
}

impl Regs for RawBar {
    fn read32(&self, off: u64) -> u32 {
        self.read(off, 4) as u32
    }
    fn write32(&self, off: u64, v: u32) {
        self.write(off, 4, v as u64)
    }
    fn read64(&self, off: u64) -> u64 {
        self.read(off, 8)
    }
    fn write64(&self, off: u64, v: u64) {
        self.write(off, 8, v)
    }
}

/// Access counts per type.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    bar0_r: u64,
    bar0_w: u64,
    bar4_r: u64,
    bar4_w: u64,
    cfg_r: u64,
    cfg_w: u64,
    mbox_cmds: u64,
    dma: u64,
    flr: u64,
    heals: u64,
    slices: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.bar0_r + self.bar0_w + self.bar4_r + self.bar4_w + self.cfg_r + self.cfg_w
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} accesses: BAR0 r/w {}/{}, BAR4 r/w {}/{}, config r/w {}/{}; \
             {} mailbox commands, {} DMA doorbells, {} FLR writes, {} heals, {} slices",
            self.total(),
            self.bar0_r,
            self.bar0_w,
            self.bar4_r,
            self.bar4_w,
            self.cfg_r,
            self.cfg_w,
            self.mbox_cmds,
            self.dma,
            self.flr,
            self.heals,
            self.slices
        )
    }
}

/// The device as found before the chaos, and what was snapshotted.
struct Target {
    bdf: String,
    /// Config space before the chaos.
    saved: SavedConfig,
    /// End of the extended capabilities in use.
    ext_end: usize,
    bar0: RawBar,
    bar4: RawBar,
    /// CXL.cache/mem registers and the HDM decoder capability, in BAR0.
    cachemem: u64,
    hdm: u64,
    decoders: u32,
    /// HDM decoders and Global Control before the chaos.
    dec_snap: Vec<DecoderState>,
    gctrl_snap: u32,
    /// Primary mailbox offset in BAR0 and payload size, when the mailbox is on.
    mailbox: Option<(u64, usize)>,
    /// The PCIe DVSEC for CXL Devices, in config space.
    cxl_dev: usize,
    /// Hot windows (start, end) in BAR0 and BAR4.
    hot0: Vec<(u64, u64)>,
    hot4: Vec<(u64, u64)>,
    vendor: u16,
    device: u16,
}

impl Target {
    fn open(cfg: &Config) -> Result<Self, String> {
        let bdf = find_device(cfg.vendor, cfg.device)?;
        let dev = format!("{PCI_DEVICES}/{bdf}");
        let saved = SavedConfig::take(&bdf)?;
        let cs = ConfigSpace::new(saved.snap.clone());
        let ext_end = cs
            .dvsecs()
            .iter()
            .map(|d| d.offset + d.length as usize)
            .chain(cs.ext_caps().iter().map(|c| c.0 + 0x10))
            .max()
            .unwrap_or(pci::EXT_CAP_START)
            .min(pci::CONFIG_SPACE_SIZE);
        let regloc = cs
            .find_dvsec(dvsec::CXL_VENDOR_ID, dvsec::ID_REGISTER_LOCATOR)
            .ok_or("no Register Locator DVSEC")?;
        let cxl_dev = cs
            .find_dvsec(dvsec::CXL_VENDOR_ID, dvsec::ID_CXL_DEVICE)
            .ok_or("no CXL Device DVSEC")?;
        let blocks = cs.register_blocks(regloc);
        let block = |id| blocks.iter().find(|b| b.1 == id).map(|b| (b.0, b.2));
        let (bir, comp) = block(rl::BLOCK_COMPONENT).ok_or("no component register block")?;
        if bir != layout::BAR_REGS {
            return Err(format!("component block in BAR{bir}, expected BAR0"));
        }
        let bar0 = RawBar::open(&format!("{dev}/resource{bir}"))?;
        let bar4 = RawBar::open(&format!("{dev}/resource{}", layout::BAR_ENGINE))?;
        let hdm = hdmprog::find_hdm(&bar0, comp)?;
        let decoders = hdmprog::read_cap(&bar0, hdm)?.decoders;
        let dec_snap = (0..decoders)
            .map(|n| hdmprog::read_decoder(&bar0, hdm, n))
            .collect();
        let gctrl_snap = bar0.read32(hdm + cxl_regs::hdm::GLOBAL_CONTROL as u64);
        let cm = comp + cxl_regs::component::CACHEMEM_OFFSET as u64;
        let mut hot0 = vec![
            (cm, cm + 0x400),
            (hdm, hdm + cxl_regs::hdm::block_len(decoders) as u64),
        ];
        let mut mailbox = None;
        if cfg.mailbox {
            let (mbir, blk) =
                block(rl::BLOCK_MEMORY_DEVICE).ok_or("no memory-device register block")?;
            if mbir != bir {
                return Err(format!("memory-device block in BAR{mbir}"));
            }
            let caps = mbox::device_caps(&bar0, blk)?;
            let m = caps.mailbox.ok_or("no primary mailbox capability")?;
            let size = 1usize
                << (bar0.read32(m + mb::CAPABILITIES as u64) & mb::CAP_PAYLOAD_SIZE_MASK).min(20);
            hot0.push((blk, blk + 0x300));
            hot0.push((m, m + mb::PAYLOAD as u64 + 0x40));
            mailbox = Some((m, size));
        }
        let t = u64::from(layout::MSIX_TABLE_OFFSET);
        let p = u64::from(layout::MSIX_PBA_OFFSET);
        let hot4 = vec![
            (layout::ENGINE_OFFSET, layout::ENGINE_OFFSET + 0x40),
            (t, t + 16 * u64::from(layout::MSIX_VECTORS)),
            (p, p + 8),
        ];
        Ok(Self {
            bdf,
            saved,
            ext_end,
            bar0,
            bar4,
            cachemem: cm,
            hdm,
            decoders,
            dec_snap,
            gctrl_snap,
            cxl_dev,
            mailbox,
            hot0,
            hot4,
            vendor: cfg.vendor,
            device: cfg.device,
        })
    }

    /// The config bytes of the CXL Device DVSEC that hold CXL.mem state: Control,
    /// Status, Control2, Status2, Lock, Capability2 and the Range registers
    /// (DVSEC+0x0C up to Capability3 at +0x38; CXL r3.1 §8.1.3).
    fn cxl_dvsec_range(&self) -> std::ops::Range<usize> {
        self.cxl_dev + dvsec::device::CTRL..self.cxl_dev + dvsec::device::CAP3
    }

    /// CXL.mem state as the device shows it: the HDM decoders, Global Control and
    /// the CXL Device DVSEC's control bytes.
    fn cxl_mem(&self) -> Result<CxlMem, String> {
        let p = format!("{PCI_DEVICES}/{}/config", self.bdf);
        let cfg = std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?;
        Ok(CxlMem {
            decoders: (0..self.decoders)
                .map(|n| hdmprog::read_decoder(&self.bar0, self.hdm, n))
                .collect(),
            gctrl: self
                .bar0
                .read32(self.hdm + cxl_regs::hdm::GLOBAL_CONTROL as u64),
            dvsec: cfg.get(self.cxl_dvsec_range()).unwrap_or(&[]).to_vec(),
            cfg,
        })
    }

    /// Whether config space and BAR4 answer with the device's identity.
    fn probe(&self) -> Result<(), String> {
        let v = self.saved.read(pci::VENDOR_ID, 4)? as u32;
        let want = self.vendor as u32 | (self.device as u32) << 16;
        if v != want {
            return Err(format!("config ids read {v:#010x}, expected {want:#010x}"));
        }
        let id = self.bar4.read(layout::ENGINE_OFFSET + e::ID, 4) as u32;
        if id != e::ID_VALUE {
            return Err(format!("BAR4 engine id reads {id:#x}"));
        }
        Ok(())
    }
}

fn find_device(v: u16, d: u16) -> Result<String, String> {
    let found: Vec<String> = sys::list_dir(PCI_DEVICES)
        .into_iter()
        .filter(|bdf| {
            let p = format!("{PCI_DEVICES}/{bdf}");
            sys::read_num(format!("{p}/vendor")).ok() == Some(v as u64)
                && sys::read_num(format!("{p}/device")).ok() == Some(d as u64)
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no PCI function {v:04x}:{d:04x}")),
        many => Err(format!("{} functions match: {many:?}", many.len())),
    }
}

// --- the chaos -------------------------------------------------------------------------

struct Chaos<'a> {
    t: &'a Target,
    rng: Rng,
    n: Counts,
    policy: Policy,
    /// Slowest single access (duration, what).
    slowest: (Duration, String),
    /// Write sweeps through BAR0, BAR4 and config space: the next offset of each.
    sweep: [u64; 3],
}

impl Chaos<'_> {
    fn timed(&mut self, what: impl FnOnce() -> String, f: impl FnOnce(&mut Self)) {
        let t0 = Instant::now();
        f(self);
        let dt = t0.elapsed();
        if dt > self.slowest.0 {
            self.slowest = (dt, what());
        }
    }

    fn bar_op(&mut self, four: bool, write: bool) {
        let w = self.rng.width();
        let (bar, hot) = if four {
            (&self.t.bar4, &self.t.hot4)
        } else {
            (&self.t.bar0, &self.t.hot0)
        };
        let cursor = match (write, four) {
            (false, _) => None,
            (true, false) => Some(&mut self.sweep[0]),
            (true, true) => Some(&mut self.sweep[1]),
        };
        let (mut off, w, swept) = pick_offset(&mut self.rng, bar.map.len() as u64, w, hot, cursor);
        // One access in eight is unaligned (never in the sweep, which must be gapless).
        if w > 1 && !swept && self.rng.chance(12) {
            off = (off + 1 + self.rng.below(w as u64 - 1)).min(bar.map.len() as u64 - w as u64);
        }
        let name = if four { 4 } else { 0 };
        if write {
            let mut v = self.rng.value();
            if four {
                v = guard_bar4(off, w, v);
            }
            self.timed(
                || format!("BAR{name} write {w}@{off:#x}"),
                |_| bar.write_any(off, w, v),
            );
            if four {
                self.n.bar4_w += 1;
            } else {
                self.n.bar0_w += 1;
            }
        } else {
            self.timed(
                || format!("BAR{name} read {w}@{off:#x}"),
                |_| {
                    bar.read_any(off, w);
                },
            );
            if four {
                self.n.bar4_r += 1;
            } else {
                self.n.bar0_r += 1;
            }
        }
    }

    fn cfg_op(&mut self, write: bool) -> Result<(), String> {
        let w = self.rng.width();
        let hot = [(0, self.t.ext_end as u64)];
        let cursor = write.then_some(&mut self.sweep[2]);
        let (off, w, swept) = pick_offset(
            &mut self.rng,
            pci::CONFIG_SPACE_SIZE as u64,
            w,
            &hot,
            cursor,
        );
        let mut off = off as usize;
        // One access in eight is unaligned (the kernel splits it into smaller ones).
        if !swept && self.rng.chance(12) {
            off = (off + 1 + self.rng.below(w as u64) as usize).min(pci::CONFIG_SPACE_SIZE - w);
        }
        if write {
            let mut bytes = self.rng.value().to_le_bytes();
            if guard_config(off, &mut bytes[..w], &self.t.saved.lay, self.policy) {
                self.n.flr += 1;
            }
            let t = self.t;
            let mut r = Ok(());
            self.timed(
                || format!("config write {w}@{off:#x}"),
                |_| r = t.saved.write(off, &bytes[..w]),
            );
            self.n.cfg_w += 1;
            r
        } else {
            let t = self.t;
            let mut r = Ok(0);
            self.timed(
                || format!("config read {w}@{off:#x}"),
                |_| r = t.saved.read(off, w),
            );
            self.n.cfg_r += 1;
            r.map(|_| ())
        }
    }

    /// A whole mailbox command: random opcode (mostly implemented ones), random
    /// payload length and contents, doorbell, a few polls.
    fn mailbox_op(&mut self) {
        let Some((m, size)) = self.t.mailbox else {
            return self.bar_op(false, true);
        };
        let ops = &crate::checks::f_mailbox::IMPLEMENTED;
        let opcode = match self.rng.below(10) {
            0..=5 => ops[self.rng.below(ops.len() as u64) as usize],
            6 => 0xc000 | self.rng.below(0x100) as u16,
            _ => self.rng.next() as u16,
        };
        let len = match self.rng.below(4) {
            0 => 0,
            1 => self.rng.below(size as u64 + 64),
            _ => self.rng.below(64),
        };
        let bar0 = &self.t.bar0;
        for i in 0..(len.min(128)).div_ceil(8) {
            let v = self.rng.value();
            bar0.write(m + mb::PAYLOAD as u64 + 8 * i, 8, v);
        }
        let cmd = opcode as u64 | (len << mb::CMD_LEN_SHIFT) & mb::CMD_LEN_MASK;
        let ctrl = mb::CTRL_DOORBELL | (self.rng.below(8) as u32 & !1);
        self.timed(
            || format!("mailbox opcode {opcode:#06x} len {len}"),
            |_| {
                bar0.write(m + mb::COMMAND as u64, 8, cmd);
                bar0.write(m + mb::CONTROL as u64, 4, ctrl as u64);
                for _ in 0..8 {
                    if bar0.read(m + mb::CONTROL as u64, 4) as u32 & mb::CTRL_DOORBELL == 0 {
                        break;
                    }
                }
                bar0.read(m + mb::STATUS as u64, 8);
            },
        );
        self.n.mbox_cmds += 1;
        self.n.bar0_w += 3 + len.min(128).div_ceil(8);
        self.n.bar0_r += 2;
    }

    /// A whole DMA transfer, guest RAM -> device memory only, with random (often
    /// plausible) addresses and length.
    fn dma_op(&mut self, capacity: u64) {
        let r = &mut self.rng;
        let src = if r.chance(50) {
            r.below(GUEST_RAM) & !63
        } else {
            r.value()
        };
        let dst = if r.chance(50) {
            r.below(capacity) & !63
        } else {
            r.value()
        };
        let len = if r.chance(60) {
            r.below(64 << 10)
        } else {
            r.value()
        };
        let ctrl = r.below(4) as u32 & !e::CONTROL_DIR_TO_GUEST;
        let b = &self.t.bar4;
        let reg = |o| layout::ENGINE_OFFSET + o;
        self.timed(
            || format!("DMA {src:#x} -> DPA {dst:#x} len {len:#x}"),
            |_| {
                b.write(reg(e::SRC), 8, src);
                b.write(reg(e::DST), 8, dst);
                b.write(reg(e::LEN), 8, len);
                b.write(reg(e::CONTROL), 4, ctrl as u64);
                b.write(reg(e::DOORBELL), 4, 1);
                b.read(reg(e::STATUS), 4);
            },
        );
        self.n.dma += 1;
        self.n.bar4_w += 5;
        self.n.bar4_r += 1;
    }

    fn one(&mut self, capacity: u64) -> Result<(), String> {
        match self.rng.below(100) {
            0..=27 => self.bar_op(false, true),
            28..=39 => self.bar_op(false, false),
            40..=57 => self.bar_op(true, true),
            58..=67 => self.bar_op(true, false),
            68..=81 => self.cfg_op(true)?,
            82..=91 => self.cfg_op(false)?,
            92..=95 => self.mailbox_op(),
            _ => self.dma_op(capacity),
        }
        Ok(())
    }
}

/// A progress note while a check runs (the same format as `Reporter::note`).
fn note(msg: &str) {
    use std::io::Write;
    println!("# {msg}");
    let _ = std::io::stdout().flush();
}

/// Run the chaos for `seconds`; Ok(summary) if the device still answers after it.
fn chaos(t: &Target, cfg: &Config, seed: u64) -> Result<String, String> {
    let mut c = Chaos {
        t,
        rng: Rng::new(seed),
        n: Counts::default(),
        policy: Policy { bus_master: false },
        slowest: (Duration::ZERO, String::new()),
        sweep: [0; 3],
    };
    let sweep_len = [
        t.bar0.map.len() as u64,
        t.bar4.map.len() as u64,
        pci::CONFIG_SPACE_SIZE as u64,
    ];
    let mut swept_at: [Option<f64>; 3] = [None; 3];
    let start = Instant::now();
    let end = start + Duration::from_secs(cfg.seconds);
    let mut next_progress = start + PROGRESS;
    let mut slice_end = start;
    let mut unreachable_since: Option<Instant> = None;
    let mut ops = 0u64;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= slice_end {
            c.policy = Policy {
                bus_master: c.rng.chance(50),
            };
            t.saved.heal(c.policy.bus_master)?;
            c.n.slices += 1;
            slice_end = now + Duration::from_millis(SLICE_MS + c.rng.below(SLICE_MS));
        }
        if now >= next_progress {
            note(&format!(
                "chaos {:.0} s: {}",
                now.duration_since(start).as_secs_f64(),
                c.n
            ));
            next_progress += PROGRESS;
        }
        c.one(cfg.size)?;
        ops += 1;
        for (i, at) in swept_at.iter_mut().enumerate() {
            if at.is_none() && c.sweep[i] >= sweep_len[i] {
                *at = Some(start.elapsed().as_secs_f64());
                note(&format!(
                    "chaos: every byte of {} written once after {:.1} s",
                    ["BAR0", "BAR4", "config space"][i],
                    start.elapsed().as_secs_f64()
                ));
            }
        }
        if ops.is_multiple_of(PROBE_EVERY) {
            if t.probe().is_ok() {
                unreachable_since = None;
                continue;
            }
            t.saved.heal(c.policy.bus_master)?;
            c.n.heals += 1;
            match (t.probe(), unreachable_since) {
                (Ok(()), _) => unreachable_since = None,
                (Err(_), None) => unreachable_since = Some(Instant::now()),
                (Err(e), Some(since)) if since.elapsed() > UNREACHABLE_LIMIT => {
                    return Err(format!(
                        "device unreachable for {:.1} s even after healing the header: {e}; {}",
                        since.elapsed().as_secs_f64(),
                        c.n
                    ));
                }
                _ => {}
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    note(&format!("chaos done after {secs:.1} s: {}", c.n));
    // A CXL Reset the last accesses started silences the BARs until it ends.
    let healing = Instant::now();
    loop {
        t.saved.heal(false)?;
        match t.probe() {
            Ok(()) => break,
            Err(e) if healing.elapsed() > UNREACHABLE_LIMIT => {
                return Err(format!("after healing the header: {e}; {}", c.n));
            }
            Err(_) => sys::sleep_ms(10),
        }
    }
    let caps = t.bar0.read(t.cachemem, 4) as u32;
    if cxl_regs::component::entry_id(caps) != cxl_regs::component::CAP_ID_ARRAY {
        return Err(format!(
            "BAR0 CXL.cache/mem capability header reads {caps:#x}; {}",
            c.n
        ));
    }
    let ver = t.bar4.read(layout::ENGINE_OFFSET + e::VERSION, 4) as u32;
    let sweeps: Vec<String> = (0..3)
        .map(|i| match swept_at[i] {
            Some(at) => format!("{:.1} s", at),
            None => format!("{:#x} of {:#x} bytes", c.sweep[i], sweep_len[i]),
        })
        .collect();
    Ok(format!(
        "{} accesses in {secs:.1} s ({:.0}/s; seed {seed:#x}); every byte written: \
         BAR0 {}, BAR4 {}, config {}; slowest {:.1} ms ({}); \
         then vendor {:04x}:{:04x}, engine CXLA v{ver}, cache/mem header {caps:#x}",
        c.n.total(),
        c.n.total() as f64 / secs.max(0.001),
        sweeps[0],
        sweeps[1],
        sweeps[2],
        c.slowest.0.as_secs_f64() * 1e3,
        c.slowest.1,
        t.vendor,
        t.device
    ))
}

/// Reset the function through sysfs with the kernel's first method, or with
/// `method`; Ok(the methods the kernel offers).
fn reset(t: &Target, method: Option<&str>) -> Result<String, String> {
    let dev = format!("{PCI_DEVICES}/{}", t.bdf);
    let rm = format!("{dev}/reset_method");
    let methods = sys::read_attr(&rm)?;
    if let Some(m) = method {
        sys::write_attr(&rm, m).map_err(|e| format!("write {m} to {rm}: {e}"))?;
    }
    let r = sys::write_attr(format!("{dev}/reset"), "1")
        .map_err(|e| format!("write {dev}/reset: {e} (reset_method: {methods})"));
    if method.is_some() {
        sys::write_attr(&rm, "default").map_err(|e| format!("write default to {rm}: {e}"))?;
    }
    r.map(|_| methods)
}

/// Leave state that a conventional reset clears: decoder 0 committed with Lock on
/// Commit (an FLR keeps it), engine address registers set (an FLR clears them).
/// Returns what was done.
fn dirty(t: &Target) -> String {
    let p = hdmprog::Program {
        base: 1 << 32,
        size: cxl_regs::hdm::GRANULE,
        iw: 0,
        ig: 0,
        host_only: false,
        lock_on_commit: true,
        skip_or_targets: 0,
    };
    // A Commit left set by a failed commit freezes the fields: clear it first (a
    // locked decoder stays as it is, which is just as dirty).
    let cur = hdmprog::read_decoder(&t.bar0, t.hdm, 0);
    if cur.ctrl & cxl_regs::hdm::CTRL_COMMIT != 0 && !cur.committed() {
        let ctrl = t.hdm + (cxl_regs::hdm::decoder_offset(0) + cxl_regs::hdm::DEC_CONTROL) as u64;
        t.bar0.write32(ctrl, cur.ctrl & !cxl_regs::hdm::CTRL_COMMIT);
    }
    let dec = match hdmprog::commit(&t.bar0, t.hdm, 0, &p, &|| sys::sleep_ms(1)) {
        Ok((_, st)) => format!("decoder 0 committed and locked (control {:#x})", st.ctrl),
        Err(e) => format!("decoder 0 not committed ({e})"),
    };
    t.bar4.write(layout::ENGINE_OFFSET + e::SRC, 8, 0x1234_5000);
    t.bar4.write(layout::ENGINE_OFFSET + e::LEN, 8, 0x1000);
    format!("{dec}, engine SRC/LEN set")
}

/// CXL.mem state, and all of config space, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CxlMem {
    decoders: Vec<DecoderState>,
    gctrl: u32,
    /// The CXL Device DVSEC's control bytes ([`Target::cxl_dvsec_range`]).
    dvsec: Vec<u8>,
    cfg: Vec<u8>,
}

/// Config space equals `want`.
fn check_config_is(t: &Target, want: &[u8], what: &str) -> Result<String, String> {
    let p = format!("{PCI_DEVICES}/{}/config", t.bdf);
    let now = std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?;
    if config_diff(want, &now).is_empty() {
        Ok(format!("config: {} bytes {what}", now.len()))
    } else {
        Err(format!("config differs: {}", describe_diff(want, &now, 12)))
    }
}

/// Config space equals the snapshot taken before the chaos.
fn check_config(t: &Target) -> Result<String, String> {
    check_config_is(t, &t.saved.snap, "as before")
}

/// After an FLR: config space as before the chaos, except the CXL Device DVSEC's
/// control bytes, which are as they were just before the FLR (`pre`).
fn check_config_after_flr(t: &Target, pre: &CxlMem) -> Result<String, String> {
    let mut want = t.saved.snap.clone();
    if let Some(w) = want.get_mut(t.cxl_dvsec_range()) {
        w.copy_from_slice(&pre.dvsec);
    }
    check_config_is(
        t,
        &want,
        "as before the chaos, CXL Device DVSEC control as before the FLR",
    )
}

/// After an FLR: the decoders, Global Control and DVSEC control as before it.
fn check_cxl_mem_kept(t: &Target, pre: &CxlMem) -> Result<String, String> {
    let now = t.cxl_mem()?;
    let mut errs = Vec::new();
    for (n, (a, b)) in pre.decoders.iter().zip(&now.decoders).enumerate() {
        if a != b {
            errs.push(format!("decoder {n}: {b:x?}, before the FLR {a:x?}"));
        }
    }
    if now.gctrl != pre.gctrl {
        errs.push(format!(
            "global control {:#x}, before {:#x}",
            now.gctrl, pre.gctrl
        ));
    }
    if now.dvsec != pre.dvsec {
        errs.push(format!(
            "CXL Device DVSEC: {}",
            describe_diff(&pre.cfg, &now.cfg, 12)
        ));
    }
    if !errs.is_empty() {
        return Err(errs.join("; "));
    }
    let d0 = match now.decoders.first() {
        Some(d) if d.committed() => {
            let locked = d.ctrl & cxl_regs::hdm::CTRL_LOCK_ON_COMMIT != 0;
            format!("committed{}", if locked { " and locked" } else { "" })
        }
        _ => "not committed".into(),
    };
    Ok(format!(
        "decoders, global control {:#x} and DVSEC kept; decoder 0 {d0}",
        now.gctrl
    ))
}

/// The HDM decoders and Global Control as before the chaos (power-on).
fn check_decoders(t: &Target) -> Result<String, String> {
    let mut errs = Vec::new();
    for n in 0..t.decoders {
        let now = hdmprog::read_decoder(&t.bar0, t.hdm, n);
        let before = t.dec_snap[n as usize];
        if now != before {
            errs.push(format!(
                "decoder {n}: {now:x?}, before the chaos {before:x?}"
            ));
        }
    }
    let g = t.bar0.read32(t.hdm + cxl_regs::hdm::GLOBAL_CONTROL as u64);
    if g != t.gctrl_snap {
        errs.push(format!("global control {g:#x}, before {:#x}", t.gctrl_snap));
    }
    if !errs.is_empty() {
        return Err(errs.join("; "));
    }
    let unc = t.dec_snap.iter().filter(|d| !d.committed()).count();
    Ok(format!(
        "decoders: {unc} of {} uncommitted, global control {g:#x}",
        t.decoders
    ))
}

/// DMA engine registers at their reset values, mailbox without a command.
fn check_idle(t: &Target) -> Result<String, String> {
    let r = |o| t.bar4.read(layout::ENGINE_OFFSET + o, 8);
    let regs = [
        ("SRC", r(e::SRC)),
        ("DST", r(e::DST)),
        ("LEN", r(e::LEN)),
        ("CONTROL/DOORBELL", r(e::CONTROL)),
        ("STATUS", t.bar4.read(layout::ENGINE_OFFSET + e::STATUS, 4)),
    ];
    let dirty: Vec<String> = regs
        .iter()
        .filter(|r| r.1 != 0)
        .map(|r| format!("{} {:#x}", r.0, r.1))
        .collect();
    if !dirty.is_empty() {
        return Err(format!(
            "engine registers not at reset values: {}",
            dirty.join(", ")
        ));
    }
    let Some((m, _)) = t.mailbox else {
        return Ok("engine registers 0 (mailbox off)".into());
    };
    let ctrl = t.bar0.read(m + mb::CONTROL as u64, 4);
    let st = t.bar0.read(m + mb::STATUS as u64, 8);
    if ctrl as u32 & mb::CTRL_DOORBELL != 0 || st & mb::STATUS_BG_OPERATION != 0 {
        return Err(format!("mailbox control {ctrl:#x} status {st:#x}"));
    }
    Ok(format!(
        "engine registers 0; mailbox control {ctrl:#x} status {st:#x}"
    ))
}

pub fn run(cfg: &Config, rep: &mut Reporter) {
    let seed = cfg.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut target: Option<Target> = None;
    rep.check(
        "z.0",
        "chaos set-up: no CXL module loaded, decoders uncommitted, snapshots taken",
        || {
            let loaded: Vec<String> = sys::loaded_modules()
                .into_iter()
                .filter(|m| CXL_MODULES.contains(&m.as_str()))
                .collect();
            if !loaded.is_empty() {
                return Err(format!("loaded already: {loaded:?}"));
            }
            let t = Target::open(cfg)?;
            let committed: Vec<u32> = (0..t.decoders)
                .filter(|&n| t.dec_snap[n as usize].committed())
                .collect();
            let detail = format!(
                "{} at BAR0 HDM {:#x} ({} decoders{}), config space up to {:#x}, mailbox {}",
                t.bdf,
                t.hdm,
                t.decoders,
                if committed.is_empty() {
                    String::new()
                } else {
                    format!(", committed at power-on: {committed:?}")
                },
                t.ext_end,
                t.mailbox
                    .map(|(m, s)| format!("BAR0+{m:#x} ({s} bytes)"))
                    .unwrap_or_else(|| "off".into())
            );
            target = Some(t);
            Ok(detail)
        },
    );
    let Some(t) = target else {
        rep.check("z.1", "chaos", || {
            Err("prerequisite missing: set-up (z.0)".into())
        });
        return;
    };
    let title = format!("chaos for {} s, device still answers", cfg.seconds);
    rep.check("z.1", &title, || chaos(&t, cfg, seed));
    let need = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err("prerequisite missing: reset (z.2)".to_string())
        }
    };
    let mut pre: Option<CxlMem> = None;
    let reset_ok = rep.check(
        "z.2",
        "function reset through sysfs, the kernel's first method (header restored first)",
        || {
            t.saved.restore_saved_state()?;
            let d = dirty(&t);
            pre = Some(t.cxl_mem()?);
            let methods = reset(&t, None)?;
            t.probe().map_err(|e| format!("after the reset: {e}"))?;
            Ok(format!("reset_method: {methods}; before: {d}"))
        },
    );
    let pre = pre.filter(|_| reset_ok);
    rep.check(
        "z.3",
        "after the FLR: config space as before the chaos but the CXL DVSEC, as before the FLR",
        || {
            need(reset_ok)?;
            check_config_after_flr(&t, pre.as_ref().ok_or("no state before the FLR")?)
        },
    );
    rep.check(
        "z.4",
        "after the FLR: HDM decoders, Global Control, DVSEC untouched (CXL r3.1 §9.5)",
        || {
            need(reset_ok)?;
            check_cxl_mem_kept(&t, pre.as_ref().ok_or("no state before the FLR")?)
        },
    );
    rep.check(
        "z.5",
        "after the reset: DMA engine and mailbox idle",
        || {
            need(reset_ok)?;
            check_idle(&t)
        },
    );
    rep.check(
        "z.6",
        "bus reset through sysfs (SBR -> QEMU -> vfio-user DEVICE_RESET): state as at power-on, CXL.mem included",
        || {
            need(reset_ok)?;
            let dev = format!("{PCI_DEVICES}/{}", t.bdf);
            let methods = sys::read_attr(format!("{dev}/reset_method"))?;
            let m = ["cxl_bus", "bus"]
                .into_iter()
                .find(|m| methods.split_whitespace().any(|x| x == *m))
                .ok_or_else(|| format!("no bus reset among reset_method: {methods}"))?;
            let d = dirty(&t);
            reset(&t, Some(m))?;
            t.probe().map_err(|e| format!("after the {m} reset: {e}"))?;
            let parts = [check_config(&t)?, check_decoders(&t)?, check_idle(&t)?];
            Ok(format!("{m}; before: {d}; after: {}", parts.join("; ")))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAY: CfgLayout = CfgLayout {
        exp: 0x50,
        msix: 0x90,
        pm: 0x40,
    };

    #[test]
    fn rng_is_seeded_and_bounded() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..8).map(|_| r.next()).collect()
        };
        let mut r = Rng::new(7);
        assert_eq!(a, (0..8).map(|_| r.next()).collect::<Vec<_>>());
        assert_ne!(Rng::new(8).next(), a[0]);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
            assert!(matches!(r.width(), 1 | 2 | 4 | 8));
        }
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn offsets_are_aligned_inside_and_hit_hot_windows() {
        let mut r = Rng::new(1);
        let hot = [(0x1300, 0x1390), (0x1_0fe0, 0x1_1060)];
        let mut in_hot = 0;
        for _ in 0..4000 {
            let w = r.width();
            let (o, w2, _) = pick_offset(&mut r, 0x2_0000, w, &hot, None);
            assert_eq!(w2, w);
            assert_eq!(o % w as u64, 0);
            assert!(o + w as u64 <= 0x2_0000);
            if hot.iter().any(|h| (h.0..h.1).contains(&o)) {
                in_hot += 1;
            }
        }
        assert!(in_hot > 1500, "{in_hot} of 4000 in the hot windows");
        // a window running past the end is clipped
        for _ in 0..100 {
            let (o, _, _) = pick_offset(&mut r, 0x100, 8, &[(0xf0, 0x200)], None);
            assert!(o <= 0xf8);
        }
    }

    #[test]
    fn the_sweep_writes_every_byte() {
        let mut r = Rng::new(3);
        let len = 0x1000u64;
        let mut cursor = 0u64;
        let mut covered = vec![false; len as usize];
        let mut ops = 0;
        while cursor < len {
            let w = r.width();
            let (o, w, swept) = pick_offset(&mut r, len, w, &[(0x10, 0x20)], Some(&mut cursor));
            assert_eq!(o % w as u64, 0);
            if swept {
                assert_eq!(w, 8);
                covered[o as usize..o as usize + w].fill(true);
            }
            ops += 1;
            assert!(ops < 10_000);
        }
        assert!(covered.iter().all(|&c| c), "a byte was skipped");
        // done: uniform again
        let (_, _, swept) = pick_offset(&mut r, len, 4, &[], Some(&mut cursor));
        assert!(!swept);
    }

    #[test]
    fn config_guard_holds_bus_master_or_msix() {
        let off = pci::COMMAND;
        let mut b = [0xff, 0xff];
        assert!(!guard_config(
            off,
            &mut b,
            &LAY,
            Policy { bus_master: false }
        ));
        assert_eq!(b[0], !(pci::CMD_BUS_MASTER as u8));
        let mut b = [0xff, 0xff];
        guard_config(off, &mut b, &LAY, Policy { bus_master: true });
        assert_eq!(b, [0xff, 0xff]);
        // MSI-X Enable is bit 15 of Message Control at cap + 2
        let mut m = [0xffu8; 4];
        guard_config(0x90, &mut m, &LAY, Policy { bus_master: true });
        assert_eq!(m, [0xff, 0xff, 0xff, 0x7f]);
        let mut m = [0xffu8; 4];
        guard_config(0x90, &mut m, &LAY, Policy { bus_master: false });
        assert_eq!(m, [0xff; 4]);
        // a write covering DEVCTL's high byte with bit 15 is an FLR
        let mut d = [0x00, 0x80];
        assert!(guard_config(
            0x58,
            &mut d,
            &LAY,
            Policy { bus_master: false }
        ));
        let mut d = [0x80];
        assert!(!guard_config(
            0x58,
            &mut d,
            &LAY,
            Policy { bus_master: false }
        ));
        // an 8-byte write from 0 covers Command
        let mut q = [0xffu8; 8];
        guard_config(0, &mut q, &LAY, Policy { bus_master: false });
        assert_eq!(q[4], 0xfb);
    }

    #[test]
    fn bar4_guard_clears_only_the_direction_bit() {
        let c = layout::ENGINE_OFFSET + e::CONTROL;
        assert_eq!(guard_bar4(c, 4, 0xffff_ffff), 0xffff_fffe);
        assert_eq!(guard_bar4(c, 1, 0xff), 0xfe);
        assert_eq!(guard_bar4(c - 4, 8, !0), !(1u64 << 32));
        assert_eq!(guard_bar4(c + 1, 1, 0xff), 0xff);
        assert_eq!(guard_bar4(c - 8, 8, !0), !0);
    }

    #[test]
    fn diffs_are_reported_by_dword() {
        let a = vec![0u8; 16];
        let mut b = a.clone();
        assert!(config_diff(&a, &b).is_empty());
        b[5] = 0x12;
        b[6] = 0x34;
        b[12] = 1;
        assert_eq!(
            config_diff(&a, &b),
            vec![(5, 0, 0x12), (6, 0, 0x34), (12, 0, 1)]
        );
        assert_eq!(
            describe_diff(&a, &b, 8),
            "0x004: 0x00000000 -> 0x00341200, 0x00c: 0x00000000 -> 0x00000001"
        );
        assert!(describe_diff(&a, &b, 1).ends_with("... 2 dwords in all"));
    }
}
