//! The device's life across clients and resets, on the real daemon: what a new
//! connection sees after the DEVICE_RESET that QEMU sends when it connects, and a
//! CXL Reset with Mem Clr on a memory file.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::*;
use cxl_regs::layout;

const MIB: u64 = 1 << 20;

/// Offsets from the specifications: the PCIe DVSEC for CXL Devices (CXL r3.1
/// §8.1.3) is DVSEC id 0; Control2 at +0x10, Status2 at +0x12, Lock at +0x14,
/// Range 1 Base Low at +0x24.
const CXL_DEVICE_DVSEC: u16 = 0;
const CTRL2: u64 = 0x10;
const STATUS2: u64 = 0x12;
const LOCK: u64 = 0x14;
const RANGE1_BASE_LO: u64 = 0x24;
/// HDM decoder n (CXL r3.1 §8.2.4.20.5-.7): Base Low/High, Size Low/High,
/// Control at 0x10/0x14/0x18/0x1C/0x20 + 0x20 * n; Commit bit 9, Lock On Commit 8.
const COMMIT: u32 = 1 << 9;
const LOCK_ON_COMMIT: u32 = 1 << 8;

/// A daemon with 512 MiB of device memory in a file, the LSA in a file, and the
/// `bios` firmware's decoder 0 over the first 256 MiB at HPA 0x1_1000_0000.
fn start(dir: std::sync::Arc<tempfile::TempDir>) -> Backend {
    let mem = dir.path().join("devmem.img");
    let lsa = dir.path().join("lsa.img");
    Backend::start_in(
        dir.clone(),
        &[
            "--memory-size",
            "512M",
            "--memory-file",
            mem.to_str().unwrap(),
            "--lsa-file",
            lsa.to_str().unwrap(),
            "--firmware",
            "bios",
            "--firmware-param",
            "base=0x110000000",
            "--firmware-param",
            "size=256M",
        ],
    )
}

/// Every register a guest can read: config space, all of BAR0 and all of BAR4.
fn register_dump(c: &mut vfio_user::Client) -> Vec<(&'static str, Vec<u8>)> {
    let mut bar = |region, size: u64| {
        let mut v = vec![0u8; size as usize];
        for (i, chunk) in v.chunks_mut(4096).enumerate() {
            c.region_read(region, (i * 4096) as u64, chunk).unwrap();
        }
        v
    };
    let bar0 = bar(BAR0, layout::BAR0_SIZE);
    let bar4 = bar(BAR4, layout::BAR4_SIZE);
    vec![("config", config_space(c)), ("BAR0", bar0), ("BAR4", bar4)]
}

/// The dwords where two dumps differ, at most 12.
fn differences(a: &[(&str, Vec<u8>)], b: &[(&str, Vec<u8>)]) -> Vec<String> {
    let mut out = Vec::new();
    for ((name, x), (_, y)) in a.iter().zip(b) {
        for (i, (p, q)) in x.chunks(4).zip(y.chunks(4)).enumerate() {
            if p != q {
                out.push(format!("{name}+{:#x}: {p:02x?} vs {q:02x?}", i * 4));
            }
        }
    }
    out.truncate(12);
    out
}

fn decoder_reg(n: u32, reg: u64) -> u64 {
    layout::HDM_OFFSET + 0x10 + 0x20 * u64::from(n) + reg
}

#[test]
fn a_new_client_after_device_reset_sees_power_on_registers_with_memory_and_lsa_kept() {
    let reference = start(std::sync::Arc::new(test_dir()));
    let power_on = register_dump(&mut reference.client());

    let b = start(std::sync::Arc::new(test_dir()));
    let data = pattern(5, 4096);
    {
        // The first guest: a driver's worth of state, memory and a label.
        let mut c = b.client();
        let cfg = config_space(&mut c);
        let dvsec = find_dvsec(&cfg, CXL_DEVICE_DVSEC).expect("CXL Device DVSEC") as u64;
        enable_msix(&mut c);
        write64(
            &mut c,
            BAR4,
            layout::ENGINE_OFFSET + layout::engine::SRC,
            0x1234_5000,
        );
        // Decoder 1 above the firmware's decoder 0, locked.
        write32(&mut c, BAR0, decoder_reg(1, 0x0), 0x2000_0000);
        write32(&mut c, BAR0, decoder_reg(1, 0x4), 0x1);
        write32(&mut c, BAR0, decoder_reg(1, 0x8), 0x1000_0000);
        write32(&mut c, BAR0, decoder_reg(1, 0xc), 0);
        write32(&mut c, BAR0, decoder_reg(1, 0x10), COMMIT | LOCK_ON_COMMIT);
        let ctrl = read32(&mut c, BAR0, decoder_reg(1, 0x10));
        assert_ne!(ctrl & (1 << 10), 0, "decoder 1 committed: {ctrl:#x}");
        // DVSEC: Disable Caching, a changed range base, then CONFIG_LOCK.
        write16(&mut c, CONFIG, dvsec + CTRL2, 0x1);
        write32(&mut c, CONFIG, dvsec + RANGE1_BASE_LO, 0x7000_0000);
        write16(&mut c, CONFIG, dvsec + LOCK, 0x1);
        c.region_write(BAR2, 300 * MIB, &data).unwrap();
        set_lsa(&mut c, 0x200, b"kept across guests");
        let dirty = register_dump(&mut c);
        assert!(
            differences(&dirty, &power_on).len() >= 8,
            "the first guest changed the registers"
        );
    }
    // The next guest: QEMU resets the device when it connects.
    let mut c = b.client();
    c.reset().unwrap();
    let now = register_dump(&mut c);
    let diff = differences(&now, &power_on);
    assert!(
        diff.is_empty(),
        "registers after DEVICE_RESET differ from a fresh daemon's:\n{}",
        diff.join("\n")
    );
    let mut got = vec![0u8; data.len()];
    c.region_read(BAR2, 300 * MIB, &mut got).unwrap();
    assert_eq!(got, data, "device memory");
    assert_eq!(get_lsa(&mut c, 0x200, 18), b"kept across guests");
}

#[test]
fn cxl_reset_mem_clr_punches_the_memory_file_and_completes_within_the_timeout() {
    let dir = std::sync::Arc::new(test_dir());
    let mem = dir.path().join("devmem.img");
    let lsa = dir.path().join("lsa.img");
    let b = Backend::start_in(dir.clone(), &file_backed_args(&mem, &lsa));
    let mut c = b.client();
    let cfg = config_space(&mut c);
    let dvsec = find_dvsec(&cfg, CXL_DEVICE_DVSEC).expect("CXL Device DVSEC") as u64;
    // Capability (+0x0A, CXL r3.1 §8.1.3.1): CXL Reset Capable (bit 7), Mem Clr
    // Capable (bit 11), Timeout 001b = 100 ms (10:8).
    assert_eq!(le16(&cfg, dvsec as usize + 0x0a) & 0x0f80, 0x0980);
    let hdm_cap = read32(&mut c, BAR0, layout::HDM_OFFSET);
    let map = map_region(&c, BAR2, 0, (64 * MIB) as usize);
    for off in (0..64 * MIB).step_by(4096) {
        map.write(off as usize, &[0xa5; 8]);
    }
    let used = std::fs::metadata(&mem).unwrap().blocks() * 512;
    assert!(used >= 64 * MIB, "{used} bytes allocated after the writes");
    // CXL Reset Mem Clr Enable (bit 3) and Initiate CXL Reset (bit 2) together.
    write16(&mut c, CONFIG, dvsec + CTRL2, 0x8 | 0x4);
    let start = Instant::now();
    let status2 = loop {
        let s = read16(&mut c, CONFIG, dvsec + STATUS2);
        if s & 0x6 != 0 || start.elapsed() > Duration::from_secs(5) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let took = start.elapsed();
    assert_eq!(status2 & 0x6, 0x2, "CXL Reset Complete, not Error");
    // The device advertises 100 ms; a loaded host may take longer to poll.
    assert!(took < Duration::from_secs(1), "took {took:?}");
    eprintln!("CXL Reset with Mem Clr reported Complete after {took:?}");
    let used = std::fs::metadata(&mem).unwrap().blocks() * 512;
    assert!(
        used < MIB,
        "{used} bytes still allocated: Mem Clr must punch holes"
    );
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 256 * MIB);
    assert_eq!(map.read((63 * MIB) as usize, 8), [0; 8]);
    assert_eq!(
        read32(&mut c, BAR0, layout::HDM_OFFSET),
        hdm_cap,
        "BAR0 answers again"
    );
}
