//! PCI and PCI Express configuration-space layouts (PCI Express Base Specification
//! r6.x, §7.5 onwards): the type-0 header, the capability list, the PCI Express
//! capability, Power Management, MSI-X, the extended capability header and the Device
//! Serial Number extended capability.
//!
//! Offsets of capability registers are relative to the start of their capability.

/// Size of PCI Express extended configuration space (PCIe r6 §7.2.2).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// End of the PCI-compatible part of configuration space; extended capabilities
/// start here (PCIe r6 §7.6).
pub const EXT_CAP_START: usize = 0x100;

// ---------------------------------------------------------------------------
// Type-0 configuration header (PCIe r6 §7.5.1.1 common part, §7.5.1.2 type 0).
// ---------------------------------------------------------------------------

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
/// Command register (PCIe r6 §7.5.1.1.3).
pub const COMMAND: usize = 0x04;
/// Status register (PCIe r6 §7.5.1.1.4).
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
/// Class code, 3 bytes: programming interface, sub-class, base class (§7.5.1.1.6).
pub const CLASS_CODE: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BIST: usize = 0x0f;
/// Base Address Register 0 (PCIe r6 §7.5.1.2.1); BARn at `BAR0 + 4 * n`.
pub const BAR0: usize = 0x10;
pub const NUM_BARS: usize = 6;
pub const CARDBUS_CIS: usize = 0x28;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
/// Expansion ROM Base Address (PCIe r6 §7.5.1.2.4).
pub const EXPANSION_ROM: usize = 0x30;
/// Capabilities Pointer (PCIe r6 §7.5.1.1.11); bits \[1:0\] are reserved.
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;
pub const MIN_GNT: usize = 0x3e;
pub const MAX_LAT: usize = 0x3f;
/// Length of the type-0 header.
pub const HEADER_LEN: usize = 0x40;

/// Byte offset of BAR `n`.
pub const fn bar_offset(n: usize) -> usize {
    BAR0 + 4 * n
}

/// Command register bits (PCIe r6 §7.5.1.1.3, Table 7-4).
pub const CMD_IO_SPACE: u16 = 1 << 0;
pub const CMD_MEMORY_SPACE: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
pub const CMD_SERR_ENABLE: u16 = 1 << 8;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;

/// Status register bits (PCIe r6 §7.5.1.1.4, Table 7-5).
pub const STS_IMMEDIATE_READINESS: u16 = 1 << 0;
pub const STS_INTERRUPT_STATUS: u16 = 1 << 3;
pub const STS_CAP_LIST: u16 = 1 << 4;
pub const STS_MASTER_DATA_PARITY_ERROR: u16 = 1 << 8;
pub const STS_SIGNALED_TARGET_ABORT: u16 = 1 << 11;
pub const STS_RECEIVED_TARGET_ABORT: u16 = 1 << 12;
pub const STS_RECEIVED_MASTER_ABORT: u16 = 1 << 13;
pub const STS_SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
pub const STS_DETECTED_PARITY_ERROR: u16 = 1 << 15;
/// The RW1C bits of the Status register.
pub const STS_RW1C: u16 = STS_MASTER_DATA_PARITY_ERROR
    | STS_SIGNALED_TARGET_ABORT
    | STS_RECEIVED_TARGET_ABORT
    | STS_RECEIVED_MASTER_ABORT
    | STS_SIGNALED_SYSTEM_ERROR
    | STS_DETECTED_PARITY_ERROR;

/// Header Type (PCIe r6 §7.5.1.1.9): layout \[6:0\] 0 = type 0; bit 7 multi-function.
pub const HEADER_TYPE_NORMAL: u8 = 0x00;
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

/// Memory BAR fields (PCIe r6 §7.5.1.2.1, Table 7-9).
pub const BAR_MEM_SPACE: u32 = 0;
pub const BAR_IO_SPACE: u32 = 1 << 0;
/// Type \[2:1\]: 00 = 32-bit, 10 = 64-bit.
pub const BAR_MEM_TYPE_32: u32 = 0b00 << 1;
pub const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
pub const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
/// The address bits of a memory BAR's low dword.
pub const BAR_MEM_ADDR_MASK: u32 = !0xf;

/// Interrupt Pin values (PCIe r6 §7.5.1.1.13): 1 = INTA.
pub const INTERRUPT_PIN_INTA: u8 = 1;

// ---------------------------------------------------------------------------
// Capability list (PCIe r6 §7.5.1.1.11 and §7.5.2 onwards).
// ---------------------------------------------------------------------------

/// Capability ID byte and Next Capability Pointer byte of every capability.
pub const CAP_ID: usize = 0x0;
pub const CAP_NEXT: usize = 0x1;

/// Capability IDs (PCI Code and ID Assignment Specification, §2).
pub const CAP_ID_PM: u8 = 0x01;
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_EXP: u8 = 0x10;
pub const CAP_ID_MSIX: u8 = 0x11;

// --- Power Management capability (PCIe r6 §7.5.2) -------------------------

/// Power Management Capabilities (PMC, §7.5.2.1).
pub const PM_PMC: usize = 0x02;
/// PMC Version \[2:0\]: 011b = PCI PM Interface Specification r1.2.
pub const PM_PMC_VERSION_1_2: u16 = 0b011;
/// Power Management Control/Status (PMCSR, §7.5.2.2).
pub const PM_PMCSR: usize = 0x04;
/// PowerState \[1:0\]: 00 = D0, 11 = D3hot.
pub const PM_PMCSR_POWER_STATE_MASK: u16 = 0b11;
pub const PM_PMCSR_D0: u16 = 0b00;
pub const PM_PMCSR_D3HOT: u16 = 0b11;
/// No_Soft_Reset, bit 3: a D3hot->D0 transition does not reset the function.
pub const PM_PMCSR_NO_SOFT_RESET: u16 = 1 << 3;
pub const PM_PMCSR_PME_ENABLE: u16 = 1 << 8;
pub const PM_PMCSR_PME_STATUS: u16 = 1 << 15;
/// Length of the Power Management capability.
pub const PM_CAP_LEN: usize = 8;

// --- PCI Express capability (PCIe r6 §7.5.3) ------------------------------

/// PCI Express Capabilities register (§7.5.3.2).
pub const EXP_FLAGS: usize = 0x02;
/// Capability Version \[3:0\]: 2.
pub const EXP_FLAGS_VERSION_2: u16 = 0x2;
/// Device/Port Type \[7:4\]: 0000b = PCI Express Endpoint.
pub const EXP_FLAGS_TYPE_SHIFT: u32 = 4;
pub const EXP_FLAGS_TYPE_ENDPOINT: u16 = 0x0 << 4;
pub const EXP_FLAGS_SLOT: u16 = 1 << 8;
/// Interrupt Message Number \[13:9\].
pub const EXP_FLAGS_IRQ_SHIFT: u32 = 9;
/// Flit Mode Supported, bit 15 (PCIe r6 §7.5.3.2).
pub const EXP_FLAGS_FLIT_MODE_SUPPORTED: u16 = 1 << 15;

/// Device Capabilities (§7.5.3.3).
pub const EXP_DEVCAP: usize = 0x04;
/// Max_Payload_Size Supported \[2:0\]: 001b = 256 bytes.
pub const EXP_DEVCAP_PAYLOAD_256: u32 = 0b001;
pub const EXP_DEVCAP_EXT_TAG: u32 = 1 << 5;
pub const EXP_DEVCAP_RBER: u32 = 1 << 15;
/// Function Level Reset Capability, bit 28.
pub const EXP_DEVCAP_FLR: u32 = 1 << 28;

/// Device Control (§7.5.3.4).
pub const EXP_DEVCTL: usize = 0x08;
pub const EXP_DEVCTL_CERE: u16 = 1 << 0;
pub const EXP_DEVCTL_NFERE: u16 = 1 << 1;
pub const EXP_DEVCTL_FERE: u16 = 1 << 2;
pub const EXP_DEVCTL_URRE: u16 = 1 << 3;
pub const EXP_DEVCTL_RELAX_EN: u16 = 1 << 4;
/// Max_Payload_Size \[7:5\].
pub const EXP_DEVCTL_PAYLOAD_MASK: u16 = 0b111 << 5;
pub const EXP_DEVCTL_EXT_TAG: u16 = 1 << 8;
pub const EXP_DEVCTL_PHANTOM: u16 = 1 << 9;
pub const EXP_DEVCTL_AUX_PME: u16 = 1 << 10;
pub const EXP_DEVCTL_NOSNOOP_EN: u16 = 1 << 11;
/// Max_Read_Request_Size \[14:12\]; 010b = 512 bytes (the default).
pub const EXP_DEVCTL_READRQ_MASK: u16 = 0b111 << 12;
pub const EXP_DEVCTL_READRQ_512: u16 = 0b010 << 12;
/// Initiate Function Level Reset, bit 15: always reads 0.
pub const EXP_DEVCTL_BCR_FLR: u16 = 1 << 15;

/// Device Status (§7.5.3.5).
pub const EXP_DEVSTA: usize = 0x0a;
pub const EXP_DEVSTA_CED: u16 = 1 << 0;
pub const EXP_DEVSTA_NFED: u16 = 1 << 1;
pub const EXP_DEVSTA_FED: u16 = 1 << 2;
pub const EXP_DEVSTA_URD: u16 = 1 << 3;
pub const EXP_DEVSTA_AUXPD: u16 = 1 << 4;
pub const EXP_DEVSTA_TRPND: u16 = 1 << 5;
/// The RW1C error-detected bits of Device Status.
pub const EXP_DEVSTA_RW1C: u16 = EXP_DEVSTA_CED | EXP_DEVSTA_NFED | EXP_DEVSTA_FED | EXP_DEVSTA_URD;

/// Link Capabilities (§7.5.3.6).
pub const EXP_LNKCAP: usize = 0x0c;
/// Max Link Speed \[3:0\], an index into Supported Link Speeds Vector (1 = 2.5 GT/s ...
/// 5 = 32 GT/s, 6 = 64 GT/s).
pub const EXP_LNKCAP_SPEED_MASK: u32 = 0xf;
/// Maximum Link Width \[9:4\].
pub const EXP_LNKCAP_WIDTH_SHIFT: u32 = 4;
pub const EXP_LNKCAP_WIDTH_MASK: u32 = 0x3f << 4;
/// ASPM Optionality Compliance, bit 22.
pub const EXP_LNKCAP_ASPM_COMPLIANCE: u32 = 1 << 22;
/// Port Number \[31:24\].
pub const EXP_LNKCAP_PORT_SHIFT: u32 = 24;

/// Link speed encodings (Supported Link Speeds Vector bit positions, §7.5.3.18).
pub const LINK_SPEED_2_5GT: u16 = 1;
pub const LINK_SPEED_5GT: u16 = 2;
pub const LINK_SPEED_8GT: u16 = 3;
pub const LINK_SPEED_16GT: u16 = 4;
pub const LINK_SPEED_32GT: u16 = 5;
pub const LINK_SPEED_64GT: u16 = 6;

/// Link Control (§7.5.3.7).
pub const EXP_LNKCTL: usize = 0x10;
pub const EXP_LNKCTL_ASPM_MASK: u16 = 0b11;
pub const EXP_LNKCTL_CCC: u16 = 1 << 6;
pub const EXP_LNKCTL_ES: u16 = 1 << 7;
pub const EXP_LNKCTL_HAWD: u16 = 1 << 9;

/// Link Status (§7.5.3.8): Current Link Speed \[3:0\], Negotiated Link Width \[9:4\],
/// Slot Clock Configuration bit 12.
pub const EXP_LNKSTA: usize = 0x12;
pub const EXP_LNKSTA_SPEED_MASK: u16 = 0xf;
pub const EXP_LNKSTA_WIDTH_SHIFT: u32 = 4;
pub const EXP_LNKSTA_WIDTH_MASK: u16 = 0x3f << 4;
pub const EXP_LNKSTA_SLC: u16 = 1 << 12;

/// Slot and Root registers (§7.5.3.9 .. §7.5.3.14): not implemented by an endpoint.
pub const EXP_SLTCAP: usize = 0x14;
pub const EXP_RTCTL: usize = 0x1c;

/// Device Capabilities 2 (§7.5.3.15).
pub const EXP_DEVCAP2: usize = 0x24;
/// Completion Timeout Ranges Supported \[3:0\]: ranges A, B, C and D.
pub const EXP_DEVCAP2_COMP_TMOUT_RANGES: u32 = 0xf;
pub const EXP_DEVCAP2_COMP_TMOUT_DIS: u32 = 1 << 4;
pub const EXP_DEVCAP2_10BIT_TAG_COMP: u32 = 1 << 16;
/// Extended Fmt Field Supported, bit 20.
pub const EXP_DEVCAP2_EXT_FMT: u32 = 1 << 20;

/// Device Control 2 (§7.5.3.16): Completion Timeout Value \[3:0\], Completion Timeout
/// Disable bit 4.
pub const EXP_DEVCTL2: usize = 0x28;
pub const EXP_DEVCTL2_COMP_TIMEOUT_MASK: u16 = 0xf;
pub const EXP_DEVCTL2_COMP_TMOUT_DIS: u16 = 1 << 4;

/// Device Status 2 (§7.5.3.17): reserved.
pub const EXP_DEVSTA2: usize = 0x2a;

/// Link Capabilities 2 (§7.5.3.18): Supported Link Speeds Vector \[7:1\].
pub const EXP_LNKCAP2: usize = 0x2c;
pub const EXP_LNKCAP2_SLS_SHIFT: u32 = 1;

/// Link Control 2 (§7.5.3.19): Target Link Speed \[3:0\] and the compliance fields.
pub const EXP_LNKCTL2: usize = 0x30;
pub const EXP_LNKCTL2_TLS_MASK: u16 = 0xf;
/// Selectable De-emphasis, bit 6: hardware-initialised for an Upstream Port.
pub const EXP_LNKCTL2_SELECTABLE_DEEMPH: u16 = 1 << 6;

/// Link Status 2 (§7.5.3.20).
pub const EXP_LNKSTA2: usize = 0x32;
/// Equalization 8.0 GT/s Complete (bit 1) and Phase 1/2/3 Successful (bits 2..4).
pub const EXP_LNKSTA2_EQ_COMPLETE: u16 = 0b1111 << 1;
/// Link Equalization Request 8.0 GT/s, bit 5 (RW1C).
pub const EXP_LNKSTA2_EQ_REQUEST: u16 = 1 << 5;
/// Flit Mode Status, bit 10 (PCIe r6 §7.5.3.20): the link operates in Flit Mode.
pub const EXP_LNKSTA2_FLIT: u16 = 1 << 10;

/// Length of a version-2 PCI Express capability for an endpoint without a slot.
pub const EXP_CAP_LEN: usize = 0x3c;

// --- MSI-X capability (PCIe r6 §7.7.2) ------------------------------------

/// Message Control (§7.7.2.2): Table Size \[10:0\] (N-1), Function Mask bit 14,
/// MSI-X Enable bit 15.
pub const MSIX_FLAGS: usize = 0x02;
pub const MSIX_FLAGS_QSIZE_MASK: u16 = 0x7ff;
pub const MSIX_FLAGS_MASKALL: u16 = 1 << 14;
pub const MSIX_FLAGS_ENABLE: u16 = 1 << 15;
/// Table Offset/Table BIR (§7.7.2.3): BIR \[2:0\], QWORD-aligned offset \[31:3\].
pub const MSIX_TABLE: usize = 0x04;
/// PBA Offset/PBA BIR (§7.7.2.4).
pub const MSIX_PBA: usize = 0x08;
pub const MSIX_BIR_MASK: u32 = 0x7;
pub const MSIX_CAP_LEN: usize = 12;

/// MSI-X Table entry (§7.7.2.5 .. §7.7.2.8): 16 bytes per vector.
pub const MSIX_ENTRY_SIZE: usize = 16;
pub const MSIX_ENTRY_ADDR_LO: usize = 0x0;
pub const MSIX_ENTRY_ADDR_HI: usize = 0x4;
pub const MSIX_ENTRY_DATA: usize = 0x8;
pub const MSIX_ENTRY_VECTOR_CTRL: usize = 0xc;
/// Vector Control bit 0: Mask Bit (set at reset).
pub const MSIX_ENTRY_CTRL_MASKBIT: u32 = 1 << 0;
/// Message Address bits \[1:0\] are reserved: the address is dword-aligned.
pub const MSIX_ENTRY_ADDR_LO_MASK: u32 = !0x3;

// ---------------------------------------------------------------------------
// Extended capabilities (PCIe r6 §7.6.3).
// ---------------------------------------------------------------------------

/// Extended capability header: ID \[15:0\], version \[19:16\], next offset \[31:20\].
pub const fn ext_cap_header(id: u16, version: u8, next: u16) -> u32 {
    (id as u32) | (((version & 0xf) as u32) << 16) | (((next & 0xfff) as u32) << 20)
}
/// The capability ID of an extended capability header.
pub const fn ext_cap_id(header: u32) -> u16 {
    (header & 0xffff) as u16
}
/// The version of an extended capability header.
pub const fn ext_cap_version(header: u32) -> u8 {
    ((header >> 16) & 0xf) as u8
}
/// The next-capability offset of an extended capability header (0 ends the list).
pub const fn ext_cap_next(header: u32) -> u16 {
    ((header >> 20) & 0xfff) as u16
}

/// Extended capability IDs (PCI Code and ID Assignment Specification, §3).
pub const EXT_CAP_ID_DSN: u16 = 0x0003;
pub const EXT_CAP_ID_DVSEC: u16 = 0x0023;

/// Device Serial Number extended capability (PCIe r6 §7.9.3): header, then the
/// 64-bit serial number as two dwords (lower first).
pub const DSN_SERIAL_LO: usize = 0x04;
pub const DSN_SERIAL_HI: usize = 0x08;
pub const DSN_CAP_LEN: usize = 0x0c;
pub const DSN_VERSION: u8 = 1;

/// Designated Vendor-Specific Extended Capability (PCIe r6 §7.9.6): DVSEC Header 1
/// at +4 (vendor ID \[15:0\], revision \[19:16\], length \[31:20\]) and DVSEC Header 2 at
/// +8 (DVSEC ID \[15:0\]).
pub const DVSEC_HEADER1: usize = 0x04;
pub const DVSEC_HEADER2: usize = 0x08;
pub const DVSEC_VERSION: u8 = 1;

/// Compose DVSEC Header 1.
pub const fn dvsec_header1(vendor: u16, revision: u8, length: u16) -> u32 {
    (vendor as u32) | (((revision & 0xf) as u32) << 16) | (((length & 0xfff) as u32) << 20)
}
/// The vendor ID of DVSEC Header 1.
pub const fn dvsec_vendor(header1: u32) -> u16 {
    (header1 & 0xffff) as u16
}
/// The revision of DVSEC Header 1.
pub const fn dvsec_revision(header1: u32) -> u8 {
    ((header1 >> 16) & 0xf) as u8
}
/// The length in bytes of DVSEC Header 1.
pub const fn dvsec_length(header1: u32) -> u16 {
    ((header1 >> 20) & 0xfff) as u16
}
/// The DVSEC ID of DVSEC Header 2.
pub const fn dvsec_id(header2: u32) -> u16 {
    (header2 & 0xffff) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_cap_header_round_trips() {
        let h = ext_cap_header(EXT_CAP_ID_DVSEC, 1, 0x150);
        assert_eq!(h, 0x1501_0023);
        assert_eq!(ext_cap_id(h), EXT_CAP_ID_DVSEC);
        assert_eq!(ext_cap_version(h), 1);
        assert_eq!(ext_cap_next(h), 0x150);
    }

    #[test]
    fn dvsec_header_round_trips() {
        let h = dvsec_header1(0x1e98, 3, 0x3c);
        assert_eq!(h, 0x03c3_1e98);
        assert_eq!(dvsec_vendor(h), 0x1e98);
        assert_eq!(dvsec_revision(h), 3);
        assert_eq!(dvsec_length(h), 0x3c);
    }
}
