//! Register access: a small trait over MMIO, implemented by an mmap of a sysfs
//! `resourceN` file or of `/dev/mem`, and by an in-memory fake for unit tests.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

/// 32/64-bit register access at byte offsets. Out-of-range offsets panic (the
/// harness runs each check under `catch_unwind`, so a panic fails that check).
pub trait Regs {
    fn read32(&self, off: u64) -> u32;
    fn write32(&self, off: u64, v: u32);
    fn read64(&self, off: u64) -> u64 {
        self.read32(off) as u64 | (self.read32(off + 4) as u64) << 32
    }
    fn write64(&self, off: u64, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

/// A shared mapping of a file region, accessed with volatile loads and stores.
pub struct MmioMap {
    ptr: *mut u8,
    len: usize,
    what: String,
}

// The mapping is plain device memory; volatile accesses from several threads are
// as safe as from one. The harness uses it from one thread only.
unsafe impl Send for MmioMap {}

impl MmioMap {
    /// Map `len` bytes of `path` at file offset `offset` (page aligned), read/write,
    /// with O_SYNC (uncached for /dev/mem).
    pub fn open(path: &str, offset: u64, len: usize) -> Result<Self, String> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(path)
            .map_err(|e| format!("open {path}: {e}"))?;
        if len == 0 {
            return Err(format!("map {path}: zero length"));
        }
        // SAFETY: a fresh shared mapping of a file we opened; the kernel validates
        // offset and length against the resource.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mmap {path} at {offset:#x} len {len:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self {
            ptr: ptr as *mut u8,
            len,
            what: format!("{path}@{offset:#x}"),
        })
    }

    /// Map a whole sysfs resource file (its size is the BAR size).
    pub fn open_resource(path: &str) -> Result<Self, String> {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("stat {path}: {e}"))?
            .len() as usize;
        Self::open(path, 0, len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The start of the mapping, for bulk volatile accesses (bandwidth figures).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn check(&self, off: u64, width: u64) -> usize {
        assert!(
            off.is_multiple_of(width)
                && off.checked_add(width).is_some_and(|e| e <= self.len as u64),
            "{}: access of {width} bytes at {off:#x} outside the {:#x}-byte mapping or unaligned",
            self.what,
            self.len
        );
        off as usize
    }

    pub fn read8(&self, off: u64) -> u8 {
        let o = self.check(off, 1);
        // SAFETY: bounds checked above; the mapping lives as long as self.
        unsafe { std::ptr::read_volatile(self.ptr.add(o)) }
    }

    /// Copy bytes out with 64-bit loads where aligned.
    pub fn read_bytes(&self, off: u64, buf: &mut [u8]) {
        let mut i = 0usize;
        while i < buf.len() {
            let o = off + i as u64;
            if o.is_multiple_of(8) && buf.len() - i >= 8 {
                buf[i..i + 8].copy_from_slice(&self.read64(o).to_le_bytes());
                i += 8;
            } else {
                buf[i] = self.read8(o);
                i += 1;
            }
        }
    }

    /// Copy bytes in with 64-bit stores; `off` and `data.len()` must be multiples of 8.
    pub fn write_bytes(&self, off: u64, data: &[u8]) {
        assert!(
            off.is_multiple_of(8) && data.len().is_multiple_of(8),
            "write_bytes needs 8-byte alignment"
        );
        for (i, c) in data.chunks_exact(8).enumerate() {
            self.write64(
                off + 8 * i as u64,
                u64::from_le_bytes(c.try_into().unwrap()),
            );
        }
    }
}

impl Regs for MmioMap {
    fn read32(&self, off: u64) -> u32 {
        let o = self.check(off, 4);
        // SAFETY: bounds and alignment checked.
        unsafe { std::ptr::read_volatile(self.ptr.add(o) as *const u32) }
    }
    fn write32(&self, off: u64, v: u32) {
        let o = self.check(off, 4);
        // SAFETY: bounds and alignment checked.
        unsafe { std::ptr::write_volatile(self.ptr.add(o) as *mut u32, v) }
    }
    fn read64(&self, off: u64) -> u64 {
        let o = self.check(off, 8);
        // SAFETY: bounds and alignment checked; one 8-byte access.
        unsafe { std::ptr::read_volatile(self.ptr.add(o) as *const u64) }
    }
    fn write64(&self, off: u64, v: u64) {
        let o = self.check(off, 8);
        // SAFETY: bounds and alignment checked; one 8-byte access.
        unsafe { std::ptr::write_volatile(self.ptr.add(o) as *mut u64, v) }
    }
}

impl Drop for MmioMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open() mapped.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

/// Register file in memory with a write hook, for unit tests of the register
/// drivers (HDM programming, mailbox).
#[cfg(test)]
pub mod fake {
    use super::Regs;
    use std::cell::RefCell;

    type Hook = Box<dyn FnMut(&mut Vec<u32>, u64, u32)>;

    pub struct FakeRegs {
        pub mem: RefCell<Vec<u32>>,
        hook: RefCell<Option<Hook>>,
    }

    impl FakeRegs {
        pub fn new(len: usize) -> Self {
            Self {
                mem: RefCell::new(vec![0; len / 4]),
                hook: RefCell::new(None),
            }
        }
        /// Called after every 32-bit write with (memory, offset, value).
        pub fn on_write(&self, h: impl FnMut(&mut Vec<u32>, u64, u32) + 'static) {
            *self.hook.borrow_mut() = Some(Box::new(h));
        }
        pub fn set(&self, off: u64, v: u32) {
            self.mem.borrow_mut()[(off / 4) as usize] = v;
        }
        pub fn get(&self, off: u64) -> u32 {
            self.mem.borrow()[(off / 4) as usize]
        }
    }

    impl Regs for FakeRegs {
        fn read32(&self, off: u64) -> u32 {
            self.get(off)
        }
        fn write32(&self, off: u64, v: u32) {
            self.set(off, v);
            if let Some(h) = self.hook.borrow_mut().as_mut() {
                h(&mut self.mem.borrow_mut(), off, v);
            }
        }
    }
}
