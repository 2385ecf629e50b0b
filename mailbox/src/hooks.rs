//! What the mailbox asks of the device around it: its firmware's answers to vendor
//! opcodes, the fields of the identity and status reports, the acceptance of
//! firmware updates, and writes to media.
//!
//! Every hook but [`VendorHooks::vendor_command`] has a default that is this
//! mailbox's own behaviour, so a device overrides only what it models.

use crate::{FwError, HealthInfo, ReturnCode};

/// Hooks the mailbox calls out to (the device's firmware and memory).
pub trait VendorHooks {
    /// A vendor-specific opcode (0xC000..=0xFFFF, CXL r3.1 §8.2.9: Table 8-37 leaves
    /// command set 0xC0..0xFF to vendors). Fills `output` (at most the payload size,
    /// else the command fails with Internal Error) and succeeds, or fails the command
    /// with a return code (then `output` is discarded).
    fn vendor_command(
        &mut self,
        opcode: u16,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode>;

    /// Clear Poison (CXL r3.1 §8.2.9.9.4.3): write the command's 64 bytes of data to
    /// device memory at `dpa` (64-byte aligned, within capacity). A failure fails the
    /// command and keeps the poison. The default does nothing and succeeds: a device
    /// model with memory must override it.
    fn media_write(&mut self, _dpa: u64, _data: &[u8]) -> Result<(), ReturnCode> {
        Ok(())
    }

    /// Identify Memory Device (CXL r3.1 §8.2.9.9.1.1): `fields` holds what the
    /// mailbox reports; change any of them.
    fn identify(&mut self, _fields: &mut Identify) {}

    /// Get Health Info (CXL r3.1 §8.2.9.9.3.1): `health` holds what the mailbox
    /// reports (the values fault injection set); change any of them.
    fn health_info(&mut self, _health: &mut HealthInfo) {}

    /// Get FW Info (CXL r3.1 §8.2.9.3.1): `info` holds the slots as the mailbox keeps
    /// them; change what is reported (the slots themselves stay as they are).
    fn fw_info(&mut self, _info: &mut FwInfo) {}

    /// One part of Transfer FW (CXL r3.1 §8.2.9.3.2) that passed the mailbox's own
    /// checks (action, slot, order, size), before it takes effect: accept it, or
    /// refuse it with the error the command then fails with (typically
    /// [`FwError::Verification`] for an image the device's firmware rejects). A
    /// refused part ends a transfer in parts (the next must start with Initiate). An
    /// Abort is announced here too; its result is ignored.
    fn transfer_fw(&mut self, _part: &FwPart<'_>) -> Result<(), FwError> {
        Ok(())
    }

    /// Activate FW (CXL r3.1 §8.2.9.3.3) of a slot that holds firmware, before it
    /// takes effect: `online` is an online activation, else one at the next cold
    /// reset. Refuse with [`FwError::ActivationRolledBack`] or
    /// [`FwError::ActivationNeedsColdReset`] (the spec's activation failures), or any
    /// other error.
    fn activate_fw(&mut self, _slot: u8, _online: bool) -> Result<(), FwError> {
        Ok(())
    }
}

/// Hooks that support nothing: every vendor opcode is Unsupported.
pub struct NoVendorHooks;

impl VendorHooks for NoVendorHooks {
    fn vendor_command(
        &mut self,
        _opcode: u16,
        _input: &[u8],
        _output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode> {
        Err(ReturnCode::Unsupported)
    }
}

/// The fields of the Identify Memory Device output (CXL r3.1 §8.2.9.9.1.1, Table
/// 8-127). Capacities are in units of 256 MiB, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identify {
    /// FW Revision: the running firmware's revision, ASCII, zero padded.
    pub fw_revision: [u8; 16],
    pub total_capacity: u64,
    pub volatile_only_capacity: u64,
    pub persistent_only_capacity: u64,
    /// Partition Alignment; 0: the device cannot be partitioned.
    pub partition_alignment: u64,
    /// Informational, Warning, Failure and Fatal Event Log Size (records).
    pub event_log_sizes: [u16; 4],
    /// LSA Size in bytes.
    pub lsa_size: u32,
    /// Poison List Maximum Media Error Records (24 bits).
    pub poison_list_max: u32,
    /// Inject Poison Limit; 0: no limit.
    pub inject_poison_limit: u16,
    /// Poison Handling Capabilities.
    pub poison_caps: u8,
    /// QoS Telemetry Capabilities.
    pub qos_telemetry_caps: u8,
}

/// What Get FW Info reports (CXL r3.1 §8.2.9.3.1, Table 8-63).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwInfo {
    /// FW Slots Supported (1..=4).
    pub slots_supported: u8,
    /// The active slot (1-based).
    pub active_slot: u8,
    /// The slot activated at the next cold reset; 0: none.
    pub staged_slot: u8,
    /// FW Activation Capabilities (bit 0: online activation).
    pub activation_caps: u8,
    /// Slot 1..4 FW Revision; all zeros for an empty slot.
    pub revisions: [[u8; 16]; 4],
}

/// The Action of a Transfer FW part (CXL r3.1 Table 8-64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwAction {
    /// The whole package in one part; stored into `slot`.
    Full,
    /// The first part of a package.
    Initiate,
    /// A middle part.
    Continue,
    /// The last part; the package is stored into `slot`.
    End,
    /// Abandon a partial transfer.
    Abort,
}

impl FwAction {
    /// Its name in `snake_case` (the out-of-process firmware protocol's spelling).
    pub fn name(self) -> &'static str {
        match self {
            FwAction::Full => "full",
            FwAction::Initiate => "initiate",
            FwAction::Continue => "continue",
            FwAction::End => "end",
            FwAction::Abort => "abort",
        }
    }
}

/// One Transfer FW part, as [`VendorHooks::transfer_fw`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwPart<'a> {
    pub action: FwAction,
    /// Target slot (meaningful for Full and End).
    pub slot: u8,
    /// Byte offset of `data` in the package.
    pub offset: usize,
    pub data: &'a [u8],
}
