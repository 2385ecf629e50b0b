//! The accelerator's DMA engine, at BAR4 + `ENGINE_OFFSET`. Its registers are this
//! device's own (not spec-defined); the layout is fixed in
//! [`cxl_regs::layout::engine`] and used by the guest harness.
//!
//! A transfer moves LEN bytes from SRC to DST, guest RAM -> device memory or, with
//! CONTROL_DIR_TO_GUEST, device memory -> guest RAM. Guest addresses are guest
//! physical and go through the RAM the VMM shared (vfio-user DMA_MAP); device
//! addresses are DPAs.
//!
//! The copy does not run inside the register write that starts it:
//!
//! 1. A write of 1 to DOORBELL bit 0 while the engine is idle latches SRC, DST, LEN
//!    and CONTROL ([`Engine::start`]). The checks that move no data happen at once:
//!    Bus Master Enable, the length, the device range, a guest range that wraps, and
//!    poison in a device-memory source. A transfer that fails them completes at once
//!    with ERROR and its code.
//! 2. Otherwise STATUS reads BUSY and the latched transfer becomes a [`DmaJob`] for
//!    whoever runs it: the device model itself, within the doorbell write, or the
//!    transport on a worker thread, off the device lock
//!    ([`crate::AccelDevice::set_offload`]). [`DmaJob::run`] copies in [`CHUNK`]
//!    steps and checks the job's cancel flag between them; a guest range found
//!    unmapped part-way stops it with ERR_GUEST_RANGE (the chunks before it have
//!    been copied).
//! 3. [`Engine::complete`] posts the result: STATUS has DONE, or ERROR with a code in
//!    bits 15:8, and the device raises the DMA vector when the latched CONTROL had
//!    CONTROL_IRQ_ENABLE.
//!
//! While BUSY (documented for the guest in [`cxl_regs::layout::engine`]):
//! - a doorbell is ignored and counted ([`EngineStats::ignored_doorbells`]): the
//!   running transfer goes on unchanged and no second one is queued;
//! - writes to SRC, DST, LEN and CONTROL are ignored and counted
//!   ([`EngineStats::ignored_writes`]), so the registers always read back the
//!   transfer in progress;
//! - STATUS has neither DONE nor ERROR to clear.
//!
//! A reset of the function (conventional or FLR) aborts a running transfer: its
//! cancel flag is raised, so the copy stops at the next chunk boundary, and the
//! registers return to 0. A completion that arrives for a transfer that is no longer
//! the running one (aborted, or never started) is ignored and counted
//! ([`EngineStats::stale_completions`]).
//!
//! Besides the copy, CONTROL.OP selects one of the accelerator's own operations: an
//! [`EngineOperation`] the device was given ([`crate::AccelDevice::add_engine_operation`];
//! vendors write them). It runs exactly like a transfer: checked at the doorbell,
//! then a job off the device lock (the same [`DmaJob`], on the same worker), then
//! its completion in STATUS, its value in RESULT and the same completion interrupt.
//!
//! No input can make the engine panic: every range is checked before and during the
//! copy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cxl_regs::layout::engine::*;
use thiserror::Error;

use crate::access::{merge, qword_half, qword_merge};
use crate::{DeviceMemory, GuestMemory};

/// Bytes copied per step of a transfer (the cancel flag is checked between steps).
pub const CHUNK: usize = 64 << 10;

/// Counters for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    pub completions: u64,
    pub errors: u64,
    pub bytes: u64,
    /// Doorbells rung while a transfer was running (ignored).
    pub ignored_doorbells: u64,
    /// Dword writes to SRC, DST, LEN or CONTROL while a transfer was running
    /// (ignored).
    pub ignored_writes: u64,
    /// Completions for a transfer that was no longer running (ignored).
    pub stale_completions: u64,
    /// Transfers aborted by a reset while they ran.
    pub aborted: u64,
}

/// A shared flag that tells a running job to stop at its next step.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The registers an operation was started with, latched at its doorbell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpRequest {
    /// CONTROL.OP.
    pub op: u8,
    pub src: u64,
    pub dst: u64,
    pub len: u64,
}

/// What [`EngineOperation::check`] may consult about the device.
pub struct OpContext<'a> {
    /// Device memory size in bytes.
    pub mem_size: u64,
    /// Command register Bus Master Enable (needed to touch guest RAM).
    pub bus_master: bool,
    /// Whether any byte of a DPA range is poisoned.
    pub poisoned: &'a dyn Fn(u64, u64) -> bool,
}

/// Why an operation failed; each variant is a STATUS error code
/// ([`cxl_regs::layout::engine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OpError {
    #[error("guest address range not mapped")]
    GuestRange,
    #[error("device address range outside device memory")]
    DeviceRange,
    #[error("length 0 or above the engine's limit")]
    Length,
    #[error("Bus Master Enable is clear")]
    BusMaster,
    #[error("the source range holds poison")]
    Poison,
    #[error("aborted")]
    Aborted,
    /// An error of the operation's own, reported as code 0x80 + the value (0..=0x7f;
    /// larger values are reported as 0xff).
    #[error("device error {0:#x}")]
    Device(u8),
}

impl OpError {
    /// The code in STATUS\[15:8\].
    pub fn code(self) -> u32 {
        match self {
            OpError::GuestRange => ERR_GUEST_RANGE,
            OpError::DeviceRange => ERR_DEVICE_RANGE,
            OpError::Length => ERR_LENGTH,
            OpError::BusMaster => ERR_BUS_MASTER,
            OpError::Poison => ERR_POISON,
            OpError::Aborted => ERR_ABORTED,
            OpError::Device(v) => ERR_DEVICE_FIRST + u32::from(v.min(0x7f)),
        }
    }
}

/// One of the accelerator's own operations behind BAR4, selected by CONTROL.OP (see
/// [`cxl_regs::layout::engine`]): what the vendor's engine does to device memory.
///
/// It runs like a DMA transfer: [`check`](Self::check) at the doorbell, under the
/// device lock, moving no data; then [`run`](Self::run) on the backend's worker,
/// without the lock, while the guest reads STATUS BUSY; then its value goes to RESULT,
/// STATUS to DONE (or ERROR with the code), and the engine's completion interrupt
/// fires if CONTROL asked for it. A reset aborts it: `stop` then returns true, and
/// its result is ignored.
pub trait EngineOperation: Send + Sync {
    /// A name, for logs.
    fn name(&self) -> &str;

    /// The checks that need no data movement. By default: LEN is 1..=MAX_LEN, and
    /// `[SRC, SRC + LEN)` is device memory without poison.
    fn check(&self, req: &OpRequest, ctx: &OpContext<'_>) -> Result<(), OpError> {
        check_device_source(req, ctx)
    }

    /// Compute. Check `stop` between steps of long work and return
    /// [`OpError::Aborted`] when it says so. The value goes to RESULT.
    fn run(
        &self,
        req: &OpRequest,
        mem: &mut dyn DeviceMemory,
        guest: &dyn GuestMemory,
        stop: &dyn Fn() -> bool,
    ) -> Result<u64, OpError>;
}

/// The default [`EngineOperation::check`]: LEN is 1..=MAX_LEN, and
/// `[SRC, SRC + LEN)` is device memory without poison.
pub fn check_device_source(req: &OpRequest, ctx: &OpContext<'_>) -> Result<(), OpError> {
    if req.len == 0 || req.len > MAX_LEN {
        return Err(OpError::Length);
    }
    match req.src.checked_add(req.len) {
        Some(end) if end <= ctx.mem_size => {}
        _ => return Err(OpError::DeviceRange),
    }
    if (ctx.poisoned)(req.src, req.len) {
        return Err(OpError::Poison);
    }
    Ok(())
}

/// The operations a device has, by CONTROL.OP.
#[derive(Clone, Default)]
pub struct OpTable(BTreeMap<u8, Arc<dyn EngineOperation>>);

impl std::fmt::Debug for OpTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v.name())))
            .finish()
    }
}

/// What a job does.
#[derive(Clone)]
enum Work {
    /// CONTROL.OP 0: copy, device memory -> guest RAM when `to_guest`.
    Copy { to_guest: bool },
    /// One of the device's own operations.
    Op(Arc<dyn EngineOperation>),
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Copy { to_guest } => f.debug_struct("Copy").field("to_guest", to_guest).finish(),
            Work::Op(op) => f.debug_tuple("Op").field(&op.name()).finish(),
        }
    }
}

/// One transfer or operation, latched at its doorbell: everything needed to run it
/// without the device.
#[derive(Debug, Clone)]
pub struct DmaJob {
    id: u64,
    req: OpRequest,
    work: Work,
    cancel: CancelFlag,
}

impl DmaJob {
    /// The number [`Engine::complete`] matches the result against.
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn len(&self) -> u64 {
        self.req.len
    }
    pub fn is_empty(&self) -> bool {
        self.req.len == 0
    }
    /// A copy from device memory to guest RAM.
    pub fn to_guest(&self) -> bool {
        matches!(self.work, Work::Copy { to_guest: true })
    }
    /// CONTROL.OP of the job (0: the copy).
    pub fn op(&self) -> u8 {
        self.req.op
    }
    /// Whether a reset has aborted the job.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Run the job: a copy, or the operation. Stops early when the job is cancelled
    /// or `stop` says so (ERR_ABORTED). Returns the value for RESULT (0 for a copy)
    /// or the STATUS error code.
    pub fn run(
        &self,
        mem: &mut dyn DeviceMemory,
        guest: &dyn GuestMemory,
        stop: &dyn Fn() -> bool,
    ) -> Result<u64, u32> {
        let stop = || self.is_cancelled() || stop();
        match &self.work {
            Work::Copy { to_guest } => self.copy(*to_guest, mem, guest, &stop).map(|()| 0),
            Work::Op(op) => {
                if stop() {
                    return Err(ERR_ABORTED);
                }
                op.run(&self.req, mem, guest, &stop).map_err(OpError::code)
            }
        }
    }

    /// Copy the data, [`CHUNK`] bytes at a time, stopping early when `stop` says so
    /// (ERR_ABORTED), or when a range turns out unmapped.
    fn copy(
        &self,
        to_guest: bool,
        mem: &mut dyn DeviceMemory,
        guest: &dyn GuestMemory,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), u32> {
        let OpRequest { src, dst, len, .. } = self.req;
        let (gpa, dpa) = if to_guest { (dst, src) } else { (src, dst) };
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
        let mut done = 0u64;
        while done < len {
            if stop() {
                return Err(ERR_ABORTED);
            }
            let n = (len - done).min(buf.len() as u64) as usize;
            let chunk = buf.get_mut(..n).ok_or(ERR_LENGTH)?;
            let g = gpa.checked_add(done).ok_or(ERR_GUEST_RANGE)?;
            let d = dpa.checked_add(done).ok_or(ERR_DEVICE_RANGE)?;
            if to_guest {
                mem.read(d, chunk).map_err(|_| ERR_DEVICE_RANGE)?;
                guest.write(g, chunk).map_err(|_| ERR_GUEST_RANGE)?;
            } else {
                guest.read(g, chunk).map_err(|_| ERR_GUEST_RANGE)?;
                mem.write(d, chunk).map_err(|_| ERR_DEVICE_RANGE)?;
            }
            done += n as u64;
        }
        Ok(())
    }
}

/// What [`Engine::start`] needs from the rest of the device to check a transfer.
pub struct StartCtx<'a> {
    /// Device memory size in bytes.
    pub mem_size: u64,
    /// Command register Bus Master Enable.
    pub bus_master: bool,
    /// Whether any byte of a DPA range is poisoned.
    pub poisoned: &'a dyn Fn(u64, u64) -> bool,
}

/// The transfer in progress.
#[derive(Debug, Clone)]
struct Running {
    id: u64,
    cancel: CancelFlag,
    /// The latched CONTROL_IRQ_ENABLE.
    irq: bool,
}

/// DMA engine registers and state.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    src: u64,
    dst: u64,
    len: u64,
    control: u32,
    status: u32,
    completions: u32,
    stats: EngineStats,
    running: Option<Running>,
    /// Job numbers are never reused, so a completion of an aborted job cannot be
    /// taken for the one after it.
    next_id: u64,
    /// Interrupt enable of the last completion (the one STATUS reports).
    done_irq: bool,
    /// RESULT of the last successful operation.
    result: u64,
    /// The device's own operations, by CONTROL.OP.
    ops: OpTable,
}

/// The CONTROL bits that exist; the rest are reserved.
const CONTROL_BITS: u32 = CONTROL_DIR_TO_GUEST | CONTROL_IRQ_ENABLE | CONTROL_OP_MASK;

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Give the engine operation `op` (CONTROL.OP, 1..=255; 0 is the copy). Returns
    /// the operation it replaces.
    pub fn add_operation(
        &mut self,
        op: u8,
        operation: Arc<dyn EngineOperation>,
    ) -> Option<Arc<dyn EngineOperation>> {
        self.ops.0.insert(op, operation)
    }

    /// The operations the engine has besides the copy: (CONTROL.OP, name).
    pub fn operations(&self) -> Vec<(u8, String)> {
        self.ops
            .0
            .iter()
            .map(|(k, v)| (*k, v.name().to_string()))
            .collect()
    }

    /// Reset (every kind: the engine is this function's own state, see
    /// [`crate::reset`]): a running transfer is aborted (its cancel flag stops the
    /// job at its next step, and its result is ignored), the registers return to 0;
    /// the statistics and the job numbering survive.
    pub fn reset(&mut self) {
        let mut stats = self.stats;
        if let Some(r) = self.running.take() {
            r.cancel.cancel();
            stats.aborted = stats.aborted.wrapping_add(1);
            log::info!("dma: reset aborts transfer {}", r.id);
        }
        *self = Self {
            stats,
            next_id: self.next_id,
            ops: std::mem::take(&mut self.ops),
            ..Self::default()
        };
    }
    pub fn stats(&self) -> EngineStats {
        self.stats
    }
    pub fn status(&self) -> u32 {
        self.status
    }
    /// Whether a transfer is running (STATUS BUSY).
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }
    /// Whether the completion in STATUS asks for an interrupt.
    pub fn irq_enabled(&self) -> bool {
        self.done_irq
    }
    /// Whether STATUS holds a completion (DONE or ERROR) not yet cleared.
    pub fn completion_outstanding(&self) -> bool {
        self.status & (STATUS_DONE | STATUS_ERROR) != 0
    }

    /// Read the dword at `offset` (relative to the engine).
    pub fn read(&self, offset: u64) -> u32 {
        match offset & !3 {
            ID => ID_VALUE,
            VERSION => VERSION_VALUE,
            o if o == SRC || o == SRC + 4 => qword_half(self.src, o != SRC),
            o if o == DST || o == DST + 4 => qword_half(self.dst, o != DST),
            o if o == LEN || o == LEN + 4 => qword_half(self.len, o != LEN),
            CONTROL => self.control,
            STATUS => self.status,
            COMPLETIONS => self.completions,
            o if o == RESULT || o == RESULT + 4 => qword_half(self.result, o != RESULT),
            _ => 0,
        }
    }

    /// Write the masked bits of `value` to the dword at `offset`. Returns true when
    /// the doorbell was rung on an idle engine: the caller then calls
    /// [`Engine::start`].
    pub fn write(&mut self, offset: u64, value: u32, mask: u32) -> bool {
        let off = offset & !3;
        let program = [SRC, SRC + 4, DST, DST + 4, LEN, LEN + 4, CONTROL].contains(&off);
        if self.busy() && mask != 0 {
            if program {
                self.stats.ignored_writes = self.stats.ignored_writes.wrapping_add(1);
                return false;
            }
            if off == DOORBELL && value & mask & 1 != 0 {
                self.stats.ignored_doorbells = self.stats.ignored_doorbells.wrapping_add(1);
                log::debug!("dma: doorbell while busy ignored");
                return false;
            }
        }
        match off {
            o if o == SRC || o == SRC + 4 => {
                self.src = qword_merge(self.src, o != SRC, value, mask)
            }
            o if o == DST || o == DST + 4 => {
                self.dst = qword_merge(self.dst, o != DST, value, mask)
            }
            o if o == LEN || o == LEN + 4 => {
                self.len = qword_merge(self.len, o != LEN, value, mask)
            }
            CONTROL => self.control = merge(self.control, value, mask & CONTROL_BITS),
            DOORBELL => return value & mask & 1 != 0,
            STATUS => {
                let clear = value & mask & (STATUS_DONE | STATUS_ERROR);
                self.status &= !clear;
                // The error code describes the ERROR bit and goes with it.
                if self.status & STATUS_ERROR == 0 {
                    self.status &= !STATUS_ERR_MASK;
                }
            }
            _ => {}
        }
        false
    }

    /// Latch the programmed transfer after a doorbell on an idle engine. Returns the
    /// job to run (STATUS now BUSY), or None when the checks refused it at once
    /// (STATUS has ERROR; the caller signals the completion as for any other) or when
    /// a transfer is already running (nothing changes).
    pub fn start(&mut self, ctx: StartCtx<'_>) -> Option<DmaJob> {
        if self.busy() {
            return None;
        }
        let to_guest = self.control & CONTROL_DIR_TO_GUEST != 0;
        let irq = self.control & CONTROL_IRQ_ENABLE != 0;
        let req = OpRequest {
            op: ((self.control & CONTROL_OP_MASK) >> CONTROL_OP_SHIFT) as u8,
            src: self.src,
            dst: self.dst,
            len: self.len,
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let cancel = CancelFlag::new();
        self.running = Some(Running {
            id,
            cancel: cancel.clone(),
            irq,
        });
        self.status = STATUS_BUSY;
        self.result = 0;
        let work = if req.op == OP_COPY {
            Ok(Work::Copy { to_guest })
        } else {
            match self.ops.0.get(&req.op) {
                Some(op) => Ok(Work::Op(op.clone())),
                None => Err(ERR_UNSUPPORTED_OP),
            }
        };
        let checked = work.and_then(|work| {
            let op_ctx = OpContext {
                mem_size: ctx.mem_size,
                bus_master: ctx.bus_master,
                poisoned: ctx.poisoned,
            };
            match &work {
                Work::Copy { to_guest } => self.check(&ctx, *to_guest),
                Work::Op(op) => op.check(&req, &op_ctx).map_err(OpError::code),
            }
            .map(|()| work)
        });
        let work = match checked {
            Ok(work) => work,
            Err(code) => {
                self.complete(id, Err(code));
                return None;
            }
        };
        Some(DmaJob {
            id,
            req,
            work,
            cancel,
        })
    }

    /// The checks of a copy that need no data movement.
    fn check(&self, ctx: &StartCtx<'_>, to_guest: bool) -> Result<(), u32> {
        if !ctx.bus_master {
            return Err(ERR_BUS_MASTER);
        }
        if self.len == 0 || self.len > MAX_LEN {
            return Err(ERR_LENGTH);
        }
        let (gpa, dpa) = if to_guest {
            (self.dst, self.src)
        } else {
            (self.src, self.dst)
        };
        match dpa.checked_add(self.len) {
            Some(end) if end <= ctx.mem_size => {}
            _ => return Err(ERR_DEVICE_RANGE),
        }
        if gpa.checked_add(self.len).is_none() {
            return Err(ERR_GUEST_RANGE);
        }
        if to_guest && (ctx.poisoned)(dpa, self.len) {
            return Err(ERR_POISON);
        }
        Ok(())
    }

    /// Post the result of job `id`: Ok with the value for RESULT, or the STATUS error
    /// code. Returns false (and changes nothing but a counter) when `id` is not the
    /// running transfer.
    pub fn complete(&mut self, id: u64, result: Result<u64, u32>) -> bool {
        let Some(running) = self.running.take_if(|r| r.id == id) else {
            self.stats.stale_completions = self.stats.stale_completions.wrapping_add(1);
            log::debug!("dma: stale completion of transfer {id} ignored");
            return false;
        };
        self.done_irq = running.irq;
        match result {
            Ok(value) => {
                self.result = value;
                self.status = STATUS_DONE;
                self.completions = self.completions.wrapping_add(1);
                self.stats.completions = self.stats.completions.wrapping_add(1);
                self.stats.bytes = self.stats.bytes.wrapping_add(self.len);
            }
            Err(code) => {
                self.status = STATUS_ERROR | ((code << STATUS_ERR_SHIFT) & STATUS_ERR_MASK);
                self.stats.errors = self.stats.errors.wrapping_add(1);
                log::debug!(
                    "dma: error {code} src={:#x} dst={:#x} len={:#x} control={:#x}",
                    self.src,
                    self.dst,
                    self.len,
                    self.control
                );
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryError, NoGuestMemory, VecMemory};

    #[test]
    fn registers_read_back_and_reserved_bits_stay_zero() {
        let mut e = Engine::new();
        assert_eq!(e.read(ID), u32::from_le_bytes(*b"CXLA"));
        assert_eq!(e.read(VERSION), 2);
        e.write(SRC, 0x1111_2222, !0);
        e.write(SRC + 4, 0x3333_4444, !0);
        assert_eq!(e.read(SRC), 0x1111_2222);
        assert_eq!(e.read(SRC + 4), 0x3333_4444);
        e.write(LEN, 0xab, 0xff);
        assert_eq!(e.read(LEN), 0xab);
        e.write(CONTROL, !0, !0);
        assert_eq!(
            e.read(CONTROL),
            0xff03,
            "DIR, IRQ_ENABLE and OP; the rest reserved"
        );
        // ID, VERSION, COMPLETIONS are read-only; DOORBELL reads 0.
        e.write(ID, 0, !0);
        e.write(COMPLETIONS, 5, !0);
        assert_eq!(e.read(ID), ID_VALUE);
        assert_eq!(e.read(COMPLETIONS), 0);
        assert!(!e.write(DOORBELL, 2, !0), "only bit 0 rings");
        assert!(e.write(DOORBELL, 1, !0));
        assert!(
            !e.write(DOORBELL, 1, 0xff00),
            "a masked-off lane does not ring"
        );
        assert_eq!(e.read(DOORBELL), 0);
    }

    fn ctx(poisoned: &dyn Fn(u64, u64) -> bool) -> StartCtx<'_> {
        StartCtx {
            mem_size: 1 << 20,
            bus_master: true,
            poisoned,
        }
    }

    /// Guest RAM that counts accesses and cancels `flag` after `after` of them.
    struct Canceller<'a> {
        flag: &'a CancelFlag,
        after: usize,
        seen: std::cell::Cell<usize>,
    }
    impl GuestMemory for Canceller<'_> {
        fn read(&self, _gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            buf.fill(0x5a);
            self.seen.set(self.seen.get() + 1);
            if self.seen.get() == self.after {
                self.flag.cancel();
            }
            Ok(())
        }
        fn write(&self, _gpa: u64, _data: &[u8]) -> Result<(), MemoryError> {
            Ok(())
        }
    }

    #[test]
    fn a_cancelled_job_stops_at_the_next_chunk() {
        let mut e = Engine::new();
        e.write(LEN, (CHUNK * 8) as u32, !0);
        let never = |_: u64, _: u64| false;
        let job = e.start(ctx(&never)).expect("job");
        assert_eq!(e.read(STATUS), STATUS_BUSY);
        let mut mem = VecMemory::new(1 << 20);
        let guest = Canceller {
            flag: &job.cancel,
            after: 2,
            seen: Default::default(),
        };
        assert_eq!(job.run(&mut mem, &guest, &|| false), Err(ERR_ABORTED));
        assert_eq!(guest.seen.get(), 2, "no chunk after the cancel");
        // Two chunks were copied, nothing after them.
        let mut b = [0u8; 1];
        mem.read((2 * CHUNK - 1) as u64, &mut b).unwrap();
        assert_eq!(b, [0x5a]);
        mem.read((2 * CHUNK) as u64, &mut b).unwrap();
        assert_eq!(b, [0]);
        // The transport's own stop works the same way, before the first chunk.
        let job2 = DmaJob {
            cancel: CancelFlag::new(),
            ..job.clone()
        };
        assert_eq!(
            job2.run(&mut mem, &NoGuestMemory, &|| true),
            Err(ERR_ABORTED)
        );
    }

    #[test]
    fn ids_are_not_reused_across_resets() {
        let mut e = Engine::new();
        e.write(LEN, 64, !0);
        let never = |_: u64, _: u64| false;
        let a = e.start(ctx(&never)).unwrap();
        e.reset();
        assert!(a.is_cancelled());
        e.write(LEN, 64, !0);
        let b = e.start(ctx(&never)).unwrap();
        assert_ne!(a.id(), b.id());
        assert!(!e.complete(a.id(), Ok(0)), "the aborted job's completion");
        assert_eq!(e.read(STATUS), STATUS_BUSY);
        assert!(e.complete(b.id(), Ok(0)));
        assert_eq!(e.read(STATUS), STATUS_DONE);
        assert_eq!(e.stats().stale_completions, 1);
        assert_eq!(e.stats().aborted, 1);
    }
}
