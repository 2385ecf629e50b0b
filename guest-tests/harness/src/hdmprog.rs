//! Firmware-style HDM decoder programming (CXL r3.1 §8.2.4.20), as a BIOS does
//! before the OS: find the HDM Decoder Capability through the CXL.cache/mem
//! capability array (§8.2.4.1), write base/size/targets or DPA skip, then Control
//! with Commit, and poll Committed.

use crate::mmio::Regs;
use cxl_regs::{component, hdm};

/// One entry of the CXL.cache/mem capability array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheMemCap {
    pub id: u16,
    pub version: u8,
    /// Offset relative to the CXL.cache/mem registers (component block + 0x1000).
    pub pointer: u32,
}

/// Walk the capability array of the component block at `comp`.
pub fn cachemem_caps<R: Regs + ?Sized>(r: &R, comp: u64) -> Result<Vec<CacheMemCap>, String> {
    let cm = comp + component::CACHEMEM_OFFSET as u64;
    let hdr = r.read32(cm);
    if component::entry_id(hdr) != component::CAP_ID_ARRAY {
        return Err(format!(
            "CXL.cache/mem capability header at {cm:#x} reads {hdr:#010x}: id is not 1"
        ));
    }
    let n = component::array_size(hdr) as u64;
    Ok((1..=n)
        .map(|i| {
            let e = r.read32(cm + 4 * i);
            CacheMemCap {
                id: component::entry_id(e),
                version: component::entry_version(e),
                pointer: component::entry_pointer(e),
            }
        })
        .collect())
}

/// Absolute offset (in the mapping) of the HDM Decoder Capability.
pub fn find_hdm<R: Regs + ?Sized>(r: &R, comp: u64) -> Result<u64, String> {
    let caps = cachemem_caps(r, comp)?;
    let hdm = caps
        .iter()
        .find(|c| c.id == hdm::CAP_ID)
        .ok_or_else(|| format!("no HDM Decoder capability (id 5) among {caps:?}"))?;
    Ok(comp + component::CACHEMEM_OFFSET as u64 + hdm.pointer as u64)
}

/// HDM capability register decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HdmCap {
    pub decoders: u32,
    pub targets: u32,
    pub raw: u32,
}

pub fn read_cap<R: Regs + ?Sized>(r: &R, hdm_off: u64) -> Result<HdmCap, String> {
    let raw = r.read32(hdm_off + hdm::CAPABILITY as u64);
    let decoders = hdm::decode_decoder_count(raw)
        .ok_or_else(|| format!("HDM capability {raw:#x}: reserved decoder count"))?;
    Ok(HdmCap {
        decoders,
        targets: (raw & hdm::CAP_TARGET_COUNT_MASK) >> hdm::CAP_TARGET_COUNT_SHIFT,
        raw,
    })
}

/// What to program into a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    pub base: u64,
    pub size: u64,
    /// IW encoding (0 = 1 way).
    pub iw: u8,
    /// IG encoding (0 = 256 B).
    pub ig: u8,
    /// Target Range Type: false = device-coherent (HDM-D, accelerator), true = host-only.
    pub host_only: bool,
    pub lock_on_commit: bool,
    /// DPA skip (endpoint) or Target List (host bridge / switch), the 64-bit value at
    /// +0x24/+0x28.
    pub skip_or_targets: u64,
}

/// The state of a decoder as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderState {
    pub base: u64,
    pub size: u64,
    pub ctrl: u32,
    pub skip_or_targets: u64,
}

impl DecoderState {
    pub fn committed(&self) -> bool {
        self.ctrl & hdm::CTRL_COMMITTED != 0
    }
    pub fn error(&self) -> bool {
        self.ctrl & hdm::CTRL_ERROR_NOT_COMMITTED != 0
    }
    pub fn host_only(&self) -> bool {
        self.ctrl & hdm::CTRL_TARGET_TYPE_HOST_ONLY != 0
    }
    pub fn iw(&self) -> u8 {
        ((self.ctrl & hdm::CTRL_IW_MASK) >> hdm::CTRL_IW_SHIFT) as u8
    }
    pub fn locked(&self) -> bool {
        self.ctrl & hdm::CTRL_LOCK_ON_COMMIT != 0
    }
    pub fn matches(&self, p: &Program) -> bool {
        self.base == p.base
            && self.size == p.size
            && self.iw() == p.iw
            && (self.ctrl & hdm::CTRL_IG_MASK) as u8 == p.ig
            && self.host_only() == p.host_only
            && self.locked() == p.lock_on_commit
            && self.skip_or_targets == p.skip_or_targets
    }
}

fn dec(hdm_off: u64, n: u32, reg: u32) -> u64 {
    hdm_off + (hdm::decoder_offset(n) + reg) as u64
}

pub fn read_decoder<R: Regs + ?Sized>(r: &R, hdm_off: u64, n: u32) -> DecoderState {
    let rd = |reg| r.read32(dec(hdm_off, n, reg)) as u64;
    DecoderState {
        base: rd(hdm::DEC_BASE_HI) << 32 | rd(hdm::DEC_BASE_LO),
        size: rd(hdm::DEC_SIZE_HI) << 32 | rd(hdm::DEC_SIZE_LO),
        ctrl: r.read32(dec(hdm_off, n, hdm::DEC_CONTROL)),
        skip_or_targets: rd(hdm::DEC_DPA_SKIP_HI) << 32 | rd(hdm::DEC_DPA_SKIP_LO),
    }
}

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Programmed and committed now.
    Committed,
    /// It was already committed with the same programming.
    AlreadyCommitted,
}

/// Number of polls of Committed, `wait` between them: the kernel polls 20 × 1 ms.
pub const COMMIT_POLLS: u32 = 20;

/// Program decoder `n` and commit it. `wait` is called between polls.
pub fn commit<R: Regs + ?Sized>(
    r: &R,
    hdm_off: u64,
    n: u32,
    p: &Program,
    wait: &dyn Fn(),
) -> Result<(Outcome, DecoderState), String> {
    let g = hdm::GRANULE;
    if !p.base.is_multiple_of(g) || !p.size.is_multiple_of(g) || p.size == 0 {
        return Err(format!(
            "program {p:?}: base/size not 256 MiB aligned or zero size"
        ));
    }
    let cur = read_decoder(r, hdm_off, n);
    if cur.committed() {
        if cur.matches(p) {
            return Ok((Outcome::AlreadyCommitted, cur));
        }
        if cur.locked() {
            return Err(format!("decoder {n} is committed and locked with {cur:x?}"));
        }
        // Uncommit first: clearing Commit deactivates it (§8.2.4.20.7).
        r.write32(
            dec(hdm_off, n, hdm::DEC_CONTROL),
            cur.ctrl & !hdm::CTRL_COMMIT,
        );
        poll(r, hdm_off, n, false, wait)
            .map_err(|s| format!("decoder {n}: uncommit did not clear Committed: {s:x?}"))?;
    }
    let w = |reg, v: u32| r.write32(dec(hdm_off, n, reg), v);
    w(hdm::DEC_BASE_LO, p.base as u32);
    w(hdm::DEC_BASE_HI, (p.base >> 32) as u32);
    w(hdm::DEC_SIZE_LO, p.size as u32);
    w(hdm::DEC_SIZE_HI, (p.size >> 32) as u32);
    w(hdm::DEC_DPA_SKIP_LO, p.skip_or_targets as u32);
    w(hdm::DEC_DPA_SKIP_HI, (p.skip_or_targets >> 32) as u32);
    let mut ctrl = (p.ig as u32 & hdm::CTRL_IG_MASK)
        | ((p.iw as u32) << hdm::CTRL_IW_SHIFT & hdm::CTRL_IW_MASK)
        | hdm::CTRL_COMMIT;
    if p.host_only {
        ctrl |= hdm::CTRL_TARGET_TYPE_HOST_ONLY;
    }
    if p.lock_on_commit {
        ctrl |= hdm::CTRL_LOCK_ON_COMMIT;
    }
    w(hdm::DEC_CONTROL, ctrl);
    let st = poll(r, hdm_off, n, true, wait).map_err(|s| {
        if s.error() {
            format!("decoder {n}: Error Not Committed set: {s:x?}")
        } else {
            format!("decoder {n}: Committed not set after {COMMIT_POLLS} polls: {s:x?}")
        }
    })?;
    if !st.matches(p) {
        return Err(format!(
            "decoder {n}: committed but reads back {st:x?}, programmed {p:x?}"
        ));
    }
    Ok((Outcome::Committed, st))
}

fn poll<R: Regs + ?Sized>(
    r: &R,
    hdm_off: u64,
    n: u32,
    want: bool,
    wait: &dyn Fn(),
) -> Result<DecoderState, DecoderState> {
    for i in 0..=COMMIT_POLLS {
        let s = read_decoder(r, hdm_off, n);
        if want && s.error() {
            return Err(s);
        }
        if s.committed() == want {
            return Ok(s);
        }
        if i < COMMIT_POLLS {
            wait();
        }
    }
    Err(read_decoder(r, hdm_off, n))
}

/// Set HDM Decoder Enable in the Global Control register; returns its new value.
pub fn global_enable<R: Regs + ?Sized>(r: &R, hdm_off: u64) -> Result<u32, String> {
    let off = hdm_off + hdm::GLOBAL_CONTROL as u64;
    let v = r.read32(off);
    r.write32(off, v | hdm::GCTRL_HDM_DECODER_ENABLE);
    let after = r.read32(off);
    if after & hdm::GCTRL_HDM_DECODER_ENABLE == 0 {
        return Err(format!(
            "HDM Global Control reads {after:#x} after setting Enable"
        ));
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::fake::FakeRegs;

    const HDM: u64 = 0x1300;

    /// A component block with RAS at +0x100 and HDM at +0x300 of the cache/mem
    /// registers; decoders commit on write unless the programming is misaligned.
    fn block(decoder_count_field: u32) -> FakeRegs {
        let r = FakeRegs::new(0x2000);
        r.set(0x1000, component::array_header(2));
        r.set(0x1004, component::entry(component::CAP_ID_RAS, 3, 0x100));
        r.set(0x1008, component::entry(hdm::CAP_ID, 3, 0x300));
        r.set(HDM, decoder_count_field);
        r.on_write(|m, off, v| {
            let rel = off.wrapping_sub(HDM + 0x10);
            if off >= HDM + 0x10 && rel % 0x20 == 0x10 {
                let idx = (off / 4) as usize;
                let base_lo = m[idx - 4];
                let size_lo = m[idx - 2];
                let ok = base_lo & 0x0fff_ffff == 0 && size_lo & 0x0fff_ffff == 0;
                let mut c = v & !(hdm::CTRL_COMMITTED | hdm::CTRL_ERROR_NOT_COMMITTED);
                if v & hdm::CTRL_COMMIT != 0 {
                    c |= if ok {
                        hdm::CTRL_COMMITTED
                    } else {
                        hdm::CTRL_ERROR_NOT_COMMITTED
                    };
                }
                m[idx] = c;
            }
        });
        r
    }

    fn prog(base: u64) -> Program {
        Program {
            base,
            size: 0x1000_0000,
            iw: 0,
            ig: 0,
            host_only: false,
            lock_on_commit: false,
            skip_or_targets: 0,
        }
    }

    #[test]
    fn finds_hdm_and_counts_decoders() {
        let r = block(1);
        assert_eq!(find_hdm(&r, 0).unwrap(), HDM);
        let c = read_cap(&r, HDM).unwrap();
        assert_eq!(c.decoders, 2);
        let r = FakeRegs::new(0x2000);
        assert!(find_hdm(&r, 0).unwrap_err().contains("id is not 1"));
        r.set(0x1000, component::array_header(1));
        r.set(0x1004, component::entry(component::CAP_ID_RAS, 3, 0x100));
        assert!(find_hdm(&r, 0).unwrap_err().contains("no HDM"));
    }

    #[test]
    fn commits_and_reads_back() {
        let r = block(1);
        let (o, st) = commit(&r, HDM, 0, &prog(0x2_d000_0000), &|| {}).unwrap();
        assert_eq!(o, Outcome::Committed);
        assert!(st.committed() && !st.host_only());
        assert_eq!(st.base, 0x2_d000_0000);
        // same again: already committed
        let (o, _) = commit(&r, HDM, 0, &prog(0x2_d000_0000), &|| {}).unwrap();
        assert_eq!(o, Outcome::AlreadyCommitted);
        // different programming: uncommitted then recommitted
        let (o, st) = commit(&r, HDM, 0, &prog(0x3_0000_0000), &|| {}).unwrap();
        assert_eq!((o, st.base), (Outcome::Committed, 0x3_0000_0000));
        // the same range with Lock On Commit: committed again, now locked
        let locked = Program {
            lock_on_commit: true,
            ..prog(0x3_0000_0000)
        };
        let (o, st) = commit(&r, HDM, 0, &locked, &|| {}).unwrap();
        assert_eq!((o, st.locked()), (Outcome::Committed, true));
        // and a locked decoder is not taken apart for other programming
        assert!(commit(&r, HDM, 0, &prog(0x3_0000_0000), &|| {})
            .unwrap_err()
            .contains("locked"));
        assert_eq!(
            global_enable(&r, HDM).unwrap(),
            hdm::GCTRL_HDM_DECODER_ENABLE
        );
    }

    #[test]
    fn reports_commit_failures() {
        let r = block(1);
        assert!(commit(&r, HDM, 0, &prog(0x1234), &|| {})
            .unwrap_err()
            .contains("aligned"));
        // device that never reports Committed
        let r = FakeRegs::new(0x2000);
        r.set(0x1000, component::array_header(1));
        r.set(0x1004, component::entry(hdm::CAP_ID, 3, 0x300));
        let polls = std::cell::Cell::new(0);
        let e = commit(&r, HDM, 0, &prog(0x1000_0000), &|| {
            polls.set(polls.get() + 1)
        })
        .unwrap_err();
        assert!(e.contains("Committed not set"), "{e}");
        assert_eq!(polls.get(), COMMIT_POLLS);
        // device that reports an error
        let r = FakeRegs::new(0x2000);
        r.on_write(|m, off, v| {
            if off == HDM + 0x20 && v & hdm::CTRL_COMMIT != 0 {
                m[(off / 4) as usize] |= hdm::CTRL_ERROR_NOT_COMMITTED;
            }
        });
        let e = commit(&r, HDM, 0, &prog(0x1000_0000), &|| {}).unwrap_err();
        assert!(e.contains("Error Not Committed"), "{e}");
        // a global control that does not stick
        let r = FakeRegs::new(0x2000);
        r.on_write(|m, off, _| {
            if off == HDM + 4 {
                m[(off / 4) as usize] = 0;
            }
        });
        assert!(global_enable(&r, HDM).is_err());
    }
}
