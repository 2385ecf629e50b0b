//! The DOE capability as a guest reaches it: through config space, at any access
//! width, across FLR and reset, serving the device's CDAT.
//!
//! Offsets and bits are written out from PCIe r6 §7.9.24 (DOE registers), §6.30.1
//! (data objects), CXL r3.1 §8.1.11 (Table Access) and CDAT r1.03, not taken from
//! the crates under test.

mod common;

use accel_type2::*;
use common::*;

const DOE_ID: u32 = 0x2e;
const CTRL: u64 = 0x08;
const STATUS: u64 = 0x0c;
const WRITE: u64 = 0x10;
const READ: u64 = 0x14;
const GO: u32 = 0x8000_0000;
const ABORT: u32 = 1;
const BUSY: u32 = 1;
const ERROR: u32 = 4;
const READY: u32 = 0x8000_0000;

/// Walk the extended capability list for the DOE capability (as
/// `pci_find_next_ext_capability` does), checking its version on the way.
fn find_doe(d: &mut AccelDevice) -> u64 {
    let mut pos = 0x100u64;
    for _ in 0..64 {
        let hdr = cfg_r32(d, pos);
        if hdr & 0xffff == DOE_ID {
            assert_eq!((hdr >> 16) & 0xf, 1, "capability version");
            return pos;
        }
        pos = u64::from(hdr >> 20);
        assert!(pos >= 0x100, "no DOE capability in the list");
    }
    panic!("extended capability list loops");
}

/// One exchange through config space with dword accesses; the response.
fn exchange(d: &mut AccelDevice, doe: u64, req: &[u32]) -> Vec<u32> {
    assert_eq!(cfg_r32(d, doe + STATUS) & BUSY, 0, "busy before a request");
    for &dw in req {
        cfg_w32(d, doe + WRITE, dw);
    }
    cfg_w32(d, doe + CTRL, GO);
    read_response(d, doe)
}

fn read_response(d: &mut AccelDevice, doe: u64) -> Vec<u32> {
    let mut out = Vec::new();
    while cfg_r32(d, doe + STATUS) & READY != 0 {
        assert!(out.len() < 4096, "response never ends");
        out.push(cfg_r32(d, doe + READ));
        cfg_w32(d, doe + READ, 0);
    }
    out
}

/// The whole CDAT, entry by entry, as the kernel's `read_cdat_data` reads it.
fn read_cdat(d: &mut AccelDevice, doe: u64) -> Vec<u8> {
    let mut table = Vec::new();
    let mut handle = 0u32;
    for _ in 0..64 {
        let r = exchange(d, doe, &[0x0002_1e98, 3, handle << 16]);
        assert!(r.len() >= 3, "{r:x?}");
        for dw in &r[3..] {
            table.extend_from_slice(&dw.to_le_bytes());
        }
        handle = r[2] >> 16;
        if handle == 0xffff {
            return table;
        }
    }
    panic!("CDAT walk did not end");
}

#[test]
fn doe_is_the_last_extended_capability_and_idle_at_power_on() {
    let (mut d, _) = device(small_config());
    let doe = find_doe(&mut d);
    assert_eq!(cfg_r32(&mut d, doe) >> 20, 0, "last in the list");
    // Capabilities: no interrupt support. Control and Status: all clear.
    for reg in [0x04, CTRL, STATUS, WRITE, READ] {
        assert_eq!(cfg_r32(&mut d, doe + reg), 0, "register {reg:#x}");
    }
}

#[test]
fn discovery_through_config_space() {
    let (mut d, _) = device(small_config());
    let doe = find_doe(&mut d);
    let mut found = Vec::new();
    let mut index = 0u32;
    loop {
        let r = exchange(&mut d, doe, &[0x0000_0001, 3, index]);
        assert_eq!(&r[..2], [1, 3]);
        found.push((r[2] & 0xffff, (r[2] >> 16) & 0xff));
        index = r[2] >> 24;
        if index == 0 {
            break;
        }
    }
    assert_eq!(found, [(0x0001, 0), (0x1e98, 2)]);
}

#[test]
fn the_cdat_read_over_doe_is_the_devices_table() {
    let cfg = AccelConfig {
        memory_size: 768 * MIB,
        cdat: CdatSource::Built(CdatConfig {
            read_latency_ns: 95,
            write_latency_ns: 105,
            read_bandwidth_mbs: 20_000,
            write_bandwidth_mbs: 10_000,
            memory_type: EfiMemoryType::Conventional,
        }),
        ..AccelConfig::default()
    };
    let (mut d, _) = device(cfg);
    let doe = find_doe(&mut d);
    let t = read_cdat(&mut d, doe);
    assert_eq!(t, d.cdat().bytes());
    assert_eq!(
        u32::from_le_bytes(t[0..4].try_into().unwrap()) as usize,
        t.len()
    );
    assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    // The DSMAS covers the 768 MiB of device memory.
    assert_eq!(t[16], 0);
    assert_eq!(u64::from_le_bytes(t[32..40].try_into().unwrap()), 768 * MIB);
    // The DSEMTS says EfiConventionalMemory.
    assert_eq!((t[136], t[141]), (4, 0));
}

/// The same exchange, written with byte, word and qword accesses and read back
/// with byte and word reads, gives the same response.
#[test]
fn an_object_split_across_accesses_of_every_width() {
    let (mut d, _) = device(small_config());
    let doe = find_doe(&mut d);
    let want = exchange(&mut d, doe, &[0x0002_1e98, 3, 1 << 16]);

    let req: [u32; 3] = [0x0002_1e98, 3, 1 << 16];
    // DW 0 as four bytes, DW 1 as two words, DW 2 as one dword.
    for (i, b) in req[0].to_le_bytes().iter().enumerate() {
        d.config_write(doe + WRITE + i as u64, &[*b]);
    }
    d.config_write(doe + WRITE, &(req[1] as u16).to_le_bytes());
    d.config_write(doe + WRITE + 2, &((req[1] >> 16) as u16).to_le_bytes());
    cfg_w32(&mut d, doe + WRITE, req[2]);
    // Go as a byte write of the Control register's top byte.
    d.config_write(doe + CTRL + 3, &[0x80]);
    assert_eq!(cfg_r32(&mut d, doe + STATUS), BUSY | READY);
    let mut got = Vec::new();
    while cfg_r32(&mut d, doe + STATUS) & READY != 0 {
        let lo = cfg_r16(&mut d, doe + READ);
        let hi = cfg_r16(&mut d, doe + READ + 2);
        let b3 = cfg_r8(&mut d, doe + READ + 3);
        assert_eq!(b3, (hi >> 8) as u8);
        got.push(u32::from(lo) | u32::from(hi) << 16);
        // Move on with a one-byte write.
        d.config_write(doe + READ + 1, &[0]);
        assert!(got.len() <= want.len());
    }
    assert_eq!(got, want);

    // A qword write at the Write Data Mailbox covers it and the Read Data Mailbox:
    // the first dword is transferred, the second moves a response that is not
    // there (nothing).
    for dw in &req[..2] {
        cfg_w32(&mut d, doe + WRITE, *dw);
    }
    d.config_write(doe + WRITE, &u64::from(req[2]).to_le_bytes());
    cfg_w32(&mut d, doe + CTRL, GO);
    assert_eq!(read_response(&mut d, doe), want);
}

#[test]
fn flr_in_mid_exchange_returns_the_mailbox_to_idle() {
    let (mut d, _) = device(small_config());
    let doe = find_doe(&mut d);
    let exp = find_cap(&mut d, 0x10).unwrap();
    for (what, setup) in [
        ("response outstanding", 0),
        ("request half written", 1),
        ("error set", 2),
    ] {
        match setup {
            0 => {
                for dw in [0x0002_1e98, 3, 0] {
                    cfg_w32(&mut d, doe + WRITE, dw);
                }
                cfg_w32(&mut d, doe + CTRL, GO);
                cfg_w32(&mut d, doe + READ, 0);
                assert_eq!(cfg_r32(&mut d, doe + STATUS), BUSY | READY, "{what}");
            }
            1 => cfg_w32(&mut d, doe + WRITE, 0x0000_0001),
            _ => {
                cfg_w32(&mut d, doe + CTRL, GO);
                assert_eq!(cfg_r32(&mut d, doe + STATUS), ERROR, "{what}");
            }
        }
        // Device Control (PCIe cap + 8) bit 15: Initiate Function Level Reset.
        let devctl = cfg_r16(&mut d, exp + 8);
        cfg_w16(&mut d, exp + 8, devctl | 0x8000);
        assert_eq!(cfg_r32(&mut d, doe + STATUS), 0, "{what}");
        assert_eq!(cfg_r32(&mut d, doe + READ), 0, "{what}");
        assert_eq!(
            exchange(&mut d, doe, &[1, 3, 0]),
            [1, 3, 0x0100_0001],
            "{what}"
        );
    }
}

#[test]
fn device_reset_returns_the_mailbox_to_idle() {
    let (mut d, _) = device(small_config());
    let doe = find_doe(&mut d);
    for dw in [1, 3, 0] {
        cfg_w32(&mut d, doe + WRITE, dw);
    }
    cfg_w32(&mut d, doe + CTRL, GO);
    d.reset();
    assert_eq!(cfg_r32(&mut d, doe + STATUS), 0);
    // A request written before the reset is gone too.
    cfg_w32(&mut d, doe + WRITE, 1);
    d.reset();
    assert_eq!(exchange(&mut d, doe, &[1, 3, 1]), [1, 3, 0x0002_1e98]);
}

#[test]
fn abort_clears_error_through_config_space() {
    let (mut d, _) = device(small_config());
    let doe = find_doe(&mut d);
    for dw in [0x0000_0042, 3, 0] {
        cfg_w32(&mut d, doe + WRITE, dw);
    }
    cfg_w32(&mut d, doe + CTRL, GO);
    assert_eq!(cfg_r32(&mut d, doe + STATUS), ERROR);
    // Abort as a byte write of bit 0.
    d.config_write(doe + CTRL, &[ABORT as u8]);
    assert_eq!(cfg_r32(&mut d, doe + STATUS), 0);
}

#[test]
fn a_replaced_cdat_has_the_next_sequence_and_survives_reset() {
    let (mut d, _) = device(small_config());
    let doe = find_doe(&mut d);
    let before = read_cdat(&mut d, doe);
    let seq = |t: &[u8]| u32::from_le_bytes(t[12..16].try_into().unwrap());
    let perf = CdatConfig {
        read_latency_ns: 300,
        ..CdatConfig::default()
    };
    assert_eq!(
        d.replace_cdat(CdatSource::Built(perf)),
        Ok(seq(&before) + 1)
    );
    let after = read_cdat(&mut d, doe);
    assert_eq!(seq(&after), seq(&before) + 1);
    assert_ne!(after, before);
    assert_eq!(after.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    d.reset();
    assert_eq!(read_cdat(&mut d, doe), after);
    // A bad replacement is refused and the table stays.
    let bad = CdatConfig {
        read_latency_ns: 0,
        ..CdatConfig::default()
    };
    assert!(d.replace_cdat(CdatSource::Built(bad)).is_err());
    assert_eq!(read_cdat(&mut d, doe), after);
}

#[test]
fn a_vendor_cdat_is_served_as_is_and_a_bad_one_refused() {
    // A vendor table: the built one with another sequence and checksum.
    let mut t = Cdat::build(&CdatConfig::default(), 256 * MIB, 0)
        .unwrap()
        .bytes()
        .to_vec();
    t[12..16].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    t[5] = 0;
    let sum = t.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    t[5] = 0u8.wrapping_sub(sum);
    let cfg = AccelConfig {
        cdat: CdatSource::Vendor(t.clone()),
        ..small_config()
    };
    let (mut d, _) = device(cfg.clone());
    let doe = find_doe(&mut d);
    assert_eq!(read_cdat(&mut d, doe), t);

    // Twice the capacity in the DSMAS: refused at construction.
    let big = AccelConfig {
        memory_size: 256 * MIB,
        cdat: CdatSource::Vendor(
            Cdat::build(&CdatConfig::default(), 512 * MIB, 0)
                .unwrap()
                .bytes()
                .to_vec(),
        ),
        ..AccelConfig::default()
    };
    let err = AccelDevice::new(
        big,
        Box::new(VecMemory::new(256 << 20)),
        Box::new(MemLsa(vec![0; 64 << 10])),
        Box::new(DefaultFirmware),
        std::sync::Arc::new(FakeClock::default()),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        AccelError::Cdat(CdatError::DsmasOutsideCapacity { .. })
    ));
}
