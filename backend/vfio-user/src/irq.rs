//! Interrupt eventfds a client registers with SET_IRQS (VFIO_IRQ_SET_DATA_EVENTFD),
//! and signalling them without ever blocking the daemon.
//!
//! The fd policy:
//! - only an eventfd is accepted (a pipe, socket, file, timerfd... is EINVAL), told
//!   apart by its /proc link ([`sys::is_eventfd`]);
//! - its open file description is made non-blocking (O_NONBLOCK) when it arrives.
//!   An eventfd write blocks only while the counter is full, which a peer can
//!   arrange; a non-blocking one fails with EAGAIN instead, and a full counter
//!   means the interrupt is pending already, so EAGAIN is success. O_NONBLOCK lives
//!   in the description, which the peer shares: QEMU creates its eventfds with
//!   EFD_NONBLOCK (util/event_notifier-posix.c), so for QEMU nothing changes; any
//!   other client sees its eventfd become non-blocking, which is how it must be
//!   read anyway (a reader may race the device);
//! - before each write the flag is checked again: a peer that cleared it loses the
//!   vector ([`Signal::Revoked`]) and is not written to. A peer that clears it in
//!   the instant between that check and the write, with a full counter, still
//!   blocks the write: eventfd has no per-call non-blocking write (pwritev2 with
//!   RWF_NOWAIT is EOPNOTSUPP on an eventfd, checked on Linux 6.18), so that window
//!   is the one left.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{sys, Errno};

/// What became of one interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The counter went up.
    Sent,
    /// The counter was full: the interrupt is still pending from before.
    Pending,
    /// The fd can no longer be written safely (the peer made it blocking again, or
    /// the write failed with this errno): forget it.
    Revoked(Errno),
}

/// A client's interrupt eventfd, checked and made non-blocking.
#[derive(Debug)]
pub struct IrqEventFd(File);

impl IrqEventFd {
    /// Accept `fd` as an interrupt eventfd: EINVAL when it is not an eventfd (or
    /// that cannot be told), the fcntl errno when it cannot be made non-blocking.
    pub fn new(fd: OwnedFd) -> Result<Self, Errno> {
        let raw = fd.as_raw_fd();
        match sys::is_eventfd(raw) {
            Ok(true) => {}
            Ok(false) => return Err(libc::EINVAL),
            Err(e) => {
                log::warn!("vfio-user: cannot tell whether fd {raw} is an eventfd: {e}");
                return Err(libc::EINVAL);
            }
        }
        sys::set_nonblocking(raw).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
        Ok(Self(File::from(fd)))
    }

    /// Add 1 to the counter, without blocking.
    pub fn signal(&self) -> Signal {
        let fd = self.0.as_raw_fd();
        match sys::fd_flags(fd) {
            Ok(fl) if fl & libc::O_NONBLOCK != 0 => {}
            Ok(_) => return Signal::Revoked(libc::EWOULDBLOCK),
            Err(e) => return Signal::Revoked(e.raw_os_error().unwrap_or(libc::EBADF)),
        }
        match sys::write_eventfd(fd, 1) {
            Ok(()) => Signal::Sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Signal::Pending,
            Err(e) => Signal::Revoked(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

/// Checks, once at startup, that this system lets [`IrqEventFd::new`] tell an
/// eventfd from other fds (it reads /proc/self/fd), so that a system without it
/// fails clearly at startup rather than refusing every interrupt later.
pub fn check_support() -> io::Result<()> {
    let e = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC)?;
    let other = File::open("/dev/null")?;
    match (
        sys::is_eventfd(e.as_raw_fd()),
        sys::is_eventfd(other.as_raw_fd()),
    ) {
        (Ok(true), Ok(false)) => Ok(()),
        (Err(err), _) | (_, Err(err)) => Err(io::Error::new(
            err.kind(),
            format!("/proc/self/fd is needed to check interrupt eventfds: {err}"),
        )),
        _ => Err(io::Error::other(
            "/proc/self/fd does not name eventfds as Linux does (anon_inode:[eventfd])",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn owned(fd: libc::c_int) -> OwnedFd {
        assert!(fd >= 0);
        // SAFETY: a fresh fd from the kernel, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn counter(e: &OwnedFd) -> u64 {
        let mut v = [0u8; 8];
        // SAFETY: an 8-byte read into a local buffer.
        assert_eq!(
            unsafe { libc::read(e.as_raw_fd(), v.as_mut_ptr().cast(), 8) },
            8
        );
        u64::from_ne_bytes(v)
    }

    #[test]
    fn only_eventfds_are_accepted() {
        check_support().unwrap();
        let mut p = [0; 2];
        // SAFETY: pipe(2) fills `p`.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        let (r, w) = (owned(p[0]), owned(p[1]));
        // SAFETY: timerfd_create/signalfd-like anonymous inodes that are not eventfds.
        let timer = owned(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, 0) });
        // SAFETY: epoll_create1 with a constant flag.
        let epoll = owned(unsafe { libc::epoll_create1(0) });
        let file = OwnedFd::from(File::open("/dev/null").unwrap());
        for fd in [r, w, timer, epoll, file] {
            assert_eq!(IrqEventFd::new(fd).unwrap_err(), libc::EINVAL);
        }
        // SAFETY: eventfd with constant arguments.
        let e = owned(unsafe { libc::eventfd(0, 0) });
        assert!(IrqEventFd::new(e).is_ok());
    }

    #[test]
    fn signalling_never_blocks() {
        // A blocking eventfd, counter one below full.
        // SAFETY: eventfd with constant arguments.
        let e = owned(unsafe { libc::eventfd(0, 0) });
        let peer = e.try_clone().unwrap();
        sys::write_eventfd(peer.as_raw_fd(), u64::MAX - 1).unwrap();
        let irq = IrqEventFd::new(e).unwrap();
        // The description (shared with the peer's copy) is non-blocking now.
        assert_ne!(
            sys::fd_flags(peer.as_raw_fd()).unwrap() & libc::O_NONBLOCK,
            0
        );
        assert_eq!(irq.signal(), Signal::Pending);
        assert_eq!(counter(&peer), u64::MAX - 1);
        assert_eq!(irq.signal(), Signal::Sent);
        assert_eq!(irq.signal(), Signal::Sent);
        assert_eq!(counter(&peer), 2);
        // The peer makes it blocking again: the vector is given up, not written.
        sys::write_eventfd(peer.as_raw_fd(), u64::MAX - 1).unwrap();
        let fl = sys::fd_flags(peer.as_raw_fd()).unwrap();
        // SAFETY: fcntl F_SETFL on our fd.
        assert_eq!(
            unsafe { libc::fcntl(peer.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) },
            0
        );
        assert_eq!(irq.signal(), Signal::Revoked(libc::EWOULDBLOCK));
        assert_eq!(counter(&peer), u64::MAX - 1);
    }
}
