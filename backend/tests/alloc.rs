//! No allocation on the register path: once a client is connected, a trapped
//! register read or write (REGION_READ/WRITE of a few bytes of BAR0, BAR4 or config
//! space) allocates nothing in the daemon (the vfio-user server, the device adapter
//! and the model), whether the server waits for messages in poll or, with a
//! Stopper, in recvmsg.
//!
//! A counting global allocator sees every allocation of this process: the daemon
//! runs in it (as `Builder::daemon` embeds it), this file holds one test, so that
//! no other test allocates meanwhile, and its client builds its messages on the
//! stack.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use backend::vfio_user::Stopper;
use backend::Builder;
use cxl_regs::{hdm, layout, pci};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;

/// Allocations (alloc, alloc_zeroed, realloc) since the process began.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; counting has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` holds for System too.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above; `ptr` came from this allocator, that is, from System.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One request of `body` (at most 48 bytes) and its reply (at most 512), on the stack. Returns
/// the reply's error flag and its first data word (for a read).
fn request(s: &mut UnixStream, id: u16, command: u16, body: &[u8]) -> (bool, u32) {
    let mut msg = [0u8; 64];
    let size = 16 + body.len();
    msg[0..2].copy_from_slice(&id.to_le_bytes());
    msg[2..4].copy_from_slice(&command.to_le_bytes());
    msg[4..8].copy_from_slice(&(size as u32).to_le_bytes());
    msg[16..size].copy_from_slice(body);
    s.write_all(&msg[..size]).unwrap();
    let mut reply = [0u8; 512];
    s.read_exact(&mut reply[..16]).unwrap();
    let len = u32::from_le_bytes(reply[4..8].try_into().unwrap()) as usize;
    s.read_exact(&mut reply[16..len]).unwrap();
    assert_eq!(u16::from_le_bytes([reply[0], reply[1]]), id);
    let error = u32::from_le_bytes(reply[8..12].try_into().unwrap()) & (1 << 5) != 0;
    let word = if len >= 36 {
        u32::from_le_bytes(reply[32..36].try_into().unwrap())
    } else {
        0
    };
    (error, word)
}

/// A REGION_READ/WRITE body: offset, region, count, then the data.
fn access(region: u32, offset: u64, count: u32, data: &[u8]) -> ([u8; 24], usize) {
    let mut b = [0u8; 24];
    b[0..8].copy_from_slice(&offset.to_le_bytes());
    b[8..12].copy_from_slice(&region.to_le_bytes());
    b[12..16].copy_from_slice(&count.to_le_bytes());
    b[16..16 + data.len()].copy_from_slice(data);
    (b, 16 + data.len())
}

const REGION_READ: u16 = 9;
const REGION_WRITE: u16 = 10;

#[test]
fn register_accesses_allocate_nothing() {
    for blocking in [false, true] {
        let dir = common::test_dir();
        let socket = dir.path().join("a.sock");
        let builder = Builder::new();
        let config = builder
            .config_from(["alloc-test", "--socket", socket.to_str().unwrap(), "--once"])
            .unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stopper = Stopper::new(&stop).unwrap();
        let mut daemon = builder.daemon(config, stop).unwrap();
        if blocking {
            daemon.set_stopper(stopper.clone());
        }
        let serving = std::thread::spawn(move || daemon.run());
        let mut s = UnixStream::connect(&socket).unwrap();
        let mut version = [0u8; 7];
        version[4..7].copy_from_slice(b"{}\0");
        assert!(!request(&mut s, 0, 1, &version).0);

        // HDM decoder 1's Base Low (bits 31:28 hold the base: CXL r3.1 §8.2.4.20.3), the
        // Command register in config space, the DMA engine's ID in BAR4.
        let base_lo = layout::HDM_OFFSET + u64::from(hdm::decoder_offset(1) + hdm::DEC_BASE_LO);
        let round = |s: &mut UnixStream, i: u32| {
            let id = (i as u16).wrapping_mul(4);
            let value = (i & 0xf) << 28;
            let (w, wn) = access(0, base_lo, 4, &value.to_le_bytes());
            assert!(!request(s, id, REGION_WRITE, &w[..wn]).0);
            let (r, rn) = access(0, base_lo, 4, &[]);
            assert_eq!(request(s, id + 1, REGION_READ, &r[..rn]), (false, value));
            let (r, rn) = access(7, pci::COMMAND as u64, 2, &[]);
            assert!(!request(s, id + 2, REGION_READ, &r[..rn]).0);
            let (r, rn) = access(4, layout::engine::ID, 4, &[]);
            assert_eq!(
                request(s, id + 3, REGION_READ, &r[..rn]),
                (false, layout::engine::ID_VALUE)
            );
        };
        // The connection's buffers and the region cache are set up here.
        for i in 0..100 {
            round(&mut s, i);
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for i in 100..1100 {
            round(&mut s, i);
        }
        let during = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(
            during, 0,
            "blocking {blocking}: {during} allocations in 4000 register accesses"
        );

        if blocking {
            stopper.stop().unwrap();
        } else {
            drop(s);
        }
        serving.join().unwrap().unwrap();
    }
}
