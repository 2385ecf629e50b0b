//! Long work off the device lock, end to end: a 1 GiB DMA transfer runs on the
//! daemon's worker while trapped register reads and the control socket keep being
//! answered, STATUS reads BUSY meanwhile, and a reset or FLR aborts it.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
use cxl_regs::layout::{self, engine::*};
use cxl_regs::{hdm, pci};

const GIB: u64 = 1 << 30;
const GPA: u64 = 0x1_0000_0000;

/// Program a guest -> device transfer of `len` bytes from GPA to DPA 0, with the
/// completion interrupt, and ring the doorbell. Returns how long the doorbell write
/// took.
fn start_dma(c: &mut vfio_user::Client, len: u64) -> Duration {
    write32(c, BAR4, STATUS, STATUS_DONE | STATUS_ERROR);
    write64(c, BAR4, SRC, GPA);
    write64(c, BAR4, DST, 0);
    write64(c, BAR4, LEN, len);
    write32(c, BAR4, CONTROL, CONTROL_IRQ_ENABLE);
    let t = Instant::now();
    write32(c, BAR4, DOORBELL, 1);
    t.elapsed()
}

/// Marks at the start, the middle and the end of guest RAM, to find in device
/// memory after the copy.
fn marks() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, pattern(1, 4096)),
        (GIB / 2 + 12_345, pattern(2, 777)),
        (GIB - 4096, pattern(3, 4096)),
    ]
}

#[test]
fn a_long_dma_leaves_registers_and_the_control_socket_answering() {
    let b = Backend::start(&["--memory-size", "1G"]);
    let mut c = b.client();
    let ram = map_guest_ram(&mut c, GPA, GIB as usize);
    for (off, data) in marks() {
        ram.write(off as usize, &data);
    }
    enable_msix(&mut c);
    let done = register_msix(&mut c, u32::from(layout::MSIX_VEC_DMA));
    let hdm_cap = layout::HDM_OFFSET + u64::from(hdm::CAPABILITY);
    let hdm_cap_value = read32(&mut c, BAR0, hdm_cap);

    let doorbell = start_dma(&mut c, GIB);
    // The doorbell write came back before the copy ended: BUSY is visible.
    let st = read32(&mut c, BAR4, STATUS);
    assert_eq!(
        st, STATUS_BUSY,
        "STATUS right after the doorbell (the doorbell write took {doorbell:?})"
    );
    // A trapped register read and the control socket are answered meanwhile; the
    // transfer is still running after both, so they were answered during it.
    assert_eq!(read32(&mut c, BAR0, hdm_cap), hdm_cap_value);
    let t = Instant::now();
    let status = b.ctl(r#"{"cmd":"status"}"#);
    let ctl_time = t.elapsed();
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(
        status["device"]["dma_busy"], true,
        "status taken while the transfer ran ({ctl_time:?}): {status}"
    );
    assert_eq!(read32(&mut c, BAR4, STATUS), STATUS_BUSY);
    // Programming and a second doorbell while busy are ignored.
    write64(&mut c, BAR4, SRC, 0xdead_0000);
    write32(&mut c, BAR4, DOORBELL, 1);
    assert_eq!(read64(&mut c, BAR4, SRC), GPA);
    // Keep reading until it ends.
    let start = Instant::now();
    let mut reads_while_busy = 0u32;
    let st = loop {
        let st = read32(&mut c, BAR4, STATUS);
        if st & STATUS_BUSY == 0 {
            break st;
        }
        reads_while_busy += 1;
        assert!(
            start.elapsed() < Duration::from_secs(50),
            "the transfer never finished"
        );
        assert_eq!(read32(&mut c, BAR0, hdm_cap), hdm_cap_value);
    };
    assert_eq!(st, STATUS_DONE, "status {st:#x}");
    assert!(
        reads_while_busy >= 10,
        "only {reads_while_busy} reads while the transfer ran"
    );
    // The completion interrupt came from the worker.
    assert!(
        wait_eventfd(done.as_raw_fd(), Duration::from_secs(5)).is_some(),
        "completion MSI-X"
    );
    for (off, data) in marks() {
        let mut got = vec![0u8; data.len()];
        c.region_read(BAR2, off, &mut got).unwrap();
        assert_eq!(got, data, "device memory at {off:#x}");
    }
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["device"]["dma_busy"], false, "{st}");
    assert_eq!(st["device"]["dma_bytes"], GIB, "{st}");
    assert_eq!(st["device"]["dma_ignored_doorbells"], 1, "{st}");
    assert_eq!(read32(&mut c, BAR4, COMPLETIONS), 1);
}

/// Wait until the daemon's status shows `key` in "device" equal to `want`.
fn wait_status(b: &Backend, key: &str, want: u64) {
    let start = Instant::now();
    loop {
        let st = b.ctl(r#"{"cmd":"status"}"#);
        if st["device"][key] == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(50),
            "{key} never reached {want}: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reset_and_flr_abort_a_running_dma() {
    let b = Backend::start(&["--memory-size", "1G"]);
    let mut c = b.client();
    let ram = map_guest_ram(&mut c, GPA, GIB as usize);
    let (last_off, last) = marks().pop().unwrap();
    ram.write(last_off as usize, &last);
    enable_msix(&mut c);
    let done = register_msix(&mut c, u32::from(layout::MSIX_VEC_DMA));

    // DEVICE_RESET (a conventional reset) while the transfer runs.
    start_dma(&mut c, GIB);
    assert_eq!(read32(&mut c, BAR4, STATUS), STATUS_BUSY);
    c.reset().unwrap();
    assert_eq!(read32(&mut c, BAR4, STATUS), 0, "aborted at once");
    wait_status(&b, "dma_stale_completions", 1);
    assert_eq!(read32(&mut c, BAR4, STATUS), 0, "no late completion");
    assert_eq!(read32(&mut c, BAR4, COMPLETIONS), 0);
    assert!(wait_eventfd(done.as_raw_fd(), Duration::from_millis(200)).is_none());
    let mut got = vec![0u8; last.len()];
    c.region_read(BAR2, last_off, &mut got).unwrap();
    assert_ne!(got, last, "the end of the transfer was never copied");

    // FLR through the PCIe capability's Device Control, the same.
    enable_msix(&mut c);
    start_dma(&mut c, GIB);
    assert_eq!(read32(&mut c, BAR4, STATUS), STATUS_BUSY);
    let cfg = config_space(&mut c);
    let exp = find_cap(&cfg, pci::CAP_ID_EXP).expect("PCIe capability");
    let devctl = read16(&mut c, CONFIG, (exp + 8) as u64);
    write16(&mut c, CONFIG, (exp + 8) as u64, devctl | 0x8000);
    assert_eq!(read32(&mut c, BAR4, STATUS), 0);
    wait_status(&b, "dma_stale_completions", 2);
    assert_eq!(read32(&mut c, BAR4, STATUS), 0);
    assert!(wait_eventfd(done.as_raw_fd(), Duration::from_millis(200)).is_none());
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["device"]["dma_aborted"], 2, "{st}");
    assert_eq!(st["device"]["dma_completions"], 0, "{st}");

    // The engine works normally afterwards.
    enable_msix(&mut c);
    let s = dma(&mut c, GPA + last_off, 0x1000, last.len() as u64, false);
    assert_eq!(s, STATUS_DONE);
    c.region_read(BAR2, 0x1000, &mut got).unwrap();
    assert_eq!(got, last);
}

/// Sanitize's wipe runs on the worker; the command still completes, with its
/// interrupt, while the client sends nothing at all (the daemon wakes up by itself
/// at the end of the command's shortest duration, or when the wipe ends after it).
#[test]
fn sanitize_completes_with_its_interrupt_while_the_client_is_silent() {
    use cxl_regs::mailbox as mbx;
    let b = Backend::start(&["--memory-size", "512M"]);
    let mut c = b.client();
    // All of device memory allocated (through the BAR2 mapping, as the guest would),
    // so that the wipe takes a while.
    let bar2 = map_region(&c, BAR2, 0, 512 << 20);
    let fill = vec![0x5au8; 1 << 20];
    for mib in 0..512 {
        bar2.write(mib << 20, &fill);
    }
    drop(bar2);
    enable_msix(&mut c);
    let irq = register_msix(&mut c, u32::from(layout::MSIX_VEC_MAILBOX));
    let mb = layout::MAILBOX_OFFSET;
    write32(&mut c, BAR0, mb + 4, mbx::CTRL_BG_IRQ);
    write64(&mut c, BAR0, mb + 8, u64::from(mbx::OP_SANITIZE));
    // The doorbell is the last message until the interrupt: the daemon has to wake
    // up by itself when the wipe has ended and the shortest duration has passed.
    let t = Instant::now();
    write32(&mut c, BAR0, mb + 4, mbx::CTRL_BG_IRQ | mbx::CTRL_DOORBELL);
    assert!(
        wait_eventfd(irq.as_raw_fd(), Duration::from_secs(10)).is_some(),
        "no background-completion interrupt"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "completed before its shortest duration (200 ms): {:?}",
        t.elapsed()
    );
    let status = read64(&mut c, BAR0, mb + 0x10);
    assert_eq!((status >> 32) as u16, mbx::RC_BACKGROUND_STARTED);
    assert_eq!(status & 1, 0, "no longer running");
    let bg = read64(&mut c, BAR0, mb + 0x18);
    assert_eq!(bg & 0xffff, u64::from(mbx::OP_SANITIZE));
    assert_eq!((bg >> 16) & 0x7f, 100, "percent complete");
    assert_eq!(bg >> 32, 0, "return code");
    for off in [0, 0x1000, 300 << 20, (512 << 20) - 4096] {
        let mut got = vec![0xffu8; 4096];
        c.region_read(BAR2, off, &mut got).unwrap();
        assert!(got.iter().all(|&x| x == 0), "not wiped at {off:#x}");
    }
}
