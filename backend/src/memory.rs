//! Memory the daemon owns or borrows:
//!
//! - [`DeviceMemoryFile`]: the accelerator's local memory (BAR2), a sparse memfd or a
//!   persistent file, mapped shared. Its fd goes to QEMU, which maps it straight into
//!   the guest, so the guest, the DMA engine and REGION_READ/WRITE see the same bytes.
//! - [`GuestRam`]: guest RAM as QEMU shares it with DMA_MAP (an fd per range), for the
//!   DMA engine. Every access is bounds- and permission-checked; a bad address is an
//!   error, never a fault.
//! - [`PayloadPage`]: the mailbox payload registers in a memfd, which QEMU maps into
//!   BAR0 as a sparse area, so that the guest's payload accesses never trap.
//! - [`FileLsa`]: the Label Storage Area kept in a file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use accel_type2::{DeviceMemory, GuestMemory, MemoryError};
use mailbox::{LsaError, LsaStorage, PayloadBuf};
use thiserror::Error;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

use crate::vfio_user::{DmaMapping, Errno};

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
    #[error("cannot map device memory: {0}")]
    Mmap(#[source] vm_memory::mmap::MmapRegionError),
    #[error("device memory of {0:#x} bytes does not fit the address space")]
    TooBig(u64),
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

/// The device's local memory: one shared mapping of a memfd or a file.
pub struct DeviceMemoryFile {
    file: File,
    map: MmapRegion,
    path: Option<PathBuf>,
    _lock: Option<FileLock>,
}

impl std::fmt::Debug for DeviceMemoryFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMemoryFile")
            .field("fd", &self.file.as_raw_fd())
            .field("size", &self.map.size())
            .field("path", &self.path)
            .finish()
    }
}

impl DeviceMemoryFile {
    /// A volatile, sparse memfd of `size` bytes: pages are allocated only when touched.
    pub fn memfd(size: u64) -> Result<Arc<Self>, StorageError> {
        // SAFETY: the name is a valid NUL-terminated string; the returned fd, if valid,
        // is owned by nobody else and is wrapped into an OwnedFd at once.
        let fd = unsafe { libc::memfd_create(c"cxl-accel-devmem".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(StorageError::Memfd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh, valid fd that we own exclusively.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size).map_err(|source| StorageError::Resize {
            what: "device memory memfd".into(),
            size,
            source,
        })?;
        Self::map(file, size, None, None)
    }

    /// Persistent device memory in the file at `path`, created or extended to `size`.
    pub fn file(path: &Path, size: u64) -> Result<Arc<Self>, StorageError> {
        let (file, lock) = open_sized(path, size)?;
        Self::map(file, size, Some(path.to_path_buf()), Some(lock))
    }

    fn map(
        file: File,
        size: u64,
        path: Option<PathBuf>,
        lock: Option<FileLock>,
    ) -> Result<Arc<Self>, StorageError> {
        let len = usize::try_from(size).map_err(|_| StorageError::TooBig(size))?;
        let dup = file.try_clone().map_err(|source| StorageError::Open {
            path: path.clone().unwrap_or_else(|| "memfd".into()),
            source,
        })?;
        let map =
            MmapRegion::from_file(FileOffset::new(dup, 0), len).map_err(StorageError::Mmap)?;
        Ok(Arc::new(Self {
            file,
            map,
            path,
            _lock: lock,
        }))
    }

    /// The fd QEMU maps as BAR2.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn size(&self) -> u64 {
        self.map.size() as u64
    }

    /// The backing file, if device memory is persistent.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Write dirty pages back to the memory file and sync it. A memfd has nothing to
    /// flush.
    pub fn flush(&self) -> Result<(), StorageError> {
        if self.path.is_none() {
            return Ok(());
        }
        let what = || {
            self.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        // SAFETY: the range is exactly the live mapping owned by `self.map`.
        let rc = unsafe { libc::msync(self.map.as_ptr().cast(), self.map.size(), libc::MS_SYNC) };
        if rc != 0 {
            return Err(StorageError::Flush {
                what: what(),
                source: io::Error::last_os_error(),
            });
        }
        self.file.sync_data().map_err(|source| StorageError::Flush {
            what: what(),
            source,
        })
    }

    fn check(&self, dpa: u64, len: usize) -> Result<usize, MemoryError> {
        let err = unmapped(dpa, len);
        let end = dpa.checked_add(len as u64).ok_or_else(|| err.clone())?;
        if end > self.size() {
            return Err(err);
        }
        usize::try_from(dpa).map_err(|_| err)
    }

    /// Copy out of device memory.
    pub fn read(&self, dpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.check(dpa, buf.len())?;
        self.map
            .as_volatile_slice()
            .read_slice(buf, off)
            .map_err(|_| unmapped(dpa, buf.len()))
    }

    /// Copy into device memory.
    pub fn write(&self, dpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let off = self.check(dpa, data.len())?;
        self.map
            .as_volatile_slice()
            .write_slice(data, off)
            .map_err(|_| unmapped(dpa, data.len()))
    }
}

impl DeviceMemoryFile {
    /// Zero `dpa..dpa+len` by punching a hole in the backing file: the pages are
    /// freed (a sanitized memfd costs no memory), every mapping sees zeros at once,
    /// and partial blocks at the edges are zeroed by the kernel. Falls back to
    /// writing zeros where the file system cannot punch holes.
    pub fn zero(&self, dpa: u64, len: u64) -> Result<(), MemoryError> {
        let err = MemoryError::Unmapped { addr: dpa, len };
        match dpa.checked_add(len) {
            Some(end) if end <= self.size() => {}
            _ => return Err(err),
        }
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
        let end = dpa + len;
        while at < end {
            let chunk = (end - at).min(zeros.len() as u64) as usize;
            self.write(at, &zeros[..chunk])?;
            at += chunk as u64;
        }
        Ok(())
    }
}

/// The mailbox payload registers in shared memory: a sparse memfd as long as BAR0's
/// offset of the payload plus its size, of which only the payload's own pages are
/// mapped (here, and by QEMU into the guest as a sparse mmap area of BAR0). The fd is
/// BAR0's region fd at file offset 0, so file offsets equal BAR0 offsets; the pages
/// before the payload are never mapped and never allocated.
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
        // SAFETY: the name is a valid NUL-terminated string; the returned fd, if valid,
        // is owned by nobody else and is wrapped into an OwnedFd at once.
        let fd =
            unsafe { libc::memfd_create(c"cxl-accel-mbox-payload".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(StorageError::Memfd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh, valid fd that we own exclusively.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let size = offset
            .checked_add(len as u64)
            .ok_or(StorageError::TooBig(offset))?;
        file.set_len(size).map_err(|source| StorageError::Resize {
            what: "mailbox payload memfd".into(),
            size,
            source,
        })?;
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

/// One DMA_MAP range.
struct DmaRegion {
    size: u64,
    /// The mapping of the client's fd, and how far into it the range starts (the fd
    /// offset rounded down to a page, for mmap). `None`: mapped without an fd (QEMU
    /// does this for device BARs), so the range is known but not accessible.
    map: Option<(MmapRegion, usize)>,
    readable: bool,
    writable: bool,
}

/// Guest RAM shared by the client, keyed by IOVA (guest physical address).
#[derive(Default)]
pub struct GuestRam {
    regions: BTreeMap<u64, DmaRegion>,
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.regions
                    .iter()
                    .map(|(k, v)| (k, (v.size, v.map.is_some()))),
            )
            .finish()
    }
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

impl GuestRam {
    /// Add a DMA_MAP range. Overlap with an existing range is EEXIST; an fd that
    /// cannot be mapped for the range (too short, wrong mode) is the mmap errno.
    pub fn map(&mut self, m: DmaMapping) -> Result<(), Errno> {
        let end = m.iova.checked_add(m.size).ok_or(libc::EINVAL)?;
        if m.size == 0 {
            return Err(libc::EINVAL);
        }
        if let Some((&base, r)) = self.regions.range(..end).next_back() {
            if base + r.size > m.iova {
                return Err(libc::EEXIST);
            }
        }
        let map = match m.fd {
            Some(fd) if m.readable || m.writable => {
                let skew = m.offset % page_size();
                let len = m
                    .size
                    .checked_add(skew)
                    .and_then(|l| usize::try_from(l).ok())
                    .ok_or(libc::EINVAL)?;
                let prot = if m.writable {
                    libc::PROT_READ | libc::PROT_WRITE
                } else {
                    libc::PROT_READ
                };
                let file = File::from(fd);
                // Touching a shared mapping past the end of its file raises SIGBUS, so
                // a file too short for the range is refused up front.
                let meta = file
                    .metadata()
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
                if meta.is_file() && m.offset.checked_add(m.size).is_none_or(|e| e > meta.len()) {
                    return Err(libc::EINVAL);
                }
                let region = MmapRegion::build(
                    Some(FileOffset::new(file, m.offset - skew)),
                    len,
                    prot,
                    libc::MAP_SHARED | libc::MAP_NORESERVE,
                )
                .map_err(|e| match e {
                    vm_memory::mmap::MmapRegionError::Mmap(io) => {
                        io.raw_os_error().unwrap_or(libc::EINVAL)
                    }
                    _ => libc::EINVAL,
                })?;
                Some((region, skew as usize))
            }
            _ => None,
        };
        self.regions.insert(
            m.iova,
            DmaRegion {
                size: m.size,
                map,
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
        for (&base, r) in &self.regions {
            let rend = base + r.size;
            if rend <= iova || base >= end {
                continue;
            }
            if base < iova || rend > end {
                return Err(libc::EINVAL);
            }
            doomed.push(base);
        }
        for base in &doomed {
            self.regions.remove(base);
        }
        Ok(doomed.len())
    }

    /// Drop every mapping (the client went away).
    pub fn clear(&mut self) {
        self.regions.clear();
    }

    /// Number of ranges, and bytes covered.
    pub fn stats(&self) -> (usize, u64) {
        (
            self.regions.len(),
            self.regions.values().map(|r| r.size).sum(),
        )
    }

    /// Apply `f(slice_of_mapping, offset_in_mapping, chunk_range)` to each piece of
    /// `gpa..gpa+len`, which may span adjacent ranges. Fails before touching anything
    /// if any part is unmapped, mapped without an fd, or lacks the permission.
    fn walk(
        &self,
        gpa: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(&MmapRegion, usize, std::ops::Range<usize>) -> bool,
    ) -> Result<(), MemoryError> {
        let err = unmapped(gpa, len);
        let end = gpa.checked_add(len as u64).ok_or_else(|| err.clone())?;
        let mut pieces = Vec::new();
        let mut addr = gpa;
        while addr < end {
            let (&base, r) = self
                .regions
                .range(..=addr)
                .next_back()
                .ok_or_else(|| err.clone())?;
            let rend = base + r.size;
            if addr >= rend || !(if write { r.writable } else { r.readable }) {
                return Err(err);
            }
            let (map, skew) = r.map.as_ref().ok_or_else(|| err.clone())?;
            let chunk_end = end.min(rend);
            let buf_start = (addr - gpa) as usize;
            let buf_end = (chunk_end - gpa) as usize;
            pieces.push((map, (addr - base) as usize + skew, buf_start..buf_end));
            addr = chunk_end;
        }
        for (map, off, range) in pieces {
            if !f(map, off, range) {
                return Err(err);
            }
        }
        Ok(())
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        self.walk(gpa, len, false, |map, off, r| {
            map.as_volatile_slice().read_slice(&mut buf[r], off).is_ok()
        })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.walk(gpa, data.len(), true, |map, off, r| {
            map.as_volatile_slice().write_slice(&data[r], off).is_ok()
        })
    }
}

/// The Label Storage Area in a file, written through (pwrite) so that it survives a
/// crash of the daemon; [`LsaStorage::flush`] syncs it to disk.
#[derive(Debug)]
pub struct FileLsa {
    file: File,
    size: usize,
    _lock: FileLock,
}

impl FileLsa {
    pub fn open(path: &Path, size: usize) -> Result<Self, StorageError> {
        let (file, lock) = open_sized(path, size as u64)?;
        Ok(Self {
            file,
            size,
            _lock: lock,
        })
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
        self.file
            .sync_data()
            .map_err(|e| LsaError::Storage(e.to_string()))
    }
}

/// Syncs the LSA file at shutdown.
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

    fn memfd_with(bytes: &[u8], size: u64) -> OwnedFd {
        let m = DeviceMemoryFile::memfd(size).unwrap();
        m.write(0, bytes).unwrap();
        OwnedFd::from(m.file.try_clone().unwrap())
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
