//! Behaviour of the mailbox through its register interface, command by command.

use cxl_regs::mailbox::{self as mb, poison as p};
use proptest::prelude::*;

use super::*;

const MIB: u64 = 1 << 20;
const NS_MS: u64 = 1_000_000;

fn cfg() -> MailboxConfig {
    MailboxConfig {
        capacity: 1024 * MIB,
        serial: 7,
        ..Default::default()
    }
}

fn mbx() -> Mailbox {
    Mailbox::new(cfg(), Box::new(MemLsa(vec![0; 1024])))
}

/// Hooks recording media writes and answering one vendor opcode.
#[derive(Default)]
struct Hooks {
    writes: Vec<(u64, Vec<u8>)>,
    fail_writes: bool,
}

impl VendorHooks for Hooks {
    fn vendor_command(
        &mut self,
        opcode: u16,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode> {
        match opcode {
            0xc001 => {
                output.extend(input.iter().rev());
                Ok(())
            }
            0xc002 => {
                output.resize(1 << 20, 0);
                Ok(())
            }
            // Fails, after writing output that must not reach the payload.
            0xc003 => {
                output.extend_from_slice(b"leak");
                Err(ReturnCode::InvalidInput)
            }
            _ => Err(ReturnCode::Unsupported),
        }
    }
    fn media_write(&mut self, dpa: u64, data: &[u8]) -> Result<(), ReturnCode> {
        if self.fail_writes {
            return Err(ReturnCode::MediaDisabled);
        }
        self.writes.push((dpa, data.to_vec()));
        Ok(())
    }
}

/// Issue a command through the registers as a driver would; returns (rc, output).
fn run_at(
    m: &mut Mailbox,
    h: &mut dyn VendorHooks,
    opcode: u16,
    input: &[u8],
    now: u64,
) -> (u16, Vec<u8>) {
    for (i, chunk) in input.chunks(4).enumerate() {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        m.write(
            mb::PAYLOAD + 4 * i as u32,
            u32::from_le_bytes(b),
            !0,
            now,
            h,
        );
    }
    let cmd = u64::from(opcode) | ((input.len() as u64) << mb::CMD_LEN_SHIFT);
    m.write(mb::COMMAND, cmd as u32, !0, now, h);
    m.write(mb::COMMAND + 4, (cmd >> 32) as u32, !0, now, h);
    let ctrl = m.read(mb::CONTROL, now);
    m.write(mb::CONTROL, ctrl | mb::CTRL_DOORBELL, !0, now, h);
    // Synchronous: the first poll of the doorbell sees it clear.
    assert_eq!(m.read(mb::CONTROL, now) & mb::CTRL_DOORBELL, 0);
    let rc = (m.read(mb::STATUS + 4, now) & 0xffff) as u16;
    let c = u64::from(m.read(mb::COMMAND, now)) | (u64::from(m.read(mb::COMMAND + 4, now)) << 32);
    assert_eq!(c & mb::CMD_OPCODE_MASK, u64::from(opcode));
    let len = ((c & mb::CMD_LEN_MASK) >> mb::CMD_LEN_SHIFT) as usize;
    let out = m.payload()[..len].to_vec();
    (rc, out)
}

fn run(m: &mut Mailbox, opcode: u16, input: &[u8]) -> (u16, Vec<u8>) {
    run_at(m, &mut Hooks::default(), opcode, input, 0)
}

fn rc(m: &mut Mailbox, opcode: u16, input: &[u8]) -> u16 {
    run(m, opcode, input).0
}

fn u64le(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn u32le(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u16le(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

// ---- registers ----

/// Payload storage the test shares with the mailbox, as the backend shares a page
/// with the guest: bytes written here never pass through `Mailbox::write`.
#[derive(Clone, Default)]
struct SharedPage(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedPage {
    fn new(len: usize) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(vec![0; len])))
    }
    fn poke(&self, offset: usize, data: &[u8]) {
        self.0.lock().unwrap()[offset..offset + data.len()].copy_from_slice(data);
    }
    fn peek(&self, offset: usize, len: usize) -> Vec<u8> {
        self.0.lock().unwrap()[offset..offset + len].to_vec()
    }
}

impl PayloadBuf for SharedPage {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        self.0.lock().unwrap().read(offset, buf)
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        self.0.lock().unwrap().write(offset, data)
    }
}

#[test]
fn payload_in_shared_storage() {
    let mut m = mbx();
    let mut h = Hooks::default();
    // Contents written through the registers before the swap are carried over.
    m.write(mb::PAYLOAD + 8, 0x1122_3344, !0, 0, &mut h);
    let page = SharedPage::new(4096);
    assert!(m.set_payload_buf(Box::new(page.clone())).is_ok());
    assert_eq!(page.peek(8, 4), [0x44, 0x33, 0x22, 0x11]);
    // The "guest" writes the input straight into the page; only Command and the
    // doorbell go through the registers.
    page.poke(0, b"abcdef");
    let cmd = 0xc001u64 | (6 << mb::CMD_LEN_SHIFT);
    m.write(mb::COMMAND, cmd as u32, !0, 0, &mut h);
    m.write(mb::COMMAND + 4, (cmd >> 32) as u32, !0, 0, &mut h);
    m.write(mb::CONTROL, mb::CTRL_DOORBELL, !0, 0, &mut h);
    assert_eq!(
        m.read(mb::STATUS + 4, 0) & 0xffff,
        u32::from(mb::RC_SUCCESS)
    );
    // The output is in the page, and register reads of the payload see the page.
    assert_eq!(page.peek(0, 6), b"fedcba");
    assert_eq!(m.read(mb::PAYLOAD, 0), u32::from_le_bytes(*b"fedc"));
    page.poke(4, &[1, 2, 3, 4]);
    assert_eq!(m.read(mb::PAYLOAD + 4, 0), 0x0403_0201);
    // A masked register write merges into the page.
    m.write(mb::PAYLOAD + 4, 0xff00, 0xff00, 0, &mut h);
    assert_eq!(page.peek(4, 4), [1, 0xff, 3, 4]);
    // Identify through the page.
    let cmd = u64::from(mb::OP_IDENTIFY_MEMORY_DEVICE);
    m.write(mb::COMMAND, cmd as u32, !0, 0, &mut h);
    m.write(mb::COMMAND + 4, 0, !0, 0, &mut h);
    m.write(mb::CONTROL, mb::CTRL_DOORBELL, !0, 0, &mut h);
    let out = page.peek(0, mb::IDENTIFY_OUTPUT_LEN);
    assert_eq!(u64le(&out, mb::identify::TOTAL_CAPACITY), 4);
    // Reset zeroes the page.
    m.reset();
    assert!(page.peek(0, 4096).iter().all(|&b| b == 0));
}

#[test]
fn payload_buffer_of_the_wrong_size_is_refused() {
    let mut m = mbx();
    let back = m.set_payload_buf(Box::new(vec![0u8; 256])).unwrap_err();
    assert_eq!(back.len(), 256);
    assert_eq!(m.payload().len(), 4096);
    // A buffer that refuses the carried-over contents is handed back too.
    struct Refusing;
    impl PayloadBuf for Refusing {
        fn len(&self) -> usize {
            4096
        }
        fn read(&self, _: usize, _: &mut [u8]) -> bool {
            false
        }
        fn write(&mut self, _: usize, _: &[u8]) -> bool {
            false
        }
    }
    assert!(m.set_payload_buf(Box::new(Refusing)).is_err());
    assert_eq!(
        rc(&mut m, mb::OP_IDENTIFY_MEMORY_DEVICE, &[]),
        mb::RC_SUCCESS
    );
}

/// A payload whose reads fail makes every command fail with Invalid Payload Length
/// and report no output, rather than run on garbage.
#[test]
fn unreadable_payload_fails_commands() {
    struct Broken;
    impl PayloadBuf for Broken {
        fn len(&self) -> usize {
            4096
        }
        fn read(&self, _: usize, _: &mut [u8]) -> bool {
            false
        }
        fn write(&mut self, _: usize, _: &[u8]) -> bool {
            true
        }
    }
    let mut m = mbx();
    let mut h = Hooks::default();
    m.payload = Box::new(Broken);
    m.write(
        mb::COMMAND,
        u32::from(mb::OP_IDENTIFY_MEMORY_DEVICE),
        !0,
        0,
        &mut h,
    );
    m.write(mb::CONTROL, mb::CTRL_DOORBELL, !0, 0, &mut h);
    assert_eq!(
        m.read(mb::STATUS + 4, 0) & 0xffff,
        u32::from(mb::RC_INVALID_PAYLOAD_LENGTH)
    );
    assert_eq!(m.read(mb::COMMAND, 0) >> 16, 0);
    assert_eq!(m.read(mb::PAYLOAD, 0), 0);
}

#[test]
fn capabilities_register() {
    let mut m = Mailbox::new(
        MailboxConfig {
            irq_msgnum: 3,
            ..cfg()
        },
        Box::new(MemLsa(vec![])),
    );
    let cap = m.read(mb::CAPABILITIES, 0);
    assert_eq!(cap & mb::CAP_PAYLOAD_SIZE_MASK, 12);
    assert_ne!(cap & mb::CAP_BG_IRQ, 0);
    assert_eq!(cap & mb::CAP_MB_IRQ, 0);
    assert_eq!((cap & mb::CAP_MSGNUM_MASK) >> mb::CAP_MSGNUM_SHIFT, 3);
    assert_eq!(m.block_len(), 0x20 + 4096);
    // Read-only: a write changes nothing.
    m.write(mb::CAPABILITIES, 0, !0, 0, &mut NoVendorHooks);
    assert_eq!(m.read(mb::CAPABILITIES, 0), cap);
}

#[test]
fn payload_log2_is_clamped() {
    let m = Mailbox::new(
        MailboxConfig {
            payload_log2: 3,
            ..cfg()
        },
        Box::new(MemLsa(vec![])),
    );
    assert_eq!(m.payload().len(), 256);
    let m = Mailbox::new(
        MailboxConfig {
            payload_log2: 40,
            ..cfg()
        },
        Box::new(MemLsa(vec![])),
    );
    assert_eq!(m.payload().len(), 1 << 20);
}

#[test]
fn control_reserved_bits_read_zero_and_mask_applies() {
    let mut m = mbx();
    m.write(mb::CONTROL, 0xffff_fffe, !0, 0, &mut NoVendorHooks);
    assert_eq!(m.read(mb::CONTROL, 0), mb::CTRL_BG_IRQ);
    // A write whose mask excludes bit 2 keeps it.
    m.write(mb::CONTROL, 0, !mb::CTRL_BG_IRQ, 0, &mut NoVendorHooks);
    assert_eq!(m.read(mb::CONTROL, 0), mb::CTRL_BG_IRQ);
    m.write(mb::CONTROL, 0, mb::CTRL_BG_IRQ, 0, &mut NoVendorHooks);
    assert_eq!(m.read(mb::CONTROL, 0), 0);
}

#[test]
fn command_register_reserved_bits_and_masked_payload_writes() {
    let mut m = mbx();
    m.write(mb::COMMAND + 4, 0xffff_ffff, !0, 0, &mut NoVendorHooks);
    assert_eq!(m.read(mb::COMMAND + 4, 0), 0x1f);
    m.write(mb::PAYLOAD + 8, 0x1122_3344, !0, 0, &mut NoVendorHooks);
    m.write(
        mb::PAYLOAD + 9,
        0xaabb_ccdd,
        0x0000_ff00,
        0,
        &mut NoVendorHooks,
    );
    assert_eq!(m.read(mb::PAYLOAD + 8, 0), 0x1122_cc44);
    assert_eq!(m.read(m.block_len(), 0), 0);
    assert_eq!(m.read(m.block_len() - 4, 0), 0);
    m.write(u32::MAX, 1, !0, 0, &mut NoVendorHooks);
}

#[test]
fn status_is_read_only() {
    let mut m = mbx();
    assert_eq!(rc(&mut m, 0x7777, &[]), mb::RC_UNSUPPORTED);
    m.write(mb::STATUS + 4, 0, !0, 0, &mut NoVendorHooks);
    m.write(mb::BG_CMD_STATUS, 0xffff, !0, 0, &mut NoVendorHooks);
    assert_eq!(m.read(mb::STATUS + 4, 0), u32::from(mb::RC_UNSUPPORTED));
    assert_eq!(m.read(mb::BG_CMD_STATUS, 0), 0);
}

#[test]
fn doorbell_without_bit_does_nothing() {
    let mut m = mbx();
    m.write(
        mb::COMMAND,
        u32::from(mb::OP_IDENTIFY_MEMORY_DEVICE),
        !0,
        0,
        &mut NoVendorHooks,
    );
    m.write(
        mb::CONTROL,
        mb::CTRL_DOORBELL,
        !mb::CTRL_DOORBELL,
        0,
        &mut NoVendorHooks,
    );
    assert_eq!(m.commands_executed(), 0);
    m.write(mb::CONTROL, mb::CTRL_DOORBELL, !0, 0, &mut NoVendorHooks);
    assert_eq!(m.commands_executed(), 1);
}

#[test]
fn payload_length_beyond_payload_size() {
    let mut m = mbx();
    let cmd = u64::from(mb::OP_GET_LSA) | (0x1001u64 << mb::CMD_LEN_SHIFT);
    m.write(mb::COMMAND, cmd as u32, !0, 0, &mut NoVendorHooks);
    m.write(mb::CONTROL, mb::CTRL_DOORBELL, !0, 0, &mut NoVendorHooks);
    assert_eq!(
        m.read(mb::STATUS + 4, 0),
        u32::from(mb::RC_INVALID_PAYLOAD_LENGTH)
    );
    assert_eq!(m.stats().failed, 1);
}

#[test]
fn unknown_opcode_is_unsupported() {
    let mut m = mbx();
    for op in [0x0000, 0x0001, 0x4101, 0x4401, 0xbfff] {
        assert_eq!(rc(&mut m, op, &[]), mb::RC_UNSUPPORTED, "opcode {op:#x}");
    }
}

// ---- Identify, partition, health ----

#[test]
fn identify_reports_config() {
    let mut m = mbx();
    let (r, out) = run(&mut m, mb::OP_IDENTIFY_MEMORY_DEVICE, &[]);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(out.len(), 0x43);
    assert_eq!(&out[..15], b"cxl-accel 0.1.0");
    assert_eq!(u64le(&out, 0x10), 4, "1 GiB in 256 MiB units");
    assert_eq!(u64le(&out, 0x18), 4);
    assert_eq!(u64le(&out, 0x20), 0);
    assert_eq!(u64le(&out, 0x28), 0);
    assert_eq!(u16le(&out, 0x30), 32);
    assert_eq!(u16le(&out, 0x36), 32);
    assert_eq!(u32le(&out, 0x38), 1024);
    assert_eq!(&out[0x3c..0x3f], &[0, 1, 0], "poison list max 256");
    assert_eq!(u16le(&out, 0x3f), 64);
    assert_eq!(
        rc(&mut m, mb::OP_IDENTIFY_MEMORY_DEVICE, &[0]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
}

#[test]
fn partition_info() {
    let mut m = mbx();
    let (r, out) = run(&mut m, mb::OP_GET_PARTITION_INFO, &[]);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(out.len(), 0x20);
    assert_eq!(u64le(&out, 0), 4);
    assert_eq!(u64le(&out, 8), 0);
    assert_eq!(
        rc(&mut m, mb::OP_GET_PARTITION_INFO, &[1, 2]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
}

#[test]
fn health_info_reflects_fault_injection() {
    let mut m = mbx();
    m.health_mut().dirty_shutdowns = 3;
    m.health_mut().temperature = -5;
    let (r, out) = run(&mut m, mb::OP_GET_HEALTH_INFO, &[]);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(out.len(), 0x12);
    assert_eq!(u16le(&out, 4), (-5i16) as u16);
    assert_eq!(u32le(&out, 6), 3);
    assert_eq!(
        rc(&mut m, mb::OP_GET_HEALTH_INFO, &[0; 4]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
}

// ---- LSA ----

fn get_lsa_in(off: u32, len: u32) -> Vec<u8> {
    [off.to_le_bytes(), len.to_le_bytes()].concat()
}

#[test]
fn lsa_round_trip() {
    let mut m = mbx();
    let mut set = vec![0u8; 8];
    set[..4].copy_from_slice(&100u32.to_le_bytes());
    set.extend(0..=255u8);
    assert_eq!(rc(&mut m, mb::OP_SET_LSA, &set), mb::RC_SUCCESS);
    let (r, out) = run(&mut m, mb::OP_GET_LSA, &get_lsa_in(100, 256));
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(out, (0..=255u8).collect::<Vec<_>>());
    let mut b = [0u8; 2];
    m.lsa().read(99, &mut b).unwrap();
    assert_eq!(b, [0, 0]);
}

#[test]
fn lsa_bounds() {
    let mut m = mbx();
    assert_eq!(
        rc(&mut m, mb::OP_GET_LSA, &get_lsa_in(1000, 25)),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_LSA, &get_lsa_in(u32::MAX, u32::MAX)),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_LSA, &get_lsa_in(1000, 24)),
        mb::RC_SUCCESS
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_LSA, &[0; 7]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    let mut set = vec![0u8; 8];
    set[..4].copy_from_slice(&1020u32.to_le_bytes());
    set.extend([1u8; 5]);
    assert_eq!(rc(&mut m, mb::OP_SET_LSA, &set), mb::RC_INVALID_INPUT);
    assert_eq!(
        rc(&mut m, mb::OP_SET_LSA, &[0; 4]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    // Nothing was written by the refused Set LSA.
    let mut b = [9u8; 4];
    m.lsa().read(1020, &mut b).unwrap();
    assert_eq!(b, [0; 4]);
}

#[test]
fn get_lsa_longer_than_payload_is_invalid() {
    let mut m = Mailbox::new(cfg(), Box::new(MemLsa(vec![0; 64 << 10])));
    assert_eq!(
        rc(&mut m, mb::OP_GET_LSA, &get_lsa_in(0, 4097)),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        run(&mut m, mb::OP_GET_LSA, &get_lsa_in(0, 4096)).1.len(),
        4096
    );
}

/// LSA storage whose medium fails.
struct BrokenLsa;
impl LsaStorage for BrokenLsa {
    fn size(&self) -> usize {
        512
    }
    fn read(&self, _offset: usize, _buf: &mut [u8]) -> Result<(), LsaError> {
        Err(LsaError::Storage("gone".into()))
    }
    fn write(&mut self, _offset: usize, _data: &[u8]) -> Result<(), LsaError> {
        Err(LsaError::Storage("gone".into()))
    }
}

#[test]
fn lsa_storage_failure_is_internal_error() {
    let mut m = Mailbox::new(cfg(), Box::new(BrokenLsa));
    assert_eq!(
        rc(&mut m, mb::OP_GET_LSA, &get_lsa_in(0, 16)),
        mb::RC_INTERNAL_ERROR
    );
    assert_eq!(rc(&mut m, mb::OP_SET_LSA, &[0; 12]), mb::RC_INTERNAL_ERROR);
    assert_eq!(m.read(mb::COMMAND, 0) >> 16, 0, "no output on failure");
}

// ---- logs / CEL ----

#[test]
fn supported_logs_and_cel_list_exactly_the_implemented_commands() {
    let mut m = mbx();
    let (r, out) = run(&mut m, mb::OP_GET_SUPPORTED_LOGS, &[]);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(u16le(&out, 0), 1);
    assert_eq!(&out[8..24], &mb::CEL_UUID);
    let size = u32le(&out, 24);
    let mut get = mb::CEL_UUID.to_vec();
    get.extend(0u32.to_le_bytes());
    get.extend(size.to_le_bytes());
    let (r, cel) = run(&mut m, mb::OP_GET_LOG, &get);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(cel.len(), size as usize);
    let ops: Vec<(u16, u16)> = cel.chunks(4).map(|c| (u16le(c, 0), u16le(c, 2))).collect();
    let expected: Vec<u16> = vec![
        0x0100, 0x0101, 0x0102, 0x0103, 0x0200, 0x0201, 0x0202, 0x0300, 0x0301, 0x0400, 0x0401,
        0x4000, 0x4100, 0x4102, 0x4103, 0x4200, 0x4300, 0x4301, 0x4302, 0x4400,
    ];
    assert_eq!(ops.iter().map(|o| o.0).collect::<Vec<_>>(), expected);
    // Sanitize is flagged as a background operation, reads have no effects.
    let sanitize = ops.iter().find(|o| o.0 == mb::OP_SANITIZE).unwrap();
    assert_ne!(sanitize.1 & mb::effects::BACKGROUND_OPERATION, 0);
    assert_eq!(
        ops.iter()
            .find(|o| o.0 == mb::OP_IDENTIFY_MEMORY_DEVICE)
            .unwrap()
            .1,
        0
    );
    // Every CEL opcode does something other than Unsupported.
    for (op, _) in ops {
        assert_ne!(
            rc(&mut m, op, &[0; 0x100]),
            mb::RC_UNSUPPORTED,
            "opcode {op:#x}"
        );
    }
}

#[test]
fn get_log_errors() {
    let mut m = mbx();
    let mut get = mb::CEL_UUID.to_vec();
    get.extend(8u32.to_le_bytes());
    get.extend(1000u32.to_le_bytes());
    let (r, part) = run(&mut m, mb::OP_GET_LOG, &get);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(part.len(), 20 * 4 - 8, "truncated at the end of the log");
    assert_eq!(u16le(&part, 0), 0x0102);
    let mut bad = get.clone();
    bad[0] ^= 1;
    assert_eq!(rc(&mut m, mb::OP_GET_LOG, &bad), mb::RC_INVALID_LOG);
    let mut off = get.clone();
    off[16..20].copy_from_slice(&81u32.to_le_bytes());
    assert_eq!(rc(&mut m, mb::OP_GET_LOG, &off), mb::RC_INVALID_INPUT);
    let mut long = get.clone();
    long[20..24].copy_from_slice(&4097u32.to_le_bytes());
    assert_eq!(rc(&mut m, mb::OP_GET_LOG, &long), mb::RC_INVALID_INPUT);
    assert_eq!(
        rc(&mut m, mb::OP_GET_LOG, &get[..0x17]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_SUPPORTED_LOGS, &[0]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
}

// ---- timestamp ----

#[test]
fn timestamp_advances_from_set_point() {
    let mut m = mbx();
    let mut h = Hooks::default();
    let (r, out) = run_at(&mut m, &mut h, mb::OP_GET_TIMESTAMP, &[], 5 * NS_MS);
    assert_eq!((r, u64le(&out, 0)), (mb::RC_SUCCESS, 0), "never set");
    let set = 1_700_000_000_000_000_000u64;
    assert_eq!(
        run_at(
            &mut m,
            &mut h,
            mb::OP_SET_TIMESTAMP,
            &set.to_le_bytes(),
            10 * NS_MS
        )
        .0,
        mb::RC_SUCCESS
    );
    let (_, out) = run_at(&mut m, &mut h, mb::OP_GET_TIMESTAMP, &[], 25 * NS_MS);
    assert_eq!(u64le(&out, 0), set + 15 * NS_MS);
    assert_eq!(
        rc(&mut m, mb::OP_SET_TIMESTAMP, &[0; 7]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_TIMESTAMP, &[0; 8]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
}

// ---- events ----

fn record(tag: u8) -> EventRecord {
    EventRecord {
        uuid: [tag; 16],
        flags: 0,
        data: vec![tag; 8],
    }
}

fn record_handles(out: &[u8]) -> Vec<u16> {
    let n = usize::from(u16le(out, 0x14));
    (0..n).map(|i| u16le(out, 0x20 + i * 0x80 + 0x14)).collect()
}

fn clear_in(log: u8, flags: u8, handles: &[u16]) -> Vec<u8> {
    let mut v = vec![log, flags, handles.len() as u8, 0, 0, 0];
    for h in handles {
        v.extend(h.to_le_bytes());
    }
    v
}

#[test]
fn events_get_and_clear() {
    let mut m = mbx();
    assert_eq!(m.event_status(), 0);
    m.inject_event(EventLog::Warning, record(1));
    m.inject_event(EventLog::Warning, record(2));
    assert_eq!(m.event_status(), 0b10);
    let (r, out) = run(&mut m, mb::OP_GET_EVENT_RECORDS, &[1]);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(out.len(), 0x20 + 2 * 0x80);
    assert_eq!(out[0], 0, "no overflow, no more records");
    assert_eq!(out[0x20], 1);
    assert_eq!(out[0x20 + 0x80], 2);
    let h = record_handles(&out);
    assert_eq!(
        rc(&mut m, mb::OP_CLEAR_EVENT_RECORDS, &clear_in(1, 0, &h[..1])),
        mb::RC_SUCCESS
    );
    let (_, out) = run(&mut m, mb::OP_GET_EVENT_RECORDS, &[1]);
    assert_eq!(record_handles(&out), h[1..].to_vec());
    // Already cleared handle.
    assert_eq!(
        rc(&mut m, mb::OP_CLEAR_EVENT_RECORDS, &clear_in(1, 0, &h[..1])),
        mb::RC_INVALID_HANDLE
    );
    assert_eq!(
        rc(&mut m, mb::OP_CLEAR_EVENT_RECORDS, &clear_in(1, 0, &h[1..])),
        mb::RC_SUCCESS
    );
    assert_eq!(m.event_status(), 0);
}

#[test]
fn event_command_errors() {
    let mut m = mbx();
    assert_eq!(
        rc(&mut m, mb::OP_GET_EVENT_RECORDS, &[4]),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_EVENT_RECORDS, &[]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_EVENT_RECORDS, &[0, 0]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    // Count says 2 handles, payload carries 1.
    let mut c = clear_in(0, 0, &[1]);
    c[2] = 2;
    assert_eq!(
        rc(&mut m, mb::OP_CLEAR_EVENT_RECORDS, &c),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(
        rc(&mut m, mb::OP_CLEAR_EVENT_RECORDS, &clear_in(7, 0, &[])),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        rc(&mut m, mb::OP_CLEAR_EVENT_RECORDS, &clear_in(0, 0, &[5])),
        mb::RC_INVALID_HANDLE
    );
    // Clear All without an overflow.
    assert_eq!(
        rc(&mut m, mb::OP_CLEAR_EVENT_RECORDS, &clear_in(0, 1, &[])),
        mb::RC_INVALID_INPUT
    );
}

#[test]
fn event_overflow_and_clear() {
    let mut m = Mailbox::new(
        MailboxConfig {
            event_log_capacity: 2,
            ..cfg()
        },
        Box::new(MemLsa(vec![])),
    );
    let mut h = Hooks::default();
    let ts = 1_000_000_000u64;
    run_at(&mut m, &mut h, mb::OP_SET_TIMESTAMP, &ts.to_le_bytes(), 0);
    m.inject_event_at(EventLog::Fatal, record(1), 10);
    m.inject_event_at(EventLog::Fatal, record(2), 20);
    m.inject_event_at(EventLog::Fatal, record(3), 30);
    m.inject_event_at(EventLog::Fatal, record(4), 40);
    assert_eq!(m.stats().events_dropped, 2);
    let (_, out) = run_at(&mut m, &mut h, mb::OP_GET_EVENT_RECORDS, &[3], 50);
    assert_eq!(
        out[0] & mb::get_event_records::FLAG_OVERFLOW,
        mb::get_event_records::FLAG_OVERFLOW
    );
    assert_eq!(u16le(&out, 2), 2, "overflow count");
    assert_eq!(u64le(&out, 4), ts + 30, "first overflow timestamp");
    assert_eq!(u64le(&out, 0xc), ts + 40, "last overflow timestamp");
    assert_eq!(u64le(&out, 0x20 + 0x18), ts + 10, "record timestamp");
    assert_eq!(out[0x20], 1, "oldest record kept");
    // Clearing one record returns space and ends the overflow condition.
    let handles = record_handles(&out);
    run_at(
        &mut m,
        &mut h,
        mb::OP_CLEAR_EVENT_RECORDS,
        &clear_in(3, 0, &handles[..1]),
        60,
    );
    let (_, out) = run_at(&mut m, &mut h, mb::OP_GET_EVENT_RECORDS, &[3], 70);
    assert_eq!(out[0], 0);
    assert_eq!(u16le(&out, 2), 0);
    // Overflow again, then Clear All is allowed.
    m.inject_event(EventLog::Fatal, record(5));
    m.inject_event(EventLog::Fatal, record(6));
    assert_eq!(
        rc(&mut m, mb::OP_CLEAR_EVENT_RECORDS, &clear_in(3, 1, &[])),
        mb::RC_SUCCESS
    );
    assert_eq!(m.event_count(EventLog::Fatal), 0);
}

#[test]
fn get_event_records_sets_more_with_small_payload() {
    let mut m = Mailbox::new(
        MailboxConfig {
            payload_log2: 8,
            ..cfg()
        },
        Box::new(MemLsa(vec![])),
    );
    m.inject_event(EventLog::Informational, record(1));
    m.inject_event(EventLog::Informational, record(2));
    let (r, out) = run(&mut m, mb::OP_GET_EVENT_RECORDS, &[0]);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(out.len(), 0xa0);
    assert_eq!(out[0], mb::get_event_records::FLAG_MORE_RECORDS);
}

#[test]
fn event_interrupt_policy() {
    let mut m = mbx();
    assert_eq!(m.inject_event(EventLog::Failure, record(1)), None);
    assert_eq!(
        rc(&mut m, mb::OP_SET_EVENT_INTERRUPT_POLICY, &[1, 1, 1, 1]),
        mb::RC_SUCCESS
    );
    let (r, out) = run(&mut m, mb::OP_GET_EVENT_INTERRUPT_POLICY, &[]);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(
        out,
        vec![0x11, 0x11, 0x11, 0x11, 0],
        "MSI mode, event message number 1"
    );
    assert_eq!(
        m.inject_event(EventLog::Failure, record(2)),
        Some(MailboxEvent::EventAdded)
    );
    assert_eq!(
        rc(&mut m, mb::OP_SET_EVENT_INTERRUPT_POLICY, &[2, 0, 0, 0]),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        rc(&mut m, mb::OP_SET_EVENT_INTERRUPT_POLICY, &[0; 3]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_EVENT_INTERRUPT_POLICY, &[0]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(
        rc(&mut m, mb::OP_SET_EVENT_INTERRUPT_POLICY, &[0; 5]),
        mb::RC_SUCCESS
    );
    assert_eq!(m.inject_event(EventLog::Failure, record(3)), None);
}

// ---- firmware ----

fn xfer(action: u8, slot: u8, off: u32, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 0x80];
    v[0] = action;
    v[1] = slot;
    v[4..8].copy_from_slice(&off.to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// Firmware that reports its own fields and refuses some updates.
#[derive(Default)]
struct FwHooks {
    parts: Vec<(FwAction, u8, usize, usize)>,
    /// Refuse any part whose data starts with this byte.
    refuse_first_byte: Option<u8>,
    activations: Vec<(u8, bool)>,
    refuse_activation: Option<FwError>,
}

impl VendorHooks for FwHooks {
    fn vendor_command(&mut self, _: u16, _: &[u8], _: &mut Vec<u8>) -> Result<(), ReturnCode> {
        Err(ReturnCode::Unsupported)
    }
    fn identify(&mut self, f: &mut Identify) {
        f.fw_revision = *b"acme-fw 7.1\0\0\0\0\0";
        f.event_log_sizes = [1, 2, 3, 4];
        f.poison_caps = 0x2;
    }
    fn health_info(&mut self, h: &mut HealthInfo) {
        h.temperature = -5;
        h.life_used = 42;
    }
    fn fw_info(&mut self, i: &mut FwInfo) {
        i.activation_caps = 0;
    }
    fn transfer_fw(&mut self, part: &FwPart<'_>) -> Result<(), FwError> {
        self.parts
            .push((part.action, part.slot, part.offset, part.data.len()));
        match (self.refuse_first_byte, part.data.first()) {
            (Some(r), Some(b)) if r == *b => Err(FwError::Verification),
            _ => Ok(()),
        }
    }
    fn activate_fw(&mut self, slot: u8, online: bool) -> Result<(), FwError> {
        self.activations.push((slot, online));
        self.refuse_activation.map_or(Ok(()), Err)
    }
}

#[test]
fn firmware_reports_its_own_identify_health_and_fw_info_fields() {
    let mut m = mbx();
    let mut h = FwHooks::default();
    // Offsets from CXL r3.1 Table 8-127 (Identify) and 8-133 (Health Info).
    let (r, id) = run_at(&mut m, &mut h, 0x4000, &[], 0);
    assert_eq!(r, 0);
    assert_eq!(&id[..11], b"acme-fw 7.1");
    assert_eq!(
        [
            u16le(&id, 0x30),
            u16le(&id, 0x32),
            u16le(&id, 0x34),
            u16le(&id, 0x36)
        ],
        [1, 2, 3, 4]
    );
    assert_eq!(id[0x41], 0x2);
    assert_eq!(
        u64le(&id, 0x10),
        m.config().capacity >> 28,
        "capacity left as the mailbox reports it"
    );
    let (r, health) = run_at(&mut m, &mut h, 0x4200, &[], 0);
    assert_eq!(r, 0);
    assert_eq!(
        (health[3], i16::from_le_bytes([health[4], health[5]])),
        (42, -5)
    );
    // What the hook changed is only reported: the mailbox's own state is as it was.
    assert_eq!(m.health().temperature, 35);
    let (r, info) = run_at(&mut m, &mut h, 0x0200, &[], 0);
    assert_eq!(
        (r, info[2]),
        (0, 0),
        "activation caps as firmware reports them"
    );
    // Without the hooks, the defaults.
    let (_, id) = run(&mut m, 0x4000, &[]);
    assert_eq!(&id[..15], b"cxl-accel 0.1.0");
}

#[test]
fn firmware_refuses_an_image_and_nothing_changes() {
    let mut m = mbx();
    let mut h = FwHooks {
        refuse_first_byte: Some(0xbd),
        ..Default::default()
    };
    let mut bad = vec![0xbd; 64];
    bad[1..16].copy_from_slice(b"bad-image-00000");
    let r = run_at(&mut m, &mut h, mb::OP_TRANSFER_FW, &xfer(0, 2, 0, &bad), 0).0;
    assert_eq!(r, 0x0a, "FW Verification Failed (Table 8-34)");
    assert_eq!(h.parts, vec![(FwAction::Full, 2, 0, 64)]);
    let (_, info) = run_at(&mut m, &mut h, mb::OP_GET_FW_INFO, &[], 0);
    assert_eq!(&info[0x20..0x30], &[0; 16], "slot 2 still empty");
    // A refused Initiate starts nothing: the Continue after it is out of order.
    let r = run_at(
        &mut m,
        &mut h,
        mb::OP_TRANSFER_FW,
        &xfer(1, 0, 0, &[0xbd; 128]),
        0,
    )
    .0;
    assert_eq!(r, 0x0a);
    let r = run_at(
        &mut m,
        &mut h,
        mb::OP_TRANSFER_FW,
        &xfer(2, 0, 1, &[1; 128]),
        0,
    )
    .0;
    assert_eq!(r, mb::RC_FW_TRANSFER_OUT_OF_ORDER);
    // Parts the mailbox refuses itself never reach the firmware.
    assert_eq!(h.parts.len(), 2);
    // A refused End ends the transfer: the next part must start a new one.
    let r = run_at(
        &mut m,
        &mut h,
        mb::OP_TRANSFER_FW,
        &xfer(1, 0, 0, &[1; 128]),
        0,
    )
    .0;
    assert_eq!(r, 0);
    let r = run_at(
        &mut m,
        &mut h,
        mb::OP_TRANSFER_FW,
        &xfer(3, 2, 1, &[0xbd; 128]),
        0,
    )
    .0;
    assert_eq!(r, 0x0a);
    let r = run_at(
        &mut m,
        &mut h,
        mb::OP_TRANSFER_FW,
        &xfer(2, 0, 2, &[1; 128]),
        0,
    )
    .0;
    assert_eq!(r, mb::RC_FW_TRANSFER_OUT_OF_ORDER, "nothing in progress");
    h.parts.truncate(2);
    // An accepted package in parts: each part is seen at its byte offset.
    let mut img = b"good-image-00001".to_vec();
    img.resize(256, 7);
    for (action, slot, units, range) in [(1, 0, 0, 0..128), (3, 2, 1, 128..256)] {
        let r = run_at(
            &mut m,
            &mut h,
            mb::OP_TRANSFER_FW,
            &xfer(action, slot, units, &img[range]),
            0,
        );
        assert_eq!(r.0, 0);
    }
    assert_eq!(
        h.parts[2..],
        [
            (FwAction::Initiate, 0, 0, 128),
            (FwAction::End, 2, 128, 128)
        ]
    );
    let (_, info) = run_at(&mut m, &mut h, mb::OP_GET_FW_INFO, &[], 0);
    assert_eq!(&info[0x20..0x30], b"good-image-00001");
    // Activation: refused with the spec's code, then accepted.
    h.refuse_activation = Some(FwError::ActivationNeedsColdReset);
    let r = run_at(&mut m, &mut h, mb::OP_ACTIVATE_FW, &[0, 2], 0).0;
    assert_eq!(r, 0x0d, "Activation Failed, Cold Reset Required");
    let (_, info) = run_at(&mut m, &mut h, mb::OP_GET_FW_INFO, &[], 0);
    assert_eq!(info[1] & 7, 1, "slot 1 still active");
    h.refuse_activation = None;
    assert_eq!(run_at(&mut m, &mut h, mb::OP_ACTIVATE_FW, &[0, 2], 0).0, 0);
    assert_eq!(h.activations, vec![(2, true), (2, true)]);
    let (_, info) = run_at(&mut m, &mut h, mb::OP_GET_FW_INFO, &[], 0);
    assert_eq!(info[1] & 7, 2);
}

#[test]
fn firmware_update_flow() {
    let mut m = mbx();
    let (r, info) = run(&mut m, mb::OP_GET_FW_INFO, &[]);
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(info.len(), 0x50);
    assert_eq!((info[0], info[1] & 7, info[2] & 1), (2, 1, 1));
    assert_eq!(&info[0x10..0x1f], b"cxl-accel 0.1.0");
    let img = b"cxl-accel 9.9.9!and some code".to_vec();
    assert_eq!(
        rc(&mut m, mb::OP_TRANSFER_FW, &xfer(0, 1, 0, &img)),
        mb::RC_INVALID_SLOT
    );
    assert_eq!(
        rc(&mut m, mb::OP_TRANSFER_FW, &xfer(2, 2, 1, &img)),
        mb::RC_FW_TRANSFER_OUT_OF_ORDER
    );
    assert_eq!(
        rc(&mut m, mb::OP_TRANSFER_FW, &xfer(0, 2, 0, &img[..8])),
        mb::RC_FW_VERIFICATION_FAILED
    );
    assert_eq!(
        rc(&mut m, mb::OP_TRANSFER_FW, &[0; 0x7f]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(
        rc(&mut m, mb::OP_TRANSFER_FW, &xfer(0, 2, 0, &img)),
        mb::RC_SUCCESS
    );
    assert_eq!(rc(&mut m, mb::OP_ACTIVATE_FW, &[0, 3]), mb::RC_INVALID_SLOT);
    assert_eq!(
        rc(&mut m, mb::OP_ACTIVATE_FW, &[5, 2]),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        rc(&mut m, mb::OP_ACTIVATE_FW, &[0]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(rc(&mut m, mb::OP_ACTIVATE_FW, &[0, 2]), mb::RC_SUCCESS);
    let (_, id) = run(&mut m, mb::OP_IDENTIFY_MEMORY_DEVICE, &[]);
    assert_eq!(&id[..16], b"cxl-accel 9.9.9!");
    let (_, info) = run(&mut m, mb::OP_GET_FW_INFO, &[]);
    assert_eq!(info[1] & 7, 2);
    assert_eq!(
        rc(&mut m, mb::OP_GET_FW_INFO, &[1]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
}

#[test]
fn firmware_staged_activation_on_cold_reset_only() {
    let mut m = mbx();
    run(&mut m, mb::OP_TRANSFER_FW, &xfer(0, 2, 0, &[b'x'; 16]));
    assert_eq!(rc(&mut m, mb::OP_ACTIVATE_FW, &[1, 2]), mb::RC_SUCCESS);
    m.reset();
    assert_eq!(
        &run(&mut m, mb::OP_IDENTIFY_MEMORY_DEVICE, &[]).1[..3],
        b"cxl"
    );
    m.cold_reset();
    assert_eq!(
        &run(&mut m, mb::OP_IDENTIFY_MEMORY_DEVICE, &[]).1[..3],
        b"xxx"
    );
}

// ---- poison ----

fn poison_query(start: u64, lines: u64) -> Vec<u8> {
    [start.to_le_bytes(), lines.to_le_bytes()].concat()
}

#[test]
fn poison_inject_list_clear() {
    let mut m = mbx();
    let mut h = Hooks::default();
    assert_eq!(
        run_at(
            &mut m,
            &mut h,
            mb::OP_INJECT_POISON,
            &0x4000u64.to_le_bytes(),
            0
        )
        .0,
        mb::RC_SUCCESS
    );
    m.inject_poison(0x10000, 0x100).unwrap();
    let (r, out) = run(
        &mut m,
        mb::OP_GET_POISON_LIST,
        &poison_query(0, (1 << 30) / 64),
    );
    assert_eq!(r, mb::RC_SUCCESS);
    assert_eq!(u16le(&out, 0xa), 2);
    assert_eq!(out.len(), 0x20 + 2 * 0x10);
    assert_eq!(u64le(&out, 0x20), 0x4000 | u64::from(p::SOURCE_INJECTED));
    assert_eq!(u32le(&out, 0x28), 1);
    assert_eq!(u64le(&out, 0x30), 0x10000 | u64::from(p::SOURCE_INTERNAL));
    assert_eq!(u32le(&out, 0x38), 4);
    // A query that misses both ranges.
    let (_, out) = run(&mut m, mb::OP_GET_POISON_LIST, &poison_query(0x5000, 16));
    assert_eq!(u16le(&out, 0xa), 0);

    let mut clear = 0x10040u64.to_le_bytes().to_vec();
    clear.extend([0xa5u8; 64]);
    assert_eq!(
        run_at(&mut m, &mut h, mb::OP_CLEAR_POISON, &clear, 0).0,
        mb::RC_SUCCESS
    );
    assert_eq!(h.writes, vec![(0x10040, vec![0xa5; 64])]);
    assert_eq!(
        m.poison_list(),
        vec![(0x4000, 0x40), (0x10000, 0x40), (0x10080, 0x80)]
    );
    assert!(m.is_poisoned(0x10080, 1));
    assert!(!m.is_poisoned(0x10040, 64));
}

#[test]
fn poison_errors() {
    let mut m = mbx();
    let cap = 1024 * MIB;
    assert_eq!(
        rc(&mut m, mb::OP_INJECT_POISON, &0x4001u64.to_le_bytes()),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        rc(&mut m, mb::OP_INJECT_POISON, &cap.to_le_bytes()),
        mb::RC_INVALID_PHYSICAL_ADDRESS
    );
    assert_eq!(
        rc(&mut m, mb::OP_INJECT_POISON, &(!63u64).to_le_bytes()),
        mb::RC_INVALID_PHYSICAL_ADDRESS
    );
    assert_eq!(
        rc(&mut m, mb::OP_INJECT_POISON, &[0; 4]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_POISON_LIST, &poison_query(0, 0)),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_POISON_LIST, &poison_query(8, 1)),
        mb::RC_INVALID_INPUT
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_POISON_LIST, &poison_query(cap, 1)),
        mb::RC_INVALID_PHYSICAL_ADDRESS
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_POISON_LIST, &poison_query(0, u64::MAX)),
        mb::RC_INVALID_PHYSICAL_ADDRESS
    );
    assert_eq!(
        rc(&mut m, mb::OP_GET_POISON_LIST, &[0; 8]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    let mut clear = cap.to_le_bytes().to_vec();
    clear.extend([0u8; 64]);
    let mut h = Hooks::default();
    assert_eq!(
        run_at(&mut m, &mut h, mb::OP_CLEAR_POISON, &clear, 0).0,
        mb::RC_INVALID_PHYSICAL_ADDRESS
    );
    assert_eq!(
        run_at(&mut m, &mut h, mb::OP_CLEAR_POISON, &clear[..0x47], 0).0,
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
    assert!(
        h.writes.is_empty(),
        "no media write for a refused Clear Poison"
    );
    // A failing media write fails the command and keeps the poison.
    m.inject_poison(0, 64).unwrap();
    let mut clear = 0u64.to_le_bytes().to_vec();
    clear.extend([0u8; 64]);
    let mut h = Hooks {
        fail_writes: true,
        ..Default::default()
    };
    assert_eq!(
        run_at(&mut m, &mut h, mb::OP_CLEAR_POISON, &clear, 0).0,
        mb::RC_MEDIA_DISABLED
    );
    assert_eq!(m.poison_list(), vec![(0, 64)]);
}

#[test]
fn inject_poison_limit() {
    let mut m = Mailbox::new(
        MailboxConfig {
            inject_poison_limit: 2,
            ..cfg()
        },
        Box::new(MemLsa(vec![])),
    );
    assert_eq!(
        rc(&mut m, mb::OP_INJECT_POISON, &0u64.to_le_bytes()),
        mb::RC_SUCCESS
    );
    assert_eq!(
        rc(&mut m, mb::OP_INJECT_POISON, &0x1000u64.to_le_bytes()),
        mb::RC_SUCCESS
    );
    assert_eq!(
        rc(&mut m, mb::OP_INJECT_POISON, &0x2000u64.to_le_bytes()),
        mb::RC_INJECT_POISON_LIMIT
    );
    assert_eq!(
        rc(&mut m, mb::OP_INJECT_POISON, &0x1000u64.to_le_bytes()),
        mb::RC_SUCCESS,
        "already poisoned"
    );
}

#[test]
fn poison_list_more_records_across_calls() {
    let mut m = Mailbox::new(
        MailboxConfig {
            payload_log2: 8,
            ..cfg()
        },
        Box::new(MemLsa(vec![])),
    );
    // (256 - 32) / 16 = 14 records per call.
    for i in 0..20u64 {
        m.inject_poison(i * 0x1000, 64).unwrap();
    }
    let q = poison_query(0, (1 << 30) / 64);
    let (_, a) = run(&mut m, mb::OP_GET_POISON_LIST, &q);
    assert_eq!(a[0] & p::FLAG_MORE_RECORDS, p::FLAG_MORE_RECORDS);
    assert_eq!(u16le(&a, 0xa), 14);
    let (_, b) = run(&mut m, mb::OP_GET_POISON_LIST, &q);
    assert_eq!(b[0] & p::FLAG_MORE_RECORDS, 0);
    assert_eq!(u16le(&b, 0xa), 6);
    assert_eq!(u64le(&b, 0x20) & p::ADDR_MASK, 14 * 0x1000);
}

// ---- vendor ----

#[test]
fn vendor_commands_go_to_hooks() {
    let mut m = mbx();
    let mut h = Hooks::default();
    assert_eq!(
        run_at(&mut m, &mut h, 0xc001, &[1, 2, 3], 0),
        (mb::RC_SUCCESS, vec![3, 2, 1])
    );
    assert_eq!(
        run_at(&mut m, &mut h, 0xc002, &[], 0).0,
        mb::RC_INTERNAL_ERROR,
        "output too large"
    );
    assert_eq!(run_at(&mut m, &mut h, 0xffff, &[], 0).0, mb::RC_UNSUPPORTED);
    assert_eq!(rc(&mut m, 0xc001, &[]), mb::RC_SUCCESS);
    assert_eq!(
        run_at(&mut m, &mut NoVendorHooks, 0xc001, &[1], 0).0,
        mb::RC_UNSUPPORTED
    );
}

#[test]
fn a_failed_vendor_command_returns_its_code_and_no_output() {
    let mut m = mbx();
    let mut h = Hooks::default();
    assert_eq!(
        run_at(&mut m, &mut h, 0xc003, &[1, 2], 0),
        (mb::RC_INVALID_INPUT, vec![])
    );
    assert_eq!(m.read(mb::STATUS, 0) & 1, 0, "no background operation");
    assert!(!m.background_busy());
}

// ---- sanitize / background ----

fn bg_status(m: &mut Mailbox, now: u64) -> (u16, u8, u16) {
    let lo = m.read(mb::BG_CMD_STATUS, now);
    let hi = m.read(mb::BG_CMD_STATUS + 4, now);
    (
        (lo & 0xffff) as u16,
        ((lo >> 16) & 0x7f) as u8,
        (hi & 0xffff) as u16,
    )
}

/// Ring the doorbell for Sanitize at `now`; returns the event of the write.
fn start_sanitize(m: &mut Mailbox, h: &mut dyn VendorHooks, now: u64) -> Option<MailboxEvent> {
    m.write(mb::COMMAND, u32::from(mb::OP_SANITIZE), !0, now, h);
    m.write(mb::COMMAND + 4, 0, !0, now, h);
    let ctrl = m.read(mb::CONTROL, now);
    m.write(mb::CONTROL, ctrl | mb::CTRL_DOORBELL, !0, now, h)
}

#[test]
fn sanitize_progress_busy_completion_irq() {
    let mut m = mbx();
    let mut h = Hooks::default();
    m.inject_poison(0x1000, 64).unwrap();
    m.write(mb::CONTROL, mb::CTRL_BG_IRQ, !0, 0, &mut h);
    let t0 = 1_000 * NS_MS;
    assert_eq!(
        start_sanitize(&mut m, &mut h, t0),
        Some(MailboxEvent::SanitizeStarted),
        "the doorbell hands the wipe to the device model"
    );
    assert_eq!(
        m.read(mb::STATUS + 4, t0) & 0xffff,
        u32::from(mb::RC_BACKGROUND_STARTED)
    );
    assert_eq!(m.read(mb::STATUS, t0) & 1, 1);
    assert!(m.sanitize_wiping());
    // While the wipe runs, the deadline is the end of the shortest duration, so that
    // a transport sleeping until then finds a wipe that ended early.
    assert_eq!(m.next_deadline(), Some(t0 + 200 * NS_MS));
    // Percentage: the smaller of the time share (50 of 200 ms: 25) and the wipe's.
    assert_eq!(bg_status(&mut m, t0 + 50 * NS_MS), (mb::OP_SANITIZE, 0, 0));
    m.sanitize_progress(10);
    assert_eq!(bg_status(&mut m, t0 + 50 * NS_MS), (mb::OP_SANITIZE, 10, 0));
    m.sanitize_progress(60);
    assert_eq!(bg_status(&mut m, t0 + 50 * NS_MS), (mb::OP_SANITIZE, 25, 0));
    // Other commands: media/config ones are Busy, status ones still run.
    assert_eq!(
        run_at(&mut m, &mut h, mb::OP_SANITIZE, &[], t0 + NS_MS).0,
        mb::RC_BUSY
    );
    assert_eq!(
        run_at(&mut m, &mut h, mb::OP_INJECT_POISON, &[0; 8], t0 + NS_MS).0,
        mb::RC_BUSY
    );
    assert_eq!(
        run_at(
            &mut m,
            &mut h,
            mb::OP_IDENTIFY_MEMORY_DEVICE,
            &[],
            t0 + NS_MS
        )
        .0,
        mb::RC_SUCCESS
    );
    assert_eq!(m.stats().busy, 2);
    // Status bit 0 stays set while running even though other commands completed.
    assert_eq!(m.read(mb::STATUS, t0 + NS_MS) & 1, 1);
    // The time is up but the wipe is not: still running, at most the wipe's share,
    // and no deadline to spin on.
    assert_eq!(m.poll(t0 + 300 * NS_MS), None);
    assert_eq!(m.next_deadline(), None);
    assert_eq!(
        bg_status(&mut m, t0 + 300 * NS_MS),
        (mb::OP_SANITIZE, 60, 0)
    );
    m.sanitize_progress(100);
    assert_eq!(
        bg_status(&mut m, t0 + 300 * NS_MS).1,
        99,
        "never 100 while running"
    );
    // The wipe ends before the shortest duration: completion waits for the deadline.
    assert_eq!(m.sanitize_wiped(mb::RC_SUCCESS, t0 + 150 * NS_MS), None);
    assert!(!m.sanitize_wiping());
    assert_eq!(m.next_deadline(), Some(t0 + 200 * NS_MS));
    assert_eq!(m.poll(t0 + 199 * NS_MS), None);
    assert_eq!(
        m.poll(t0 + 200 * NS_MS),
        Some(MailboxEvent::BackgroundComplete)
    );
    assert_eq!(
        bg_status(&mut m, t0 + 201 * NS_MS),
        (mb::OP_SANITIZE, 100, mb::RC_SUCCESS)
    );
    assert_eq!(m.read(mb::STATUS, t0) & 1, 0);
    assert!(m.poison_list().is_empty(), "sanitize drops the poison list");
    assert_eq!(m.next_deadline(), None);
    assert_eq!(m.poll(t0 + 400 * NS_MS), None);
    assert_eq!(m.stats().background_completed, 1);
    // A late or second report changes nothing.
    assert_eq!(
        m.sanitize_wiped(mb::RC_INTERNAL_ERROR, t0 + 500 * NS_MS),
        None
    );
    assert_eq!(bg_status(&mut m, t0 + 501 * NS_MS).2, mb::RC_SUCCESS);
    assert_eq!(
        rc(&mut m, mb::OP_SANITIZE, &[0]),
        mb::RC_INVALID_PAYLOAD_LENGTH
    );
}

#[test]
fn sanitize_without_irq_completes_silently() {
    let mut m = mbx();
    run(&mut m, mb::OP_SANITIZE, &[]);
    assert_eq!(m.poll(u64::MAX), None, "the wipe has not ended");
    assert!(m.background_busy());
    assert_eq!(m.sanitize_wiped(mb::RC_SUCCESS, u64::MAX), None);
    assert!(!m.background_busy());
    assert_eq!(m.stats().background_completed, 1);
}

#[test]
fn a_failed_wipe_fails_the_sanitize_and_keeps_the_poison() {
    let mut m = mbx();
    let mut h = Hooks::default();
    m.inject_poison(0x1000, 64).unwrap();
    m.write(mb::CONTROL, mb::CTRL_BG_IRQ, !0, 0, &mut h);
    start_sanitize(&mut m, &mut h, 0);
    assert_eq!(
        m.sanitize_wiped(mb::RC_INTERNAL_ERROR, 300 * NS_MS),
        Some(MailboxEvent::BackgroundComplete)
    );
    assert_eq!(
        bg_status(&mut m, 300 * NS_MS),
        (mb::OP_SANITIZE, 100, mb::RC_INTERNAL_ERROR)
    );
    assert_eq!(m.poison_list(), vec![(0x1000, 64)]);
}

#[test]
fn zero_duration_sanitize_completes_with_its_wipe() {
    let mut m = Mailbox::new(
        MailboxConfig {
            sanitize_duration_ns: 0,
            ..cfg()
        },
        Box::new(MemLsa(vec![])),
    );
    let mut h = Hooks::default();
    assert_eq!(
        start_sanitize(&mut m, &mut h, 5),
        Some(MailboxEvent::SanitizeStarted)
    );
    assert_eq!(
        m.read(mb::STATUS + 4, 5),
        u32::from(mb::RC_BACKGROUND_STARTED)
    );
    assert_eq!(
        m.sanitize_wiped(mb::RC_SUCCESS, 5),
        None,
        "no interrupt asked"
    );
    assert_eq!(bg_status(&mut m, 5), (mb::OP_SANITIZE, 100, 0));
    assert_eq!(m.read(mb::STATUS, 5) & 1, 0);
}

#[test]
fn reset_aborts_background_and_keeps_storage() {
    let mut m = mbx();
    m.inject_poison(0, 64).unwrap();
    m.inject_event(EventLog::Warning, record(1));
    let mut set = vec![0u8; 8];
    set.extend([7u8; 4]);
    run(&mut m, mb::OP_SET_LSA, &set);
    run(&mut m, mb::OP_SET_EVENT_INTERRUPT_POLICY, &[1, 1, 1, 1]);
    m.write(mb::CONTROL, mb::CTRL_BG_IRQ, !0, 0, &mut NoVendorHooks);
    run(&mut m, mb::OP_SANITIZE, &[]);
    m.reset();
    assert_eq!(m.next_deadline(), None);
    assert_eq!(m.poll(u64::MAX), None, "aborted sanitize never completes");
    assert_eq!(
        m.sanitize_wiped(mb::RC_SUCCESS, u64::MAX),
        None,
        "nor does the end of its wipe complete it"
    );
    assert_eq!(m.read(mb::STATUS, 0), 0);
    assert_eq!(m.read(mb::CONTROL, 0), 0);
    assert_eq!(m.read(mb::BG_CMD_STATUS, 0), 0);
    assert_eq!(m.poison_list(), vec![(0, 64)]);
    assert_eq!(m.event_status(), 0b10);
    assert_eq!(run(&mut m, mb::OP_GET_LSA, &get_lsa_in(0, 4)).1, vec![7; 4]);
    assert_eq!(
        run(&mut m, mb::OP_GET_EVENT_INTERRUPT_POLICY, &[]).1,
        vec![0; 5]
    );
}

// ---- robustness ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any opcode, length and payload: no panic, the doorbell reads clear after the
    /// write, Status carries a known return code, the output length fits the payload,
    /// and a failure has no output.
    #[test]
    fn arbitrary_commands_keep_registers_consistent(
        opcode in prop_oneof![
            any::<u16>(),
            (0u16..0x50).prop_map(|x| x << 8),
            prop::sample::select(implemented_commands().iter().map(|c| c.opcode).collect::<Vec<_>>()),
        ],
        len in prop_oneof![0u32..0x100, 0u32..0x20_0000],
        payload in prop::collection::vec(any::<u8>(), 0..0x120),
        now in any::<u64>(),
        ctrl in any::<u32>(),
        sanitizing in any::<bool>(),
    ) {
        let mut m = mbx();
        let mut h = Hooks::default();
        if sanitizing {
            prop_assert_eq!(run_at(&mut m, &mut h, mb::OP_SANITIZE, &[], now).0, mb::RC_BACKGROUND_STARTED);
        }
        m.inject_event(EventLog::Warning, record(1));
        m.inject_poison(0x1000, 0x1000).unwrap();
        for (i, c) in payload.chunks(4).enumerate() {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            m.write(mb::PAYLOAD + 4 * i as u32, u32::from_le_bytes(b), !0, now, &mut h);
        }
        let cmd = u64::from(opcode) | (u64::from(len) << 16);
        m.write(mb::COMMAND, cmd as u32, !0, now, &mut h);
        m.write(mb::COMMAND + 4, (cmd >> 32) as u32, !0, now, &mut h);
        m.write(mb::CONTROL, ctrl | 1, !0, now, &mut h);
        prop_assert_eq!(m.read(mb::CONTROL, now) & 1, 0);
        let rc = m.read(mb::STATUS + 4, now) & 0xffff;
        prop_assert!(rc <= 0x17, "rc {:#x}", rc);
        let out_len = (m.read(mb::COMMAND, now) >> 16) | ((m.read(mb::COMMAND + 4, now) & 0x1f) << 16);
        prop_assert!(out_len <= 4096);
        if rc != 0 {
            prop_assert_eq!(out_len, 0);
        }
        prop_assert_eq!(m.read(mb::COMMAND, now) & 0xffff, u32::from(opcode));
        prop_assert_eq!(m.commands_executed(), 1 + u64::from(sanitizing));
        if sanitizing {
            // Still running (unless its deadline saturated at u64::MAX and was reached).
            prop_assert!(m.background_busy() || now.saturating_add(200 * NS_MS) == u64::MAX);
        }
        // Poll and a second command never panic either.
        let _ = m.poll(now.saturating_add(1));
        let _ = m.read(mb::BG_CMD_STATUS, now);
    }

    /// Arbitrary register accesses at any offset never panic and never leave the
    /// doorbell set.
    #[test]
    fn arbitrary_register_traffic(
        ops in prop::collection::vec((any::<bool>(), 0u32..0x1100, any::<u32>(), any::<u32>(), any::<u64>()), 1..64)
    ) {
        let mut m = mbx();
        let mut h = Hooks::default();
        for (is_write, off, val, mask, now) in ops {
            if is_write {
                let _ = m.write(off, val, mask, now, &mut h);
            } else {
                let _ = m.read(off, now);
            }
            prop_assert_eq!(m.read(mb::CONTROL, now) & 1, 0);
            prop_assert_eq!(m.read(mb::CONTROL, now) & !mb::CTRL_BG_IRQ, 0);
        }
    }
}
