//! The CXL RAS Capability Structure (CXL r3.1 §8.2.4.17) of the component register
//! block, with fault injection.
//!
//! Register attributes: the status registers are RW1CS (a written 1 clears), mask and
//! severity are RWS, the First Error Pointer and Header Log are ROS, and
//! Poison_Enabled reads 1 and ignores writes (hardwired for a device that is not an
//! eRCD, §8.2.4.17.6). Sticky ("S") registers keep their value across conventional
//! reset, FLR and CXL Reset (CXL r3.1 §8.2.4.17 and Table 8-1, PCIe r6 §7.4; the
//! `Sticky` class of [`crate::reset`]), so no reset of the device touches them; only
//! [`Ras::cold_reset`] clears them. Bits that the spec does not define read zero and
//! ignore writes.

use cxl_regs::component::ras::*;
use thiserror::Error;

use crate::access::merge;

/// Errors of fault injection into the RAS capability.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RasError {
    #[error("uncorrectable error status bit {0} is not defined (CXL r3.1 §8.2.4.17.1)")]
    BadUncorrectableBit(u8),
    #[error("correctable error status bit {0} is not defined (CXL r3.1 §8.2.4.17.4)")]
    BadCorrectableBit(u8),
}

/// RAS capability state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ras {
    ue_status: u32,
    ue_mask: u32,
    ue_severity: u32,
    ce_status: u32,
    ce_mask: u32,
    /// First_Error_Pointer; Poison_Enabled is added on read.
    cap_control: u32,
    header_log: [u32; 16],
    injected: u64,
}

impl Ras {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cold reset: every register to its power-on value (0).
    pub fn cold_reset(&mut self) {
        *self = Self::default();
    }

    /// Read the dword at `offset` (relative to the capability).
    pub fn read(&self, offset: u32) -> u32 {
        match offset & !3 {
            UNCORRECTABLE_STATUS => self.ue_status,
            UNCORRECTABLE_MASK => self.ue_mask,
            UNCORRECTABLE_SEVERITY => self.ue_severity,
            CORRECTABLE_STATUS => self.ce_status,
            CORRECTABLE_MASK => self.ce_mask,
            CAP_CONTROL => self.cap_control | POISON_ENABLED,
            o if (HEADER_LOG..HEADER_LOG + HEADER_LOG_LEN).contains(&o) => {
                let i = ((o - HEADER_LOG) / 4) as usize;
                self.header_log.get(i).copied().unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Write the bits of `value` selected by `mask` to the dword at `offset`.
    pub fn write(&mut self, offset: u32, value: u32, mask: u32) {
        let v = value & mask;
        match offset & !3 {
            UNCORRECTABLE_STATUS => self.ue_status &= !(v & UNCORRECTABLE_BITS),
            UNCORRECTABLE_MASK => {
                self.ue_mask = merge(self.ue_mask, value, mask & UNCORRECTABLE_BITS)
            }
            UNCORRECTABLE_SEVERITY => {
                self.ue_severity = merge(self.ue_severity, value, mask & UNCORRECTABLE_BITS)
            }
            CORRECTABLE_STATUS => self.ce_status &= !(v & CORRECTABLE_BITS),
            CORRECTABLE_MASK => self.ce_mask = merge(self.ce_mask, value, mask & CORRECTABLE_BITS),
            // First_Error_Pointer is ROS, Poison_Enabled hardwired, the rest reserved.
            _ => {}
        }
    }

    /// Record an uncorrectable error: the status bit is set; if no uncorrectable
    /// error was outstanding, the First Error Pointer takes this bit and the Header
    /// Log takes `header` (CXL r3.1 §8.2.4.17.6/7).
    pub fn inject_uncorrectable(&mut self, bit: u8, header: &[u32; 16]) -> Result<(), RasError> {
        let b = 1u32.checked_shl(u32::from(bit)).unwrap_or(0);
        if b & UNCORRECTABLE_BITS == 0 {
            return Err(RasError::BadUncorrectableBit(bit));
        }
        if self.ue_status == 0 {
            self.cap_control = (self.cap_control & !FIRST_ERROR_POINTER_MASK) | u32::from(bit);
            self.header_log = *header;
        }
        self.ue_status |= b;
        self.injected = self.injected.wrapping_add(1);
        Ok(())
    }

    /// Record a correctable error.
    pub fn inject_correctable(&mut self, bit: u8) -> Result<(), RasError> {
        let b = 1u32.checked_shl(u32::from(bit)).unwrap_or(0);
        if b & CORRECTABLE_BITS == 0 {
            return Err(RasError::BadCorrectableBit(bit));
        }
        self.ce_status |= b;
        self.injected = self.injected.wrapping_add(1);
        Ok(())
    }

    /// Whether an unmasked uncorrectable error is outstanding.
    pub fn uncorrectable_pending(&self) -> bool {
        self.ue_status & !self.ue_mask != 0
    }
    /// Whether any unmasked uncorrectable error outstanding is fatal.
    pub fn fatal_pending(&self) -> bool {
        self.ue_status & !self.ue_mask & self.ue_severity != 0
    }
    /// Whether an unmasked correctable error is outstanding.
    pub fn correctable_pending(&self) -> bool {
        self.ce_status & !self.ce_mask != 0
    }
    pub fn injected(&self) -> u64 {
        self.injected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_rw1c_and_reserved_bits_stay_zero() {
        let mut r = Ras::new();
        r.inject_uncorrectable(3, &[0; 16]).unwrap();
        r.inject_uncorrectable(14, &[0; 16]).unwrap();
        assert_eq!(r.read(UNCORRECTABLE_STATUS), (1 << 3) | (1 << 14));
        // Writing 0 changes nothing; writing 1 to one bit clears only it.
        r.write(UNCORRECTABLE_STATUS, 0, !0);
        assert_eq!(r.read(UNCORRECTABLE_STATUS), (1 << 3) | (1 << 14));
        r.write(UNCORRECTABLE_STATUS, 1 << 3, !0);
        assert_eq!(r.read(UNCORRECTABLE_STATUS), 1 << 14);
        // A masked-out byte lane does not clear.
        r.write(UNCORRECTABLE_STATUS, 1 << 14, 0xff);
        assert_eq!(r.read(UNCORRECTABLE_STATUS), 1 << 14);
        // Mask and severity keep only defined bits.
        r.write(UNCORRECTABLE_MASK, !0, !0);
        assert_eq!(r.read(UNCORRECTABLE_MASK), UNCORRECTABLE_BITS);
        r.write(CORRECTABLE_MASK, !0, !0);
        assert_eq!(r.read(CORRECTABLE_MASK), 0x7f);
        r.write(CAP_CONTROL, !0, !0);
        assert_eq!(
            r.read(CAP_CONTROL) & !FIRST_ERROR_POINTER_MASK,
            POISON_ENABLED
        );
    }

    #[test]
    fn first_error_pointer_and_header_log_track_the_first_error() {
        let mut r = Ras::new();
        let mut h = [0u32; 16];
        h[0] = 0xdead_beef;
        h[15] = 0x1234_5678;
        r.inject_uncorrectable(5, &h).unwrap();
        r.inject_uncorrectable(9, &[7; 16]).unwrap();
        assert_eq!(r.read(CAP_CONTROL) & FIRST_ERROR_POINTER_MASK, 5);
        assert_eq!(r.read(HEADER_LOG), 0xdead_beef);
        assert_eq!(r.read(HEADER_LOG + 0x3c), 0x1234_5678);
        // Header log and pointer are read-only.
        r.write(HEADER_LOG, 0, !0);
        r.write(CAP_CONTROL, 0, !0);
        assert_eq!(r.read(HEADER_LOG), 0xdead_beef);
        assert_eq!(r.read(CAP_CONTROL) & FIRST_ERROR_POINTER_MASK, 5);
        // Once every error is cleared, the next one becomes the first.
        r.write(UNCORRECTABLE_STATUS, !0, !0);
        r.inject_uncorrectable(9, &[7; 16]).unwrap();
        assert_eq!(r.read(CAP_CONTROL) & FIRST_ERROR_POINTER_MASK, 9);
        assert_eq!(r.read(HEADER_LOG), 7);
    }

    #[test]
    fn undefined_bits_are_refused() {
        let mut r = Ras::new();
        assert_eq!(
            r.inject_uncorrectable(12, &[0; 16]),
            Err(RasError::BadUncorrectableBit(12))
        );
        assert_eq!(
            r.inject_uncorrectable(200, &[0; 16]),
            Err(RasError::BadUncorrectableBit(200))
        );
        assert_eq!(r.inject_correctable(7), Err(RasError::BadCorrectableBit(7)));
        assert_eq!(r.read(UNCORRECTABLE_STATUS), 0);
        r.inject_correctable(6).unwrap();
        assert!(r.correctable_pending());
        r.write(CORRECTABLE_MASK, 1 << 6, !0);
        assert!(!r.correctable_pending());
    }

    #[test]
    fn cold_reset_clears_the_sticky_registers() {
        let mut r = Ras::new();
        r.inject_correctable(1).unwrap();
        r.write(UNCORRECTABLE_MASK, 1 << 4, !0);
        assert_eq!(r.read(CORRECTABLE_STATUS), 2);
        r.cold_reset();
        assert_eq!(r.read(CORRECTABLE_STATUS), 0);
        assert_eq!(r.read(UNCORRECTABLE_MASK), 0);
    }
}
