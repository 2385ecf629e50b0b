//! Commit, uncommit, lock, reset and firmware (precommit) semantics.

mod common;

use common::*;
use cxl_regs::hdm as regs;
use hdm::{CommitError, DecoderState, HdmError, WriteOutcome};

/// Assert decoder `i` failed to commit with `why`: Error set, Committed clear.
fn assert_failed(b: &hdm::HdmDecoderBank, i: u32, why: CommitError) {
    let c = control(b, i);
    assert_ne!(c & regs::CTRL_ERROR_NOT_COMMITTED, 0, "error bit");
    assert_eq!(c & regs::CTRL_COMMITTED, 0, "committed bit");
    assert_eq!(b.commit_error(i as usize), Some(why));
    assert!(b.check_invariants().is_ok());
}

#[test]
fn commit_is_pending_until_firmware_accepts() {
    let mut b = bank(2, 4);
    program(&mut b, 0, 0x1_1000_0000, G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitRequested(0));
    let c = control(&b, 0);
    assert_eq!(
        c & (regs::CTRL_COMMIT | regs::CTRL_COMMITTED | regs::CTRL_ERROR_NOT_COMMITTED),
        regs::CTRL_COMMIT
    );
    assert!(b.decoder(0).unwrap().pending());
    assert_eq!(b.committed_count(), 0);
    b.finish_commit(0, true);
    let c = control(&b, 0);
    assert_eq!(
        c & (regs::CTRL_COMMITTED | regs::CTRL_ERROR_NOT_COMMITTED),
        regs::CTRL_COMMITTED
    );
    assert_eq!(b.committed_count(), 1);
    assert_eq!(b.commit_error(0), None);
    // Not locked: Lock On Commit was 0.
    assert!(!b.decoder(0).unwrap().locked);
    // A second finish_commit is ignored.
    b.finish_commit(0, false);
    assert!(b.decoder(0).unwrap().committed);
    assert!(b.check_invariants().is_ok());
}

#[test]
fn firmware_reject_sets_error() {
    let mut b = bank(1, 4);
    program(&mut b, 0, 4 * G, G, 0);
    assert_eq!(
        commit(&mut b, 0, regs::CTRL_LOCK_ON_COMMIT),
        WriteOutcome::CommitRequested(0)
    );
    b.finish_commit(0, false);
    assert_failed(&b, 0, CommitError::Rejected);
    assert!(
        !b.decoder(0).unwrap().locked,
        "a rejected commit does not lock"
    );
    // Clearing Commit recovers; error and reason go away.
    assert_eq!(
        b.write(reg(0, regs::DEC_CONTROL), 0, FULL),
        WriteOutcome::Uncommitted(0)
    );
    assert_eq!(control(&b, 0), 0);
    assert_eq!(b.commit_error(0), None);
}

#[test]
fn out_of_order_commit_fails() {
    let mut b = bank(4, 8);
    program(&mut b, 1, 4 * G, G, 0);
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitFailed(1));
    assert_failed(&b, 1, CommitError::OutOfOrder { index: 1, prev: 0 });
    // Decoder 0 pending is not enough either.
    program(&mut b, 0, 0, G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitRequested(0));
    program(&mut b, 2, 8 * G, G, 0);
    assert_eq!(commit(&mut b, 2, 0), WriteOutcome::CommitFailed(2));
    assert_failed(&b, 2, CommitError::OutOfOrder { index: 2, prev: 1 });
    b.write(reg(1, regs::DEC_CONTROL), 0, FULL);
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitFailed(1));
    assert_failed(&b, 1, CommitError::OutOfOrder { index: 1, prev: 0 });
    // In order succeeds.
    b.finish_commit(0, true);
    assert_eq!(
        b.write(reg(1, regs::DEC_CONTROL), 0, FULL),
        WriteOutcome::Uncommitted(1)
    );
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitRequested(1));
}

#[test]
fn zero_size_fails() {
    let mut b = bank(1, 4);
    program(&mut b, 0, 4 * G, 0, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitFailed(0));
    assert_failed(&b, 0, CommitError::ZeroSize);
}

#[test]
fn overlapping_or_descending_hpa_fails() {
    let mut b = bank(2, 8);
    commit_ok(&mut b, 0, 8 * G, 2 * G, 0);
    // Starts inside decoder 0's range.
    program(&mut b, 1, 9 * G, G, 0);
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitFailed(1));
    assert_failed(
        &b,
        1,
        CommitError::HpaOverlap {
            base: 9 * G,
            prev_limit: 10 * G,
        },
    );
    // Entirely below decoder 0: also refused (ranges ascend).
    b.write(reg(1, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 1, 0, G, 0);
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitFailed(1));
    assert_failed(
        &b,
        1,
        CommitError::HpaOverlap {
            base: 0,
            prev_limit: 10 * G,
        },
    );
    // Adjacent is fine.
    b.write(reg(1, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 1, 10 * G, G, 0);
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitRequested(1));
}

#[test]
fn hpa_wrap_or_beyond_52_bits_fails() {
    let mut b = bank(1, 4);
    program(&mut b, 0, (1 << 52) - G, 2 * G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitFailed(0));
    assert_failed(
        &b,
        0,
        CommitError::HpaOutOfRange {
            base: (1 << 52) - G,
            size: 2 * G,
        },
    );
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 0, !(G - 1), G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitFailed(0));
    // Ends exactly at 2^52: fine.
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 0, (1 << 52) - G, G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitRequested(0));
}

#[test]
fn every_reserved_iw_fails_every_defined_iw_commits() {
    for iw in 0u8..16 {
        let mut b = bank(1, 64);
        // 48 granules divide by every way count (1, 2, 3, 4, 6, 8, 12, 16).
        program(&mut b, 0, 0, 48 * G, 0);
        let out = commit(&mut b, 0, ctrl(iw, 0));
        if matches!(iw, 0..=4 | 8..=10) {
            assert_eq!(out, WriteOutcome::CommitRequested(0), "iw {iw}");
        } else {
            assert_eq!(out, WriteOutcome::CommitFailed(0), "iw {iw}");
            assert_failed(&b, 0, CommitError::BadInterleaveWays(iw));
        }
    }
}

#[test]
fn every_reserved_ig_fails() {
    for ig in 0u8..16 {
        let mut b = bank(1, 4);
        program(&mut b, 0, 0, G, 0);
        let out = commit(&mut b, 0, ctrl(0, ig));
        if ig <= 6 {
            assert_eq!(out, WriteOutcome::CommitRequested(0), "ig {ig}");
        } else {
            assert_failed(&b, 0, CommitError::BadInterleaveGranularity(ig));
        }
    }
}

#[test]
fn size_must_split_into_whole_granules_per_way() {
    let mut b = bank(1, 64);
    // 3-way over 512 MiB: not a multiple of 3 x 256 MiB.
    program(&mut b, 0, 0, 2 * G, 0);
    assert_eq!(commit(&mut b, 0, ctrl(8, 0)), WriteOutcome::CommitFailed(0));
    assert_failed(
        &b,
        0,
        CommitError::SizeNotDivisible {
            size: 2 * G,
            ways: 3,
        },
    );
    // 2-way over 256 MiB: 128 MiB per way is not a whole granule.
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 0, 0, G, 0);
    assert_eq!(commit(&mut b, 0, ctrl(1, 0)), WriteOutcome::CommitFailed(0));
    assert_failed(&b, 0, CommitError::SizeNotDivisible { size: G, ways: 2 });
    // 6-way over 1.5 GiB is fine and uses 256 MiB of DPA.
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 0, 0, 6 * G, 0);
    assert_eq!(
        commit(&mut b, 0, ctrl(9, 0)),
        WriteOutcome::CommitRequested(0)
    );
    b.finish_commit(0, true);
    assert_eq!(b.dpa_range(0), Some((0, G)));
}

#[test]
fn dpa_beyond_capacity_fails_including_skip() {
    // Capacity 1 GiB.
    let mut b = bank(2, 4);
    program(&mut b, 0, 0, 5 * G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitFailed(0));
    assert_failed(
        &b,
        0,
        CommitError::DpaBeyondCapacity {
            dpa_base: 0,
            dpa_size: 5 * G,
            capacity: 4 * G,
        },
    );
    // Fits alone, but not after a 256 MiB skip.
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 0, 0, 4 * G, G);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitFailed(0));
    assert_failed(
        &b,
        0,
        CommitError::DpaBeyondCapacity {
            dpa_base: G,
            dpa_size: 4 * G,
            capacity: 4 * G,
        },
    );
    // A huge skip does not wrap into range.
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 0, 0, G, !(G - 1));
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitFailed(0));
    // Decoder 0 takes DPA [G, 3G); decoder 1 with skip G would end at 5G.
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    commit_ok(&mut b, 0, 0, 2 * G, G);
    program(&mut b, 1, 8 * G, G, G);
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitFailed(1));
    assert_failed(
        &b,
        1,
        CommitError::DpaBeyondCapacity {
            dpa_base: 4 * G,
            dpa_size: G,
            capacity: 4 * G,
        },
    );
    // Without the skip it ends exactly at the capacity.
    b.write(reg(1, regs::DEC_CONTROL), 0, FULL);
    commit_ok(&mut b, 1, 8 * G, G, 0);
    assert_eq!(b.dpa_range(0), Some((G, 2 * G)));
    assert_eq!(b.dpa_range(1), Some((3 * G, G)));
    assert_eq!(b.dpa_end(), 4 * G);
    assert!(b.check_invariants().is_ok());
}

#[test]
fn check_order_first_failure_reported() {
    // Out of order, zero size and bad IW at once: out of order wins.
    let mut b = bank(2, 4);
    b.write(
        reg(1, regs::DEC_CONTROL),
        ctrl(7, 9) | regs::CTRL_COMMIT,
        FULL,
    );
    assert_failed(&b, 1, CommitError::OutOfOrder { index: 1, prev: 0 });
    // Zero size before bad IW.
    b.write(
        reg(0, regs::DEC_CONTROL),
        ctrl(7, 9) | regs::CTRL_COMMIT,
        FULL,
    );
    assert_failed(&b, 0, CommitError::ZeroSize);
    // Bad IW before bad IG.
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 0, 0, G, 0);
    b.write(
        reg(0, regs::DEC_CONTROL),
        ctrl(7, 9) | regs::CTRL_COMMIT,
        FULL,
    );
    assert_failed(&b, 0, CommitError::BadInterleaveWays(7));
}

#[test]
fn fields_frozen_while_commit_set() {
    let mut b = bank(2, 8);
    program(&mut b, 0, 4 * G, G, 0);
    let snapshot = |b: &hdm::HdmDecoderBank| {
        (0..0x20u32)
            .step_by(4)
            .map(|r| b.read(reg(0, r)))
            .collect::<Vec<_>>()
    };
    let try_writes = |b: &mut hdm::HdmDecoderBank| {
        for r in [
            regs::DEC_BASE_LO,
            regs::DEC_BASE_HI,
            regs::DEC_SIZE_LO,
            regs::DEC_SIZE_HI,
            regs::DEC_DPA_SKIP_LO,
            regs::DEC_DPA_SKIP_HI,
        ] {
            assert_eq!(b.write(reg(0, r), 0x1000_0000, FULL), WriteOutcome::None);
        }
        // Commit stays 1; IG, IW, lock and target type change: ignored.
        let v = regs::CTRL_COMMIT
            | regs::CTRL_LOCK_ON_COMMIT
            | regs::CTRL_TARGET_TYPE_HOST_ONLY
            | ctrl(1, 3);
        assert_eq!(
            b.write(reg(0, regs::DEC_CONTROL), v, FULL),
            WriteOutcome::None
        );
    };
    // Pending.
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitRequested(0));
    let s = snapshot(&b);
    try_writes(&mut b);
    assert_eq!(snapshot(&b), s);
    // Committed.
    b.finish_commit(0, true);
    let s = snapshot(&b);
    try_writes(&mut b);
    assert_eq!(snapshot(&b), s);
    assert!(!b.decoder(0).unwrap().locked);
    // Failed (decoder 1, zero size).
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitFailed(1));
    b.write(reg(1, regs::DEC_SIZE_LO), 0x1000_0000, FULL);
    assert_eq!(b.decoder(1).unwrap().size, 0);
}

#[test]
fn uncommit_clears_status_and_reopens_fields() {
    let mut b = bank(1, 4);
    commit_ok(&mut b, 0, 4 * G, G, 0);
    // The uncommitting write also changes IG: applied together.
    let out = b.write(reg(0, regs::DEC_CONTROL), ctrl(0, 2), FULL);
    assert_eq!(out, WriteOutcome::Uncommitted(0));
    assert_eq!(control(&b, 0), ctrl(0, 2));
    assert_eq!(b.committed_count(), 0);
    assert_eq!(b.dpa_range(0), None);
    b.write(reg(0, regs::DEC_BASE_LO), 0x2000_0000, FULL);
    assert_eq!(b.decoder(0).unwrap().base, 0x2000_0000);
    // Writing Commit=0 again is a no-op, not a second uncommit.
    assert_eq!(
        b.write(reg(0, regs::DEC_CONTROL), 0, FULL),
        WriteOutcome::None
    );
}

#[test]
fn uncommit_cancels_a_pending_request() {
    let mut b = bank(1, 4);
    program(&mut b, 0, 0, G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitRequested(0));
    assert_eq!(
        b.write(reg(0, regs::DEC_CONTROL), 0, FULL),
        WriteOutcome::Uncommitted(0)
    );
    b.finish_commit(0, true);
    assert_eq!(control(&b, 0), 0, "late firmware answer ignored");
    assert!(b.check_invariants().is_ok());
}

#[test]
fn uncommit_out_of_order_keeps_the_upper_decoder_decoding() {
    let mut b = bank(4, 8);
    b.set_global_enable(true);
    commit_ok(&mut b, 0, 0, G, 0);
    commit_ok(&mut b, 1, 4 * G, G, G);
    assert_eq!(b.dpa_range(1), Some((2 * G, G)));
    assert_eq!(b.translate(4 * G + 5), Some(2 * G + 5));
    // Decoder 2 pending.
    program(&mut b, 2, 8 * G, G, 0);
    assert_eq!(commit(&mut b, 2, 0), WriteOutcome::CommitRequested(2));

    // Linux clears Commit out of order when regions go away out of order.
    assert_eq!(
        b.write(reg(0, regs::DEC_CONTROL), 0, FULL),
        WriteOutcome::Uncommitted(0)
    );
    assert!(b.check_invariants().is_ok());
    assert_eq!(b.committed_count(), 1);
    assert_eq!(b.translate(5), None);
    // Decoder 1 keeps its latched DPA base and keeps decoding.
    assert_eq!(b.dpa_range(1), Some((2 * G, G)));
    assert_eq!(b.translate(4 * G + 5), Some(2 * G + 5));
    // The pending decoder 2 is re-checked when firmware answers: 0 is gone.
    b.finish_commit(2, true);
    assert_failed(&b, 2, CommitError::OutOfOrder { index: 2, prev: 0 });
    // Decoder 3 cannot commit above the hole.
    program(&mut b, 3, 12 * G, G, 0);
    assert_eq!(commit(&mut b, 3, 0), WriteOutcome::CommitFailed(3));
    assert_failed(&b, 3, CommitError::OutOfOrder { index: 3, prev: 2 });

    // Re-committing decoder 0 must fit under decoder 1, in HPA ...
    program(&mut b, 0, 3 * G, 2 * G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitFailed(0));
    assert_failed(
        &b,
        0,
        CommitError::HpaOverlapsNext {
            limit: 5 * G,
            next_base: 4 * G,
        },
    );
    // ... and in DPA (3 granules of DPA would run into decoder 1's at 2G).
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 0, 0, 3 * G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitFailed(0));
    assert_failed(
        &b,
        0,
        CommitError::DpaOverlapsNext {
            dpa_end: 3 * G,
            next_dpa_base: 2 * G,
        },
    );
    // A range that fits underneath both commits.
    b.write(reg(0, regs::DEC_CONTROL), 0, FULL);
    program(&mut b, 0, G, 2 * G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitRequested(0));
    b.finish_commit(0, true);
    assert_eq!(b.dpa_range(0), Some((0, 2 * G)));
    assert_eq!(b.dpa_range(1), Some((2 * G, G)));
    assert!(b.check_invariants().is_ok());
    // And the ones above can follow again.
    assert_eq!(
        b.write(reg(2, regs::DEC_CONTROL), 0, FULL),
        WriteOutcome::Uncommitted(2)
    );
    assert_eq!(commit(&mut b, 2, 0), WriteOutcome::CommitRequested(2));
    b.finish_commit(2, true);
    assert_eq!(b.dpa_range(2), Some((3 * G, G)));
    assert_eq!(b.committed_count(), 3);
}

#[test]
fn relinquished_commit_after_out_of_order_reset_is_not_stale() {
    // The Linux sequence: reset decoder 0 out of order (clear Commit, zero size
    // and base), then later program it afresh and commit. The new values must be
    // what the device decodes.
    let mut b = bank(2, 8);
    b.set_global_enable(true);
    commit_ok(&mut b, 0, 0, G, 0);
    commit_ok(&mut b, 1, 4 * G, G, 0);
    assert_eq!(
        b.write(reg(0, regs::DEC_CONTROL), 0, FULL),
        WriteOutcome::Uncommitted(0)
    );
    program(&mut b, 0, 0, 0, 0);
    assert_eq!(b.decoder(0).unwrap().size, 0);
    program(&mut b, 0, 2 * G, G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitRequested(0));
    b.finish_commit(0, true);
    assert_eq!(b.translate(2 * G + 1), Some(1));
    assert_eq!(b.translate(1), None);
}

#[test]
fn lock_on_commit_freezes_until_reset() {
    let mut b = bank(2, 8);
    program(&mut b, 0, 4 * G, G, 0);
    assert_eq!(
        commit(&mut b, 0, regs::CTRL_LOCK_ON_COMMIT | ctrl(0, 1)),
        WriteOutcome::CommitRequested(0)
    );
    assert!(!b.decoder(0).unwrap().locked, "not locked while pending");
    b.finish_commit(0, true);
    let d = b.decoder(0).unwrap();
    assert!(d.locked && d.committed);
    let before: Vec<u32> = (0..0x20u32).step_by(4).map(|r| b.read(reg(0, r))).collect();
    // Clearing Commit, rewriting fields, anything: ignored.
    for r in (0..0x20u32).step_by(4) {
        assert_eq!(b.write(reg(0, r), 0, FULL), WriteOutcome::None);
    }
    let after: Vec<u32> = (0..0x20u32).step_by(4).map(|r| b.read(reg(0, r))).collect();
    assert_eq!(before, after);
    // Global control stays writable; the next decoder still commits.
    b.write(regs::GLOBAL_CONTROL, regs::GCTRL_HDM_DECODER_ENABLE, FULL);
    assert!(b.global_enable());
    commit_ok(&mut b, 1, 5 * G, G, 0);
    // Reset clears everything.
    b.reset();
    for off in (0..b.block_len()).step_by(4) {
        let expect = if off == regs::CAPABILITY {
            b.capability()
        } else {
            0
        };
        assert_eq!(b.read(off), expect, "offset {off:#x}");
    }
    assert!(!b.global_enable());
    assert_eq!(b.decoder(0), Some(DecoderState::default()));
    assert_eq!(b.committed_count(), 0);
    // And the decoder is programmable again.
    commit_ok(&mut b, 0, 0, G, 0);
}

#[test]
fn reset_cancels_pending_and_clears_errors() {
    let mut b = bank(2, 4);
    program(&mut b, 0, 0, G, 0);
    assert_eq!(commit(&mut b, 0, 0), WriteOutcome::CommitRequested(0));
    assert_eq!(commit(&mut b, 1, 0), WriteOutcome::CommitFailed(1));
    b.reset();
    b.finish_commit(0, true);
    assert_eq!(b.decoder(0), Some(DecoderState::default()));
    assert_eq!(b.commit_error(1), None);
    assert!(b.check_invariants().is_ok());
}

#[test]
fn reset_decoders_can_keep_the_locked_ones() {
    // Decoder 0 committed without lock, decoder 1 with Lock On Commit, decoder 2
    // pending, decoder 3 failed; HDM Decoder Enable set.
    let mut b = bank(4, 4);
    commit_ok(&mut b, 0, 4 * G, G, 0);
    program(&mut b, 1, 5 * G, G, 0);
    assert_eq!(
        commit(&mut b, 1, regs::CTRL_LOCK_ON_COMMIT),
        WriteOutcome::CommitRequested(1)
    );
    b.finish_commit(1, true);
    assert!(b.decoder(1).unwrap().locked);
    program(&mut b, 2, 6 * G, G, 0);
    assert_eq!(commit(&mut b, 2, 0), WriteOutcome::CommitRequested(2));
    program(&mut b, 3, 7 * G, G, 0);
    assert_eq!(commit(&mut b, 3, ctrl(5, 0)), WriteOutcome::CommitFailed(3));
    b.write(regs::GLOBAL_CONTROL, regs::GCTRL_HDM_DECODER_ENABLE, FULL);
    let locked: Vec<u32> = (0..0x20u32).step_by(4).map(|r| b.read(reg(1, r))).collect();
    b.reset_decoders(true);
    let after: Vec<u32> = (0..0x20u32).step_by(4).map(|r| b.read(reg(1, r))).collect();
    assert_eq!(locked, after, "the locked decoder is untouched");
    assert_eq!(b.hpa_range(1), Some((5 * G, G)));
    for n in [0u32, 2, 3] {
        assert_eq!(
            b.decoder(n as usize),
            Some(DecoderState::default()),
            "decoder {n}"
        );
        assert_eq!(b.commit_error(n as usize), None);
    }
    // The cancelled request does not complete, Global Control is the caller's.
    b.finish_commit(2, true);
    assert!(!b.decoder(2).unwrap().committed);
    assert!(b.global_enable());
    assert!(b.check_invariants().is_ok());
    // Without keep_locked, the locked one goes too.
    b.reset_decoders(false);
    assert_eq!(b.decoder(1), Some(DecoderState::default()));
    assert_eq!(b.committed_count(), 0);
}

#[test]
fn retry_after_error() {
    let mut b = bank(1, 4);
    program(&mut b, 0, 0, G, 0);
    assert_eq!(commit(&mut b, 0, ctrl(5, 0)), WriteOutcome::CommitFailed(0));
    // Writing Commit=1 again does not retry: Commit is already 1.
    assert_eq!(commit(&mut b, 0, ctrl(0, 0)), WriteOutcome::None);
    assert_eq!(b.decoder(0).unwrap().iw, 5);
    assert_eq!(
        b.write(reg(0, regs::DEC_CONTROL), 0, FULL),
        WriteOutcome::Uncommitted(0)
    );
    assert_eq!(
        commit(&mut b, 0, ctrl(0, 0)),
        WriteOutcome::CommitRequested(0)
    );
}

fn fw(base: u64, size: u64, skip: u64, iw: u8, lock: bool) -> DecoderState {
    DecoderState {
        base,
        size,
        dpa_skip: skip,
        iw,
        lock_on_commit: lock,
        // Status flags are ignored by precommit.
        committed: false,
        error: true,
        ..DecoderState::default()
    }
}

#[test]
fn precommit_runs_the_same_checks() {
    let mut b = bank(2, 4);
    assert_eq!(
        b.precommit(2, fw(0, G, 0, 0, false)),
        Err(HdmError::NoSuchDecoder(2))
    );
    assert_eq!(
        b.precommit(1, fw(0, G, 0, 0, false)),
        Err(HdmError::CommitRejected {
            index: 1,
            reason: CommitError::OutOfOrder { index: 1, prev: 0 }
        })
    );
    assert_eq!(
        b.precommit(0, fw(G / 2, G, 0, 0, false)),
        Err(HdmError::CommitRejected {
            index: 0,
            reason: CommitError::Misaligned
        })
    );
    assert_eq!(
        b.precommit(0, fw(0, G, 4096, 0, false)),
        Err(HdmError::CommitRejected {
            index: 0,
            reason: CommitError::Misaligned
        })
    );
    // Failures leave the decoder untouched.
    assert_eq!(b.decoder(0), Some(DecoderState::default()));
    b.precommit(0, fw(0x1_1000_0000, 2 * G, 0, 0, true))
        .unwrap();
    let d = b.decoder(0).unwrap();
    assert!(d.commit && d.committed && d.locked && !d.error);
    assert_eq!(
        control(&b, 0),
        regs::CTRL_LOCK_ON_COMMIT | regs::CTRL_COMMIT | regs::CTRL_COMMITTED
    );
    assert_eq!(b.read(reg(0, regs::DEC_BASE_LO)), 0x1000_0000);
    assert_eq!(b.read(reg(0, regs::DEC_BASE_HI)), 1);
    assert_eq!(
        b.precommit(0, fw(0, G, 0, 0, false)),
        Err(HdmError::DecoderBusy(0))
    );
    b.precommit(1, fw(0x2_0000_0000, 2 * G, 0, 0, false))
        .unwrap();
    assert!(!b.decoder(1).unwrap().locked);
    assert_eq!(b.dpa_range(1), Some((2 * G, 2 * G)));
    assert!(b.check_invariants().is_ok());
}

#[test]
fn translate_uses_committed_decoders_only_when_enabled() {
    let mut b = bank(2, 8);
    b.precommit(0, fw(16 * G, 2 * G, G, 0, false)).unwrap();
    assert_eq!(b.translate(16 * G), None, "HDM Decoder Enable clear");
    b.set_global_enable(true);
    assert_eq!(b.translate(16 * G), Some(G));
    assert_eq!(b.translate(18 * G - 1), Some(3 * G - 1));
    assert_eq!(b.translate(18 * G), None);
    assert_eq!(b.translate(16 * G - 1), None);
    // Programmed but not committed: not decoded.
    program(&mut b, 1, 20 * G, 2 * G, 0);
    assert_eq!(b.translate(20 * G), None);
    // 2-way, 1 KiB granularity.
    assert_eq!(
        commit(&mut b, 1, ctrl(1, 2)),
        WriteOutcome::CommitRequested(1)
    );
    assert_eq!(b.translate(20 * G), None, "pending does not decode");
    b.finish_commit(1, true);
    assert_eq!(b.translate(20 * G + 0x400 + 7), Some(3 * G + 7));
    assert_eq!(b.translate(20 * G + 0x800 + 7), Some(3 * G + 0x400 + 7));
    let d = b.decode(20 * G + 0x400 + 7).unwrap();
    assert_eq!((d.decoder, d.position), (1, 1));
    assert_eq!(b.dpa_to_hpa(3 * G + 7, 1), Some(20 * G + 0x400 + 7));
    assert_eq!(b.dpa_to_hpa(3 * G + 7, 2), None);
    assert_eq!(b.dpa_to_hpa(0, 0), None, "DPA in decoder 0's skip");
    b.write(regs::GLOBAL_CONTROL, 0, FULL);
    assert_eq!(b.translate(20 * G), None);
}
