//! j. CXL.mem through the region's HPA (only with the patched QEMU of
//! scripts/qemu, `cxltest.hpa=on`): a pattern written through the host physical
//! address range of the committed decoder (a `/dev/mem` mapping) reads back through
//! the HPA and through BAR2 at the DPA that the decoder maps, and a pattern written
//! through BAR2 reads back through the HPA. The HPA pattern stays in device memory
//! for the host to find in the backend's memory file (scripts/e2e).
//!
//! Pattern (host-checkable): at each block, 4 KiB of little-endian u64 words; the
//! word at DPA `a` holds `a ^ HPA_SEED`. Blocks: region offsets 4 MiB and
//! size - 4 KiB. They avoid the DPAs of checks f, g and h (see `super`).

use super::c_kernel::port_decoders;
use super::d_dpa::get;
use super::{need, Ctx};
use crate::mmio::{MmioMap, Regs};
use crate::report::Reporter;

pub const HPA_SEED: u64 = 0x4358_4c48_5041_2e6a; // "CXLHPA.j"
pub const BLOCK: u64 = 4096;
/// Region offset of the HPA bandwidth range (`hpabench`): past the DPAs of checks
/// f to j, and ending before the last pattern block.
pub const BENCH_OFF: u64 = 8 << 20;

/// Bytes of the HPA bandwidth range: `bench::BW_BYTES`, or less in a small region.
pub fn bench_len(region_size: u64) -> u64 {
    let room = region_size.saturating_sub(BENCH_OFF + BLOCK) & !((1 << 20) - 1);
    room.min(crate::bench::BW_BYTES as u64)
}

/// Region offsets (from the decoder's HPA base) of the HPA pattern blocks.
pub fn block_offsets(region_size: u64) -> [u64; 2] {
    [4 << 20, region_size - BLOCK]
}

/// The HPA pattern bytes for the block at DPA `dpa`.
pub fn pattern(dpa: u64) -> Vec<u8> {
    (0..BLOCK / 8)
        .flat_map(|i| ((dpa + 8 * i) ^ HPA_SEED).to_le_bytes())
        .collect()
}

/// The first differing byte of `got` against `want`, as a message.
pub fn mismatch(what: &str, base: u64, got: &[u8], want: &[u8]) -> Option<String> {
    let i = (0..want.len()).find(|&i| got[i] != want[i])?;
    Some(format!(
        "{what} {:#x}: read {:#04x}, expected {:#04x}",
        base + i as u64,
        got[i],
        want[i]
    ))
}

/// DPA base of the endpoint's decoder 0, as the kernel reports it.
fn dpa_base(ctx: &Ctx) -> Result<u64, String> {
    let id = need(&ctx.ep_id, "endpoint port (c.4)")?;
    let dec = port_decoders(id)
        .into_iter()
        .next()
        .ok_or_else(|| format!("endpoint{id} has no decoders"))?;
    get(&dec, "dpa_resource")
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    let failed = rep.failed;
    checks(ctx, rep);
    if ctx.cfg.hpabench && rep.failed == failed {
        bandwidth(ctx, rep);
    }
}

/// j.4 (`hpabench`): sequential write then read through the region's HPA against
/// guest RAM, as `# bench:` note lines for scripts/bench.
fn bandwidth(ctx: &mut Ctx, rep: &mut Reporter) {
    let mut figures = None;
    rep.check(
        "j.4",
        "sequential write then read through the HPA vs guest RAM",
        || {
            let (base, size) = need(&ctx.committed, "endpoint decoder commit (b.4)")?;
            let len = bench_len(size);
            if len == 0 {
                return Err(format!("region of {size:#x} bytes is too small"));
            }
            let m = MmioMap::open("/dev/mem", base + BENCH_OFF, len as usize)?;
            // SAFETY: `m` maps `len` bytes, page aligned, of a range no check uses.
            let bw = unsafe { crate::bench::bandwidth_vs_ram(m.as_ptr(), len as usize) }?;
            figures = Some(bw);
            Ok(format!(
                "{} MiB at HPA {:#x}: write {:.0} / {:.0} MB/s, read {:.0} / {:.0} MB/s (HPA / RAM)",
                len >> 20,
                base + BENCH_OFF,
                bw.dev.0,
                bw.ram.0,
                bw.dev.1,
                bw.ram.1
            ))
        },
    );
    if let Some(bw) = figures {
        for (name, (w, r)) in [("hpa", bw.dev), ("hpa_ram", bw.ram)] {
            rep.note(&crate::bench::figure(
                &format!("bw_write.{name}"),
                w,
                "MB/s",
            ));
            rep.note(&crate::bench::figure(&format!("bw_read.{name}"), r, "MB/s"));
        }
    }
}

fn checks(ctx: &mut Ctx, rep: &mut Reporter) {
    let mut hpa_maps: Vec<(u64, MmioMap)> = Vec::new();
    let mut base_dpa = None;

    rep.check("j.1", "region HPA range mapped through /dev/mem", || {
        let (base, size) = need(&ctx.committed, "endpoint decoder commit (b.4)")?;
        let dpa0 = dpa_base(ctx)?;
        for off in block_offsets(size) {
            let m = MmioMap::open("/dev/mem", base + off, BLOCK as usize)?;
            hpa_maps.push((off, m));
        }
        base_dpa = Some(dpa0);
        Ok(format!(
            "HPA {base:#x}+{size:#x} -> DPA {dpa0:#x}; blocks at +{:#x},+{:#x}",
            block_offsets(size)[0],
            block_offsets(size)[1]
        ))
    });

    rep.check(
        "j.2",
        "pattern written through the HPA reads back through the HPA and through BAR2",
        || {
            let dpa0 = need(&base_dpa, "HPA mapping (j.1)")?;
            if hpa_maps.is_empty() {
                return Err("prerequisite missing: HPA mapping (j.1)".into());
            }
            for (off, m) in &hpa_maps {
                m.write_bytes(0, &pattern(dpa0 + off));
            }
            let bar2 = ctx.bar2()?;
            let mut dpas = Vec::new();
            for (off, m) in &hpa_maps {
                let dpa = dpa0 + off;
                let want = pattern(dpa);
                let mut got = vec![0u8; BLOCK as usize];
                m.read_bytes(0, &mut got);
                if let Some(e) = mismatch("HPA read at DPA", dpa, &got, &want) {
                    return Err(format!(
                        "{e} (writes through the HPA are not reaching device memory)"
                    ));
                }
                if dpa + BLOCK > bar2.len() as u64 {
                    return Err(format!("DPA {dpa:#x} is outside BAR2 ({:#x})", bar2.len()));
                }
                bar2.read_bytes(dpa, &mut got);
                if let Some(e) = mismatch("BAR2 read at DPA", dpa, &got, &want) {
                    return Err(e);
                }
                dpas.push(format!("{dpa:#x}"));
            }
            Ok(format!(
                "DPA {} x {BLOCK} bytes, le64 word at DPA a = a ^ {HPA_SEED:#x}",
                dpas.join(",")
            ))
        },
    );

    rep.check("j.3", "a BAR2 write shows through the HPA", || {
        let dpa0 = need(&base_dpa, "HPA mapping (j.1)")?;
        let (off, m) = hpa_maps
            .first()
            .ok_or("prerequisite missing: HPA mapping (j.1)")?;
        let dpa = dpa0 + off;
        let bar2 = ctx.bar2()?;
        // One word, restored afterwards so the host still finds the pattern.
        let word = 0x5a5a_0000_0000_0000 | dpa;
        let before = bar2.read64(dpa);
        bar2.write64(dpa, word);
        let seen = m.read64(0);
        bar2.write64(dpa, before);
        if seen != word {
            return Err(format!(
                "DPA {dpa:#x}: BAR2 wrote {word:#x}, HPA reads {seen:#x}"
            ));
        }
        Ok(format!("DPA {dpa:#x}"))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_avoid_the_other_checks() {
        let offs = block_offsets(256 << 20);
        assert_eq!(offs, [0x40_0000, 0xfff_f000]);
        for o in offs {
            for other in [0, 1 << 20, super::super::DMA_DPA, super::super::POISON_DPA] {
                assert!(
                    o >= other + BLOCK || o + BLOCK <= other,
                    "{o:#x} vs {other:#x}"
                );
            }
        }
    }

    #[test]
    fn bench_range_avoids_the_patterns() {
        assert_eq!(bench_len(512 << 20), 64 << 20);
        assert_eq!(bench_len(256 << 20), 64 << 20);
        assert_eq!(bench_len(8 << 20), 0);
        for size in [256u64 << 20, 512 << 20, 1 << 30] {
            let end = BENCH_OFF + bench_len(size);
            for o in block_offsets(size) {
                assert!(
                    o + BLOCK <= BENCH_OFF || o >= end,
                    "{o:#x} in the bench range"
                );
            }
        }
        for other in [0, 1 << 20, super::super::DMA_DPA, super::super::POISON_DPA] {
            assert!(other + BLOCK <= BENCH_OFF);
        }
    }

    #[test]
    fn pattern_is_dpa_xor_seed() {
        let p = pattern(0x40_0000);
        assert_eq!(p.len(), BLOCK as usize);
        assert_eq!(
            u64::from_le_bytes(p[8..16].try_into().unwrap()),
            0x40_0008 ^ HPA_SEED
        );
        assert_ne!(pattern(0x40_0000), super::super::g_bar2::pattern(0x40_0000));
    }

    #[test]
    fn mismatch_names_the_first_byte() {
        assert_eq!(mismatch("x", 0x10, &[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(
            mismatch("x", 0x10, &[1, 9, 3], &[1, 2, 3]).unwrap(),
            "x 0x11: read 0x09, expected 0x02"
        );
    }
}
