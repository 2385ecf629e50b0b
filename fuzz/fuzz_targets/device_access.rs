//! Fuzz target: the device model (`accel_type2::AccelDevice`) as a hostile guest
//! sees it.
//!
//! Arbitrary sequences of config space, BAR0, BAR2, BAR4 (and absent BAR)
//! reads and writes at any width and offset, with helpers that reach deep states
//! quickly (decoder programming and commit, mailbox commands, DMA transfers,
//! MSI-X and bus-master toggles), time advancing on a fake clock, polls, resets,
//! FLRs, CXL Resets and fault injection. Device memory is a sparse fake; guest RAM is a fake
//! with a few mapped ranges that records every access; firmware is one of the
//! shipped models or one driven by the input (commit decisions, vendor commands,
//! power-on decoders).
//!
//! Checked after every step, beyond not panicking:
//! - the HDM bank's invariants (`check_invariants`: committed decoders valid, in
//!   order, non-overlapping in HPA and DPA, inside the capacity);
//! - resets as CXL r3.1 chapter 9 has them: a locked decoder is unchanged until a
//!   conventional reset (DEVICE_RESET); an FLR changes no CXL.mem state (the
//!   decoders, HDM Global Control, DVSEC Control, Lock and Range Bases: §9.5); a
//!   CXL Reset returns every unlocked decoder and HDM Decoder Enable to 0 and the
//!   DVSEC fields too unless CONFIG_LOCK is set (§9.7, §8.1.3.6, Table 8-1), and
//!   while it runs BAR0 and BAR4 read all ones and take no DMA doorbell;
//! - DMA: guest RAM is touched only by a doorbell, only with Bus Master Enable,
//!   only inside the programmed window, in order, stopping at the first
//!   unmapped access; a guest access outside the mapped ranges is refused by the
//!   fake and reported as a guest-range error; a completed transfer copied exactly
//!   the right bytes; STATUS reports DONE or ERROR, never BUSY, after the doorbell;
//! - read-only config registers (identity, class, header type, capability
//!   pointers and headers, BAR type and size bits, DSN, DVSEC headers, Register
//!   Locator, the DOE header) never change; DOE Status holds only its defined
//!   bits, with Busy exactly while a response is ready; reserved bits of the HDM,
//!   engine and mailbox registers read 0; the mailbox doorbell reads 0 and Status
//!   holds a spec return code;
//! - BAR2 reads and writes go to device memory exactly; interrupts are only MSI-X
//!   vectors that exist, raised while MSI-X is on and unmasked, or INTx while
//!   MSI-X is off and INTx is enabled.

#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use accel_type2::config_space::{DOE_CAP, DVSEC_DEVICE as DVSEC, EXP_CAP, MSIX_CAP};
use accel_type2::{
    AccelConfig, AccelDevice, CommitDecision, CxlResetDecision, DeviceMemory, EventLog,
    EventRecord, Firmware, FlitMode, GuestMemory, Interrupt, MemLsa, MemoryError,
};
use arbitrary::Arbitrary;
use cxl_accel_fuzz::{hook_rc, spec_rc, stats, FakeClock, Rng};
use cxl_regs::doe;
use cxl_regs::hdm as h;
use cxl_regs::layout::{self, engine as e};
use cxl_regs::mailbox as mb;
use cxl_regs::pci;
use libfuzzer_sys::fuzz_target;

const MEM_SIZE: u64 = 256 << 20;
const GRAN: u64 = h::GRANULE;
const PAGE: u64 = 4096;

// ---- input ---------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct Input {
    decoders: u8,
    hdm_count: bool,
    /// The mailbox is off when this is below 16 (one input in 16).
    mailbox: u8,
    flit68: bool,
    firmware: Fw,
    guest: Vec<GuestRange>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Fw {
    Default,
    Slow {
        delay_us: u16,
        max_granules: u8,
    },
    Bios {
        base_granules: u16,
        size_granules: u8,
    },
    Fuzz {
        seed: u64,
        power_on: Vec<PowerOn>,
    },
}

#[derive(Arbitrary, Debug, Clone)]
struct PowerOn {
    index: u8,
    base: u16,
    size: u8,
    skip: u8,
    iw: u8,
    ig: u8,
    lock: bool,
    host_only: bool,
}

#[derive(Arbitrary, Debug)]
struct GuestRange {
    page: u16,
    pages: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Width {
    B1,
    B2,
    B4,
    B8,
    Len(u8),
}

impl Width {
    fn len(self) -> usize {
        match self {
            Width::B1 => 1,
            Width::B2 => 2,
            Width::B4 => 4,
            Width::B8 => 8,
            Width::Len(n) => usize::from(n % 72),
        }
    }
    fn bytes(self, value: u64) -> Vec<u8> {
        let v = value.to_le_bytes();
        (0..self.len()).map(|i| v[i % 8] ^ (i / 8) as u8).collect()
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Bar0Base {
    CacheMem,
    Ras,
    Link,
    Hdm,
    DeviceBlock,
    Mailbox,
    Payload,
    End,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Bar4Base {
    Engine,
    Table,
    Pba,
    End,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    Config(u16),
    Bar0(Bar0Base, u16),
    Bar2(u32),
    Bar4(Bar4Base, u8),
    /// Any BAR number (absent ones included) at any offset.
    Raw(u8, u64),
}

impl Target {
    /// (None = config space, Some(bar)), offset.
    fn resolve(self) -> (Option<u8>, u64) {
        match self {
            Target::Config(o) => (None, u64::from(o % 0x1010)),
            Target::Bar0(b, d) => {
                let base = match b {
                    Bar0Base::CacheMem => layout::CACHEMEM_OFFSET,
                    Bar0Base::Ras => layout::RAS_OFFSET,
                    Bar0Base::Link => layout::LINK_OFFSET,
                    Bar0Base::Hdm => layout::HDM_OFFSET,
                    Bar0Base::DeviceBlock => layout::DEVICE_BLOCK_OFFSET,
                    Bar0Base::Mailbox => layout::MAILBOX_OFFSET,
                    Bar0Base::Payload => layout::MAILBOX_PAYLOAD_OFFSET,
                    Bar0Base::End => layout::BAR0_SIZE - 0x100,
                };
                (Some(layout::BAR_REGS), base + u64::from(d % 0x200))
            }
            Target::Bar2(o) => (Some(layout::BAR_MEM), u64::from(o) % (MEM_SIZE + 64)),
            Target::Bar4(b, d) => {
                let base = match b {
                    Bar4Base::Engine => layout::ENGINE_OFFSET,
                    Bar4Base::Table => u64::from(layout::MSIX_TABLE_OFFSET),
                    Bar4Base::Pba => u64::from(layout::MSIX_PBA_OFFSET),
                    Bar4Base::End => layout::BAR4_SIZE - 0x40,
                };
                (Some(layout::BAR_ENGINE), base + u64::from(d % 0x48))
            }
            Target::Raw(bar, off) => (Some(bar % 8), off),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// Inside (or just past) guest range `i`.
    Guest(u8, u32),
    Dpa(u32),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        at: Target,
        width: Width,
    },
    Write {
        at: Target,
        width: Width,
        value: u64,
    },
    /// Program decoder `n` (base, size, skip in 256 MiB units) and write Control.
    Program {
        n: u8,
        base: u16,
        size: u8,
        skip: u8,
        ctrl: u16,
    },
    GlobalEnable(bool),
    Mailbox {
        opcode: u16,
        known: bool,
        payload: Vec<u8>,
        bg_irq: bool,
    },
    /// One transfer between guest address `guest` and DPA `dpa`; `swap` puts
    /// them in each other's registers.
    Dma {
        guest: Addr,
        dpa: u32,
        /// Bytes, plus 64 KiB when `big` (more than one engine chunk).
        len: u16,
        big: bool,
        /// Clip the length to the end of the guest range.
        fit: bool,
        swap: bool,
        to_guest: bool,
        irq: bool,
    },
    Command {
        bus_master: bool,
        intx_disable: bool,
    },
    Msix {
        enable: bool,
        mask: bool,
    },
    Advance(u32),
    Poll,
    Reset,
    Flr,
    /// Initiate CXL Reset, with CXL Reset Mem Clr Enable or not.
    CxlReset {
        mem_clr: bool,
    },
    Ras {
        uncorrectable: bool,
        bit: u8,
    },
    Poison {
        dpa: u32,
        len: u16,
    },
    Event {
        log: u8,
    },
}

// ---- test doubles ----------------------------------------------------------------

/// Device memory, sparse: 4 KiB pages allocated on first write, absent pages read
/// zero, and a zero over whole pages (Sanitize's wipe, in 64 MiB steps) drops them
/// instead of writing 256 MiB of zeros.
struct FuzzMem {
    size: u64,
    pages: std::collections::BTreeMap<u64, Box<[u8; MEM_PAGE]>>,
}

const MEM_PAGE: usize = 4096;

impl FuzzMem {
    fn new(size: u64) -> Self {
        Self {
            size,
            pages: Default::default(),
        }
    }
    fn check(&self, dpa: u64, len: usize) -> Result<(), MemoryError> {
        match dpa.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemoryError::Unmapped {
                addr: dpa,
                len: len as u64,
            }),
        }
    }
    /// Call `f(page, offset in page, range of the buffer)` for each page piece.
    fn pieces(dpa: u64, len: usize, mut f: impl FnMut(u64, usize, std::ops::Range<usize>)) {
        let mut done = 0usize;
        while done < len {
            let at = dpa + done as u64;
            let off = (at % MEM_PAGE as u64) as usize;
            let n = (MEM_PAGE - off).min(len - done);
            f(at / MEM_PAGE as u64, off, done..done + n);
            done += n;
        }
    }
}

impl DeviceMemory for FuzzMem {
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&self, dpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(dpa, buf.len())?;
        Self::pieces(dpa, buf.len(), |p, off, r| {
            let n = r.len();
            match self.pages.get(&p) {
                Some(page) => buf[r].copy_from_slice(&page[off..off + n]),
                None => buf[r].fill(0),
            }
        });
        Ok(())
    }
    fn write(&mut self, dpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.check(dpa, data.len())?;
        let pages = &mut self.pages;
        Self::pieces(dpa, data.len(), |p, off, r| {
            let n = r.len();
            let page = pages.entry(p).or_insert_with(|| Box::new([0; MEM_PAGE]));
            page[off..off + n].copy_from_slice(&data[r]);
        });
        Ok(())
    }
    fn zero(&mut self, dpa: u64, len: u64) -> Result<(), MemoryError> {
        let n = usize::try_from(len).map_err(|_| MemoryError::Unmapped { addr: dpa, len })?;
        self.check(dpa, n)?;
        let pages = &mut self.pages;
        Self::pieces(dpa, n, |p, off, r| {
            if r.len() == MEM_PAGE {
                pages.remove(&p);
            } else if let Some(page) = pages.get_mut(&p) {
                page[off..off + r.len()].fill(0);
            }
        });
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Access {
    write: bool,
    gpa: u64,
    len: usize,
    ok: bool,
}

/// Guest RAM: a few mapped ranges; every access is recorded, and one that is not
/// wholly inside a single range is refused (and touches nothing).
struct FakeGuest {
    ranges: Vec<(u64, RefCell<Vec<u8>>)>,
    log: RefCell<Vec<Access>>,
}

impl FakeGuest {
    fn find(&self, gpa: u64, len: usize) -> Option<(usize, usize)> {
        let end = gpa.checked_add(len as u64)?;
        self.ranges.iter().enumerate().find_map(|(i, (base, ram))| {
            let rend = base + ram.borrow().len() as u64;
            (gpa >= *base && end <= rend).then(|| (i, (gpa - base) as usize))
        })
    }
    fn record(&self, write: bool, gpa: u64, len: usize, ok: bool) {
        self.log.borrow_mut().push(Access {
            write,
            gpa,
            len,
            ok,
        });
    }
    fn bytes(&self, gpa: u64, len: usize) -> Option<Vec<u8>> {
        let (i, off) = self.find(gpa, len)?;
        Some(self.ranges[i].1.borrow()[off..off + len].to_vec())
    }
}

impl GuestMemory for FakeGuest {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let hit = self.find(gpa, buf.len());
        self.record(false, gpa, buf.len(), hit.is_some());
        let (i, off) = hit.ok_or(MemoryError::Unmapped {
            addr: gpa,
            len: buf.len() as u64,
        })?;
        buf.copy_from_slice(&self.ranges[i].1.borrow()[off..off + buf.len()]);
        Ok(())
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let hit = self.find(gpa, data.len());
        self.record(true, gpa, data.len(), hit.is_some());
        let (i, off) = hit.ok_or(MemoryError::Unmapped {
            addr: gpa,
            len: data.len() as u64,
        })?;
        self.ranges[i].1.borrow_mut()[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// Firmware whose decisions come from the input.
struct FuzzFirmware {
    rng: Rng,
    power_on: Vec<PowerOn>,
}

impl Firmware for FuzzFirmware {
    fn name(&self) -> &str {
        "fuzz"
    }
    fn on_commit(&mut self, _index: usize, _d: &hdm::DecoderState) -> CommitDecision {
        match self.rng.below(4) {
            0 => CommitDecision::Reject,
            1 => CommitDecision::Delay(self.rng.below(30_000_000)),
            _ => CommitDecision::Accept,
        }
    }
    fn on_cxl_reset(&mut self, _mem_clr: bool) -> CxlResetDecision {
        let ns = self.rng.below(3) * 5_000_000;
        if self.rng.below(4) == 0 {
            CxlResetDecision::Fail(ns)
        } else {
            CxlResetDecision::Complete(ns)
        }
    }
    fn vendor_command(
        &mut self,
        opcode: u16,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), mailbox::ReturnCode> {
        let n = self.rng.below(5000) as usize;
        output.extend((0..n).map(|i| (i as u8) ^ (opcode as u8) ^ input.len() as u8));
        hook_rc(&mut self.rng)
    }
    fn power_on_decoders(&mut self, _capacity: u64) -> Vec<(usize, hdm::DecoderState)> {
        self.power_on
            .iter()
            .map(|p| {
                (
                    usize::from(p.index % 5),
                    hdm::DecoderState {
                        base: u64::from(p.base) * GRAN,
                        size: u64::from(p.size % 4) * GRAN,
                        dpa_skip: u64::from(p.skip % 3) * GRAN,
                        iw: p.iw % 16,
                        ig: p.ig % 16,
                        lock_on_commit: p.lock,
                        host_only: p.host_only,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }
}

// ---- the harness -------------------------------------------------------------------

struct Harness {
    dev: AccelDevice,
    clock: Arc<FakeClock>,
    guest: FakeGuest,
    /// (offset, mask, value) of read-only config bits, taken at power-on.
    cfg_ro: Vec<(usize, u32, u32)>,
    hdm_cap: u32,
    mbox_cap: Option<u32>,
    decoders: usize,
}

/// Read-only dwords (and the read-only bits of BARs) of config space.
fn ro_config(dev: &AccelDevice) -> Vec<(usize, u32, u32)> {
    let cs = dev.config_space();
    let mut v: Vec<(usize, u32)> = vec![
        (0x00, !0),          // vendor, device id
        (0x08, !0),          // revision, class code
        (0x0c, 0x00ff_0000), // header type
        (0x2c, !0),          // subsystem ids
        (0x30, !0),          // expansion ROM: absent, RO 0
        (0x34, 0xff),        // capabilities pointer
        (0x3c, 0xff00),      // interrupt pin
    ];
    // BARs: type bits and the address bits below the size.
    let sizes = [
        (0x10, layout::BAR0_SIZE),
        (0x18, dev.bar2_size()),
        (0x20, layout::BAR4_SIZE),
    ];
    for (off, size) in sizes {
        v.push((off, (size - 1) as u32));
    }
    // Capability headers, MSI-X table/PBA locations, PCIe capabilities.
    v.push((0x40, !0)); // PM capability header and PMC
    v.push((MSIX_CAP, 0x07ff_ffff)); // header and Table Size
    v.push((EXP_CAP, 0xffff));
    v.push((EXP_CAP, 0xffff_0000)); // PCIe capabilities register
    v.push((EXP_CAP + pci::EXP_DEVCAP, !0));
    v.push((MSIX_CAP + 4, !0));
    v.push((MSIX_CAP + 8, !0));
    // DSN, DVSEC headers (three dwords each, DVSEC id in the low half of the third).
    for off in [0x100usize, 0x104, 0x108] {
        v.push((off, !0));
    }
    for base in [0x110usize, 0x150, 0x170, 0x190] {
        v.push((base, !0));
        v.push((base + 4, !0));
        v.push((base + 8, 0xffff));
    }
    // The DOE capability header (its registers are the mailbox's).
    v.push((DOE_CAP, !0));
    // Register Locator entries.
    for off in (0x15c..0x170).step_by(4) {
        v.push((off, !0));
    }
    v.into_iter()
        .map(|(off, mask)| (off, mask, cs.read32(off) & mask))
        .collect()
}

impl Harness {
    fn rd(&mut self, bar: u8, off: u64, n: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(bar, off, &mut b[..n]);
        u64::from_le_bytes(b)
    }
    fn wr(&mut self, bar: u8, off: u64, data: &[u8]) {
        self.dev.bar_write(bar, off, data, &self.guest);
    }
    fn cfg16(&self, off: usize) -> u16 {
        self.dev.config_space().read16(off)
    }
    fn cfg_w16(&mut self, off: usize, v: u16) {
        self.dev.config_write(off as u64, &v.to_le_bytes());
    }

    fn cfg32(&self, off: usize) -> u32 {
        self.dev.config_space().read32(off)
    }

    /// The CXL.mem state as registers show it: every decoder's registers, HDM
    /// Global Control, then DVSEC Control, Lock and the Range Base registers. The
    /// HDM registers are read from the register file itself, which a CXL Reset
    /// under way does not hide.
    fn cxl_mem(&self) -> Vec<u32> {
        let bank = self.dev.hdm();
        let mut v: Vec<u32> = (0..self.decoders as u32)
            .flat_map(|n| (0..0x20).step_by(4).map(move |r| h::decoder_offset(n) + r))
            .chain([h::GLOBAL_CONTROL])
            .map(|o| bank.read(o))
            .collect();
        for o in [0x0c, 0x14, 0x20, 0x24, 0x30, 0x34] {
            v.push(self.cfg32(DVSEC + o));
        }
        v
    }

    /// `before` (from [`Harness::cxl_mem`]) as a CXL Reset must leave it: the
    /// registers of decoders committed with Lock On Commit kept, the others 0;
    /// Global Control 0; the DVSEC dwords kept under CONFIG_LOCK, else Control
    /// reads IO_Enable (bit 1) only and the rest 0.
    fn cxl_reset_of(&self, before: &[u32]) -> Vec<u32> {
        let n = self.decoders;
        let mut v = Vec::with_capacity(before.len());
        for d in before.chunks(8).take(n) {
            let ctrl = d[4];
            let locked = ctrl & h::CTRL_LOCK_ON_COMMIT != 0 && ctrl & h::CTRL_COMMITTED != 0;
            v.extend(d.iter().map(|&r| if locked { r } else { 0 }));
        }
        v.push(0);
        let dvsec = &before[n * 8 + 1..];
        if dvsec[1] & 1 != 0 {
            v.extend_from_slice(dvsec);
        } else {
            v.extend_from_slice(&[0x2, 0, 0, 0, 0, 0]);
        }
        v
    }

    fn locked(&self) -> Vec<(usize, hdm::DecoderState)> {
        let hdm = self.dev.hdm();
        (0..hdm.decoder_count())
            .filter_map(|i| hdm.decoder(i).filter(|d| d.locked).map(|d| (i, d)))
            .collect()
    }

    /// Everything that must hold after any step.
    fn check(&mut self, locked_before: &[(usize, hdm::DecoderState)], reset: bool) {
        self.dev.poll();
        let in_reset = self.dev.cxl_reset_in_progress();
        let hdm = self.dev.hdm();
        if let Err(e) = hdm.check_invariants() {
            panic!("HDM invariants: {e}");
        }
        if hdm.committed_count() > 0 {
            stats::count("committed decoder");
        }
        if !locked_before.is_empty() {
            stats::count("locked decoder");
        }
        if !reset {
            for (i, d) in locked_before {
                assert_eq!(
                    hdm.decoder(*i).as_ref(),
                    Some(d),
                    "locked decoder {i} changed"
                );
            }
        }
        // DOE (PCIe r6 §7.9.24): no interrupt support, Abort and Go read 0, Status
        // holds only Busy, Error and Data Object Ready, and Busy goes with a ready
        // response.
        let mut doe = [0u8; 12];
        self.dev
            .config_read((DOE_CAP + doe::CAPABILITIES) as u64, &mut doe);
        let dw = |i: usize| u32::from_le_bytes(doe[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(
            (dw(0), dw(1)),
            (0, 0),
            "DOE Capabilities and Control read 0"
        );
        let st = dw(2);
        assert_eq!(
            st & !(doe::STATUS_BUSY | doe::STATUS_ERROR | doe::STATUS_DATA_OBJECT_READY),
            0,
            "DOE Status reserved bits"
        );
        assert_eq!(
            st & doe::STATUS_BUSY != 0,
            st & doe::STATUS_DATA_OBJECT_READY != 0,
            "DOE Busy without a response, or the reverse"
        );
        if st & doe::STATUS_ERROR != 0 {
            stats::count("DOE error");
        }
        if st & doe::STATUS_DATA_OBJECT_READY != 0 {
            stats::count("DOE response ready");
        }
        let cs = self.dev.config_space();
        for &(off, mask, val) in &self.cfg_ro {
            assert_eq!(
                cs.read32(off) & mask,
                val,
                "read-only config bits at {off:#x}"
            );
        }
        if in_reset {
            stats::count("in CXL Reset");
            for (bar, off) in [
                (0, layout::HDM_OFFSET),
                (0, layout::MAILBOX_OFFSET),
                (4, e::ID),
            ] {
                assert_eq!(
                    self.rd(bar, off, 8),
                    u64::MAX,
                    "BAR{bar}+{off:#x} in a CXL Reset"
                );
            }
        } else {
            self.check_registers();
        }
        self.check_interrupts();
    }

    /// The BAR0 and BAR4 registers' fixed and reserved bits.
    fn check_registers(&mut self) {
        // HDM capability structure.
        let hb = layout::HDM_OFFSET;
        assert_eq!(self.rd(0, hb, 4) as u32, self.hdm_cap, "HDM capability");
        assert_eq!(
            self.rd(0, hb + u64::from(h::GLOBAL_CONTROL), 4) as u32 & !h::GCTRL_HDM_DECODER_ENABLE,
            0,
            "HDM global control reserved bits"
        );
        for n in 0..self.decoders as u32 {
            for reg in [h::DEC_BASE_LO, h::DEC_SIZE_LO, h::DEC_DPA_SKIP_LO] {
                let v = self.rd(0, hb + u64::from(h::decoder_offset(n) + reg), 4) as u32;
                assert_eq!(
                    v & !h::LOW_ADDR_MASK,
                    0,
                    "decoder {n} reg {reg:#x} low bits"
                );
            }
            let c = self.rd(0, hb + u64::from(h::decoder_offset(n) + h::DEC_CONTROL), 4) as u32;
            assert_eq!(c & !0x1fff, 0, "decoder {n} control reserved bits");
        }
        // Engine.
        assert_eq!(self.rd(4, e::ID, 4) as u32, e::ID_VALUE);
        assert_eq!(self.rd(4, e::VERSION, 4) as u32, e::VERSION_VALUE);
        let control = self.rd(4, e::CONTROL, 4) as u32;
        assert_eq!(
            control & !(e::CONTROL_DIR_TO_GUEST | e::CONTROL_IRQ_ENABLE | e::CONTROL_OP_MASK),
            0,
            "engine CONTROL reserved bits"
        );
        let status = self.rd(4, e::STATUS, 4) as u32;
        assert_eq!(
            status & e::STATUS_BUSY,
            0,
            "engine busy after a synchronous transfer"
        );
        assert_eq!(
            status & !(0x7 | e::STATUS_ERR_MASK),
            0,
            "engine status reserved bits"
        );
        if status & e::STATUS_ERROR == 0 {
            assert_eq!(status & e::STATUS_ERR_MASK, 0, "error code without ERROR");
        }
        assert_eq!(self.rd(4, e::DOORBELL, 4), 0);
        let pba = self.rd(4, u64::from(layout::MSIX_PBA_OFFSET), 8);
        assert_eq!(pba >> layout::MSIX_VECTORS, 0, "PBA bits of absent vectors");
        // Mailbox registers.
        let m = layout::MAILBOX_OFFSET;
        match self.mbox_cap {
            Some(cap) => {
                assert_eq!(self.rd(0, m, 4) as u32, cap, "mailbox capabilities");
                let ctl = self.rd(0, m + 4, 4) as u32;
                assert_eq!(ctl & !mb::CTRL_BG_IRQ, 0, "mailbox control (doorbell)");
                let st = self.rd(0, m + 0x10, 8);
                assert!(spec_rc((st >> 32) as u16), "mailbox rc {st:#x}");
                assert_eq!(st & 0xffff_fffe, 0);
                // (Command is RW: software may leave any length in it.)
                let busy = self.dev.mailbox().is_some_and(|x| x.background_busy());
                assert_eq!(st & 1 != 0, busy);
            }
            None => {
                assert_eq!(self.rd(0, m, 8), 0, "mailbox registers without a mailbox");
                assert_eq!(self.rd(0, layout::DEVICE_BLOCK_OFFSET, 8), 0);
            }
        }
    }

    /// Interrupts only when and where they may be.
    fn check_interrupts(&mut self) {
        let cs = self.dev.config_space();
        let (msix_on, masked, intx_off) = (
            cs.msix_enabled(),
            cs.msix_function_masked(),
            cs.intx_disabled(),
        );
        for irq in self.dev.take_interrupts() {
            match irq {
                Interrupt::Msix(v) => {
                    stats::count("msi-x");
                    assert!(v < layout::MSIX_VECTORS, "vector {v}");
                    assert!(msix_on && !masked, "MSI-X {v} while disabled or masked");
                }
                Interrupt::Intx => assert!(!msix_on && !intx_off, "INTx while not allowed"),
            }
        }
    }

    /// Checks of one step that may have rung the engine doorbell.
    fn check_dma(&mut self, rang: bool, bus_master: bool) {
        let log = std::mem::take(&mut *self.guest.log.borrow_mut());
        if self.dev.cxl_reset_in_progress() {
            assert!(log.is_empty(), "DMA during a CXL Reset: {log:?}");
            return;
        }
        if !rang {
            assert!(
                log.is_empty(),
                "guest RAM touched without a doorbell: {log:?}"
            );
            return;
        }
        let src = self.rd(4, e::SRC, 8);
        let dst = self.rd(4, e::DST, 8);
        let len = self.rd(4, e::LEN, 8);
        let control = self.rd(4, e::CONTROL, 4) as u32;
        let status = self.rd(4, e::STATUS, 4) as u32;
        let to_guest = control & e::CONTROL_DIR_TO_GUEST != 0;
        let (gpa, dpa) = if to_guest { (dst, src) } else { (src, dst) };
        let done = status & e::STATUS_DONE != 0;
        let error = status & e::STATUS_ERROR != 0;
        let code = (status & e::STATUS_ERR_MASK) >> e::STATUS_ERR_SHIFT;
        assert!(done != error, "status {status:#x} after a doorbell");
        // CONTROL.OP other than the copy: this device has no engine operations, so
        // the doorbell fails at once and touches nothing.
        if control & e::CONTROL_OP_MASK != 0 {
            stats::count("engine op: unsupported");
            assert!(log.is_empty(), "an unsupported operation touched guest RAM");
            assert!(error && code == e::ERR_UNSUPPORTED_OP, "status {status:#x}");
            return;
        }
        stats::count(match (done, code) {
            (true, _) => "dma done",
            (_, e::ERR_BUS_MASTER) => "dma error: bus master",
            (_, e::ERR_GUEST_RANGE) => "dma error: guest range",
            (_, e::ERR_DEVICE_RANGE) => "dma error: device range",
            (_, e::ERR_LENGTH) => "dma error: length",
            _ => "dma error: other",
        });
        if log.iter().any(|a| !a.ok) {
            stats::count("dma refused access");
        }
        if !bus_master {
            assert!(log.is_empty(), "DMA without Bus Master Enable");
            assert_eq!(code, e::ERR_BUS_MASTER);
            return;
        }
        let Some(end) = gpa.checked_add(len) else {
            assert!(log.is_empty(), "DMA into a wrapping window");
            assert!(error && code != e::ERR_BUS_MASTER && code != e::ERR_POISON);
            return;
        };
        let mut at = gpa;
        for (k, a) in log.iter().enumerate() {
            assert_eq!(a.write, to_guest, "DMA direction");
            assert_eq!(a.gpa, at, "DMA out of order or outside the window");
            assert!(a.len > 0 && a.len <= accel_type2::engine::CHUNK);
            at += a.len as u64;
            assert!(at <= end, "DMA past the programmed length");
            if !a.ok {
                assert_eq!(k, log.len() - 1, "DMA went on after a refused access");
                assert!(
                    error && code == e::ERR_GUEST_RANGE,
                    "refused access not reported"
                );
            }
        }
        if done {
            assert_eq!(at, end, "DONE before the whole length");
            assert!(len > 0 && len <= e::MAX_LEN && dpa + len <= MEM_SIZE);
            for a in &log {
                let guest = self.guest.bytes(a.gpa, a.len).expect("a granted access");
                let mut mem = vec![0u8; a.len];
                let d = dpa + (a.gpa - gpa);
                self.dev.memory().read(d, &mut mem).expect("in range");
                assert!(guest == mem, "DMA copied the wrong bytes");
            }
            if to_guest {
                let poisoned = self.dev.mailbox().is_some_and(|m| m.is_poisoned(dpa, len));
                assert!(!poisoned, "poisoned data reached the guest");
            }
        } else if log.iter().all(|a| a.ok) {
            assert!(
                matches!(
                    code,
                    e::ERR_LENGTH | e::ERR_DEVICE_RANGE | e::ERR_GUEST_RANGE | e::ERR_POISON
                ),
                "error code {code}"
            );
            if !log.is_empty() {
                panic!("transfer stopped without a refused access: {log:?} status {status:#x}");
            }
        }
    }

    fn guest_addr(&self, a: Addr) -> u64 {
        match a {
            Addr::Guest(i, off) => match self.guest.ranges.get(usize::from(i)) {
                Some((base, ram)) => base + u64::from(off) % (ram.borrow().len() as u64 + 64),
                None => u64::from(off),
            },
            Addr::Dpa(d) => u64::from(d) % (MEM_SIZE + 4096),
            Addr::Raw(r) => r,
        }
    }
}

fn firmware(fw: Fw) -> Box<dyn Firmware> {
    match fw {
        Fw::Default => Box::new(accel_type2::DefaultFirmware),
        Fw::Slow {
            delay_us,
            max_granules,
        } => Box::new(accel_type2::SlowCommitFirmware::new(
            u64::from(delay_us) * 1000,
            (max_granules > 0).then(|| u64::from(max_granules % 4) * GRAN),
        )),
        Fw::Bios {
            base_granules,
            size_granules,
        } => Box::new(accel_type2::BiosFirmware {
            base: Some(u64::from(base_granules) * GRAN),
            size: (size_granules > 0).then(|| u64::from(size_granules % 3) * GRAN),
        }),
        Fw::Fuzz { seed, power_on } => Box::new(FuzzFirmware {
            rng: Rng::new(seed),
            power_on,
        }),
    }
}

fuzz_target!(|input: Input| {
    let decoders = [1u8, 2, 4][usize::from(input.decoders % 3)];
    let cfg = AccelConfig {
        memory_size: MEM_SIZE,
        decoders,
        hdm_count: if input.hdm_count { 2 } else { 1 },
        mailbox: input.mailbox >= 16,
        flit: if input.flit68 {
            FlitMode::Flit68
        } else {
            FlitMode::Flit256
        },
        lsa_size: 4096,
        ..AccelConfig::default()
    };
    let clock = Arc::new(FakeClock::new(0));
    let dev = AccelDevice::new(
        cfg.clone(),
        Box::new(FuzzMem::new(MEM_SIZE)),
        Box::new(MemLsa(vec![0; cfg.lsa_size])),
        firmware(input.firmware),
        clock.clone(),
    )
    .expect("valid config");

    // Guest RAM: up to four disjoint ranges, filled with a pattern.
    let mut ranges: Vec<(u64, RefCell<Vec<u8>>)> = Vec::new();
    for g in input.guest.iter().take(4) {
        let base = u64::from(g.page) * PAGE;
        let len = (u64::from(g.pages % 16) + 1) * PAGE;
        if ranges
            .iter()
            .any(|(b, r)| base < b + r.borrow().len() as u64 && *b < base + len)
        {
            continue;
        }
        let fill = (0..len).map(|i| (i as u8) ^ (base >> 12) as u8).collect();
        ranges.push((base, RefCell::new(fill)));
    }
    let mut hs = Harness {
        cfg_ro: ro_config(&dev),
        dev,
        clock,
        guest: FakeGuest {
            ranges,
            log: RefCell::new(Vec::new()),
        },
        hdm_cap: 0,
        mbox_cap: None,
        decoders: usize::from(decoders),
    };
    hs.hdm_cap = hs.rd(0, layout::HDM_OFFSET, 4) as u32;
    if cfg.mailbox {
        hs.mbox_cap = Some(hs.rd(0, layout::MAILBOX_OFFSET, 4) as u32);
    }
    hs.check(&[], false);

    for op in input.ops.into_iter().take(512) {
        // Due work (a delayed commit, the end of a CXL Reset) first, so that a
        // reset in this step changes only what the reset changes.
        hs.dev.poll();
        let locked = hs.locked();
        let bus_master = hs.dev.config_space().bus_master();
        let mem_before = hs.cxl_mem();
        let was_in_reset = hs.dev.cxl_reset_in_progress();
        let mut reset = false;
        let mut flr = false;
        let mut rang = false;
        match op {
            Op::Read { at, width } => {
                let (bar, off) = at.resolve();
                let mut buf = vec![0xa5u8; width.len()];
                match bar {
                    None => hs.dev.config_read(off, &mut buf),
                    Some(bar) => hs.dev.bar_read(bar, off, &mut buf),
                }
                if bar == Some(layout::BAR_MEM) {
                    // BAR2 is device memory; bytes past it read 0.
                    let mut want = vec![0u8; buf.len()];
                    let inside = MEM_SIZE.saturating_sub(off).min(buf.len() as u64) as usize;
                    if inside > 0 {
                        hs.dev.memory().read(off, &mut want[..inside]).unwrap();
                    }
                    assert_eq!(buf, want, "BAR2 read at {off:#x}");
                }
                if matches!(bar, Some(1 | 3 | 5 | 6 | 7)) {
                    assert!(buf.iter().all(|&b| b == 0), "absent BAR reads non-zero");
                }
            }
            Op::Write { at, width, value } => {
                let (bar, off) = at.resolve();
                let data = width.bytes(value);
                match bar {
                    None => {
                        let flr_byte = (EXP_CAP + pci::EXP_DEVCTL + 1) as u64;
                        if let Some(i) = flr_byte.checked_sub(off) {
                            let bit = (pci::EXP_DEVCTL_BCR_FLR >> 8) as u8;
                            flr = data.get(i as usize).is_some_and(|b| b & bit != 0);
                        }
                        hs.dev.config_write(off, &data);
                    }
                    Some(bar) => {
                        if bar == layout::BAR_ENGINE {
                            if let Some(i) = e::DOORBELL.checked_sub(off) {
                                rang = data.get(i as usize).is_some_and(|b| b & 1 != 0);
                            }
                        }
                        hs.wr(bar, off, &data);
                        if bar == layout::BAR_MEM {
                            let inside =
                                MEM_SIZE.saturating_sub(off).min(data.len() as u64) as usize;
                            let mut got = vec![0u8; inside];
                            hs.dev.memory().read(off.min(MEM_SIZE), &mut got).unwrap();
                            assert_eq!(got[..], data[..inside], "BAR2 write at {off:#x}");
                        }
                    }
                }
            }
            Op::Program {
                n,
                base,
                size,
                skip,
                ctrl,
            } => {
                let n = u32::from(n % 5);
                let r = |reg: u32| layout::HDM_OFFSET + u64::from(h::decoder_offset(n) + reg);
                let base = u64::from(base) * GRAN;
                let size = u64::from(size % 4) * GRAN;
                let skip = u64::from(skip % 3) * GRAN;
                hs.wr(0, r(h::DEC_BASE_LO), &(base as u32).to_le_bytes());
                hs.wr(0, r(h::DEC_BASE_HI), &((base >> 32) as u32).to_le_bytes());
                hs.wr(0, r(h::DEC_SIZE_LO), &(size as u32).to_le_bytes());
                hs.wr(0, r(h::DEC_SIZE_HI), &((size >> 32) as u32).to_le_bytes());
                hs.wr(0, r(h::DEC_DPA_SKIP_LO), &(skip as u32).to_le_bytes());
                hs.wr(
                    0,
                    r(h::DEC_DPA_SKIP_HI),
                    &((skip >> 32) as u32).to_le_bytes(),
                );
                hs.wr(
                    0,
                    r(h::DEC_CONTROL),
                    &u32::from(ctrl & 0x1fff).to_le_bytes(),
                );
            }
            Op::GlobalEnable(on) => {
                let v = if on { h::GCTRL_HDM_DECODER_ENABLE } else { 0 };
                let off = layout::HDM_OFFSET + u64::from(h::GLOBAL_CONTROL);
                hs.wr(0, off, &v.to_le_bytes());
            }
            Op::Mailbox {
                opcode,
                known,
                payload,
                bg_irq,
            } => {
                let opcode = if known {
                    let t = mailbox::implemented_commands();
                    t[usize::from(opcode) % t.len()].opcode
                } else {
                    opcode
                };
                let p = layout::MAILBOX_PAYLOAD_OFFSET;
                let payload = &payload[..payload.len().min(layout::MAILBOX_PAYLOAD_SIZE as usize)];
                hs.wr(0, p, payload);
                let cmd = u64::from(opcode) | ((payload.len() as u64) << mb::CMD_LEN_SHIFT);
                hs.wr(0, layout::MAILBOX_OFFSET + 8, &cmd.to_le_bytes());
                let ctl = mb::CTRL_DOORBELL | if bg_irq { mb::CTRL_BG_IRQ } else { 0 };
                hs.wr(0, layout::MAILBOX_OFFSET + 4, &ctl.to_le_bytes());
                if hs.mbox_cap.is_some() && !hs.dev.cxl_reset_in_progress() {
                    let st = hs.rd(0, layout::MAILBOX_OFFSET + 0x10, 8);
                    let rc = (st >> 32) as u16;
                    assert!(spec_rc(rc), "rc {rc:#x} for {opcode:#x}");
                    let cmd = hs.rd(0, layout::MAILBOX_OFFSET + 8, 8);
                    assert_eq!(cmd & mb::CMD_OPCODE_MASK, u64::from(opcode));
                    let out = (cmd & mb::CMD_LEN_MASK) >> mb::CMD_LEN_SHIFT;
                    assert!(
                        out <= u64::from(layout::MAILBOX_PAYLOAD_SIZE),
                        "output length"
                    );
                }
            }
            Op::Dma {
                guest,
                dpa,
                len,
                big,
                fit,
                swap,
                to_guest,
                irq,
            } => {
                let gpa = hs.guest_addr(guest);
                let dpa = u64::from(dpa) % (MEM_SIZE + 4096);
                let mut len = u64::from(len) + u64::from(big) * 0x1_0000;
                if fit {
                    if let Some((base, ram)) = hs
                        .guest
                        .ranges
                        .iter()
                        .find(|(b, r)| gpa >= *b && gpa < b + r.borrow().len() as u64)
                    {
                        len = len.min(base + ram.borrow().len() as u64 - gpa).max(1);
                    }
                }
                let (mut src, mut dst) = if to_guest { (dpa, gpa) } else { (gpa, dpa) };
                if swap {
                    std::mem::swap(&mut src, &mut dst);
                }
                let control = u32::from(to_guest) * e::CONTROL_DIR_TO_GUEST
                    + u32::from(irq) * e::CONTROL_IRQ_ENABLE;
                hs.wr(4, e::SRC, &src.to_le_bytes());
                hs.wr(4, e::DST, &dst.to_le_bytes());
                hs.wr(4, e::LEN, &len.to_le_bytes());
                hs.wr(4, e::CONTROL, &control.to_le_bytes());
                hs.wr(4, e::DOORBELL, &1u32.to_le_bytes());
                rang = true;
            }
            Op::Command {
                bus_master,
                intx_disable,
            } => {
                let mut c = hs.cfg16(pci::COMMAND) | pci::CMD_MEMORY_SPACE;
                c = if bus_master {
                    c | pci::CMD_BUS_MASTER
                } else {
                    c & !pci::CMD_BUS_MASTER
                };
                c = if intx_disable {
                    c | pci::CMD_INTX_DISABLE
                } else {
                    c & !pci::CMD_INTX_DISABLE
                };
                hs.cfg_w16(pci::COMMAND, c);
            }
            Op::Msix { enable, mask } => {
                let mut f = hs.cfg16(MSIX_CAP + pci::MSIX_FLAGS);
                f &= !(pci::MSIX_FLAGS_ENABLE | pci::MSIX_FLAGS_MASKALL);
                f |= u16::from(enable) * pci::MSIX_FLAGS_ENABLE;
                f |= u16::from(mask) * pci::MSIX_FLAGS_MASKALL;
                hs.cfg_w16(MSIX_CAP + pci::MSIX_FLAGS, f);
            }
            Op::Advance(us) => hs.clock.advance(u64::from(us) * 1000),
            Op::Poll => hs.dev.poll(),
            Op::Reset => {
                hs.dev.reset();
                reset = true;
            }
            Op::Flr => {
                let c = hs.cfg16(EXP_CAP + pci::EXP_DEVCTL);
                hs.cfg_w16(EXP_CAP + pci::EXP_DEVCTL, c | pci::EXP_DEVCTL_BCR_FLR);
                flr = true;
            }
            Op::CxlReset { mem_clr } => {
                stats::count("CXL Reset initiated");
                // DVSEC CXL Control2: Initiate CXL Reset (bit 2), Mem Clr Enable (3).
                let v = 0x4 | if mem_clr { 0x8 } else { 0 };
                hs.cfg_w16(DVSEC + 0x10, v);
                if !was_in_reset {
                    // The registers take their values at the Initiate write.
                    assert_eq!(hs.cxl_mem(), hs.cxl_reset_of(&mem_before), "CXL Reset");
                    // Status2: neither Complete nor Error until it ends, one after.
                    let done = hs.cfg16(DVSEC + 0x12) & 0x6;
                    if hs.dev.cxl_reset_in_progress() {
                        assert_eq!(done, 0, "Complete/Error while the reset runs");
                    } else {
                        assert!(done == 0x2 || done == 0x4, "Status2 {done:#x} after it");
                    }
                }
            }
            Op::Ras { uncorrectable, bit } => hs.dev.inject_ras(uncorrectable, bit % 40),
            Op::Poison { dpa, len } => {
                let _ = hs
                    .dev
                    .inject_poison(u64::from(dpa) * 64 % (MEM_SIZE + 4096), u64::from(len) * 64);
            }
            Op::Event { log } => hs.dev.inject_event(
                EventLog::ALL[usize::from(log % 4)],
                EventRecord {
                    uuid: [log; 16],
                    flags: u32::from(log),
                    data: vec![log; usize::from(log % 0x60)],
                },
            ),
        }
        hs.check_dma(rang, bus_master);
        hs.check(&locked, reset);
        if flr {
            stats::count("FLR");
            assert_eq!(hs.cxl_mem(), mem_before, "an FLR changed CXL.mem state");
        }
    }
    if hs
        .dev
        .mailbox()
        .is_some_and(|m| m.stats().background_completed > 0)
    {
        stats::count("sanitize completed");
    }
    stats::input_done();
});
