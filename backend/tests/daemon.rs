//! End-to-end tests of the real `cxl-accel-backend` binary, driven over its vfio-user
//! socket by the `vfio_user` crate's client (an independent implementation of the
//! protocol, standing in for QEMU), by raw frames, and over its control socket.

// Tests: a panic is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use cxl_regs::{dvsec, hdm, layout, mailbox as mbx, pci};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

const MIB: u64 = 1 << 20;

#[test]
fn regions_irqs_and_bar2_fd_mapping_are_coherent() {
    let b = Backend::start(&["--memory-size", "512M"]);
    let mut c = b.client();

    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    let bar0 = c.region(0).expect("BAR0");
    assert_eq!(bar0.size, layout::BAR0_SIZE);
    assert_eq!(bar0.flags & rw, rw);
    // BAR0 traps but for the mailbox payload: one sparse area, shared memory.
    assert_ne!(bar0.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert_eq!(bar0.sparse_areas.len(), 1);
    let pl = layout::MAILBOX_PAYLOAD_OFFSET;
    let pl_len = u64::from(layout::MAILBOX_PAYLOAD_SIZE);
    assert_eq!(
        (bar0.sparse_areas[0].offset, bar0.sparse_areas[0].size),
        (pl, pl_len)
    );
    let payload = map_region(&c, BAR0, pl, pl_len as usize);
    // The guest's side: the input goes straight into the page, the registers trap.
    payload.write(0, &[0u8; 8]);
    let mbox = layout::MAILBOX_OFFSET;
    c.region_write(
        BAR0,
        mbox + u64::from(mbx::COMMAND),
        &u64::from(mbx::OP_IDENTIFY_MEMORY_DEVICE).to_le_bytes(),
    )
    .unwrap();
    c.region_write(
        BAR0,
        mbox + u64::from(mbx::CONTROL),
        &mbx::CTRL_DOORBELL.to_le_bytes(),
    )
    .unwrap();
    let out = payload.read(mbx::identify::TOTAL_CAPACITY, 8);
    assert_eq!(
        u64::from_le_bytes(out.try_into().unwrap()),
        2,
        "512 MiB in 256 MiB units"
    );
    let mut trapped = [0u8; 8];
    c.region_read(
        BAR0,
        pl + mbx::identify::TOTAL_CAPACITY as u64,
        &mut trapped,
    )
    .unwrap();
    assert_eq!(
        u64::from_le_bytes(trapped),
        2,
        "trapped payload reads see the page"
    );
    let bar4 = c.region(4).expect("BAR4");
    assert_eq!(bar4.size, layout::BAR4_SIZE);
    assert!(bar4.file_offset.is_none(), "BAR4 is trapped");
    let cfg = c.region(7).expect("config region");
    assert_eq!(cfg.size, 4096);
    assert_eq!(cfg.flags & rw, rw);
    for absent in [1, 3, 5, 6, 8] {
        assert_eq!(c.region(absent).map_or(0, |r| r.size), 0, "region {absent}");
    }
    let bar2 = c.region(2).expect("BAR2");
    assert_eq!(bar2.size, 512 * MIB);
    assert_ne!(bar2.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert_eq!(bar2.sparse_areas.len(), 1);
    assert_eq!(
        (bar2.sparse_areas[0].offset, bar2.sparse_areas[0].size),
        (0, 512 * MIB)
    );
    let map = map_region(&c, BAR2, 0, (512 * MIB) as usize);

    // Through the fd mapping, then REGION_READ.
    let near_end = (512 * MIB - 4096) as usize;
    map.write(0x1000, b"written through the mapping");
    map.write(near_end, b"end");
    let mut got = vec![0u8; 27];
    c.region_read(BAR2, 0x1000, &mut got).unwrap();
    assert_eq!(&got, b"written through the mapping");
    let mut got = [0u8; 3];
    c.region_read(BAR2, near_end as u64, &mut got).unwrap();
    assert_eq!(&got, b"end");
    // REGION_WRITE, then the mapping.
    c.region_write(BAR2, 0x20_0000, b"written over the socket")
        .unwrap();
    assert_eq!(map.read(0x20_0000, 23), b"written over the socket");

    let msix = c.get_irq_info(2).unwrap();
    assert!(msix.count >= 4, "MSI-X vectors: {}", msix.count);
    assert_ne!(msix.flags & VFIO_IRQ_INFO_EVENTFD, 0);
    for index in 0..5 {
        c.get_irq_info(index).unwrap();
    }
}

fn check_config_space(flit: &str) {
    let b = Backend::start(&[
        "--flit",
        flit,
        "--serial",
        "0xfeedc0de12345678",
        "--vendor-id",
        "1e98",
        "--device-id",
        "0d93",
    ]);
    let mut c = b.client();
    let cfg = config_space(&mut c);

    assert_eq!(le16(&cfg, pci::VENDOR_ID), 0x1e98);
    assert_eq!(le16(&cfg, pci::DEVICE_ID), 0x0d93);
    let class = le32(&cfg, 0x08) >> 8;
    assert_eq!(
        class,
        layout::CLASS_CODE,
        "processing accelerator, never 0x050210"
    );

    let exp = find_cap(&cfg, pci::CAP_ID_EXP).expect("PCIe capability");
    let flags = le16(&cfg, exp + pci::EXP_FLAGS);
    assert_ne!(
        flags & pci::EXP_FLAGS_FLIT_MODE_SUPPORTED,
        0,
        "Flit Mode Supported"
    );
    let lnksta2 = le16(&cfg, exp + pci::EXP_LNKSTA2);
    assert_eq!(
        lnksta2 & pci::EXP_LNKSTA2_FLIT != 0,
        flit == "256b",
        "LNKSTA2 flit bit, {flit}"
    );
    assert!(
        find_cap(&cfg, pci::CAP_ID_MSIX).is_some(),
        "MSI-X capability"
    );

    let caps = ext_caps(&cfg);
    let dsn = caps
        .iter()
        .find(|&&(_, id, d)| id == pci::EXT_CAP_ID_DSN && d == 0xffff)
        .expect("DSN");
    let serial = u64::from(le32(&cfg, dsn.0 + 8)) << 32 | u64::from(le32(&cfg, dsn.0 + 4));
    assert_eq!(serial, 0xfeedc0de12345678);

    let dev = find_dvsec(&cfg, dvsec::ID_CXL_DEVICE).expect("DVSEC id 0");
    let cap = le16(&cfg, dev + dvsec::device::CAP);
    assert_ne!(cap & dvsec::device::CAP_CACHE_CAPABLE, 0);
    assert_ne!(cap & dvsec::device::CAP_MEM_CAPABLE, 0);
    let hdm_count = (cap & dvsec::device::CAP_HDM_COUNT_MASK) >> dvsec::device::CAP_HDM_COUNT_SHIFT;
    assert!(matches!(hdm_count, 1 | 2));
    let size_lo = le32(&cfg, dev + dvsec::device::range_size_low(0));
    let size_hi = le32(&cfg, dev + dvsec::device::range_size_high(0));
    assert_eq!(dvsec::device::range_addr(size_hi, size_lo), 512 * MIB);
    assert_ne!(size_lo & dvsec::device::RANGE_MEM_INFO_VALID, 0);
    assert_ne!(size_lo & dvsec::device::RANGE_MEM_ACTIVE, 0);

    let flex = find_dvsec(&cfg, dvsec::ID_FLEX_BUS_PORT).expect("Flex Bus DVSEC id 7");
    let status = le16(&cfg, flex + dvsec::flex_bus::STATUS);
    let enabled = dvsec::flex_bus::CACHE | dvsec::flex_bus::IO | dvsec::flex_bus::MEM;
    assert_eq!(status & enabled, enabled);
    assert_eq!(
        status & dvsec::flex_bus::FLIT68_VH != 0,
        flit == "68b",
        "68B flit/VH bit, {flit}"
    );

    let blocks = register_blocks(&cfg);
    assert!(
        blocks.contains(&(0, dvsec::register_locator::BLOCK_COMPONENT, 0)),
        "{blocks:?}"
    );
    assert!(
        blocks.contains(&(
            0,
            dvsec::register_locator::BLOCK_MEMORY_DEVICE,
            layout::DEVICE_BLOCK_OFFSET
        )),
        "{blocks:?}"
    );
}

#[test]
fn config_space_256b_flit() {
    check_config_space("256b");
}

#[test]
fn config_space_68b_flit() {
    check_config_space("68b");
}

#[test]
fn mailbox_off_hides_device_registers() {
    let b = Backend::start(&["--mailbox", "off"]);
    let mut c = b.client();
    let cfg = config_space(&mut c);
    let blocks = register_blocks(&cfg);
    assert!(
        blocks
            .iter()
            .all(|&(_, id, _)| id != dvsec::register_locator::BLOCK_MEMORY_DEVICE),
        "{blocks:?}"
    );
    assert!(blocks
        .iter()
        .any(|&(_, id, _)| id == dvsec::register_locator::BLOCK_COMPONENT));
    let mut regs = vec![0xffu8; 0x1000];
    c.region_read(BAR0, layout::DEVICE_BLOCK_OFFSET, &mut regs)
        .unwrap();
    assert!(
        regs.iter().all(|&b| b == 0),
        "device register range must read 0"
    );
    let mut mb = [0xffu8; 0x40];
    c.region_read(BAR0, layout::MAILBOX_OFFSET, &mut mb)
        .unwrap();
    assert!(mb.iter().all(|&b| b == 0));
    // No mailbox, no shared payload page: BAR0 is wholly trapped.
    let bar0 = c.region(0).expect("BAR0");
    assert!(bar0.file_offset.is_none() && bar0.sparse_areas.is_empty());
}

#[test]
fn mailbox_identify_reports_the_configured_capacity() {
    let b = Backend::start(&["--memory-size", "1G"]);
    let mut c = b.client();
    let (rc, out) = mailbox(&mut c, mbx::OP_IDENTIFY_MEMORY_DEVICE, &[]);
    assert_eq!(rc, mbx::RC_SUCCESS);
    assert!(
        out.len() >= mbx::IDENTIFY_OUTPUT_LEN,
        "identify output {} bytes",
        out.len()
    );
    let units = le64(&out, mbx::identify::TOTAL_CAPACITY);
    assert_eq!(units * mbx::CAPACITY_UNIT, 1 << 30);
    // An unknown opcode gets Unsupported, and the mailbox keeps working.
    let (rc, _) = mailbox(&mut c, 0x7777, &[]);
    assert_eq!(rc, mbx::RC_UNSUPPORTED);
    let (rc, _) = mailbox(&mut c, mbx::OP_IDENTIFY_MEMORY_DEVICE, &[]);
    assert_eq!(rc, mbx::RC_SUCCESS);
}

#[test]
fn hdm_decoder_commit_error_and_lock() {
    let b = Backend::start(&["--memory-size", "1G", "--decoders", "2"]);
    let mut c = b.client();
    let gctl = layout::HDM_OFFSET + u64::from(hdm::GLOBAL_CONTROL);
    write32(&mut c, BAR0, gctl, hdm::GCTRL_HDM_DECODER_ENABLE);
    assert_ne!(
        read32(&mut c, BAR0, gctl) & hdm::GCTRL_HDM_DECODER_ENABLE,
        0
    );

    // A size that is not a multiple of 256 MiB: Error Not Committed.
    let v = program_decoder(&mut c, 0, 0x1_0000_0000, 0x0800_0000, hdm::CTRL_COMMIT);
    assert_eq!(v & hdm::CTRL_COMMITTED, 0, "control {v:#x}");
    assert_ne!(v & hdm::CTRL_ERROR_NOT_COMMITTED, 0, "control {v:#x}");
    // Bits 27:0 of size low read 0 whatever was written.
    assert_eq!(
        read32(&mut c, BAR0, decoder_reg(0, hdm::DEC_SIZE_LO)) & !hdm::LOW_ADDR_MASK,
        0
    );

    // Commit acts on a 0 -> 1 transition: clear it, then a good one commits,
    // device-coherent (Target Type 0), locked on commit.
    write32(&mut c, BAR0, decoder_reg(0, hdm::DEC_CONTROL), 0);
    let v = program_decoder(
        &mut c,
        0,
        0x1_0000_0000,
        256 * MIB,
        hdm::CTRL_COMMIT | hdm::CTRL_LOCK_ON_COMMIT,
    );
    assert_ne!(v & hdm::CTRL_COMMITTED, 0, "control {v:#x}");
    assert_eq!(v & hdm::CTRL_ERROR_NOT_COMMITTED, 0, "control {v:#x}");
    assert_eq!(v & hdm::CTRL_TARGET_TYPE_HOST_ONLY, 0);

    // Locked: base writes and uncommit are ignored.
    write32(&mut c, BAR0, decoder_reg(0, hdm::DEC_BASE_HI), 0x7);
    write32(&mut c, BAR0, decoder_reg(0, hdm::DEC_CONTROL), 0);
    assert_eq!(read32(&mut c, BAR0, decoder_reg(0, hdm::DEC_BASE_HI)), 1);
    assert_ne!(
        read32(&mut c, BAR0, decoder_reg(0, hdm::DEC_CONTROL)) & hdm::CTRL_COMMITTED,
        0
    );

    // Decoder 1 overlapping decoder 0's range: error.
    let v = program_decoder(&mut c, 1, 0x1_0000_0000, 256 * MIB, hdm::CTRL_COMMIT);
    assert_ne!(v & hdm::CTRL_ERROR_NOT_COMMITTED, 0, "control {v:#x}");
    // Above it: commits.
    write32(&mut c, BAR0, decoder_reg(1, hdm::DEC_CONTROL), 0);
    let v = program_decoder(&mut c, 1, 0x1_1000_0000, 256 * MIB, hdm::CTRL_COMMIT);
    assert_ne!(v & hdm::CTRL_COMMITTED, 0, "control {v:#x}");

    // The control socket sees both.
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["ok"], true, "{st}");
    let decoders = st["device"]["decoders"]
        .as_array()
        .expect("decoders")
        .clone();
    assert!(
        decoders[0]["committed"].as_bool().unwrap() && decoders[0]["locked"].as_bool().unwrap(),
        "{st}"
    );
    assert_eq!(decoders[0]["base"], 0x1_0000_0000u64);
    assert!(decoders[1]["committed"].as_bool().unwrap(), "{st}");
    assert!(st["device"]["hdm_global_enable"].as_bool().unwrap());
}

#[test]
fn dma_engine_copies_both_ways_and_survives_bad_addresses() {
    use layout::engine::*;
    let b = Backend::start(&[]);
    let mut c = b.client();
    assert_eq!(read32(&mut c, BAR4, ID), ID_VALUE);

    const GPA: u64 = 0x1_0000_0000;
    const RAM: usize = 2 << 20;
    let ram = map_guest_ram(&mut c, GPA, RAM);
    enable_msix(&mut c);
    let done = register_msix(&mut c, u32::from(layout::MSIX_VEC_DMA));

    // Guest -> device.
    let data = pattern(7, 64 << 10);
    ram.write(0x3000, &data);
    let s = dma(&mut c, GPA + 0x3000, 0x40_0000, data.len() as u64, false);
    assert_eq!(s & STATUS_ERROR, 0, "status {s:#x}");
    assert_ne!(s & STATUS_DONE, 0);
    let mut dev = vec![0u8; data.len()];
    c.region_read(BAR2, 0x40_0000, &mut dev).unwrap();
    assert_eq!(dev, data, "device memory after guest->device copy");
    assert!(
        wait_eventfd(done.as_raw_fd(), Duration::from_secs(2)).is_some(),
        "completion MSI-X"
    );

    // Device -> guest.
    let back = pattern(99, 8192);
    c.region_write(BAR2, 0x80_0000, &back).unwrap();
    let s = dma(&mut c, 0x80_0000, GPA + RAM as u64 - 8192, 8192, true);
    assert_eq!(s & STATUS_ERROR, 0, "status {s:#x}");
    assert_eq!(
        ram.read(RAM - 8192, 8192),
        back,
        "guest RAM after device->guest copy"
    );
    assert!(
        wait_eventfd(done.as_raw_fd(), Duration::from_secs(2)).is_some(),
        "completion MSI-X"
    );

    // A range running off the end of guest RAM: error status, nothing written.
    let before = ram.read(RAM - 16, 16);
    let s = dma(&mut c, 0x80_0000, GPA + RAM as u64 - 16, 32, true);
    assert_ne!(s & STATUS_ERROR, 0, "status {s:#x}");
    assert_eq!((s & STATUS_ERR_MASK) >> STATUS_ERR_SHIFT, ERR_GUEST_RANGE);
    assert_eq!(ram.read(RAM - 16, 16), before);
    // Unmapped source.
    let s = dma(&mut c, 0x10, 0, 64, false);
    assert_eq!(
        (s & STATUS_ERR_MASK) >> STATUS_ERR_SHIFT,
        ERR_GUEST_RANGE,
        "status {s:#x}"
    );

    // After DMA_UNMAP the range is gone.
    c.dma_unmap(GPA, RAM as u64).unwrap();
    let s = dma(&mut c, GPA, 0, 64, false);
    assert_ne!(s & STATUS_ERROR, 0, "status {s:#x}");

    // The daemon lives on.
    assert_eq!(read32(&mut c, BAR4, ID), ID_VALUE);
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert!(st["device"]["dma_errors"].as_u64().unwrap() >= 3, "{st}");
    assert!(
        st["device"]["dma_completions"].as_u64().unwrap() >= 2,
        "{st}"
    );
}

#[test]
fn state_survives_a_disconnect_in_mid_traffic() {
    let dir = std::sync::Arc::new(test_dir());
    let lsa = dir.path().join("lsa.bin");
    let b = Backend::start_in(dir.clone(), &["--lsa-file", lsa.to_str().unwrap()]);
    let data = pattern(3, 4096);
    {
        let mut c = b.client();
        c.region_write(BAR2, 0x10_0000, &data).unwrap();
        set_lsa(&mut c, 0x100, b"label storage survives");
        let fd = memfd(1 << 20);
        c.dma_map(0, 0x4000_0000, 1 << 20, fd.as_raw_fd()).unwrap();
    }
    {
        // A second client sends half a REGION_WRITE and vanishes.
        let mut r = b.raw();
        let mut m = Raw::header(77, CMD_REGION_WRITE, 16 + 16 + 4096, 0);
        m.extend_from_slice(&Raw::region_access(0x10_0000, BAR2, 4096));
        m.extend_from_slice(&[0xee; 100]);
        r.send_bytes(&m);
    }
    let mut c = b.client();
    let mut got = vec![0u8; data.len()];
    c.region_read(BAR2, 0x10_0000, &mut got).unwrap();
    assert_eq!(got, data, "device memory changed across clients");
    assert_eq!(get_lsa(&mut c, 0x100, 22), b"label storage survives");
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(
        st["dma"]["mappings"], 0,
        "the old client's DMA mappings must be gone: {st}"
    );
    assert_eq!(st["connection"]["connected"], true);
    assert!(
        st["connection"]["disconnects"].as_u64().unwrap() >= 2,
        "{st}"
    );
}

#[test]
fn memory_file_and_lsa_file_persist_across_a_restart() {
    let dir = std::sync::Arc::new(test_dir());
    let mem = dir.path().join("devmem.img");
    let lsa = dir.path().join("lsa.img");
    let args = file_backed_args(&mem, &lsa);
    let data = pattern(11, 8192);
    {
        let mut b = Backend::start_in(dir.clone(), &args);
        let mut c = b.client();
        let map = map_region(&c, BAR2, 0, (256 * MIB) as usize);
        map.write((200 * MIB) as usize, &data);
        set_lsa(&mut c, 0, b"persistent label");
        drop(map);
        drop(c);
        let status = b.stop();
        assert!(status.success(), "clean shutdown: {status}");
        assert!(!b.socket.exists(), "socket removed at shutdown");
        assert!(!b.control.exists(), "control socket removed at shutdown");
    }
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 256 * MIB);
    let mode = std::fs::metadata(&mem).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut b = Backend::start_in(dir.clone(), &args);
    let mut c = b.client();
    let mut got = vec![0u8; data.len()];
    c.region_read(BAR2, 200 * MIB, &mut got).unwrap();
    assert_eq!(got, data, "device memory lost across restart");
    assert_eq!(get_lsa(&mut c, 0, 16), b"persistent label");
    drop(c);
    assert!(b.stop().success());
}

#[test]
fn malformed_messages_do_not_kill_the_daemon_or_corrupt_state() {
    let mut b = Backend::start(&[]);
    {
        let mut c = b.client();
        c.region_write(BAR2, 0, b"precious").unwrap();
    }
    let check_alive = |b: &Backend| {
        let mut r = b.raw();
        let reply = r.read(BAR2, 0, 8);
        assert!(!reply.is_error(), "errno {}", reply.errno);
        assert_eq!(&reply.body[16..], b"precious");
    };

    // Truncated header, then close.
    {
        let mut r = Raw::connect(&b.socket);
        r.send_bytes(&Raw::header(0, CMD_VERSION, 16, 0)[..7]);
    }
    check_alive(&b);

    // A size field smaller than the header: the connection is dropped.
    {
        let mut r = b.raw();
        r.send_bytes(&Raw::header(5, CMD_DEVICE_GET_INFO, 8, 0));
        assert!(
            r.closed_by_peer(),
            "the server must drop a connection it cannot resync"
        );
    }
    check_alive(&b);

    // A size field far too big: an error reply or a dropped connection, never a crash.
    {
        let mut r = b.raw();
        r.send_bytes(&Raw::header(6, CMD_REGION_WRITE, u32::MAX, 0));
        let _ = r.stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut h = [0u8; 16];
        let _ = std::io::Read::read(&mut r.stream, &mut h);
    }
    check_alive(&b);

    let mut r = b.raw();
    // Unknown command: error reply with a real errno, the connection carries on.
    let reply = r.call(99, &[0; 8]);
    assert!(reply.is_error());
    assert_ne!(reply.errno, 0);
    // Region index out of range.
    let reply = r.read(42, 0, 4);
    assert!(reply.is_error());
    assert_eq!(reply.errno, libc::EINVAL as u32);
    // Offset + count past the region, and offset overflow.
    let reply = r.read(CONFIG, 4094, 4);
    assert!(reply.is_error());
    let reply = r.read(BAR0, u64::MAX - 1, 4);
    assert!(reply.is_error());
    let reply = r.read(BAR2, 512 * MIB - 2, 4);
    assert!(reply.is_error());
    // A write past the end of BAR2 changes nothing.
    let mut body = Raw::region_access(512 * MIB - 2, BAR2, 4);
    body.extend_from_slice(b"XXXX");
    let reply = r.call(CMD_REGION_WRITE, &body);
    assert!(reply.is_error());
    // Zero-length read.
    let reply = r.read(BAR0, 0, 0);
    assert!(reply.is_error() || reply.body.len() == 16, "{reply:?}");
    // 1 MiB read of BAR2: served whole or refused, never a crash.
    let reply = r.read(BAR2, 0, 1 << 20);
    if !reply.is_error() {
        assert_eq!(reply.body.len(), 16 + (1 << 20));
        assert_eq!(&reply.body[16..24], b"precious");
    }
    // Body shorter than the command needs.
    let reply = r.call(CMD_REGION_READ, &[1, 2, 3]);
    assert!(reply.is_error());
    // DMA_MAP of a range with no fd, then a read of a good register.
    let mut map = Vec::new();
    map.extend_from_slice(&32u32.to_le_bytes());
    map.extend_from_slice(&3u32.to_le_bytes());
    map.extend_from_slice(&0u64.to_le_bytes());
    map.extend_from_slice(&0xdead_0000u64.to_le_bytes());
    map.extend_from_slice(&0x1000u64.to_le_bytes());
    let reply = r.call(CMD_DMA_MAP, &map);
    assert!(
        !reply.is_error(),
        "DMA_MAP without an fd is accepted: errno {}",
        reply.errno
    );
    let reply = r.read(BAR4, layout::engine::ID, 4);
    assert!(!reply.is_error());
    assert_eq!(le32(&reply.body, 16), layout::engine::ID_VALUE);
    drop(r);

    // A good client afterwards still works, and state is intact.
    let mut c = b.client();
    let mut got = [0u8; 8];
    c.region_read(BAR2, 0, &mut got).unwrap();
    assert_eq!(&got, b"precious");
    let (rc, _) = mailbox(&mut c, mbx::OP_IDENTIFY_MEMORY_DEVICE, &[]);
    assert_eq!(rc, mbx::RC_SUCCESS);
    drop(c);
    assert!(b.is_running());
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert!(
        st["vfio_user"]["error_replies"].as_u64().unwrap() >= 6,
        "{st}"
    );
    assert!(
        st["vfio_user"]["dropped_connections"].as_u64().unwrap() >= 1,
        "{st}"
    );
}

#[test]
fn control_socket_status_poison_and_bad_requests() {
    let b = Backend::start(&["--memory-size", "512M"]);
    let mode = std::fs::metadata(&b.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mode = std::fs::metadata(&b.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["config"]["memory_size"], 512 * MIB);
    assert_eq!(st["config"]["flit"], "256b");
    assert_eq!(st["connection"]["connected"], false);

    // Bad requests get error replies; the server lives on.
    for bad in [
        "{not json",
        "[1,2]",
        r#"{"nocmd":1}"#,
        r#"{"cmd":"frobnicate"}"#,
        r#"{"cmd":"inject-poison"}"#,
        r#"{"cmd":"inject-poison","dpa":"zz"}"#,
    ] {
        let r = b.ctl(bad);
        assert_eq!(r["ok"], false, "{bad} -> {r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }

    let r = b.ctl(r#"{"cmd":"inject-poison","dpa":"0x1000","len":64}"#);
    assert_eq!(r["ok"], true, "{r}");
    let mut c = b.client();
    let mut input = 0u64.to_le_bytes().to_vec();
    input.extend_from_slice(&((512 * MIB) / mbx::poison::LINE).to_le_bytes());
    let (rc, out) = mailbox(&mut c, mbx::OP_GET_POISON_LIST, &input);
    assert_eq!(rc, mbx::RC_SUCCESS);
    let count = le16(&out, mbx::poison::OUT_COUNT);
    assert_eq!(count, 1, "poison list {out:?}");
    let addr = le64(&out, mbx::poison::OUT_RECORDS + mbx::poison::RECORD_ADDRESS);
    assert_eq!(addr & mbx::poison::ADDR_MASK, 0x1000);
    let len = le32(&out, mbx::poison::OUT_RECORDS + mbx::poison::RECORD_LENGTH);
    assert_eq!(len, 1);

    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["connection"]["connected"], true);
    assert!(st["vfio_user"]["messages"].as_u64().unwrap() > 0, "{st}");

    // The ctl subcommand is a client of the same socket.
    let (status, out, err) = run_cli(&["ctl", "--control", b.control.to_str().unwrap(), "status"]);
    assert!(status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    let (status, out, _) = run_cli(&[
        "ctl",
        "--control",
        b.control.to_str().unwrap(),
        "firmware",
        r#"{"key":"no-such-key","value":"1"}"#,
    ]);
    assert!(!status.success());
    assert!(out.contains("\"ok\": false"), "{out}");
}

#[test]
fn cli_errors_exit_nonzero_and_leave_nothing_behind() {
    let dir = test_dir();
    let sock = dir.path().join("s.sock");
    let mem = dir.path().join("mem.img");

    let (status, _, err) = run_cli(&[
        "--socket",
        sock.to_str().unwrap(),
        "--memory-size",
        "300M",
        "--memory-file",
        mem.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("256 MiB"), "{err}");
    assert!(!sock.exists() && !mem.exists());

    let (status, _, err) = run_cli(&["--socket", sock.to_str().unwrap(), "--memory-size", "lots"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(!sock.exists());

    let (status, _, err) = run_cli(&["--socket", sock.to_str().unwrap(), "--flit", "128b"]);
    assert_eq!(status.code(), Some(2), "{err}");

    let (status, _, err) = run_cli(&["--memory-size", "512M"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--socket"), "{err}");

    // A regular file where the socket goes: refused, left alone, nothing created.
    std::fs::write(&sock, b"not a socket").unwrap();
    let ctl = dir.path().join("c.sock");
    let (status, _, err) = run_cli(&[
        "--socket",
        sock.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
        "--memory-file",
        mem.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
    assert!(!mem.exists() && !ctl.exists());

    // A config file supplies options; the command line overrides it.
    let cfg = dir.path().join("backend.toml");
    std::fs::write(
        &cfg,
        "socket = \"/tmp/from-file.sock\"\nmemory-size = \"2G\"\nflit = \"68b\"\n",
    )
    .unwrap();
    let (status, out, err) = run_cli(&[
        "--config",
        cfg.to_str().unwrap(),
        "--socket",
        "/run/x.sock",
        "--print-qemu-args",
    ]);
    assert!(status.success(), "{err}");
    assert!(out.contains(r#""path":"/run/x.sock""#), "{out}");
    assert!(
        out.contains("hdm_for_passthrough=on") && out.contains("cxl-fmw.0.targets.0=cxl.1"),
        "{out}"
    );
    assert!(
        out.contains("memory-backend-memfd") && out.contains("share=on"),
        "{out}"
    );
    std::fs::write(&cfg, "sokcet = \"/tmp/x\"\n").unwrap();
    let (status, _, err) = run_cli(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("sokcet"), "{err}");

    let (status, out, _) = run_cli(&["--help"]);
    assert!(status.success());
    for opt in [
        "--socket",
        "--memory-size",
        "--memory-file",
        "--lsa-file",
        "--mailbox",
        "--flit",
        "--decoders",
        "--serial",
        "--vendor-id",
        "--device-id",
        "--firmware",
        "--control",
        "--once",
        "--print-qemu-args",
        "--config",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn stale_socket_is_replaced_and_once_exits_after_one_client() {
    let dir = std::sync::Arc::new(test_dir());
    // Leave stale sockets behind: bound, then the listener dropped.
    for name in ["vfio.sock", "control.sock"] {
        drop(std::os::unix::net::UnixListener::bind(dir.path().join(name)).unwrap());
        assert!(dir.path().join(name).exists());
    }
    let mut b = Backend::start_in(dir.clone(), &["--once"]);
    {
        let mut c = b.client();
        assert_eq!(
            read32(&mut c, BAR4, layout::engine::ID),
            layout::engine::ID_VALUE
        );
    }
    let status = b.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!dir.path().join("vfio.sock").exists());
    assert!(!dir.path().join("control.sock").exists());
}

#[test]
fn sigint_shuts_down_while_a_client_is_connected() {
    let mut b = Backend::start(&[]);
    let mut c = b.client();
    c.region_write(BAR2, 0, b"x").unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(b.pid(), libc::SIGINT) };
    let status = b.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!b.socket.exists());
}

#[test]
fn delayed_commit_completes_while_the_client_is_idle() {
    // slow-commit firmware delays every commit; the daemon's tick must finish it
    // with no further client traffic.
    let b = Backend::start(&[
        "--firmware",
        "slow-commit",
        "--firmware-param",
        "delay_ms=150",
    ]);
    let mut c = b.client();
    let v = program_decoder_no_wait(&mut c, 0, 0x2_0000_0000, 256 * MIB, hdm::CTRL_COMMIT);
    assert_eq!(
        v & (hdm::CTRL_COMMITTED | hdm::CTRL_ERROR_NOT_COMMITTED),
        0,
        "committed too early: {v:#x}"
    );
    std::thread::sleep(Duration::from_millis(400));
    let st = b.ctl(r#"{"cmd":"status"}"#);
    assert_eq!(st["device"]["decoders"][0]["committed"], true, "{st}");
    let v = read32(&mut c, BAR0, decoder_reg(0, hdm::DEC_CONTROL));
    assert_ne!(v & hdm::CTRL_COMMITTED, 0, "{v:#x}");

    // Parameters can be read and changed at run time.
    let r = b.ctl(r#"{"cmd":"firmware"}"#);
    assert_eq!(r["firmware"], "slow-commit", "{r}");
    assert_eq!(r["params"]["delay_ms"], "150", "{r}");
    let r = b.ctl(r#"{"cmd":"firmware","key":"delay_ms","value":0}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["params"]["delay_ms"], "0", "{r}");
    let r = b.ctl(r#"{"cmd":"firmware","key":"delay_ms","value":"soon"}"#);
    assert_eq!(r["ok"], false, "{r}");
}

/// [`write_decoder`], then one read of the control register.
fn program_decoder_no_wait(
    c: &mut vfio_user::Client,
    n: u32,
    base: u64,
    size: u64,
    ctrl: u32,
) -> u32 {
    write_decoder(c, n, base, size, ctrl);
    read32(c, BAR0, decoder_reg(n, hdm::DEC_CONTROL))
}

#[test]
fn bios_firmware_leaves_decoder_zero_committed() {
    let b = Backend::start(&[
        "--memory-size",
        "1G",
        "--firmware",
        "bios",
        "--firmware-param",
        "base=0x110000000",
        "--firmware-param",
        "size=512M",
    ]);
    let st = b.ctl(r#"{"cmd":"status"}"#);
    let d0 = &st["device"]["decoders"][0];
    assert_eq!(d0["committed"], true, "{st}");
    assert_eq!(d0["base"], 0x1_1000_0000u64, "{st}");
    assert_eq!(d0["size"], 512 * MIB, "{st}");
    let mut c = b.client();
    assert_eq!(read32(&mut c, BAR0, decoder_reg(0, hdm::DEC_BASE_HI)), 1);
    assert_eq!(
        read32(&mut c, BAR0, decoder_reg(0, hdm::DEC_BASE_LO)),
        0x1000_0000
    );
    assert_ne!(
        read32(&mut c, BAR0, decoder_reg(0, hdm::DEC_CONTROL)) & hdm::CTRL_COMMITTED,
        0
    );

    // A parameter the firmware does not know stops the daemon before it starts.
    let dir = test_dir();
    let sock = dir.path().join("s");
    let (status, _, err) = run_cli(&[
        "--socket",
        sock.to_str().unwrap(),
        "--firmware",
        "bios",
        "--firmware-param",
        "colour=blue",
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("colour"), "{err}");
    assert!(!sock.exists());
}

#[test]
fn injected_events_raise_the_event_vector_and_reach_the_log() {
    let b = Backend::start(&[]);
    let mut c = b.client();
    enable_msix(&mut c);
    let events = register_msix(&mut c, u32::from(layout::MSIX_VEC_EVENTS));
    // Event interrupt policy: MSI/MSI-X for every log, message number = the event vector.
    let policy = mbx::event_interrupt_policy::MODE_MSI
        | (layout::MSIX_VEC_EVENTS as u8) << mbx::event_interrupt_policy::MSGNUM_SHIFT;
    let (rc, _) = mailbox(&mut c, mbx::OP_SET_EVENT_INTERRUPT_POLICY, &[policy; 4]);
    assert_eq!(rc, mbx::RC_SUCCESS);

    let r = b.ctl(r#"{"cmd":"inject-event","log":"warning","flags":2,"data":"c0ffee"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        wait_eventfd(events.as_raw_fd(), Duration::from_secs(2)).is_some(),
        "event MSI-X"
    );
    let (rc, out) = mailbox(
        &mut c,
        mbx::OP_GET_EVENT_RECORDS,
        &[mbx::get_event_records::LOG_WARNING],
    );
    assert_eq!(rc, mbx::RC_SUCCESS);
    assert_eq!(
        le16(&out, mbx::get_event_records::OUT_RECORD_COUNT),
        1,
        "{out:?}"
    );
    let rec = mbx::get_event_records::OUT_RECORDS;
    assert_eq!(
        &out[rec + mbx::event_record::DATA..rec + mbx::event_record::DATA + 3],
        &[0xc0, 0xff, 0xee]
    );

    for bad in [
        r#"{"cmd":"inject-event","log":"loud"}"#,
        r#"{"cmd":"inject-event","data":"xyz"}"#,
    ] {
        assert_eq!(b.ctl(bad)["ok"], false, "{bad}");
    }
}

#[test]
fn injected_ras_errors_show_in_the_ras_capability() {
    use cxl_regs::component::ras;
    let b = Backend::start(&[]);
    let mut c = b.client();
    let r = b.ctl(r#"{"cmd":"inject-ras","uncorrectable":true,"bit":3}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = b.ctl(r#"{"cmd":"inject-ras","uncorrectable":false,"bit":1}"#);
    assert_eq!(r["ok"], true, "{r}");
    let ue = read32(
        &mut c,
        BAR0,
        layout::RAS_OFFSET + u64::from(ras::UNCORRECTABLE_STATUS),
    );
    let ce = read32(
        &mut c,
        BAR0,
        layout::RAS_OFFSET + u64::from(ras::CORRECTABLE_STATUS),
    );
    assert_ne!(ue & (1 << 3), 0, "{ue:#x}");
    assert_ne!(ce & (1 << 1), 0, "{ce:#x}");
    assert_eq!(b.ctl(r#"{"cmd":"inject-ras","bit":40}"#)["ok"], false);
}
