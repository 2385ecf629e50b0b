//! Storage of the payload registers (CXL r3.1 §8.2.8.4.8), behind a small trait so
//! that a transport can put them in memory the guest maps directly.
//!
//! The mailbox touches the payload in whole ranges only: it copies a command's
//! input out once, before parsing any of it, and copies the output in once, after
//! the command ran. So an implementation over memory that the guest may change at
//! any moment (a shared page) gives each command a consistent snapshot of its input:
//! a field cannot read one value when checked and another when used.

/// The payload registers' storage: [`len`](PayloadBuf::len) bytes, read and written
/// in ranges. A range that does not fit is refused (`false`), never a panic.
///
/// `Vec<u8>` is the plain implementation. One over shared memory must use volatile
/// copies, since another party writes the same bytes.
pub trait PayloadBuf: Send {
    /// Size in bytes.
    fn len(&self) -> usize;
    /// Whether the buffer holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `buf.len()` bytes at `offset` into `buf`. On `false` (the range does not
    /// fit) `buf` is left as it was.
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool;
    /// Copy `data` to `offset`. On `false` (the range does not fit) nothing is
    /// written.
    fn write(&mut self, offset: usize, data: &[u8]) -> bool;
    /// Zero every byte.
    fn zero(&mut self) {
        let zeros = [0u8; 256];
        let mut at = 0;
        while at < self.len() {
            let n = (self.len() - at).min(zeros.len());
            self.write(at, &zeros[..n]);
            at += n;
        }
    }

    /// The little-endian dword at `offset`, if it fits.
    fn read_u32(&self, offset: usize) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(offset, &mut b).then(|| u32::from_le_bytes(b))
    }
    /// Store a little-endian dword at `offset`; `false` if it does not fit.
    fn write_u32(&mut self, offset: usize, value: u32) -> bool {
        self.write(offset, &value.to_le_bytes())
    }
}

/// `offset..offset + len` if it lies within `size`.
pub fn range_within(offset: usize, len: usize, size: usize) -> Option<std::ops::Range<usize>> {
    let end = offset.checked_add(len)?;
    (end <= size).then_some(offset..end)
}

impl PayloadBuf for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        match range_within(offset, buf.len(), Vec::len(self)).and_then(|r| self.get(r)) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let size = Vec::len(self);
        match range_within(offset, data.len(), size).and_then(|r| self.get_mut(r)) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
    fn zero(&mut self) {
        self.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_ranges_are_checked() {
        let mut p: Vec<u8> = vec![0; 16];
        assert_eq!(PayloadBuf::len(&p), 16);
        assert!(p.write(12, &[1, 2, 3, 4]));
        assert!(!p.write(13, &[1, 2, 3, 4]));
        assert!(!p.write(usize::MAX, &[1]));
        assert_eq!(p.read_u32(12), Some(0x0403_0201));
        assert_eq!(p.read_u32(13), None);
        let mut b = [9u8; 2];
        assert!(!p.read(15, &mut b));
        assert_eq!(b, [9, 9], "a refused read leaves the buffer alone");
        assert!(p.write_u32(0, 0xdead_beef));
        assert!(!p.write_u32(16, 1));
        PayloadBuf::zero(&mut p);
        assert!(p.iter().all(|&b| b == 0));
        assert!(!PayloadBuf::is_empty(&p));
        assert!(p.read(16, &mut []), "an empty range at the end fits");
    }

    /// The default `zero` covers buffers longer than its chunk.
    #[test]
    fn default_zero_covers_everything() {
        struct Plain(Vec<u8>);
        impl PayloadBuf for Plain {
            fn len(&self) -> usize {
                self.0.len()
            }
            fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
                self.0.read(offset, buf)
            }
            fn write(&mut self, offset: usize, data: &[u8]) -> bool {
                self.0.write(offset, data)
            }
        }
        let mut p = Plain(vec![0xff; 1000]);
        p.zero();
        assert!(p.0.iter().all(|&b| b == 0));
    }
}
