//! File descriptors a hostile vfio-user peer can attach to its messages (issue 10):
//! whatever kind of fd arrives with SET_IRQS or DMA_MAP, and whatever the peer does
//! to it afterwards, the daemon must not block, must not die, and must keep serving
//! the next client. Driven over raw frames, which see the errno of every reply.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use common::*;
use cxl_regs::layout;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
};

const MSIX: u32 = 2;
/// VFIO_PCI_ERR_IRQ_INDEX (linux/vfio.h).
const ERR: u32 = 3;
const GPA: u64 = 0x1_0000_0000;
const SET_EVENTFD: u32 = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;
const FIRE: u32 = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE;

/// The daemon options each scenario runs with: plain, and confined by seccomp (the
/// checks below make system calls of their own, which the filter must allow).
const MODES: [&[&str]; 2] = [&[], &["--seccomp", "on"]];

fn owned(fd: libc::c_int) -> OwnedFd {
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd returned by the kernel to this process, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A pipe whose write end is blocking and full: a write to it blocks until somebody
/// reads, which nobody will. Returns (read end, write end).
fn full_blocking_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two ints of `fds`.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) },
        0
    );
    let (r, w) = (owned(fds[0]), owned(fds[1]));
    let chunk = [0u8; 4096];
    // SAFETY: writes from a live buffer to our own pipe.
    while unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) } > 0 {}
    set_nonblocking(w.as_raw_fd(), false);
    (r, w)
}

fn set_nonblocking(fd: RawFd, on: bool) {
    // SAFETY: fcntl on an fd we own.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let fl = if on {
        fl | libc::O_NONBLOCK
    } else {
        fl & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFL, fl) }, 0);
}

fn is_nonblocking(fd: RawFd) -> bool {
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_GETFL) & libc::O_NONBLOCK != 0 }
}

/// A blocking eventfd (no EFD_NONBLOCK) whose counter is one below its maximum, so
/// that writing 1 to it blocks until somebody reads.
fn saturated_blocking_eventfd() -> OwnedFd {
    // SAFETY: eventfd with constant arguments.
    let e = owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) });
    add_to_eventfd(&e, u64::MAX - 1);
    e
}

fn add_to_eventfd(e: &OwnedFd, v: u64) {
    // SAFETY: an 8-byte write from a live buffer to our eventfd.
    let n = unsafe { libc::write(e.as_raw_fd(), v.to_ne_bytes().as_ptr().cast(), 8) };
    assert_eq!(n, 8, "{}", std::io::Error::last_os_error());
}

/// Read an eventfd's counter without blocking (None when it is 0).
fn take_eventfd(e: &OwnedFd) -> Option<u64> {
    let mut pfd = libc::pollfd {
        fd: e.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 {
        return None;
    }
    let mut v = [0u8; 8];
    // SAFETY: reads 8 bytes into a local buffer.
    let n = unsafe { libc::read(e.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    (n == 8).then(|| u64::from_ne_bytes(v))
}

fn socket_end() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two ints of `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    (owned(fds[0]), owned(fds[1]))
}

fn open(path: &str, flags: libc::c_int) -> OwnedFd {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: a valid NUL-terminated path.
    owned(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })
}

fn regular_file(len: u64) -> OwnedFd {
    let f = tempfile::tempfile().unwrap();
    f.set_len(len).unwrap();
    OwnedFd::from(f)
}

fn daemon_fds(b: &Backend) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", b.pid()))
        .unwrap()
        .count()
}

/// The daemon still answers its control socket, and serves a fresh client.
fn assert_serving(b: &mut Backend) {
    assert!(b.is_running(), "daemon died\n{}", b.log());
    assert_eq!(b.ctl(r#"{"cmd":"status"}"#)["ok"], true);
    let mut fresh = b.raw();
    assert_eq!(
        read32(&mut fresh, BAR4, layout::engine::ID),
        layout::engine::ID_VALUE
    );
}

fn status_counter(b: &Backend, section: &str, key: &str) -> u64 {
    let st = b.ctl(r#"{"cmd":"status"}"#);
    st[section][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {section}.{key} in {st}"))
}

#[test]
fn a_full_blocking_pipe_is_refused_as_an_interrupt_and_never_blocks_the_daemon() {
    for mode in MODES {
        let mut b = Backend::start(mode);
        let mut c = b.raw();
        enable_msix(&mut c);
        let vector = u32::from(layout::MSIX_VEC_DMA);
        let (_reader, writer) = full_blocking_pipe();
        let r = c.set_irqs(MSIX, SET_EVENTFD, vector, 1, &[writer.as_raw_fd()]);
        assert!(r.is_error(), "a pipe was accepted as an interrupt eventfd");
        assert_eq!(r.errno, libc::EINVAL as u32);
        // Fired by the peer (DATA_NONE | TRIGGER), and by a DMA completion.
        let r = c.set_irqs(MSIX, FIRE, vector, 1, &[]);
        assert!(!r.is_error(), "errno {}", r.errno);
        let fd = memfd(1 << 20);
        assert!(!c.dma_map(GPA, 1 << 20, 0, Some(fd.as_raw_fd())).is_error());
        let s = dma(&mut c, GPA, 0x1000, 4096, false);
        assert_eq!(s & layout::engine::STATUS_ERROR, 0, "status {s:#x}");
        assert_eq!(status_counter(&b, "vfio_user", "refused_fds"), 1);
        drop(c);
        assert_serving(&mut b);
    }
}

#[test]
fn only_eventfds_are_interrupt_fds() {
    let b = Backend::start(&[]);
    let mut c = b.raw();
    let (_s0, s1) = socket_end();
    let (_r, w) = full_blocking_pipe();
    let (pr, _pw) = full_blocking_pipe();
    let dir = b.dir.path().to_str().unwrap().to_string();
    let wrong: Vec<(&str, OwnedFd)> = vec![
        ("pipe write end", w),
        ("pipe read end", pr),
        ("socket", s1),
        ("regular file", regular_file(4096)),
        ("memfd", memfd(4096)),
        ("/dev/null", open("/dev/null", libc::O_RDWR)),
        (
            "O_PATH directory",
            open(&dir, libc::O_PATH | libc::O_DIRECTORY),
        ),
        // SAFETY: timerfd_create with constant arguments: an anonymous inode, but
        // not an eventfd.
        (
            "timerfd",
            owned(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, 0) }),
        ),
    ];
    for (what, fd) in &wrong {
        for index in [MSIX, 0] {
            let r = c.set_irqs(index, SET_EVENTFD, 0, 1, &[fd.as_raw_fd()]);
            assert!(r.is_error(), "{what} accepted for IRQ index {index}");
            assert_eq!(r.errno, libc::EINVAL as u32, "{what}");
        }
    }
    // One eventfd among non-eventfds: the whole message is refused.
    let good = EventFdOwned::new();
    let r = c.set_irqs(
        MSIX,
        SET_EVENTFD,
        0,
        2,
        &[good.0.as_raw_fd(), wrong[0].1.as_raw_fd()],
    );
    assert_eq!((r.is_error(), r.errno), (true, libc::EINVAL as u32));
    // An eventfd is accepted.
    let r = c.set_irqs(MSIX, SET_EVENTFD, 0, 1, &[good.0.as_raw_fd()]);
    assert!(!r.is_error(), "errno {}", r.errno);
    assert_eq!(
        status_counter(&b, "vfio_user", "refused_fds"),
        wrong.len() as u64 * 2 + 1
    );
}

struct EventFdOwned(OwnedFd);

impl EventFdOwned {
    fn new() -> Self {
        // SAFETY: eventfd with constant arguments.
        Self(owned(unsafe {
            libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)
        }))
    }
}

#[test]
fn a_saturated_blocking_eventfd_never_blocks_the_daemon() {
    for mode in MODES {
        let mut b = Backend::start(mode);
        let mut c = b.raw();
        enable_msix(&mut c);
        let vector = u32::from(layout::MSIX_VEC_DMA);
        let e = saturated_blocking_eventfd();
        let r = c.set_irqs(MSIX, SET_EVENTFD, vector, 1, &[e.as_raw_fd()]);
        assert!(!r.is_error(), "errno {}", r.errno);
        // The documented price: the open file description became non-blocking.
        assert!(is_nonblocking(e.as_raw_fd()));
        // A full counter means the interrupt is pending already: nothing blocks.
        let r = c.set_irqs(MSIX, FIRE, vector, 1, &[]);
        assert!(!r.is_error(), "errno {}", r.errno);
        assert_eq!(take_eventfd(&e), Some(u64::MAX - 1));
        // Once the guest side has read it, the next interrupt arrives as usual.
        let r = c.set_irqs(MSIX, FIRE, vector, 1, &[]);
        assert!(!r.is_error());
        assert_eq!(take_eventfd(&e), Some(1));

        // A peer that makes the description blocking again after registering it
        // loses the vector: the daemon does not write to it.
        add_to_eventfd(&e, u64::MAX - 1);
        set_nonblocking(e.as_raw_fd(), false);
        let r = c.set_irqs(MSIX, FIRE, vector, 1, &[]);
        assert!(!r.is_error());
        let fd = memfd(1 << 20);
        assert!(!c.dma_map(GPA, 1 << 20, 0, Some(fd.as_raw_fd())).is_error());
        let s = dma(&mut c, GPA, 0x1000, 4096, false);
        assert_eq!(s & layout::engine::STATUS_ERROR, 0, "status {s:#x}");
        assert_eq!(take_eventfd(&e), Some(u64::MAX - 1));
        drop(c);
        assert_serving(&mut b);
    }
}

#[test]
fn a_memfd_shrunk_after_dma_map_fails_the_transfer_and_the_daemon_lives() {
    use layout::engine::STATUS_ERROR;
    for mode in MODES {
        let mut b = Backend::start(mode);
        let mut c = b.raw();
        enable_msix(&mut c);
        const LEN: usize = 2 << 20;
        let fd = memfd(LEN);
        let ram = Mapping::new(fd.as_raw_fd(), 0, 4096);
        ram.write(0, b"still mapped");
        let r = c.dma_map(GPA, LEN as u64, 0, Some(fd.as_raw_fd()));
        assert!(!r.is_error(), "errno {}", r.errno);
        // The peer shrinks its memfd under the mapping to one page.
        // SAFETY: ftruncate on our own fd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 4096) }, 0);
        // Reading guest RAM past the new end, and writing it: error status.
        let s = dma(&mut c, GPA + 0x10_0000, 0x1000, 8192, false);
        assert_ne!(s & STATUS_ERROR, 0, "status {s:#x}");
        let s = dma(&mut c, 0x1000, GPA + 0x10_0000, 8192, true);
        assert_ne!(s & STATUS_ERROR, 0, "status {s:#x}");
        // A transfer that straddles the new end fails too, and the file is not
        // grown back by the device's writes.
        let s = dma(&mut c, 0x1000, GPA + 0x800, 8192, true);
        assert_ne!(s & STATUS_ERROR, 0, "status {s:#x}");
        // SAFETY: fstat into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        assert_eq!(st.st_size, 4096, "the daemon grew the peer's file");
        // What is left of the file still works both ways.
        let s = dma(&mut c, GPA, 0x2000, 12, false);
        assert_eq!(s & STATUS_ERROR, 0, "status {s:#x}");
        let s = dma(&mut c, 0x2000, GPA + 0x100, 12, true);
        assert_eq!(s & STATUS_ERROR, 0, "status {s:#x}");
        assert_eq!(ram.read(0x100, 12), b"still mapped");
        drop(c);
        assert_serving(&mut b);
    }
}

#[test]
fn dma_map_takes_only_regular_files_opened_for_the_access() {
    let b = Backend::start(&[]);
    let mut c = b.raw();
    let (_r, w) = full_blocking_pipe();
    let (_s0, s1) = socket_end();
    let ro = {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8192).unwrap();
        open(f.path().to_str().unwrap(), libc::O_RDONLY)
    };
    let app = {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8192).unwrap();
        open(f.path().to_str().unwrap(), libc::O_RDWR | libc::O_APPEND)
    };
    let cases: Vec<(&str, OwnedFd, u32)> = vec![
        ("pipe", w, libc::EINVAL as u32),
        ("socket", s1, libc::EINVAL as u32),
        ("eventfd", EventFdOwned::new().0, libc::EINVAL as u32),
        (
            "/dev/zero",
            open("/dev/zero", libc::O_RDWR),
            libc::EINVAL as u32,
        ),
        ("read-only file mapped for writing", ro, libc::EACCES as u32),
        (
            "append-only file mapped for writing",
            app,
            libc::EACCES as u32,
        ),
        (
            "file shorter than the range",
            regular_file(4096),
            libc::EINVAL as u32,
        ),
    ];
    for (i, (what, fd, errno)) in cases.iter().enumerate() {
        let r = c.dma_map(GPA + (i as u64) * 0x10_0000, 8192, 0, Some(fd.as_raw_fd()));
        assert!(r.is_error(), "{what} accepted");
        assert_eq!(r.errno, *errno, "{what}");
    }
    // A regular file and a memfd are accepted.
    assert!(!c
        .dma_map(GPA, 8192, 0, Some(regular_file(8192).as_raw_fd()))
        .is_error());
    assert!(!c
        .dma_map(GPA + 0x10_0000, 8192, 0, Some(memfd(8192).as_raw_fd()))
        .is_error());
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["dma"]["mappings"], 2, "{st}");
}

/// The default bound on DMA mappings, as the README documents it.
const DEFAULT_MAX_DMA_MAPS: usize = 1024;

#[test]
fn three_thousand_dma_maps_each_with_its_own_fd_stop_at_the_limit() {
    for mode in MODES {
        let mut b = Backend::start(mode);
        let before = daemon_fds(&b);
        let mut c = b.raw();
        let (mut ok, mut refused) = (0, 0);
        for i in 0..3000u64 {
            let fd = memfd(4096);
            let r = c.dma_map(GPA + i * 0x1000, 4096, 0, Some(fd.as_raw_fd()));
            if r.is_error() {
                assert_eq!(r.errno, libc::ENOSPC as u32, "map {i}");
                refused += 1;
            } else {
                ok += 1;
            }
        }
        assert_eq!(
            (ok, refused),
            (DEFAULT_MAX_DMA_MAPS, 3000 - DEFAULT_MAX_DMA_MAPS)
        );
        let held = daemon_fds(&b);
        assert!(
            held <= before + DEFAULT_MAX_DMA_MAPS + 4,
            "the daemon holds {held} fds ({before} before the maps)"
        );
        let st = b.ctl(r#"{"cmd":"status"}"#);
        assert_eq!(st["dma"]["mappings"], DEFAULT_MAX_DMA_MAPS, "{st}");
        assert_eq!(
            st["counters"]["dma_maps_refused"],
            3000 - DEFAULT_MAX_DMA_MAPS,
            "{st}"
        );
        // Unmapping makes room again.
        let mut unmap = Vec::new();
        unmap.extend_from_slice(&24u32.to_le_bytes());
        unmap.extend_from_slice(&0u32.to_le_bytes());
        unmap.extend_from_slice(&GPA.to_le_bytes());
        unmap.extend_from_slice(&0x1000u64.to_le_bytes());
        assert!(!c.call(3, &unmap).is_error());
        assert!(!c
            .dma_map(GPA, 4096, 0, Some(memfd(4096).as_raw_fd()))
            .is_error());
        let r = c.dma_map(GPA + 0x1000_0000, 4096, 0, None);
        assert_eq!(
            (r.is_error(), r.errno),
            (true, libc::ENOSPC as u32),
            "maps without fd count too"
        );
        drop(c);
        assert_serving(&mut b);
        // The client's fds went with it.
        let start = std::time::Instant::now();
        while daemon_fds(&b) > before + 2 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            daemon_fds(&b) <= before + 2,
            "fds kept after the client left"
        );
    }
}

#[test]
fn the_dma_map_limit_is_configurable_and_announced_in_version() {
    let b = Backend::start(&["--max-dma-maps", "5"]);
    let mut r = Raw::connect(&b.socket);
    let mut body = Vec::new();
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.push(0);
    let reply = r.call(CMD_VERSION, &body);
    assert!(!reply.is_error());
    let json = &reply.body[4..reply.body.len() - 1];
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    assert_eq!(v["capabilities"]["max_dma_maps"], 5, "{v}");
    for i in 0..6u64 {
        let r = r.dma_map(GPA + i * 0x1000, 4096, 0, None);
        assert_eq!(r.is_error(), i == 5, "map {i}: errno {}", r.errno);
    }
    drop(r);
    // QEMU refuses a server that announces more than 65535 (hw/vfio-user/proxy.c).
    for bad in ["65536", "0", "many"] {
        let (status, _, err) = run_cli(&["--socket", "/nonexistent/s", "--max-dma-maps", bad]);
        assert_eq!(status.code(), Some(2), "{bad}: {err}");
    }
}

#[test]
fn the_error_interrupt_is_offered_and_signalled_only_when_asked() {
    let b = Backend::start(&[]);
    let mut c = b.raw();
    let mut body = Vec::new();
    body.extend_from_slice(&16u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&ERR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    let r = c.call(CMD_GET_IRQ_INFO, &body);
    assert!(!r.is_error());
    // As Linux's vfio-pci offers it for a PCIe function: one vector, an eventfd.
    assert_eq!(le32(&r.body, 12), 1, "count");
    assert_eq!(le32(&r.body, 4), VFIO_IRQ_INFO_EVENTFD, "flags");
    let e = EventFdOwned::new();
    let r = c.set_irqs(ERR, SET_EVENTFD, 0, 1, &[e.0.as_raw_fd()]);
    assert!(!r.is_error(), "errno {}", r.errno);
    // A RAS injection is reported to the guest through the device's registers only.
    let r = b.ctl(r#"{"cmd":"inject-ras","uncorrectable":true,"bit":3}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(take_eventfd(&e.0), None);
    // Asked for, it also reaches the host, as an AER report would through vfio-pci.
    let r = b.ctl(r#"{"cmd":"inject-ras","uncorrectable":true,"bit":3,"host":true}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(take_eventfd(&e.0), Some(1));
    let r = b.ctl(r#"{"cmd":"inject-ras","uncorrectable":false,"bit":0,"host":true}"#);
    assert_eq!(
        r["ok"], false,
        "a correctable error is not reported to the host: {r}"
    );
}
