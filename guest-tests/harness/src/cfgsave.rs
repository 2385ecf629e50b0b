//! A function's config space saved, and written back after something reset it, as
//! the kernel's pci_save_state()/pci_restore_state() do around a reset it performs
//! itself. The harness needs this for resets the kernel does not perform: a CXL Reset
//! (CXL r3.1 §9.7, whose CXL.io scope is an FLR's: the header, with the BARs and
//! Command, returns to its defaults) and the chaos mode's random writes.

use crate::pcicfg::ConfigSpace;
use cxl_regs::pci;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

/// Where the capabilities with control registers live (from the snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CfgLayout {
    pub exp: usize,
    pub msix: usize,
    pub pm: usize,
}

/// A function's config space as it was at [`SavedConfig::take`], and its `config`
/// file, open for reads and writes.
pub struct SavedConfig {
    file: File,
    /// Config space at the time it was taken (4096 bytes).
    pub snap: Vec<u8>,
    pub lay: CfgLayout,
}

impl SavedConfig {
    /// Save the config space of `bdf` (needs root: 4096 bytes readable).
    pub fn take(bdf: &str) -> Result<Self, String> {
        let p = format!("{}/{bdf}/config", crate::sys::PCI_DEVICES);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .map_err(|e| format!("open {p}: {e}"))?;
        let snap = std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?;
        if snap.len() != pci::CONFIG_SPACE_SIZE {
            return Err(format!("{p}: {} bytes (not root?)", snap.len()));
        }
        let cs = ConfigSpace::new(snap.clone());
        let cap = |id, what| {
            cs.find_cap(id)
                .ok_or_else(|| format!("no {what} capability in config space"))
        };
        let lay = CfgLayout {
            exp: cap(pci::CAP_ID_EXP, "PCIe")?,
            msix: cap(pci::CAP_ID_MSIX, "MSI-X")?,
            pm: cap(pci::CAP_ID_PM, "power management")?,
        };
        Ok(Self { file, snap, lay })
    }

    /// Read `width` (1 to 8) bytes at `off`, little-endian.
    pub fn read(&self, off: usize, width: usize) -> Result<u64, String> {
        let mut b = [0u8; 8];
        let n = self
            .file
            .read_at(&mut b[..width], off as u64)
            .map_err(|e| format!("read config at {off:#x}: {e}"))?;
        if n != width {
            return Err(format!("read config at {off:#x}: {n} of {width} bytes"));
        }
        Ok(u64::from_le_bytes(b))
    }

    pub fn read16(&self, off: usize) -> Result<u16, String> {
        self.read(off, 2).map(|v| v as u16)
    }

    pub fn write(&self, off: usize, bytes: &[u8]) -> Result<(), String> {
        let n = self
            .file
            .write_at(bytes, off as u64)
            .map_err(|e| format!("write config at {off:#x}: {e}"))?;
        if n != bytes.len() {
            return Err(format!(
                "write config at {off:#x}: {n} of {} bytes",
                bytes.len()
            ));
        }
        Ok(())
    }

    pub fn write16(&self, off: usize, v: u16) -> Result<(), String> {
        self.write(off, &v.to_le_bytes())
    }

    /// Write back the saved bytes `[off, off + len)`.
    pub fn restore(&self, off: usize, len: usize) -> Result<(), String> {
        self.write(off, &self.snap[off..off + len])
    }

    pub fn snap16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.snap[off], self.snap[off + 1]])
    }

    /// Make the BARs reachable again: the saved header (BARs, cache line, interrupt
    /// line), D0, then Command with Memory Space on and Bus Master on only if
    /// `bus_master` (MSI-X is disabled first then).
    pub fn heal(&self, bus_master: bool) -> Result<(), String> {
        let l = self.lay;
        if bus_master {
            let flags = self.snap16(l.msix + pci::MSIX_FLAGS) & !pci::MSIX_FLAGS_ENABLE;
            self.write16(l.msix + pci::MSIX_FLAGS, flags)?;
        }
        self.restore(pci::CACHE_LINE_SIZE, 1)?;
        for n in 0..pci::NUM_BARS {
            self.restore(pci::bar_offset(n), 4)?;
        }
        self.restore(pci::INTERRUPT_LINE, 1)?;
        self.restore(l.pm + pci::PM_PMCSR, 2)?;
        let mut cmd = self.snap16(pci::COMMAND) | pci::CMD_MEMORY_SPACE;
        if bus_master {
            cmd |= pci::CMD_BUS_MASTER;
        } else {
            cmd &= !pci::CMD_BUS_MASTER;
        }
        self.write16(pci::COMMAND, cmd)
    }

    /// Everything the kernel saves and restores around a reset, as saved: the header
    /// with the saved Command, the PCIe control registers (without Initiate FLR), PM
    /// and MSI-X control.
    pub fn restore_saved_state(&self) -> Result<(), String> {
        let l = self.lay;
        let flags = self.snap16(l.msix + pci::MSIX_FLAGS);
        self.write16(l.msix + pci::MSIX_FLAGS, flags)?;
        for reg in [
            pci::EXP_DEVCTL,
            pci::EXP_LNKCTL,
            pci::EXP_DEVCTL2,
            pci::EXP_LNKCTL2,
        ] {
            let mut v = self.snap16(l.exp + reg);
            if reg == pci::EXP_DEVCTL {
                v &= !pci::EXP_DEVCTL_BCR_FLR;
            }
            self.write16(l.exp + reg, v)?;
        }
        self.heal(false)?;
        self.restore(pci::COMMAND, 2)
    }
}
