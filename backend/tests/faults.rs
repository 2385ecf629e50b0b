//! Fault tests of the real daemon (issue 6): a crash (SIGKILL) in mid-traffic loses
//! no device memory or LSA with `--memory-file`/`--lsa-file`; storage that is
//! unwritable or full, a socket path held by a regular file, and bad configuration
//! values fail at startup with a clear message and exit status, and leave nothing
//! behind. (QEMU killed in mid-traffic is in scripts/lib/faults.sh, with a real VM.)

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;

#[test]
fn sigkill_in_mid_traffic_then_restart_keeps_memory_and_lsa() {
    let dir = Arc::new(test_dir());
    let mem = dir.path().join("devmem.img");
    let lsa = dir.path().join("lsa.img");
    let mut args = file_backed_args(&mem, &lsa);
    args.extend(["--seccomp", "on"]);
    let data = pattern(21, 64 << 10);
    let mut b = Backend::start_in(dir.clone(), &args);
    {
        let mut c = b.client();
        // Through the BAR2 mapping (as the guest writes) and REGION_WRITE (trapped).
        let map = map_region(&c, BAR2, 0, (256 * MIB) as usize);
        map.write((250 * MIB) as usize, &data);
        c.region_write(BAR2, 3 * MIB, &data).unwrap();
        set_lsa(&mut c, 0x80, b"label before the crash");
    }
    // A client keeps writing to BAR2 while the daemon is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let traffic = {
        let mut c = b.client();
        let (stop, writes) = (stop.clone(), writes.clone());
        std::thread::spawn(move || {
            let junk = pattern(99, 4096);
            while !stop.load(Ordering::Relaxed) {
                if c.region_write(BAR2, 128 * MIB, &junk).is_err() {
                    break;
                }
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    while writes.load(Ordering::Relaxed) < 50 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = b.kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    // No cleanup happened: the sockets are stale files now.
    assert!(
        b.socket.exists(),
        "a killed daemon cannot remove its socket"
    );

    // The restart replaces the stale sockets and finds memory and LSA intact.
    let mut b = Backend::start_in(dir.clone(), &args);
    let mut c = b.client();
    let mut got = vec![0u8; data.len()];
    c.region_read(BAR2, 250 * MIB, &mut got).unwrap();
    assert_eq!(got, data, "BAR2 data written through the mapping");
    c.region_read(BAR2, 3 * MIB, &mut got).unwrap();
    assert_eq!(got, data, "BAR2 data written with REGION_WRITE");
    assert_eq!(get_lsa(&mut c, 0x80, 22), b"label before the crash");
    drop(c);
    assert!(b.stop().success(), "{}", b.log());
}

/// Run the daemon with `args` (plus a socket and a control socket in `dir`) and
/// collect (status, stderr). `limit_fsize`: a file-size limit (RLIMIT_FSIZE).
fn run_daemon(dir: &Path, args: &[&str], limit_fsize: Option<u64>) -> (ExitStatus, String) {
    let mut cmd = daemon_command();
    cmd.arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--control")
        .arg(dir.join("c.sock"))
        .args(args)
        .arg("--once")
        .env("RUST_LOG", "warn");
    if let Some(limit) = limit_fsize {
        let rl = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: runs in the child before exec; setrlimit is async-signal-safe and
        // `rl` is a plain value copied into the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    finish(&mut cmd)
}

/// Run `cmd` to its end (at most 20 s: a daemon that started by mistake is killed
/// and the test fails) and collect (status, stderr).
fn finish(cmd: &mut std::process::Command) -> (ExitStatus, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon did not exit: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(log.path()).unwrap())
}

/// Nothing but `keep` is left in `dir`.
fn assert_empty_but(dir: &Path, keep: &[&str]) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn unwritable_memory_file_is_a_clear_error_and_leaves_nothing() {
    let dir = test_dir();
    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    if as_root() {
        std::os::unix::fs::chown(&ro, Some(DAEMON_ID), Some(DAEMON_ID)).unwrap();
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mem = ro.join("mem.img");
    let (status, err) = run_daemon(dir.path(), &["--memory-file", mem.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(
        err.contains("cannot open") && err.contains("mem.img") && err.contains("ermission denied"),
        "{err}"
    );
    assert!(!mem.exists());
    assert_empty_but(dir.path(), &["read-only"]);

    // An existing memory file the daemon may not write.
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&mem, b"").unwrap();
    if as_root() {
        std::os::unix::fs::chown(&mem, Some(DAEMON_ID), Some(DAEMON_ID)).unwrap();
    }
    std::fs::set_permissions(&mem, std::fs::Permissions::from_mode(0o400)).unwrap();
    let (status, err) = run_daemon(dir.path(), &["--memory-file", mem.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(err.contains("cannot open"), "{err}");
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 0, "left untouched");
    assert_empty_but(dir.path(), &["read-only"]);

    // A device, not a file: /dev/full.
    let (status, err) = run_daemon(dir.path(), &["--memory-file", "/dev/full"], None);
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(err.contains("not a regular file"), "{err}");
    assert_empty_but(dir.path(), &["read-only"]);
}

#[test]
fn memory_file_that_cannot_grow_is_a_clear_error_and_is_removed() {
    // A file-size limit stands in for a file system too small for device memory.
    let dir = test_dir();
    let mem = dir.path().join("mem.img");
    let lsa = dir.path().join("lsa.img");
    let (status, err) = run_daemon(
        dir.path(),
        &[
            "--memory-file",
            mem.to_str().unwrap(),
            "--lsa-file",
            lsa.to_str().unwrap(),
        ],
        Some(MIB),
    );
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(
        err.contains("cannot reserve 0x20000000 bytes") && err.contains("mem.img"),
        "{err}"
    );
    assert_empty_but(dir.path(), &[]);

    // A real full file system: a 1 MiB tmpfs (root only; skipped where mounting is
    // not allowed).
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = as_root()
        && std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0755"])
            .arg("tmpfs")
            .arg(&small)
            .status()
            .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("note: no tmpfs mount here; the full-file-system case is skipped");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&small);
    std::os::unix::fs::chown(&small, Some(DAEMON_ID), Some(DAEMON_ID)).unwrap();
    let mem = small.join("mem.img");
    let (status, err) = run_daemon(dir.path(), &["--memory-file", mem.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(
        err.contains("cannot reserve") && err.contains("No space left on device"),
        "{err}"
    );
    assert!(!mem.exists(), "a half-created memory file was left");
    assert_empty_but(dir.path(), &["small"]);
}

#[test]
fn a_later_startup_failure_removes_the_memory_file_it_created() {
    let dir = test_dir();
    let mem = dir.path().join("mem.img");
    // The socket path is too long for a UNIX socket: found only when binding, after
    // device memory was created.
    let long = dir.path().join("x".repeat(120));
    let (status, err) = finish(
        daemon_command()
            .arg("--socket")
            .arg(&long)
            .args(["--memory-size", "256M", "--memory-file"])
            .arg(&mem)
            .env("RUST_LOG", "warn"),
    );
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(err.contains("too long"), "{err}");
    assert!(!mem.exists(), "memory file left behind");
    assert_empty_but(dir.path(), &[]);

    // An existing memory file is kept (with its data) whatever happens.
    std::fs::write(&mem, b"keep me").unwrap();
    if as_root() {
        std::os::unix::fs::chown(&mem, Some(DAEMON_ID), Some(DAEMON_ID)).unwrap();
    }
    let (status, err) = finish(
        daemon_command()
            .arg("--socket")
            .arg(&long)
            .args(["--memory-size", "256M", "--memory-file"])
            .arg(&mem),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(&std::fs::read(&mem).unwrap()[..7], b"keep me");
}

#[test]
fn socket_path_held_by_a_regular_file_or_a_directory_is_refused() {
    let dir = test_dir();
    let mem = dir.path().join("mem.img");
    for (what, make) in [
        ("regular file", 0),
        ("directory", 1),
        ("file at the control path", 2),
    ] {
        let sock = dir.path().join("s.sock");
        let ctl = dir.path().join("c.sock");
        let blocker = if make == 2 { &ctl } else { &sock };
        if make == 1 {
            std::fs::create_dir(blocker).unwrap();
        } else {
            std::fs::write(blocker, b"precious").unwrap();
        }
        let (status, err) = run_daemon(dir.path(), &["--memory-file", mem.to_str().unwrap()], None);
        assert_eq!(status.code(), Some(1), "{what}: {status}: {err}");
        assert!(
            err.contains("is not a socket") || err.contains("not a socket"),
            "{what}: {err}"
        );
        if make == 1 {
            assert!(blocker.is_dir());
            std::fs::remove_dir(blocker).unwrap();
        } else {
            assert_eq!(std::fs::read(blocker).unwrap(), b"precious", "{what}");
            std::fs::remove_file(blocker).unwrap();
        }
        assert!(!mem.exists(), "{what}: memory file created");
        assert_empty_but(dir.path(), &[]);
    }
}

#[test]
fn bad_configuration_values_exit_2_and_create_nothing() {
    let dir = test_dir();
    let mem = dir.path().join("mem.img");
    let mem_arg = mem.to_str().unwrap();
    let cfg = dir.path().join("backend.toml");
    for (bad, expect) in [
        (vec!["--memory-size", "100M"], "256 MiB"),
        (vec!["--decoders", "3"], "decoder count"),
        (vec!["--seccomp", "maybe"], "maybe"),
        (vec!["--firmware", "nonesuch"], "unknown firmware"),
        (vec!["--vendor-id", "0x10000"], "does not fit"),
        (vec!["--config", cfg.to_str().unwrap()], "seccomp"),
    ] {
        std::fs::write(&cfg, "seccomp = \"sometimes\"\n").unwrap();
        let mut args = bad.clone();
        args.extend(["--memory-file", mem_arg]);
        let (status, err) = run_daemon(dir.path(), &args, None);
        assert_eq!(status.code(), Some(2), "{bad:?}: {status}: {err}");
        assert!(err.contains(expect), "{bad:?}: {err}");
        assert_empty_but(dir.path(), &["backend.toml"]);
    }
}
