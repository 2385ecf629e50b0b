//! Firmware behaviour hooks, for vendors to prototype device firmware.

/// What firmware decides about a decoder commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitDecision {
    Accept,
    Reject,
    /// Accept after this many nanoseconds.
    Delay(u64),
}

/// Firmware hooks with default behaviour.
pub trait Firmware: Send {
    fn name(&self) -> &str;
    /// A decoder that passed the spec checks asks to commit.
    fn on_commit(&mut self, _index: usize, _decoder: &hdm::DecoderState) -> CommitDecision {
        CommitDecision::Accept
    }
    /// The device was reset.
    fn on_reset(&mut self) {}
    /// A vendor-specific mailbox opcode (0xC000..). Returns the return code.
    fn vendor_command(&mut self, _opcode: u16, _input: &[u8], _output: &mut Vec<u8>) -> u16 {
        cxl_regs::mailbox::RC_UNSUPPORTED
    }
    /// Decoders to commit at power-on, as a BIOS would leave them: (index, state).
    fn power_on_decoders(&mut self, _capacity: u64) -> Vec<(usize, hdm::DecoderState)> {
        Vec::new()
    }
    /// Set a parameter at run time (control socket `firmware`).
    fn set_param(&mut self, key: &str, _value: &str) -> Result<(), String> {
        Err(format!("firmware {} has no parameter {key}", self.name()))
    }
}

/// Accept every valid commit, do nothing else.
#[derive(Debug, Default)]
pub struct DefaultFirmware;

impl Firmware for DefaultFirmware {
    fn name(&self) -> &str {
        "default"
    }
}
