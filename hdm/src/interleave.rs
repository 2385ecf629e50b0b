//! Interleave arithmetic of an endpoint HDM decoder: HPA offset to DPA offset and
//! back (CXL r3.1 §8.2.4.20.7 for the IW/IG encodings, §8.2.4.20.13 and its
//! Implementation Note on device decode logic for the maths).
//!
//! An interleave set of W ways with granularity G splits the decoder's HPA range into
//! G-byte chunks dealt round-robin to the W members. The endpoint receives only its
//! own chunks and stores them back to back in DPA space, so it recovers the DPA offset
//! by dropping the way selector from the HPA offset:
//!
//! - power-of-two W (IW 0..=4): the selector is the IW bits just above the
//!   granule, HPA offset bits `[IG+8+IW-1 : IG+8]`. The DPA offset keeps HPA offset
//!   bits `[IG+7:0]` and takes HPA offset bits `[51 : IG+8+IW]` as its bits
//!   `[51-IW : IG+8]`, i.e. the selector bits are squeezed out.
//! - W = 3·2^k (IW 8..=10, k = IW−8): the upper bits `HPA[51 : IG+8+k]` are divided
//!   by 3; the quotient forms DPA bits `[51 : IG+8]`, the low bits pass through.
//!
//! The endpoint does not know its own position in the set: every HPA inside the
//! decoder's range maps to a DPA, whichever position it selects. [`Interleave::position`]
//! tells which position an HPA offset belongs to.

use cxl_regs::hdm::{ig_to_granularity, iw_to_ways};

/// A valid (IW, IG) pair of an endpoint decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interleave {
    iw: u8,
    ig: u8,
}

impl Interleave {
    /// `None` unless `iw` is a defined Interleave Ways encoding (0..=4, 8..=10) and
    /// `ig` a defined Interleave Granularity encoding (0..=6), §8.2.4.20.7.
    pub fn new(iw: u8, ig: u8) -> Option<Self> {
        iw_to_ways(iw)?;
        ig_to_granularity(ig)?;
        Some(Self { iw, ig })
    }

    /// The IW encoding.
    pub fn iw(&self) -> u8 {
        self.iw
    }

    /// The IG encoding.
    pub fn ig(&self) -> u8 {
        self.ig
    }

    /// Number of ways: 1, 2, 3, 4, 6, 8, 12 or 16.
    pub fn ways(&self) -> u32 {
        // `new` checked the encoding; 1 is never reached.
        iw_to_ways(self.iw).unwrap_or(1)
    }

    /// Granularity in bytes: 256 B..16 KiB.
    pub fn granularity(&self) -> u64 {
        ig_to_granularity(self.ig).unwrap_or(256)
    }

    /// log2 of the granularity: IG + 8.
    fn gran_shift(&self) -> u32 {
        u32::from(self.ig) + 8
    }

    /// Whether the ways are a power of two (IW < 8) rather than 3·2^k.
    fn is_pow2(&self) -> bool {
        self.iw < 8
    }

    /// log2 of the power-of-two factor of the ways: IW for 1..16 ways, IW−8 for
    /// 3/6/12 ways.
    fn pow2_bits(&self) -> u32 {
        if self.is_pow2() {
            u32::from(self.iw)
        } else {
            u32::from(self.iw - 8)
        }
    }

    /// DPA offset of an HPA offset (relative to the decoder base), §8.2.4.20.13.
    pub fn hpa_to_dpa_offset(&self, hpa_offset: u64) -> u64 {
        let g = self.gran_shift();
        let low = hpa_offset & low_mask(g);
        // Shift out the granule and the power-of-two part of the way selector.
        let upper = hpa_offset >> (g + self.pow2_bits());
        let chunk = if self.is_pow2() { upper } else { upper / 3 };
        (chunk << g) | low
    }

    /// Interleave position (0..ways) that an HPA offset selects.
    pub fn position(&self, hpa_offset: u64) -> u32 {
        let chunk = hpa_offset >> self.gran_shift();
        // ways <= 16, so the remainder fits in u32.
        (chunk % u64::from(self.ways())) as u32
    }

    /// Inverse of [`Self::hpa_to_dpa_offset`] for the member at `position`:
    /// the HPA offset at which that member's `dpa_offset` appears. `None` if
    /// `position >= ways` or the result does not fit in 64 bits.
    pub fn dpa_to_hpa_offset(&self, dpa_offset: u64, position: u32) -> Option<u64> {
        let ways = self.ways();
        if position >= ways {
            return None;
        }
        let g = self.gran_shift();
        let chunk = dpa_offset >> g;
        // HPA chunk index = DPA chunk · ways + position, for both families: for
        // 3·2^k ways, (c >> k) / 3 recovers the DPA chunk because position < 3·2^k.
        let hpa_chunk = chunk
            .checked_mul(u64::from(ways))?
            .checked_add(u64::from(position))?;
        let hpa = hpa_chunk.checked_mul(self.granularity())?;
        hpa.checked_add(dpa_offset & low_mask(g))
    }
}

/// Mask of the low `bits` bits (`bits` < 64).
fn low_mask(bits: u32) -> u64 {
    (1u64 << bits) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_reserved_encodings() {
        for iw in [5u8, 6, 7, 11, 12, 15] {
            assert!(Interleave::new(iw, 0).is_none(), "iw {iw}");
        }
        for ig in 7u8..=15 {
            assert!(Interleave::new(0, ig).is_none(), "ig {ig}");
        }
        assert!(Interleave::new(10, 6).is_some());
    }

    #[test]
    fn two_way_256b_drops_bit_8() {
        let il = Interleave::new(1, 0).unwrap();
        // Chunk 0 -> pos 0 dpa 0; chunk 1 -> pos 1 dpa 0; chunk 2 -> pos 0 dpa 0x100.
        assert_eq!(il.hpa_to_dpa_offset(0x0ff), 0x0ff);
        assert_eq!(il.hpa_to_dpa_offset(0x1ff), 0x0ff);
        assert_eq!(il.position(0x1ff), 1);
        assert_eq!(il.hpa_to_dpa_offset(0x234), 0x134);
        assert_eq!(il.position(0x234), 0);
    }

    #[test]
    fn three_way_4k() {
        let il = Interleave::new(8, 4).unwrap();
        assert_eq!(il.ways(), 3);
        assert_eq!(il.granularity(), 4096);
        // Chunks 0,1,2 are DPA chunk 0 of positions 0,1,2; chunk 3 is DPA chunk 1.
        assert_eq!(il.hpa_to_dpa_offset(2 * 4096 + 5), 5);
        assert_eq!(il.position(2 * 4096 + 5), 2);
        assert_eq!(il.hpa_to_dpa_offset(3 * 4096 + 5), 4096 + 5);
        assert_eq!(il.position(3 * 4096 + 5), 0);
        assert_eq!(il.dpa_to_hpa_offset(4096 + 5, 2), Some(5 * 4096 + 5));
        assert_eq!(il.dpa_to_hpa_offset(0, 3), None);
    }

    #[test]
    fn twelve_way_inverse_and_overflow() {
        let il = Interleave::new(10, 0).unwrap();
        assert_eq!(il.ways(), 12);
        for pos in 0..12 {
            let hpa = il.dpa_to_hpa_offset(0x1234_5678, pos).unwrap();
            assert_eq!(il.hpa_to_dpa_offset(hpa), 0x1234_5678);
            assert_eq!(il.position(hpa), pos);
        }
        assert_eq!(il.dpa_to_hpa_offset(u64::MAX, 0), None);
    }
}
