//! The cxl-accel device's own layout: where each register block sits in which BAR,
//! the DMA engine's registers and the MSI-X vector assignment. These are choices of
//! this device, not of the spec; the spec-defined blocks they locate are described in
//! [`crate::component`], [`crate::device`] and [`crate::mailbox`].

/// Default PCI vendor id (QEMU's test vendor id space) and device id.
pub const DEFAULT_VENDOR_ID: u16 = 0x1234;
pub const DEFAULT_DEVICE_ID: u16 = 0xcc02;
/// Class code: processing accelerator (base 0x12, sub 0x00, prog-if 0x00).
/// Never 0x050210 (CXL memory device), which would make `cxl_pci` bind it.
pub const CLASS_CODE: u32 = 0x12_0000;

/// BAR index of the component (and device) register block: 64-bit, non-prefetchable, trapped.
pub const BAR_REGS: u8 = 0;
/// BAR index of device memory: 64-bit, prefetchable, mmapped into the guest.
pub const BAR_MEM: u8 = 2;
/// BAR index of the accelerator engine, MSI-X table and PBA: 64-bit, trapped.
pub const BAR_ENGINE: u8 = 4;

/// BAR0 size.
pub const BAR0_SIZE: u64 = 0x2_0000;
/// Offset in BAR0 of the component register block (Register Locator block id 1).
pub const COMPONENT_BLOCK_OFFSET: u64 = 0x0;
/// Offset of the CXL.cache/mem registers inside the component block
/// (CXL r3.1 §8.2.3, Table 8-22: the first 4 KiB are CXL.io, reserved here).
pub const CACHEMEM_OFFSET: u64 = 0x1000;
/// Offsets, relative to [`CACHEMEM_OFFSET`], of the capabilities listed in the
/// CXL.cache/mem capability array.
pub const RAS_CAP_PTR: u32 = 0x100;
pub const LINK_CAP_PTR: u32 = 0x200;
pub const HDM_CAP_PTR: u32 = 0x300;
/// Absolute BAR0 offsets of the same capabilities.
pub const RAS_OFFSET: u64 = CACHEMEM_OFFSET + RAS_CAP_PTR as u64;
pub const LINK_OFFSET: u64 = CACHEMEM_OFFSET + LINK_CAP_PTR as u64;
pub const HDM_OFFSET: u64 = CACHEMEM_OFFSET + HDM_CAP_PTR as u64;

/// Offset in BAR0 of the memory-device register block (Register Locator block id 3),
/// present only when the mailbox is on.
pub const DEVICE_BLOCK_OFFSET: u64 = 0x1_0000;
/// Offsets relative to [`DEVICE_BLOCK_OFFSET`] of the device capabilities.
pub const DEV_STATUS_CAP_OFFSET: u32 = 0x100;
pub const MEMDEV_STATUS_CAP_OFFSET: u32 = 0x200;
/// The primary mailbox is placed so that its payload (mailbox + 0x20) starts on a
/// page boundary: the payload can be an mmappable sparse area of BAR0.
pub const MAILBOX_CAP_OFFSET: u32 = 0x1000 - 0x20;
/// Payload size: 2^[`MAILBOX_PAYLOAD_LOG2`] bytes (CXL r3.1 §8.2.8.4.3: 256 B to 1 MiB).
pub const MAILBOX_PAYLOAD_LOG2: u32 = 12;
pub const MAILBOX_PAYLOAD_SIZE: u32 = 1 << MAILBOX_PAYLOAD_LOG2;
/// Absolute BAR0 offsets.
pub const DEV_STATUS_OFFSET: u64 = DEVICE_BLOCK_OFFSET + DEV_STATUS_CAP_OFFSET as u64;
pub const MEMDEV_STATUS_OFFSET: u64 = DEVICE_BLOCK_OFFSET + MEMDEV_STATUS_CAP_OFFSET as u64;
pub const MAILBOX_OFFSET: u64 = DEVICE_BLOCK_OFFSET + MAILBOX_CAP_OFFSET as u64;
pub const MAILBOX_PAYLOAD_OFFSET: u64 = MAILBOX_OFFSET + 0x20;

/// BAR4 size.
pub const BAR4_SIZE: u64 = 0x4000;
/// Offset in BAR4 of the DMA engine registers.
pub const ENGINE_OFFSET: u64 = 0x0;
/// MSI-X table and PBA, in BAR4.
pub const MSIX_TABLE_OFFSET: u32 = 0x2000;
pub const MSIX_PBA_OFFSET: u32 = 0x3000;
/// Number of MSI-X vectors.
pub const MSIX_VECTORS: u16 = 4;
/// MSI-X vector assignment.
pub const MSIX_VEC_MAILBOX: u16 = 0;
pub const MSIX_VEC_EVENTS: u16 = 1;
pub const MSIX_VEC_DMA: u16 = 2;
pub const MSIX_VEC_SPARE: u16 = 3;

/// DMA engine registers, offsets in BAR4 (the accelerator's own, not spec-defined).
///
/// Programming model: write SRC, DST, LEN and CONTROL (direction, interrupt enable,
/// operation), then 1 to DOORBELL. The
/// doorbell latches the four registers and STATUS reads BUSY while the transfer
/// runs; the doorbell write itself returns at once. The transfer ends with DONE or
/// ERROR (and an error code) in STATUS, and with the DMA MSI-X vector (or INTx when
/// MSI-X is off) if the latched CONTROL had IRQ_ENABLE.
///
/// While BUSY:
/// - a doorbell is ignored (the running transfer goes on; none is queued), and the
///   backend counts it (`dma_ignored_doorbells` in the control socket's `status`);
/// - writes to SRC, DST, LEN and CONTROL are ignored (and counted per dword,
///   `dma_ignored_writes`): the registers read back the transfer in progress;
/// - a reset of the function (conventional reset or FLR) aborts the transfer: it
///   stops at its next 64 KiB step, the registers read 0, and no completion or
///   interrupt follows.
pub mod engine {
    /// RO: `b"CXLA"` little-endian.
    pub const ID: u64 = 0x00;
    pub const ID_VALUE: u32 = u32::from_le_bytes(*b"CXLA");
    /// RO: engine interface version. 2: CONTROL.OP and RESULT (operations beyond the
    /// copy).
    pub const VERSION: u64 = 0x04;
    pub const VERSION_VALUE: u32 = 2;
    /// RW 64-bit (ignored while BUSY): source address (a guest physical address, or
    /// a DPA).
    pub const SRC: u64 = 0x08;
    /// RW 64-bit (ignored while BUSY): destination address.
    pub const DST: u64 = 0x10;
    /// RW 64-bit (ignored while BUSY): length in bytes.
    pub const LEN: u64 = 0x18;
    /// RW (ignored while BUSY): control.
    pub const CONTROL: u64 = 0x20;
    /// CONTROL bit 0: direction, 0 = guest RAM -> device memory, 1 = device -> guest.
    pub const CONTROL_DIR_TO_GUEST: u32 = 1 << 0;
    /// CONTROL bit 1: raise the DMA MSI-X vector on completion (or assert INTx while
    /// that completion is in STATUS, when MSI-X is off).
    pub const CONTROL_IRQ_ENABLE: u32 = 1 << 1;
    /// CONTROL bits 15:8, OP: the operation a doorbell starts. [`OP_COPY`] (0) is the
    /// DMA copy; any other value is one of the accelerator's own operations, which
    /// its firmware defines (the backend's `EngineOperation`s): it computes on device
    /// memory from SRC for LEN bytes, may use DST, and leaves a value in RESULT. An
    /// operation the device does not have fails with [`ERR_UNSUPPORTED_OP`].
    pub const CONTROL_OP_SHIFT: u32 = 8;
    pub const CONTROL_OP_MASK: u32 = 0xff << CONTROL_OP_SHIFT;
    /// OP 0: copy between guest RAM and device memory (CONTROL_DIR_TO_GUEST).
    pub const OP_COPY: u8 = 0;
    /// WO: writing 1 to bit 0 starts a transfer (ignored while BUSY). Reads 0.
    pub const DOORBELL: u64 = 0x24;
    /// Status: bit 0 busy (RO: a transfer runs), bit 1 done (RW1C), bit 2 error
    /// (RW1C), error code \[15:8\] (RO, cleared with the error bit). A doorbell
    /// replaces DONE/ERROR of the previous transfer with BUSY.
    pub const STATUS: u64 = 0x28;
    pub const STATUS_BUSY: u32 = 1 << 0;
    pub const STATUS_DONE: u32 = 1 << 1;
    pub const STATUS_ERROR: u32 = 1 << 2;
    pub const STATUS_ERR_SHIFT: u32 = 8;
    pub const STATUS_ERR_MASK: u32 = 0xff << 8;
    /// Error codes in STATUS\[15:8\].
    pub const ERR_NONE: u32 = 0;
    pub const ERR_GUEST_RANGE: u32 = 1;
    pub const ERR_DEVICE_RANGE: u32 = 2;
    pub const ERR_LENGTH: u32 = 3;
    /// Bus Master Enable is clear in the Command register (PCIe r6 §7.5.1.1.3): the
    /// function may not issue memory requests, so no transfer starts.
    pub const ERR_BUS_MASTER: u32 = 4;
    /// The device-memory source range holds poison: the transfer stops before any
    /// poisoned data reaches guest RAM.
    pub const ERR_POISON: u32 = 5;
    /// The transfer was abandoned part-way by the backend (it could not run it, or
    /// it is shutting down); the bytes before that point have been copied.
    pub const ERR_ABORTED: u32 = 6;
    /// The operation in CONTROL.OP is not one this device has.
    pub const ERR_UNSUPPORTED_OP: u32 = 7;
    /// Error codes 0x80..=0xff are the accelerator's own operations' (their
    /// firmware documents them).
    pub const ERR_DEVICE_FIRST: u32 = 0x80;
    /// RO: number of completed transfers (wraps).
    pub const COMPLETIONS: u64 = 0x2c;
    /// RO 64-bit: the value the last successful operation produced (0 for a copy;
    /// a checksum, say, for an operation that computes one). A doorbell clears it.
    pub const RESULT: u64 = 0x30;
    /// Largest single transfer.
    pub const MAX_LEN: u64 = 1 << 30;
}
