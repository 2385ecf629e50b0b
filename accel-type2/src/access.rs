//! Splitting guest accesses of any width and alignment into masked dword accesses.
//!
//! Every register file of the device (config space, BAR0, BAR4) is modelled as an
//! array of little-endian dwords with a read function `read(dword_offset) -> u32`
//! and a write function `write(dword_offset, value, byte_mask)`, where the mask has
//! `0xff` in each byte lane the access actually writes. This module turns an access
//! of 1, 2, 4, 8 bytes (or any longer buffer), at any byte offset, into those calls:
//! each dword touched is read once, or written once with exactly the touched lanes in
//! the mask. PCIe itself delivers accesses as byte-enabled dwords (PCIe r6 §2.2.5),
//! so this is the natural granularity of every register definition.

/// Call `read` once for each dword that `[offset, offset + data.len())` touches and
/// copy the touched bytes into `data`. Bytes beyond `u64::MAX` read as zero.
pub fn read_dwords(offset: u64, data: &mut [u8], mut read: impl FnMut(u64) -> u32) {
    let mut pos = 0usize;
    while pos < data.len() {
        let Some(addr) = offset.checked_add(pos as u64) else {
            data[pos..].fill(0);
            return;
        };
        let dword = addr & !3;
        let lane = (addr & 3) as usize;
        let n = (4 - lane).min(data.len() - pos);
        let bytes = read(dword).to_le_bytes();
        data[pos..pos + n].copy_from_slice(&bytes[lane..lane + n]);
        pos += n;
    }
}

/// Call `write(dword_offset, value, mask)` once for each dword that
/// `[offset, offset + data.len())` touches, in ascending address order. Bytes beyond
/// `u64::MAX` are dropped.
pub fn write_dwords(offset: u64, data: &[u8], mut write: impl FnMut(u64, u32, u32)) {
    let mut pos = 0usize;
    while pos < data.len() {
        let Some(addr) = offset.checked_add(pos as u64) else {
            return;
        };
        let dword = addr & !3;
        let lane = (addr & 3) as usize;
        let n = (4 - lane).min(data.len() - pos);
        let mut value = [0u8; 4];
        let mut mask = [0u8; 4];
        value[lane..lane + n].copy_from_slice(&data[pos..pos + n]);
        mask[lane..lane + n].fill(0xff);
        write(dword, u32::from_le_bytes(value), u32::from_le_bytes(mask));
        pos += n;
    }
}

/// `off - base` when the dword offset `off` lies in the register structure at
/// `base..base + len`, else None.
pub(crate) fn offset_in(off: u64, base: u64, len: u64) -> Option<u32> {
    (off >= base && off < base.saturating_add(len)).then(|| (off - base) as u32)
}

/// Merge the masked bits of `value` into `old`.
pub const fn merge(old: u32, value: u32, mask: u32) -> u32 {
    (old & !mask) | (value & mask)
}

/// The dword of a 64-bit register that `dword_offset` (relative to the register)
/// selects: 0 = low, 4 = high.
pub const fn qword_half(reg: u64, high: bool) -> u32 {
    if high {
        (reg >> 32) as u32
    } else {
        reg as u32
    }
}

/// Write the masked bits of a dword into one half of a 64-bit register.
pub const fn qword_merge(reg: u64, high: bool, value: u32, mask: u32) -> u64 {
    if high {
        let h = merge((reg >> 32) as u32, value, mask);
        (reg & 0xffff_ffff) | ((h as u64) << 32)
    } else {
        let l = merge(reg as u32, value, mask);
        (reg & !0xffff_ffff) | l as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-addressed model to check the dword splitting against.
    struct Bytes(Vec<u8>);
    impl Bytes {
        fn read(&self, dword: u64) -> u32 {
            let d = dword as usize;
            u32::from_le_bytes([self.0[d], self.0[d + 1], self.0[d + 2], self.0[d + 3]])
        }
        fn write(&mut self, dword: u64, value: u32, mask: u32) {
            let old = self.read(dword);
            let new = merge(old, value, mask);
            self.0[dword as usize..dword as usize + 4].copy_from_slice(&new.to_le_bytes());
        }
    }

    #[test]
    fn unaligned_read_spans_dwords() {
        let m = Bytes((0u8..32).collect());
        let mut calls = Vec::new();
        let mut buf = [0u8; 8];
        read_dwords(3, &mut buf, |d| {
            calls.push(d);
            m.read(d)
        });
        assert_eq!(buf, [3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(calls, vec![0, 4, 8]);
    }

    #[test]
    fn writes_carry_exact_lane_masks() {
        let mut calls = Vec::new();
        write_dwords(2, &[0xaa, 0xbb, 0xcc], |d, v, m| calls.push((d, v, m)));
        assert_eq!(calls, vec![(0, 0xbbaa_0000, 0xffff_0000), (4, 0xcc, 0xff)]);
        calls.clear();
        write_dwords(8, &0x1122_3344_5566_7788u64.to_le_bytes(), |d, v, m| {
            calls.push((d, v, m))
        });
        assert_eq!(calls, vec![(8, 0x5566_7788, !0), (12, 0x1122_3344, !0)]);
    }

    #[test]
    fn every_width_and_alignment_composes() {
        for width in [1usize, 2, 3, 4, 5, 8, 13] {
            for off in 0..8u64 {
                let mut m = Bytes(vec![0x5a; 32]);
                let data: Vec<u8> = (0..width as u8)
                    .map(|i| i.wrapping_mul(37) ^ 0xc3)
                    .collect();
                write_dwords(off, &data, |d, v, mk| m.write(d, v, mk));
                let mut expect = vec![0x5a; 32];
                expect[off as usize..off as usize + width].copy_from_slice(&data);
                assert_eq!(m.0, expect, "width {width} offset {off}");
                let mut back = vec![0; width];
                read_dwords(off, &mut back, |d| m.read(d));
                assert_eq!(back, data);
            }
        }
    }

    #[test]
    fn offsets_near_the_top_of_the_address_space_do_not_wrap() {
        let mut buf = [0xffu8; 8];
        read_dwords(u64::MAX - 1, &mut buf, |_| 0x0403_0201);
        assert_eq!(buf, [0x03, 0x04, 0, 0, 0, 0, 0, 0]);
        let mut calls = 0;
        write_dwords(u64::MAX - 1, &[1; 8], |_, _, _| calls += 1);
        assert_eq!(calls, 1);
    }

    #[test]
    fn qword_helpers() {
        let r = 0x1111_2222_3333_4444u64;
        assert_eq!(qword_half(r, true), 0x1111_2222);
        assert_eq!(qword_half(r, false), 0x3333_4444);
        assert_eq!(qword_merge(r, true, 0xabcd, 0xffff), 0x1111_abcd_3333_4444);
        assert_eq!(
            qword_merge(r, false, 0xab00_0000, 0xff00_0000),
            0x1111_2222_ab33_4444
        );
    }
}
