//! A DOE requester of its own (PCIe r6 §6.30.2), driving a function's DOE mailbox
//! through config space: DOE Discovery, and CXL Table Access Read Entry to fetch
//! the whole CDAT (CXL r3.1 §8.1.11). The harness uses it before the kernel's CXL
//! modules load, to learn the table the device serves without trusting the
//! kernel's copy.

use cxl_regs::doe as d;

/// Dword access to config space (the sysfs `config` file, or a model in tests).
pub trait ConfigIo {
    fn read32(&mut self, off: u64) -> Result<u32, String>;
    fn write32(&mut self, off: u64, value: u32) -> Result<(), String>;
}

/// A function's config space through `/sys/bus/pci/devices/<bdf>/config`; dword
/// pread/pwrite become single config accesses of that width.
pub struct SysfsConfig {
    file: std::fs::File,
    path: String,
}

impl SysfsConfig {
    pub fn open(bdf: &str) -> Result<Self, String> {
        let path = format!("{}/{bdf}/config", crate::sys::PCI_DEVICES);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        Ok(Self { file, path })
    }
}

impl ConfigIo for SysfsConfig {
    fn read32(&mut self, off: u64) -> Result<u32, String> {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        match self.file.read_at(&mut b, off) {
            Ok(4) => Ok(u32::from_le_bytes(b)),
            Ok(n) => Err(format!(
                "{}: short read of {n} bytes at {off:#x}",
                self.path
            )),
            Err(e) => Err(format!("{}: read at {off:#x}: {e}", self.path)),
        }
    }
    fn write32(&mut self, off: u64, value: u32) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        match self.file.write_at(&value.to_le_bytes(), off) {
            Ok(4) => Ok(()),
            Ok(n) => Err(format!(
                "{}: short write of {n} bytes at {off:#x}",
                self.path
            )),
            Err(e) => Err(format!("{}: write at {off:#x}: {e}", self.path)),
        }
    }
}

/// How many Status polls a response may take (the device answers at once; the
/// kernel allows one second).
const POLLS: u32 = 1000;
/// The longest response accepted, in DWs: a CDAT entry is at most 64 KiB.
const MAX_RESPONSE_DW: usize = (64 << 10) / 4 + 3;

/// A DOE mailbox at config offset `cap`.
pub struct Doe<'a, T: ConfigIo> {
    pub io: &'a mut T,
    pub cap: u64,
}

impl<T: ConfigIo> Doe<'_, T> {
    fn reg(&mut self, r: usize) -> Result<u32, String> {
        self.io.read32(self.cap + r as u64)
    }
    fn set(&mut self, r: usize, v: u32) -> Result<(), String> {
        self.io.write32(self.cap + r as u64, v)
    }

    /// DOE Abort, then wait for Busy and Error to clear (§6.30.2).
    pub fn abort(&mut self) -> Result<(), String> {
        self.set(d::CONTROL, d::CTRL_ABORT)?;
        for _ in 0..POLLS {
            let s = self.reg(d::STATUS)?;
            if s & (d::STATUS_BUSY | d::STATUS_ERROR) == 0 {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err("DOE Abort did not clear Busy and Error".into())
    }

    /// Send one request object and return the response's payload (after its two
    /// header DWs), checking the response is of the same protocol.
    pub fn exchange(
        &mut self,
        vendor: u16,
        object_type: u8,
        payload: &[u32],
    ) -> Result<Vec<u32>, String> {
        let s = self.reg(d::STATUS)?;
        if s & (d::STATUS_BUSY | d::STATUS_ERROR) != 0 {
            return Err(format!("DOE Status {s:#010x} before the request"));
        }
        self.set(d::WRITE_MAILBOX, d::header1(vendor, object_type))?;
        self.set(d::WRITE_MAILBOX, d::header2(d::HEADER_DW + payload.len()))?;
        for &dw in payload {
            self.set(d::WRITE_MAILBOX, dw)?;
        }
        self.set(d::CONTROL, d::CTRL_GO)?;
        let mut ready = false;
        for _ in 0..POLLS {
            let s = self.reg(d::STATUS)?;
            if s & d::STATUS_ERROR != 0 {
                return Err(format!("DOE Error after the request (Status {s:#010x})"));
            }
            if s & d::STATUS_DATA_OBJECT_READY != 0 {
                ready = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if !ready {
            return Err("no Data Object Ready".into());
        }
        let h1 = self.pop()?;
        let h2 = self.pop()?;
        if (d::header1_vendor(h1), d::header1_type(h1)) != (vendor, object_type) {
            return Err(format!(
                "response header {h1:#010x} for a {vendor:#06x}:{object_type:#04x} request"
            ));
        }
        let len = d::header2_length(h2);
        if !(d::HEADER_DW..=MAX_RESPONSE_DW).contains(&len) {
            return Err(format!("response Length {len} DWs"));
        }
        let mut out = Vec::with_capacity(len - d::HEADER_DW);
        for _ in d::HEADER_DW..len {
            out.push(self.pop()?);
        }
        let s = self.reg(d::STATUS)?;
        if s & (d::STATUS_DATA_OBJECT_READY | d::STATUS_ERROR | d::STATUS_BUSY) != 0 {
            return Err(format!("DOE Status {s:#010x} after the whole response"));
        }
        Ok(out)
    }

    /// Read the current Read Data Mailbox DW and move on.
    fn pop(&mut self) -> Result<u32, String> {
        let v = self.reg(d::READ_MAILBOX)?;
        self.set(d::READ_MAILBOX, 0)?;
        Ok(v)
    }

    /// Every protocol DOE Discovery lists, in index order: (vendor, type).
    pub fn discover(&mut self) -> Result<Vec<(u16, u8)>, String> {
        let mut out = Vec::new();
        let mut index = 0u8;
        loop {
            let r = self.exchange(
                d::VENDOR_PCI_SIG,
                d::TYPE_DISCOVERY,
                &[d::discovery_request(index)],
            )?;
            let &[dw] = r.as_slice() else {
                return Err(format!("Discovery response of {} DWs", r.len() + 2));
            };
            let (vendor, protocol, next) = d::discovery_response_fields(dw);
            out.push((vendor, protocol));
            if next == 0 {
                return Ok(out);
            }
            if next <= index || out.len() > 255 {
                return Err(format!("Discovery index {index} names {next} next"));
            }
            index = next;
        }
    }

    /// The whole CDAT, as the entries Read Entry returns from handle 0 on.
    pub fn read_cdat(&mut self) -> Result<Vec<u8>, String> {
        let mut table = Vec::new();
        let mut handle = 0u16;
        for _ in 0..u32::from(d::LAST_ENTRY) {
            let r = self.exchange(
                d::VENDOR_CXL,
                d::TYPE_TABLE_ACCESS,
                &[d::table_access_dw(
                    d::TABLE_READ_ENTRY,
                    d::TABLE_TYPE_CDAT,
                    handle,
                )],
            )?;
            let Some((&first, entry)) = r.split_first() else {
                return Err(format!("empty Read Entry response for handle {handle}"));
            };
            let (code, table_type, next) = d::table_access_fields(first);
            if (code, table_type) != (d::TABLE_READ_ENTRY, d::TABLE_TYPE_CDAT) {
                return Err(format!("Read Entry response DW {first:#010x}"));
            }
            for dw in entry {
                table.extend_from_slice(&dw.to_le_bytes());
            }
            if next == d::LAST_ENTRY {
                return Ok(table);
            }
            if next <= handle {
                return Err(format!("entry {handle} names {next} as the next"));
            }
            handle = next;
        }
        Err("the CDAT never ends".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accel_type2::cdat::{Cdat, CdatConfig};
    use accel_type2::doe::DoeMailbox;
    use std::sync::Arc;

    /// The device model's DOE mailbox behind config offset 0x1a0.
    struct Model(DoeMailbox);
    impl ConfigIo for Model {
        fn read32(&mut self, off: u64) -> Result<u32, String> {
            Ok(self.0.read((off - 0x1a0) as usize))
        }
        fn write32(&mut self, off: u64, value: u32) -> Result<(), String> {
            self.0.write((off - 0x1a0) as usize, value, !0);
            Ok(())
        }
    }

    fn model() -> (Model, Vec<u8>) {
        let cdat = Cdat::build(&CdatConfig::default(), 512 << 20, 9).unwrap();
        let bytes = cdat.bytes().to_vec();
        (Model(DoeMailbox::new(Arc::new(cdat))), bytes)
    }

    #[test]
    fn reads_the_models_protocols_and_table() {
        let (mut m, bytes) = model();
        let mut doe = Doe {
            io: &mut m,
            cap: 0x1a0,
        };
        doe.abort().unwrap();
        assert_eq!(doe.discover().unwrap(), [(0x0001, 0), (0x1e98, 2)]);
        assert_eq!(doe.read_cdat().unwrap(), bytes);
    }

    #[test]
    fn a_mailbox_left_busy_is_reported_then_aborted() {
        let (mut m, bytes) = model();
        // Another requester's response left unread.
        for dw in [1, 3, 0] {
            m.write32(0x1a0 + 0x10, dw).unwrap();
        }
        m.write32(0x1a0 + 0x08, 0x8000_0000).unwrap();
        let mut doe = Doe {
            io: &mut m,
            cap: 0x1a0,
        };
        assert!(doe.read_cdat().unwrap_err().contains("before the request"));
        doe.abort().unwrap();
        assert_eq!(doe.read_cdat().unwrap(), bytes);
    }

    #[test]
    fn an_unknown_protocol_is_an_error_not_a_hang() {
        let (mut m, _) = model();
        let mut doe = Doe {
            io: &mut m,
            cap: 0x1a0,
        };
        let e = doe.exchange(0x1234, 7, &[0]).unwrap_err();
        assert!(e.contains("DOE Error"), "{e}");
    }
}
