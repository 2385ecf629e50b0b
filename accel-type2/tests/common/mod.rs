//! Test doubles: a fake clock, guest RAM in a Vec, and register access helpers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use accel_type2::*;
use cxl_regs::layout;

/// A clock that moves only when told.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicU64);
impl FakeClock {
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}
impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Guest RAM: `len` bytes at guest physical `base`.
pub struct TestGuest {
    pub base: u64,
    pub ram: Mutex<Vec<u8>>,
}
impl TestGuest {
    pub fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            ram: Mutex::new(vec![0; len]),
        }
    }
    fn range(&self, gpa: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        let err = MemoryError::Unmapped {
            addr: gpa,
            len: len as u64,
        };
        let off = gpa.checked_sub(self.base).ok_or(err.clone())?;
        let start = usize::try_from(off).map_err(|_| err.clone())?;
        let end = start.checked_add(len).ok_or(err.clone())?;
        if end > self.ram.lock().unwrap().len() {
            return Err(err);
        }
        Ok(start..end)
    }
    pub fn fill(&self, gpa: u64, data: &[u8]) {
        self.write(gpa, data).unwrap();
    }
    pub fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(gpa, &mut v).unwrap();
        v
    }
}
impl GuestMemory for TestGuest {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.ram.lock().unwrap()[r]);
        Ok(())
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(gpa, data.len())?;
        self.ram.lock().unwrap()[r].copy_from_slice(data);
        Ok(())
    }
}

pub const MIB: u64 = 1 << 20;

pub fn small_config() -> AccelConfig {
    AccelConfig {
        memory_size: 256 * MIB,
        ..AccelConfig::default()
    }
}

pub fn device_with(cfg: AccelConfig, fw: Box<dyn Firmware>) -> (AccelDevice, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::default());
    let mem = Box::new(VecMemory::new(cfg.memory_size as usize));
    let lsa = Box::new(MemLsa(vec![0; cfg.lsa_size]));
    let dev = AccelDevice::new(cfg, mem, lsa, fw, clock.clone()).expect("valid config");
    (dev, clock)
}

pub fn device(cfg: AccelConfig) -> (AccelDevice, Arc<FakeClock>) {
    device_with(cfg, Box::new(DefaultFirmware))
}

pub fn cfg_read(dev: &mut AccelDevice, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.config_read(off, &mut b[..len]);
    u64::from_le_bytes(b)
}
pub fn cfg_r8(dev: &mut AccelDevice, off: u64) -> u8 {
    cfg_read(dev, off, 1) as u8
}
pub fn cfg_r16(dev: &mut AccelDevice, off: u64) -> u16 {
    cfg_read(dev, off, 2) as u16
}
pub fn cfg_r32(dev: &mut AccelDevice, off: u64) -> u32 {
    cfg_read(dev, off, 4) as u32
}
pub fn cfg_w16(dev: &mut AccelDevice, off: u64, v: u16) {
    dev.config_write(off, &v.to_le_bytes());
}
pub fn cfg_w32(dev: &mut AccelDevice, off: u64, v: u32) {
    dev.config_write(off, &v.to_le_bytes());
}

pub fn bar_r32(dev: &mut AccelDevice, bar: u8, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.bar_read(bar, off, &mut b);
    u32::from_le_bytes(b)
}
pub fn bar_r64(dev: &mut AccelDevice, bar: u8, off: u64) -> u64 {
    let mut b = [0u8; 8];
    dev.bar_read(bar, off, &mut b);
    u64::from_le_bytes(b)
}
pub fn bar_w32(dev: &mut AccelDevice, bar: u8, off: u64, v: u32) {
    dev.bar_write(bar, off, &v.to_le_bytes(), &NoGuestMemory);
}
pub fn bar_w64(dev: &mut AccelDevice, bar: u8, off: u64, v: u64) {
    dev.bar_write(bar, off, &v.to_le_bytes(), &NoGuestMemory);
}

/// Find a DVSEC by CXL id, walking the extended capability list like
/// `pci_find_dvsec_capability` does.
pub fn find_dvsec(dev: &mut AccelDevice, id: u16) -> Option<u64> {
    let mut pos = 0x100u64;
    for _ in 0..(4096 / 8) {
        let hdr = cfg_r32(dev, pos);
        if hdr == 0 {
            return None;
        }
        if hdr & 0xffff == 0x23 {
            let h1 = cfg_r32(dev, pos + 4);
            let h2 = cfg_r32(dev, pos + 8);
            if h1 & 0xffff == 0x1e98 && h2 & 0xffff == u32::from(id) {
                return Some(pos);
            }
        }
        pos = u64::from(hdr >> 20);
        if pos < 0x100 {
            return None;
        }
    }
    None
}

/// Find a standard capability in the list from 0x34.
pub fn find_cap(dev: &mut AccelDevice, id: u8) -> Option<u64> {
    let mut pos = u64::from(cfg_r8(dev, 0x34) & !3);
    for _ in 0..48 {
        if pos == 0 {
            return None;
        }
        if cfg_r8(dev, pos) == id {
            return Some(pos);
        }
        pos = u64::from(cfg_r8(dev, pos + 1) & !3);
    }
    None
}

pub fn enable_bus_master(dev: &mut AccelDevice) {
    let cmd = cfg_r16(dev, 4);
    cfg_w16(dev, 4, cmd | 0x6);
}

pub fn enable_msix(dev: &mut AccelDevice) {
    let c = find_cap(dev, 0x11).unwrap();
    let ctl = cfg_r16(dev, c + 2);
    cfg_w16(dev, c + 2, ctl | 0x8000);
}

/// Mailbox helpers over BAR0.
pub fn mbox_cmd(dev: &mut AccelDevice, opcode: u16, input: &[u8]) -> (u16, Vec<u8>) {
    let mb = layout::MAILBOX_OFFSET;
    dev.bar_write(0, layout::MAILBOX_PAYLOAD_OFFSET, input, &NoGuestMemory);
    let cmd = u64::from(opcode) | ((input.len() as u64) << 16);
    bar_w64(dev, 0, mb + 0x08, cmd);
    bar_w32(dev, 0, mb + 0x04, 1);
    let status = bar_r64(dev, 0, mb + 0x10);
    let rc = (status >> 32) as u16;
    let cmd = bar_r64(dev, 0, mb + 0x08);
    let len = ((cmd >> 16) & 0x1f_ffff) as usize;
    let mut out = vec![0; len.min(layout::MAILBOX_PAYLOAD_SIZE as usize)];
    dev.bar_read(0, layout::MAILBOX_PAYLOAD_OFFSET, &mut out);
    (rc, out)
}
