//! CXL HDM decoder bank (CXL r3.1 §8.2.4.20): the register block of an endpoint's
//! HDM Decoder Capability structure, with exact commit, lock, uncommit and reset
//! semantics, HPA->DPA translation and DPA bookkeeping. Pure logic, no I/O.
//!
//! Register access is by dword: `read(offset)` and `write(offset, value, mask)`,
//! where `offset` is relative to the start of the HDM Decoder Capability structure
//! and `mask` has a 1 for every bit the access actually writes (sub-dword writes
//! from the guest arrive with a partial mask).
//!
//! API CONTRACT (other crates build against this; extend, do not break):
//! - `HdmConfig`, `HdmDecoderBank::new`, `read`, `write`, `reset`, `decoder`,
//!   `decoder_count`, `block_len`, `global_enable`, `finish_commit`, `translate`.

use thiserror::Error;

/// Errors in building a decoder bank.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HdmError {
    #[error("decoder count {0} is not supported (1, 2 or 4)")]
    BadDecoderCount(u8),
    #[error("capacity {0:#x} is not a non-zero multiple of 256 MiB")]
    BadCapacity(u64),
    #[error("decoder {0} does not exist")]
    NoSuchDecoder(usize),
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
    CommitFailed(usize),
    /// Decoder `index` was uncommitted (Commit cleared).
    Uncommitted(usize),
}

/// A snapshot of one decoder's programmed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecoderState {
    pub base: u64,
    pub size: u64,
    pub dpa_skip: u64,
    /// Encoded interleave ways (IW field).
    pub iw: u8,
    /// Encoded interleave granularity (IG field).
    pub ig: u8,
    pub lock_on_commit: bool,
    pub commit: bool,
    pub committed: bool,
    pub error: bool,
    /// Target Type bit 12 as written: true = host-only coherent, false = device-coherent.
    pub host_only: bool,
    pub locked: bool,
}

/// The HDM decoder bank of an endpoint.
#[derive(Debug, Clone)]
pub struct HdmDecoderBank {
    cfg: HdmConfig,
    decoders: Vec<DecoderState>,
    global_enable: bool,
}

impl HdmDecoderBank {
    pub fn new(cfg: HdmConfig) -> Result<Self, HdmError> {
        let n = cfg.decoder_count as usize;
        Ok(Self { decoders: vec![DecoderState::default(); n], cfg, global_enable: false })
    }
    pub fn decoder_count(&self) -> usize {
        self.decoders.len()
    }
    /// Length in bytes of the capability structure: 0x10 + 0x20 * n.
    pub fn block_len(&self) -> u32 {
        0x10 + 0x20 * self.decoders.len() as u32
    }
    pub fn capacity(&self) -> u64 {
        self.cfg.capacity
    }
    pub fn global_enable(&self) -> bool {
        self.global_enable
    }
    pub fn decoder(&self, index: usize) -> Option<DecoderState> {
        self.decoders.get(index).copied()
    }
    /// Read the dword at `offset` (any value; unaligned offsets are rounded down).
    pub fn read(&self, _offset: u32) -> u32 {
        0
    }
    /// Write the bits of `value` selected by `mask` to the dword at `offset`.
    pub fn write(&mut self, _offset: u32, _value: u32, _mask: u32) -> WriteOutcome {
        WriteOutcome::None
    }
    /// Complete a commit that [`WriteOutcome::CommitRequested`] announced:
    /// `accept` sets Committed (and locks when Lock-on-Commit was set); otherwise
    /// Error-not-Committed is set. Ignored if the request is no longer pending.
    pub fn finish_commit(&mut self, _index: usize, _accept: bool) {}
    /// Program and commit a decoder directly, as firmware does at power-on.
    pub fn precommit(&mut self, _index: usize, _state: DecoderState) -> Result<(), HdmError> {
        Ok(())
    }
    /// Conventional reset: every decoder uncommitted and unlocked, global enable clear.
    pub fn reset(&mut self) {
        *self = Self::new(self.cfg.clone()).expect("config was valid at construction");
    }
    /// Translate a host physical address through the committed decoders to a DPA.
    pub fn translate(&self, _hpa: u64) -> Option<u64> {
        None
    }
}
