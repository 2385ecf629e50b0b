//! Memory the daemon owns or borrows:
//!
//! - [`DeviceMemoryFile`]: the accelerator's local memory (BAR2), a sparse memfd or a
//!   persistent file. Its fd goes to QEMU, which maps it straight into the guest; the
//!   daemon itself reaches it with pread/pwrite, so the guest, the DMA engine and
//!   REGION_READ/WRITE see the same bytes.
//! - [`GuestRam`]: guest RAM as QEMU shares it with DMA_MAP (an fd per range), for the
//!   DMA engine. Every access is bounds- and permission-checked; a bad address is an
//!   error, never a fault.
//! - [`PayloadPage`]: the mailbox payload registers in a memfd, which QEMU maps into
//!   BAR0 as a sparse area, so that the guest's payload accesses never trap.
//! - [`FileLsa`]: the Label Storage Area kept in a file.
//!
//! No fd a peer holds may let it kill the daemon. Touching a shared mapping beyond the
//! end of its file raises SIGBUS, and the peer can shrink any file whose fd it holds
//! (ftruncate) unless the file is sealed against it. So:
//! - guest RAM is never mapped: the DMA engine copies with pread/pwrite on the fd QEMU
//!   passed, at the range's offset. A file shrunk after DMA_MAP gives a short read, an
//!   error status of the transfer, never a signal. This works for QEMU's file backends
//!   (which cannot be sealed) as for its memfds, needs no trust in seals, and costs
//!   what the copy out of a mapping cost: one copy per chunk, now in the kernel. A
//!   mapping holds no address space, and a snapshot of the table is an `Arc` clone.
//!   Limit: hugetlbfs has no write(2), so a DMA into guest RAM on hugetlbfs fails
//!   with an error status (reads work).
//! - device memory is reached the same way (pread/pwrite): with `--memory-file`, QEMU
//!   holds an fd of a regular file, which cannot be sealed.
//! - the memfds the daemon creates and hands to QEMU (device memory, mailbox payload)
//!   are sealed with F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, so their size is
//!   fixed for good; the payload page, which the daemon does map, can never fault.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use accel_type2::{DeviceMemory, GuestMemory, MemoryError};
use mailbox::{LsaError, LsaStorage, PayloadBuf};
use thiserror::Error;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

use crate::vfio_user::{sys, DmaMapping, Errno};

/// Default bound on the DMA mappings a client may hold (`--max-dma-maps`). QEMU's
/// vfio-user client maps each RAM section of the guest's address space once
/// (hw/vfio/listener.c): the RAM below and above 4 GiB in a few pieces, the ROMs,
/// and the mmapped BARs of every device; a `scripts/run-vm` boot held at most 8 at
/// once (25 DMA_MAPs over the boot, 12 without an fd). Memory hotplug adds one per
/// DIMM, at most 256 on x86 (`-m slots=`, ACPI's limit of 256 memory devices). QEMU's own estimate of the worst case, used when it
/// checks a virtio-mem set-up against the server's `max_dma_maps`, is one mapping
/// per memory slot: 512 under TCG, the KVM memslot count (32764 on x86) under KVM.
/// 1024 covers the first with room, and QEMU fails such a set-up with a clear
/// message rather than at run time; raise the option for virtio-mem under KVM.
pub const DEFAULT_MAX_DMA_MAPS: u32 = 1024;

/// The DMA_MAP limit QEMU accepts from a server (hw/vfio-user/protocol.h,
/// `VFIO_USER_DEF_MAP_MAX`): it refuses to connect to one that announces more.
pub const MAX_DMA_MAPS_LIMIT: u32 = 65535;

/// The seals of every memfd the daemon hands to QEMU (see the module comment).
const MEMFD_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Superblock magic of FUSE (linux/magic.h): a FUSE file's reads wait for the FUSE
/// server, which a peer may be, for as long as it likes.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Errors of setting up or flushing daemon-owned memory.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("cannot create a memfd for device memory: {0}")]
    Memfd(#[source] io::Error),
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a regular file")]
    NotRegular { path: PathBuf },
    #[error(
        "{path} holds {actual:#x} bytes, more than the configured {expected:#x}; \
         pass the matching size or use another file"
    )]
    TooLarge {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("{path} is in use by another cxl-accel-backend")]
    Locked { path: PathBuf },
    #[error(
        "cannot reserve {size:#x} bytes for {path} (the file system must hold all of device \
         memory): {source}"
    )]
    Reserve {
        path: PathBuf,
        size: u64,
        source: io::Error,
    },
    #[error("cannot size {what} to {size:#x} bytes: {source}")]
    Resize {
        what: String,
        size: u64,
        source: io::Error,
    },
    #[error("cannot map the mailbox payload: {0}")]
    Mmap(#[source] vm_memory::mmap::MmapRegionError),
    #[error("a memfd at offset {0:#x} does not fit the address space")]
    TooBig(u64),
    #[error("cannot seal the {what} against resizing: {source}")]
    Seal { what: String, source: io::Error },
    #[error("cannot flush {what}: {source}")]
    Flush { what: String, source: io::Error },
}

/// An exclusive `flock` on a file, held on an open file description of its own.
///
/// The lock is not taken on the fd that is mapped and handed to QEMU: a lock lives as
/// long as any fd of its description, so QEMU's copy of the BAR2 fd (or a child that
/// inherited it) would otherwise keep a restarted daemon locked out.
#[derive(Debug)]
pub struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self, StorageError> {
        let file = File::open(path).map_err(|source| StorageError::Open {
            path: path.into(),
            source,
        })?;
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StorageError::Locked { path: path.into() });
        }
        Ok(Self(file))
    }
}

/// Open (creating if needed) a regular file for persistent storage, lock it against a
/// second daemon, and make it `size` bytes long with its blocks reserved. A longer
/// file is refused rather than silently truncated. A file this call created is
/// removed again if any step fails, so a failed start leaves nothing behind.
fn open_sized(path: &Path, size: u64) -> Result<(File, FileLock), StorageError> {
    let open_err = |source| StorageError::Open {
        path: path.into(),
        source,
    };
    // Check before opening: opening a FIFO would block, a device would be wrong.
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            return Err(StorageError::NotRegular { path: path.into() });
        }
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    let (file, created) = match options.clone().create_new(true).open(path) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            (options.open(path).map_err(open_err)?, false)
        }
        Err(e) => return Err(open_err(e)),
    };
    let prepare = || {
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(StorageError::NotRegular { path: path.into() });
        }
        let lock = FileLock::acquire(path)?;
        if meta.len() > size {
            return Err(StorageError::TooLarge {
                path: path.into(),
                actual: meta.len(),
                expected: size,
            });
        }
        reserve(&file, path, size)?;
        Ok(lock)
    };
    match prepare() {
        Ok(lock) => Ok((file, lock)),
        Err(e) => {
            if created {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

/// Make `file` `size` bytes long with every block allocated, so that a full file
/// system shows now, as an error, and not later as a SIGBUS when the guest writes to
/// a hole of the shared mapping. Data already in the file is kept. Where the file
/// system cannot allocate ahead (no fallocate), the file is only extended, sparse.
fn reserve(file: &File, path: &Path, size: u64) -> Result<(), StorageError> {
    let err = |source| StorageError::Reserve {
        path: path.into(),
        size,
        source,
    };
    let len = i64::try_from(size).map_err(|_| err(io::Error::from_raw_os_error(libc::EFBIG)))?;
    if len == 0 {
        return Ok(());
    }
    loop {
        // SAFETY: fallocate on an fd we own; it does not touch our memory.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
                log::warn!(
                    "{}: the file system cannot reserve space ({e}); the file stays sparse, \
                     and a full file system would stop the daemon later",
                    path.display()
                );
                return file.set_len(size).map_err(|source| StorageError::Resize {
                    what: path.display().to_string(),
                    size,
                    source,
                });
            }
            _ => return Err(err(e)),
        }
    }
}

/// A memfd of `size` bytes, sparse, sealed against any change of size.
fn sealed_memfd(name: &std::ffi::CStr, size: u64, what: &str) -> Result<File, StorageError> {
    // SAFETY: the name is a valid NUL-terminated string; the returned fd, if valid,
    // is owned by nobody else and is wrapped into an OwnedFd at once.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(StorageError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh, valid fd that we own exclusively.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size).map_err(|source| StorageError::Resize {
        what: what.into(),
        size,
        source,
    })?;
    // SAFETY: fcntl(2) F_ADD_SEALS on an fd we own; no memory is involved.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, MEMFD_SEALS) } < 0 {
        return Err(StorageError::Seal {
            what: what.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(file)
}

/// The device's local memory: a memfd or a file, reached with pread/pwrite.
pub struct DeviceMemoryFile {
    file: File,
    size: u64,
    path: Option<PathBuf>,
    _lock: Option<FileLock>,
}

impl std::fmt::Debug for DeviceMemoryFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMemoryFile")
            .field("fd", &self.file.as_raw_fd())
            .field("size", &self.size)
            .field("path", &self.path)
            .finish()
    }
}

impl DeviceMemoryFile {
    /// A volatile, sparse memfd of `size` bytes, sealed at that size: pages are
    /// allocated only when touched.
    pub fn memfd(size: u64) -> Result<Arc<Self>, StorageError> {
        let file = sealed_memfd(c"cxl-accel-devmem", size, "device memory memfd")?;
        Ok(Arc::new(Self {
            file,
            size,
            path: None,
            _lock: None,
        }))
    }

    /// Persistent device memory in the file at `path`, created or extended to `size`.
    pub fn file(path: &Path, size: u64) -> Result<Arc<Self>, StorageError> {
        let (file, lock) = open_sized(path, size)?;
        Ok(Arc::new(Self {
            file,
            size,
            path: Some(path.to_path_buf()),
            _lock: Some(lock),
        }))
    }

    /// The fd QEMU maps as BAR2.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The backing file, if device memory is persistent.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Sync the memory file (what the guest wrote through QEMU's mapping is in the
    /// page cache already). A memfd has nothing to flush.
    pub fn flush(&self) -> Result<(), StorageError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        self.file.sync_data().map_err(|source| StorageError::Flush {
            what: path.display().to_string(),
            source,
        })
    }

    /// `dpa..dpa + len` inside device memory.
    fn check(&self, dpa: u64, len: usize) -> Result<(), MemoryError> {
        match dpa.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(unmapped(dpa, len)),
        }
    }

    /// Copy out of device memory. A memory file that somebody shrank under the daemon
    /// reads short: an error, never a fault.
    pub fn read(&self, dpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(dpa, buf.len())?;
        self.file.read_exact_at(buf, dpa).map_err(|e| {
            log::warn!("device memory read at {dpa:#x}+{:#x}: {e}", buf.len());
            unmapped(dpa, buf.len())
        })
    }

    /// Copy into device memory.
    pub fn write(&self, dpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.check(dpa, data.len())?;
        self.file.write_all_at(data, dpa).map_err(|e| {
            log::warn!("device memory write at {dpa:#x}+{:#x}: {e}", data.len());
            unmapped(dpa, data.len())
        })
    }

    /// Zero `dpa..dpa+len` by punching a hole in the backing file: the pages are
    /// freed (a sanitized memfd costs no memory), every mapping sees zeros at once,
    /// and partial blocks at the edges are zeroed by the kernel. Falls back to
    /// writing zeros where the file system cannot punch holes.
    pub fn zero(&self, dpa: u64, len: u64) -> Result<(), MemoryError> {
        let err = MemoryError::Unmapped { addr: dpa, len };
        let end = match dpa.checked_add(len) {
            Some(end) if end <= self.size => end,
            _ => return Err(err),
        };
        if len == 0 {
            return Ok(());
        }
        let (off, n) = match (i64::try_from(dpa), i64::try_from(len)) {
            (Ok(o), Ok(n)) => (o, n),
            _ => return Err(err),
        };
        // SAFETY: fallocate on an fd we own; it does not touch our memory.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        log::debug!(
            "hole punching failed ({}); writing zeros",
            io::Error::last_os_error()
        );
        let zeros = vec![0u8; 1 << 20];
        let mut at = dpa;
        while at < end {
            let chunk = zeros
                .get(
                    ..usize::try_from(end.saturating_sub(at))
                        .unwrap_or(usize::MAX)
                        .min(zeros.len()),
                )
                .unwrap_or(&[]);
            self.write(at, chunk)?;
            at = at.saturating_add(chunk.len() as u64);
        }
        Ok(())
    }
}

/// The mailbox payload registers in shared memory: a sparse memfd as long as BAR0's
/// offset of the payload plus its size, sealed at that size, of which only the
/// payload's own pages are mapped (here, and by QEMU into the guest as a sparse mmap
/// area of BAR0). The fd is BAR0's region fd at file offset 0, so file offsets equal
/// BAR0 offsets; the pages before the payload are never mapped and never allocated.
pub struct PayloadPage {
    file: File,
    map: MmapRegion,
    /// BAR0 offset (= file offset) of the payload.
    offset: u64,
}

impl std::fmt::Debug for PayloadPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadPage")
            .field("fd", &self.file.as_raw_fd())
            .field("offset", &self.offset)
            .field("len", &self.map.size())
            .finish()
    }
}

impl PayloadPage {
    /// A zeroed payload of `len` bytes at BAR0 offset `offset` (page aligned).
    pub fn memfd(offset: u64, len: usize) -> Result<Arc<Self>, StorageError> {
        let size = offset
            .checked_add(len as u64)
            .ok_or(StorageError::TooBig(offset))?;
        let file = sealed_memfd(c"cxl-accel-mbox-payload", size, "mailbox payload memfd")?;
        let dup = file.try_clone().map_err(|source| StorageError::Open {
            path: "memfd".into(),
            source,
        })?;
        let map =
            MmapRegion::from_file(FileOffset::new(dup, offset), len).map_err(StorageError::Mmap)?;
        Ok(Arc::new(Self { file, map, offset }))
    }

    /// The fd QEMU maps (BAR0's region fd, offset 0).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// BAR0 offset and length of the payload: the sparse mmap area.
    pub fn area(&self) -> (u64, u64) {
        (self.offset, self.map.size() as u64)
    }
}

/// The mailbox's handle on a [`PayloadPage`]. Every access is a volatile copy of a
/// checked range (`vm_memory`'s `VolatileSlice`), because the guest writes the same
/// page through its own mapping at any time.
#[derive(Debug, Clone)]
pub struct SharedPayload(pub Arc<PayloadPage>);

impl PayloadBuf for SharedPayload {
    fn len(&self) -> usize {
        self.0.map.size()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        mailbox_range(offset, buf.len(), self.len()).is_some()
            && self
                .0
                .map
                .as_volatile_slice()
                .read_slice(buf, offset)
                .is_ok()
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        mailbox_range(offset, data.len(), self.len()).is_some()
            && self
                .0
                .map
                .as_volatile_slice()
                .write_slice(data, offset)
                .is_ok()
    }
}

/// The error of an access to `addr..addr + len` that is not (wholly) mapped.
fn unmapped(addr: u64, len: usize) -> MemoryError {
    MemoryError::Unmapped {
        addr,
        len: len as u64,
    }
}

/// `offset..offset + len` within `size`.
fn mailbox_range(offset: usize, len: usize, size: usize) -> Option<()> {
    (offset.checked_add(len)? <= size).then_some(())
}

/// A handle on device memory for the device model, which owns a `Box<dyn DeviceMemory>`
/// while the daemon keeps the fd and flushes it.
#[derive(Debug, Clone)]
pub struct SharedDeviceMemory(pub Arc<DeviceMemoryFile>);

impl DeviceMemory for SharedDeviceMemory {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read(&self, dpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0.read(dpa, buf)
    }
    fn write(&mut self, dpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.0.write(dpa, data)
    }
    fn zero(&mut self, dpa: u64, len: u64) -> Result<(), MemoryError> {
        self.0.zero(dpa, len)
    }
}

/// The client's fd behind one DMA_MAP range.
#[derive(Debug)]
struct Backing {
    file: File,
    /// Offset of the range in the file.
    offset: u64,
    /// An I/O error on this range was logged already (a shrunk file fails every
    /// transfer; once in the log is enough).
    warned: AtomicBool,
}

/// One DMA_MAP range.
#[derive(Debug, Clone)]
struct DmaRegion {
    size: u64,
    /// `None`: mapped without an fd (QEMU does this for device BARs and for RAM it
    /// cannot share), so the range is known but not accessible.
    backing: Option<Arc<Backing>>,
    readable: bool,
    writable: bool,
}

impl DmaRegion {
    /// One past the last IOVA of the range (cannot overflow: checked at DMA_MAP).
    fn end(&self, base: u64) -> u64 {
        base.saturating_add(self.size)
    }
}

/// Guest RAM shared by the client, keyed by IOVA (guest physical address), with at
/// most `max_maps` ranges. Cloning it is cheap (the table is shared until the next
/// DMA_MAP or DMA_UNMAP changes it), so a transfer can run on a snapshot.
#[derive(Clone)]
pub struct GuestRam {
    regions: Arc<BTreeMap<u64, DmaRegion>>,
    max_maps: usize,
}

impl Default for GuestRam {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_DMA_MAPS)
    }
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.regions
                    .iter()
                    .map(|(k, v)| (k, (v.size, v.backing.is_some()))),
            )
            .finish()
    }
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// The errno of an I/O error, for a reply.
fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Check an fd that came with a DMA_MAP: only a regular file can back guest RAM (a
/// memfd, a tmpfs or hugetlbfs file, a file on disk), not on FUSE, opened for the
/// access the mapping allows, and long enough for the range. A pipe, socket, device
/// or directory is EINVAL, a file not opened for the access EACCES.
fn dma_backing(fd: OwnedFd, m: &DmaMapping) -> Result<Backing, Errno> {
    let file = File::from(fd);
    let raw = file.as_raw_fd();
    let meta = file.metadata().map_err(|e| errno_of(&e))?;
    if !meta.file_type().is_file() {
        log::warn!("DMA_MAP {:#x}: the fd is not a regular file", m.iova);
        return Err(libc::EINVAL);
    }
    if sys::fs_type(raw).map_err(|e| errno_of(&e))? == FUSE_SUPER_MAGIC {
        log::warn!("DMA_MAP {:#x}: the fd is a FUSE file", m.iova);
        return Err(libc::EINVAL);
    }
    let flags = sys::fd_flags(raw).map_err(|e| errno_of(&e))?;
    let mode = flags & libc::O_ACCMODE;
    let can_read = flags & libc::O_PATH == 0 && mode != libc::O_WRONLY;
    let can_write = flags & (libc::O_PATH | libc::O_APPEND) == 0
        && (mode == libc::O_WRONLY || mode == libc::O_RDWR);
    if (m.readable && !can_read) || (m.writable && !can_write) {
        log::warn!(
            "DMA_MAP {:#x}: the fd is not opened for {}",
            m.iova,
            if m.writable { "read-write" } else { "reading" }
        );
        return Err(libc::EACCES);
    }
    if m.offset
        .checked_add(m.size)
        .is_none_or(|end| end > meta.len())
    {
        log::warn!(
            "DMA_MAP {:#x}: the file holds {:#x} bytes, not {:#x}+{:#x}",
            m.iova,
            meta.len(),
            m.offset,
            m.size
        );
        return Err(libc::EINVAL);
    }
    Ok(Backing {
        file,
        offset: m.offset,
        warned: AtomicBool::new(false),
    })
}

/// One piece of a guest access: the range's backing, the file offset, and the part
/// of the caller's buffer.
type Piece<'a> = (&'a Backing, u64, Range<usize>);

impl GuestRam {
    /// An empty table that holds at most `max_maps` ranges.
    pub fn new(max_maps: u32) -> Self {
        Self {
            regions: Arc::new(BTreeMap::new()),
            max_maps: usize::try_from(max_maps).unwrap_or(usize::MAX),
        }
    }

    /// The most ranges the table holds.
    pub fn max_maps(&self) -> usize {
        self.max_maps
    }

    /// Add a DMA_MAP range. A zero or overflowing size is EINVAL, overlap with an
    /// existing range EEXIST, a full table ENOSPC; an fd that cannot back the range
    /// is refused as `dma_backing` says.
    pub fn map(&mut self, mut m: DmaMapping) -> Result<(), Errno> {
        let end = m.iova.checked_add(m.size).ok_or(libc::EINVAL)?;
        if m.size == 0 {
            return Err(libc::EINVAL);
        }
        if let Some((&base, r)) = self.regions.range(..end).next_back() {
            if r.end(base) > m.iova {
                return Err(libc::EEXIST);
            }
        }
        if self.regions.len() >= self.max_maps {
            return Err(libc::ENOSPC);
        }
        let backing = match m.fd.take() {
            Some(fd) if m.readable || m.writable => Some(Arc::new(dma_backing(fd, &m)?)),
            _ => None,
        };
        Arc::make_mut(&mut self.regions).insert(
            m.iova,
            DmaRegion {
                size: m.size,
                backing,
                readable: m.readable,
                writable: m.writable,
            },
        );
        Ok(())
    }

    /// Remove every range that lies inside `iova..iova+size` (the whole space when
    /// `size` runs past the end). A range only partly inside is EINVAL and nothing is
    /// removed. Returns how many ranges went.
    pub fn unmap(&mut self, iova: u64, size: u64) -> Result<usize, Errno> {
        let end = iova.saturating_add(size);
        let mut doomed = Vec::new();
        for (&base, r) in self.regions.iter() {
            let rend = r.end(base);
            if rend <= iova || base >= end {
                continue;
            }
            if base < iova || rend > end {
                return Err(libc::EINVAL);
            }
            doomed.push(base);
        }
        if !doomed.is_empty() {
            let regions = Arc::make_mut(&mut self.regions);
            for base in &doomed {
                regions.remove(base);
            }
        }
        Ok(doomed.len())
    }

    /// Drop every mapping (the client went away).
    pub fn clear(&mut self) {
        self.regions = Arc::new(BTreeMap::new());
    }

    /// Number of ranges, and bytes covered.
    pub fn stats(&self) -> (usize, u64) {
        (
            self.regions.len(),
            self.regions
                .values()
                .fold(0u64, |sum, r| sum.saturating_add(r.size)),
        )
    }

    /// Split `gpa..gpa+len` into pieces of the ranges it spans (adjacent ranges are
    /// fine). Fails if any part is unmapped, mapped without an fd, or lacks the
    /// permission, before anything is read or written.
    fn pieces(&self, gpa: u64, len: usize, write: bool) -> Result<Vec<Piece<'_>>, MemoryError> {
        let err = || unmapped(gpa, len);
        let end = gpa.checked_add(len as u64).ok_or_else(err)?;
        let mut pieces = Vec::new();
        let mut addr = gpa;
        while addr < end {
            let (&base, r) = self.regions.range(..=addr).next_back().ok_or_else(err)?;
            let rend = r.end(base);
            if addr >= rend || !(if write { r.writable } else { r.readable }) {
                return Err(err());
            }
            let backing = r.backing.as_deref().ok_or_else(err)?;
            let chunk_end = end.min(rend);
            // addr >= base and addr < chunk_end <= end = gpa + len: all in range.
            let file_off = backing
                .offset
                .checked_add(addr.saturating_sub(base))
                .ok_or_else(err)?;
            let from = usize::try_from(addr.saturating_sub(gpa)).map_err(|_| err())?;
            let to = usize::try_from(chunk_end.saturating_sub(gpa)).map_err(|_| err())?;
            pieces.push((backing, file_off, from..to));
            addr = chunk_end;
        }
        Ok(pieces)
    }
}

/// Logs the first I/O error on a range (with the range's context).
fn io_error(backing: &Backing, gpa: u64, len: usize, e: &io::Error) -> MemoryError {
    if !backing.warned.swap(true, Ordering::Relaxed) {
        log::warn!(
            "guest RAM at {gpa:#x}+{len:#x}: {e} (was the client's file shrunk after DMA_MAP?); \
             the transfer fails"
        );
    }
    unmapped(gpa, len)
}

impl GuestMemory for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        for (backing, off, range) in self.pieces(gpa, len, false)? {
            let part = buf.get_mut(range).ok_or_else(|| unmapped(gpa, len))?;
            // A file shorter than the range reads short: UnexpectedEof.
            backing
                .file
                .read_exact_at(part, off)
                .map_err(|e| io_error(backing, gpa, len, &e))?;
        }
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let len = data.len();
        let pieces = self.pieces(gpa, len, true)?;
        // pwrite past the end would grow the client's file: a file shrunk since
        // DMA_MAP fails the transfer instead, before anything is written.
        for (backing, off, range) in &pieces {
            let end = off.saturating_add(range.len() as u64);
            match backing.file.metadata() {
                Ok(meta) if meta.len() >= end => {}
                Ok(meta) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the file holds {:#x} bytes, not {end:#x}", meta.len()),
                    );
                    return Err(io_error(backing, gpa, len, &e));
                }
                Err(e) => return Err(io_error(backing, gpa, len, &e)),
            }
        }
        for (backing, off, range) in pieces {
            let part = data.get(range).ok_or_else(|| unmapped(gpa, len))?;
            backing
                .file
                .write_all_at(part, off)
                .map_err(|e| io_error(backing, gpa, len, &e))?;
        }
        Ok(())
    }
}

/// Asks another thread to sync the LSA file; false when it cannot.
pub type SyncRequest = Box<dyn Fn() -> bool + Send>;

/// The Label Storage Area in a file, written through (pwrite) so that it survives a
/// crash of the daemon. [`LsaStorage::flush`] (after Set LSA) syncs it to disk, or,
/// after [`FileLsa::defer_sync`], asks a worker to, so that the `fdatasync` does not
/// run under the device lock.
pub struct FileLsa {
    file: File,
    size: usize,
    _lock: FileLock,
    sync: Option<SyncRequest>,
}

impl std::fmt::Debug for FileLsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLsa")
            .field("fd", &self.file.as_raw_fd())
            .field("size", &self.size)
            .field("deferred_sync", &self.sync.is_some())
            .finish()
    }
}

impl FileLsa {
    pub fn open(path: &Path, size: usize) -> Result<Self, StorageError> {
        let (file, lock) = open_sized(path, size as u64)?;
        Ok(Self {
            file,
            size,
            _lock: lock,
            sync: None,
        })
    }

    /// From now on, [`LsaStorage::flush`] calls `request` instead of syncing; only
    /// when that returns false does it sync itself.
    pub fn defer_sync(&mut self, request: SyncRequest) {
        self.sync = Some(request);
    }

    /// A second handle on the same file, to sync it at shutdown while the device
    /// owns the LSA.
    pub fn syncer(&self) -> Result<LsaSyncer, StorageError> {
        let file = self
            .file
            .try_clone()
            .map_err(|source| StorageError::Flush {
                what: "LSA file".into(),
                source,
            })?;
        Ok(LsaSyncer(file))
    }

    fn check(&self, offset: usize, len: usize) -> Result<u64, LsaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(offset as u64),
            _ => Err(LsaError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }
}

impl LsaStorage for FileLsa {
    fn size(&self) -> usize {
        self.size
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), LsaError> {
        let off = self.check(offset, buf.len())?;
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| LsaError::Storage(e.to_string()))
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), LsaError> {
        let off = self.check(offset, data.len())?;
        self.file
            .write_all_at(data, off)
            .map_err(|e| LsaError::Storage(e.to_string()))
    }
    fn flush(&mut self) -> Result<(), LsaError> {
        if self.sync.as_ref().is_some_and(|request| request()) {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| LsaError::Storage(e.to_string()))
    }
}

/// Syncs the LSA file (at shutdown, and on the worker after Set LSA).
#[derive(Debug)]
pub struct LsaSyncer(File);

impl LsaSyncer {
    pub fn sync(&self) -> Result<(), StorageError> {
        self.0.sync_data().map_err(|source| StorageError::Flush {
            what: "LSA file".into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// ftruncate through a second fd of the file, as a peer holding it would.
    fn truncate_as_peer(file: &File, len: u64) -> io::Result<()> {
        file.try_clone()?.set_len(len)
    }

    #[test]
    fn memfds_handed_to_qemu_keep_their_size() {
        let m = DeviceMemoryFile::memfd(1 << 20).unwrap();
        let page = PayloadPage::memfd(0x1000, 4096).unwrap();
        for (what, file, len) in [
            ("device memory", &m.file, 1u64 << 20),
            ("payload", &page.file, 0x2000),
        ] {
            for to in [0, len / 2, len * 2] {
                let e = truncate_as_peer(file, to).unwrap_err();
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::EPERM),
                    "{what} resized to {to:#x}"
                );
            }
            assert_eq!(file.metadata().unwrap().len(), len);
        }
        // Hole punching (Sanitize) is still allowed.
        m.write(0, b"x").unwrap();
        m.zero(0, 4096).unwrap();
    }

    #[test]
    fn a_memory_file_shrunk_by_a_peer_reads_short_not_a_signal() {
        let dir = tempfile::tempdir().unwrap();
        let m = DeviceMemoryFile::file(&dir.path().join("mem"), 1 << 20).unwrap();
        m.write(0x8_0000, b"tail").unwrap();
        truncate_as_peer(&m.file, 4096).unwrap();
        let mut b = [0u8; 4];
        assert!(m.read(0x8_0000, &mut b).is_err());
        assert!(m.read(4094, &mut b).is_err(), "straddling the new end");
        m.read(0, &mut b).unwrap();
        // A write restores the daemon's own file where it writes.
        m.write(0x8_0000, b"back").unwrap();
        m.read(0x8_0000, &mut b).unwrap();
        assert_eq!(&b, b"back");
    }

    #[test]
    fn guest_ram_shrunk_after_dma_map_fails_transfers_and_is_not_grown() {
        let mut ram = GuestRam::default();
        let fd = memfd_with(b"", 0x4000);
        let peer = File::from(fd.try_clone().unwrap());
        ram.map(mapping(0x10000, 0x4000, Some(fd))).unwrap();
        ram.write(0x10000, b"head").unwrap();
        ram.write(0x13000, b"tail").unwrap();
        peer.set_len(0x1000).unwrap();
        let mut b = [0u8; 4];
        assert!(ram.read(0x13000, &mut b).is_err());
        assert!(ram.write(0x13000, b"more").is_err());
        assert!(
            ram.write(0x10ffe, b"edge").is_err(),
            "straddling the new end"
        );
        assert_eq!(peer.metadata().unwrap().len(), 0x1000, "grown back");
        ram.read(0x10000, &mut b).unwrap();
        assert_eq!(&b, b"head");
        ram.write(0x10ffc, b"last").unwrap();
    }

    #[test]
    fn guest_ram_holds_at_most_its_limit() {
        let mut ram = GuestRam::new(2);
        assert_eq!(ram.max_maps(), 2);
        ram.map(mapping(0, 0x1000, None)).unwrap();
        ram.map(mapping(0x1000, 0x1000, Some(memfd_with(b"", 0x1000))))
            .unwrap();
        assert_eq!(ram.map(mapping(0x2000, 0x1000, None)), Err(libc::ENOSPC));
        ram.unmap(0, 0x1000).unwrap();
        ram.map(mapping(0x2000, 0x1000, None)).unwrap();
        assert_eq!(ram.stats(), (2, 0x2000));
    }

    #[test]
    fn a_guest_ram_snapshot_outlives_changes_to_the_table() {
        let mut ram = GuestRam::default();
        ram.map(mapping(0, 0x1000, Some(memfd_with(b"snap", 0x1000))))
            .unwrap();
        let snapshot = ram.clone();
        ram.unmap(0, 0x1000).unwrap();
        ram.clear();
        let mut b = [0u8; 4];
        assert!(ram.read(0, &mut b).is_err());
        snapshot.read(0, &mut b).unwrap();
        assert_eq!(&b, b"snap");
        snapshot.write(0, b"SNAP").unwrap();
    }

    #[test]
    fn dma_fds_must_be_regular_files_open_for_the_access() {
        let mut ram = GuestRam::default();
        let mut p = [0; 2];
        // SAFETY: pipe(2) fills `p`.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: fresh fds from pipe(2), owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        assert_eq!(ram.map(mapping(0, 0x1000, Some(r))), Err(libc::EINVAL));
        assert_eq!(ram.map(mapping(0, 0x1000, Some(w))), Err(libc::EINVAL));
        let dir = tempfile::tempdir().unwrap();
        let dirfd = OwnedFd::from(File::open(dir.path()).unwrap());
        assert_eq!(ram.map(mapping(0, 0x1000, Some(dirfd))), Err(libc::EINVAL));
        let path = dir.path().join("ram");
        std::fs::write(&path, vec![7u8; 0x1000]).unwrap();
        let ro = OwnedFd::from(File::open(&path).unwrap());
        assert_eq!(ram.map(mapping(0, 0x1000, Some(ro))), Err(libc::EACCES));
        let ro = OwnedFd::from(File::open(&path).unwrap());
        let mut m = mapping(0, 0x1000, Some(ro));
        m.writable = false;
        ram.map(m).unwrap();
        let mut b = [0u8; 2];
        ram.read(0, &mut b).unwrap();
        assert_eq!(b, [7, 7]);
        let app = OwnedFd::from(
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .unwrap(),
        );
        assert_eq!(
            ram.map(mapping(0x1000, 0x1000, Some(app))),
            Err(libc::EACCES)
        );
        assert_eq!(ram.stats().0, 1);
    }

    /// Guest RAM as QEMU's memory-backend-memfd shares it (unsealed here, so that
    /// a test can play a peer that shrinks it).
    fn memfd_with(bytes: &[u8], size: u64) -> OwnedFd {
        // SAFETY: a valid NUL-terminated name; the fd is owned at once.
        let fd = unsafe { libc::memfd_create(c"test-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd nobody else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        OwnedFd::from(file)
    }

    fn mapping(iova: u64, size: u64, fd: Option<OwnedFd>) -> DmaMapping {
        DmaMapping {
            iova,
            size,
            offset: 0,
            readable: true,
            writable: true,
            fd,
        }
    }

    #[test]
    fn payload_page_is_shared_through_its_fd() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let layout_off = cxl_regs::layout::MAILBOX_PAYLOAD_OFFSET;
        let page = PayloadPage::memfd(layout_off, 4096).unwrap();
        assert_eq!(page.area(), (layout_off, 4096));
        assert_eq!(page.file.metadata().unwrap().len(), layout_off + 4096);
        let mut p = SharedPayload(page.clone());
        assert_eq!(PayloadBuf::len(&p), 4096);
        assert!(p.write(4092, b"wxyz"));
        assert!(!p.write(4093, b"wxyz"));
        assert!(!p.write(usize::MAX, b"w"));
        // What QEMU (the guest) sees through the fd at the area's offset, and the
        // other way round.
        let mut b = [0u8; 4];
        page.file.read_exact_at(&mut b, layout_off + 4092).unwrap();
        assert_eq!(&b, b"wxyz");
        page.file.write_all_at(b"from guest", layout_off).unwrap();
        let mut got = [0u8; 10];
        assert!(p.read(0, &mut got));
        assert_eq!(&got, b"from guest");
        assert!(!p.read(4090, &mut got));
        p.zero();
        assert_eq!(p.read_u32(0), Some(0));
        // Only the payload's pages are ever allocated.
        assert!(page.file.metadata().unwrap().blocks() * 512 <= 2 * 4096);
    }

    #[test]
    fn device_memory_bounds() {
        let m = DeviceMemoryFile::memfd(256 << 20).unwrap();
        assert_eq!(m.size(), 256 << 20);
        m.write((256 << 20) - 4, b"abcd").unwrap();
        let mut b = [0u8; 4];
        m.read((256 << 20) - 4, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        assert!(m.read((256 << 20) - 3, &mut b).is_err());
        assert!(m.write(u64::MAX - 1, b"ab").is_err());
    }

    #[test]
    fn zero_punches_holes_and_frees_pages() {
        use std::os::unix::fs::MetadataExt;
        let m = DeviceMemoryFile::memfd(16 << 20).unwrap();
        m.write(0, &vec![0xaa; 8 << 20]).unwrap();
        let before = m.file.metadata().unwrap().blocks();
        // Unaligned edges are zeroed too; bytes outside stay.
        m.zero(10, (8 << 20) - 20).unwrap();
        // Measured before reading back: a read fault on a shared tmpfs mapping
        // allocates the page again.
        let after = m.file.metadata().unwrap().blocks();
        assert!(
            after < before / 2,
            "pages not freed: {before} -> {after} blocks"
        );
        let mut b = vec![0u8; 8 << 20];
        m.read(0, &mut b).unwrap();
        assert!(b[..10].iter().all(|&x| x == 0xaa));
        assert!(b[10..(8 << 20) - 10].iter().all(|&x| x == 0));
        assert!(b[(8 << 20) - 10..].iter().all(|&x| x == 0xaa));
        assert!(m.zero(16 << 20, 1).is_err());
        assert!(m.zero(1, u64::MAX).is_err());
    }

    #[test]
    fn memory_file_persists_and_refuses_larger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        {
            let m = DeviceMemoryFile::file(&path, 1 << 20).unwrap();
            m.write(4096, b"persist").unwrap();
            m.flush().unwrap();
        }
        let m = DeviceMemoryFile::file(&path, 1 << 20).unwrap();
        let mut b = [0u8; 7];
        m.read(4096, &mut b).unwrap();
        assert_eq!(&b, b"persist");
        // A second daemon on the same file is refused.
        assert!(matches!(
            DeviceMemoryFile::file(&path, 1 << 20),
            Err(StorageError::Locked { .. })
        ));
        // A copy of the data fd outliving the daemon (QEMU's BAR2 fd) does not keep
        // the next daemon out.
        let qemu_copy = m.file.try_clone().unwrap();
        drop(m);
        drop(DeviceMemoryFile::file(&path, 1 << 20).unwrap());
        drop(qemu_copy);
        assert!(matches!(
            DeviceMemoryFile::file(&path, 1 << 19),
            Err(StorageError::TooLarge { .. })
        ));
        // A directory is not a memory file.
        assert!(DeviceMemoryFile::file(dir.path(), 1 << 20).is_err());
    }

    #[test]
    fn guest_ram_checks_bounds_and_fds() {
        let mut ram = GuestRam::default();
        ram.map(mapping(0x10000, 0x2000, Some(memfd_with(b"hello", 0x2000))))
            .unwrap();
        ram.map(mapping(0x12000, 0x1000, Some(memfd_with(b"world", 0x1000))))
            .unwrap();
        ram.map(mapping(0x20000, 0x1000, None)).unwrap();
        let mut b = [0u8; 5];
        ram.read(0x10000, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        // Spanning two adjacent mappings works.
        let mut span = [0u8; 8];
        ram.write(0x11ffc, b"ABCDwxyz").unwrap();
        ram.read(0x11ffc, &mut span).unwrap();
        assert_eq!(&span, b"ABCDwxyz");
        // Past the end, before the start, a gap, a mapping without fd, overflow.
        assert!(ram.read(0x12ffe, &mut b).is_err());
        assert!(ram.read(0xfffe, &mut b).is_err());
        assert!(ram.read(0x13000, &mut b).is_err());
        assert!(ram.read(0x20000, &mut b).is_err());
        assert!(ram.write(u64::MAX - 2, b"xyz").is_err());
        // Overlap is refused, an fd too short for the range is refused.
        assert_eq!(ram.map(mapping(0x11000, 0x2000, None)), Err(libc::EEXIST));
        assert!(ram
            .map(mapping(0x40000, 0x10000, Some(memfd_with(b"", 0x1000))))
            .is_err());
        assert_eq!(ram.map(mapping(0x50000, 0, None)), Err(libc::EINVAL));
        // Partial unmap is refused; whole unmap works.
        assert_eq!(ram.unmap(0x10000, 0x1000), Err(libc::EINVAL));
        assert_eq!(ram.unmap(0x10000, 0x3000), Ok(2));
        assert!(ram.read(0x10000, &mut b).is_err());
        assert_eq!(ram.stats().0, 1);
    }

    #[test]
    fn read_only_mapping_is_not_written() {
        let mut ram = GuestRam::default();
        let mut m = mapping(0, 0x1000, Some(memfd_with(b"ro", 0x1000)));
        m.writable = false;
        ram.map(m).unwrap();
        let mut b = [0u8; 2];
        ram.read(0, &mut b).unwrap();
        assert_eq!(&b, b"ro");
        assert!(ram.write(0, b"xx").is_err());
    }

    #[test]
    fn unaligned_fd_offset() {
        let mut ram = GuestRam::default();
        let fd = memfd_with(b"0123456789", 0x2000);
        let mut m = mapping(0x1000, 0x100, Some(fd));
        m.offset = 3;
        ram.map(m).unwrap();
        let mut b = [0u8; 4];
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(&b, b"3456");
    }

    #[test]
    fn file_lsa() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lsa");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"label").unwrap();
        drop(f);
        let mut lsa = FileLsa::open(&path, 4096).unwrap();
        let mut b = [0u8; 5];
        lsa.read(0, &mut b).unwrap();
        assert_eq!(&b, b"label");
        lsa.write(4091, b"tail!").unwrap();
        assert!(lsa.write(4092, b"tail!").is_err());
        assert!(lsa.read(usize::MAX, &mut b).is_err());
        lsa.flush().unwrap();
        lsa.syncer().unwrap().sync().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
    }
}
