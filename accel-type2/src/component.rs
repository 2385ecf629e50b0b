//! The component register block at BAR0 + 0 (CXL r3.1 §8.2.3, §8.2.4).
//!
//! | Offset          | Contents                                               |
//! |-----------------|--------------------------------------------------------|
//! | 0x0000..0x1000  | CXL.io registers: none defined for a device, read 0    |
//! | 0x1000          | CXL.cache/mem Capability Header (§8.2.4.1), 3 entries  |
//! | 0x1004..0x1010  | entries: RAS (id 2), Link (id 4), HDM Decoder (id 5)   |
//! | RAS_OFFSET      | CXL RAS Capability (§8.2.4.17)                         |
//! | LINK_OFFSET     | CXL Link Capability (§8.2.4.19)                        |
//! | HDM_OFFSET      | CXL HDM Decoder Capability (§8.2.4.20), `hdm` crate    |
//!
//! Decoder commits go through the firmware: a commit that passes the spec checks in
//! the `hdm` crate is handed to [`Firmware::on_commit`], which accepts, rejects or
//! delays it. A delayed commit reads Commit=1, Committed=0 until its deadline passes
//! and [`ComponentBlock::poll`] asks [`Firmware::on_commit_due`] again (the device
//! also polls before each BAR0 read, so a guest polling Committed sees it without a
//! timer).

use cxl_regs::component::{self as comp, link, ras};
use cxl_regs::layout;
use hdm::{DecoderState, HdmConfig, HdmDecoderBank, WriteOutcome};

use crate::access::{offset_in, qword_half, read_dwords};
use crate::firmware::{CommitDecision, Firmware};
use crate::ras::Ras;
use crate::reset::{self, Effect, RegisterClass, ResetKind};

/// Number of entries in the CXL.cache/mem capability array.
const ARRAY_ENTRIES: u8 = 3;

/// A commit that firmware delayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingCommit {
    pub index: usize,
    pub deadline_ns: u64,
}

/// Counters of decoder commit outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommitStats {
    pub accepted: u64,
    pub rejected_by_firmware: u64,
    pub delayed: u64,
    pub failed_checks: u64,
    pub uncommitted: u64,
}

/// BAR0's component register block.
#[derive(Debug, Clone)]
pub struct ComponentBlock {
    ras: Ras,
    hdm: HdmDecoderBank,
    pending: Vec<PendingCommit>,
    stats: CommitStats,
}

impl ComponentBlock {
    pub fn new(hdm_cfg: HdmConfig) -> Result<Self, hdm::HdmError> {
        Ok(Self {
            ras: Ras::new(),
            hdm: HdmDecoderBank::new(hdm_cfg)?,
            pending: Vec::new(),
            stats: CommitStats::default(),
        })
    }

    pub fn hdm(&self) -> &HdmDecoderBank {
        &self.hdm
    }
    pub fn hdm_mut(&mut self) -> &mut HdmDecoderBank {
        &mut self.hdm
    }
    pub fn ras(&self) -> &Ras {
        &self.ras
    }
    pub fn ras_mut(&mut self) -> &mut Ras {
        &mut self.ras
    }
    pub fn stats(&self) -> CommitStats {
        self.stats
    }
    pub fn pending(&self) -> &[PendingCommit] {
        &self.pending
    }

    /// A reset of `kind`: the decoders, HDM Global Control and the RAS registers
    /// (sticky) as [`reset::effect`] says; a delayed commit is dropped with its
    /// decoder (a pending decoder is never locked).
    pub fn reset(&mut self, kind: ResetKind) {
        match reset::effect(RegisterClass::HdmDecoders, kind) {
            Effect::Kept | Effect::ClearedOnRequest => {}
            e => {
                self.hdm.reset_decoders(e == Effect::ResetUnlessLocked);
                let hdm = &self.hdm;
                self.pending
                    .retain(|p| hdm.decoder(p.index).is_some_and(|d| d.pending()));
            }
        }
        if !reset::keeps(RegisterClass::HdmGlobalControl, kind, false) {
            self.hdm.set_global_enable(false);
        }
        if !reset::keeps(RegisterClass::Sticky, kind, false) {
            self.ras.cold_reset();
        }
    }

    fn hdm_len(&self) -> u64 {
        u64::from(self.hdm.block_len())
    }

    /// Read the dword at `offset` within the block.
    pub fn read(&self, offset: u64) -> u32 {
        let off = offset & !3;
        let cm = layout::CACHEMEM_OFFSET;
        if off == cm {
            comp::array_header(ARRAY_ENTRIES)
        } else if off == cm + 4 {
            comp::entry(comp::CAP_ID_RAS, ras::VERSION, layout::RAS_CAP_PTR)
        } else if off == cm + 8 {
            comp::entry(comp::CAP_ID_LINK, link::VERSION, layout::LINK_CAP_PTR)
        } else if off == cm + 12 {
            comp::entry(
                comp::CAP_ID_HDM,
                cxl_regs::hdm::CAP_VERSION,
                layout::HDM_CAP_PTR,
            )
        } else if let Some(rel) = offset_in(off, layout::RAS_OFFSET, u64::from(ras::LENGTH)) {
            self.ras.read(rel)
        } else if let Some(rel) = offset_in(off, layout::LINK_OFFSET, u64::from(link::LENGTH)) {
            Self::link_read(rel)
        } else if let Some(rel) = offset_in(off, layout::HDM_OFFSET, self.hdm_len()) {
            self.hdm.read(rel)
        } else {
            0
        }
    }

    /// CXL Link Capability (§8.2.4.19): Link Layer Capability reports CXL link
    /// version 2 supported and received; the other registers read 0 and the
    /// structure ignores writes (no credits or timers are modelled).
    fn link_read(off: u32) -> u32 {
        let cap =
            link::LINK_VERSION_2 | (link::LINK_VERSION_2 << link::LL_CAP_VERSION_RECEIVED_SHIFT);
        match off {
            o if o == link::LL_CAPABILITY => qword_half(cap, false),
            o if o == link::LL_CAPABILITY + 4 => qword_half(cap, true),
            _ => 0,
        }
    }

    /// Write the masked bits of `value` to the dword at `offset` within the block.
    pub fn write(
        &mut self,
        offset: u64,
        value: u32,
        mask: u32,
        fw: &mut dyn Firmware,
        now_ns: u64,
    ) {
        let off = offset & !3;
        if let Some(rel) = offset_in(off, layout::RAS_OFFSET, u64::from(ras::LENGTH)) {
            self.ras.write(rel, value, mask);
        } else if let Some(rel) = offset_in(off, layout::HDM_OFFSET, self.hdm_len()) {
            let outcome = self.hdm.write(rel, value, mask);
            self.handle_outcome(outcome, fw, now_ns);
        }
    }

    fn handle_outcome(&mut self, outcome: WriteOutcome, fw: &mut dyn Firmware, now_ns: u64) {
        match outcome {
            WriteOutcome::CommitRequested(i) => {
                self.pending.retain(|p| p.index != i);
                let Some(state) = self.hdm.decoder(i) else {
                    return;
                };
                let decision = fw.on_commit(i, &state);
                self.apply_decision(i, decision, fw.name(), now_ns);
            }
            WriteOutcome::CommitFailed(i) => {
                self.pending.retain(|p| p.index != i);
                self.stats.failed_checks = self.stats.failed_checks.wrapping_add(1);
                log::debug!("decoder {i} commit failed the spec checks");
            }
            WriteOutcome::Uncommitted(i) => {
                self.pending.retain(|p| p.index != i);
                self.stats.uncommitted = self.stats.uncommitted.wrapping_add(1);
            }
            WriteOutcome::None => {}
        }
    }

    /// Carry out firmware's decision about the commit of decoder `i`.
    fn apply_decision(&mut self, i: usize, decision: CommitDecision, fw: &str, now_ns: u64) {
        match decision {
            CommitDecision::Accept | CommitDecision::Delay(0) => {
                self.hdm.finish_commit(i, true);
                self.stats.accepted = self.stats.accepted.wrapping_add(1);
            }
            CommitDecision::Reject => {
                self.hdm.finish_commit(i, false);
                self.stats.rejected_by_firmware = self.stats.rejected_by_firmware.wrapping_add(1);
                log::info!("firmware {fw} rejected the commit of decoder {i}");
            }
            CommitDecision::Delay(ns) => {
                self.pending.push(PendingCommit {
                    index: i,
                    deadline_ns: now_ns.saturating_add(ns),
                });
                self.stats.delayed = self.stats.delayed.wrapping_add(1);
            }
        }
    }

    /// Ask firmware again about the delayed commits whose deadline has passed
    /// ([`Firmware::on_commit_due`]): accepted, rejected, or delayed once more.
    pub fn poll(&mut self, now_ns: u64, fw: &mut dyn Firmware) {
        if self.pending.is_empty() {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) =
            self.pending.iter().partition(|p| p.deadline_ns <= now_ns);
        self.pending = later;
        for p in due {
            let Some(state) = self.hdm.decoder(p.index).filter(|d| d.pending()) else {
                continue;
            };
            let decision = fw.on_commit_due(p.index, &state);
            self.apply_decision(p.index, decision, fw.name(), now_ns);
        }
    }

    /// The earliest deadline of a delayed commit.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending.iter().map(|p| p.deadline_ns).min()
    }

    /// Commit decoders as firmware left them at power-on, then set HDM Decoder
    /// Global Enable if any was committed. Returns how many were committed.
    pub fn apply_power_on(&mut self, decoders: Vec<(usize, DecoderState)>) -> usize {
        let mut n = 0;
        for (i, state) in decoders {
            match self.hdm.precommit(i, state) {
                Ok(()) => n += 1,
                Err(e) => log::warn!("firmware power-on decoder {i} refused: {e}"),
            }
        }
        if n > 0 {
            self.hdm.set_global_enable(true);
        }
        n
    }

    /// Read bytes (for tests and debugging).
    pub fn read_bytes(&self, offset: u64, data: &mut [u8]) {
        read_dwords(offset, data, |d| self.read(d));
    }
}
