//! The cxl-accel device model: a CXL Type-2 accelerator with local device memory.
//!
//! Config space, the BAR map, component and device registers, device memory, the DMA
//! engine, firmware hooks and fault injection. It knows nothing of sockets: the
//! transport calls the entry points of [`AccelDevice`], and supplies guest memory,
//! device memory and a clock through traits.
//!
//! API CONTRACT (the backend builds against this; extend, do not break):
//! `AccelConfig`, `FlitMode`, `AccelDevice::{new, config_read, config_write,
//! bar_read, bar_write, regions, irqs, reset, poll, take_interrupts, next_deadline,
//! inject_ras, inject_event, inject_poison, status, firmware_mut}`, `GuestMemory`,
//! `DeviceMemory`, `VecMemory`, `Clock`, `RegionDesc`, `IrqDesc`, `Firmware`.

pub mod firmware;

use std::sync::Arc;

pub use firmware::{CommitDecision, DefaultFirmware, Firmware};
pub use mailbox::{EventLog, EventRecord, LsaStorage, MemLsa};
use thiserror::Error;

/// Errors of building a device.
#[derive(Debug, Error)]
pub enum AccelError {
    #[error("device memory size {0:#x} is not a non-zero multiple of 256 MiB")]
    BadMemorySize(u64),
    #[error("decoder count {0} is not supported (1, 2 or 4)")]
    BadDecoderCount(u8),
    #[error("device memory is {actual:#x} bytes but the config says {expected:#x}")]
    MemorySizeMismatch { expected: u64, actual: u64 },
    #[error(transparent)]
    Hdm(#[from] hdm::HdmError),
}

/// Errors of a guest-memory or device-memory access.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("address range {addr:#x}+{len:#x} is not mapped")]
    Unmapped { addr: u64, len: u64 },
}

/// Guest RAM as shared by the VMM (vfio-user DMA_MAP). Addresses are guest physical.
pub trait GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError>;
}

/// No guest memory at all: every access fails.
pub struct NoGuestMemory;
impl GuestMemory for NoGuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        Err(MemoryError::Unmapped { addr: gpa, len: buf.len() as u64 })
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        Err(MemoryError::Unmapped { addr: gpa, len: data.len() as u64 })
    }
}

/// The device's local memory (BAR2). Offsets are DPAs.
pub trait DeviceMemory: Send {
    fn size(&self) -> u64;
    fn read(&self, dpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    fn write(&mut self, dpa: u64, data: &[u8]) -> Result<(), MemoryError>;
}

/// Device memory in a `Vec`, for tests.
#[derive(Debug, Clone)]
pub struct VecMemory(pub Vec<u8>);

impl VecMemory {
    pub fn new(size: usize) -> Self {
        Self(vec![0; size])
    }
    fn range(&self, dpa: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        let err = MemoryError::Unmapped { addr: dpa, len: len as u64 };
        let start = usize::try_from(dpa).map_err(|_| err.clone())?;
        let end = start.checked_add(len).ok_or(err.clone())?;
        if end > self.0.len() {
            return Err(err);
        }
        Ok(start..end)
    }
}

impl Clone for MemoryError {
    fn clone(&self) -> Self {
        match *self {
            MemoryError::Unmapped { addr, len } => MemoryError::Unmapped { addr, len },
        }
    }
}

impl DeviceMemory for VecMemory {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, dpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(dpa, buf.len())?;
        buf.copy_from_slice(&self.0[r]);
        Ok(())
    }
    fn write(&mut self, dpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(dpa, data.len())?;
        self.0[r].copy_from_slice(data);
        Ok(())
    }
}

/// Monotonic time in nanoseconds.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
}

/// The flit mode the link reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum FlitMode {
    /// 256B flit mode (PCIe 6 / CXL 3): LNKSTA2 Flit Mode Status set.
    #[default]
    #[serde(rename = "256b")]
    Flit256,
    /// 68B flit mode (CXL 1.1/2.0): Flex Bus reports 68B flit and VH enabled.
    #[serde(rename = "68b")]
    Flit68,
}

/// Static configuration of the device, with the defaults of DESIGN §3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelConfig {
    pub vendor_id: u16,
    pub device_id: u16,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    pub serial: u64,
    /// Device memory size in bytes (multiple of 256 MiB).
    pub memory_size: u64,
    pub flit: FlitMode,
    pub mailbox: bool,
    /// HDM decoders: 1, 2 or 4.
    pub decoders: u8,
    /// DVSEC HDM_Count (1 or 2).
    pub hdm_count: u8,
    pub lsa_size: usize,
    pub fw_revision: String,
}

impl Default for AccelConfig {
    fn default() -> Self {
        Self {
            vendor_id: cxl_regs::layout::DEFAULT_VENDOR_ID,
            device_id: cxl_regs::layout::DEFAULT_DEVICE_ID,
            subsystem_vendor_id: cxl_regs::layout::DEFAULT_VENDOR_ID,
            subsystem_id: 0,
            serial: 0x0123_4567_89ab_cdef,
            memory_size: 512 << 20,
            flit: FlitMode::Flit256,
            mailbox: true,
            decoders: 2,
            hdm_count: 1,
            lsa_size: 64 << 10,
            fw_revision: "cxl-accel 0.1.0".into(),
        }
    }
}

/// vfio region index of PCI config space (VFIO_PCI_CONFIG_REGION_INDEX).
pub const CONFIG_REGION_INDEX: u32 = 7;
/// Number of vfio-pci regions (BAR0..5, ROM, config, VGA).
pub const NUM_REGIONS: u32 = 9;
/// Size of the config space region (PCIe extended config space).
pub const CONFIG_SPACE_SIZE: u64 = 4096;

/// How a region is backed, for the transport to attach an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionBacking {
    /// Trapped: every access goes through `bar_read`/`bar_write`/`config_*`.
    Trapped,
    /// Device memory: mmappable, the transport passes the device-memory fd.
    DeviceMemory,
}

/// Description of one vfio region.
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

/// vfio IRQ indices (VFIO_PCI_*_IRQ_INDEX).
pub const IRQ_INTX: u32 = 0;
pub const IRQ_MSI: u32 = 1;
pub const IRQ_MSIX: u32 = 2;
pub const IRQ_ERR: u32 = 3;
pub const IRQ_REQ: u32 = 4;
pub const NUM_IRQS: u32 = 5;

/// Description of one vfio IRQ index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqDesc {
    pub index: u32,
    pub count: u32,
    /// VFIO_IRQ_INFO_EVENTFD and friends.
    pub eventfd: bool,
    pub maskable: bool,
    pub automasked: bool,
}

/// An interrupt the device asks the transport to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    Msix(u16),
    Intx,
}

/// A snapshot for the control socket's `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStatus {
    pub decoders: Vec<DecoderStatus>,
    pub hdm_global_enable: bool,
    pub mem_enable: bool,
    pub dma_completions: u64,
    pub dma_errors: u64,
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar_reads: u64,
    pub bar_writes: u64,
    pub mailbox_commands: u64,
    pub firmware: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DecoderStatus {
    pub index: usize,
    pub base: u64,
    pub size: u64,
    pub dpa_skip: u64,
    pub committed: bool,
    pub locked: bool,
    pub error: bool,
    pub host_only: bool,
}

/// The device.
pub struct AccelDevice {
    cfg: AccelConfig,
    #[allow(dead_code)]
    mem: Box<dyn DeviceMemory>,
    #[allow(dead_code)]
    clock: Arc<dyn Clock>,
    firmware: Box<dyn Firmware>,
}

impl AccelDevice {
    pub fn new(
        cfg: AccelConfig,
        mem: Box<dyn DeviceMemory>,
        _lsa: Box<dyn LsaStorage>,
        firmware: Box<dyn Firmware>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AccelError> {
        Ok(Self { cfg, mem, clock, firmware })
    }
    pub fn config(&self) -> &AccelConfig {
        &self.cfg
    }
    /// Read config space at any offset and width (1..=8 bytes; longer reads are split).
    pub fn config_read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0)
    }
    pub fn config_write(&mut self, _offset: u64, _data: &[u8]) {}
    /// Read a BAR at any offset and width.
    pub fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0)
    }
    /// Write a BAR at any offset and width. `guest` is used by the DMA engine.
    pub fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8], _guest: &dyn GuestMemory) {}
    pub fn regions(&self) -> Vec<RegionDesc> {
        Vec::new()
    }
    pub fn irqs(&self) -> Vec<IrqDesc> {
        Vec::new()
    }
    /// Conventional reset (vfio DEVICE_RESET, or FLR).
    pub fn reset(&mut self) {}
    /// Advance time-driven work (delayed commits, background commands).
    pub fn poll(&mut self) {}
    /// Drain the interrupts raised since the last call.
    pub fn take_interrupts(&mut self) -> Vec<Interrupt> {
        Vec::new()
    }
    /// When `poll` next has work, in the clock's nanoseconds.
    pub fn next_deadline(&self) -> Option<u64> {
        None
    }
    /// Fault injection: a RAS uncorrectable (`uncorrectable`=true) or correctable
    /// error status bit.
    pub fn inject_ras(&mut self, _uncorrectable: bool, _bit: u8) {}
    pub fn inject_event(&mut self, _log: EventLog, _record: EventRecord) {}
    pub fn inject_poison(&mut self, _dpa: u64, _len: u64) -> Result<(), u16> {
        Ok(())
    }
    pub fn status(&self) -> DeviceStatus {
        DeviceStatus {
            decoders: Vec::new(),
            hdm_global_enable: false,
            mem_enable: false,
            dma_completions: 0,
            dma_errors: 0,
            config_reads: 0,
            config_writes: 0,
            bar_reads: 0,
            bar_writes: 0,
            mailbox_commands: 0,
            firmware: self.firmware.name().to_string(),
        }
    }
    pub fn firmware_mut(&mut self) -> &mut dyn Firmware {
        self.firmware.as_mut()
    }
}
