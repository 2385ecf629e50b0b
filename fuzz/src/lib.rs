//! Shared pieces of the cxl-accel fuzz targets (fuzz/fuzz_targets/): a clock the
//! input drives, a small deterministic generator for hook decisions, the spec's
//! mailbox return codes, and the vfio-user message builder used for seed inputs.

use std::sync::atomic::{AtomicU64, Ordering};

use accel_type2::Clock;

/// A clock that moves only when told, plus `tick_ns` on every read (0: never on
/// its own). Reads that advance make time-driven paths (delayed commits,
/// background commands) reachable from a transport that only polls.
#[derive(Debug, Default)]
pub struct FakeClock {
    now: AtomicU64,
    tick_ns: u64,
}

impl FakeClock {
    pub fn new(tick_ns: u64) -> Self {
        Self {
            now: AtomicU64::new(0),
            tick_ns,
        }
    }
    pub fn advance(&self, ns: u64) {
        // Saturating: the model must cope with time near u64::MAX, but not wrap.
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ns))
            });
    }
    pub fn get(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        let t = self.get();
        if self.tick_ns != 0 {
            self.advance(self.tick_ns);
        }
        t
    }
}

/// xorshift64*: hook decisions drawn from a seed in the input, so a crash replays.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Whether `rc` is a return code of CXL r3.1 §8.2.8.4.5.1 (Table 8-34), which ends
/// at Invalid Log (0x17) for this device.
pub fn spec_rc(rc: u16) -> bool {
    rc <= cxl_regs::mailbox::RC_INVALID_LOG
}

/// A vendor hook's answer, drawn from `r`: success, or any failing return code of
/// the spec's table (the hook's type allows no other).
pub fn hook_rc(r: &mut Rng) -> Result<(), mailbox::ReturnCode> {
    match r.below(16) {
        0..=5 => Ok(()),
        _ => {
            let all: Vec<mailbox::ReturnCode> = mailbox::ReturnCode::all().collect();
            let i = r.below(all.len() as u64) as usize;
            Err(all[i])
        }
    }
}

/// vfio-user wire helpers for the seed corpus (examples/gen_seeds.rs) and tests.
pub mod vfio {
    /// Header flag bits the harness reads from the (otherwise unused) `error`
    /// field of a request: attach this many fds (bits 4:0) of this kind.
    pub const HINT_FDS_MASK: u32 = 0x1f;
    /// With this bit the fds are the guest-RAM memfd (DMA_MAP); without it, fds
    /// of the kind in bits 11:8 ([`FdKind`]; eventfds by default, for SET_IRQS).
    pub const HINT_GUEST_RAM: u32 = 0x20;
    /// Before the message is sent, the guest-RAM memfd is shrunk (as a hostile
    /// peer would after DMA_MAP) to the number of 4 KiB pages in bits 15:12.
    pub const HINT_SHRINK: u32 = 0x40;
    pub const HINT_SHRINK_PAGES_SHIFT: u32 = 12;
    /// Before the message is sent, every (non-blocking) eventfd sent so far is
    /// made blocking again through the client's copy: the description is shared.
    pub const HINT_MAKE_BLOCKING: u32 = 0x80;
    pub const HINT_KIND_SHIFT: u32 = 8;
    pub const HINT_KIND_MASK: u32 = 0xf << HINT_KIND_SHIFT;

    /// Kinds of fd the harness attaches (bits 11:8 of the hint): an eventfd is
    /// the right kind for SET_IRQS, a regular file or memfd for DMA_MAP, and the
    /// rest are hostile.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u32)]
    pub enum FdKind {
        EventFd = 0,
        /// A blocking eventfd whose counter is full: writing 1 to it blocks.
        FullBlockingEventFd = 1,
        /// The write end of a full, blocking pipe (its read end stays open).
        FullPipe = 2,
        PipeReadEnd = 3,
        RegularFile = 4,
        Socket = 5,
        DevNull = 6,
        /// A fresh memfd of 64 KiB (not the guest RAM).
        Memfd = 7,
        /// An O_PATH fd of a directory.
        Directory = 8,
        TimerFd = 9,
    }

    impl FdKind {
        pub fn from_hint(hint: u32) -> FdKind {
            match (hint & HINT_KIND_MASK) >> HINT_KIND_SHIFT {
                1 => FdKind::FullBlockingEventFd,
                2 => FdKind::FullPipe,
                3 => FdKind::PipeReadEnd,
                4 => FdKind::RegularFile,
                5 => FdKind::Socket,
                6 => FdKind::DevNull,
                7 => FdKind::Memfd,
                8 => FdKind::Directory,
                9 => FdKind::TimerFd,
                _ => FdKind::EventFd,
            }
        }

        /// The hint that attaches `count` fds of this kind.
        pub fn hint(self, count: u32) -> u32 {
            ((self as u32) << HINT_KIND_SHIFT) | (count & HINT_FDS_MASK)
        }
    }

    /// The hint that shrinks the guest RAM to `pages` 4 KiB pages first.
    pub fn shrink_hint(pages: u32) -> u32 {
        HINT_SHRINK | ((pages & 0xf) << HINT_SHRINK_PAGES_SHIFT)
    }

    /// One request: header (id, command, size, flags, error=hint) and body.
    pub fn msg(id: u16, command: u16, flags: u32, hint: u32, body: &[u8]) -> Vec<u8> {
        let size = (16 + body.len()) as u32;
        let mut v = Vec::with_capacity(size as usize);
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&command.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&hint.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    pub fn version(id: u16) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(
            br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"pgsizes":4096}}"#,
        );
        b.push(0);
        msg(id, 1, 0, 0, &b)
    }

    pub fn region_write(id: u16, region: u32, offset: u64, data: &[u8], posted: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&region.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        msg(id, 10, if posted { 1 << 4 } else { 0 }, 0, &b)
    }

    pub fn region_read(id: u16, region: u32, offset: u64, count: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&region.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        msg(id, 9, 0, 0, &b)
    }

    /// DMA_MAP of guest RAM (the harness's memfd when `with_fd`).
    pub fn dma_map(id: u16, iova: u64, size: u64, offset: u64, with_fd: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&32u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes()); // READ | WRITE
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        let hint = if with_fd { HINT_GUEST_RAM | 1 } else { 0 };
        msg(id, 2, 0, hint, &b)
    }

    pub fn dma_unmap(id: u16, iova: u64, size: u64, all: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(&u32::from(all).to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        msg(id, 3, 0, 0, &b)
    }

    pub fn get_info(id: u16) -> Vec<u8> {
        msg(
            id,
            4,
            0,
            0,
            &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        )
    }

    pub fn region_info(id: u16, index: u32, argsz: u32) -> Vec<u8> {
        let mut b = vec![0u8; 32];
        b[0..4].copy_from_slice(&argsz.to_le_bytes());
        b[8..12].copy_from_slice(&index.to_le_bytes());
        msg(id, 5, 0, 0, &b)
    }

    pub fn irq_info(id: u16, index: u32) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[0..4].copy_from_slice(&16u32.to_le_bytes());
        b[8..12].copy_from_slice(&index.to_le_bytes());
        msg(id, 7, 0, 0, &b)
    }

    /// SET_IRQS; `eventfds` of them are attached (DATA_EVENTFD), else DATA_NONE,
    /// or DATA_BOOL with `bools`.
    pub fn set_irqs(
        id: u16,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        eventfds: u32,
        bools: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&20u32.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(&start.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(bools);
        msg(id, 8, 0, eventfds & HINT_FDS_MASK, &b)
    }

    /// `m` (one encoded request) with its hint replaced by `hint`.
    pub fn with_hint(mut m: Vec<u8>, hint: u32) -> Vec<u8> {
        if let Some(h) = m.get_mut(12..16) {
            h.copy_from_slice(&hint.to_le_bytes());
        }
        m
    }

    pub fn reset(id: u16) -> Vec<u8> {
        msg(id, 13, 0, 0, &[])
    }
}

/// Reach statistics for tuning the targets: with `CXL_FUZZ_STATS=N` in the
/// environment, [`count`](stats::count) tallies named events and every N inputs the
/// tallies go to stderr. Costs one relaxed load otherwise.
pub mod stats {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    /// u64::MAX: not read yet; 0: off.
    static EVERY: AtomicU64 = AtomicU64::new(u64::MAX);
    static RUNS: AtomicU64 = AtomicU64::new(0);
    static TALLY: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

    fn every() -> u64 {
        match EVERY.load(Ordering::Relaxed) {
            u64::MAX => {
                let n = std::env::var("CXL_FUZZ_STATS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                EVERY.store(n, Ordering::Relaxed);
                n
            }
            n => n,
        }
    }

    pub fn count(what: &'static str) {
        if every() != 0 {
            if let Ok(mut t) = TALLY.lock() {
                *t.entry(what).or_default() += 1;
            }
        }
    }

    /// Call once per input.
    pub fn input_done() {
        let n = every();
        if n != 0 && (RUNS.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(n) {
            if let Ok(t) = TALLY.lock() {
                eprintln!("stats after {} inputs: {t:?}", RUNS.load(Ordering::Relaxed));
            }
        }
    }
}
