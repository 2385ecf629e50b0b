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
//! has a hint gets fds attached with SCM_RIGHTS: the harness's guest-RAM memfd
//! (so DMA_MAP can map real guest memory and the DMA engine can reach it) or
//! eventfds (SET_IRQS), up to 31 of them (more than the server keeps).
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

use accel_type2::{AccelConfig, AccelDevice, Clock, MemLsa, IRQ_INTX, IRQ_MSIX};
use backend::device::{lock, Shared, VfioDevice};
use backend::memory::{DeviceMemoryFile, SharedDeviceMemory};
use backend::vfio_user::protocol::{
    Command, Header, FLAG_ERROR, FLAG_NO_REPLY, HEADER_SIZE, MAX_DRAIN_SIZE, MAX_MESSAGE_SIZE,
    TYPE_REPLY,
};
use backend::vfio_user::Server;
use cxl_accel_fuzz::vfio::{HINT_FDS_MASK, HINT_GUEST_RAM};
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

/// One chunk to send: bytes and the fds to attach (hint) to its first byte.
struct Chunk {
    bytes: Vec<u8>,
    fds: u32,
    guest_ram: bool,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Split `stream` the way the server frames it, and list the replies it owes.
fn plan(stream: &[u8]) -> (Vec<Chunk>, Vec<Expect>) {
    let mut chunks = Vec::new();
    let mut expect = Vec::new();
    let mut pos = 0usize;
    let raw = |b: &[u8]| Chunk {
        bytes: b.to_vec(),
        fds: 0,
        guest_ram: false,
    };
    while pos < stream.len() {
        let rest = &stream[pos..];
        let Some(h) = rest.get(..HEADER_SIZE) else {
            chunks.push(raw(rest));
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
            chunks.push(raw(rest));
            break;
        }
        let Some(msg) = rest.get(..size) else {
            // Cut short: the server waits for the rest, then sees the close.
            chunks.push(raw(rest));
            break;
        };
        let body = &msg[HEADER_SIZE..];
        let hint = hdr.error;
        chunks.push(Chunk {
            bytes: msg.to_vec(),
            fds: hint & HINT_FDS_MASK,
            guest_ram: hint & HINT_GUEST_RAM != 0,
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

fn new_fd(guest_ram: Option<RawFd>) -> Option<OwnedFd> {
    // SAFETY: dup/eventfd return a fresh fd (or -1, checked) that nothing else owns.
    let fd = unsafe {
        match guest_ram {
            Some(ram) => libc::fcntl(ram, libc::F_DUPFD_CLOEXEC, 0),
            None => libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK),
        }
    };
    // SAFETY: see above.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
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
    let mut buf = vec![0u8; 256 << 10];
    loop {
        if writing && queue.is_empty() {
            let _ = sock.shutdown(std::net::Shutdown::Write);
            writing = false;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN | if writing { libc::POLLOUT } else { 0 },
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 30_000) };
        assert!(r != 0, "client: no progress for 30 s");
        if r < 0 {
            continue; // EINTR
        }
        if writing && pfd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
            let chunk = queue.front().expect("not empty while writing");
            let mut fds = Vec::new();
            if sent == 0 {
                for _ in 0..chunk.fds {
                    let ram = chunk.guest_ram.then(|| guest_ram.as_raw_fd());
                    fds.extend(new_fd(ram));
                }
            }
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            match sock.send_with_fds(&[&chunk.bytes[sent..]], &raw) {
                Ok(n) => {
                    sent += n;
                    if sent >= chunk.bytes.len() {
                        queue.pop_front();
                        sent = 0;
                    }
                }
                Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => {}
                // The server dropped the connection: read what it said before.
                Err(_) => {
                    queue.clear();
                    writing = false;
                }
            }
            // Our copies of the passed fds close here.
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
        assert_eq!(s.irqs.registered(IRQ_MSIX) + s.irqs.registered(IRQ_INTX), 0);
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
