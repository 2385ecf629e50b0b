//! Helpers shared by the integration tests: program decoders through the registers,
//! as a guest driver does.
#![allow(dead_code)]

use cxl_regs::hdm as regs;
use hdm::{HdmConfig, HdmDecoderBank, WriteOutcome};

pub const G: u64 = 256 << 20;
pub const FULL: u32 = 0xffff_ffff;

pub fn bank(decoders: u8, capacity_granules: u64) -> HdmDecoderBank {
    HdmDecoderBank::new(HdmConfig {
        decoder_count: decoders,
        capacity: capacity_granules * G,
    })
    .expect("valid test config")
}

/// Absolute offset of register `reg` of decoder `i`.
pub fn reg(i: u32, reg: u32) -> u32 {
    regs::decoder_offset(i) + reg
}

pub fn ctrl(iw: u8, ig: u8) -> u32 {
    (u32::from(iw) << 4) | u32::from(ig)
}

/// Write base, size and skip of decoder `i` (low dword then high, like Linux).
pub fn program(b: &mut HdmDecoderBank, i: u32, base: u64, size: u64, skip: u64) {
    for (r, v) in [
        (regs::DEC_BASE_LO, base),
        (regs::DEC_SIZE_LO, size),
        (regs::DEC_DPA_SKIP_LO, skip),
    ] {
        assert_eq!(b.write(reg(i, r), v as u32, FULL), WriteOutcome::None);
        assert_eq!(
            b.write(reg(i, r + 4), (v >> 32) as u32, FULL),
            WriteOutcome::None
        );
    }
}

/// Write Control of decoder `i` with Commit set and the given other bits.
pub fn commit(b: &mut HdmDecoderBank, i: u32, bits: u32) -> WriteOutcome {
    b.write(reg(i, regs::DEC_CONTROL), bits | regs::CTRL_COMMIT, FULL)
}

/// Program, commit and accept decoder `i` (1-way, 256 B).
pub fn commit_ok(b: &mut HdmDecoderBank, i: u32, base: u64, size: u64, skip: u64) {
    program(b, i, base, size, skip);
    assert_eq!(commit(b, i, 0), WriteOutcome::CommitRequested(i as usize));
    b.finish_commit(i as usize, true);
    assert!(b.decoder(i as usize).unwrap().committed);
}

pub fn control(b: &HdmDecoderBank, i: u32) -> u32 {
    b.read(reg(i, regs::DEC_CONTROL))
}
