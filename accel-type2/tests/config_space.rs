//! Config space as the guest kernel sees it.

mod common;

use accel_type2::*;
use common::*;
use cxl_regs::layout;

#[test]
fn identity_and_header() {
    let (mut d, _) = device(small_config());
    assert_eq!(cfg_r16(&mut d, 0), 0x1234);
    assert_eq!(cfg_r16(&mut d, 2), 0xcc02);
    assert_eq!(
        cfg_r32(&mut d, 8) >> 8,
        0x12_0000,
        "class: processing accelerator"
    );
    assert_eq!(cfg_r8(&mut d, 0x0e), 0, "type-0 header, single function");
    assert_eq!(cfg_r16(&mut d, 6) & 0x10, 0x10, "capability list");
    assert_eq!(cfg_r8(&mut d, 0x3d), 1, "INTA");
    assert_eq!(cfg_r16(&mut d, 0x2c), 0x1234);
    // Reads beyond 4 KiB, and reads straddling its end, are zero-filled.
    assert_eq!(cfg_read(&mut d, 4094, 8), 0);
    assert_eq!(cfg_read(&mut d, u64::MAX - 3, 8), 0);
}

#[test]
fn extended_capability_walk_finds_dsn_and_cxl_dvsecs() {
    let cfg = AccelConfig {
        serial: 0xfeed_f00d_1234_5678,
        ..small_config()
    };
    let (mut d, _) = device(cfg);
    let mut pos = 0x100u64;
    let mut found = Vec::new();
    while pos != 0 {
        let hdr = cfg_r32(&mut d, pos);
        let id = hdr & 0xffff;
        if id == 0x3 {
            assert_eq!(cfg_r32(&mut d, pos + 4), 0x1234_5678);
            assert_eq!(cfg_r32(&mut d, pos + 8), 0xfeed_f00d);
            found.push(("dsn".to_string(), pos));
        } else if id == 0x23 {
            let h1 = cfg_r32(&mut d, pos + 4);
            assert_eq!(h1 & 0xffff, 0x1e98, "CXL vendor id");
            let len = u64::from(h1 >> 20);
            let next = u64::from(hdr >> 20);
            assert!(
                next == 0 || pos + len <= next,
                "DVSEC at {pos:#x} overlaps the next"
            );
            let dvsec_id = cfg_r16(&mut d, pos + 8);
            found.push((format!("dvsec{dvsec_id}"), pos));
        }
        let next = u64::from(hdr >> 20);
        assert!(next == 0 || next > pos, "list must move forward");
        pos = next;
    }
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["dsn", "dvsec0", "dvsec8", "dvsec7", "dvsec5"]);
    assert_eq!(find_dvsec(&mut d, 0), Some(found[1].1));
}

#[test]
fn standard_capability_list() {
    let (mut d, _) = device(small_config());
    let pm = find_cap(&mut d, 0x01).expect("PM");
    let exp = find_cap(&mut d, 0x10).expect("PCIe");
    let msix = find_cap(&mut d, 0x11).expect("MSI-X");
    assert!(find_cap(&mut d, 0x05).is_none(), "no MSI");
    // PCIe capability v2, endpoint, Flit Mode Supported.
    let flags = cfg_r16(&mut d, exp + 2);
    assert_eq!(flags & 0xf, 2);
    assert_eq!((flags >> 4) & 0xf, 0);
    assert_ne!(flags & 0x8000, 0);
    // FLR capable.
    assert_ne!(cfg_r32(&mut d, exp + 4) & (1 << 28), 0);
    // Link: 32 GT/s x16.
    assert_eq!(cfg_r16(&mut d, exp + 0x12) & 0x3ff, 5 | (16 << 4));
    // MSI-X: 4 vectors, table and PBA in BAR4.
    assert_eq!(cfg_r16(&mut d, msix + 2) & 0x7ff, layout::MSIX_VECTORS - 1);
    assert_eq!(cfg_r32(&mut d, msix + 4), layout::MSIX_TABLE_OFFSET | 4);
    assert_eq!(cfg_r32(&mut d, msix + 8), layout::MSIX_PBA_OFFSET | 4);
    assert_eq!(cfg_r16(&mut d, pm + 2) & 7, 3, "PM version 1.2");
}

fn regloc_entries(d: &mut AccelDevice) -> Vec<(u8, u8, u64)> {
    let rl = find_dvsec(d, 8).expect("register locator");
    let len = u64::from(cfg_r32(d, rl + 4) >> 20);
    let n = (len - 0xc) / 8;
    (0..n)
        .map(|i| {
            let lo = cfg_r32(d, rl + 0xc + 8 * i);
            let hi = cfg_r32(d, rl + 0x10 + 8 * i);
            cxl_regs::dvsec::register_locator::decode(lo, hi)
        })
        .collect()
}

#[test]
fn register_locator_with_mailbox() {
    let (mut d, _) = device(small_config());
    assert_eq!(regloc_entries(&mut d), vec![(0, 1, 0), (0, 3, 0x1_0000)]);
    // The memory-device block is there: capability array id 0, 3 capabilities.
    let arr = bar_r64(&mut d, 0, layout::DEVICE_BLOCK_OFFSET);
    assert_eq!(arr & 0xffff, 0);
    assert_eq!((arr >> 32) & 0xffff, 3);
}

#[test]
fn register_locator_without_mailbox() {
    let (mut d, _) = device(AccelConfig {
        mailbox: false,
        ..small_config()
    });
    assert_eq!(regloc_entries(&mut d), vec![(0, 1, 0)]);
    for off in [
        0,
        8,
        0x10,
        0x100,
        0x200,
        u64::from(layout::MAILBOX_CAP_OFFSET),
    ] {
        assert_eq!(bar_r64(&mut d, 0, layout::DEVICE_BLOCK_OFFSET + off), 0);
    }
    bar_w64(&mut d, 0, layout::MAILBOX_OFFSET + 8, 0x4000);
    assert_eq!(
        bar_r64(&mut d, 0, layout::MAILBOX_OFFSET + 8),
        0,
        "writes are ignored"
    );
    assert!(d.mailbox().is_none());
    assert_eq!(
        d.inject_poison(0, 64),
        Err(cxl_regs::mailbox::RC_UNSUPPORTED)
    );
}

#[test]
fn cxl_device_dvsec_fields() {
    let cfg = AccelConfig {
        memory_size: 0x1_3000_0000,
        hdm_count: 2,
        ..AccelConfig::default()
    };
    let clock = std::sync::Arc::new(FakeClock::default());
    // 4.75 GiB VecMemory is too big for a unit test: use a sized stand-in.
    struct Sized(u64);
    impl DeviceMemory for Sized {
        fn size(&self) -> u64 {
            self.0
        }
        fn read(&self, _: u64, b: &mut [u8]) -> Result<(), MemoryError> {
            b.fill(0);
            Ok(())
        }
        fn write(&mut self, _: u64, _: &[u8]) -> Result<(), MemoryError> {
            Ok(())
        }
    }
    let mut d = AccelDevice::new(
        cfg.clone(),
        Box::new(Sized(cfg.memory_size)),
        Box::new(MemLsa(vec![0; 1024])),
        Box::new(DefaultFirmware),
        clock,
    )
    .unwrap();
    let c = find_dvsec(&mut d, 0).unwrap();
    let cap = cfg_r16(&mut d, c + 0xa);
    assert_eq!(cap & 0b111, 0b111, "cache, IO and mem capable");
    assert_eq!((cap >> 4) & 3, 2, "HDM_Count");
    assert_eq!(cfg_r32(&mut d, c + 0x18), 1, "range 1 size high");
    let lo = cfg_r32(&mut d, c + 0x1c);
    assert_eq!(lo & 0xf000_0000, 0x3000_0000);
    assert_eq!(lo & 3, 3, "MEM_INFO_VALID and MEM_ACTIVE");
    assert_eq!(cfg_r32(&mut d, c + 0x28), 0, "range 2 is empty");
    assert_eq!(cfg_r32(&mut d, c + 0x2c) & 0xf000_0003, 3);
    // BAR2 is the size rounded up to a power of two.
    assert_eq!(d.bar2_size(), 0x2_0000_0000);
}

#[test]
fn dvsec_control_and_ranges_lock() {
    let (mut d, _) = device(small_config());
    let c = find_dvsec(&mut d, 0).unwrap();
    assert_eq!(cfg_r16(&mut d, c + 0xc), 0x2, "IO_Enable reads 1");
    cfg_w16(&mut d, c + 0xc, 0x4);
    assert_eq!(
        cfg_r16(&mut d, c + 0xc),
        0x6,
        "Mem_Enable is RW, IO_Enable RO"
    );
    assert!(d.status().mem_enable);
    cfg_w16(&mut d, c + 0xc, 0x8000);
    assert_eq!(cfg_r16(&mut d, c + 0xc), 0x2, "reserved bit 15 stays 0");
    cfg_w16(&mut d, c + 0xc, 0x4);
    cfg_w32(&mut d, c + 0x24, 0xffff_ffff);
    cfg_w32(&mut d, c + 0x20, 0x2);
    assert_eq!(
        cfg_r32(&mut d, c + 0x24),
        0xf000_0000,
        "base low keeps [31:28]"
    );
    assert_eq!(cfg_r32(&mut d, c + 0x20), 0x2);
    // CONFIG_LOCK: the RWL fields and the lock itself freeze.
    cfg_w16(&mut d, c + 0x14, 1);
    assert_eq!(cfg_r16(&mut d, c + 0x14), 1);
    cfg_w16(&mut d, c + 0xc, 0);
    cfg_w32(&mut d, c + 0x24, 0);
    cfg_w16(&mut d, c + 0x14, 0);
    assert_eq!(cfg_r16(&mut d, c + 0xc), 0x6);
    assert_eq!(cfg_r32(&mut d, c + 0x24), 0xf000_0000);
    assert_eq!(cfg_r16(&mut d, c + 0x14), 1, "lock is RWO");
    // Reset releases it.
    d.reset();
    assert_eq!(cfg_r16(&mut d, c + 0x14), 0);
    assert_eq!(cfg_r16(&mut d, c + 0xc), 0x2);
    cfg_w16(&mut d, c + 0xc, 0x4);
    assert_eq!(cfg_r16(&mut d, c + 0xc), 0x6);
}

/// XOR of the whole of config space between 256B and 68B mode.
fn flit_diff() -> Vec<(u64, u8)> {
    let (mut a, _) = device(AccelConfig {
        flit: FlitMode::Flit256,
        ..small_config()
    });
    let (mut b, _) = device(AccelConfig {
        flit: FlitMode::Flit68,
        ..small_config()
    });
    let mut x = vec![0u8; 4096];
    let mut y = vec![0u8; 4096];
    a.config_read(0, &mut x);
    b.config_read(0, &mut y);
    x.iter()
        .zip(&y)
        .enumerate()
        .filter(|(_, (p, q))| p != q)
        .map(|(i, (p, q))| (i as u64, p ^ q))
        .collect()
}

#[test]
fn flit_256b_mode_bits() {
    let (mut d, _) = device(AccelConfig {
        flit: FlitMode::Flit256,
        ..small_config()
    });
    let exp = find_cap(&mut d, 0x10).unwrap();
    assert_ne!(cfg_r16(&mut d, exp + 2) & 0x8000, 0, "Flit Mode Supported");
    assert_ne!(
        cfg_r16(&mut d, exp + 0x32) & 0x0400,
        0,
        "LNKSTA2 Flit Mode Status"
    );
    let fb = find_dvsec(&mut d, 7).unwrap();
    assert_eq!(
        cfg_r16(&mut d, fb + 0xa),
        0x27,
        "cap: cache, IO, mem, 68B-flit-and-VH capable"
    );
    assert_eq!(
        cfg_r16(&mut d, fb + 0xe),
        0x07,
        "status: cache, IO, mem; 68B/VH clear"
    );
    assert_eq!(
        cfg_r16(&mut d, fb + 0xe) & (1 << 13),
        0,
        "standard (not latency-optimised) 256B"
    );
}

#[test]
fn flit_68b_mode_bits() {
    let (mut d, _) = device(AccelConfig {
        flit: FlitMode::Flit68,
        ..small_config()
    });
    let exp = find_cap(&mut d, 0x10).unwrap();
    assert_ne!(
        cfg_r16(&mut d, exp + 2) & 0x8000,
        0,
        "Flit Mode Supported in both modes"
    );
    assert_eq!(
        cfg_r16(&mut d, exp + 0x32) & 0x0400,
        0,
        "LNKSTA2 Flit Mode Status clear"
    );
    let fb = find_dvsec(&mut d, 7).unwrap();
    assert_eq!(cfg_r16(&mut d, fb + 0xe), 0x27, "68B flit and VH enabled");
    assert_eq!(cfg_r16(&mut d, fb + 0xc), 0x27);
}

#[test]
fn flit_modes_differ_in_exactly_the_documented_bits() {
    let (mut d, _) = device(small_config());
    let exp = find_cap(&mut d, 0x10).unwrap();
    let fb = find_dvsec(&mut d, 7).unwrap();
    assert_eq!(
        flit_diff(),
        vec![
            (exp + 0x33, 0x04), // LNKSTA2 bit 10
            (fb + 0xc, 0x20),   // Flex Bus Control bit 5
            (fb + 0xe, 0x20),   // Flex Bus Status bit 5
        ]
    );
}

#[test]
fn bar_sizing() {
    let (mut d, _) = device(AccelConfig {
        memory_size: 768 * MIB,
        ..AccelConfig::default()
    });
    for n in 0..6u64 {
        cfg_w32(&mut d, 0x10 + 4 * n, 0xffff_ffff);
    }
    let bars: Vec<u32> = (0..6).map(|n| cfg_r32(&mut d, 0x10 + 4 * n)).collect();
    assert_eq!(
        bars[0], 0xfffe_0004,
        "BAR0: 128 KiB, 64-bit, non-prefetchable"
    );
    assert_eq!(bars[1], 0xffff_ffff);
    assert_eq!(
        bars[2], 0xc000_000c,
        "BAR2: 1 GiB (768 MiB rounded up), 64-bit prefetchable"
    );
    assert_eq!(bars[3], 0xffff_ffff);
    assert_eq!(bars[4], 0xffff_c004, "BAR4: 16 KiB, 64-bit");
    assert_eq!(bars[5], 0xffff_ffff);
    // Programming an address keeps only the bits above the size.
    cfg_w32(&mut d, 0x10, 0xfebc_1234);
    cfg_w32(&mut d, 0x14, 0x1);
    assert_eq!(cfg_r32(&mut d, 0x10), 0xfebc_0004);
    assert_eq!(cfg_r32(&mut d, 0x14), 1);
    // Sub-dword writes to a BAR merge.
    d.config_write(0x13, &[0x80]);
    assert_eq!(cfg_r32(&mut d, 0x10), 0x80bc_0004);
    // Expansion ROM is absent.
    cfg_w32(&mut d, 0x30, 0xffff_ffff);
    assert_eq!(cfg_r32(&mut d, 0x30), 0);
    let bar2 = d.bars().into_iter().find(|b| b.bar == 2).unwrap();
    assert_eq!(bar2.size, 1 << 30);
    assert_eq!(bar2.kind, BarKind::DeviceMemory { memory: 768 * MIB });
}

#[test]
fn command_status_and_read_only_fields() {
    let (mut d, _) = device(small_config());
    cfg_w16(&mut d, 4, 0xffff);
    assert_eq!(
        cfg_r16(&mut d, 4),
        0x0546,
        "only MSE, BME, PERR, SERR, INTx-disable are RW"
    );
    cfg_w16(&mut d, 6, 0xffff);
    assert_eq!(
        cfg_r16(&mut d, 6),
        0x0010,
        "Status: RW1C bits were clear, RO bits unchanged"
    );
    cfg_w32(&mut d, 0, 0);
    assert_eq!(cfg_r32(&mut d, 0), 0xcc02_1234, "IDs are RO");
    cfg_w32(&mut d, 8, 0);
    assert_eq!(cfg_r32(&mut d, 8) >> 8, 0x12_0000);
    cfg_w32(&mut d, 0x28, 0xffff_ffff);
    assert_eq!(cfg_r32(&mut d, 0x28), 0, "CardBus CIS pointer reserved");
    cfg_w32(&mut d, 0x34, 0xff);
    assert_eq!(cfg_r8(&mut d, 0x34), 0x40);
    d.config_write(0x3c, &[0x0b, 0x03]);
    assert_eq!(cfg_r16(&mut d, 0x3c), 0x010b, "line RW, pin RO");
    // Extended capability headers and DVSEC headers are RO.
    cfg_w32(&mut d, 0x100, 0);
    assert_ne!(cfg_r32(&mut d, 0x100), 0);
    // Unused extended space reads 0 and ignores writes.
    cfg_w32(&mut d, 0x800, 0xdead_beef);
    assert_eq!(cfg_r32(&mut d, 0x800), 0);
}

#[test]
fn pcie_device_status_is_rw1c() {
    let (mut d, _) = device(small_config());
    let exp = find_cap(&mut d, 0x10).unwrap();
    d.inject_ras(false, 1);
    d.inject_ras(true, 3);
    let sta = cfg_r16(&mut d, exp + 0xa);
    assert_eq!(sta & 0xf, 0b0011, "correctable and non-fatal detected");
    cfg_w16(&mut d, exp + 0xa, 0);
    assert_eq!(
        cfg_r16(&mut d, exp + 0xa) & 0xf,
        0b0011,
        "writing 0 keeps them"
    );
    cfg_w16(&mut d, exp + 0xa, 1);
    assert_eq!(
        cfg_r16(&mut d, exp + 0xa) & 0xf,
        0b0010,
        "writing 1 clears only that bit"
    );
    // Device Control: RW fields, Phantom and Aux PM RO, FLR reads 0.
    cfg_w16(&mut d, exp + 8, 0x7fff);
    assert_eq!(cfg_r16(&mut d, exp + 8), 0x79ff);
    // Link Status 2 equalization-request bit is RW1C, the rest RO.
    let before = cfg_r16(&mut d, exp + 0x32);
    cfg_w16(&mut d, exp + 0x32, 0xffff);
    assert_eq!(cfg_r16(&mut d, exp + 0x32), before);
}

#[test]
fn power_state_ignores_unsupported_states() {
    let (mut d, _) = device(small_config());
    let pm = find_cap(&mut d, 0x01).unwrap();
    assert_eq!(cfg_r16(&mut d, pm + 4), 0x0008, "D0, No_Soft_Reset");
    cfg_w16(&mut d, pm + 4, 1);
    assert_eq!(
        cfg_r16(&mut d, pm + 4) & 3,
        0,
        "D1 is not supported: write discarded"
    );
    cfg_w16(&mut d, pm + 4, 3);
    assert_eq!(cfg_r16(&mut d, pm + 4) & 3, 3, "D3hot");
    cfg_w16(&mut d, pm + 4, 2);
    assert_eq!(
        cfg_r16(&mut d, pm + 4) & 3,
        3,
        "D2 is not supported: stays D3hot"
    );
    cfg_w16(&mut d, pm + 4, 0);
    assert_eq!(cfg_r16(&mut d, pm + 4) & 3, 0);
}

#[test]
fn flr_resets_the_function() {
    let (mut d, _) = device(small_config());
    let exp = find_cap(&mut d, 0x10).unwrap();
    enable_bus_master(&mut d);
    bar_w32(&mut d, 4, layout::engine::CONTROL, 2);
    assert_ne!(cfg_r16(&mut d, 4), 0);
    cfg_w16(&mut d, exp + 8, 0x8000 | 0x2810);
    assert_eq!(cfg_r16(&mut d, 4), 0, "Command cleared by FLR");
    assert_eq!(
        cfg_r16(&mut d, exp + 8),
        0x2810,
        "FLR bit reads 0, defaults restored"
    );
    assert_eq!(bar_r32(&mut d, 4, layout::engine::CONTROL), 0);
}

#[test]
fn msix_function_mask_holds_vectors_in_the_pba() {
    let (mut d, _) = device(small_config());
    let guest = TestGuest::new(0x10_0000, 4096);
    let msix = find_cap(&mut d, 0x11).unwrap();
    enable_bus_master(&mut d);
    cfg_w16(&mut d, msix + 2, 0xc000);
    assert_eq!(
        cfg_r16(&mut d, msix + 2),
        0xc000 | (layout::MSIX_VECTORS - 1)
    );
    use layout::engine::*;
    bar_w64(&mut d, 4, SRC, 0x10_0000);
    bar_w64(&mut d, 4, DST, 0);
    bar_w64(&mut d, 4, LEN, 64);
    bar_w32(&mut d, 4, CONTROL, CONTROL_IRQ_ENABLE);
    d.bar_write(4, DOORBELL, &1u32.to_le_bytes(), &guest);
    assert!(d.take_interrupts().is_empty(), "function masked");
    assert_eq!(
        bar_r32(&mut d, 4, u64::from(layout::MSIX_PBA_OFFSET)),
        1 << layout::MSIX_VEC_DMA
    );
    cfg_w16(&mut d, msix + 2, 0x8000);
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_DMA)]
    );
    assert_eq!(bar_r32(&mut d, 4, u64::from(layout::MSIX_PBA_OFFSET)), 0);
}

#[test]
fn bar_and_interrupt_descriptions() {
    let (d, _) = device(small_config());
    let bars: Vec<(u8, u64, bool, BarKind)> = d
        .bars()
        .iter()
        .map(|b| (b.bar, b.size, b.prefetchable, b.kind))
        .collect();
    assert_eq!(
        bars,
        vec![
            (0, 0x2_0000, false, BarKind::Registers),
            (
                2,
                256 * MIB,
                true,
                BarKind::DeviceMemory { memory: 256 * MIB }
            ),
            (4, 0x4000, false, BarKind::Registers),
        ]
    );
    // Each described BAR is the one config space sizes (PCIe r6 §7.5.1.2.1: writing
    // all ones reads back the size mask; 64-bit memory, prefetchable for BAR2).
    let (mut d, _) = device(small_config());
    for (bar, size, pref, _) in bars {
        let off = 0x10 + 4 * u64::from(bar);
        cfg_w32(&mut d, off, 0xffff_ffff);
        cfg_w32(&mut d, off + 4, 0xffff_ffff);
        let lo = cfg_r32(&mut d, off);
        let hi = cfg_r32(&mut d, off + 4);
        let mask = (u64::from(hi) << 32) | u64::from(lo & !0xf);
        assert_eq!(!mask + 1, size, "BAR{bar} size");
        assert_eq!(lo & 0x8 != 0, pref, "BAR{bar} prefetchable");
        assert_eq!(lo & 0x6, 0x4, "BAR{bar} is 64-bit memory");
    }
    let irq = d.interrupt_sources();
    assert_eq!(irq.msix_vectors, 4);
    assert!(irq.intx);
}

#[test]
fn construction_errors() {
    let clock = std::sync::Arc::new(FakeClock::default());
    let mk = |cfg: AccelConfig, mem: usize| {
        AccelDevice::new(
            cfg,
            Box::new(VecMemory::new(mem)),
            Box::new(MemLsa(vec![0; 16])),
            Box::new(DefaultFirmware),
            clock.clone(),
        )
    };
    assert!(matches!(
        mk(
            AccelConfig {
                memory_size: 100 * MIB,
                ..small_config()
            },
            0
        ),
        Err(AccelError::BadMemorySize(_))
    ));
    assert!(matches!(
        mk(
            AccelConfig {
                decoders: 3,
                ..small_config()
            },
            256 << 20
        ),
        Err(AccelError::BadDecoderCount(3))
    ));
    assert!(matches!(
        mk(
            AccelConfig {
                hdm_count: 3,
                ..small_config()
            },
            256 << 20
        ),
        Err(AccelError::BadHdmCount(3))
    ));
    assert!(matches!(
        mk(small_config(), 4096),
        Err(AccelError::MemorySizeMismatch { .. })
    ));
}
