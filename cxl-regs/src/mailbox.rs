//! Mailbox registers (CXL r3.1 §8.2.8.4), command opcodes (§8.2.9, Table 8-37 and
//! Table 8-126) and return codes (§8.2.8.4.5.1, Table 8-34).

/// Offsets inside the mailbox register block (CXL r3.1 §8.2.8.4, Figure 8-9).
pub const CAPABILITIES: u32 = 0x00;
pub const CONTROL: u32 = 0x04;
pub const COMMAND: u32 = 0x08;
pub const STATUS: u32 = 0x10;
pub const BG_CMD_STATUS: u32 = 0x18;
pub const PAYLOAD: u32 = 0x20;

/// Mailbox Capabilities (§8.2.8.4.3): payload size log2 \[4:0\].
pub const CAP_PAYLOAD_SIZE_MASK: u32 = 0x1f;
/// Background Command Complete Interrupt Capable, bit 6.
pub const CAP_BG_IRQ: u32 = 1 << 6;
/// Interrupt Message Number \[10:7\].
pub const CAP_MSGNUM_SHIFT: u32 = 7;
pub const CAP_MSGNUM_MASK: u32 = 0xf << 7;

/// Mailbox Control (§8.2.8.4.4): Doorbell bit 0.
pub const CTRL_DOORBELL: u32 = 1 << 0;
/// Mailbox Interrupt Enable bit 1 (MB-based completion interrupts are not supported by
/// this device, the bit reads 0).
pub const CTRL_MB_IRQ: u32 = 1 << 1;
/// Background Command Complete Interrupt Enable bit 2.
pub const CTRL_BG_IRQ: u32 = 1 << 2;

/// Command Register (§8.2.8.4.5): opcode \[15:0\], payload length \[36:16\].
pub const CMD_OPCODE_MASK: u64 = 0xffff;
pub const CMD_LEN_SHIFT: u32 = 16;
pub const CMD_LEN_MASK: u64 = 0x1f_ffff << 16;

/// Status (§8.2.8.4.6): background operation bit 0, return code \[47:32\],
/// vendor-specific extended status \[63:48\].
pub const STATUS_BG_OPERATION: u64 = 1 << 0;
pub const STATUS_RC_SHIFT: u32 = 32;
pub const STATUS_RC_MASK: u64 = 0xffff << 32;

/// Background Command Status (§8.2.8.4.7): opcode \[15:0\], percent complete \[22:16\],
/// return code \[47:32\], vendor-specific extended status \[63:48\].
pub const BG_OPCODE_MASK: u64 = 0xffff;
pub const BG_PERCENT_SHIFT: u32 = 16;
pub const BG_PERCENT_MASK: u64 = 0x7f << 16;
pub const BG_RC_SHIFT: u32 = 32;

/// Return codes (§8.2.8.4.5.1, Table 8-34).
pub const RC_SUCCESS: u16 = 0x0000;
pub const RC_BACKGROUND_STARTED: u16 = 0x0001;
pub const RC_INVALID_INPUT: u16 = 0x0002;
pub const RC_UNSUPPORTED: u16 = 0x0003;
pub const RC_INTERNAL_ERROR: u16 = 0x0004;
pub const RC_RETRY_REQUIRED: u16 = 0x0005;
pub const RC_BUSY: u16 = 0x0006;
pub const RC_MEDIA_DISABLED: u16 = 0x0007;
pub const RC_FW_TRANSFER_IN_PROGRESS: u16 = 0x0008;
pub const RC_FW_TRANSFER_OUT_OF_ORDER: u16 = 0x0009;
pub const RC_FW_VERIFICATION_FAILED: u16 = 0x000a;
pub const RC_INVALID_SLOT: u16 = 0x000b;
pub const RC_ACTIVATION_FAILED_ROLLED_BACK: u16 = 0x000c;
pub const RC_ACTIVATION_FAILED_COLD_RESET: u16 = 0x000d;
pub const RC_INVALID_HANDLE: u16 = 0x000e;
pub const RC_INVALID_PHYSICAL_ADDRESS: u16 = 0x000f;
pub const RC_INJECT_POISON_LIMIT: u16 = 0x0010;
pub const RC_PERMANENT_MEDIA_FAILURE: u16 = 0x0011;
pub const RC_ABORTED: u16 = 0x0012;
pub const RC_INVALID_SECURITY_STATE: u16 = 0x0013;
pub const RC_INCORRECT_PASSPHRASE: u16 = 0x0014;
pub const RC_UNSUPPORTED_MAILBOX: u16 = 0x0015;
pub const RC_INVALID_PAYLOAD_LENGTH: u16 = 0x0016;

/// Command opcodes (§8.2.9, Table 8-37; memory device commands Table 8-126).
pub const OP_GET_EVENT_RECORDS: u16 = 0x0100;
pub const OP_CLEAR_EVENT_RECORDS: u16 = 0x0101;
pub const OP_GET_EVENT_INTERRUPT_POLICY: u16 = 0x0102;
pub const OP_SET_EVENT_INTERRUPT_POLICY: u16 = 0x0103;
pub const OP_GET_FW_INFO: u16 = 0x0200;
pub const OP_TRANSFER_FW: u16 = 0x0201;
pub const OP_ACTIVATE_FW: u16 = 0x0202;
pub const OP_GET_TIMESTAMP: u16 = 0x0300;
pub const OP_SET_TIMESTAMP: u16 = 0x0301;
pub const OP_GET_SUPPORTED_LOGS: u16 = 0x0400;
pub const OP_GET_LOG: u16 = 0x0401;
pub const OP_IDENTIFY_MEMORY_DEVICE: u16 = 0x4000;
pub const OP_GET_PARTITION_INFO: u16 = 0x4100;
pub const OP_GET_LSA: u16 = 0x4102;
pub const OP_SET_LSA: u16 = 0x4103;
pub const OP_GET_HEALTH_INFO: u16 = 0x4200;
pub const OP_GET_POISON_LIST: u16 = 0x4300;
pub const OP_INJECT_POISON: u16 = 0x4301;
pub const OP_CLEAR_POISON: u16 = 0x4302;
pub const OP_SANITIZE: u16 = 0x4400;
/// First vendor-specific opcode.
pub const OP_VENDOR_FIRST: u16 = 0xc000;

/// Command Effects Log UUID (§8.2.9.5.2.1, Table 8-67):
/// 0da9c0b5-bf41-4b78-8f79-96b1623b3f17, in the byte order it appears on the wire.
pub const CEL_UUID: [u8; 16] = [
    0x0d, 0xa9, 0xc0, 0xb5, 0xbf, 0x41, 0x4b, 0x78, 0x8f, 0x79, 0x96, 0xb1, 0x62, 0x3b, 0x3f, 0x17,
];

/// Identify Memory Device output length (§8.2.9.9.1.1): 0x43 bytes, through QoS
/// Telemetry Capabilities.
pub const IDENTIFY_OUTPUT_LEN: usize = 0x43;
/// Capacity unit of Identify and partition fields: 256 MiB.
pub const CAPACITY_UNIT: u64 = 256 << 20;
/// Invalid Log (§8.2.8.4.5.1): the Get Log UUID names no supported log.
pub const RC_INVALID_LOG: u16 = 0x0017;

/// Mailbox Capabilities (§8.2.8.4.3): Mailbox Doorbell (MB) Interrupt Capable, bit 5.
/// This device does not set it, so [`CTRL_MB_IRQ`] is reserved and reads 0.
pub const CAP_MB_IRQ: u32 = 1 << 5;
/// Command register: payload length field width (§8.2.8.4.5): 21 bits, \[36:16\].
pub const CMD_LEN_MAX: u32 = 0x1f_ffff;
/// Background Command Status register (§8.2.8.4.7): return code mask, \[47:32\].
pub const BG_RC_MASK: u64 = 0xffff << 32;
/// Smallest and largest payload size, log2 (§8.2.8.4.3: 256 B .. 1 MiB).
pub const PAYLOAD_LOG2_MIN: u32 = 8;
pub const PAYLOAD_LOG2_MAX: u32 = 20;

/// Command Effects Log entry, Command Effect field bits (CXL r3.1 §8.2.9.5.2.1,
///).
pub mod effects {
    /// Configuration Change after Cold Reset.
    pub const CONFIG_CHANGE_COLD_RESET: u16 = 1 << 0;
    /// Immediate Configuration Change.
    pub const IMMEDIATE_CONFIG_CHANGE: u16 = 1 << 1;
    /// Immediate Data Change.
    pub const IMMEDIATE_DATA_CHANGE: u16 = 1 << 2;
    /// Immediate Policy Change.
    pub const IMMEDIATE_POLICY_CHANGE: u16 = 1 << 3;
    /// Immediate Log Change.
    pub const IMMEDIATE_LOG_CHANGE: u16 = 1 << 4;
    /// Security State Change.
    pub const SECURITY_STATE_CHANGE: u16 = 1 << 5;
    /// Background Operation.
    pub const BACKGROUND_OPERATION: u16 = 1 << 6;
    /// Secondary Mailbox Supported.
    pub const SECONDARY_MAILBOX: u16 = 1 << 7;
}

/// Command Effects Log layout (§8.2.9.5.2.1): an array of 4-byte
/// entries, each le16 opcode then le16 command effect.
pub mod cel {
    pub const ENTRY_LEN: usize = 4;
    pub const OPCODE: usize = 0x0;
    pub const EFFECT: usize = 0x2;
}

/// Get Event Records (§8.2.9.2.2). Input: one byte, the Event Log type; output:
/// a header, then event records.
pub mod get_event_records {
    /// Input length and field.
    pub const IN_LEN: usize = 1;
    pub const IN_LOG: usize = 0x0;
    /// Event Log type values.
    pub const LOG_INFORMATIONAL: u8 = 0;
    pub const LOG_WARNING: u8 = 1;
    pub const LOG_FAILURE: u8 = 2;
    pub const LOG_FATAL: u8 = 3;
    pub const LOG_DYNAMIC_CAPACITY: u8 = 4;
    /// Output: Flags (1 byte).
    pub const OUT_FLAGS: usize = 0x00;
    /// Flags bit 0: Overflow.
    pub const FLAG_OVERFLOW: u8 = 1 << 0;
    /// Flags bit 1: More Event Records.
    pub const FLAG_MORE_RECORDS: u8 = 1 << 1;
    /// Output: Overflow Error Count (le16).
    pub const OUT_OVERFLOW_COUNT: usize = 0x02;
    /// Output: First Overflow Event Timestamp (le64).
    pub const OUT_FIRST_OVERFLOW_TS: usize = 0x04;
    /// Output: Last Overflow Event Timestamp (le64).
    pub const OUT_LAST_OVERFLOW_TS: usize = 0x0c;
    /// Output: Event Record Count (le16).
    pub const OUT_RECORD_COUNT: usize = 0x14;
    /// Output: first event record (records are [`super::event_record::LEN`] bytes).
    pub const OUT_RECORDS: usize = 0x20;
}

/// Common Event Record (§8.2.9.2.1), 128 bytes.
pub mod event_record {
    pub const LEN: usize = 0x80;
    /// Event Record Identifier (UUID, 16 bytes).
    pub const UUID: usize = 0x00;
    /// Event Record Length (1 byte, 0x80).
    pub const LENGTH: usize = 0x10;
    /// Event Record Flags (3 bytes).
    pub const FLAGS: usize = 0x11;
    /// Flags \[1:0\]: Event Record Severity (0 informational .. 3 fatal).
    pub const FLAG_SEVERITY_MASK: u32 = 0x3;
    /// Flags bit 2: Permanent Condition; 3: Maintenance Needed; 4: Performance
    /// Degraded; 5: Hardware Replacement Needed.
    pub const FLAG_PERMANENT: u32 = 1 << 2;
    pub const FLAG_MAINTENANCE_NEEDED: u32 = 1 << 3;
    pub const FLAG_PERFORMANCE_DEGRADED: u32 = 1 << 4;
    pub const FLAG_HW_REPLACEMENT: u32 = 1 << 5;
    /// Flags bits this device reports (the rest are reserved and read 0).
    pub const FLAGS_DEFINED: u32 = 0x3f;
    /// Event Record Handle (le16).
    pub const HANDLE: usize = 0x14;
    /// Related Event Record Handle (le16).
    pub const RELATED_HANDLE: usize = 0x16;
    /// Event Record Timestamp (le64).
    pub const TIMESTAMP: usize = 0x18;
    /// Maintenance Operation Class (1 byte).
    pub const MAINT_OP_CLASS: usize = 0x20;
    /// Event Record Data, up to [`DATA_LEN`] bytes.
    pub const DATA: usize = 0x30;
    pub const DATA_LEN: usize = 0x50;
}

/// Clear Event Records input (§8.2.9.2.3).
pub mod clear_event_records {
    /// Event Log (1 byte).
    pub const IN_LOG: usize = 0x00;
    /// Clear Event Flags (1 byte), bit 0: Clear All Events.
    pub const IN_FLAGS: usize = 0x01;
    pub const FLAG_CLEAR_ALL: u8 = 1 << 0;
    /// Number of Event Record Handles (1 byte).
    pub const IN_COUNT: usize = 0x02;
    /// Event Record Handles (le16 each).
    pub const IN_HANDLES: usize = 0x06;
}

/// Get/Set Event Interrupt Policy (§8.2.9.2.4; §8.2.9.2.5):
/// one settings byte per log: Informational, Warning, Failure, Fatal, then (r3.0+)
/// Dynamic Capacity.
pub mod event_interrupt_policy {
    /// Length without the Dynamic Capacity byte (CXL 2.0) and with it (r3.0+).
    pub const LEN_V2: usize = 4;
    pub const LEN: usize = 5;
    pub const INFORMATIONAL: usize = 0;
    pub const WARNING: usize = 1;
    pub const FAILURE: usize = 2;
    pub const FATAL: usize = 3;
    pub const DYNAMIC_CAPACITY: usize = 4;
    /// Settings \[1:0\]: Interrupt Mode.
    pub const MODE_MASK: u8 = 0x3;
    pub const MODE_NONE: u8 = 0;
    pub const MODE_MSI: u8 = 1;
    pub const MODE_FW: u8 = 2;
    /// Settings \[7:4\]: Interrupt Message Number (reported by the device).
    pub const MSGNUM_SHIFT: u32 = 4;
    pub const MSGNUM_MASK: u8 = 0xf0;
}

/// Get FW Info output (§8.2.9.3.1), 0x50 bytes.
pub mod fw_info {
    pub const OUT_LEN: usize = 0x50;
    /// FW Slots Supported (1 byte).
    pub const SLOTS_SUPPORTED: usize = 0x00;
    /// FW Slot Info (1 byte): active slot \[2:0\], staged slot \[5:3\].
    pub const SLOT_INFO: usize = 0x01;
    pub const SLOT_ACTIVE_MASK: u8 = 0x07;
    pub const SLOT_STAGED_SHIFT: u32 = 3;
    /// FW Activation Capabilities (1 byte), bit 0: online activation supported.
    pub const ACTIVATION_CAPS: usize = 0x02;
    pub const CAP_ONLINE_ACTIVATION: u8 = 1 << 0;
    /// Slot 1..4 FW Revision (16 bytes each).
    pub const SLOT1_REVISION: usize = 0x10;
    pub const REVISION_LEN: usize = 0x10;
    /// Largest number of slots the format can describe.
    pub const MAX_SLOTS: u8 = 4;
}

/// Transfer FW input (§8.2.9.3.2).
pub mod transfer_fw {
    /// Action (1 byte).
    pub const ACTION: usize = 0x00;
    pub const ACTION_FULL: u8 = 0;
    pub const ACTION_INITIATE: u8 = 1;
    pub const ACTION_CONTINUE: u8 = 2;
    pub const ACTION_END: u8 = 3;
    pub const ACTION_ABORT: u8 = 4;
    /// Slot (1 byte), used by Full and End.
    pub const SLOT: usize = 0x01;
    /// Offset (le32) in units of [`OFFSET_UNIT`] bytes.
    pub const OFFSET: usize = 0x04;
    pub const OFFSET_UNIT: usize = 128;
    /// Data starts here.
    pub const DATA: usize = 0x80;
}

/// Activate FW input (§8.2.9.3.3).
pub mod activate_fw {
    pub const IN_LEN: usize = 2;
    /// Action: 0 online, 1 on next cold reset.
    pub const ACTION: usize = 0x00;
    pub const ACTION_ONLINE: u8 = 0;
    pub const ACTION_COLD_RESET: u8 = 1;
    pub const SLOT: usize = 0x01;
}

/// Get / Set Timestamp (§8.2.9.4.1, §8.2.9.4.2): one le64, nanoseconds since
/// midnight 1970-01-01 UTC.
pub mod timestamp {
    pub const LEN: usize = 8;
}

/// Get Supported Logs output (§8.2.9.5.1).
pub mod supported_logs {
    /// Number of Supported Log Entries (le16).
    pub const OUT_COUNT: usize = 0x00;
    /// First entry.
    pub const OUT_ENTRIES: usize = 0x08;
    /// Entry: Log Identifier (UUID, 16 bytes), Log Size (le32).
    pub const ENTRY_LEN: usize = 0x14;
    pub const ENTRY_UUID: usize = 0x00;
    pub const ENTRY_SIZE: usize = 0x10;
}

/// Get Log input (§8.2.9.5.2).
pub mod get_log {
    pub const IN_LEN: usize = 0x18;
    pub const IN_UUID: usize = 0x00;
    /// Offset (le32) and Length (le32), in bytes.
    pub const IN_OFFSET: usize = 0x10;
    pub const IN_LENGTH: usize = 0x14;
}

/// Identify Memory Device output (§8.2.9.9.1.1).
pub mod identify {
    pub const FW_REVISION: usize = 0x00;
    pub const FW_REVISION_LEN: usize = 0x10;
    pub const TOTAL_CAPACITY: usize = 0x10;
    pub const VOLATILE_ONLY_CAPACITY: usize = 0x18;
    pub const PERSISTENT_ONLY_CAPACITY: usize = 0x20;
    pub const PARTITION_ALIGNMENT: usize = 0x28;
    pub const INFO_EVENT_LOG_SIZE: usize = 0x30;
    pub const WARN_EVENT_LOG_SIZE: usize = 0x32;
    pub const FAILURE_EVENT_LOG_SIZE: usize = 0x34;
    pub const FATAL_EVENT_LOG_SIZE: usize = 0x36;
    pub const LSA_SIZE: usize = 0x38;
    /// Poison List Maximum Media Error Records (3 bytes, le).
    pub const POISON_LIST_MAX: usize = 0x3c;
    pub const INJECT_POISON_LIMIT: usize = 0x3f;
    /// Poison Handling Capabilities: bit 0 Injects Persistent Poison,
    /// bit 1 Scans for Poison.
    pub const POISON_CAPS: usize = 0x41;
    pub const QOS_TELEMETRY_CAPS: usize = 0x42;
}

/// Get Partition Info output (§8.2.9.9.2.1), le64 fields in
/// [`crate::mailbox::CAPACITY_UNIT`] units.
pub mod partition_info {
    pub const OUT_LEN: usize = 0x20;
    pub const ACTIVE_VOLATILE: usize = 0x00;
    pub const ACTIVE_PERSISTENT: usize = 0x08;
    pub const NEXT_VOLATILE: usize = 0x10;
    pub const NEXT_PERSISTENT: usize = 0x18;
}

/// Get LSA (§8.2.9.9.2.3) and Set LSA (§8.2.9.9.2.4).
pub mod lsa {
    /// Get LSA input: Offset (le32), Length (le32).
    pub const GET_IN_LEN: usize = 8;
    pub const GET_OFFSET: usize = 0x0;
    pub const GET_LENGTH: usize = 0x4;
    /// Set LSA input: Offset (le32), 4 reserved bytes, then the data.
    pub const SET_OFFSET: usize = 0x0;
    pub const SET_DATA: usize = 0x8;
}

/// Get Health Info output (§8.2.9.9.3.1).
pub mod health_info {
    pub const OUT_LEN: usize = 0x12;
    /// Health Status: bit 0 Maintenance Needed, 1 Performance Degraded,
    /// 2 Hardware Replacement Needed.
    pub const HEALTH_STATUS: usize = 0x00;
    /// Media Status: 0 normal, 1 not ready, 2 write persistency lost, ...
    pub const MEDIA_STATUS: usize = 0x01;
    pub const ADDITIONAL_STATUS: usize = 0x02;
    pub const LIFE_USED: usize = 0x03;
    /// Device Temperature (le16, degrees Celsius, two's complement).
    pub const DEVICE_TEMPERATURE: usize = 0x04;
    pub const DIRTY_SHUTDOWN_COUNT: usize = 0x06;
    pub const CORRECTED_VOLATILE_ERRORS: usize = 0x0a;
    pub const CORRECTED_PERSISTENT_ERRORS: usize = 0x0e;
}

/// Get Poison List (§8.2.9.9.4.1), Inject Poison
/// (§8.2.9.9.4.2), Clear Poison (§8.2.9.9.4.3).
pub mod poison {
    /// Poison granularity: one cache line.
    pub const LINE: u64 = 64;
    /// Address fields carry a DPA in \[63:6\].
    pub const ADDR_MASK: u64 = !0x3f;
    /// Get Poison List input: Physical Address (le64, \[63:6\]) and Physical Address
    /// Length (le64, in [`LINE`] units).
    pub const GET_IN_LEN: usize = 0x10;
    pub const GET_ADDRESS: usize = 0x00;
    pub const GET_LENGTH: usize = 0x08;
    /// Get Poison List output: Flags (1 byte).
    pub const OUT_FLAGS: usize = 0x00;
    pub const FLAG_MORE_RECORDS: u8 = 1 << 0;
    pub const FLAG_OVERFLOW: u8 = 1 << 1;
    pub const FLAG_SCAN_IN_PROGRESS: u8 = 1 << 2;
    /// Overflow Timestamp (le64).
    pub const OUT_OVERFLOW_TS: usize = 0x02;
    /// Media Error Record Count (le16).
    pub const OUT_COUNT: usize = 0x0a;
    /// First Media Error Record.
    pub const OUT_RECORDS: usize = 0x20;
    /// Media Error Record: Address (le64: DPA \[63:6\], source \[2:0\]), Length (le32,
    /// in [`LINE`] units), 4 reserved bytes.
    pub const RECORD_LEN: usize = 0x10;
    pub const RECORD_ADDRESS: usize = 0x00;
    pub const RECORD_LENGTH: usize = 0x08;
    /// Error Source values in Media Error Address \[2:0\].
    pub const SOURCE_MASK: u64 = 0x7;
    pub const SOURCE_UNKNOWN: u8 = 0;
    pub const SOURCE_EXTERNAL: u8 = 1;
    pub const SOURCE_INTERNAL: u8 = 2;
    pub const SOURCE_INJECTED: u8 = 3;
    pub const SOURCE_VENDOR: u8 = 7;
    /// Inject Poison input: Physical Address (le64).
    pub const INJECT_IN_LEN: usize = 0x08;
    /// Clear Poison input: Physical Address (le64), then 64 bytes of write data.
    pub const CLEAR_IN_LEN: usize = 0x48;
    pub const CLEAR_ADDRESS: usize = 0x00;
    pub const CLEAR_DATA: usize = 0x08;
    /// Identify Poison Handling Capabilities bits.
    pub const CAP_INJECTS_PERSISTENT: u8 = 1 << 0;
    pub const CAP_SCANS: u8 = 1 << 1;
}

/// Status register bits \[4:0\] of the device status capability (§8.2.8.3.1): Event
/// Status, one bit per log that holds records.
pub mod event_status {
    pub const INFORMATIONAL: u32 = 1 << 0;
    pub const WARNING: u32 = 1 << 1;
    pub const FAILURE: u32 = 1 << 2;
    pub const FATAL: u32 = 1 << 3;
    pub const DYNAMIC_CAPACITY: u32 = 1 << 4;
}
