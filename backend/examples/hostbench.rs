//! The host side of `scripts/bench` (issue 5, BENCHMARKS.md): figures measured outside
//! the guest, and the report that puts every figure beside its anchor.
//!
//! ```text
//! hostbench pingpong [--iters N]          raw UNIX-socket round trip, two processes
//! hostbench daemon --backend PATH [--runs N]
//!                                         backend startup (spawn to socket ready), idle RSS
//!                                         at 512 MiB and 64 GiB of device memory
//! hostbench client --backend PATH [--iters N] [--dma-mib N] [--dma-runs N]
//!                                         REGION_READ/WRITE round trips to a backend from
//!                                         this process (no QEMU): the backend's own share;
//!                                         then the same read while the DMA engine copies
//!                                         N MiB (default 1024), against the read with the
//!                                         engine idle (target: at most 2x)
//! hostbench rss --pid PID                 RSS of a running backend, and how much of
//!                                         its device-memory memfd is allocated
//! hostbench report --dir DIR              DIR/{console.log,host.json,ready.txt,
//!                                         status-*.json,rss-*.json} -> DIR/../results.json
//!                                         (or --out FILE) and a table on stdout
//! ```
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
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

type Res<T> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("pingpong") => pingpong(&args[1..]),
        Some("daemon") => daemon(&args[1..]),
        Some("rss") => rss_cmd(&args[1..]),
        Some("client") => client(&args[1..]),
        Some("report") => report(&args[1..]),
        _ => Err("usage: hostbench pingpong|daemon|rss|report [options]".into()),
    };
    if let Err(e) = r {
        eprintln!("hostbench: {e}");
        std::process::exit(1);
    }
}

/// The value of `--name` in `args`.
fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
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

fn median(v: &mut [f64]) -> f64 {
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

/// A request/reply round trip over a UNIX stream socket between this process and a
/// forked child that echoes, with blocking read/write: the floor under any trapped
/// access of an out-of-process device.
fn pingpong(args: &[String]) -> Res<()> {
    let iters = opt_num(args, "--iters", 20_000)? as usize;
    let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    // SAFETY: this process has one thread; the child only calls read, write and
    // _exit, which are async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(a);
        let fd = b.as_raw_fd();
        let mut req = [0u8; REQ];
        let reply = [0u8; REPLY];
        while raw_read_exact(fd, &mut req) && raw_write_all(fd, &reply) {}
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(b);
    let fd = a.as_raw_fd();
    let req = [1u8; REQ];
    let mut reply = [0u8; REPLY];
    let mut rtt = Vec::with_capacity(iters);
    for i in 0..iters + 1000 {
        let t = Instant::now();
        if !raw_write_all(fd, &req) || !raw_read_exact(fd, &mut reply) {
            return Err("the echo child went away".into());
        }
        if i >= 1000 {
            rtt.push(t.elapsed().as_nanos() as f64);
        }
    }
    drop(a);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let med = median(&mut rtt);
    let p10 = percentile(&mut rtt, 0.1);
    let p90 = percentile(&mut rtt, 0.9);
    println!(
        "{}",
        json!({"pingpong_ns": med, "pingpong_p10_ns": p10, "pingpong_p90_ns": p90,
               "iters": iters, "request_bytes": REQ, "reply_bytes": REPLY})
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
/// `sock`'s folder, which it owns: the build tree may be closed to it.
fn spawn_backend(backend: &Path, sock: &Path, args: &[&str]) -> Res<Child> {
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
fn scratch_dir(name: &str) -> Res<PathBuf> {
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
    let mut child = spawn_backend(backend, &sock, &["--memory-size", size])?;
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

/// Send one command and read its reply into `reply` (header included); returns the
/// reply's length.
fn transact(s: &mut UnixStream, id: u16, cmd: u16, body: &[u8], reply: &mut Vec<u8>) -> Res<usize> {
    transact_fd(s, id, cmd, body, reply, None)
}

/// [`transact`], passing `fd` with the message (SCM_RIGHTS) when given.
fn transact_fd(
    s: &mut UnixStream,
    id: u16,
    cmd: u16,
    body: &[u8],
    reply: &mut Vec<u8>,
    fd: Option<RawFd>,
) -> Res<usize> {
    use std::io::Read;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&id.to_le_bytes());
    msg.extend_from_slice(&cmd.to_le_bytes());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.extend_from_slice(body);
    match fd {
        None => s.write_all(&msg).map_err(|e| format!("send: {e}"))?,
        Some(fd) => {
            let n = s
                .send_with_fd(&msg[..], fd)
                .map_err(|e| format!("send with fd: {e}"))?;
            if n != msg.len() {
                return Err(format!("sent {n} of {} bytes", msg.len()));
            }
        }
    }
    reply.resize(16, 0);
    s.read_exact(&mut reply[..16])
        .map_err(|e| format!("reply header: {e}"))?;
    let size = u32::from_le_bytes(reply[4..8].try_into().unwrap_or_default()) as usize;
    let flags = u32::from_le_bytes(reply[8..12].try_into().unwrap_or_default());
    if !(16..=1 << 20).contains(&size) {
        return Err(format!("reply size {size}"));
    }
    reply.resize(size, 0);
    s.read_exact(&mut reply[16..])
        .map_err(|e| format!("reply body: {e}"))?;
    if flags & (1 << 5) != 0 {
        return Err(format!("error reply to command {cmd}"));
    }
    Ok(size)
}

/// REGION_READ and REGION_WRITE of HDM decoder 1 Base Low in BAR0, straight to the
/// backend: how much of a trapped access is the backend's own. Then the same read
/// while the DMA engine copies `--dma-mib` MiB (see [`dma_phase`]).
fn client(args: &[String]) -> Res<()> {
    let backend = PathBuf::from(opt(args, "--backend").ok_or("--backend needed")?);
    let iters = opt_num(args, "--iters", 20_000)? as usize;
    let dma_mib = opt_num(args, "--dma-mib", 1024)?.min(1024);
    let dma_runs = opt_num(args, "--dma-runs", 3)?.max(1) as usize;
    let dir = scratch_dir("cxl-accel-hostbench-c")?;
    let sock = dir.join("client.sock");
    // Device memory: at least the transfer, in 256 MiB steps.
    let mem_mib = dma_mib.div_ceil(256).max(2) * 256;
    let mem_size = format!("{mem_mib}M");
    let mut child = spawn_backend(&backend, &sock, &["--once", "--memory-size", &mem_size])?;
    let t = Instant::now();
    let mut s = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            return Err("backend socket not ready".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut reply = Vec::new();
    let mut v = Vec::new();
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(b"{}\0");
    transact(&mut s, 0, CMD_VERSION, &v, &mut reply)?;
    let reg = cxl_regs::layout::HDM_OFFSET
        + u64::from(cxl_regs::hdm::decoder_offset(1) + cxl_regs::hdm::DEC_BASE_LO);
    let access = |count: u32| {
        let mut b = Vec::new();
        b.extend_from_slice(&reg.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b
    };
    let read = access(4);
    let mut write = access(4);
    write.extend_from_slice(&0x1000_0000u32.to_le_bytes());
    let mut rd = Vec::with_capacity(iters);
    let mut wr = Vec::with_capacity(iters);
    for i in 0..iters + 500 {
        let id = i as u16;
        let t = Instant::now();
        transact(&mut s, id, CMD_REGION_READ, &read, &mut reply)?;
        let r = t.elapsed().as_nanos() as f64;
        let t = Instant::now();
        transact(&mut s, id, CMD_REGION_WRITE, &write, &mut reply)?;
        let w = t.elapsed().as_nanos() as f64;
        if i >= 500 {
            rd.push(r);
            wr.push(w);
        }
    }
    let mut out = json!({"backend_direct_read_ns": median(&mut rd), "backend_direct_write_ns": median(&mut wr),
                         "backend_direct_read_p90_ns": percentile(&mut rd, 0.9), "iters": iters});
    if dma_mib > 0 {
        let mut conn = Conn { s, id: 0, reply };
        let mut d = dma_phase(&mut conn, &read, dma_mib << 20, dma_runs)?;
        s = conn.s;
        eprintln!("hostbench: {}", d.summary());
        if let (Some(o), Value::Object(m)) = (out.as_object_mut(), d.json()) {
            o.extend(m);
        }
    }
    drop(s);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{out}");
    Ok(())
}

/// A connection to the backend that numbers its messages.
struct Conn {
    s: UnixStream,
    id: u16,
    reply: Vec<u8>,
}

impl Conn {
    fn call(&mut self, cmd: u16, body: &[u8], fd: Option<RawFd>) -> Res<()> {
        self.id = self.id.wrapping_add(1);
        transact_fd(&mut self.s, self.id, cmd, body, &mut self.reply, fd).map(|_| ())
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
const DMA_READ_TARGET: f64 = 2.0;

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

// --- the report ----------------------------------------------------------------------------

/// `bench: <name> <value> <unit>` lines of the guest console.
fn guest_figures(console: &str) -> BTreeMap<String, f64> {
    console
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').split("bench: ").nth(1)?;
            let mut w = rest.split_whitespace();
            let name = w.next()?.to_string();
            let v: f64 = w.next()?.parse().ok()?;
            Some((name, v))
        })
        .collect()
}

fn read_json(path: &Path) -> Option<Value> {
    let s = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&s).ok()
}

/// vfio-user messages of `command` in a `ctl status` reply.
fn messages(status: &Value, command: &str) -> Option<f64> {
    status
        .pointer(&format!("/vfio_user/by_command/{command}"))
        .and_then(Value::as_f64)
        .or(Some(0.0))
        .filter(|_| status.get("vfio_user").is_some())
}

/// One row of the report.
struct Row {
    name: &'static str,
    value: Option<f64>,
    unit: &'static str,
    anchor_name: &'static str,
    anchor: Option<f64>,
    /// (ratio limit, true if the ratio must be at most the limit)
    target: Option<(f64, bool)>,
    note: String,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.value, self.anchor) {
            (Some(v), Some(a)) if a != 0.0 => Some(v / a),
            _ => None,
        }
    }
    fn holds(&self) -> Option<bool> {
        let (limit, at_most) = self.target?;
        let r = self.ratio()?;
        Some(if at_most { r <= limit } else { r >= limit })
    }
    /// The target as "<=1.5" or ">=0.8".
    fn target_text(&self) -> Option<String> {
        self.target
            .map(|(l, at_most)| format!("{}{l}", if at_most { "<=" } else { ">=" }))
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "anchor": self.anchor_name,
            "anchor_value": self.anchor,
            "ratio": self.ratio(),
            "target": self.target_text(),
            "holds": self.holds(),
            "note": self.note,
        })
    }
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn report(args: &[String]) -> Res<()> {
    let dir = PathBuf::from(opt(args, "--dir").ok_or("--dir needed")?);
    let out_path = match opt(args, "--out") {
        Some(o) => PathBuf::from(o),
        None => dir
            .parent()
            .map(|p| p.join("results.json"))
            .unwrap_or_else(|| PathBuf::from("results.json")),
    };
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let g = guest_figures(&console);
    let gf = |k: &str| g.get(k).copied();
    let host = read_json(&dir.join("host.json")).unwrap_or(Value::Null);
    let hf = |k: &str| host.get(k).and_then(Value::as_f64);
    let ready: BTreeMap<String, f64> = std::fs::read_to_string(dir.join("ready.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    let mut ready_runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for l in std::fs::read_to_string(dir.join("ready-runs.txt"))
        .unwrap_or_default()
        .lines()
    {
        if let Some((k, v)) = l.split_once(' ') {
            if let Ok(v) = v.trim().parse() {
                ready_runs.entry(k.to_string()).or_default().push(v);
            }
        }
    }
    let runs_of = |k: &str| {
        ready_runs
            .get(k)
            .map(|v| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let rss = |tag: &str| read_json(&dir.join(format!("rss-{tag}.json")));
    let status = |tag: &str| read_json(&dir.join(format!("status-{tag}.json")));

    // Backend messages per operation, from the control socket's counters: all the
    // region messages, and the posted writes among them (no reply, no round trip).
    let per_op = |phase: &str, ops: &str, counter: fn(&Value) -> Option<f64>| -> Option<f64> {
        let (a, b) = (
            status(&format!("count-{phase}-start"))?,
            status(&format!("count-{phase}-end"))?,
        );
        let n = gf(ops)?;
        Some((counter(&b)? - counter(&a)?) / n)
    };
    let region_msgs = |s: &Value| -> Option<f64> {
        Some(messages(s, "region_read")? + messages(s, "region_write")?)
    };
    let posted_msgs = |s: &Value| -> Option<f64> {
        s.pointer("/vfio_user/posted_writes")
            .and_then(Value::as_f64)
    };
    let msgs_read = per_op("read", "ops.read", region_msgs);
    let msgs_write = per_op("write", "ops.write", region_msgs);
    let msgs_identify = per_op("identify", "ops.identify", region_msgs);
    let posted_write = per_op("write", "ops.write", posted_msgs);
    let posted_identify = per_op("identify", "ops.identify", posted_msgs);
    let posted = status("end").as_ref().and_then(posted_msgs);

    let kib = |v: Option<f64>| v.map(|k| k / 1024.0);
    let rss_touched = rss("touched");
    let rss_val =
        |v: &Option<Value>, k: &str| v.as_ref().and_then(|v| v.get(k)).and_then(Value::as_f64);
    let rss_dma = rss("after-dma");

    let rows = vec![
        Row {
            name: "trapped read, backend",
            value: gf("reg_read.backend"),
            unit: "ns",
            anchor_name: "raw UNIX-socket ping-pong (host)",
            anchor: hf("pingpong_ns"),
            target: Some((1.5, true)),
            note: format!("{} backend messages per read", fmt_num(msgs_read)),
        },
        Row {
            name: "backend alone: REGION_READ round trip",
            value: hf("backend_direct_read_ns"),
            unit: "ns",
            anchor_name: "raw UNIX-socket ping-pong (host)",
            anchor: hf("pingpong_ns"),
            target: None,
            note: "a client of our own on the host, no QEMU: the backend's share".into(),
        },
        Row {
            name: "trapped read, backend vs type3",
            value: gf("reg_read.backend"),
            unit: "ns",
            anchor_name: "cxl-type3 read",
            anchor: gf("reg_read.type3"),
            target: None,
            note: "HDM decoder 1 Base Low".into(),
        },
        Row {
            name: "trapped write+read back",
            value: gf("reg_write.backend"),
            unit: "ns",
            anchor_name: "cxl-type3 write+read back",
            anchor: gf("reg_write.type3"),
            target: None,
            note: format!(
                "{} backend messages per write+read, {} of them posted",
                fmt_num(msgs_write),
                fmt_num(posted_write)
            ),
        },
        Row {
            name: "write+read back, backend vs ping-pong",
            value: gf("reg_write.backend"),
            unit: "ns",
            anchor_name: "2 x raw ping-pong (host)",
            anchor: hf("pingpong_ns").map(|p| 2.0 * p),
            target: None,
            note: String::new(),
        },
        Row {
            name: "trapped read during a DMA",
            value: hf("backend_read_during_dma_ns"),
            unit: "ns",
            anchor_name: "same read, DMA engine idle (host)",
            anchor: hf("backend_read_idle_ns"),
            target: Some((2.0, true)),
            note: format!(
                "a client of our own; {} reads during {} transfers of {} MiB ({} ms each)",
                fmt_num(hf("reads_during_dma")),
                fmt_num(hf("dma_transfers")),
                fmt_num(hf("dma_mib")),
                fmt_num(hf("dma_transfer_ms"))
            ),
        },
        Row {
            name: "mailbox Identify",
            value: gf("mbox_identify.backend"),
            unit: "ns",
            anchor_name: "cxl-type3 Identify",
            anchor: gf("mbox_identify.type3"),
            target: Some((2.0, true)),
            note: format!(
                "{} backend messages per Identify, {} of them posted",
                fmt_num(msgs_identify),
                fmt_num(posted_identify)
            ),
        },
        Row {
            name: "BAR2 write bandwidth",
            value: gf("bw_write.bar2"),
            unit: "MB/s",
            anchor_name: "guest RAM write",
            anchor: gf("bw_write.ram"),
            target: Some((0.8, false)),
            note: "64 MiB, 64-bit stores".into(),
        },
        Row {
            name: "BAR2 read bandwidth",
            value: gf("bw_read.bar2"),
            unit: "MB/s",
            anchor_name: "guest RAM read",
            anchor: gf("bw_read.ram"),
            target: Some((0.8, false)),
            note: "64 MiB, 64-bit loads".into(),
        },
        Row {
            name: "DMA guest RAM -> device",
            value: gf("dma_bw.backend"),
            unit: "MB/s",
            anchor_name: "guest CPU copy RAM -> BAR2",
            anchor: gf("dma_bw.cpu_copy"),
            target: None,
            note: format!("64 MiB in {} descriptor(s)", fmt_num(gf("dma_descriptors.backend"))),
        },
        Row {
            name: "time to ready",
            value: ready.get("backend").copied(),
            unit: "ms",
            anchor_name: "cxl-type3-only VM",
            anchor: ready.get("type3").copied(),
            target: Some((1.2, true)),
            note: format!(
                "QEMU start to region assembled (host clock), medians of runs: backend [{}], type3 [{}]",
                runs_of("backend"),
                runs_of("type3")
            ),
        },
        Row {
            name: "backend startup",
            value: hf("startup_ms_512m"),
            unit: "ms",
            anchor_name: "target 50 ms",
            anchor: Some(50.0),
            target: Some((1.0, true)),
            note: format!("spawn to socket accepting; 64 GiB: {} ms", fmt_num(hf("startup_ms_64g"))),
        },
        Row {
            name: "RSS idle, 512 MiB",
            value: kib(hf("rss_idle_kib_512m")),
            unit: "MiB",
            anchor_name: "target 16 MiB",
            anchor: Some(16.0),
            target: Some((1.0, true)),
            note: String::new(),
        },
        Row {
            name: "RSS idle, 64 GiB sparse",
            value: kib(hf("rss_idle_kib_64g")),
            unit: "MiB",
            anchor_name: "target 16 MiB",
            anchor: Some(16.0),
            target: Some((1.0, true)),
            note: String::new(),
        },
        Row {
            name: "RSS after guest touched 64 MiB",
            value: kib(rss_val(&rss_touched, "VmRSS_kib")),
            unit: "MiB",
            anchor_name: "RSS idle, 512 MiB",
            anchor: kib(hf("rss_idle_kib_512m")),
            target: None,
            note: format!(
                "via BAR2 (QEMU's mapping); device memory allocated {} MiB; after DMA of 64 MiB: RSS {} MiB",
                fmt_num(rss_val(&rss_touched, "devmem_allocated_bytes").map(|b| b / 1048576.0)),
                fmt_num(kib(rss_val(&rss_dma, "VmRSS_kib")))
            ),
        },
    ];

    let mut table = String::new();
    table.push_str(&format!(
        "{:<38} {:>10} {:<5} {:<34} {:>10} {:>7} {:>7} {:>5}\n",
        "figure", "value", "unit", "anchor", "anchor", "ratio", "target", "holds"
    ));
    for r in &rows {
        let target = r.target_text().unwrap_or_else(|| "-".into());
        let holds = match r.holds() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        table.push_str(&format!(
            "{:<38} {:>10} {:<5} {:<34} {:>10} {:>7} {:>7} {:>5}\n",
            r.name,
            fmt_num(r.value),
            r.unit,
            r.anchor_name,
            fmt_num(r.anchor),
            r.ratio()
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            target,
            holds
        ));
        if !r.note.is_empty() {
            table.push_str(&format!("{:<38} {}\n", "", r.note));
        }
    }
    print!("{table}");
    let mut raw = Map::new();
    for (k, v) in &g {
        raw.insert(k.clone(), json!(v));
    }
    let machine = std::fs::read_to_string(dir.join("machine.txt")).unwrap_or_default();
    let results = json!({
        "machine": machine.lines().collect::<Vec<_>>(),
        "figures": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "guest": raw,
        "host": host,
        "ready_ms": ready,
        "ready_runs_ms": ready_runs,
        "messages_per_op": {"read": msgs_read, "write_read_back": msgs_write, "identify": msgs_identify},
        "posted_per_op": {"write_read_back": posted_write, "identify": posted_identify},
        "posted_writes": posted,
    });
    let mut f =
        std::fs::File::create(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
    f.write_all(
        serde_json::to_string_pretty(&results)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(|e| format!("{}: {e}", out_path.display()))?;
    eprintln!("hostbench: wrote {}", out_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_lines() {
        let g = guest_figures("x\nbench: reg_read.backend 1234.5 ns\r\n[  1.0] bench: bw_write.ram 300.0 MB/s\nbench-sync x\n");
        assert_eq!(g.get("reg_read.backend"), Some(&1234.5));
        assert_eq!(g.get("bw_write.ram"), Some(&300.0));
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn rows_judge_ratios() {
        let r = Row {
            name: "x",
            value: Some(3.0),
            unit: "ns",
            anchor_name: "y",
            anchor: Some(2.0),
            target: Some((1.5, true)),
            note: String::new(),
        };
        assert_eq!(r.ratio(), Some(1.5));
        assert_eq!(r.holds(), Some(true));
        let r = Row {
            target: Some((0.8, false)),
            value: Some(1.0),
            ..r
        };
        assert_eq!(r.holds(), Some(false));
    }
}
