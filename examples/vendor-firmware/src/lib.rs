//! Firmware of the Acme CX-2, a made-up CXL Type-2 accelerator, prototyped on
//! cxl-accel's firmware SDK. `examples/README.md` documents its behaviour (the same
//! as `examples/firmware.py`, which implements it over `--firmware-socket`):
//!
//! - **Commit policy**: a decoder commit takes 2 ms; one larger than the commit limit
//!   (at first the whole capacity) is refused with Error Not Committed.
//! - **Vendor opcodes**: 0xC000 Set Commit Limit, 0xC001 Raise Event, each with its
//!   input checked.
//! - **Media readiness**: 100 ms after a conventional reset (power-on included),
//!   200 ms after a CXL Reset ends, at once after an FLR.
//! - **Firmware images**: Transfer FW takes only images that carry the `ACME` magic
//!   after their 16-byte revision and end in the CRC32 of everything before it;
//!   Activate FW only at the next cold reset.
//! - **Engine operation 0x01**: the CRC32 of device memory, on the engine in BAR4.

use accel_type2::engine::check_device_source;
use accel_type2::firmware::{param_u64, ParamError};
use accel_type2::{
    CommitDecision, DeviceMemory, EngineOperation, EventLog, EventRecord, Firmware, FwAction,
    FwError, FwPart, GuestMemory, MediaReadiness, OpContext, OpError, OpRequest, ResetKind,
    ReturnCode,
};

/// Set Commit Limit: input le64 bytes, a non-zero multiple of 256 MiB no larger than
/// the capacity; output the previous limit, le64.
pub const OP_SET_COMMIT_LIMIT: u16 = 0xc000;
/// Raise Event: input [log (0 informational .. 3 fatal), code]; adds a record with
/// [`EVENT_UUID`] and data [code] to that log; no output.
pub const OP_RAISE_EVENT: u16 = 0xc001;
/// How long a decoder commit takes.
pub const COMMIT_DELAY_NS: u64 = 2_000_000;
/// Media readiness after a conventional reset, and after a CXL Reset ends.
pub const MEDIA_AFTER_RESET_NS: u64 = 100_000_000;
pub const MEDIA_AFTER_CXL_RESET_NS: u64 = 200_000_000;
/// The UUID of Acme's event records, 41434d45-4556-4e54-8000-000000000001.
pub const EVENT_UUID: [u8; 16] = [
    0x41, 0x43, 0x4d, 0x45, 0x45, 0x56, 0x4e, 0x54, 0x80, 0, 0, 0, 0, 0, 0, 1,
];
/// Images carry this after their 16-byte revision.
pub const IMAGE_MAGIC: &[u8; 4] = b"ACME";
/// The largest image Acme's flash takes.
pub const MAX_IMAGE: usize = 1 << 20;
/// Engine operation (CONTROL.OP) of [`Crc32Op`].
pub const OP_CRC32: u8 = 0x01;
/// The longest range [`Crc32Op`] takes.
pub const MAX_CRC_LEN: u64 = 16 << 20;
/// Decoder sizes are multiples of 256 MiB (Decoder Size Low bits 27:0 read 0).
const GRANULE: u64 = 256 << 20;

/// CRC-32 (IEEE 802.3: reflected, polynomial 0xEDB88320) lookup table.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// A running CRC-32: start with [`Crc32::new`], [`Crc32::update`], then
/// [`Crc32::value`].
#[derive(Debug, Clone, Copy)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    pub fn new() -> Self {
        Self(!0)
    }
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xff) as usize] ^ (self.0 >> 8);
        }
    }
    pub fn value(&self) -> u32 {
        !self.0
    }
}

/// The CRC-32 of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.value()
}

/// Whether `image` is one Acme takes: revision, magic, body, CRC32 of the rest.
pub fn image_ok(image: &[u8]) -> bool {
    if image.len() < 16 + IMAGE_MAGIC.len() + 4 || image.len() > MAX_IMAGE {
        return false;
    }
    let (head, crc) = image.split_at(image.len() - 4);
    head[16..20] == *IMAGE_MAGIC && crc32(head).to_le_bytes() == crc
}

/// The Acme CX-2 firmware.
#[derive(Debug, Default)]
pub struct AcmeFirmware {
    /// Device memory size (the device tells it at power-on).
    capacity: u64,
    /// The largest decoder a commit may map; `None`: the capacity.
    commit_limit: Option<u64>,
    /// The image of a Transfer FW in parts, so far.
    image: Option<Vec<u8>>,
    /// Event records raised, for the device's logs.
    events: Vec<(EventLog, EventRecord)>,
}

impl AcmeFirmware {
    fn limit(&self) -> u64 {
        self.commit_limit.unwrap_or(self.capacity)
    }

    fn set_commit_limit(&mut self, input: &[u8], output: &mut Vec<u8>) -> Result<(), ReturnCode> {
        let bytes: [u8; 8] = input
            .try_into()
            .map_err(|_| ReturnCode::InvalidPayloadLength)?;
        let limit = u64::from_le_bytes(bytes);
        if limit == 0 || !limit.is_multiple_of(GRANULE) || limit > self.capacity {
            return Err(ReturnCode::InvalidInput);
        }
        output.extend_from_slice(&self.limit().to_le_bytes());
        self.commit_limit = Some(limit);
        Ok(())
    }

    fn raise_event(&mut self, input: &[u8]) -> Result<(), ReturnCode> {
        let [log, code] = input else {
            return Err(ReturnCode::InvalidPayloadLength);
        };
        let log = EventLog::from_type(*log).ok_or(ReturnCode::InvalidInput)?;
        self.events.push((
            log,
            EventRecord {
                uuid: EVENT_UUID,
                flags: 0,
                data: vec![*code],
            },
        ));
        Ok(())
    }
}

impl Firmware for AcmeFirmware {
    fn name(&self) -> &str {
        "acme"
    }

    fn on_commit(&mut self, index: usize, decoder: &hdm::DecoderState) -> CommitDecision {
        if decoder.size > self.limit() {
            eprintln!(
                "acme: decoder {index}: {:#x} bytes is over the commit limit {:#x}",
                decoder.size,
                self.limit()
            );
            return CommitDecision::Reject;
        }
        CommitDecision::Delay(COMMIT_DELAY_NS)
    }

    fn power_on_decoders(&mut self, capacity: u64) -> Vec<(usize, hdm::DecoderState)> {
        self.capacity = capacity;
        Vec::new()
    }

    fn on_reset(&mut self, _kind: ResetKind) {
        // Every reset drops the mailbox's partial transfer; so does the flash.
        self.image = None;
    }

    fn media_ready(&mut self, kind: ResetKind) -> MediaReadiness {
        MediaReadiness::ReadyAfter(match kind {
            ResetKind::Conventional => MEDIA_AFTER_RESET_NS,
            ResetKind::Flr => 0,
            ResetKind::CxlReset => MEDIA_AFTER_CXL_RESET_NS,
        })
    }

    fn vendor_command(
        &mut self,
        opcode: u16,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode> {
        match opcode {
            OP_SET_COMMIT_LIMIT => self.set_commit_limit(input, output),
            OP_RAISE_EVENT => self.raise_event(input),
            _ => Err(ReturnCode::Unsupported),
        }
    }

    fn transfer_fw(&mut self, part: &FwPart<'_>) -> Result<(), FwError> {
        let magic_ok = |d: &[u8]| d.get(16..20) == Some(&IMAGE_MAGIC[..]);
        match part.action {
            FwAction::Full => {
                if image_ok(part.data) {
                    Ok(())
                } else {
                    Err(FwError::Verification)
                }
            }
            FwAction::Initiate => {
                if !magic_ok(part.data) || part.data.len() > MAX_IMAGE {
                    return Err(FwError::Verification);
                }
                self.image = Some(part.data.to_vec());
                Ok(())
            }
            FwAction::Continue | FwAction::End => {
                let Some(mut image) = self.image.take() else {
                    return Err(FwError::OutOfOrder);
                };
                if image.len() + part.data.len() > MAX_IMAGE {
                    return Err(FwError::Verification);
                }
                image.extend_from_slice(part.data);
                if part.action == FwAction::Continue {
                    self.image = Some(image);
                    return Ok(());
                }
                if image_ok(&image) {
                    Ok(())
                } else {
                    Err(FwError::Verification)
                }
            }
            FwAction::Abort => {
                self.image = None;
                Ok(())
            }
        }
    }

    fn activate_fw(&mut self, _slot: u8, online: bool) -> Result<(), FwError> {
        // The CX-2 loads firmware from flash only at a cold reset.
        if online {
            Err(FwError::ActivationNeedsColdReset)
        } else {
            Ok(())
        }
    }

    fn take_events(&mut self) -> Vec<(EventLog, EventRecord)> {
        std::mem::take(&mut self.events)
    }

    fn set_param(&mut self, key: &str, value: &str) -> Result<(), ParamError> {
        match key {
            "commit_limit" => {
                let v = param_u64(key, value)?;
                if v == 0 || !v.is_multiple_of(GRANULE) {
                    return Err(ParamError::invalid(
                        key,
                        value,
                        "a non-zero multiple of 256 MiB",
                    ));
                }
                self.commit_limit = Some(v);
                Ok(())
            }
            _ => Err(ParamError::unknown(self.name(), key, &["commit_limit"])),
        }
    }

    fn params(&self) -> Vec<(String, String)> {
        vec![("commit_limit".into(), format!("{:#x}", self.limit()))]
    }
}

/// Engine operation 0x01: the CRC32 of device memory `[SRC, SRC + LEN)` into RESULT.
pub struct Crc32Op;

impl EngineOperation for Crc32Op {
    fn name(&self) -> &str {
        "acme-crc32"
    }

    fn check(&self, req: &OpRequest, ctx: &OpContext<'_>) -> Result<(), OpError> {
        if req.len > MAX_CRC_LEN {
            return Err(OpError::Length);
        }
        check_device_source(req, ctx)
    }

    fn run(
        &self,
        req: &OpRequest,
        mem: &mut dyn DeviceMemory,
        _guest: &dyn GuestMemory,
        stop: &dyn Fn() -> bool,
    ) -> Result<u64, OpError> {
        let mut crc = Crc32::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut done = 0u64;
        while done < req.len {
            if stop() {
                return Err(OpError::Aborted);
            }
            let n = (req.len - done).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            mem.read(req.src + done, chunk)
                .map_err(|_| OpError::DeviceRange)?;
            crc.update(chunk);
            done += n as u64;
        }
        Ok(u64::from(crc.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The CRC-32 check value of "123456789" (IEEE 802.3).
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let mut c = Crc32::new();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.value(), 0xcbf4_3926, "in pieces");
    }

    fn image(good: bool) -> Vec<u8> {
        let mut v = b"acme-fw 9.9.9\0\0\0ACME".to_vec();
        v.extend_from_slice(&[1, 2, 3]);
        let crc = crc32(&v) ^ u32::from(!good);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    #[test]
    fn images_need_the_magic_and_the_crc() {
        assert!(image_ok(&image(true)));
        assert!(!image_ok(&image(false)));
        let mut no_magic = image(true);
        no_magic[16] = b'X';
        assert!(!image_ok(&no_magic));
        assert!(!image_ok(b"short"));
    }

    #[test]
    fn commit_limit_and_its_opcode() {
        let mut fw = AcmeFirmware::default();
        fw.power_on_decoders(1 << 30);
        let d = |size| hdm::DecoderState {
            size,
            ..Default::default()
        };
        assert_eq!(
            fw.on_commit(0, &d(1 << 30)),
            CommitDecision::Delay(COMMIT_DELAY_NS)
        );
        let mut out = Vec::new();
        assert_eq!(
            fw.vendor_command(OP_SET_COMMIT_LIMIT, &[0; 4], &mut out),
            Err(ReturnCode::InvalidPayloadLength)
        );
        for bad in [0u64, 1 << 20, 2 << 30] {
            assert_eq!(
                fw.vendor_command(OP_SET_COMMIT_LIMIT, &bad.to_le_bytes(), &mut out),
                Err(ReturnCode::InvalidInput),
                "{bad:#x}"
            );
        }
        fw.vendor_command(OP_SET_COMMIT_LIMIT, &(256u64 << 20).to_le_bytes(), &mut out)
            .unwrap();
        assert_eq!(out, (1u64 << 30).to_le_bytes());
        assert_eq!(fw.on_commit(0, &d(512 << 20)), CommitDecision::Reject);
        assert_eq!(
            fw.on_commit(0, &d(256 << 20)),
            CommitDecision::Delay(COMMIT_DELAY_NS)
        );
    }

    #[test]
    fn raise_event_checks_its_input() {
        let mut fw = AcmeFirmware::default();
        let mut out = Vec::new();
        assert_eq!(
            fw.vendor_command(OP_RAISE_EVENT, &[1], &mut out),
            Err(ReturnCode::InvalidPayloadLength)
        );
        assert_eq!(
            fw.vendor_command(OP_RAISE_EVENT, &[4, 0], &mut out),
            Err(ReturnCode::InvalidInput)
        );
        fw.vendor_command(OP_RAISE_EVENT, &[1, 0x42], &mut out)
            .unwrap();
        let ev = fw.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, EventLog::Warning);
        assert_eq!(
            (ev[0].1.uuid, ev[0].1.data.clone()),
            (EVENT_UUID, vec![0x42])
        );
        assert!(fw.take_events().is_empty());
    }

    #[test]
    fn images_in_parts_are_checked_at_the_end() {
        let mut fw = AcmeFirmware::default();
        let mut img = image(true);
        img.resize(300, 0);
        // Re-seal: the CRC over the padded body.
        let n = img.len() - 4;
        let crc = crc32(&img[..n]).to_le_bytes();
        img[n..].copy_from_slice(&crc);
        let part = |action, offset: usize, data| FwPart {
            action,
            slot: 2,
            offset,
            data,
        };
        fw.transfer_fw(&part(FwAction::Initiate, 0, &img[..128]))
            .unwrap();
        fw.transfer_fw(&part(FwAction::Continue, 128, &img[128..256]))
            .unwrap();
        assert_eq!(
            fw.transfer_fw(&part(FwAction::End, 256, &img[256..])),
            Ok(())
        );
        fw.transfer_fw(&part(FwAction::Initiate, 0, &img[..128]))
            .unwrap();
        let mut tail = img[256..].to_vec();
        tail[0] ^= 1;
        assert_eq!(
            fw.transfer_fw(&part(FwAction::End, 128, &tail)),
            Err(FwError::Verification)
        );
        assert_eq!(
            fw.transfer_fw(&part(FwAction::End, 0, &img)),
            Err(FwError::OutOfOrder),
            "nothing in progress"
        );
        assert_eq!(
            fw.activate_fw(2, true),
            Err(FwError::ActivationNeedsColdReset)
        );
        assert_eq!(fw.activate_fw(2, false), Ok(()));
    }
}
