//! Fuzz target: the DOE mailbox (`accel_type2::doe::DoeMailbox`) and the CDAT
//! parser it serves from (`accel_type2::cdat::Cdat::parse`).
//!
//! The input picks a table (the built one, with fuzzed figures, or fuzzed bytes run
//! through the vendor-table validation) and a sequence of register accesses: masked
//! writes and reads of every DOE register, whole well-formed requests, resets, and
//! table swaps.
//!
//! Checked after every step, beyond not panicking:
//! - Status holds only Busy, Error and Data Object Ready; Busy exactly when a
//!   response is ready; Capabilities, Control and the Write Data Mailbox read 0;
//! - the Read Data Mailbox reads 0 unless a response is ready;
//! - a whole well-formed request, on an idle instance, gets exactly the response
//!   the protocol defines: Discovery's entry for the index, or the CDAT entry for
//!   the handle with the next handle before it (or DOE Error for an index or handle
//!   past the end), and the instance is idle after it is read out;
//! - a response read out DW by DW states its own length in its second header DW;
//! - a table `Cdat::parse` accepts sums to 0, its header Length is its size, and
//!   its entries tile it exactly.

#![no_main]

use std::sync::Arc;

use accel_type2::cdat::{Cdat, CdatConfig, EfiMemoryType};
use accel_type2::doe::DoeMailbox;
use arbitrary::Arbitrary;
use cxl_accel_fuzz::stats;
use cxl_regs::doe as d;
use libfuzzer_sys::fuzz_target;

const CAPACITY: u64 = 1 << 30;

#[derive(Arbitrary, Debug)]
enum Table {
    Built {
        read_latency: u32,
        write_latency: u32,
        read_bandwidth: u32,
        write_bandwidth: u32,
        memory_type: u8,
        sequence: u32,
    },
    /// Bytes for the vendor-table validation; `fix` repairs Length and checksum
    /// first, so that the structure checks are reached.
    Vendor { bytes: Vec<u8>, fix: bool },
    /// The default built table with byte edits and bytes appended, then through
    /// the vendor-table validation: reaches the handle and range checks.
    Edited {
        edits: Vec<(u8, u8)>,
        append: Vec<u8>,
        fix: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum Reg {
    Capabilities,
    Control,
    Status,
    Write,
    Read,
    /// Any dword offset (the registers' own included).
    Other(u8),
}

impl Reg {
    fn offset(&self) -> usize {
        match self {
            Reg::Capabilities => d::CAPABILITIES,
            Reg::Control => d::CONTROL,
            Reg::Status => d::STATUS,
            Reg::Write => d::WRITE_MAILBOX,
            Reg::Read => d::READ_MAILBOX,
            Reg::Other(o) => usize::from(*o & !3),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Write {
        reg: Reg,
        value: u32,
        lanes: u8,
    },
    Read(Reg),
    /// One Discovery request, whole.
    Discover(u8),
    /// One Read Entry request, whole.
    ReadEntry(u16),
    /// Read out whatever response is ready.
    Drain,
    Reset,
    Table(Table),
}

#[derive(Arbitrary, Debug)]
struct Input {
    table: Table,
    ops: Vec<Op>,
}

fn table(t: &Table) -> Option<Cdat> {
    match t {
        Table::Built {
            read_latency,
            write_latency,
            read_bandwidth,
            write_bandwidth,
            memory_type,
            sequence,
        } => {
            let cfg = CdatConfig {
                read_latency_ns: u64::from(*read_latency),
                write_latency_ns: u64::from(*write_latency),
                read_bandwidth_mbs: u64::from(*read_bandwidth),
                write_bandwidth_mbs: u64::from(*write_bandwidth),
                memory_type: match memory_type % 3 {
                    0 => EfiMemoryType::Conventional,
                    1 => EfiMemoryType::SpecificPurpose,
                    _ => EfiMemoryType::Reserved,
                },
            };
            match Cdat::build(&cfg, CAPACITY, *sequence) {
                Ok(c) => Some(c),
                Err(_) => {
                    assert!(cfg.validate().is_err(), "valid figures refused");
                    None
                }
            }
        }
        Table::Vendor { bytes, fix } => vendor(bytes.clone(), *fix),
        Table::Edited { edits, append, fix } => {
            let mut b = Cdat::build(&CdatConfig::default(), CAPACITY, 0)
                .expect("defaults build")
                .bytes()
                .to_vec();
            for &(at, v) in edits {
                let i = usize::from(at) % b.len();
                b[i] = v;
            }
            b.extend_from_slice(append);
            vendor(b, *fix)
        }
    }
}

/// `b` through the vendor-table validation, after repairing its Length and
/// checksum when `fix`.
fn vendor(mut b: Vec<u8>, fix: bool) -> Option<Cdat> {
    if fix && b.len() >= 16 {
        let n = b.len() as u32;
        b[0..4].copy_from_slice(&n.to_le_bytes());
        b[5] = 0;
        let sum = b.iter().fold(0u8, |s, x| s.wrapping_add(*x));
        b[5] = 0u8.wrapping_sub(sum);
    }
    let c = Cdat::parse(b.clone(), CAPACITY).ok()?;
    stats::count("vendor table accepted");
    assert_eq!(c.bytes(), b.as_slice());
    Some(c)
}

/// A table that validates: its sum, its Length, and entries that tile it.
fn check_table(c: &Cdat) {
    let b = c.bytes();
    assert_eq!(b.iter().fold(0u8, |s, x| s.wrapping_add(*x)), 0, "checksum");
    assert_eq!(
        u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize,
        b.len(),
        "Length"
    );
    let mut covered = 0;
    for h in 0..c.entry_count() {
        let (e, next) = c.entry(h as u16).expect("entry in range");
        assert_eq!(e.len() % 4, 0, "entry {h} not whole DWs");
        covered += e.len();
        let last = h + 1 == c.entry_count();
        assert_eq!(next, if last { 0xffff } else { h as u16 + 1 });
    }
    assert_eq!(covered, b.len(), "entries tile the table");
    assert!(c.entry(c.entry_count() as u16).is_none());
}

fn check_regs(m: &DoeMailbox) {
    let st = m.read(d::STATUS);
    assert_eq!(
        st & !(d::STATUS_BUSY | d::STATUS_ERROR | d::STATUS_DATA_OBJECT_READY),
        0,
        "Status reserved bits"
    );
    let ready = st & d::STATUS_DATA_OBJECT_READY != 0;
    assert_eq!(st & d::STATUS_BUSY != 0, ready, "Busy without a response");
    assert!(
        !(ready && st & d::STATUS_ERROR != 0),
        "a response with Error"
    );
    for r in [d::CAPABILITIES, d::CONTROL, d::WRITE_MAILBOX] {
        assert_eq!(m.read(r), 0, "register {r:#x} reads 0");
    }
    if !ready {
        assert_eq!(
            m.read(d::READ_MAILBOX),
            0,
            "Read Data Mailbox with nothing ready"
        );
    }
}

/// Read out the ready response; read from its start (`whole`), it must state its
/// own length.
fn drain(m: &mut DoeMailbox, whole: bool) -> Vec<u32> {
    let mut out = Vec::new();
    while m.read(d::STATUS) & d::STATUS_DATA_OBJECT_READY != 0 {
        assert!(out.len() <= 3 + (1 << 14), "response too long");
        out.push(m.read(d::READ_MAILBOX));
        m.write(d::READ_MAILBOX, 0, !0);
    }
    if let (true, Some(&h2)) = (whole, out.get(1)) {
        assert_eq!(d::header2_length(h2), out.len(), "response Length");
    }
    out
}

fn idle(m: &DoeMailbox) -> bool {
    m.read(d::STATUS) == 0
}

/// Send a whole request; when the instance was idle, with nothing written since
/// the last Go, Abort or reset (`clean`), the response must be `want` (None: DOE
/// Error).
fn request(m: &mut DoeMailbox, req: &[u32], want: Option<Vec<u32>>, clean: bool) {
    let was_idle = idle(m);
    for &dw in req {
        m.write(d::WRITE_MAILBOX, dw, !0);
    }
    m.write(d::CONTROL, d::CTRL_GO, !0);
    if !was_idle {
        // Busy or in error: refused, with DOE Error.
        assert_ne!(
            m.read(d::STATUS) & d::STATUS_ERROR,
            0,
            "request taken while busy"
        );
        return;
    }
    if !clean {
        // Appended to what was written before: whatever it makes, no expectation.
        return;
    }
    match want {
        Some(want) => {
            assert_eq!(drain(m, true), want, "response to {req:x?}");
            assert!(idle(m), "not idle after a response");
            stats::count("response checked");
        }
        None => assert_eq!(m.read(d::STATUS), d::STATUS_ERROR, "{req:x?} accepted"),
    }
}

fuzz_target!(|input: Input| {
    let fallback = || Cdat::build(&CdatConfig::default(), CAPACITY, 0).expect("defaults build");
    let mut cdat = table(&input.table).unwrap_or_else(fallback);
    check_table(&cdat);
    let mut m = DoeMailbox::new(Arc::new(cdat.clone()));
    // Nothing written to the Write Data Mailbox since the last Go, Abort or reset.
    let mut clean = true;
    // No DW of the ready response (if any) read out yet.
    let mut whole = true;
    for op in input.ops.iter().take(512) {
        match op {
            Op::Write { reg, value, lanes } => {
                let mask = (0..4)
                    .filter(|i| lanes & (1 << i) != 0)
                    .fold(0u32, |m, i| m | 0xff << (8 * i));
                let off = reg.offset();
                m.write(off, *value, mask);
                match off {
                    d::WRITE_MAILBOX if mask != 0 => clean = false,
                    d::READ_MAILBOX => whole = false,
                    d::CONTROL if value & mask & (d::CTRL_ABORT | d::CTRL_GO) != 0 => {
                        (clean, whole) = (true, true);
                    }
                    _ => {}
                }
            }
            Op::Read(reg) => {
                let _ = m.read(reg.offset());
            }
            Op::Discover(index) => {
                let want = match index {
                    0 => Some(vec![0x0000_0001, 3, 0x0100_0001]),
                    1 => Some(vec![0x0000_0001, 3, 0x0002_1e98]),
                    _ => None,
                };
                request(&mut m, &[0x0000_0001, 3, u32::from(*index)], want, clean);
                (clean, whole) = (true, true);
            }
            Op::ReadEntry(handle) => {
                let want = cdat.entry(*handle).map(|(e, next)| {
                    let mut v = vec![0x0002_1e98, 3 + e.len() as u32 / 4, u32::from(next) << 16];
                    v.extend(
                        e.chunks_exact(4)
                            .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
                    );
                    v
                });
                request(
                    &mut m,
                    &[0x0002_1e98, 3, u32::from(*handle) << 16],
                    want,
                    clean,
                );
                (clean, whole) = (true, true);
            }
            Op::Drain => {
                drain(&mut m, whole);
            }
            Op::Reset => {
                (clean, whole) = (true, true);
                m.reset();
                assert!(idle(&m), "not idle after reset");
            }
            Op::Table(t) => {
                if let Some(c) = table(t) {
                    check_table(&c);
                    cdat = c;
                    m.set_cdat(Arc::new(cdat.clone()));
                }
            }
        }
        check_regs(&m);
    }
    stats::input_done();
});
