//! The firmware hooks and the engine operations, through the registers a guest uses.
//!
//! Expected values come from the spec (the section is named where a bit is read) and
//! from the test firmware's own answers, never from the model's constants.

mod common;

use std::sync::{Arc, Mutex};

use accel_type2::*;
use common::*;
use cxl_regs::layout;

/// DVSEC CXL Range 1 Size Low (CXL r3.1 §8.1.3.9): Memory_Active is bit 1.
const RANGE1_SIZE_LOW: u64 = 0x1c;
const MEMORY_ACTIVE: u32 = 1 << 1;
/// DVSEC CXL Control2 / Status2 (§8.1.3.4, §8.1.3.5).
const CXL_CTRL2: u64 = 0x10;
const CXL_STATUS2: u64 = 0x12;
const INITIATE_CXL_RESET: u16 = 1 << 2;
const CXL_RESET_COMPLETE: u16 = 1 << 1;
/// PCIe Device Control (PCIe r6 §7.5.3.4): Initiate Function Level Reset, bit 15.
const INITIATE_FLR: u16 = 1 << 15;

/// What the test firmware was asked, shared with the test.
#[derive(Default)]
struct Seen {
    resets: Vec<ResetKind>,
    media_asked: Vec<ResetKind>,
    commits: Vec<usize>,
    dues: Vec<usize>,
}

/// A firmware that answers from a script.
struct Scripted {
    seen: Arc<Mutex<Seen>>,
    /// Media readiness per reset kind.
    media: fn(ResetKind) -> MediaReadiness,
    /// Decisions for commit, then for each time a delayed commit falls due.
    decisions: Vec<CommitDecision>,
    events: Vec<(EventLog, EventRecord)>,
}

impl Scripted {
    fn new(media: fn(ResetKind) -> MediaReadiness) -> (Self, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        (
            Self {
                seen: seen.clone(),
                media,
                decisions: Vec::new(),
                events: Vec::new(),
            },
            seen,
        )
    }
    fn next_decision(&mut self) -> CommitDecision {
        if self.decisions.is_empty() {
            CommitDecision::Accept
        } else {
            self.decisions.remove(0)
        }
    }
}

impl Firmware for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn on_reset(&mut self, kind: ResetKind) {
        self.seen.lock().unwrap().resets.push(kind);
    }
    fn media_ready(&mut self, kind: ResetKind) -> MediaReadiness {
        self.seen.lock().unwrap().media_asked.push(kind);
        (self.media)(kind)
    }
    fn on_commit(&mut self, index: usize, _d: &hdm::DecoderState) -> CommitDecision {
        self.seen.lock().unwrap().commits.push(index);
        self.next_decision()
    }
    fn on_commit_due(&mut self, index: usize, _d: &hdm::DecoderState) -> CommitDecision {
        self.seen.lock().unwrap().dues.push(index);
        self.next_decision()
    }
    fn vendor_command(
        &mut self,
        opcode: u16,
        input: &[u8],
        _output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode> {
        // 0xC0E0: generate an event record in the log named by the first byte.
        match (opcode, input) {
            (0xc0e0, [log]) => {
                let log = EventLog::from_type(*log).ok_or(ReturnCode::InvalidInput)?;
                self.events.push((
                    log,
                    EventRecord {
                        uuid: [0xa5; 16],
                        flags: 0,
                        data: vec![1, 2, 3],
                    },
                ));
                Ok(())
            }
            (0xc0e0, _) => Err(ReturnCode::InvalidPayloadLength),
            _ => Err(ReturnCode::Unsupported),
        }
    }
    fn transfer_fw(&mut self, part: &FwPart<'_>) -> Result<(), FwError> {
        // Images must carry "ACME" right after the 16-byte revision.
        match part.data.get(16..20) {
            Some(b"ACME") => Ok(()),
            _ => Err(FwError::Verification),
        }
    }
    fn take_events(&mut self) -> Vec<(EventLog, EventRecord)> {
        std::mem::take(&mut self.events)
    }
}

fn memory_active(d: &mut AccelDevice) -> bool {
    let dv = find_dvsec(d, 0).unwrap();
    cfg_r32(d, dv + RANGE1_SIZE_LOW) & MEMORY_ACTIVE != 0
}

/// Media Status of the Memory Device Status register (CXL r3.1 §8.2.8.5.1, bits
/// 3:2: 0 not ready, 1 ready, 2 error).
fn media_status(d: &mut AccelDevice) -> u32 {
    (bar_r32(d, 0, layout::MEMDEV_STATUS_OFFSET) >> 2) & 3
}

fn slow_media(kind: ResetKind) -> MediaReadiness {
    match kind {
        ResetKind::Conventional => MediaReadiness::ReadyAfter(50 * MIB),
        ResetKind::Flr => MediaReadiness::ReadyAfter(0),
        ResetKind::CxlReset => MediaReadiness::ReadyAfter(30_000_000),
    }
}

#[test]
fn media_comes_ready_when_firmware_says_after_each_reset_kind() {
    let (fw, seen) = Scripted::new(slow_media);
    let (mut d, clock) = device_with(small_config(), Box::new(fw));
    // Power-on is a conventional reset: 50 Mi ns (about 52 ms) until ready.
    assert!(!memory_active(&mut d));
    assert_eq!(media_status(&mut d), 0, "not ready");
    clock.advance(50 * MIB - 1);
    assert!(!memory_active(&mut d), "1 ns early");
    clock.advance(1);
    assert!(memory_active(&mut d));
    assert_eq!(media_status(&mut d), 1, "ready");
    assert!(d.status().media_ready);

    // FLR: firmware says ready at once (CXL r3.1 §9.5 leaves the memory alone).
    let exp = find_cap(&mut d, 0x10).unwrap();
    cfg_w16(&mut d, exp + 8, INITIATE_FLR);
    assert!(memory_active(&mut d));

    // CXL Reset: not ready while it runs and for 30 ms after it ends (the default
    // firmware's reset takes 10 ms).
    let dv = find_dvsec(&mut d, 0).unwrap();
    cfg_w16(&mut d, dv + CXL_CTRL2, INITIATE_CXL_RESET);
    assert!(!memory_active(&mut d));
    clock.advance(10_000_000);
    assert_eq!(
        cfg_r16(&mut d, dv + CXL_STATUS2) & CXL_RESET_COMPLETE,
        CXL_RESET_COMPLETE
    );
    assert!(
        !memory_active(&mut d),
        "the 30 ms count from the reset's end"
    );
    assert_eq!(media_status(&mut d), 0);
    clock.advance(30_000_000 - 1);
    assert!(!memory_active(&mut d));
    clock.advance(1);
    assert!(memory_active(&mut d));
    assert_eq!(media_status(&mut d), 1);

    // A conventional reset asks again.
    d.reset();
    assert!(!memory_active(&mut d));
    let s = seen.lock().unwrap();
    use ResetKind::*;
    assert_eq!(s.resets, vec![Flr, CxlReset, Conventional]);
    assert_eq!(
        s.media_asked,
        vec![Conventional, Flr, CxlReset, Conventional]
    );
}

#[test]
fn failed_media_reads_error_until_the_next_reset() {
    fn failing(kind: ResetKind) -> MediaReadiness {
        match kind {
            ResetKind::Flr => MediaReadiness::Failed,
            _ => MediaReadiness::ReadyAfter(0),
        }
    }
    let (fw, _) = Scripted::new(failing);
    let (mut d, clock) = device_with(small_config(), Box::new(fw));
    assert!(memory_active(&mut d));
    let exp = find_cap(&mut d, 0x10).unwrap();
    cfg_w16(&mut d, exp + 8, INITIATE_FLR);
    clock.advance(1 << 40);
    assert!(!memory_active(&mut d));
    assert_eq!(media_status(&mut d), 2, "error");
    assert_eq!(d.next_deadline(), None, "nothing to wait for");
    d.reset();
    assert!(memory_active(&mut d));
    assert_eq!(media_status(&mut d), 1);
}

/// Program endpoint decoder 0 (CXL r3.1 §8.2.4.20: base, size, then Control with
/// Commit) and return its Control register.
fn commit_decoder0(d: &mut AccelDevice, size: u64) -> u32 {
    let hdm = layout::HDM_OFFSET;
    bar_w32(d, 0, hdm + 0x10, 0);
    bar_w32(d, 0, hdm + 0x14, 1);
    bar_w32(d, 0, hdm + 0x18, size as u32);
    bar_w32(d, 0, hdm + 0x1c, (size >> 32) as u32);
    bar_w32(d, 0, hdm + 0x20, 1 << 9);
    bar_r32(d, 0, hdm + 0x20)
}

/// Committed (bit 10), Error Not Committed (bit 11) of decoder 0's Control.
fn decoder0_state(d: &mut AccelDevice) -> (bool, bool) {
    let c = bar_r32(d, 0, layout::HDM_OFFSET + 0x20);
    (c & (1 << 10) != 0, c & (1 << 11) != 0)
}

#[test]
fn a_delayed_commit_is_decided_again_when_its_time_is_up() {
    let (mut fw, seen) = Scripted::new(|_| MediaReadiness::ReadyAfter(0));
    fw.decisions = vec![
        CommitDecision::Delay(1_000_000),
        CommitDecision::Delay(2_000_000),
        CommitDecision::Reject,
    ];
    let (mut d, clock) = device_with(small_config(), Box::new(fw));
    commit_decoder0(&mut d, 256 * MIB);
    assert_eq!(decoder0_state(&mut d), (false, false), "pending");
    clock.advance(1_000_000);
    assert_eq!(decoder0_state(&mut d), (false, false), "delayed again");
    clock.advance(1_999_999);
    assert_eq!(decoder0_state(&mut d), (false, false));
    clock.advance(1);
    assert_eq!(decoder0_state(&mut d), (false, true), "then rejected");
    let s = seen.lock().unwrap();
    assert_eq!((s.commits.clone(), s.dues.clone()), (vec![0], vec![0, 0]));
    drop(s);
    assert_eq!(d.status().commits.rejected_by_firmware, 1);
}

#[test]
fn firmware_generates_event_records() {
    let (fw, _) = Scripted::new(|_| MediaReadiness::ReadyAfter(0));
    let (mut d, _) = device_with(small_config(), Box::new(fw));
    enable_msix(&mut d);
    // MSI-X event interrupts for all four logs (CXL r3.1 §8.2.9.2.5).
    assert_eq!(mbox_cmd(&mut d, 0x0103, &[1, 1, 1, 1]).0, 0);
    d.take_interrupts();
    assert_eq!(mbox_cmd(&mut d, 0xc0e0, &[2]).0, 0);
    assert_eq!(mbox_cmd(&mut d, 0xc0e0, &[9]).0, 2, "Invalid Input");
    assert_eq!(
        mbox_cmd(&mut d, 0xc0e0, &[]).0,
        0x16,
        "Invalid Payload Length"
    );
    // Event Status (§8.2.8.3.1): bit 2 is the Failure log.
    assert_eq!(bar_r32(&mut d, 0, layout::DEV_STATUS_OFFSET), 1 << 2);
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_EVENTS)]
    );
    // Get Event Records of the Failure log: one record, with the firmware's UUID.
    let (rc, out) = mbox_cmd(&mut d, 0x0100, &[2]);
    assert_eq!(rc, 0);
    // Table 8-51: Event Record Count at 0x14, the records from 0x20.
    assert_eq!(
        u16::from_le_bytes([out[0x14], out[0x15]]),
        1,
        "record count"
    );
    assert_eq!(&out[0x20..0x30], &[0xa5; 16]);
}

#[test]
fn firmware_refuses_an_image_through_the_mailbox() {
    let (fw, _) = Scripted::new(|_| MediaReadiness::ReadyAfter(0));
    let (mut d, _) = device_with(small_config(), Box::new(fw));
    let part = |magic: &[u8; 4]| {
        let mut v = vec![0u8; 0x80];
        v[1] = 2; // slot 2, action 0 (full transfer)
        let mut img = b"acme-image-v2\0\0\0".to_vec();
        img.extend_from_slice(magic);
        img.resize(128, 0);
        v.extend_from_slice(&img);
        v
    };
    // Transfer FW (0x0201): FW Verification Failed is 0x0a (CXL r3.1 Table 8-34).
    assert_eq!(mbox_cmd(&mut d, 0x0201, &part(b"XXXX")).0, 0x0a);
    assert_eq!(mbox_cmd(&mut d, 0x0201, &part(b"ACME")).0, 0);
    let (_, info) = mbox_cmd(&mut d, 0x0200, &[]);
    assert_eq!(&info[0x20..0x2d], b"acme-image-v2");
}

/// An engine operation: the sum of the bytes of `[SRC, SRC + LEN)`, in 4 KiB steps;
/// a LEN that is not a multiple of 4 fails with device error 3.
struct ByteSum {
    steps: Arc<Mutex<u64>>,
}

impl EngineOperation for ByteSum {
    fn name(&self) -> &str {
        "byte-sum"
    }
    fn check(&self, req: &OpRequest, ctx: &OpContext<'_>) -> Result<(), OpError> {
        if !req.len.is_multiple_of(4) {
            return Err(OpError::Device(3));
        }
        engine::check_device_source(req, ctx)
    }
    fn run(
        &self,
        req: &OpRequest,
        mem: &mut dyn DeviceMemory,
        _guest: &dyn GuestMemory,
        stop: &dyn Fn() -> bool,
    ) -> Result<u64, OpError> {
        let mut sum = 0u64;
        let mut buf = [0u8; 4096];
        let mut at = 0;
        while at < req.len {
            if stop() {
                return Err(OpError::Aborted);
            }
            let n = (req.len - at).min(4096) as usize;
            mem.read(req.src + at, &mut buf[..n])
                .map_err(|_| OpError::DeviceRange)?;
            sum += buf[..n].iter().map(|&b| u64::from(b)).sum::<u64>();
            *self.steps.lock().unwrap() += 1;
            at += n as u64;
        }
        Ok(sum)
    }
}

/// The engine's registers (the accelerator's own, `cxl_regs::layout::engine`).
mod eng {
    pub const SRC: u64 = 0x08;
    pub const LEN: u64 = 0x18;
    pub const CONTROL: u64 = 0x20;
    pub const DOORBELL: u64 = 0x24;
    pub const STATUS: u64 = 0x28;
    pub const RESULT: u64 = 0x30;
}

fn start_op(d: &mut AccelDevice, op: u8, src: u64, len: u64) {
    bar_w64(d, 4, eng::SRC, src);
    bar_w64(d, 4, eng::LEN, len);
    // CONTROL: IRQ_ENABLE (bit 1) and OP in bits 15:8.
    bar_w32(d, 4, eng::CONTROL, (u32::from(op) << 8) | 2);
    bar_w32(d, 4, eng::DOORBELL, 1);
}

#[test]
fn an_engine_operation_computes_on_device_memory_with_its_interrupt() {
    let (mut d, _) = device(small_config());
    let steps = Arc::new(Mutex::new(0));
    assert!(d.add_engine_operation(
        0x42,
        Arc::new(ByteSum {
            steps: steps.clone()
        })
    ));
    assert!(
        !d.add_engine_operation(
            0,
            Arc::new(ByteSum {
                steps: steps.clone()
            })
        ),
        "op 0 is the copy"
    );
    assert_eq!(d.engine_operations(), vec![(0x42, "byte-sum".to_string())]);
    enable_msix(&mut d);
    d.bar_write(2, 0x1000, &[1, 2, 3, 250], &NoGuestMemory);
    d.bar_write(2, 0x2ffc, &[7, 0, 0, 0], &NoGuestMemory);
    start_op(&mut d, 0x42, 0x1000, 0x2000);
    // STATUS DONE (bit 1), RESULT the sum, and the DMA vector.
    assert_eq!(bar_r32(&mut d, 4, eng::STATUS), 1 << 1);
    assert_eq!(bar_r64(&mut d, 4, eng::RESULT), 1 + 2 + 3 + 250 + 7);
    assert_eq!(*steps.lock().unwrap(), 2);
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_DMA)]
    );
    // Refused at the doorbell: the operation's own check (device error 3 is 0x83),
    // a range outside memory (2), an operation the device lacks (7).
    for (op, src, len, code) in [
        (0x42, 0, 6, 0x83),
        (0x42, 256 * MIB - 4, 8, 2),
        (0x43, 0, 4, 7),
    ] {
        start_op(&mut d, op, src, len);
        let st = bar_r32(&mut d, 4, eng::STATUS);
        assert_eq!((st & 0x7, (st >> 8) & 0xff), (1 << 2, code), "op {op:#x}");
        assert_eq!(
            bar_r64(&mut d, 4, eng::RESULT),
            0,
            "a doorbell clears RESULT"
        );
        assert_eq!(
            d.take_interrupts(),
            vec![Interrupt::Msix(layout::MSIX_VEC_DMA)]
        );
    }
}

#[test]
fn an_offloaded_operation_runs_as_a_job_and_a_reset_aborts_it() {
    let (mut d, _) = device(small_config());
    let steps = Arc::new(Mutex::new(0));
    d.add_engine_operation(0x42, Arc::new(ByteSum { steps }));
    d.set_offload(true);
    d.bar_write(2, 0, &[9; 16], &NoGuestMemory);
    start_op(&mut d, 0x42, 0, 16);
    assert_eq!(
        bar_r32(&mut d, 4, eng::STATUS),
        1,
        "BUSY while the job runs"
    );
    let mut jobs = d.take_jobs();
    let Some(Job::Dma(job)) = jobs.pop() else {
        panic!("no engine job")
    };
    assert_eq!(job.op(), 0x42);
    // The transport runs it on its own handle of device memory, without the device.
    let mut mem = VecMemory::new(256 * MIB as usize);
    mem.write(0, &[9; 16]).unwrap();
    let r = job.run(&mut mem, &NoGuestMemory, &|| false);
    assert_eq!(r, Ok(9 * 16));
    assert!(d.complete_dma(job.id(), r));
    assert_eq!(bar_r64(&mut d, 4, eng::RESULT), 144);
    // A job a reset aborted stops, and its late result is ignored.
    start_op(&mut d, 0x42, 0, 16);
    let Some(Job::Dma(job)) = d.take_jobs().pop() else {
        panic!("no engine job")
    };
    d.reset();
    assert_eq!(
        job.run(&mut mem, &NoGuestMemory, &|| false),
        Err(0x06),
        "ERR_ABORTED"
    );
    assert!(!d.complete_dma(job.id(), Ok(1)));
    assert_eq!(bar_r32(&mut d, 4, eng::STATUS), 0);
    assert_eq!(bar_r64(&mut d, 4, eng::RESULT), 0);
    // The operation survives the reset: the device still has it.
    assert_eq!(d.engine_operations().len(), 1);
}
