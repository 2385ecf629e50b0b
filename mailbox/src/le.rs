//! Checked little-endian field access on payload buffers. Every getter returns
//! `None` when the field does not fit, so no guest-supplied length can cause an
//! out-of-bounds index. Setters grow the output buffer as needed.

pub(crate) fn u8_at(buf: &[u8], off: usize) -> Option<u8> {
    buf.get(off).copied()
}

pub(crate) fn bytes_at<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    let end = off.checked_add(N)?;
    buf.get(off..end)?.try_into().ok()
}

#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn u16_at(buf: &[u8], off: usize) -> Option<u16> {
    bytes_at::<2>(buf, off).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    bytes_at::<4>(buf, off).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(buf: &[u8], off: usize) -> Option<u64> {
    bytes_at::<8>(buf, off).map(u64::from_le_bytes)
}

/// Write `bytes` at `off` in `out`, zero-extending `out` first if it is shorter.
pub(crate) fn put(out: &mut Vec<u8>, off: usize, bytes: &[u8]) {
    let end = off.saturating_add(bytes.len());
    if out.len() < end {
        out.resize(end, 0);
    }
    if let Some(dst) = out.get_mut(off..end) {
        dst.copy_from_slice(bytes);
    }
}

pub(crate) fn put_u8(out: &mut Vec<u8>, off: usize, v: u8) {
    put(out, off, &[v]);
}

pub(crate) fn put_u16(out: &mut Vec<u8>, off: usize, v: u16) {
    put(out, off, &v.to_le_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, off: usize, v: u32) {
    put(out, off, &v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, off: usize, v: u64) {
    put(out, off, &v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getters_refuse_short_buffers() {
        let b = [1u8, 2, 3];
        assert_eq!(u16_at(&b, 1), Some(0x0302));
        assert_eq!(u16_at(&b, 2), None);
        assert_eq!(u32_at(&b, 0), None);
        assert_eq!(u64_at(&b, usize::MAX), None);
        assert_eq!(u8_at(&b, 3), None);
    }

    #[test]
    fn put_extends_with_zeros() {
        let mut v = vec![0xffu8];
        put_u32(&mut v, 3, 0x0403_0201);
        assert_eq!(v, [0xff, 0, 0, 1, 2, 3, 4]);
        put_u16(&mut v, 0, 0xaabb);
        assert_eq!(&v[..2], &[0xbb, 0xaa]);
    }
}
