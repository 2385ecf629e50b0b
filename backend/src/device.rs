//! The adapter between the vfio-user server and the device model: region and IRQ
//! layout, access dispatch, DMA mappings, interrupt eventfds and counters.
//!
//! The device state ([`Shared`]) sits behind a mutex shared with the control socket
//! thread and the worker; every vfio-user message takes the lock once, briefly.
//! Nothing done under it may block on a peer: interrupt eventfds are written without
//! blocking (see [`crate::vfio_user::irq`]), guest RAM is copied with pread/pwrite
//! (see [`crate::memory`]). Long work (DMA transfers, the wipes of Sanitize and of a
//! CXL Reset with Mem Clr, the LSA's sync) goes to the worker ([`crate::worker`]) and
//! runs without the lock.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use accel_type2::{AccelDevice, BarKind, Clock, Interrupt, Job, WipeError, CONFIG_SPACE_SIZE};
use log::{debug, info, warn};
use serde::Serialize;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS,
    VFIO_PCI_REQ_IRQ_INDEX,
};

use crate::memory::{DeviceMemoryFile, GuestRam, PayloadPage, SharedPayload, StorageError};
use crate::vfio_user::{
    DmaMapping, Errno, IrqEventFd, IrqInfo, RegionInfo, Signal, VfioUserDevice,
};
use crate::worker::{Work, WorkQueue};

// --- vfio-pci numbering ------------------------------------------------------------
//
// The device model describes its BARs, config space and interrupt sources in PCI
// terms; vfio-user numbers them as vfio-pci does (linux/vfio.h): regions 0..5 are
// BAR0..5, 6 the expansion ROM, 7 config space, 8 VGA; IRQ indices INTx, MSI,
// MSI-X, ERR, REQ. That numbering lives here, in the adapter.

/// vfio region index of PCI config space (VFIO_PCI_CONFIG_REGION_INDEX).
pub const CONFIG_REGION_INDEX: u32 = VFIO_PCI_CONFIG_REGION_INDEX;
/// vfio-pci regions (BAR0..5, ROM, config, VGA). QEMU asks for each of them.
pub const NUM_REGIONS: u32 = VFIO_PCI_NUM_REGIONS;
/// vfio IRQ indices (VFIO_PCI_*_IRQ_INDEX).
pub const IRQ_INTX: u32 = VFIO_PCI_INTX_IRQ_INDEX;
pub const IRQ_MSI: u32 = VFIO_PCI_MSI_IRQ_INDEX;
pub const IRQ_MSIX: u32 = VFIO_PCI_MSIX_IRQ_INDEX;
pub const IRQ_ERR: u32 = VFIO_PCI_ERR_IRQ_INDEX;
pub const IRQ_REQ: u32 = VFIO_PCI_REQ_IRQ_INDEX;
pub const NUM_IRQS: u32 = VFIO_PCI_NUM_IRQS;

/// How a region is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionBacking {
    /// Trapped: every access is a REGION_READ/WRITE for the device model.
    Trapped,
    /// Device memory: mmappable, with the device-memory fd.
    DeviceMemory,
}

/// One vfio region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionDesc {
    pub index: u32,
    /// 0 = region absent.
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    pub mmappable: bool,
    /// Sparse mmappable areas (offset, size) within the region.
    pub sparse_mmap: Vec<(u64, u64)>,
    pub backing: RegionBacking,
}

/// One vfio IRQ index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqDesc {
    pub index: u32,
    pub count: u32,
    /// VFIO_IRQ_INFO_EVENTFD.
    pub eventfd: bool,
    pub maskable: bool,
    pub automasked: bool,
}

/// The vfio-pci regions of `device`, all [`NUM_REGIONS`] of them: its BARs at their
/// BAR numbers, config space at [`CONFIG_REGION_INDEX`]; absent ones have size 0.
/// A device-memory BAR is mmappable through one sparse area over its memory (QEMU
/// then maps it: the sparse mmap capability of VFIO_USER_DEVICE_GET_REGION_INFO).
pub fn vfio_regions(device: &AccelDevice) -> Vec<RegionDesc> {
    let absent = |index| RegionDesc {
        index,
        size: 0,
        readable: false,
        writable: false,
        mmappable: false,
        sparse_mmap: Vec::new(),
        backing: RegionBacking::Trapped,
    };
    let mut regions: Vec<RegionDesc> = (0..NUM_REGIONS).map(absent).collect();
    let mut put = |r: RegionDesc| {
        if let Some(slot) = regions.get_mut(r.index as usize) {
            *slot = r;
        }
    };
    for b in device.bars() {
        let (mmappable, sparse_mmap, backing) = match b.kind {
            BarKind::Registers => (false, Vec::new(), RegionBacking::Trapped),
            BarKind::DeviceMemory { memory } => {
                (true, vec![(0, memory)], RegionBacking::DeviceMemory)
            }
        };
        put(RegionDesc {
            index: u32::from(b.bar),
            size: b.size,
            readable: true,
            writable: true,
            mmappable,
            sparse_mmap,
            backing,
        });
    }
    put(RegionDesc {
        index: CONFIG_REGION_INDEX,
        size: CONFIG_SPACE_SIZE,
        readable: true,
        writable: true,
        mmappable: false,
        sparse_mmap: Vec::new(),
        backing: RegionBacking::Trapped,
    });
    regions
}

/// Monotonic nanoseconds since the daemon started.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Transport counters, reported by the control socket's `status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    pub region_reads: u64,
    pub region_writes: u64,
    pub dma_maps: u64,
    /// DMA_MAPs refused because the client holds `--max-dma-maps` ranges already.
    pub dma_maps_refused: u64,
    pub dma_unmaps: u64,
    pub set_irqs: u64,
    pub resets: u64,
    pub interrupts_delivered: u64,
    /// Interrupts raised while the eventfd's counter was full: still pending.
    pub interrupts_coalesced: u64,
    /// Interrupts raised while no eventfd was registered for the vector.
    pub interrupts_dropped: u64,
    /// Eventfds given up: the client made one blocking again, or a write failed.
    pub interrupt_fds_revoked: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

/// The client connection, as the control socket reports it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ConnectionState {
    pub connected: bool,
    pub connections: u64,
    pub disconnects: u64,
}

/// Eventfds registered with SET_IRQS, per IRQ index and vector.
#[derive(Debug)]
pub struct IrqTable {
    vectors: Vec<Vec<Option<IrqEventFd>>>,
}

/// What [`IrqTable::fire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fired {
    /// No eventfd is registered for the vector.
    Unregistered,
    Signal(Signal),
}

impl IrqTable {
    fn new(irqs: &[IrqDesc]) -> Self {
        let mut vectors: Vec<Vec<Option<IrqEventFd>>> = (0..NUM_IRQS).map(|_| Vec::new()).collect();
        for d in irqs {
            if let Some(v) = vectors.get_mut(d.index as usize) {
                v.resize_with(d.count as usize, || None);
            }
        }
        Self { vectors }
    }

    /// Signal one vector, without blocking. An eventfd that can no longer be
    /// written safely is forgotten.
    fn fire(&mut self, index: u32, vector: usize) -> Fired {
        let slot = self
            .vectors
            .get_mut(index as usize)
            .and_then(|v| v.get_mut(vector));
        let Some(slot) = slot else {
            return Fired::Unregistered;
        };
        let Some(fd) = slot else {
            return Fired::Unregistered;
        };
        let signal = fd.signal();
        if let Signal::Revoked(errno) = signal {
            warn!(
                "IRQ index {index} vector {vector}: eventfd given up (errno {errno}: the client \
                 made it blocking, or it failed)"
            );
            *slot = None;
        }
        Fired::Signal(signal)
    }

    /// Forget every eventfd (the client went away).
    fn clear(&mut self) {
        for v in &mut self.vectors {
            v.iter_mut().for_each(|e| *e = None);
        }
    }

    /// How many vectors of `index` have an eventfd.
    pub fn registered(&self, index: u32) -> usize {
        self.vectors
            .get(index as usize)
            .map_or(0, |v| v.iter().filter(|e| e.is_some()).count())
    }
}

/// The vfio-pci IRQ indices of `device`, all [`NUM_IRQS`] of them: INTx (one line,
/// maskable and automasked, as vfio-pci's level-triggered INTx), no MSI (the function
/// has no MSI capability), MSI-X with the function's table size, no REQ; and the error
/// interrupt (VFIO_PCI_ERR_IRQ_INDEX) with one eventfd vector, which Linux's vfio-pci
/// offers for every PCIe function (drivers/vfio/pci/vfio_pci_core.c,
/// `vfio_pci_get_irq_count`) and signals when the host's AER driver reports an
/// uncorrectable error of the device (`vfio_pci_core_aer_err_detected`). QEMU
/// registers an eventfd for it when the count is 1, and warns "Could not enable
/// error recovery for the device" otherwise (hw/vfio/pci.c,
/// `vfio_pci_populate_device`). A signal makes QEMU report "Unrecoverable error
/// detected" and stop the VM (`vfio_err_notifier_handler`: vm_stop with
/// RUN_STATE_INTERNAL_ERROR). The device therefore signals it only when asked to
/// (the control socket's `inject-ras` with `"host": true`); its own errors reach the
/// guest through the CXL RAS capability and PCIe Device Status, as on hardware whose
/// errors the host leaves to the guest.
pub fn vfio_irqs(device: &AccelDevice) -> Vec<IrqDesc> {
    let src = device.interrupt_sources();
    (0..NUM_IRQS)
        .map(|index| {
            let (count, maskable, automasked) = match index {
                // INTx is level-triggered: vfio automasks it until the client unmasks.
                IRQ_INTX => (u32::from(src.intx), true, true),
                IRQ_MSIX => (u32::from(src.msix_vectors), false, false),
                IRQ_ERR => (1, false, false),
                _ => (0, false, false),
            };
            IrqDesc {
                index,
                count,
                eventfd: count > 0,
                maskable: maskable && count > 0,
                automasked: automasked && count > 0,
            }
        })
        .collect()
}

/// Everything the vfio-user thread and the control thread share.
pub struct Shared {
    pub device: AccelDevice,
    pub guest: GuestRam,
    pub irqs: IrqTable,
    pub counters: Counters,
    pub connection: ConnectionState,
    /// The mailbox payload page, when it is shared memory that QEMU maps as a sparse
    /// area of BAR0 (see [`Shared::share_mailbox_payload`]).
    pub payload: Option<Arc<PayloadPage>>,
    /// Where long work goes (see [`Shared::attach_worker`]); without it, the device
    /// runs it in place.
    worker: Option<WorkQueue>,
}

impl Shared {
    pub fn new(device: AccelDevice) -> Self {
        let irqs = IrqTable::new(&vfio_irqs(&device));
        Self {
            device,
            guest: GuestRam::default(),
            irqs,
            counters: Counters::default(),
            connection: ConnectionState::default(),
            payload: None,
            worker: None,
        }
    }

    /// Send the device's long work to `queue` from now on, instead of running it
    /// within the access that starts it.
    pub fn attach_worker(&mut self, queue: WorkQueue) {
        self.device.set_offload(true);
        self.worker = Some(queue);
    }

    /// Queue the jobs the device handed out, each with what it needs: a DMA transfer
    /// takes a snapshot of the guest RAM mappings. A job the worker cannot take fails
    /// at once (a transfer with ERR_ABORTED, a wipe with an error).
    pub fn dispatch_jobs(&mut self) {
        for job in self.device.take_jobs() {
            let queued = match (&self.worker, &job) {
                (Some(q), Job::Dma(j)) => q.send(Work::Dma {
                    job: j.clone(),
                    guest: self.guest.clone(),
                }),
                (Some(q), Job::Wipe(j)) => q.send(Work::Wipe(j.clone())),
                (None, _) => false,
            };
            if queued {
                continue;
            }
            warn!("no worker to run {job:?}; it fails");
            match job {
                Job::Dma(j) => {
                    let code = cxl_regs::layout::engine::ERR_ABORTED;
                    self.device.complete_dma(j.id(), Err(code));
                }
                Job::Wipe(j) => {
                    self.device.complete_wipe(j.id(), Err(WipeError::Aborted));
                }
            }
        }
    }

    /// After a device access: hand out its long work, deliver its interrupts.
    pub fn settle(&mut self) {
        self.dispatch_jobs();
        self.deliver_interrupts();
    }

    /// Move the mailbox payload registers into a memfd page that BAR0's region info
    /// offers as a sparse mmap area, so that the guest reads and writes the payload
    /// without a message per dword; only the other mailbox registers still trap.
    /// Returns false (nothing changed) without a mailbox, or when the payload does not
    /// sit on whole pages of BAR0.
    pub fn share_mailbox_payload(&mut self) -> Result<bool, StorageError> {
        let Some(mb) = self.device.mailbox_mut() else {
            return Ok(false);
        };
        let len = 1usize << mb.config().payload_log2;
        let offset = cxl_regs::layout::MAILBOX_PAYLOAD_OFFSET;
        let page = crate::memory::page_size();
        if !offset.is_multiple_of(page) || !(len as u64).is_multiple_of(page) {
            return Ok(false);
        }
        let shared = PayloadPage::memfd(offset, len)?;
        if mb
            .set_payload_buf(Box::new(SharedPayload(shared.clone())))
            .is_err()
        {
            return Ok(false);
        }
        self.payload = Some(shared);
        Ok(true)
    }

    /// Deliver the interrupts the device raised since the last call.
    pub fn deliver_interrupts(&mut self) {
        for irq in self.device.take_interrupts() {
            let (index, vector) = match irq {
                Interrupt::Msix(v) => (IRQ_MSIX, usize::from(v)),
                Interrupt::Intx => (IRQ_INTX, 0),
            };
            if self.raise(index, vector) == Fired::Unregistered {
                debug!("interrupt {irq:?} dropped: no eventfd registered");
            }
        }
    }

    /// Signal the error interrupt (VFIO_PCI_ERR_IRQ_INDEX; see [`vfio_irqs`]).
    /// Returns false when the client registered no eventfd for it.
    pub fn signal_host_error(&mut self) -> bool {
        matches!(
            self.raise(IRQ_ERR, 0),
            Fired::Signal(Signal::Sent | Signal::Pending)
        )
    }

    /// Signal one vector and count what happened.
    fn raise(&mut self, index: u32, vector: usize) -> Fired {
        let fired = self.irqs.fire(index, vector);
        let c = &mut self.counters;
        let counter = match fired {
            Fired::Signal(Signal::Sent) => &mut c.interrupts_delivered,
            Fired::Signal(Signal::Pending) => &mut c.interrupts_coalesced,
            Fired::Signal(Signal::Revoked(_)) => &mut c.interrupt_fds_revoked,
            Fired::Unregistered => &mut c.interrupts_dropped,
        };
        *counter = counter.saturating_add(1);
        fired
    }
}

/// Count one event (a counter saturates rather than wrap).
fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

/// Lock the shared state. A panic elsewhere while holding the lock must not take the
/// daemon down with it, so a poisoned lock is used as is.
pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The device as the vfio-user server sees it.
pub struct VfioDevice {
    shared: Arc<Mutex<Shared>>,
    devmem: Arc<DeviceMemoryFile>,
    clock: Arc<dyn Clock>,
    regions: Vec<RegionDesc>,
    irqs: Vec<IrqDesc>,
}

impl VfioDevice {
    pub fn new(
        shared: Arc<Mutex<Shared>>,
        devmem: Arc<DeviceMemoryFile>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (regions, irqs) = {
            let s = lock(&shared);
            (vfio_regions(&s.device), vfio_irqs(&s.device))
        };
        Self {
            shared,
            devmem,
            clock,
            regions,
            irqs,
        }
    }

    /// The region `index`, or `None` when the device has no such region (config space
    /// is one of them).
    fn region(&self, index: u32) -> Option<&RegionDesc> {
        self.regions.iter().find(|r| r.index == index && r.size > 0)
    }

    /// Check that `offset..offset+len` lies inside region `index`; returns the BAR
    /// number for BARs and `None` for config space.
    fn check_access(
        &self,
        index: u32,
        offset: u64,
        len: usize,
        write: bool,
    ) -> Result<Option<u8>, Errno> {
        if index >= NUM_REGIONS {
            return Err(libc::EINVAL);
        }
        let r = self.region(index).ok_or(libc::EINVAL)?;
        let end = offset.checked_add(len as u64).ok_or(libc::EINVAL)?;
        if end > r.size || len == 0 {
            return Err(libc::EINVAL);
        }
        if (write && !r.writable) || (!write && !r.readable) {
            return Err(libc::EACCES);
        }
        Ok(match index {
            CONFIG_REGION_INDEX => None,
            0..=5 => Some(index as u8),
            _ => return Err(libc::EINVAL),
        })
    }

    fn fail(&self, errno: Errno) -> Errno {
        bump(&mut lock(&self.shared).counters.errors);
        errno
    }
}

impl VfioUserDevice for VfioDevice {
    fn num_regions(&self) -> u32 {
        NUM_REGIONS
    }

    fn num_irqs(&self) -> u32 {
        NUM_IRQS
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, Errno> {
        if index >= NUM_REGIONS {
            return Err(libc::EINVAL);
        }
        let Some(r) = self.region(index) else {
            return Ok(RegionInfo::default());
        };
        let mut info = RegionInfo {
            size: r.size,
            readable: r.readable,
            writable: r.writable,
            ..RegionInfo::default()
        };
        if index == u32::from(cxl_regs::layout::BAR_REGS) {
            // BAR0 traps, except the mailbox payload when it is shared memory: one
            // sparse area over it, with BAR0's region fd (file offset = BAR offset).
            if let Some(p) = &lock(&self.shared).payload {
                info.mmappable = true;
                info.sparse_mmap = vec![p.area()];
                info.fd = Some(p.fd());
                info.fd_offset = 0;
            }
        }
        if r.backing == RegionBacking::DeviceMemory {
            // The whole BAR is the device-memory fd. One sparse area covering it (the
            // sparse mmap capability of VFIO_USER_DEVICE_GET_REGION_INFO, QEMU's
            // docs/interop/vfio-user.rst) makes every client pass the fd on and mmap
            // it, the `vfio_user` crate's too (README "Why our own vfio-user server").
            let size = r.size.min(self.devmem.size());
            info.mmappable = true;
            info.sparse_mmap = if r.sparse_mmap.is_empty() {
                vec![(0, size)]
            } else {
                r.sparse_mmap.clone()
            };
            info.fd = Some(self.devmem.fd());
            info.fd_offset = 0;
        }
        Ok(info)
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        if index >= NUM_IRQS {
            return Err(libc::EINVAL);
        }
        let Some(d) = self.irqs.iter().find(|d| d.index == index) else {
            return Ok(IrqInfo { count: 0, flags: 0 });
        };
        let mut flags = 0;
        if d.eventfd {
            flags |= VFIO_IRQ_INFO_EVENTFD;
        }
        if d.maskable {
            flags |= VFIO_IRQ_INFO_MASKABLE;
        }
        if d.automasked {
            flags |= VFIO_IRQ_INFO_AUTOMASKED;
        }
        if index == IRQ_MSIX {
            flags |= VFIO_IRQ_INFO_NORESIZE;
        }
        Ok(IrqInfo {
            count: d.count,
            flags,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let bar = self
            .check_access(index, offset, buf.len(), false)
            .map_err(|e| self.fail(e))?;
        let mut s = lock(&self.shared);
        bump(&mut s.counters.region_reads);
        match bar {
            None => s.device.config_read(offset, buf),
            Some(bar) => s.device.bar_read(bar, offset, buf),
        }
        s.settle();
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let bar = self
            .check_access(index, offset, data.len(), true)
            .map_err(|e| self.fail(e))?;
        let mut s = lock(&self.shared);
        bump(&mut s.counters.region_writes);
        let Shared { device, guest, .. } = &mut *s;
        match bar {
            None => device.config_write(offset, data),
            Some(bar) => device.bar_write(bar, offset, data, guest),
        }
        s.settle();
        Ok(())
    }

    fn dma_map(&mut self, map: DmaMapping) -> Result<(), Errno> {
        let (iova, size, has_fd) = (map.iova, map.size, map.fd.is_some());
        let mut s = lock(&self.shared);
        bump(&mut s.counters.dma_maps);
        match s.guest.map(map) {
            Ok(()) => {
                debug!(
                    "DMA_MAP {iova:#x}+{size:#x}{}",
                    if has_fd { "" } else { " (no fd)" }
                );
                Ok(())
            }
            Err(e) => {
                bump(&mut s.counters.errors);
                if e == libc::ENOSPC {
                    bump(&mut s.counters.dma_maps_refused);
                    warn!(
                        "DMA_MAP {iova:#x}+{size:#x} refused: the client holds {} mappings, \
                         the most --max-dma-maps allows",
                        s.guest.max_maps()
                    );
                } else {
                    warn!("DMA_MAP {iova:#x}+{size:#x} refused: errno {e}");
                }
                Err(e)
            }
        }
    }

    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), Errno> {
        let mut s = lock(&self.shared);
        bump(&mut s.counters.dma_unmaps);
        match s.guest.unmap(iova, size) {
            Ok(n) => {
                debug!("DMA_UNMAP {iova:#x}+{size:#x}: {n} range(s)");
                Ok(())
            }
            Err(e) => {
                bump(&mut s.counters.errors);
                warn!("DMA_UNMAP {iova:#x}+{size:#x} refused: errno {e}");
                Err(e)
            }
        }
    }

    fn max_dma_maps(&self) -> Option<u32> {
        u32::try_from(lock(&self.shared).guest.max_maps()).ok()
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<Option<IrqEventFd>>,
    ) -> Result<(), Errno> {
        let mut s = lock(&self.shared);
        bump(&mut s.counters.set_irqs);
        let r = set_irqs(&mut s, index, flags, start, count, fds);
        if r.is_err() {
            bump(&mut s.counters.errors);
        }
        r
    }

    /// VFIO_DEVICE_RESET is a conventional reset of the device (accel_type2::reset):
    /// QEMU sends it at machine reset, for a secondary bus reset of the port above,
    /// and when it connects, so every new guest finds a power-cycled device with its
    /// memory and LSA kept. (An FLR arrives as a config write, a CXL Reset as a
    /// DVSEC write; the model sees both itself.)
    fn reset(&mut self) -> Result<(), Errno> {
        let mut s = lock(&self.shared);
        bump(&mut s.counters.resets);
        s.device.reset_kind(accel_type2::ResetKind::Conventional);
        s.settle();
        info!("device reset by the client");
        Ok(())
    }

    fn tick(&mut self) -> Option<Duration> {
        let mut s = lock(&self.shared);
        s.device.poll();
        s.settle();
        let deadline = s.device.next_deadline()?;
        Some(Duration::from_nanos(
            deadline.saturating_sub(self.clock.now_ns()),
        ))
    }

    fn disconnected(&mut self) {
        let mut s = lock(&self.shared);
        // The client's memory and eventfds die with it; device state stays.
        s.guest.clear();
        s.irqs.clear();
        if s.connection.connected {
            s.connection.connected = false;
            bump(&mut s.connection.disconnects);
        }
    }
}

/// VFIO_DEVICE_SET_IRQS semantics (linux/vfio.h), with MSI-X vectors merged by
/// `start` (QEMU sends one vector per message).
fn set_irqs(
    s: &mut Shared,
    index: u32,
    flags: u32,
    start: u32,
    count: u32,
    fds: Vec<Option<IrqEventFd>>,
) -> Result<(), Errno> {
    let vectors = s.irqs.vectors.get_mut(index as usize).ok_or(libc::EINVAL)?;
    let end = start.checked_add(count).ok_or(libc::EINVAL)? as usize;
    // count 0 is allowed only with DATA_NONE + TRIGGER (disable all) and needs no
    // range; anything else must fit the index.
    if count > 0 && end > vectors.len() {
        return Err(libc::EINVAL);
    }
    let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
    if data.count_ones() != 1 || action.count_ones() != 1 {
        return Err(libc::EINVAL);
    }
    match action {
        VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK => {
            // INTx masking and its resample eventfd: the device re-raises level
            // interrupts itself, so there is nothing to keep. MSI-X masking lives
            // in the vector table in BAR4.
            Ok(())
        }
        VFIO_IRQ_SET_ACTION_TRIGGER => match data {
            VFIO_IRQ_SET_DATA_NONE if count == 0 => {
                vectors.iter_mut().for_each(|e| *e = None);
                debug!("IRQ index {index}: all vectors disabled");
                Ok(())
            }
            VFIO_IRQ_SET_DATA_NONE => {
                for v in start as usize..end {
                    s.raise(index, v);
                }
                Ok(())
            }
            VFIO_IRQ_SET_DATA_EVENTFD => {
                if fds.len() != count as usize {
                    return Err(libc::EINVAL);
                }
                // count 0 passes the range check above, so `start` may lie past
                // the vectors: refuse it rather than slice out of bounds.
                let slots = vectors.get_mut(start as usize..end).ok_or(libc::EINVAL)?;
                for (slot, fd) in slots.iter_mut().zip(fds) {
                    *slot = fd;
                }
                debug!("IRQ index {index}: eventfds for vectors {start}..{end}");
                Ok(())
            }
            // DATA_BOOL carries a byte array this interface does not pass on.
            VFIO_IRQ_SET_DATA_BOOL => Err(libc::EINVAL),
            _ => Err(libc::EINVAL),
        },
        _ => Err(libc::EINVAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accel_type2::{AccelConfig, DefaultFirmware, MemLsa};
    use std::fs::File;
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn fixture() -> (VfioDevice, Arc<Mutex<Shared>>) {
        let cfg = AccelConfig {
            memory_size: 256 << 20,
            ..AccelConfig::default()
        };
        let mem = DeviceMemoryFile::memfd(cfg.memory_size).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
        let dev = AccelDevice::new(
            cfg,
            Box::new(crate::memory::SharedDeviceMemory(mem.clone())),
            Box::new(MemLsa(vec![0; 1024])),
            Box::new(DefaultFirmware),
            clock.clone(),
        )
        .unwrap();
        let shared = Arc::new(Mutex::new(Shared::new(dev)));
        (VfioDevice::new(shared.clone(), mem, clock), shared)
    }

    fn eventfd() -> (EventFd, IrqEventFd) {
        let e = EventFd::new(EFD_NONBLOCK).unwrap();
        let dup = e.try_clone().unwrap();
        // SAFETY: `dup` is a fresh eventfd owned by nobody else; into_raw_fd gives
        // up its ownership.
        let owned = unsafe { OwnedFd::from_raw_fd(dup.into_raw_fd()) };
        (e, IrqEventFd::new(owned).unwrap())
    }

    #[test]
    fn out_of_range_accesses_are_errors() {
        let (mut d, shared) = fixture();
        let mut b = [0u8; 4];
        assert_eq!(d.region_read(NUM_REGIONS, 0, &mut b), Err(libc::EINVAL));
        assert_eq!(
            d.region_read(CONFIG_REGION_INDEX, CONFIG_SPACE_SIZE - 2, &mut b),
            Err(libc::EINVAL)
        );
        assert_eq!(
            d.region_read(CONFIG_REGION_INDEX, u64::MAX, &mut b),
            Err(libc::EINVAL)
        );
        assert_eq!(d.region_write(8, 0, &b), Err(libc::EINVAL));
        assert_eq!(
            d.region_read(CONFIG_REGION_INDEX, 0, &mut []),
            Err(libc::EINVAL)
        );
        d.region_read(CONFIG_REGION_INDEX, 0, &mut b).unwrap();
        assert_eq!(lock(&shared).counters.errors, 5);
        assert!(d.region_info(NUM_REGIONS).is_err());
        assert!(d.irq_info(NUM_IRQS).is_err());
    }

    #[test]
    fn shared_payload_is_a_sparse_area_of_bar0() {
        use cxl_regs::layout::{BAR_REGS, MAILBOX_PAYLOAD_OFFSET as PL, MAILBOX_PAYLOAD_SIZE};
        use cxl_regs::mailbox as mb;
        let (mut d, shared) = fixture();
        let bar0 = u32::from(BAR_REGS);
        let before = d.region_info(bar0).unwrap();
        assert!(!before.mmappable && before.fd.is_none() && before.sparse_mmap.is_empty());
        assert!(lock(&shared).share_mailbox_payload().unwrap());
        let info = d.region_info(bar0).unwrap();
        assert!(info.mmappable);
        assert_eq!(
            info.sparse_mmap,
            vec![(PL, u64::from(MAILBOX_PAYLOAD_SIZE))]
        );
        assert_eq!(info.fd_offset, 0);
        let fd = info.fd.expect("BAR0 fd");
        // The guest's view (QEMU maps the fd at the area's offset): an Identify
        // issued through the trapped registers leaves its output in the shared page.
        let mbox = cxl_regs::layout::MAILBOX_OFFSET;
        d.region_write(
            bar0,
            mbox + u64::from(mb::COMMAND),
            &u64::from(mb::OP_IDENTIFY_MEMORY_DEVICE).to_le_bytes(),
        )
        .unwrap();
        d.region_write(
            bar0,
            mbox + u64::from(mb::CONTROL),
            &mb::CTRL_DOORBELL.to_le_bytes(),
        )
        .unwrap();
        let mut out = [0u8; 8];
        // SAFETY: `fd` stays open while `shared` holds the page; the File is leaked
        // back into a raw fd below, so it is not closed here.
        let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        std::os::unix::fs::FileExt::read_exact_at(
            &f,
            &mut out,
            PL + mb::identify::TOTAL_CAPACITY as u64,
        )
        .unwrap();
        let _ = std::os::fd::IntoRawFd::into_raw_fd(f);
        assert_eq!(u64::from_le_bytes(out), 1, "256 MiB in 256 MiB units");
        // Trapped reads of the payload still work, from the same page.
        let mut b = [0u8; 8];
        d.region_read(bar0, PL + mb::identify::TOTAL_CAPACITY as u64, &mut b)
            .unwrap();
        assert_eq!(b, out);
    }

    #[test]
    fn vfio_pci_numbering_of_the_model_description() {
        let (d, shared) = fixture();
        // linux/vfio.h: 9 regions, config space at 7; 5 IRQ indices.
        assert_eq!((d.num_regions(), d.num_irqs()), (9, 5));
        let sizes: Vec<u64> = (0..9).map(|i| d.region_info(i).unwrap().size).collect();
        let bar2 = lock(&shared).device.bar2_size();
        assert_eq!(sizes, vec![0x2_0000, 0, bar2, 0, 0x4000, 0, 0, 4096, 0]);
        let bar2 = d.region_info(2).unwrap();
        assert!(bar2.mmappable && bar2.fd.is_some());
        assert_eq!(bar2.sparse_mmap, vec![(0, 256 << 20)]);
        assert!(!d.region_info(4).unwrap().mmappable);
        let irqs: Vec<(u32, u32)> = (0..5)
            .map(|i| {
                let q = d.irq_info(i).unwrap();
                (q.count, q.flags)
            })
            .collect();
        let intx = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED;
        let msix = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE;
        assert_eq!(
            irqs,
            vec![
                (1, intx),
                (0, 0),
                (4, msix),
                (1, VFIO_IRQ_INFO_EVENTFD),
                (0, 0)
            ]
        );
    }

    #[test]
    fn config_region_always_present() {
        let (d, _) = fixture();
        let info = d.region_info(CONFIG_REGION_INDEX).unwrap();
        assert_eq!(info.size, CONFIG_SPACE_SIZE);
        assert!(info.readable && info.writable && !info.mmappable && info.fd.is_none());
    }

    #[test]
    fn msix_eventfds_merge_by_start() {
        let (mut d, shared) = fixture();
        let n = lock(&shared).irqs.vectors[IRQ_MSIX as usize].len() as u32;
        assert_eq!(n, u32::from(cxl_regs::layout::MSIX_VECTORS));
        assert_eq!(d.irq_info(IRQ_MSIX).unwrap().count, n);
        let trig = VFIO_IRQ_SET_ACTION_TRIGGER;
        let (e0, f0) = eventfd();
        let (e1, f1) = eventfd();
        d.set_irqs(
            IRQ_MSIX,
            trig | VFIO_IRQ_SET_DATA_EVENTFD,
            0,
            1,
            vec![Some(f0)],
        )
        .unwrap();
        d.set_irqs(
            IRQ_MSIX,
            trig | VFIO_IRQ_SET_DATA_EVENTFD,
            1,
            1,
            vec![Some(f1)],
        )
        .unwrap();
        assert_eq!(lock(&shared).irqs.registered(IRQ_MSIX), 2);
        // DATA_NONE + count>0 fires the vectors.
        d.set_irqs(IRQ_MSIX, trig | VFIO_IRQ_SET_DATA_NONE, 0, 2, vec![])
            .unwrap();
        assert_eq!(e0.read().unwrap(), 1);
        assert_eq!(e1.read().unwrap(), 1);
        // A -1 fd clears one vector only.
        d.set_irqs(IRQ_MSIX, trig | VFIO_IRQ_SET_DATA_EVENTFD, 0, 1, vec![None])
            .unwrap();
        assert_eq!(lock(&shared).irqs.registered(IRQ_MSIX), 1);
        // Out of range, fd count mismatch, two data types.
        assert!(d
            .set_irqs(IRQ_MSIX, trig | VFIO_IRQ_SET_DATA_EVENTFD, n, 1, vec![None])
            .is_err());
        assert!(d
            .set_irqs(IRQ_MSIX, trig | VFIO_IRQ_SET_DATA_EVENTFD, 0, 2, vec![None])
            .is_err());
        assert!(d.set_irqs(IRQ_MSIX, trig | 3, 0, 1, vec![]).is_err());
        assert!(d
            .set_irqs(u32::MAX, trig | VFIO_IRQ_SET_DATA_NONE, 0, 0, vec![])
            .is_err());
        // count 0 + DATA_NONE disables the index.
        d.set_irqs(IRQ_MSIX, trig | VFIO_IRQ_SET_DATA_NONE, 0, 0, vec![])
            .unwrap();
        assert_eq!(lock(&shared).irqs.registered(IRQ_MSIX), 0);
    }

    #[test]
    fn eventfd_set_of_no_vectors_past_the_end_is_refused() {
        // Found by the vfio_user_stream fuzz target: SET_IRQS with DATA_EVENTFD,
        // count 0 and start past the vectors sliced out of bounds and panicked.
        let (mut d, shared) = fixture();
        let n = d.irq_info(IRQ_MSIX).unwrap().count;
        let flags = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;
        assert_eq!(
            d.set_irqs(IRQ_MSIX, flags, 146, 0, vec![]),
            Err(libc::EINVAL)
        );
        assert_eq!(
            d.set_irqs(IRQ_MSIX, flags, n + 1, 0, vec![]),
            Err(libc::EINVAL)
        );
        assert_eq!(d.set_irqs(IRQ_INTX, flags, 2, 0, vec![]), Err(libc::EINVAL));
        // An empty set inside the range is a no-op.
        assert_eq!(d.set_irqs(IRQ_MSIX, flags, n, 0, vec![]), Ok(()));
        assert_eq!(lock(&shared).irqs.registered(IRQ_MSIX), 0);
    }

    #[test]
    fn error_interrupt_is_one_eventfd_vector_signalled_on_request() {
        let (mut d, shared) = fixture();
        let info = d.irq_info(IRQ_ERR).unwrap();
        assert_eq!((info.count, info.flags), (1, VFIO_IRQ_INFO_EVENTFD));
        assert!(!lock(&shared).signal_host_error(), "nothing registered yet");
        let (e, fd) = eventfd();
        let trig = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;
        d.set_irqs(IRQ_ERR, trig, 0, 1, vec![Some(fd)]).unwrap();
        assert_eq!(lock(&shared).irqs.registered(IRQ_ERR), 1);
        assert!(d.set_irqs(IRQ_ERR, trig, 1, 1, vec![None]).is_err());
        // A device-raised RAS error does not reach the host on its own.
        lock(&shared).device.inject_ras(true, 4);
        lock(&shared).deliver_interrupts();
        assert!(e.read().is_err(), "signalled without being asked");
        assert!(lock(&shared).signal_host_error());
        assert_eq!(e.read().unwrap(), 1);
    }

    #[test]
    fn a_full_eventfd_counter_is_a_pending_interrupt() {
        let (mut d, shared) = fixture();
        let (e, fd) = eventfd();
        let trig = VFIO_IRQ_SET_ACTION_TRIGGER;
        d.set_irqs(
            IRQ_MSIX,
            trig | VFIO_IRQ_SET_DATA_EVENTFD,
            0,
            1,
            vec![Some(fd)],
        )
        .unwrap();
        e.write(u64::MAX - 1).unwrap();
        d.set_irqs(IRQ_MSIX, trig | VFIO_IRQ_SET_DATA_NONE, 0, 2, vec![])
            .unwrap();
        let c = lock(&shared).counters.clone();
        assert_eq!(
            (
                c.interrupts_delivered,
                c.interrupts_coalesced,
                c.interrupts_dropped
            ),
            (0, 1, 1)
        );
        assert_eq!(e.read().unwrap(), u64::MAX - 1);
    }

    #[test]
    fn disconnect_drops_client_resources() {
        let (mut d, shared) = fixture();
        d.dma_map(DmaMapping {
            iova: 0,
            size: 0x1000,
            offset: 0,
            readable: true,
            writable: true,
            fd: None,
        })
        .unwrap();
        lock(&shared).connection.connected = true;
        d.disconnected();
        let s = lock(&shared);
        assert_eq!(s.guest.stats().0, 0);
        assert!(!s.connection.connected);
        assert_eq!(s.connection.disconnects, 1);
    }
}
