//! Security properties of the real daemon (issue 6; backend/SECCOMP.md): it runs unprivileged,
//! its sockets and files are private (0600), and with `--seccomp on` each thread is
//! confined to the system calls it makes, which a whole vfio-user session, the
//! control socket, a stop/continue and a clean shutdown need and no more.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cxl_regs::{layout, mailbox as mbx};

const MIB: u64 = 1 << 20;
/// Exit status of a daemon stopped by its seccomp filter (128 + SIGSYS).
const EXIT_SECCOMP: i32 = 159;
const TRAPPED: &str = "seccomp: system call";

fn proc_status_ids(pid: i32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line[key.len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

#[test]
fn daemon_runs_unprivileged_with_private_sockets_and_files() {
    let dir = Arc::new(test_dir());
    let mem = dir.path().join("mem.img");
    let lsa = dir.path().join("lsa.img");
    let b = Backend::start_in(dir.clone(), &file_backed_args(&mem, &lsa));
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    let expect = if as_root() { DAEMON_ID } else { me };
    let uids = proc_status_ids(b.pid(), "Uid:");
    assert_eq!(uids, vec![expect; 4], "real, effective, saved, fs uid");
    let gids = proc_status_ids(b.pid(), "Gid:");
    if as_root() {
        assert_eq!(gids, vec![DAEMON_ID; 4], "real, effective, saved, fs gid");
        assert!(
            proc_status_ids(b.pid(), "Groups:").is_empty(),
            "supplementary groups"
        );
    }
    let caps = std::fs::read_to_string(format!("/proc/{}/status", b.pid())).unwrap();
    let eff = caps.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(eff.ends_with("0000000000000000"), "{eff}");

    for path in [&b.socket, &b.control, &mem, &lsa] {
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{} is not 0600",
            path.display()
        );
        assert_eq!(meta.uid(), expect, "{} owner", path.display());
    }
    // Root (as QEMU runs) still connects to the 0600 socket of another user.
    let mut c = b.client();
    assert_eq!(
        read32(&mut c, BAR4, layout::engine::ID),
        layout::engine::ID_VALUE
    );
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["config"]["seccomp"], false);
}

/// Wait until BAR2 reads back zeros at `off` (after Sanitize), or panic.
fn wait_zeroed(c: &mut vfio_user::Client, off: u64, len: usize) {
    let start = Instant::now();
    loop {
        let mut b = vec![0u8; len];
        c.region_read(BAR2, off, &mut b).unwrap();
        if b.iter().all(|&x| x == 0) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sanitize did not zero device memory"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn seccomp_on_serves_a_full_session() {
    use layout::engine::*;
    let dir = Arc::new(test_dir());
    let mem = dir.path().join("mem.img");
    let lsa = dir.path().join("lsa.img");
    let mut args = vec!["--seccomp", "on"];
    args.extend(file_backed_args(&mem, &lsa));
    let mut b = Backend::start_in(dir.clone(), &args);
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["config"]["seccomp"], true, "{st}");

    // VERSION, DEVICE_GET_INFO, GET_REGION_INFO for every region, GET_IRQ_INFO.
    let mut c = b.client();
    for index in 0..5 {
        c.get_irq_info(index).unwrap();
    }
    let cfg = config_space(&mut c);
    assert_eq!(le16(&cfg, 0), 0x1234);
    // BAR2 through the fd QEMU would map, and through REGION_WRITE/READ.
    let map = map_region(&c, BAR2, 0, (256 * MIB) as usize);
    let data = pattern(5, 8192);
    map.write((100 * MIB) as usize, &data);
    c.region_write(BAR2, 0x1000, &data).unwrap();
    let mut got = vec![0u8; data.len()];
    c.region_read(BAR2, 100 * MIB, &mut got).unwrap();
    assert_eq!(got, data);

    // DMA_MAP with an fd, SET_IRQS with an eventfd, the DMA engine both ways, MSI-X.
    const GPA: u64 = 0x1_0000_0000;
    const RAM: usize = 2 << 20;
    let ram = map_guest_ram(&mut c, GPA, RAM);
    enable_msix(&mut c);
    let done = register_msix(&mut c, u32::from(layout::MSIX_VEC_DMA));
    ram.write(0x3000, &data);
    let s = dma(&mut c, GPA + 0x3000, 0x40_0000, data.len() as u64, false);
    assert_eq!(s & STATUS_ERROR, 0, "status {s:#x}");
    assert!(wait_eventfd(done.as_raw_fd(), Duration::from_secs(2)).is_some());
    let s = dma(&mut c, 0x1000, GPA + 0x10_0000, data.len() as u64, true);
    assert_eq!(s & STATUS_ERROR, 0, "status {s:#x}");
    assert_eq!(ram.read(0x10_0000, data.len()), data);
    // A bad DMA address is an error status, not a crash.
    let s = dma(&mut c, 0x10, 0, 64, false);
    assert_ne!(s & STATUS_ERROR, 0);
    c.dma_unmap(GPA, RAM as u64).unwrap();

    // Mailbox: Identify, Set/Get LSA (file writes and syncs), Sanitize (hole punching).
    let (rc, _) = mailbox(&mut c, mbx::OP_IDENTIFY_MEMORY_DEVICE, &[]);
    assert_eq!(rc, mbx::RC_SUCCESS);
    set_lsa(&mut c, 0x40, b"confined label");
    assert_eq!(get_lsa(&mut c, 0x40, 14), b"confined label");
    let (rc, _) = mailbox(&mut c, mbx::OP_SANITIZE, &[]);
    assert_eq!(rc, mbx::RC_BACKGROUND_STARTED);
    wait_zeroed(&mut c, 100 * MIB, data.len());
    // A CXL Reset with Mem Clr (CXL r3.1 §9.7): its wipe also runs on the worker.
    c.region_write(BAR2, 100 * MIB, &data).unwrap();
    let cfg = config_space(&mut c);
    let dvsec = find_dvsec(&cfg, 0).expect("CXL Device DVSEC") as u64;
    // Control2 (+0x10): Mem Clr Enable (bit 3) and Initiate CXL Reset (bit 2).
    write16(&mut c, CONFIG, dvsec + 0x10, 0x8 | 0x4);
    let start = Instant::now();
    // Status2 (+0x12): CXL Reset Complete (bit 1) or Error (bit 2).
    while read16(&mut c, CONFIG, dvsec + 0x12) & 0x6 == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "CXL Reset never ended"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(read16(&mut c, CONFIG, dvsec + 0x12) & 0x6, 0x2, "Complete");
    wait_zeroed(&mut c, 100 * MIB, data.len());

    // The control socket: status, injections (which raise interrupts), a bad request.
    let r = b.ctl(r#"{"cmd":"inject-poison","dpa":4096,"len":64}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = b.ctl(r#"{"cmd":"inject-event","log":"warning"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = b.ctl("{not json");
    assert_eq!(r["ok"], false);

    // DEVICE_RESET, then a disconnect and the next client.
    c.reset().unwrap();
    drop(map);
    drop(c);
    let mut c = b.client();
    assert_eq!(read32(&mut c, BAR4, ID), ID_VALUE);

    // Stopped and continued in the middle of its waits (restart_syscall).
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(b.pid(), libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(b.pid(), libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read32(&mut c, BAR4, ID), ID_VALUE);
    assert_eq!(b.ctl(r#"{"cmd":"status"}"#)["ok"], true);
    drop(c);

    // A clean shutdown: flush, sockets removed, exit 0.
    let status = b.stop();
    let log = b.log();
    assert!(status.success(), "{status}\n{log}");
    assert!(!b.socket.exists() && !b.control.exists());
    assert!(!log.contains(TRAPPED), "{log}");
    for thread in ["main", "control", "signals", "worker"] {
        assert!(
            log.contains(&format!("seccomp: {thread} thread confined")),
            "{log}"
        );
    }
    // The LSA reached the file.
    let lsa_bytes = std::fs::read(&lsa).unwrap();
    assert_eq!(&lsa_bytes[0x40..0x40 + 14], b"confined label");
}

#[test]
fn seccomp_on_stops_while_a_client_waits_between_messages() {
    // Between messages the vfio-user thread blocks in recvmsg; on SIGTERM the
    // signal thread ends that receive with shutdown(2), which its filter allows.
    let mut b = Backend::start(&["--seccomp", "on"]);
    let mut c = b.client();
    assert_eq!(
        read32(&mut c, BAR4, layout::engine::ID),
        layout::engine::ID_VALUE
    );
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let status = b.stop();
    let log = b.log();
    assert!(status.success(), "{status}\n{log}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!log.contains(TRAPPED), "{log}");
    assert!(log.contains("stopping; dropping the client"), "{log}");
    assert!(!b.socket.exists());
    drop(c);
}

/// Send a control request whose connection may die with the daemon.
fn ctl_raw(b: &Backend, request: &str) -> String {
    let mut s = UnixStream::connect(&b.control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn seccomp_stops_a_forbidden_system_call() {
    const REQUEST: &str = r#"{"cmd":"debug-forbidden-syscall"}"#;
    // Without the filter, the call (socket(AF_INET)) is made and the daemon lives.
    let b = Backend::start(&[]);
    let r = b.ctl(REQUEST);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["socket"], true, "{r}");
    drop(b);

    // With it, the call is not made: the process ends with 159 and says why.
    let mut b = Backend::start(&["--seccomp", "on"]);
    let mut c = b.client();
    assert_eq!(
        read32(&mut c, BAR4, layout::engine::ID),
        layout::engine::ID_VALUE
    );
    let reply = ctl_raw(&b, REQUEST);
    assert!(!reply.contains("\"ok\":true"), "{reply}");
    let status = b.wait_exit(Duration::from_secs(10));
    let log = b.log();
    assert_eq!(status.code(), Some(EXIT_SECCOMP), "{status}\n{log}");
    assert!(
        log.contains(&format!(
            "{TRAPPED} {} is not allowed in the control thread",
            libc::SYS_socket
        )),
        "{log}"
    );
}

#[test]
fn seccomp_that_cannot_be_installed_is_a_clear_error() {
    // Run the daemon under a filter of our own that refuses seccomp(2) itself.
    let program = seccompiler::BpfProgram::try_from(
        seccompiler::SeccompFilter::new(
            [(libc::SYS_seccomp, vec![])].into_iter().collect(),
            seccompiler::SeccompAction::Allow,
            seccompiler::SeccompAction::Errno(libc::EPERM as u32),
            std::env::consts::ARCH.try_into().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let dir = test_dir();
    let sock = dir.path().join("s.sock");
    let ctl = dir.path().join("c.sock");
    let mem = dir.path().join("mem.img");
    let mut cmd = daemon_command();
    cmd.args(["--seccomp", "on", "--memory-size", "256M", "--socket"])
        .arg(&sock)
        .arg("--control")
        .arg(&ctl)
        .arg("--memory-file")
        .arg(&mem)
        .env("RUST_LOG", "warn");
    // SAFETY: runs in the child before exec; installing a prepared filter makes only
    // prctl(2) and seccomp(2) calls and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&program).map_err(std::io::Error::other)?;
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}: {err}", out.status);
    assert_eq!(out.status.signal(), None);
    assert!(
        err.contains("cannot install the seccomp filter") && err.contains("--seccomp off"),
        "{err}"
    );
    assert!(!sock.exists() && !ctl.exists() && !mem.exists());
}

#[test]
fn shutdown_removes_only_its_own_sockets() {
    let mut b = Backend::start(&[]);
    // While the daemon runs, somebody else puts their own files at both paths.
    for path in [&b.socket, &b.control] {
        std::fs::remove_file(path).unwrap();
        std::fs::write(path, b"not the daemon's").unwrap();
    }
    let status = b.stop();
    assert!(status.success(), "{status}\n{}", b.log());
    for path in [&b.socket, &b.control] {
        assert_eq!(
            std::fs::read(path).unwrap(),
            b"not the daemon's",
            "{} was removed at shutdown",
            path.display()
        );
    }
}

/// Watches `path` from another thread while `bind` creates and removes a socket
/// there `rounds` times; returns every mode other than 0600 seen.
fn modes_seen_while_binding(rounds: usize, bind: impl Fn(&std::path::Path)) -> Vec<u32> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let mut odd = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    let mode = m.permissions().mode() & 0o777;
                    if mode != 0o600 && !odd.contains(&mode) {
                        odd.push(mode);
                    }
                }
            }
            odd
        })
    };
    for _ in 0..rounds {
        bind(&path);
        std::fs::remove_file(&path).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap()
}

#[test]
fn sockets_never_exist_with_a_wider_mode_than_0600() {
    // SAFETY: umask(2) has no preconditions; 022 is the usual default, under which a
    // socket created without care is 0755 until it is chmod'ed.
    let old = unsafe { libc::umask(0o022) };
    let control =
        modes_seen_while_binding(400, |p| drop(backend::control::bind_socket(p).unwrap()));
    let vfio = modes_seen_while_binding(400, |p| {
        let s = backend::vfio_user::Server::bind(p).unwrap();
        // Keep the file: the server removes it when dropped.
        std::mem::forget(s);
    });
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let octal = |m: &[u32]| m.iter().map(|m| format!("{m:o}")).collect::<Vec<_>>();
    assert!(
        control.is_empty(),
        "control socket seen with modes {:?}",
        octal(&control)
    );
    assert!(
        vfio.is_empty(),
        "vfio-user socket seen with modes {:?}",
        octal(&vfio)
    );
}

/// Writes control requests without reading a reply; returns the bytes written when
/// the daemon stopped taking them (no progress for two seconds), or `cap`.
fn write_until_refused(s: &mut UnixStream, request: &[u8], cap: usize) -> usize {
    let chunk = request.repeat(4096);
    let mut written = 0usize;
    while written < cap {
        let at = written % chunk.len();
        match s.write(&chunk[at..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 2000) } == 0 {
                    return written;
                }
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    written
}

#[test]
fn control_replies_are_bounded_by_a_reader_that_never_reads() {
    let b = Backend::start(&[]);
    let request = b"{\"cmd\":\"x\"}\n";
    let mut s = UnixStream::connect(&b.control).unwrap();
    s.set_nonblocking(true).unwrap();
    const CAP: usize = 8 << 20;
    let written = write_until_refused(&mut s, request, CAP);
    assert!(
        written < 2 << 20,
        "the daemon read {written} bytes of requests while none of their replies was read"
    );
    // Complete the last request, then read every reply: none was lost.
    s.set_nonblocking(false).unwrap();
    let rest = (request.len() - written % request.len()) % request.len();
    let mut reader = s.try_clone().unwrap();
    let replies = std::thread::spawn(move || {
        reader
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        all
    });
    s.write_all(&request[request.len() - rest..]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let all = replies.join().unwrap();
    let lines = all.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(
        lines,
        written.div_ceil(request.len()),
        "one reply per request"
    );
    assert!(
        all.starts_with(b"{\"error\":\"unknown command"),
        "{}",
        String::from_utf8_lossy(&all[..80])
    );
    assert_eq!(b.ctl(r#"{"cmd":"status"}"#)["ok"], true);
}
