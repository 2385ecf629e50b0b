//! The control socket: JSON lines over a UNIX socket, served by an `event-manager`
//! loop in its own thread.
//!
//! One request per line, one reply per line:
//!
//! ```text
//! {"cmd":"status"}
//! {"cmd":"inject-ras","uncorrectable":true,"bit":3}
//! {"cmd":"inject-event","log":"warning","flags":0,"uuid":"...","data":"00ff.."}
//! {"cmd":"inject-poison","dpa":4096,"len":64}
//! {"cmd":"firmware","key":"delay_ms","value":"5"}     (without "key": list parameters)
//! ```
//!
//! Replies are `{"ok":true,...}` or `{"ok":false,"error":"..."}`. A bad request gets
//! an error reply; the connection and the server carry on.
//!
//! Bounds: a request line is at most [`MAX_LINE`] bytes (a longer one gets an error
//! reply, then the connection closes), a reply at most [`MAX_REPLY`] (a longer one is
//! replaced by an error reply), and a connection's unread replies at most
//! [`MAX_PENDING_REPLIES`]: past it, the daemon reads no more of that connection's
//! requests until the client reads its replies.
//!
//! The socket is private (0600) from the moment it exists, and at shutdown it is
//! removed only if the path still names the socket this process created.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use log::{debug, info, warn};
use serde_json::{json, Map, Value};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{lock, Shared};
use crate::jsonargs::{self, get_u64, opt_bool};
use crate::seccomp::{self, Role};
use crate::vfio_user::server::ServerStats;
use crate::vfio_user::sys::{self, FileId};

/// Longest accepted request line.
pub const MAX_LINE: usize = 64 << 10;
/// Longest reply line.
pub const MAX_REPLY: usize = 1 << 20;
/// Most reply bytes queued on one connection before the daemon stops reading its
/// requests.
pub const MAX_PENDING_REPLIES: usize = 1 << 20;
/// Most simultaneous control connections.
pub const MAX_CONNECTIONS: usize = 16;

/// Errors of the control socket.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("{what} {path}: a file that is not a socket is in the way")]
    NotASocket { what: &'static str, path: PathBuf },
    #[error("{what} {path} is in use by a running process")]
    InUse { what: &'static str, path: PathBuf },
    #[error("{what} {path}: {source}")]
    Bind {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("control loop: {0}")]
    EventManager(String),
    #[error("cannot start the control thread: {0}")]
    Thread(#[source] io::Error),
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control request failed: {0}")]
    Io(#[from] io::Error),
    #[error("arguments must be a JSON object: {0}")]
    BadArgs(String),
    #[error("the backend sent an invalid reply: {0}")]
    BadReply(String),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// Bind a UNIX socket at `path`, mode 0600 from its creation on, and return it with
/// the identity of the socket file. A stale socket (nobody listening) is replaced; a
/// live one, or any other kind of file, is an error.
pub fn bind_socket(path: &Path) -> Result<(UnixListener, FileId), ControlError> {
    bind_named("control socket", path)
}

/// [`bind_socket`] for the socket named `what` in errors.
pub fn bind_named(what: &'static str, path: &Path) -> Result<(UnixListener, FileId), ControlError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket {
                what,
                path: path.into(),
            });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                what,
                path: path.into(),
            });
        }
        std::fs::remove_file(path).map_err(|source| ControlError::Bind {
            what,
            path: path.into(),
            source,
        })?;
    }
    sys::bind_unix(path).map_err(|source| ControlError::Bind {
        what,
        path: path.into(),
        source,
    })
}

/// Executes requests against the shared device state.
pub struct Handler {
    shared: Arc<Mutex<Shared>>,
    config: Value,
    server: Option<Arc<ServerStats>>,
    fwsocket: Option<Arc<crate::fwsocket::LinkStats>>,
}

impl Handler {
    /// `config` is reported as is by `status`, with the vfio-user server's message
    /// counters when `server` is given.
    pub fn new(
        shared: Arc<Mutex<Shared>>,
        config: Value,
        server: Option<Arc<ServerStats>>,
    ) -> Self {
        Self {
            shared,
            config,
            server,
            fwsocket: None,
        }
    }

    /// Report the firmware process's link in `status` (`firmware_socket`).
    pub fn set_firmware_socket(&mut self, stats: Arc<crate::fwsocket::LinkStats>) {
        self.fwsocket = Some(stats);
    }

    /// Handle one request line; always returns a reply object.
    pub fn handle_line(&self, line: &str) -> Value {
        let req: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return error(format!("invalid JSON: {e}")),
        };
        let Some(obj) = req.as_object() else {
            return error("a request must be a JSON object");
        };
        let Some(cmd) = obj.get("cmd").and_then(Value::as_str) else {
            return error("missing \"cmd\"");
        };
        match self.handle(cmd, obj) {
            Ok(mut reply) => {
                reply.insert("ok".into(), Value::Bool(true));
                Value::Object(reply)
            }
            Err(e) => error(e),
        }
    }

    fn handle(&self, cmd: &str, req: &Map<String, Value>) -> Result<Map<String, Value>, String> {
        let mut reply = Map::new();
        match cmd {
            "status" => {
                let s = lock(&self.shared);
                let (maps, mapped) = s.guest.stats();
                reply.insert("config".into(), self.config.clone());
                reply.insert("device".into(), to_value(s.device.status())?);
                reply.insert("connection".into(), to_value(&s.connection)?);
                reply.insert("counters".into(), to_value(&s.counters)?);
                reply.insert(
                    "dma".into(),
                    json!({"mappings": maps, "mapped_bytes": mapped}),
                );
                drop(s);
                if let Some(server) = &self.server {
                    reply.insert("vfio_user".into(), to_value(server.snapshot())?);
                }
                if let Some(fw) = &self.fwsocket {
                    reply.insert("firmware_socket".into(), to_value(fw.snapshot())?);
                }
            }
            "inject-ras" => {
                let uncorrectable = opt_bool(req, "uncorrectable")?.unwrap_or(true);
                let bit = get_u64(req, "bit")?;
                let bit = u8::try_from(bit)
                    .ok()
                    .filter(|b| *b < 32)
                    .ok_or("\"bit\" must be 0..31")?;
                // Also report it to the host, as the host's AER driver reports an
                // uncorrectable error of a vfio-pci device: QEMU then stops the VM
                // (see `device::vfio_irqs`).
                let host = opt_bool(req, "host")?.unwrap_or(false);
                if host && !uncorrectable {
                    return Err("\"host\" reports uncorrectable errors only".into());
                }
                let mut s = lock(&self.shared);
                let r = s.device.try_inject_ras(uncorrectable, bit, &[0; 16]);
                s.deliver_interrupts();
                r.map_err(|e| e.to_string())?;
                if host {
                    let signalled = s.signal_host_error();
                    reply.insert("host_signalled".into(), Value::Bool(signalled));
                }
            }
            "inject-event" => {
                let (log, record) = jsonargs::event_record(req)?;
                let mut s = lock(&self.shared);
                s.device.inject_event(log, record);
                s.deliver_interrupts();
            }
            "inject-poison" => {
                let dpa = get_u64(req, "dpa")?;
                let len = match req.get("len") {
                    Some(_) => get_u64(req, "len")?,
                    None => 64,
                };
                let mut s = lock(&self.shared);
                s.device
                    .inject_poison(dpa, len)
                    .map_err(|rc| format!("device refused: mailbox return code {rc:#x}"))?;
                s.deliver_interrupts();
            }
            "firmware" => {
                let mut s = lock(&self.shared);
                let fw = s.device.firmware_mut();
                // With a key: set it. Without: report the parameters.
                if let Some(key) = req.get("key") {
                    let key = key.as_str().ok_or("\"key\" must be a string")?;
                    let value = match req.get("value") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        Some(_) => return Err("\"value\" must be a string or a number".into()),
                        None => return Err("missing \"value\"".into()),
                    };
                    fw.set_param(key, &value).map_err(|e| e.to_string())?;
                    info!("firmware {}: {key} = {value}", fw.name());
                }
                reply.insert("firmware".into(), Value::String(fw.name().to_string()));
                let params: Map<String, Value> = fw
                    .params()
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                reply.insert("params".into(), Value::Object(params));
            }
            // Debug builds only (the integration tests): make a system call that no
            // seccomp filter allows, opening a network socket, to show that
            // `--seccomp on` stops it. Without the filter, it succeeds and is closed.
            #[cfg(debug_assertions)]
            "debug-forbidden-syscall" => {
                // SAFETY: socket(2) with constant arguments; a valid fd is closed at once.
                let fd = unsafe {
                    libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
                };
                if fd < 0 {
                    return Err(format!("socket: {}", io::Error::last_os_error()));
                }
                // SAFETY: `fd` is ours and open.
                unsafe { libc::close(fd) };
                reply.insert("socket".into(), Value::Bool(true));
            }
            other => {
                return Err(format!(
                    "unknown command {other:?}; commands: status, inject-ras, inject-event, \
                     inject-poison, firmware"
                ))
            }
        }
        Ok(reply)
    }
}

fn error(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}

fn to_value(v: impl serde::Serialize) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

/// State the subscribers share with the loop that owns them.
#[derive(Default)]
struct LoopState {
    accepted: RefCell<Vec<UnixStream>>,
    stopping: Cell<bool>,
}

/// Watches the listening socket and the stop eventfd.
struct ListenerSubscriber {
    listener: UnixListener,
    stop: EventFd,
    state: Rc<LoopState>,
}

impl MutEventSubscriber for ListenerSubscriber {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.stop.as_raw_fd() {
            self.state.stopping.set(true);
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.state.accepted.borrow_mut().push(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!("control socket: accept failed: {e}");
                    break;
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.listener.as_raw_fd(), self.stop.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                warn!("control socket: cannot watch fd {fd}: {e:?}");
            }
        }
    }
}

/// One control connection: reads request lines, writes replies.
struct ConnectionSubscriber {
    stream: UnixStream,
    handler: Arc<Handler>,
    /// Bytes read and not answered yet: complete lines waiting for room in `output`,
    /// and the start of the next line.
    input: Vec<u8>,
    output: Vec<u8>,
    closed: Rc<Cell<bool>>,
    /// The events the loop watches for this connection.
    interest: EventSet,
    /// No more requests will be read: the client closed its side, or sent a line
    /// too long. The connection closes once the replies are out.
    eof: bool,
}

impl ConnectionSubscriber {
    fn close(&mut self, ops: &mut EventOps) {
        let _ = ops.remove(Events::empty(&self.stream));
        self.closed.set(true);
    }

    /// Whether to read more requests: not past the end, and room for replies.
    fn wants_input(&self) -> bool {
        !self.eof && self.output.len() < MAX_PENDING_REPLIES
    }

    /// Answer the complete request lines in `input` while replies have room.
    fn answer_pending(&mut self) {
        while self.output.len() < MAX_PENDING_REPLIES {
            let Some(pos) = self.input.iter().position(|b| *b == b'\n') else {
                break;
            };
            let line: Vec<u8> = self.input.drain(..=pos).collect();
            self.answer(line.get(..pos).unwrap_or_default());
        }
    }

    /// Read what the socket holds, while replies have room, answering each line.
    fn read_requests(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        while self.wants_input() {
            match self.stream.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self
                    .input
                    .extend_from_slice(buf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.answer_pending();
            if !self.input.contains(&b'\n') && self.input.len() > MAX_LINE {
                self.input.clear();
                self.push_reply(&error(format!("request longer than {MAX_LINE} bytes")));
                self.eof = true;
            }
        }
        Ok(())
    }

    fn answer(&mut self, line: &[u8]) {
        let reply = match std::str::from_utf8(line) {
            Ok(text) if text.trim().is_empty() => return,
            Ok(text) => self.handler.handle_line(text),
            Err(_) => error("request is not UTF-8"),
        };
        self.push_reply(&reply);
    }

    fn push_reply(&mut self, reply: &Value) {
        let mut text = reply.to_string();
        if text.len() > MAX_REPLY {
            warn!(
                "control socket: a reply of {} bytes is over the limit",
                text.len()
            );
            text = error(format!(
                "the reply ({} bytes) is longer than {MAX_REPLY} bytes",
                text.len()
            ))
            .to_string();
        }
        self.output.extend_from_slice(text.as_bytes());
        self.output.push(b'\n');
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n.min(self.output.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl MutEventSubscriber for ConnectionSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        if set.contains(EventSet::ERROR) {
            self.close(ops);
            return;
        }
        let progress = self
            .read_requests()
            .and_then(|()| self.flush())
            .map(|()| self.answer_pending())
            .and_then(|()| self.flush());
        if let Err(e) = progress {
            debug!("control connection: {e}");
            self.close(ops);
            return;
        }
        let done = self.eof && self.output.is_empty() && !self.input.contains(&b'\n');
        if done || set.contains(EventSet::HANG_UP) {
            self.close(ops);
            return;
        }
        let mut interest = EventSet::empty();
        if self.wants_input() {
            interest |= EventSet::IN;
        }
        if !self.output.is_empty() {
            interest |= EventSet::OUT;
        }
        if interest != self.interest && ops.modify(Events::new(&self.stream, interest)).is_ok() {
            self.interest = interest;
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.stream, self.interest)) {
            warn!("control connection: cannot watch it: {e:?}");
            self.closed.set(true);
        }
    }
}

/// The running control server.
pub struct ControlServer {
    path: PathBuf,
    /// Identity of the socket file this process created.
    file_id: FileId,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Bind `path` and serve it in a new thread until `stop` fires. With `confine`,
    /// the thread installs that seccomp filter once its event loop is built, and
    /// this returns only when it has.
    pub fn spawn(
        path: &Path,
        handler: Handler,
        stop: &EventFd,
        confine: Option<Role>,
    ) -> Result<Self, ControlError> {
        let (listener, file_id) = bind_socket(path)?;
        let stop = stop.try_clone().map_err(ControlError::Io)?;
        let handler = Arc::new(handler);
        let thread_path = path.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                if let Err(e) = run_loop(listener, stop, handler, confine, ready_tx) {
                    warn!("control socket {} stopped: {e}", thread_path.display());
                }
            })
            .map_err(ControlError::Thread)?;
        let server = Self {
            path: path.to_path_buf(),
            file_id,
            thread: Some(thread),
        };
        // On error, dropping `server` joins the thread (which has returned) and
        // removes the socket.
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ControlError::EventManager(
                    "the control thread ended before it started".into(),
                ))
            }
        }
        info!("control socket at {}", path.display());
        Ok(server)
    }

    /// Wait for the thread (after the stop eventfd fired) and remove the socket.
    pub fn join(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            sys::remove_if_ours(&self.path, self.file_id);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Reports the control thread's setup (event loop and seccomp filter) to `spawn`.
type Ready = std::sync::mpsc::Sender<Result<(), ControlError>>;

fn run_loop(
    listener: UnixListener,
    stop: EventFd,
    handler: Arc<Handler>,
    confine: Option<Role>,
    ready: Ready,
) -> Result<(), ControlError> {
    let em_err = |e: event_manager::Error| ControlError::EventManager(format!("{e:?}"));
    let setup = || -> Result<_, ControlError> {
        let mut em: EventManager<Box<dyn MutEventSubscriber>> =
            EventManager::new().map_err(em_err)?;
        let state = Rc::new(LoopState::default());
        em.add_subscriber(Box::new(ListenerSubscriber {
            listener,
            stop,
            state: state.clone(),
        }));
        if let Some(role) = confine {
            seccomp::install(role)?;
        }
        Ok((em, state))
    };
    // `spawn` waits for this message, so the send cannot fail; if it did, the
    // thread would simply serve on.
    let (mut em, state) = match setup() {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            v
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let mut connections = Vec::new();
    while !state.stopping.get() {
        em.run().map_err(em_err)?;
        for stream in state.accepted.borrow_mut().drain(..) {
            if connections.len() >= MAX_CONNECTIONS {
                warn!("control socket: too many connections, refusing one");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let closed = Rc::new(Cell::new(false));
            let id = em.add_subscriber(Box::new(ConnectionSubscriber {
                stream,
                handler: handler.clone(),
                input: Vec::new(),
                output: Vec::new(),
                closed: closed.clone(),
                interest: EventSet::IN,
                eof: false,
            }));
            connections.push((id, closed));
        }
        connections.retain(|(id, closed)| {
            if closed.get() {
                let _ = em.remove_subscriber(*id);
                false
            } else {
                true
            }
        });
    }
    Ok(())
}

/// The `ctl` client: send `{"cmd":cmd, ...args}` and return the reply.
pub fn request(path: &Path, cmd: &str, args: Option<&str>) -> Result<Value, ControlError> {
    let mut req = match args {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(ControlError::BadArgs("not an object".into())),
            Err(e) => return Err(ControlError::BadArgs(e.to_string())),
        },
    };
    req.insert("cmd".into(), Value::String(cmd.into()));
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.into(),
        source,
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut line = Value::Object(req).to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = Vec::new();
    let mut reader = io::BufReader::new(stream).take((MAX_REPLY as u64).saturating_add(1));
    io::BufRead::read_until(&mut reader, b'\n', &mut reply)?;
    if reply.last() == Some(&b'\n') {
        reply.pop();
    } else if reply.len() > MAX_REPLY {
        return Err(ControlError::BadReply(format!(
            "the reply is longer than {MAX_REPLY} bytes"
        )));
    }
    serde_json::from_slice(&reply).map_err(|e| ControlError::BadReply(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn bind_refuses_regular_file_and_replaces_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind_socket(&file),
            Err(ControlError::NotASocket { .. })
        ));
        let sock = dir.path().join("sock");
        let live = bind_socket(&sock).unwrap();
        assert_eq!(
            std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            bind_socket(&sock),
            Err(ControlError::InUse { .. })
        ));
        drop(live);
        bind_socket(&sock).unwrap();
    }
}
