//! Long work the device model hands to its transport, so that it runs off the
//! device lock ([`crate::AccelDevice::set_offload`]): DMA transfers
//! ([`crate::engine::DmaJob`]) and the wipe of device memory that Sanitize and a
//! CXL Reset with Mem Clr do ([`WipeJob`]).
//!
//! A job carries all it needs besides device memory (and, for DMA, guest RAM), which
//! the runner supplies. Its result goes back through
//! [`crate::AccelDevice::complete_dma`] or [`crate::AccelDevice::complete_wipe`],
//! which ignore the results of jobs a reset has aborted. Each job has a cancel flag
//! that a reset raises; the runners check it between steps.

use thiserror::Error;

use crate::engine::{CancelFlag, DmaJob};
use crate::{DeviceMemory, MemoryError};

/// Bytes zeroed per step of a wipe (the cancel flag is checked and the progress
/// reported between steps).
pub const WIPE_CHUNK: u64 = 64 << 20;

/// One piece of long work.
#[derive(Debug, Clone)]
pub enum Job {
    Dma(DmaJob),
    Wipe(WipeJob),
}

impl Job {
    /// Whether a reset has aborted it.
    pub fn is_cancelled(&self) -> bool {
        match self {
            Job::Dma(j) => j.is_cancelled(),
            Job::Wipe(j) => j.is_cancelled(),
        }
    }
}

/// Why a wipe did not finish.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WipeError {
    #[error("the wipe was aborted")]
    Aborted,
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Zero all of device memory (Sanitize, CXL r3.1 §8.2.9.9.5.1; CXL Reset with Mem
/// Clr, §9.7.1).
#[derive(Debug, Clone)]
pub struct WipeJob {
    id: u64,
    len: u64,
    cancel: CancelFlag,
}

impl WipeJob {
    pub(crate) fn new(id: u64, len: u64, cancel: CancelFlag) -> Self {
        Self { id, len, cancel }
    }
    /// The number [`crate::AccelDevice::complete_wipe`] matches the result against.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Bytes to zero, from DPA 0.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether a reset has aborted the job.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Zero device memory [`WIPE_CHUNK`] bytes at a time with
    /// [`DeviceMemory::zero`], calling `progress(bytes_done)` after each step, and
    /// stopping early when the job is cancelled or `stop` says so.
    pub fn run(
        &self,
        mem: &mut dyn DeviceMemory,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), WipeError> {
        let mut at = 0u64;
        while at < self.len {
            if self.is_cancelled() || stop() {
                return Err(WipeError::Aborted);
            }
            let n = (self.len - at).min(WIPE_CHUNK);
            mem.zero(at, n)?;
            at += n;
            progress(at);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VecMemory;

    #[test]
    fn wipe_zeroes_in_steps_and_stops_when_cancelled() {
        let size = 3 * WIPE_CHUNK as usize / 2;
        let mut mem = VecMemory(vec![0xaa; size]);
        let cancel = CancelFlag::new();
        let job = WipeJob::new(1, size as u64, cancel.clone());
        let mut steps = Vec::new();
        job.run(&mut mem, &|| false, &mut |d| steps.push(d))
            .unwrap();
        assert_eq!(steps, vec![WIPE_CHUNK, size as u64]);
        assert!(mem.0.iter().all(|&b| b == 0));

        // Cancelled after the first step: the second half stays.
        mem.0.fill(0xaa);
        let mut steps = Vec::new();
        let r = job.run(&mut mem, &|| false, &mut |d| {
            steps.push(d);
            cancel.cancel();
        });
        assert_eq!(r, Err(WipeError::Aborted));
        assert_eq!(steps, vec![WIPE_CHUNK]);
        assert_eq!(mem.0[WIPE_CHUNK as usize - 1], 0);
        assert_eq!(mem.0[WIPE_CHUNK as usize], 0xaa);
    }
}
