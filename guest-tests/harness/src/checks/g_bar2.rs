//! g. Device memory through BAR2 (resource2, mmapped straight into the guest): a
//! pattern written at several DPA offsets reads back. The pattern stays there for
//! the host to check in the backend's memory file after the VM is gone.
//!
//! Pattern (host-checkable): at each offset, 4 KiB of little-endian u64 words; the
//! word at DPA `a` holds `a ^ PATTERN_SEED`.

use super::{need, Ctx};
use crate::report::Reporter;

pub const PATTERN_SEED: u64 = 0x4358_4c41_5032_5047; // "CXLAP2PG"
pub const PATTERN_LEN: u64 = 4096;

/// DPA offsets of the pattern for a device of `capacity` bytes.
pub fn pattern_offsets(capacity: u64) -> [u64; 3] {
    [0, 1 << 20, capacity - PATTERN_LEN]
}

/// The pattern bytes for the block at DPA `off`.
pub fn pattern(off: u64) -> Vec<u8> {
    (0..PATTERN_LEN / 8)
        .flat_map(|i| ((off + 8 * i) ^ PATTERN_SEED).to_le_bytes())
        .collect()
}

/// Host side: check the pattern in a memory file of `size` bytes (the backend's
/// `--memory-file`, whose offset is the DPA).
pub fn verify_file(path: &str, size: u64) -> Result<String, String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let len = f.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    if len < size {
        return Err(format!(
            "{path} is {len:#x} bytes, expected at least {size:#x}"
        ));
    }
    let offs = pattern_offsets(size);
    for &o in &offs {
        let mut b = vec![0u8; PATTERN_LEN as usize];
        f.read_exact_at(&mut b, o)
            .map_err(|e| format!("{path} at {o:#x}: {e}"))?;
        let want = pattern(o);
        if let Some(i) = (0..b.len()).find(|&i| b[i] != want[i]) {
            return Err(format!(
                "DPA {:#x}: {:#04x}, expected {:#04x}",
                o + i as u64,
                b[i],
                want[i]
            ));
        }
    }
    Ok(format!(
        "{path}: pattern found at DPA {}",
        offs.iter()
            .map(|o| format!("{o:#x}"))
            .collect::<Vec<_>>()
            .join(",")
    ))
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check(
        "g.1",
        "BAR2 (resource2) maps the whole device memory",
        || {
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            let bar2 = ctx.bar2()?;
            if bar2.len() as u64 != cap {
                return Err(format!(
                    "resource2 is {:#x} bytes, capacity {cap:#x}",
                    bar2.len()
                ));
            }
            Ok(format!("{cap:#x} bytes"))
        },
    );

    rep.check(
        "g.2",
        "pattern at DPA offsets reads back through BAR2",
        || {
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            let offs = pattern_offsets(cap);
            let bar2 = ctx.bar2()?;
            if (bar2.len() as u64) < cap {
                return Err("prerequisite missing: full BAR2 mapping (g.1)".into());
            }
            for &o in &offs {
                bar2.write_bytes(o, &pattern(o));
            }
            for &o in &offs {
                let mut back = vec![0u8; PATTERN_LEN as usize];
                bar2.read_bytes(o, &mut back);
                let want = pattern(o);
                if let Some(i) = (0..back.len()).find(|&i| back[i] != want[i]) {
                    return Err(format!(
                        "DPA {:#x}: read {:#04x}, wrote {:#04x}",
                        o + i as u64,
                        back[i],
                        want[i]
                    ));
                }
            }
            let list: Vec<String> = offs.iter().map(|o| format!("{o:#x}")).collect();
            Ok(format!(
                "offsets {} x {PATTERN_LEN} bytes, le64 word at DPA a = a ^ {PATTERN_SEED:#x}",
                list.join(",")
            ))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_address_xor_seed() {
        let p = pattern(0x10_0000);
        assert_eq!(p.len(), 4096);
        assert_eq!(
            u64::from_le_bytes(p[0..8].try_into().unwrap()),
            0x10_0000 ^ PATTERN_SEED
        );
        assert_eq!(
            u64::from_le_bytes(p[8..16].try_into().unwrap()),
            0x10_0008 ^ PATTERN_SEED
        );
        assert_eq!(pattern_offsets(512 << 20), [0, 0x10_0000, 0x1fff_f000]);
        // distinct blocks differ
        assert_ne!(pattern(0), pattern(4096));
    }

    #[test]
    fn verifies_a_memory_file() {
        use std::os::unix::fs::FileExt;
        let size = 256u64 << 20;
        let path = std::env::temp_dir().join(format!("cxl-gt-pattern-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        let p = path.to_str().unwrap();
        assert!(verify_file(p, size).is_err());
        for o in pattern_offsets(size) {
            f.write_all_at(&pattern(o), o).unwrap();
        }
        assert!(verify_file(p, size)
            .unwrap()
            .contains("0x0,0x100000,0xffff000"));
        f.write_all_at(&[0], 0x10_0010).unwrap();
        assert!(verify_file(p, size).unwrap_err().contains("0x100010"));
        assert!(verify_file(p, size * 2)
            .unwrap_err()
            .contains("expected at least"));
        std::fs::remove_file(&path).unwrap();
    }
}
