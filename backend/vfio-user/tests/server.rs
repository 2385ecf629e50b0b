//! End-to-end tests of the vfio-user server over real UNIX sockets.
//!
//! The well-formed side is driven by the `vfio_user` crate's `Client`, an
//! independent implementation of the protocol. Malformed input is sent by
//! hand over a raw socket. After each malformed message, a good request on the
//! same (or a new) connection must still work and the device must be unchanged.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use vfio_bindings::bindings::vfio::*;
use vfio_user_server::protocol::{
    Header, FLAG_ERROR, FLAG_NO_REPLY, HEADER_SIZE, MAX_DATA_XFER_SIZE, MAX_DRAIN_SIZE,
    MAX_MESSAGE_SIZE, TYPE_REPLY,
};
use vfio_user_server::{
    DmaMapping, Errno, IrqEventFd, IrqInfo, RegionInfo, ServeOutcome, Server, ServerError, Signal,
    StatsSnapshot, VfioUserDevice,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const BAR0_SIZE: u64 = 0x1000;
const BAR2_SIZE: u64 = 2 << 20;
const BAR4_SIZE: u64 = 0x1000;
const CONFIG_SIZE: u64 = 0x1000;
const MSIX_VECTORS: u32 = 4;

const CMD_VERSION: u16 = 1;
const CMD_DMA_MAP: u16 = 2;
const CMD_GET_REGION_INFO: u16 = 5;
const CMD_SET_IRQS: u16 = 8;
const CMD_REGION_READ: u16 = 9;
const CMD_REGION_WRITE: u16 = 10;

/// A small device: BAR0 and config space in memory, BAR2 (with a sparse area
/// covering it) and BAR4 (mmappable without sparse areas) in files.
struct Mock {
    bar0: Vec<u8>,
    config: Vec<u8>,
    bar2: File,
    bar4: File,
    irqs: Vec<Option<IrqEventFd>>,
    set_irqs_calls: Vec<(u32, u32, u32, u32, Vec<bool>)>,
    dma_maps: Vec<(u64, u64, u64, bool, bool)>,
    dma_unmaps: Vec<(u64, u64)>,
    resets: u32,
    disconnects: u32,
    ticks: u32,
    tick_every: Option<Duration>,
}

fn temp_file(size: u64) -> File {
    let f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    f.set_len(size).unwrap();
    f
}

impl Mock {
    fn new() -> Mock {
        let mut bar0 = vec![0u8; BAR0_SIZE as usize];
        for (i, b) in bar0.iter_mut().enumerate() {
            *b = i as u8;
        }
        Mock {
            bar0,
            config: vec![0u8; CONFIG_SIZE as usize],
            bar2: temp_file(BAR2_SIZE),
            bar4: temp_file(BAR4_SIZE),
            irqs: (0..MSIX_VECTORS).map(|_| None).collect(),
            set_irqs_calls: Vec::new(),
            dma_maps: Vec::new(),
            dma_unmaps: Vec::new(),
            resets: 0,
            disconnects: 0,
            ticks: 0,
            tick_every: None,
        }
    }
}

impl VfioUserDevice for Mock {
    fn num_regions(&self) -> u32 {
        VFIO_PCI_NUM_REGIONS
    }
    fn num_irqs(&self) -> u32 {
        VFIO_PCI_NUM_IRQS
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo, Errno> {
        let rw = |size| RegionInfo {
            size,
            readable: true,
            writable: true,
            ..Default::default()
        };
        Ok(match index {
            0 => rw(BAR0_SIZE),
            2 => RegionInfo {
                mmappable: true,
                sparse_mmap: vec![(0, BAR2_SIZE)],
                fd: Some(self.bar2.as_raw_fd()),
                fd_offset: 0,
                ..rw(BAR2_SIZE)
            },
            4 => RegionInfo {
                mmappable: true,
                fd: Some(self.bar4.as_raw_fd()),
                ..rw(BAR4_SIZE)
            },
            7 => rw(CONFIG_SIZE),
            i if i < VFIO_PCI_NUM_REGIONS => RegionInfo::default(),
            _ => return Err(libc::EINVAL),
        })
    }
    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        Ok(match index {
            0 => IrqInfo {
                count: 1,
                flags: VFIO_IRQ_INFO_EVENTFD,
            },
            2 => IrqInfo {
                count: MSIX_VECTORS,
                flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            },
            i if i < VFIO_PCI_NUM_IRQS => IrqInfo::default(),
            _ => return Err(libc::EINVAL),
        })
    }
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let o = offset as usize;
        match index {
            0 => buf.copy_from_slice(&self.bar0[o..o + buf.len()]),
            7 => buf.copy_from_slice(&self.config[o..o + buf.len()]),
            2 => self
                .bar2
                .read_exact_at(buf, offset)
                .map_err(|_| libc::EIO)?,
            4 => self
                .bar4
                .read_exact_at(buf, offset)
                .map_err(|_| libc::EIO)?,
            _ => return Err(libc::EINVAL),
        }
        Ok(())
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let o = offset as usize;
        match index {
            0 => self.bar0[o..o + data.len()].copy_from_slice(data),
            7 => self.config[o..o + data.len()].copy_from_slice(data),
            2 => self
                .bar2
                .write_all_at(data, offset)
                .map_err(|_| libc::EIO)?,
            4 => self
                .bar4
                .write_all_at(data, offset)
                .map_err(|_| libc::EIO)?,
            _ => return Err(libc::EINVAL),
        }
        Ok(())
    }
    fn dma_map(&mut self, map: DmaMapping) -> Result<(), Errno> {
        if let Some(fd) = &map.fd {
            // Prove it is the client's file: write a marker at the offset.
            let f = File::from(fd.try_clone().map_err(|_| libc::EBADF)?);
            f.write_all_at(b"dma!", map.offset).map_err(|_| libc::EIO)?;
        }
        self.dma_maps.push((
            map.iova,
            map.size,
            map.offset,
            map.writable,
            map.fd.is_some(),
        ));
        Ok(())
    }
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), Errno> {
        self.dma_unmaps.push((iova, size));
        Ok(())
    }
    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<Option<IrqEventFd>>,
    ) -> Result<(), Errno> {
        let has: Vec<bool> = fds.iter().map(Option::is_some).collect();
        self.set_irqs_calls.push((index, flags, start, count, has));
        if index == 2 && flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            for (i, fd) in fds.into_iter().enumerate() {
                let slot = start as usize + i;
                if let Some(fd) = &fd {
                    // Fire the interrupt once, so the test can see the fd arrived.
                    if fd.signal() != Signal::Sent {
                        return Err(libc::EIO);
                    }
                }
                self.irqs[slot] = fd;
            }
        }
        Ok(())
    }
    fn reset(&mut self) -> Result<(), Errno> {
        self.resets += 1;
        self.config.fill(0);
        Ok(())
    }
    fn tick(&mut self) -> Option<Duration> {
        self.ticks += 1;
        self.tick_every
    }
    fn disconnected(&mut self) {
        self.disconnects += 1;
        self.irqs.iter_mut().for_each(|i| *i = None);
    }
}

struct Finished {
    mock: Mock,
    outcomes: Vec<ServeOutcome>,
    stats: StatsSnapshot,
}

/// A server on its own thread, serving clients one after the other.
struct Harness {
    dir: PathBuf,
    path: PathBuf,
    stop: EventFd,
    outcomes: mpsc::Receiver<ServeOutcome>,
    thread: Option<JoinHandle<Finished>>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vfio-user-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Harness {
    fn start(mock: Mock) -> Harness {
        Harness::start_with_stall(mock, None)
    }

    fn start_with_stall(mock: Mock, stall: Option<Duration>) -> Harness {
        let dir = temp_dir();
        let path = dir.join("dev.sock");
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let thread_stop = stop.try_clone().unwrap();
        let thread_path = path.clone();
        let (tx, rx) = mpsc::channel();
        let (otx, orx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut mock = mock;
            let mut server = Server::bind(&thread_path).unwrap();
            if let Some(stall) = stall {
                server.set_stall_timeout(stall);
            }
            tx.send(()).unwrap();
            let mut outcomes = Vec::new();
            while let Some(stream) = server.accept(&thread_stop).unwrap() {
                let outcome = server.serve(stream, &mut mock, &thread_stop).unwrap();
                let _ = otx.send(outcome);
                outcomes.push(outcome);
            }
            Finished {
                mock,
                outcomes,
                stats: server.stats(),
            }
        });
        rx.recv().unwrap();
        Harness {
            dir,
            path,
            stop,
            outcomes: orx,
            thread: Some(thread),
        }
    }

    /// Waits until the server has finished with the next connection.
    fn next_outcome(&self) -> ServeOutcome {
        self.outcomes.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    fn finish(mut self) -> Finished {
        self.stop.write(1).unwrap();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A hand-driven client for malformed input.
struct Raw {
    s: UnixStream,
    id: u16,
}

struct Reply {
    hdr: Header,
    body: Vec<u8>,
    fds: usize,
}

impl Reply {
    fn errno(&self) -> Option<i32> {
        (self.hdr.flags & FLAG_ERROR != 0).then_some(self.hdr.error as i32)
    }
}

impl Raw {
    fn connect_bare(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, id: 100 }
    }

    fn connect(path: &Path) -> Raw {
        let mut r = Raw::connect_bare(path);
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(br#"{"capabilities":{"max_msg_fds":16}}"#);
        body.push(0);
        let reply = r.request(CMD_VERSION, 0, &body);
        assert_eq!(reply.errno(), None);
        r
    }

    fn header(&mut self, command: u16, flags: u32, body_len: usize) -> Header {
        self.id = self.id.wrapping_add(1);
        Header {
            id: self.id,
            command,
            size: (HEADER_SIZE + body_len) as u32,
            flags,
            error: 0,
        }
    }

    fn send(&mut self, command: u16, flags: u32, body: &[u8]) -> u16 {
        let h = self.header(command, flags, body.len());
        let mut msg = h.encode().to_vec();
        msg.extend_from_slice(body);
        self.s.write_all(&msg).unwrap();
        h.id
    }

    fn send_with_fds(&mut self, command: u16, body: &[u8], fds: &[RawFd]) -> u16 {
        let h = self.header(command, 0, body.len());
        let mut msg = h.encode().to_vec();
        msg.extend_from_slice(body);
        self.s.send_with_fds(&[&msg[..]], fds).unwrap();
        h.id
    }

    fn recv(&mut self) -> Reply {
        let mut raw = [0u8; HEADER_SIZE];
        let mut fds = [0 as RawFd; 4];
        let mut iov = [libc::iovec {
            iov_base: raw.as_mut_ptr().cast(),
            iov_len: raw.len(),
        }];
        // SAFETY: the iovec covers `raw`, which outlives the call, and `fds`
        // has room for the fds requested.
        let (n, nfds) = unsafe { self.s.recv_with_fds(&mut iov, &mut fds).unwrap() };
        for fd in &fds[..nfds] {
            // SAFETY: received over SCM_RIGHTS, owned by nobody else.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd) });
        }
        assert_eq!(n, HEADER_SIZE, "short reply header");
        let hdr = Header::decode(&raw);
        assert_eq!(hdr.flags & 0xf, TYPE_REPLY);
        let mut body = vec![0u8; hdr.size as usize - HEADER_SIZE];
        self.s.read_exact(&mut body).unwrap();
        Reply {
            hdr,
            body,
            fds: nfds,
        }
    }

    fn request(&mut self, command: u16, flags: u32, body: &[u8]) -> Reply {
        let id = self.send(command, flags, body);
        let r = self.recv();
        assert_eq!(r.hdr.id, id);
        assert_eq!(r.hdr.command, command);
        r
    }

    fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Reply {
        self.request(CMD_REGION_READ, 0, &access(region, offset, count, &[]))
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Reply {
        self.request(
            CMD_REGION_WRITE,
            0,
            &access(region, offset, data.len() as u32, data),
        )
    }

    /// The peer closed the connection (after any pending reply).
    fn assert_closed(&mut self) {
        let mut b = [0u8; 1];
        assert_eq!(self.s.read(&mut b).unwrap(), 0, "connection still open");
    }
}

fn access(region: u32, offset: u64, count: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&region.to_le_bytes());
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn set_irqs_body(index: u32, flags: u32, start: u32, count: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [20, flags, index, start, count] {
        v.extend_from_slice(&u32::to_le_bytes(x));
    }
    v
}

fn bar0_pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| i as u8).collect()
}

/// BAR0 still holds its initial pattern, read over a fresh connection.
fn assert_bar0_untouched(path: &Path) {
    let mut r = Raw::connect(path);
    let reply = r.region_read(0, 0, BAR0_SIZE as u32);
    assert_eq!(reply.errno(), None);
    assert_eq!(&reply.body[16..], &bar0_pattern(0, BAR0_SIZE as usize)[..]);
}

#[test]
fn crate_client_end_to_end() {
    let h = Harness::start(Mock::new());
    let mut client = vfio_user::Client::new(&h.path).unwrap();

    // Region info for every region.
    let r0 = client.region(0).unwrap();
    assert_eq!(r0.size, BAR0_SIZE);
    assert_eq!(
        r0.flags,
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
    );
    assert!(r0.file_offset.is_none());
    let r2 = client.region(2).unwrap();
    assert_eq!(r2.size, BAR2_SIZE);
    assert_eq!(
        r2.flags,
        VFIO_REGION_INFO_FLAG_READ
            | VFIO_REGION_INFO_FLAG_WRITE
            | VFIO_REGION_INFO_FLAG_MMAP
            | VFIO_REGION_INFO_FLAG_CAPS
    );
    assert_eq!(r2.sparse_areas.len(), 1);
    assert_eq!(r2.sparse_areas[0].offset, 0);
    assert_eq!(r2.sparse_areas[0].size, BAR2_SIZE);
    let bar2_file = r2
        .file_offset
        .as_ref()
        .expect("fd for BAR2")
        .file()
        .try_clone()
        .unwrap();
    // Mmappable without sparse areas: the fd must still come (the crate's bug).
    let r4 = client.region(4).unwrap();
    assert!(r4.sparse_areas.is_empty());
    assert_ne!(r4.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert!(r4.file_offset.is_some(), "fd for BAR4 without sparse areas");
    assert_eq!(client.region(7).unwrap().size, CONFIG_SIZE);
    for i in [1, 3, 5, 6, 8] {
        assert_eq!(client.region(i).unwrap().size, 0);
    }

    // Writes through a real mapping of the fd are seen by REGION_READ, and
    // REGION_WRITEs are seen through the mapping.
    let map = vm_memory::MmapRegion::<()>::from_file(
        vm_memory::FileOffset::new(bar2_file, 0),
        BAR2_SIZE as usize,
    )
    .unwrap();
    use vm_memory::{Bytes, VolatileMemory};
    let vs = map.as_volatile_slice();
    vs.write_slice(b"through the mapping", 0x1234).unwrap();
    let mut buf = [0u8; 19];
    client.region_read(2, 0x1234, &mut buf).unwrap();
    assert_eq!(&buf, b"through the mapping");
    client
        .region_write(2, 0x10_0000, b"via REGION_WRITE")
        .unwrap();
    let mut seen = [0u8; 16];
    vs.read_slice(&mut seen, 0x10_0000).unwrap();
    assert_eq!(&seen, b"via REGION_WRITE");

    // Trapped regions.
    client
        .region_write(0, 8, &[0xaa, 0xbb, 0xcc, 0xdd])
        .unwrap();
    let mut b4 = [0u8; 4];
    client.region_read(0, 8, &mut b4).unwrap();
    assert_eq!(b4, [0xaa, 0xbb, 0xcc, 0xdd]);
    client.region_write(7, 4, &[0x06, 0x01]).unwrap();
    let mut cfg = [0u8; 2];
    client.region_read(7, 4, &mut cfg).unwrap();
    assert_eq!(cfg, [0x06, 0x01]);

    // IRQs.
    let msix = client.get_irq_info(2).unwrap();
    assert_eq!(msix.count, MSIX_VECTORS);
    assert_eq!(msix.index, 2);
    assert_ne!(msix.flags & VFIO_IRQ_INFO_EVENTFD, 0);
    let efds: Vec<EventFd> = (0..MSIX_VECTORS)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let raw: Vec<RawFd> = efds.iter().map(|e| e.as_raw_fd()).collect();
    client
        .set_irqs(
            2,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            MSIX_VECTORS,
            &raw,
        )
        .unwrap();
    for e in &efds {
        assert_eq!(
            e.read().unwrap(),
            1,
            "device fired the eventfd it was given"
        );
    }

    // DMA with an fd: the device writes a marker into the client's file.
    let guest_ram = temp_file(0x10000);
    client
        .dma_map(0x2000, 0x1_0000_0000, 0x8000, guest_ram.as_raw_fd())
        .unwrap();
    let mut marker = [0u8; 4];
    guest_ram.read_exact_at(&mut marker, 0x2000).unwrap();
    assert_eq!(&marker, b"dma!");
    client.dma_unmap(0x1_0000_0000, 0x8000).unwrap();

    client.reset().unwrap();
    client.region_read(7, 4, &mut cfg).unwrap();
    assert_eq!(cfg, [0, 0], "reset reached the device");
    client.shutdown().unwrap();
    drop(client);
    assert_eq!(h.next_outcome(), ServeOutcome::Disconnected);

    let done = h.finish();
    assert_eq!(done.outcomes, vec![ServeOutcome::Disconnected]);
    let m = &done.mock;
    assert_eq!(m.resets, 1);
    assert_eq!(m.disconnects, 1);
    assert!(
        m.irqs.iter().all(Option::is_none),
        "disconnected() dropped the eventfds"
    );
    assert_eq!(
        m.dma_maps,
        vec![(0x1_0000_0000, 0x8000, 0x2000, true, true)]
    );
    assert_eq!(m.dma_unmaps, vec![(0x1_0000_0000, 0x8000)]);
    assert_eq!(m.set_irqs_calls.len(), 1);
    assert_eq!(m.set_irqs_calls[0].4, vec![true; MSIX_VECTORS as usize]);
    assert_eq!(done.stats.connections, 1);
    assert_eq!(done.stats.error_replies, 0);
    assert_eq!(done.stats.by_command.get("version"), Some(&1));
    assert!(done.stats.by_command["region_read"] >= 4);
}

#[test]
fn version_reply_fits_qemu_and_limits_are_announced() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect_bare(&h.path);
    // QEMU sends 0.0 and refuses a higher minor in the reply.
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(br#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"migration":{"pgsize":4096,"max_bitmap_size":268435456}}}"#);
    body.push(0);
    let reply = r.request(CMD_VERSION, 0, &body);
    assert_eq!(reply.errno(), None);
    assert_eq!(&reply.body[..4], &[0, 0, 0, 0]);
    assert!(
        reply.hdr.size as usize <= HEADER_SIZE + body.len(),
        "fits QEMU's buffer"
    );
    assert_eq!(reply.body.last(), Some(&0));
    let caps: serde_json::Value =
        serde_json::from_slice(&reply.body[4..reply.body.len() - 1]).unwrap();
    assert_eq!(caps["capabilities"]["max_msg_fds"], 16);
    assert_eq!(
        caps["capabilities"]["max_data_xfer_size"],
        MAX_DATA_XFER_SIZE
    );
    // A second VERSION is refused; the connection carries on.
    assert_eq!(r.request(CMD_VERSION, 0, &body).errno(), Some(libc::EINVAL));
    assert_eq!(r.region_read(0, 0, 4).errno(), None);
    // One client at a time: end this one before the next.
    drop(r);
    // Wrong major.
    let mut r2 = Raw::connect_bare(&h.path);
    assert_eq!(
        r2.request(CMD_VERSION, 0, &[1, 0, 0, 0]).errno(),
        Some(libc::ENOTSUP)
    );
    drop(r2);
    // Malformed JSON.
    let mut r3 = Raw::connect_bare(&h.path);
    assert_eq!(
        r3.request(CMD_VERSION, 0, b"\0\0\0\0{oops\0").errno(),
        Some(libc::EINVAL)
    );
    // Anything before VERSION.
    assert_eq!(r3.region_read(0, 0, 4).errno(), Some(libc::EINVAL));
}

#[test]
fn region_info_reports_needed_argsz_then_sends_caps_and_fd() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    let req = |argsz: u32, index: u32| {
        let mut v = Vec::new();
        for x in [argsz, 0, index, 0] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&[0u8; 16]);
        v
    };
    let small = r.request(CMD_GET_REGION_INFO, 0, &req(32, 2));
    assert_eq!(small.errno(), None);
    assert_eq!(small.body.len(), 32, "no caps in a short buffer");
    let needed = u32::from_le_bytes(small.body[0..4].try_into().unwrap());
    assert_eq!(needed, 64);
    assert_eq!(small.fds, 1, "fd sent even with the short reply");
    let full = r.request(CMD_GET_REGION_INFO, 0, &req(needed, 2));
    assert_eq!(full.body.len(), 64);
    assert_eq!(full.fds, 1);
    // Trapped region: no fd.
    let bar0 = r.request(CMD_GET_REGION_INFO, 0, &req(32, 0));
    assert_eq!(bar0.fds, 0);
    // Out of range, and an argsz below the struct.
    assert_eq!(
        r.request(CMD_GET_REGION_INFO, 0, &req(32, 9)).errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        r.request(CMD_GET_REGION_INFO, 0, &req(8, 0)).errno(),
        Some(libc::EINVAL)
    );
    // Truncated body.
    assert_eq!(
        r.request(CMD_GET_REGION_INFO, 0, &req(32, 0)[..12]).errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(r.region_read(0, 0, 4).errno(), None);
}

#[test]
fn posted_write_gets_no_reply() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    r.send(
        CMD_REGION_WRITE,
        FLAG_NO_REPLY,
        &access(0, 0x40, 4, &[1, 2, 3, 4]),
    );
    // A failing posted write is not answered either.
    r.send(
        CMD_REGION_WRITE,
        FLAG_NO_REPLY,
        &access(0, BAR0_SIZE, 4, &[1, 2, 3, 4]),
    );
    // The next reply on the wire is the read's, and it sees the posted write.
    let reply = r.region_read(0, 0x40, 4);
    assert_eq!(reply.errno(), None);
    assert_eq!(&reply.body[16..], &[1, 2, 3, 4]);
    drop(r);
    let done = h.finish();
    assert_eq!(done.stats.posted_writes, 2);
    assert_eq!(done.stats.posted_errors, 1);
    assert_eq!(done.stats.error_replies, 0);
}

#[test]
fn truncated_header_then_close_is_not_a_command() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    r.s.write_all(&[9, 0, 9, 0, 32, 0, 0]).unwrap();
    drop(r);
    // Truncated body too.
    let mut r = Raw::connect(&h.path);
    let hdr = r.header(CMD_REGION_WRITE, 0, 20);
    r.s.write_all(&hdr.encode()).unwrap();
    r.s.write_all(&access(0, 0, 4, &[0xee, 0xee])).unwrap();
    drop(r);
    assert_bar0_untouched(&h.path);
    for _ in 0..3 {
        assert_eq!(h.next_outcome(), ServeOutcome::Disconnected);
    }
    let done = h.finish();
    assert_eq!(done.outcomes.len(), 3);
    assert_eq!(done.stats.protocol_errors, 2);
    assert_eq!(done.stats.by_command.get("region_write"), Some(&1));
}

#[test]
fn header_split_across_writes_is_reassembled() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    let body = access(0, 0x10, 4, &[]);
    let hdr = r.header(CMD_REGION_READ, 0, body.len());
    let mut msg = hdr.encode().to_vec();
    msg.extend_from_slice(&body);
    for chunk in msg.chunks(3) {
        r.s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let reply = r.recv();
    assert_eq!(reply.hdr.id, hdr.id);
    assert_eq!(&reply.body[16..], &bar0_pattern(0x10, 4)[..]);
}

#[test]
fn size_below_header_drops_the_connection() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    let mut hdr = r.header(CMD_REGION_READ, 0, 0);
    hdr.size = 8;
    r.s.write_all(&hdr.encode()).unwrap();
    let reply = r.recv();
    assert_eq!(reply.errno(), Some(libc::EINVAL));
    r.assert_closed();
    assert_bar0_untouched(&h.path);
    let done = h.finish();
    assert_eq!(done.stats.dropped_connections, 1);
}

#[test]
fn oversized_message_is_drained_and_refused() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    // Over the limit but drainable: a REGION_WRITE whose data would change BAR0.
    let data = vec![0xffu8; MAX_MESSAGE_SIZE as usize];
    let body = access(0, 0, data.len() as u32, &data);
    let reply = r.request(CMD_REGION_WRITE, 0, &body);
    assert_eq!(reply.errno(), Some(libc::EMSGSIZE));
    // Same connection still works, device unchanged.
    let ok = r.region_read(0, 0, BAR0_SIZE as u32);
    assert_eq!(&ok.body[16..], &bar0_pattern(0, BAR0_SIZE as usize)[..]);

    // Beyond what is sane to drain: refused, connection dropped.
    let mut hdr = r.header(CMD_REGION_WRITE, 0, 0);
    hdr.size = MAX_DRAIN_SIZE + 1;
    r.s.write_all(&hdr.encode()).unwrap();
    assert_eq!(r.recv().errno(), Some(libc::EMSGSIZE));
    r.assert_closed();
    assert_bar0_untouched(&h.path);
}

#[test]
fn unknown_and_unsupported_commands_are_refused_after_draining() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    assert_eq!(r.request(99, 0, &[0xee; 40]).errno(), Some(libc::ENOSYS));
    assert_eq!(r.request(0, 0, &[]).errno(), Some(libc::ENOSYS));
    // DMA_READ (11) is known but not served.
    assert_eq!(r.request(11, 0, &[0; 24]).errno(), Some(libc::ENOTSUP));
    // A reply-typed message is ignored, not answered.
    r.send(9, TYPE_REPLY, &[0; 16]);
    let ok = r.region_read(0, 0, 4);
    assert_eq!(ok.errno(), None);
    assert_eq!(&ok.body[16..], &bar0_pattern(0, 4)[..]);
}

#[test]
fn region_access_bounds_are_enforced() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    // Index out of range.
    assert_eq!(r.region_read(9, 0, 4).errno(), Some(libc::EINVAL));
    assert_eq!(r.region_write(42, 0, &[1]).errno(), Some(libc::EINVAL));
    // Offset + count past the region, and offsets that overflow.
    assert_eq!(
        r.region_read(0, BAR0_SIZE - 2, 4).errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        r.region_write(0, BAR0_SIZE - 2, &[9; 4]).errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        r.region_read(0, u64::MAX - 1, 4).errno(),
        Some(libc::EINVAL)
    );
    // Empty region.
    assert_eq!(r.region_read(1, 0, 4).errno(), Some(libc::EINVAL));
    // Count and data length disagree.
    assert_eq!(
        r.request(CMD_REGION_WRITE, 0, &access(0, 0, 8, &[9; 4]))
            .errno(),
        Some(libc::EINVAL)
    );
    // Zero-length and too-long reads; 1 MiB exactly is fine.
    assert_eq!(r.region_read(2, 0, 0).errno(), Some(libc::EINVAL));
    assert_eq!(
        r.region_read(2, 0, MAX_DATA_XFER_SIZE + 1).errno(),
        Some(libc::EINVAL)
    );
    let big = r.region_read(2, 0, MAX_DATA_XFER_SIZE);
    assert_eq!(big.errno(), None);
    assert_eq!(big.body.len(), 16 + MAX_DATA_XFER_SIZE as usize);
    assert_eq!(
        u32::from_le_bytes(big.body[12..16].try_into().unwrap()),
        MAX_DATA_XFER_SIZE
    );
    drop(r);
    assert_bar0_untouched(&h.path);
    let done = h.finish();
    assert_eq!(done.stats.error_replies, 9);
}

#[test]
fn set_irqs_fd_runs_and_limits() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    let trig = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    let efds: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let raw: Vec<RawFd> = efds.iter().map(|e| e.as_raw_fd()).collect();
    // One vector per message, as QEMU does with max_msg_fds=1.
    for (i, fd) in raw.iter().enumerate().take(2) {
        r.send_with_fds(CMD_SET_IRQS, &set_irqs_body(2, trig, i as u32, 1), &[*fd]);
        assert_eq!(r.recv().errno(), None);
    }
    // A run of -1: no fds at all.
    assert_eq!(
        r.request(CMD_SET_IRQS, 0, &set_irqs_body(2, trig, 2, 2))
            .errno(),
        None
    );
    // More fds than vectors: refused, fds closed.
    r.send_with_fds(CMD_SET_IRQS, &set_irqs_body(2, trig, 0, 2), &raw);
    assert_eq!(r.recv().errno(), Some(libc::EINVAL));
    // Beyond the index's vectors, a bad index, bad flags.
    assert_eq!(
        r.request(CMD_SET_IRQS, 0, &set_irqs_body(2, trig, 3, 2))
            .errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        r.request(CMD_SET_IRQS, 0, &set_irqs_body(5, trig, 0, 1))
            .errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        r.request(CMD_SET_IRQS, 0, &set_irqs_body(2, 0x7, 0, 1))
            .errno(),
        Some(libc::EINVAL)
    );
    // DATA_NONE with count 0 (disable all) passes through.
    let none = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
    assert_eq!(
        r.request(CMD_SET_IRQS, 0, &set_irqs_body(2, none, 0, 0))
            .errno(),
        None
    );
    // DATA_BOOL becomes DATA_NONE runs.
    let mut b = set_irqs_body(2, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_MASK, 0, 4);
    b.extend_from_slice(&[1, 1, 0, 1]);
    assert_eq!(r.request(CMD_SET_IRQS, 0, &b).errno(), None);
    // Fds that are not eventfds: refused before the device sees them (the calls
    // checked below do not include them).
    let mut p = [0; 2];
    // SAFETY: pipe(2) fills `p`; both ends are owned at once.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds from pipe(2), owned by nobody else.
    let pipe: Vec<OwnedFd> = p
        .iter()
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    let file = temp_file(8);
    for fd in [pipe[0].as_raw_fd(), pipe[1].as_raw_fd(), file.as_raw_fd()] {
        r.send_with_fds(CMD_SET_IRQS, &set_irqs_body(2, trig, 0, 1), &[fd]);
        assert_eq!(r.recv().errno(), Some(libc::EINVAL));
    }
    // One bad fd among eventfds spoils the message.
    r.send_with_fds(
        CMD_SET_IRQS,
        &set_irqs_body(2, trig, 0, 2),
        &[raw[0], pipe[1].as_raw_fd()],
    );
    assert_eq!(r.recv().errno(), Some(libc::EINVAL));
    // Too many fds on one message: at most 16 kept, the message is refused.
    let many: Vec<File> = (0..20).map(|_| File::open("/dev/null").unwrap()).collect();
    let many_raw: Vec<RawFd> = many.iter().map(|f| f.as_raw_fd()).collect();
    r.send_with_fds(CMD_SET_IRQS, &set_irqs_body(2, trig, 0, 4), &many_raw);
    assert_eq!(r.recv().errno(), Some(libc::EINVAL));
    for e in &efds[..2] {
        assert_eq!(e.read().unwrap(), 1);
    }
    drop(r);
    let done = h.finish();
    let calls: Vec<_> = done
        .mock
        .set_irqs_calls
        .iter()
        .map(|(i, f, s, c, fds)| (*i, *f, *s, *c, fds.clone()))
        .collect();
    let mask_none = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK;
    assert_eq!(
        calls,
        vec![
            (2, trig, 0, 1, vec![true]),
            (2, trig, 1, 1, vec![true]),
            (2, trig, 2, 2, vec![false, false]),
            (2, none, 0, 0, vec![]),
            (2, mask_none, 0, 2, vec![]),
            (2, mask_none, 3, 1, vec![]),
        ]
    );
    assert_eq!(done.stats.refused_fds, 4);
}

#[test]
fn dma_map_without_fd_and_unmap_all() {
    let h = Harness::start(Mock::new());
    let mut r = Raw::connect(&h.path);
    let map = |flags: u32, offset: u64, iova: u64, size: u64| {
        let mut v = Vec::new();
        v.extend_from_slice(&32u32.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&iova.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v
    };
    let reply = r.request(CMD_DMA_MAP, 0, &map(1, 0, 0xfe00_0000, 0x1000));
    assert_eq!(reply.errno(), None);
    assert!(reply.body.is_empty());
    assert_eq!(
        r.request(CMD_DMA_MAP, 0, &map(3, 0, 0x1000, 0)).errno(),
        Some(libc::EINVAL)
    );
    // Two fds on one map.
    let a = temp_file(0x1000);
    let b = temp_file(0x1000);
    r.send_with_fds(
        CMD_DMA_MAP,
        &map(3, 0, 0, 0x1000),
        &[a.as_raw_fd(), b.as_raw_fd()],
    );
    assert_eq!(r.recv().errno(), Some(libc::EINVAL));
    let mut unmap_all = Vec::new();
    unmap_all.extend_from_slice(&24u32.to_le_bytes());
    unmap_all.extend_from_slice(&VFIO_DMA_UNMAP_FLAG_ALL.to_le_bytes());
    unmap_all.extend_from_slice(&[0u8; 16]);
    let reply = r.request(3, 0, &unmap_all);
    assert_eq!(reply.errno(), None);
    assert_eq!(reply.body.len(), 24, "unmap reply echoes the request");
    drop(r);
    let done = h.finish();
    assert_eq!(
        done.mock.dma_maps,
        vec![(0xfe00_0000, 0x1000, 0, false, false)]
    );
    assert_eq!(done.mock.dma_unmaps, vec![(0, u64::MAX)]);
}

#[test]
fn tick_runs_on_timeout_and_stop_ends_serve() {
    let mut mock = Mock::new();
    mock.tick_every = Some(Duration::from_millis(5));
    let h = Harness::start(mock);
    let mut r = Raw::connect(&h.path);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.region_read(0, 0, 4).errno(), None);
    let done = h.finish();
    assert_eq!(done.outcomes, vec![ServeOutcome::Stopped]);
    assert!(done.mock.ticks >= 5, "ticks: {}", done.mock.ticks);
    assert_eq!(done.mock.disconnects, 1);
    drop(r);
}

#[test]
fn socket_file_rules() {
    let dir = temp_dir();
    let path = dir.join("s.sock");
    {
        let server = Server::bind(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A stale socket (from a server that died without cleanup) is replaced.
        std::mem::forget(server);
    }
    let server = Server::bind(&path).unwrap();
    assert_eq!(server.path(), path);
    assert!(UnixStream::connect(&path).is_ok());
    drop(server);
    assert!(!path.exists(), "drop removes the socket");

    // A regular file is never replaced.
    std::fs::write(&path, b"precious").unwrap();
    match Server::bind(&path) {
        Err(ServerError::NotASocket(p)) => assert_eq!(p, path),
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");

    // Stop while waiting in accept.
    std::fs::remove_file(&path).unwrap();
    let server = Server::bind(&path).unwrap();
    let stop = EventFd::new(EFD_NONBLOCK).unwrap();
    stop.write(1).unwrap();
    assert!(server.accept(&stop).unwrap().is_none());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

mod stream_of_messages {
    //! Property: whatever well-framed messages a client sends (any command,
    //! type, flags and body), the server never panics, answers exactly the
    //! messages that want an answer, in order and with their ids, and ends
    //! with `Disconnected` when the client hangs up.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Msg {
        command: u16,
        flags: u32,
        body: Vec<u8>,
    }

    fn msg() -> impl Strategy<Value = Msg> {
        (
            0u16..17,
            0u32..4,
            any::<bool>(),
            any::<bool>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..48),
                // Plausible REGION_READ/WRITE bodies on small regions.
                (0u64..0x1100, 0u32..9, 0u32..0x40).prop_map(|(o, r, c)| access(r, o, c, &[])),
            ],
        )
            .prop_map(|(command, ty, no_reply, err, body)| Msg {
                command,
                flags: ty
                    | if no_reply { FLAG_NO_REPLY } else { 0 }
                    | if err { FLAG_ERROR } else { 0 },
                body,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn server_answers_exactly_what_asks_for_an_answer(
            msgs in proptest::collection::vec(msg(), 0..40)
        ) {
            let (client, server_end) = UnixStream::pair().unwrap();
            let stop = EventFd::new(EFD_NONBLOCK).unwrap();
            let dir = temp_dir();
            let server = Server::bind(&dir.join("p.sock")).unwrap();
            let thread = std::thread::spawn(move || {
                let mut mock = Mock::new();
                let outcome = server.serve(server_end, &mut mock, &stop);
                (outcome.unwrap(), server.stats())
            });

            let mut wire = Vec::new();
            let mut expected = Vec::new();
            let mut version = vec![0u8, 0, 0, 0];
            version.extend_from_slice(b"{}\0");
            let all = std::iter::once(Msg { command: CMD_VERSION, flags: 0, body: version })
                .chain(msgs.iter().cloned());
            for (i, m) in all.enumerate() {
                let hdr = Header {
                    id: i as u16,
                    command: m.command,
                    size: (HEADER_SIZE + m.body.len()) as u32,
                    flags: m.flags,
                    error: 0,
                };
                wire.extend_from_slice(&hdr.encode());
                wire.extend_from_slice(&m.body);
                if hdr.flags & 0xf != TYPE_REPLY && hdr.flags & FLAG_NO_REPLY == 0 {
                    expected.push((hdr.id, hdr.command));
                }
            }
            let mut reader = client.try_clone().unwrap();
            reader.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let replies = std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut all = Vec::new();
                reader.read_to_end(&mut all).unwrap();
                let mut rest = &all[..];
                while !rest.is_empty() {
                    let raw: [u8; HEADER_SIZE] = rest[..HEADER_SIZE].try_into().unwrap();
                    let h = Header::decode(&raw);
                    assert_eq!(h.flags & 0xf, TYPE_REPLY);
                    got.push((h.id, h.command));
                    rest = &rest[h.size as usize..];
                }
                got
            });
            (&client).write_all(&wire).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let (outcome, stats) = thread.join().unwrap();
            drop(client);
            let got = replies.join().unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            prop_assert_eq!(outcome, ServeOutcome::Disconnected);
            prop_assert_eq!(got, expected);
            prop_assert_eq!(stats.messages, msgs.len() as u64 + 1);
        }
    }
}

#[test]
fn a_client_stalling_inside_a_message_is_dropped() {
    let h = Harness::start_with_stall(Mock::new(), Some(Duration::from_millis(200)));
    let mut r = Raw::connect(&h.path);
    // Half a header, then silence (the socket stays open).
    r.s.write_all(&[9, 0, 9, 0, 32, 0]).unwrap();
    let t = std::time::Instant::now();
    assert_eq!(h.next_outcome(), ServeOutcome::Disconnected);
    assert!(t.elapsed() >= Duration::from_millis(150));
    r.assert_closed();
    // Idle between messages is fine, however long.
    let mut r2 = Raw::connect(&h.path);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(r2.region_read(0, 0, 4).errno(), None);
    drop(r2);
    assert_eq!(h.next_outcome(), ServeOutcome::Disconnected);
    let done = h.finish();
    assert_eq!(done.stats.dropped_connections, 1);
    assert_eq!(done.stats.protocol_errors, 1);
}
