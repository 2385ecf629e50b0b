//! A vfio-user server: the device side of the protocol that QEMU's `vfio-user-pci`
//! speaks, for any PCI device that lives in another process. It knows nothing of
//! CXL; the `backend` crate's device adapter serves the cxl-accel device through it.
//!
//! Layers: [`protocol`] (message structs and their wire encoding, bounded and
//! checked), [`server`] (framing over a UNIX stream with SCM_RIGHTS, dispatch,
//! replies with real errnos), [`irq`] (the interrupt eventfds a client registers),
//! [`sys`] (the few syscalls std lacks). A device implements [`VfioUserDevice`]:
//! its regions and IRQ indices in vfio-pci numbering, region reads and writes, DMA
//! map and unmap, SET_IRQS and reset. [`Server::bind`] creates the socket (0600) and
//! [`Server::serve`] runs one client connection to its end.
//!
//! Everything here reads what a peer sent, so nothing may panic on it: the crate
//! denies `unwrap`, `expect`, indexing and unchecked arithmetic (the workspace lints
//! in Cargo.toml); each `allow` says why it cannot fire.

// In unit tests a panic is a failed test.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod irq;
pub mod protocol;
pub mod server;
pub mod sys;

use std::os::fd::OwnedFd;
use std::os::unix::io::RawFd;

pub use irq::{IrqEventFd, Signal};
pub use server::{ServeOutcome, Server, ServerError, ServerStats, StatsSnapshot};

/// A positive errno value, sent back in an error reply.
pub type Errno = i32;

/// What the server tells the client about one region (VFIO_DEVICE_GET_REGION_INFO).
#[derive(Debug, Clone, Default)]
pub struct RegionInfo {
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    pub mmappable: bool,
    /// Sparse mmap areas (offset, size); sent as VFIO_REGION_INFO_CAP_SPARSE_MMAP.
    pub sparse_mmap: Vec<(u64, u64)>,
    /// An fd to pass with the reply, and the offset of the region in it.
    pub fd: Option<RawFd>,
    pub fd_offset: u64,
}

/// VFIO_DEVICE_GET_IRQ_INFO.
#[derive(Debug, Clone, Copy, Default)]
pub struct IrqInfo {
    pub count: u32,
    /// VFIO_IRQ_INFO_* flags.
    pub flags: u32,
}

/// One DMA_MAP request.
#[derive(Debug)]
pub struct DmaMapping {
    pub iova: u64,
    pub size: u64,
    /// Offset into `fd`.
    pub offset: u64,
    pub readable: bool,
    pub writable: bool,
    /// The fd QEMU passed, if any (a mapping without one is not accessible).
    pub fd: Option<OwnedFd>,
}

/// The device side of vfio-user. Every method returns an errno on failure; the
/// server sends it back to the client and carries on.
pub trait VfioUserDevice {
    fn num_regions(&self) -> u32;
    fn num_irqs(&self) -> u32;
    fn region_info(&self, index: u32) -> Result<RegionInfo, Errno>;
    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno>;
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    fn dma_map(&mut self, map: DmaMapping) -> Result<(), Errno>;
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), Errno>;
    /// DMA_UNMAP with VFIO_DMA_UNMAP_FLAG_ALL: drop every mapping. By default,
    /// an unmap of the whole address space `[0, u64::MAX)`.
    fn dma_unmap_all(&mut self) -> Result<(), Errno> {
        self.dma_unmap(0, u64::MAX)
    }
    /// VFIO_DEVICE_SET_IRQS. `fds` are the eventfds for `start..start+count` when
    /// `flags` has VFIO_IRQ_SET_DATA_EVENTFD (an fd of -1 on the wire is `None`);
    /// the server has checked that each is an eventfd and made it non-blocking.
    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<Option<IrqEventFd>>,
    ) -> Result<(), Errno>;
    /// VFIO_DEVICE_SET_IRQS with VFIO_IRQ_SET_DATA_BOOL: `data[i]` says whether
    /// the action applies to vector `start + i`. By default, each run of `true`
    /// becomes a DATA_NONE call to [`set_irqs`](Self::set_irqs) (which means
    /// "apply to all of start..start+count").
    fn set_irqs_bool(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        data: &[bool],
    ) -> Result<(), Errno> {
        use vfio_bindings::bindings::vfio::{VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK};
        let flags = (flags & !VFIO_IRQ_SET_DATA_TYPE_MASK) | VFIO_IRQ_SET_DATA_NONE;
        let mut i = 0usize;
        while i < data.len() {
            if !data.get(i).copied().unwrap_or(false) {
                i = i.saturating_add(1);
                continue;
            }
            let run = data
                .get(i..)
                .unwrap_or(&[])
                .iter()
                .take_while(|&&b| b)
                .count();
            let first = u32::try_from(i).ok().and_then(|i| start.checked_add(i));
            let count = u32::try_from(run).ok();
            match (first, count) {
                (Some(first), Some(count)) => {
                    self.set_irqs(index, flags, first, count, Vec::new())?
                }
                _ => return Err(libc::EINVAL),
            }
            // run >= 1: data[i] is true.
            i = i.saturating_add(run);
        }
        Ok(())
    }
    fn reset(&mut self) -> Result<(), Errno>;
    /// The most DMA mappings the device keeps at once, announced to the client in
    /// the VERSION reply (`max_dma_maps`; QEMU then refuses set-ups that could need
    /// more). `None`: not announced (the protocol's default, 65535, applies).
    fn max_dma_maps(&self) -> Option<u32> {
        None
    }
    /// Called when no message arrived for a while, and after each message: do
    /// time-driven work. Returns how long the server may sleep before calling again.
    fn tick(&mut self) -> Option<std::time::Duration> {
        None
    }
    /// The client went away.
    fn disconnected(&mut self) {}
}
