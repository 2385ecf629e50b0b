//! The RAS capability's bits against the spec's register tables (CXL r3.1
//! §8.2.4.17.1 Uncorrectable Error Status, §8.2.4.17.2 Mask, §8.2.4.17.3 Severity,
//! §8.2.4.17.4 Correctable Error Status, §8.2.4.17.5 Mask, §8.2.4.17.6 Error
//! Capabilities and Control). The tables below are written out from the spec, bit
//! number and field name; the Linux CXL trace events (`show_uc_errs` and
//! `show_ce_errs` in drivers/cxl/core/trace.h) list the same positions. Nothing here
//! is derived from the constants under test.

mod common;

use accel_type2::*;
use common::*;
use cxl_regs::component::ras;
use cxl_regs::layout;

/// Uncorrectable Error Status (§8.2.4.17.1): (bit, field name). 13:12 and 31:17 are
/// reserved.
const UNCORRECTABLE: &[(u8, &str)] = &[
    (0, "Cache_Data_Parity"),
    (1, "Cache_Address_Parity"),
    (2, "Cache_BE_Parity"),
    (3, "Cache_Data_ECC"),
    (4, "Mem_Data_Parity"),
    (5, "Mem_Address_Parity"),
    (6, "Mem_BE_Parity"),
    (7, "Mem_Data_ECC"),
    (8, "REINIT_Threshold"),
    (9, "Rsvd_Encoding_Violation"),
    (10, "Poison_Received"),
    (11, "Receiver_Overflow"),
    (14, "Internal_Error"),
    (15, "CXL_IDE_Tx_Error"),
    (16, "CXL_IDE_Rx_Error"),
];

/// Correctable Error Status (§8.2.4.17.4). 31:7 are reserved.
const CORRECTABLE: &[(u8, &str)] = &[
    (0, "Cache_Data_ECC"),
    (1, "Mem_Data_ECC"),
    (2, "CRC_Threshold"),
    (3, "Retry_Threshold"),
    (4, "Cache_Poison_Received"),
    (5, "Mem_Poison_Received"),
    (6, "Physical_Layer_Error"),
];

/// Error Capabilities and Control (§8.2.4.17.6): First_Error_Pointer 5:0 (ROS),
/// Multiple_Header_Recording_Capability 9 (RO), Poison_Enabled 13 (hardwired to 1 in
/// a device that is not an eRCD).
const FIRST_ERROR_POINTER: u32 = 0x3f;
const POISON_ENABLED_BIT: u32 = 13;

fn bit_named(table: &[(u8, &str)], name: &str) -> u32 {
    let (bit, _) = table
        .iter()
        .find(|(_, n)| *n == name)
        .unwrap_or_else(|| panic!("{name} is not in the table"));
    1 << bit
}

fn all(table: &[(u8, &str)]) -> u32 {
    table.iter().fold(0, |m, (b, _)| m | 1 << b)
}

#[test]
fn named_constants_sit_at_the_spec_positions() {
    let ue = |n| bit_named(UNCORRECTABLE, n);
    let checks = [
        (ras::UE_CACHE_DATA_PARITY, ue("Cache_Data_Parity")),
        (ras::UE_CACHE_ADDRESS_PARITY, ue("Cache_Address_Parity")),
        (ras::UE_CACHE_BE_PARITY, ue("Cache_BE_Parity")),
        (ras::UE_CACHE_DATA_ECC, ue("Cache_Data_ECC")),
        (ras::UE_MEM_DATA_PARITY, ue("Mem_Data_Parity")),
        (ras::UE_MEM_ADDRESS_PARITY, ue("Mem_Address_Parity")),
        (ras::UE_MEM_BE_PARITY, ue("Mem_BE_Parity")),
        (ras::UE_MEM_DATA_ECC, ue("Mem_Data_ECC")),
        (ras::UE_REINIT_THRESHOLD, ue("REINIT_Threshold")),
        (
            ras::UE_RSVD_ENCODING_VIOLATION,
            ue("Rsvd_Encoding_Violation"),
        ),
        (ras::UE_POISON_RECEIVED, ue("Poison_Received")),
        (ras::UE_RECEIVER_OVERFLOW, ue("Receiver_Overflow")),
        (ras::UE_INTERNAL_ERROR, ue("Internal_Error")),
        (ras::UE_CXL_IDE_TX_ERROR, ue("CXL_IDE_Tx_Error")),
        (ras::UE_CXL_IDE_RX_ERROR, ue("CXL_IDE_Rx_Error")),
    ];
    for (i, (constant, spec)) in checks.iter().enumerate() {
        assert_eq!(constant, spec, "uncorrectable entry {i}");
    }
    assert_eq!(ras::UE_POISON_RECEIVED, 1 << 10);
    assert_eq!(ras::UE_INTERNAL_ERROR, 1 << 14);
    assert_eq!(ras::UNCORRECTABLE_BITS, all(UNCORRECTABLE));
    assert_eq!(ras::UNCORRECTABLE_BITS, 0x0001_cfff);

    let ce = |n| bit_named(CORRECTABLE, n);
    let checks = [
        (ras::CE_CACHE_DATA_ECC, ce("Cache_Data_ECC")),
        (ras::CE_MEM_DATA_ECC, ce("Mem_Data_ECC")),
        (ras::CE_CRC_THRESHOLD, ce("CRC_Threshold")),
        (ras::CE_RETRY_THRESHOLD, ce("Retry_Threshold")),
        (ras::CE_CACHE_POISON_RECEIVED, ce("Cache_Poison_Received")),
        (ras::CE_MEM_POISON_RECEIVED, ce("Mem_Poison_Received")),
        (ras::CE_PHYSICAL_LAYER_ERROR, ce("Physical_Layer_Error")),
    ];
    for (i, (constant, spec)) in checks.iter().enumerate() {
        assert_eq!(constant, spec, "correctable entry {i}");
    }
    assert_eq!(ras::CORRECTABLE_BITS, all(CORRECTABLE));

    assert_eq!(ras::FIRST_ERROR_POINTER_MASK, FIRST_ERROR_POINTER);
    assert_eq!(ras::MULTIPLE_HEADER_RECORDING, 1 << 9);
    assert_eq!(ras::POISON_ENABLED, 1 << POISON_ENABLED_BIT);
}

fn ras_r(d: &mut AccelDevice, reg: u64) -> u32 {
    bar_r32(d, 0, layout::RAS_OFFSET + reg)
}

fn ras_w(d: &mut AccelDevice, reg: u64, v: u32) {
    bar_w32(d, 0, layout::RAS_OFFSET + reg, v)
}

#[test]
fn every_spec_bit_and_no_other_through_bar0() {
    // Register offsets of §8.2.4.17.
    const UE_STATUS: u64 = 0x00;
    const UE_MASK: u64 = 0x04;
    const UE_SEVERITY: u64 = 0x08;
    const CE_STATUS: u64 = 0x0c;
    const CE_MASK: u64 = 0x10;
    const CAP_CONTROL: u64 = 0x14;
    for bit in 0u8..32 {
        let (mut d, _) = device(small_config());
        let defined = UNCORRECTABLE.iter().any(|(b, _)| *b == bit);
        assert_eq!(
            d.try_inject_ras(true, bit, &[bit.into(); 16]).is_ok(),
            defined,
            "uncorrectable bit {bit}"
        );
        if defined {
            assert_eq!(ras_r(&mut d, UE_STATUS), 1 << bit);
            assert_eq!(
                ras_r(&mut d, CAP_CONTROL) & FIRST_ERROR_POINTER,
                u32::from(bit),
                "First_Error_Pointer names bit {bit}"
            );
            ras_w(&mut d, UE_STATUS, 1 << bit);
            assert_eq!(ras_r(&mut d, UE_STATUS), 0, "RW1CS");
        } else {
            assert_eq!(ras_r(&mut d, UE_STATUS), 0);
        }
        let defined = CORRECTABLE.iter().any(|(b, _)| *b == bit);
        assert_eq!(
            d.try_inject_ras(false, bit, &[0; 16]).is_ok(),
            defined,
            "correctable bit {bit}"
        );
        assert_eq!(ras_r(&mut d, CE_STATUS), if defined { 1 << bit } else { 0 });
    }
    // Mask and severity hold exactly the defined bits.
    let (mut d, _) = device(small_config());
    for reg in [UE_MASK, UE_SEVERITY] {
        ras_w(&mut d, reg, !0);
        assert_eq!(ras_r(&mut d, reg), all(UNCORRECTABLE), "reg {reg:#x}");
        ras_w(&mut d, reg, 0);
        assert_eq!(ras_r(&mut d, reg), 0);
    }
    ras_w(&mut d, CE_MASK, !0);
    assert_eq!(ras_r(&mut d, CE_MASK), all(CORRECTABLE));
}

#[test]
fn poison_enabled_is_hardwired_to_one() {
    const CAP_CONTROL: u64 = 0x14;
    let (mut d, _) = device(small_config());
    let poison_enabled = 1 << POISON_ENABLED_BIT;
    assert_eq!(ras_r(&mut d, CAP_CONTROL), poison_enabled, "power-on value");
    ras_w(&mut d, CAP_CONTROL, 0);
    assert_eq!(ras_r(&mut d, CAP_CONTROL), poison_enabled, "a write of 0");
    ras_w(&mut d, CAP_CONTROL, !0);
    assert_eq!(
        ras_r(&mut d, CAP_CONTROL),
        poison_enabled,
        "the pointer is ROS, Multiple_Header_Recording_Capability 0, the rest reserved"
    );
    d.try_inject_ras(true, 10, &[0; 16]).unwrap();
    assert_eq!(ras_r(&mut d, CAP_CONTROL), poison_enabled | 10);
    d.reset();
    assert_eq!(ras_r(&mut d, CAP_CONTROL), poison_enabled | 10, "sticky");
}
