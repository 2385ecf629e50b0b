//! Bench mode (issue 5, BENCHMARKS.md): the backend against QEMU's in-process
//! `cxl-type3` in the same VM, on root ports of the same CXL host bridge.
//!
//! `cxl-guest-test bench` (job `all`, the default) measures, alternating between the
//! two devices sample by sample, with no CXL module loaded:
//! 1. a trapped read, and a write followed by a read back, of HDM decoder 1's Base
//!    Low register (uncommitted) in each device's component block, found through
//!    the Register Locator;
//! 2. a raw mailbox Identify on each, the output payload read included;
//! 3. 64 MiB written then read through the backend's BAR2 (sysfs `resource2`) and
//!    through guest RAM in this process;
//! 4. the backend's DMA engine copying 64 MiB of guest RAM to device memory: the
//!    engine takes physical addresses, so the buffer is made of 2 MiB huge pages
//!    (their addresses from /proc/self/pagemap, physically contiguous runs merged
//!    into one descriptor each); without huge pages it falls back to one descriptor
//!    per 4 KiB page.
//!
//! `cxl-guest-test bench --bench ready` brings up whichever device the VM has (the
//! backend or a cxl-type3) as firmware and the kernel would: commit the host
//! bridge's and the endpoint's decoder 0, load the CXL modules, wait for the region,
//! then prints `bench-ready ...`. The host times QEMU start to that line.
//!
//! Output, besides the usual check lines: `bench: <name> <value> <unit>` per figure,
//! and `bench-sync <tag>` when the host should look at the backend (message counts,
//! RSS); the harness then pauses [`SYNC_PAUSE_MS`] so that the host can.

use crate::cedt;
use crate::config::{BenchJob, Config};
use crate::hdmprog::{self, Program};
use crate::mmio::{MmioMap, Regs};
use crate::pcicfg::{ConfigSpace, PCIE_TYPE_ROOT_PORT};
use crate::report::Reporter;
use crate::sys::{self, CXL_DEVICES, PCI_DEVICES};
use cxl_regs::dvsec::{self, register_locator as rl};
use cxl_regs::layout::{self, engine as eng};
use cxl_regs::{hdm, mailbox as mb, pci};
use std::hint::black_box;
use std::time::Instant;

/// Class code of a CXL memory device (Type 3), which QEMU's cxl-type3 reports.
pub const CLASS_CXL_MEMDEV: u64 = 0x05_0210;
/// How long the harness waits after a `bench-sync` line.
pub const SYNC_PAUSE_MS: u64 = 400;
/// Bytes moved by the bandwidth and DMA figures.
pub const BW_BYTES: usize = 64 << 20;
/// Device memory used by the DMA figure (the bandwidth figure uses DPA 0).
const DMA_DPA: u64 = 64 << 20;
const HUGE_PAGE: usize = 2 << 20;
/// Longest Identify output read.
const IDENTIFY_MAX: usize = 0x80;

/// Accesses per timed sample (a sample's mean is one data point).
const REG_BATCH: usize = 32;
const REG_SAMPLES: usize = 300;
const MBOX_BATCH: usize = 8;
const MBOX_SAMPLES: usize = 150;
const BW_ROUNDS: usize = 4;
const DMA_ROUNDS: usize = 3;
/// Operations per message-count phase.
const COUNT_OPS: usize = 500;

pub fn run(cfg: &Config, rep: &mut Reporter) {
    match cfg.bench {
        BenchJob::All => run_all(cfg, rep),
        BenchJob::Ready => ready(cfg, rep),
    }
}

/// One `bench:` line.
pub fn figure(name: &str, value: f64, unit: &str) -> String {
    format!("bench: {name} {value:.1} {unit}")
}

fn emit(name: &str, value: f64, unit: &str) {
    use std::io::Write;
    println!("{}", figure(name, value, unit));
    let _ = std::io::stdout().flush();
}

/// Tell the host to look now, and give it time to.
fn sync_host(tag: &str) {
    use std::io::Write;
    println!("bench-sync {tag}");
    let _ = std::io::stdout().flush();
    sys::sleep_ms(SYNC_PAUSE_MS);
}

/// Median of `v` (sorted in place); 0 for none.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Physically contiguous runs of `(phys, len)` pieces, merged in order, each at most
/// `max` bytes long.
pub fn merge_runs(pieces: &[(u64, u64)], max: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(pa, len) in pieces {
        match out.last_mut() {
            Some((start, l)) if *start + *l == pa && *l + len <= max => *l += len,
            _ => out.push((pa, len)),
        }
    }
    out
}

fn ns_since(t: Instant) -> f64 {
    t.elapsed().as_nanos() as f64
}

/// MB/s (10^6 bytes per second) for `bytes` in `ns`.
pub fn mb_per_s(bytes: usize, ns: f64) -> f64 {
    if ns <= 0.0 {
        return 0.0;
    }
    bytes as f64 / ns * 1e3
}

// --- the devices ---------------------------------------------------------------

/// One device under test: where its HDM decoder and mailbox registers are.
struct Dut {
    name: &'static str,
    bdf: String,
    /// BAR mappings through sysfs resourceN, made on first use.
    bars: [Option<MmioMap>; 6],
    /// (BAR, offset in it) of the HDM Decoder Capability.
    hdm: (u8, u64),
    /// (BAR, offset in it) of the primary mailbox, if the device has one.
    mbox: Option<(u8, u64)>,
}

impl Dut {
    fn bar(&mut self, n: u8) -> Result<&MmioMap, String> {
        let i = usize::from(n);
        if i >= self.bars.len() {
            return Err(format!("{}: no BAR {n}", self.name));
        }
        if self.bars[i].is_none() {
            let p = format!("{PCI_DEVICES}/{}/resource{n}", self.bdf);
            self.bars[i] = Some(MmioMap::open_resource(&p)?);
        }
        self.bars[i]
            .as_ref()
            .ok_or_else(|| format!("{}: BAR {n} not mapped", self.name))
    }

    fn map(&self, n: u8) -> &MmioMap {
        self.bars[usize::from(n)]
            .as_ref()
            .expect("BAR mapped during set-up")
    }

    /// HDM decoder 1 Base Low: (BAR, offset).
    fn test_reg(&self) -> (u8, u64) {
        let (bar, off) = self.hdm;
        (
            bar,
            off + u64::from(hdm::decoder_offset(1) + hdm::DEC_BASE_LO),
        )
    }
}

/// The PCI function matching `pred(vendor, device, class)`, exactly one.
fn find_function(what: &str, pred: impl Fn(u64, u64, u64) -> bool) -> Result<String, String> {
    let found: Vec<String> = sys::list_dir(PCI_DEVICES)
        .into_iter()
        .filter(|bdf| {
            let p = format!("{PCI_DEVICES}/{bdf}");
            let n = |a: &str| sys::read_num(format!("{p}/{a}")).unwrap_or(u64::MAX);
            pred(n("vendor"), n("device"), n("class"))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no PCI function is {what}")),
        many => Err(format!("{} functions are {what}: {many:?}", many.len())),
    }
}

fn find_backend(cfg: &Config) -> Result<String, String> {
    let (v, d) = (u64::from(cfg.vendor), u64::from(cfg.device));
    find_function(&format!("the backend {v:04x}:{d:04x}"), |a, b, _| {
        (a, b) == (v, d)
    })
}

fn find_type3() -> Result<String, String> {
    find_function("a CXL memory device (class 0x050210)", |_, _, c| {
        c == CLASS_CXL_MEMDEV
    })
}

fn config_space(bdf: &str) -> Result<ConfigSpace, String> {
    let p = format!("{PCI_DEVICES}/{bdf}/config");
    let b = std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?;
    if b.len() < pci::CONFIG_SPACE_SIZE {
        return Err(format!("{p}: {} bytes (not root?)", b.len()));
    }
    Ok(ConfigSpace::new(b))
}

/// The Register Locator's entries of the function.
fn register_blocks(cs: &ConfigSpace, who: &str) -> Result<Vec<(u8, u8, u64)>, String> {
    let loc = cs
        .find_dvsec(dvsec::CXL_VENDOR_ID, dvsec::ID_REGISTER_LOCATOR)
        .ok_or_else(|| format!("{who}: no Register Locator DVSEC"))?;
    Ok(cs.register_blocks(loc))
}

fn block(blocks: &[(u8, u8, u64)], id: u8, who: &str) -> Result<(u8, u64), String> {
    blocks
        .iter()
        .find(|b| b.1 == id)
        .map(|b| (b.0, b.2))
        .ok_or_else(|| format!("{who}: Register Locator has no block id {id}"))
}

/// Memory Space (and, for DMA, Bus Master) enabled, as a driver would.
fn enable(bdf: &str, bus_master: bool) -> Result<(), String> {
    let p = format!("{PCI_DEVICES}/{bdf}/enable");
    // Already enabled is fine; the Command register below is what matters.
    let _ = sys::write_attr(&p, "1");
    let cs = config_space(bdf)?;
    let cmd = cs.u16(pci::COMMAND).ok_or("config: no Command register")?;
    let mut want = cmd | pci::CMD_MEMORY_SPACE;
    if bus_master {
        want |= pci::CMD_BUS_MASTER;
    }
    if want != cmd {
        sys::config_write(bdf, pci::COMMAND as u64, &want.to_le_bytes())?;
    }
    Ok(())
}

fn open_dut(name: &'static str, bdf: String, bus_master: bool) -> Result<Dut, String> {
    enable(&bdf, bus_master)?;
    let cs = config_space(&bdf)?;
    let blocks = register_blocks(&cs, name)?;
    let (cbar, coff) = block(&blocks, rl::BLOCK_COMPONENT, name)?;
    let mut d = Dut {
        name,
        bdf,
        bars: Default::default(),
        hdm: (cbar, 0),
        mbox: None,
    };
    let hdm_off = hdmprog::find_hdm(d.bar(cbar)?, coff)?;
    d.hdm = (cbar, hdm_off);
    let ncap = hdmprog::read_cap(d.map(cbar), hdm_off)?;
    if ncap.decoders < 2 {
        return Err(format!("{name}: {} HDM decoder(s), need 2", ncap.decoders));
    }
    let ctrl = hdmprog::read_decoder(d.map(cbar), hdm_off, 1);
    if ctrl.committed() {
        return Err(format!("{name}: decoder 1 is committed"));
    }
    if let Ok((mbar, moff)) = block(&blocks, rl::BLOCK_MEMORY_DEVICE, name) {
        let caps = crate::mbox::device_caps(d.bar(mbar)?, moff)?;
        d.mbox = caps.mailbox.map(|m| (mbar, m));
    }
    Ok(d)
}

// --- 1. trapped register accesses ------------------------------------------------------

/// Mean ns of one read of `off`, over a batch.
fn time_reads(m: &MmioMap, off: u64) -> f64 {
    let t = Instant::now();
    let mut acc = 0u32;
    for _ in 0..REG_BATCH {
        acc ^= m.read32(off);
    }
    black_box(acc);
    ns_since(t) / REG_BATCH as f64
}

/// Mean ns of one write plus read back of `off`, over a batch. The values keep
/// bits 27:0 clear (they read as 0 in a decoder base) and differ each time.
fn time_writes(m: &MmioMap, off: u64, seed: u32) -> Result<f64, String> {
    let t = Instant::now();
    let mut last = (0, 0);
    for i in 0..REG_BATCH as u32 {
        let v = ((seed.wrapping_add(i) & 0xf) << 28) | 0x1000_0000;
        m.write32(off, v);
        let back = m.read32(off);
        if back != v {
            last = (v, back);
        }
    }
    let ns = ns_since(t) / REG_BATCH as f64;
    if last != (0, 0) {
        return Err(format!(
            "wrote {:#x}, read back {:#x} at {off:#x}",
            last.0, last.1
        ));
    }
    Ok(ns)
}

/// The register figures of both devices, alternating sample by sample.
fn registers(duts: &[&Dut; 2]) -> Result<String, String> {
    let mut reads = [Vec::new(), Vec::new()];
    let mut writes = [Vec::new(), Vec::new()];
    for s in 0..REG_SAMPLES {
        for k in 0..2 {
            // Alternate which device goes first, too.
            let i = if s % 2 == 0 { k } else { 1 - k };
            let d = duts[i];
            let (bar, off) = d.test_reg();
            let m = d.map(bar);
            reads[i].push(time_reads(m, off));
            writes[i].push(time_writes(m, off, s as u32).map_err(|e| format!("{}: {e}", d.name))?);
        }
    }
    let mut out = Vec::new();
    for i in 0..2 {
        let r = median(&mut reads[i]);
        let w = median(&mut writes[i]);
        emit(&format!("reg_read.{}", duts[i].name), r, "ns");
        emit(&format!("reg_write.{}", duts[i].name), w, "ns");
        out.push(format!(
            "{} read {r:.0} ns, write+read {w:.0} ns",
            duts[i].name
        ));
    }
    for d in duts {
        let (bar, off) = d.test_reg();
        d.map(bar).write32(off, 0);
    }
    Ok(out.join("; "))
}

// --- 2. mailbox Identify ----------------------------------------------------------------

/// One Identify, as a driver sends it (CXL r3.1 §8.2.8.4): doorbell clear?, Command,
/// doorbell, poll the doorbell, Status, Command (output length), then the output
/// payload in dwords. Returns the output length (67 bytes in CXL r3.1, more from
/// devices of a later revision such as QEMU's 69).
fn identify(m: &MmioMap, base: u64, out: &mut [u8; IDENTIFY_MAX]) -> Result<usize, String> {
    let ctrl = base + u64::from(mb::CONTROL);
    let mut polls = 0u32;
    while m.read32(ctrl) & mb::CTRL_DOORBELL != 0 {
        polls += 1;
        if polls > 1_000_000 {
            return Err("doorbell stuck before the command".into());
        }
    }
    m.write64(
        base + u64::from(mb::COMMAND),
        u64::from(mb::OP_IDENTIFY_MEMORY_DEVICE),
    );
    m.write32(ctrl, mb::CTRL_DOORBELL);
    while m.read32(ctrl) & mb::CTRL_DOORBELL != 0 {
        polls += 1;
        if polls > 1_000_000 {
            return Err("doorbell stuck after the command".into());
        }
    }
    let status = m.read64(base + u64::from(mb::STATUS));
    let rc = (status & mb::STATUS_RC_MASK) >> mb::STATUS_RC_SHIFT;
    if rc != u64::from(mb::RC_SUCCESS) {
        return Err(format!("Identify: return code {rc:#x}"));
    }
    let cmd = m.read64(base + u64::from(mb::COMMAND));
    let len = ((cmd & mb::CMD_LEN_MASK) >> mb::CMD_LEN_SHIFT) as usize;
    if !(mb::IDENTIFY_OUTPUT_LEN..=IDENTIFY_MAX).contains(&len) {
        return Err(format!("Identify: output length {len}"));
    }
    let pl = base + u64::from(mb::PAYLOAD);
    for i in (0..len).step_by(4) {
        let w = m.read32(pl + i as u64).to_le_bytes();
        let n = (len - i).min(4);
        out[i..i + n].copy_from_slice(&w[..n]);
    }
    Ok(len)
}

fn time_identify(d: &Dut) -> Result<f64, String> {
    let (bar, base) = d.mbox.ok_or_else(|| format!("{}: no mailbox", d.name))?;
    let m = d.map(bar);
    let mut out = [0u8; IDENTIFY_MAX];
    let t = Instant::now();
    for _ in 0..MBOX_BATCH {
        identify(m, base, &mut out).map_err(|e| format!("{}: {e}", d.name))?;
    }
    let ns = ns_since(t) / MBOX_BATCH as f64;
    let cap = crate::mbox::le64(&out, mb::identify::TOTAL_CAPACITY).unwrap_or(0);
    if cap == 0 {
        return Err(format!("{}: Identify reports no capacity", d.name));
    }
    Ok(ns)
}

fn mailbox(duts: &[&Dut; 2]) -> Result<String, String> {
    let mut t = [Vec::new(), Vec::new()];
    for s in 0..MBOX_SAMPLES {
        for k in 0..2 {
            let i = if s % 2 == 0 { k } else { 1 - k };
            t[i].push(time_identify(duts[i])?);
        }
    }
    let mut out = Vec::new();
    for i in 0..2 {
        let v = median(&mut t[i]);
        emit(&format!("mbox_identify.{}", duts[i].name), v, "ns");
        out.push(format!("{} {v:.0} ns", duts[i].name));
    }
    Ok(out.join("; "))
}

// --- 3. bandwidth -------------------------------------------------------------------------

/// An anonymous mapping of this process (guest RAM), populated.
struct Anon {
    ptr: *mut u8,
    len: usize,
}

impl Anon {
    fn new(len: usize, huge: bool) -> Result<Self, String> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        if huge {
            flags |= libc::MAP_HUGETLB;
        }
        // SAFETY: a fresh anonymous mapping; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap {len:#x}{}: {}",
                if huge { " (huge pages)" } else { "" },
                std::io::Error::last_os_error()
            ));
        }
        let a = Self {
            ptr: p as *mut u8,
            len,
        };
        // SAFETY: locking our own mapping, so that its physical pages stay put.
        if unsafe { libc::mlock(p, len) } != 0 {
            return Err(format!("mlock: {}", std::io::Error::last_os_error()));
        }
        Ok(a)
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

/// Write `len` bytes at `p` with 64-bit volatile stores; returns ns.
///
/// # Safety
/// `p` must be valid for writes of `len` bytes and 8-byte aligned.
unsafe fn write_pass(p: *mut u8, len: usize, seed: u64) -> f64 {
    let q = p as *mut u64;
    let t = Instant::now();
    for i in 0..len / 8 {
        // SAFETY: in bounds per the caller.
        unsafe { std::ptr::write_volatile(q.add(i), seed ^ i as u64) };
    }
    ns_since(t)
}

/// Read `len` bytes at `p` with 64-bit volatile loads; returns (ns, xor of all).
///
/// # Safety
/// `p` must be valid for reads of `len` bytes and 8-byte aligned.
unsafe fn read_pass(p: *const u8, len: usize) -> (f64, u64) {
    let q = p as *const u64;
    let t = Instant::now();
    let mut acc = 0u64;
    for i in 0..len / 8 {
        // SAFETY: in bounds per the caller.
        acc ^= unsafe { std::ptr::read_volatile(q.add(i)) };
    }
    (ns_since(t), acc)
}

/// XOR of `seed ^ i` over `n` words: what `read_pass` returns after `write_pass`.
pub fn expected_xor(seed: u64, n: usize) -> u64 {
    (0..n as u64).fold(0, |a, i| a ^ seed ^ i)
}

fn bandwidth(bar2: &MmioMap) -> Result<String, String> {
    if bar2.len() < BW_BYTES {
        return Err(format!("BAR2 is {:#x} bytes", bar2.len()));
    }
    // SAFETY: BAR2 is mapped for at least BW_BYTES, page aligned, for `bar2`'s life.
    let bw = unsafe { bandwidth_vs_ram(bar2.as_ptr(), BW_BYTES) }?;
    let mut out = Vec::new();
    for (name, (wm, rm)) in [("bar2", bw.dev), ("ram", bw.ram)] {
        emit(&format!("bw_write.{name}"), wm, "MB/s");
        emit(&format!("bw_read.{name}"), rm, "MB/s");
        out.push(format!("{name} write {wm:.0} MB/s read {rm:.0} MB/s"));
    }
    Ok(out.join("; "))
}

/// Median (write, read) MB/s of a device mapping and of guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    pub dev: (f64, f64),
    pub ram: (f64, f64),
}

/// `len` bytes of sequential 64-bit writes then reads at `dev`, against as much
/// anonymous guest RAM, alternating the order over `BW_ROUNDS` rounds; medians.
///
/// # Safety
/// `dev` must be valid for reads and writes of `len` bytes, 8-byte aligned, and
/// hold nothing the caller needs (it is overwritten).
pub unsafe fn bandwidth_vs_ram(dev: *mut u8, len: usize) -> Result<Bandwidth, String> {
    let ram = Anon::new(len, false)?;
    let targets = [("device", dev), ("ram", ram.ptr)];
    let words = len / 8;
    // Warm up: the first touch allocates the pages behind both on the host.
    for (_, p) in targets {
        // SAFETY: both are mappings of at least `len` bytes, page aligned.
        unsafe { write_pass(p, len, 0) };
    }
    let mut w = [Vec::new(), Vec::new()];
    let mut r = [Vec::new(), Vec::new()];
    for round in 0..BW_ROUNDS {
        for k in 0..2 {
            let i = if round % 2 == 0 { k } else { 1 - k };
            let (name, p) = targets[i];
            let seed = 0x5a5a_0000_0000_0000 | round as u64;
            // SAFETY: as above.
            let wt = unsafe { write_pass(p, len, seed) };
            // SAFETY: as above.
            let (rt, x) = unsafe { read_pass(p, len) };
            if x != expected_xor(seed, words) {
                return Err(format!("{name}: read back differs from what was written"));
            }
            w[i].push(mb_per_s(len, wt));
            r[i].push(mb_per_s(len, rt));
        }
    }
    let [w0, w1] = &mut w;
    let [r0, r1] = &mut r;
    Ok(Bandwidth {
        dev: (median(w0), median(r0)),
        ram: (median(w1), median(r1)),
    })
}

// --- 4. DMA -------------------------------------------------------------------------------

fn engine_reg(off: u64) -> u64 {
    layout::ENGINE_OFFSET + off
}

/// One transfer, polled to completion (the backend completes it within the doorbell
/// write, so the first poll normally sees it done).
fn dma_transfer(bar4: &MmioMap, src: u64, dst: u64, len: u64) -> Result<(), String> {
    bar4.write64(engine_reg(eng::SRC), src);
    bar4.write64(engine_reg(eng::DST), dst);
    bar4.write64(engine_reg(eng::LEN), len);
    bar4.write32(engine_reg(eng::CONTROL), 0);
    bar4.write32(engine_reg(eng::DOORBELL), 1);
    for _ in 0..1_000_000 {
        let st = bar4.read32(engine_reg(eng::STATUS));
        if st & eng::STATUS_BUSY == 0 && st & (eng::STATUS_DONE | eng::STATUS_ERROR) != 0 {
            bar4.write32(
                engine_reg(eng::STATUS),
                st & (eng::STATUS_DONE | eng::STATUS_ERROR),
            );
            if st & eng::STATUS_ERROR != 0 {
                return Err(format!(
                    "transfer {src:#x} -> DPA {dst:#x} +{len:#x}: status {st:#x} (error {})",
                    (st & eng::STATUS_ERR_MASK) >> eng::STATUS_ERR_SHIFT
                ));
            }
            return Ok(());
        }
    }
    Err("DMA engine never completed".into())
}

/// The DMA figure's source: a guest buffer and its descriptors.
struct DmaBuffer {
    buf: Anon,
    /// (physical address, length) of each physically contiguous run.
    runs: Vec<(u64, u64)>,
    /// The page size used, in words.
    kind: &'static str,
}

/// A 64 MiB guest buffer and its descriptors: huge pages when the kernel gives them.
fn dma_buffer() -> Result<DmaBuffer, String> {
    let want = BW_BYTES / HUGE_PAGE + 4;
    let _ = sys::write_attr("/proc/sys/vm/nr_hugepages", &want.to_string());
    let (buf, page, kind) = match Anon::new(BW_BYTES, true) {
        Ok(b) => (b, HUGE_PAGE, "2 MiB huge pages"),
        Err(_) => (Anon::new(BW_BYTES, false)?, sys::page_size(), "4 KiB pages"),
    };
    // SAFETY: the buffer is BW_BYTES long and page aligned.
    unsafe { write_pass(buf.ptr, BW_BYTES, 0xd3a0_0000_0000_0000) };
    let mut pieces = Vec::with_capacity(BW_BYTES / page);
    for off in (0..BW_BYTES).step_by(page) {
        let pa = sys::virt_to_phys(buf.ptr as usize + off)?;
        pieces.push((pa, page as u64));
    }
    let runs = merge_runs(&pieces, eng::MAX_LEN);
    Ok(DmaBuffer { buf, runs, kind })
}

fn dma(backend: &mut Dut, bar2_ptr: *const u8) -> Result<String, String> {
    let bar4 = backend.bar(layout::BAR_ENGINE)?;
    if bar4.read32(engine_reg(eng::ID)) != eng::ID_VALUE {
        return Err("BAR4 does not hold the DMA engine".into());
    }
    let DmaBuffer { buf, runs, kind } = dma_buffer()?;
    // The anchor's source: ordinary guest RAM with the same bytes.
    let copy_src = Anon::new(BW_BYTES, false)?;
    // SAFETY: both buffers are BW_BYTES long.
    unsafe { std::ptr::copy_nonoverlapping(buf.ptr, copy_src.ptr, BW_BYTES) };
    let mut dma_t = Vec::new();
    let mut copy_t = Vec::new();
    for round in 0..DMA_ROUNDS {
        let t = Instant::now();
        let mut dpa = DMA_DPA;
        for &(pa, len) in &runs {
            dma_transfer(bar4, pa, dpa, len)?;
            dpa += len;
        }
        dma_t.push(mb_per_s(BW_BYTES, ns_since(t)));
        if round == 0 {
            // The data arrived (before the CPU copy below writes the same bytes):
            // compare a few words through BAR2.
            for off in [0usize, 8, BW_BYTES / 2, BW_BYTES - 8] {
                // SAFETY: `bar2_ptr` maps at least DMA_DPA + BW_BYTES (checked by the caller);
                // `buf` is BW_BYTES long.
                let (got, want) = unsafe {
                    (
                        std::ptr::read_volatile(bar2_ptr.add(DMA_DPA as usize + off) as *const u64),
                        std::ptr::read_volatile(buf.ptr.add(off) as *const u64),
                    )
                };
                if got != want {
                    return Err(format!(
                        "DPA {:#x} reads {got:#x} after DMA, guest buffer {want:#x}",
                        DMA_DPA as usize + off
                    ));
                }
            }
        }
        // The anchor: the guest's CPU moving the same bytes itself, guest RAM to
        // device memory through BAR2 (to the same DPAs).
        let t = Instant::now();
        let s = copy_src.ptr as *const u64;
        // SAFETY: BAR2 maps at least DMA_DPA + BW_BYTES (checked by the caller).
        let d = unsafe { bar2_ptr.add(DMA_DPA as usize) } as *mut u64;
        for i in 0..BW_BYTES / 8 {
            // SAFETY: both ranges are BW_BYTES long and 8-byte aligned.
            unsafe { std::ptr::write_volatile(d.add(i), std::ptr::read_volatile(s.add(i))) };
        }
        copy_t.push(mb_per_s(BW_BYTES, ns_since(t)));
    }
    let (dm, cm) = (median(&mut dma_t), median(&mut copy_t));
    emit("dma_bw.backend", dm, "MB/s");
    emit("dma_bw.cpu_copy", cm, "MB/s");
    emit("dma_descriptors.backend", runs.len() as f64, "count");
    Ok(format!(
        "engine {dm:.0} MB/s in {} descriptor(s) ({kind}); CPU copy guest RAM -> BAR2 {cm:.0} MB/s",
        runs.len()
    ))
}

// --- message counts -------------------------------------------------------------------------

/// Phases of `ops` operations between two `bench-sync` lines, for the host to count
/// the backend's messages per operation.
fn count_phases(backend: &Dut) -> Result<String, String> {
    let (bar, off) = backend.test_reg();
    let m = backend.map(bar);
    sync_host("count-read-start");
    for _ in 0..COUNT_OPS {
        black_box(m.read32(off));
    }
    sync_host("count-read-end");
    emit("ops.read", COUNT_OPS as f64, "count");

    sync_host("count-write-start");
    for i in 0..COUNT_OPS as u32 {
        m.write32(off, (i & 0xf) << 28);
        black_box(m.read32(off));
    }
    sync_host("count-write-end");
    emit("ops.write", COUNT_OPS as f64, "count");

    let (mbar, mbase) = backend.mbox.ok_or("backend: no mailbox")?;
    let mm = backend.map(mbar);
    let mut out = [0u8; IDENTIFY_MAX];
    let n = COUNT_OPS / 5;
    sync_host("count-identify-start");
    for _ in 0..n {
        identify(mm, mbase, &mut out)?;
    }
    sync_host("count-identify-end");
    emit("ops.identify", n as f64, "count");
    m.write32(off, 0);
    Ok(format!(
        "{COUNT_OPS} reads, {COUNT_OPS} writes, {n} Identify"
    ))
}

fn run_all(cfg: &Config, rep: &mut Reporter) {
    let mut backend: Option<Dut> = None;
    let mut type3: Option<Dut> = None;
    rep.check(
        "bench.0",
        "the backend and a cxl-type3: HDM decoder 1 and the mailbox located",
        || {
            let b = open_dut("backend", find_backend(cfg)?, true)?;
            let t = open_dut("type3", find_type3()?, false)?;
            let s = format!(
                "backend {} (HDM BAR{}+{:#x}, mailbox {:x?}); type3 {} (HDM BAR{}+{:#x}, mailbox {:x?})",
                b.bdf, b.hdm.0, b.hdm.1, b.mbox, t.bdf, t.hdm.0, t.hdm.1, t.mbox
            );
            if b.mbox.is_none() || t.mbox.is_none() {
                return Err(format!("a mailbox is missing: {s}"));
            }
            backend = Some(b);
            type3 = Some(t);
            Ok(s)
        },
    );
    let (Some(mut b), Some(t)) = (backend, type3) else {
        return;
    };
    sync_host("start");
    rep.check(
        "bench.1",
        "trapped register read and write+read back (HDM decoder 1 Base Low)",
        || registers(&[&b, &t]),
    );
    rep.check(
        "bench.2",
        "raw mailbox Identify round trip, payload read included",
        || mailbox(&[&b, &t]),
    );
    let mut bar2_ptr: Option<*const u8> = None;
    rep.check(
        "bench.3",
        "64 MiB sequential write then read: backend BAR2 vs guest RAM",
        || {
            let bar2 = b.bar(layout::BAR_MEM)?;
            if bar2.len() < (DMA_DPA as usize) + BW_BYTES {
                return Err(format!("BAR2 of {:#x} bytes is too small", bar2.len()));
            }
            bar2_ptr = Some(bar2.as_ptr());
            bandwidth(bar2)
        },
    );
    sync_host("touched");
    rep.check(
        "bench.4",
        "DMA engine: 64 MiB guest RAM -> device memory",
        || {
            let p = bar2_ptr.ok_or("prerequisite missing: BAR2 (bench.3)")?;
            dma(&mut b, p)
        },
    );
    sync_host("after-dma");
    rep.check(
        "bench.5",
        "backend message counts per operation (host counts)",
        || count_phases(&b),
    );
    sync_host("end");
}

// --- time to ready ---------------------------------------------------------------------------

/// Root port number and host bridge `_UID` above `bdf`.
fn upstream(bdf: &str) -> Result<(u8, Option<u32>), String> {
    let real = sys::canonical(format!("{PCI_DEVICES}/{bdf}")).ok_or("realpath")?;
    let rp = real.parent().ok_or("no parent")?;
    let cs = ConfigSpace::new(
        std::fs::read(rp.join("config")).map_err(|e| format!("root port config: {e}"))?,
    );
    if cs.pcie_type() != Some(PCIE_TYPE_ROOT_PORT) {
        return Err(format!("{} is not a root port", rp.display()));
    }
    let exp = cs
        .find_cap(pci::CAP_ID_EXP)
        .ok_or("root port: no PCIe cap")?;
    let lnkcap = cs.u32(exp + pci::EXP_LNKCAP).ok_or("root port: LNKCAP")?;
    let port = (lnkcap >> pci::EXP_LNKCAP_PORT_SHIFT) as u8;
    let uid = rp
        .parent()
        .and_then(|hb| sys::read_attr(hb.join("firmware_node/uid")).ok())
        .and_then(|u| crate::config::parse_u64(&u).ok())
        .map(|u| u as u32);
    Ok((port, uid))
}

/// The firmware step for either device, then the modules, then the region.
fn bring_up(cfg: &Config) -> Result<String, String> {
    let (bdf, type3) = match find_backend(cfg) {
        Ok(b) => (b, false),
        Err(_) => (find_type3()?, true),
    };
    let who = if type3 { "type3" } else { "backend" };
    let cs = config_space(&bdf)?;
    let dv = cs
        .find_dvsec(dvsec::CXL_VENDOR_ID, dvsec::ID_CXL_DEVICE)
        .ok_or("no CXL device DVSEC")?;
    let hi = u64::from(cs.u32(dv + dvsec::device::range_size_high(0)).unwrap_or(0));
    let lo = u64::from(cs.u32(dv + dvsec::device::range_size_low(0)).unwrap_or(0));
    let capacity = hi << 32 | (lo & 0xf000_0000);
    if capacity == 0 {
        return Err(format!("{who}: DVSEC Range 1 size is 0"));
    }
    let size = crate::checks::Ctx::region_size(capacity);
    let (port, uid) = upstream(&bdf)?;
    let t = std::fs::read("/sys/firmware/acpi/tables/CEDT").map_err(|e| format!("CEDT: {e}"))?;
    let c = cedt::parse(&t)?;
    let chbs = match (uid, c.chbs.as_slice()) {
        (Some(u), list) => list.iter().find(|h| h.uid == u).cloned(),
        (None, [one]) => Some(one.clone()),
        _ => None,
    }
    .ok_or("no CHBS for the host bridge")?;
    let w = c
        .cfmws
        .iter()
        .find(|w| w.targets.contains(&chbs.uid))
        .cloned()
        .ok_or("no CFMWS targets the host bridge")?;
    let wait = || sys::sleep_ms(1);
    // The host bridge's decoder 0: the window, one way, to the device's root port.
    let hb = MmioMap::open(
        "/dev/mem",
        chbs.base,
        cxl_regs::component::BLOCK_SIZE as usize,
    )?;
    let hb_hdm = hdmprog::find_hdm(&hb, 0)?;
    let p = Program {
        base: w.base,
        size,
        iw: 0,
        ig: 0,
        host_only: type3,
        lock_on_commit: false,
        skip_or_targets: u64::from(port),
    };
    hdmprog::commit(&hb, hb_hdm, 0, &p, &wait)?;
    hdmprog::global_enable(&hb, hb_hdm)?;
    drop(hb);
    // The endpoint's decoder 0, HDM Global Enable, then DVSEC Mem_Enable.
    let blocks = register_blocks(&cs, who)?;
    let (bar, comp) = block(&blocks, rl::BLOCK_COMPONENT, who)?;
    let m = MmioMap::open_resource(&format!("{PCI_DEVICES}/{bdf}/resource{bar}"))?;
    let ep_hdm = hdmprog::find_hdm(&m, comp)?;
    let p = Program {
        skip_or_targets: 0,
        ..p
    };
    hdmprog::commit(&m, ep_hdm, 0, &p, &wait)?;
    hdmprog::global_enable(&m, ep_hdm)?;
    drop(m);
    let ctrl_off = dv + dvsec::device::CTRL;
    let ctrl = cs.u16(ctrl_off).ok_or("DVSEC Control")?;
    sys::config_write(
        &bdf,
        ctrl_off as u64,
        &(ctrl | dvsec::device::CTRL_MEM_ENABLE).to_le_bytes(),
    )?;
    let modules: &[&str] = if type3 {
        &["libnvdimm", "cxl_pmem", "cxl_acpi", "cxl_mem", "cxl_pci"]
    } else {
        &[
            "libnvdimm",
            "cxl_pmem",
            "cxl_acpi",
            "cxl_mem",
            crate::checks::c_kernel::MODULE,
        ]
    };
    for m in modules {
        sys::modprobe(m, &[])?;
    }
    let region = wait_region(w.base, 60_000).ok_or_else(|| {
        format!(
            "no committed region at {:#x}: {}",
            w.base,
            crate::kmsg::tail(&["cxl", "region"], 6)
        )
    })?;
    Ok(format!(
        "{who} {bdf}: {region} at {:#x}+{size:#x} (port {port}, host bridge uid {})",
        w.base, chbs.uid
    ))
}

/// Poll every 10 ms for a committed region starting at `base`.
fn wait_region(base: u64, ms: u64) -> Option<String> {
    let deadline = Instant::now() + std::time::Duration::from_millis(ms);
    loop {
        let found = sys::list_dir(CXL_DEVICES)
            .into_iter()
            .filter(|d| d.starts_with("region"))
            .find(|r| {
                let n = |a: &str| sys::read_num(format!("{CXL_DEVICES}/{r}/{a}")).ok();
                n("commit") == Some(1) && n("resource") == Some(base)
            });
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        sys::sleep_ms(10);
    }
}

fn ready(cfg: &Config, rep: &mut Reporter) {
    rep.check(
        "bench.ready",
        "firmware step, CXL modules, region assembled",
        || {
            let detail = bring_up(cfg)?;
            let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
            let up = uptime.split_whitespace().next().unwrap_or("?");
            println!("bench-ready guest-uptime {up} s");
            Ok(detail)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0]), 3.0);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn runs_merge_when_contiguous() {
        let m = HUGE_PAGE as u64;
        let pieces = [
            (0x4000_0000, m),
            (0x4020_0000, m),
            (0x1000_0000, m),
            (0x1020_0000, m),
        ];
        assert_eq!(
            merge_runs(&pieces, 1 << 30),
            vec![(0x4000_0000, 2 * m), (0x1000_0000, 2 * m)]
        );
        // A run never grows past the engine's limit.
        assert_eq!(
            merge_runs(&pieces[..2], m),
            vec![(0x4000_0000, m), (0x4020_0000, m)]
        );
        assert!(merge_runs(&[], 1).is_empty());
    }

    #[test]
    fn figures_and_rates() {
        assert_eq!(
            figure("reg_read.backend", 1234.56, "ns"),
            "bench: reg_read.backend 1234.6 ns"
        );
        assert_eq!(mb_per_s(1_000_000, 1e9), 1.0);
        assert_eq!(mb_per_s(1, 0.0), 0.0);
    }

    #[test]
    fn xor_of_a_written_pattern() {
        let seed = 0x5a5a_0000_0000_0001u64;
        let words: Vec<u64> = (0..1000u64).map(|i| seed ^ i).collect();
        let mut acc = 0;
        // SAFETY: `words` is 8000 bytes, aligned.
        unsafe {
            let (_, x) = read_pass(words.as_ptr() as *const u8, 8000);
            acc ^= x;
        }
        assert_eq!(acc, expected_xor(seed, 1000));
    }
}
