//! Out-of-process firmware (`--firmware-socket`): the real daemon, with its seccomp
//! filters on, a vfio-user client in the role of the guest, and this test in the role
//! of the vendor's firmware process: a good one, and hostile ones (one that never
//! answers, one that answers garbage, one that dies in the middle of a commit). In
//! every case the client sees the documented default within the deadline, and the
//! daemon stays up.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use cxl_regs::{hdm, mailbox as mbx};
use serde_json::{json, Value};

/// Control register of decoder 0 once Committed or Error Not Committed is set (or
/// after 500 ms), and how long that took from the commit write.
fn commit0(c: &mut vfio_user::Client, size: u64) -> (u32, Duration) {
    let t = Instant::now();
    let ctrl = program_decoder(c, 0, 0x1_0000_0000, size, hdm::CTRL_COMMIT);
    (ctrl, t.elapsed())
}

fn committed(ctrl: u32) -> bool {
    ctrl & hdm::CTRL_COMMITTED != 0
}
fn refused(ctrl: u32) -> bool {
    ctrl & hdm::CTRL_ERROR_NOT_COMMITTED != 0
}

/// Uncommit decoder 0 (clear Commit) for the next attempt.
fn uncommit0(c: &mut vfio_user::Client) {
    write32(c, BAR0, decoder_reg(0, hdm::DEC_CONTROL), 0);
}

/// A firmware process: connects to the daemon's firmware socket, and answers each
/// question with what `answer` returns (`None`: no answer). Returns the questions it
/// saw, one per line of the channel, and stops when `answer` says `Stop`.
enum Act {
    Reply(String),
    Silent,
    /// Close the connection (the process dies) without answering.
    Die,
}

struct Vendor {
    questions: mpsc::Receiver<Value>,
    thread: std::thread::JoinHandle<()>,
}

fn vendor(path: &Path, mut answer: impl FnMut(&Value) -> Act + Send + 'static) -> Vendor {
    let start = Instant::now();
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("cannot connect to the firmware socket: {e}"),
        }
    };
    let (tx, questions) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut writer = stream.try_clone().unwrap();
        let reader = BufReader::new(stream);
        for line in reader.lines() {
            let Ok(line) = line else { return };
            let q: Value = serde_json::from_str(&line).unwrap();
            let act = if q.get("hook").is_some() {
                answer(&q)
            } else {
                Act::Silent
            };
            let _ = tx.send(q);
            match act {
                Act::Reply(a) => {
                    if writer.write_all(format!("{a}\n").as_bytes()).is_err() {
                        return;
                    }
                }
                Act::Silent => {}
                Act::Die => return,
            }
        }
    });
    Vendor { questions, thread }
}

impl Vendor {
    /// The next message the daemon sent (hello, notifications, questions).
    fn next(&self) -> Value {
        self.questions
            .recv_timeout(Duration::from_secs(5))
            .expect("the daemon sent nothing")
    }
    /// The next question for `hook`, skipping other messages.
    fn next_hook(&self, hook: &str) -> Value {
        loop {
            let m = self.next();
            if m["hook"] == hook {
                return m;
            }
        }
    }
}

fn start(deadline_ms: u64) -> Backend {
    let dir = std::sync::Arc::new(test_dir());
    let fw = dir.path().join("fw.sock");
    Backend::start_in(
        dir.clone(),
        &[
            "--firmware-socket",
            fw.to_str().unwrap(),
            "--firmware-deadline-ms",
            &deadline_ms.to_string(),
            "--seccomp",
            "on",
            "--memory-size",
            "1G",
        ],
    )
}

fn fw_path(b: &Backend) -> std::path::PathBuf {
    b.dir.path().join("fw.sock")
}

/// Wait until `status` shows a firmware process connected (`want`).
fn wait_connected(b: &Backend, want: bool) -> Value {
    let t = Instant::now();
    loop {
        let st = b.ctl(r#"{"cmd":"status"}"#);
        if st["firmware_socket"]["connected"] == want {
            return st;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{st}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn answer_id(q: &Value, rest: Value) -> String {
    let mut a = rest;
    a["id"] = q["id"].clone();
    a.to_string()
}

#[test]
fn a_firmware_process_answers_the_hooks() {
    let b = start(200);
    let fw = vendor(&fw_path(&b), |q| {
        let a = match q["hook"].as_str().unwrap() {
            // Commits over 512 MiB are refused, others take 30 ms.
            "commit" if q["size"].as_u64().unwrap() > 512 << 20 => json!({"decision":"reject"}),
            "commit" => json!({"decision":"delay","ms":30}),
            "vendor_command" => {
                let input = q["input"].as_str().unwrap();
                match q["opcode"].as_u64().unwrap() {
                    0xc000 if input.len() == 4 => json!({
                        "rc":"success",
                        "output": format!("{input}{input}"),
                        "events":[{"log":"warning","uuid":"00112233445566778899aabbccddeeff","data":"0a0b"}]
                    }),
                    0xc000 => json!({"rc":"invalid_payload_length"}),
                    _ => json!({"rc":"unsupported"}),
                }
            }
            "transfer_fw" => {
                let data = q["data"].as_str().unwrap();
                // Images must carry "ACME" (41434d45) after the 16-byte revision.
                if data.get(32..40) == Some("41434d45") {
                    json!({"accept":true})
                } else {
                    json!({"reject":"verification"})
                }
            }
            "media_ready" => json!({"media":"ready","after_ms":0}),
            "power_on_decoders" => json!({"decoders":[]}),
            "cxl_reset" => json!({"result":"complete","ms":10}),
            "activate_fw" => json!({"reject":"activation_needs_cold_reset"}),
            other => panic!("unexpected hook {other}"),
        };
        Act::Reply(answer_id(q, a))
    });
    let hello = fw.next();
    assert_eq!(hello["notify"], "hello");
    assert_eq!(hello["protocol"], 1);
    assert_eq!(hello["memory_size"], 1u64 << 30);
    // The device was built (power-on hooks) before any process connected: those
    // took their defaults.
    let defaults_before = wait_connected(&b, true)["firmware_socket"]["defaults"].clone();

    let mut c = b.client();
    // DEVICE_RESET (QEMU sends it when it connects): the reset notification,
    // power-on decoders and media readiness.
    c.reset().unwrap();
    assert_eq!(fw.next()["notify"], "reset");
    assert_eq!(fw.next_hook("power_on_decoders")["capacity"], 1u64 << 30);
    assert_eq!(fw.next_hook("media_ready")["kind"], "conventional");

    let (ctrl, took) = commit0(&mut c, 256 << 20);
    assert!(committed(ctrl), "{ctrl:#x}");
    assert!(
        took >= Duration::from_millis(30),
        "the process's delay: {took:?}"
    );
    let q = fw.next_hook("commit");
    assert_eq!(
        (q["decoder"].clone(), q["size"].clone()),
        (json!(0), json!(256 << 20))
    );
    uncommit0(&mut c);
    let (ctrl, _) = commit0(&mut c, 768 << 20);
    assert!(refused(ctrl), "refused by the process: {ctrl:#x}");
    uncommit0(&mut c);

    // A vendor opcode with its output, its input checked by the process, and an
    // event record it generated (Warning log: Event Status bit 1).
    assert_eq!(
        mailbox(&mut c, 0xc000, &[0xab, 0xcd]),
        (0, vec![0xab, 0xcd, 0xab, 0xcd])
    );
    assert_eq!(
        mailbox(&mut c, 0xc000, &[1]).0,
        mbx::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(mailbox(&mut c, 0xc001, &[]).0, mbx::RC_UNSUPPORTED);
    let ev_status = read32(&mut c, BAR0, cxl_regs::layout::DEV_STATUS_OFFSET);
    assert_eq!(ev_status & 0xf, 1 << 1, "a Warning record");

    // Transfer FW: the process checks the image.
    let part = |magic: &[u8; 4]| {
        let mut v = vec![0u8; 0x80];
        v[1] = 2;
        let mut img = b"vendor-rev-00002".to_vec();
        img.extend_from_slice(magic);
        img.resize(64, 0);
        v.extend_from_slice(&img);
        v
    };
    assert_eq!(
        mailbox(&mut c, mbx::OP_TRANSFER_FW, &part(b"JUNK")).0,
        mbx::RC_FW_VERIFICATION_FAILED
    );
    assert_eq!(
        mailbox(&mut c, mbx::OP_TRANSFER_FW, &part(b"ACME")).0,
        mbx::RC_SUCCESS
    );
    assert_eq!(
        mailbox(&mut c, mbx::OP_ACTIVATE_FW, &[0, 2]).0,
        mbx::RC_ACTIVATION_FAILED_COLD_RESET
    );

    let st = b.ctl(r#"{"cmd":"status"}"#);
    let fs = &st["firmware_socket"];
    assert_eq!(fs["timeouts"], 0, "{st}");
    assert_eq!(fs["garbage"], 0, "{st}");
    assert_eq!(fs["defaults"], defaults_before, "{st}");
    assert_eq!(st["device"]["firmware"], "socket:default");
    drop(c);
    drop(fw);
}

#[test]
fn a_process_that_never_answers_costs_the_deadline_and_no_more() {
    let deadline = Duration::from_millis(40);
    let b = start(deadline.as_millis() as u64);
    let fw = vendor(&fw_path(&b), |_| Act::Silent);
    wait_connected(&b, true);
    let mut c = b.client();
    // The default firmware's answers, each after about the deadline: the commit is
    // accepted, the vendor opcode is Unsupported.
    let (ctrl, took) = commit0(&mut c, 256 << 20);
    assert!(committed(ctrl), "{ctrl:#x}");
    assert!(took >= deadline, "answered before the deadline: {took:?}");
    assert!(took < deadline + Duration::from_millis(300), "{took:?}");
    let t = Instant::now();
    assert_eq!(mailbox(&mut c, 0xc000, &[]).0, mbx::RC_UNSUPPORTED);
    let took = t.elapsed();
    assert!(
        took >= deadline && took < deadline + Duration::from_millis(300),
        "{took:?}"
    );
    let st = b.ctl(r#"{"cmd":"status"}"#);
    let fs = &st["firmware_socket"];
    assert!(fs["timeouts"].as_u64().unwrap() >= 2, "{st}");
    assert!(fs["defaults"].as_u64().unwrap() >= 2, "{st}");
    assert!(b.log().contains("no answer within 40 ms"), "{}", b.log());
    drop(fw);
}

#[test]
fn garbage_takes_the_default_at_once() {
    // A long deadline: the defaults must come from the garbage, not from a timeout.
    let b = start(1000);
    let fw = vendor(&fw_path(&b), |q| match q["hook"].as_str().unwrap() {
        "commit" => Act::Reply("this is not JSON".into()),
        "vendor_command" => Act::Reply(answer_id(q, json!({"rc": 42.5}))),
        "transfer_fw" => Act::Reply(json!([1, 2, 3]).to_string()),
        _ => Act::Reply(answer_id(q, json!({"media":"ready"}))),
    });
    wait_connected(&b, true);
    let mut c = b.client();
    let (ctrl, took) = commit0(&mut c, 256 << 20);
    assert!(committed(ctrl), "the default accepts: {ctrl:#x}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // A wrong type in a well-formed answer.
    let t = Instant::now();
    assert_eq!(mailbox(&mut c, 0xc000, &[]).0, mbx::RC_UNSUPPORTED);
    assert!(t.elapsed() < Duration::from_millis(500));
    // Valid JSON, not an object: the default (the mailbox's own checks) takes it.
    let mut part = vec![0u8; 0x80];
    part[1] = 2;
    part.extend_from_slice(&[b'r'; 32]);
    let t = Instant::now();
    assert_eq!(
        mailbox(&mut c, mbx::OP_TRANSFER_FW, &part).0,
        mbx::RC_SUCCESS
    );
    assert!(t.elapsed() < Duration::from_millis(500));
    let st = b.ctl(r#"{"cmd":"status"}"#);
    let fs = &st["firmware_socket"];
    assert_eq!(fs["garbage"], 2, "{st}");
    assert_eq!(fs["wrong_type"], 1, "{st}");
    assert_eq!(fs["timeouts"], 0, "{st}");
    assert_eq!(
        fs["connected"], true,
        "garbage does not drop the connection"
    );
    drop(fw);
}

#[test]
fn a_process_that_dies_mid_commit_is_replaced_by_the_next_one() {
    let b = start(1000);
    // It reads the commit question and dies.
    let fw = vendor(&fw_path(&b), |q| match q["hook"].as_str().unwrap() {
        "commit" => Act::Die,
        _ => Act::Silent,
    });
    wait_connected(&b, true);
    let mut c = b.client();
    let (ctrl, took) = commit0(&mut c, 256 << 20);
    assert!(committed(ctrl), "the default accepts: {ctrl:#x}");
    assert!(
        took < Duration::from_millis(500),
        "not the 1 s deadline: {took:?}"
    );
    fw.thread.join().unwrap();
    let st = wait_connected(&b, false);
    assert!(
        st["firmware_socket"]["closed"].as_u64().unwrap() >= 1,
        "{st}"
    );
    uncommit0(&mut c);
    // With nobody connected, hooks answer at once.
    let (ctrl, took) = commit0(&mut c, 256 << 20);
    assert!(
        committed(ctrl) && took < Duration::from_millis(500),
        "{took:?}"
    );
    uncommit0(&mut c);

    // The process comes back: it is consulted again.
    let fw = vendor(&fw_path(&b), |q| {
        Act::Reply(answer_id(q, json!({"decision":"reject"})))
    });
    wait_connected(&b, true);
    let (ctrl, _) = commit0(&mut c, 256 << 20);
    assert!(refused(ctrl), "the new process refuses: {ctrl:#x}");
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["firmware_socket"]["connections"], 2, "{st}");
    drop(c);
    drop(fw);
    // The daemon is still up (and confined): it answers and ends cleanly.
    let mut b = b;
    assert!(b.is_running());
    assert!(b.stop().success(), "{}", b.log());
}

/// examples/firmware.py, the Acme firmware in Python (examples/README.md), through
/// the real daemon: the behaviour its documentation promises. The harness's group v
/// checks the same in a guest; this runs it on the host in a second.
#[test]
fn the_python_example_firmware_behaves_as_documented() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/firmware.py");
    let b = start(200);
    let mut py = std::process::Command::new("python3")
        .arg(&script)
        .arg(fw_path(&b))
        .arg("--once")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs examples/firmware.py (scripts/test installs python3)");
    wait_connected(&b, true);
    let mut c = b.client();
    c.reset().unwrap();
    // Media: ready 100 ms after a conventional reset (DVSEC Range 1 Size Low bit 1,
    // Memory_Active, CXL r3.1 §8.1.3.9).
    let cfg = config_space(&mut c);
    let dv = find_dvsec(&cfg, 0).unwrap() as u64;
    let t = Instant::now();
    assert_eq!(
        read32(&mut c, CONFIG, dv + 0x1c) & 2,
        0,
        "not ready after the reset"
    );
    while read32(&mut c, CONFIG, dv + 0x1c) & 2 == 0 {
        assert!(t.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        t.elapsed() >= Duration::from_millis(80),
        "{:?}",
        t.elapsed()
    );

    // 0xC000 Set Commit Limit: lengths and values checked, previous limit returned.
    let set = |c: &mut vfio_user::Client, v: u64| mailbox(c, 0xc000, &v.to_le_bytes());
    assert_eq!(
        mailbox(&mut c, 0xc000, &[0; 4]).0,
        mbx::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(set(&mut c, 1 << 20).0, mbx::RC_INVALID_INPUT);
    assert_eq!(set(&mut c, 2 << 30).0, mbx::RC_INVALID_INPUT);
    assert_eq!(
        set(&mut c, 256 << 20),
        (0, (1u64 << 30).to_le_bytes().to_vec())
    );
    // The commit policy: over the limit refused, within it after 2 ms.
    let (ctrl, _) = commit0(&mut c, 512 << 20);
    assert!(refused(ctrl), "{ctrl:#x}");
    uncommit0(&mut c);
    let (ctrl, took) = commit0(&mut c, 256 << 20);
    assert!(
        committed(ctrl) && took >= Duration::from_millis(2),
        "{ctrl:#x} {took:?}"
    );

    // 0xC001 Raise Event: the record lands in the Warning log (Event Status bit 1).
    assert_eq!(
        mailbox(&mut c, 0xc001, &[1]).0,
        mbx::RC_INVALID_PAYLOAD_LENGTH
    );
    assert_eq!(mailbox(&mut c, 0xc001, &[4, 0]).0, mbx::RC_INVALID_INPUT);
    assert_eq!(mailbox(&mut c, 0xc001, &[1, 0x42]).0, mbx::RC_SUCCESS);
    let (rc, out) = mailbox(&mut c, mbx::OP_GET_EVENT_RECORDS, &[1]);
    assert_eq!((rc, le16(&out, 0x14)), (0, 1));
    assert_eq!(
        &out[0x20..0x30],
        &[0x41, 0x43, 0x4d, 0x45, 0x45, 0x56, 0x4e, 0x54, 0x80, 0, 0, 0, 0, 0, 0, 1]
    );
    assert_eq!(out[0x20 + 0x30], 0x42);

    // Transfer FW: revision, ACME, body, then the CRC32 of all that, little-endian
    // (0x30b24db3 for this image, computed with Python's zlib.crc32).
    let image = |good: bool| {
        let mut v = b"py-acme 1.2.3\0\0\0ACME".to_vec();
        v.extend_from_slice(&[9; 40]);
        let crc: u32 = if good { 0x30b2_4db3 } else { 0x30b2_4db2 };
        v.extend_from_slice(&crc.to_le_bytes());
        let mut part = vec![0u8; 0x80];
        part[1] = 2;
        part.extend_from_slice(&v);
        part
    };
    assert_eq!(
        mailbox(&mut c, mbx::OP_TRANSFER_FW, &image(false)).0,
        mbx::RC_FW_VERIFICATION_FAILED
    );
    assert_eq!(
        mailbox(&mut c, mbx::OP_TRANSFER_FW, &image(true)).0,
        mbx::RC_SUCCESS
    );
    assert_eq!(
        mailbox(&mut c, mbx::OP_ACTIVATE_FW, &[0, 2]).0,
        mbx::RC_ACTIVATION_FAILED_COLD_RESET
    );
    assert_eq!(
        mailbox(&mut c, mbx::OP_ACTIVATE_FW, &[1, 2]).0,
        mbx::RC_SUCCESS
    );

    let st = b.ctl(r#"{"cmd":"status"}"#);
    let fs = &st["firmware_socket"];
    assert_eq!(
        (
            fs["timeouts"].clone(),
            fs["garbage"].clone(),
            fs["wrong_type"].clone()
        ),
        (json!(0), json!(0), json!(0)),
        "{st}"
    );
    drop(c);
    let mut b = b;
    assert!(b.stop().success());
    // --once: the process leaves with the backend.
    let t = Instant::now();
    while py.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "firmware.py did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
