//! Property tests: translation against an independent reference, and random register
//! traffic that must never panic nor break the bank's invariants.

mod common;

use common::*;
use cxl_regs::hdm as regs;
use hdm::{DecoderState, HdmConfig, HdmDecoderBank, WriteOutcome};
use proptest::prelude::*;

/// Defined IW encodings and the ways they stand for.
const IWS: [(u8, u64); 8] = [
    (0, 1),
    (1, 2),
    (2, 4),
    (3, 8),
    (4, 16),
    (8, 3),
    (9, 6),
    (10, 12),
];

/// Reference DPA offset, built bit by bit for power-of-two ways: copy every HPA
/// offset bit except the `iw` way-selector bits just above the granule.
fn ref_pow2(off: u64, iw: u32, ig: u32) -> u64 {
    let (skip_lo, skip_hi) = (ig + 8, ig + 8 + iw);
    let mut out = 0u64;
    let mut j = 0;
    for bit in 0..64 {
        if (skip_lo..skip_hi).contains(&bit) {
            continue;
        }
        if off >> bit & 1 == 1 {
            out |= 1 << j;
        }
        j += 1;
    }
    out
}

/// Reference DPA offset, built per chunk: the HPA offset falls in chunk c of
/// `gran` bytes; this member's chunks are every `ways`-th one, stored contiguously.
fn ref_chunk(off: u64, ways: u64, gran: u64) -> u64 {
    let chunk = off / gran;
    let within = off % gran;
    (chunk / ways) * gran + within
}

#[derive(Debug, Clone)]
struct Dec {
    iw: u8,
    ways: u64,
    ig: u8,
    /// DPA per way, in granules.
    dpa_g: u64,
    skip_g: u64,
    /// HPA gap before this decoder, in granules.
    gap_g: u64,
}

fn dec() -> impl Strategy<Value = Dec> {
    (0usize..IWS.len(), 0u8..=6, 1u64..=4, 0u64..=2, 0u64..=3).prop_map(
        |(w, ig, dpa_g, skip_g, gap_g)| Dec {
            iw: IWS[w].0,
            ways: IWS[w].1,
            ig,
            dpa_g,
            skip_g,
            gap_g,
        },
    )
}

proptest! {
    #[test]
    fn translation_matches_reference(
        decs in prop::collection::vec(dec(), 1..=4),
        base_g in 0u64..(1 << 20),
        pick in any::<prop::sample::Index>(),
        off_seed in any::<u64>(),
    ) {
        let mut b = HdmDecoderBank::new(HdmConfig { decoder_count: 4, capacity: 64 * G }).unwrap();
        // Lay decoders out, computing the expected HPA and DPA bases independently.
        let mut hpa = base_g * G;
        let mut dpa = 0u64;
        let mut layout = Vec::new();
        for (i, d) in decs.iter().enumerate() {
            hpa += d.gap_g * G;
            dpa += d.skip_g * G;
            let size = d.ways * d.dpa_g * G;
            b.precommit(i, DecoderState {
                base: hpa,
                size,
                dpa_skip: d.skip_g * G,
                iw: d.iw,
                ig: d.ig,
                ..DecoderState::default()
            }).unwrap();
            layout.push((hpa, size, dpa));
            hpa += size;
            dpa += d.dpa_g * G;
        }
        prop_assert!(b.check_invariants().is_ok());
        b.set_global_enable(true);

        let k = pick.index(decs.len());
        let d = &decs[k];
        let (base, size, dpa_base) = layout[k];
        let off = off_seed % size;
        let gran = 256u64 << d.ig;
        let expect_off = if d.iw < 8 {
            ref_pow2(off, u32::from(d.iw), u32::from(d.ig))
        } else {
            ref_chunk(off, d.ways, gran)
        };
        // Both references agree for power-of-two ways too.
        prop_assert_eq!(ref_chunk(off, d.ways, gran), expect_off);
        prop_assert!(expect_off < d.dpa_g * G);

        let got = b.decode(base + off).unwrap();
        prop_assert_eq!(got.decoder, k);
        prop_assert_eq!(got.dpa, dpa_base + expect_off);
        let pos = (off / gran) % d.ways;
        prop_assert_eq!(u64::from(got.position), pos);
        prop_assert_eq!(b.translate(base + off), Some(dpa_base + expect_off));
        prop_assert_eq!(b.dpa_to_hpa(dpa_base + expect_off, got.position), Some(base + off));
        prop_assert_eq!(b.dpa_range(k), Some((dpa_base, d.dpa_g * G)));

        // Just outside the first and last decoders, and inside gaps: nothing decodes.
        prop_assert_eq!(b.translate(layout[0].0.wrapping_sub(1)), None);
        let (lb, ls, _) = layout[layout.len() - 1];
        prop_assert_eq!(b.translate(lb + ls), None);
        if d.gap_g > 0 {
            prop_assert_eq!(b.translate(base - 1), None);
        }
        b.set_global_enable(false);
        prop_assert_eq!(b.translate(base + off), None);
    }

    #[test]
    fn dpa_to_hpa_inverts_translate_for_every_position(
        w in 0usize..IWS.len(),
        ig in 0u8..=6,
        dpa_off in 0u64..(2 * G),
    ) {
        let (iw, ways) = IWS[w];
        let mut b = HdmDecoderBank::new(HdmConfig { decoder_count: 1, capacity: 2 * G }).unwrap();
        b.precommit(0, DecoderState {
            base: 0x40_0000_0000,
            size: ways * 2 * G,
            iw,
            ig,
            ..DecoderState::default()
        }).unwrap();
        b.set_global_enable(true);
        let mut seen = Vec::new();
        for pos in 0..ways as u32 {
            let hpa = b.dpa_to_hpa(dpa_off, pos).unwrap();
            let d = b.decode(hpa).unwrap();
            prop_assert_eq!(d.dpa, dpa_off);
            prop_assert_eq!(d.position, pos);
            seen.push(hpa);
        }
        seen.sort_unstable();
        seen.dedup();
        prop_assert_eq!(seen.len() as u64, ways);
        prop_assert_eq!(b.dpa_to_hpa(dpa_off, ways as u32), None);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u32,
        value: u32,
        mask: u32,
    },
    Finish {
        index: usize,
        accept: bool,
    },
    Precommit {
        index: usize,
        base_g: u64,
        size_g: u64,
        skip_g: u64,
        iw: u8,
        ig: u8,
        lock: bool,
    },
    /// Base, size and skip of one decoder, in 256 MiB granules, written dword by
    /// dword as a driver does (so commits are reached often).
    Program {
        index: u32,
        base_g: u64,
        size_g: u64,
        skip_g: u64,
    },
    /// What a driver does: clear Commit, program, set Commit, get the firmware's
    /// answer.
    Driver {
        index: u32,
        base_g: u64,
        size_g: u64,
        skip_g: u64,
        iw: u8,
        ig: u8,
        lock: bool,
        accept: bool,
    },
    Reset,
}

fn mask() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => Just(FULL),
        1 => Just(0x0000_00ff),
        1 => Just(0x0000_ff00),
        1 => Just(0x00ff_0000),
        1 => Just(0xff00_0000),
        1 => Just(0x0000_ffff),
        1 => Just(0xffff_0000),
        1 => any::<u32>(),
    ]
}

fn control_value() -> impl Strategy<Value = u32> {
    (
        prop_oneof![4 => Just(0u8), 3 => (0usize..IWS.len()).prop_map(|w| IWS[w].0), 1 => 0u8..16],
        prop_oneof![3 => 0u8..=6, 1 => 0u8..16],
        any::<bool>(),
        prop_oneof![3 => Just(true), 1 => Just(false)],
        any::<bool>(),
        prop_oneof![4 => Just(0u32), 1 => any::<u32>()],
    )
        .prop_map(|(iw, ig, lock, commit, host_only, junk)| {
            let mut v = ctrl(iw, ig) | junk;
            v = (v & !(regs::CTRL_LOCK_ON_COMMIT
                | regs::CTRL_COMMIT
                | regs::CTRL_TARGET_TYPE_HOST_ONLY))
                | if lock { regs::CTRL_LOCK_ON_COMMIT } else { 0 }
                | if commit { regs::CTRL_COMMIT } else { 0 }
                | if host_only {
                    regs::CTRL_TARGET_TYPE_HOST_ONLY
                } else {
                    0
                };
            v
        })
}

fn op() -> impl Strategy<Value = Op> {
    let decoder_reg = (0u32..5, 0u32..8);
    prop_oneof![
        // Address registers with small, mostly valid values.
        6 => (decoder_reg, prop_oneof![3 => (0u32..16).prop_map(|g| g << 28), 1 => Just(0u32), 1 => any::<u32>()], mask())
            .prop_map(|((i, r), value, mask)| Op::Write { off: regs::decoder_offset(i) + 4 * r, value, mask }),
        6 => (0u32..5, control_value(), mask())
            .prop_map(|(i, value, mask)| Op::Write { off: regs::decoder_offset(i) + regs::DEC_CONTROL, value, mask }),
        // Anywhere, any alignment, any value.
        2 => (0u32..0xc0, any::<u32>(), mask()).prop_map(|(off, value, mask)| Op::Write { off, value, mask }),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(off, value)| Op::Write { off, value, mask: FULL }),
        1 => (any::<u32>(), mask()).prop_map(|(value, mask)| Op::Write { off: regs::GLOBAL_CONTROL, value, mask }),
        4 => (0usize..5, prop_oneof![3 => Just(true), 1 => Just(false)])
            .prop_map(|(index, accept)| Op::Finish { index, accept }),
        1 => (0usize..5, 0u64..16, 0u64..8, 0u64..4, 0u8..12, 0u8..8, any::<bool>())
            .prop_map(|(index, base_g, size_g, skip_g, iw, ig, lock)| Op::Precommit { index, base_g, size_g, skip_g, iw, ig, lock }),
        8 => (0u32..5, 0u64..24, prop_oneof![4 => 1u64..6, 1 => 0u64..48], prop_oneof![3 => Just(0u64), 1 => 0u64..4])
            .prop_map(|(index, base_g, size_g, skip_g)| Op::Program { index, base_g, size_g, skip_g }),
        8 => (
            (0u32..5, 0u64..24, prop_oneof![4 => 1u64..6, 1 => 0u64..48], prop_oneof![3 => Just(0u64), 1 => 0u64..4]),
            (prop_oneof![4 => Just(0u8), 1 => (0usize..IWS.len()).prop_map(|w| IWS[w].0)], 0u8..8, prop_oneof![1 => Just(true), 3 => Just(false)], prop_oneof![5 => Just(true), 1 => Just(false)]),
        )
            .prop_map(|((index, base_g, size_g, skip_g), (iw, ig, lock, accept))| {
                // Mostly ascending per index (index·8 + 0..8), sometimes anywhere.
                let base_g = if base_g < 16 { u64::from(index) * 8 + base_g / 2 } else { base_g };
                Op::Driver { index, base_g, size_g, skip_g, iw, ig, lock, accept }
            }),
        1 => Just(Op::Reset),
    ]
}

/// Every register of the bank, by offset.
fn dump(b: &HdmDecoderBank) -> Vec<u32> {
    (0..b.block_len()).step_by(4).map(|o| b.read(o)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_traffic_keeps_invariants(
        n in prop_oneof![Just(1u8), Just(2), Just(4)],
        cap_g in prop_oneof![1 => 1u64..8, 3 => 8u64..40],
        ops in prop::collection::vec(op(), 1..60),
        probe in any::<u64>(),
    ) {
        let mut b = bank(n, cap_g);
        for op in ops {
            let before = b.clone();
            match op {
                Op::Write { off, value, mask } => {
                    let out = b.write(off, value, mask);
                    let idx = (off & !3).checked_sub(0x10).map(|r| (r / 0x20) as usize);
                    match out {
                        WriteOutcome::None => {}
                        WriteOutcome::CommitRequested(i) => {
                            prop_assert_eq!(Some(i), idx);
                            prop_assert!(b.decoder(i).unwrap().pending());
                        }
                        WriteOutcome::CommitFailed(i) => {
                            prop_assert_eq!(Some(i), idx);
                            prop_assert!(b.decoder(i).unwrap().error);
                            prop_assert!(b.commit_error(i).is_some());
                        }
                        WriteOutcome::Uncommitted(i) => {
                            prop_assert_eq!(Some(i), idx);
                            let d = b.decoder(i).unwrap();
                            prop_assert!(!d.commit && !d.committed && !d.error);
                        }
                    }
                    // A locked decoder's registers never change through a write.
                    for i in 0..b.decoder_count() {
                        if before.decoder(i).unwrap().locked {
                            prop_assert_eq!(before.decoder(i), b.decoder(i));
                        }
                        // A write to one decoder never changes another's.
                        if Some(i) != idx {
                            prop_assert_eq!(before.decoder(i), b.decoder(i));
                            prop_assert_eq!(before.dpa_range(i), b.dpa_range(i));
                        }
                    }
                    // The capability register is read-only.
                    prop_assert_eq!(before.read(0), b.read(0));
                }
                Op::Finish { index, accept } => {
                    b.finish_commit(index, accept);
                    if let Some(d) = before.decoder(index) {
                        if !d.pending() {
                            prop_assert_eq!(dump(&before), dump(&b), "finish on a non-pending decoder");
                        }
                    }
                }
                Op::Precommit { index, base_g, size_g, skip_g, iw, ig, lock } => {
                    let r = b.precommit(index, DecoderState {
                        base: base_g * G,
                        size: size_g * G,
                        dpa_skip: skip_g * G,
                        iw,
                        ig,
                        lock_on_commit: lock,
                        ..DecoderState::default()
                    });
                    if r.is_err() {
                        prop_assert_eq!(dump(&before), dump(&b), "failed precommit changed state");
                    } else {
                        prop_assert!(b.decoder(index).unwrap().committed);
                    }
                }
                Op::Program { index, base_g, size_g, skip_g } => {
                    for (r, v) in [
                        (regs::DEC_BASE_LO, base_g * G),
                        (regs::DEC_SIZE_LO, size_g * G),
                        (regs::DEC_DPA_SKIP_LO, skip_g * G),
                    ] {
                        for (dr, dv) in [(r, v as u32), (r + 4, (v >> 32) as u32)] {
                            prop_assert_eq!(b.write(reg(index, dr), dv, FULL), WriteOutcome::None);
                        }
                    }
                    let frozen = before.decoder(index as usize).is_none_or(|d| d.commit);
                    if frozen {
                        prop_assert_eq!(dump(&before), dump(&b), "frozen decoder reprogrammed");
                    } else {
                        let d = b.decoder(index as usize).unwrap();
                        prop_assert_eq!((d.base, d.size, d.dpa_skip), (base_g * G, size_g * G, skip_g * G));
                    }
                }
                Op::Driver { index, base_g, size_g, skip_g, iw, ig, lock, accept } => {
                    b.write(reg(index, regs::DEC_CONTROL), 0, FULL);
                    program(&mut b, index, base_g * G, size_g * G, skip_g * G);
                    let lock_bit = if lock { regs::CTRL_LOCK_ON_COMMIT } else { 0 };
                    match commit(&mut b, index, ctrl(iw, ig) | lock_bit) {
                        WriteOutcome::CommitRequested(i) => {
                            prop_assert_eq!(i, index as usize);
                            b.finish_commit(i, accept);
                            let d = b.decoder(i).unwrap();
                            prop_assert_eq!(d.committed, accept);
                            prop_assert_eq!(d.locked, accept && lock);
                        }
                        WriteOutcome::CommitFailed(i) => prop_assert_eq!(i, index as usize),
                        // Out of range, locked, or Commit could not be cleared.
                        WriteOutcome::None => {
                            let d = before.decoder(index as usize);
                            prop_assert!(d.is_none_or(|d| d.commit), "{:?}", d);
                        }
                        WriteOutcome::Uncommitted(_) => prop_assert!(false, "commit write uncommitted"),
                    }
                }
                Op::Reset => {
                    b.reset();
                    prop_assert_eq!(b.committed_count(), 0);
                }
            }
            if let Err(e) = b.check_invariants() {
                return Err(TestCaseError::fail(e));
            }
            // Reserved bits read 0.
            prop_assert_eq!(b.read(regs::GLOBAL_CONTROL) & !regs::GCTRL_HDM_DECODER_ENABLE, 0);
            for o in [0x08u32, 0x0c] {
                prop_assert_eq!(b.read(o), 0);
            }
            for i in 0..b.decoder_count() as u32 {
                prop_assert_eq!(control(&b, i) & !0x1fff, 0);
                for r in [regs::DEC_BASE_LO, regs::DEC_SIZE_LO, regs::DEC_DPA_SKIP_LO] {
                    prop_assert_eq!(b.read(reg(i, r)) & 0x0fff_ffff, 0);
                }
                prop_assert_eq!(b.read(reg(i, 0x1c)), 0);
            }
            // Decoding any address is total, and lands inside the capacity.
            for hpa in [probe, probe % (32 * G)] {
                if let Some(dpa) = b.translate(hpa) {
                    prop_assert!(dpa < b.capacity());
                }
            }
        }
    }
}
