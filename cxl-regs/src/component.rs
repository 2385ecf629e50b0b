//! CXL component registers (CXL r3.1 §8.2.3, §8.2.4): the CXL.cache/mem capability
//! array and the RAS and Link capability structures. The HDM Decoder capability is
//! described in [`crate::hdm`].
//!
//! The component register block is 64 KiB: the first 4 KiB hold CXL.io registers
//! (none are defined for a device; they read as zero), and the CXL.cache/mem
//! registers start at +0x1000 (§8.2.3, Table 8-22).

/// Offset of the CXL.cache/mem registers within a component register block.
pub const CACHEMEM_OFFSET: u32 = 0x1000;
/// Size of a component register block.
pub const BLOCK_SIZE: u32 = 0x1_0000;

/// CXL.cache/mem Capability Header (§8.2.4.1), the first dword of the array:
/// CXL_Capability_ID \[15:0\] = 1, CXL_Capability_Version \[19:16\] = 1,
/// CXL_Cache_Mem_Version \[23:20\] = 1, Array_Size \[31:24\] = number of entries that
/// follow.
pub const CAP_ID_ARRAY: u16 = 0x0001;
pub const ARRAY_CAP_VERSION: u8 = 1;
pub const CACHE_MEM_VERSION: u8 = 1;

/// Compose the CXL.cache/mem Capability Header.
pub const fn array_header(entries: u8) -> u32 {
    (CAP_ID_ARRAY as u32)
        | ((ARRAY_CAP_VERSION as u32 & 0xf) << 16)
        | ((CACHE_MEM_VERSION as u32 & 0xf) << 20)
        | ((entries as u32) << 24)
}
/// Array_Size of the capability header.
pub const fn array_size(header: u32) -> u8 {
    (header >> 24) as u8
}

/// A capability array entry (§8.2.4.2 onwards): CXL_Capability_ID \[15:0\],
/// CXL_Capability_Version \[19:16\], pointer \[31:20\] relative to the start of the
/// CXL.cache/mem registers.
pub const fn entry(id: u16, version: u8, pointer: u32) -> u32 {
    (id as u32) | (((version & 0xf) as u32) << 16) | ((pointer & 0xfff) << 20)
}
pub const fn entry_id(entry: u32) -> u16 {
    (entry & 0xffff) as u16
}
pub const fn entry_version(entry: u32) -> u8 {
    ((entry >> 16) & 0xf) as u8
}
pub const fn entry_pointer(entry: u32) -> u32 {
    entry >> 20
}

/// CXL.cache/mem capability IDs (§8.2.4, Table 8-22).
pub const CAP_ID_RAS: u16 = 0x0002;
pub const CAP_ID_SECURITY: u16 = 0x0003;
pub const CAP_ID_LINK: u16 = 0x0004;
pub const CAP_ID_HDM: u16 = crate::hdm::CAP_ID;
pub const CAP_ID_EXTENDED_SECURITY: u16 = 0x0006;
pub const CAP_ID_IDE: u16 = 0x0007;

/// CXL RAS Capability Structure (CXL r3.1 §8.2.4.17).
pub mod ras {
    /// Capability version in the array entry.
    pub const VERSION: u8 = 3;
    /// Length of the structure (header log included).
    pub const LENGTH: u32 = 0x58;

    /// Uncorrectable Error Status (§8.2.4.17.1), RW1CS.
    pub const UNCORRECTABLE_STATUS: u32 = 0x00;
    /// Uncorrectable Error Mask (§8.2.4.17.2), RWS.
    pub const UNCORRECTABLE_MASK: u32 = 0x04;
    /// Uncorrectable Error Severity (§8.2.4.17.3), RWS: 1 = fatal.
    pub const UNCORRECTABLE_SEVERITY: u32 = 0x08;
    /// Correctable Error Status (§8.2.4.17.4), RW1CS.
    pub const CORRECTABLE_STATUS: u32 = 0x0c;
    /// Correctable Error Mask (§8.2.4.17.5), RWS.
    pub const CORRECTABLE_MASK: u32 = 0x10;
    /// Error Capabilities and Control (§8.2.4.17.6).
    pub const CAP_CONTROL: u32 = 0x14;
    /// Header Log (§8.2.4.17.7): 16 dwords, ROS.
    pub const HEADER_LOG: u32 = 0x18;
    pub const HEADER_LOG_LEN: u32 = 0x40;

    // Uncorrectable Error Status (§8.2.4.17.1), one bit per error; Uncorrectable
    // Error Mask (§8.2.4.17.2) and Severity (§8.2.4.17.3) use the same positions.
    // Bits 13:12 and 31:17 are reserved.
    pub const UE_CACHE_DATA_PARITY: u32 = 1 << 0;
    pub const UE_CACHE_ADDRESS_PARITY: u32 = 1 << 1;
    pub const UE_CACHE_BE_PARITY: u32 = 1 << 2;
    pub const UE_CACHE_DATA_ECC: u32 = 1 << 3;
    pub const UE_MEM_DATA_PARITY: u32 = 1 << 4;
    pub const UE_MEM_ADDRESS_PARITY: u32 = 1 << 5;
    pub const UE_MEM_BE_PARITY: u32 = 1 << 6;
    pub const UE_MEM_DATA_ECC: u32 = 1 << 7;
    pub const UE_REINIT_THRESHOLD: u32 = 1 << 8;
    pub const UE_RSVD_ENCODING_VIOLATION: u32 = 1 << 9;
    /// Poison_Received: poison received on CXL.cache or CXL.mem (with
    /// Poison_Enabled clear).
    pub const UE_POISON_RECEIVED: u32 = 1 << 10;
    pub const UE_RECEIVER_OVERFLOW: u32 = 1 << 11;
    /// Internal_Error: a component-specific uncorrectable error.
    pub const UE_INTERNAL_ERROR: u32 = 1 << 14;
    pub const UE_CXL_IDE_TX_ERROR: u32 = 1 << 15;
    pub const UE_CXL_IDE_RX_ERROR: u32 = 1 << 16;
    /// Every defined uncorrectable error bit: \[11:0\] and \[16:14\].
    pub const UNCORRECTABLE_BITS: u32 = UE_CACHE_DATA_PARITY
        | UE_CACHE_ADDRESS_PARITY
        | UE_CACHE_BE_PARITY
        | UE_CACHE_DATA_ECC
        | UE_MEM_DATA_PARITY
        | UE_MEM_ADDRESS_PARITY
        | UE_MEM_BE_PARITY
        | UE_MEM_DATA_ECC
        | UE_REINIT_THRESHOLD
        | UE_RSVD_ENCODING_VIOLATION
        | UE_POISON_RECEIVED
        | UE_RECEIVER_OVERFLOW
        | UE_INTERNAL_ERROR
        | UE_CXL_IDE_TX_ERROR
        | UE_CXL_IDE_RX_ERROR;

    // Correctable Error Status (§8.2.4.17.4); Correctable Error Mask (§8.2.4.17.5)
    // uses the same positions. Bits 31:7 are reserved.
    pub const CE_CACHE_DATA_ECC: u32 = 1 << 0;
    pub const CE_MEM_DATA_ECC: u32 = 1 << 1;
    pub const CE_CRC_THRESHOLD: u32 = 1 << 2;
    pub const CE_RETRY_THRESHOLD: u32 = 1 << 3;
    pub const CE_CACHE_POISON_RECEIVED: u32 = 1 << 4;
    pub const CE_MEM_POISON_RECEIVED: u32 = 1 << 5;
    pub const CE_PHYSICAL_LAYER_ERROR: u32 = 1 << 6;
    /// Every defined correctable error bit: \[6:0\].
    pub const CORRECTABLE_BITS: u32 = CE_CACHE_DATA_ECC
        | CE_MEM_DATA_ECC
        | CE_CRC_THRESHOLD
        | CE_RETRY_THRESHOLD
        | CE_CACHE_POISON_RECEIVED
        | CE_MEM_POISON_RECEIVED
        | CE_PHYSICAL_LAYER_ERROR;

    /// Error Capabilities and Control (§8.2.4.17.6): First_Error_Pointer \[5:0\]
    /// (ROS), the bit position of the first error reported in Uncorrectable Error
    /// Status.
    pub const FIRST_ERROR_POINTER_MASK: u32 = 0x3f;
    /// Multiple_Header_Recording_Capability, bit 9 (RO).
    pub const MULTIPLE_HEADER_RECORDING: u32 = 1 << 9;
    /// Poison_Enabled, bit 13 (RWS; 1 = received poison is logged as a correctable
    /// error). It defaults to 1 and is hardwired to 1 in a CXL device that is not an
    /// eRCD, such as this one.
    pub const POISON_ENABLED: u32 = 1 << 13;
}

/// CXL Link Capability Structure (CXL r3.1 §8.2.4.19). All registers are 64-bit.
pub mod link {
    pub const VERSION: u8 = 2;
    pub const LENGTH: u32 = 0x38;

    /// CXL Link Layer Capability (§8.2.4.19.1).
    pub const LL_CAPABILITY: u32 = 0x00;
    /// CXL Link Version Supported \[3:0\] and CXL Link Version Received \[7:4\]:
    /// 0010b = CXL 2.0 and later.
    pub const LL_CAP_VERSION_SUPPORTED_MASK: u64 = 0xf;
    pub const LL_CAP_VERSION_RECEIVED_SHIFT: u32 = 4;
    pub const LINK_VERSION_2: u64 = 0b0010;
    /// CXL Link Control and Status (§8.2.4.19.2).
    pub const CONTROL_STATUS: u32 = 0x08;
    /// CXL Link Rx Credit Control (§8.2.4.19.3).
    pub const RX_CREDIT_CONTROL: u32 = 0x10;
    /// CXL Link Rx Credit Return Status (§8.2.4.19.4).
    pub const RX_CREDIT_RETURN_STATUS: u32 = 0x18;
    /// CXL Link Tx Credit Status (§8.2.4.19.5).
    pub const TX_CREDIT_STATUS: u32 = 0x20;
    /// CXL Link Ack Timer Control (§8.2.4.19.6).
    pub const ACK_TIMER_CONTROL: u32 = 0x28;
    /// CXL Link Defeature (§8.2.4.19.7).
    pub const DEFEATURE: u32 = 0x30;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_header_fields() {
        let h = array_header(3);
        assert_eq!(h & 0xffff, 1);
        assert_eq!(array_size(h), 3);
        assert_eq!(h, 0x0311_0001);
    }

    #[test]
    fn entry_fields() {
        let e = entry(CAP_ID_HDM, 3, 0x300);
        assert_eq!(entry_id(e), 5);
        assert_eq!(entry_version(e), 3);
        assert_eq!(entry_pointer(e), 0x300);
    }
}
