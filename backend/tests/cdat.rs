//! The CDAT as QEMU's guest reads it: the real daemon, driven over its vfio-user
//! socket with config-space REGION_READ/REGION_WRITE only, through the DOE mailbox;
//! and the daemon refusing a bad `--cdat` file at startup.
//!
//! Register offsets and object layouts are written out from PCIe r6 §7.9.24 and
//! §6.30.1, CXL r3.1 §8.1.11 and CDAT r1.03; expected values come from the options
//! the test passes, through the kernel's own arithmetic (drivers/cxl/core/cdat.c,
//! `cdat_normalize`), not from the backend's code.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::path::Path;

use common::*;
use vfio_user::Client;

const DOE_ID: u16 = 0x2e;
const CTRL: u64 = 0x08;
const STATUS: u64 = 0x0c;
const WRITE: u64 = 0x10;
const READ: u64 = 0x14;
const READY: u32 = 0x8000_0000;
const MIB: u64 = 1 << 20;

fn find_doe(c: &mut Client) -> u64 {
    let cfg = config_space(c);
    let doe = ext_caps(&cfg)
        .into_iter()
        .find(|&(_, id, tag)| id == DOE_ID && tag == 0xffff)
        .map(|(p, _, _)| p as u64)
        .expect("no DOE extended capability");
    assert_eq!(read32(c, CONFIG, doe + STATUS), 0, "DOE idle on connect");
    doe
}

fn exchange(c: &mut Client, doe: u64, req: &[u32]) -> Vec<u32> {
    for &dw in req {
        write32(c, CONFIG, doe + WRITE, dw);
    }
    write32(c, CONFIG, doe + CTRL, 0x8000_0000);
    let mut out = Vec::new();
    while read32(c, CONFIG, doe + STATUS) & READY != 0 {
        assert!(out.len() < 4096, "response never ends");
        out.push(read32(c, CONFIG, doe + READ));
        write32(c, CONFIG, doe + READ, 0);
    }
    assert_eq!(
        read32(c, CONFIG, doe + STATUS),
        0,
        "error or busy after {req:x?}"
    );
    out
}

/// Every entry, from handle 0 until the response names 0xffff as the next.
fn read_cdat(c: &mut Client, doe: u64) -> Vec<u8> {
    let mut table = Vec::new();
    let mut handle = 0u32;
    for _ in 0..256 {
        let r = exchange(c, doe, &[0x0002_1e98, 3, handle << 16]);
        assert_eq!(r[0], 0x0002_1e98);
        assert_eq!(r[1] as usize, r.len());
        for dw in &r[3..] {
            table.extend_from_slice(&dw.to_le_bytes());
        }
        handle = r[2] >> 16;
        if handle == 0xffff {
            return table;
        }
    }
    panic!("the CDAT never ends");
}

/// (type, offset) of each structure after the 16-byte header.
fn structures(t: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut off = 16;
    while off < t.len() {
        out.push((t[off], off));
        off += le16(t, off + 2) as usize;
    }
    out
}

#[test]
fn the_whole_cdat_over_the_socket_matches_the_configuration() {
    let b = Backend::start(&[
        "--memory-size",
        "768M",
        "--cdat-read-latency",
        "130",
        "--cdat-write-latency",
        "170",
        "--cdat-read-bandwidth",
        "20000",
        "--cdat-write-bandwidth",
        "0x3a98",
        "--cdat-memory-type",
        "conventional",
    ]);
    let mut c = b.client();
    let doe = find_doe(&mut c);

    // Discovery lists Table Access.
    let r = exchange(&mut c, doe, &[1, 3, 1]);
    assert_eq!(r, [1, 3, 0x0002_1e98]);

    let t = read_cdat(&mut c, doe);
    assert_eq!(le32(&t, 0) as usize, t.len(), "header Length");
    assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0, "checksum");
    let kinds: Vec<u8> = structures(&t).iter().map(|s| s.0).collect();
    assert_eq!(kinds, [0, 1, 1, 1, 1, 4], "DSMAS, four DSLBIS, DSEMTS");
    for (kind, off) in structures(&t) {
        match kind {
            0 => {
                assert_eq!(t[off + 5], 0, "volatile, not shareable");
                assert_eq!((le64(&t, off + 8), le64(&t, off + 16)), (0, 768 * MIB));
            }
            1 => {
                let value = u64::from(le16(&t, off + 16)) * le64(&t, off + 8);
                let (data_type, want) = match t[off + 6] {
                    1 => ("read latency", 130),
                    2 => ("write latency", 170),
                    4 => ("read bandwidth", 20_000),
                    5 => ("write bandwidth", 15_000),
                    other => panic!("DSLBIS data type {other}"),
                };
                let got = if t[off + 6] <= 2 {
                    value.div_ceil(1000)
                } else {
                    value
                };
                assert_eq!(got, want, "{data_type}");
            }
            4 => {
                assert_eq!(t[off + 5], 0, "EfiConventionalMemory");
                assert_eq!(le64(&t, off + 16), 768 * MIB);
            }
            _ => unreachable!(),
        }
    }
    // The control socket names the same figures.
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["config"]["cdat"]["read_latency_ns"], 130, "{st}");
}

#[test]
fn a_vendor_cdat_is_served_byte_for_byte_across_a_reconnect() {
    let dir = std::sync::Arc::new(test_dir());
    let path = dir.path().join("vendor.cdat");
    let table = vendor_table(256 * MIB, 0x0bad_cafe);
    std::fs::write(&path, &table).unwrap();
    let b = Backend::start_in(
        dir.clone(),
        &["--memory-size", "256M", "--cdat", path.to_str().unwrap()],
    );
    let mut c = b.client();
    let doe = find_doe(&mut c);
    // Leave a response half read, then disconnect: the next client (after QEMU's
    // reset on connect) finds the mailbox idle and the same table.
    write32(&mut c, CONFIG, doe + WRITE, 0x0002_1e98);
    write32(&mut c, CONFIG, doe + WRITE, 3);
    write32(&mut c, CONFIG, doe + WRITE, 0);
    write32(&mut c, CONFIG, doe + CTRL, 0x8000_0000);
    write32(&mut c, CONFIG, doe + READ, 0);
    drop(c);
    let mut c = b.client();
    c.reset().unwrap();
    let doe = find_doe(&mut c);
    assert_eq!(read_cdat(&mut c, doe), table);
}

/// A table for `capacity` bytes in the layout a vendor tool would write: header,
/// one DSMAS, one DSLBIS (read latency 200 ns), checksum fixed up.
fn vendor_table(capacity: u64, sequence: u32) -> Vec<u8> {
    let mut t = vec![0u8; 16];
    t[4] = 1;
    t[12..16].copy_from_slice(&sequence.to_le_bytes());
    let mut dsmas = vec![0u8; 24];
    dsmas[0] = 0;
    dsmas[2] = 24;
    dsmas[4] = 7;
    dsmas[16..24].copy_from_slice(&capacity.to_le_bytes());
    t.extend_from_slice(&dsmas);
    let mut dslbis = vec![0u8; 24];
    dslbis[0] = 1;
    dslbis[2] = 24;
    dslbis[4] = 7;
    dslbis[6] = 1;
    dslbis[8..16].copy_from_slice(&1000u64.to_le_bytes());
    dslbis[16..18].copy_from_slice(&200u16.to_le_bytes());
    t.extend_from_slice(&dslbis);
    let n = t.len() as u32;
    t[0..4].copy_from_slice(&n.to_le_bytes());
    fix_checksum(&mut t);
    t
}

fn fix_checksum(t: &mut [u8]) {
    t[5] = 0;
    let sum: u32 = t.iter().map(|&b| u32::from(b)).sum();
    t[5] = ((256 - sum % 256) % 256) as u8;
}

/// Start the binary with `--cdat bad` and file-backed memory: it must exit 2 with
/// `needle` in its message, and leave no socket, control socket, memory file or
/// LSA file behind.
fn refused(dir: &Path, bad: &[u8], needle: &str) {
    let cdat = dir.join("bad.bin");
    std::fs::write(&cdat, bad).unwrap();
    let sock = dir.join("s.sock");
    let ctl = dir.join("c.sock");
    let mem = dir.join("mem.img");
    let lsa = dir.join("lsa.img");
    let mut args = vec![
        "--socket",
        sock.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
        "--cdat",
        cdat.to_str().unwrap(),
    ];
    args.extend(file_backed_args(&mem, &lsa));
    let (status, _, err) = run_cli(&args);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("bad.bin") && err.contains(needle), "{err}");
    for p in [&sock, &ctl, &mem, &lsa] {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn bad_cdat_files_are_refused_at_startup() {
    let dir = test_dir();
    let good = vendor_table(256 * MIB, 1);

    // Truncated: the last 8 bytes are missing.
    refused(
        dir.path(),
        &good[..good.len() - 8],
        "Length field says 64: a truncated file",
    );
    // Shorter than a header.
    refused(
        dir.path(),
        &good[..9],
        "shorter than the 16-byte CDAT header",
    );

    // A bad checksum: one byte off.
    let mut bad = good.clone();
    bad[5] = bad[5].wrapping_add(1);
    refused(dir.path(), &bad, "checksum");

    // A DSMAS past the 256 MiB of device memory.
    let big = vendor_table(512 * MIB, 1);
    refused(dir.path(), &big, "past the device's capacity");
    // Base + length overflowing also lands there.
    let mut wrap = vendor_table(256 * MIB, 1);
    wrap[16 + 8..16 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    fix_checksum(&mut wrap);
    refused(dir.path(), &wrap, "past the device's capacity");

    // The same good table is accepted (nothing else wrong with the command line).
    let cdat = dir.path().join("good.bin");
    std::fs::write(&cdat, &good).unwrap();
    let (status, out, err) = run_cli(&[
        "--socket",
        "/tmp/unused.sock",
        "--memory-size",
        "256M",
        "--cdat",
        cdat.to_str().unwrap(),
        "--print-qemu-args",
    ]);
    assert!(status.success(), "{err}");
    assert!(out.contains("vfio-user-pci"), "{out}");
}
