//! v. The example vendor firmware's own behaviour (`--vendor-checks hooks|full`):
//! what `examples/README.md` documents for the Acme firmware, which both
//! `examples/vendor-firmware` (Rust, in process) and `examples/firmware.py` (over
//! `--firmware-socket`) implement. Expected values are written here from that
//! documentation, not taken from either implementation.
//!
//! Before the firmware step (the device is still the harness's alone):
//! - v.1 Set Commit Limit (0xC000): input checks, the previous limit returned;
//! - v.2 the commit policy: over the limit Error Not Committed; within it Committed
//!   no sooner than the firmware's 2 ms;
//! - v.3 media comes ready 200 ms after a CXL Reset ends (Memory_Active, Media
//!   Status).
//!
//! After checks a to j, before the lifecycle group k (the kernel and the module own
//! the device by then; the harness still drives the mailbox and the engine itself):
//! - v.4 Raise Event (0xC001): input checks, the record in its log;
//! - v.5 Transfer FW: images without the magic or with a bad CRC refused, good ones
//!   taken whole and in parts;
//! - v.6 Activate FW: online refused (cold reset required), at cold reset taken;
//! - v.7 (full only: an engine operation runs in the vendor's binary, not over the
//!   socket) engine operation 0x01, CRC32 of device memory: RESULT, the completion
//!   interrupt, its errors.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::f_mailbox::{locate, with_mailbox};
use super::h_dma::{transfer, IRQ_NAME};
use super::{need, Ctx, VENDOR_DPA};
use crate::hdmprog::{self, Program};
use crate::mbox::{le16, le64, Mailbox};
use crate::mmio::{MmioMap, Regs};
use crate::report::Reporter;
use crate::sys;
use cxl_regs::dvsec::{device as dv, register_locator as rl};
use cxl_regs::layout::{engine as e, ENGINE_OFFSET};
use cxl_regs::{device, mailbox as mb};

// --- The Acme firmware, as examples/README.md documents it ---------------------------

/// Set Commit Limit: le64 bytes, a non-zero multiple of 256 MiB up to the capacity;
/// returns the previous limit (le64).
const OP_SET_COMMIT_LIMIT: u16 = 0xc000;
/// Raise Event: \[log 0..=3, code\]; the record carries ACME_EVENT_UUID and data \[code\].
const OP_RAISE_EVENT: u16 = 0xc001;
/// A commit within the limit completes 2 ms after it is asked for.
const COMMIT_DELAY: Duration = Duration::from_millis(2);
/// Media is ready 200 ms after a CXL Reset ends.
const MEDIA_AFTER_CXL_RESET: Duration = Duration::from_millis(200);
/// Event record UUID 41434d45-4556-4e54-8000-000000000001 ("ACMEEVNT").
const ACME_EVENT_UUID: [u8; 16] = [
    0x41, 0x43, 0x4d, 0x45, 0x45, 0x56, 0x4e, 0x54, 0x80, 0, 0, 0, 0, 0, 0, 1,
];
/// Firmware image: 16-byte revision, "ACME", body, CRC32 (IEEE) of all that, le32.
const IMAGE_MAGIC: &[u8; 4] = b"ACME";
/// Engine operation 0x01: CRC32 (IEEE) of device memory [SRC, SRC + LEN).
const OP_CRC32: u8 = 0x01;

const MIB: u64 = 1 << 20;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bitwise.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An Acme firmware image with `revision` and `body`; `good`: a correct CRC.
fn image(revision: &[u8; 16], body_len: usize, good: bool) -> Vec<u8> {
    let mut v = revision.to_vec();
    v.extend_from_slice(IMAGE_MAGIC);
    v.extend((0..body_len).map(|i| (i as u8).wrapping_mul(7)));
    let crc = crc32(&v) ^ u32::from(!good);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// A Transfer FW input (CXL r3.1 §8.2.9.3.2): 128-byte header, then `data`.
fn transfer_part(action: u8, slot: u8, offset: usize, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; mb::transfer_fw::DATA];
    v[mb::transfer_fw::ACTION] = action;
    v[mb::transfer_fw::SLOT] = slot;
    let units = (offset / mb::transfer_fw::OFFSET_UNIT) as u32;
    v[mb::transfer_fw::OFFSET..mb::transfer_fw::OFFSET + 4].copy_from_slice(&units.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn wait() {
    std::thread::sleep(Duration::from_micros(100));
}

fn rc_of(m: &Mailbox<'_, MmioMap>, opcode: u16, input: &[u8]) -> Result<u16, String> {
    Ok(m.exec(opcode, input, 0)?.rc)
}

fn expect_rc(what: &str, got: u16, want: u16) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: return code {got:#x} ({}), expected {want:#x} ({})",
            crate::mbox::rc_name(got),
            crate::mbox::rc_name(want)
        ))
    }
}

/// Read `N` bytes of config space at `off` (sysfs `config`).
fn cfg_read<const N: usize>(ctx: &Ctx, off: u64) -> Result<[u8; N], String> {
    let p = format!("{}/config", ctx.dev_path()?);
    let f = std::fs::File::open(&p).map_err(|e| format!("{p}: {e}"))?;
    let mut b = [0u8; N];
    f.read_exact_at(&mut b, off)
        .map_err(|e| format!("{p} at {off:#x}: {e}"))?;
    Ok(b)
}

/// Checks that need the device before the firmware step: run after a, before b.
pub fn run_early(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check(
        "v.1",
        "Set Commit Limit (0xC000): input checked, previous limit returned",
        || {
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            with_mailbox(ctx, |m| {
                let le = |v: u64| v.to_le_bytes();
                expect_rc(
                    "4-byte input",
                    rc_of(m, OP_SET_COMMIT_LIMIT, &[0; 4])?,
                    mb::RC_INVALID_PAYLOAD_LENGTH,
                )?;
                expect_rc(
                    "limit 0",
                    rc_of(m, OP_SET_COMMIT_LIMIT, &le(0))?,
                    mb::RC_INVALID_INPUT,
                )?;
                expect_rc(
                    "limit 1 MiB",
                    rc_of(m, OP_SET_COMMIT_LIMIT, &le(MIB))?,
                    mb::RC_INVALID_INPUT,
                )?;
                expect_rc(
                    "limit above the capacity",
                    rc_of(m, OP_SET_COMMIT_LIMIT, &le(cap + (256 * MIB)))?,
                    mb::RC_INVALID_INPUT,
                )?;
                let prev = m.ok(OP_SET_COMMIT_LIMIT, &le(256 * MIB), 8)?;
                let back = m.ok(OP_SET_COMMIT_LIMIT, &le(cap), 8)?;
                let (prev, back) = (le64(&prev, 0), le64(&back, 0));
                if prev != Some(cap) || back != Some(256 * MIB) {
                    return Err(format!(
                        "previous limits {prev:x?} then {back:x?}, expected {cap:#x} then {:#x}",
                        256 * MIB
                    ));
                }
                Ok(format!(
                    "invalid lengths and values refused; limit {cap:#x} -> 256 MiB -> back"
                ))
            })
        },
    );

    rep.check(
        "v.2",
        "commit policy: over the limit Error Not Committed, within it Committed after 2 ms",
        || {
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            if cap < 512 * MIB {
                return Err(format!("capacity {cap:#x}: need 512 MiB to test the limit"));
            }
            let (bir, comp) = ctx.block(rl::BLOCK_COMPONENT)?;
            with_mailbox(ctx, |m| {
                m.ok(OP_SET_COMMIT_LIMIT, &(256 * MIB).to_le_bytes(), 8)
            })?;
            let bar0 = ctx.bar(bir)?;
            let hdm = hdmprog::find_hdm(bar0, comp)?;
            let prog = |size| Program {
                base: 0x1_0000_0000,
                size,
                iw: 0,
                ig: 0,
                host_only: false,
                lock_on_commit: false,
                skip_or_targets: 0,
            };
            let over = hdmprog::commit(bar0, hdm, 0, &prog(512 * MIB), &wait);
            let over_ok = matches!(&over, Err(e) if e.contains("Error Not Committed"));
            // Clear Commit, then the allowed size: time from the write to Committed.
            let ctl =
                hdm + u64::from(cxl_regs::hdm::decoder_offset(0) + cxl_regs::hdm::DEC_CONTROL);
            bar0.write32(ctl, 0);
            let t = Instant::now();
            let within = hdmprog::commit(bar0, hdm, 0, &prog(256 * MIB), &wait);
            let took = t.elapsed();
            // Leave decoder 0 and the limit as the firmware step expects them.
            bar0.write32(ctl, 0);
            with_mailbox(ctx, |m| m.ok(OP_SET_COMMIT_LIMIT, &cap.to_le_bytes(), 8))?;
            if !over_ok {
                return Err(format!("512 MiB over a 256 MiB limit: {over:x?}"));
            }
            within.map_err(|e| format!("256 MiB within the limit: {e}"))?;
            if took < COMMIT_DELAY {
                return Err(format!(
                    "committed after {took:?}, before the firmware's 2 ms"
                ));
            }
            Ok(format!(
                "512 MiB refused; 256 MiB committed after {:.1} ms",
                took.as_secs_f64() * 1e3
            ))
        },
    );

    rep.check(
        "v.3",
        "media ready 200 ms after a CXL Reset: Memory_Active and Media Status follow",
        || {
            let bdf = need(&ctx.bdf, "device (a.1)")?;
            let dvsec = need(&ctx.dvsec_dev, "DVSEC id 0 (a.4)")? as u64;
            let (bir, _, memdev) = locate(ctx)?;
            let memdev = memdev.ok_or("no memory-device status capability")?;
            let media = |ctx: &mut Ctx| -> Result<(bool, u64), String> {
                let lo = u32::from_le_bytes(cfg_read::<4>(ctx, dvsec + dv::range_size_low(0) as u64)?);
                let st = ctx.bar(bir)?.read64(memdev + device::memdev::STATUS as u64);
                Ok((lo & dv::RANGE_MEM_ACTIVE != 0, device::memdev::media_status(st)))
            };
            let before = media(ctx)?;
            if before != (true, device::memdev::MEDIA_READY) {
                return Err(format!("before the reset: Memory_Active, media status {before:?}"));
            }
            let ctrl2 = dvsec + dv::CTRL2 as u64;
            sys::config_write(&bdf, ctrl2, &dv::CTRL2_INITIATE_CXL_RESET.to_le_bytes())?;
            let t = Instant::now();
            let complete = loop {
                let s2 = u16::from_le_bytes(cfg_read::<2>(ctx, dvsec + dv::STATUS2 as u64)?);
                if s2 & dv::STATUS2_CXL_RESET_COMPLETE != 0 {
                    break Instant::now();
                }
                if s2 & dv::STATUS2_CXL_RESET_ERROR != 0 {
                    return Err(format!("Status2 {s2:#x}: CXL Reset Error"));
                }
                if t.elapsed() > Duration::from_secs(2) {
                    return Err(format!("Status2 {s2:#x}: no CXL Reset Complete within 2 s"));
                }
                sys::sleep_ms(1);
            };
            let first = media(ctx)?;
            if first != (false, device::memdev::MEDIA_NOT_READY) {
                return Err(format!(
                    "right after Reset Complete: Memory_Active {}, media status {} (want clear, 0 not ready)",
                    first.0, first.1
                ));
            }
            let ready = loop {
                let now = media(ctx)?;
                if now.0 {
                    if now.1 != device::memdev::MEDIA_READY {
                        return Err(format!("Memory_Active set, media status {}", now.1));
                    }
                    break complete.elapsed();
                }
                if complete.elapsed() > Duration::from_secs(3) {
                    return Err(format!("media not ready 3 s after the reset: {now:?}"));
                }
                sys::sleep_ms(5);
            };
            // The reset completed at most a poll before the harness saw it.
            if ready + Duration::from_millis(50) < MEDIA_AFTER_CXL_RESET {
                return Err(format!("ready {ready:?} after the reset, before the firmware's 200 ms"));
            }
            Ok(format!(
                "reset took {:.0} ms; not ready, then ready {:.0} ms after Reset Complete",
                (complete - t).as_secs_f64() * 1e3,
                ready.as_secs_f64() * 1e3
            ))
        },
    );
}

/// Checks after a to j, before the lifecycle group k.
pub fn run_late(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check(
        "v.4",
        "Raise Event (0xC001): input checked, the record in the log it names",
        || {
            with_mailbox(ctx, |m| {
                expect_rc(
                    "1-byte input",
                    rc_of(m, OP_RAISE_EVENT, &[1])?,
                    mb::RC_INVALID_PAYLOAD_LENGTH,
                )?;
                expect_rc(
                    "log 4",
                    rc_of(m, OP_RAISE_EVENT, &[4, 0x42])?,
                    mb::RC_INVALID_INPUT,
                )?;
                let warning = mb::get_event_records::LOG_WARNING;
                m.ok(OP_RAISE_EVENT, &[warning, 0x42], 0)?;
                let out = m.ok(mb::OP_GET_EVENT_RECORDS, &[warning], m.payload_size)?;
                let count = usize::from(le16(&out, 0x14).unwrap_or(0));
                let len = mb::event_record::LEN;
                let records: Vec<&[u8]> = (0..count)
                    .filter_map(|i| out.get(0x20 + i * len..0x20 + (i + 1) * len))
                    .collect();
                let ours = records
                    .iter()
                    .filter(|r| r[..16] == ACME_EVENT_UUID && r[mb::event_record::DATA] == 0x42)
                    .count();
                // Clear what was read, by handle (Clear All is for an overflowed log).
                let mut clear = vec![warning, 0, records.len() as u8, 0, 0, 0];
                for r in &records {
                    let h = mb::event_record::HANDLE;
                    clear.extend_from_slice(&r[h..h + 2]);
                }
                if !records.is_empty() {
                    m.ok(mb::OP_CLEAR_EVENT_RECORDS, &clear, 0)?;
                }
                if ours != 1 {
                    let uuids: Vec<String> = records
                        .iter()
                        .map(|r| format!("{:02x?}", &r[..16]))
                        .collect();
                    return Err(format!(
                        "{count} Warning record(s), {ours} of them Acme's: {uuids:?}"
                    ));
                }
                Ok(
                    "bad length and log refused; 1 Warning record with the Acme UUID, code 0x42"
                        .into(),
                )
            })
        },
    );

    rep.check(
        "v.5",
        "Transfer FW: no magic or a bad CRC refused; good images taken whole and in parts",
        || {
            with_mailbox(ctx, |m| {
                let rev = b"acme-fw 2.0.0\0\0\0";
                let mut no_magic = image(rev, 100, true);
                no_magic[16..20].copy_from_slice(b"XXXX");
                let verif = mb::RC_FW_VERIFICATION_FAILED;
                expect_rc("no magic", rc_of(m, mb::OP_TRANSFER_FW, &transfer_part(0, 2, 0, &no_magic))?, verif)?;
                let bad = image(rev, 100, false);
                expect_rc("bad CRC", rc_of(m, mb::OP_TRANSFER_FW, &transfer_part(0, 2, 0, &bad))?, verif)?;
                let good = image(rev, 100, true);
                m.ok(mb::OP_TRANSFER_FW, &transfer_part(0, 2, 0, &good), 0)?;
                let info = m.ok(mb::OP_GET_FW_INFO, &[], 0x50)?;
                let slot2 = &info[mb::fw_info::SLOT1_REVISION + 16..mb::fw_info::SLOT1_REVISION + 32];
                if slot2 != rev {
                    return Err(format!("slot 2 revision {slot2:02x?} after a full transfer"));
                }
                // In parts: Initiate 256 bytes, Continue 256, End with the rest; a bad
                // CRC shows only at the end.
                let rev3 = b"acme-fw 3.0.0\0\0\0";
                for (good, want) in [(false, verif), (true, mb::RC_SUCCESS)] {
                    let img = image(rev3, 600, good);
                    let rcs = [
                        rc_of(m, mb::OP_TRANSFER_FW, &transfer_part(1, 0, 0, &img[..256]))?,
                        rc_of(m, mb::OP_TRANSFER_FW, &transfer_part(2, 0, 256, &img[256..512]))?,
                        rc_of(m, mb::OP_TRANSFER_FW, &transfer_part(3, 2, 512, &img[512..]))?,
                    ];
                    if rcs != [mb::RC_SUCCESS, mb::RC_SUCCESS, want] {
                        return Err(format!("parts of an image (CRC good: {good}): return codes {rcs:x?}"));
                    }
                }
                let info = m.ok(mb::OP_GET_FW_INFO, &[], 0x50)?;
                let slot2 = &info[mb::fw_info::SLOT1_REVISION + 16..mb::fw_info::SLOT1_REVISION + 32];
                if slot2 != rev3 {
                    return Err(format!("slot 2 revision {slot2:02x?} after a transfer in parts"));
                }
                Ok("refused: no magic, bad CRC (whole and in parts); taken: 2.0.0 whole, 3.0.0 in 3 parts".into())
            })
        },
    );

    rep.check(
        "v.6",
        "Activate FW: online refused (cold reset required), at cold reset taken",
        || {
            with_mailbox(ctx, |m| {
                use mb::activate_fw as a;
                expect_rc(
                    "online activation",
                    rc_of(m, mb::OP_ACTIVATE_FW, &[a::ACTION_ONLINE, 2])?,
                    mb::RC_ACTIVATION_FAILED_COLD_RESET,
                )?;
                m.ok(mb::OP_ACTIVATE_FW, &[a::ACTION_COLD_RESET, 2], 0)?;
                let info = m.ok(mb::OP_GET_FW_INFO, &[], 0x50)?;
                let slots = info[mb::fw_info::SLOT_INFO];
                let (active, staged) = (slots & 7, (slots >> 3) & 7);
                if (active, staged) != (1, 2) {
                    return Err(format!(
                        "FW slot info {slots:#x}: active {active}, staged {staged}"
                    ));
                }
                Ok(
                    "online: Activation Failed, Cold Reset Required; slot 2 staged, slot 1 active"
                        .into(),
                )
            })
        },
    );

    if !ctx.cfg.vendor_checks.engine() {
        return;
    }
    rep.check(
        "v.7",
        "engine operation 0x01 (CRC32 of device memory): RESULT, completion interrupt, errors",
        || {
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            let bdf = need(&ctx.bdf, "device (a.1)")?;
            let p = format!("{}/resource4", ctx.dev_path()?);
            let bar4 = MmioMap::open_resource(&p)?;
            let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8 ^ (i >> 7) as u8).collect();
            ctx.bar2()?.write_bytes(VENDOR_DPA, &data);
            let mut back = vec![0u8; data.len()];
            ctx.bar2()?.read_bytes(VENDOR_DPA, &mut back);
            let want = crc32(&back);
            let irqs = sys::read_irq_count(IRQ_NAME, &bdf)?;
            let ctrl = |op: u8| (u32::from(op) << e::CONTROL_OP_SHIFT) | e::CONTROL_IRQ_ENABLE;
            transfer(&bar4, &bdf, VENDOR_DPA, 0, data.len() as u64, ctrl(OP_CRC32))
                .map_err(|st| format!("status {st:#x}"))?;
            let result = bar4.read64(ENGINE_OFFSET + e::RESULT);
            let irqs_after = sys::read_irq_count(IRQ_NAME, &bdf)?;
            let code = |r: Result<u32, u32>| r.err().map(|st| (st & e::STATUS_ERR_MASK) >> e::STATUS_ERR_SHIFT);
            let past_end = code(transfer(&bar4, &bdf, cap - 64, 0, 128, ctrl(OP_CRC32)));
            let unknown = code(transfer(&bar4, &bdf, VENDOR_DPA, 0, 64, ctrl(0x7f)));
            if result != u64::from(want) {
                return Err(format!("RESULT {result:#x}, CRC32 of the bytes {want:#x}"));
            }
            if irqs_after <= irqs {
                return Err(format!("{IRQ_NAME} {irqs} -> {irqs_after}: no completion interrupt"));
            }
            if past_end != Some(e::ERR_DEVICE_RANGE) || unknown != Some(e::ERR_UNSUPPORTED_OP) {
                return Err(format!(
                    "error codes {past_end:?} (past the end) and {unknown:?} (op 0x7f), expected {} and {}",
                    e::ERR_DEVICE_RANGE,
                    e::ERR_UNSUPPORTED_OP
                ));
            }
            Ok(format!(
                "CRC32 {want:#010x} of 4 KiB at DPA {VENDOR_DPA:#x}; {IRQ_NAME} {irqs} -> {irqs_after}; range and unknown-op errors"
            ))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_the_check_string() {
        // The CRC-32 check value of "123456789" (IEEE 802.3).
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn images_carry_magic_and_crc() {
        let img = image(b"rev-0000000000ab", 10, true);
        assert_eq!(img.len(), 16 + 4 + 10 + 4);
        assert_eq!(&img[16..20], b"ACME");
        let n = img.len() - 4;
        assert_eq!(crc32(&img[..n]).to_le_bytes(), img[n..]);
        let bad = image(b"rev-0000000000ab", 10, false);
        assert_ne!(crc32(&bad[..n]).to_le_bytes(), bad[n..]);
    }
}
