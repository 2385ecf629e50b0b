//! Label Storage Area backing (CXL r3.1 §8.2.9.9.2.3 Get LSA, §8.2.9.9.2.4 Set LSA).

use thiserror::Error;

/// Errors of LSA storage.
#[derive(Debug, Error)]
pub enum LsaError {
    #[error("LSA access at {offset:#x}+{len:#x} is outside its {size:#x} bytes")]
    OutOfRange {
        offset: usize,
        len: usize,
        size: usize,
    },
    #[error("LSA storage failed: {0}")]
    Storage(String),
}

/// Label Storage Area backing. The backend implements it over a file.
pub trait LsaStorage: Send {
    /// Size in bytes, reported by Identify Memory Device.
    fn size(&self) -> usize;
    /// Fill `buf` from `offset`. Out-of-range accesses fail, never panic.
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), LsaError>;
    /// Store `data` at `offset`. Out-of-range accesses fail, never panic.
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), LsaError>;
    /// Make earlier writes durable, or have that done soon by someone else (a
    /// storage may sync off the caller's thread, so that Set LSA does not wait for
    /// the disk); the written data must already read back.
    fn flush(&mut self) -> Result<(), LsaError> {
        Ok(())
    }
}

/// An in-memory LSA.
#[derive(Debug, Clone)]
pub struct MemLsa(pub Vec<u8>);

impl LsaStorage for MemLsa {
    fn size(&self) -> usize {
        self.0.len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), LsaError> {
        let size = self.0.len();
        let src = offset
            .checked_add(buf.len())
            .and_then(|end| self.0.get(offset..end))
            .ok_or(LsaError::OutOfRange {
                offset,
                len: buf.len(),
                size,
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), LsaError> {
        let size = self.0.len();
        let dst = offset
            .checked_add(data.len())
            .and_then(|end| self.0.get_mut(offset..end))
            .ok_or(LsaError::OutOfRange {
                offset,
                len: data.len(),
                size,
            })?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_lsa_bounds() {
        let mut l = MemLsa(vec![0; 16]);
        assert!(l.write(12, &[1, 2, 3, 4]).is_ok());
        assert!(matches!(
            l.write(13, &[1, 2, 3, 4]),
            Err(LsaError::OutOfRange { .. })
        ));
        assert!(l.read(usize::MAX, &mut [0u8; 2]).is_err());
        let mut b = [0u8; 4];
        l.read(12, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
    }
}
