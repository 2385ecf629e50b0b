//! The firmware SDK in process: a daemon built with [`backend::Builder`], a vendor
//! firmware selected by `--firmware`, and an engine operation that runs on the
//! worker, off the device lock, while the client's register accesses are answered.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use accel_type2::{
    DeviceMemory, EngineOperation, Firmware, GuestMemory, MediaReadiness, OpError, OpRequest,
    ResetKind,
};
use backend::Builder;
use common::{enable_msix, read32, read64, register_msix, wait_eventfd, write32, write64};
use cxl_regs::layout;
use vmm_sys_util::eventfd::EventFd;

/// An operation that waits for the test's go, then reports the byte at SRC plus
/// LEN: it proves that it runs while the client is served.
struct Gated {
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl EngineOperation for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn run(
        &self,
        req: &OpRequest,
        mem: &mut dyn DeviceMemory,
        _guest: &dyn GuestMemory,
        stop: &dyn Fn() -> bool,
    ) -> Result<u64, OpError> {
        let (lock, cv) = &*self.gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            if stop() {
                return Err(OpError::Aborted);
            }
            open = cv.wait_timeout(open, Duration::from_millis(10)).unwrap().0;
        }
        let mut b = [0u8; 1];
        mem.read(req.src, &mut b)
            .map_err(|_| OpError::DeviceRange)?;
        Ok(u64::from(b[0]) + req.len)
    }
}

/// Media comes ready 50 ms after each conventional reset.
struct SlowMedia;
impl Firmware for SlowMedia {
    fn name(&self) -> &str {
        "slow-media"
    }
    fn media_ready(&mut self, kind: ResetKind) -> MediaReadiness {
        match kind {
            ResetKind::Conventional => MediaReadiness::ReadyAfter(50_000_000),
            _ => MediaReadiness::ReadyAfter(0),
        }
    }
}

#[test]
fn a_vendor_daemon_runs_its_firmware_and_its_engine_operation_off_the_lock() {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let builder = Builder::new()
        .name("vendor-test")
        .firmware("slow-media", "media 50 ms after reset", || {
            Box::new(SlowMedia)
        })
        .engine_operation(0x61, Gated { gate: gate.clone() });
    let dir = common::test_dir();
    let socket = dir.path().join("v.sock");
    let config = builder
        .config_from([
            "vendor-test",
            "--socket",
            socket.to_str().unwrap(),
            "--firmware",
            "slow-media",
            "--once",
        ])
        .unwrap();
    let stop = EventFd::new(0).unwrap();
    let daemon = builder.daemon(config, stop).unwrap();
    let serving = std::thread::spawn(move || daemon.run());
    let mut c = vfio_user::Client::new(&socket).unwrap();

    // The firmware: after the reset, Memory_Active (DVSEC Range 1 Size Low bit 1,
    // CXL r3.1 §8.1.3.9) is clear, then set within 50 ms (and a margin).
    c.reset().unwrap();
    let cfg = common::config_space(&mut c);
    let dv = common::find_dvsec(&cfg, 0).unwrap() as u64;
    let active = |c: &mut vfio_user::Client| read32(c, common::CONFIG, dv + 0x1c) & 2 != 0;
    let t = Instant::now();
    assert!(!active(&mut c));
    while !active(&mut c) {
        assert!(t.elapsed() < Duration::from_secs(2), "media never ready");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        t.elapsed() >= Duration::from_millis(40),
        "{:?}",
        t.elapsed()
    );

    // The engine operation: doorbell, then BUSY while it waits for the gate; the
    // client's accesses are answered meanwhile (the lock is not held).
    enable_msix(&mut c);
    let irq = register_msix(&mut c, u32::from(layout::MSIX_VEC_DMA));
    c.region_write(2, 0x100, &[7]).unwrap();
    let e = layout::BAR_ENGINE as u32;
    write64(&mut c, e, layout::engine::SRC, 0x100);
    write64(&mut c, e, layout::engine::LEN, 0x40);
    write32(
        &mut c,
        e,
        layout::engine::CONTROL,
        (0x61 << layout::engine::CONTROL_OP_SHIFT) | layout::engine::CONTROL_IRQ_ENABLE,
    );
    write32(&mut c, e, layout::engine::DOORBELL, 1);
    for _ in 0..20 {
        let st = read32(&mut c, e, layout::engine::STATUS);
        assert_eq!(st, layout::engine::STATUS_BUSY);
    }
    {
        let (lock, cv) = &*gate;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
    assert_eq!(
        wait_eventfd(
            std::os::fd::AsRawFd::as_raw_fd(&irq),
            Duration::from_secs(5)
        ),
        Some(1),
        "the completion interrupt"
    );
    assert_eq!(
        read32(&mut c, e, layout::engine::STATUS),
        layout::engine::STATUS_DONE
    );
    assert_eq!(read64(&mut c, e, layout::engine::RESULT), 7 + 0x40);
    drop(c);
    serving.join().unwrap().unwrap();
}
