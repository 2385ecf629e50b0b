//! Fuzz target: arbitrary byte streams into the vfio-user server, through the
//! real framing and dispatch path, against the real device.
//!
//! Each input is one client connection: a socketpair whose server end goes to
//! `Server::serve` (the daemon's loop: framing, `Request::decode`, dispatch,
//! replies) with the daemon's `VfioDevice` adapter over an `AccelDevice` on a
//! memfd, exactly as `cxl-accel-backend` wires them. A helper thread plays the
//! client: it writes the input (byte 0 picks the firmware and device shape, the
//! rest is the stream) and reads every reply. The stream is sent message by message, as the
//! header sizes delimit it; a message whose `error` field (unused in requests)
//! has a hint gets fds attached with SCM_RIGHTS, up to 31 of them (more than the
//! server keeps): the harness's guest-RAM memfd (so DMA_MAP can map real guest
//! memory and the DMA engine can reach it), eventfds (SET_IRQS), or hostile fds of
//! any kind for any message (`FdKind`: a full blocking pipe, a blocking eventfd
//! with a full counter, a pipe's read end, a regular file, a socket, /dev/null, a
//! stray memfd, a directory, a timerfd). A hint can also make the client, before
//! it sends the message, shrink the guest-RAM memfd (after DMA_MAP, as a hostile
//! peer would) or make the eventfds it sent blocking again. The client keeps its
//! own end of everything (pipe read ends, eventfd copies) until the connection
//! ends, so that a write the server should not make really would block: a hang
//! shows as a libFuzzer timeout, a SIGBUS as a crash.
//!
//! Checked, beyond not panicking:
//! - `serve` returns `Ok` (no I/O error of its own), and never stalls;
//! - the replies are exactly those the framing rules promise, in order: one per
//!   request without the no-reply flag (none for replies or half-sent messages),
//!   each with the request's id and command, the reply type, an errno when it
//!   fails, and the body size of its command when it succeeds;
//! - after the connection, the device's HDM invariants hold, its DMA mappings and
//!   eventfds are gone, and no fd leaked (every fd that came with a message was
//!   kept while needed and then closed).

#![no_main]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use accel_type2::{AccelConfig, AccelDevice, Clock, MemLsa};
use backend::device::{lock, Shared, VfioDevice, IRQ_ERR, IRQ_INTX, IRQ_MSIX};
use backend::memory::{DeviceMemoryFile, SharedDeviceMemory};
use backend::vfio_user::protocol::{
    Command, Header, FLAG_ERROR, FLAG_NO_REPLY, HEADER_SIZE, MAX_DRAIN_SIZE, MAX_MESSAGE_SIZE,
    TYPE_REPLY,
};
use backend::vfio_user::Server;
use cxl_accel_fuzz::vfio::{
    FdKind, HINT_FDS_MASK, HINT_GUEST_RAM, HINT_MAKE_BLOCKING, HINT_SHRINK, HINT_SHRINK_PAGES_SHIFT,
};
use cxl_accel_fuzz::{stats, FakeClock};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const MEM_SIZE: u64 = 256 << 20;
const GUEST_RAM: i64 = 64 << 10;

/// The listening server (bound once, its path removed at once: `serve` only needs
/// a connected stream) and the stop eventfd, never signalled.
fn server() -> &'static (Server, EventFd) {
    static S: OnceLock<(Server, EventFd)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cxl-accel-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("s");
        let mut server = Server::bind(&path).expect("bind");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        // Longer than the run's -timeout: a stall shows up as a timeout, not as
        // a quietly dropped client.
        server.set_stall_timeout(Duration::from_secs(60));
        (server, EventFd::new(EFD_NONBLOCK).expect("eventfd"))
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// What the server owes the client for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expect {
    id: u16,
    command: u16,
    /// Body size of a successful reply, where the command fixes it.
    ok_body: Option<usize>,
    /// Only an error reply is possible (framing or type errors).
    error_only: bool,
}

/// One chunk to send: bytes, and the hint saying which fds to attach to its first
/// byte and what the client does before sending it.
struct Chunk {
    bytes: Vec<u8>,
    hint: u32,
    /// Replies owed for the messages before this one. A hint that changes the
    /// client's fds (shrink, make blocking) waits for them, so that it lands
    /// between the same two messages on every run.
    replies_before: usize,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Split `stream` the way the server frames it, and list the replies it owes.
fn plan(stream: &[u8]) -> (Vec<Chunk>, Vec<Expect>) {
    let mut chunks = Vec::new();
    let mut expect = Vec::new();
    let mut pos = 0usize;
    let raw = |b: &[u8], replies_before| Chunk {
        bytes: b.to_vec(),
        hint: 0,
        replies_before,
    };
    while pos < stream.len() {
        let rest = &stream[pos..];
        let Some(h) = rest.get(..HEADER_SIZE) else {
            chunks.push(raw(rest, expect.len()));
            break;
        };
        let hdr = Header::decode(h.try_into().expect("16 bytes"));
        let reply = |ok_body, error_only| Expect {
            id: hdr.id,
            command: hdr.command,
            ok_body,
            error_only,
        };
        let size = hdr.size as usize;
        if hdr.size < HEADER_SIZE as u32 || hdr.size > MAX_DRAIN_SIZE {
            // Answered with an error, then the connection is dropped.
            if !hdr.no_reply() {
                expect.push(reply(None, true));
            }
            chunks.push(raw(rest, expect.len()));
            break;
        }
        let Some(msg) = rest.get(..size) else {
            // Cut short: the server waits for the rest, then sees the close.
            chunks.push(raw(rest, expect.len()));
            break;
        };
        let body = &msg[HEADER_SIZE..];
        chunks.push(Chunk {
            bytes: msg.to_vec(),
            hint: hdr.error,
            replies_before: expect.len(),
        });
        pos += size;
        if hdr.no_reply() {
            continue;
        }
        if hdr.size > MAX_MESSAGE_SIZE {
            expect.push(reply(None, true));
            continue;
        }
        match hdr.msg_type() {
            0 => {}
            1 => continue,
            _ => {
                expect.push(reply(None, true));
                continue;
            }
        }
        let ok_body = match Command::from_u16(hdr.command) {
            Some(Command::DmaMap | Command::DeviceSetIrqs | Command::DeviceReset) => Some(0),
            Some(Command::DmaUnmap) => Some(24),
            Some(Command::DeviceGetInfo | Command::DeviceGetIrqInfo) => Some(16),
            Some(Command::RegionWrite) => Some(16),
            Some(Command::RegionRead) => le32(body, 12).map(|count| 16 + count as usize),
            _ => None,
        };
        expect.push(reply(ok_body, Command::from_u16(hdr.command).is_none()));
    }
    (chunks, expect)
}

fn owned(fd: libc::c_int) -> Option<OwnedFd> {
    // SAFETY: a fresh fd (or -1, checked) returned by the kernel, owned by nobody
    // else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_blocking(fd: RawFd) {
    // SAFETY: fcntl on an fd this thread owns; no memory involved.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
}

/// The fds the client holds on to until the connection ends: the other ends of
/// what it sent, so that a write the server should never make would block.
#[derive(Default)]
struct Kept {
    /// Copies of the non-blocking eventfds sent (HINT_MAKE_BLOCKING works on them).
    eventfds: Vec<OwnedFd>,
    others: Vec<OwnedFd>,
}

/// One fd of `kind` to attach, or a dup of the guest RAM; what the client must
/// keep of it goes to `kept`.
fn new_fd(kind: FdKind, guest_ram: Option<RawFd>, kept: &mut Kept) -> Option<OwnedFd> {
    if let Some(ram) = guest_ram {
        // SAFETY: F_DUPFD_CLOEXEC returns a fresh fd or -1.
        return owned(unsafe { libc::fcntl(ram, libc::F_DUPFD_CLOEXEC, 0) });
    }
    // SAFETY (every call below): the syscalls take constant arguments or buffers
    // that live on this stack frame, and return fresh fds (or -1, checked).
    unsafe {
        match kind {
            FdKind::EventFd => {
                let e = owned(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
                kept.eventfds.push(e.try_clone().ok()?);
                Some(e)
            }
            FdKind::FullBlockingEventFd => {
                let e = owned(libc::eventfd(0, libc::EFD_CLOEXEC))?;
                let full = (u64::MAX - 1).to_ne_bytes();
                libc::write(e.as_raw_fd(), full.as_ptr().cast(), 8);
                kept.others.push(e.try_clone().ok()?);
                Some(e)
            }
            FdKind::FullPipe | FdKind::PipeReadEnd => {
                let mut p = [0; 2];
                if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) != 0 {
                    return None;
                }
                let (r, w) = (owned(p[0])?, owned(p[1])?);
                let chunk = [0u8; 4096];
                while libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) > 0 {}
                set_blocking(w.as_raw_fd());
                if kind == FdKind::FullPipe {
                    kept.others.push(r);
                    Some(w)
                } else {
                    kept.others.push(w);
                    Some(r)
                }
            }
            FdKind::RegularFile => {
                let f = std::fs::File::from(owned(libc::open(
                    c"/tmp".as_ptr(),
                    libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                    0o600,
                ))?);
                f.set_len(GUEST_RAM as u64).ok()?;
                Some(OwnedFd::from(f))
            }
            FdKind::Socket => {
                let mut p = [0; 2];
                if libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    p.as_mut_ptr(),
                ) != 0
                {
                    return None;
                }
                kept.others.push(owned(p[0])?);
                owned(p[1])
            }
            FdKind::DevNull => owned(libc::open(
                c"/dev/null".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC,
            )),
            FdKind::Memfd => {
                let m = owned(libc::memfd_create(
                    c"fuzz-stray".as_ptr(),
                    libc::MFD_CLOEXEC,
                ))?;
                libc::ftruncate(m.as_raw_fd(), GUEST_RAM);
                Some(m)
            }
            FdKind::Directory => owned(libc::open(
                c"/".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )),
            FdKind::TimerFd => owned(libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC,
            )),
        }
    }
}

/// What a hint asks the client to do before it sends the message.
fn act_before(hint: u32, guest_ram: &OwnedFd, kept: &Kept) {
    if hint & HINT_SHRINK != 0 {
        let pages = i64::from((hint >> HINT_SHRINK_PAGES_SHIFT) & 0xf);
        // SAFETY: ftruncate on the fd the client owns.
        unsafe { libc::ftruncate(guest_ram.as_raw_fd(), pages * 4096) };
        stats::count("guest RAM shrunk");
    }
    if hint & HINT_MAKE_BLOCKING != 0 {
        // Only eventfds whose counter is not full: a blocking write to a full one
        // can still race the server's check of the flag (vfio_user::irq says why).
        for e in &kept.eventfds {
            set_blocking(e.as_raw_fd());
        }
    }
}

/// The client: send `chunks` (with their fds), half-close, read replies to EOF.
/// Returns the replies as (header, body length).
fn client(sock: UnixStream, chunks: Vec<Chunk>, guest_ram: OwnedFd) -> Vec<(Header, usize)> {
    sock.set_nonblocking(true).expect("nonblocking");
    let fd = sock.as_raw_fd();
    let mut queue: VecDeque<Chunk> = chunks.into();
    let mut sent = 0usize; // bytes of the front chunk already sent
    let mut writing = true;
    let mut inbuf: Vec<u8> = Vec::new();
    let mut replies = Vec::new();
    let mut kept = Kept::default();
    // The fds of the front chunk, made on its first attempt, until they are sent.
    let mut pending: Option<Vec<OwnedFd>> = None;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        if writing && queue.is_empty() {
            let _ = sock.shutdown(std::net::Shutdown::Write);
            writing = false;
        }
        // A chunk whose hint changes the client's fds waits for the replies to
        // everything before it.
        let barrier = queue.front().is_some_and(|c| {
            sent == 0
                && pending.is_none()
                && c.hint & (HINT_SHRINK | HINT_MAKE_BLOCKING) != 0
                && replies.len() < c.replies_before
        });
        let out = writing && !barrier;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN | if out { libc::POLLOUT } else { 0 },
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 30_000) };
        assert!(r != 0, "client: no progress for 30 s");
        if r < 0 {
            continue; // EINTR
        }
        if out && pfd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
            let chunk = queue.front_mut().expect("not empty while writing");
            if sent == 0 && pending.is_none() {
                // The chunk's first attempt: act on its hint, make its fds.
                let hint = std::mem::take(&mut chunk.hint);
                act_before(hint, &guest_ram, &kept);
                let ram = (hint & HINT_GUEST_RAM != 0).then(|| guest_ram.as_raw_fd());
                let kind = FdKind::from_hint(hint);
                let mut fds = Vec::new();
                for _ in 0..hint & HINT_FDS_MASK {
                    fds.extend(new_fd(kind, ram, &mut kept));
                }
                if kind != FdKind::EventFd && !fds.is_empty() && ram.is_none() {
                    stats::count("hostile fds sent");
                }
                pending = Some(fds);
            }
            let raw: Vec<RawFd> = match (&pending, sent) {
                (Some(fds), 0) => fds.iter().map(|f| f.as_raw_fd()).collect(),
                _ => Vec::new(),
            };
            match sock.send_with_fds(&[&chunk.bytes[sent..]], &raw) {
                Ok(n) => {
                    sent += n;
                    if n > 0 {
                        // Passed with the first byte; our copies close here.
                        pending = None;
                    }
                    if sent >= chunk.bytes.len() {
                        queue.pop_front();
                        sent = 0;
                    }
                }
                Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => {}
                // The server dropped the connection: read what it said before.
                Err(_) => {
                    queue.clear();
                    pending = None;
                    writing = false;
                }
            }
        }
        if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match (&sock).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => inbuf.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("client read: {e}"),
            }
            // Take complete replies off the front.
            while let Some(h) = inbuf.get(..HEADER_SIZE) {
                let hdr = Header::decode(h.try_into().expect("16 bytes"));
                assert!(hdr.size as usize >= HEADER_SIZE, "reply size {}", hdr.size);
                if inbuf.len() < hdr.size as usize {
                    break;
                }
                replies.push((hdr, hdr.size as usize - HEADER_SIZE));
                inbuf.drain(..hdr.size as usize);
            }
        }
    }
    assert!(
        inbuf.is_empty(),
        "a reply was cut short: {} bytes left",
        inbuf.len()
    );
    replies
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };
    let (server, stop) = server();
    let fds_before = open_fds();
    {
        let firmware: Box<dyn accel_type2::Firmware> = match sel % 4 {
            1 => Box::new(accel_type2::SlowCommitFirmware::default()),
            2 => Box::new(accel_type2::BiosFirmware {
                base: Some(1 << 32),
                size: None,
            }),
            _ => Box::new(accel_type2::DefaultFirmware),
        };
        let cfg = AccelConfig {
            memory_size: MEM_SIZE,
            mailbox: sel & 0x10 == 0,
            decoders: [2, 1, 4, 2][usize::from(sel >> 5) % 4],
            lsa_size: 4096,
            ..AccelConfig::default()
        };
        // Each clock read moves time 1 ms: the server's ticks then finish delayed
        // commits and Sanitize within one connection.
        let clock: Arc<dyn Clock> = Arc::new(FakeClock::new(1_000_000));
        let devmem = DeviceMemoryFile::memfd(MEM_SIZE).expect("memfd");
        let device = AccelDevice::new(
            cfg.clone(),
            Box::new(SharedDeviceMemory(devmem.clone())),
            Box::new(MemLsa(vec![0; cfg.lsa_size])),
            firmware,
            clock.clone(),
        )
        .expect("valid config");
        let shared = Arc::new(Mutex::new(Shared::new(device)));
        // As the daemon does: the mailbox payload as a shared page (sparse area of
        // BAR0); bit 7 of the selector keeps it trapped instead.
        if sel & 0x80 == 0 {
            lock(&shared).share_mailbox_payload().expect("payload page");
        }
        let mut dev = VfioDevice::new(shared.clone(), devmem, clock);

        // SAFETY: memfd_create with a valid name; the fd is owned at once.
        let ram = unsafe { libc::memfd_create(c"fuzz-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(ram >= 0, "memfd_create");
        // SAFETY: a fresh fd nobody else owns.
        let ram = unsafe { OwnedFd::from_raw_fd(ram) };
        // SAFETY: ftruncate on the fd we own.
        assert_eq!(unsafe { libc::ftruncate(ram.as_raw_fd(), GUEST_RAM) }, 0);

        let (chunks, expect) = plan(stream);
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let helper = std::thread::spawn(move || client(theirs, chunks, ram));
        let outcome = server.serve(ours, &mut dev, stop);
        let replies = helper.join().expect("client thread");
        assert!(outcome.is_ok(), "serve failed: {outcome:?}");

        let got: Vec<(u16, u16)> = replies.iter().map(|(h, _)| (h.id, h.command)).collect();
        let want: Vec<(u16, u16)> = expect.iter().map(|e| (e.id, e.command)).collect();
        assert_eq!(
            got, want,
            "replies (id, command) differ from what the framing promises"
        );
        for ((h, body), e) in replies.iter().zip(&expect) {
            assert_eq!(h.flags & 0xf, TYPE_REPLY, "reply type");
            assert_eq!(h.flags & FLAG_NO_REPLY, 0);
            if h.flags & FLAG_ERROR != 0 {
                stats::count("error reply");
                assert!(h.error != 0, "error reply without errno");
                assert_eq!(*body, 0, "error reply with a body");
            } else {
                stats::count("ok reply");
                assert!(!e.error_only, "success for {e:?}");
                assert_eq!(h.error, 0);
                if let Some(n) = e.ok_body {
                    assert_eq!(*body, n, "body of reply to {e:?}");
                }
            }
        }

        let s = lock(&shared);
        if let Err(e) = s.device.hdm().check_invariants() {
            panic!("HDM invariants: {e}");
        }
        assert_eq!(s.guest.stats(), (0, 0), "DMA mappings outlive the client");
        assert_eq!(
            s.irqs.registered(IRQ_MSIX) + s.irqs.registered(IRQ_INTX) + s.irqs.registered(IRQ_ERR),
            0
        );
        let st = s.device.status();
        if st.dma_completions > 0 {
            stats::count("dma completed");
        }
        if s.counters.dma_maps > s.counters.errors {
            stats::count("dma map");
        }
        if st.decoders.iter().any(|d| d.committed) {
            stats::count("committed");
        }
    }
    assert_eq!(open_fds(), fds_before, "fd leak");
    stats::input_done();
});
