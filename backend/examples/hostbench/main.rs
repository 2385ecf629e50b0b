//! The host side of `scripts/bench` (issue 5, BENCHMARKS.md): figures measured outside
//! the guest, and the report that puts every figure beside its anchor.
//!
//! ```text
//! hostbench pingpong [--iters N] [--cpus A,B] [--no-perf]
//!                                         raw UNIX-socket round trip between this process
//!                                         (on CPU A) and a forked echo (on CPU B)
//! hostbench daemon --backend PATH [--runs N]
//!                                         backend startup (spawn to socket ready), idle RSS
//!                                         at 512 MiB and 64 GiB of device memory
//! hostbench client --backend PATH | --socket PATH [--iters N] [--cpus A,B] [--no-perf]
//!                  [--dma-mib N] [--dma-runs N]
//!                                         REGION_READ/WRITE round trips to a backend from
//!                                         this process (on CPU A; the backend on CPU B),
//!                                         no QEMU: the backend's own share; then the same
//!                                         read while the DMA engine copies N MiB (default
//!                                         1024; 0: none), against the read with the engine
//!                                         idle (target: at most 2x)
//! hostbench rss --pid PID                 RSS of a running backend, and how much of
//!                                         its device-memory memfd is allocated
//! hostbench perf --pid LABEL=PID... --out FILE
//!                                         system calls, wake-ups and context switches of
//!                                         every thread of the processes, from its line
//!                                         `counting` until a line on stdin (perf stat)
//! hostbench report --dir DIR              the files scripts/bench leaves in DIR ->
//!                                         DIR/../results.json (or --out FILE) and a table
//!                                         on stdout
//! ```
//! pingpong and client also count, under perf, system calls, wake-ups and context
//! switches per round trip on both sides, over round trips after the timed ones.
//! Every subcommand but `report` prints one JSON object on stdout.

// A measuring tool run by hand or by scripts/bench, no peer's input: a panic ends
// one measurement, as a failed assertion ends a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

mod perf;
mod placement;
mod report;

use perf::{counted, perf_cmd, COUNTED_OPS};
use placement::{pin, Placement};
use report::report;

type Res<T> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("pingpong") => pingpong(&args[1..]),
        Some("daemon") => daemon(&args[1..]),
        Some("rss") => rss_cmd(&args[1..]),
        Some("client") => client(&args[1..]),
        Some("perf") => perf_cmd(&args[1..]),
        Some("report") => report(&args[1..]),
        _ => Err("usage: hostbench pingpong|daemon|rss|client|perf|report [options]".into()),
    };
    if let Err(e) = r {
        eprintln!("hostbench: {e}");
        std::process::exit(1);
    }
}

/// The value of `--name` in `args`.
pub(crate) fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn opt_num(args: &[String], name: &str, default: u64) -> Res<u64> {
    match opt(args, name) {
        Some(v) => v.parse().map_err(|e| format!("{name} {v}: {e}")),
        None => Ok(default),
    }
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

// --- ping-pong ---------------------------------------------------------------------

/// Sizes of a vfio-user REGION_READ of 4 bytes: the request (16-byte header and
/// 16-byte access header) and the reply (the same, and the data).
const REQ: usize = 32;
const REPLY: usize = 36;

/// Move `len` bytes with `step(done)`, one read(2) or write(2) of the rest after the
/// first `done` bytes, until all are moved; false at end of stream or on an error.
fn raw_all(len: usize, mut step: impl FnMut(usize) -> isize) -> bool {
    let mut done = 0;
    while done < len {
        let n = step(done);
        if n <= 0 {
            return false;
        }
        done += n as usize;
    }
    true
}

/// Blocking read of exactly `buf.len()` bytes with read(2); false at end of stream.
fn raw_read_exact(fd: i32, buf: &mut [u8]) -> bool {
    let len = buf.len();
    raw_all(len, |done| {
        // SAFETY: the pointer and length describe the unfilled rest of `buf`.
        unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), len - done) }
    })
}

fn raw_write_all(fd: i32, buf: &[u8]) -> bool {
    raw_all(buf.len(), |done| {
        // SAFETY: the pointer and length describe the unsent rest of `buf`.
        unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) }
    })
}

/// A forked child that echoes: each request of [`REQ`] bytes gets a reply of
/// [`REPLY`] bytes, with blocking read/write.
struct Echo {
    s: UnixStream,
    pid: libc::pid_t,
}

impl Echo {
    /// Fork the echo, on CPU `cpu` if given. Call it while this process has one
    /// thread: the child only calls sched_setaffinity, read, write and _exit.
    fn spawn(cpu: Option<usize>) -> Res<Echo> {
        let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        // SAFETY: this process has one thread (the caller's promise); the child
        // only makes async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            drop(a);
            if let Some(cpu) = cpu {
                if pin(0, cpu).is_err() {
                    // SAFETY: leave the child without running the parent's destructors.
                    unsafe { libc::_exit(2) };
                }
            }
            let fd = b.as_raw_fd();
            let mut req = [0u8; REQ];
            let reply = [0u8; REPLY];
            while raw_read_exact(fd, &mut req) && raw_write_all(fd, &reply) {}
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        drop(b);
        Ok(Echo { s: a, pid })
    }

    fn round_trip(&self) -> Res<()> {
        let fd = self.s.as_raw_fd();
        let req = [1u8; REQ];
        let mut reply = [0u8; REPLY];
        if raw_write_all(fd, &req) && raw_read_exact(fd, &mut reply) {
            Ok(())
        } else {
            Err("the echo child went away".into())
        }
    }

    /// Close the socket and reap the child; an error if it did not end well.
    fn finish(self) -> Res<()> {
        let pid = self.pid;
        drop(self.s);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if status != 0 {
            return Err(format!(
                "the echo child ended with status {status:#x} (pinning it failed?)"
            ));
        }
        Ok(())
    }
}

/// A request/reply round trip over a UNIX stream socket between this process and a
/// forked child that echoes, with blocking read/write: the floor under any trapped
/// access of an out-of-process device. `--cpus A,B` pins this process to CPU A and
/// the child to CPU B. Then, unless `--no-perf`, [`COUNTED_OPS`] more round trips
/// with perf counting both sides.
fn pingpong(args: &[String]) -> Res<()> {
    let iters = opt_num(args, "--iters", 20_000)? as usize;
    let placement = Placement::from_args(args)?;
    if let Some(p) = placement {
        pin(0, p.client).map_err(|e| format!("pinning to CPU {}: {e}", p.client))?;
    }
    let echo = Echo::spawn(placement.map(|p| p.server))?;
    let mut rtt = Vec::with_capacity(iters);
    for i in 0..iters + 1000 {
        let t = Instant::now();
        echo.round_trip()?;
        if i >= 1000 {
            rtt.push(t.elapsed().as_nanos() as f64);
        }
    }
    let perf = if args.iter().any(|a| a == "--no-perf") {
        Value::Null
    } else {
        counted(echo.pid as u32, COUNTED_OPS, || echo.round_trip())?
    };
    echo.finish()?;
    let med = median(&mut rtt);
    let p10 = percentile(&mut rtt, 0.1);
    let p90 = percentile(&mut rtt, 0.9);
    println!(
        "{}",
        json!({"pingpong_ns": med, "pingpong_p10_ns": p10, "pingpong_p90_ns": p90,
               "iters": iters, "request_bytes": REQ, "reply_bytes": REPLY,
               "placement": Placement::json(placement), "perf": perf})
    );
    Ok(())
}

// --- the daemon: startup and RSS --------------------------------------------------------

/// Fields of /proc/PID/status, in KiB.
fn proc_status(pid: u32) -> Res<BTreeMap<String, u64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    Ok(s.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            if !k.starts_with("Rss") && k != "VmRSS" && k != "VmHWM" {
                return None;
            }
            let kb = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some((k.to_string(), kb))
        })
        .collect())
}

/// Bytes allocated to the backend's device-memory memfd (found among its fds).
fn memfd_allocated(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let target = std::fs::read_link(e.path()).ok()?;
        if target.to_string_lossy().contains("memfd:cxl-accel-devmem") {
            return std::fs::metadata(e.path()).ok().map(|m| m.blocks() * 512);
        }
    }
    None
}

fn rss_json(pid: u32) -> Res<Value> {
    let st = proc_status(pid)?;
    let mut m = Map::new();
    for (k, v) in st {
        m.insert(format!("{k}_kib"), json!(v));
    }
    if let Some(b) = memfd_allocated(pid) {
        m.insert("devmem_allocated_bytes".into(), json!(b));
    }
    Ok(Value::Object(m))
}

fn rss_cmd(args: &[String]) -> Res<()> {
    let pid: u32 = opt(args, "--pid")
        .ok_or("--pid needed")?
        .parse()
        .map_err(|e| format!("--pid: {e}"))?;
    println!("{}", rss_json(pid)?);
    Ok(())
}

/// nobody:nogroup, as whom the scripts run the backend.
const NOBODY: u32 = 65534;

/// Start the backend on the vfio-user socket `sock` with `args`, quiet (warnings
/// only, and no stdio), as `scripts/run-vm` runs it: with its seccomp filters and,
/// when this runs as root, as nobody:nogroup with no supplementary groups (std's
/// `Command` drops them when root sets a uid). nobody runs a copy of the binary in
/// `sock`'s folder, which it owns: the build tree may be closed to it. With `cpu`,
/// the backend and every thread it starts run on that CPU only.
fn spawn_backend(backend: &Path, sock: &Path, args: &[&str], cpu: Option<usize>) -> Res<Child> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let root = std::fs::metadata("/proc/self")
        .map_err(|e| format!("/proc/self: {e}"))?
        .uid()
        == 0;
    let mut cmd = if root {
        let dir = sock.parent().ok_or("the socket path has no folder")?;
        let copy = dir.join("cxl-accel-backend");
        if !copy.exists() {
            std::fs::copy(backend, &copy)
                .map_err(|e| format!("copy {}: {e}", backend.display()))?;
        }
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        let mut c = Command::new(copy);
        c.uid(NOBODY).gid(NOBODY);
        c
    } else {
        Command::new(backend)
    };
    if let Some(cpu) = cpu {
        // SAFETY: the closure only makes one system call (async-signal-safe).
        unsafe { cmd.pre_exec(move || pin(0, cpu)) };
    }
    cmd.args(["--socket".as_ref(), sock.as_os_str()])
        .args(args)
        .args(["--seccomp", "on"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", backend.display()))
}

/// A fresh scratch folder for this run, `<tmp>/<name>.<pid>`.
pub(crate) fn scratch_dir(name: &str) -> Res<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}.{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// Spawn the backend, time until its socket accepts a connection, then let it idle
/// and read its RSS. Returns (startup ms, status fields).
fn one_daemon(backend: &Path, dir: &Path, size: &str) -> Res<(f64, Value)> {
    let sock = dir.join("bench.sock");
    let _ = std::fs::remove_file(&sock);
    let t = Instant::now();
    let mut child = spawn_backend(backend, &sock, &["--memory-size", size], None)?;
    let ready = loop {
        if UnixStream::connect(&sock).is_ok() {
            break t.elapsed();
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "the backend exited with {st} before its socket was ready"
            ));
        }
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            return Err("the backend's socket was not ready after 10 s".into());
        }
        std::thread::sleep(Duration::from_micros(50));
    };
    // Idle: let it settle after the probe connection.
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_json(child.id());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    Ok((ready.as_secs_f64() * 1e3, rss?))
}

fn daemon(args: &[String]) -> Res<()> {
    let backend = PathBuf::from(opt(args, "--backend").ok_or("--backend needed")?);
    let runs = opt_num(args, "--runs", 9)?.max(1) as usize;
    let dir = scratch_dir("cxl-accel-hostbench")?;
    let mut out = Map::new();
    for (label, size, n) in [("512m", "512M", runs), ("64g", "64G", runs.div_ceil(3))] {
        let mut startup = Vec::new();
        let mut rss = Vec::new();
        let mut last = Value::Null;
        for _ in 0..n {
            let (ms, st) = one_daemon(&backend, &dir, size)?;
            startup.push(ms);
            rss.push(st.get("VmRSS_kib").and_then(Value::as_u64).unwrap_or(0) as f64);
            last = st;
        }
        out.insert(format!("startup_ms_{label}"), json!(median(&mut startup)));
        out.insert(format!("rss_idle_kib_{label}"), json!(median(&mut rss)));
        out.insert(format!("status_{label}"), last);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", Value::Object(out));
    Ok(())
}

// --- a vfio-user client of our own ------------------------------------------------------

const CMD_VERSION: u16 = 1;
const CMD_DMA_MAP: u16 = 2;
const CMD_REGION_READ: u16 = 9;
const CMD_REGION_WRITE: u16 = 10;
const HEADER: usize = 16;

/// A connection to the backend that numbers its messages. Like the ping-pong's
/// parent, it sends each request with one write(2) and takes each reply with one
/// read(2) when the reply is there whole (bytes past a reply wait in `rx`).
struct Conn {
    s: UnixStream,
    id: u16,
    /// The request being sent (reused).
    tx: Vec<u8>,
    /// Received bytes; `rx[..rx_len]` are not consumed yet.
    rx: Vec<u8>,
    rx_len: usize,
    /// The last reply, header included.
    reply: Vec<u8>,
}

impl Conn {
    fn new(s: UnixStream) -> Self {
        Conn {
            s,
            id: 0,
            tx: Vec::with_capacity(4096),
            rx: vec![0; 4096],
            rx_len: 0,
            reply: Vec::with_capacity(4096),
        }
    }

    /// Send one command (passing `fd` with it, SCM_RIGHTS, when given) and take its
    /// reply into `self.reply`.
    fn call(&mut self, cmd: u16, body: &[u8], fd: Option<RawFd>) -> Res<()> {
        use std::io::Write as _;
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        self.id = self.id.wrapping_add(1);
        self.tx.clear();
        self.tx.extend_from_slice(&self.id.to_le_bytes());
        self.tx.extend_from_slice(&cmd.to_le_bytes());
        self.tx
            .extend_from_slice(&((HEADER + body.len()) as u32).to_le_bytes());
        self.tx.extend_from_slice(&[0u8; 8]);
        self.tx.extend_from_slice(body);
        match fd {
            None => self
                .s
                .write_all(&self.tx)
                .map_err(|e| format!("send: {e}"))?,
            Some(fd) => {
                let n = self
                    .s
                    .send_with_fd(&self.tx[..], fd)
                    .map_err(|e| format!("send with fd: {e}"))?;
                if n != self.tx.len() {
                    return Err(format!("sent {n} of {} bytes", self.tx.len()));
                }
            }
        }
        self.recv_reply()?;
        let id = u16::from_le_bytes([self.reply[0], self.reply[1]]);
        let flags = u32::from_le_bytes(self.reply[8..12].try_into().unwrap_or_default());
        if id != self.id {
            return Err(format!("reply id {id}, expected {}", self.id));
        }
        if flags & (1 << 5) != 0 {
            return Err(format!("error reply to command {cmd}"));
        }
        Ok(())
    }

    /// One whole message from the socket into `self.reply`.
    fn recv_reply(&mut self) -> Res<()> {
        use std::io::Read;
        loop {
            if self.rx_len >= HEADER {
                let size =
                    u32::from_le_bytes(self.rx[4..8].try_into().unwrap_or_default()) as usize;
                if !(HEADER..=1 << 20).contains(&size) {
                    return Err(format!("reply size {size}"));
                }
                if self.rx_len >= size {
                    self.reply.clear();
                    self.reply.extend_from_slice(&self.rx[..size]);
                    self.rx.copy_within(size..self.rx_len, 0);
                    self.rx_len -= size;
                    return Ok(());
                }
                if self.rx.len() < size {
                    self.rx.resize(size, 0);
                }
            }
            match self.s.read(&mut self.rx[self.rx_len..]) {
                Ok(0) => return Err("the backend closed the connection".into()),
                Ok(n) => self.rx_len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    }

    fn access(region: u32, offset: u64, count: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + count as usize);
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&region.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b
    }

    fn read32(&mut self, region: u32, offset: u64) -> Res<u32> {
        self.call(CMD_REGION_READ, &Self::access(region, offset, 4), None)?;
        let data = self.reply.get(32..36).ok_or("short REGION_READ reply")?;
        Ok(u32::from_le_bytes(data.try_into().unwrap_or_default()))
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Res<()> {
        let mut b = Self::access(region, offset, data.len() as u32);
        b.extend_from_slice(data);
        self.call(CMD_REGION_WRITE, &b, None)
    }
}

/// The process at the other end of `s` (SO_PEERCRED).
fn peer_pid(s: &UnixStream) -> Res<u32> {
    // SAFETY: an all-zero ucred is valid; getsockopt writes at most `len` bytes.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes for the option.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(format!("SO_PEERCRED: {}", std::io::Error::last_os_error()));
    }
    Ok(cred.pid as u32)
}

/// REGION_READ and REGION_WRITE of HDM decoder 1 Base Low in BAR0, straight to the
/// backend: how much of a trapped access is the backend's own, with the floor
/// measured in the same run, interleaved (`pingpong_interleaved_ns`). `--socket PATH`
/// talks to a backend already listening there (e.g. under callgrind) instead of
/// starting one. `--cpus A,B` pins
/// this process to CPU A and every thread of the backend to CPU B. Then, unless
/// `--no-perf`, [`COUNTED_OPS`] more reads with perf counting both sides; then the
/// same read while the DMA engine copies `--dma-mib` MiB (see [`dma_phase`]; 0
/// skips it).
fn client(args: &[String]) -> Res<()> {
    let backend = PathBuf::from(
        opt(args, "--backend")
            .or(opt(args, "--socket"))
            .ok_or("--backend or --socket needed")?,
    );
    let iters = opt_num(args, "--iters", 20_000)? as usize;
    let dma_mib = opt_num(args, "--dma-mib", 1024)?.min(1024);
    let dma_runs = opt_num(args, "--dma-runs", 3)?.max(1) as usize;
    let placement = Placement::from_args(args)?;
    if let Some(p) = placement {
        pin(0, p.client).map_err(|e| format!("pinning to CPU {}: {e}", p.client))?;
    }
    let dir = scratch_dir("cxl-accel-hostbench-c")?;
    let (mut child, s) = match opt(args, "--socket") {
        Some(path) => (
            None,
            UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?,
        ),
        None => {
            let sock = dir.join("client.sock");
            // Device memory: at least the transfer, in 256 MiB steps.
            let mem_mib = dma_mib.div_ceil(256).max(2) * 256;
            let mem_size = format!("{mem_mib}M");
            let mut child = spawn_backend(
                &backend,
                &sock,
                &["--once", "--memory-size", &mem_size],
                placement.map(|p| p.server),
            )?;
            let t = Instant::now();
            let s = loop {
                if let Ok(s) = UnixStream::connect(&sock) {
                    break s;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    return Err("backend socket not ready".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            (Some(child), s)
        }
    };
    let server_pid = peer_pid(&s)?;
    let mut c = Conn::new(s);
    let mut v = Vec::new();
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(b"{}\0");
    c.call(CMD_VERSION, &v, None)?;
    let reg = cxl_regs::layout::HDM_OFFSET
        + u64::from(cxl_regs::hdm::decoder_offset(1) + cxl_regs::hdm::DEC_BASE_LO);
    let read = Conn::access(0, reg, 4);
    let mut write = Conn::access(0, reg, 4);
    write.extend_from_slice(&0x1000_0000u32.to_le_bytes());
    // The floor, interleaved with the backend's round trips: an echo on the
    // backend's CPU, in blocks of BLOCK round trips (then BLOCK reads and writes),
    // so that both see the same machine from moment to moment. Blocks rather than
    // single round trips: on one core the backend (or the echo) finishes its loop
    // after its reply, and that time would land in the next round trip of the
    // other. The first block of each warms up.
    const BLOCK: usize = 500;
    let echo = Echo::spawn(placement.map(|p| p.server))?;
    let mut rd = Vec::with_capacity(iters);
    let mut wr = Vec::with_capacity(iters);
    let mut pp = Vec::with_capacity(iters);
    for block in 0..=iters.div_ceil(BLOCK) {
        for _ in 0..BLOCK {
            let t = Instant::now();
            echo.round_trip()?;
            if block > 0 {
                pp.push(t.elapsed().as_nanos() as f64);
            }
        }
        for _ in 0..BLOCK {
            let t = Instant::now();
            c.call(CMD_REGION_READ, &read, None)?;
            let r = t.elapsed().as_nanos() as f64;
            let t = Instant::now();
            c.call(CMD_REGION_WRITE, &write, None)?;
            if block > 0 {
                rd.push(r);
                wr.push(t.elapsed().as_nanos() as f64);
            }
        }
    }
    echo.finish()?;
    let perf = if args.iter().any(|a| a == "--no-perf") {
        Value::Null
    } else {
        counted(server_pid, COUNTED_OPS, || {
            c.call(CMD_REGION_READ, &read, None)
        })?
    };
    let mut out = json!({"backend_direct_read_ns": median(&mut rd), "backend_direct_write_ns": median(&mut wr),
                         "pingpong_interleaved_ns": median(&mut pp),
                         "backend_direct_read_p10_ns": percentile(&mut rd, 0.1),
                         "backend_direct_read_p90_ns": percentile(&mut rd, 0.9), "iters": iters,
                         "placement": Placement::json(placement), "perf": perf});
    if dma_mib > 0 {
        let mut d = dma_phase(&mut c, &read, dma_mib << 20, dma_runs)?;
        eprintln!("hostbench: {}", d.summary());
        if let (Some(o), Value::Object(m)) = (out.as_object_mut(), d.json()) {
            o.extend(m);
        }
    }
    drop(c);
    if let Some(child) = child.as_mut() {
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{out}");
    Ok(())
}

/// What [`dma_phase`] measured.
struct DmaFigures {
    mib: u64,
    idle: Vec<f64>,
    busy: Vec<f64>,
    transfer_ms: Vec<f64>,
    doorbell_us: Vec<f64>,
}

/// The target: a trapped read while a transfer runs takes at most this many times
/// the same read with the engine idle.
pub(crate) const DMA_READ_TARGET: f64 = 2.0;

impl DmaFigures {
    fn ratio(&mut self) -> Option<f64> {
        if self.busy.is_empty() || self.idle.is_empty() {
            return None;
        }
        Some(median(&mut self.busy) / median(&mut self.idle))
    }

    fn json(mut self) -> Value {
        let ratio = self.ratio();
        let busy = (!self.busy.is_empty()).then(|| median(&mut self.busy));
        let busy_p90 = (!self.busy.is_empty()).then(|| percentile(&mut self.busy, 0.9));
        json!({
            "backend_read_idle_ns": median(&mut self.idle),
            "backend_read_during_dma_ns": busy,
            "backend_read_during_dma_p90_ns": busy_p90,
            "reads_during_dma": self.busy.len(),
            "dma_mib": self.mib,
            "dma_transfers": self.transfer_ms.len(),
            "dma_transfer_ms": median(&mut self.transfer_ms),
            "dma_doorbell_write_us": median(&mut self.doorbell_us),
            "read_during_dma_ratio": ratio,
            "read_during_dma_target": DMA_READ_TARGET,
        })
    }

    fn summary(&mut self) -> String {
        let idle = median(&mut self.idle);
        let ms = median(&mut self.transfer_ms);
        match self.ratio() {
            Some(r) => {
                format!(
                "trapped read, engine idle {:.1} us; during a {} MiB DMA ({ms:.0} ms) {:.1} us \
                 over {} reads: {r:.2}x (target <= {DMA_READ_TARGET}x: {})",
                idle / 1e3,
                self.mib,
                median(&mut self.busy) / 1e3,
                self.busy.len(),
                if r <= DMA_READ_TARGET { "holds" } else { "MISSED" }
            )
            }
            None => format!(
                "trapped read, engine idle {:.1} us; no read was answered while a {} MiB \
                 DMA ran ({ms:.0} ms; the doorbell write took {:.0} us)",
                idle / 1e3,
                self.mib,
                median(&mut self.doorbell_us)
            ),
        }
    }
}

/// DMA_MAP `len` bytes of guest RAM (a memfd) and enable bus mastering; then time
/// the REGION_READ `read` (a BAR0 register) with the engine idle and while it copies
/// `len` bytes, `runs` times, alternating the direction. A read counts as "during"
/// when STATUS still reads BUSY after it. Each sample is one read; STATUS is read
/// between them in both phases, so both see the same traffic.
fn dma_phase(c: &mut Conn, read: &[u8], len: u64, runs: usize) -> Res<DmaFigures> {
    use cxl_regs::layout::engine as e;
    const GPA: u64 = 0x1_0000_0000;
    const BAR4: u32 = 4;
    const CONFIG: u32 = 7;
    // SAFETY: a valid NUL-terminated name; the fd is owned at once.
    let raw = unsafe { libc::memfd_create(c"hostbench-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let ram = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    ram.set_len(len)
        .map_err(|e| format!("guest RAM memfd: {e}"))?;
    let mut map = Vec::with_capacity(32);
    map.extend_from_slice(&32u32.to_le_bytes());
    map.extend_from_slice(&3u32.to_le_bytes()); // READ | WRITE
    map.extend_from_slice(&0u64.to_le_bytes());
    map.extend_from_slice(&GPA.to_le_bytes());
    map.extend_from_slice(&len.to_le_bytes());
    c.call(CMD_DMA_MAP, &map, Some(ram.as_raw_fd()))?;
    let cmd = cxl_regs::pci::CMD_MEMORY_SPACE | cxl_regs::pci::CMD_BUS_MASTER;
    c.write(CONFIG, cxl_regs::pci::COMMAND as u64, &cmd.to_le_bytes())?;

    let timed_read = |c: &mut Conn| -> Res<(f64, u32)> {
        let t = Instant::now();
        c.call(CMD_REGION_READ, read, None)?;
        let ns = t.elapsed().as_nanos() as f64;
        Ok((ns, c.read32(BAR4, e::STATUS)?))
    };
    let mut f = DmaFigures {
        mib: len >> 20,
        idle: Vec::new(),
        busy: Vec::new(),
        transfer_ms: Vec::new(),
        doorbell_us: Vec::new(),
    };
    for i in 0..3000 {
        let (ns, _) = timed_read(c)?;
        if i >= 500 {
            f.idle.push(ns);
        }
    }
    for run in 0..runs {
        let to_guest = run % 2 == 1;
        let (src, dst) = if to_guest { (0, GPA) } else { (GPA, 0) };
        c.write(
            BAR4,
            e::STATUS,
            &(e::STATUS_DONE | e::STATUS_ERROR).to_le_bytes(),
        )?;
        c.write(BAR4, e::SRC, &src.to_le_bytes())?;
        c.write(BAR4, e::DST, &dst.to_le_bytes())?;
        c.write(BAR4, e::LEN, &len.to_le_bytes())?;
        let control = if to_guest { e::CONTROL_DIR_TO_GUEST } else { 0 };
        c.write(BAR4, e::CONTROL, &control.to_le_bytes())?;
        let t = Instant::now();
        c.write(BAR4, e::DOORBELL, &1u32.to_le_bytes())?;
        f.doorbell_us.push(t.elapsed().as_nanos() as f64 / 1e3);
        let status = loop {
            let (ns, st) = timed_read(c)?;
            if st & e::STATUS_BUSY == 0 {
                break st;
            }
            f.busy.push(ns);
            if t.elapsed() > Duration::from_secs(60) {
                return Err("the DMA did not finish within 60 s".into());
            }
        };
        f.transfer_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if status & e::STATUS_DONE == 0 {
            return Err(format!("DMA run {run} ended with STATUS {status:#x}"));
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_takes_one_message_and_keeps_the_rest() {
        use std::io::Write as _;
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a);
        // Two replies in one write: a 20-byte one, then a 16-byte one; the second
        // must wait for the next call.
        let mut bytes = Vec::new();
        for (id, size) in [(1u16, 20u32), (2, 16)] {
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&CMD_REGION_READ.to_le_bytes());
            bytes.extend_from_slice(&size.to_le_bytes());
            bytes.extend_from_slice(&1u32.to_le_bytes()); // a reply
            bytes.extend_from_slice(&0u32.to_le_bytes());
            bytes.resize(bytes.len() + size as usize - 16, 0xab);
        }
        b.write_all(&bytes).unwrap();
        c.call(CMD_REGION_READ, &[0; 16], None).unwrap();
        assert_eq!(c.reply.len(), 20);
        assert_eq!(&c.reply[16..], &[0xab; 4]);
        assert_eq!(c.rx_len, 16);
        c.call(CMD_REGION_READ, &[0; 16], None).unwrap();
        assert_eq!(c.reply.len(), 16);
        assert_eq!(c.rx_len, 0);
        // A reply to another request is an error, as is an error reply.
        let mut wrong = bytes[20..].to_vec();
        wrong[0] = 9;
        b.write_all(&wrong).unwrap();
        assert!(c.call(CMD_REGION_READ, &[0; 16], None).is_err());
    }
}
