//! Data Object Exchange (DOE, PCIe r6 §6.30): the extended capability's registers
//! (§7.9.24), the data object header (§6.30.1), and the two protocols this device
//! serves through it: DOE Discovery (PCIe r6 §6.30.1.1) and CXL Table Access
//! (CXL r3.1 §8.1.11).
//!
//! Register offsets are relative to the start of the capability (its extended
//! capability header).

/// Extended capability ID of DOE (PCI Code and ID Assignment Specification, §3).
pub const EXT_CAP_ID_DOE: u16 = 0x002e;
/// Capability version of the r6.0 layout (PCIe r6 §7.9.24.1).
pub const VERSION: u8 = 1;
/// Length of the capability: header plus five registers.
pub const CAP_LEN: usize = 0x18;

/// DOE Capabilities (PCIe r6 §7.9.24.2), RO.
pub const CAPABILITIES: usize = 0x04;
/// DOE Interrupt Support, bit 0.
pub const CAP_INT_SUPPORT: u32 = 1 << 0;
/// DOE Interrupt Message Number \[11:1\].
pub const CAP_INT_MSG_NUM_MASK: u32 = 0x7ff << 1;

/// DOE Control (PCIe r6 §7.9.24.3).
pub const CONTROL: usize = 0x08;
/// DOE Abort, bit 0: write 1 to abort; reads 0.
pub const CTRL_ABORT: u32 = 1 << 0;
/// DOE Interrupt Enable, bit 1 (RW when interrupts are supported).
pub const CTRL_INT_ENABLE: u32 = 1 << 1;
/// DOE Go, bit 31: write 1 to hand the written data object to the instance; reads 0.
pub const CTRL_GO: u32 = 1 << 31;

/// DOE Status (PCIe r6 §7.9.24.4).
pub const STATUS: usize = 0x0c;
/// DOE Busy, bit 0: the instance cannot take a new data object now.
pub const STATUS_BUSY: u32 = 1 << 0;
/// DOE Interrupt Status, bit 1 (RW1C).
pub const STATUS_INT_STATUS: u32 = 1 << 1;
/// DOE Error, bit 2: cleared only by DOE Abort.
pub const STATUS_ERROR: u32 = 1 << 2;
/// Data Object Ready, bit 31: a response can be read from the Read Data Mailbox.
pub const STATUS_DATA_OBJECT_READY: u32 = 1 << 31;

/// DOE Write Data Mailbox (PCIe r6 §7.9.24.5): each write transfers one DW of the
/// request.
pub const WRITE_MAILBOX: usize = 0x10;
/// DOE Read Data Mailbox (PCIe r6 §7.9.24.6): reads return the current DW of the
/// response; a write of any value moves on to the next.
pub const READ_MAILBOX: usize = 0x14;

// ---------------------------------------------------------------------------
// Data objects (PCIe r6 §6.30.1, Figure 6-47 / Table 6-48).
// ---------------------------------------------------------------------------

/// Data Object Header 1: Vendor ID \[15:0\], Data Object Type \[23:16\].
pub const fn header1(vendor: u16, object_type: u8) -> u32 {
    vendor as u32 | (object_type as u32) << 16
}
/// The Vendor ID of Data Object Header 1.
pub const fn header1_vendor(h: u32) -> u16 {
    h as u16
}
/// The Data Object Type of Data Object Header 1.
pub const fn header1_type(h: u32) -> u8 {
    (h >> 16) as u8
}

/// Data Object Header 2: Length in DW, header included \[17:0\]. 0 means 2^18 DW.
pub const HEADER2_LENGTH_MASK: u32 = 0x3_ffff;
/// The largest data object: 2^18 DW.
pub const MAX_OBJECT_DW: usize = 1 << 18;
/// Both header DWs.
pub const HEADER_DW: usize = 2;

/// Data Object Header 2 for an object of `dw` DWs (2^18 is encoded as 0).
pub const fn header2(dw: usize) -> u32 {
    (dw as u32) & HEADER2_LENGTH_MASK
}
/// The length in DW that Data Object Header 2 states (0 decodes as 2^18).
pub const fn header2_length(h: u32) -> usize {
    match (h & HEADER2_LENGTH_MASK) as usize {
        0 => MAX_OBJECT_DW,
        n => n,
    }
}

// ---------------------------------------------------------------------------
// DOE Discovery (PCIe r6 §6.30.1.1).
// ---------------------------------------------------------------------------

/// The PCI-SIG's Vendor ID, owner of the Discovery protocol.
pub const VENDOR_PCI_SIG: u16 = 0x0001;
/// Data Object Type of DOE Discovery.
pub const TYPE_DISCOVERY: u8 = 0x00;
/// Discovery request DW 2: Index \[7:0\].
pub const fn discovery_request(index: u8) -> u32 {
    index as u32
}
/// The Index of a Discovery request DW.
pub const fn discovery_request_index(dw: u32) -> u8 {
    dw as u8
}
/// Discovery response DW 2: Vendor ID \[15:0\], Data Object Protocol \[23:16\], Next
/// Index \[31:24\] (0 after the last protocol).
pub const fn discovery_response(vendor: u16, protocol: u8, next_index: u8) -> u32 {
    vendor as u32 | (protocol as u32) << 16 | (next_index as u32) << 24
}
/// (vendor, protocol, next index) of a Discovery response DW.
pub const fn discovery_response_fields(dw: u32) -> (u16, u8, u8) {
    (dw as u16, (dw >> 16) as u8, (dw >> 24) as u8)
}

// ---------------------------------------------------------------------------
// CXL Table Access (CXL r3.1 §8.1.11).
// ---------------------------------------------------------------------------

/// The CXL consortium's Vendor ID, owner of the Table Access protocol.
pub const VENDOR_CXL: u16 = 0x1e98;
/// Data Object Type of Table Access (CXL r3.1 Table 8-12).
pub const TYPE_TABLE_ACCESS: u8 = 0x02;
/// Table Access Request/Response Code: Read Entry (CXL r3.1 §8.1.11.1).
pub const TABLE_READ_ENTRY: u8 = 0;
/// Table Type: CDAT.
pub const TABLE_TYPE_CDAT: u8 = 0;
/// The Entry Handle that follows the last entry.
pub const LAST_ENTRY: u16 = 0xffff;

/// Read Entry request DW 2 (CXL r3.1 Table 8-13) and response DW 2 (Table 8-14):
/// code \[7:0\], Table Type \[15:8\], Entry Handle \[31:16\]. In a response the handle is
/// that of the next entry.
pub const fn table_access_dw(code: u8, table_type: u8, handle: u16) -> u32 {
    code as u32 | (table_type as u32) << 8 | (handle as u32) << 16
}
/// (code, table type, entry handle) of a Table Access request or response DW.
pub const fn table_access_fields(dw: u32) -> (u8, u8, u16) {
    (dw as u8, (dw >> 8) as u8, (dw >> 16) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_encode_as_the_spec_draws_them() {
        assert_eq!(header1(VENDOR_CXL, TYPE_TABLE_ACCESS), 0x0002_1e98);
        assert_eq!(header1_vendor(0x0002_1e98), 0x1e98);
        assert_eq!(header1_type(0x0002_1e98), 2);
        assert_eq!(header2(3), 3);
        assert_eq!(header2(1 << 18), 0);
        assert_eq!(header2_length(0), 1 << 18);
        assert_eq!(header2_length(0xfffc_0005), 5);
    }

    #[test]
    fn protocol_dwords() {
        assert_eq!(discovery_response(0x1e98, 2, 0), 0x0002_1e98);
        assert_eq!(discovery_response_fields(0x0100_0001), (1, 0, 1));
        assert_eq!(table_access_dw(0, 0, 0xffff), 0xffff_0000);
        assert_eq!(table_access_fields(0x0003_0100), (0, 1, 3));
    }
}
