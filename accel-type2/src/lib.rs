//! The cxl-accel device model: a CXL Type-2 accelerator with local device memory.
//!
//! Config space, the BAR map, component and device registers, device memory, the DMA
//! engine, firmware hooks and fault injection. It knows nothing of sockets: the
//! transport calls the entry points of [`AccelDevice`], and supplies guest memory,
//! device memory and a clock through traits.
//!
//! API CONTRACT (the backend builds against this; extend, do not break):
//! `AccelConfig`, `FlitMode`, `AccelDevice::{new, config_read, config_write,
//! bar_read, bar_write, bars, interrupt_sources, reset, poll, take_interrupts, next_deadline,
//! inject_ras, inject_event, inject_poison, status, firmware_mut}`, `GuestMemory`,
//! `DeviceMemory`, `VecMemory`, `Clock`, `BarDesc`, `BarKind`, `InterruptSources`,
//! `Firmware`. The transport numbers regions and interrupts its own way (vfio-pci's,
//! in the backend's device adapter); the model describes BARs, config space and
//! interrupt sources in PCI terms.
//! Extensions: `AccelDevice::{try_inject_ras, intx_asserted, firmware,
//! set_firmware, hdm, mailbox, mailbox_mut, memory, memory_mut, config_space,
//! bar2_size, reset_kind, cxl_reset_in_progress, set_offload, take_jobs,
//! complete_dma, wipe_progress, complete_wipe, cdat, replace_cdat}`,
//! `AccelConfig::cdat`, `DeviceMemory::zero`,
//! `firmware::{by_name, names, about, SlowCommitFirmware, BiosFirmware, parse_u64,
//! CxlResetDecision}`, `Firmware::on_cxl_reset`, `reset::{ResetKind, RegisterClass,
//! Effect, effect, keeps}`, `jobs::{Job, WipeJob, WipeError}`,
//! `engine::{DmaJob, CancelFlag}`,
//! `cdat::{Cdat, CdatConfig, CdatSource, CdatError, EfiMemoryType}`. Firmware SDK:
//! `Firmware::{on_commit_due, media_ready, identify, health_info, fw_info,
//! transfer_fw, activate_fw, take_events}`, `on_reset(kind)`, typed
//! `vendor_command` (`ReturnCode`) and `set_param` (`ParamError`),
//! `MediaReadiness`; `engine::{EngineOperation, OpRequest, OpContext, OpError,
//! check_device_source}`, `AccelDevice::{add_engine_operation, engine_operations,
//! media_ready}`; `complete_dma` takes `Result<u64, u32>` (the value for RESULT).
//!
//! Long work (DMA transfers, the wipe of device memory by Sanitize or by a CXL
//! Reset with Mem Clr) runs within the access that starts it, unless the transport
//! asks for it ([`AccelDevice::set_offload`]) to run it elsewhere, off its lock: see
//! [`jobs`].
//!
//! Modules, one per register file: [`config_space`] (PCIe r6 §7.5, CXL r3.1 §8.1),
//! [`doe`] (the DOE mailbox in config space, PCIe r6 §7.9.24) serving [`cdat`]
//! (the CDAT, CXL CDAT r1.03),
//! [`component`] and [`ras`] (CXL r3.1 §8.2.4), [`device_regs`] (CXL r3.1 §8.2.8),
//! [`engine`] (the DMA engine), [`msix`] (PCIe r6 §7.7.2); [`jobs`] is the long
//! work handed to the transport. Every register file is a
//! dword array with masked writes; [`access`] splits guest accesses of any width and
//! alignment into those. [`reset`] says what each kind of reset does to each of them.

#![forbid(unsafe_code)]

pub mod access;
pub mod cdat;
pub mod component;
pub mod config_space;
pub mod device_regs;
pub mod doe;
pub mod engine;
pub mod firmware;
pub mod jobs;
pub mod msix;
pub mod ras;
pub mod reset;

use std::sync::Arc;

use cxl_regs::layout;
pub use firmware::{
    BiosFirmware, CommitDecision, CxlResetDecision, DefaultFirmware, Firmware, MediaReadiness,
    ParamError, SlowCommitFirmware,
};
pub use mailbox::{
    EventLog, EventRecord, FwAction, FwError, FwInfo, FwPart, HealthInfo, Identify, LsaStorage,
    MemLsa, ReturnCode,
};
use thiserror::Error;

use crate::access::{read_dwords, write_dwords};
pub use crate::cdat::{Cdat, CdatConfig, CdatError, CdatSource, EfiMemoryType};
use crate::component::ComponentBlock;
use crate::config_space::{ConfigEffects, ConfigParams, ConfigSpace};
use crate::device_regs::{DeviceHooks, DeviceRegs};
use crate::engine::{CancelFlag, Engine, StartCtx};
pub use crate::engine::{DmaJob, EngineOperation, OpContext, OpError, OpRequest};
pub use crate::jobs::{Job, WipeError, WipeJob};
use crate::msix::Msix;
pub use crate::ras::RasError;
pub use crate::reset::ResetKind;
use crate::reset::{Effect, RegisterClass};

/// Errors of building a device.
#[derive(Debug, Error)]
pub enum AccelError {
    #[error("device memory size {0:#x} is not a non-zero multiple of 256 MiB")]
    BadMemorySize(u64),
    #[error("decoder count {0} is not supported (1, 2 or 4)")]
    BadDecoderCount(u8),
    #[error("DVSEC HDM_Count {0} is not supported (1 or 2)")]
    BadHdmCount(u8),
    #[error("device memory is {actual:#x} bytes but the config says {expected:#x}")]
    MemorySizeMismatch { expected: u64, actual: u64 },
    #[error(transparent)]
    Hdm(#[from] hdm::HdmError),
    #[error("CDAT: {0}")]
    Cdat(#[from] cdat::CdatError),
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
        Err(MemoryError::Unmapped {
            addr: gpa,
            len: buf.len() as u64,
        })
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        Err(MemoryError::Unmapped {
            addr: gpa,
            len: data.len() as u64,
        })
    }
}

/// The device's local memory (BAR2). Offsets are DPAs.
pub trait DeviceMemory: Send {
    fn size(&self) -> u64;
    fn read(&self, dpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    fn write(&mut self, dpa: u64, data: &[u8]) -> Result<(), MemoryError>;
    /// Zero `[dpa, dpa + len)` (Sanitize). The default writes zeros in chunks; a
    /// file-backed implementation can punch a hole instead and keep memory sparse.
    fn zero(&mut self, dpa: u64, len: u64) -> Result<(), MemoryError> {
        let end = dpa
            .checked_add(len)
            .ok_or(MemoryError::Unmapped { addr: dpa, len })?;
        let zeros = vec![0u8; (1usize << 20).min(usize::try_from(len).unwrap_or(1 << 20))];
        let mut at = dpa;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.write(at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Device memory in a `Vec`, for tests.
#[derive(Debug, Clone)]
pub struct VecMemory(pub Vec<u8>);

impl VecMemory {
    pub fn new(size: usize) -> Self {
        Self(vec![0; size])
    }
    fn range(&self, dpa: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        let err = MemoryError::Unmapped {
            addr: dpa,
            len: len as u64,
        };
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
    fn zero(&mut self, dpa: u64, len: u64) -> Result<(), MemoryError> {
        let n = usize::try_from(len).map_err(|_| MemoryError::Unmapped { addr: dpa, len })?;
        let r = self.range(dpa, n)?;
        self.0[r].fill(0);
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

/// Static configuration of the device, with the defaults the backend's options
/// document (README "Options").
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
    /// The CDAT the DOE mailbox serves.
    pub cdat: CdatSource,
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
            cdat: CdatSource::default(),
        }
    }
}

/// Size of the config space (PCIe r6 §7.2: extended configuration space, 4 KiB).
pub const CONFIG_SPACE_SIZE: u64 = 4096;

/// What a BAR holds, for the transport to decide how the guest reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Registers: every access goes through [`AccelDevice::bar_read`] and
    /// [`AccelDevice::bar_write`].
    Registers,
    /// Device memory: the first `memory` bytes of the BAR are device memory, which the
    /// transport may map straight into the guest; the rest (the BAR is a power of two)
    /// reads 0 and ignores writes.
    DeviceMemory { memory: u64 },
}

/// One implemented BAR of the function (PCIe r6 §7.5.1.2.1), in the model's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarDesc {
    /// BAR number, 0..=5 (a 64-bit BAR takes this one and the next).
    pub bar: u8,
    /// Size in bytes, a power of two.
    pub size: u64,
    pub prefetchable: bool,
    pub kind: BarKind,
}

/// The interrupts the function can raise: an MSI-X table (PCIe r6 §7.7.2) and the
/// INTx pin (PCIe r6 §7.5.1.1.13, Interrupt Pin). The function has no MSI capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptSources {
    /// MSI-X table size.
    pub msix_vectors: u16,
    /// Whether INTx (one level-triggered line) is implemented.
    pub intx: bool,
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
    /// A DMA transfer is running (engine STATUS BUSY).
    pub dma_busy: bool,
    /// Doorbells and SRC/DST/LEN/CONTROL writes ignored while a transfer ran.
    pub dma_ignored_doorbells: u64,
    pub dma_ignored_writes: u64,
    /// Transfers a reset aborted, and completions that came too late to count.
    pub dma_aborted: u64,
    pub dma_stale_completions: u64,
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar_reads: u64,
    pub bar_writes: u64,
    pub mailbox_commands: u64,
    pub firmware: String,
    /// Bytes moved by successful DMA transfers.
    pub dma_bytes: u64,
    /// Interrupts handed to the transport.
    pub interrupts: u64,
    /// Decoder commit outcomes.
    pub commits: component::CommitStats,
    /// Faults injected into the RAS capability.
    pub ras_injected: u64,
    /// Flit mode the link reports.
    pub flit: FlitMode,
    pub mailbox: bool,
    /// Device memory is ready for use (Memory_Active; [`Firmware::media_ready`]).
    pub media_ready: bool,
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

/// A CXL Reset under way (CXL r3.1 §9.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CxlResetFlow {
    /// When firmware ends it, on the device clock.
    deadline_ns: u64,
    /// Whether it ends with CXL Reset Complete (else CXL Reset Error).
    ok: bool,
    /// CXL Reset Mem Clr Enable as it was when the reset was initiated.
    mem_clr: bool,
    /// Its time is up and the Mem Clr wipe runs: it ends when that does.
    clearing: bool,
}

/// Whether device memory is ready for use ([`Firmware::media_ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Ready,
    /// Not ready until this time on the device clock.
    NotReadyUntil(u64),
    /// A CXL Reset is under way; then ready this many nanoseconds after its end.
    AfterCxlReset(u64),
    /// Failed until the next reset.
    Failed,
}

/// Why device memory is being wiped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WipePurpose {
    /// Sanitize (CXL r3.1 §8.2.9.9.5.1).
    Sanitize,
    /// A CXL Reset with Mem Clr (§9.7.1).
    CxlResetMemClr,
}

/// A wipe of device memory handed out as a [`WipeJob`].
#[derive(Debug, Clone)]
struct Wipe {
    id: u64,
    cancel: CancelFlag,
    purpose: WipePurpose,
}

/// Access counters.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    config_reads: u64,
    config_writes: u64,
    bar_reads: u64,
    bar_writes: u64,
    interrupts: u64,
}

/// The device.
///
/// BAR map (README "What the guest sees"; the Register Locator, CXL r3.1 §8.1.9):
/// - BAR0, 64-bit, non-prefetchable, trapped: the component register block at 0
///   ([`component`]) and, with the mailbox on, the memory-device register block at
///   `DEVICE_BLOCK_OFFSET` ([`device_regs`]); with the mailbox off that range reads 0
///   and ignores writes.
/// - BAR2, 64-bit, prefetchable: device memory, mmapped by the transport. Its size is
///   the memory size rounded up to a power of two (PCIe r6 §7.5.1.2.1 requires one);
///   bytes past the memory read 0 and ignore writes.
/// - BAR4, 64-bit, trapped: the DMA engine ([`engine`]) and the MSI-X table and PBA
///   ([`msix`]).
///
/// Interrupts: the mailbox's background-completion and event vectors are MSI-X only
/// (CXL r3.1 §8.2.8.4.3 and §8.2.9.2.4 define them as MSI/MSI-X message numbers);
/// the DMA engine falls back to INTx when MSI-X is disabled and the Command register
/// does not disable INTx, and then Status.Interrupt Status follows the engine's
/// outstanding completion.
///
/// Resets ([`reset`]): [`AccelDevice::reset`] is a conventional reset; a config
/// write of Initiate FLR is an FLR; a write of Initiate CXL Reset in DVSEC CXL
/// Control2 starts a CXL Reset. A CXL Reset resets the registers at once and then
/// runs for the time firmware chooses ([`Firmware::on_cxl_reset`]), ended by
/// [`AccelDevice::poll`] at [`AccelDevice::next_deadline`]. While it runs:
/// - BAR0 and BAR4 read all ones and drop writes: the function does not answer
///   (CXL r3.1 §9.7.3 has software touch nothing but Status2 until the end);
/// - config space reads and writes as usual, Status2 reads neither Complete nor
///   Error, and a second Initiate CXL Reset is ignored (§8.1.3.4 leaves it
///   undefined; a vfio-user device cannot answer with Request Retry Status);
/// - device memory stays reachable through BAR2 (an mmap of it cannot be stopped);
///   with Mem Clr it reads zero from the end of the reset on (§9.7.1), so a write
///   made during the reset is lost then ("writes to volatile HDM ranges may be
///   discarded", §9.7).
///
/// A conventional reset ends a CXL Reset under way; an FLR does not.
pub struct AccelDevice {
    cfg: AccelConfig,
    mem: Box<dyn DeviceMemory>,
    clock: Arc<dyn Clock>,
    firmware: Box<dyn Firmware>,
    config: ConfigSpace,
    component: ComponentBlock,
    device_regs: Option<DeviceRegs>,
    engine: Engine,
    msix: Msix,
    pending_irqs: Vec<Interrupt>,
    counters: Counters,
    bar2_size: u64,
    cxl_reset: Option<CxlResetFlow>,
    /// Long work goes to `jobs` for the transport instead of running in place.
    offload: bool,
    jobs: Vec<Job>,
    /// The running wipe of device memory.
    wipe: Option<Wipe>,
    next_wipe_id: u64,
    media: Media,
}

impl std::fmt::Debug for AccelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccelDevice")
            .field("cfg", &self.cfg)
            .field("firmware", &self.firmware.name())
            .finish_non_exhaustive()
    }
}

/// The BAR map (see [`AccelDevice`]) for device memory of `memory_size` bytes in a
/// BAR of `bar2_size`.
fn bar_map(memory_size: u64, bar2_size: u64) -> Vec<BarDesc> {
    vec![
        BarDesc {
            bar: layout::BAR_REGS,
            size: layout::BAR0_SIZE,
            prefetchable: false,
            kind: BarKind::Registers,
        },
        BarDesc {
            bar: layout::BAR_MEM,
            size: bar2_size,
            prefetchable: true,
            kind: BarKind::DeviceMemory {
                memory: memory_size,
            },
        },
        BarDesc {
            bar: layout::BAR_ENGINE,
            size: layout::BAR4_SIZE,
            prefetchable: false,
            kind: BarKind::Registers,
        },
    ]
}

impl AccelDevice {
    pub fn new(
        cfg: AccelConfig,
        mem: Box<dyn DeviceMemory>,
        lsa: Box<dyn LsaStorage>,
        firmware: Box<dyn Firmware>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AccelError> {
        let granule = cxl_regs::mailbox::CAPACITY_UNIT;
        if cfg.memory_size == 0 || !cfg.memory_size.is_multiple_of(granule) {
            return Err(AccelError::BadMemorySize(cfg.memory_size));
        }
        let bar2_size = cfg
            .memory_size
            .checked_next_power_of_two()
            .ok_or(AccelError::BadMemorySize(cfg.memory_size))?;
        if !matches!(cfg.decoders, 1 | 2 | 4) {
            return Err(AccelError::BadDecoderCount(cfg.decoders));
        }
        if !matches!(cfg.hdm_count, 1 | 2) {
            return Err(AccelError::BadHdmCount(cfg.hdm_count));
        }
        if mem.size() != cfg.memory_size {
            return Err(AccelError::MemorySizeMismatch {
                expected: cfg.memory_size,
                actual: mem.size(),
            });
        }
        let component = ComponentBlock::new(hdm::HdmConfig {
            decoder_count: cfg.decoders,
            capacity: cfg.memory_size,
        })?;
        let device_regs = cfg.mailbox.then(|| {
            DeviceRegs::new(mailbox::Mailbox::new(
                mailbox::MailboxConfig {
                    capacity: cfg.memory_size,
                    serial: cfg.serial,
                    payload_log2: layout::MAILBOX_PAYLOAD_LOG2,
                    irq_msgnum: layout::MSIX_VEC_MAILBOX,
                    fw_revision: cfg.fw_revision.clone(),
                    ..Default::default()
                },
                lsa,
            ))
        });
        let cdat = Arc::new(Cdat::from_source(&cfg.cdat, cfg.memory_size, 0)?);
        let mut bar_sizes = [0u64; 6];
        let mut prefetchable = [false; 6];
        for b in bar_map(cfg.memory_size, bar2_size) {
            bar_sizes[usize::from(b.bar)] = b.size;
            prefetchable[usize::from(b.bar)] = b.prefetchable;
        }
        let config = ConfigSpace::new(ConfigParams {
            vendor_id: cfg.vendor_id,
            device_id: cfg.device_id,
            subsystem_vendor_id: cfg.subsystem_vendor_id,
            subsystem_id: cfg.subsystem_id,
            serial: cfg.serial,
            memory_size: cfg.memory_size,
            bar_sizes,
            bar_prefetchable: prefetchable,
            flit: cfg.flit,
            mailbox: cfg.mailbox,
            hdm_count: cfg.hdm_count,
            cdat,
        });
        let mut dev = Self {
            cfg,
            mem,
            clock,
            firmware,
            config,
            component,
            device_regs,
            engine: Engine::new(),
            msix: Msix::new(),
            pending_irqs: Vec::new(),
            counters: Counters::default(),
            bar2_size,
            cxl_reset: None,
            offload: false,
            jobs: Vec::new(),
            wipe: None,
            next_wipe_id: 0,
            media: Media::Ready,
        };
        dev.apply_power_on();
        dev.ask_media_ready(ResetKind::Conventional);
        dev.take_firmware_events();
        Ok(dev)
    }

    pub fn config(&self) -> &AccelConfig {
        &self.cfg
    }

    /// Commit the decoders firmware asks for, and, if any, enable HDM decoding and
    /// DVSEC Mem_Enable with the DVSEC ranges mirroring the decoders, as a BIOS
    /// leaves a device for the Linux Type-2 flow (guest-tests/README.md: firmware
    /// commits, the core assembles the region in drivers/cxl/core/region.c).
    fn apply_power_on(&mut self) {
        let decoders = self.firmware.power_on_decoders(self.cfg.memory_size);
        if decoders.is_empty() {
            return;
        }
        let bases: Vec<(usize, u64)> = decoders.iter().map(|(i, d)| (*i, d.base)).collect();
        if self.component.apply_power_on(decoders) == 0 {
            return;
        }
        for (i, base) in bases {
            if self.component.hdm().decoder(i).is_some_and(|d| d.committed) {
                self.config.set_range_base(i, base);
            }
        }
        self.config.set_mem_enable(true);
    }

    fn now(&self) -> u64 {
        self.clock.now_ns()
    }

    // --- config space ---------------------------------------------------------

    /// Read config space at any offset and width. Bytes beyond 4 KiB read 0.
    pub fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.config_reads = self.counters.config_reads.wrapping_add(1);
        if self.cxl_reset.is_some() || matches!(self.media, Media::NotReadyUntil(_)) {
            // Software polls Status2 for the end of a CXL Reset, and Memory_Active
            // for media to come ready.
            self.poll();
        }
        let cs = &self.config;
        read_dwords(offset, data, |d| cs.read_dword(d));
    }

    /// Write config space at any offset and width, honouring the write masks.
    pub fn config_write(&mut self, offset: u64, data: &[u8]) {
        self.counters.config_writes = self.counters.config_writes.wrapping_add(1);
        let mut fx = ConfigEffects::default();
        let cs = &mut self.config;
        write_dwords(offset, data, |d, v, m| {
            let f = cs.write_dword(d, v, m);
            fx.flr |= f.flr;
            fx.cxl_reset |= f.cxl_reset;
            fx.msix_changed |= f.msix_changed;
            fx.intx_changed |= f.intx_changed;
        });
        if fx.cxl_reset {
            self.initiate_cxl_reset();
        }
        if fx.flr {
            log::info!("function level reset");
            self.reset_kind(ResetKind::Flr);
            return;
        }
        self.take_firmware_events();
        if fx.msix_changed {
            self.msix_state_changed();
        }
        if fx.intx_changed {
            self.update_intx();
        }
    }

    /// MSI-X Enable or Function Mask changed: deliver what the mask held back.
    fn msix_state_changed(&mut self) {
        if !self.config.msix_enabled() {
            // Pending bits have no meaning while MSI-X is disabled.
            self.msix.take_pending();
        } else if !self.config.msix_function_masked() {
            for v in self.msix.take_pending() {
                self.push_irq(Interrupt::Msix(v));
            }
        }
        self.update_intx();
    }

    fn push_irq(&mut self, irq: Interrupt) {
        self.counters.interrupts = self.counters.interrupts.wrapping_add(1);
        self.pending_irqs.push(irq);
    }

    /// Signal an MSI-X vector (held in the PBA while the function is masked).
    /// Returns false if MSI-X is disabled.
    fn raise_msix(&mut self, vector: u16) -> bool {
        if !self.config.msix_enabled() {
            return false;
        }
        if self.config.msix_function_masked() {
            self.msix.set_pending(vector);
        } else {
            self.push_irq(Interrupt::Msix(vector));
        }
        true
    }

    /// The INTx level: a DMA completion with its interrupt enabled is outstanding,
    /// MSI-X is off and INTx is not disabled. Asserting sends `Interrupt::Intx`.
    fn update_intx(&mut self) {
        let level = !self.config.msix_enabled()
            && !self.config.intx_disabled()
            && self.engine.irq_enabled()
            && self.engine.completion_outstanding();
        if level && !self.config.interrupt_status() {
            self.push_irq(Interrupt::Intx);
        }
        self.config.set_interrupt_status(level);
    }

    fn handle_mailbox_event(&mut self, ev: mailbox::MailboxEvent) {
        use mailbox::MailboxEvent as E;
        #[allow(unreachable_patterns)]
        match ev {
            E::BackgroundComplete => {
                self.raise_msix(layout::MSIX_VEC_MAILBOX);
            }
            E::EventAdded => {
                self.raise_msix(layout::MSIX_VEC_EVENTS);
            }
            E::SanitizeStarted => self.start_wipe(WipePurpose::Sanitize),
            other => log::debug!("mailbox event {other:?} needs no action"),
        }
    }

    // --- long work ---------------------------------------------------------------

    /// Where long work runs. With `offload`, a DMA doorbell, a Sanitize or the end
    /// of a CXL Reset with Mem Clr only queues a [`Job`] for
    /// [`AccelDevice::take_jobs`]; the transport runs it (off its lock) and posts the
    /// result with [`AccelDevice::complete_dma`] or [`AccelDevice::complete_wipe`].
    /// Without (the default), the device runs the same job within the access that
    /// started it, on its own device memory
    /// and the guest memory passed to [`AccelDevice::bar_write`]: the synchronous path
    /// that unit tests and fuzzers drive. Set it before the first access.
    pub fn set_offload(&mut self, offload: bool) {
        self.offload = offload;
    }

    /// Give the accelerator's engine operation `op` (CONTROL.OP 1..=255; 0 is the
    /// DMA copy and cannot be replaced): see [`EngineOperation`]. Returns false,
    /// changing nothing, for op 0.
    pub fn add_engine_operation(&mut self, op: u8, operation: Arc<dyn EngineOperation>) -> bool {
        if op == layout::engine::OP_COPY {
            return false;
        }
        if let Some(old) = self.engine.add_operation(op, operation) {
            log::warn!("engine operation {op:#x} ({}) replaced", old.name());
        }
        true
    }

    /// The engine's operations besides the copy: (CONTROL.OP, name).
    pub fn engine_operations(&self) -> Vec<(u8, String)> {
        self.engine.operations()
    }

    /// Drain the jobs queued since the last call (only with offload).
    pub fn take_jobs(&mut self) -> Vec<Job> {
        std::mem::take(&mut self.jobs)
    }

    /// The DMA doorbell was rung on an idle engine.
    fn start_dma(&mut self, guest: &dyn GuestMemory) {
        let regs = self.device_regs.as_ref();
        let poisoned = |dpa: u64, len: u64| regs.is_some_and(|r| r.mailbox().is_poisoned(dpa, len));
        let ctx = StartCtx {
            mem_size: self.mem.size(),
            bus_master: self.config.bus_master(),
            poisoned: &poisoned,
        };
        let Some(job) = self.engine.start(ctx) else {
            // Refused at once: its completion (ERROR) is already in STATUS.
            if !self.engine.busy() {
                self.dma_finished();
            }
            return;
        };
        if self.offload {
            self.jobs.push(Job::Dma(job));
            return;
        }
        let result = job.run(self.mem.as_mut(), guest, &|| false);
        self.complete_dma(job.id(), result);
    }

    /// Post the result of engine job `id` (Ok with the value for RESULT, 0 for a
    /// copy; or a STATUS error code) and raise its completion interrupt. Returns
    /// false, changing nothing, when `id` is not the running job (a reset aborted
    /// it).
    pub fn complete_dma(&mut self, id: u64, result: Result<u64, u32>) -> bool {
        if !self.engine.complete(id, result) {
            return false;
        }
        self.dma_finished();
        true
    }

    /// A transfer's completion is in STATUS: signal it if it asked for that.
    fn dma_finished(&mut self) {
        if self.engine.irq_enabled() {
            self.raise_msix(layout::MSIX_VEC_DMA);
        }
        self.update_intx();
    }

    /// Wipe all of device memory, for Sanitize or a CXL Reset's Mem Clr. A wipe
    /// already running (which cannot happen: each waits for its own) is aborted.
    fn start_wipe(&mut self, purpose: WipePurpose) {
        self.abort_wipe(|_| true);
        let id = self.next_wipe_id;
        self.next_wipe_id = self.next_wipe_id.wrapping_add(1);
        let cancel = CancelFlag::new();
        let job = WipeJob::new(id, self.mem.size(), cancel.clone());
        self.wipe = Some(Wipe {
            id,
            cancel,
            purpose,
        });
        if self.offload {
            self.jobs.push(Job::Wipe(job));
            return;
        }
        let result = job.run(self.mem.as_mut(), &|| false, &mut |_| {});
        self.complete_wipe(id, result);
    }

    /// Abort the running wipe if `which` says so for its purpose: its job stops at
    /// its next step, and its result is ignored.
    fn abort_wipe(&mut self, which: impl Fn(WipePurpose) -> bool) {
        if let Some(w) = self.wipe.take_if(|w| which(w.purpose)) {
            log::info!("{:?}: the wipe of device memory is aborted", w.purpose);
            w.cancel.cancel();
            self.jobs.retain(|j| !j.is_cancelled());
        }
    }

    /// Progress of wipe job `id`: `done` bytes zeroed (Sanitize's Percentage
    /// Complete, CXL r3.1 §8.2.8.4.7). Ignored for a job that is not running.
    pub fn wipe_progress(&mut self, id: u64, done: u64) {
        let Some(w) = self.wipe.as_ref().filter(|w| w.id == id) else {
            return;
        };
        if w.purpose != WipePurpose::Sanitize {
            return;
        }
        let size = self.mem.size().max(1);
        let percent = (u128::from(done.min(size)) * 100 / u128::from(size)) as u8;
        if let Some(r) = self.device_regs.as_mut() {
            r.mailbox_mut().sanitize_progress(percent);
        }
    }

    /// Post the result of wipe job `id`. Sanitize completes with Success, or with
    /// Internal Error when the wipe failed (then the poison list stays); a CXL Reset
    /// ends with CXL Reset Complete, or Error when the wipe failed. Returns false,
    /// changing nothing, when `id` is not the running wipe (a reset aborted it).
    pub fn complete_wipe(&mut self, id: u64, result: Result<(), WipeError>) -> bool {
        let Some(w) = self.wipe.take_if(|w| w.id == id) else {
            log::debug!("stale completion of wipe {id} ignored");
            return false;
        };
        if let Err(e) = &result {
            log::error!("{:?}: wiping device memory failed: {e}", w.purpose);
        }
        match w.purpose {
            WipePurpose::Sanitize => {
                let rc = match result {
                    Ok(()) => cxl_regs::mailbox::RC_SUCCESS,
                    Err(_) => cxl_regs::mailbox::RC_INTERNAL_ERROR,
                };
                let now = self.now();
                let ev = self
                    .device_regs
                    .as_mut()
                    .and_then(|r| r.mailbox_mut().sanitize_wiped(rc, now));
                if let Some(ev) = ev {
                    self.handle_mailbox_event(ev);
                }
            }
            WipePurpose::CxlResetMemClr => {
                if self.cxl_reset.take_if(|f| f.clearing).is_some() {
                    self.cxl_reset_done(result.is_ok());
                }
            }
        }
        true
    }

    // --- BARs -------------------------------------------------------------------

    /// Whether BAR `bar`'s registers (BAR0, BAR4) are silent because a CXL Reset is
    /// under way (device memory in BAR2 stays reachable; see [`AccelDevice`]).
    fn silenced(&mut self, bar: u8) -> bool {
        if self.cxl_reset.is_none() || !matches!(bar, layout::BAR_REGS | layout::BAR_ENGINE) {
            return false;
        }
        self.poll();
        self.cxl_reset.is_some()
    }

    /// Read a BAR at any offset and width. Absent BARs and holes read 0.
    pub fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        self.counters.bar_reads = self.counters.bar_reads.wrapping_add(1);
        if self.silenced(bar) {
            data.fill(0xff);
            return;
        }
        match bar {
            layout::BAR_REGS => {
                self.poll();
                let component = &self.component;
                let clock = &self.clock;
                let mut regs = self.device_regs.as_mut();
                // The component block needs no time; the clock is read only for the
                // device block (the mailbox's background status), keeping the hot
                // path of a decoder register read free of it.
                read_dwords(offset, data, |d| {
                    if d < layout::DEVICE_BLOCK_OFFSET {
                        component.read(d)
                    } else if d < layout::BAR0_SIZE {
                        regs.as_mut().map_or(0, |r| {
                            r.read(d - layout::DEVICE_BLOCK_OFFSET, clock.now_ns())
                        })
                    } else {
                        0
                    }
                });
            }
            layout::BAR_MEM => self.mem_read(offset, data),
            layout::BAR_ENGINE => {
                let engine = &self.engine;
                let msix = &self.msix;
                read_dwords(offset, data, |d| {
                    if Msix::contains(d) {
                        msix.read(d)
                    } else if d < u64::from(layout::MSIX_TABLE_OFFSET) {
                        engine.read(d.wrapping_sub(layout::ENGINE_OFFSET))
                    } else {
                        0
                    }
                });
            }
            _ => data.fill(0),
        }
    }

    /// Write a BAR at any offset and width. `guest` is used by the DMA engine when it
    /// runs a transfer in place (without offload, see [`AccelDevice::set_offload`]).
    pub fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8], guest: &dyn GuestMemory) {
        self.counters.bar_writes = self.counters.bar_writes.wrapping_add(1);
        if self.silenced(bar) {
            return;
        }
        match bar {
            layout::BAR_REGS => {
                self.poll();
                let now = self.now();
                let mut events = Vec::new();
                let component = &mut self.component;
                let fw = self.firmware.as_mut();
                let mem = self.mem.as_mut();
                let mut regs = self.device_regs.as_mut();
                write_dwords(offset, data, |d, v, m| {
                    if d < layout::DEVICE_BLOCK_OFFSET {
                        component.write(d, v, m, &mut *fw, now);
                    } else if d < layout::BAR0_SIZE {
                        if let Some(r) = regs.as_mut() {
                            let mut hooks = DeviceHooks {
                                fw: &mut *fw,
                                mem: &mut *mem,
                            };
                            let rel = d - layout::DEVICE_BLOCK_OFFSET;
                            events.extend(r.write(rel, v, m, now, &mut hooks));
                        }
                    }
                });
                for ev in events {
                    self.handle_mailbox_event(ev);
                }
                self.take_firmware_events();
            }
            layout::BAR_MEM => self.mem_write(offset, data),
            layout::BAR_ENGINE => {
                let mut doorbell = false;
                let engine = &mut self.engine;
                let msix = &mut self.msix;
                write_dwords(offset, data, |d, v, m| {
                    if Msix::contains(d) {
                        msix.write(d, v, m);
                    } else if d < u64::from(layout::MSIX_TABLE_OFFSET) {
                        doorbell |= engine.write(d.wrapping_sub(layout::ENGINE_OFFSET), v, m);
                    }
                });
                if doorbell {
                    self.start_dma(guest);
                }
                self.update_intx();
            }
            _ => {}
        }
    }

    /// The part of `[offset, offset + len)` inside device memory, as a length.
    fn mem_span(&self, offset: u64, len: usize) -> usize {
        let size = self.mem.size();
        if offset >= size {
            return 0;
        }
        (size - offset).min(len as u64) as usize
    }

    fn mem_read(&mut self, offset: u64, data: &mut [u8]) {
        let n = self.mem_span(offset, data.len());
        let (inside, outside) = data.split_at_mut(n);
        if self.mem.read(offset, inside).is_err() {
            inside.fill(0);
        }
        outside.fill(0);
    }

    fn mem_write(&mut self, offset: u64, data: &[u8]) {
        let n = self.mem_span(offset, data.len());
        if let Some(inside) = data.get(..n) {
            if let Err(e) = self.mem.write(offset, inside) {
                log::warn!("BAR2 write at {offset:#x}: {e}");
            }
        }
    }

    // --- descriptions -------------------------------------------------------------

    /// The implemented BARs, in BAR order: BAR0 (registers), BAR2 (device memory),
    /// BAR4 (registers: the engine and the MSI-X table). See [`AccelDevice`].
    pub fn bars(&self) -> Vec<BarDesc> {
        bar_map(self.cfg.memory_size, self.bar2_size)
    }

    /// The interrupts the function raises ([`Interrupt`]): `MSIX_VECTORS` MSI-X
    /// vectors, and INTx for the DMA engine when MSI-X is off.
    pub fn interrupt_sources(&self) -> InterruptSources {
        InterruptSources {
            msix_vectors: layout::MSIX_VECTORS,
            intx: true,
        }
    }

    // --- reset and time -------------------------------------------------------------

    /// Conventional reset (vfio DEVICE_RESET, a secondary bus reset): every register
    /// but the sticky ones to its power-on value, then firmware's power-on decoders
    /// applied again, as a BIOS would. Device memory and the LSA are kept.
    pub fn reset(&mut self) {
        self.reset_kind(ResetKind::Conventional);
    }

    /// A reset of `kind` ([`reset`] has the table). A CXL Reset is started as a
    /// write of Initiate CXL Reset would start it.
    pub fn reset_kind(&mut self, kind: ResetKind) {
        match kind {
            ResetKind::Conventional => {
                if self.cxl_reset.take().is_some() {
                    log::info!("conventional reset ends the CXL Reset under way");
                    self.abort_wipe(|p| p == WipePurpose::CxlResetMemClr);
                }
                self.apply_reset(kind);
                self.firmware.on_reset(kind);
                self.apply_power_on();
                self.ask_media_ready(kind);
            }
            ResetKind::Flr => {
                self.apply_reset(kind);
                self.firmware.on_reset(kind);
                self.ask_media_ready(kind);
            }
            ResetKind::CxlReset => self.initiate_cxl_reset(),
        }
        self.take_firmware_events();
    }

    /// Ask firmware when media is ready after a reset of `kind`, and show it: the
    /// DVSEC ranges' Memory_Active and the memory device's Media Status. After a
    /// CXL Reset the time counts from its end.
    fn ask_media_ready(&mut self, kind: ResetKind) {
        let answer = self.firmware.media_ready(kind);
        self.media = match (answer, kind) {
            (MediaReadiness::Failed, _) => Media::Failed,
            (MediaReadiness::ReadyAfter(ns), ResetKind::CxlReset) => Media::AfterCxlReset(ns),
            (MediaReadiness::ReadyAfter(0), _) => Media::Ready,
            (MediaReadiness::ReadyAfter(ns), _) => {
                Media::NotReadyUntil(self.now().saturating_add(ns))
            }
        };
        if self.media != Media::Ready {
            log::info!("media after {kind:?}: {:?}", self.media);
        }
        self.show_media();
    }

    /// Reflect the media state in the registers.
    fn show_media(&mut self) {
        use cxl_regs::device::memdev;
        // A CXL Reset that leaves media ready at once leaves it alone meanwhile,
        // as the default firmware always has.
        let (active, status) = match self.media {
            Media::Ready | Media::AfterCxlReset(0) => (true, memdev::MEDIA_READY),
            Media::NotReadyUntil(_) | Media::AfterCxlReset(_) => (false, memdev::MEDIA_NOT_READY),
            Media::Failed => (false, memdev::MEDIA_ERROR),
        };
        self.config.set_memory_active(active);
        if let Some(r) = self.device_regs.as_mut() {
            r.set_media_status(status);
        }
    }

    /// Whether device memory is ready for use (Memory_Active).
    pub fn media_ready(&self) -> bool {
        matches!(self.media, Media::Ready | Media::AfterCxlReset(0))
    }

    /// Hand the event records firmware generated to the event logs.
    fn take_firmware_events(&mut self) {
        for (log, record) in self.firmware.take_events() {
            self.inject_event(log, record);
        }
    }

    /// Return every class of state to its power-on value, or keep it, as
    /// [`reset::effect`] says for `kind`. Device memory is left to the caller (a CXL
    /// Reset clears it when it ends).
    fn apply_reset(&mut self, kind: ResetKind) {
        let resets = |class| !reset::keeps(class, kind, false);
        // PciFunction, PcieLink, Sticky (config), DvsecLockable, DvsecControl2. The
        // config space rebuilds Memory_Active; the media state says what it is.
        self.config.reset(kind);
        self.show_media();
        // HdmDecoders, HdmGlobalControl, Sticky (RAS).
        self.component.reset(kind);
        if resets(RegisterClass::DmaEngine) {
            // The engine's reset also stops a transfer under way (its job's cancel
            // flag), and its job, if not handed out yet, is dropped.
            self.engine.reset();
            self.jobs.retain(|j| !j.is_cancelled());
        }
        if resets(RegisterClass::MsixTable) {
            self.msix.reset();
        }
        if resets(RegisterClass::MailboxRegisters) {
            // The mailbox's reset aborts Sanitize, so its wipe stops too.
            self.abort_wipe(|p| p == WipePurpose::Sanitize);
        }
        if let Some(r) = self.device_regs.as_mut() {
            if resets(RegisterClass::MailboxRegisters) {
                r.mailbox_mut().reset();
            }
            // DeviceStorage (LSA, event records, poison, firmware slots, timestamp)
            // is kept by every kind: the mailbox has no reset that clears it.
            debug_assert!(!resets(RegisterClass::DeviceStorage));
        }
        if resets(RegisterClass::PciFunction) {
            self.pending_irqs.clear();
        }
    }

    /// Start a CXL Reset (CXL r3.1 §9.7): CXL Reset Mem Clr Enable is latched, the
    /// registers take their CXL Reset values, and firmware says when and how it
    /// ends. Status2's Complete and Error bits are clear until then (§8.1.3.5).
    fn initiate_cxl_reset(&mut self) {
        // One that has run its time ends first, even if nothing polled yet.
        self.poll();
        if self.cxl_reset.is_some() {
            log::warn!("Initiate CXL Reset while a CXL Reset is under way: ignored");
            return;
        }
        let mem_clr = self.config.cxl_reset_mem_clr_enabled();
        self.apply_reset(ResetKind::CxlReset);
        self.firmware.on_reset(ResetKind::CxlReset);
        self.ask_media_ready(ResetKind::CxlReset);
        let (ns, ok) = match self.firmware.on_cxl_reset(mem_clr) {
            CxlResetDecision::Complete(ns) => (ns, true),
            CxlResetDecision::Fail(ns) => (ns, false),
        };
        log::info!("CXL Reset started (Mem Clr {mem_clr}), ends in {ns} ns");
        self.cxl_reset = Some(CxlResetFlow {
            deadline_ns: self.now().saturating_add(ns),
            ok,
            mem_clr,
            clearing: false,
        });
        self.poll();
    }

    /// The CXL Reset's time is up: if Mem Clr was asked for and the reset succeeds,
    /// device memory is wiped first (a wipe job; the reset stays under way until it
    /// ends, see [`AccelDevice::complete_wipe`]); then CXL Reset Complete or Error.
    fn finish_cxl_reset(&mut self, flow: CxlResetFlow) {
        let clears = reset::effect(RegisterClass::DeviceMemory, ResetKind::CxlReset)
            == Effect::ClearedOnRequest;
        if flow.ok && flow.mem_clr && clears {
            self.cxl_reset = Some(CxlResetFlow {
                clearing: true,
                ..flow
            });
            self.start_wipe(WipePurpose::CxlResetMemClr);
            return;
        }
        self.cxl_reset = None;
        self.cxl_reset_done(flow.ok);
    }

    /// Status2: CXL Reset Complete, or Error.
    fn cxl_reset_done(&mut self, ok: bool) {
        self.config.set_cxl_reset_done(ok);
        if let Media::AfterCxlReset(ns) = self.media {
            self.media = match ns {
                0 => Media::Ready,
                ns => Media::NotReadyUntil(self.now().saturating_add(ns)),
            };
            self.show_media();
        }
        log::info!("CXL Reset {}", if ok { "complete" } else { "failed" });
    }

    /// Whether a CXL Reset is under way.
    pub fn cxl_reset_in_progress(&self) -> bool {
        self.cxl_reset.is_some()
    }

    /// Advance time-driven work (delayed commits, background commands, a CXL
    /// Reset). Without any pending, this does nothing, not even read the clock.
    pub fn poll(&mut self) {
        if self.next_deadline().is_none() {
            return;
        }
        let now = self.now();
        if let Some(flow) = self
            .cxl_reset
            .filter(|f| !f.clearing && f.deadline_ns <= now)
        {
            self.finish_cxl_reset(flow);
        }
        self.component.poll(now, self.firmware.as_mut());
        let ev = self
            .device_regs
            .as_mut()
            .and_then(|r| r.mailbox_mut().poll(now));
        if let Some(ev) = ev {
            self.handle_mailbox_event(ev);
        }
        if matches!(self.media, Media::NotReadyUntil(t) if t <= now) {
            log::info!("media ready");
            self.media = Media::Ready;
            self.show_media();
        }
        self.take_firmware_events();
    }

    /// Whether the INTx line is asserted (Status.Interrupt Status, PCIe r6
    /// §7.5.1.1.4). A transport that automasks INTx re-signals it on unmask while
    /// this holds.
    pub fn intx_asserted(&self) -> bool {
        self.config.interrupt_status()
    }

    /// Drain the interrupts raised since the last call.
    pub fn take_interrupts(&mut self) -> Vec<Interrupt> {
        std::mem::take(&mut self.pending_irqs)
    }

    /// When `poll` next has work, in the clock's nanoseconds.
    pub fn next_deadline(&self) -> Option<u64> {
        let mb = self
            .device_regs
            .as_ref()
            .and_then(|r| r.mailbox().next_deadline());
        [
            self.component.next_deadline(),
            mb,
            // A reset whose Mem Clr wipe runs ends with the wipe, not by time.
            self.cxl_reset
                .filter(|f| !f.clearing)
                .map(|f| f.deadline_ns),
            match self.media {
                Media::NotReadyUntil(t) => Some(t),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // --- fault injection ---------------------------------------------------------------

    /// Fault injection: a RAS uncorrectable (`uncorrectable`=true) or correctable
    /// error status bit. Undefined bits are logged and ignored; see
    /// [`AccelDevice::try_inject_ras`].
    pub fn inject_ras(&mut self, uncorrectable: bool, bit: u8) {
        if let Err(e) = self.try_inject_ras(uncorrectable, bit, &[0; 16]) {
            log::warn!("inject_ras: {e}");
        }
    }

    /// Fault injection into the RAS capability (CXL r3.1 §8.2.4.17) with a header
    /// log for the first uncorrectable error. Also sets the matching error-detected
    /// bit of the PCIe Device Status register (PCIe r6 §7.5.3.5): Fatal or Non-Fatal
    /// by the error's severity, or Correctable.
    pub fn try_inject_ras(
        &mut self,
        uncorrectable: bool,
        bit: u8,
        header: &[u32; 16],
    ) -> Result<(), RasError> {
        use cxl_regs::component::ras as r;
        let ras = self.component.ras_mut();
        if uncorrectable {
            ras.inject_uncorrectable(bit, header)?;
            let fatal = ras.read(r::UNCORRECTABLE_SEVERITY) & (1 << bit) != 0;
            self.config.set_device_status(if fatal {
                cxl_regs::pci::EXP_DEVSTA_FED
            } else {
                cxl_regs::pci::EXP_DEVSTA_NFED
            });
        } else {
            ras.inject_correctable(bit)?;
            self.config.set_device_status(cxl_regs::pci::EXP_DEVSTA_CED);
        }
        Ok(())
    }

    /// Fault injection: add an event record; raises the events vector if the log's
    /// interrupt policy asks for it. Ignored with the mailbox off.
    pub fn inject_event(&mut self, log: EventLog, record: EventRecord) {
        let now = self.now();
        let ev = self
            .device_regs
            .as_mut()
            .and_then(|r| r.mailbox_mut().inject_event_at(log, record, now));
        if let Some(ev) = ev {
            self.handle_mailbox_event(ev);
        }
    }

    /// Fault injection: poison a DPA range (listed by Get Poison List; the DMA engine
    /// refuses to read it). Errors are mailbox return codes; Unsupported with the
    /// mailbox off.
    pub fn inject_poison(&mut self, dpa: u64, len: u64) -> Result<(), u16> {
        match self.device_regs.as_mut() {
            Some(r) => r.mailbox_mut().inject_poison(dpa, len),
            None => Err(cxl_regs::mailbox::RC_UNSUPPORTED),
        }
    }

    // --- inspection ----------------------------------------------------------------------

    pub fn status(&self) -> DeviceStatus {
        let hdm = self.component.hdm();
        let decoders = (0..hdm.decoder_count())
            .filter_map(|i| hdm.decoder(i).map(|d| (i, d)))
            .map(|(index, d)| DecoderStatus {
                index,
                base: d.base,
                size: d.size,
                dpa_skip: d.dpa_skip,
                committed: d.committed,
                locked: d.locked,
                error: d.error,
                host_only: d.host_only,
            })
            .collect();
        let es = self.engine.stats();
        DeviceStatus {
            decoders,
            hdm_global_enable: hdm.global_enable(),
            mem_enable: self.config.mem_enable(),
            dma_completions: es.completions,
            dma_errors: es.errors,
            dma_busy: self.engine.busy(),
            dma_ignored_doorbells: es.ignored_doorbells,
            dma_ignored_writes: es.ignored_writes,
            dma_aborted: es.aborted,
            dma_stale_completions: es.stale_completions,
            config_reads: self.counters.config_reads,
            config_writes: self.counters.config_writes,
            bar_reads: self.counters.bar_reads,
            bar_writes: self.counters.bar_writes,
            mailbox_commands: self
                .device_regs
                .as_ref()
                .map_or(0, |r| r.mailbox().commands_executed()),
            firmware: self.firmware.name().to_string(),
            dma_bytes: es.bytes,
            interrupts: self.counters.interrupts,
            commits: self.component.stats(),
            ras_injected: self.component.ras().injected(),
            flit: self.cfg.flit,
            mailbox: self.cfg.mailbox,
            media_ready: self.media_ready(),
        }
    }

    pub fn firmware_mut(&mut self) -> &mut dyn Firmware {
        self.firmware.as_mut()
    }
    pub fn firmware(&self) -> &dyn Firmware {
        self.firmware.as_ref()
    }
    /// Replace the firmware (control socket); takes effect for the next hook call.
    pub fn set_firmware(&mut self, firmware: Box<dyn Firmware>) {
        self.firmware = firmware;
    }
    /// The HDM decoder bank (read-only view).
    pub fn hdm(&self) -> &hdm::HdmDecoderBank {
        self.component.hdm()
    }
    /// The mailbox, when on.
    pub fn mailbox(&self) -> Option<&mailbox::Mailbox> {
        self.device_regs.as_ref().map(|r| r.mailbox())
    }
    pub fn mailbox_mut(&mut self) -> Option<&mut mailbox::Mailbox> {
        self.device_regs.as_mut().map(|r| r.mailbox_mut())
    }
    /// Device memory.
    pub fn memory(&self) -> &dyn DeviceMemory {
        self.mem.as_ref()
    }
    pub fn memory_mut(&mut self) -> &mut dyn DeviceMemory {
        self.mem.as_mut()
    }
    /// Config space (read-only view).
    pub fn config_space(&self) -> &ConfigSpace {
        &self.config
    }
    /// BAR2's size: the memory size rounded up to a power of two.
    pub fn bar2_size(&self) -> u64 {
        self.bar2_size
    }
    /// The CDAT the DOE mailbox serves.
    pub fn cdat(&self) -> &Cdat {
        self.config.doe().cdat()
    }
    /// Replace the CDAT, as a firmware update would: a built table gets the next
    /// sequence number, so software can tell it changed (CDAT r1.03 Table 1); a
    /// vendor's table is served as it is. The table survives resets. Returns the
    /// new sequence number; on error the old table stays.
    pub fn replace_cdat(&mut self, source: CdatSource) -> Result<u32, CdatError> {
        let sequence = self.cdat().sequence().wrapping_add(1);
        let cdat = Cdat::from_source(&source, self.cfg.memory_size, sequence)?;
        let sequence = cdat.sequence();
        self.config.set_cdat(Arc::new(cdat));
        self.cfg.cdat = source;
        Ok(sequence)
    }
}
