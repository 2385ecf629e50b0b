//! Shared helpers of the integration tests: spawn the real daemon, talk to it with
//! the `vfio_user` crate's `Client` (the stand-in for QEMU), with raw frames for the
//! malformed cases, and with its control socket.
//!
//! The daemon needs no privileges (README: the e2e runs it as `nobody`), and the tests show it: when they run
//! as root (as CI does), every daemon they start drops to uid/gid 65534
//! (nobody/nogroup) with no supplementary groups before it execs, and works in a
//! directory owned by that user ([`test_dir`]). The test process itself stays root,
//! which changes nothing for it (QEMU also connects as root).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cxl_regs::{hdm, layout, mailbox as mbx, pci};
use vfio_bindings::bindings::vfio::{VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD};
use vfio_user::Client;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const BIN: &str = env!("CARGO_BIN_EXE_cxl-accel-backend");

pub const BAR0: u32 = 0;
pub const BAR2: u32 = 2;
pub const BAR4: u32 = 4;
pub const CONFIG: u32 = 7;

/// How long any one test may take before its daemon is killed (which turns a hang
/// into a failure).
const WATCHDOG: Duration = Duration::from_secs(60);

/// The unprivileged user and group the daemon runs as when the tests run as root.
pub const DAEMON_ID: u32 = 65534;

/// True when the tests run as root, so that daemons drop to [`DAEMON_ID`].
pub fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh temporary directory the daemon's user owns (the sockets, memory and LSA
/// files of a test go there).
pub fn test_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if as_root() {
        std::os::unix::fs::chown(dir.path(), Some(DAEMON_ID), Some(DAEMON_ID)).unwrap();
    }
    dir
}

/// The daemon options that back 256 MiB of device memory with the file `mem` and
/// the LSA with the file `lsa`.
pub fn file_backed_args<'a>(mem: &'a Path, lsa: &'a Path) -> Vec<&'a str> {
    vec![
        "--memory-size",
        "256M",
        "--memory-file",
        mem.to_str().unwrap(),
        "--lsa-file",
        lsa.to_str().unwrap(),
    ]
}

/// True when `uid` `DAEMON_ID` (not in root's group) may execute `path`: each folder
/// on the way is searchable by others, and the file executable by others.
fn reachable_by_others(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let mode = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.permissions().mode());
    mode(&path) & 0o001 != 0 && path.ancestors().skip(1).all(|d| mode(d) & 0o001 != 0)
}

/// The daemon binary, as the unprivileged user can run it: the built one, or (when
/// the checkout sits in a folder others cannot enter, such as /root) a copy in a
/// world-readable temporary folder.
fn daemon_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if !as_root() || reachable_by_others(Path::new(BIN)) {
            return PathBuf::from(BIN);
        }
        let dir = tempfile::Builder::new()
            .prefix("cxl-accel-test-bin")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("cxl-accel-backend");
        std::fs::copy(BIN, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
}

/// A command that runs the daemon binary, as [`DAEMON_ID`] when the tests are root.
pub fn daemon_command() -> Command {
    let mut cmd = Command::new(daemon_binary());
    if as_root() {
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (setgroups, setgid, setuid), with no
        // allocation. Groups and gid go first, while the process may still change them.
        unsafe {
            cmd.pre_exec(|| {
                let id = DAEMON_ID;
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id) != 0
                    || libc::setuid(id) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// A running daemon in its own temporary directory. Its stderr goes to
/// `backend.log` there (see [`Backend::log`]), and is printed when a test fails.
pub struct Backend {
    child: Option<Child>,
    pub dir: Arc<tempfile::TempDir>,
    pub socket: PathBuf,
    pub control: PathBuf,
    pub log_path: PathBuf,
    done: Arc<AtomicBool>,
}

impl Backend {
    /// Start the daemon with `--socket`, `--control` in a fresh directory, plus `args`.
    pub fn start(args: &[&str]) -> Backend {
        Self::start_in(Arc::new(test_dir()), args)
    }

    /// Start the daemon in `dir` (to restart one over the same files).
    pub fn start_in(dir: Arc<tempfile::TempDir>, args: &[&str]) -> Backend {
        let mut b = Self::spawn_in(dir, args);
        b.wait_ready();
        b
    }

    /// Start the daemon in `dir` without waiting for its sockets.
    pub fn spawn_in(dir: Arc<tempfile::TempDir>, args: &[&str]) -> Backend {
        let socket = dir.path().join("vfio.sock");
        let control = dir.path().join("control.sock");
        let log_path = dir.path().join("backend.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = daemon_command()
            .arg("--socket")
            .arg(&socket)
            .arg("--control")
            .arg(&control)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cxl-accel-backend");
        let done = Arc::new(AtomicBool::new(false));
        let pid = child.id() as i32;
        let watchdog_done = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < WATCHDOG {
                if watchdog_done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("watchdog: killing backend {pid}");
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        Backend {
            child: Some(child),
            dir,
            socket,
            control,
            log_path,
            done,
        }
    }

    /// What the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while !(self.socket.exists() && self.control.exists()) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("backend exited early: {status}\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "backend did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connect a vfio-user client (retrying while the listener comes up).
    pub fn client(&self) -> Client {
        let start = Instant::now();
        loop {
            match Client::new(&self.socket) {
                Ok(c) => return c,
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot connect: {e}"),
            }
        }
    }

    /// A raw connection that has negotiated the version.
    pub fn raw(&self) -> Raw {
        let mut r = Raw::connect(&self.socket);
        r.negotiate();
        r
    }

    /// One control-socket request.
    pub fn ctl(&self, request: &str) -> serde_json::Value {
        let mut s = UnixStream::connect(&self.control).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        serde_json::from_slice(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGKILL, and reap it: a crash, with no chance to clean up.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        self.done.store(true, Ordering::Relaxed);
        status
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.done.store(true, Ordering::Relaxed);
                return status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("backend ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the daemon to exit on its own (`--once`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.done.store(true, Ordering::Relaxed);
                return status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                panic!("backend did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.done.store(true, Ordering::Relaxed);
        if std::thread::panicking() {
            eprintln!(
                "--- backend log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

// --- register access through a client ---------------------------------------

/// REGION_READ/WRITE over a connection: the `vfio_user` crate's client, or a
/// hand-framed [`Raw`] one (which also sees the errno of every reply).
pub trait Regions {
    fn rd(&mut self, region: u32, off: u64, buf: &mut [u8]);
    fn wr(&mut self, region: u32, off: u64, data: &[u8]);
}

impl Regions for Client {
    fn rd(&mut self, region: u32, off: u64, buf: &mut [u8]) {
        self.region_read(region, off, buf).unwrap();
    }
    fn wr(&mut self, region: u32, off: u64, data: &[u8]) {
        self.region_write(region, off, data).unwrap();
    }
}

impl Regions for Raw {
    fn rd(&mut self, region: u32, off: u64, buf: &mut [u8]) {
        let r = self.read(region, off, buf.len() as u32);
        assert!(
            !r.is_error(),
            "REGION_READ {region}:{off:#x}: errno {}",
            r.errno
        );
        buf.copy_from_slice(&r.body[16..16 + buf.len()]);
    }
    fn wr(&mut self, region: u32, off: u64, data: &[u8]) {
        let r = self.write(region, off, data);
        assert!(
            !r.is_error(),
            "REGION_WRITE {region}:{off:#x}: errno {}",
            r.errno
        );
    }
}

pub fn read32(c: &mut impl Regions, region: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.rd(region, off, &mut b);
    u32::from_le_bytes(b)
}

pub fn read16(c: &mut impl Regions, region: u32, off: u64) -> u16 {
    let mut b = [0u8; 2];
    c.rd(region, off, &mut b);
    u16::from_le_bytes(b)
}

pub fn read64(c: &mut impl Regions, region: u32, off: u64) -> u64 {
    let mut b = [0u8; 8];
    c.rd(region, off, &mut b);
    u64::from_le_bytes(b)
}

pub fn write32(c: &mut impl Regions, region: u32, off: u64, v: u32) {
    c.wr(region, off, &v.to_le_bytes());
}

pub fn write16(c: &mut impl Regions, region: u32, off: u64, v: u16) {
    c.wr(region, off, &v.to_le_bytes());
}

pub fn write64(c: &mut impl Regions, region: u32, off: u64, v: u64) {
    c.wr(region, off, &v.to_le_bytes());
}

/// The whole 4 KiB config space.
pub fn config_space(c: &mut impl Regions) -> Vec<u8> {
    let mut cfg = vec![0u8; 4096];
    for (i, chunk) in cfg.chunks_mut(256).enumerate() {
        c.rd(CONFIG, (i * 256) as u64, chunk);
    }
    cfg
}

pub fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
pub fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
pub fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Offset of the standard capability `id`, walking the list from 0x34.
pub fn find_cap(cfg: &[u8], id: u8) -> Option<usize> {
    let mut p = cfg[0x34] as usize & !3;
    for _ in 0..48 {
        if p < 0x40 || p + 2 > 256 {
            return None;
        }
        if cfg[p] == id {
            return Some(p);
        }
        p = cfg[p + 1] as usize & !3;
    }
    None
}

/// The DVSECs (offset, vendor, id) and other extended capabilities (offset, id,
/// 0xffff) in the chain from 0x100.
pub fn ext_caps(cfg: &[u8]) -> Vec<(usize, u16, u16)> {
    let mut out = Vec::new();
    let mut p = 0x100usize;
    for _ in 0..64 {
        if p < 0x100 || p + 4 > cfg.len() {
            break;
        }
        let hdr = le32(cfg, p);
        if hdr == 0 {
            break;
        }
        let id = (hdr & 0xffff) as u16;
        if id == cxl_regs::pci::EXT_CAP_ID_DVSEC {
            let vendor = le16(cfg, p + 4);
            let dvsec_id = le16(cfg, p + 8);
            out.push((p, vendor, dvsec_id));
        } else {
            out.push((p, id, 0xffff));
        }
        p = (hdr >> 20) as usize;
        if p == 0 {
            break;
        }
    }
    out
}

pub fn find_dvsec(cfg: &[u8], id: u16) -> Option<usize> {
    ext_caps(cfg)
        .into_iter()
        .find(|&(_, v, i)| v == cxl_regs::dvsec::CXL_VENDOR_ID && i == id)
        .map(|(p, _, _)| p)
}

/// Register Locator entries as (bir, block id, offset).
pub fn register_blocks(cfg: &[u8]) -> Vec<(u8, u8, u64)> {
    let p = find_dvsec(cfg, cxl_regs::dvsec::ID_REGISTER_LOCATOR).expect("register locator");
    let len = (le32(cfg, p + 4) >> 20) as usize;
    let mut out = Vec::new();
    let mut e = p + 0xc;
    while e + 8 <= p + len {
        let lo = le32(cfg, e);
        let hi = le32(cfg, e + 4);
        out.push((
            (lo & 7) as u8,
            ((lo >> 8) & 0xff) as u8,
            u64::from(hi) << 32 | u64::from(lo & 0xffff_0000),
        ));
        e += 8;
    }
    out
}

// --- HDM decoders -----------------------------------------------------------

/// BAR0 offset of register `reg` of HDM decoder `n`.
pub fn decoder_reg(n: u32, reg: u32) -> u64 {
    layout::HDM_OFFSET + u64::from(hdm::decoder_offset(n) + reg)
}

/// Write base, size and then control of decoder `n`, as a driver does.
pub fn write_decoder(c: &mut vfio_user::Client, n: u32, base: u64, size: u64, ctrl: u32) {
    write32(c, BAR0, decoder_reg(n, hdm::DEC_BASE_LO), base as u32);
    write32(
        c,
        BAR0,
        decoder_reg(n, hdm::DEC_BASE_HI),
        (base >> 32) as u32,
    );
    write32(c, BAR0, decoder_reg(n, hdm::DEC_SIZE_LO), size as u32);
    write32(
        c,
        BAR0,
        decoder_reg(n, hdm::DEC_SIZE_HI),
        (size >> 32) as u32,
    );
    write32(c, BAR0, decoder_reg(n, hdm::DEC_CONTROL), ctrl);
}

/// [`write_decoder`], then wait (as the kernel does) for Committed or Error when
/// `ctrl` commits; returns the control register.
pub fn program_decoder(c: &mut vfio_user::Client, n: u32, base: u64, size: u64, ctrl: u32) -> u32 {
    write_decoder(c, n, base, size, ctrl);
    // The kernel polls up to 20 ms for Committed or Error.
    let start = Instant::now();
    loop {
        let v = read32(c, BAR0, decoder_reg(n, hdm::DEC_CONTROL));
        if v & (hdm::CTRL_COMMITTED | hdm::CTRL_ERROR_NOT_COMMITTED) != 0
            || ctrl & hdm::CTRL_COMMIT == 0
            || start.elapsed() > Duration::from_millis(500)
        {
            return v;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// --- mailbox ----------------------------------------------------------------

/// Run one mailbox command over BAR0; returns (return code, output payload).
pub fn mailbox(c: &mut Client, opcode: u16, input: &[u8]) -> (u16, Vec<u8>) {
    let mb = layout::MAILBOX_OFFSET;
    let payload = layout::MAILBOX_PAYLOAD_OFFSET;
    for (i, chunk) in input.chunks(256).enumerate() {
        c.region_write(BAR0, payload + (i * 256) as u64, chunk)
            .unwrap();
    }
    let cmd = u64::from(opcode) | (input.len() as u64) << 16;
    write64(c, BAR0, mb + 0x08, cmd);
    write32(c, BAR0, mb + 0x04, 1);
    let start = Instant::now();
    while read32(c, BAR0, mb + 0x04) & 1 != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "doorbell never cleared"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = read64(c, BAR0, mb + 0x10);
    let rc = ((status >> 32) & 0xffff) as u16;
    let len = ((read64(c, BAR0, mb + 0x08) >> 16) & 0x1f_ffff) as usize;
    let mut out = vec![0u8; len.min(layout::MAILBOX_PAYLOAD_SIZE as usize)];
    for (i, chunk) in out.chunks_mut(256).enumerate() {
        c.region_read(BAR0, payload + (i * 256) as u64, chunk)
            .unwrap();
    }
    (rc, out)
}

// --- interrupts, DMA engine, LSA -------------------------------------------

/// Enable MSI-X and bus mastering as a guest driver would.
pub fn enable_msix(c: &mut impl Regions) {
    let cfg = config_space(c);
    let cmd = le16(&cfg, pci::COMMAND) | pci::CMD_MEMORY_SPACE | pci::CMD_BUS_MASTER;
    write16(c, CONFIG, pci::COMMAND as u64, cmd);
    let msix = find_cap(&cfg, pci::CAP_ID_MSIX).expect("MSI-X capability");
    let flags = le16(&cfg, msix + pci::MSIX_FLAGS);
    write16(
        c,
        CONFIG,
        (msix + pci::MSIX_FLAGS) as u64,
        (flags | pci::MSIX_FLAGS_ENABLE) & !pci::MSIX_FLAGS_MASKALL,
    );
    for v in 0..u64::from(layout::MSIX_VECTORS) {
        let entry = u64::from(layout::MSIX_TABLE_OFFSET) + v * 16;
        write32(c, BAR4, entry, 0xfee0_0000);
        write32(c, BAR4, entry + 8, 0x40 + v as u32);
        write32(c, BAR4, entry + 12, 0);
    }
}

pub fn register_msix(c: &mut vfio_user::Client, vector: u32) -> EventFd {
    let e = EventFd::new(EFD_NONBLOCK).unwrap();
    c.set_irqs(
        2,
        VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD,
        vector,
        1,
        &[e.as_raw_fd()],
    )
    .unwrap();
    e
}

pub fn dma(c: &mut impl Regions, src: u64, dst: u64, len: u64, to_guest: bool) -> u32 {
    use layout::engine::*;
    write32(c, BAR4, STATUS, STATUS_DONE | STATUS_ERROR);
    write64(c, BAR4, SRC, src);
    write64(c, BAR4, DST, dst);
    write64(c, BAR4, LEN, len);
    let dir = if to_guest { CONTROL_DIR_TO_GUEST } else { 0 };
    write32(c, BAR4, CONTROL, dir | CONTROL_IRQ_ENABLE);
    write32(c, BAR4, DOORBELL, 1);
    let start = Instant::now();
    loop {
        let s = read32(c, BAR4, STATUS);
        if s & STATUS_BUSY == 0 && s & (STATUS_DONE | STATUS_ERROR) != 0 {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "DMA never finished: {s:#x}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn set_lsa(c: &mut vfio_user::Client, offset: u32, data: &[u8]) {
    let mut input = offset.to_le_bytes().to_vec();
    input.extend_from_slice(&[0; 4]);
    input.extend_from_slice(data);
    let (rc, _) = mailbox(c, mbx::OP_SET_LSA, &input);
    assert_eq!(rc, mbx::RC_SUCCESS);
}

pub fn get_lsa(c: &mut vfio_user::Client, offset: u32, len: u32) -> Vec<u8> {
    let mut input = offset.to_le_bytes().to_vec();
    input.extend_from_slice(&len.to_le_bytes());
    let (rc, out) = mailbox(c, mbx::OP_GET_LSA, &input);
    assert_eq!(rc, mbx::RC_SUCCESS);
    out
}

// --- memfds and mappings ------------------------------------------------------

pub fn memfd(size: usize) -> OwnedFd {
    // SAFETY: valid NUL-terminated name; the fd is wrapped at once.
    let fd = unsafe { libc::memfd_create(c"test-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our fd.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), size as i64) }, 0);
    fd
}

/// `len` bytes of guest RAM at `gpa`: a memfd, DMA_MAPped for the device and
/// mapped here for the test to fill and check.
pub fn map_guest_ram(c: &mut Client, gpa: u64, len: usize) -> Mapping {
    let fd = memfd(len);
    let ram = Mapping::new(fd.as_raw_fd(), 0, len);
    c.dma_map(0, gpa, len as u64, fd.as_raw_fd()).unwrap();
    ram
}

/// `len` bytes at `offset` of `region`, mapped through the fd the server sent with
/// it (as QEMU maps BAR2 and the mailbox payload page).
pub fn map_region(c: &Client, region: u32, offset: u64, len: usize) -> Mapping {
    let r = c
        .region(region)
        .unwrap_or_else(|| panic!("no region {region}"));
    let fo = r
        .file_offset
        .as_ref()
        .unwrap_or_else(|| panic!("region {region} comes with no fd"));
    Mapping::new(fo.file().as_raw_fd(), fo.start() + offset, len)
}

/// A shared mapping of an fd, unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    pub fn new(fd: RawFd, offset: u64, len: usize) -> Mapping {
        // SAFETY: a fresh shared mapping; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset as i64,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapping {
            ptr: ptr.cast(),
            len,
        }
    }

    pub fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: in bounds of our live mapping.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) }
    }

    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds of our live mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), v.as_mut_ptr(), len) }
        v
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Wait until `fd` (an eventfd) is readable; returns its counter, or None on timeout.
pub fn wait_eventfd(fd: RawFd, timeout: Duration) -> Option<u64> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n != 1 {
        return None;
    }
    let mut v = [0u8; 8];
    // SAFETY: reading 8 bytes into a local buffer from an eventfd.
    let r = unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) };
    (r == 8).then(|| u64::from_ne_bytes(v))
}

pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// --- raw vfio-user frames ----------------------------------------------------

pub const CMD_VERSION: u16 = 1;
pub const CMD_DMA_MAP: u16 = 2;
pub const CMD_DEVICE_GET_INFO: u16 = 4;
pub const CMD_GET_IRQ_INFO: u16 = 7;
pub const CMD_SET_IRQS: u16 = 8;
pub const CMD_REGION_READ: u16 = 9;
pub const CMD_REGION_WRITE: u16 = 10;
pub const FLAG_REPLY: u32 = 1;
pub const FLAG_NO_REPLY: u32 = 1 << 4;
pub const FLAG_ERROR: u32 = 1 << 5;

/// A reply: (header fields, body).
#[derive(Debug)]
pub struct Reply {
    pub id: u16,
    pub cmd: u16,
    pub size: u32,
    pub flags: u32,
    pub errno: u32,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }
}

/// A hand-framed vfio-user connection.
pub struct Raw {
    pub stream: UnixStream,
    next_id: u16,
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("connect: {e}"),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw { stream, next_id: 0 }
    }

    pub fn header(id: u16, cmd: u16, size: u32, flags: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&id.to_le_bytes());
        h.extend_from_slice(&cmd.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    }

    /// Send a well-framed command.
    pub fn send(&mut self, cmd: u16, body: &[u8]) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut m = Self::header(id, cmd, 16 + body.len() as u32, 0);
        m.extend_from_slice(body);
        self.stream.write_all(&m).unwrap();
        id
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn recv(&mut self) -> Reply {
        let mut h = [0u8; 16];
        self.stream.read_exact(&mut h).expect("reply header");
        let size = le32(&h, 4);
        let mut body = vec![0u8; (size as usize).saturating_sub(16)];
        self.stream.read_exact(&mut body).expect("reply body");
        Reply {
            id: le16(&h, 0),
            cmd: le16(&h, 2),
            size,
            flags: le32(&h, 8),
            errno: le32(&h, 12),
            body,
        }
    }

    /// Send and wait for the reply.
    pub fn call(&mut self, cmd: u16, body: &[u8]) -> Reply {
        let id = self.send(cmd, body);
        let r = self.recv();
        assert_eq!(r.id, id, "reply to another message");
        r
    }

    pub fn negotiate(&mut self) {
        let json = br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}"#;
        let mut body = Vec::new();
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(json);
        body.push(0);
        let r = self.call(CMD_VERSION, &body);
        assert!(!r.is_error(), "VERSION refused: errno {}", r.errno);
    }

    /// REGION_READ body.
    pub fn region_access(offset: u64, region: u32, count: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&region.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b
    }

    pub fn read(&mut self, region: u32, offset: u64, count: u32) -> Reply {
        self.call(CMD_REGION_READ, &Self::region_access(offset, region, count))
    }

    pub fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Reply {
        let mut body = Self::region_access(offset, region, data.len() as u32);
        body.extend_from_slice(data);
        self.call(CMD_REGION_WRITE, &body)
    }

    /// Send a command with `fds` attached (SCM_RIGHTS) and wait for the reply.
    pub fn call_with_fds(&mut self, cmd: u16, body: &[u8], fds: &[RawFd]) -> Reply {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut m = Self::header(id, cmd, 16 + body.len() as u32, 0);
        m.extend_from_slice(body);
        let n = self.stream.send_with_fds(&[&m[..]], fds).unwrap();
        assert_eq!(n, m.len(), "short send");
        let r = self.recv();
        assert_eq!(r.id, id, "reply to another message");
        r
    }

    /// SET_IRQS (`flags` = action | data type) with `fds` attached.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[RawFd],
    ) -> Reply {
        let mut b = Vec::new();
        b.extend_from_slice(&20u32.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(&start.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        self.call_with_fds(CMD_SET_IRQS, &b, fds)
    }

    /// DMA_MAP (read and write) of `size` bytes at `iova`, backed by `fd` at
    /// `offset` when given.
    pub fn dma_map(&mut self, iova: u64, size: u64, offset: u64, fd: Option<RawFd>) -> Reply {
        let mut b = Vec::new();
        b.extend_from_slice(&32u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        let fds: Vec<RawFd> = fd.into_iter().collect();
        self.call_with_fds(CMD_DMA_MAP, &b, &fds)
    }

    /// True when the peer closes the connection within a few seconds (an error reply
    /// before the close is allowed).
    pub fn closed_by_peer(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut b = [0u8; 256];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }
}

/// Page-aligned size of the mapping of `len` bytes.
pub fn page_round(len: usize) -> usize {
    len.div_ceil(4096) * 4096
}

/// Run the binary with `args` and collect (status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = daemon_command()
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
