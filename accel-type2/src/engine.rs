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
//! No input can make the engine panic: every range is checked before and during the
//! copy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cxl_regs::layout::engine::*;

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

/// One transfer, latched at its doorbell: everything needed to run it without the
/// device.
#[derive(Debug, Clone)]
pub struct DmaJob {
    id: u64,
    src: u64,
    dst: u64,
    len: u64,
    to_guest: bool,
    cancel: CancelFlag,
}

impl DmaJob {
    /// The number [`Engine::complete`] matches the result against.
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Device memory -> guest RAM.
    pub fn to_guest(&self) -> bool {
        self.to_guest
    }
    /// Whether a reset has aborted the job.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Copy the data, [`CHUNK`] bytes at a time, stopping early when the job is
    /// cancelled (ERR_ABORTED), when `stop` says so (ERR_ABORTED), or when a range
    /// turns out unmapped. Returns Ok or the STATUS error code.
    pub fn run(
        &self,
        mem: &mut dyn DeviceMemory,
        guest: &dyn GuestMemory,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), u32> {
        let (gpa, dpa) = if self.to_guest {
            (self.dst, self.src)
        } else {
            (self.src, self.dst)
        };
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(self.len).unwrap_or(CHUNK))];
        let mut done = 0u64;
        while done < self.len {
            if self.is_cancelled() || stop() {
                return Err(ERR_ABORTED);
            }
            let n = (self.len - done).min(buf.len() as u64) as usize;
            let chunk = buf.get_mut(..n).ok_or(ERR_LENGTH)?;
            let g = gpa.checked_add(done).ok_or(ERR_GUEST_RANGE)?;
            let d = dpa.checked_add(done).ok_or(ERR_DEVICE_RANGE)?;
            if self.to_guest {
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
}

/// The CONTROL bits that exist; the rest are reserved.
const CONTROL_BITS: u32 = CONTROL_DIR_TO_GUEST | CONTROL_IRQ_ENABLE;

impl Engine {
    pub fn new() -> Self {
        Self::default()
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
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let cancel = CancelFlag::new();
        self.running = Some(Running {
            id,
            cancel: cancel.clone(),
            irq,
        });
        self.status = STATUS_BUSY;
        if let Err(code) = self.check(&ctx, to_guest) {
            self.complete(id, Err(code));
            return None;
        }
        Some(DmaJob {
            id,
            src: self.src,
            dst: self.dst,
            len: self.len,
            to_guest,
            cancel,
        })
    }

    /// The checks that need no data movement.
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

    /// Post the result of job `id`: Ok, or the STATUS error code. Returns false (and
    /// changes nothing but a counter) when `id` is not the running transfer.
    pub fn complete(&mut self, id: u64, result: Result<(), u32>) -> bool {
        let Some(running) = self.running.take_if(|r| r.id == id) else {
            self.stats.stale_completions = self.stats.stale_completions.wrapping_add(1);
            log::debug!("dma: stale completion of transfer {id} ignored");
            return false;
        };
        self.done_irq = running.irq;
        match result {
            Ok(()) => {
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
        assert_eq!(e.read(VERSION), 1);
        e.write(SRC, 0x1111_2222, !0);
        e.write(SRC + 4, 0x3333_4444, !0);
        assert_eq!(e.read(SRC), 0x1111_2222);
        assert_eq!(e.read(SRC + 4), 0x3333_4444);
        e.write(LEN, 0xab, 0xff);
        assert_eq!(e.read(LEN), 0xab);
        e.write(CONTROL, !0, !0);
        assert_eq!(e.read(CONTROL), CONTROL_BITS);
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
        assert!(!e.complete(a.id(), Ok(())), "the aborted job's completion");
        assert_eq!(e.read(STATUS), STATUS_BUSY);
        assert!(e.complete(b.id(), Ok(())));
        assert_eq!(e.read(STATUS), STATUS_DONE);
        assert_eq!(e.stats().stale_completions, 1);
        assert_eq!(e.stats().aborted, 1);
    }
}
