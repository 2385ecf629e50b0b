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
}
