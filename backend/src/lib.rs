//! cxl-accel-backend: serves the `accel-type2` device over vfio-user.
//!
//! The daemon lifecycle lives here: [`Daemon::new`] builds device memory, the LSA,
//! the device model and the sockets from a validated [`Config`]; [`Daemon::run`]
//! accepts one vfio-user client at a time and serves it, keeping all device state
//! across disconnects, until the stop eventfd fires (SIGINT/SIGTERM) or, with
//! `--once`, the first client leaves; then it flushes persistent memory and removes
//! its sockets. [`run`] wires this to process signals.

// The workspace lints deny unwrap/expect, indexing and overflowing arithmetic in the
// daemon (Cargo.toml); in unit tests a panic is a failed test. The lib target, built
// without cfg(test), is still held to them.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod config;
pub mod control;
pub mod device;
pub mod fwsocket;
pub mod jsonargs;
pub mod memory;
pub mod sdk;
pub mod seccomp;
pub mod topology;
pub mod worker;

/// The vfio-user server, a crate of its own (`backend/vfio-user`) that knows
/// nothing of CXL; re-exported under its old path.
pub use vfio_user_server as vfio_user;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use accel_type2::{AccelDevice, AccelError, Clock, LsaStorage, MemLsa};
use log::{error, info, warn};
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use config::Config;
use control::{ControlError, ControlServer, Handler};
use device::{lock, MonotonicClock, Shared, VfioDevice};
use fwsocket::FwSocket;
use memory::{DeviceMemoryFile, FileLsa, GuestRam, LsaSyncer, SharedDeviceMemory, StorageError};
pub use sdk::{Builder, Catalog};
use vfio_user::server::ServerError;
use vfio_user::{ServeOutcome, Server, Stopper};
use worker::{Worker, WorkerError};

/// Errors that end the daemon.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{path} exists and is not a socket; refusing to replace it")]
    PathInTheWay { path: PathBuf },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot build the device: {0}")]
    Device(#[from] AccelError),
    #[error("vfio-user server: {0}")]
    Server(#[from] ServerError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("cannot check interrupt eventfds: {0}")]
    Interrupts(#[source] std::io::Error),
    #[error(
        "--max-dma-maps {maps} needs {need} open files, but the hard limit (ulimit -Hn) is \
         {hard}: lower --max-dma-maps or raise the limit"
    )]
    FdLimit { maps: u32, need: u64, hard: u64 },
    #[error("cannot raise the open-file limit: {0}")]
    SetFdLimit(#[source] std::io::Error),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    FwSocket(#[from] fwsocket::FwSocketError),
    #[error(transparent)]
    Sdk(#[from] sdk::SdkError),
}

/// Open files the daemon needs besides one per DMA mapping: standard streams, the
/// sockets and a client, control connections, eventfds, memory and LSA files and
/// their locks, and the fds of a message in flight, with room to spare.
const FD_RESERVE: u64 = 128;

/// Make sure a client can hold `max_dma_maps` mappings (one fd each) without the
/// daemon running out of fds: raise the soft RLIMIT_NOFILE as far as needed, or fail
/// clearly if the hard limit is too low.
fn ensure_fd_limit(max_dma_maps: u32) -> Result<(), Error> {
    let need = u64::from(max_dma_maps).saturating_add(FD_RESERVE);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(Error::SetFdLimit(std::io::Error::last_os_error()));
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    if lim.rlim_max < need {
        return Err(Error::FdLimit {
            maps: max_dma_maps,
            need,
            hard: lim.rlim_max,
        });
    }
    lim.rlim_cur = need;
    // SAFETY: setrlimit reads one initialized rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(Error::SetFdLimit(std::io::Error::last_os_error()));
    }
    info!("open-file limit raised to {need} for --max-dma-maps {max_dma_maps}");
    Ok(())
}

/// Refuse early, before anything is created, if a non-socket sits at a socket path.
fn check_socket_path(path: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(Error::PathInTheWay { path: path.into() }),
        _ => Ok(()),
    }
}

/// A built daemon, its sockets bound, ready to [`run`](Daemon::run).
pub struct Daemon {
    config: Config,
    shared: Arc<Mutex<Shared>>,
    devmem: Arc<DeviceMemoryFile>,
    lsa_sync: Option<LsaSyncer>,
    clock: Arc<dyn Clock>,
    worker: Option<Worker>,
    server: Server,
    control: Option<ControlServer>,
    control_stop: EventFd,
    fwsocket: Option<FwSocket>,
    stop: EventFd,
}

impl Daemon {
    /// Build everything from `config`. `stop` ends [`run`](Daemon::run) when written.
    /// On error, nothing is left behind: no socket, and no memory or LSA file that
    /// this call created.
    pub fn new(config: Config, stop: EventFd) -> Result<Self, Error> {
        Self::with_catalog(config, stop, &Catalog::builtin())
    }

    /// [`Daemon::new`] with the firmwares and engine operations of `catalog` (the
    /// firmware SDK, [`sdk::Builder`]).
    pub fn with_catalog(config: Config, stop: EventFd, catalog: &Catalog) -> Result<Self, Error> {
        let fresh: Vec<PathBuf> = [&config.memory_file, &config.lsa_file]
            .into_iter()
            .flatten()
            .filter(|p| std::fs::symlink_metadata(p).is_err())
            .cloned()
            .collect();
        let result = Self::build(config, stop, catalog);
        if result.is_err() {
            for path in fresh {
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        result
    }

    fn build(config: Config, stop: EventFd, catalog: &Catalog) -> Result<Self, Error> {
        check_socket_path(&config.socket)?;
        for path in [&config.control, &config.firmware_socket]
            .into_iter()
            .flatten()
        {
            check_socket_path(path)?;
        }
        vfio_user::irq::check_support().map_err(Error::Interrupts)?;
        ensure_fd_limit(config.max_dma_maps)?;

        let accel = config.accel_config();
        let devmem = match &config.memory_file {
            Some(path) => DeviceMemoryFile::file(path, config.memory_size)?,
            None => DeviceMemoryFile::memfd(config.memory_size)?,
        };
        // Long work runs on the worker, off the device lock: DMA transfers,
        // Sanitize's wipe, and the LSA's sync after Set LSA.
        let (queue, inbox) = worker::queue();
        let (lsa, lsa_sync, worker_lsa): (Box<dyn LsaStorage>, _, _) = match &config.lsa_file {
            Some(path) => {
                let mut lsa = FileLsa::open(path, accel.lsa_size)?;
                let sync = lsa.syncer()?;
                let worker_sync = lsa.syncer()?;
                lsa.defer_sync(queue.lsa_sync_request());
                (Box::new(lsa), Some(sync), Some(worker_sync))
            }
            None => (Box::new(MemLsa(vec![0; accel.lsa_size])), None, None),
        };
        // Validated by Config, so the lookup cannot fail; fall back to the default
        // firmware rather than panic if it ever did.
        let mut firmware = catalog
            .build(&config.firmware)
            .unwrap_or_else(|| Box::new(accel_type2::DefaultFirmware));
        for (key, value) in &config.firmware_params {
            // Validated by Config as well; a refusal here is only logged.
            if let Err(e) = firmware.set_param(key, value) {
                warn!("firmware parameter {key}={value}: {e}");
            }
        }
        // The firmware process's socket and thread (which confines itself), with the
        // firmware above as its fallback.
        let fwsocket = match &config.firmware_socket {
            Some(path) => {
                let hello = fwsocket::hello(&config, config.firmware_deadline_ms);
                let sock = FwSocket::spawn(path, hello, config.seccomp)?;
                firmware = Box::new(fwsocket::SocketFirmware::new(
                    sock.link(),
                    firmware,
                    path,
                    config.firmware_deadline_ms,
                ));
                Some(sock)
            }
            None => None,
        };
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
        let device = AccelDevice::new(
            accel,
            Box::new(SharedDeviceMemory(devmem.clone())),
            lsa,
            firmware,
            clock.clone(),
        )?;
        let mut device = device;
        for (op, operation) in catalog.operations() {
            device.add_engine_operation(*op, operation.clone());
            info!("engine operation {op:#04x}: {}", operation.name());
        }
        let mut state = Shared::new(device);
        state.guest = GuestRam::new(config.max_dma_maps);
        let shared = Arc::new(Mutex::new(state));
        lock(&shared).attach_worker(queue.clone());
        // Started before the main thread confines itself (which would forbid
        // creating threads); it confines itself first.
        let worker = Worker::spawn(
            inbox,
            &queue,
            shared.clone(),
            SharedDeviceMemory(devmem.clone()),
            worker_lsa,
            config.seccomp,
        )?;
        // The mailbox payload in shared memory (a sparse area of BAR0): created here,
        // before any seccomp filter, like the other memory.
        if lock(&shared).share_mailbox_payload()? {
            info!(
                "mailbox payload: shared page at BAR0 {:#x}",
                cxl_regs::layout::MAILBOX_PAYLOAD_OFFSET
            );
        }

        let server = Server::bind(&config.socket)?;
        let control_stop = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let control = match &config.control {
            Some(path) => {
                let mut handler = Handler::new(
                    shared.clone(),
                    config.to_json(),
                    Some(server.stats_handle()),
                );
                if let Some(sock) = &fwsocket {
                    handler.set_firmware_socket(sock.link().stats().clone());
                }
                // On error, dropping `server` removes its socket.
                let confine = config.seccomp.then_some(seccomp::Role::Control);
                Some(ControlServer::spawn(path, handler, &control_stop, confine)?)
            }
            None => None,
        };

        info!(
            "cxl-accel-backend {}: device memory {:#x} bytes ({}), mailbox {}, flit {}, {} decoder(s), firmware {}, at most {} DMA mappings",
            env!("CARGO_PKG_VERSION"),
            config.memory_size,
            devmem
                .path()
                .map_or_else(|| "memfd".to_string(), |p| p.display().to_string()),
            if config.mailbox { "on" } else { "off" },
            match config.flit {
                accel_type2::FlitMode::Flit256 => "256b",
                accel_type2::FlitMode::Flit68 => "68b",
            },
            config.decoders,
            config.firmware,
            config.max_dma_maps,
        );
        info!("listening on {}", server.path().display());
        Ok(Self {
            config,
            shared,
            devmem,
            lsa_sync,
            clock,
            worker: Some(worker),
            server,
            control,
            control_stop,
            fwsocket,
            stop,
        })
    }

    /// The shared device state (for embedding and tests).
    pub fn shared(&self) -> &Arc<Mutex<Shared>> {
        &self.shared
    }

    /// Stop through `stopper` (which writes the stop eventfd this daemon was built
    /// with, and ends a receive that blocks on the client's connection) rather than
    /// by writing the eventfd alone; the server then waits for each message in one
    /// system call instead of two ([`vfio_user::Server::set_stopper`]).
    pub fn set_stopper(&mut self, stopper: Stopper) {
        self.server.set_stopper(stopper);
    }

    /// Serve clients until stopped (or, with `--once`, until the first one leaves),
    /// then shut down cleanly.
    pub fn run(mut self) -> Result<(), Error> {
        let result = self.serve_clients();
        self.shutdown();
        result
    }

    fn serve_clients(&mut self) -> Result<(), Error> {
        let mut dev = VfioDevice::new(self.shared.clone(), self.devmem.clone(), self.clock.clone());
        loop {
            let Some(stream) = self.server.accept(&self.stop)? else {
                info!("stop requested while waiting for a client");
                return Ok(());
            };
            {
                let mut s = lock(&self.shared);
                s.connection.connected = true;
                s.connection.connections = s.connection.connections.saturating_add(1);
            }
            // `serve` calls `dev.disconnected()` however it returns.
            match self.server.serve(stream, &mut dev, &self.stop) {
                Ok(ServeOutcome::Disconnected) => {
                    info!(
                        "device memory, LSA and registers are kept; a new client's \
                         DEVICE_RESET returns the registers to power-on values"
                    );
                }
                Ok(ServeOutcome::Stopped) => return Ok(()),
                Err(e) => warn!("client connection failed: {e}; waiting for the next one"),
            }
            if self.config.once {
                info!("--once: exiting after the first client");
                return Ok(());
            }
        }
    }

    fn shutdown(&mut self) {
        if let Err(e) = self.control_stop.write(1) {
            warn!("cannot stop the control thread: {e}");
        }
        if let Some(c) = self.control.take() {
            c.join();
        }
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        if let Some(f) = self.fwsocket.take() {
            f.stop();
        }
        if let Err(e) = self.devmem.flush() {
            error!("{e}");
        }
        if let Some(sync) = &self.lsa_sync {
            if let Err(e) = sync.sync() {
                error!("{e}");
            }
        }
        // Dropping the server (after this) removes its socket.
        info!("shut down cleanly");
    }
}

/// Turns SIGINT and SIGTERM into a write to an eventfd. The signals are blocked in
/// every thread (the mask is inherited) and collected by one thread with
/// `sigtimedwait`, so no code runs in signal context.
pub struct SignalWatcher {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SignalWatcher {
    /// Block SIGINT/SIGTERM in the calling thread (call it before spawning other
    /// threads) and start the watcher, which stops the daemon through `stop` on a
    /// signal. With `confine`, the watcher installs its seccomp filter before it
    /// waits.
    pub fn start(stop: &Stopper, confine: bool) -> Result<Self, Error> {
        let set = termination_set();
        // SAFETY: `set` is an initialized sigset; the old mask is not requested.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(Error::Signals(std::io::Error::from_raw_os_error(rc)));
        }
        let stop = stop.clone();
        let done = Arc::new(AtomicBool::new(false));
        let thread_done = done.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let confined = if confine {
                    seccomp::install(seccomp::Role::Signals)
                } else {
                    Ok(())
                };
                let failed = confined.is_err();
                // The receiver waits for this message; it cannot be gone.
                let _ = ready_tx.send(confined);
                if failed {
                    return;
                }
                let timeout = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 200_000_000,
                };
                while !thread_done.load(Ordering::Relaxed) {
                    // SAFETY: `set` is initialized, the info pointer may be null, and
                    // `timeout` outlives the call.
                    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
                    if sig == libc::SIGINT || sig == libc::SIGTERM {
                        info!(
                            "received {}, shutting down",
                            if sig == libc::SIGINT {
                                "SIGINT"
                            } else {
                                "SIGTERM"
                            }
                        );
                        if let Err(e) = stop.stop() {
                            error!("cannot signal shutdown: {e}");
                        }
                    }
                }
            })
            .map_err(Error::Signals)?;
        let watcher = Self {
            done,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(watcher),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Signals(std::io::Error::other(
                "the signal thread ended before it started watching",
            ))),
        }
    }
}

impl Drop for SignalWatcher {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset fully initializes the set before it is read; the signal
    // numbers are valid.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        let mut set = set.assume_init();
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Run the stock daemon for `config` until SIGINT/SIGTERM (or `--once`).
pub fn run(config: Config) -> Result<(), Error> {
    run_with(config, &Catalog::builtin())
}

/// Run the daemon for `config`, with the firmwares and engine operations of
/// `catalog`, until SIGINT/SIGTERM (or `--once`).
pub fn run_with(config: Config, catalog: &Catalog) -> Result<(), Error> {
    // A file-size limit (RLIMIT_FSIZE) must show as an error (EFBIG) when device memory
    // is reserved, not kill the process.
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let stop = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
    // A signal stops the daemon through a Stopper, which also ends a receive that
    // blocks on the client's connection; so the server waits for each message in
    // recvmsg alone, without a poll before it.
    let stopper = Stopper::new(&stop).map_err(Error::EventFd)?;
    let _signals = SignalWatcher::start(&stopper, config.seccomp)?;
    let confine = config.seccomp;
    let mut daemon = Daemon::with_catalog(config, stop, catalog)?;
    daemon.set_stopper(stopper);
    // Everything is set up: sockets bound, memory mapped, threads started. On error,
    // dropping `daemon` removes the sockets and stops the control thread.
    if confine {
        seccomp::install(seccomp::Role::Main)?;
    }
    daemon.run()
}
