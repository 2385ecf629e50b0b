//! Mailbox return codes as a type (CXL r3.1 §8.2.8.4.5.1, Table 8-34: the values of
//! Mailbox Status bits \[47:32\]), for hooks that fail a command: every code but
//! Success and Background Command Started, which are not failures.

use cxl_regs::mailbox as mb;
use thiserror::Error;

/// A return code that fails a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum ReturnCode {
    #[error("Invalid Input")]
    InvalidInput,
    #[error("Unsupported")]
    Unsupported,
    #[error("Internal Error")]
    InternalError,
    #[error("Retry Required")]
    RetryRequired,
    #[error("Busy")]
    Busy,
    #[error("Media Disabled")]
    MediaDisabled,
    #[error("FW Transfer in Progress")]
    FwTransferInProgress,
    #[error("FW Transfer Out of Order")]
    FwTransferOutOfOrder,
    #[error("FW Verification Failed")]
    FwVerificationFailed,
    #[error("Invalid Slot")]
    InvalidSlot,
    #[error("Activation Failed, FW Rolled Back")]
    ActivationFailedRolledBack,
    #[error("Activation Failed, Cold Reset Required")]
    ActivationFailedColdReset,
    #[error("Invalid Handle")]
    InvalidHandle,
    #[error("Invalid Physical Address")]
    InvalidPhysicalAddress,
    #[error("Inject Poison Limit Reached")]
    InjectPoisonLimit,
    #[error("Permanent Media Failure")]
    PermanentMediaFailure,
    #[error("Aborted")]
    Aborted,
    #[error("Invalid Security State")]
    InvalidSecurityState,
    #[error("Incorrect Passphrase")]
    IncorrectPassphrase,
    #[error("Unsupported Mailbox or CCI")]
    UnsupportedMailbox,
    #[error("Invalid Payload Length")]
    InvalidPayloadLength,
    #[error("Invalid Log")]
    InvalidLog,
}

/// Every failing code with its value and its name in `snake_case` (the name the
/// out-of-process firmware protocol uses).
const TABLE: [(ReturnCode, u16, &str); 22] = [
    (
        ReturnCode::InvalidInput,
        mb::RC_INVALID_INPUT,
        "invalid_input",
    ),
    (ReturnCode::Unsupported, mb::RC_UNSUPPORTED, "unsupported"),
    (
        ReturnCode::InternalError,
        mb::RC_INTERNAL_ERROR,
        "internal_error",
    ),
    (
        ReturnCode::RetryRequired,
        mb::RC_RETRY_REQUIRED,
        "retry_required",
    ),
    (ReturnCode::Busy, mb::RC_BUSY, "busy"),
    (
        ReturnCode::MediaDisabled,
        mb::RC_MEDIA_DISABLED,
        "media_disabled",
    ),
    (
        ReturnCode::FwTransferInProgress,
        mb::RC_FW_TRANSFER_IN_PROGRESS,
        "fw_transfer_in_progress",
    ),
    (
        ReturnCode::FwTransferOutOfOrder,
        mb::RC_FW_TRANSFER_OUT_OF_ORDER,
        "fw_transfer_out_of_order",
    ),
    (
        ReturnCode::FwVerificationFailed,
        mb::RC_FW_VERIFICATION_FAILED,
        "fw_verification_failed",
    ),
    (ReturnCode::InvalidSlot, mb::RC_INVALID_SLOT, "invalid_slot"),
    (
        ReturnCode::ActivationFailedRolledBack,
        mb::RC_ACTIVATION_FAILED_ROLLED_BACK,
        "activation_failed_rolled_back",
    ),
    (
        ReturnCode::ActivationFailedColdReset,
        mb::RC_ACTIVATION_FAILED_COLD_RESET,
        "activation_failed_cold_reset",
    ),
    (
        ReturnCode::InvalidHandle,
        mb::RC_INVALID_HANDLE,
        "invalid_handle",
    ),
    (
        ReturnCode::InvalidPhysicalAddress,
        mb::RC_INVALID_PHYSICAL_ADDRESS,
        "invalid_physical_address",
    ),
    (
        ReturnCode::InjectPoisonLimit,
        mb::RC_INJECT_POISON_LIMIT,
        "inject_poison_limit",
    ),
    (
        ReturnCode::PermanentMediaFailure,
        mb::RC_PERMANENT_MEDIA_FAILURE,
        "permanent_media_failure",
    ),
    (ReturnCode::Aborted, mb::RC_ABORTED, "aborted"),
    (
        ReturnCode::InvalidSecurityState,
        mb::RC_INVALID_SECURITY_STATE,
        "invalid_security_state",
    ),
    (
        ReturnCode::IncorrectPassphrase,
        mb::RC_INCORRECT_PASSPHRASE,
        "incorrect_passphrase",
    ),
    (
        ReturnCode::UnsupportedMailbox,
        mb::RC_UNSUPPORTED_MAILBOX,
        "unsupported_mailbox",
    ),
    (
        ReturnCode::InvalidPayloadLength,
        mb::RC_INVALID_PAYLOAD_LENGTH,
        "invalid_payload_length",
    ),
    (ReturnCode::InvalidLog, mb::RC_INVALID_LOG, "invalid_log"),
];

impl ReturnCode {
    /// The value in Mailbox Status \[47:32\].
    pub fn code(self) -> u16 {
        TABLE
            .iter()
            .find(|(rc, _, _)| *rc == self)
            .map_or(mb::RC_INTERNAL_ERROR, |(_, c, _)| *c)
    }

    /// The failing code with value `code`; `None` for Success, Background Command
    /// Started and values the table does not define.
    pub fn from_code(code: u16) -> Option<Self> {
        TABLE
            .iter()
            .find(|(_, c, _)| *c == code)
            .map(|(rc, _, _)| *rc)
    }

    /// The code's name in `snake_case`, e.g. `invalid_input`.
    pub fn name(self) -> &'static str {
        TABLE
            .iter()
            .find(|(rc, _, _)| *rc == self)
            .map_or("internal_error", |(_, _, n)| *n)
    }

    /// The code named `name` (as [`ReturnCode::name`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        TABLE
            .iter()
            .find(|(_, _, n)| *n == name)
            .map(|(rc, _, _)| *rc)
    }

    /// Every failing code.
    pub fn all() -> impl Iterator<Item = ReturnCode> {
        TABLE.iter().map(|(rc, _, _)| *rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_table_8_34() {
        // Values from CXL r3.1 Table 8-34, written out independently of cxl-regs.
        let expect: [(ReturnCode, u16); 6] = [
            (ReturnCode::InvalidInput, 2),
            (ReturnCode::Unsupported, 3),
            (ReturnCode::MediaDisabled, 7),
            (ReturnCode::FwVerificationFailed, 0x0a),
            (ReturnCode::InvalidPayloadLength, 0x16),
            (ReturnCode::InvalidLog, 0x17),
        ];
        for (rc, v) in expect {
            assert_eq!(rc.code(), v, "{rc}");
            assert_eq!(ReturnCode::from_code(v), Some(rc));
        }
        assert_eq!(ReturnCode::from_code(0), None, "Success is no failure");
        assert_eq!(ReturnCode::from_code(1), None, "nor Background Started");
        assert_eq!(ReturnCode::from_code(0x99), None);
        // Each code once, each name once, and the names round-trip.
        let all: Vec<ReturnCode> = ReturnCode::all().collect();
        assert_eq!(all.len(), 22);
        for rc in &all {
            assert_eq!(ReturnCode::from_name(rc.name()), Some(*rc));
            assert_eq!(ReturnCode::from_code(rc.code()), Some(*rc));
        }
        let mut values: Vec<u16> = all.iter().map(|r| r.code()).collect();
        values.sort_unstable();
        assert_eq!(values, (2..=0x17).collect::<Vec<u16>>());
    }
}
