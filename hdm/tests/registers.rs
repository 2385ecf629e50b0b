//! Register-level behaviour: layout, reserved and read-only bits, masked writes.

mod common;

use common::*;
use cxl_regs::hdm as regs;
use hdm::{HdmConfig, HdmDecoderBank, HdmError, WriteOutcome};

#[test]
fn config_is_validated() {
    for n in [0u8, 3, 5, 8] {
        let r = HdmDecoderBank::new(HdmConfig {
            decoder_count: n,
            capacity: G,
        });
        assert_eq!(r.unwrap_err(), HdmError::BadDecoderCount(n));
    }
    for cap in [0, G - 1, G + 4096] {
        let r = HdmDecoderBank::new(HdmConfig {
            decoder_count: 1,
            capacity: cap,
        });
        assert_eq!(r.unwrap_err(), HdmError::BadCapacity(cap));
    }
}

#[test]
fn capability_register_per_decoder_count() {
    for (n, enc) in [(1u8, 0u32), (2, 1), (4, 2)] {
        let b = bank(n, 4);
        let cap = b.read(regs::CAPABILITY);
        assert_eq!(cap & regs::CAP_DECODER_COUNT_MASK, enc, "{n} decoders");
        assert_eq!(regs::decode_decoder_count(cap), Some(u32::from(n)));
        assert_eq!(
            cap & regs::CAP_TARGET_COUNT_MASK,
            0,
            "endpoint has no targets"
        );
        for bit in [
            regs::CAP_A11TO8_INTERLEAVE,
            regs::CAP_A14TO12_INTERLEAVE,
            regs::CAP_3_6_12_WAY,
            regs::CAP_16_WAY,
        ] {
            assert_ne!(cap & bit, 0);
        }
        assert_eq!(cap & regs::CAP_POISON_ON_DECODE_ERROR, 0);
        assert_eq!(cap & !0x1bff, 0, "reserved capability bits read 0");
        assert_eq!(b.block_len(), 0x10 + 0x20 * u32::from(n));
        assert_eq!(b.decoder_count(), usize::from(n));
    }
}

#[test]
fn capability_register_ignores_writes() {
    let mut b = bank(2, 4);
    let before = b.read(regs::CAPABILITY);
    assert_eq!(b.write(regs::CAPABILITY, 0, FULL), WriteOutcome::None);
    assert_eq!(b.write(regs::CAPABILITY, FULL, FULL), WriteOutcome::None);
    assert_eq!(b.read(regs::CAPABILITY), before);
}

#[test]
fn global_control_only_enable_is_writable() {
    let mut b = bank(1, 4);
    assert_eq!(b.read(regs::GLOBAL_CONTROL), 0);
    b.write(regs::GLOBAL_CONTROL, FULL, FULL);
    assert_eq!(b.read(regs::GLOBAL_CONTROL), regs::GCTRL_HDM_DECODER_ENABLE);
    assert!(b.global_enable());
    // A write whose mask leaves bit 1 out keeps it.
    b.write(regs::GLOBAL_CONTROL, 0, 0xffff_ff00);
    assert!(b.global_enable());
    b.write(regs::GLOBAL_CONTROL, 0, 0xff);
    assert!(!b.global_enable());
    assert_eq!(b.read(regs::GLOBAL_CONTROL), 0);
    // Poison-on-decode-error enable is RO 0 (not capable).
    b.write(
        regs::GLOBAL_CONTROL,
        regs::GCTRL_POISON_ON_DECODE_ERROR_EN,
        FULL,
    );
    assert_eq!(b.read(regs::GLOBAL_CONTROL), 0);
}

#[test]
fn reserved_header_and_out_of_block_read_zero_and_ignore_writes() {
    let mut b = bank(2, 4);
    for off in [
        0x08u32,
        0x0c,
        b.block_len(),
        b.block_len() + 4,
        0xfff_fffc,
        u32::MAX,
    ] {
        assert_eq!(b.write(off, FULL, FULL), WriteOutcome::None);
        assert_eq!(b.read(off), 0, "offset {off:#x}");
    }
    // Reserved dword at the end of each decoder block.
    for i in 0..2 {
        b.write(reg(i, 0x1c), FULL, FULL);
        assert_eq!(b.read(reg(i, 0x1c)), 0);
    }
    // Decoder 2 does not exist in a 2-decoder bank.
    assert_eq!(
        b.write(reg(2, regs::DEC_CONTROL), FULL, FULL),
        WriteOutcome::None
    );
    assert_eq!(b.read(reg(2, regs::DEC_BASE_LO)), 0);
    assert!(b.check_invariants().is_ok());
}

#[test]
fn address_low_bits_read_zero_high_dwords_full() {
    let mut b = bank(1, 4);
    for r in [regs::DEC_BASE_LO, regs::DEC_SIZE_LO, regs::DEC_DPA_SKIP_LO] {
        b.write(reg(0, r), FULL, FULL);
        assert_eq!(b.read(reg(0, r)), 0xf000_0000, "reg {r:#x}");
        b.write(reg(0, r + 4), 0xdead_beef, FULL);
        assert_eq!(b.read(reg(0, r + 4)), 0xdead_beef);
    }
    let d = b.decoder(0).unwrap();
    assert_eq!(d.base, 0xdead_beef_f000_0000);
    assert_eq!(d.size, 0xdead_beef_f000_0000);
    assert_eq!(d.dpa_skip, 0xdead_beef_f000_0000);
}

#[test]
fn sub_dword_masked_writes_touch_only_their_bytes() {
    let mut b = bank(1, 4);
    b.write(reg(0, regs::DEC_BASE_HI), 0x1122_3344, FULL);
    // Byte 2 only.
    b.write(reg(0, regs::DEC_BASE_HI), 0xaabb_ccdd, 0x00ff_0000);
    assert_eq!(b.read(reg(0, regs::DEC_BASE_HI)), 0x11bb_3344);
    // Byte 3 of the low dword: address bits 31:28 are writable, 27:24 are not.
    b.write(reg(0, regs::DEC_BASE_LO), 0x5a00_0000, 0xff00_0000);
    assert_eq!(b.read(reg(0, regs::DEC_BASE_LO)), 0x5000_0000);
    // A write of bytes 0..1 leaves byte 3 alone.
    b.write(reg(0, regs::DEC_BASE_LO), 0, 0x0000_ffff);
    assert_eq!(b.read(reg(0, regs::DEC_BASE_LO)), 0x5000_0000);
    // Control byte 0 (IG/IW) without touching byte 1 (Lock/Commit).
    b.write(reg(0, regs::DEC_CONTROL), regs::CTRL_LOCK_ON_COMMIT, FULL);
    b.write(reg(0, regs::DEC_CONTROL), 0xffff_ff21, 0x0000_00ff);
    assert_eq!(control(&b, 0), regs::CTRL_LOCK_ON_COMMIT | 0x21);
    // Byte 1 with the Commit bit: mask covers it, so this commits.
    b.write(reg(0, regs::DEC_BASE_HI), 0, FULL);
    b.write(reg(0, regs::DEC_SIZE_LO), 0x4000_0000, FULL); // 1 GiB over 4 ways
    let out = b.write(reg(0, regs::DEC_CONTROL), regs::CTRL_COMMIT, 0x0000_ff00);
    assert_eq!(out, WriteOutcome::CommitRequested(0));
    // The byte-1 write cleared Lock On Commit (bit 8 was in the mask, written 0).
    assert_eq!(control(&b, 0), regs::CTRL_COMMIT | 0x21);
}

#[test]
fn unaligned_offsets_round_down() {
    let mut b = bank(1, 4);
    b.write(reg(0, regs::DEC_BASE_HI) + 3, 0x1234_5678, FULL);
    assert_eq!(b.read(reg(0, regs::DEC_BASE_HI)), 0x1234_5678);
    assert_eq!(b.read(reg(0, regs::DEC_BASE_HI) + 1), 0x1234_5678);
    b.write(
        regs::GLOBAL_CONTROL + 2,
        regs::GCTRL_HDM_DECODER_ENABLE,
        FULL,
    );
    assert!(b.global_enable());
}

#[test]
fn control_reserved_and_status_bits() {
    let mut b = bank(1, 4);
    // Everything but Commit: reserved bits (13..31) read 0, Committed and Error are
    // RO and stay clear.
    b.write(reg(0, regs::DEC_CONTROL), !regs::CTRL_COMMIT, FULL);
    let rw = regs::CTRL_IG_MASK
        | regs::CTRL_IW_MASK
        | regs::CTRL_LOCK_ON_COMMIT
        | regs::CTRL_TARGET_TYPE_HOST_ONLY;
    assert_eq!(control(&b, 0), rw);
    let d = b.decoder(0).unwrap();
    assert!(!d.committed && !d.error && !d.commit);
    assert_eq!((d.iw, d.ig), (15, 15));
}

#[test]
fn target_type_is_kept_as_written() {
    let mut b = bank(2, 4);
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    assert_eq!(control(&b, 0) & regs::CTRL_TARGET_TYPE_HOST_ONLY, 0);
    assert!(!b.decoder(0).unwrap().host_only);
    program(&mut b, 0, 4 * G, G, 0);
    assert_eq!(
        commit(&mut b, 0, regs::CTRL_TARGET_TYPE_HOST_ONLY),
        WriteOutcome::CommitRequested(0)
    );
    b.finish_commit(0, true);
    let d = b.decoder(0).unwrap();
    assert!(d.host_only && d.committed);
    assert_ne!(control(&b, 0) & regs::CTRL_TARGET_TYPE_HOST_ONLY, 0);
    // Device-coherent (0) on the next decoder.
    program(&mut b, 1, 8 * G, G, 0);
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitRequested(1));
    b.finish_commit(1, true);
    assert!(!b.decoder(1).unwrap().host_only);
}
