//! MSI-X Table and Pending Bit Array in BAR4 (PCIe r6 §7.7.2.5 .. §7.7.2.10).
//!
//! Under vfio-user, QEMU emulates the MSI-X table itself (it overlays the table and
//! PBA ranges of the BAR with its own memory) and delivers each vector through the
//! eventfd given with SET_IRQS, swapping it out while the vector is masked. The
//! device therefore decides delivery only from the MSI-X capability's Enable and
//! Function Mask bits, which QEMU forwards to config space; the table kept here is
//! coherent storage for accesses that do reach the device (a client that traps the
//! table, the control socket, tests), and its per-vector Mask bits do not hold
//! interrupts back. While the function is masked, a raised vector is recorded in the
//! PBA and sent when the mask clears (§7.7.2.2).

use cxl_regs::layout;
use cxl_regs::pci::{
    MSIX_ENTRY_ADDR_HI, MSIX_ENTRY_ADDR_LO, MSIX_ENTRY_ADDR_LO_MASK, MSIX_ENTRY_CTRL_MASKBIT,
    MSIX_ENTRY_DATA, MSIX_ENTRY_SIZE, MSIX_ENTRY_VECTOR_CTRL,
};

use crate::access::merge;

/// One table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    pub addr: u64,
    pub data: u32,
    pub masked: bool,
}

impl Default for MsixEntry {
    /// The reset value: address and data 0, vector masked (§7.7.2.8).
    fn default() -> Self {
        Self {
            addr: 0,
            data: 0,
            masked: true,
        }
    }
}

/// MSI-X table and PBA state.
#[derive(Debug, Clone)]
pub struct Msix {
    entries: Vec<MsixEntry>,
    pending: u64,
}

impl Default for Msix {
    fn default() -> Self {
        Self::new()
    }
}

impl Msix {
    pub fn new() -> Self {
        Self {
            entries: vec![MsixEntry::default(); usize::from(layout::MSIX_VECTORS)],
            pending: 0,
        }
    }
    pub fn reset(&mut self) {
        *self = Self::new();
    }
    pub fn entry(&self, vector: u16) -> Option<MsixEntry> {
        self.entries.get(usize::from(vector)).copied()
    }

    fn table_range() -> (u64, u64) {
        let start = u64::from(layout::MSIX_TABLE_OFFSET);
        (
            start,
            start + (MSIX_ENTRY_SIZE as u64) * u64::from(layout::MSIX_VECTORS),
        )
    }
    fn pba_range() -> (u64, u64) {
        let start = u64::from(layout::MSIX_PBA_OFFSET);
        // One qword holds the pending bits of up to 64 vectors.
        (start, start + 8)
    }
    /// Whether `offset` (in BAR4) falls in the table or the PBA.
    pub fn contains(offset: u64) -> bool {
        let (ts, te) = Self::table_range();
        let (ps, pe) = Self::pba_range();
        (ts..te).contains(&offset) || (ps..pe).contains(&offset)
    }

    /// Read the dword at BAR4 `offset`.
    pub fn read(&self, offset: u64) -> u32 {
        let off = offset & !3;
        let (ts, te) = Self::table_range();
        let (ps, pe) = Self::pba_range();
        if (ts..te).contains(&off) {
            let rel = (off - ts) as usize;
            let Some(e) = self.entries.get(rel / MSIX_ENTRY_SIZE) else {
                return 0;
            };
            match rel % MSIX_ENTRY_SIZE {
                MSIX_ENTRY_ADDR_LO => e.addr as u32,
                MSIX_ENTRY_ADDR_HI => (e.addr >> 32) as u32,
                MSIX_ENTRY_DATA => e.data,
                MSIX_ENTRY_VECTOR_CTRL => u32::from(e.masked),
                _ => 0,
            }
        } else if (ps..pe).contains(&off) {
            if off == ps {
                self.pending as u32
            } else {
                (self.pending >> 32) as u32
            }
        } else {
            0
        }
    }

    /// Write the masked bits of `value` to the dword at BAR4 `offset`. The PBA is
    /// read-only (§7.7.2.10).
    pub fn write(&mut self, offset: u64, value: u32, mask: u32) {
        let off = offset & !3;
        let (ts, te) = Self::table_range();
        if !(ts..te).contains(&off) {
            return;
        }
        let rel = (off - ts) as usize;
        let Some(e) = self.entries.get_mut(rel / MSIX_ENTRY_SIZE) else {
            return;
        };
        match rel % MSIX_ENTRY_SIZE {
            MSIX_ENTRY_ADDR_LO => {
                let lo = merge(e.addr as u32, value, mask & MSIX_ENTRY_ADDR_LO_MASK);
                e.addr = (e.addr & !0xffff_ffff) | u64::from(lo);
            }
            MSIX_ENTRY_ADDR_HI => {
                let hi = merge((e.addr >> 32) as u32, value, mask);
                e.addr = (e.addr & 0xffff_ffff) | (u64::from(hi) << 32);
            }
            MSIX_ENTRY_DATA => e.data = merge(e.data, value, mask),
            MSIX_ENTRY_VECTOR_CTRL if mask & MSIX_ENTRY_CTRL_MASKBIT != 0 => {
                e.masked = value & MSIX_ENTRY_CTRL_MASKBIT != 0;
            }
            _ => {}
        }
    }

    /// Record `vector` as pending.
    pub fn set_pending(&mut self, vector: u16) {
        if vector < layout::MSIX_VECTORS.min(64) {
            self.pending |= 1 << vector;
        }
    }
    /// Take the pending vectors, clearing the PBA.
    pub fn take_pending(&mut self) -> Vec<u16> {
        let p = std::mem::take(&mut self.pending);
        (0..layout::MSIX_VECTORS.min(64))
            .filter(|v| p & (1 << v) != 0)
            .collect()
    }
    pub fn pending_bits(&self) -> u64 {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = layout::MSIX_TABLE_OFFSET as u64;
    const P: u64 = layout::MSIX_PBA_OFFSET as u64;

    #[test]
    fn table_entries_store_and_read_back() {
        let mut m = Msix::new();
        assert_eq!(m.read(T + 0xc), 1, "vectors are masked at reset");
        m.write(T + 0x10, 0xfee0_1003, !0);
        m.write(T + 0x14, 0x1, !0);
        m.write(T + 0x18, 0x4041, !0);
        m.write(T + 0x1c, 0xffff_fffe, !0);
        assert_eq!(
            m.read(T + 0x10),
            0xfee0_1000,
            "address bits 1:0 are reserved"
        );
        assert_eq!(m.read(T + 0x14), 1);
        assert_eq!(m.read(T + 0x18), 0x4041);
        assert_eq!(m.read(T + 0x1c), 0, "only the mask bit is writable");
        assert_eq!(m.entry(1).map(|e| e.addr), Some(0x1_fee0_1000));
        // Out of the table: ignored.
        m.write(T + 0x40, 0x1234, !0);
        assert_eq!(m.read(T + 0x40), 0);
    }

    #[test]
    fn pba_is_read_only_and_reports_pending() {
        let mut m = Msix::new();
        m.set_pending(2);
        m.set_pending(200);
        assert_eq!(m.read(P), 1 << 2);
        m.write(P, 0, !0);
        assert_eq!(m.read(P), 1 << 2);
        assert_eq!(m.take_pending(), vec![2]);
        assert_eq!(m.read(P), 0);
    }
}
