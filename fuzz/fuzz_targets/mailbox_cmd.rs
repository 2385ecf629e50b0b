//! Fuzz target: the CXL mailbox (`mailbox::Mailbox`) through its register interface.
//!
//! Arbitrary opcodes, payloads and payload lengths are written the way a driver
//! does (payload dwords, Command, then Control with the doorbell), mixed with raw
//! register accesses of any mask, time advancing, polls, resets (which abort a
//! running Sanitize), cold resets and fault injection. Vendor opcodes reach a
//! hook whose return code and output size come from the input.
//!
//! Checked after every step, beyond not panicking:
//! - the doorbell reads 0 once the write that rang it returns (commands are
//!   synchronous); Status bit 0 is set exactly while a background operation runs,
//!   and `next_deadline` agrees;
//! - every return code in Status is a spec value (Table 8-34), and a failed
//!   command reports output length 0; the output length never exceeds the payload;
//! - an unknown opcode is Unsupported, an over-long length is Invalid Payload
//!   Length, a foreground-only command during Sanitize is Busy; a vendor opcode
//!   calls the hook once with exactly the payload the driver wrote;
//! - read-only registers (Capabilities, Status, Background Command Status) ignore
//!   writes; reserved bits read 0; offsets past the block read 0;
//! - the LSA changes only by a successful Set LSA, and Get LSA returns it;
//! - poison records stay 64-byte granular inside the capacity;
//! - reset returns the registers to their power-on values and stops Sanitize;
//! - Sanitize hands its wipe to the device model (this harness, which ends it at
//!   once, sometimes with a failure) and never has a deadline in the past while
//!   the wipe runs; it
//!   completes with the wipe's return code and drops the poison list only on
//!   success.

#![no_main]

use arbitrary::Arbitrary;
use cxl_accel_fuzz::{hook_rc, spec_rc, stats, Rng};
use cxl_regs::mailbox as mb;
use libfuzzer_sys::fuzz_target;
use mailbox::{
    implemented_commands, EventLog, EventRecord, Mailbox, MailboxConfig, MailboxEvent, MemLsa,
    ReturnCode, VendorHooks,
};

const CAPACITY: u64 = 512 << 20;
const LSA_SIZE: usize = 2048;

#[derive(Arbitrary, Debug)]
struct Input {
    /// 8..=12 (clamped by the mailbox when outside 8..=20).
    payload_log2: u8,
    /// Sanitize duration in microseconds (0: completes at once).
    sanitize_us: u16,
    event_log_capacity: u8,
    hook_seed: u64,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Opcode {
    /// An implemented command (index into the command table).
    Known(u8),
    Sanitize,
    Vendor(u16),
    Raw(u16),
}

#[derive(Arbitrary, Debug)]
enum Len {
    /// The payload's own length.
    Payload,
    /// The payload's length, off by a little.
    Near(i8),
    /// Any value of the 21-bit field.
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Command {
        opcode: Opcode,
        payload: Vec<u8>,
        len: Len,
        bg_irq: bool,
    },
    /// Set LSA / Get LSA with plausible fields, to reach the data paths.
    Lsa {
        set: bool,
        offset: u16,
        data_or_len: Vec<u8>,
    },
    /// Inject Poison, Clear Poison or Get Poison List with well-formed input
    /// (`line`: 64-byte line number; `count`: lines to list).
    PoisonCmd {
        kind: u8,
        line: u32,
        count: u16,
        fill: u8,
    },
    Write {
        offset: u16,
        value: u32,
        mask: u32,
    },
    Read {
        offset: u16,
    },
    Advance {
        us: u32,
    },
    /// Run time past the running background operation's deadline.
    Finish,
    Poll,
    Reset,
    ColdReset,
    InjectEvent {
        log: u8,
        flags: u32,
        data: Vec<u8>,
    },
    InjectPoison {
        dpa: u64,
        len: u16,
    },
}

/// Vendor hooks that answer from the input and record what they were asked.
struct Hooks {
    rng: Rng,
    vendor_calls: Vec<(u16, Vec<u8>, Result<(), ReturnCode>, Vec<u8>)>,
    media_writes: Vec<(u64, usize)>,
}

impl VendorHooks for Hooks {
    fn vendor_command(
        &mut self,
        opcode: u16,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode> {
        let rc = hook_rc(&mut self.rng);
        // Sometimes more than the payload holds (the mailbox must refuse it).
        let n = self.rng.below(5000) as usize;
        output.extend((0..n).map(|i| (i as u8) ^ (opcode as u8)));
        self.vendor_calls
            .push((opcode, input.to_vec(), rc, output.clone()));
        rc
    }
    fn media_write(&mut self, dpa: u64, data: &[u8]) -> Result<(), ReturnCode> {
        self.media_writes.push((dpa, data.len()));
        if self.rng.below(8) == 0 {
            Err(ReturnCode::InternalError)
        } else {
            Ok(())
        }
    }
}

struct Harness {
    mb: Mailbox,
    hooks: Hooks,
    now: u64,
    psize: usize,
    cap: u32,
    lsa: Vec<u8>,
    doorbells: u64,
    /// Return code of the last Sanitize wipe this harness reported.
    wipe_rc: u16,
    /// Whether a background operation ran at the last `check`.
    was_busy: bool,
}

impl Harness {
    fn read64(&mut self, off: u32) -> u64 {
        let l = self.mb.read(off, self.now);
        let h = self.mb.read(off + 4, self.now);
        u64::from(l) | (u64::from(h) << 32)
    }

    fn write(&mut self, off: u32, value: u32, mask: u32) -> Option<MailboxEvent> {
        let mut ev = self.mb.write(off, value, mask, self.now, &mut self.hooks);
        if ev == Some(MailboxEvent::SanitizeStarted) {
            // The device model's part: wipe the media and report the end.
            stats::count("sanitize started");
            assert!(
                self.mb.sanitize_wiping(),
                "Sanitize did not wait for its wipe"
            );
            assert!(
                self.mb.next_deadline().is_none_or(|d| d > self.now),
                "a deadline already passed during the wipe"
            );
            self.wipe_rc = if self.hooks.rng.below(8) == 0 {
                mb::RC_INTERNAL_ERROR
            } else {
                mb::RC_SUCCESS
            };
            ev = self.mb.sanitize_wiped(self.wipe_rc, self.now);
            assert!(!self.mb.sanitize_wiping());
        }
        self.check_event(ev);
        ev
    }

    fn check_event(&mut self, ev: Option<MailboxEvent>) {
        let irq = self.mb.read(mb::CONTROL, self.now) & mb::CTRL_BG_IRQ != 0;
        match ev {
            Some(MailboxEvent::BackgroundComplete) => {
                stats::count("sanitize complete");
                assert!(irq, "BG completion irq while disabled")
            }
            Some(MailboxEvent::SanitizeStarted) => panic!("SanitizeStarted outside a doorbell"),
            // Events come from inject_event, not from register writes.
            Some(MailboxEvent::EventAdded) => panic!("EventAdded from a register access"),
            None => {}
        }
    }

    /// Write `payload` into the payload registers, one masked dword at a time.
    fn write_payload(&mut self, payload: &[u8]) {
        for (i, chunk) in payload.chunks(4).enumerate() {
            let mut v = [0u8; 4];
            let mut m = [0u8; 4];
            v[..chunk.len()].copy_from_slice(chunk);
            m[..chunk.len()].fill(0xff);
            let off = mb::PAYLOAD + (i as u32) * 4;
            self.write(off, u32::from_le_bytes(v), u32::from_le_bytes(m));
        }
    }

    /// Ring the doorbell for `opcode` with length `len`, as a driver does.
    fn command(&mut self, opcode: u16, len: u32, bg_irq: bool) {
        let len = len & mb::CMD_LEN_MAX;
        self.write(mb::COMMAND, u32::from(opcode) | (len << 16), !0);
        self.write(mb::COMMAND + 4, len >> 16, !0);
        let ctrl = mb::CTRL_DOORBELL | if bg_irq { mb::CTRL_BG_IRQ } else { 0 };
        self.ring(mb::CONTROL, ctrl, !0);
    }

    /// Write Control with the doorbell set (`value & mask` has bit 0), then check
    /// what a driver may rely on once the write returns.
    fn ring(&mut self, off: u32, value: u32, mask: u32) {
        let cmd = self.read64(mb::COMMAND);
        let opcode = (cmd & mb::CMD_OPCODE_MASK) as u16;
        let len = ((cmd & mb::CMD_LEN_MASK) >> mb::CMD_LEN_SHIFT) as usize;
        let payload_before = self.mb.payload().to_vec();
        let busy_before = self.mb.background_busy();
        let calls_before = self.hooks.vendor_calls.len();
        self.write(off, value, mask);
        self.doorbells += 1;

        let control = self.mb.read(mb::CONTROL, self.now);
        assert_eq!(control & mb::CTRL_DOORBELL, 0, "doorbell still set");
        let status = self.read64(mb::STATUS);
        let rc = (status >> 32) as u16;
        let cmd = self.read64(mb::COMMAND);
        let out_len = ((cmd & mb::CMD_LEN_MASK) >> mb::CMD_LEN_SHIFT) as usize;
        assert_eq!(
            cmd & mb::CMD_OPCODE_MASK,
            u64::from(opcode),
            "opcode changed"
        );
        assert!(
            spec_rc(rc),
            "rc {rc:#x} for opcode {opcode:#x} is not a spec value"
        );
        assert!(
            out_len <= self.psize,
            "output length {out_len} > payload {}",
            self.psize
        );
        if rc != mb::RC_SUCCESS && rc != mb::RC_BACKGROUND_STARTED {
            assert_eq!(out_len, 0, "failed command {opcode:#x} reports output");
        }
        if rc == mb::RC_BACKGROUND_STARTED {
            assert_eq!(
                opcode,
                mb::OP_SANITIZE,
                "only Sanitize runs in the background"
            );
        }
        stats::count(match rc {
            mb::RC_SUCCESS if opcode >= mb::OP_VENDOR_FIRST => "vendor success",
            mb::RC_SUCCESS => "success",
            mb::RC_BACKGROUND_STARTED => "background started",
            mb::RC_BUSY => "busy",
            _ => "failed",
        });

        let new_calls = &self.hooks.vendor_calls[calls_before..];
        if len > self.psize {
            assert_eq!(rc, mb::RC_INVALID_PAYLOAD_LENGTH, "len {len:#x} > payload");
            assert!(new_calls.is_empty());
        } else if opcode >= mb::OP_VENDOR_FIRST {
            assert_eq!(new_calls.len(), 1, "vendor hook calls");
            let (op, input, hook_rc, out) = &new_calls[0];
            assert_eq!(*op, opcode);
            assert_eq!(
                input[..],
                payload_before[..len],
                "hook input is not the payload"
            );
            match *hook_rc {
                Ok(()) if out.len() <= self.psize => {
                    assert_eq!(rc, mb::RC_SUCCESS);
                    assert_eq!(out_len, out.len());
                    assert_eq!(self.mb.payload()[..out.len()], out[..]);
                }
                Ok(()) => assert_eq!(rc, mb::RC_INTERNAL_ERROR, "oversized output"),
                Err(code) => {
                    assert_eq!(rc, code.code(), "the hook's code in Status");
                    assert_eq!(out_len, 0, "a failed command has no output");
                }
            }
        } else {
            assert!(new_calls.is_empty(), "vendor hook for opcode {opcode:#x}");
            match implemented_commands().iter().find(|c| c.opcode == opcode) {
                None => assert_eq!(rc, mb::RC_UNSUPPORTED, "opcode {opcode:#x}"),
                Some(c) if busy_before && !c.during_background => {
                    assert_eq!(rc, mb::RC_BUSY, "opcode {opcode:#x} during Sanitize")
                }
                Some(_) => {}
            }
        }
        if rc == mb::RC_SUCCESS && opcode == mb::OP_IDENTIFY_MEMORY_DEVICE {
            assert_eq!(out_len, mb::IDENTIFY_OUTPUT_LEN);
        }
        if rc == mb::RC_SUCCESS && opcode == mb::OP_SET_LSA {
            let off = u32::from_le_bytes(payload_before[0..4].try_into().unwrap()) as usize;
            let data = &payload_before[mb::lsa::SET_DATA..len];
            self.lsa[off..off + data.len()].copy_from_slice(data);
        }
        if rc == mb::RC_SUCCESS && opcode == mb::OP_GET_LSA {
            stats::count("get lsa");
            let off = u32::from_le_bytes(payload_before[0..4].try_into().unwrap()) as usize;
            let n = u32::from_le_bytes(payload_before[4..8].try_into().unwrap()) as usize;
            assert_eq!(out_len, n);
            assert_eq!(
                self.mb.payload()[..n],
                self.lsa[off..off + n],
                "Get LSA data"
            );
        }
        for &(dpa, n) in &self.hooks.media_writes {
            assert_eq!(n, 64);
            assert_eq!(dpa % 64, 0);
            assert!(dpa + 64 <= CAPACITY);
        }
        if !self.hooks.media_writes.is_empty() {
            stats::count("media write");
        }
        self.hooks.media_writes.clear();
    }

    /// Invariants of the register interface, whatever happened before.
    fn check(&mut self) {
        assert_eq!(self.mb.read(mb::CAPABILITIES, self.now), self.cap);
        let control = self.mb.read(mb::CONTROL, self.now);
        assert_eq!(
            control & !mb::CTRL_BG_IRQ,
            0,
            "Control reserved bits or doorbell"
        );
        let status = self.read64(mb::STATUS);
        let busy = self.mb.background_busy();
        assert_eq!(status & mb::STATUS_BG_OPERATION != 0, busy, "Status bit 0");
        // A Sanitize that finished since the last check (a reset leaves opcode 0).
        if self.was_busy && !busy && self.read64(mb::BG_CMD_STATUS) & 0xffff != 0 {
            self.check_sanitize_done();
        }
        self.was_busy = busy;
        assert_eq!(status & 0xffff_fffe, 0, "Status reserved bits");
        assert_eq!(status >> 48, 0, "Status vendor bits");
        assert!(spec_rc((status >> 32) as u16), "Status rc {status:#x}");
        assert_eq!(self.mb.next_deadline().is_some(), busy, "deadline vs busy");
        let cmd_hi = self.mb.read(mb::COMMAND + 4, self.now);
        assert_eq!(cmd_hi & !0x1f, 0, "Command high reserved bits");
        let bg = self.read64(mb::BG_CMD_STATUS);
        let pct = (bg & mb::BG_PERCENT_MASK) >> mb::BG_PERCENT_SHIFT;
        assert!(pct <= 100, "percent {pct}");
        assert_eq!(bg & 0xff80_0000 & 0xffff_ffff, 0, "BG status reserved bits");
        assert_eq!(bg >> 48, 0, "BG status vendor bits");
        assert!(spec_rc((bg >> 32) as u16), "BG status rc");
        if busy {
            assert!(pct <= 99);
            assert_eq!(bg & mb::BG_OPCODE_MASK, u64::from(mb::OP_SANITIZE));
            assert_eq!(bg >> 32, 0);
        }
        let end = self.mb.block_len();
        assert_eq!(end as usize, 0x20 + self.psize);
        assert_eq!(self.mb.read(end, self.now), 0);
        // The LSA changes only through Set LSA.
        let mut lsa = vec![0u8; LSA_SIZE];
        self.mb.lsa().read(0, &mut lsa).unwrap();
        assert!(lsa == self.lsa, "LSA changed behind Set LSA");
        for (dpa, len) in self.mb.poison_list() {
            assert!(
                len > 0 && dpa % 64 == 0 && len % 64 == 0,
                "poison {dpa:#x}+{len:#x}"
            );
            assert!(dpa.checked_add(len).is_some_and(|e| e <= CAPACITY));
        }
        assert_eq!(self.mb.stats().commands, self.doorbells);
    }

    /// A finished Sanitize reports the wipe's return code, and drops the poison
    /// list only when the wipe succeeded.
    fn check_sanitize_done(&mut self) {
        let bg = self.read64(mb::BG_CMD_STATUS);
        assert_eq!(bg & mb::BG_OPCODE_MASK, u64::from(mb::OP_SANITIZE));
        assert_eq!((bg >> 32) as u16, self.wipe_rc, "Sanitize return code");
        if self.wipe_rc == mb::RC_SUCCESS {
            assert!(self.mb.poison_list().is_empty(), "sanitize keeps poison");
        }
    }

    fn after_reset(&mut self) {
        assert!(!self.mb.background_busy());
        assert_eq!(self.read64(mb::STATUS), 0);
        assert_eq!(self.read64(mb::BG_CMD_STATUS), 0);
        assert_eq!(self.read64(mb::COMMAND), 0);
        assert_eq!(self.mb.read(mb::CONTROL, self.now), 0);
        assert!(self.mb.payload().iter().all(|&b| b == 0));
    }
}

fuzz_target!(|input: Input| {
    let payload_log2 = 8 + u32::from(input.payload_log2 % 5);
    let cfg = MailboxConfig {
        capacity: CAPACITY,
        payload_log2,
        sanitize_duration_ns: u64::from(input.sanitize_us) * 1000,
        event_log_capacity: u16::from(input.event_log_capacity).max(1),
        ..MailboxConfig::default()
    };
    let lsa: Vec<u8> = (0..LSA_SIZE).map(|i| (i * 7) as u8).collect();
    let mut h = Harness {
        mb: Mailbox::new(cfg, Box::new(MemLsa(lsa.clone()))),
        hooks: Hooks {
            rng: Rng::new(input.hook_seed),
            vendor_calls: Vec::new(),
            media_writes: Vec::new(),
        },
        now: 0,
        psize: 1 << payload_log2,
        cap: 0,
        lsa,
        doorbells: 0,
        wipe_rc: mb::RC_SUCCESS,
        was_busy: false,
    };
    h.cap = h.mb.read(mb::CAPABILITIES, 0);
    assert_eq!(h.cap & mb::CAP_PAYLOAD_SIZE_MASK, payload_log2);
    h.check();

    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Command {
                opcode,
                payload,
                len,
                bg_irq,
            } => {
                let opcode = match opcode {
                    Opcode::Known(i) => {
                        let t = implemented_commands();
                        t[usize::from(i) % t.len()].opcode
                    }
                    Opcode::Sanitize => mb::OP_SANITIZE,
                    Opcode::Vendor(v) => mb::OP_VENDOR_FIRST | v,
                    Opcode::Raw(v) => v,
                };
                let len = match len {
                    Len::Payload => payload.len() as u32,
                    Len::Near(d) => (payload.len() as i64 + i64::from(d)).max(0) as u32,
                    Len::Raw(v) => v,
                };
                h.write_payload(&payload);
                h.command(opcode, len, bg_irq);
            }
            Op::Lsa {
                set,
                offset,
                data_or_len,
            } => {
                let offset = u32::from(offset) % (LSA_SIZE as u32 + 64);
                let mut p = offset.to_le_bytes().to_vec();
                if set {
                    p.extend_from_slice(&[0; 4]);
                    p.extend_from_slice(&data_or_len);
                } else {
                    let n = data_or_len.len() as u32 * 16;
                    p.extend_from_slice(&n.to_le_bytes());
                }
                h.write_payload(&p);
                let op = if set { mb::OP_SET_LSA } else { mb::OP_GET_LSA };
                let bg = h.mb.read(mb::CONTROL, h.now) & mb::CTRL_BG_IRQ != 0;
                h.command(op, p.len() as u32, bg);
            }
            Op::PoisonCmd {
                kind,
                line,
                count,
                fill,
            } => {
                let addr = (u64::from(line) * 64) % (CAPACITY + 4096);
                let mut p = addr.to_le_bytes().to_vec();
                let op = match kind % 3 {
                    0 => mb::OP_INJECT_POISON,
                    1 => {
                        p.extend(std::iter::repeat_n(fill, 64));
                        mb::OP_CLEAR_POISON
                    }
                    _ => {
                        p.extend_from_slice(&u64::from(count).to_le_bytes());
                        mb::OP_GET_POISON_LIST
                    }
                };
                h.write_payload(&p);
                let bg = h.mb.read(mb::CONTROL, h.now) & mb::CTRL_BG_IRQ != 0;
                h.command(op, p.len() as u32, bg);
            }
            Op::Write {
                offset,
                value,
                mask,
            } => {
                let off = u32::from(offset);
                let ro = [
                    mb::CAPABILITIES,
                    mb::STATUS,
                    mb::STATUS + 4,
                    mb::BG_CMD_STATUS,
                    mb::BG_CMD_STATUS + 4,
                ];
                if off & !3 == mb::CONTROL && value & mask & mb::CTRL_DOORBELL != 0 {
                    // A raw doorbell: the same guarantees as a driver's.
                    h.ring(off, value, mask);
                } else {
                    let before: Vec<u32> = ro.iter().map(|&r| h.mb.read(r, h.now)).collect();
                    h.write(off, value, mask);
                    let after: Vec<u32> = ro.iter().map(|&r| h.mb.read(r, h.now)).collect();
                    assert_eq!(before, after, "a write changed a read-only register");
                }
            }
            Op::Read { offset } => {
                let v = h.mb.read(u32::from(offset), h.now);
                if u32::from(offset) & !3 >= h.mb.block_len() {
                    assert_eq!(v, 0, "read past the block");
                }
            }
            Op::Advance { us } => {
                h.now = h.now.saturating_add(u64::from(us) * 1000);
            }
            Op::Finish => {
                if let Some(d) = h.mb.next_deadline() {
                    h.now = h.now.max(d);
                    let ev = h.mb.poll(h.now);
                    h.check_event(ev);
                    assert!(
                        !h.mb.background_busy(),
                        "poll at the deadline left it running"
                    );
                    let bg = h.read64(mb::BG_CMD_STATUS);
                    assert_eq!((bg & mb::BG_PERCENT_MASK) >> mb::BG_PERCENT_SHIFT, 100);
                    assert_eq!((bg >> 32) as u16, h.wipe_rc);
                }
            }
            Op::Poll => {
                let ev = h.mb.poll(h.now);
                h.check_event(ev);
            }
            Op::Reset => {
                h.mb.reset();
                h.after_reset();
                assert!(h.mb.poll(u64::MAX).is_none(), "aborted sanitize completed");
            }
            Op::ColdReset => {
                h.mb.cold_reset();
                h.after_reset();
            }
            Op::InjectEvent { log, flags, data } => {
                let log = EventLog::ALL[usize::from(log % 4)];
                let _ = h.mb.inject_event(
                    log,
                    EventRecord {
                        uuid: [log as u8; 16],
                        flags,
                        data,
                    },
                );
            }
            Op::InjectPoison { dpa, len } => {
                let _ = h.mb.inject_poison(dpa % (CAPACITY + 4096), u64::from(len));
            }
        }
        h.check();
    }
    stats::input_done();
});
