//! f. The mailbox, driven from userspace through BAR0 (resource0): a DEVMEM memdev
//! has no mailbox ioctls, so the harness is the only client.

use super::{need, Ctx, POISON_DPA};
use crate::mbox::{self, le16, le32, le64, Mailbox};
use crate::mmio::Regs;
use crate::report::Reporter;
use crate::sys;
use cxl_regs::dvsec::register_locator as rl;
use cxl_regs::{device, mailbox as mb};

/// Opcodes the device implements (the mailbox crate's command set, mailbox/src/
/// commands.rs, from CXL r3.1 §8.2.9); the CEL must list them.
pub const IMPLEMENTED: [u16; 20] = [
    mb::OP_GET_EVENT_RECORDS,
    mb::OP_CLEAR_EVENT_RECORDS,
    mb::OP_GET_EVENT_INTERRUPT_POLICY,
    mb::OP_SET_EVENT_INTERRUPT_POLICY,
    mb::OP_GET_FW_INFO,
    mb::OP_TRANSFER_FW,
    mb::OP_ACTIVATE_FW,
    mb::OP_GET_TIMESTAMP,
    mb::OP_SET_TIMESTAMP,
    mb::OP_GET_SUPPORTED_LOGS,
    mb::OP_GET_LOG,
    mb::OP_IDENTIFY_MEMORY_DEVICE,
    mb::OP_GET_PARTITION_INFO,
    mb::OP_GET_LSA,
    mb::OP_SET_LSA,
    mb::OP_GET_HEALTH_INFO,
    mb::OP_GET_POISON_LIST,
    mb::OP_INJECT_POISON,
    mb::OP_CLEAR_POISON,
    mb::OP_SANITIZE,
];

/// An opcode no spec table defines: the device must answer Unsupported.
pub const UNKNOWN_OPCODE: u16 = 0x7f00;
const LSA_TEST_OFFSET: u32 = 0x100;

fn wait() {
    std::thread::sleep(std::time::Duration::from_micros(100));
}

/// Offset of the primary mailbox in BAR0, and the memory-device status register.
pub fn locate(ctx: &mut Ctx) -> Result<(u8, u64, Option<u64>), String> {
    let (bir, blk) = ctx.block(rl::BLOCK_MEMORY_DEVICE)?;
    let bar0 = ctx.bar(bir)?;
    let caps = mbox::device_caps(bar0, blk)?;
    let m = caps
        .mailbox
        .ok_or_else(|| format!("no primary mailbox capability: {caps:x?}"))?;
    Ok((bir, m, caps.memdev))
}

pub fn with_mailbox<T>(
    ctx: &mut Ctx,
    f: impl FnOnce(&Mailbox<'_, crate::mmio::MmioMap>) -> Result<T, String>,
) -> Result<T, String> {
    let (bir, m, _) = locate(ctx)?;
    let bar0 = ctx.bar(bir)?;
    let mb = Mailbox::new(bar0, m, &wait)?;
    f(&mb)
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    if !ctx.cfg.mailbox {
        rep.check(
            "f.0",
            "mailbox off: no memory-device register block",
            || {
                let _ = need(&ctx.dvsec_regloc, "Register Locator (a.4)")?;
                match ctx.block(rl::BLOCK_MEMORY_DEVICE) {
                    Err(_) => Ok("Register Locator lists no block id 3".into()),
                    Ok((b, o)) => Err(format!("block id 3 at BAR{b}+{o:#x}")),
                }
            },
        );
        return;
    }

    rep.check(
        "f.1",
        "mailbox found via the device capabilities; media and mailbox ready",
        || {
            let (bir, m, memdev) = locate(ctx)?;
            let memdev = memdev.ok_or("no memory-device status capability (id 0x4000)")?;
            let bar0 = ctx.bar(bir)?;
            let st = bar0.read64(memdev + device::memdev::STATUS as u64);
            let media = device::memdev::media_status(st);
            if media != device::memdev::MEDIA_READY
                || st & device::memdev::STATUS_MAILBOX_READY == 0
            {
                return Err(format!(
                    "memory device status {st:#x}: media {media}, mailbox ready {}",
                    st >> 4 & 1
                ));
            }
            let mbx = Mailbox::new(bar0, m, &wait)?;
            Ok(format!(
                "mailbox at BAR{bir}+{m:#x}, payload {} bytes, memdev status {st:#x}",
                mbx.payload_size
            ))
        },
    );

    let capacity = ctx.capacity;
    rep.check("f.2", "Identify: capacity matches (256 MiB units, volatile only)", || {
        let cap = need(&capacity, "capacity (a.5)")?;
        let out = with_mailbox(ctx, |m| m.ok(mb::OP_IDENTIFY_MEMORY_DEVICE, &[], mb::IDENTIFY_OUTPUT_LEN))?;
        if out.len() < mb::IDENTIFY_OUTPUT_LEN {
            return Err(format!("Identify returned {} bytes, expected {:#x}", out.len(), mb::IDENTIFY_OUTPUT_LEN));
        }
        use mb::identify as id;
        let total = le64(&out, id::TOTAL_CAPACITY).unwrap();
        let vol = le64(&out, id::VOLATILE_ONLY_CAPACITY).unwrap();
        let pers = le64(&out, id::PERSISTENT_ONLY_CAPACITY).unwrap();
        let lsa = le32(&out, id::LSA_SIZE).unwrap();
        let fw = String::from_utf8_lossy(&out[id::FW_REVISION..id::FW_REVISION + id::FW_REVISION_LEN])
            .trim_end_matches('\0')
            .to_string();
        let want = cap / mb::CAPACITY_UNIT;
        if (total, vol, pers) != (want, want, 0) {
            return Err(format!("total {total}, volatile {vol}, persistent {pers} units; want {want}, {want}, 0"));
        }
        if (lsa as u64) < LSA_TEST_OFFSET as u64 + 64 {
            return Err(format!("LSA size {lsa} too small for the round trip"));
        }
        Ok(format!("{total} x 256 MiB, LSA {lsa} bytes, firmware {fw:?}"))
    });

    let serial = ctx.cfg.serial;
    rep.check(
        "f.3",
        "serial: DSN = module report (= memdev serial if exported); Identify carries none",
        || {
            let dsn = need(&ctx.dsn, "DSN (a.2)")?;
            let modser = sys::read_num(format!("{}/cxl_serial", ctx.dev_path()?))?;
            let mut vals = vec![("DSN", dsn), ("module", modser)];
            if let Some(mem) = &ctx.memdev {
                if let Ok(s) = sys::read_num(format!("{}/{mem}/serial", sys::CXL_DEVICES)) {
                    vals.push(("memdev", s));
                }
            }
            if let Some(s) = serial {
                vals.push(("configured", s));
            }
            if vals.iter().any(|v| v.1 != dsn) {
                return Err(format!("{vals:x?}"));
            }
            Ok(format!("{dsn:#x}"))
        },
    );

    rep.check(
        "f.4",
        "Get Supported Logs lists the CEL; CEL lists the implemented commands",
        || {
            let (sup, log) = with_mailbox(ctx, |m| {
                let sup = m.ok(mb::OP_GET_SUPPORTED_LOGS, &[], m.payload_size)?;
                let size = mbox::cel_size(&sup).ok_or("Get Supported Logs has no CEL entry")?;
                let mut log = Vec::new();
                while log.len() < size as usize {
                    let chunk = (size as usize - log.len()).min(m.payload_size);
                    let mut input = vec![0u8; mb::get_log::IN_LEN];
                    input[..16].copy_from_slice(&mb::CEL_UUID);
                    input[mb::get_log::IN_OFFSET..mb::get_log::IN_OFFSET + 4]
                        .copy_from_slice(&(log.len() as u32).to_le_bytes());
                    input[mb::get_log::IN_LENGTH..mb::get_log::IN_LENGTH + 4]
                        .copy_from_slice(&(chunk as u32).to_le_bytes());
                    let part = m.ok(mb::OP_GET_LOG, &input, chunk)?;
                    if part.len() != chunk {
                        return Err(format!(
                            "Get Log returned {} bytes, asked {chunk}",
                            part.len()
                        ));
                    }
                    log.extend_from_slice(&part);
                }
                Ok((sup, log))
            })?;
            let ops = mbox::cel_opcodes(&log);
            let missing: Vec<String> = IMPLEMENTED
                .iter()
                .filter(|o| !ops.contains(o))
                .map(|o| format!("{o:#06x}"))
                .collect();
            if !missing.is_empty() {
                return Err(format!("CEL lacks {}", missing.join(" ")));
            }
            if ops.contains(&UNKNOWN_OPCODE) {
                return Err(format!("CEL lists {UNKNOWN_OPCODE:#06x}"));
            }
            Ok(format!(
                "{} logs, CEL {} entries",
                le16(&sup, 0).unwrap_or(0),
                ops.len()
            ))
        },
    );

    rep.check("f.5", "LSA write/read round trip", || {
        let data: Vec<u8> = (0..64u32).map(|i| (i * 7 + 0x5a) as u8).collect();
        with_mailbox(ctx, |m| {
            let mut set = vec![0u8; mb::lsa::SET_DATA + data.len()];
            set[..4].copy_from_slice(&LSA_TEST_OFFSET.to_le_bytes());
            set[mb::lsa::SET_DATA..].copy_from_slice(&data);
            m.ok(mb::OP_SET_LSA, &set, 0)?;
            let mut get = [0u8; mb::lsa::GET_IN_LEN];
            get[..4].copy_from_slice(&LSA_TEST_OFFSET.to_le_bytes());
            get[4..].copy_from_slice(&(data.len() as u32).to_le_bytes());
            let back = m.ok(mb::OP_GET_LSA, &get, data.len())?;
            if back != data {
                return Err(format!("read back {back:02x?}"));
            }
            Ok(format!("64 bytes at LSA offset {LSA_TEST_OFFSET:#x}"))
        })
    });

    rep.check("f.6", "Set Timestamp then Get Timestamp", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_nanos() as u64;
        with_mailbox(ctx, |m| {
            m.ok(mb::OP_SET_TIMESTAMP, &now.to_le_bytes(), 0)?;
            let out = m.ok(mb::OP_GET_TIMESTAMP, &[], 8)?;
            let got = le64(&out, 0).ok_or("short Get Timestamp")?;
            if got < now || got - now > 60_000_000_000 {
                return Err(format!("set {now}, got {got}"));
            }
            Ok(format!("set {now}, got +{} us", (got - now) / 1000))
        })
    });

    rep.check(
        "f.7",
        "Inject Poison, then Get Poison List shows it; Clear Poison",
        || {
            let cap = need(&capacity, "capacity (a.5)")?;
            if POISON_DPA + 64 > cap {
                return Err(format!("capacity {cap:#x} too small"));
            }
            with_mailbox(ctx, |m| {
                let list =
                    |m: &Mailbox<'_, crate::mmio::MmioMap>| -> Result<Vec<(u64, u32)>, String> {
                        let mut input = [0u8; mb::poison::GET_IN_LEN];
                        input[..8].copy_from_slice(&POISON_DPA.to_le_bytes());
                        input[8..].copy_from_slice(&1u64.to_le_bytes());
                        let out = m.ok(mb::OP_GET_POISON_LIST, &input, m.payload_size)?;
                        let n =
                            le16(&out, mb::poison::OUT_COUNT).ok_or("short poison list")? as usize;
                        (0..n)
                            .map(|i| {
                                let r = mb::poison::OUT_RECORDS + i * mb::poison::RECORD_LEN;
                                Ok((
                                    le64(&out, r).ok_or("short record")?,
                                    le32(&out, r + mb::poison::RECORD_LENGTH)
                                        .ok_or("short record")?,
                                ))
                            })
                            .collect()
                    };
                let before = list(m)?;
                if !before.is_empty() {
                    return Err(format!("poison listed before injecting: {before:x?}"));
                }
                m.ok(mb::OP_INJECT_POISON, &POISON_DPA.to_le_bytes(), 0)?;
                let after = list(m)?;
                let hit = after
                    .iter()
                    .find(|r| r.0 & mb::poison::ADDR_MASK == POISON_DPA);
                let Some(&(addr, len)) = hit else {
                    return Err(format!("injected at {POISON_DPA:#x}, list {after:x?}"));
                };
                let source = (addr & mb::poison::SOURCE_MASK) as u8;
                if source != mb::poison::SOURCE_INJECTED || len == 0 {
                    return Err(format!(
                        "record {addr:#x} length {len}: source {source}, expected injected (3)"
                    ));
                }
                let mut clear = vec![0u8; mb::poison::CLEAR_IN_LEN];
                clear[..8].copy_from_slice(&POISON_DPA.to_le_bytes());
                m.ok(mb::OP_CLEAR_POISON, &clear, 0)?;
                let cleared = list(m)?;
                if !cleared.is_empty() {
                    return Err(format!("still listed after Clear Poison: {cleared:x?}"));
                }
                Ok(format!(
                    "DPA {POISON_DPA:#x}: record {addr:#x} x{len}, cleared"
                ))
            })
        },
    );

    rep.check("f.8", "unknown opcode answered Unsupported", || {
        with_mailbox(ctx, |m| {
            let r = m.exec(UNKNOWN_OPCODE, &[], 0)?;
            if r.rc != mb::RC_UNSUPPORTED {
                return Err(format!("return code {:#x} ({})", r.rc, mbox::rc_name(r.rc)));
            }
            Ok(format!("opcode {UNKNOWN_OPCODE:#06x}: Unsupported"))
        })
    });
}
