//! Long work off the register path: DMA transfers and Sanitize's wipe queued as jobs
//! (`set_offload`), run through the same synchronous job functions a transport's
//! worker uses, and completed afterwards.

mod common;

use accel_type2::*;
use common::*;
use cxl_regs::layout::{self, engine::*};
use cxl_regs::mailbox as mb;

const GPA: u64 = 0x4000_0000;

/// A device with offload on, bus mastering and MSI-X enabled, and `len` bytes of
/// patterned guest RAM at `GPA`.
fn offloaded(len: usize) -> (AccelDevice, std::sync::Arc<FakeClock>, TestGuest) {
    let (mut d, clock) = device(small_config());
    d.set_offload(true);
    enable_bus_master(&mut d);
    enable_msix(&mut d);
    let guest = TestGuest::new(GPA, len);
    let data: Vec<u8> = (0..len).map(|i| (i * 13 + i / 512) as u8).collect();
    guest.fill(GPA, &data);
    (d, clock, guest)
}

/// Program a transfer guest -> device and ring the doorbell.
fn ring(d: &mut AccelDevice, guest: &TestGuest, src: u64, dst: u64, len: u64, control: u32) {
    bar_w64(d, 4, SRC, src);
    bar_w64(d, 4, DST, dst);
    bar_w64(d, 4, LEN, len);
    bar_w32(d, 4, CONTROL, control);
    d.bar_write(4, DOORBELL, &1u32.to_le_bytes(), guest);
}

/// The one DMA job the device queued.
fn dma_job(d: &mut AccelDevice) -> DmaJob {
    let mut jobs = d.take_jobs();
    assert_eq!(jobs.len(), 1, "one job queued: {jobs:?}");
    match jobs.pop() {
        Some(Job::Dma(j)) => j,
        other => panic!("expected a DMA job, got {other:?}"),
    }
}

/// Run a job as a transport's worker would: on its own handle of device memory.
fn run_on(d: &AccelDevice, job: &DmaJob, guest: &TestGuest) -> (Result<u64, u32>, VecMemory) {
    let mut mem = VecMemory::new(d.memory().size() as usize);
    let r = job.run(&mut mem, guest, &|| false);
    (r, mem)
}

#[test]
fn busy_is_visible_while_an_offloaded_transfer_runs() {
    let (mut d, _, guest) = offloaded(1 << 20);
    ring(&mut d, &guest, GPA, 0x10_0000, 1 << 20, CONTROL_IRQ_ENABLE);
    assert_eq!(bar_r32(&mut d, 4, STATUS), STATUS_BUSY);
    assert!(d.status().dma_busy);
    assert!(d.take_interrupts().is_empty(), "no completion yet");
    let job = dma_job(&mut d);
    assert_eq!((job.len(), job.to_guest()), (1 << 20, false));
    // Nothing was copied by the doorbell write.
    let mut b = [0u8; 16];
    d.memory().read(0x10_0000, &mut b).unwrap();
    assert_eq!(b, [0; 16]);
    // The device keeps answering while the job is out.
    assert_eq!(bar_r32(&mut d, 4, ID), ID_VALUE);
    assert_eq!(bar_r32(&mut d, 4, STATUS), STATUS_BUSY);
    let (r, mem) = run_on(&d, &job, &guest);
    assert_eq!(r, Ok(0));
    let mut got = vec![0u8; 1 << 20];
    mem.read(0x10_0000, &mut got).unwrap();
    assert_eq!(got, guest.get(GPA, 1 << 20));
    assert!(d.complete_dma(job.id(), r));
    assert_eq!(bar_r32(&mut d, 4, STATUS), STATUS_DONE);
    assert!(!d.status().dma_busy);
    assert_eq!(bar_r32(&mut d, 4, COMPLETIONS), 1);
}

#[test]
fn doorbell_and_programming_while_busy_are_ignored_and_counted() {
    let (mut d, _, guest) = offloaded(8192);
    ring(&mut d, &guest, GPA, 0x2000, 4096, 0);
    let job = dma_job(&mut d);
    // A second transfer programmed and rung while the first runs.
    ring(&mut d, &guest, GPA + 4096, 0x9000, 64, CONTROL_DIR_TO_GUEST);
    assert!(d.take_jobs().is_empty(), "no second job");
    assert_eq!(bar_r64(&mut d, 4, SRC), GPA, "SRC of the running transfer");
    assert_eq!(bar_r64(&mut d, 4, DST), 0x2000);
    assert_eq!(bar_r64(&mut d, 4, LEN), 4096);
    assert_eq!(bar_r32(&mut d, 4, CONTROL), 0);
    assert_eq!(bar_r32(&mut d, 4, STATUS), STATUS_BUSY);
    let st = d.status();
    // Counted per dword: three 64-bit registers and CONTROL.
    assert_eq!((st.dma_ignored_doorbells, st.dma_ignored_writes), (1, 7));
    // A STATUS write while busy clears nothing (there is nothing to clear).
    bar_w32(&mut d, 4, STATUS, !0);
    assert_eq!(bar_r32(&mut d, 4, STATUS), STATUS_BUSY);
    let (r, _) = run_on(&d, &job, &guest);
    assert!(d.complete_dma(job.id(), r));
    assert_eq!(bar_r32(&mut d, 4, STATUS), STATUS_DONE);
    // Idle again: programming takes effect.
    bar_w64(&mut d, 4, SRC, 0x1234);
    assert_eq!(bar_r64(&mut d, 4, SRC), 0x1234);
}

#[test]
fn reset_aborts_a_running_transfer_and_drops_its_completion() {
    let (mut d, _, guest) = offloaded(1 << 20);
    ring(&mut d, &guest, GPA, 0, 1 << 20, CONTROL_IRQ_ENABLE);
    let job = dma_job(&mut d);
    d.reset();
    assert!(job.is_cancelled(), "the reset raises the cancel flag");
    assert_eq!(bar_r32(&mut d, 4, STATUS), 0);
    assert_eq!(bar_r64(&mut d, 4, SRC), 0);
    // The worker stops at its next step and copies nothing more.
    let (r, mem) = run_on(&d, &job, &guest);
    assert_eq!(r, Err(ERR_ABORTED));
    let mut b = [0u8; 64];
    mem.read(0, &mut b).unwrap();
    assert_eq!(b, [0; 64]);
    // Its completion, when it comes, is ignored.
    assert!(!d.complete_dma(job.id(), r));
    assert!(!d.complete_dma(job.id(), Ok(0)));
    assert_eq!(bar_r32(&mut d, 4, STATUS), 0);
    assert_eq!(bar_r32(&mut d, 4, COMPLETIONS), 0);
    assert!(d.take_interrupts().is_empty());
    let st = d.status();
    assert_eq!((st.dma_aborted, st.dma_stale_completions), (1, 2));
    assert!(!st.dma_busy);
}

#[test]
fn flr_aborts_a_running_transfer() {
    let (mut d, _, guest) = offloaded(1 << 20);
    ring(&mut d, &guest, GPA, 0, 1 << 20, CONTROL_IRQ_ENABLE);
    let job = dma_job(&mut d);
    let exp = find_cap(&mut d, 0x10).unwrap();
    let devctl = cfg_r16(&mut d, exp + 8);
    cfg_w16(&mut d, exp + 8, devctl | 0x8000);
    assert!(job.is_cancelled());
    assert_eq!(bar_r32(&mut d, 4, STATUS), 0);
    assert!(!d.complete_dma(job.id(), Ok(0)));
    assert!(d.take_interrupts().is_empty());
    // The engine works again after the FLR.
    enable_bus_master(&mut d);
    ring(&mut d, &guest, GPA, 0, 64, 0);
    let next = dma_job(&mut d);
    assert_ne!(next.id(), job.id());
    assert!(!next.is_cancelled());
}

#[test]
fn stale_completion_is_ignored() {
    let (mut d, _, guest) = offloaded(4096);
    ring(&mut d, &guest, GPA, 0, 4096, CONTROL_IRQ_ENABLE);
    let job = dma_job(&mut d);
    assert!(!d.complete_dma(job.id().wrapping_add(1), Ok(0)));
    assert!(!d.complete_dma(job.id().wrapping_sub(1), Err(ERR_GUEST_RANGE)));
    assert_eq!(bar_r32(&mut d, 4, STATUS), STATUS_BUSY);
    assert!(d.take_interrupts().is_empty());
    assert!(d.complete_dma(job.id(), Ok(0)));
    assert!(!d.complete_dma(job.id(), Ok(0)), "a second completion");
    assert_eq!(bar_r32(&mut d, 4, STATUS), STATUS_DONE);
    assert_eq!(d.status().dma_stale_completions, 3);
}

#[test]
fn the_completion_interrupt_comes_with_the_result() {
    let (mut d, _, guest) = offloaded(4096);
    // MSI-X: the DMA vector once the result is posted, not at the doorbell.
    ring(&mut d, &guest, GPA, 0, 4096, CONTROL_IRQ_ENABLE);
    let job = dma_job(&mut d);
    assert!(d.take_interrupts().is_empty());
    let (r, _) = run_on(&d, &job, &guest);
    d.complete_dma(job.id(), r);
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_DMA)]
    );
    // A failure found by the worker signals too, with its code.
    bar_w32(&mut d, 4, STATUS, STATUS_DONE);
    ring(&mut d, &guest, GPA + 2048, 0, 4096, CONTROL_IRQ_ENABLE);
    let job = dma_job(&mut d);
    let (r, _) = run_on(&d, &job, &guest);
    assert_eq!(r, Err(ERR_GUEST_RANGE), "runs off the end of guest RAM");
    d.complete_dma(job.id(), r);
    assert_eq!(
        bar_r32(&mut d, 4, STATUS),
        STATUS_ERROR | (ERR_GUEST_RANGE << STATUS_ERR_SHIFT)
    );
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_DMA)]
    );
    // Without the interrupt enabled at the doorbell, none.
    bar_w32(&mut d, 4, STATUS, STATUS_ERROR);
    ring(&mut d, &guest, GPA, 0, 64, 0);
    let job = dma_job(&mut d);
    d.complete_dma(job.id(), Ok(0));
    assert!(d.take_interrupts().is_empty());
}

#[test]
fn intx_follows_the_offloaded_completion() {
    let (mut d, _) = device(small_config());
    d.set_offload(true);
    enable_bus_master(&mut d);
    let guest = TestGuest::new(GPA, 4096);
    ring(&mut d, &guest, GPA, 0, 64, CONTROL_IRQ_ENABLE);
    let job = dma_job(&mut d);
    assert_eq!(
        cfg_r16(&mut d, 6) & 0x8,
        0,
        "no Interrupt Status while busy"
    );
    assert!(d.take_interrupts().is_empty());
    d.complete_dma(job.id(), Ok(0));
    assert_eq!(d.take_interrupts(), vec![Interrupt::Intx]);
    assert_ne!(cfg_r16(&mut d, 6) & 0x8, 0);
    bar_w32(&mut d, 4, STATUS, STATUS_DONE);
    assert_eq!(cfg_r16(&mut d, 6) & 0x8, 0);
}

#[test]
fn checks_that_move_no_data_still_fail_at_the_doorbell() {
    let (mut d, _, guest) = offloaded(4096);
    // Poison in the device-memory source: refused at once, no job.
    d.inject_poison(0x1000, 64).unwrap();
    ring(
        &mut d,
        &guest,
        0x1000,
        GPA,
        64,
        CONTROL_DIR_TO_GUEST | CONTROL_IRQ_ENABLE,
    );
    assert!(d.take_jobs().is_empty());
    assert_eq!(
        bar_r32(&mut d, 4, STATUS),
        STATUS_ERROR | (ERR_POISON << STATUS_ERR_SHIFT)
    );
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_DMA)]
    );
    // Bus mastering off.
    let cmd = cfg_r16(&mut d, 4);
    cfg_w16(&mut d, 4, cmd & !0x4);
    ring(&mut d, &guest, GPA, 0, 64, 0);
    assert!(d.take_jobs().is_empty());
    assert_eq!(
        bar_r32(&mut d, 4, STATUS),
        STATUS_ERROR | (ERR_BUS_MASTER << STATUS_ERR_SHIFT)
    );
}

// ---- Sanitize's wipe ------------------------------------------------------------

/// Start Sanitize through the mailbox registers, background interrupt enabled.
fn start_sanitize(d: &mut AccelDevice) {
    let m = layout::MAILBOX_OFFSET;
    bar_w32(d, 0, m + 4, mb::CTRL_BG_IRQ);
    bar_w64(d, 0, m + 8, u64::from(mb::OP_SANITIZE));
    bar_w32(d, 0, m + 4, mb::CTRL_BG_IRQ | mb::CTRL_DOORBELL);
    let st = bar_r64(d, 0, m + 0x10);
    assert_eq!((st >> 32) as u16, mb::RC_BACKGROUND_STARTED);
}

/// Background Command Status: (opcode, percent, return code).
fn bg(d: &mut AccelDevice) -> (u16, u8, u16) {
    let v = bar_r64(d, 0, layout::MAILBOX_OFFSET + 0x18);
    (v as u16, ((v >> 16) & 0x7f) as u8, (v >> 32) as u16)
}

fn wipe_job(d: &mut AccelDevice) -> WipeJob {
    let mut jobs = d.take_jobs();
    assert_eq!(jobs.len(), 1, "one job queued: {jobs:?}");
    match jobs.pop() {
        Some(Job::Wipe(j)) => j,
        other => panic!("expected a wipe job, got {other:?}"),
    }
}

#[test]
fn sanitize_wipes_on_the_worker_and_completes_after_it() {
    let (mut d, clock) = device(small_config());
    d.set_offload(true);
    enable_msix(&mut d);
    d.inject_poison(0x40, 64).unwrap();
    start_sanitize(&mut d);
    let job = wipe_job(&mut d);
    assert_eq!(job.len(), 256 * MIB);
    // The doorbell did not wipe; the command runs in the background.
    assert_eq!(bar_r64(&mut d, 0, layout::MAILBOX_OFFSET + 0x10) & 1, 1);
    assert_eq!(bg(&mut d), (mb::OP_SANITIZE, 0, 0));
    // Progress from the worker shows, bounded by the elapsed share of the duration.
    clock.advance(150_000_000);
    d.wipe_progress(job.id(), 128 * MIB);
    assert_eq!(bg(&mut d), (mb::OP_SANITIZE, 50, 0));
    // The time is up, the wipe is not: still running, no interrupt.
    clock.advance(200_000_000);
    d.poll();
    assert_eq!(d.next_deadline(), None);
    assert_eq!(bg(&mut d), (mb::OP_SANITIZE, 50, 0));
    assert!(d.take_interrupts().is_empty());
    // The worker finishes: completion and its interrupt, poison gone.
    let mut mem = VecMemory(vec![0xaa; 256 * MIB as usize]);
    let mut seen = Vec::new();
    let r = job.run(&mut mem, &|| false, &mut |n| seen.push(n));
    assert_eq!(r, Ok(()));
    assert_eq!(seen.last(), Some(&(256 * MIB)));
    assert!(mem.0.iter().all(|&b| b == 0));
    assert!(d.complete_wipe(job.id(), r));
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_MAILBOX)]
    );
    assert_eq!(bg(&mut d), (mb::OP_SANITIZE, 100, mb::RC_SUCCESS));
    assert!(d.mailbox().unwrap().poison_list().is_empty());
    assert!(!d.complete_wipe(job.id(), Ok(())), "only once");
}

#[test]
fn a_failed_wipe_fails_sanitize() {
    let (mut d, clock) = device(small_config());
    d.set_offload(true);
    start_sanitize(&mut d);
    let job = wipe_job(&mut d);
    clock.advance(1_000_000_000);
    let err = MemoryError::Unmapped { addr: 0, len: 1 };
    assert!(d.complete_wipe(job.id(), Err(WipeError::Memory(err))));
    assert_eq!(bg(&mut d), (mb::OP_SANITIZE, 100, mb::RC_INTERNAL_ERROR));
}

#[test]
fn reset_aborts_the_wipe() {
    let (mut d, clock) = device(small_config());
    d.set_offload(true);
    start_sanitize(&mut d);
    let job = wipe_job(&mut d);
    d.reset();
    assert!(job.is_cancelled());
    let mut mem = VecMemory(vec![0xaa; 256 * MIB as usize]);
    assert_eq!(
        job.run(&mut mem, &|| false, &mut |_| {}),
        Err(WipeError::Aborted)
    );
    assert_eq!(mem.0[0], 0xaa, "stopped before its first step");
    clock.advance(1_000_000_000);
    assert!(!d.complete_wipe(job.id(), Ok(())));
    assert_eq!(bar_r64(&mut d, 0, layout::MAILBOX_OFFSET + 0x10) & 1, 0);
    assert!(d.take_interrupts().is_empty());
}

#[test]
fn sanitize_without_offload_wipes_within_the_doorbell() {
    let (mut d, clock) = device(small_config());
    d.bar_write(2, 0x1000, &[0xaa; 64], &NoGuestMemory);
    start_sanitize(&mut d);
    assert!(d.take_jobs().is_empty());
    let mut b = [0xffu8; 64];
    d.bar_read(2, 0x1000, &mut b);
    assert_eq!(b, [0; 64]);
    // Still at least the configured duration before it completes.
    assert_eq!(bar_r64(&mut d, 0, layout::MAILBOX_OFFSET + 0x10) & 1, 1);
    clock.advance(d.next_deadline().expect("deadline"));
    d.poll();
    assert_eq!(bg(&mut d), (mb::OP_SANITIZE, 100, mb::RC_SUCCESS));
}

// ---- CXL Reset with Mem Clr ------------------------------------------------------

/// Start a CXL Reset with Mem Clr and let its time run out; returns the DVSEC offset
/// and the wipe job it hands out.
fn cxl_reset_mem_clr(d: &mut AccelDevice, clock: &FakeClock) -> (u64, WipeJob) {
    let dvsec = find_dvsec(d, 0).expect("CXL Device DVSEC");
    // Control2 (CXL r3.1 §8.1.3.4): Mem Clr Enable (bit 3), Initiate CXL Reset (bit 2).
    cfg_w16(d, dvsec + 0x10, 0x8 | 0x4);
    assert!(d.cxl_reset_in_progress());
    clock.advance(1_000_000_000);
    d.poll();
    let job = wipe_job(d);
    assert_eq!(job.len(), 256 * MIB);
    (dvsec, job)
}

#[test]
fn cxl_reset_mem_clr_wipes_on_the_worker_and_ends_after_it() {
    let (mut d, clock) = device(small_config());
    d.set_offload(true);
    d.bar_write(2, 0x1000, &[0xaa; 64], &NoGuestMemory);
    let (dvsec, job) = cxl_reset_mem_clr(&mut d, &clock);
    // Under way until the wipe ends: Status2 (+0x12) has neither Complete nor
    // Error, BAR0 stays silent, and no deadline is left to spin on.
    assert!(d.cxl_reset_in_progress());
    assert_eq!(cfg_r16(&mut d, dvsec + 0x12) & 0x6, 0);
    assert_eq!(bar_r32(&mut d, 0, layout::HDM_OFFSET), 0xffff_ffff);
    assert_eq!(d.next_deadline(), None);
    let mut mem = VecMemory(vec![0xaa; 256 * MIB as usize]);
    let r = job.run(&mut mem, &|| false, &mut |_| {});
    assert_eq!(r, Ok(()));
    assert!(d.complete_wipe(job.id(), r));
    assert_eq!(
        cfg_r16(&mut d, dvsec + 0x12) & 0x6,
        0x2,
        "CXL Reset Complete"
    );
    assert!(!d.cxl_reset_in_progress());
    assert_ne!(bar_r32(&mut d, 0, layout::HDM_OFFSET), 0xffff_ffff);
}

#[test]
fn a_failed_mem_clr_wipe_ends_the_cxl_reset_with_error() {
    let (mut d, clock) = device(small_config());
    d.set_offload(true);
    let (dvsec, job) = cxl_reset_mem_clr(&mut d, &clock);
    let err = MemoryError::Unmapped { addr: 0, len: 1 };
    assert!(d.complete_wipe(job.id(), Err(WipeError::Memory(err))));
    assert_eq!(cfg_r16(&mut d, dvsec + 0x12) & 0x6, 0x4, "CXL Reset Error");
}

#[test]
fn a_conventional_reset_aborts_the_mem_clr_wipe_and_flr_does_not() {
    let (mut d, clock) = device(small_config());
    d.set_offload(true);
    let (_, job) = cxl_reset_mem_clr(&mut d, &clock);
    // An FLR leaves a CXL Reset under way, and so its wipe.
    let exp = find_cap(&mut d, 0x10).unwrap();
    let devctl = cfg_r16(&mut d, exp + 8);
    cfg_w16(&mut d, exp + 8, devctl | 0x8000);
    assert!(!job.is_cancelled());
    assert!(d.cxl_reset_in_progress());
    d.reset();
    assert!(job.is_cancelled());
    assert!(!d.cxl_reset_in_progress());
    assert!(!d.complete_wipe(job.id(), Ok(())));
}
