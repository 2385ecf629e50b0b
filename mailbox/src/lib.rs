//! CXL mailbox (CXL r3.1 §8.2.8.4): the register-level state machine of a primary
//! mailbox, its command set (§8.2.9), and background operations. Pure logic: time
//! comes in as a nanosecond count, storage behind traits.
//!
//! Register access is by dword: `read(offset, now_ns)` and
//! `write(offset, value, mask, now_ns, hooks)`, where `offset` is relative to the
//! start of the mailbox register block (Capabilities at 0, payload at 0x20) and
//! `mask` has a 1 for every bit the access writes.
//!
//! API CONTRACT (other crates build against this; extend, do not break):
//! `MailboxConfig`, `LsaStorage`, `MemLsa`, `VendorHooks`, `MailboxEvent`,
//! `Mailbox::{new, read, write, poll, reset, block_len, payload, payload_mut,
//! inject_event, inject_poison, poison_list, next_deadline}`, `EventRecord`, `EventLog`.

use thiserror::Error;

/// Errors of LSA storage.
#[derive(Debug, Error)]
pub enum LsaError {
    #[error("LSA access at {offset:#x}+{len:#x} is outside its {size:#x} bytes")]
    OutOfRange { offset: usize, len: usize, size: usize },
    #[error("LSA storage failed: {0}")]
    Storage(String),
}

/// Label Storage Area backing. The backend implements it over a file.
pub trait LsaStorage: Send {
    fn size(&self) -> usize;
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), LsaError>;
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), LsaError>;
    fn flush(&mut self) -> Result<(), LsaError> {
        Ok(())
    }
}

/// An in-memory LSA.
#[derive(Debug, Clone)]
pub struct MemLsa(pub Vec<u8>);

impl LsaStorage for MemLsa {
    fn size(&self) -> usize {
        self.0.len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), LsaError> {
        let size = self.0.len();
        let src = offset
            .checked_add(buf.len())
            .and_then(|end| self.0.get(offset..end))
            .ok_or(LsaError::OutOfRange { offset, len: buf.len(), size })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), LsaError> {
        let size = self.0.len();
        let dst = offset
            .checked_add(data.len())
            .and_then(|end| self.0.get_mut(offset..end))
            .ok_or(LsaError::OutOfRange { offset, len: data.len(), size })?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// Hooks the mailbox calls out to (the device's firmware).
pub trait VendorHooks {
    /// A vendor-specific opcode (0xC000..=0xFFFF). Returns the spec return code
    /// and fills `output`.
    fn vendor_command(&mut self, opcode: u16, input: &[u8], output: &mut Vec<u8>) -> u16;
}

/// Hooks that support nothing: every vendor opcode is Unsupported.
pub struct NoVendorHooks;
impl VendorHooks for NoVendorHooks {
    fn vendor_command(&mut self, _opcode: u16, _input: &[u8], _output: &mut Vec<u8>) -> u16 {
        cxl_regs::mailbox::RC_UNSUPPORTED
    }
}

/// Static configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxConfig {
    /// Total (volatile) capacity in bytes, multiple of 256 MiB.
    pub capacity: u64,
    pub serial: u64,
    /// log2 of the payload size, 8..=20.
    pub payload_log2: u32,
    /// MSI-X message number for background-command completion.
    pub irq_msgnum: u16,
    pub fw_revision: String,
}

/// Something the caller must act on after an access or a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxEvent {
    /// A background command completed and its interrupt is enabled.
    BackgroundComplete,
    /// A new event record was added (event interrupt policy permitting).
    EventAdded,
}

/// A CXL primary mailbox with its command set.
pub struct Mailbox {
    cfg: MailboxConfig,
    lsa: Box<dyn LsaStorage>,
    payload: Vec<u8>,
}

impl Mailbox {
    pub fn new(cfg: MailboxConfig, lsa: Box<dyn LsaStorage>) -> Self {
        let payload = vec![0; 1usize << cfg.payload_log2];
        Self { cfg, lsa, payload }
    }
    /// Length of the register block: 0x20 + payload size.
    pub fn block_len(&self) -> u32 {
        0x20 + (1u32 << self.cfg.payload_log2)
    }
    pub fn config(&self) -> &MailboxConfig {
        &self.cfg
    }
    pub fn lsa(&self) -> &dyn LsaStorage {
        self.lsa.as_ref()
    }
    pub fn lsa_mut(&mut self) -> &mut dyn LsaStorage {
        self.lsa.as_mut()
    }
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
    pub fn read(&mut self, _offset: u32, _now_ns: u64) -> u32 {
        0
    }
    pub fn write(
        &mut self,
        _offset: u32,
        _value: u32,
        _mask: u32,
        _now_ns: u64,
        _hooks: &mut dyn VendorHooks,
    ) -> Option<MailboxEvent> {
        None
    }
    /// Advance background operations to `now_ns`.
    pub fn poll(&mut self, _now_ns: u64) -> Option<MailboxEvent> {
        None
    }
    /// When `poll` next has something to do, if anything.
    pub fn next_deadline(&self) -> Option<u64> {
        None
    }
    pub fn reset(&mut self) {}
    /// Fault injection: add a record to an event log.
    pub fn inject_event(&mut self, _log: EventLog, _record: EventRecord) -> Option<MailboxEvent> {
        None
    }
    /// Fault injection: add a poisoned DPA range (64-byte granular).
    pub fn inject_poison(&mut self, _dpa: u64, _len: u64) -> Result<(), u16> {
        Ok(())
    }
    /// The poison list as (dpa, length) pairs.
    pub fn poison_list(&self) -> Vec<(u64, u64)> {
        Vec::new()
    }
}

/// The four event logs (CXL r3.1 §8.2.9.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLog {
    Informational = 0,
    Warning = 1,
    Failure = 2,
    Fatal = 3,
}

/// A 128-byte event record (CXL r3.1 §8.2.9.2.1, Table 8-43).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Record identifier UUID.
    pub uuid: [u8; 16],
    /// Record flags, bits [1:0] severity etc.
    pub flags: u32,
    /// Vendor/record-specific data (up to 0x50 bytes).
    pub data: Vec<u8>,
}
