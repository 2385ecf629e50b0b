//! BAR behaviour: component registers, HDM commits through firmware, the device
//! register block and mailbox, the DMA engine, device memory, reset.

mod common;

use accel_type2::*;
use common::*;
use cxl_regs::component::{self as comp, ras};
use cxl_regs::hdm as h;
use cxl_regs::layout::{self, engine::*};
use cxl_regs::mailbox as mb;

fn dec(n: u32, reg: u32) -> u64 {
    layout::HDM_OFFSET + u64::from(h::decoder_offset(n) + reg)
}

/// Program decoder `n` (base, size) and write Control with `ctrl`.
fn program(d: &mut AccelDevice, n: u32, base: u64, size: u64, ctrl: u32) {
    bar_w32(d, 0, dec(n, h::DEC_BASE_LO), base as u32);
    bar_w32(d, 0, dec(n, h::DEC_BASE_HI), (base >> 32) as u32);
    bar_w32(d, 0, dec(n, h::DEC_SIZE_LO), size as u32);
    bar_w32(d, 0, dec(n, h::DEC_SIZE_HI), (size >> 32) as u32);
    bar_w32(d, 0, dec(n, h::DEC_CONTROL), ctrl);
}

fn control(d: &mut AccelDevice, n: u32) -> u32 {
    bar_r32(d, 0, dec(n, h::DEC_CONTROL))
}

#[test]
fn component_capability_array_like_the_kernel_reads_it() {
    let (mut d, _) = device(small_config());
    for off in (0..0x1000).step_by(0x100) {
        assert_eq!(bar_r32(&mut d, 0, off), 0, "CXL.io area is reserved");
    }
    let base = layout::CACHEMEM_OFFSET;
    let hdr = bar_r32(&mut d, 0, base);
    assert_eq!(hdr & 0xffff, 1);
    let n = comp::array_size(hdr);
    assert_eq!(n, 3);
    let mut found = Vec::new();
    for i in 1..=u64::from(n) {
        let e = bar_r32(&mut d, 0, base + 4 * i);
        found.push((comp::entry_id(e), u64::from(comp::entry_pointer(e))));
    }
    assert_eq!(
        found,
        vec![
            (2, u64::from(layout::RAS_CAP_PTR)),
            (4, u64::from(layout::LINK_CAP_PTR)),
            (5, u64::from(layout::HDM_CAP_PTR)),
        ]
    );
    // Link capability reports CXL link version 2.
    assert_eq!(bar_r32(&mut d, 0, layout::LINK_OFFSET) & 0xff, 0x22);
    bar_w32(&mut d, 0, layout::LINK_OFFSET + 8, !0);
    assert_eq!(bar_r32(&mut d, 0, layout::LINK_OFFSET + 8), 0);
}

#[test]
fn ras_through_bar0() {
    let (mut d, _) = device(small_config());
    let r = layout::RAS_OFFSET;
    d.try_inject_ras(true, 14, &[0xabcd; 16]).unwrap();
    d.inject_ras(true, 2);
    d.inject_ras(false, 6);
    d.inject_ras(true, 13); // reserved: ignored
    assert_eq!(
        bar_r32(&mut d, 0, r + u64::from(ras::UNCORRECTABLE_STATUS)),
        (1 << 14) | (1 << 2)
    );
    assert_eq!(
        bar_r32(&mut d, 0, r + u64::from(ras::CAP_CONTROL)) & 0x3f,
        14
    );
    assert_eq!(bar_r32(&mut d, 0, r + u64::from(ras::HEADER_LOG)), 0xabcd);
    assert_eq!(
        bar_r32(&mut d, 0, r + u64::from(ras::CORRECTABLE_STATUS)),
        1 << 6
    );
    // RW1C at byte width: 0x40 in byte 0 is bit 6 (not set), in byte 1 bit 14.
    d.bar_write(0, r, &[0x40], &NoGuestMemory);
    d.bar_write(0, r + 2, &[0x40], &NoGuestMemory);
    assert_eq!(bar_r32(&mut d, 0, r), (1 << 14) | (1 << 2));
    d.bar_write(0, r + 1, &[0x40], &NoGuestMemory);
    assert_eq!(bar_r32(&mut d, 0, r), 1 << 2);
    assert!(matches!(
        d.try_inject_ras(false, 9, &[0; 16]),
        Err(RasError::BadCorrectableBit(9))
    ));
    assert_eq!(d.status().ras_injected, 3);
}

#[test]
fn decoder_commit_with_default_firmware() {
    let (mut d, _) = device(small_config());
    bar_w32(
        &mut d,
        0,
        layout::HDM_OFFSET + 4,
        h::GCTRL_HDM_DECODER_ENABLE,
    );
    program(&mut d, 0, 0x1_1000_0000, 256 * MIB, h::CTRL_COMMIT);
    let c = control(&mut d, 0);
    assert_ne!(c & h::CTRL_COMMITTED, 0, "committed at once");
    assert_eq!(c & h::CTRL_ERROR_NOT_COMMITTED, 0);
    assert_eq!(bar_r32(&mut d, 0, dec(0, h::DEC_BASE_LO)) & 0x0fff_ffff, 0);
    let st = d.status();
    assert!(st.hdm_global_enable);
    assert!(st.decoders[0].committed);
    assert_eq!(st.decoders[0].base, 0x1_1000_0000);
    assert_eq!(st.commits.accepted, 1);
    // Uncommit.
    bar_w32(&mut d, 0, dec(0, h::DEC_CONTROL), 0);
    assert_eq!(control(&mut d, 0) & h::CTRL_COMMITTED, 0);
    // A zero-size commit fails the spec checks.
    program(&mut d, 0, 0x1_1000_0000, 0, h::CTRL_COMMIT);
    assert_ne!(control(&mut d, 0) & h::CTRL_ERROR_NOT_COMMITTED, 0);
    assert_eq!(control(&mut d, 0) & h::CTRL_COMMITTED, 0);
}

#[test]
fn decoder_commit_is_delayed_by_slow_commit_firmware() {
    let (mut d, clock) = device_with(small_config(), Box::new(SlowCommitFirmware::default()));
    program(&mut d, 0, 0x1_1000_0000, 256 * MIB, h::CTRL_COMMIT);
    let c = control(&mut d, 0);
    assert_ne!(c & h::CTRL_COMMIT, 0);
    assert_eq!(
        c & (h::CTRL_COMMITTED | h::CTRL_ERROR_NOT_COMMITTED),
        0,
        "pending"
    );
    assert_eq!(d.next_deadline(), Some(5_000_000));
    clock.advance(4_999_999);
    assert_eq!(control(&mut d, 0) & h::CTRL_COMMITTED, 0);
    clock.advance(1);
    // No explicit poll: the BAR0 read finishes the commit lazily.
    assert_ne!(control(&mut d, 0) & h::CTRL_COMMITTED, 0);
    assert_eq!(d.next_deadline(), None);
    assert_eq!(d.status().commits.delayed, 1);
}

#[test]
fn delayed_commit_finishes_on_poll_and_is_dropped_by_uncommit_and_reset() {
    let (mut d, clock) = device_with(
        small_config(),
        Box::new(SlowCommitFirmware::new(1000, None)),
    );
    program(&mut d, 0, 0x1_1000_0000, 256 * MIB, h::CTRL_COMMIT);
    clock.advance(1000);
    d.poll();
    assert!(d.hdm().decoder(0).unwrap().committed);
    // Uncommit, commit again, then uncommit before the deadline: nothing commits.
    bar_w32(&mut d, 0, dec(0, h::DEC_CONTROL), 0);
    bar_w32(&mut d, 0, dec(0, h::DEC_CONTROL), h::CTRL_COMMIT);
    bar_w32(&mut d, 0, dec(0, h::DEC_CONTROL), 0);
    assert_eq!(d.next_deadline(), None);
    clock.advance(5000);
    d.poll();
    assert!(!d.hdm().decoder(0).unwrap().committed);
    // Reset drops a pending commit.
    bar_w32(&mut d, 0, dec(0, h::DEC_CONTROL), h::CTRL_COMMIT);
    d.reset();
    assert_eq!(d.next_deadline(), None);
}

#[test]
fn slow_commit_rejects_decoders_over_its_size_limit() {
    let mut fw = SlowCommitFirmware::default();
    fw.set_param("max_size", "256M").unwrap();
    fw.set_param("delay_ms", "0").unwrap();
    let (mut d, _) = device_with(
        AccelConfig {
            memory_size: 512 * MIB,
            ..AccelConfig::default()
        },
        Box::new(fw),
    );
    program(&mut d, 0, 0x1_0000_0000, 512 * MIB, h::CTRL_COMMIT);
    let c = control(&mut d, 0);
    assert_ne!(c & h::CTRL_ERROR_NOT_COMMITTED, 0, "rejected by firmware");
    assert_eq!(c & h::CTRL_COMMITTED, 0);
    assert_eq!(d.status().commits.rejected_by_firmware, 1);
    // Within the limit it commits (delay 0 = at once).
    bar_w32(&mut d, 0, dec(0, h::DEC_CONTROL), 0);
    program(&mut d, 0, 0x1_0000_0000, 256 * MIB, h::CTRL_COMMIT);
    assert_ne!(control(&mut d, 0) & h::CTRL_COMMITTED, 0);
    // Parameters can change at run time through firmware_mut.
    d.firmware_mut().set_param("max_size", "none").unwrap();
    assert_eq!(d.firmware().params()[1].1, "none");
}

#[test]
fn bios_firmware_commits_at_power_on_and_after_reset() {
    let mut fw = BiosFirmware::default();
    fw.set_param("base", "0x110000000").unwrap();
    let (mut d, _) = device_with(small_config(), Box::new(fw));
    let check = |d: &mut AccelDevice| {
        let st = d.status();
        assert!(st.decoders[0].committed && st.decoders[0].locked);
        assert!(!st.decoders[0].host_only);
        assert!(st.hdm_global_enable, "HDM Decoder Enable set");
        assert!(st.mem_enable, "DVSEC Mem_Enable set");
        let c = find_dvsec(d, 0).unwrap();
        assert_eq!(cfg_r32(d, c + 0x20), 1, "range 1 base mirrors decoder 0");
        assert_eq!(cfg_r32(d, c + 0x24), 0x1000_0000);
        assert_ne!(control(d, 0) & h::CTRL_COMMITTED, 0);
    };
    check(&mut d);
    // Locked: the guest cannot uncommit it.
    bar_w32(&mut d, 0, dec(0, h::DEC_CONTROL), 0);
    assert_ne!(control(&mut d, 0) & h::CTRL_COMMITTED, 0);
    d.reset();
    check(&mut d);
}

#[test]
fn device_register_block() {
    let (mut d, _) = device(small_config());
    let b = layout::DEVICE_BLOCK_OFFSET;
    let mut caps = Vec::new();
    let count = (bar_r64(&mut d, 0, b) >> 32) & 0xffff;
    for k in 1..=count {
        let id = bar_r32(&mut d, 0, b + 0x10 * k) & 0xffff;
        let off = bar_r32(&mut d, 0, b + 0x10 * k + 4);
        let len = bar_r32(&mut d, 0, b + 0x10 * k + 8);
        caps.push((id, off, len));
    }
    assert_eq!(caps[0], (1, layout::DEV_STATUS_CAP_OFFSET, 8));
    assert_eq!(caps[1].0, 2);
    assert_eq!(caps[1].1, layout::MAILBOX_CAP_OFFSET);
    assert_eq!(caps[1].2, 0x20 + layout::MAILBOX_PAYLOAD_SIZE);
    assert_eq!(
        (u64::from(caps[1].1) + 0x20 + b) % 4096,
        0,
        "payload on a page boundary"
    );
    assert_eq!(caps[2], (0x4000, layout::MEMDEV_STATUS_CAP_OFFSET, 8));
    let md = bar_r64(&mut d, 0, layout::MEMDEV_STATUS_OFFSET);
    assert_eq!((md >> 2) & 3, 1, "media ready");
    assert_ne!(md & (1 << 4), 0, "mailbox interface ready");
    // Read-only: writes change nothing.
    bar_w64(&mut d, 0, layout::MEMDEV_STATUS_OFFSET, 0);
    bar_w64(&mut d, 0, b, !0);
    assert_eq!(bar_r64(&mut d, 0, layout::MEMDEV_STATUS_OFFSET), md);
    assert_eq!((bar_r64(&mut d, 0, b) >> 32) & 0xffff, 3);
}

#[test]
fn mailbox_identify_through_bar0() {
    let (mut d, _) = device(AccelConfig {
        memory_size: 512 * MIB,
        ..AccelConfig::default()
    });
    let (rc, out) = mbox_cmd(&mut d, mb::OP_IDENTIFY_MEMORY_DEVICE, &[]);
    assert_eq!(rc, mb::RC_SUCCESS);
    assert_eq!(out.len(), mb::IDENTIFY_OUTPUT_LEN);
    let total = u64::from_le_bytes(out[0x10..0x18].try_into().unwrap());
    assert_eq!(total, 2, "512 MiB in 256 MiB units");
    let (rc, _) = mbox_cmd(&mut d, 0x7777, &[]);
    assert_eq!(rc, mb::RC_UNSUPPORTED);
    assert_eq!(d.status().mailbox_commands, 2);
}

/// Firmware with a vendor command: 0xC001 echoes its input reversed.
struct EchoFirmware;
impl Firmware for EchoFirmware {
    fn name(&self) -> &str {
        "echo"
    }
    fn vendor_command(
        &mut self,
        opcode: u16,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode> {
        if opcode != 0xc001 {
            return Err(ReturnCode::Unsupported);
        }
        output.extend(input.iter().rev());
        Ok(())
    }
}

#[test]
fn vendor_mailbox_commands_reach_the_firmware() {
    let (mut d, _) = device_with(small_config(), Box::new(EchoFirmware));
    let (rc, out) = mbox_cmd(&mut d, 0xc001, &[1, 2, 3]);
    assert_eq!(rc, mb::RC_SUCCESS);
    assert_eq!(out, vec![3, 2, 1]);
    let (rc, _) = mbox_cmd(&mut d, 0xc002, &[]);
    assert_eq!(rc, mb::RC_UNSUPPORTED);
}

#[test]
fn injected_events_show_in_device_status_and_raise_the_event_vector() {
    let (mut d, _) = device(small_config());
    enable_msix(&mut d);
    // Event interrupts in MSI-X mode for all four logs (Set Event Interrupt Policy).
    let (rc, _) = mbox_cmd(&mut d, mb::OP_SET_EVENT_INTERRUPT_POLICY, &[1, 1, 1, 1]);
    assert_eq!(rc, mb::RC_SUCCESS);
    d.take_interrupts();
    let rec = EventRecord {
        uuid: [7; 16],
        flags: 0,
        data: vec![0; 0x50],
    };
    d.inject_event(EventLog::Warning, rec);
    assert_eq!(
        bar_r32(&mut d, 0, layout::DEV_STATUS_OFFSET) & 0xf,
        1 << 1,
        "warning log has records"
    );
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_EVENTS)]
    );
}

#[test]
fn sanitize_completes_in_the_background_and_zeroes_memory() {
    let (mut d, clock) = device(small_config());
    enable_msix(&mut d);
    d.bar_write(2, 0x1000, &[0xaa; 64], &NoGuestMemory);
    d.bar_write(2, 256 * MIB - 8, &[0xbb; 8], &NoGuestMemory);
    // Background-completion interrupt enabled, then Sanitize.
    bar_w32(&mut d, 0, layout::MAILBOX_OFFSET + 4, mb::CTRL_BG_IRQ);
    bar_w64(
        &mut d,
        0,
        layout::MAILBOX_OFFSET + 8,
        u64::from(mb::OP_SANITIZE),
    );
    bar_w32(
        &mut d,
        0,
        layout::MAILBOX_OFFSET + 4,
        mb::CTRL_BG_IRQ | mb::CTRL_DOORBELL,
    );
    let st = bar_r64(&mut d, 0, layout::MAILBOX_OFFSET + 0x10);
    assert_eq!((st >> 32) as u16, mb::RC_BACKGROUND_STARTED);
    let deadline = d.next_deadline().expect("background work scheduled");
    clock.advance(deadline);
    d.poll();
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_MAILBOX)]
    );
    let mut b = [0xffu8; 64];
    d.bar_read(2, 0x1000, &mut b);
    assert_eq!(b, [0; 64]);
    d.bar_read(2, 256 * MIB - 8, &mut b[..8]);
    assert_eq!(b[..8], [0; 8]);
}

#[test]
fn poison_injection_is_listed_and_stops_dma_reads() {
    let (mut d, _) = device(small_config());
    let guest = TestGuest::new(0x10_0000, 8192);
    enable_bus_master(&mut d);
    d.inject_poison(0x2000, 64).unwrap();
    assert_eq!(d.mailbox().unwrap().poison_list(), vec![(0x2000, 64)]);
    bar_w64(&mut d, 4, SRC, 0x1fc0);
    bar_w64(&mut d, 4, DST, 0x10_0000);
    bar_w64(&mut d, 4, LEN, 128);
    bar_w32(&mut d, 4, CONTROL, CONTROL_DIR_TO_GUEST);
    d.bar_write(4, DOORBELL, &1u32.to_le_bytes(), &guest);
    let s = bar_r32(&mut d, 4, STATUS);
    assert_eq!(s, STATUS_ERROR | (ERR_POISON << STATUS_ERR_SHIFT));
}

#[test]
fn clear_poison_writes_its_data_to_device_memory() {
    let (mut d, _) = device(small_config());
    let dpa = 0x12_3440u64;
    // Inject Poison through the mailbox (CXL r3.1 §8.2.9.9.4.2).
    let (rc, _) = mbox_cmd(&mut d, mb::OP_INJECT_POISON, &dpa.to_le_bytes());
    assert_eq!(rc, mb::RC_SUCCESS);
    assert_eq!(d.mailbox().unwrap().poison_list(), vec![(dpa, 64)]);
    // Clear Poison (§8.2.9.9.4.3): the DPA, then 64 bytes of write data.
    let pattern: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5c).collect();
    let mut input = dpa.to_le_bytes().to_vec();
    input.extend_from_slice(&pattern);
    assert_eq!(input.len(), 72);
    let (rc, _) = mbox_cmd(&mut d, mb::OP_CLEAR_POISON, &input);
    assert_eq!(rc, mb::RC_SUCCESS);
    assert!(d.mailbox().unwrap().poison_list().is_empty());
    // BAR2 reads the data the command carried, and only that line changed.
    let mut line = vec![0u8; 64];
    d.bar_read(2, dpa, &mut line);
    assert_eq!(line, pattern);
    let mut around = [0xffu8; 8];
    d.bar_read(2, dpa - 8, &mut around);
    assert_eq!(around, [0; 8]);
    d.bar_read(2, dpa + 64, &mut around);
    assert_eq!(around, [0; 8]);
}

fn dma(d: &mut AccelDevice, guest: &TestGuest, src: u64, dst: u64, len: u64, control: u32) -> u32 {
    bar_w64(d, 4, SRC, src);
    bar_w64(d, 4, DST, dst);
    bar_w64(d, 4, LEN, len);
    bar_w32(d, 4, CONTROL, control);
    d.bar_write(4, DOORBELL, &1u32.to_le_bytes(), guest);
    bar_r32(d, 4, STATUS)
}

#[test]
fn dma_both_ways_with_msix_completion() {
    let (mut d, _) = device(small_config());
    let guest = TestGuest::new(0x4000_0000, 1 << 20);
    enable_bus_master(&mut d);
    enable_msix(&mut d);
    assert_eq!(bar_r32(&mut d, 4, ID), u32::from_le_bytes(*b"CXLA"));
    let pattern: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    guest.fill(0x4000_0000, &pattern);
    let s = dma(
        &mut d,
        &guest,
        0x4000_0000,
        0x10_0000,
        pattern.len() as u64,
        CONTROL_IRQ_ENABLE,
    );
    assert_eq!(s, STATUS_DONE);
    let mut got = vec![0; pattern.len()];
    d.memory().read(0x10_0000, &mut got).unwrap();
    assert_eq!(got, pattern, "guest -> device, across several chunks");
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_DMA)]
    );
    // DONE is RW1C.
    bar_w32(&mut d, 4, STATUS, STATUS_DONE);
    assert_eq!(bar_r32(&mut d, 4, STATUS), 0);
    // Device -> guest, into another place, without interrupt.
    let s = dma(
        &mut d,
        &guest,
        0x10_0000,
        0x4008_0000,
        pattern.len() as u64,
        CONTROL_DIR_TO_GUEST,
    );
    assert_eq!(s, STATUS_DONE);
    assert_eq!(guest.get(0x4008_0000, pattern.len()), pattern);
    assert!(d.take_interrupts().is_empty());
    assert_eq!(bar_r32(&mut d, 4, COMPLETIONS), 2);
    let st = d.status();
    assert_eq!(
        (st.dma_completions, st.dma_errors, st.dma_bytes),
        (2, 0, 400_000)
    );
}

#[test]
fn dma_errors_set_status_and_never_panic() {
    let (mut d, _) = device(small_config());
    let guest = TestGuest::new(0x4000_0000, 4096);
    enable_msix(&mut d);
    let err = |code: u32| STATUS_ERROR | (code << STATUS_ERR_SHIFT);
    // Bus master off: nothing moves.
    assert_eq!(
        dma(&mut d, &guest, 0x4000_0000, 0, 64, 0),
        err(ERR_BUS_MASTER)
    );
    enable_bus_master(&mut d);
    assert_eq!(dma(&mut d, &guest, 0x4000_0000, 0, 0, 0), err(ERR_LENGTH));
    assert_eq!(
        dma(&mut d, &guest, 0x4000_0000, 0, MAX_LEN + 1, 0),
        err(ERR_LENGTH)
    );
    assert_eq!(
        dma(&mut d, &guest, 0x4000_0000, 256 * MIB - 32, 64, 0),
        err(ERR_DEVICE_RANGE)
    );
    assert_eq!(
        dma(&mut d, &guest, 0x4000_0000, u64::MAX - 8, 64, 0),
        err(ERR_DEVICE_RANGE)
    );
    assert_eq!(
        dma(&mut d, &guest, 0x3fff_f000, 0, 64, 0),
        err(ERR_GUEST_RANGE)
    );
    assert_eq!(
        dma(&mut d, &guest, 0x4000_0f00, 0, 512, 0),
        err(ERR_GUEST_RANGE),
        "runs off the end"
    );
    assert_eq!(
        dma(&mut d, &guest, u64::MAX - 8, 0, 64, CONTROL_DIR_TO_GUEST),
        err(ERR_DEVICE_RANGE)
    );
    assert_eq!(
        dma(&mut d, &guest, u64::MAX - 8, 0, 64, 0),
        err(ERR_GUEST_RANGE),
        "GPA wraps"
    );
    assert_eq!(
        dma(&mut d, &guest, 0, u64::MAX - 8, 64, CONTROL_DIR_TO_GUEST),
        err(ERR_GUEST_RANGE)
    );
    // An error with the interrupt enabled still signals completion.
    assert_eq!(
        dma(&mut d, &guest, 0x3000_0000, 0, 64, CONTROL_IRQ_ENABLE),
        err(ERR_GUEST_RANGE)
    );
    assert_eq!(
        d.take_interrupts(),
        vec![Interrupt::Msix(layout::MSIX_VEC_DMA)]
    );
    // Clearing ERROR clears the code too; writing DONE alone does not.
    bar_w32(&mut d, 4, STATUS, STATUS_DONE);
    assert_eq!(bar_r32(&mut d, 4, STATUS), err(ERR_GUEST_RANGE));
    bar_w32(&mut d, 4, STATUS, STATUS_ERROR);
    assert_eq!(bar_r32(&mut d, 4, STATUS), 0);
    assert_eq!(d.status().dma_errors, 11);
    assert_eq!(bar_r32(&mut d, 4, COMPLETIONS), 0);
}

#[test]
fn dma_falls_back_to_intx_without_msix() {
    let (mut d, _) = device(small_config());
    let guest = TestGuest::new(0, 4096);
    enable_bus_master(&mut d);
    assert_eq!(
        dma(&mut d, &guest, 0, 0, 64, CONTROL_IRQ_ENABLE),
        STATUS_DONE
    );
    assert_eq!(d.take_interrupts(), vec![Interrupt::Intx]);
    assert_ne!(cfg_r16(&mut d, 6) & 0x8, 0, "Interrupt Status set");
    bar_w32(&mut d, 4, STATUS, STATUS_DONE);
    assert_eq!(
        cfg_r16(&mut d, 6) & 0x8,
        0,
        "deasserted once the completion is cleared"
    );
    // With INTx disabled nothing is sent.
    let cmd = cfg_r16(&mut d, 4);
    cfg_w16(&mut d, 4, cmd | 0x400);
    assert_eq!(
        dma(&mut d, &guest, 0, 0, 64, CONTROL_IRQ_ENABLE),
        STATUS_DONE
    );
    assert!(d.take_interrupts().is_empty());
    assert_eq!(cfg_r16(&mut d, 6) & 0x8, 0);
}

#[test]
fn engine_registers_at_any_width_and_alignment() {
    let (mut d, _) = device(small_config());
    bar_w64(&mut d, 4, SRC, 0x1122_3344_5566_7788);
    let mut b = [0u8; 1];
    for i in 0..8 {
        d.bar_read(4, SRC + i, &mut b);
        assert_eq!(b[0], (0x1122_3344_5566_7788u64 >> (8 * i)) as u8);
    }
    // A 2-byte write straddling the low and high dwords of SRC.
    d.bar_write(4, SRC + 3, &[0xaa, 0xbb], &NoGuestMemory);
    assert_eq!(bar_r64(&mut d, 4, SRC), 0x1122_33bb_aa66_7788);
    // An unaligned 8-byte read across SRC and DST.
    bar_w64(&mut d, 4, DST, 0x99);
    let mut q = [0u8; 8];
    d.bar_read(4, SRC + 4, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x0000_0099_1122_33bb);
    // A 16-byte write covers SRC and DST.
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&1u64.to_le_bytes());
    buf[8..].copy_from_slice(&2u64.to_le_bytes());
    d.bar_write(4, SRC, &buf, &NoGuestMemory);
    assert_eq!((bar_r64(&mut d, 4, SRC), bar_r64(&mut d, 4, DST)), (1, 2));
    // MSI-X table through BAR4 at byte width.
    let t = u64::from(layout::MSIX_TABLE_OFFSET);
    d.bar_write(4, t + 8, &[0x41, 0x40], &NoGuestMemory);
    assert_eq!(bar_r32(&mut d, 4, t + 8), 0x4041);
    // Holes and absent BARs read 0.
    assert_eq!(bar_r32(&mut d, 4, 0x1000), 0);
    assert_eq!(bar_r32(&mut d, 1, 0), 0);
    assert_eq!(bar_r32(&mut d, 9, 0), 0);
    assert_eq!(bar_r32(&mut d, 4, layout::BAR4_SIZE + 0x100), 0);
}

#[test]
fn bar2_is_device_memory() {
    let (mut d, _) = device(small_config());
    d.bar_write(2, 0x123, &[1, 2, 3, 4, 5], &NoGuestMemory);
    let mut b = [0u8; 5];
    d.memory().read(0x123, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4, 5]);
    // Straddling the end: the inside part is written, the rest dropped / read 0.
    d.bar_write(2, 256 * MIB - 2, &[9, 9, 9, 9], &NoGuestMemory);
    let mut e = [0xffu8; 4];
    d.bar_read(2, 256 * MIB - 2, &mut e);
    assert_eq!(e, [9, 9, 0, 0]);
    d.bar_read(2, u64::MAX, &mut e);
    assert_eq!(e, [0; 4]);
}

#[test]
fn reset_keeps_memory_and_clears_registers() {
    let (mut d, _) = device(small_config());
    enable_bus_master(&mut d);
    d.bar_write(2, 0, &[0x5a; 16], &NoGuestMemory);
    program(&mut d, 0, 0x1_0000_0000, 256 * MIB, h::CTRL_COMMIT);
    bar_w64(&mut d, 4, SRC, 0x1234);
    d.inject_ras(false, 0);
    d.reset();
    assert_eq!(cfg_r16(&mut d, 4), 0);
    assert_eq!(bar_r64(&mut d, 4, SRC), 0);
    assert!(!d.hdm().decoder(0).unwrap().committed);
    let mut b = [0u8; 16];
    d.bar_read(2, 0, &mut b);
    assert_eq!(b, [0x5a; 16]);
    assert_eq!(
        bar_r32(&mut d, 0, layout::RAS_OFFSET + 0xc),
        1,
        "RAS status is sticky"
    );
}
