//! What the platform tells the kernel about a CXL host bridge's performance: the
//! SRAT Generic Port Affinity Structure (ACPI 6.5 §5.2.16.7), which gives the host
//! bridge a proximity domain, and the HMAT System Locality Latency and Bandwidth
//! Information Structures (ACPI 6.5 §5.2.28.4) for that domain. Linux's CXL core
//! adds these "generic port" figures to every endpoint's CDAT figures; without them
//! it computes no QoS class.

use crate::cedt::ACPI_HEADER_LEN;
use cxl_regs::le::{u16_at, u32_at, u64_at};

/// SRAT: ACPI header, then 12 reserved bytes (ACPI 6.5 §5.2.16).
const SRAT_HEADER_LEN: usize = ACPI_HEADER_LEN + 12;
/// SRAT structure type 6: Generic Port Affinity.
const SRAT_GENERIC_PORT: u8 = 6;
/// HMAT: ACPI header, then 4 reserved bytes (ACPI 6.5 §5.2.28).
const HMAT_HEADER_LEN: usize = ACPI_HEADER_LEN + 4;
/// HMAT structure type 1: System Locality Latency and Bandwidth Information.
const HMAT_LOCALITY: u16 = 1;

/// A generic port with an ACPI device handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericPort {
    pub domain: u32,
    pub hid: String,
    pub uid: u32,
    pub enabled: bool,
}

/// One System Locality Latency and Bandwidth Information Structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locality {
    /// Memory Hierarchy \[3:0\] of the Flags (0 = the memory itself).
    pub hierarchy: u8,
    /// HMAT data type: 0-2 latencies, 3-5 bandwidths.
    pub data_type: u8,
    pub base: u64,
    pub initiators: Vec<u32>,
    pub targets: Vec<u32>,
    /// initiators x targets, row by initiator.
    pub entries: Vec<u16>,
}

/// Read and write latency (ns) and bandwidth (MB/s) of one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Perf {
    pub read_latency: u64,
    pub write_latency: u64,
    pub read_bandwidth: u64,
    pub write_bandwidth: u64,
}

/// The generic ports of an SRAT.
pub fn srat_generic_ports(t: &[u8]) -> Result<Vec<GenericPort>, String> {
    if t.get(0..4) != Some(b"SRAT") {
        return Err("not an SRAT".into());
    }
    let len = (u32_at(t, 4).ok_or("SRAT too short")? as usize).min(t.len());
    let mut out = Vec::new();
    let mut off = SRAT_HEADER_LEN;
    while off + 2 <= len {
        let (kind, slen) = (t[off], t[off + 1] as usize);
        if slen < 2 || off + slen > len {
            return Err(format!("SRAT structure at {off} has length {slen}"));
        }
        // Device Handle Type 0: an ACPI handle (_HID, _UID).
        if kind == SRAT_GENERIC_PORT && slen >= 32 && t[off + 3] == 0 {
            let s = &t[off..off + slen];
            out.push(GenericPort {
                domain: u32_at(s, 4).unwrap_or(0),
                hid: String::from_utf8_lossy(&s[8..16])
                    .trim_end_matches('\0')
                    .to_string(),
                uid: u32_at(s, 16).unwrap_or(0),
                enabled: u32_at(s, 24).unwrap_or(0) & 1 != 0,
            });
        }
        off += slen;
    }
    Ok(out)
}

/// The HMAT's revision and its latency/bandwidth structures.
pub fn hmat_localities(t: &[u8]) -> Result<(u8, Vec<Locality>), String> {
    if t.get(0..4) != Some(b"HMAT") {
        return Err("not an HMAT".into());
    }
    let len = (u32_at(t, 4).ok_or("HMAT too short")? as usize).min(t.len());
    let revision = *t.get(8).ok_or("HMAT too short")?;
    let mut out = Vec::new();
    let mut off = HMAT_HEADER_LEN;
    while off + 8 <= len {
        let kind = u16_at(t, off).unwrap_or(0);
        let slen = u32_at(t, off + 4).unwrap_or(0) as usize;
        if slen < 8 || off + slen > len {
            return Err(format!("HMAT structure at {off} has length {slen}"));
        }
        if kind == HMAT_LOCALITY {
            out.push(
                locality(&t[off..off + slen])
                    .ok_or(format!("HMAT locality at {off} is malformed"))?,
            );
        }
        off += slen;
    }
    Ok((revision, out))
}

fn locality(s: &[u8]) -> Option<Locality> {
    let ni = u32_at(s, 12)? as usize;
    let nt = u32_at(s, 16)? as usize;
    // The lists and entries must fit in the structure (checked again below).
    if ni.saturating_mul(nt) > s.len() || ni + nt > s.len() {
        return None;
    }
    let base = u64_at(s, 24)?;
    let mut o = 32;
    let mut list = |n: usize| -> Option<Vec<u32>> {
        let v = (0..n)
            .map(|i| u32_at(s, o + 4 * i))
            .collect::<Option<Vec<_>>>()?;
        o += 4 * n;
        Some(v)
    };
    let initiators = list(ni)?;
    let targets = list(nt)?;
    let entries = (0..ni * nt)
        .map(|i| u16_at(s, o + 2 * i))
        .collect::<Option<Vec<_>>>()?;
    Some(Locality {
        hierarchy: s[8] & 0xf,
        data_type: s[9],
        base,
        initiators,
        targets,
        entries,
    })
}

/// The value of an entry as Linux reads it (drivers/acpi/numa/hmat.c,
/// `hmat_normalize`): entry x base; in revision 2 latencies are picoseconds and
/// become ns rounded up; 0 and 0xffff mean "no information".
fn normalize(revision: u8, data_type: u8, entry: u16, base: u64) -> Option<u64> {
    if entry == 0 || entry == 0xffff {
        return None;
    }
    let v = u64::from(entry).checked_mul(base)?;
    Some(match (revision, data_type) {
        (1, _) => v.div_ceil(10),
        (_, 0..=2) => v.div_ceil(1000),
        _ => v,
    })
}

/// The best figures any initiator has to `target` (memory hierarchy only): the
/// lowest latency and the highest bandwidth, access types filling both read and
/// write. None when no structure names the target.
pub fn target_perf(revision: u8, localities: &[Locality], target: u32) -> Option<Perf> {
    let mut p = Perf::default();
    let mut found = false;
    for l in localities.iter().filter(|l| l.hierarchy == 0) {
        let Some(ti) = l.targets.iter().position(|&t| t == target) else {
            continue;
        };
        let values = (0..l.initiators.len())
            .filter_map(|ii| l.entries.get(ii * l.targets.len() + ti))
            .filter_map(|&e| normalize(revision, l.data_type, e, l.base));
        let best = if l.data_type <= 2 {
            values.min()
        } else {
            values.max()
        };
        let Some(v) = best else { continue };
        found = true;
        match l.data_type {
            0 => (p.read_latency, p.write_latency) = (v, v),
            1 => p.read_latency = v,
            2 => p.write_latency = v,
            3 => (p.read_bandwidth, p.write_bandwidth) = (v, v),
            4 => p.read_bandwidth = v,
            5 => p.write_bandwidth = v,
            _ => {}
        }
    }
    found.then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SRAT with a memory affinity structure and a generic port for
    /// ACPI0016 uid 12 in domain 1, laid out as QEMU builds it.
    fn srat() -> Vec<u8> {
        let mut t = vec![0u8; SRAT_HEADER_LEN];
        t[0..4].copy_from_slice(b"SRAT");
        let mut mem = vec![0u8; 40];
        mem[0] = 1;
        mem[1] = 40;
        t.extend_from_slice(&mem);
        let mut gp = vec![0u8; 32];
        gp[0] = 6;
        gp[1] = 32;
        gp[4..8].copy_from_slice(&1u32.to_le_bytes());
        gp[8..16].copy_from_slice(b"ACPI0016");
        gp[16..20].copy_from_slice(&12u32.to_le_bytes());
        gp[24] = 1;
        t.extend_from_slice(&gp);
        let n = t.len() as u32;
        t[4..8].copy_from_slice(&n.to_le_bytes());
        t
    }

    /// An HMAT (revision 2) with access latency and access bandwidth from
    /// initiator 0 to targets 0 and 1.
    fn hmat() -> Vec<u8> {
        let mut t = vec![0u8; HMAT_HEADER_LEN];
        t[0..4].copy_from_slice(b"HMAT");
        t[8] = 2;
        for (data_type, base, e0, e1) in [(0u8, 1000u64, 80u16, 50u16), (3, 1, 20480, 65535)] {
            let mut s = vec![0u8; 32 + 4 + 8 + 4];
            s[0..2].copy_from_slice(&1u16.to_le_bytes());
            let n = s.len() as u32;
            s[4..8].copy_from_slice(&n.to_le_bytes());
            s[9] = data_type;
            s[12..16].copy_from_slice(&1u32.to_le_bytes());
            s[16..20].copy_from_slice(&2u32.to_le_bytes());
            s[24..32].copy_from_slice(&base.to_le_bytes());
            // initiator 0; targets 0 and 1
            s[36..40].copy_from_slice(&0u32.to_le_bytes());
            s[40..44].copy_from_slice(&1u32.to_le_bytes());
            s[44..46].copy_from_slice(&e0.to_le_bytes());
            s[46..48].copy_from_slice(&e1.to_le_bytes());
            t.extend_from_slice(&s);
        }
        let n = t.len() as u32;
        t[4..8].copy_from_slice(&n.to_le_bytes());
        t
    }

    #[test]
    fn finds_the_generic_port_of_a_host_bridge() {
        let gps = srat_generic_ports(&srat()).unwrap();
        assert_eq!(
            gps,
            [GenericPort {
                domain: 1,
                hid: "ACPI0016".into(),
                uid: 12,
                enabled: true
            }]
        );
    }

    #[test]
    fn reads_a_targets_figures_as_linux_does() {
        let (rev, l) = hmat_localities(&hmat()).unwrap();
        assert_eq!((rev, l.len()), (2, 2));
        // 50 x 1000 ps = 50 ns; bandwidth 0xffff means "no information".
        assert_eq!(
            target_perf(rev, &l, 1),
            Some(Perf {
                read_latency: 50,
                write_latency: 50,
                read_bandwidth: 0,
                write_bandwidth: 0
            })
        );
        assert_eq!(target_perf(rev, &l, 0).unwrap().read_bandwidth, 20480);
        assert_eq!(target_perf(rev, &l, 7), None);
    }

    #[test]
    fn malformed_tables_are_errors_not_panics() {
        let mut t = srat();
        t[SRAT_HEADER_LEN + 1] = 200;
        assert!(srat_generic_ports(&t).is_err());
        let mut h = hmat();
        h[HMAT_HEADER_LEN + 12] = 0xff; // a huge initiator count
        assert!(hmat_localities(&h).is_err());
        assert!(hmat_localities(b"HMAT").is_err());
        assert!(srat_generic_ports(b"XSDT....").is_err());
    }
}
