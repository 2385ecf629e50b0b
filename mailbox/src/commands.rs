//! The command set (CXL r3.1 §8.2.9) and its dispatch: one table drives input-length
//! checks, the Busy rule during background operations and the Command Effects Log,
//! so the CEL lists exactly what is implemented.

use cxl_regs::mailbox::{self as mb, effects as fx};
use thiserror::Error;

use crate::firmware::Firmware as Slots;
use crate::hooks::Identify;
use crate::{le, Mailbox, VendorHooks};

/// How long a command's input payload must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLen {
    Exact(usize),
    AtLeast(usize),
    /// Either of two lengths (a field added by a later spec revision).
    Either(usize, usize),
}

impl InputLen {
    fn accepts(self, len: usize) -> bool {
        match self {
            InputLen::Exact(n) => len == n,
            InputLen::AtLeast(n) => len >= n,
            InputLen::Either(a, b) => len == a || len == b,
        }
    }
}

/// One implemented command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    pub opcode: u16,
    pub name: &'static str,
    /// Command Effect bits of its CEL entry (§8.2.9.5.2.1).
    pub effects: u16,
    pub input: InputLen,
    /// Whether it runs while a background operation is in progress. The others get
    /// Busy (§8.2.8.4.7 allows one background operation at a time; Sanitize also
    /// forbids media and configuration changes until it finishes, §8.2.9.9.5.1).
    pub during_background: bool,
}

const fn cmd(
    opcode: u16,
    name: &'static str,
    effects: u16,
    input: InputLen,
    during_background: bool,
) -> CommandInfo {
    CommandInfo {
        opcode,
        name,
        effects,
        input,
        during_background,
    }
}

use InputLen::{AtLeast, Either, Exact};

/// Every command this mailbox implements, in opcode order (vendor opcodes aside).
static COMMANDS: &[CommandInfo] = &[
    cmd(
        mb::OP_GET_EVENT_RECORDS,
        "Get Event Records",
        0,
        Exact(1),
        true,
    ),
    cmd(
        mb::OP_CLEAR_EVENT_RECORDS,
        "Clear Event Records",
        fx::IMMEDIATE_LOG_CHANGE,
        AtLeast(6),
        true,
    ),
    cmd(
        mb::OP_GET_EVENT_INTERRUPT_POLICY,
        "Get Event Interrupt Policy",
        0,
        Exact(0),
        true,
    ),
    cmd(
        mb::OP_SET_EVENT_INTERRUPT_POLICY,
        "Set Event Interrupt Policy",
        fx::IMMEDIATE_CONFIG_CHANGE,
        Either(
            mb::event_interrupt_policy::LEN_V2,
            mb::event_interrupt_policy::LEN,
        ),
        true,
    ),
    cmd(mb::OP_GET_FW_INFO, "Get FW Info", 0, Exact(0), true),
    cmd(
        mb::OP_TRANSFER_FW,
        "Transfer FW",
        fx::CONFIG_CHANGE_COLD_RESET,
        AtLeast(mb::transfer_fw::DATA),
        false,
    ),
    cmd(
        mb::OP_ACTIVATE_FW,
        "Activate FW",
        fx::CONFIG_CHANGE_COLD_RESET | fx::IMMEDIATE_CONFIG_CHANGE,
        Exact(mb::activate_fw::IN_LEN),
        false,
    ),
    cmd(mb::OP_GET_TIMESTAMP, "Get Timestamp", 0, Exact(0), true),
    cmd(
        mb::OP_SET_TIMESTAMP,
        "Set Timestamp",
        fx::IMMEDIATE_POLICY_CHANGE,
        Exact(mb::timestamp::LEN),
        true,
    ),
    cmd(
        mb::OP_GET_SUPPORTED_LOGS,
        "Get Supported Logs",
        0,
        Exact(0),
        true,
    ),
    cmd(
        mb::OP_GET_LOG,
        "Get Log",
        0,
        Exact(mb::get_log::IN_LEN),
        true,
    ),
    cmd(
        mb::OP_IDENTIFY_MEMORY_DEVICE,
        "Identify Memory Device",
        0,
        Exact(0),
        true,
    ),
    cmd(
        mb::OP_GET_PARTITION_INFO,
        "Get Partition Info",
        0,
        Exact(0),
        true,
    ),
    cmd(
        mb::OP_GET_LSA,
        "Get LSA",
        0,
        Exact(mb::lsa::GET_IN_LEN),
        true,
    ),
    cmd(
        mb::OP_SET_LSA,
        "Set LSA",
        fx::IMMEDIATE_CONFIG_CHANGE | fx::IMMEDIATE_DATA_CHANGE,
        AtLeast(mb::lsa::SET_DATA),
        false,
    ),
    cmd(mb::OP_GET_HEALTH_INFO, "Get Health Info", 0, Exact(0), true),
    cmd(
        mb::OP_GET_POISON_LIST,
        "Get Poison List",
        0,
        Exact(mb::poison::GET_IN_LEN),
        false,
    ),
    cmd(
        mb::OP_INJECT_POISON,
        "Inject Poison",
        fx::IMMEDIATE_DATA_CHANGE,
        Exact(mb::poison::INJECT_IN_LEN),
        false,
    ),
    cmd(
        mb::OP_CLEAR_POISON,
        "Clear Poison",
        fx::IMMEDIATE_DATA_CHANGE,
        Exact(mb::poison::CLEAR_IN_LEN),
        false,
    ),
    cmd(
        mb::OP_SANITIZE,
        "Sanitize",
        fx::IMMEDIATE_DATA_CHANGE | fx::SECURITY_STATE_CHANGE | fx::BACKGROUND_OPERATION,
        Exact(0),
        false,
    ),
];

/// The implemented commands (what the CEL lists).
pub fn implemented_commands() -> &'static [CommandInfo] {
    COMMANDS
}

fn lookup(opcode: u16) -> Option<&'static CommandInfo> {
    COMMANDS.iter().find(|c| c.opcode == opcode)
}

/// Why a command failed; each variant is one return code of §8.2.8.4.5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum CmdError {
    #[error("invalid input")]
    InvalidInput,
    #[error("unsupported opcode")]
    Unsupported,
    #[error("internal error")]
    Internal,
    #[error("busy with a background operation")]
    Busy,
    #[error("invalid payload length")]
    PayloadLength,
    #[error("invalid log")]
    InvalidLog,
    #[error("invalid physical address")]
    PhysicalAddress,
    #[error("return code {0:#x}")]
    Code(u16),
}

impl CmdError {
    fn rc(self) -> u16 {
        match self {
            CmdError::InvalidInput => mb::RC_INVALID_INPUT,
            CmdError::Unsupported => mb::RC_UNSUPPORTED,
            CmdError::Internal => mb::RC_INTERNAL_ERROR,
            CmdError::Busy => mb::RC_BUSY,
            CmdError::PayloadLength => mb::RC_INVALID_PAYLOAD_LENGTH,
            CmdError::InvalidLog => mb::RC_INVALID_LOG,
            CmdError::PhysicalAddress => mb::RC_INVALID_PHYSICAL_ADDRESS,
            CmdError::Code(c) => c,
        }
    }
}

/// How a command that did not fail finished.
enum Done {
    Success,
    BackgroundStarted,
}

type CmdResult = Result<Done, CmdError>;

/// Size in bytes of the Command Effects Log.
fn cel_size() -> usize {
    COMMANDS.len() * mb::cel::ENTRY_LEN
}

fn cel_bytes() -> Vec<u8> {
    let mut v = Vec::with_capacity(cel_size());
    for c in COMMANDS {
        v.extend_from_slice(&c.opcode.to_le_bytes());
        v.extend_from_slice(&c.effects.to_le_bytes());
    }
    v
}

fn to_usize(v: u32) -> Result<usize, CmdError> {
    usize::try_from(v).map_err(|_| CmdError::InvalidInput)
}

impl Mailbox {
    /// Run `opcode` on the first `len` payload bytes. Returns the return code and
    /// the output length (0 on failure); the output is in the payload.
    pub(crate) fn execute(
        &mut self,
        opcode: u16,
        len: usize,
        now_ns: u64,
        hooks: &mut dyn VendorHooks,
    ) -> (u16, usize) {
        // The input is copied out once, before anything parses it: the payload may
        // be memory the guest changes at any time (see `PayloadBuf`).
        let mut input = std::mem::take(&mut self.input);
        input.clear();
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let res = if len <= self.payload.len() {
            input.resize(len, 0);
            if self.payload.read(0, &mut input) {
                self.dispatch(opcode, &input, &mut out, now_ns, hooks)
            } else {
                Err(CmdError::PayloadLength)
            }
        } else {
            Err(CmdError::PayloadLength)
        };
        self.input = input;
        let (rc, out_len) = match res {
            Ok(done) if out.len() <= self.payload.len() && self.payload.write(0, &out) => {
                let rc = match done {
                    Done::Success => mb::RC_SUCCESS,
                    Done::BackgroundStarted => mb::RC_BACKGROUND_STARTED,
                };
                (rc, out.len())
            }
            Ok(_) => (mb::RC_INTERNAL_ERROR, 0),
            Err(e) => (e.rc(), 0),
        };
        if rc == mb::RC_BUSY {
            self.stats.busy = self.stats.busy.wrapping_add(1);
        }
        self.out = out;
        (rc, out_len)
    }

    fn dispatch(
        &mut self,
        opcode: u16,
        input: &[u8],
        out: &mut Vec<u8>,
        now_ns: u64,
        hooks: &mut dyn VendorHooks,
    ) -> CmdResult {
        if opcode >= mb::OP_VENDOR_FIRST {
            // A vendor command cannot start a background operation (no Background
            // Command Status would ever complete), and its failures are the codes
            // of Table 8-34: the hook's type allows nothing else.
            return match hooks.vendor_command(opcode, input, out) {
                Ok(()) => Ok(Done::Success),
                Err(rc) => Err(CmdError::Code(rc.code())),
            };
        }
        let info = lookup(opcode).ok_or(CmdError::Unsupported)?;
        if self.bg.is_some() && !info.during_background {
            return Err(CmdError::Busy);
        }
        if !info.input.accepts(input.len()) {
            return Err(CmdError::PayloadLength);
        }
        match opcode {
            mb::OP_GET_EVENT_RECORDS => self.get_event_records(input, out),
            mb::OP_CLEAR_EVENT_RECORDS => self.clear_event_records(input),
            mb::OP_GET_EVENT_INTERRUPT_POLICY => {
                self.events.policy(out);
                Ok(Done::Success)
            }
            mb::OP_SET_EVENT_INTERRUPT_POLICY => {
                self.events
                    .set_policy(input)
                    .map_err(|e| CmdError::Code(e.rc()))?;
                Ok(Done::Success)
            }
            mb::OP_GET_FW_INFO => {
                let mut info = self.fw.info();
                hooks.fw_info(&mut info);
                Slots::info_bytes(&info, out);
                Ok(Done::Success)
            }
            mb::OP_TRANSFER_FW => {
                self.fw
                    .transfer(input, &mut |part| hooks.transfer_fw(part))
                    .map_err(|e| CmdError::Code(e.rc()))?;
                Ok(Done::Success)
            }
            mb::OP_ACTIVATE_FW => {
                self.fw
                    .activate(input, &mut |slot, online| hooks.activate_fw(slot, online))
                    .map_err(|e| CmdError::Code(e.rc()))?;
                Ok(Done::Success)
            }
            mb::OP_GET_TIMESTAMP => {
                le::put_u64(out, 0, self.timestamp(now_ns));
                Ok(Done::Success)
            }
            mb::OP_SET_TIMESTAMP => {
                let v = le::u64_at(input, 0).ok_or(CmdError::PayloadLength)?;
                self.timestamp = Some((v, now_ns));
                Ok(Done::Success)
            }
            mb::OP_GET_SUPPORTED_LOGS => {
                self.get_supported_logs(out);
                Ok(Done::Success)
            }
            mb::OP_GET_LOG => self.get_log(input, out),
            mb::OP_IDENTIFY_MEMORY_DEVICE => {
                let mut fields = self.identify_fields();
                hooks.identify(&mut fields);
                identify_bytes(&fields, out);
                Ok(Done::Success)
            }
            mb::OP_GET_PARTITION_INFO => {
                self.partition_info(out);
                Ok(Done::Success)
            }
            mb::OP_GET_LSA => self.get_lsa(input, out),
            mb::OP_SET_LSA => self.set_lsa(input),
            mb::OP_GET_HEALTH_INFO => {
                let mut health = self.health;
                hooks.health_info(&mut health);
                health_info_bytes(&health, out);
                Ok(Done::Success)
            }
            mb::OP_GET_POISON_LIST => {
                let max = self.payload_records(mb::poison::OUT_RECORDS, mb::poison::RECORD_LEN);
                self.poison
                    .get_list(input, max, out)
                    .map_err(|e| CmdError::Code(e.rc()))?;
                Ok(Done::Success)
            }
            mb::OP_INJECT_POISON => self.inject_poison_cmd(input, now_ns),
            mb::OP_CLEAR_POISON => self.clear_poison_cmd(input, now_ns, hooks),
            mb::OP_SANITIZE => {
                self.start_background(opcode, now_ns, self.cfg.sanitize_duration_ns, true);
                Ok(Done::BackgroundStarted)
            }
            _ => Err(CmdError::Unsupported),
        }
    }

    /// Payload size in bytes.
    fn payload_size(&self) -> usize {
        1usize << self.cfg.payload_log2
    }

    /// How many `record` byte records fit in the payload after a `header`.
    fn payload_records(&self, header: usize, record: usize) -> usize {
        self.payload_size().saturating_sub(header) / record.max(1)
    }

    /// Get Event Records (§8.2.9.2.2).
    fn get_event_records(&mut self, input: &[u8], out: &mut Vec<u8>) -> CmdResult {
        let t = le::u8_at(input, mb::get_event_records::IN_LOG).ok_or(CmdError::PayloadLength)?;
        let log = crate::EventLog::from_type(t).ok_or(CmdError::InvalidInput)?;
        let max = self.payload_records(mb::get_event_records::OUT_RECORDS, mb::event_record::LEN);
        self.events.get_records(log, max, out);
        Ok(Done::Success)
    }

    /// Clear Event Records (§8.2.9.2.3): the input must hold exactly the handles it
    /// counts.
    fn clear_event_records(&mut self, input: &[u8]) -> CmdResult {
        use mb::clear_event_records as c;
        let n = le::u8_at(input, c::IN_COUNT).ok_or(CmdError::PayloadLength)?;
        if input.len() != c::IN_HANDLES + 2 * usize::from(n) {
            return Err(CmdError::PayloadLength);
        }
        self.events
            .clear(input)
            .map_err(|e| CmdError::Code(e.rc()))?;
        Ok(Done::Success)
    }

    /// Get Supported Logs (§8.2.9.5.1): the CEL only.
    fn get_supported_logs(&self, out: &mut Vec<u8>) {
        use mb::supported_logs as s;
        le::put_u16(out, s::OUT_COUNT, 1);
        le::put(out, s::OUT_ENTRIES + s::ENTRY_UUID, &mb::CEL_UUID);
        let size = u32::try_from(cel_size()).unwrap_or(u32::MAX);
        le::put_u32(out, s::OUT_ENTRIES + s::ENTRY_SIZE, size);
    }

    /// Get Log (§8.2.9.5.2): `length` bytes of the CEL from `offset`, truncated at
    /// its end. An unknown log is Invalid Log; an offset past the end, or a length
    /// over the payload size, is Invalid Input.
    fn get_log(&self, input: &[u8], out: &mut Vec<u8>) -> CmdResult {
        use mb::get_log as g;
        let uuid: [u8; 16] = le::bytes_at(input, g::IN_UUID).ok_or(CmdError::PayloadLength)?;
        let offset = to_usize(le::u32_at(input, g::IN_OFFSET).ok_or(CmdError::PayloadLength)?)?;
        let length = to_usize(le::u32_at(input, g::IN_LENGTH).ok_or(CmdError::PayloadLength)?)?;
        if uuid != mb::CEL_UUID {
            return Err(CmdError::InvalidLog);
        }
        let cel = cel_bytes();
        if offset > cel.len() || length > self.payload_size() {
            return Err(CmdError::InvalidInput);
        }
        let end = offset.saturating_add(length).min(cel.len());
        out.extend_from_slice(cel.get(offset..end).ok_or(CmdError::InvalidInput)?);
        Ok(Done::Success)
    }

    /// What Identify Memory Device (§8.2.9.9.1.1) reports of this mailbox: a
    /// volatile-only device.
    pub fn identify_fields(&self) -> Identify {
        let units = self.cfg.capacity / mb::CAPACITY_UNIT;
        let ev = self.events.capacity();
        Identify {
            fw_revision: self.fw.active_revision(),
            total_capacity: units,
            volatile_only_capacity: units,
            persistent_only_capacity: 0,
            // Partition alignment 0: the device cannot be partitioned.
            partition_alignment: 0,
            event_log_sizes: [ev; 4],
            lsa_size: u32::try_from(self.lsa.size()).unwrap_or(u32::MAX),
            poison_list_max: self.poison.max(),
            inject_poison_limit: self.cfg.inject_poison_limit,
            // Volatile media: no persistent poison, no scan media.
            poison_caps: 0,
            qos_telemetry_caps: 0,
        }
    }

    /// Get Partition Info (§8.2.9.9.2.1): all capacity is active volatile; no
    /// change is pending, so the "next" fields are 0.
    fn partition_info(&self, out: &mut Vec<u8>) {
        use mb::partition_info as p;
        out.resize(p::OUT_LEN, 0);
        le::put_u64(
            out,
            p::ACTIVE_VOLATILE,
            self.cfg.capacity / mb::CAPACITY_UNIT,
        );
    }

    /// Get LSA (§8.2.9.9.2.3).
    fn get_lsa(&self, input: &[u8], out: &mut Vec<u8>) -> CmdResult {
        use mb::lsa as l;
        let offset = to_usize(le::u32_at(input, l::GET_OFFSET).ok_or(CmdError::PayloadLength)?)?;
        let length = to_usize(le::u32_at(input, l::GET_LENGTH).ok_or(CmdError::PayloadLength)?)?;
        let end = offset.checked_add(length).ok_or(CmdError::InvalidInput)?;
        if end > self.lsa.size() || length > self.payload_size() {
            return Err(CmdError::InvalidInput);
        }
        out.resize(length, 0);
        self.lsa.read(offset, out).map_err(|e| {
            log::warn!("mailbox: Get LSA: {e}");
            CmdError::Internal
        })?;
        Ok(Done::Success)
    }

    /// Set LSA (§8.2.9.9.2.4).
    fn set_lsa(&mut self, input: &[u8]) -> CmdResult {
        use mb::lsa as l;
        let offset = to_usize(le::u32_at(input, l::SET_OFFSET).ok_or(CmdError::PayloadLength)?)?;
        let data = input.get(l::SET_DATA..).ok_or(CmdError::PayloadLength)?;
        let end = offset
            .checked_add(data.len())
            .ok_or(CmdError::InvalidInput)?;
        if end > self.lsa.size() {
            return Err(CmdError::InvalidInput);
        }
        let res = self.lsa.write(offset, data).and_then(|()| self.lsa.flush());
        res.map_err(|e| {
            log::warn!("mailbox: Set LSA: {e}");
            CmdError::Internal
        })?;
        Ok(Done::Success)
    }

    /// Checks the DPA of Inject/Clear Poison: bits [5:0] are reserved and must be 0
    /// (Invalid Input), the line must lie within capacity (Invalid Physical Address).
    fn poison_address(&self, input: &[u8]) -> Result<u64, CmdError> {
        let addr = le::u64_at(input, 0).ok_or(CmdError::PayloadLength)?;
        if addr & !mb::poison::ADDR_MASK != 0 {
            return Err(CmdError::InvalidInput);
        }
        match addr.checked_add(mb::poison::LINE) {
            Some(end) if end <= self.cfg.capacity => Ok(addr),
            _ => Err(CmdError::PhysicalAddress),
        }
    }

    /// Inject Poison (§8.2.9.9.4.2): one line, source "injected". Poisoning a line
    /// that is already poisoned succeeds and changes nothing.
    fn inject_poison_cmd(&mut self, input: &[u8], now_ns: u64) -> CmdResult {
        let addr = self.poison_address(input)?;
        let ts = self.timestamp(now_ns);
        self.poison
            .add(addr, mb::poison::LINE, mb::poison::SOURCE_INJECTED, ts)
            .map_err(|e| CmdError::Code(e.rc()))?;
        Ok(Done::Success)
    }

    /// Clear Poison (§8.2.9.9.4.3): write the 64 data bytes through the device model,
    /// then drop the line from the poison list (a line that was not poisoned is just
    /// written).
    fn clear_poison_cmd(
        &mut self,
        input: &[u8],
        now_ns: u64,
        hooks: &mut dyn VendorHooks,
    ) -> CmdResult {
        use mb::poison as p;
        let addr = self.poison_address(input)?;
        let data = input
            .get(p::CLEAR_DATA..p::CLEAR_IN_LEN)
            .ok_or(CmdError::PayloadLength)?;
        hooks
            .media_write(addr, data)
            .map_err(|rc| CmdError::Code(rc.code()))?;
        let ts = self.timestamp(now_ns);
        self.poison
            .clear_line(addr, ts)
            .map_err(|e| CmdError::Code(e.rc()))?;
        Ok(Done::Success)
    }
}

/// Identify Memory Device output (§8.2.9.9.1.1, Table 8-127).
fn identify_bytes(f: &Identify, out: &mut Vec<u8>) {
    use mb::identify as id;
    out.resize(mb::IDENTIFY_OUTPUT_LEN, 0);
    le::put(out, id::FW_REVISION, &f.fw_revision);
    le::put_u64(out, id::TOTAL_CAPACITY, f.total_capacity);
    le::put_u64(out, id::VOLATILE_ONLY_CAPACITY, f.volatile_only_capacity);
    le::put_u64(
        out,
        id::PERSISTENT_ONLY_CAPACITY,
        f.persistent_only_capacity,
    );
    le::put_u64(out, id::PARTITION_ALIGNMENT, f.partition_alignment);
    for (off, size) in [
        id::INFO_EVENT_LOG_SIZE,
        id::WARN_EVENT_LOG_SIZE,
        id::FAILURE_EVENT_LOG_SIZE,
        id::FATAL_EVENT_LOG_SIZE,
    ]
    .into_iter()
    .zip(f.event_log_sizes)
    {
        le::put_u16(out, off, size);
    }
    le::put_u32(out, id::LSA_SIZE, f.lsa_size);
    le::put(
        out,
        id::POISON_LIST_MAX,
        &f.poison_list_max.to_le_bytes()[..3],
    );
    le::put_u16(out, id::INJECT_POISON_LIMIT, f.inject_poison_limit);
    le::put_u8(out, id::POISON_CAPS, f.poison_caps);
    le::put_u8(out, id::QOS_TELEMETRY_CAPS, f.qos_telemetry_caps);
}

/// Get Health Info output (§8.2.9.9.3.1, Table 8-133).
fn health_info_bytes(v: &crate::HealthInfo, out: &mut Vec<u8>) {
    use mb::health_info as h;
    out.resize(h::OUT_LEN, 0);
    le::put_u8(out, h::HEALTH_STATUS, v.health_status);
    le::put_u8(out, h::MEDIA_STATUS, v.media_status);
    le::put_u8(out, h::ADDITIONAL_STATUS, v.additional_status);
    le::put_u8(out, h::LIFE_USED, v.life_used);
    le::put(out, h::DEVICE_TEMPERATURE, &v.temperature.to_le_bytes());
    le::put_u32(out, h::DIRTY_SHUTDOWN_COUNT, v.dirty_shutdowns);
    le::put_u32(
        out,
        h::CORRECTED_VOLATILE_ERRORS,
        v.corrected_volatile_errors,
    );
    le::put_u32(
        out,
        h::CORRECTED_PERSISTENT_ERRORS,
        v.corrected_persistent_errors,
    );
}
