//! CXL mailbox (CXL r3.1 §8.2.8.4): the register-level state machine of a primary
//! mailbox, its command set (§8.2.9), and background operations. Pure logic: time
//! comes in as a nanosecond count, storage behind traits.
//!
//! Register access is by dword: `read(offset, now_ns)` and
//! `write(offset, value, mask, now_ns, hooks)`, where `offset` is relative to the
//! start of the mailbox register block (Capabilities at 0, payload at 0x20) and
//! `mask` has a 1 for every bit the access writes. Unaligned offsets are rounded down
//! to the dword; offsets past [`Mailbox::block_len`] read 0 and ignore writes.
//!
//! Execution model:
//! - A write that sets the Control doorbell runs the command synchronously, inside
//!   that write: when it returns, the doorbell already reads 0, Status\[47:32\] holds
//!   the return code and Command\[36:16\] the output length (§8.2.8.4.4..6).
//! - Sanitize (0x4400, §8.2.9.9.5.1) is a background command: it returns Background
//!   Command Started, and Status bit 0 and the Background Command Status register
//!   (§8.2.8.4.7) show it running. The doorbell write hands
//!   [`MailboxEvent::SanitizeStarted`] to the device model, which wipes device
//!   memory (on a worker, if it likes) and reports its progress
//!   ([`Mailbox::sanitize_progress`]) and its end ([`Mailbox::sanitize_wiped`]). The
//!   command completes once the wipe has ended and at least
//!   `sanitize_duration_ns` has passed; its percentage is the smaller of the wipe's
//!   progress and the elapsed share of that duration, at most 99 until it
//!   completes. Completion happens only in [`Mailbox::poll`] or
//!   [`Mailbox::sanitize_wiped`] (not lazily in `read`): call `poll` whenever
//!   [`Mailbox::next_deadline`] passes, and before serving mailbox reads.
//!
//! Payload storage: the payload registers live behind [`PayloadBuf`], a `Vec<u8>` by
//! default. A transport can swap in memory the guest maps directly
//! ([`Mailbox::set_payload_buf`]), so that payload accesses never reach it; only
//! Capabilities, Control, Command, Status and Background Command Status trap.
//!
//! API CONTRACT (other crates build against this; extend, do not break):
//! `MailboxConfig`, `LsaStorage`, `MemLsa`, `VendorHooks`, `MailboxEvent`,
//! `Mailbox::{new, read, write, poll, reset, block_len, payload, payload_mut,
//! inject_event, inject_poison, poison_list, next_deadline}`, `EventRecord`, `EventLog`.
//! Extensions: `PayloadBuf`, `Mailbox::set_payload_buf`. Since the payload may be
//! shared memory, `payload` returns a copy (`Vec<u8>`) and `payload_mut` the
//! `PayloadBuf`; callers that index or take the length compile unchanged.
//! `Mailbox::{sanitize_progress, sanitize_wiped, sanitize_wiping}`: Sanitize's wipe
//! is the device model's, reported back; `MailboxEvent::SanitizeStarted` replaced
//! `SanitizeComplete` (the wipe now comes first, and the completion is an ordinary
//! `BackgroundComplete`). Firmware hooks: `ReturnCode` (a failing return code as a
//! type), `VendorHooks::{identify, health_info, fw_info, transfer_fw, activate_fw}`
//! with `Identify`, `FwInfo`, `FwPart`, `FwAction`; `VendorHooks::vendor_command` and
//! `media_write` return `Result<(), ReturnCode>`; `Mailbox::identify_fields`.

#![forbid(unsafe_code)]

mod commands;
mod events;
mod firmware;
mod hooks;
mod le;
mod lsa;
mod payload;
mod poison;
mod rc;

use cxl_regs::mailbox as mb;

pub use commands::{implemented_commands, CommandInfo};
pub use events::{EventError, EventLog, EventRecord};
pub use firmware::{FwError, MAX_PACKAGE};
pub use hooks::{FwAction, FwInfo, FwPart, Identify, NoVendorHooks, VendorHooks};
pub use lsa::{LsaError, LsaStorage, MemLsa};
pub use payload::PayloadBuf;
pub use poison::{PoisonError, PoisonRecord};
pub use rc::ReturnCode;

use events::EventLogs;
use firmware::Firmware;
use poison::PoisonList;

/// Static configuration. Build it with `..Default::default()` so new fields do not
/// break callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxConfig {
    /// Total (volatile) capacity in bytes, multiple of 256 MiB (Identify reports it
    /// in 256 MiB units, rounded down).
    pub capacity: u64,
    pub serial: u64,
    /// log2 of the payload size, 8..=20 (§8.2.8.4.3); clamped into that range.
    pub payload_log2: u32,
    /// MSI/MSI-X message number for background-command completion (4 bits).
    pub irq_msgnum: u16,
    /// Running firmware revision (Identify, Get FW Info slot 1), up to 16 bytes.
    pub fw_revision: String,
    /// Shortest duration of Sanitize, in nanoseconds: it completes when the device
    /// model's wipe has ended and this much time has passed.
    pub sanitize_duration_ns: u64,
    /// Records each event log holds before it overflows (Identify event log sizes).
    pub event_log_capacity: u16,
    /// MSI/MSI-X message number reported in the event interrupt settings (4 bits).
    pub event_irq_msgnum: u8,
    /// Poison List Maximum Media Error Records (Identify, 24 bits).
    pub poison_list_max: u32,
    /// Inject Poison Limit (Identify); 0 = no limit.
    pub inject_poison_limit: u16,
    /// Firmware slots, 1..=4.
    pub fw_slots: u8,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            capacity: 512 << 20,
            serial: 0,
            payload_log2: cxl_regs::layout::MAILBOX_PAYLOAD_LOG2,
            irq_msgnum: cxl_regs::layout::MSIX_VEC_MAILBOX,
            fw_revision: "cxl-accel 0.1.0".into(),
            sanitize_duration_ns: 200_000_000,
            event_log_capacity: 32,
            event_irq_msgnum: cxl_regs::layout::MSIX_VEC_EVENTS as u8,
            poison_list_max: 256,
            inject_poison_limit: 64,
            fw_slots: 2,
        }
    }
}

/// Something the caller must act on after an access or a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxEvent {
    /// A background command completed and its interrupt is enabled: raise the
    /// mailbox vector (`irq_msgnum`).
    BackgroundComplete,
    /// A new event record was added and its log's interrupt policy is MSI/MSI-X:
    /// raise the event vector (`event_irq_msgnum`).
    EventAdded,
    /// Sanitize started (§8.2.9.9.5.1): the device model must wipe all of device
    /// memory and report the end with [`Mailbox::sanitize_wiped`]; until then the
    /// command stays in progress. Its completion comes later, as
    /// [`MailboxEvent::BackgroundComplete`] when the interrupt is enabled.
    SanitizeStarted,
}

/// Health values reported by Get Health Info (CXL r3.1 §8.2.9.9.3.1). Settable for
/// fault injection through [`Mailbox::health_mut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthInfo {
    pub health_status: u8,
    pub media_status: u8,
    pub additional_status: u8,
    pub life_used: u8,
    /// Degrees Celsius.
    pub temperature: i16,
    pub dirty_shutdowns: u32,
    pub corrected_volatile_errors: u32,
    pub corrected_persistent_errors: u32,
}

impl Default for HealthInfo {
    fn default() -> Self {
        Self {
            health_status: 0,
            media_status: 0,
            additional_status: 0,
            life_used: 0,
            temperature: 35,
            dirty_shutdowns: 0,
            corrected_volatile_errors: 0,
            corrected_persistent_errors: 0,
        }
    }
}

/// Counters for observability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Doorbells rung (commands executed, whatever their result).
    pub commands: u64,
    /// Commands that returned neither Success nor Background Command Started.
    pub failed: u64,
    /// Commands refused with Busy because a background operation ran.
    pub busy: u64,
    pub background_started: u64,
    pub background_completed: u64,
    pub events_injected: u64,
    pub events_dropped: u64,
}

/// A running background operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BgOp {
    opcode: u16,
    start_ns: u64,
    /// It completes no earlier than this.
    end_ns: u64,
    /// Work the device model does for it (Sanitize's wipe), if any.
    media: Option<MediaWork>,
}

/// The device model's share of a background operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaWork {
    /// Running, this far (percent).
    Running(u8),
    /// Ended with this return code.
    Done(u16),
}

impl BgOp {
    /// Whether the operation waits for the device model, whatever the time.
    fn waiting_for_media(&self) -> bool {
        matches!(self.media, Some(MediaWork::Running(_)))
    }
}

/// Background Command Status contents once the last operation finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BgDone {
    opcode: u16,
    rc: u16,
    percent: u8,
}

/// A CXL primary mailbox with its command set.
pub struct Mailbox {
    cfg: MailboxConfig,
    lsa: Box<dyn LsaStorage>,
    /// The payload registers.
    payload: Box<dyn PayloadBuf>,
    /// The running command's input, copied out of the payload (reused).
    input: Vec<u8>,
    /// Output of the running command, reused.
    out: Vec<u8>,
    /// Control register: only Background Command Complete Interrupt Enable is
    /// stored; the doorbell never stays set (commands run within the write).
    control: u32,
    /// Command register: opcode [15:0], payload length [36:16].
    command: u64,
    /// Return code of the last command (Status[47:32]).
    last_rc: u16,
    bg: Option<BgOp>,
    bg_done: BgDone,
    events: EventLogs,
    poison: PoisonList,
    fw: Firmware,
    /// (value set by Set Timestamp, `now_ns` when it was set).
    timestamp: Option<(u64, u64)>,
    health: HealthInfo,
    stats: MailboxStats,
    /// Latest time seen, for stamping injected records.
    now_ns: u64,
}

impl Mailbox {
    pub fn new(mut cfg: MailboxConfig, lsa: Box<dyn LsaStorage>) -> Self {
        cfg.payload_log2 = cfg
            .payload_log2
            .clamp(mb::PAYLOAD_LOG2_MIN, mb::PAYLOAD_LOG2_MAX);
        let payload: Box<dyn PayloadBuf> = Box::new(vec![0u8; 1usize << cfg.payload_log2]);
        let events = EventLogs::new(cfg.event_log_capacity, cfg.event_irq_msgnum);
        let poison = PoisonList::new(cfg.capacity, cfg.poison_list_max, cfg.inject_poison_limit);
        let fw = Firmware::new(cfg.fw_slots, &cfg.fw_revision);
        Self {
            cfg,
            lsa,
            payload,
            input: Vec::new(),
            out: Vec::new(),
            control: 0,
            command: 0,
            last_rc: 0,
            bg: None,
            bg_done: BgDone::default(),
            events,
            poison,
            fw,
            timestamp: None,
            health: HealthInfo::default(),
            stats: MailboxStats::default(),
            now_ns: 0,
        }
    }
    /// Length of the register block: 0x20 + payload size.
    pub fn block_len(&self) -> u32 {
        mb::PAYLOAD + (1u32 << self.cfg.payload_log2)
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
    /// A copy of the payload registers.
    pub fn payload(&self) -> Vec<u8> {
        let mut v = vec![0; self.payload.len()];
        self.payload.read(0, &mut v);
        v
    }
    /// The payload registers' storage.
    pub fn payload_mut(&mut self) -> &mut dyn PayloadBuf {
        self.payload.as_mut()
    }
    /// Move the payload registers into `buf` (for instance memory the guest maps
    /// directly), carrying their current contents over. `buf` must be exactly the
    /// payload size; otherwise it is handed back and nothing changes.
    pub fn set_payload_buf(
        &mut self,
        mut buf: Box<dyn PayloadBuf>,
    ) -> Result<(), Box<dyn PayloadBuf>> {
        if buf.len() != self.payload.len() {
            return Err(buf);
        }
        let current = self.payload();
        if !buf.write(0, &current) {
            return Err(buf);
        }
        self.payload = buf;
        Ok(())
    }
    pub fn stats(&self) -> MailboxStats {
        self.stats
    }
    /// Commands executed since creation (doorbells rung).
    pub fn commands_executed(&self) -> u64 {
        self.stats.commands
    }
    pub fn health(&self) -> &HealthInfo {
        &self.health
    }
    /// Fault injection: change what Get Health Info reports.
    pub fn health_mut(&mut self) -> &mut HealthInfo {
        &mut self.health
    }
    /// Whether a background operation is running.
    pub fn background_busy(&self) -> bool {
        self.bg.is_some()
    }

    /// Mailbox Capabilities register (§8.2.8.4.3).
    fn capabilities(&self) -> u32 {
        (self.cfg.payload_log2 & mb::CAP_PAYLOAD_SIZE_MASK)
            | mb::CAP_BG_IRQ
            | ((u32::from(self.cfg.irq_msgnum) << mb::CAP_MSGNUM_SHIFT) & mb::CAP_MSGNUM_MASK)
    }

    fn bg_irq_enabled(&self) -> bool {
        self.control & mb::CTRL_BG_IRQ != 0
    }

    /// Status register (§8.2.8.4.6).
    fn status(&self) -> u64 {
        let bg = if self.bg.is_some() {
            mb::STATUS_BG_OPERATION
        } else {
            0
        };
        bg | (u64::from(self.last_rc) << mb::STATUS_RC_SHIFT)
    }

    /// Background Command Status register (§8.2.8.4.7) at `now_ns`: while the
    /// operation runs, Percentage Complete is the smaller of the elapsed share of
    /// its duration and the device model's progress, at most 99.
    fn bg_status(&self, now_ns: u64) -> u64 {
        let (opcode, percent, rc) = match self.bg {
            Some(op) => {
                let total = op.end_ns.saturating_sub(op.start_ns).max(1);
                let done = now_ns.saturating_sub(op.start_ns);
                let mut pct = (u128::from(done) * 100 / u128::from(total)).min(99) as u64;
                if let Some(MediaWork::Running(p)) = op.media {
                    pct = pct.min(u64::from(p));
                }
                (op.opcode, pct, 0)
            }
            None => (
                self.bg_done.opcode,
                u64::from(self.bg_done.percent),
                self.bg_done.rc,
            ),
        };
        u64::from(opcode)
            | ((percent << mb::BG_PERCENT_SHIFT) & mb::BG_PERCENT_MASK)
            | (u64::from(rc) << mb::BG_RC_SHIFT)
    }

    /// Read the dword at `offset` of the register block.
    pub fn read(&mut self, offset: u32, now_ns: u64) -> u32 {
        self.now_ns = self.now_ns.max(now_ns);
        let offset = offset & !3;
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match offset {
            mb::CAPABILITIES => self.capabilities(),
            mb::CONTROL => self.control & mb::CTRL_BG_IRQ,
            o if o == mb::COMMAND => lo(self.command),
            o if o == mb::COMMAND + 4 => hi(self.command),
            o if o == mb::STATUS => lo(self.status()),
            o if o == mb::STATUS + 4 => hi(self.status()),
            o if o == mb::BG_CMD_STATUS => lo(self.bg_status(now_ns)),
            o if o == mb::BG_CMD_STATUS + 4 => hi(self.bg_status(now_ns)),
            o if o >= mb::PAYLOAD => self
                .payload
                .read_u32((o - mb::PAYLOAD) as usize)
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// Write the bits of `value` selected by `mask` to the dword at `offset`.
    /// Ringing the doorbell executes the command before this returns.
    pub fn write(
        &mut self,
        offset: u32,
        value: u32,
        mask: u32,
        now_ns: u64,
        hooks: &mut dyn VendorHooks,
    ) -> Option<MailboxEvent> {
        self.now_ns = self.now_ns.max(now_ns);
        let offset = offset & !3;
        let merge = |old: u32| (old & !mask) | (value & mask);
        match offset {
            mb::CONTROL => {
                // Doorbell (bit 0) and BG interrupt enable (bit 2) are writable; the
                // MB doorbell interrupt (bit 1) is reserved because the capability
                // does not advertise it, and the rest is reserved. Bit 2 is plain RW
                // (§8.2.8.4.4): a doorbell write with bit 2 clear, as Linux's
                // `__cxl_pci_mbox_send_cmd` does, also disables the interrupt.
                self.control = merge(self.control) & mb::CTRL_BG_IRQ;
                if value & mask & mb::CTRL_DOORBELL != 0 {
                    if self.ring_doorbell(now_ns, hooks) {
                        return Some(MailboxEvent::SanitizeStarted);
                    }
                    return self.poll(now_ns);
                }
            }
            o if o == mb::COMMAND => {
                let v = merge(self.command as u32);
                self.command = (self.command & !0xffff_ffff) | u64::from(v);
            }
            o if o == mb::COMMAND + 4 => {
                // Only length bits [36:32] exist in the high dword.
                let v = merge((self.command >> 32) as u32) & 0x1f;
                self.command = (self.command & 0xffff_ffff) | (u64::from(v) << 32);
            }
            o if o >= mb::PAYLOAD => {
                let i = (o - mb::PAYLOAD) as usize;
                if let Some(old) = self.payload.read_u32(i) {
                    self.payload.write_u32(i, merge(old));
                }
            }
            // Capabilities, Status and Background Command Status are read-only.
            _ => {}
        }
        None
    }

    /// Execute the command in the Command register (§8.2.8.4.4, Doorbell). Returns
    /// true when it started Sanitize (the device model's wipe is due).
    fn ring_doorbell(&mut self, now_ns: u64, hooks: &mut dyn VendorHooks) -> bool {
        let opcode = (self.command & mb::CMD_OPCODE_MASK) as u16;
        let len = ((self.command & mb::CMD_LEN_MASK) >> mb::CMD_LEN_SHIFT) as usize;
        let (rc, out_len) = self.execute(opcode, len, now_ns, hooks);
        self.stats.commands = self.stats.commands.wrapping_add(1);
        if rc != mb::RC_SUCCESS && rc != mb::RC_BACKGROUND_STARTED {
            self.stats.failed = self.stats.failed.wrapping_add(1);
            log::debug!("mailbox: opcode {opcode:#06x} len {len:#x} -> rc {rc:#x}");
        }
        self.last_rc = rc;
        let out_len = (out_len as u64).min(u64::from(mb::CMD_LEN_MAX));
        self.command = u64::from(opcode) | ((out_len << mb::CMD_LEN_SHIFT) & mb::CMD_LEN_MASK);
        rc == mb::RC_BACKGROUND_STARTED && opcode == mb::OP_SANITIZE
    }

    /// Start a background operation lasting at least `duration_ns`, and as long as
    /// the device model's share of it when `media` (Sanitize's wipe).
    fn start_background(&mut self, opcode: u16, now_ns: u64, duration_ns: u64, media: bool) {
        self.bg = Some(BgOp {
            opcode,
            start_ns: now_ns,
            end_ns: now_ns.saturating_add(duration_ns),
            media: media.then_some(MediaWork::Running(0)),
        });
        self.stats.background_started = self.stats.background_started.wrapping_add(1);
    }

    /// Advance background operations to `now_ns`.
    pub fn poll(&mut self, now_ns: u64) -> Option<MailboxEvent> {
        self.now_ns = self.now_ns.max(now_ns);
        let op = self.bg?;
        if now_ns < op.end_ns || op.waiting_for_media() {
            return None;
        }
        let rc = match op.media {
            Some(MediaWork::Done(rc)) => rc,
            _ => mb::RC_SUCCESS,
        };
        self.bg = None;
        self.bg_done = BgDone {
            opcode: op.opcode,
            rc,
            percent: 100,
        };
        self.stats.background_completed = self.stats.background_completed.wrapping_add(1);
        if op.opcode == mb::OP_SANITIZE && rc == mb::RC_SUCCESS {
            // The media holds no data any more, hence no poison.
            self.poison.clear_all();
        }
        self.bg_irq_enabled()
            .then_some(MailboxEvent::BackgroundComplete)
    }

    /// When `poll` next has something to do, if anything: the end of the running
    /// background operation's shortest duration. Once that has passed (by the latest
    /// time seen) while the device model's wipe still runs, there is none:
    /// [`Mailbox::sanitize_wiped`] completes the operation then. So a transport that
    /// sleeps until this deadline wakes when a wipe that ended early may complete,
    /// and never spins while a slow one runs.
    pub fn next_deadline(&self) -> Option<u64> {
        self.bg
            .filter(|op| !(op.waiting_for_media() && self.now_ns >= op.end_ns))
            .map(|op| op.end_ns)
    }

    /// The device model's wipe for a running Sanitize is `percent` done (0..=100).
    /// Ignored when no Sanitize waits for its wipe.
    pub fn sanitize_progress(&mut self, percent: u8) {
        if let Some(op) = self.bg.as_mut() {
            if let Some(MediaWork::Running(p)) = op.media.as_mut() {
                *p = percent.min(100);
            }
        }
    }

    /// The device model's wipe for the running Sanitize ended with return code `rc`
    /// (Success, or the code the command completes with: Internal Error, Media
    /// Disabled, ...). The command then completes at once if its duration has
    /// passed, or at its deadline. Ignored (None) when no Sanitize waits for its
    /// wipe, as after a reset aborted it.
    pub fn sanitize_wiped(&mut self, rc: u16, now_ns: u64) -> Option<MailboxEvent> {
        let op = self.bg.as_mut()?;
        if !op.waiting_for_media() {
            return None;
        }
        op.media = Some(MediaWork::Done(rc));
        self.poll(now_ns)
    }

    /// Whether a Sanitize waits for the device model's wipe.
    pub fn sanitize_wiping(&self) -> bool {
        self.bg.is_some_and(|op| op.waiting_for_media())
    }

    /// Reset of the mailbox interface, which conventional reset, FLR and CXL Reset
    /// all do (the device model's reset table). Mailbox registers return to their
    /// power-on values, a running background operation is aborted (a Sanitize never
    /// completes: the device model stops its wipe, which may have cleared part of
    /// the media, and the poison list stays), a partial firmware transfer is dropped
    /// and the event interrupt policy returns to "none" for the driver to program
    /// again. What a real device keeps in its own storage survives: LSA, event
    /// records, poison list, firmware slots and the timestamp.
    pub fn reset(&mut self) {
        if let Some(op) = self.bg.take() {
            log::info!("mailbox: reset aborts background opcode {:#06x}", op.opcode);
        }
        self.bg_done = BgDone::default();
        self.control = 0;
        self.command = 0;
        self.last_rc = 0;
        self.payload.zero();
        self.fw.abort_transfer();
        self.events.reset_policy();
    }

    /// Cold reset (power cycle): [`Mailbox::reset`], then a firmware slot staged by
    /// Activate FW becomes active, the timestamp is unset and the volatile event logs
    /// are empty.
    pub fn cold_reset(&mut self) {
        self.reset();
        self.fw.cold_reset();
        self.timestamp = None;
        self.events.clear_all();
    }

    /// The device timestamp at `now_ns` (§8.2.9.4.1): 0 until Set Timestamp, then
    /// the set value advanced by the elapsed time.
    pub fn timestamp(&self, now_ns: u64) -> u64 {
        match self.timestamp {
            Some((value, at)) => value.wrapping_add(now_ns.saturating_sub(at)),
            None => 0,
        }
    }

    /// Fault injection: add a record to an event log, stamped with the latest time
    /// seen. Returns [`MailboxEvent::EventAdded`] if that log's interrupt is enabled.
    pub fn inject_event(&mut self, log: EventLog, record: EventRecord) -> Option<MailboxEvent> {
        let now = self.now_ns;
        self.inject_event_at(log, record, now)
    }

    /// [`Mailbox::inject_event`] at an explicit time.
    pub fn inject_event_at(
        &mut self,
        log: EventLog,
        record: EventRecord,
        now_ns: u64,
    ) -> Option<MailboxEvent> {
        self.now_ns = self.now_ns.max(now_ns);
        let ts = self.timestamp(now_ns);
        if self.events.push(log, record, ts) {
            self.stats.events_injected = self.stats.events_injected.wrapping_add(1);
            self.events
                .interrupt_enabled(log)
                .then_some(MailboxEvent::EventAdded)
        } else {
            self.stats.events_dropped = self.stats.events_dropped.wrapping_add(1);
            None
        }
    }

    /// Event Status for the device status register (§8.2.8.3.1): bit n set while
    /// log n holds records.
    pub fn event_status(&self) -> u32 {
        self.events.status()
    }

    /// Records currently in `log`.
    pub fn event_count(&self, log: EventLog) -> usize {
        self.events.len(log)
    }

    /// Fault injection: add a poisoned DPA range (64-byte granular, within capacity)
    /// with source "internal". Errors are mailbox return codes (Invalid Input for
    /// misalignment, Invalid Physical Address beyond capacity).
    pub fn inject_poison(&mut self, dpa: u64, len: u64) -> Result<(), u16> {
        let ts = self.timestamp(self.now_ns);
        self.poison
            .add(dpa, len, mb::poison::SOURCE_INTERNAL, ts)
            .map_err(PoisonError::rc)
    }

    /// The poison list as (dpa, length) pairs.
    pub fn poison_list(&self) -> Vec<(u64, u64)> {
        self.poison
            .records()
            .iter()
            .map(|r| (r.dpa, r.len))
            .collect()
    }

    /// The poison list with error sources.
    pub fn poison_records(&self) -> Vec<PoisonRecord> {
        self.poison.records()
    }

    /// Whether any byte of `[dpa, dpa+len)` is poisoned (for the device model's
    /// memory paths).
    pub fn is_poisoned(&self, dpa: u64, len: u64) -> bool {
        self.poison.overlaps(dpa, len)
    }
}

#[cfg(test)]
mod tests;
