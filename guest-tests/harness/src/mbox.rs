//! A userspace CXL mailbox client (CXL r3.1 §8.2.8.4) over mapped registers: locate
//! the primary mailbox through the Device Capabilities Array (§8.2.8.1), send a
//! command, poll the doorbell, read the return code and output payload.

use crate::mmio::Regs;
use cxl_regs::{device, mailbox as mb};

/// Where the device-register capabilities of one block are (absolute offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceBlock {
    pub status: Option<u64>,
    pub mailbox: Option<u64>,
    pub memdev: Option<u64>,
}

/// Walk the Device Capabilities Array of the block at `blk`.
pub fn device_caps<R: Regs + ?Sized>(r: &R, blk: u64) -> Result<DeviceBlock, String> {
    let arr = r.read64(blk + device::CAP_ARRAY as u64);
    if (arr & 0xffff) as u16 != device::CAP_ARRAY_ID {
        return Err(format!(
            "Device Capabilities Array at {blk:#x} reads {arr:#x}: id not 0"
        ));
    }
    let n = device::cap_array_count(arr) as u32;
    if n == 0 || n > 64 {
        return Err(format!("Device Capabilities Array: implausible count {n}"));
    }
    let mut out = DeviceBlock::default();
    for k in 1..=n {
        let h = blk + device::cap_header_offset(k) as u64;
        let id = (r.read32(h + device::CAP_HEADER_ID as u64) & 0xffff) as u16;
        let off = blk + r.read32(h + device::CAP_HEADER_OFFSET as u64) as u64;
        match id {
            device::CAP_ID_DEVICE_STATUS => out.status = Some(off),
            device::CAP_ID_PRIMARY_MAILBOX => out.mailbox = Some(off),
            device::CAP_ID_MEMDEV_STATUS => out.memdev = Some(off),
            _ => {}
        }
    }
    Ok(out)
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub rc: u16,
    pub out: Vec<u8>,
}

pub struct Mailbox<'a, R: Regs + ?Sized> {
    r: &'a R,
    base: u64,
    pub payload_size: usize,
    /// Called between polls of the doorbell.
    wait: &'a dyn Fn(),
    /// Polls before giving up.
    pub max_polls: u32,
}

impl<'a, R: Regs + ?Sized> Mailbox<'a, R> {
    pub fn new(r: &'a R, base: u64, wait: &'a dyn Fn()) -> Result<Self, String> {
        let cap = r.read32(base + mb::CAPABILITIES as u64);
        let log2 = cap & mb::CAP_PAYLOAD_SIZE_MASK;
        if !(mb::PAYLOAD_LOG2_MIN..=mb::PAYLOAD_LOG2_MAX).contains(&log2) {
            return Err(format!(
                "mailbox capabilities {cap:#x}: payload size 2^{log2} out of range"
            ));
        }
        Ok(Self {
            r,
            base,
            payload_size: 1 << log2,
            wait,
            max_polls: 2000,
        })
    }

    fn doorbell_busy(&self) -> bool {
        self.r.read32(self.base + mb::CONTROL as u64) & mb::CTRL_DOORBELL != 0
    }

    fn wait_idle(&self) -> Result<(), String> {
        for _ in 0..self.max_polls {
            if !self.doorbell_busy() {
                return Ok(());
            }
            (self.wait)();
        }
        Err(format!("doorbell still set after {} polls", self.max_polls))
    }

    /// Send `opcode` with `input`; returns the return code and up to `out_max` bytes.
    pub fn exec(&self, opcode: u16, input: &[u8], out_max: usize) -> Result<Reply, String> {
        if input.len() > self.payload_size {
            return Err(format!(
                "input of {} bytes exceeds payload {}",
                input.len(),
                self.payload_size
            ));
        }
        self.wait_idle()
            .map_err(|e| format!("before {opcode:#06x}: {e}"))?;
        let pl = self.base + mb::PAYLOAD as u64;
        for (i, c) in input.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            self.r.write32(pl + 4 * i as u64, u32::from_le_bytes(w));
        }
        let cmd = opcode as u64 | ((input.len() as u64) << mb::CMD_LEN_SHIFT);
        self.r.write64(self.base + mb::COMMAND as u64, cmd);
        self.r
            .write32(self.base + mb::CONTROL as u64, mb::CTRL_DOORBELL);
        self.wait_idle()
            .map_err(|e| format!("opcode {opcode:#06x}: {e}"))?;
        let status = self.r.read64(self.base + mb::STATUS as u64);
        let rc = ((status & mb::STATUS_RC_MASK) >> mb::STATUS_RC_SHIFT) as u16;
        let cmd = self.r.read64(self.base + mb::COMMAND as u64);
        let out_len = ((cmd & mb::CMD_LEN_MASK) >> mb::CMD_LEN_SHIFT) as usize;
        if out_len > self.payload_size {
            return Err(format!(
                "opcode {opcode:#06x}: output length {out_len} > payload size"
            ));
        }
        let n = out_len.min(out_max);
        let mut out = vec![0u8; n];
        for i in (0..n).step_by(4) {
            let w = self.r.read32(pl + i as u64).to_le_bytes();
            let k = (n - i).min(4);
            out[i..i + k].copy_from_slice(&w[..k]);
        }
        Ok(Reply { rc, out })
    }

    /// `exec` that requires Success.
    pub fn ok(&self, opcode: u16, input: &[u8], out_max: usize) -> Result<Vec<u8>, String> {
        let r = self.exec(opcode, input, out_max)?;
        if r.rc != mb::RC_SUCCESS {
            return Err(format!(
                "opcode {opcode:#06x}: return code {:#x} ({})",
                r.rc,
                rc_name(r.rc)
            ));
        }
        Ok(r.out)
    }
}

pub fn rc_name(rc: u16) -> &'static str {
    match rc {
        mb::RC_SUCCESS => "Success",
        mb::RC_BACKGROUND_STARTED => "Background Command Started",
        mb::RC_INVALID_INPUT => "Invalid Input",
        mb::RC_UNSUPPORTED => "Unsupported",
        mb::RC_INTERNAL_ERROR => "Internal Error",
        mb::RC_RETRY_REQUIRED => "Retry Required",
        mb::RC_BUSY => "Busy",
        mb::RC_MEDIA_DISABLED => "Media Disabled",
        mb::RC_FW_TRANSFER_IN_PROGRESS => "FW Transfer in Progress",
        mb::RC_FW_TRANSFER_OUT_OF_ORDER => "FW Transfer Out of Order",
        mb::RC_FW_VERIFICATION_FAILED => "FW Verification Failed",
        mb::RC_ACTIVATION_FAILED_COLD_RESET => "Activation Failed, Cold Reset Required",
        mb::RC_INVALID_PHYSICAL_ADDRESS => "Invalid Physical Address",
        mb::RC_INJECT_POISON_LIMIT => "Inject Poison Limit Reached",
        mb::RC_UNSUPPORTED_MAILBOX => "Unsupported Mailbox",
        mb::RC_INVALID_PAYLOAD_LENGTH => "Invalid Payload Length",
        _ => "other",
    }
}

pub fn le16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
pub fn le32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
pub fn le64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Parse a Command Effects Log into its opcodes (§8.2.9.5.2.1).
pub fn cel_opcodes(log: &[u8]) -> Vec<u16> {
    log.chunks_exact(mb::cel::ENTRY_LEN)
        .map(|e| u16::from_le_bytes([e[0], e[1]]))
        .collect()
}

/// Find the CEL's size in a Get Supported Logs output.
pub fn cel_size(supported: &[u8]) -> Option<u32> {
    use mb::supported_logs as sl;
    let n = le16(supported, sl::OUT_COUNT)? as usize;
    (0..n).find_map(|i| {
        let e = sl::OUT_ENTRIES + i * sl::ENTRY_LEN;
        let uuid = supported.get(e + sl::ENTRY_UUID..e + sl::ENTRY_UUID + 16)?;
        (uuid == mb::CEL_UUID)
            .then(|| le32(supported, e + sl::ENTRY_SIZE))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::fake::FakeRegs;

    const MB: u64 = 0x1000;

    /// A device block with a mailbox at 0x1000 (payload 4 KiB) whose firmware echoes
    /// the input of opcode 0x0001, answers Identify with a 256 MiB capacity, and
    /// returns Unsupported for everything else.
    fn device() -> FakeRegs {
        let r = FakeRegs::new(0x3000);
        r.set(0, 0);
        r.set(4, 2); // count 2
        r.set(0x10, device::CAP_ID_DEVICE_STATUS as u32);
        r.set(0x14, 0x100);
        r.set(0x20, device::CAP_ID_PRIMARY_MAILBOX as u32);
        r.set(0x24, MB as u32);
        r.set(MB, 12);
        r.on_write(|m, off, v| {
            if off == MB + mb::CONTROL as u64 && v & mb::CTRL_DOORBELL != 0 {
                let w = |o: u64| (o / 4) as usize;
                let cmd = m[w(MB + 8)] as u64 | (m[w(MB + 12)] as u64) << 32;
                let op = (cmd & 0xffff) as u16;
                let len = ((cmd >> 16) & 0x1f_ffff) as u32;
                let (rc, out_len) = match op {
                    0x0001 => (0u64, len),
                    mb::OP_IDENTIFY_MEMORY_DEVICE => {
                        let pl = w(MB + 0x20);
                        for i in 0..17 {
                            m[pl + i] = 0;
                        }
                        m[pl + 4] = 1; // total capacity = 1 unit, at byte 0x10
                        (0, mb::IDENTIFY_OUTPUT_LEN as u32)
                    }
                    _ => (mb::RC_UNSUPPORTED as u64, 0),
                };
                m[w(MB + 8)] = op as u32 | (out_len << 16);
                m[w(MB + 12)] = 0;
                m[w(MB + 0x10)] = 0;
                m[w(MB + 0x14)] = rc as u32;
                m[w(MB + 4)] = 0; // doorbell clear
            }
        });
        r
    }

    #[test]
    fn locates_and_runs_commands() {
        let r = device();
        let caps = device_caps(&r, 0).unwrap();
        assert_eq!(caps.mailbox, Some(MB));
        assert_eq!(caps.status, Some(0x100));
        assert_eq!(caps.memdev, None);
        let m = Mailbox::new(&r, MB, &|| {}).unwrap();
        assert_eq!(m.payload_size, 4096);
        let echo = m.ok(0x0001, b"hello, mailbox", 64).unwrap();
        assert_eq!(echo, b"hello, mailbox");
        let id = m.ok(mb::OP_IDENTIFY_MEMORY_DEVICE, &[], 0x100).unwrap();
        assert_eq!(id.len(), mb::IDENTIFY_OUTPUT_LEN);
        assert_eq!(le64(&id, mb::identify::TOTAL_CAPACITY), Some(1));
        let bad = m.exec(0x7f00, &[], 16).unwrap();
        assert_eq!(bad.rc, mb::RC_UNSUPPORTED);
        assert!(m.ok(0x7f00, &[], 16).unwrap_err().contains("Unsupported"));
    }

    #[test]
    fn stuck_doorbell_times_out() {
        let r = FakeRegs::new(0x3000);
        r.set(MB, 8);
        let mut m = Mailbox::new(&r, MB, &|| {}).unwrap();
        m.max_polls = 5;
        assert!(m.exec(0x4000, &[], 0).unwrap_err().contains("doorbell"));
        r.set(MB, 3);
        assert!(Mailbox::new(&r, MB, &|| {}).is_err());
    }

    #[test]
    fn cel_parsing() {
        let mut s = vec![0u8; 8 + 0x14];
        s[0] = 1;
        s[8..24].copy_from_slice(&mb::CEL_UUID);
        s[24..28].copy_from_slice(&12u32.to_le_bytes());
        assert_eq!(cel_size(&s), Some(12));
        s[8] ^= 1;
        assert_eq!(cel_size(&s), None);
        let log = [0x00, 0x40, 0, 0, 0x02, 0x41, 0, 0, 0x03, 0x41, 0x04, 0];
        assert_eq!(cel_opcodes(&log), vec![0x4000, 0x4102, 0x4103]);
    }
}
