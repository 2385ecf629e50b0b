//! The vfio-user server: a listening UNIX socket, and a loop that serves one
//! client at a time over it.
//!
//! Framing rules (README "Why our own vfio-user server"):
//! - lengths are read exactly, looping on partial reads; a connection that
//!   ends inside a header or a body is dropped, never parsed;
//! - a message bigger than `MAX_MESSAGE_SIZE` is drained (up to
//!   `MAX_DRAIN_SIZE`) and answered with EMSGSIZE, or ends the connection;
//! - a message whose size is smaller than its header ends the connection: the
//!   stream cannot be resynchronised;
//! - every other error is answered with a real errno after the whole message
//!   was read, so the stream never desyncs;
//! - a message with the no-reply flag is never answered, not even on error;
//! - at most `MAX_MSG_FDS` fds are kept per message; unused ones are closed;
//! - fds of the wrong kind for the message are refused (EINVAL) before the
//!   device sees them: SET_IRQS takes eventfds only (see [`super::irq`]).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
};
use vmm_sys_util::eventfd::EventFd;

use super::protocol::{
    self, Command, Header, RegionAccess, Request, SetIrqsRequest, HEADER_SIZE, MAX_DRAIN_SIZE,
    MAX_MESSAGE_SIZE, MAX_MSG_FDS, REGION_ACCESS_SIZE, TYPE_COMMAND, TYPE_REPLY, VERSION_MAJOR,
};
use super::sys::{self, FileId, Ready};
use super::{DmaMapping, Errno, IrqEventFd, VfioUserDevice};

/// Default for [`Server::set_stall_timeout`]: far above any pause of a live
/// QEMU (which writes each message whole), short enough that a wedged peer
/// does not keep the device from its next client for long.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeOutcome {
    /// The client closed the socket (or broke the framing and was dropped).
    Disconnected,
    /// The stop fd fired.
    Stopped,
}

/// Errors of the server itself (not of a peer's messages, which get replies).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}: exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("{path}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("accepting a connection: {0}")]
    Accept(#[source] io::Error),
    #[error("poll: {0}")]
    Poll(#[source] io::Error),
    #[error("connection I/O: {0}")]
    Io(#[source] io::Error),
}

/// Counters, shared with whoever reports status (the control socket).
#[derive(Debug, Default)]
pub struct ServerStats {
    connections: AtomicU64,
    /// Messages by command number; slot 0 counts unknown commands.
    messages: [AtomicU64; Command::MAX as usize + 1],
    error_replies: AtomicU64,
    /// Errors on messages that asked for no reply (logged, not answered).
    posted_errors: AtomicU64,
    /// Malformed framing: truncated header or body, bad size, unexpected type.
    protocol_errors: AtomicU64,
    /// Connections the server ended because the framing could not be trusted.
    dropped_connections: AtomicU64,
    posted_writes: AtomicU64,
    /// Messages refused for an fd of the wrong kind (SET_IRQS with a non-eventfd).
    refused_fds: AtomicU64,
}

/// A point-in-time copy of [`ServerStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub messages: u64,
    /// Non-zero message counts by command name.
    pub by_command: BTreeMap<&'static str, u64>,
    pub error_replies: u64,
    pub posted_errors: u64,
    pub protocol_errors: u64,
    pub dropped_connections: u64,
    pub posted_writes: u64,
    pub refused_fds: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ServerStats {
    fn count_message(&self, command: u16) {
        let slot = if Command::from_u16(command).is_some() {
            command as usize
        } else {
            0
        };
        if let Some(c) = self.messages.get(slot) {
            bump(c);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut by_command = BTreeMap::new();
        let mut messages = 0u64;
        for (cmd, c) in self.messages.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n != 0 {
                by_command.insert(Command::name(cmd as u16), n);
                messages = messages.saturating_add(n);
            }
        }
        StatsSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            messages,
            by_command,
            error_replies: self.error_replies.load(Ordering::Relaxed),
            posted_errors: self.posted_errors.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            dropped_connections: self.dropped_connections.load(Ordering::Relaxed),
            posted_writes: self.posted_writes.load(Ordering::Relaxed),
            refused_fds: self.refused_fds.load(Ordering::Relaxed),
        }
    }
}

/// The server: owns the listening socket, and removes it when dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created, so that Drop does not
    /// remove a file that someone else has put at the path since.
    file_id: FileId,
    stats: Arc<ServerStats>,
    stall_timeout: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("path", &self.path).finish()
    }
}

impl Server {
    /// Create the listening socket at `path`, mode 0600. An existing socket
    /// file at the path is replaced; any other kind of file is an error, and
    /// is left untouched.
    pub fn bind(path: &Path) -> Result<Server, ServerError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                log::info!("vfio-user: replacing stale socket {}", path.display());
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(ServerError::Path {
                            path: path.to_path_buf(),
                            source,
                        })
                    }
                }
            }
            Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ServerError::Path {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let (listener, file_id) = sys::bind_unix(path).map_err(|source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            file_id,
            stats: Arc::new(ServerStats::default()),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long a client may pause in the middle of a message, or leave a
    /// reply unread, before the server drops it (default
    /// [`DEFAULT_STALL_TIMEOUT`]). Between messages a client may idle forever.
    pub fn set_stall_timeout(&mut self, timeout: Duration) {
        self.stall_timeout = timeout;
    }

    /// A copy of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The live counters, for a thread that reports status while `serve` runs.
    pub fn stats_handle(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    /// Wait for a client; `Ok(None)` if `stop` became readable first. `stop`
    /// is not read, so one event stops every waiter.
    pub fn accept(&self, stop: &EventFd) -> Result<Option<UnixStream>, ServerError> {
        loop {
            match sys::poll(
                self.listener.as_raw_fd(),
                libc::POLLIN,
                stop.as_raw_fd(),
                None,
            )
            .map_err(ServerError::Poll)?
            {
                Ready::Stop => return Ok(None),
                Ready::Timeout => continue,
                Ready::Fd => {}
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    bump(&self.stats.connections);
                    log::info!("vfio-user: client connected on {}", self.path.display());
                    return Ok(Some(stream));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(ServerError::Accept(e)),
            }
        }
    }

    /// Serve one client until it disconnects or `stop` fires.
    ///
    /// Errors in the peer's messages are answered with an error reply (a real
    /// errno) and the connection carries on; framing that cannot be trusted
    /// ends the connection with `Ok(Disconnected)` after logging. `dev.tick()`
    /// is called before the first wait, after every message, and whenever its
    /// timeout passes. `dev.disconnected()` is called whenever this returns,
    /// so the device drops the client's DMA mappings and eventfds.
    pub fn serve(
        &self,
        stream: UnixStream,
        dev: &mut dyn VfioUserDevice,
        stop: &EventFd,
    ) -> Result<ServeOutcome, ServerError> {
        let mut conn = Connection {
            stream: &stream,
            stop: stop.as_raw_fd(),
            stall: self.stall_timeout,
            stats: &self.stats,
            body: Vec::new(),
            out: Vec::new(),
            fds: Vec::new(),
            negotiated: false,
            regions: Vec::new(),
        };
        let result = conn.run(dev);
        dev.disconnected();
        match &result {
            Ok(ServeOutcome::Disconnected) => log::info!("vfio-user: client disconnected"),
            Ok(ServeOutcome::Stopped) => log::info!("vfio-user: stopping; dropping the client"),
            Err(e) => log::error!("vfio-user: connection failed: {e}"),
        }
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        sys::remove_if_ours(&self.path, self.file_id);
    }
}

/// How a connection-level read or write stopped early.
enum Exit {
    /// The peer closed (or reset) the connection; `partial` when it was in
    /// the middle of a message.
    Closed {
        partial: bool,
    },
    Stopped,
    /// The peer left a message half-sent, or stopped reading replies, for
    /// longer than the stall timeout.
    Stalled,
    Io(io::Error),
}

type Flow<T> = Result<T, Exit>;

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

/// Access rights and size of a region, cached per connection for the
/// REGION_READ/WRITE fast path.
#[derive(Debug, Clone, Copy)]
struct RegionAccessInfo {
    size: u64,
    readable: bool,
    writable: bool,
}

/// Regions whose access info is cached; higher indices are looked up each time.
const REGION_CACHE_LEN: usize = 16;

struct Connection<'a> {
    stream: &'a UnixStream,
    stop: RawFd,
    stall: Duration,
    stats: &'a ServerStats,
    /// The current message's body (reused; at most MAX_MESSAGE_SIZE).
    body: Vec<u8>,
    /// The reply being built, header first (reused).
    out: Vec<u8>,
    /// Fds that came with the current message.
    fds: Vec<OwnedFd>,
    negotiated: bool,
    regions: Vec<Option<RegionAccessInfo>>,
}

impl Connection<'_> {
    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn run(&mut self, dev: &mut dyn VfioUserDevice) -> Result<ServeOutcome, ServerError> {
        let mut timeout = dev.tick();
        loop {
            match sys::poll(self.fd(), libc::POLLIN, self.stop, timeout)
                .map_err(ServerError::Poll)?
            {
                Ready::Stop => return Ok(ServeOutcome::Stopped),
                Ready::Timeout => {
                    timeout = dev.tick();
                    continue;
                }
                Ready::Fd => {}
            }
            let result = self.handle_message(dev);
            self.fds.clear();
            match result {
                Ok(true) => {}
                Ok(false) => {
                    bump(&self.stats.dropped_connections);
                    return Ok(ServeOutcome::Disconnected);
                }
                Err(Exit::Closed { partial }) => {
                    if partial {
                        bump(&self.stats.protocol_errors);
                        log::warn!("vfio-user: client closed the connection inside a message");
                    }
                    return Ok(ServeOutcome::Disconnected);
                }
                Err(Exit::Stopped) => return Ok(ServeOutcome::Stopped),
                Err(Exit::Stalled) => {
                    bump(&self.stats.protocol_errors);
                    bump(&self.stats.dropped_connections);
                    log::warn!(
                        "vfio-user: client stalled for {:?} (half-sent message or unread reply); dropping it",
                        self.stall
                    );
                    return Ok(ServeOutcome::Disconnected);
                }
                Err(Exit::Io(e)) => return Err(ServerError::Io(e)),
            }
            timeout = dev.tick();
        }
    }

    /// Reads exactly `buf.len()` bytes (collecting fds), waiting with poll
    /// when the socket has nothing yet. `started` says whether bytes of this
    /// message were read before; once a message has started, the peer may not
    /// pause for longer than `stall`.
    fn read_exact(
        stream: RawFd,
        stop: RawFd,
        stall: Duration,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        started: bool,
    ) -> Flow<()> {
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            match sys::recv_with_fds(stream, rest, fds, MAX_MSG_FDS) {
                Ok(0) => {
                    return Err(Exit::Closed {
                        partial: started || done > 0,
                    })
                }
                // n <= rest.len(): done stays within buf.len().
                Ok(n) => done = done.saturating_add(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let timeout = (started || done > 0).then_some(stall);
                    match sys::poll(stream, libc::POLLIN, stop, timeout).map_err(Exit::Io)? {
                        Ready::Stop => return Err(Exit::Stopped),
                        Ready::Timeout => return Err(Exit::Stalled),
                        Ready::Fd => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_disconnect(&e) => {
                    return Err(Exit::Closed {
                        partial: started || done > 0,
                    })
                }
                Err(e) => return Err(Exit::Io(e)),
            }
        }
        Ok(())
    }

    /// Reads and throws away `len` bytes, in fixed-size chunks.
    fn drain(&mut self, mut len: usize) -> Flow<()> {
        let mut scratch = [0u8; 4096];
        while len > 0 {
            let n = len.min(scratch.len());
            let chunk = scratch.get_mut(..n).unwrap_or(&mut []);
            Self::read_exact(self.fd(), self.stop, self.stall, chunk, &mut self.fds, true)?;
            self.fds.clear();
            len = len.saturating_sub(n);
        }
        Ok(())
    }

    /// Writes all of `buf`, passing `pass` with the first byte.
    fn write_all(&self, buf: &[u8], mut pass: Option<RawFd>) -> Flow<()> {
        let mut done = 0;
        while let Some(rest) = buf.get(done..).filter(|r| !r.is_empty()) {
            match sys::send_with_fd(self.fd(), rest, pass) {
                Ok(n) => {
                    done = done.saturating_add(n);
                    if n > 0 {
                        pass = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match sys::poll(self.fd(), libc::POLLOUT, self.stop, Some(self.stall))
                        .map_err(Exit::Io)?
                    {
                        Ready::Stop => return Err(Exit::Stopped),
                        Ready::Timeout => return Err(Exit::Stalled),
                        Ready::Fd => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_disconnect(&e) => return Err(Exit::Closed { partial: false }),
                Err(e) => return Err(Exit::Io(e)),
            }
        }
        Ok(())
    }

    /// Sends an error reply unless the message asked for none.
    fn reply_error(&self, hdr: &Header, errno: Errno) -> Flow<()> {
        if hdr.no_reply() {
            bump(&self.stats.posted_errors);
            return Ok(());
        }
        bump(&self.stats.error_replies);
        self.write_all(&hdr.error_reply(errno).encode(), None)
    }

    /// Reads one message and answers it. `Ok(false)` means the framing can no
    /// longer be trusted and the connection must end.
    fn handle_message(&mut self, dev: &mut dyn VfioUserDevice) -> Flow<bool> {
        let mut raw = [0u8; HEADER_SIZE];
        Self::read_exact(
            self.fd(),
            self.stop,
            self.stall,
            &mut raw,
            &mut self.fds,
            false,
        )?;
        let hdr = Header::decode(&raw);
        self.stats.count_message(hdr.command);

        let body_len = match hdr.body_len() {
            Ok(n) => n,
            Err(e) => {
                bump(&self.stats.protocol_errors);
                log::warn!("vfio-user: {e}; dropping the connection");
                self.reply_error(&hdr, libc::EINVAL)?;
                return Ok(false);
            }
        };
        if hdr.size > MAX_MESSAGE_SIZE {
            bump(&self.stats.protocol_errors);
            if hdr.size <= MAX_DRAIN_SIZE {
                log::warn!(
                    "vfio-user: {} message of {} bytes exceeds {MAX_MESSAGE_SIZE}; discarding it",
                    Command::name(hdr.command),
                    hdr.size
                );
                self.drain(body_len as usize)?;
                self.reply_error(&hdr, libc::EMSGSIZE)?;
                return Ok(true);
            }
            log::warn!(
                "vfio-user: message size {} exceeds {MAX_DRAIN_SIZE}; dropping the connection",
                hdr.size
            );
            self.reply_error(&hdr, libc::EMSGSIZE)?;
            return Ok(false);
        }

        // Bounded by MAX_MESSAGE_SIZE above.
        self.body.clear();
        self.body.resize(body_len as usize, 0);
        Self::read_exact(
            self.fd(),
            self.stop,
            self.stall,
            &mut self.body,
            &mut self.fds,
            true,
        )?;

        match hdr.msg_type() {
            TYPE_COMMAND => {}
            TYPE_REPLY => {
                // We never send requests, so no reply is expected.
                bump(&self.stats.protocol_errors);
                log::warn!("vfio-user: unexpected reply (id {}); ignored", hdr.id);
                return Ok(true);
            }
            other => {
                bump(&self.stats.protocol_errors);
                log::warn!("vfio-user: unknown message type {other}");
                self.reply_error(&hdr, libc::EINVAL)?;
                return Ok(true);
            }
        }

        self.out.clear();
        self.out.extend_from_slice(&[0u8; HEADER_SIZE]);
        match self.dispatch(&hdr, dev) {
            Ok(pass) => {
                if hdr.no_reply() {
                    return Ok(true);
                }
                let body = self.out.len().saturating_sub(HEADER_SIZE);
                let reply = hdr.reply(u32::try_from(body).unwrap_or(u32::MAX)).encode();
                if let Some(h) = self.out.get_mut(..HEADER_SIZE) {
                    h.copy_from_slice(&reply);
                }
                self.write_all(&self.out, pass)?;
            }
            Err(errno) => {
                log::debug!(
                    "vfio-user: {} (id {}) failed: errno {errno}",
                    Command::name(hdr.command),
                    hdr.id
                );
                if hdr.no_reply() {
                    log::warn!(
                        "vfio-user: posted {} failed: errno {errno}",
                        Command::name(hdr.command)
                    );
                }
                self.reply_error(&hdr, errno)?;
            }
        }
        Ok(true)
    }

    /// Runs one command. The reply body is appended to `self.out`; the fd to
    /// pass with it, if any, is returned.
    fn dispatch(
        &mut self,
        hdr: &Header,
        dev: &mut dyn VfioUserDevice,
    ) -> Result<Option<RawFd>, Errno> {
        let Some(cmd) = Command::from_u16(hdr.command) else {
            log::warn!("vfio-user: unknown command {}", hdr.command);
            return Err(libc::ENOSYS);
        };
        if !self.negotiated && cmd != Command::Version {
            log::warn!("vfio-user: {} before VERSION", Command::name(hdr.command));
            return Err(libc::EINVAL);
        }
        if cmd == Command::RegionWrite && hdr.no_reply() {
            bump(&self.stats.posted_writes);
        }
        let req = Request::decode(cmd, &self.body).map_err(|e| {
            log::warn!("vfio-user: {e}");
            e.errno()
        })?;
        match req {
            Request::Version(v) => {
                if self.negotiated {
                    log::warn!("vfio-user: second VERSION");
                    return Err(libc::EINVAL);
                }
                if v.major != VERSION_MAJOR {
                    log::warn!("vfio-user: client speaks version {}.{}", v.major, v.minor);
                    return Err(libc::ENOTSUP);
                }
                log::info!(
                    "vfio-user: client version {}.{}, {:?}",
                    v.major,
                    v.minor,
                    v.caps
                );
                self.negotiated = true;
                protocol::encode_version_reply(v.minor, dev.max_dma_maps(), &mut self.out);
                Ok(None)
            }
            Request::DmaMap(m) => {
                if self.fds.len() > 1 {
                    log::warn!("vfio-user: DMA_MAP with {} fds", self.fds.len());
                    return Err(libc::EINVAL);
                }
                dev.dma_map(DmaMapping {
                    iova: m.iova,
                    size: m.size,
                    offset: m.offset,
                    readable: m.readable(),
                    writable: m.writable(),
                    fd: self.fds.pop(),
                })?;
                Ok(None)
            }
            Request::DmaUnmap(u) => {
                if u.all() {
                    dev.dma_unmap_all()?;
                } else {
                    dev.dma_unmap(u.iova, u.size)?;
                }
                u.encode_reply(&mut self.out);
                Ok(None)
            }
            Request::DeviceGetInfo => {
                protocol::encode_device_info(
                    VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI,
                    dev.num_regions(),
                    dev.num_irqs(),
                    &mut self.out,
                );
                Ok(None)
            }
            Request::RegionInfo(req) => {
                if req.index >= dev.num_regions() {
                    return Err(libc::EINVAL);
                }
                let info = dev.region_info(req.index)?;
                let pass = if info.mmappable { info.fd } else { None };
                if info.mmappable && pass.is_none() {
                    log::warn!(
                        "vfio-user: region {} is mmappable but has no fd; not offering mmap",
                        req.index
                    );
                }
                protocol::encode_region_info(
                    req.index,
                    &info,
                    req.argsz,
                    pass.is_some(),
                    &mut self.out,
                )
                .map_err(|e| {
                    log::error!("vfio-user: region {}: {e}", req.index);
                    e.errno()
                })?;
                Ok(pass)
            }
            Request::IrqInfo(req) => {
                if req.index >= dev.num_irqs() {
                    return Err(libc::EINVAL);
                }
                let info = dev.irq_info(req.index)?;
                protocol::encode_irq_info(req.index, info.flags, info.count, &mut self.out);
                Ok(None)
            }
            Request::SetIrqs(req) => {
                self.set_irqs(req, dev)?;
                Ok(None)
            }
            Request::RegionRead(a) => {
                check_region(&mut self.regions, dev, &a, false)?;
                let start = self.out.len();
                a.encode(&mut self.out);
                let data_at = start.saturating_add(REGION_ACCESS_SIZE);
                // count <= MAX_DATA_XFER_SIZE, checked by the decoder.
                self.out.resize(data_at.saturating_add(a.count as usize), 0);
                let data = self.out.get_mut(data_at..).unwrap_or(&mut []);
                dev.region_read(a.region, a.offset, data)?;
                Ok(None)
            }
            Request::RegionWrite(a, data) => {
                check_region(&mut self.regions, dev, &a, true)?;
                dev.region_write(a.region, a.offset, data)?;
                a.encode(&mut self.out);
                Ok(None)
            }
            Request::DeviceReset => {
                dev.reset()?;
                self.regions.clear();
                Ok(None)
            }
            Request::Unsupported(cmd) => {
                log::warn!("vfio-user: unsupported command {cmd:?}");
                Err(libc::ENOTSUP)
            }
        }
    }

    fn set_irqs(&mut self, req: SetIrqsRequest, dev: &mut dyn VfioUserDevice) -> Result<(), Errno> {
        if req.index >= dev.num_irqs() {
            return Err(libc::EINVAL);
        }
        let info = dev.irq_info(req.index)?;
        // start + count cannot overflow: checked by the decoder.
        let end = req.start.saturating_add(req.count);
        if req.count > 0 && end > info.count {
            log::warn!(
                "vfio-user: SET_IRQS {}..{} beyond the {} vectors of index {}",
                req.start,
                end,
                info.count,
                req.index
            );
            return Err(libc::EINVAL);
        }
        let fds = std::mem::take(&mut self.fds);
        match req.data_type() {
            VFIO_IRQ_SET_DATA_EVENTFD => {
                // QEMU sends a run of valid fds, or a run of -1 (no fds at all).
                let list: Vec<Option<IrqEventFd>> = if fds.is_empty() {
                    (0..req.count).map(|_| None).collect()
                } else if fds.len() == req.count as usize {
                    let checked: Result<Vec<_>, Errno> = fds
                        .into_iter()
                        .map(|fd| IrqEventFd::new(fd).map(Some))
                        .collect();
                    checked.inspect_err(|_| {
                        bump(&self.stats.refused_fds);
                        log::warn!(
                            "vfio-user: SET_IRQS index {} with an fd that is not an eventfd \
                             (or cannot be made non-blocking); refused",
                            req.index
                        );
                    })?
                } else {
                    log::warn!(
                        "vfio-user: SET_IRQS with {} fds for {} vectors",
                        fds.len(),
                        req.count
                    );
                    return Err(libc::EINVAL);
                };
                dev.set_irqs(req.index, req.flags, req.start, req.count, list)
            }
            data => {
                if !fds.is_empty() {
                    log::warn!("vfio-user: SET_IRQS without DATA_EVENTFD carries fds");
                    return Err(libc::EINVAL);
                }
                if data == VFIO_IRQ_SET_DATA_BOOL {
                    dev.set_irqs_bool(req.index, req.flags, req.start, &req.bools)
                } else {
                    dev.set_irqs(req.index, req.flags, req.start, req.count, Vec::new())
                }
            }
        }
    }
}

/// Checks a REGION_READ/WRITE against the region's index, rights and size.
fn check_region(
    cache: &mut Vec<Option<RegionAccessInfo>>,
    dev: &mut dyn VfioUserDevice,
    a: &RegionAccess,
    write: bool,
) -> Result<(), Errno> {
    if a.region >= dev.num_regions() {
        log::warn!(
            "vfio-user: access to region {} of {}",
            a.region,
            dev.num_regions()
        );
        return Err(libc::EINVAL);
    }
    let slot = a.region as usize;
    let cached = cache.get(slot).copied().flatten();
    let info = match cached {
        Some(info) => info,
        None => {
            let ri = dev.region_info(a.region)?;
            let info = RegionAccessInfo {
                size: ri.size,
                readable: ri.readable,
                writable: ri.writable,
            };
            if slot < REGION_CACHE_LEN {
                if cache.len() <= slot {
                    cache.resize(slot.saturating_add(1), None);
                }
                if let Some(s) = cache.get_mut(slot) {
                    *s = Some(info);
                }
            }
            info
        }
    };
    if (write && !info.writable) || (!write && !info.readable) {
        log::warn!(
            "vfio-user: region {} is not {}",
            a.region,
            if write { "writable" } else { "readable" }
        );
        return Err(libc::EINVAL);
    }
    let end = a.offset.checked_add(u64::from(a.count));
    if end.is_none_or(|end| end > info.size) {
        log::warn!(
            "vfio-user: region {} access {:#x}+{:#x} beyond its size {:#x}",
            a.region,
            a.offset,
            a.count,
            info.size
        );
        return Err(libc::EINVAL);
    }
    Ok(())
}
