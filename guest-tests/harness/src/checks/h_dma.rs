//! h. The accelerator's DMA engine (BAR4): a locked guest page, found through
//! /proc/self/pagemap, copied to device memory and back; completions raise the
//! "cxl_accel_dma" MSI-X vector that the module requested.

use super::{need, Ctx, DMA_DPA};
use crate::mmio::{MmioMap, Regs};
use crate::report::Reporter;
use crate::sys;
use cxl_regs::layout::{engine as e, ENGINE_OFFSET};

pub const IRQ_NAME: &str = "cxl_accel_dma";
const LEN: usize = 4096;

/// A page-aligned, populated, locked anonymous page.
struct LockedPage {
    ptr: *mut u8,
}

impl LockedPage {
    fn new() -> Result<Self, String> {
        // SAFETY: anonymous private mapping; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let page = Self { ptr: p as *mut u8 };
        // SAFETY: locking our own mapping.
        if unsafe { libc::mlock(p, LEN) } != 0 {
            return Err(format!("mlock: {}", std::io::Error::last_os_error()));
        }
        Ok(page)
    }
    fn fill(&self, data: &[u8]) {
        for (i, &b) in data.iter().enumerate().take(LEN) {
            // SAFETY: within the page.
            unsafe { std::ptr::write_volatile(self.ptr.add(i), b) }
        }
    }
    fn read(&self) -> Vec<u8> {
        // SAFETY: within the page; volatile because the device writes it.
        (0..LEN)
            .map(|i| unsafe { std::ptr::read_volatile(self.ptr.add(i)) })
            .collect()
    }
}

impl Drop for LockedPage {
    fn drop(&mut self) {
        // SAFETY: unmapping our own page.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, LEN);
        }
    }
}

fn reg(off: u64) -> u64 {
    ENGINE_OFFSET + off
}

/// Run one transfer; Ok(status) when done without error. With CONTROL_IRQ_ENABLE,
/// also wait (up to 2 s) for its MSI-X to reach the module: the backend raises it as
/// the transfer completes, and QEMU delivers an eventfd's signals as one interrupt,
/// so a transfer started before the last one's interrupt arrived could share it and
/// h.4's count would come up short.
pub fn transfer(
    bar4: &MmioMap,
    bdf: &str,
    src: u64,
    dst: u64,
    len: u64,
    ctrl: u32,
) -> Result<u32, u32> {
    let irqs_before = sys::read_irq_count(IRQ_NAME, bdf).ok();
    let st = transfer_status(bar4, src, dst, len, ctrl)?;
    if let (Some(n), true) = (irqs_before, ctrl & e::CONTROL_IRQ_ENABLE != 0) {
        let _ = sys::wait_for(2000, || {
            sys::read_irq_count(IRQ_NAME, bdf).ok().filter(|&m| m > n)
        });
    }
    Ok(st)
}

/// Program and start one transfer, then poll STATUS until it ends.
fn transfer_status(bar4: &MmioMap, src: u64, dst: u64, len: u64, ctrl: u32) -> Result<u32, u32> {
    bar4.write32(reg(e::STATUS), e::STATUS_DONE | e::STATUS_ERROR); // RW1C leftovers
    bar4.write64(reg(e::SRC), src);
    bar4.write64(reg(e::DST), dst);
    bar4.write64(reg(e::LEN), len);
    bar4.write32(reg(e::CONTROL), ctrl);
    bar4.write32(reg(e::DOORBELL), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let st = bar4.read32(reg(e::STATUS));
        if st & e::STATUS_BUSY == 0 && st & (e::STATUS_DONE | e::STATUS_ERROR) != 0 {
            bar4.write32(reg(e::STATUS), st & (e::STATUS_DONE | e::STATUS_ERROR));
            return if st & e::STATUS_ERROR != 0 {
                Err(st)
            } else {
                Ok(st)
            };
        }
        if std::time::Instant::now() > deadline {
            return Err(st);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

fn pattern() -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(0xa5) ^ (i >> 8) as u8)
        .collect()
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    let bdf = ctx.bdf.clone().unwrap_or_default();
    let bdf = bdf.as_str();
    let mut bar4: Option<MmioMap> = None;
    let mut page: Option<(LockedPage, u64)> = None;
    let mut base_counts: Option<(u64, u32)> = None;

    rep.check("h.1", "DMA engine registers in BAR4 (resource4)", || {
        let p = format!("{}/resource4", ctx.dev_path()?);
        let m = MmioMap::open_resource(&p)?;
        let id = m.read32(reg(e::ID));
        let ver = m.read32(reg(e::VERSION));
        if id != e::ID_VALUE || ver != e::VERSION_VALUE {
            return Err(format!(
                "ID {id:#x} version {ver}, expected {:#x} version {}",
                e::ID_VALUE,
                e::VERSION_VALUE
            ));
        }
        let irqs = sys::read_irq_count(IRQ_NAME, bdf)?;
        base_counts = Some((irqs, m.read32(reg(e::COMPLETIONS))));
        bar4 = Some(m);
        Ok(format!("engine v{ver}, {IRQ_NAME} count {irqs}"))
    });

    rep.check(
        "h.2",
        "guest page -> device memory (DMA), bytes verified through BAR2",
        || {
            let m = bar4.as_ref().ok_or("prerequisite missing: BAR4 (h.1)")?;
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            if DMA_DPA + LEN as u64 > cap {
                return Err("device memory too small".into());
            }
            let pg = LockedPage::new()?;
            let data = pattern();
            pg.fill(&data);
            let pa = sys::virt_to_phys(pg.ptr as usize)?;
            transfer(m, bdf, pa, DMA_DPA, LEN as u64, e::CONTROL_IRQ_ENABLE).map_err(|st| {
                format!(
                    "status {st:#x} (error code {})",
                    (st & e::STATUS_ERR_MASK) >> e::STATUS_ERR_SHIFT
                )
            })?;
            let bar2 = ctx.bar2()?;
            let mut dev = vec![0u8; LEN];
            bar2.read_bytes(DMA_DPA, &mut dev);
            if dev != data {
                let i = (0..LEN).find(|&i| dev[i] != data[i]).unwrap_or(0);
                return Err(format!(
                    "device memory at DPA {:#x} reads {:#x}, guest page {:#x}",
                    DMA_DPA + i as u64,
                    dev[i],
                    data[i]
                ));
            }
            page = Some((pg, pa));
            Ok(format!("PA {pa:#x} -> DPA {DMA_DPA:#x}, {LEN} bytes"))
        },
    );

    rep.check(
        "h.3",
        "device memory -> guest page (DMA), bytes verified",
        || {
            let m = bar4.as_ref().ok_or("prerequisite missing: BAR4 (h.1)")?;
            let (pg, pa) = page
                .as_ref()
                .ok_or("prerequisite missing: guest page (h.2)")?;
            pg.fill(&[0u8; LEN]);
            transfer(
                m,
                bdf,
                DMA_DPA,
                *pa,
                LEN as u64,
                e::CONTROL_DIR_TO_GUEST | e::CONTROL_IRQ_ENABLE,
            )
            .map_err(|st| format!("status {st:#x}"))?;
            let back = pg.read();
            let want = pattern();
            if back != want {
                let i = (0..LEN).find(|&i| back[i] != want[i]).unwrap_or(0);
                return Err(format!(
                    "guest byte {i}: {:#x}, expected {:#x}",
                    back[i], want[i]
                ));
            }
            Ok(format!("DPA {DMA_DPA:#x} -> PA {pa:#x}, {LEN} bytes"))
        },
    );

    rep.check(
        "h.4",
        "completions counted and MSI-X \"cxl_accel_dma\" count rose",
        || {
            let m = bar4.as_ref().ok_or("prerequisite missing: BAR4 (h.1)")?;
            let (irq0, comp0) = base_counts.ok_or("prerequisite missing: counts (h.1)")?;
            if page.is_none() {
                return Err("prerequisite missing: transfers (h.2, h.3)".into());
            }
            let comp = m.read32(reg(e::COMPLETIONS)).wrapping_sub(comp0);
            let irqs = sys::wait_for(2000, || {
                let n = sys::read_irq_count(IRQ_NAME, bdf).ok()?;
                (n >= irq0 + 2).then_some(n)
            });
            let modcount = sys::read_num(format!("{}/dma_irq_count", ctx.dev_path()?)).unwrap_or(0);
            match irqs {
                Some(n) if comp >= 2 => Ok(format!(
                    "{IRQ_NAME} {irq0} -> {n}, completions +{comp}, module saw {modcount}"
                )),
                _ => Err(format!(
                    "{IRQ_NAME} {irq0} -> {:?}, completions +{comp} (expected +2 each)",
                    sys::read_irq_count(IRQ_NAME, bdf).ok()
                )),
            }
        },
    );

    rep.check(
        "h.5",
        "DMA outside guest RAM or device memory fails with an error status",
        || {
            let m = bar4.as_ref().ok_or("prerequisite missing: BAR4 (h.1)")?;
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            let bad_pa = 0x7fff_ffff_f000u64; // far above any guest RAM of this VM
            let code = |st: u32| (st & e::STATUS_ERR_MASK) >> e::STATUS_ERR_SHIFT;
            let r1 = transfer(m, bdf, bad_pa, DMA_DPA, LEN as u64, 0);
            let r2 = match page.as_ref() {
                Some((_, pa)) => transfer(m, bdf, *pa, cap - 64, LEN as u64, 0),
                None => return Err("prerequisite missing: guest page (h.2)".into()),
            };
            match (r1, r2) {
                (Err(a), Err(b))
                    if code(a) == e::ERR_GUEST_RANGE && code(b) == e::ERR_DEVICE_RANGE =>
                {
                    Ok("guest-range and device-range errors reported".into())
                }
                other => Err(format!(
                    "results {other:x?}, expected error codes {} and {}",
                    e::ERR_GUEST_RANGE,
                    e::ERR_DEVICE_RANGE
                )),
            }
        },
    );
}
