//! Mailbox registers (CXL r3.1 §8.2.8.4), command opcodes (§8.2.9, Table 8-37 and
//! Table 8-126) and return codes (§8.2.8.4.5.1, Table 8-34).

/// Offsets inside the mailbox register block (CXL r3.1 §8.2.8.4, Figure 8-9).
pub const CAPABILITIES: u32 = 0x00;
pub const CONTROL: u32 = 0x04;
pub const COMMAND: u32 = 0x08;
pub const STATUS: u32 = 0x10;
pub const BG_CMD_STATUS: u32 = 0x18;
pub const PAYLOAD: u32 = 0x20;

/// Mailbox Capabilities (§8.2.8.4.3): payload size log2 [4:0].
pub const CAP_PAYLOAD_SIZE_MASK: u32 = 0x1f;
/// Background Command Complete Interrupt Capable, bit 6.
pub const CAP_BG_IRQ: u32 = 1 << 6;
/// Interrupt Message Number [10:7].
pub const CAP_MSGNUM_SHIFT: u32 = 7;
pub const CAP_MSGNUM_MASK: u32 = 0xf << 7;

/// Mailbox Control (§8.2.8.4.4): Doorbell bit 0.
pub const CTRL_DOORBELL: u32 = 1 << 0;
/// Mailbox Interrupt Enable bit 1 (MB-based completion interrupts are not supported by
/// this device, the bit reads 0).
pub const CTRL_MB_IRQ: u32 = 1 << 1;
/// Background Command Complete Interrupt Enable bit 2.
pub const CTRL_BG_IRQ: u32 = 1 << 2;

/// Command Register (§8.2.8.4.5): opcode [15:0], payload length [36:16].
pub const CMD_OPCODE_MASK: u64 = 0xffff;
pub const CMD_LEN_SHIFT: u32 = 16;
pub const CMD_LEN_MASK: u64 = 0x1f_ffff << 16;

/// Status (§8.2.8.4.6): background operation bit 0, return code [47:32],
/// vendor-specific extended status [63:48].
pub const STATUS_BG_OPERATION: u64 = 1 << 0;
pub const STATUS_RC_SHIFT: u32 = 32;
pub const STATUS_RC_MASK: u64 = 0xffff << 32;

/// Background Command Status (§8.2.8.4.7): opcode [15:0], percent complete [22:16],
/// return code [47:32], vendor-specific extended status [63:48].
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
    0x0d, 0xa9, 0xc0, 0xb5, 0xbf, 0x41, 0x4b, 0x78, 0x8f, 0x79, 0x96, 0xb1, 0x62, 0x3b, 0x3f,
    0x17,
];

/// Identify Memory Device output length (§8.2.9.9.1.1): 0x43 bytes, through QoS
/// Telemetry Capabilities.
pub const IDENTIFY_OUTPUT_LEN: usize = 0x43;
/// Capacity unit of Identify and partition fields: 256 MiB.
pub const CAPACITY_UNIT: u64 = 256 << 20;
