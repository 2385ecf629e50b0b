//! Optional seccomp confinement (`--seccomp on`), built with rust-vmm's `seccompiler`.
//!
//! Each of the daemon's threads installs its own filter once its setup is done
//! (sockets bound, memory mapped, event loop built), listing exactly the system calls
//! that thread makes from then on:
//!
//! - [`Role::Main`]: accepts and serves vfio-user clients (QEMU: the untrusted peer),
//!   then shuts down (flush, unlink the sockets, join the other threads);
//! - [`Role::Control`]: the control socket's event loop;
//! - [`Role::Signals`]: waits for SIGINT/SIGTERM and writes the stop eventfd;
//! - [`Role::Worker`]: runs the long work off the device lock (DMA transfers,
//!   Sanitize's wipe, the LSA's sync; see [`crate::worker`]);
//! - [`Role::Firmware`]: with `--firmware-socket`, talks to the vendor's firmware
//!   process (see [`crate::fwsocket`]).
//!
//! The lists, with the reason for each call, are in `backend/SECCOMP.md`, and a unit
//! test checks that file against the tables here. They were found by running the
//! integration tests and a real VM boot under `strace -f` (how: SECCOMP.md).
//!
//! Any other system call is trapped: the kernel does not run it and sends SIGSYS,
//! whose handler writes one line naming the call and the thread to stderr and ends
//! the process with [`EXIT_SECCOMP`]. No signal handler can be changed afterwards
//! (`rt_sigaction` is not allowed), so the trap cannot be disarmed. Memory can never
//! be made executable (`mmap`/`mprotect` with `PROT_EXEC` are refused), and `ioctl`
//! is limited to `FIONBIO`.

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use thiserror::Error;

/// Exit status of a process that made a forbidden system call (128 + SIGSYS, as a
/// shell reports a process killed by SIGSYS).
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// The daemon's threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Main,
    Control,
    Signals,
    Worker,
    Firmware,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Main,
        Role::Control,
        Role::Signals,
        Role::Worker,
        Role::Firmware,
    ];

    /// The name used in SECCOMP.md and in the SIGSYS message.
    pub fn name(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Control => "control",
            Role::Signals => "signals",
            Role::Worker => "worker",
            Role::Firmware => "firmware",
        }
    }

    fn code(self) -> u8 {
        match self {
            Role::Main => 1,
            Role::Control => 2,
            Role::Signals => 3,
            Role::Worker => 4,
            Role::Firmware => 5,
        }
    }
}

/// A condition on a system call's arguments, beyond its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// The protection argument (`mmap`, `mprotect`: argument 2) lacks `PROT_EXEC`.
    NoExec,
    /// `ioctl(fd, FIONBIO, ...)` only (std's `set_nonblocking`).
    Fionbio,
    /// `fcntl(fd, F_GETFD | F_GETFL | F_SETFL)` only: debug builds of std check that
    /// an fd is open before closing it; interrupt eventfds are made and kept
    /// non-blocking, DMA_MAP fds checked for their access mode.
    Fcntl,
}

/// One allowed system call.
#[derive(Debug, Clone, Copy)]
pub struct Syscall {
    pub name: &'static str,
    pub nr: i64,
    pub args: Args,
}

const fn any(name: &'static str, nr: i64) -> Syscall {
    Syscall {
        name,
        nr,
        args: Args::Any,
    }
}

const fn with(name: &'static str, nr: i64, args: Args) -> Syscall {
    Syscall { name, nr, args }
}

/// Errors of building or installing a filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("seccomp filters are only defined for x86_64")]
    Unsupported,
    #[error("cannot build the seccomp filter for the {role} thread: {source}")]
    Build {
        role: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    #[error(
        "cannot install the seccomp filter for the {role} thread: {source} \
         (the kernel needs CONFIG_SECCOMP_FILTER; run with --seccomp off to go without)"
    )]
    Install {
        role: &'static str,
        source: seccompiler::Error,
    },
}

#[cfg(target_arch = "x86_64")]
mod table {
    use super::{any, with, Args, Syscall};
    use libc::*;

    /// Calls every thread makes: memory allocation, locks, logging to stderr and eventfd
    /// writes, time, closing fds, and ending the thread or the process.
    pub const COMMON: &[Syscall] = &[
        any("brk", SYS_brk),
        any("clock_gettime", SYS_clock_gettime),
        any("close", SYS_close),
        any("exit", SYS_exit),
        any("exit_group", SYS_exit_group),
        with("fcntl", SYS_fcntl, Args::Fcntl),
        any("futex", SYS_futex),
        any("madvise", SYS_madvise),
        with("mmap", SYS_mmap, Args::NoExec),
        with("mprotect", SYS_mprotect, Args::NoExec),
        any("mremap", SYS_mremap),
        any("munmap", SYS_munmap),
        any("restart_syscall", SYS_restart_syscall),
        any("rt_sigprocmask", SYS_rt_sigprocmask),
        any("sigaltstack", SYS_sigaltstack),
        any("write", SYS_write),
    ];

    /// The vfio-user thread, from the first accept to the end of shutdown.
    pub const MAIN: &[Syscall] = &[
        any("accept4", SYS_accept4),
        any("fdatasync", SYS_fdatasync),
        any("fstatfs", SYS_fstatfs),
        any("poll", SYS_poll),
        any("pread64", SYS_pread64),
        any("pwrite64", SYS_pwrite64),
        any("readlink", SYS_readlink),
        any("recvmsg", SYS_recvmsg),
        any("sendmsg", SYS_sendmsg),
        any("statx", SYS_statx),
        any("unlink", SYS_unlink),
    ];

    /// The control socket's event loop.
    pub const CONTROL: &[Syscall] = &[
        any("accept4", SYS_accept4),
        any("epoll_ctl", SYS_epoll_ctl),
        any("epoll_wait", SYS_epoll_wait),
        with("ioctl", SYS_ioctl, Args::Fionbio),
        any("recvfrom", SYS_recvfrom),
        any("sendto", SYS_sendto),
    ];

    /// The signal thread.
    pub const SIGNALS: &[Syscall] = &[any("rt_sigtimedwait", SYS_rt_sigtimedwait)];

    /// The worker: copies guest RAM and device memory (pread/pwrite, after an fstat
    /// of the guest's file), punches holes (or writes zeros), syncs the LSA.
    pub const WORKER: &[Syscall] = &[
        any("fallocate", SYS_fallocate),
        any("fdatasync", SYS_fdatasync),
        any("pread64", SYS_pread64),
        any("pwrite64", SYS_pwrite64),
        any("statx", SYS_statx),
    ];

    /// The firmware thread: accepts the vendor process's connection, exchanges
    /// JSON lines with it, waits in poll(2), reads its wake-up eventfd.
    pub const FIRMWARE: &[Syscall] = &[
        any("accept4", SYS_accept4),
        with("ioctl", SYS_ioctl, Args::Fionbio),
        any("poll", SYS_poll),
        any("read", SYS_read),
        any("recvfrom", SYS_recvfrom),
        any("sendto", SYS_sendto),
    ];
}

/// The system calls `role` may make, sorted by name, each once.
pub fn allowed(role: Role) -> Vec<Syscall> {
    #[cfg(target_arch = "x86_64")]
    let list: Vec<Syscall> = {
        let own = match role {
            Role::Main => table::MAIN,
            Role::Control => table::CONTROL,
            Role::Signals => table::SIGNALS,
            Role::Worker => table::WORKER,
            Role::Firmware => table::FIRMWARE,
        };
        table::COMMON.iter().chain(own).copied().collect()
    };
    #[cfg(not(target_arch = "x86_64"))]
    let list: Vec<Syscall> = {
        let _ = role;
        Vec::new()
    };
    let mut list = list;
    list.sort_by_key(|s| s.name);
    list.dedup_by_key(|s| s.name);
    list
}

fn condition(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn rules(args: Args) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    Ok(match args {
        Args::Any => Vec::new(),
        Args::NoExec => vec![SeccompRule::new(vec![condition(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?],
        Args::Fionbio => vec![SeccompRule::new(vec![condition(
            1,
            SeccompCmpOp::Eq,
            libc::FIONBIO,
        )?])?],
        Args::Fcntl => [libc::F_GETFD, libc::F_GETFL, libc::F_SETFL]
            .into_iter()
            .map(|cmd| SeccompRule::new(vec![condition(1, SeccompCmpOp::Eq, cmd as u64)?]))
            .collect::<Result<_, _>>()?,
    })
}

/// The BPF program for `role`: the allowed calls pass, any other gets `mismatch`.
pub fn filter(role: Role, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    if cfg!(not(target_arch = "x86_64")) {
        return Err(SeccompError::Unsupported);
    }
    let build = |source| SeccompError::Build {
        role: role.name(),
        source,
    };
    let mut map = BTreeMap::new();
    for s in allowed(role) {
        map.insert(s.nr, rules(s.args).map_err(build)?);
    }
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(build)?;
    let filter = SeccompFilter::new(map, mismatch, SeccompAction::Allow, arch).map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

thread_local! {
    /// The calling thread's role, for the SIGSYS message (0: none).
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

/// Confine the calling thread to `role`'s system calls. Threads it creates afterwards
/// inherit the filter. A forbidden call ends the process with [`EXIT_SECCOMP`].
pub fn install(role: Role) -> Result<(), SeccompError> {
    let program = filter(role, SeccompAction::Trap)?;
    install_sigsys_handler()?;
    ROLE.with(|r| r.set(role.code()));
    seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install {
        role: role.name(),
        source,
    })?;
    log::info!(
        "seccomp: {} thread confined to {} system calls",
        role.name(),
        allowed(role).len()
    );
    Ok(())
}

/// The SIGSYS part of `siginfo_t` on Linux (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    #[cfg(target_pointer_width = "64")]
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `si_code` of a SIGSYS sent by a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is a valid value; every field we rely on is set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = sigsys_handler as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a valid sigset to initialize.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: installs a handler that only calls async-signal-safe functions; the old
    // action is not requested.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Appends `n` in decimal to `buf` at `*len` (no allocation: signal context).
fn push_decimal(buf: &mut [u8], len: &mut usize, n: u64) {
    // u64::MAX has 20 digits; they are produced last first.
    let mut digits = [0u8; 20];
    let mut used = 0usize;
    let mut v = n;
    for slot in digits.iter_mut().rev() {
        // v % 10 < 10: the sum is an ASCII digit.
        *slot = b'0'.saturating_add((v % 10) as u8);
        used = used.saturating_add(1);
        v /= 10;
        if v == 0 {
            break;
        }
    }
    push(
        buf,
        len,
        digits
            .get(digits.len().saturating_sub(used)..)
            .unwrap_or_default(),
    );
}

fn push(buf: &mut [u8], len: &mut usize, s: &[u8]) {
    for &b in s {
        if let Some(slot) = buf.get_mut(*len) {
            *slot = b;
            // *len < buf.len(): `slot` exists.
            *len = len.saturating_add(1);
        }
    }
}

/// Formats the one-line report of a trapped call.
fn report(buf: &mut [u8], syscall: u64, role: u8) -> usize {
    let mut len = 0;
    push(buf, &mut len, b"cxl-accel-backend: seccomp: system call ");
    push_decimal(buf, &mut len, syscall);
    push(buf, &mut len, b" is not allowed in the ");
    let name: &[u8] = match role {
        1 => b"main",
        2 => b"control",
        3 => b"signals",
        4 => b"worker",
        5 => b"firmware",
        _ => b"unnamed",
    };
    push(buf, &mut len, name);
    push(
        buf,
        &mut len,
        b" thread (see backend/SECCOMP.md); exiting\n",
    );
    len
}

extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    let mut syscall = u64::MAX;
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for a
        // SIGSYS from seccomp (si_code SYS_SECCOMP) its union holds `_sigsys`, which
        // `SigsysInfo` lays out, and siginfo_t is larger than SigsysInfo.
        let si = unsafe { &*(info as *const SigsysInfo) };
        if si.code == SYS_SECCOMP {
            syscall = si.syscall as u64;
        }
    }
    let role = ROLE.with(Cell::get);
    let mut buf = [0u8; 160];
    let len = report(&mut buf, syscall, role);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf[..len]` is initialized.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(EXIT_SECCOMP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The per-thread lists documented in SECCOMP.md's table: rows of
    /// `| name | main | control | signals | worker | firmware | why |` with `x` marks.
    fn documented() -> BTreeMap<&'static str, BTreeSet<String>> {
        let doc = include_str!("../SECCOMP.md");
        let mut out: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for role in Role::ALL {
            out.insert(role.name(), BTreeSet::new());
        }
        for line in doc.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // "", name, main, control, signals, worker, firmware, why, ""
            if cells.len() < 8 || !cells[1].starts_with('`') {
                continue;
            }
            let name = cells[1].trim_matches('`').to_string();
            for (i, role) in Role::ALL.iter().enumerate() {
                if cells[2 + i] == "x" {
                    out.get_mut(role.name()).unwrap().insert(name.clone());
                }
            }
        }
        out
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn lists_match_the_documentation() {
        let doc = documented();
        for role in Role::ALL {
            let code: BTreeSet<String> = allowed(role).iter().map(|s| s.name.to_string()).collect();
            assert_eq!(
                &code,
                doc.get(role.name()).unwrap(),
                "the {} thread's list differs from SECCOMP.md",
                role.name()
            );
        }
        // Nothing that starts programs, opens files or reaches the network.
        for role in Role::ALL {
            for s in allowed(role) {
                assert!(
                    ![
                        "execve",
                        "execveat",
                        "fork",
                        "vfork",
                        "clone",
                        "clone3",
                        "open",
                        "openat",
                        "socket",
                        "connect",
                        "ptrace",
                        "rt_sigaction",
                        "kill",
                        "tgkill",
                        "bind",
                        "listen",
                        "setuid",
                        "mount",
                        "chmod",
                    ]
                    .contains(&s.name),
                    "{} allows {}",
                    role.name(),
                    s.name
                );
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn numbers_are_the_named_calls() {
        for role in Role::ALL {
            let list = allowed(role);
            let mut nrs: Vec<i64> = list.iter().map(|s| s.nr).collect();
            nrs.sort_unstable();
            nrs.dedup();
            assert_eq!(nrs.len(), list.len(), "a number listed twice");
        }
        let main = allowed(Role::Main);
        let nr = |n: &str| main.iter().find(|s| s.name == n).map(|s| s.nr);
        assert_eq!(nr("write"), Some(libc::SYS_write));
        assert_eq!(nr("recvmsg"), Some(libc::SYS_recvmsg));
        assert_eq!(nr("socket"), None);
    }

    /// Runs `f` in a fresh thread confined to `role` with EPERM for anything else
    /// (instead of the trap, which would end the test process).
    fn confined<T: Send + 'static>(role: Role, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            let program = filter(role, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            seccompiler::apply_filter(&program).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn filters_deny_what_is_not_listed() {
        for role in Role::ALL {
            let (socket, openat, getpid, exec_map, write) = confined(role, || {
                // SAFETY: raw system calls with valid arguments; any fd is closed.
                unsafe {
                    let s = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
                    let socket = errno_of(s);
                    let o = libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        c"/dev/null".as_ptr(),
                        libc::O_RDONLY,
                    );
                    let openat = errno_of(o);
                    let getpid = errno_of(libc::syscall(libc::SYS_getpid));
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    let exec_map = if p == libc::MAP_FAILED {
                        errno_of(-1)
                    } else {
                        libc::munmap(p, 4096);
                        0
                    };
                    let w = libc::write(libc::STDERR_FILENO, b"".as_ptr().cast(), 0);
                    (
                        socket,
                        openat,
                        getpid,
                        exec_map,
                        errno_of(w as libc::c_long),
                    )
                }
            });
            let who = role.name();
            assert_eq!(socket, libc::EPERM, "{who}: socket() allowed");
            assert_eq!(openat, libc::EPERM, "{who}: openat() allowed");
            assert_eq!(getpid, libc::EPERM, "{who}: getpid() allowed");
            assert_eq!(exec_map, libc::EPERM, "{who}: executable mmap allowed");
            assert_eq!(write, 0, "{who}: write() denied");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn filters_allow_what_the_threads_need() {
        // Memory, locks and threads' own exit work in every thread.
        for role in Role::ALL {
            let v = confined(role, || {
                let v: Vec<u64> = (0..100_000).collect();
                let m = std::sync::Mutex::new(v.len());
                let n = *m.lock().unwrap();
                // SAFETY: an anonymous read/write mapping, unmapped at once.
                let rw = unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    p != libc::MAP_FAILED && libc::munmap(p, 4096) == 0
                };
                (n, rw)
            });
            assert_eq!(v, (100_000, true), "{}", role.name());
        }
        // ioctl: FIONBIO only.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (fionbio, other) = confined(Role::Control, move || {
            let _b = b;
            let ok = a.set_nonblocking(true).is_ok();
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD on a socket we own into a local int.
            let rc =
                unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&a), libc::FIONREAD, &mut n) };
            (ok, errno_of(rc as libc::c_long))
        });
        assert!(fionbio);
        assert_eq!(other, libc::EPERM);
    }

    #[test]
    fn report_line() {
        let mut buf = [0u8; 160];
        let len = report(&mut buf, 41, 2);
        assert_eq!(
            std::str::from_utf8(&buf[..len]).unwrap(),
            "cxl-accel-backend: seccomp: system call 41 is not allowed in the control thread \
             (see backend/SECCOMP.md); exiting\n"
        );
        let len = report(&mut buf, 0, 0);
        assert!(std::str::from_utf8(&buf[..len])
            .unwrap()
            .contains("call 0 is not allowed in the unnamed"));
    }
}
