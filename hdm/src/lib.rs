//! CXL HDM decoder bank (CXL r3.1 §8.2.4.20): the register block of an endpoint's
//! HDM Decoder Capability structure, with exact commit, lock, uncommit and reset
//! semantics, HPA->DPA translation and DPA bookkeeping. Pure logic, no I/O.
//!
//! Register access is by dword: `read(offset)` and `write(offset, value, mask)`,
//! where `offset` is relative to the start of the HDM Decoder Capability structure
//! and `mask` has a 1 for every bit the access actually writes (sub-dword writes
//! from the guest arrive with a partial mask). Unaligned offsets are rounded down to
//! the dword; offsets at or beyond [`HdmDecoderBank::block_len`] read 0 and ignore
//! writes.
//!
//! API CONTRACT (other crates build against this; extend, do not break):
//! - `HdmConfig`, `HdmDecoderBank::new`, `read`, `write`, `reset`, `decoder`,
//!   `decoder_count`, `block_len`, `global_enable`, `finish_commit`, `translate`.
//! - Extensions: `reset_decoders`.
//!
//! # Behaviour chosen where the spec leaves room
//!
//! - **Commit is asynchronous.** A valid 0→1 Commit write leaves the decoder pending
//!   (Commit=1, Committed=0, Error=0) and returns [`WriteOutcome::CommitRequested`];
//!   the device model asks its firmware and calls [`HdmDecoderBank::finish_commit`].
//!   Software polls Committed / Error Not Committed (§8.2.4.20.12); Linux polls
//!   for 20 ms.
//! - **Fields are frozen while Commit=1** (pending, committed or failed): writes to
//!   Base, Size, DPA Skip and the RWL Control fields are ignored. Software programs
//!   them before setting Commit (§8.2.4.20.12); freezing them afterwards keeps the
//!   decode identical to what was checked. Clearing Commit (in a write that may also
//!   change the other Control fields) is the way to reprogram.
//! - **Uncommit in any order; commit in order.** §8.2.4.20.12 has software commit
//!   decoder m before m+1, with m+1's HPA range above m's, and a commit whose lower
//!   decoders are not all committed fails. Clearing Commit is honoured on any
//!   unlocked decoder: Linux's `cxl_decoder_reset` clears it out of order when
//!   regions are torn down out of order, and later re-programs the decoder. (Ignoring
//!   that write would leave Commit=1, so the re-program would be dropped and its
//!   commit would read back Committed at once with stale values.) A decoder that stays
//!   committed above keeps the DPA base it latched when it was committed, and a
//!   decoder re-committed below it must fit underneath in both HPA and DPA
//!   ([`CommitError::HpaOverlapsNext`], [`CommitError::DpaOverlapsNext`]).
//! - **Lock On Commit** (§8.2.4.20.7 bit 8): once such a decoder is committed, every
//!   write to any of its registers is ignored until [`HdmDecoderBank::reset`] (a
//!   conventional reset); [`HdmDecoderBank::reset_decoders`] can keep it (CXL Reset).
//! - **Translation honours HDM Decoder Enable** (§8.2.4.20.2 bit 1): with it clear
//!   the device decodes through the DVSEC Range registers (§8.1.3.8), not the HDM
//!   decoders, so [`HdmDecoderBank::translate`] returns `None`.
//!
//! # Example
//!
//! ```
//! use hdm::{HdmConfig, HdmDecoderBank, WriteOutcome};
//! use cxl_regs::hdm as regs;
//!
//! let mut bank = HdmDecoderBank::new(HdmConfig { decoder_count: 2, capacity: 1 << 30 })?;
//! let d0 = regs::decoder_offset(0);
//! // What a driver does: base, size, then Control with Commit (1-way, 256 B).
//! bank.write(d0 + regs::DEC_BASE_HI, 0x1, !0);
//! bank.write(d0 + regs::DEC_BASE_LO, 0x1000_0000, !0);
//! bank.write(d0 + regs::DEC_SIZE_LO, 0x2000_0000, !0);
//! let out = bank.write(d0 + regs::DEC_CONTROL, regs::CTRL_COMMIT, !0);
//! assert_eq!(out, WriteOutcome::CommitRequested(0));
//! bank.finish_commit(0, true); // the firmware accepted
//! assert_ne!(bank.read(d0 + regs::DEC_CONTROL) & regs::CTRL_COMMITTED, 0);
//! bank.write(regs::GLOBAL_CONTROL, regs::GCTRL_HDM_DECODER_ENABLE, !0);
//! assert_eq!(bank.translate(0x1_1000_0040), Some(0x40));
//! # Ok::<(), hdm::HdmError>(())
//! ```

#![forbid(unsafe_code)]

mod commit;
mod interleave;

pub use commit::{CommitError, HPA_LIMIT};
pub use interleave::Interleave;

use commit::{Neighbours, Placed};
use cxl_regs::hdm as regs;
use thiserror::Error;

/// Errors in building a decoder bank or in programming it from firmware.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HdmError {
    /// [`HdmConfig::decoder_count`] is not 1, 2 or 4.
    #[error("decoder count {0} is not supported (1, 2 or 4)")]
    BadDecoderCount(u8),
    /// [`HdmConfig::capacity`] is 0 or not a multiple of 256 MiB.
    #[error("capacity {0:#x} is not a non-zero multiple of 256 MiB")]
    BadCapacity(u64),
    /// A decoder index at or beyond the bank's decoder count.
    #[error("decoder {0} does not exist")]
    NoSuchDecoder(usize),
    /// [`HdmDecoderBank::precommit`] on a decoder whose Commit bit is already set.
    #[error("decoder {0} is already committed, pending or failed; uncommit it first")]
    DecoderBusy(usize),
    /// [`HdmDecoderBank::precommit`] with a programming that fails the commit checks.
    #[error("decoder {index} cannot be committed: {reason}")]
    CommitRejected { index: usize, reason: CommitError },
}

/// Static configuration of a bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HdmConfig {
    /// 1, 2 or 4 decoders.
    pub decoder_count: u8,
    /// Device (DPA) capacity in bytes, multiple of 256 MiB.
    pub capacity: u64,
}

/// What a write did, for the caller (the device model) to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Nothing that needs the caller.
    None,
    /// Decoder `index` passed every check and asks to be committed. It reads
    /// Commit=1, Committed=0 until the caller calls [`HdmDecoderBank::finish_commit`].
    CommitRequested(usize),
    /// Decoder `index` failed a check: Error-not-Committed is set.
    /// [`HdmDecoderBank::commit_error`] says why.
    CommitFailed(usize),
    /// Decoder `index` was uncommitted (Commit cleared). If a commit request was
    /// pending, it is cancelled: a later `finish_commit` for it is ignored.
    Uncommitted(usize),
}

/// A snapshot of one decoder's programmed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecoderState {
    /// HPA base, bytes (§8.2.4.20.3/.4).
    pub base: u64,
    /// HPA size, bytes (§8.2.4.20.5/.6).
    pub size: u64,
    /// DPA skipped before this decoder's DPA range, bytes (§8.2.4.20.10/.11).
    pub dpa_skip: u64,
    /// Encoded interleave ways (IW field).
    pub iw: u8,
    /// Encoded interleave granularity (IG field).
    pub ig: u8,
    /// Lock On Commit, Control bit 8.
    pub lock_on_commit: bool,
    /// Commit, Control bit 9: software asked for the decoder to be committed.
    pub commit: bool,
    /// Committed, Control bit 10: the decoder decodes.
    pub committed: bool,
    /// Error Not Committed, Control bit 11: the commit checks or the firmware
    /// refused the programming.
    pub error: bool,
    /// Target Type bit 12 as written: true = host-only coherent, false = device-coherent.
    pub host_only: bool,
    /// Committed with Lock On Commit: every register of the decoder is read-only
    /// until reset (not a register bit of its own).
    pub locked: bool,
}

impl DecoderState {
    /// A commit request awaits [`HdmDecoderBank::finish_commit`].
    pub fn pending(&self) -> bool {
        self.commit && !self.committed && !self.error
    }

    /// The Decoder Control register image (§8.2.4.20.7).
    fn control(&self) -> u32 {
        let mut v = (u32::from(self.ig) << regs::CTRL_IG_SHIFT) & regs::CTRL_IG_MASK;
        v |= (u32::from(self.iw) << regs::CTRL_IW_SHIFT) & regs::CTRL_IW_MASK;
        for (set, bit) in [
            (self.lock_on_commit, regs::CTRL_LOCK_ON_COMMIT),
            (self.commit, regs::CTRL_COMMIT),
            (self.committed, regs::CTRL_COMMITTED),
            (self.error, regs::CTRL_ERROR_NOT_COMMITTED),
            (self.host_only, regs::CTRL_TARGET_TYPE_HOST_ONLY),
        ] {
            if set {
                v |= bit;
            }
        }
        v
    }

    /// Take the RW fields of a Control register image (everything but the status
    /// bits and Commit itself).
    fn set_control_fields(&mut self, v: u32) {
        // Both fields are 4 bits wide after masking, so the casts are lossless.
        self.ig = ((v & regs::CTRL_IG_MASK) >> regs::CTRL_IG_SHIFT) as u8;
        self.iw = ((v & regs::CTRL_IW_MASK) >> regs::CTRL_IW_SHIFT) as u8;
        self.lock_on_commit = v & regs::CTRL_LOCK_ON_COMMIT != 0;
        self.host_only = v & regs::CTRL_TARGET_TYPE_HOST_ONLY != 0;
    }
}

/// Result of an HPA decode: which decoder claimed it, the DPA, and the interleave
/// position the address selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Index of the committed decoder whose HPA range holds the address.
    pub decoder: usize,
    /// Device physical address.
    pub dpa: u64,
    /// Interleave position (0..ways) the address selects; an endpoint accepts the
    /// address whatever its own position is.
    pub position: u32,
}

/// The HDM decoder bank of an endpoint.
#[derive(Debug, Clone)]
pub struct HdmDecoderBank {
    cfg: HdmConfig,
    decoders: Vec<DecoderState>,
    /// Per decoder: why its last commit failed (`Some` exactly while Error Not
    /// Committed is set) and the DPA base it latched when committed.
    meta: Vec<Meta>,
    global_enable: bool,
}

/// Bookkeeping of one decoder that is not a register field.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    failure: Option<CommitError>,
    /// DPA base latched when the commit was requested (valid while pending or
    /// committed). Latching keeps a committed decoder's DPA range fixed when a
    /// decoder below it is uncommitted and reprogrammed.
    dpa_base: u64,
}

impl Meta {
    /// A commit that passed the checks, at `dpa_base`.
    fn latched(dpa_base: u64) -> Meta {
        Meta {
            failure: None,
            dpa_base,
        }
    }
}

/// Replace the bits of `old` selected by `mask` with those of `value`.
fn merge(old: u32, value: u32, mask: u32) -> u32 {
    (old & !mask) | (value & mask)
}

/// Low dword of a 64-bit field.
fn lo(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

/// High dword of a 64-bit field.
fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

/// Write the low dword of a 256 MiB-granular field: only bits 31:28 are writable.
fn set_lo(field: &mut u64, value: u32, mask: u32) {
    let v = merge(lo(*field), value, mask) & regs::LOW_ADDR_MASK;
    *field = (*field & !0xffff_ffff) | u64::from(v);
}

/// Write the high dword of a 64-bit field.
fn set_hi(field: &mut u64, value: u32, mask: u32) {
    let v = merge(hi(*field), value, mask);
    *field = (*field & 0xffff_ffff) | (u64::from(v) << 32);
}

impl HdmDecoderBank {
    /// A bank of `cfg.decoder_count` decoders (1, 2 or 4) in their power-on state,
    /// for a device of `cfg.capacity` bytes (a non-zero multiple of 256 MiB).
    pub fn new(cfg: HdmConfig) -> Result<Self, HdmError> {
        if !matches!(cfg.decoder_count, 1 | 2 | 4) {
            return Err(HdmError::BadDecoderCount(cfg.decoder_count));
        }
        if cfg.capacity == 0 || !cfg.capacity.is_multiple_of(regs::GRANULE) {
            return Err(HdmError::BadCapacity(cfg.capacity));
        }
        let n = usize::from(cfg.decoder_count);
        Ok(Self {
            decoders: vec![DecoderState::default(); n],
            meta: vec![Meta::default(); n],
            cfg,
            global_enable: false,
        })
    }

    /// Number of decoders in the bank.
    pub fn decoder_count(&self) -> usize {
        self.decoders.len()
    }

    /// Length in bytes of the capability structure: 0x10 + 0x20 * n.
    pub fn block_len(&self) -> u32 {
        // At most 4 decoders: no truncation.
        regs::block_len(self.decoders.len() as u32)
    }

    /// DPA capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.cfg.capacity
    }

    /// The configuration the bank was built with.
    pub fn config(&self) -> &HdmConfig {
        &self.cfg
    }

    /// HDM Decoder Enable (§8.2.4.20.2 bit 1).
    pub fn global_enable(&self) -> bool {
        self.global_enable
    }

    /// Set HDM Decoder Enable from firmware (the guest sets it through Global Control).
    pub fn set_global_enable(&mut self, enable: bool) {
        self.global_enable = enable;
    }

    /// Snapshot of decoder `index`, `None` if it does not exist.
    pub fn decoder(&self, index: usize) -> Option<DecoderState> {
        self.decoders.get(index).copied()
    }

    /// Why decoder `index`'s last commit failed, while Error Not Committed is set.
    pub fn commit_error(&self, index: usize) -> Option<CommitError> {
        self.meta.get(index).and_then(|m| m.failure)
    }

    /// Number of committed decoders. They are decoders 0..n unless a decoder was
    /// uncommitted below one that stayed committed.
    pub fn committed_count(&self) -> usize {
        self.decoders.iter().filter(|d| d.committed).count()
    }

    /// The HDM Decoder Capability register (§8.2.4.20.1): decoder count, target
    /// count 0 (an endpoint has no targets), A11..8 and A14..12 interleave, 3/6/12-way
    /// and 16-way capable; poison on decode error not supported.
    pub fn capability(&self) -> u32 {
        let count = regs::encode_decoder_count(self.decoders.len() as u32).unwrap_or(0);
        count
            | regs::CAP_A11TO8_INTERLEAVE
            | regs::CAP_A14TO12_INTERLEAVE
            | regs::CAP_3_6_12_WAY
            | regs::CAP_16_WAY
    }

    /// Decoder index and register offset inside its block, for an aligned offset in
    /// the decoder area.
    fn locate(&self, offset: u32) -> Option<(usize, u32)> {
        let rel = offset.checked_sub(regs::HEADER_LEN)?;
        let index = usize::try_from(rel / regs::DECODER_STRIDE).ok()?;
        if index >= self.decoders.len() {
            return None;
        }
        Some((index, rel % regs::DECODER_STRIDE))
    }

    /// Read the dword at `offset` (any value; unaligned offsets are rounded down).
    pub fn read(&self, offset: u32) -> u32 {
        let offset = offset & !3;
        match offset {
            regs::CAPABILITY => return self.capability(),
            regs::GLOBAL_CONTROL => {
                return if self.global_enable {
                    regs::GCTRL_HDM_DECODER_ENABLE
                } else {
                    0
                }
            }
            _ => {}
        }
        let Some((index, reg)) = self.locate(offset) else {
            return 0;
        };
        let Some(d) = self.decoders.get(index) else {
            return 0;
        };
        match reg {
            regs::DEC_BASE_LO => lo(d.base) & regs::LOW_ADDR_MASK,
            regs::DEC_BASE_HI => hi(d.base),
            regs::DEC_SIZE_LO => lo(d.size) & regs::LOW_ADDR_MASK,
            regs::DEC_SIZE_HI => hi(d.size),
            regs::DEC_CONTROL => d.control(),
            regs::DEC_DPA_SKIP_LO => lo(d.dpa_skip) & regs::LOW_ADDR_MASK,
            regs::DEC_DPA_SKIP_HI => hi(d.dpa_skip),
            _ => 0,
        }
    }

    /// Write the bits of `value` selected by `mask` to the dword at `offset`.
    pub fn write(&mut self, offset: u32, value: u32, mask: u32) -> WriteOutcome {
        let offset = offset & !3;
        if offset == regs::GLOBAL_CONTROL {
            // Only HDM Decoder Enable is writable; Poison On Decode Error Enable is RO 0
            // because the capability is not advertised (§8.2.4.20.2).
            let old = self.read(regs::GLOBAL_CONTROL);
            self.global_enable = merge(old, value, mask) & regs::GCTRL_HDM_DECODER_ENABLE != 0;
            return WriteOutcome::None;
        }
        let Some((index, reg)) = self.locate(offset) else {
            return WriteOutcome::None;
        };
        if reg == regs::DEC_CONTROL {
            return self.write_control(index, value, mask);
        }
        let Some(d) = self.decoders.get_mut(index) else {
            return WriteOutcome::None;
        };
        // RWL fields (§8.2.4.20.3–.11): frozen while locked and, by this device's
        // choice, while Commit is set.
        if d.locked || d.commit {
            return WriteOutcome::None;
        }
        match reg {
            regs::DEC_BASE_LO => set_lo(&mut d.base, value, mask),
            regs::DEC_BASE_HI => set_hi(&mut d.base, value, mask),
            regs::DEC_SIZE_LO => set_lo(&mut d.size, value, mask),
            regs::DEC_SIZE_HI => set_hi(&mut d.size, value, mask),
            regs::DEC_DPA_SKIP_LO => set_lo(&mut d.dpa_skip, value, mask),
            regs::DEC_DPA_SKIP_HI => set_hi(&mut d.dpa_skip, value, mask),
            _ => {}
        }
        WriteOutcome::None
    }

    /// Decoder Control write (§8.2.4.20.7); see the crate docs for the rules.
    fn write_control(&mut self, index: usize, value: u32, mask: u32) -> WriteOutcome {
        let Some(&old) = self.decoders.get(index) else {
            return WriteOutcome::None;
        };
        if old.locked {
            return WriteOutcome::None;
        }
        let new = merge(old.control(), value, mask);
        let commit = new & regs::CTRL_COMMIT != 0;
        let mut st = old;
        match (old.commit, commit) {
            // Fields frozen; Committed and Error Not Committed are RO.
            (true, true) => WriteOutcome::None,
            (true, false) => {
                st.commit = false;
                st.committed = false;
                st.error = false;
                st.set_control_fields(new);
                self.store(index, st, Meta::default());
                WriteOutcome::Uncommitted(index)
            }
            (false, false) => {
                st.set_control_fields(new);
                self.store(index, st, Meta::default());
                WriteOutcome::None
            }
            (false, true) => {
                st.set_control_fields(new);
                st.commit = true;
                match commit::validate(index, &st, &self.neighbours(index), self.cfg.capacity) {
                    Ok(dpa_base) => {
                        self.store(index, st, Meta::latched(dpa_base));
                        WriteOutcome::CommitRequested(index)
                    }
                    Err(e) => {
                        self.store_failure(index, st, e);
                        WriteOutcome::CommitFailed(index)
                    }
                }
            }
        }
    }

    fn store(&mut self, index: usize, st: DecoderState, meta: Meta) {
        if let (Some(d), Some(m)) = (self.decoders.get_mut(index), self.meta.get_mut(index)) {
            *d = st;
            *m = meta;
        }
    }

    /// Store decoder `index` after a failed commit: Error Not Committed set, and
    /// `reason` kept for the status report.
    fn store_failure(&mut self, index: usize, mut st: DecoderState, reason: CommitError) {
        st.error = true;
        let meta = Meta {
            failure: Some(reason),
            dpa_base: 0,
        };
        self.store(index, st, meta);
    }

    /// Decoder `index` as committed, with its latched DPA base.
    fn placed(&self, index: usize) -> Option<Placed> {
        let st = *self.decoders.get(index)?;
        let dpa_base = self.meta.get(index)?.dpa_base;
        st.committed.then_some(Placed { st, dpa_base })
    }

    /// The other decoders, as the commit checks of decoder `index` see them.
    fn neighbours(&self, index: usize) -> Neighbours {
        let below = self.decoders.get(..index).unwrap_or(&[]);
        Neighbours {
            uncommitted_below: below.iter().rposition(|d| !d.committed),
            prev: index.checked_sub(1).and_then(|p| self.placed(p)),
            next: (index.saturating_add(1)..self.decoders.len()).find_map(|j| self.placed(j)),
        }
    }

    /// Complete a commit that [`WriteOutcome::CommitRequested`] announced:
    /// `accept` sets Committed (and locks when Lock-on-Commit was set); otherwise
    /// Error-not-Committed is set. Ignored if the request is no longer pending
    /// (cancelled by an uncommit or a reset; the caller must drop firmware decisions
    /// that predate a reset, as a new request on the same decoder looks the same).
    pub fn finish_commit(&mut self, index: usize, accept: bool) {
        let Some(st) = self.decoder(index) else {
            return;
        };
        if !st.pending() {
            return;
        }
        let mut st = st;
        let verdict = if accept {
            // A decoder below may have been uncommitted since the request: check
            // again against the current neighbours.
            commit::validate(index, &st, &self.neighbours(index), self.cfg.capacity)
        } else {
            Err(CommitError::Rejected)
        };
        match verdict {
            Ok(dpa_base) => {
                st.committed = true;
                st.locked = st.lock_on_commit;
                self.store(index, st, Meta::latched(dpa_base));
            }
            Err(e) => self.store_failure(index, st, e),
        }
    }

    /// Program and commit a decoder directly, as firmware does at power-on. Takes
    /// base, size, DPA skip, IW, IG, Lock On Commit and Target Type from `state`
    /// (its status flags are ignored) and runs the same checks as a guest commit.
    /// On error the decoder is left unchanged.
    pub fn precommit(&mut self, index: usize, state: DecoderState) -> Result<(), HdmError> {
        let cur = self.decoder(index).ok_or(HdmError::NoSuchDecoder(index))?;
        if cur.commit || cur.locked {
            return Err(HdmError::DecoderBusy(index));
        }
        let st = DecoderState {
            base: state.base,
            size: state.size,
            dpa_skip: state.dpa_skip,
            iw: state.iw,
            ig: state.ig,
            lock_on_commit: state.lock_on_commit,
            host_only: state.host_only,
            commit: true,
            committed: true,
            error: false,
            locked: state.lock_on_commit,
        };
        let dpa_base = commit::validate(index, &st, &self.neighbours(index), self.cfg.capacity)
            .map_err(|reason| HdmError::CommitRejected { index, reason })?;
        self.store(index, st, Meta::latched(dpa_base));
        Ok(())
    }

    /// Conventional reset: every decoder uncommitted and unlocked with all fields 0,
    /// global enable clear (the power-on values of §8.2.4.20.1–.11).
    pub fn reset(&mut self) {
        self.reset_decoders(false);
        self.global_enable = false;
    }

    /// Return decoders to their power-on values (uncommitted, every field 0; a
    /// pending commit is cancelled). With `keep_locked`, a decoder committed with
    /// Lock On Commit is left as it is: its RWL fields are "not affected by CXL
    /// Reset after the bits are locked" (CXL r3.1 Table 8-1). Global Control is not
    /// touched.
    pub fn reset_decoders(&mut self, keep_locked: bool) {
        for (d, m) in self.decoders.iter_mut().zip(self.meta.iter_mut()) {
            if !(keep_locked && d.locked) {
                *d = DecoderState::default();
                *m = Meta::default();
            }
        }
    }

    /// The interleave setting of decoder `index`, if its encodings are valid.
    pub fn interleave(&self, index: usize) -> Option<Interleave> {
        let d = self.decoder(index)?;
        Interleave::new(d.iw, d.ig)
    }

    /// HPA range of committed decoder `index`: `(base, size)`.
    pub fn hpa_range(&self, index: usize) -> Option<(u64, u64)> {
        let d = self.decoder(index).filter(|d| d.committed)?;
        Some((d.base, d.size))
    }

    /// DPA range of committed decoder `index`: `(dpa_base, dpa_size)`, where
    /// `dpa_base` = end of decoder index-1's DPA range + this decoder's skip, as
    /// latched at commit (§8.2.4.20.10), and `dpa_size` = HPA size / ways.
    pub fn dpa_range(&self, index: usize) -> Option<(u64, u64)> {
        let p = self.placed(index)?;
        Some((p.dpa_base, commit::dpa_size_of(&p.st)))
    }

    /// First DPA after every committed decoder's range (0 when none is committed):
    /// where firmware may place the next decoder.
    pub fn dpa_end(&self) -> u64 {
        (0..self.decoders.len())
            .filter_map(|i| self.dpa_range(i))
            .map(|(b, s)| b.saturating_add(s))
            .max()
            .unwrap_or(0)
    }

    /// The committed decoders in index order: `(index, decoder, interleave,
    /// dpa_base)`. Committed decoders passed the commit checks, so their encodings
    /// are valid; an entry for which that fails is skipped rather than trusted.
    fn committed(&self) -> impl Iterator<Item = (usize, &DecoderState, Interleave, u64)> + '_ {
        self.decoders
            .iter()
            .zip(&self.meta)
            .enumerate()
            .filter(|(_, (d, _))| d.committed)
            .filter_map(|(i, (d, m))| Some((i, d, Interleave::new(d.iw, d.ig)?, m.dpa_base)))
    }

    /// Decode `hpa` through the committed decoders, when HDM Decoder Enable is set:
    /// the decoder that claims it, the DPA and the interleave position the address
    /// selects (§8.2.4.20.13).
    pub fn decode(&self, hpa: u64) -> Option<Decoded> {
        if !self.global_enable {
            return None;
        }
        self.committed().find_map(|(i, d, il, dpa_base)| {
            let off = hpa.checked_sub(d.base).filter(|&o| o < d.size)?;
            Some(Decoded {
                decoder: i,
                dpa: dpa_base.checked_add(il.hpa_to_dpa_offset(off))?,
                position: il.position(off),
            })
        })
    }

    /// Translate a host physical address through the committed decoders to a DPA.
    /// `None` when HDM Decoder Enable is clear or no committed decoder covers `hpa`.
    pub fn translate(&self, hpa: u64) -> Option<u64> {
        self.decode(hpa).map(|d| d.dpa)
    }

    /// Inverse of [`Self::translate`]: the HPA at which `dpa` appears when this
    /// device sits at interleave `position` of the committed decoder whose DPA range
    /// holds `dpa`. Independent of HDM Decoder Enable (bookkeeping, e.g. to report
    /// poison by HPA). `None` if no committed decoder holds `dpa` or `position` is
    /// not below its ways.
    pub fn dpa_to_hpa(&self, dpa: u64, position: u32) -> Option<u64> {
        self.committed().find_map(|(_, d, il, dpa_base)| {
            let off = dpa
                .checked_sub(dpa_base)
                .filter(|&o| o < commit::dpa_size_of(d))?;
            d.base.checked_add(il.dpa_to_hpa_offset(off, position)?)
        })
    }

    /// Check the bank's invariants, independently of the commit checks: status bits
    /// are coherent (committed or error ⇒ Commit, never both; error ⇔ a recorded
    /// reason; locked ⇒ committed with Lock On Commit), address fields are 256 MiB
    /// granular, and the committed decoders, taken in index order, have valid
    /// IW/IG, non-zero sizes that split into whole granules per way, HPA ranges that
    /// ascend without overlap below 2^52, and latched DPA ranges that ascend without
    /// overlap inside the capacity.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut prev_hpa_end = 0u64;
        let mut prev_dpa_end = 0u64;
        for (i, d) in self.decoders.iter().enumerate() {
            if d.committed && d.error {
                return Err(format!("decoder {i} both committed and in error"));
            }
            if (d.committed || d.error) && !d.commit {
                return Err(format!("decoder {i} committed/error without Commit"));
            }
            if d.locked && !(d.committed && d.lock_on_commit) {
                return Err(format!("decoder {i} locked without committing with lock"));
            }
            if d.error != self.commit_error(i).is_some() {
                return Err(format!("decoder {i} error flag and reason disagree"));
            }
            if !(d.base | d.size | d.dpa_skip).is_multiple_of(regs::GRANULE) {
                return Err(format!("decoder {i} has non-granular address fields"));
            }
            if d.iw > 0xf || d.ig > 0xf {
                return Err(format!("decoder {i} IW/IG wider than 4 bits"));
            }
            let Some((dpa_base, dpa_size)) = self.dpa_range(i) else {
                continue;
            };
            let il = Interleave::new(d.iw, d.ig).ok_or(format!(
                "decoder {i} committed with IW {} IG {}",
                d.iw, d.ig
            ))?;
            let ways = u64::from(il.ways());
            if d.size == 0
                || !d.size.is_multiple_of(ways * regs::GRANULE)
                || dpa_size * ways != d.size
            {
                return Err(format!(
                    "decoder {i} size {:#x} invalid for {ways} ways",
                    d.size
                ));
            }
            let hpa_end = d
                .base
                .checked_add(d.size)
                .filter(|&e| e <= HPA_LIMIT)
                .ok_or(format!("decoder {i} HPA range out of range"))?;
            if d.base < prev_hpa_end {
                return Err(format!("decoder {i} HPA base below the previous range"));
            }
            let dpa_end = dpa_base
                .checked_add(dpa_size)
                .filter(|&e| e <= self.cfg.capacity)
                .ok_or(format!("decoder {i} DPA range beyond the capacity"))?;
            if dpa_base < prev_dpa_end || dpa_base < d.dpa_skip {
                return Err(format!(
                    "decoder {i} DPA base {dpa_base:#x} overlaps or ignores the skip"
                ));
            }
            prev_hpa_end = hpa_end;
            prev_dpa_end = dpa_end;
        }
        Ok(())
    }
}
