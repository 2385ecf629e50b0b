//! PCI configuration space walking over a byte snapshot (the sysfs `config` file):
//! the classic capability list, extended capabilities and CXL DVSECs.

use cxl_regs::pci;

/// A snapshot of a function's configuration space.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    pub bytes: Vec<u8>,
}

impl ConfigSpace {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    pub fn u8(&self, off: usize) -> Option<u8> {
        self.bytes.get(off).copied()
    }
    pub fn u16(&self, off: usize) -> Option<u16> {
        let b = self.bytes.get(off..off.checked_add(2)?)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&self, off: usize) -> Option<u32> {
        let b = self.bytes.get(off..off.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn vendor(&self) -> Option<u16> {
        self.u16(pci::VENDOR_ID)
    }
    pub fn device(&self) -> Option<u16> {
        self.u16(pci::DEVICE_ID)
    }
    /// 24-bit class code (base, sub, prog-if).
    pub fn class(&self) -> Option<u32> {
        Some(self.u32(pci::REVISION_ID)? >> 8)
    }

    /// Offset of the first classic capability with `id`. Bounded to 48 hops so a
    /// looped list cannot hang.
    pub fn find_cap(&self, id: u8) -> Option<usize> {
        if self.u16(pci::STATUS)? & pci::STS_CAP_LIST == 0 {
            return None;
        }
        let mut ptr = (self.u8(pci::CAPABILITIES_POINTER)? & 0xfc) as usize;
        for _ in 0..48 {
            if ptr < pci::HEADER_LEN {
                return None;
            }
            if self.u8(ptr + pci::CAP_ID)? == id {
                return Some(ptr);
            }
            ptr = (self.u8(ptr + pci::CAP_NEXT)? & 0xfc) as usize;
        }
        None
    }

    /// All extended capabilities: (offset, id, version). Bounded against loops.
    pub fn ext_caps(&self) -> Vec<(usize, u16, u8)> {
        let mut out = Vec::new();
        let mut off = pci::EXT_CAP_START;
        for _ in 0..((pci::CONFIG_SPACE_SIZE - pci::EXT_CAP_START) / 4) {
            let Some(h) = self.u32(off) else { break };
            if h == 0 || h == 0xffff_ffff {
                break;
            }
            out.push((off, pci::ext_cap_id(h), pci::ext_cap_version(h)));
            let next = pci::ext_cap_next(h) as usize;
            if next < pci::EXT_CAP_START || next <= off {
                break;
            }
            off = next & !3;
        }
        out
    }

    pub fn find_ext_cap(&self, id: u16) -> Option<usize> {
        self.ext_caps()
            .into_iter()
            .find(|&(_, i, _)| i == id)
            .map(|(o, _, _)| o)
    }

    /// All DVSECs: (offset, vendor, id, revision, length).
    pub fn dvsecs(&self) -> Vec<Dvsec> {
        self.ext_caps()
            .into_iter()
            .filter(|&(_, id, _)| id == pci::EXT_CAP_ID_DVSEC)
            .filter_map(|(off, _, _)| {
                let h1 = self.u32(off + pci::DVSEC_HEADER1)?;
                let h2 = self.u32(off + pci::DVSEC_HEADER2)?;
                Some(Dvsec {
                    offset: off,
                    vendor: pci::dvsec_vendor(h1),
                    id: pci::dvsec_id(h2),
                    revision: pci::dvsec_revision(h1),
                    length: pci::dvsec_length(h1),
                })
            })
            .collect()
    }

    /// Offset of the DVSEC with the given vendor and id.
    pub fn find_dvsec(&self, vendor: u16, id: u16) -> Option<usize> {
        self.dvsecs()
            .into_iter()
            .find(|d| d.vendor == vendor && d.id == id)
            .map(|d| d.offset)
    }

    /// Device Serial Number capability value.
    pub fn dsn(&self) -> Option<u64> {
        let off = self.find_ext_cap(pci::EXT_CAP_ID_DSN)?;
        let lo = self.u32(off + pci::DSN_SERIAL_LO)? as u64;
        let hi = self.u32(off + pci::DSN_SERIAL_HI)? as u64;
        Some(hi << 32 | lo)
    }

    /// PCIe Device/Port Type of the PCI Express capability.
    pub fn pcie_type(&self) -> Option<u8> {
        let cap = self.find_cap(pci::CAP_ID_EXP)?;
        Some(((self.u16(cap + pci::EXP_FLAGS)? >> 4) & 0xf) as u8)
    }

    /// Register Locator entries: (BIR, block id, offset).
    pub fn register_blocks(&self, regloc: usize) -> Vec<(u8, u8, u64)> {
        use cxl_regs::dvsec::register_locator as rl;
        let Some(h1) = self.u32(regloc + pci::DVSEC_HEADER1) else {
            return Vec::new();
        };
        let len = pci::dvsec_length(h1) as usize;
        let n = len.saturating_sub(rl::BLOCK1) / rl::ENTRY_SIZE;
        (0..n)
            .filter_map(|i| {
                let off = regloc + rl::BLOCK1 + i * rl::ENTRY_SIZE;
                Some(rl::decode(self.u32(off)?, self.u32(off + 4)?))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dvsec {
    pub offset: usize,
    pub vendor: u16,
    pub id: u16,
    pub revision: u8,
    pub length: u16,
}

/// PCIe Device/Port Type: Root Port of PCI Express Root Complex (PCIe r6 §7.5.3.2).
pub const PCIE_TYPE_ROOT_PORT: u8 = 0x4;
/// PCIe Device/Port Type: Upstream Port of PCI Express Switch.
pub const PCIE_TYPE_UPSTREAM: u8 = 0x5;
/// PCIe Device/Port Type: Downstream Port of PCI Express Switch.
pub const PCIE_TYPE_DOWNSTREAM: u8 = 0x6;
/// PCIe Device/Port Type: PCI Express Endpoint.
pub const PCIE_TYPE_ENDPOINT: u8 = 0x0;

#[cfg(test)]
pub mod tests {
    use super::*;
    use cxl_regs::dvsec;

    /// A synthetic config space shaped like the backend's: PCIe cap at 0x40 (flit
    /// supported, LNKSTA2 flit bit per `flit256`), DSN at 0x100, DVSECs 0, 7, 8 after.
    pub fn synth(flit256: bool, mailbox: bool) -> ConfigSpace {
        let mut b = vec![0u8; 4096];
        let w16 = |b: &mut Vec<u8>, o: usize, v: u16| b[o..o + 2].copy_from_slice(&v.to_le_bytes());
        let w32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        // A CXL DVSEC at `o`: extended capability header (next at `next`), DVSEC
        // headers 1 and 2.
        let dvsec_at = |b: &mut Vec<u8>, o: usize, next: u16, rev: u8, len: u16, id: u16| {
            w32(b, o, pci::ext_cap_header(pci::EXT_CAP_ID_DVSEC, 1, next));
            w32(b, o + 4, pci::dvsec_header1(dvsec::CXL_VENDOR_ID, rev, len));
            w32(b, o + 8, id as u32);
        };
        w16(&mut b, 0, 0x1234);
        w16(&mut b, 2, 0xcc02);
        w32(&mut b, 8, 0x1200_0001);
        w16(&mut b, pci::STATUS, pci::STS_CAP_LIST);
        b[pci::CAPABILITIES_POINTER] = 0x40;
        // MSI-X at 0x70 <- chained after PCIe
        b[0x40] = pci::CAP_ID_EXP;
        b[0x41] = 0x70;
        w16(&mut b, 0x42, 0x0002 | pci::EXP_FLAGS_FLIT_MODE_SUPPORTED);
        w16(
            &mut b,
            0x40 + pci::EXP_LNKSTA2,
            if flit256 { pci::EXP_LNKSTA2_FLIT } else { 0 },
        );
        b[0x70] = pci::CAP_ID_MSIX;
        b[0x71] = 0;
        // DSN
        w32(
            &mut b,
            0x100,
            pci::ext_cap_header(pci::EXT_CAP_ID_DSN, 1, 0x110),
        );
        w32(&mut b, 0x104, 0x89ab_cdef);
        w32(&mut b, 0x108, 0x0123_4567);
        // DVSEC 0 at 0x110, length 0x3c
        dvsec_at(&mut b, 0x110, 0x150, 3, 0x3c, dvsec::ID_CXL_DEVICE);
        w16(&mut b, 0x110 + dvsec::device::CAP, 0x0015);
        w32(
            &mut b,
            0x110 + dvsec::device::range_size_low(0),
            0x2000_0003,
        );
        // Flex Bus at 0x150
        dvsec_at(&mut b, 0x150, 0x170, 2, 0x20, dvsec::ID_FLEX_BUS_PORT);
        let st = dvsec::flex_bus::CACHE
            | dvsec::flex_bus::IO
            | dvsec::flex_bus::MEM
            | if flit256 {
                0
            } else {
                dvsec::flex_bus::FLIT68_VH
            };
        w16(&mut b, 0x150 + dvsec::flex_bus::STATUS, st);
        // Register locator at 0x170
        let n = if mailbox { 2 } else { 1 };
        let len = dvsec::register_locator::length(n);
        dvsec_at(&mut b, 0x170, 0, 0, len, dvsec::ID_REGISTER_LOCATOR);
        let (lo, hi) = dvsec::register_locator::entry(0, 1, 0);
        w32(&mut b, 0x17c, lo);
        w32(&mut b, 0x180, hi);
        if mailbox {
            let (lo, hi) = dvsec::register_locator::entry(0, 3, 0x1_0000);
            w32(&mut b, 0x184, lo);
            w32(&mut b, 0x188, hi);
        }
        ConfigSpace::new(b)
    }

    #[test]
    fn walks_caps_and_dvsecs() {
        let c = synth(true, true);
        assert_eq!(c.vendor(), Some(0x1234));
        assert_eq!(c.class(), Some(0x12_0000));
        assert_eq!(c.find_cap(pci::CAP_ID_EXP), Some(0x40));
        assert_eq!(c.find_cap(pci::CAP_ID_MSIX), Some(0x70));
        assert_eq!(c.find_cap(pci::CAP_ID_MSI), None);
        assert_eq!(c.pcie_type(), Some(PCIE_TYPE_ENDPOINT));
        assert_eq!(c.dsn(), Some(0x0123_4567_89ab_cdef));
        let ids: Vec<u16> = c.dvsecs().iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![0, 7, 8]);
        assert_eq!(c.find_dvsec(0x1e98, 7), Some(0x150));
        assert_eq!(c.find_dvsec(0x1e99, 7), None);
        let rl = c.find_dvsec(0x1e98, 8).unwrap();
        assert_eq!(c.register_blocks(rl), vec![(0, 1, 0), (0, 3, 0x1_0000)]);
        let c2 = synth(false, false);
        let rl = c2.find_dvsec(0x1e98, 8).unwrap();
        assert_eq!(c2.register_blocks(rl), vec![(0, 1, 0)]);
    }

    #[test]
    fn survives_loops_and_truncation() {
        let mut c = synth(true, true);
        // classic list pointing at itself
        c.bytes[0x71] = 0x70;
        c.bytes[0x70] = 0x99;
        assert_eq!(c.find_cap(0x42), None);
        // extended list pointing backwards ends the walk
        c.bytes[0x172..0x174].copy_from_slice(&[0x00, 0x10]);
        assert_eq!(c.ext_caps().len(), 4);
        // a 256-byte snapshot (non-root read) has no extended caps
        let short = ConfigSpace::new(c.bytes[..256].to_vec());
        assert!(short.ext_caps().is_empty());
        assert_eq!(short.dsn(), None);
    }
}
