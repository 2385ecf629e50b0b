//! ACPI CXL Early Discovery Table (CEDT, CXL r3.1 §9.18.1): the CXL Host Bridge
//! Structure (CHBS, type 0, §9.18.1.2) and the CXL Fixed Memory Window Structure
//! (CFMWS, type 1, §9.18.1.3).

/// ACPI System Description Table header length (ACPI 6.5 §5.2.6).
pub const ACPI_HEADER_LEN: usize = 36;

pub const TYPE_CHBS: u8 = 0;
pub const TYPE_CFMWS: u8 = 1;

/// CHBS CXL Version: 0 = RCH (CXL 1.1, base is an RCRB), 1 = CXL 2.0+ host bridge
/// (base is the component register block).
pub const CHBS_VERSION_CXL11: u32 = 0;
pub const CHBS_VERSION_CXL20: u32 = 1;

/// CFMWS Window Restrictions (§9.18.1.3, Table 9-22).
pub const RESTRICT_DEVICE_COHERENT: u16 = 1 << 0;
pub const RESTRICT_HOST_ONLY_COHERENT: u16 = 1 << 1;
pub const RESTRICT_VOLATILE: u16 = 1 << 2;
pub const RESTRICT_PERSISTENT: u16 = 1 << 3;
pub const RESTRICT_FIXED: u16 = 1 << 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chbs {
    /// _UID of the host bridge.
    pub uid: u32,
    pub cxl_version: u32,
    pub base: u64,
    pub length: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cfmws {
    pub base: u64,
    pub size: u64,
    /// Encoded Number of Interleave Ways.
    pub eniw: u8,
    pub arithmetic: u8,
    /// Host Bridge Interleave Granularity, encoded (2^(hbig+8) bytes).
    pub hbig: u32,
    pub restrictions: u16,
    pub qtg_id: u16,
    /// Host bridge _UIDs.
    pub targets: Vec<u32>,
}

/// Names of the set restriction bits.
pub fn restriction_names(r: u16) -> Vec<&'static str> {
    [
        (RESTRICT_DEVICE_COHERENT, "type2"),
        (RESTRICT_HOST_ONLY_COHERENT, "type3"),
        (RESTRICT_VOLATILE, "volatile"),
        (RESTRICT_PERSISTENT, "pmem"),
        (RESTRICT_FIXED, "fixed"),
    ]
    .iter()
    .filter(|(b, _)| r & b != 0)
    .map(|&(_, n)| n)
    .collect()
}

/// Name of a CHBS CXL Version value.
pub fn chbs_version_name(v: u32) -> &'static str {
    match v {
        CHBS_VERSION_CXL11 => "RCH (CXL 1.1)",
        CHBS_VERSION_CXL20 => "CXL 2.0+",
        _ => "reserved",
    }
}

impl Cfmws {
    pub fn ways(&self) -> Option<u32> {
        cxl_regs::hdm::iw_to_ways(self.eniw)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cedt {
    pub chbs: Vec<Chbs>,
    pub cfmws: Vec<Cfmws>,
    /// Types of other structures seen (CXIMS, RDPAS, CSDS), for reporting.
    pub other: Vec<u8>,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Parse a CEDT: checks the signature, length and checksum, then every structure.
pub fn parse(t: &[u8]) -> Result<Cedt, String> {
    if t.len() < ACPI_HEADER_LEN {
        return Err(format!(
            "table is {} bytes, shorter than an ACPI header",
            t.len()
        ));
    }
    if &t[0..4] != b"CEDT" {
        return Err(format!(
            "signature {:?}, expected CEDT",
            String::from_utf8_lossy(&t[0..4])
        ));
    }
    let len = le32(t, 4) as usize;
    if len > t.len() || len < ACPI_HEADER_LEN {
        return Err(format!("header length {len} but {} bytes read", t.len()));
    }
    let t = &t[..len];
    let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    if sum != 0 {
        return Err(format!("checksum: bytes sum to {sum:#x}, expected 0"));
    }
    let mut out = Cedt::default();
    let mut off = ACPI_HEADER_LEN;
    while off < len {
        if off + 4 > len {
            return Err(format!("truncated structure header at {off:#x}"));
        }
        let ty = t[off];
        let slen = le16(t, off + 2) as usize;
        if slen < 4 || off + slen > len {
            return Err(format!(
                "structure type {ty} at {off:#x}: bad length {slen}"
            ));
        }
        let s = &t[off..off + slen];
        match ty {
            TYPE_CHBS => {
                if slen < 0x20 {
                    return Err(format!("CHBS at {off:#x}: length {slen} < 32"));
                }
                out.chbs.push(Chbs {
                    uid: le32(s, 4),
                    cxl_version: le32(s, 8),
                    base: le64(s, 16),
                    length: le64(s, 24),
                });
            }
            TYPE_CFMWS => {
                if slen < 36 {
                    return Err(format!("CFMWS at {off:#x}: length {slen} < 36"));
                }
                let eniw = s[24];
                let ways = cxl_regs::hdm::iw_to_ways(eniw)
                    .ok_or_else(|| format!("CFMWS at {off:#x}: reserved ENIW {eniw}"))?
                    as usize;
                if slen < 36 + 4 * ways {
                    return Err(format!(
                        "CFMWS at {off:#x}: length {slen} too short for {ways} targets"
                    ));
                }
                out.cfmws.push(Cfmws {
                    base: le64(s, 8),
                    size: le64(s, 16),
                    eniw,
                    arithmetic: s[25],
                    hbig: le32(s, 28),
                    restrictions: le16(s, 32),
                    qtg_id: le16(s, 34),
                    targets: (0..ways).map(|i| le32(s, 36 + 4 * i)).collect(),
                });
            }
            other => out.other.push(other),
        }
        off += slen;
    }
    Ok(out)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Build a CEDT like QEMU's for one pxb-cxl (uid 12) and one 4 GiB window.
    pub fn synth() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(b"CEDT");
        t.extend_from_slice(&[0; 4]); // length, patched
        t.push(1); // revision
        t.push(0); // checksum, patched
        t.extend_from_slice(b"BOCHS BXPC    ");
        t.extend_from_slice(&[0; 12]);
        assert_eq!(t.len(), 36);
        // CHBS
        t.extend_from_slice(&[0, 0]);
        t.extend_from_slice(&32u16.to_le_bytes());
        t.extend_from_slice(&12u32.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&0x2_c000_0000u64.to_le_bytes());
        t.extend_from_slice(&0x1_0000u64.to_le_bytes());
        // CFMWS, 1 way
        t.extend_from_slice(&[1, 0]);
        t.extend_from_slice(&40u16.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&0x2_d000_0000u64.to_le_bytes());
        t.extend_from_slice(&0x1_0000_0000u64.to_le_bytes());
        t.push(0); // eniw
        t.push(0); // arithmetic
        t.extend_from_slice(&[0, 0]);
        t.extend_from_slice(&0u32.to_le_bytes()); // hbig
        t.extend_from_slice(&0x000fu16.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&12u32.to_le_bytes());
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    #[test]
    fn parses_qemu_like_table() {
        let c = parse(&synth()).unwrap();
        assert_eq!(
            c.chbs,
            vec![Chbs {
                uid: 12,
                cxl_version: 1,
                base: 0x2_c000_0000,
                length: 0x1_0000
            }]
        );
        assert_eq!(c.cfmws.len(), 1);
        let w = &c.cfmws[0];
        assert_eq!((w.base, w.size), (0x2_d000_0000, 0x1_0000_0000));
        assert_eq!(w.ways(), Some(1));
        assert_eq!(w.targets, vec![12]);
        assert_eq!(
            restriction_names(w.restrictions),
            vec!["type2", "type3", "volatile", "pmem"]
        );
        assert_eq!(chbs_version_name(c.chbs[0].cxl_version), "CXL 2.0+");
    }

    #[test]
    fn rejects_corruption() {
        let mut t = synth();
        t[40] ^= 1;
        assert!(parse(&t).unwrap_err().contains("checksum"));
        let mut t = synth();
        t[0] = b'X';
        assert!(parse(&t).is_err());
        assert!(parse(&synth()[..20]).is_err());
        // structure length running past the table
        let mut t = synth();
        t[38] = 0xff;
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = t[9].wrapping_sub(sum);
        assert!(parse(&t).unwrap_err().contains("bad length"));
        // two-way window claimed in a one-target structure
        let mut t = synth();
        t[36 + 32 + 24] = 1;
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = t[9].wrapping_sub(sum);
        assert!(parse(&t).unwrap_err().contains("too short"));
    }
}
