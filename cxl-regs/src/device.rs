//! CXL device registers (CXL r3.1 §8.2.8): the Device Capabilities Array, the Device
//! Status registers and the Memory Device Status registers. The mailbox registers
//! are described in [`crate::mailbox`].
//!
//! Offsets are relative to the start of the memory-device register block (Register
//! Locator block id 3).

/// Device Capabilities Array Register (§8.2.8.1), 64-bit at +0:
/// Capability ID \[15:0\] = 0, Version \[23:16\] = 1, Type \[27:24\],
/// Capabilities Count \[47:32\].
pub const CAP_ARRAY: u32 = 0x00;
pub const CAP_ARRAY_ID: u16 = 0x0000;
pub const CAP_ARRAY_VERSION: u8 = 1;
/// Type \[27:24\] (§8.2.8.1): 0 = inferred from the PCI class code, 1 = Memory Device,
/// 2 = Switch Mailbox CCI.
pub const CAP_ARRAY_TYPE_INFERRED: u8 = 0;
pub const CAP_ARRAY_TYPE_MEMORY_DEVICE: u8 = 1;
pub const CAP_ARRAY_TYPE_SWITCH_CCI: u8 = 2;

/// Compose the Device Capabilities Array Register.
pub const fn cap_array(dev_type: u8, count: u16) -> u64 {
    (CAP_ARRAY_ID as u64)
        | ((CAP_ARRAY_VERSION as u64) << 16)
        | (((dev_type & 0xf) as u64) << 24)
        | ((count as u64) << 32)
}
/// Capabilities Count of the array register.
pub const fn cap_array_count(reg: u64) -> u16 {
    (reg >> 32) as u16
}

/// Device Capability Header `k` (k >= 1) at 0x10·k (§8.2.8.2), 16 bytes:
/// dword 0: Capability ID \[15:0\], Version \[23:16\]; dword 1: Offset (from the start
/// of the register block); dword 2: Length; dword 3: reserved.
pub const CAP_HEADER_STRIDE: u32 = 0x10;
pub const fn cap_header_offset(k: u32) -> u32 {
    CAP_HEADER_STRIDE * k
}
pub const CAP_HEADER_ID: u32 = 0x0;
pub const CAP_HEADER_OFFSET: u32 = 0x4;
pub const CAP_HEADER_LENGTH: u32 = 0x8;
/// The first dword of a capability header.
pub const fn cap_header_dword0(id: u16, version: u8) -> u32 {
    (id as u32) | ((version as u32) << 16)
}

/// Device capability IDs (§8.2.8.2.1, Table 8-30).
pub const CAP_ID_DEVICE_STATUS: u16 = 0x0001;
pub const CAP_ID_PRIMARY_MAILBOX: u16 = 0x0002;
pub const CAP_ID_SECONDARY_MAILBOX: u16 = 0x0003;
pub const CAP_ID_MEMDEV_STATUS: u16 = 0x4000;

/// Device Status Registers (§8.2.8.3): Event Status (§8.2.8.3.1), 32-bit at +0,
/// one RO bit per event log holding records.
pub mod status {
    pub const VERSION: u8 = 2;
    pub const LENGTH: u32 = 0x08;
    pub const EVENT_STATUS: u32 = 0x00;
    pub const EVENT_INFORMATIONAL: u32 = 1 << 0;
    pub const EVENT_WARNING: u32 = 1 << 1;
    pub const EVENT_FAILURE: u32 = 1 << 2;
    pub const EVENT_FATAL: u32 = 1 << 3;
    pub const EVENT_DYNAMIC_CAPACITY: u32 = 1 << 4;
}

/// Primary mailbox capability (§8.2.8.4): version and length of its header entry.
pub mod mailbox_cap {
    pub const VERSION: u8 = 1;
}

/// Memory Device Status Registers (§8.2.8.5): Memory Device Status (§8.2.8.5.1),
/// 64-bit at +0.
pub mod memdev {
    pub const VERSION: u8 = 1;
    pub const LENGTH: u32 = 0x08;
    pub const STATUS: u32 = 0x00;
    /// Device Fatal, bit 0.
    pub const STATUS_FATAL: u64 = 1 << 0;
    /// FW Halt, bit 1.
    pub const STATUS_FW_HALT: u64 = 1 << 1;
    /// Media Status \[3:2\]: 00 not ready, 01 ready, 10 error, 11 disabled.
    pub const STATUS_MEDIA_SHIFT: u32 = 2;
    pub const STATUS_MEDIA_MASK: u64 = 0b11 << 2;
    pub const MEDIA_NOT_READY: u64 = 0b00;
    pub const MEDIA_READY: u64 = 0b01;
    pub const MEDIA_ERROR: u64 = 0b10;
    pub const MEDIA_DISABLED: u64 = 0b11;
    /// Mailbox Interface Ready, bit 4.
    pub const STATUS_MAILBOX_READY: u64 = 1 << 4;
    /// Reset Needed \[7:5\].
    pub const STATUS_RESET_NEEDED_SHIFT: u32 = 5;
    pub const STATUS_RESET_NEEDED_MASK: u64 = 0b111 << 5;

    /// The media status field of a status value.
    pub const fn media_status(reg: u64) -> u64 {
        (reg & STATUS_MEDIA_MASK) >> STATUS_MEDIA_SHIFT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_array_fields() {
        let r = cap_array(CAP_ARRAY_TYPE_MEMORY_DEVICE, 3);
        assert_eq!(r & 0xffff, 0);
        assert_eq!((r >> 16) & 0xff, 1);
        assert_eq!((r >> 24) & 0xf, 1);
        assert_eq!(cap_array_count(r), 3);
    }

    #[test]
    fn memdev_media_status() {
        let r = (memdev::MEDIA_READY << memdev::STATUS_MEDIA_SHIFT) | memdev::STATUS_MAILBOX_READY;
        assert_eq!(memdev::media_status(r), memdev::MEDIA_READY);
        assert_eq!(r, 0x14);
    }
}
