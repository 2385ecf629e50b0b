//! Resets: every class of device state against every kind of reset.
//!
//! The expected table is written here from the specifications (the section is on
//! each row), not from the model's own table. Each cell is checked on a fresh device:
//! dirty the state through the registers a guest uses, reset, read it back, and
//! compare with the dirtied value (kept) or with a power-on device's (reset).

mod common;

use std::sync::Arc;

use accel_type2::*;
use common::*;
use cxl_regs::layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Kept,
    Reset,
}
use Want::*;

/// Where the capabilities are in this device's config space.
struct Env {
    exp: u64,
    msix: u64,
    dvsec: u64,
}

fn env(d: &mut AccelDevice) -> Env {
    Env {
        exp: find_cap(d, 0x10).expect("PCIe capability"),
        msix: find_cap(d, 0x11).expect("MSI-X capability"),
        dvsec: find_dvsec(d, 0).expect("CXL Device DVSEC"),
    }
}

const KINDS: [ResetKind; 3] = [ResetKind::Conventional, ResetKind::Flr, ResetKind::CxlReset];

// Offsets from the specifications.
/// PCIe capability (PCIe r6 §7.5.3): Device Control, Device Control 2, Link
/// Control, Link Control 2.
const DEVCTL: u64 = 0x08;
const DEVCTL2: u64 = 0x28;
const LNKCTL: u64 = 0x10;
const LNKCTL2: u64 = 0x30;
/// PCIe DVSEC for CXL Devices (CXL r3.1 §8.1.3): Control, Control2, Status2, Lock,
/// Range 1 Base High/Low.
const CXL_CTRL: u64 = 0x0c;
const CXL_CTRL2: u64 = 0x10;
const CXL_STATUS2: u64 = 0x12;
const CXL_LOCK: u64 = 0x14;
const RANGE1_BASE_HI: u64 = 0x20;
const RANGE1_BASE_LO: u64 = 0x24;
/// CXL RAS capability (CXL r3.1 §8.2.4.17): Uncorrectable Error Mask, Correctable
/// Error Status.
const RAS_UE_MASK: u64 = 0x04;
const RAS_CE_STATUS: u64 = 0x0c;
/// HDM Decoder capability (CXL r3.1 §8.2.4.20): Global Control, decoder 0.
const HDM_GCTRL: u64 = 0x04;
const DEC0_BASE_LO: u64 = 0x10;
const DEC0_BASE_HI: u64 = 0x14;
const DEC0_SIZE_LO: u64 = 0x18;
const DEC0_SIZE_HI: u64 = 0x1c;
const DEC0_CTRL: u64 = 0x20;
/// Decoder Control: Lock On Commit bit 8, Commit bit 9.
const LOCK_ON_COMMIT: u32 = 1 << 8;
const COMMIT: u32 = 1 << 9;

/// Run a reset of `kind` as a guest would ask for it, to its end.
fn run_reset(d: &mut AccelDevice, clock: &FakeClock, e: &Env, kind: ResetKind) {
    match kind {
        ResetKind::Conventional => d.reset(),
        ResetKind::Flr => {
            // Initiate Function Level Reset, Device Control bit 15.
            let v = cfg_r16(d, e.exp + DEVCTL);
            cfg_w16(d, e.exp + DEVCTL, v | 0x8000);
        }
        ResetKind::CxlReset => {
            // Initiate CXL Reset, Control2 bit 2; wait up to the advertised 100 ms.
            let v = cfg_r16(d, e.dvsec + CXL_CTRL2);
            cfg_w16(d, e.dvsec + CXL_CTRL2, v | 0x4);
            clock.advance(100_000_000);
            let st = cfg_r16(d, e.dvsec + CXL_STATUS2);
            assert_eq!(st & 0x6, 0x2, "CXL Reset Complete within the timeout");
        }
    }
}

fn hdm(off: u64) -> u64 {
    layout::HDM_OFFSET + off
}

fn commit_decoder0(d: &mut AccelDevice, ctrl: u32) {
    bar_w32(d, 0, hdm(DEC0_BASE_LO), 0x1000_0000);
    bar_w32(d, 0, hdm(DEC0_BASE_HI), 0x1);
    bar_w32(d, 0, hdm(DEC0_SIZE_LO), 0x1000_0000);
    bar_w32(d, 0, hdm(DEC0_SIZE_HI), 0);
    bar_w32(d, 0, hdm(DEC0_CTRL), ctrl);
    assert_ne!(bar_r32(d, 0, hdm(DEC0_CTRL)) & (1 << 10), 0, "committed");
}

fn read_decoder0(d: &mut AccelDevice) -> Vec<u64> {
    [
        DEC0_BASE_LO,
        DEC0_BASE_HI,
        DEC0_SIZE_LO,
        DEC0_SIZE_HI,
        DEC0_CTRL,
    ]
    .iter()
    .map(|&o| u64::from(bar_r32(d, 0, hdm(o))))
    .collect()
}

fn set_dvsec_range(d: &mut AccelDevice, e: &Env) {
    cfg_w16(d, e.dvsec + CXL_CTRL, 0x4); // Mem_Enable
    cfg_w32(d, e.dvsec + RANGE1_BASE_HI, 0x1);
    cfg_w32(d, e.dvsec + RANGE1_BASE_LO, 0x1000_0000);
}

fn read_dvsec_range(d: &mut AccelDevice, e: &Env) -> Vec<u64> {
    vec![
        u64::from(cfg_r16(d, e.dvsec + CXL_CTRL)),
        u64::from(cfg_r32(d, e.dvsec + RANGE1_BASE_HI)),
        u64::from(cfg_r32(d, e.dvsec + RANGE1_BASE_LO)),
        u64::from(cfg_r16(d, e.dvsec + CXL_LOCK)),
    ]
}

fn read_memory(d: &mut AccelDevice) -> Vec<u64> {
    let mut b = [0u8; 64];
    d.bar_read(2, 0x1000, &mut b);
    b.chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn lsa(d: &mut AccelDevice) -> Vec<u64> {
    // Get LSA (CXL r3.1 §8.2.9.9.2.3): offset, length.
    let mut input = 0x40u32.to_le_bytes().to_vec();
    input.extend_from_slice(&8u32.to_le_bytes());
    let (rc, out) = mbox_cmd(d, 0x4102, &input);
    assert_eq!(rc, 0, "Get LSA");
    vec![u64::from_le_bytes(out[..8].try_into().unwrap())]
}

struct Row {
    what: &'static str,
    dirty: fn(&mut AccelDevice, &Env),
    read: fn(&mut AccelDevice, &Env) -> Vec<u64>,
    /// After a conventional reset, an FLR, a CXL Reset.
    want: [Want; 3],
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            // PCIe r6 §6.6.2: an FLR returns the function's registers to their
            // defaults; CXL r3.1 §9.7: a CXL Reset resets CXL.io with FLR scope.
            what: "Command, BAR0, Interrupt Line, MSI-X Message Control, Device Control 2",
            dirty: |d, e| {
                cfg_w16(d, 0x04, 0x0006);
                cfg_w32(d, 0x10, 0xfebc_0000);
                d.config_write(0x3c, &[0x0a]);
                cfg_w16(d, e.msix + 2, 0xc000);
                cfg_w16(d, e.exp + DEVCTL2, 0x0005);
            },
            read: |d, e| {
                vec![
                    u64::from(cfg_r16(d, 0x04)),
                    u64::from(cfg_r32(d, 0x10)),
                    u64::from(cfg_r8(d, 0x3c)),
                    u64::from(cfg_r16(d, e.msix + 2)),
                    u64::from(cfg_r16(d, e.exp + DEVCTL2)),
                ]
            },
            want: [Reset, Reset, Reset],
        },
        Row {
            // PCIe r6 §6.6.2: Max_Payload_Size, ASPM Control, Common Clock
            // Configuration and Hardware Autonomous Speed Disable are not modified
            // by FLR; nor by CXL Reset, whose CXL.io part is an FLR (§9.7).
            what: "Max_Payload_Size, Link Control ASPM/CCC, Link Control 2 HASD",
            dirty: |d, e| {
                let v = cfg_r16(d, e.exp + DEVCTL);
                cfg_w16(d, e.exp + DEVCTL, v | 0x0020);
                cfg_w16(d, e.exp + LNKCTL, 0x0043);
                let v = cfg_r16(d, e.exp + LNKCTL2);
                cfg_w16(d, e.exp + LNKCTL2, v | 0x0020);
            },
            read: |d, e| {
                vec![
                    u64::from(cfg_r16(d, e.exp + DEVCTL) & 0x00e0),
                    u64::from(cfg_r16(d, e.exp + LNKCTL)),
                    u64::from(cfg_r16(d, e.exp + LNKCTL2) & 0x0020),
                ]
            },
            want: [Reset, Kept, Kept],
        },
        Row {
            // PCIe r6 §7.5.3.19: Target Link Speed is RWS; sticky bits survive
            // hot reset and FLR (§7.4) and CXL Reset (CXL r3.1 Table 8-1).
            what: "Link Control 2 Target Link Speed (RWS)",
            dirty: |d, e| {
                let v = cfg_r16(d, e.exp + LNKCTL2);
                cfg_w16(d, e.exp + LNKCTL2, (v & !0xf) | 0x3);
            },
            read: |d, e| vec![u64::from(cfg_r16(d, e.exp + LNKCTL2) & 0xf)],
            want: [Kept, Kept, Kept],
        },
        Row {
            // CXL r3.1 §8.2.4.17: error status RW1CS, masks RWS.
            what: "RAS Correctable Error Status, Uncorrectable Error Mask (sticky)",
            dirty: |d, _| {
                d.inject_ras(false, 2);
                bar_w32(d, 0, layout::RAS_OFFSET + RAS_UE_MASK, 1 << 4);
            },
            read: |d, _| {
                vec![
                    u64::from(bar_r32(d, 0, layout::RAS_OFFSET + RAS_CE_STATUS)),
                    u64::from(bar_r32(d, 0, layout::RAS_OFFSET + RAS_UE_MASK)),
                ]
            },
            want: [Kept, Kept, Kept],
        },
        Row {
            // PCIe r6 §7.7.2: table entries return to address/data 0, masked.
            what: "MSI-X table entry 0",
            dirty: |d, _| {
                let t = u64::from(layout::MSIX_TABLE_OFFSET);
                bar_w32(d, 4, t, 0xfee0_0000);
                bar_w32(d, 4, t + 8, 0x41);
                bar_w32(d, 4, t + 12, 0);
            },
            read: |d, _| {
                let t = u64::from(layout::MSIX_TABLE_OFFSET);
                [0, 8, 12]
                    .iter()
                    .map(|o| u64::from(bar_r32(d, 4, t + o)))
                    .collect()
            },
            want: [Reset, Reset, Reset],
        },
        Row {
            // The engine is this function's own state (PCIe r6 §6.6.2).
            what: "DMA engine SRC and LEN",
            dirty: |d, _| {
                bar_w64(
                    d,
                    4,
                    layout::ENGINE_OFFSET + layout::engine::SRC,
                    0x1234_5000,
                );
                bar_w64(d, 4, layout::ENGINE_OFFSET + layout::engine::LEN, 0x1000);
            },
            read: |d, _| {
                vec![
                    bar_r64(d, 4, layout::ENGINE_OFFSET + layout::engine::SRC),
                    bar_r64(d, 4, layout::ENGINE_OFFSET + layout::engine::LEN),
                ]
            },
            want: [Reset, Reset, Reset],
        },
        Row {
            // Mailbox registers (CXL r3.1 §8.2.8.4): the function's interface; an
            // FLR clears what a previous user left (PCIe r6 §6.6.2), CXL Reset
            // initialises every non-sticky register (§9.7).
            what: "mailbox Control (background IRQ), Command, payload",
            dirty: |d, _| {
                let m = layout::MAILBOX_OFFSET;
                bar_w32(d, 0, m + 0x04, 1 << 2);
                bar_w64(d, 0, m + 0x08, 0x4000);
                bar_w64(d, 0, layout::MAILBOX_PAYLOAD_OFFSET, 0x1122_3344_5566_7788);
            },
            read: |d, _| {
                let m = layout::MAILBOX_OFFSET;
                vec![
                    u64::from(bar_r32(d, 0, m + 0x04)),
                    bar_r64(d, 0, m + 0x08),
                    bar_r64(d, 0, layout::MAILBOX_PAYLOAD_OFFSET),
                ]
            },
            want: [Reset, Reset, Reset],
        },
        Row {
            // State held by the device (CXL r3.1 §9.5: not affected by FLR); the LSA
            // is persistent; an event record waits for Clear Event Records.
            what: "LSA contents, pending event record (Event Status)",
            dirty: |d, _| {
                let mut input = 0x40u32.to_le_bytes().to_vec();
                input.extend_from_slice(&[0; 4]);
                input.extend_from_slice(b"persist!");
                assert_eq!(mbox_cmd(d, 0x4103, &input).0, 0, "Set LSA");
                d.inject_event(
                    EventLog::Informational,
                    EventRecord {
                        uuid: [7; 16],
                        flags: 0,
                        data: vec![1, 2, 3],
                    },
                );
            },
            read: |d, _| {
                let mut v = lsa(d);
                let st = layout::DEVICE_BLOCK_OFFSET + u64::from(layout::DEV_STATUS_CAP_OFFSET);
                v.push(u64::from(bar_r32(d, 0, st)));
                v
            },
            want: [Kept, Kept, Kept],
        },
        Row {
            // CXL r3.1 §8.1.3.2/§8.1.3.8: RWL; §9.5: FLR leaves the DVSEC alone;
            // §9.7: CXL Reset initialises non-sticky registers.
            what: "DVSEC Mem_Enable and Range 1 Base, CONFIG_LOCK clear",
            dirty: set_dvsec_range,
            read: read_dvsec_range,
            want: [Reset, Kept, Reset],
        },
        Row {
            // CXL r3.1 §8.1.3.6: CONFIG_LOCK is cleared by conventional reset; it
            // and the fields it locks are unaffected by CXL Reset.
            what: "DVSEC Mem_Enable and Range 1 Base under CONFIG_LOCK",
            dirty: |d, e| {
                set_dvsec_range(d, e);
                cfg_w16(d, e.dvsec + CXL_LOCK, 0x1);
            },
            read: read_dvsec_range,
            want: [Reset, Kept, Kept],
        },
        Row {
            // CXL r3.1 §8.1.3.4/§8.1.3.5 (RW, RO); §9.5, §9.7 as above; §9.6: the
            // write-back with Disable Caching set leaves Cache Invalid set.
            what: "Control2 Disable Caching and Mem Clr Enable, Status2 Cache Invalid",
            dirty: |d, e| cfg_w16(d, e.dvsec + CXL_CTRL2, 0x1 | 0x2 | 0x8),
            read: |d, e| {
                vec![
                    u64::from(cfg_r16(d, e.dvsec + CXL_CTRL2)),
                    u64::from(cfg_r16(d, e.dvsec + CXL_STATUS2) & 0x1),
                ]
            },
            want: [Reset, Kept, Reset],
        },
        Row {
            // CXL r3.1 §8.2.4.20.7: RWL fields; §9.5; §9.7: non-sticky registers
            // initialised.
            what: "HDM decoder 0 committed without Lock On Commit",
            dirty: |d, _| commit_decoder0(d, COMMIT),
            read: |d, _| read_decoder0(d),
            want: [Reset, Kept, Reset],
        },
        Row {
            // CXL r3.1 Table 8-1: a locked RWL field is cleared by hot, warm or
            // cold reset and not affected by CXL Reset after it is locked.
            what: "HDM decoder 0 committed with Lock On Commit",
            dirty: |d, _| commit_decoder0(d, COMMIT | LOCK_ON_COMMIT),
            read: |d, _| read_decoder0(d),
            want: [Reset, Kept, Kept],
        },
        Row {
            // CXL r3.1 §8.2.4.20.2: HDM Decoder Enable is RW.
            what: "HDM Decoder Global Control, HDM Decoder Enable",
            dirty: |d, _| bar_w32(d, 0, hdm(HDM_GCTRL), 0x2),
            read: |d, _| vec![u64::from(bar_r32(d, 0, hdm(HDM_GCTRL)))],
            want: [Reset, Kept, Reset],
        },
        Row {
            // CXL r3.1 §8.1.3.16: this device reports volatile HDM preserved across
            // warm and hot reset; §9.5: FLR does not reset the memory controller;
            // §9.7.1: contents may be kept when Mem Clr is not asked for.
            what: "device memory, Mem Clr Enable clear",
            dirty: |d, _| d.bar_write(2, 0x1000, &[0x5a; 64], &NoGuestMemory),
            read: |d, _| read_memory(d),
            want: [Kept, Kept, Kept],
        },
        Row {
            // CXL r3.1 §9.7.1, §8.1.3.4: with CXL Reset Mem Clr Enable the device
            // clears volatile HDM as part of CXL Reset; other resets ignore the bit.
            what: "device memory, Mem Clr Enable set",
            dirty: |d, e| {
                d.bar_write(2, 0x1000, &[0x5a; 64], &NoGuestMemory);
                cfg_w16(d, e.dvsec + CXL_CTRL2, 0x8);
            },
            read: |d, _| read_memory(d),
            want: [Kept, Kept, Reset],
        },
    ]
}

#[test]
fn every_register_class_against_every_reset_kind() {
    let mut wrong = Vec::new();
    for row in rows() {
        for (k, kind) in KINDS.iter().enumerate() {
            let (mut d, clock) = device(small_config());
            let e = env(&mut d);
            let fresh = (row.read)(&mut d, &e);
            (row.dirty)(&mut d, &e);
            let dirty = (row.read)(&mut d, &e);
            assert_ne!(dirty, fresh, "{}: dirtying changed nothing", row.what);
            run_reset(&mut d, &clock, &e, *kind);
            let after = (row.read)(&mut d, &e);
            let got = if after == dirty {
                Kept
            } else if after == fresh {
                Reset
            } else {
                wrong.push(format!(
                    "{:?} / {}: neither kept nor reset: {after:x?} (dirty {dirty:x?}, power-on {fresh:x?})",
                    kind, row.what
                ));
                continue;
            };
            if got != row.want[k] {
                wrong.push(format!(
                    "{:?} / {}: {got:?}, the spec says {:?} (after {after:x?}, dirty {dirty:x?}, power-on {fresh:x?})",
                    kind, row.what, row.want[k]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// Every kind of reset leaves the device usable: the kept lock still locks.
#[test]
fn a_kept_config_lock_still_locks_after_flr_and_cxl_reset() {
    for kind in [ResetKind::Flr, ResetKind::CxlReset] {
        let (mut d, clock) = device(small_config());
        let e = env(&mut d);
        set_dvsec_range(&mut d, &e);
        cfg_w16(&mut d, e.dvsec + CXL_LOCK, 0x1);
        run_reset(&mut d, &clock, &e, kind);
        cfg_w16(&mut d, e.dvsec + CXL_CTRL, 0);
        cfg_w32(&mut d, e.dvsec + RANGE1_BASE_LO, 0);
        assert_eq!(cfg_r16(&mut d, e.dvsec + CXL_CTRL), 0x6, "{kind:?}");
        assert_eq!(cfg_r32(&mut d, e.dvsec + RANGE1_BASE_LO), 0x1000_0000);
        // And a locked decoder still ignores writes.
        commit_decoder0(&mut d, COMMIT | LOCK_ON_COMMIT);
        run_reset(&mut d, &clock, &e, kind);
        bar_w32(&mut d, 0, hdm(DEC0_CTRL), 0);
        assert_ne!(bar_r32(&mut d, 0, hdm(DEC0_CTRL)) & (1 << 10), 0);
    }
}

#[test]
fn cxl_reset_is_advertised_as_the_spec_encodes_it() {
    let (mut d, _) = device(small_config());
    let e = env(&mut d);
    // DVSEC CXL Capability (CXL r3.1 §8.1.3.1): Cache (0), IO (1), Mem (2) Capable,
    // HDM_Count 01b (5:4), Cache Writeback and Invalidate Capable (6), CXL Reset
    // Capable (7), CXL Reset Timeout 001b = 100 ms (10:8), CXL Reset Mem Clr
    // Capable (11).
    assert_eq!(cfg_r16(&mut d, e.dvsec + 0x0a), 0x09d7);
    // Control2 and Status2 read 0 at power-on; Initiate bits are write-only.
    assert_eq!(cfg_r16(&mut d, e.dvsec + CXL_CTRL2), 0);
    assert_eq!(cfg_r16(&mut d, e.dvsec + CXL_STATUS2), 0);
    // Reserved bits of Control2 (15:6; 5:4 are optional and absent here) stay 0.
    cfg_w16(&mut d, e.dvsec + CXL_CTRL2, 0xfff1);
    assert_eq!(cfg_r16(&mut d, e.dvsec + CXL_CTRL2), 0x0001);
    // Status2 is read-only.
    cfg_w16(&mut d, e.dvsec + CXL_STATUS2, 0xffff);
    assert_eq!(cfg_r16(&mut d, e.dvsec + CXL_STATUS2), 0);
}

#[test]
fn cache_write_back_and_invalidate_sets_cache_invalid() {
    let (mut d, _) = device(small_config());
    let e = env(&mut d);
    let (c2, s2) = (e.dvsec + CXL_CTRL2, e.dvsec + CXL_STATUS2);
    // With caching enabled a write-back is undefined (§8.1.3.4): nothing happens.
    cfg_w16(&mut d, c2, 0x2);
    assert_eq!(cfg_r16(&mut d, s2) & 1, 0);
    assert_eq!(cfg_r16(&mut d, c2), 0, "Initiate Cache WBI reads 0");
    // §9.6: Disable Caching, then write back and invalidate, then Cache Invalid.
    cfg_w16(&mut d, c2, 0x1);
    assert_eq!(cfg_r16(&mut d, s2) & 1, 0, "no write-back asked for yet");
    cfg_w16(&mut d, c2, 0x3);
    assert_eq!(cfg_r16(&mut d, s2) & 1, 1, "Cache Invalid");
    assert_eq!(cfg_r16(&mut d, c2), 0x1);
    // A write that leaves Disable Caching set keeps it.
    d.config_write(e.dvsec + CXL_CTRL2, &[0x1]);
    assert_eq!(cfg_r16(&mut d, s2) & 1, 1);
    // Re-enabling caching clears it (§9.6).
    cfg_w16(&mut d, c2, 0x0);
    assert_eq!(cfg_r16(&mut d, s2) & 1, 0);
    // Both steps in one write (§9.6 step 2 allows it).
    cfg_w16(&mut d, c2, 0x3);
    assert_eq!(cfg_r16(&mut d, s2) & 1, 1);
}

/// Firmware whose CXL Reset takes `ns` and fails when `fail`.
struct ResetFirmware {
    ns: u64,
    fail: bool,
    seen: Arc<std::sync::Mutex<Vec<bool>>>,
}

impl Firmware for ResetFirmware {
    fn name(&self) -> &str {
        "reset-test"
    }
    fn on_cxl_reset(&mut self, mem_clr: bool) -> CxlResetDecision {
        self.seen.lock().unwrap().push(mem_clr);
        if self.fail {
            CxlResetDecision::Fail(self.ns)
        } else {
            CxlResetDecision::Complete(self.ns)
        }
    }
}

fn reset_device(
    ns: u64,
    fail: bool,
) -> (
    AccelDevice,
    Arc<FakeClock>,
    Env,
    Arc<std::sync::Mutex<Vec<bool>>>,
) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fw = ResetFirmware {
        ns,
        fail,
        seen: seen.clone(),
    };
    let (mut d, clock) = device_with(small_config(), Box::new(fw));
    let e = env(&mut d);
    (d, clock, e, seen)
}

#[test]
fn cxl_reset_takes_the_firmware_time_and_silences_the_registers_meanwhile() {
    let (mut d, clock, e, seen) = reset_device(50_000_000, false);
    let (c2, s2) = (e.dvsec + CXL_CTRL2, e.dvsec + CXL_STATUS2);
    d.bar_write(2, 0, &[0x77; 32], &NoGuestMemory);
    enable_bus_master(&mut d);
    bar_w64(
        &mut d,
        4,
        layout::ENGINE_OFFSET + layout::engine::SRC,
        0x1000,
    );
    // Mem Clr Enable and Initiate in one write.
    cfg_w16(&mut d, c2, 0x8 | 0x4);
    assert_eq!(*seen.lock().unwrap(), vec![true], "firmware saw Mem Clr");
    assert!(d.cxl_reset_in_progress());
    assert_eq!(
        cfg_r16(&mut d, s2) & 0x6,
        0,
        "neither Complete nor Error yet"
    );
    assert_eq!(
        cfg_r16(&mut d, c2),
        0,
        "Initiate reads 0; Control2 at its reset value"
    );
    // The function does not answer through BAR0 and BAR4; writes are dropped.
    assert_eq!(bar_r32(&mut d, 0, hdm(0)), 0xffff_ffff);
    assert_eq!(bar_r64(&mut d, 4, layout::ENGINE_OFFSET), u64::MAX);
    bar_w32(&mut d, 0, hdm(HDM_GCTRL), 0x2);
    // Device memory is still there, and is cleared only when the reset ends.
    let mut b = [0u8; 32];
    d.bar_read(2, 0, &mut b);
    assert_eq!(b, [0x77; 32]);
    // A second Initiate is ignored (undefined per §8.1.3.4).
    clock.advance(40_000_000);
    cfg_w16(&mut d, c2, 0x4);
    assert_eq!(seen.lock().unwrap().len(), 1);
    clock.advance(9_999_999);
    assert_eq!(
        cfg_r16(&mut d, s2) & 0x6,
        0,
        "not before the firmware's 50 ms"
    );
    assert_eq!(d.next_deadline(), Some(50_000_000));
    clock.advance(1);
    assert_eq!(cfg_r16(&mut d, s2) & 0x6, 0x2, "CXL Reset Complete");
    assert!(!d.cxl_reset_in_progress());
    assert_eq!(d.next_deadline(), None);
    d.bar_read(2, 0, &mut b);
    assert_eq!(b, [0; 32], "Mem Clr zeroed device memory");
    assert_eq!(bar_r32(&mut d, 0, hdm(HDM_GCTRL)), 0, "the dropped write");
    assert_eq!(
        bar_r64(&mut d, 4, layout::ENGINE_OFFSET + layout::engine::SRC),
        0
    );
    assert_eq!(
        bar_r32(&mut d, 4, layout::ENGINE_OFFSET + layout::engine::ID),
        layout::engine::ID_VALUE
    );
    // The next Initiate clears Complete until it ends (§8.1.3.5).
    cfg_w16(&mut d, c2, 0x4);
    assert_eq!(*seen.lock().unwrap(), vec![true, false]);
    assert_eq!(cfg_r16(&mut d, s2) & 0x6, 0);
    clock.advance(50_000_000);
    // An Initiate written once that one has ended, before anything polled, starts a
    // new one rather than being taken for a second Initiate during it.
    cfg_w16(&mut d, c2, 0x4);
    assert_eq!(*seen.lock().unwrap(), vec![true, false, false]);
    clock.advance(50_000_000);
    d.poll();
    assert_eq!(cfg_r16(&mut d, s2) & 0x6, 0x2);
}

#[test]
fn failed_cxl_reset_reports_reset_error_and_keeps_memory() {
    let (mut d, clock, e, _) = reset_device(1_000_000, true);
    d.bar_write(2, 0, &[0x33; 8], &NoGuestMemory);
    cfg_w16(&mut d, e.dvsec + CXL_CTRL2, 0x8 | 0x4);
    clock.advance(1_000_000);
    assert_eq!(
        cfg_r16(&mut d, e.dvsec + CXL_STATUS2) & 0x6,
        0x4,
        "CXL Reset Error"
    );
    let mut b = [0u8; 8];
    d.bar_read(2, 0, &mut b);
    assert_eq!(b, [0x33; 8]);
}

#[test]
fn conventional_reset_ends_a_cxl_reset_and_flr_does_not() {
    let (mut d, clock, e, _) = reset_device(10_000_000, false);
    let s2 = e.dvsec + CXL_STATUS2;
    cfg_w16(&mut d, e.dvsec + CXL_CTRL2, 0x4);
    run_reset(&mut d, &clock, &e, ResetKind::Flr);
    assert!(d.cxl_reset_in_progress(), "FLR is CXL.io only");
    assert_eq!(bar_r32(&mut d, 4, layout::ENGINE_OFFSET), 0xffff_ffff);
    d.reset();
    assert!(!d.cxl_reset_in_progress());
    assert_eq!(d.next_deadline(), None);
    assert_eq!(cfg_r16(&mut d, s2), 0);
    assert_eq!(
        bar_r32(&mut d, 4, layout::ENGINE_OFFSET + layout::engine::ID),
        layout::engine::ID_VALUE
    );
    clock.advance(20_000_000);
    d.poll();
    assert_eq!(cfg_r16(&mut d, s2), 0, "the ended reset reports nothing");
}
