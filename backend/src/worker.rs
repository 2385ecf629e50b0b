//! The worker thread: long work taken off the device lock.
//!
//! The device model hands out DMA transfers and the wipe of device memory (Sanitize,
//! CXL Reset with Mem Clr) as jobs ([`accel_type2::jobs`]); the LSA file needs an
//! `fdatasync` after Set LSA.
//! Done inside a vfio-user message, each would hold the [`Shared`] mutex, and the
//! only vfio-user thread, for as long as it takes (a 1 GiB transfer: about a
//! second), so the guest's other register accesses, the control socket and even the
//! engine's BUSY bit would wait for it.
//!
//! Instead, the vfio-user thread queues a [`Work`] item with what the job needs,
//! taken under the lock: the job itself, and for DMA a snapshot of the guest RAM
//! mappings ([`GuestRam`] clones are cheap). The worker runs it without the lock, on
//! its own handle of device memory, in steps (64 KiB for DMA, 64 MiB for a wipe)
//! that check the job's cancel flag (a reset or FLR raises it) and the daemon's stop
//! flag. Then it takes the lock again to post the result, which the device ignores
//! for a job a reset aborted, and delivers the completion interrupt.
//!
//! A transfer copies through the mappings as they were at its doorbell; a
//! DMA_UNMAP or a disconnect while it runs does not pull them from under it (they
//! are released when the transfer ends).
//!
//! One worker serves all jobs, in order: the engine runs one transfer at a time, and
//! Sanitize forbids media changes while it runs. An LSA sync is queued once however
//! many Set LSA commands ask for it before it runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use accel_type2::{DmaJob, WipeJob};
use log::{debug, error, warn};
use thiserror::Error;

use crate::device::{lock, Shared};
use crate::memory::{GuestRam, LsaSyncer, SharedDeviceMemory, SyncRequest};
use crate::seccomp::{self, Role};

/// Errors of starting the worker.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("cannot start the worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the worker thread ended before it started")]
    Gone,
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// One item of long work.
pub enum Work {
    /// A DMA transfer, through the guest RAM mappings of its doorbell.
    Dma { job: DmaJob, guest: GuestRam },
    /// A wipe of device memory (Sanitize, CXL Reset with Mem Clr).
    Wipe(WipeJob),
    /// `fdatasync` the LSA file.
    SyncLsa,
}

enum Msg {
    Work(Work),
    Stop,
}

/// The sending side of the worker's queue.
#[derive(Clone)]
pub struct WorkQueue {
    tx: Sender<Msg>,
    /// An LSA sync is queued and has not started.
    lsa_pending: Arc<AtomicBool>,
}

/// The receiving side, for [`Worker::spawn`].
pub struct WorkInbox {
    rx: Receiver<Msg>,
    lsa_pending: Arc<AtomicBool>,
}

/// A new, empty queue.
pub fn queue() -> (WorkQueue, WorkInbox) {
    let (tx, rx) = mpsc::channel();
    let lsa_pending = Arc::new(AtomicBool::new(false));
    (
        WorkQueue {
            tx,
            lsa_pending: lsa_pending.clone(),
        },
        WorkInbox { rx, lsa_pending },
    )
}

impl WorkQueue {
    /// Queue `work`; false when the worker is gone.
    pub fn send(&self, work: Work) -> bool {
        self.tx.send(Msg::Work(work)).is_ok()
    }

    /// What [`crate::memory::FileLsa::defer_sync`] calls after Set LSA: queue one
    /// sync unless one is already waiting. False when the worker is gone.
    pub fn lsa_sync_request(&self) -> SyncRequest {
        let queue = self.clone();
        Box::new(move || {
            if queue.lsa_pending.swap(true, Ordering::AcqRel) {
                return true;
            }
            let queued = queue.send(Work::SyncLsa);
            if !queued {
                queue.lsa_pending.store(false, Ordering::Release);
            }
            queued
        })
    }
}

/// The running worker thread. Dropping it stops it (after the step in progress).
pub struct Worker {
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the thread owns.
struct Runner {
    shared: Arc<Mutex<Shared>>,
    mem: SharedDeviceMemory,
    lsa: Option<LsaSyncer>,
    lsa_pending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// Start the worker on `inbox` (the other end of `queue`). It completes jobs on
    /// `shared`, copies through `mem`, and syncs `lsa`. With `confine`, the thread
    /// installs its seccomp filter first, and this returns once it has.
    pub fn spawn(
        inbox: WorkInbox,
        queue: &WorkQueue,
        shared: Arc<Mutex<Shared>>,
        mem: SharedDeviceMemory,
        lsa: Option<LsaSyncer>,
        confine: bool,
    ) -> Result<Self, WorkerError> {
        let stop = Arc::new(AtomicBool::new(false));
        let runner = Runner {
            shared,
            mem,
            lsa,
            lsa_pending: inbox.lsa_pending,
            stop: stop.clone(),
        };
        let rx = inbox.rx;
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || {
                let confined = if confine {
                    seccomp::install(Role::Worker)
                } else {
                    Ok(())
                };
                let ok = confined.is_ok();
                // The receiver waits for this message; it cannot be gone.
                let _ = ready_tx.send(confined);
                if ok {
                    runner.serve(rx);
                }
            })
            .map_err(WorkerError::Thread)?;
        let worker = Self {
            tx: queue.tx.clone(),
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(WorkerError::Gone),
        }
    }

    /// Stop: the job in progress ends at its next step (a DMA transfer with
    /// ERR_ABORTED, a wipe with an error), queued work is dropped, the thread is
    /// joined.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!("the worker thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Runner {
    fn serve(mut self, rx: Receiver<Msg>) {
        while let Ok(Msg::Work(work)) = rx.recv() {
            if self.stopping() {
                break;
            }
            match work {
                Work::Dma { job, guest } => self.dma(job, guest),
                Work::Wipe(job) => self.wipe(job),
                Work::SyncLsa => self.sync_lsa(),
            }
        }
        debug!("worker: stopped");
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn dma(&mut self, job: DmaJob, guest: GuestRam) {
        let stop = self.stop.clone();
        let result = job.run(&mut self.mem, &guest, &|| stop.load(Ordering::Acquire));
        // The snapshot's mappings go before the lock is taken.
        drop(guest);
        let mut s = lock(&self.shared);
        if !s.device.complete_dma(job.id(), result) {
            debug!("worker: transfer {} was aborted by a reset", job.id());
        }
        s.settle();
    }

    fn wipe(&mut self, job: WipeJob) {
        let stop = self.stop.clone();
        let shared = self.shared.clone();
        let id = job.id();
        let result = job.run(
            &mut self.mem,
            &|| stop.load(Ordering::Acquire),
            &mut |done| lock(&shared).device.wipe_progress(id, done),
        );
        let mut s = lock(&self.shared);
        if !s.device.complete_wipe(id, result) {
            debug!("worker: wipe {id} was aborted by a reset");
        }
        s.settle();
    }

    fn sync_lsa(&mut self) {
        // Cleared first: a Set LSA from now on queues another sync.
        self.lsa_pending.store(false, Ordering::Release);
        match &self.lsa {
            Some(lsa) => {
                if let Err(e) = lsa.sync() {
                    warn!("{e}");
                }
            }
            None => debug!("worker: no LSA file to sync"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(inbox: &WorkInbox) -> usize {
        inbox.rx.try_iter().count()
    }

    #[test]
    fn lsa_sync_requests_coalesce_until_the_sync_starts() {
        let (queue, inbox) = queue();
        let request = queue.lsa_sync_request();
        assert!(request());
        assert!(request());
        assert!(request());
        assert_eq!(queued(&inbox), 1, "one sync for three Set LSA");
        // The worker clears the flag as the sync starts: the next one queues again.
        inbox.lsa_pending.store(false, Ordering::Release);
        assert!(request());
        assert_eq!(queued(&inbox), 1);
    }

    #[test]
    fn without_a_worker_the_lsa_syncs_itself() {
        let (queue, inbox) = queue();
        drop(inbox);
        let request = queue.lsa_sync_request();
        assert!(!request(), "nobody to sync it");
        assert!(!request(), "and the flag did not stick");
        assert!(!queue.send(Work::SyncLsa));
    }
}
