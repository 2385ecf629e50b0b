//! The few syscalls the daemon needs that std does not offer: a UNIX listener
//! that is private from the moment it exists, recvmsg/sendmsg with SCM_RIGHTS,
//! poll(2) on a socket plus a stop fd, and the fd checks the transport makes on
//! what a peer sends (file status flags, file system type, eventfd identity). All
//! the module's unsafe code is here.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

/// What poll saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ready {
    /// The watched fd is ready (or hung up / in error: the next I/O says which).
    Fd,
    /// The stop fd became readable.
    Stop,
    /// The timeout passed.
    Timeout,
}

/// Converts a timeout to poll's milliseconds, rounding up so that a short
/// timeout does not turn into a busy loop. `None` waits forever.
fn poll_millis(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    }
}

/// Waits until `fd` has one of `events`, or `stop` is readable, or `timeout`
/// passes. The stop fd wins when both are ready. It is never read, so that
/// every waiter sees it.
pub(super) fn poll(
    fd: RawFd,
    events: libc::c_short,
    stop: RawFd,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = poll_millis(timeout);
    loop {
        // SAFETY: `fds` is a valid, writable array of two pollfd structs that
        // outlives the call, and its length is passed correctly.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(Ready::Timeout);
        }
        if fds[1].revents != 0 {
            return Ok(Ready::Stop);
        }
        return Ok(Ready::Fd);
    }
}

/// Identity (device, inode) of a file we created, to remove it later only if
/// the path still names it.
pub type FileId = (u64, u64);

/// Creates a listening UNIX stream socket at `path` with mode 0600, and returns
/// it with the identity of the socket file. The file is 0600 from the moment
/// bind(2) creates it: Linux creates a socket file with the mode of the socket's
/// own inode less the umask (net/unix/af_unix.c, `unix_bind_bsd`), and that mode
/// is set with fchmod(2) first. It is chmod'ed to 0600 again (in case the umask
/// took owner bits) before listen(2), and nobody can connect before listen. The
/// socket is non-blocking and CLOEXEC.
pub fn bind_unix(path: &Path) -> io::Result<(UnixListener, FileId)> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: fchmod(2) on the socket fd we own; no memory is involved.
    if unsafe { libc::fchmod(sock.as_raw_fd(), 0o600) } < 0 {
        return Err(io::Error::last_os_error());
    }

    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Leave room for the terminating NUL (already zeroed).
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path is empty, too long or contains a NUL",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // At most size_of::<sockaddr_un>() (checked just above): no overflow.
    #[allow(clippy::arithmetic_side_effects)]
    let len = (size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un and `len` does not exceed
    // its size; `sock` is a valid socket fd.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let ready = || -> io::Result<FileId> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let meta = std::fs::symlink_metadata(path)?;
        // SAFETY: listen(2) on the valid socket fd we own.
        if unsafe { libc::listen(sock.as_raw_fd(), 8) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((meta.dev(), meta.ino()))
    };
    match ready() {
        Ok(id) => Ok((UnixListener::from(sock), id)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// Removes the file at `path` if it is still the one whose identity is `id`
/// (we created it); a file somebody else put there since is left alone.
pub fn remove_if_ours(path: &Path, id: FileId) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == id => {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
        Ok(_) => log::warn!(
            "{} is no longer the socket this process created; leaving it",
            path.display()
        ),
        Err(_) => {}
    }
}

/// The file status flags of `fd` (fcntl F_GETFL: access mode, O_NONBLOCK,
/// O_APPEND, O_PATH...).
pub fn fd_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: fcntl(2) F_GETFL reads flags of an fd; no memory is involved.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl)
}

/// Sets O_NONBLOCK on `fd`'s open file description (shared with every other
/// fd of that description, in this process and in the peer's).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let fl = fd_flags(fd)?;
    if fl & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: fcntl(2) F_SETFL on an fd; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The type (`f_type`, a magic number) of the file system `fd` lives on.
pub fn fs_type(fd: RawFd) -> io::Result<i64> {
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs(2) writes one statfs into `st`, which outlives the call.
    if unsafe { libc::fstatfs(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type)
}

/// What `/proc/self/fd/N` names an eventfd: the name Linux gives the anonymous
/// inode file of every eventfd (fs/eventfd.c: `anon_inode_getfile("[eventfd]",
/// ...)`).
const EVENTFD_LINK: &[u8] = b"anon_inode:[eventfd]";

/// Whether `fd` is an eventfd. Read from the fd's link in /proc, the only place
/// that tells an eventfd from the other anonymous-inode files (timerfd, signalfd,
/// epoll...), which share one inode and look alike to fstat(2).
pub fn is_eventfd(fd: RawFd) -> io::Result<bool> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    Ok(link.as_os_str().as_bytes() == EVENTFD_LINK)
}

/// Writes one eventfd increment without waiting: an error of kind WouldBlock
/// means the counter is full (the interrupt is pending already).
pub fn write_eventfd(fd: RawFd, value: u64) -> io::Result<()> {
    let bytes = value.to_ne_bytes();
    loop {
        // SAFETY: write(2) of 8 bytes from a live local buffer.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n == 8 {
            return Ok(());
        }
        if n >= 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("short eventfd write of {n} bytes"),
            ));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Room for `MAX` fds in one control message, as u64 words so that the
/// buffer is aligned for `cmsghdr`.
const CMSG_WORDS: usize =
    (16 + super::protocol::MAX_MSG_FDS * size_of::<libc::c_int>()).div_ceil(size_of::<u64>()) + 1;

/// One non-blocking recvmsg(2) into `buf`. Fds that arrive are appended to
/// `fds` until it holds `max_fds`; further ones are closed at once (and the
/// kernel closes any that did not fit the control buffer). Returns the number
/// of bytes read, 0 at end of stream.
pub(super) fn recv_with_fds(
    fd: RawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<usize> {
    let mut cmsg_buf = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
    // SAFETY: `msg` points at `iov` (which covers `buf`, writable for its
    // length) and at `cmsg_buf` (writable for msg_controllen bytes); all
    // outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        log::warn!("vfio-user: peer sent more fds than accepted; extra fds closed");
    }
    // SAFETY: `msg` was filled by a successful recvmsg; CMSG_FIRSTHDR and
    // CMSG_NXTHDR only return headers inside the msg_controllen bytes the
    // kernel wrote into `cmsg_buf`, which is aligned for cmsghdr.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points at a cmsghdr inside cmsg_buf.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN is a pure size computation.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize)
                .saturating_sub(head)
                .checked_div(size_of::<libc::c_int>())
                .unwrap_or(0);
            // SAFETY: the data of this cmsghdr lies within the control buffer.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
            for i in 0..count {
                // SAFETY: `i < count`, and the kernel wrote `count` ints after
                // the header, inside cmsg_buf; read_unaligned copes with any
                // alignment.
                let raw = unsafe { data.add(i).read_unaligned() };
                // SAFETY: SCM_RIGHTS installed `raw` as a new fd in this
                // process; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if fds.len() < max_fds {
                    fds.push(owned);
                } else {
                    log::warn!(
                        "vfio-user: more than {max_fds} fds with one message; closing extra"
                    );
                    drop(owned);
                }
            }
        }
        // SAFETY: `msg` and `cmsg` are as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(n as usize)
}

/// One non-blocking sendmsg(2) of `buf`, passing `pass` with SCM_RIGHTS when
/// given. Never raises SIGPIPE. Returns the number of bytes sent.
pub(super) fn send_with_fd(fd: RawFd, buf: &[u8], pass: Option<RawFd>) -> io::Result<usize> {
    let mut cmsg_buf = [0u64; 4];
    let mut iov = libc::iovec {
        // sendmsg never writes through iov_base.
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(pass) = pass {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as usize,
                libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize,
            )
        };
        debug_assert!(space <= std::mem::size_of_val(&cmsg_buf));
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `cmsg_buf`, aligned and at least
        // `space` bytes long, so the first header and its one int of data
        // fit inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as _;
            libc::CMSG_DATA(cmsg)
                .cast::<libc::c_int>()
                .write_unaligned(pass);
        }
    }
    // SAFETY: `msg` points at `iov` (covering `buf`) and, when set, at
    // `cmsg_buf`; all outlive the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_millis_rounds_up_and_clamps() {
        assert_eq!(poll_millis(None), -1);
        assert_eq!(poll_millis(Some(Duration::ZERO)), 0);
        assert_eq!(poll_millis(Some(Duration::from_micros(10))), 1);
        assert_eq!(poll_millis(Some(Duration::from_millis(7))), 7);
        assert_eq!(
            poll_millis(Some(Duration::from_secs(u64::MAX))),
            libc::c_int::MAX
        );
    }

    #[test]
    fn fds_beyond_the_limit_are_closed() {
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<std::fs::File> = (0..5)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        a.send_with_fds(&[&[7u8, 8][..]], &raw).unwrap();
        let mut buf = [0u8; 2];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds, 3).unwrap();
        assert_eq!(n, 2);
        assert_eq!(buf, [7, 8]);
        assert_eq!(fds.len(), 3);
        // Nothing more to read: would block.
        let e = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds, 3).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn send_passes_one_fd() {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let mut tmp = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        tmp.write_all(b"hello").unwrap();
        assert_eq!(
            send_with_fd(a.as_raw_fd(), b"x", Some(tmp.as_raw_fd())).unwrap(),
            1
        );
        let mut fds = Vec::new();
        let mut buf = [0u8; 1];
        assert_eq!(
            recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds, 16).unwrap(),
            1
        );
        assert_eq!(fds.len(), 1);
        let mut f = std::fs::File::from(fds.pop().unwrap());
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }
}
