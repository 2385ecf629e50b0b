//! The receive buffer of a connection: one recvmsg takes in whatever the peer has
//! sent, up to the buffer's room, so a small message costs one receive (not one for
//! its header and one for its body), and the bytes past a message wait for the next.
//!
//! Fds (SCM_RIGHTS) belong to messages, but a stream receive can join several
//! messages. On an AF_UNIX stream socket, Linux ends a receive right after the data
//! that was sent together with fds, and joins to it only data sent before, without
//! fds (net/unix/af_unix.c, `unix_stream_read_generic`). So the fds of a receive
//! belong to the message that holds its last byte, which is where this buffer files
//! them: by the stream offset of that byte.

use std::io;
use std::os::fd::OwnedFd;

/// Room of a new buffer: any message on the register path, and a few behind it.
pub const INITIAL_ROOM: usize = 64 << 10;

/// Fds kept waiting for their messages; more are closed as they arrive. A message
/// takes at most `MAX_MSG_FDS`, and those of at most two messages can wait at once
/// (the one whose bytes are still coming and the one after it).
pub const MAX_PENDING_FDS: usize = 4 * crate::protocol::MAX_MSG_FDS;

#[derive(Debug, Default)]
pub struct RecvBuf {
    buf: Vec<u8>,
    /// `buf[start..end]` are received and not consumed.
    start: usize,
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Received fds, with the stream offset of the last byte of their receive.
    fds: Vec<(u64, OwnedFd)>,
    /// Where one receive puts its fds (kept, so that it allocates once).
    incoming: Vec<OwnedFd>,
}

impl RecvBuf {
    pub fn new() -> Self {
        RecvBuf {
            buf: vec![0; INITIAL_ROOM],
            ..RecvBuf::default()
        }
    }

    /// The received bytes not consumed yet.
    pub fn data(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// One receive: `recv(room, fds)` fills the front of `room` and appends the fds
    /// that came with those bytes to `fds`, returning how many bytes it wrote (as
    /// recvmsg does). The buffer first makes room for `want` unconsumed bytes in
    /// all, moving them to its front or growing (the caller bounds `want`). Returns
    /// what `recv` returned; 0 means the end of the stream.
    pub fn receive(
        &mut self,
        want: usize,
        recv: impl FnOnce(&mut [u8], &mut Vec<OwnedFd>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.make_room(want);
        let room = self.buf.get_mut(self.end..).unwrap_or(&mut []);
        let room_len = room.len();
        let n = recv(room, &mut self.incoming)?;
        // recvmsg never returns more than the room it was given.
        self.end = self.end.saturating_add(n.min(room_len));
        if !self.incoming.is_empty() {
            let at = self.base.saturating_add(self.end as u64).saturating_sub(1);
            let mut closed = 0usize;
            for fd in self.incoming.drain(..) {
                if self.fds.len() < MAX_PENDING_FDS {
                    self.fds.push((at, fd));
                } else {
                    closed = closed.saturating_add(1);
                }
            }
            if closed > 0 {
                log::warn!(
                    "vfio-user: more than {MAX_PENDING_FDS} fds wait for their messages; closed {closed}"
                );
            }
        }
        Ok(n)
    }

    /// Room for `want` unconsumed bytes from `start`, and for at least one more
    /// than there are: the unconsumed bytes move to the front when the room behind
    /// them is short, and the buffer grows when even that is not enough.
    fn make_room(&mut self, want: usize) {
        let need = want.max(self.len().saturating_add(1));
        if self.buf.len().saturating_sub(self.start) >= need {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base = self.base.saturating_add(self.start as u64);
            self.end = self.len();
            self.start = 0;
        }
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
    }

    /// Move the fds that came with the first `n` unconsumed bytes (a message) to
    /// `fds`, keeping at most `max` there; the rest are closed. Returns how many
    /// were closed.
    pub fn take_fds(&mut self, n: usize, fds: &mut Vec<OwnedFd>, max: usize) -> usize {
        let end = self
            .base
            .saturating_add(self.start.saturating_add(n.min(self.len())) as u64);
        let mut closed = 0usize;
        while self.fds.first().is_some_and(|(at, _)| *at < end) {
            let (_, fd) = self.fds.remove(0);
            if fds.len() < max {
                fds.push(fd);
            } else {
                closed = closed.saturating_add(1);
            }
        }
        closed
    }

    /// Consume the first `n` unconsumed bytes; take their fds first
    /// ([`RecvBuf::take_fds`]), or they go to the bytes after them.
    pub fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n.min(self.len()));
        if self.start == self.end {
            self.base = self.base.saturating_add(self.start as u64);
            self.start = 0;
            self.end = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn null_fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    /// Take a message of `n` bytes, its fds to `fds` (at most `max`).
    fn take(b: &mut RecvBuf, n: usize, fds: &mut Vec<OwnedFd>, max: usize) -> usize {
        let closed = b.take_fds(n, fds, max);
        b.consume(n);
        closed
    }

    /// A receive of `bytes` with `nfds` fds.
    fn chunk(b: &mut RecvBuf, want: usize, bytes: &[u8], nfds: usize) -> usize {
        b.receive(want, |room, fds| {
            let n = bytes.len().min(room.len());
            room[..n].copy_from_slice(&bytes[..n]);
            fds.extend((0..nfds).map(|_| null_fd()));
            Ok(n)
        })
        .unwrap()
    }

    #[test]
    fn bytes_past_a_message_wait_for_the_next() {
        let mut b = RecvBuf::new();
        assert_eq!(chunk(&mut b, 16, b"aaaabbbbbbcc", 0), 12);
        assert_eq!(b.data(), b"aaaabbbbbbcc");
        let mut fds = Vec::new();
        assert_eq!(take(&mut b, 4, &mut fds, 16), 0);
        assert_eq!(b.data(), b"bbbbbbcc");
        take(&mut b, 6, &mut fds, 16);
        assert_eq!(b.data(), b"cc");
        chunk(&mut b, 4, b"cc", 0);
        assert_eq!(b.data(), b"cccc");
        take(&mut b, 4, &mut fds, 16);
        assert_eq!(b.len(), 0);
        assert!(fds.is_empty());
    }

    #[test]
    fn fds_go_to_the_message_holding_the_last_byte_of_their_receive() {
        let mut b = RecvBuf::new();
        // Message A (4 bytes, no fds) and message B (6 bytes) joined in one
        // receive that brought B's 2 fds.
        chunk(&mut b, 16, b"AAAABBBBBB", 2);
        let mut fds = Vec::new();
        take(&mut b, 4, &mut fds, 16);
        assert!(fds.is_empty(), "A has no fds");
        take(&mut b, 6, &mut fds, 16);
        assert_eq!(fds.len(), 2, "B has both");

        // C's fds arrive with its first part; its rest comes later, joined to D.
        let mut fds = Vec::new();
        chunk(&mut b, 16, b"CCC", 1);
        chunk(&mut b, 16, b"CCCDD", 0);
        take(&mut b, 6, &mut fds, 16);
        assert_eq!(fds.len(), 1);
        fds.clear();
        take(&mut b, 2, &mut fds, 16);
        assert!(fds.is_empty(), "D has none");
    }

    #[test]
    fn too_many_fds_are_closed() {
        let mut b = RecvBuf::new();
        chunk(&mut b, 16, b"AAAA", 3);
        let mut fds = Vec::new();
        // A message takes at most `max`; the rest are closed.
        assert_eq!(take(&mut b, 4, &mut fds, 2), 1);
        assert_eq!(fds.len(), 2);
        // At most MAX_PENDING_FDS wait; the others are closed on arrival.
        chunk(&mut b, 16, b"B", MAX_PENDING_FDS + 5);
        let mut fds = Vec::new();
        take(&mut b, 1, &mut fds, MAX_PENDING_FDS);
        assert_eq!(fds.len(), MAX_PENDING_FDS);
        assert!(fds.iter().all(|f| f.as_raw_fd() >= 0));
    }

    #[test]
    fn room_moves_to_the_front_then_grows() {
        let mut b = RecvBuf::new();
        let big = vec![7u8; INITIAL_ROOM - 10];
        chunk(&mut b, 16, &big, 0);
        let mut fds = Vec::new();
        take(&mut b, INITIAL_ROOM - 20, &mut fds, 0);
        // 10 bytes left at the back, and a 100-byte message to come: they move to
        // the front, with no growth.
        assert_eq!(chunk(&mut b, 100, &[1u8; 90], 0), 90);
        assert_eq!(b.len(), 100);
        assert_eq!(b.buf.len(), INITIAL_ROOM);
        assert_eq!(&b.data()[..10], &[7u8; 10]);
        // A message bigger than the buffer grows it.
        let want = INITIAL_ROOM + 50;
        while b.len() < want {
            let n = chunk(&mut b, want, &vec![2u8; want], 0);
            assert!(n > 0);
        }
        assert!(b.buf.len() >= want);
        assert_eq!(&b.data()[..10], &[7u8; 10]);
        // The fds' stream offsets survive the moves.
        let mut b2 = RecvBuf::new();
        chunk(&mut b2, 16, &big, 0);
        take(&mut b2, INITIAL_ROOM - 20, &mut fds, 0);
        chunk(&mut b2, 100, b"XY", 1);
        let mut got = Vec::new();
        take(&mut b2, 10, &mut got, 16);
        assert!(got.is_empty(), "the fd came with the bytes after these");
        take(&mut b2, 2, &mut got, 16);
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn end_of_stream_and_errors_change_nothing() {
        let mut b = RecvBuf::new();
        chunk(&mut b, 16, b"abc", 0);
        assert_eq!(b.receive(16, |_, _| Ok(0)).unwrap(), 0);
        assert_eq!(b.data(), b"abc");
        let e = b
            .receive(16, |_, _| Err(io::Error::from(io::ErrorKind::WouldBlock)))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(b.data(), b"abc");
    }
}
