//! Property tests: random sequences of accesses of random widths at random offsets
//! over config space and every BAR never panic, and afterwards every decoder that
//! committed without error still satisfies the commit invariants. An FLR changes no
//! CXL.mem state (CXL r3.1 §9.5), and a CXL Reset keeps exactly the locked state
//! (§9.7, §8.1.3.6, Table 8-1).

mod common;

use accel_type2::*;
use common::*;
use cxl_regs::hdm as h;
use cxl_regs::layout;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    CfgRead(u64, usize),
    CfgWrite(u64, Vec<u8>),
    BarRead(u8, u64, usize),
    BarWrite(u8, u64, Vec<u8>),
    /// A plausible decoder programming followed by a Control write.
    Program {
        n: u32,
        base: u64,
        size: u64,
        skip: u64,
        ctrl: u32,
    },
    Doorbell {
        src: u64,
        dst: u64,
        len: u64,
        control: u32,
    },
    Advance(u64),
    Poll,
    Reset,
    Flr,
    /// Initiate CXL Reset, with CXL Reset Mem Clr Enable or not.
    CxlReset(bool),
    Ras(bool, u8),
    Poison(u64, u64),
}

/// Offsets near where registers are, or anywhere.
fn offset(size: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..size + 64,
        1 => any::<u64>(),
        1 => (0u64..64).prop_map(move |d| size.saturating_sub(d)),
    ]
}

fn bar0_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => (0u64..0x100).prop_map(|o| layout::HDM_OFFSET + o),
        1 => (0u64..0x80).prop_map(|o| layout::RAS_OFFSET + o),
        1 => (0u64..0x40).prop_map(|o| layout::CACHEMEM_OFFSET + o),
        2 => (0u64..0x60).prop_map(|o| layout::MAILBOX_OFFSET + o),
        1 => (0u64..0x300).prop_map(|o| layout::DEVICE_BLOCK_OFFSET + o),
        2 => offset(layout::BAR0_SIZE),
    ]
}

fn width() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(2), Just(4), Just(8), 0usize..20]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    width().prop_flat_map(|w| prop::collection::vec(any::<u8>(), w))
}

fn op() -> impl Strategy<Value = Op> {
    let gran = 1u64 << 28;
    prop_oneof![
        3 => (offset(4096), width()).prop_map(|(o, w)| Op::CfgRead(o, w)),
        3 => (offset(4096), bytes()).prop_map(|(o, b)| Op::CfgWrite(o, b)),
        2 => (bar0_offset(), width()).prop_map(|(o, w)| Op::BarRead(0, o, w)),
        4 => (bar0_offset(), bytes()).prop_map(|(o, b)| Op::BarWrite(0, o, b)),
        1 => (offset(layout::BAR4_SIZE), width()).prop_map(|(o, w)| Op::BarRead(4, o, w)),
        2 => (offset(layout::BAR4_SIZE), bytes()).prop_map(|(o, b)| Op::BarWrite(4, o, b)),
        1 => (0u8..8, offset(256 * MIB), width()).prop_map(|(b, o, w)| Op::BarRead(b, o, w)),
        1 => (0u8..8, offset(256 * MIB), bytes()).prop_map(|(b, o, by)| Op::BarWrite(b, o, by)),
        4 => (0u32..3, 0u64..64, 0u64..4, 0u64..3, any::<u32>()).prop_map(move |(n, b, s, k, c)| Op::Program {
            n,
            base: b * gran,
            size: s * gran,
            skip: k * gran,
            ctrl: c & 0x1fff,
        }),
        2 => (any::<u64>(), any::<u64>(), prop_oneof![0u64..0x20000, any::<u64>()], 0u32..4)
            .prop_map(|(src, dst, len, control)| Op::Doorbell { src: src % (1 << 20), dst: dst % (512 * MIB), len, control }),
        1 => (0u64..50_000_000).prop_map(Op::Advance),
        1 => Just(Op::Poll),
        1 => Just(Op::Reset),
        1 => Just(Op::Flr),
        // Mem Clr zeroes all 512 MiB of a Vec, page by page: one in 32.
        1 => (0u8..32).prop_map(|n| Op::CxlReset(n == 0)),
        1 => (any::<bool>(), 0u8..40).prop_map(|(u, b)| Op::Ras(u, b)),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(a, l)| Op::Poison(a % (512 * MIB), l % 4096)),
    ]
}

fn firmware() -> impl Strategy<Value = u8> {
    0u8..3
}

fn run(d: &mut AccelDevice, clock: &FakeClock, guest: &TestGuest, op: Op) {
    match op {
        Op::CfgRead(o, w) => {
            let mut b = vec![0; w];
            d.config_read(o, &mut b);
        }
        Op::CfgWrite(o, b) => d.config_write(o, &b),
        Op::BarRead(bar, o, w) => {
            let mut b = vec![0; w];
            d.bar_read(bar, o, &mut b);
        }
        Op::BarWrite(bar, o, b) => d.bar_write(bar, o, &b, guest),
        Op::Program {
            n,
            base,
            size,
            skip,
            ctrl,
        } => {
            let r = |reg: u32| layout::HDM_OFFSET + u64::from(h::decoder_offset(n) + reg);
            let w = |d: &mut AccelDevice, off: u64, v: u32| {
                d.bar_write(0, off, &v.to_le_bytes(), guest)
            };
            w(d, layout::HDM_OFFSET + 4, h::GCTRL_HDM_DECODER_ENABLE);
            w(d, r(h::DEC_BASE_LO), base as u32);
            w(d, r(h::DEC_BASE_HI), (base >> 32) as u32);
            w(d, r(h::DEC_SIZE_LO), size as u32);
            w(d, r(h::DEC_SIZE_HI), (size >> 32) as u32);
            w(d, r(h::DEC_DPA_SKIP_LO), skip as u32);
            w(d, r(h::DEC_DPA_SKIP_HI), (skip >> 32) as u32);
            w(d, r(h::DEC_CONTROL), ctrl);
        }
        Op::Doorbell {
            src,
            dst,
            len,
            control,
        } => {
            use layout::engine::*;
            d.bar_write(4, SRC, &src.to_le_bytes(), guest);
            d.bar_write(4, DST, &dst.to_le_bytes(), guest);
            d.bar_write(4, LEN, &len.to_le_bytes(), guest);
            d.bar_write(4, CONTROL, &control.to_le_bytes(), guest);
            d.bar_write(4, DOORBELL, &1u32.to_le_bytes(), guest);
        }
        Op::Advance(ns) => clock.advance(ns),
        Op::Poll => d.poll(),
        Op::Reset => d.reset(),
        Op::Flr => {
            let exp = find_cap(d, 0x10).expect("PCIe capability");
            let v = cfg_r16(d, exp + 8);
            cfg_w16(d, exp + 8, v | 0x8000);
        }
        Op::CxlReset(mem_clr) => {
            let c = find_dvsec(d, 0).expect("CXL Device DVSEC");
            cfg_w16(d, c + 0x10, 0x4 | if mem_clr { 0x8 } else { 0 });
        }
        Op::Ras(u, b) => d.inject_ras(u, b),
        Op::Poison(a, l) => {
            let _ = d.inject_poison(a, l);
        }
    }
}

/// The CXL.mem state a guest can see: every decoder, HDM Decoder Enable, and the
/// DVSEC's Control, Lock and Range 1/2 Base registers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CxlMem {
    decoders: Vec<hdm::DecoderState>,
    global_enable: bool,
    dvsec: Vec<u32>,
}

fn cxl_mem(d: &mut AccelDevice) -> CxlMem {
    let c = find_dvsec(d, 0).expect("CXL Device DVSEC");
    let bank = d.hdm();
    CxlMem {
        decoders: (0..bank.decoder_count())
            .filter_map(|i| bank.decoder(i))
            .collect(),
        global_enable: bank.global_enable(),
        dvsec: [0x0c, 0x14, 0x20, 0x24, 0x30, 0x34]
            .iter()
            .map(|o| cfg_r32(d, c + o))
            .collect(),
    }
}

/// What a CXL Reset leaves of `before` (CXL r3.1 §9.7): a decoder locked by Lock On
/// Commit stays, the others return to power-on values; HDM Decoder Enable clears;
/// the DVSEC fields stay when CONFIG_LOCK (Lock bit 0) was set, else Control reads
/// IO_Enable only and the bases 0. Control2/Status2 share a dword with nothing here.
fn after_cxl_reset(before: &CxlMem) -> CxlMem {
    let locked = before.dvsec[1] & 1 != 0;
    CxlMem {
        decoders: before
            .decoders
            .iter()
            .map(|d| {
                if d.locked {
                    *d
                } else {
                    hdm::DecoderState::default()
                }
            })
            .collect(),
        global_enable: false,
        dvsec: if locked {
            before.dvsec.clone()
        } else {
            // Control (with Status above it: 0), Lock (Capability2 above: 0), bases.
            vec![0x2, 0, 0, 0, 0, 0]
        },
    }
}

/// Independent check of what a committed decoder must satisfy (CXL r3.1 §8.2.4.20.7,
/// Commit: aligned, non-empty, in HPA order, within the DPA capacity).
fn check_decoders(d: &AccelDevice) -> Result<(), String> {
    let bank = d.hdm();
    bank.check_invariants()?;
    let gran = 1u64 << 28;
    let committed: Vec<_> = (0..bank.decoder_count())
        .filter_map(|i| bank.decoder(i).map(|s| (i, s)))
        .filter(|(_, s)| s.committed)
        .collect();
    // Independent of hdm's bookkeeping: committed decoders ascend in HPA with their
    // index, and the DPA each one consumes (its skip plus size / ways; CXL r3.1
    // §8.2.4.20.12) fits in the capacity when added up.
    let mut dpa_total = 0u64;
    for (k, (i, s)) in committed.iter().enumerate() {
        if s.error {
            return Err(format!("decoder {i} committed with error set"));
        }
        if s.size == 0 || s.base % gran != 0 || s.size % gran != 0 {
            return Err(format!(
                "decoder {i}: base {:#x} size {:#x}",
                s.base, s.size
            ));
        }
        let ways = match s.iw {
            0..=4 => 1u64 << s.iw,
            8..=10 => 3u64 << (s.iw - 8),
            iw => return Err(format!("decoder {i} committed with IW {iw}")),
        };
        if s.size % (ways * gran) != 0 {
            return Err(format!(
                "decoder {i}: size {:#x} not whole 256 MiB per way",
                s.size
            ));
        }
        dpa_total = dpa_total
            .checked_add(s.dpa_skip)
            .and_then(|v| v.checked_add(s.size / ways))
            .ok_or(format!("decoder {i}: DPA overflow"))?;
        if dpa_total > bank.capacity() {
            return Err(format!(
                "decoder {i}: DPA use {dpa_total:#x} beyond capacity"
            ));
        }
        if let Some((j, t)) = k.checked_sub(1).and_then(|p| committed.get(p)) {
            if t.base >= s.base {
                return Err(format!("decoder {i} below committed decoder {j} in HPA"));
            }
        }
        for (j, t) in committed.iter().take(k) {
            let (a0, a1) = (s.base, s.base.saturating_add(s.size));
            let (b0, b1) = (t.base, t.base.saturating_add(t.size));
            if a0 < b1 && b0 < a1 {
                return Err(format!("decoders {j} and {i} overlap"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_accesses_never_panic_and_keep_decoder_invariants(
        fw in firmware(),
        mailbox in any::<bool>(),
        flit68 in any::<bool>(),
        decoders in prop_oneof![Just(1u8), Just(2), Just(4)],
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let cfg = AccelConfig {
            memory_size: 512 * MIB,
            mailbox,
            decoders,
            flit: if flit68 { FlitMode::Flit68 } else { FlitMode::Flit256 },
            ..AccelConfig::default()
        };
        let firmware: Box<dyn Firmware> = match fw {
            0 => Box::new(DefaultFirmware),
            1 => Box::new(SlowCommitFirmware::new(3_000_000, Some(256 * MIB))),
            _ => {
                let mut b = BiosFirmware::default();
                b.set_param("base", "0x100000000").unwrap();
                Box::new(b)
            }
        };
        let (mut d, clock) = device_with(cfg, firmware);
        let guest = TestGuest::new(0x8_0000, 64 << 10);
        for op in ops {
            // Let due work (a delayed commit, a CXL Reset) finish first, so that
            // the reset ops below change only what the reset itself changes.
            d.poll();
            let before = cxl_mem(&mut d);
            let in_reset = d.cxl_reset_in_progress();
            let kind = match op {
                Op::Flr => Some(ResetKind::Flr),
                Op::CxlReset(_) => Some(ResetKind::CxlReset),
                _ => None,
            };
            run(&mut d, &clock, &guest, op);
            prop_assert!(check_decoders(&d).is_ok(), "{:?}", check_decoders(&d));
            match kind {
                Some(ResetKind::Flr) => {
                    prop_assert_eq!(cxl_mem(&mut d), before, "FLR changed CXL.mem state");
                }
                Some(ResetKind::CxlReset) if !in_reset => {
                    prop_assert!(d.cxl_reset_in_progress());
                    prop_assert_eq!(cxl_mem(&mut d), after_cxl_reset(&before));
                }
                _ => {}
            }
        }
        clock.advance(1_000_000_000);
        d.poll();
        prop_assert!(check_decoders(&d).is_ok(), "{:?}", check_decoders(&d));
        // The identity and capability structure survived whatever was written.
        prop_assert_eq!(cfg_r32(&mut d, 0), 0xcc02_1234);
        prop_assert!(find_dvsec(&mut d, 0).is_some());
        prop_assert!(find_dvsec(&mut d, 7).is_some());
        prop_assert!(find_dvsec(&mut d, 8).is_some());
        let _ = d.status();
        let _ = d.take_interrupts();
    }
}

/// The generator's decoder programming really commits when the values are valid, so
/// the invariant check above sees committed decoders.
#[test]
fn the_program_op_commits_valid_decoders() {
    let (mut d, clock) = device(AccelConfig {
        memory_size: 512 * MIB,
        ..AccelConfig::default()
    });
    let guest = TestGuest::new(0, 4096);
    let gran = 1u64 << 28;
    run(
        &mut d,
        &clock,
        &guest,
        Op::Program {
            n: 0,
            base: 4 * gran,
            size: gran,
            skip: 0,
            ctrl: h::CTRL_COMMIT,
        },
    );
    run(
        &mut d,
        &clock,
        &guest,
        Op::Program {
            n: 1,
            base: 4 * gran,
            size: gran,
            skip: 0,
            ctrl: h::CTRL_COMMIT,
        },
    );
    assert!(d.hdm().decoder(0).unwrap().committed);
    let d1 = d.hdm().decoder(1).unwrap();
    assert!(!d1.committed && d1.error, "overlapping HPA range refused");
    assert!(check_decoders(&d).is_ok());
}
