//! Out-of-process firmware (`--firmware-socket PATH`): the backend consults a vendor
//! process over JSON lines at its firmware hooks, for vendors who do not write Rust.
//!
//! **Who connects.** The backend listens at PATH (a UNIX socket, 0600 from its
//! creation, like the control socket) and the vendor process connects, at any time
//! and as often as it likes: a new connection replaces the current one. So the daemon
//! never dials out (no thread makes `socket` or `connect` calls once confined), the
//! vendor process can start before or after the backend, and when it comes back after
//! a crash it simply connects again. Until a process is connected, every hook takes
//! its default at once.
//!
//! **Threads.** One thread (the "firmware" thread, seccomp role
//! [`crate::seccomp::Role::Firmware`]) owns the listener and the connection: it
//! accepts, writes questions, reads answers and matches them to questions by id. A
//! hook (on whichever thread the device runs it: vfio-user, control or worker) hands
//! its question to that thread through a channel and waits for the answer at most the
//! deadline (`--firmware-deadline-ms`). The commit hook does not wait at all: it
//! answers [`CommitDecision::Delay`] at once and looks for the answer when the delay
//! is up ([`Firmware::on_commit_due`]), so a guest polling Committed (Linux polls a
//! commit for 20 ms) is never held behind the vendor process, and the device lock is
//! not held while it thinks. The other hooks answer within the register access that
//! triggered them, so they wait, for at most the deadline.
//!
//! **Defaults.** On a timeout, an answer that is not JSON, not an object, has no or an
//! unknown id, or has the wrong fields or types, and on a closed socket, the hook
//! takes the answer of the fallback firmware (`--firmware NAME`, `default` unless
//! given), logs why, and counts it (`firmware_socket` in the control socket's
//! `status`). A line that is not an answer at all fails the oldest open question at
//! once, so the guest does not wait for the deadline. Late answers (to a question
//! already defaulted) are counted and dropped.
//!
//! The protocol (every message, with examples) is in `examples/README.md`, "The JSON
//! protocol".

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use accel_type2::firmware::{param_u64, ParamError};
use accel_type2::{
    CommitDecision, CxlResetDecision, EventLog, EventRecord, Firmware, FwError, FwInfo, FwPart,
    HealthInfo, Identify, MediaReadiness, ResetKind, ReturnCode,
};
use log::{debug, info, warn};
use serde::Serialize;
use serde_json::{json, Map, Value};
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::control::bind_named;
use crate::jsonargs::{event_record, get_u64, hex_bytes, hex_string, opt_bool, opt_u64};
use crate::seccomp::{self, Role};
use crate::vfio_user::sys::{self, FileId};

/// The protocol version announced in `hello`.
pub const PROTOCOL_VERSION: u64 = 1;
/// Default deadline of a question.
pub const DEFAULT_DEADLINE_MS: u64 = 10;
/// Largest deadline `--firmware-deadline-ms` accepts: a hook waits this long inside a
/// register access, and Linux polls a decoder commit for 20 ms.
pub const MAX_DEADLINE_MS: u64 = 1000;
/// Longest line read from the vendor process.
pub const MAX_LINE: usize = 64 << 10;
/// Most bytes of questions queued for a vendor process that does not read them;
/// past it, questions take their default at once.
pub const MAX_BACKLOG: usize = 1 << 20;
/// How often a delayed commit looks for its answer.
const COMMIT_POLL: Duration = Duration::from_millis(1);
/// How long an unanswered question is remembered (for counting late answers) after
/// its deadline.
const LATE_GRACE: Duration = Duration::from_secs(5);

/// Errors of setting up the firmware socket.
#[derive(Debug, Error)]
pub enum FwSocketError {
    #[error(transparent)]
    Bind(#[from] crate::control::ControlError),
    #[error("firmware socket: cannot create an eventfd: {0}")]
    EventFd(#[source] io::Error),
    #[error("cannot start the firmware thread: {0}")]
    Thread(#[source] io::Error),
    #[error("the firmware thread ended before it started")]
    Gone,
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Why a question got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AskError {
    #[error("no firmware process is connected")]
    NotConnected,
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("the firmware process sent a line that is not an answer")]
    Garbage,
    #[error("the firmware process went away")]
    Closed,
    #[error("the firmware process does not read its questions")]
    Backlog,
    #[error("the answer is not valid: {0}")]
    WrongType(String),
}

/// Counters for the control socket's `status` (`firmware_socket`).
#[derive(Debug, Default)]
pub struct LinkStats {
    connected: AtomicBool,
    connections: AtomicU64,
    disconnects: AtomicU64,
    questions: AtomicU64,
    answers: AtomicU64,
    timeouts: AtomicU64,
    garbage: AtomicU64,
    wrong_type: AtomicU64,
    closed: AtomicU64,
    late: AtomicU64,
    defaults: AtomicU64,
}

/// A snapshot of [`LinkStats`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LinkSnapshot {
    pub connected: bool,
    pub connections: u64,
    pub disconnects: u64,
    /// Questions asked (notifications not counted).
    pub questions: u64,
    /// Answers matched to a waiting question.
    pub answers: u64,
    pub timeouts: u64,
    /// Lines that are not an answer (not JSON, not an object, no id).
    pub garbage: u64,
    /// Answers with the wrong fields or types.
    pub wrong_type: u64,
    /// Questions failed because the process went away.
    pub closed: u64,
    /// Answers to questions that had already taken their default.
    pub late: u64,
    /// Hooks that took the fallback firmware's answer, for any reason (including no
    /// process connected).
    pub defaults: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl LinkStats {
    pub fn snapshot(&self) -> LinkSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            connections: g(&self.connections),
            disconnects: g(&self.disconnects),
            questions: g(&self.questions),
            answers: g(&self.answers),
            timeouts: g(&self.timeouts),
            garbage: g(&self.garbage),
            wrong_type: g(&self.wrong_type),
            closed: g(&self.closed),
            late: g(&self.late),
            defaults: g(&self.defaults),
        }
    }
}

type Reply = Result<Map<String, Value>, AskError>;

enum Msg {
    Ask {
        id: u64,
        line: String,
        deadline: Instant,
        reply: Sender<Reply>,
    },
    Notify(String),
}

/// The hooks' side of the link: send questions, wait for answers.
#[derive(Clone)]
pub struct Link {
    tx: Sender<Msg>,
    wake: Arc<EventFd>,
    stats: Arc<LinkStats>,
    next_id: Arc<AtomicU64>,
}

/// A question whose answer is collected later (`Pending::poll`).
pub struct Pending {
    rx: Receiver<Reply>,
    asked: Instant,
}

impl Pending {
    /// The answer, if it came; `None` while it may still come.
    fn poll(&self) -> Option<Reply> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(AskError::Closed)),
        }
    }
}

impl Link {
    pub fn stats(&self) -> &Arc<LinkStats> {
        &self.stats
    }

    fn connected(&self) -> bool {
        self.stats.connected.load(Ordering::Acquire)
    }

    fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            warn!("firmware socket: cannot wake its thread: {e}");
        }
    }

    /// Send a notification (no answer expected), if a process is connected.
    fn notify(&self, mut msg: Map<String, Value>, what: &str) {
        if !self.connected() {
            return;
        }
        msg.insert("notify".into(), Value::String(what.into()));
        if self
            .tx
            .send(Msg::Notify(Value::Object(msg).to_string()))
            .is_ok()
        {
            self.wake();
        }
    }

    /// Send question `hook` with `fields`; the answer is awaited by the caller for at
    /// most `deadline`.
    fn send(
        &self,
        hook: &str,
        mut fields: Map<String, Value>,
        deadline: Duration,
    ) -> Result<Pending, AskError> {
        if !self.connected() {
            return Err(AskError::NotConnected);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        fields.insert("id".into(), Value::from(id));
        fields.insert("hook".into(), Value::String(hook.into()));
        let (reply, rx) = mpsc::channel();
        let asked = Instant::now();
        let msg = Msg::Ask {
            id,
            line: Value::Object(fields).to_string(),
            deadline: asked.checked_add(deadline).unwrap_or(asked),
            reply,
        };
        self.tx.send(msg).map_err(|_| AskError::Closed)?;
        bump(&self.stats.questions);
        self.wake();
        Ok(Pending { rx, asked })
    }

    /// Ask and wait for the answer, at most `deadline`.
    fn ask(&self, hook: &str, fields: Map<String, Value>, deadline: Duration) -> Reply {
        let pending = self.send(hook, fields, deadline)?;
        match pending.rx.recv_timeout(deadline) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                bump(&self.stats.timeouts);
                Err(AskError::Timeout(deadline.as_millis() as u64))
            }
            Err(RecvTimeoutError::Disconnected) => Err(AskError::Closed),
        }
    }
}

/// The running firmware thread and its socket. Dropping it stops the thread and
/// removes the socket.
pub struct FwSocket {
    path: PathBuf,
    file_id: FileId,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    link: Link,
}

impl FwSocket {
    /// Bind `path` and start the firmware thread. `hello` is sent to each process
    /// that connects. With `confine`, the thread installs its seccomp filter first.
    pub fn spawn(
        path: &Path,
        hello: Map<String, Value>,
        confine: bool,
    ) -> Result<Self, FwSocketError> {
        let (listener, file_id) = bind_named("firmware socket", path)?;
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(FwSocketError::EventFd)?);
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(FwSocketError::EventFd)?);
        let stats = Arc::new(LinkStats::default());
        let (tx, rx) = mpsc::channel();
        let link = Link {
            tx,
            wake: wake.clone(),
            stats: stats.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
        };
        let mut io = LinkIo {
            listener,
            conn: None,
            inbuf: Vec::new(),
            discarding: false,
            outbuf: Vec::new(),
            pending: BTreeMap::new(),
            rx,
            wake,
            stop: stop.clone(),
            stats,
            hello: Value::Object(hello).to_string(),
            path: path.to_path_buf(),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("firmware".into())
            .spawn(move || {
                let confined = if confine {
                    seccomp::install(Role::Firmware)
                } else {
                    Ok(())
                };
                let ok = confined.is_ok();
                // The receiver waits for this message; it cannot be gone.
                let _ = ready_tx.send(confined);
                if ok {
                    io.run();
                }
            })
            .map_err(FwSocketError::Thread)?;
        let sock = Self {
            path: path.to_path_buf(),
            file_id,
            stop,
            thread: Some(thread),
            link,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(FwSocketError::Gone),
        }
        info!(
            "firmware socket at {}: waiting for a firmware process",
            path.display()
        );
        Ok(sock)
    }

    pub fn link(&self) -> Link {
        self.link.clone()
    }

    /// Stop the thread (a question in flight takes its default) and remove the
    /// socket.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            sys::remove_if_ours(&self.path, self.file_id);
        }
    }
}

impl Drop for FwSocket {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What the firmware thread owns.
struct LinkIo {
    listener: UnixListener,
    conn: Option<UnixStream>,
    inbuf: Vec<u8>,
    /// The current line is longer than [`MAX_LINE`]: drop it up to its newline.
    discarding: bool,
    outbuf: Vec<u8>,
    /// Open questions by id: where the answer goes, and when the asker gave up.
    pending: BTreeMap<u64, (Sender<Reply>, Instant)>,
    rx: Receiver<Msg>,
    wake: Arc<EventFd>,
    stop: Arc<EventFd>,
    stats: Arc<LinkStats>,
    hello: String,
    path: PathBuf,
}

/// poll(2) on up to four fds for reading (and writing, for the connection with data
/// to send): returns their `revents`.
fn poll_fds(fds: &[(RawFd, bool)], timeout: Duration) -> io::Result<[i16; 4]> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    for (p, &(fd, write)) in pfds.iter_mut().zip(fds) {
        p.fd = fd;
        p.events = libc::POLLIN | if write { libc::POLLOUT } else { 0 };
    }
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfds` is a live array of 4 initialized pollfds (fd -1 entries are
    // ignored by the kernel); the length passed is its length.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 4, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let mut out = [0i16; 4];
    for (o, p) in out.iter_mut().zip(pfds) {
        *o = p.revents;
    }
    Ok(out)
}

impl LinkIo {
    fn run(&mut self) {
        loop {
            let conn_fd = self.conn.as_ref().map_or(-1, |c| c.as_raw_fd());
            let fds = [
                (self.stop.as_raw_fd(), false),
                (self.wake.as_raw_fd(), false),
                (self.listener.as_raw_fd(), false),
                (conn_fd, !self.outbuf.is_empty()),
            ];
            let timeout = self
                .pending
                .values()
                .map(|(_, d)| d.checked_add(LATE_GRACE).unwrap_or(*d))
                .min()
                .map_or(Duration::from_secs(1), |d| {
                    d.saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1))
                });
            let revents = match poll_fds(&fds, timeout) {
                Ok(r) => r,
                Err(e) => {
                    warn!("firmware socket: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let [stop, wake, listen, conn] = revents;
            if stop != 0 {
                break;
            }
            if wake != 0 {
                let _ = self.wake.read();
            }
            self.take_messages();
            if listen != 0 {
                self.accept();
            }
            if conn != 0 && self.conn.is_some() {
                if conn & libc::POLLOUT != 0 {
                    self.flush();
                }
                if conn & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read();
                }
            }
            self.forget_expired();
        }
        self.disconnect("the backend is shutting down");
        debug!("firmware socket: stopped");
    }

    /// Take the questions and notifications the hooks sent.
    fn take_messages(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Ask {
                    id,
                    line,
                    deadline,
                    reply,
                } => {
                    if self.conn.is_none() {
                        let _ = reply.send(Err(AskError::NotConnected));
                        continue;
                    }
                    if self.outbuf.len().saturating_add(line.len()) > MAX_BACKLOG {
                        let _ = reply.send(Err(AskError::Backlog));
                        continue;
                    }
                    self.queue(&line);
                    self.pending.insert(id, (reply, deadline));
                }
                Msg::Notify(line) => {
                    if self.conn.is_some()
                        && self.outbuf.len().saturating_add(line.len()) <= MAX_BACKLOG
                    {
                        self.queue(&line);
                    }
                }
            }
        }
        self.flush();
    }

    fn queue(&mut self, line: &str) {
        self.outbuf.extend_from_slice(line.as_bytes());
        self.outbuf.push(b'\n');
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!("firmware socket: a connection cannot be made non-blocking: {e}");
                        continue;
                    }
                    if self.conn.is_some() {
                        self.disconnect("a new firmware process connected");
                    }
                    info!("firmware process connected to {}", self.path.display());
                    self.conn = Some(stream);
                    self.stats.connected.store(true, Ordering::Release);
                    bump(&self.stats.connections);
                    let hello = self.hello.clone();
                    self.queue(&hello);
                    self.flush();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("firmware socket: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Drop the connection: every open question takes its default now.
    fn disconnect(&mut self, why: &str) {
        if self.conn.take().is_none() {
            return;
        }
        self.stats.connected.store(false, Ordering::Release);
        bump(&self.stats.disconnects);
        warn!("firmware process disconnected ({why}); hooks take their defaults until one connects again");
        for (_, (reply, _)) in std::mem::take(&mut self.pending) {
            bump(&self.stats.closed);
            let _ = reply.send(Err(AskError::Closed));
        }
        self.inbuf.clear();
        self.outbuf.clear();
        self.discarding = false;
    }

    fn flush(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        while !self.outbuf.is_empty() {
            match conn.write(&self.outbuf) {
                Ok(0) => {
                    self.disconnect("it stopped reading");
                    return;
                }
                Ok(n) => {
                    self.outbuf.drain(..n.min(self.outbuf.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("write: {e}");
                    self.disconnect(&why);
                    return;
                }
            }
        }
    }

    fn read(&mut self) {
        let mut buf = [0u8; 16 << 10];
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            match conn.read(&mut buf) {
                Ok(0) => {
                    self.disconnect("end of stream");
                    return;
                }
                Ok(n) => {
                    for &b in buf.get(..n).unwrap_or_default() {
                        self.byte(b);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("read: {e}");
                    self.disconnect(&why);
                    return;
                }
            }
        }
    }

    fn byte(&mut self, b: u8) {
        if b == b'\n' {
            if self.discarding {
                self.discarding = false;
                self.garbage("a line longer than 64 KiB");
            } else {
                let line = std::mem::take(&mut self.inbuf);
                self.line(&line);
            }
            return;
        }
        if self.discarding {
            return;
        }
        if self.inbuf.len() >= MAX_LINE {
            self.inbuf.clear();
            self.discarding = true;
            return;
        }
        self.inbuf.push(b);
    }

    fn line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let value: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return self.garbage(&format!("not JSON ({e})")),
        };
        let Value::Object(obj) = value else {
            return self.garbage("not a JSON object");
        };
        let Some(id) = obj.get("id").and_then(Value::as_u64) else {
            return self.garbage("no numeric \"id\"");
        };
        match self.pending.remove(&id) {
            Some((reply, _)) => {
                bump(&self.stats.answers);
                if reply.send(Ok(obj)).is_err() {
                    // The asker gave up at its deadline.
                    bump(&self.stats.late);
                    debug!("firmware process: answer {id} came after its deadline");
                }
            }
            None => {
                bump(&self.stats.late);
                debug!("firmware process: answer {id} matches no open question");
            }
        }
    }

    /// A line that is no answer: the oldest open question takes its default now.
    fn garbage(&mut self, why: &str) {
        bump(&self.stats.garbage);
        warn!("firmware process sent {why}");
        if let Some((_, (reply, _))) = self.pending.pop_first() {
            let _ = reply.send(Err(AskError::Garbage));
        }
    }

    /// Forget questions long past their deadline (their askers took the default).
    fn forget_expired(&mut self) {
        let now = Instant::now();
        self.pending
            .retain(|_, (_, d)| d.checked_add(LATE_GRACE).is_some_and(|t| t > now));
    }
}

// --- the firmware ------------------------------------------------------------------

/// A delayed commit waiting for the vendor process.
enum CommitAsk {
    Asking(Pending),
    /// The vendor process did not answer: the fallback decides from here on.
    Fallback,
}

/// A [`Firmware`] that asks a vendor process, with `fallback` for every default.
pub struct SocketFirmware {
    link: Link,
    fallback: Box<dyn Firmware>,
    name: String,
    path: PathBuf,
    deadline: Duration,
    commits: HashMap<usize, CommitAsk>,
    /// Event records the vendor process sent with its answers.
    events: Vec<(EventLog, EventRecord)>,
}

fn kind_name(kind: ResetKind) -> &'static str {
    match kind {
        ResetKind::Conventional => "conventional",
        ResetKind::Flr => "flr",
        ResetKind::CxlReset => "cxl",
    }
}

fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

fn fw_error_from(name: &str, slot: u8) -> Option<FwError> {
    Some(match name {
        "invalid_input" => FwError::BadPart,
        "invalid_slot" => FwError::InvalidSlot(slot),
        "in_progress" => FwError::InProgress,
        "out_of_order" => FwError::OutOfOrder,
        "verification" => FwError::Verification,
        "activation_rolled_back" => FwError::ActivationRolledBack,
        "activation_needs_cold_reset" => FwError::ActivationNeedsColdReset,
        _ => return None,
    })
}

fn decoder_fields(index: usize, d: &hdm::DecoderState) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("decoder".into(), Value::from(index));
    m.insert("base".into(), Value::from(d.base));
    m.insert("size".into(), Value::from(d.size));
    m.insert("dpa_skip".into(), Value::from(d.dpa_skip));
    // Interleave Ways and Granularity as the Control register encodes them (CXL r3.1
    // §8.2.4.20.7): 0 is one way, 256 bytes.
    m.insert("iw".into(), Value::from(d.iw));
    m.insert("ig".into(), Value::from(d.ig));
    m.insert("lock_on_commit".into(), Value::Bool(d.lock_on_commit));
    m.insert("host_only".into(), Value::Bool(d.host_only));
    m
}

fn field_str<'a>(a: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    a.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("\"{key}\" must be a string"))
}

impl SocketFirmware {
    pub fn new(link: Link, fallback: Box<dyn Firmware>, path: &Path, deadline_ms: u64) -> Self {
        let name = format!("socket:{}", fallback.name());
        Self {
            link,
            fallback,
            name,
            path: path.to_path_buf(),
            deadline: Duration::from_millis(deadline_ms),
            commits: HashMap::new(),
            events: Vec::new(),
        }
    }

    /// Log why `hook` takes its default, and count it.
    fn defaulted(&self, hook: &str, e: &AskError) {
        bump(&self.link.stats.defaults);
        match e {
            AskError::NotConnected => debug!("firmware {hook}: {e}; the default answers"),
            AskError::WrongType(_) => {
                bump(&self.link.stats.wrong_type);
                warn!("firmware {hook}: {e}; the default answers");
            }
            _ => warn!("firmware {hook}: {e}; the default answers"),
        }
    }

    /// Ask and check the answer with `parse`; `None` (logged, counted) means the
    /// default answers. Event records in the answer are kept for `take_events`.
    fn consult<T>(
        &mut self,
        hook: &str,
        fields: Map<String, Value>,
        parse: impl FnOnce(&Map<String, Value>) -> Result<T, String>,
    ) -> Option<T> {
        let answer = self.link.ask(hook, fields, self.deadline);
        self.accept(hook, answer, parse)
    }

    fn accept<T>(
        &mut self,
        hook: &str,
        answer: Reply,
        parse: impl FnOnce(&Map<String, Value>) -> Result<T, String>,
    ) -> Option<T> {
        let parsed = answer.and_then(|a| {
            let events = self.parse_events(&a).map_err(AskError::WrongType)?;
            let v = parse(&a).map_err(AskError::WrongType)?;
            self.events.extend(events);
            Ok(v)
        });
        match parsed {
            Ok(v) => Some(v),
            Err(e) => {
                self.defaulted(hook, &e);
                None
            }
        }
    }

    fn parse_events(&self, a: &Map<String, Value>) -> Result<Vec<(EventLog, EventRecord)>, String> {
        match a.get("events") {
            None => Ok(Vec::new()),
            Some(Value::Array(list)) => list
                .iter()
                .map(|e| {
                    e.as_object()
                        .ok_or_else(|| "an event must be an object".to_string())
                        .and_then(event_record)
                })
                .collect(),
            Some(_) => Err("\"events\" must be an array".into()),
        }
    }

    fn parse_commit(a: &Map<String, Value>, asked: Instant) -> Result<CommitDecision, String> {
        match field_str(a, "decision")? {
            "accept" => Ok(CommitDecision::Accept),
            "reject" => Ok(CommitDecision::Reject),
            "delay" => {
                let ns = ms_to_ns(get_u64(a, "ms")?);
                let spent = u64::try_from(asked.elapsed().as_nanos()).unwrap_or(u64::MAX);
                Ok(match ns.saturating_sub(spent) {
                    0 => CommitDecision::Accept,
                    left => CommitDecision::Delay(left),
                })
            }
            other => Err(format!(
                "\"decision\" {other:?} is not accept, reject or delay"
            )),
        }
    }

    /// What the fallback decides, for a commit the vendor process did not decide.
    fn commit_fallback(&mut self, index: usize, d: &hdm::DecoderState) -> CommitDecision {
        let decision = self.fallback.on_commit(index, d);
        if let CommitDecision::Delay(_) = decision {
            self.commits.insert(index, CommitAsk::Fallback);
        }
        decision
    }
}

impl Firmware for SocketFirmware {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_commit(&mut self, index: usize, d: &hdm::DecoderState) -> CommitDecision {
        self.commits.remove(&index);
        match self
            .link
            .send("commit", decoder_fields(index, d), self.deadline)
        {
            Ok(pending) => {
                self.commits.insert(index, CommitAsk::Asking(pending));
                CommitDecision::Delay(COMMIT_POLL.min(self.deadline).as_nanos() as u64)
            }
            Err(e) => {
                self.defaulted("commit", &e);
                self.commit_fallback(index, d)
            }
        }
    }

    fn on_commit_due(&mut self, index: usize, d: &hdm::DecoderState) -> CommitDecision {
        let ask = match self.commits.remove(&index) {
            Some(CommitAsk::Asking(p)) => p,
            Some(CommitAsk::Fallback) | None => {
                let decision = self.fallback.on_commit_due(index, d);
                if let CommitDecision::Delay(_) = decision {
                    self.commits.insert(index, CommitAsk::Fallback);
                }
                return decision;
            }
        };
        let answer = match ask.poll() {
            Some(answer) => answer,
            None => {
                let spent = ask.asked.elapsed();
                if spent < self.deadline {
                    let wait = COMMIT_POLL.min(self.deadline.saturating_sub(spent));
                    self.commits.insert(index, CommitAsk::Asking(ask));
                    return CommitDecision::Delay((wait.as_nanos() as u64).max(1));
                }
                bump(&self.link.stats.timeouts);
                Err(AskError::Timeout(self.deadline.as_millis() as u64))
            }
        };
        let asked = ask.asked;
        match self.accept("commit", answer, |a| Self::parse_commit(a, asked)) {
            Some(decision) => decision,
            None => self.commit_fallback(index, d),
        }
    }

    fn power_on_decoders(&mut self, capacity: u64) -> Vec<(usize, hdm::DecoderState)> {
        let mut q = Map::new();
        q.insert("capacity".into(), Value::from(capacity));
        let parse = |a: &Map<String, Value>| -> Result<Vec<(usize, hdm::DecoderState)>, String> {
            let list = a
                .get("decoders")
                .and_then(Value::as_array)
                .ok_or("\"decoders\" must be an array")?;
            list.iter()
                .map(|d| {
                    let d = d.as_object().ok_or("a decoder must be an object")?;
                    let index = usize::try_from(get_u64(d, "decoder")?)
                        .map_err(|_| "\"decoder\" is too large".to_string())?;
                    Ok((
                        index,
                        hdm::DecoderState {
                            base: get_u64(d, "base")?,
                            size: get_u64(d, "size")?,
                            dpa_skip: opt_u64(d, "dpa_skip")?.unwrap_or(0),
                            lock_on_commit: opt_bool(d, "lock_on_commit")?.unwrap_or(false),
                            host_only: opt_bool(d, "host_only")?.unwrap_or(false),
                            ..Default::default()
                        },
                    ))
                })
                .collect()
        };
        match self.consult("power_on_decoders", q, parse) {
            Some(d) => d,
            None => self.fallback.power_on_decoders(capacity),
        }
    }

    fn on_reset(&mut self, kind: ResetKind) {
        // A reset drops the commits in flight with their decoders.
        self.commits.clear();
        let mut m = Map::new();
        m.insert("kind".into(), Value::String(kind_name(kind).into()));
        self.link.notify(m, "reset");
        self.fallback.on_reset(kind);
    }

    fn on_cxl_reset(&mut self, mem_clr: bool) -> CxlResetDecision {
        let mut q = Map::new();
        q.insert("mem_clr".into(), Value::Bool(mem_clr));
        let parse = |a: &Map<String, Value>| {
            let ns = ms_to_ns(get_u64(a, "ms")?);
            match field_str(a, "result")? {
                "complete" => Ok(CxlResetDecision::Complete(ns)),
                "error" => Ok(CxlResetDecision::Fail(ns)),
                other => Err(format!("\"result\" {other:?} is not complete or error")),
            }
        };
        match self.consult("cxl_reset", q, parse) {
            Some(d) => d,
            None => self.fallback.on_cxl_reset(mem_clr),
        }
    }

    fn media_ready(&mut self, kind: ResetKind) -> MediaReadiness {
        let mut q = Map::new();
        q.insert("kind".into(), Value::String(kind_name(kind).into()));
        let parse = |a: &Map<String, Value>| match field_str(a, "media")? {
            "ready" => Ok(MediaReadiness::ReadyAfter(ms_to_ns(
                opt_u64(a, "after_ms")?.unwrap_or(0),
            ))),
            "failed" => Ok(MediaReadiness::Failed),
            other => Err(format!("\"media\" {other:?} is not ready or failed")),
        };
        match self.consult("media_ready", q, parse) {
            Some(m) => m,
            None => self.fallback.media_ready(kind),
        }
    }

    fn vendor_command(
        &mut self,
        opcode: u16,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode> {
        let mut q = Map::new();
        q.insert("opcode".into(), Value::from(opcode));
        q.insert("input".into(), Value::String(hex_string(input)));
        let parse = |a: &Map<String, Value>| -> Result<Result<Vec<u8>, ReturnCode>, String> {
            let rc = match a.get("rc") {
                Some(Value::String(s)) if s == "success" => None,
                Some(Value::String(s)) => Some(
                    ReturnCode::from_name(s)
                        .ok_or_else(|| format!("\"rc\" {s:?} is not a return code"))?,
                ),
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(0) => None,
                    Some(c) => Some(
                        u16::try_from(c)
                            .ok()
                            .and_then(ReturnCode::from_code)
                            .ok_or_else(|| format!("\"rc\" {c} is not a failing return code"))?,
                    ),
                    None => return Err("\"rc\" must be a non-negative integer".into()),
                },
                _ => return Err("\"rc\" must be a return code name or number".into()),
            };
            match rc {
                Some(rc) => Ok(Err(rc)),
                None => match a.get("output") {
                    None => Ok(Ok(Vec::new())),
                    Some(Value::String(s)) => hex_bytes(s).map(Ok),
                    Some(_) => Err("\"output\" must be a hex string".into()),
                },
            }
        };
        match self.consult("vendor_command", q, parse) {
            Some(Ok(out)) => {
                output.extend_from_slice(&out);
                Ok(())
            }
            Some(Err(rc)) => Err(rc),
            None => self.fallback.vendor_command(opcode, input, output),
        }
    }

    fn identify(&mut self, fields: &mut Identify) {
        self.fallback.identify(fields);
    }

    fn health_info(&mut self, health: &mut HealthInfo) {
        self.fallback.health_info(health);
    }

    fn fw_info(&mut self, info: &mut FwInfo) {
        self.fallback.fw_info(info);
    }

    fn transfer_fw(&mut self, part: &FwPart<'_>) -> Result<(), FwError> {
        let mut q = Map::new();
        q.insert("action".into(), Value::String(part.action.name().into()));
        q.insert("slot".into(), Value::from(part.slot));
        q.insert("offset".into(), Value::from(part.offset));
        q.insert("data".into(), Value::String(hex_string(part.data)));
        let slot = part.slot;
        match self.consult("transfer_fw", q, |a| parse_verdict(a, slot)) {
            Some(v) => v,
            None => self.fallback.transfer_fw(part),
        }
    }

    fn activate_fw(&mut self, slot: u8, online: bool) -> Result<(), FwError> {
        let mut q = Map::new();
        q.insert("slot".into(), Value::from(slot));
        q.insert("online".into(), Value::Bool(online));
        match self.consult("activate_fw", q, |a| parse_verdict(a, slot)) {
            Some(v) => v,
            None => self.fallback.activate_fw(slot, online),
        }
    }

    fn take_events(&mut self) -> Vec<(EventLog, EventRecord)> {
        let mut events = std::mem::take(&mut self.events);
        events.extend(self.fallback.take_events());
        events
    }

    fn set_param(&mut self, key: &str, value: &str) -> Result<(), ParamError> {
        if key == "deadline_ms" {
            let ms = param_u64(key, value)?;
            if !(1..=MAX_DEADLINE_MS).contains(&ms) {
                return Err(ParamError::invalid(
                    key,
                    value,
                    format!("1 to {MAX_DEADLINE_MS}"),
                ));
            }
            self.deadline = Duration::from_millis(ms);
            return Ok(());
        }
        self.fallback.set_param(key, value)
    }

    fn params(&self) -> Vec<(String, String)> {
        let mut p = vec![
            ("socket".to_string(), self.path.display().to_string()),
            (
                "deadline_ms".to_string(),
                self.deadline.as_millis().to_string(),
            ),
        ];
        p.extend(self.fallback.params());
        p
    }
}

/// `{"accept":true}`, or `{"reject":NAME}` with a Transfer/Activate FW failure.
fn parse_verdict(a: &Map<String, Value>, slot: u8) -> Result<Result<(), FwError>, String> {
    if let Some(name) = a.get("reject") {
        let name = name.as_str().ok_or("\"reject\" must be a string")?;
        return fw_error_from(name, slot)
            .map(Err)
            .ok_or_else(|| format!("\"reject\" {name:?} is not a firmware update error"));
    }
    match a.get("accept") {
        Some(Value::Bool(true)) => Ok(Ok(())),
        _ => Err("expected {\"accept\":true} or {\"reject\":NAME}".into()),
    }
}

/// The `hello` notification's fields: the protocol version, the deadline and the
/// device's shape.
pub fn hello(config: &crate::Config, deadline_ms: u64) -> Map<String, Value> {
    let v = json!({
        "notify": "hello",
        "protocol": PROTOCOL_VERSION,
        "backend": concat!("cxl-accel-backend ", env!("CARGO_PKG_VERSION")),
        "deadline_ms": deadline_ms,
        "memory_size": config.memory_size,
        "decoders": config.decoders,
        "serial": format!("{:#x}", config.serial),
        "fallback": config.firmware,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw_error_name(e: FwError) -> &'static str {
        match e {
            FwError::BadAction(_) | FwError::BadPart => "invalid_input",
            FwError::InvalidSlot(_) => "invalid_slot",
            FwError::InProgress => "in_progress",
            FwError::OutOfOrder => "out_of_order",
            FwError::Verification => "verification",
            FwError::ActivationRolledBack => "activation_rolled_back",
            FwError::ActivationNeedsColdReset => "activation_needs_cold_reset",
        }
    }

    #[test]
    fn firmware_update_errors_round_trip_by_name() {
        for e in [
            FwError::BadPart,
            FwError::InvalidSlot(3),
            FwError::InProgress,
            FwError::OutOfOrder,
            FwError::Verification,
            FwError::ActivationRolledBack,
            FwError::ActivationNeedsColdReset,
        ] {
            let back = fw_error_from(fw_error_name(e), 3).unwrap();
            assert_eq!(back.rc(), e.rc(), "{e:?}");
        }
        assert_eq!(fw_error_from("nonsense", 1), None);
    }

    #[test]
    fn answers_are_checked_field_by_field() {
        let obj = |s: &str| -> Map<String, Value> { serde_json::from_str(s).unwrap() };
        let asked = Instant::now();
        assert_eq!(
            SocketFirmware::parse_commit(&obj(r#"{"decision":"accept"}"#), asked),
            Ok(CommitDecision::Accept)
        );
        assert!(matches!(
            SocketFirmware::parse_commit(&obj(r#"{"decision":"delay","ms":1000}"#), asked),
            Ok(CommitDecision::Delay(ns)) if ns > 900_000_000 && ns <= 1_000_000_000
        ));
        for bad in [
            r#"{"decision":"maybe"}"#,
            r#"{"decision":1}"#,
            r#"{"decision":"delay"}"#,
            r#"{"decision":"delay","ms":-1}"#,
            r#"{}"#,
        ] {
            assert!(
                SocketFirmware::parse_commit(&obj(bad), asked).is_err(),
                "{bad}"
            );
        }
        assert_eq!(parse_verdict(&obj(r#"{"accept":true}"#), 2), Ok(Ok(())));
        assert_eq!(
            parse_verdict(&obj(r#"{"reject":"invalid_slot"}"#), 2),
            Ok(Err(FwError::InvalidSlot(2)))
        );
        for bad in [
            r#"{"accept":false}"#,
            r#"{"reject":7}"#,
            r#"{"reject":"meh"}"#,
            "{}",
        ] {
            assert!(parse_verdict(&obj(bad), 2).is_err(), "{bad}");
        }
    }
}
