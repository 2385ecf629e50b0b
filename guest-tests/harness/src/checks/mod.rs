//! The checks a to i of issue 4, j (issue 7), l (issue 13) and the lifecycle group
//! k (issue 11), in order, sharing what each step found; with the example vendor
//! firmware, its own group v around them (issue 14).

use crate::cedt::{Cfmws, Chbs};
use crate::config::Config;
use crate::mmio::MmioMap;
use crate::pcicfg::ConfigSpace;
use crate::report::Reporter;
use crate::sys::PCI_DEVICES;

pub mod a_pci;
pub mod b_firmware;
pub mod c_kernel;
pub mod d_dpa;
pub mod e_region;
pub mod f_mailbox;
pub mod g_bar2;
pub mod h_dma;
pub mod i_cxlcli;
pub mod j_hpa;
pub mod k_lifecycle;
pub mod l_cdat;
pub mod v_vendor;

/// Device-memory layout used by the data-path checks (DPA offsets). Kept apart so
/// no check disturbs another's data:
/// - BAR2 patterns at 0, 1 MiB and capacity - 4 KiB ([`g_bar2`]);
/// - DMA target at 2 MiB ([`h_dma`]);
/// - poison inject at 3 MiB ([`f_mailbox`]);
/// - HPA pattern at 4 MiB and region size - 4 KiB ([`j_hpa`]);
/// - lifecycle pattern at 5 MiB ([`k_lifecycle`]);
/// - the vendor engine operation's input at 6 MiB ([`v_vendor`]).
pub const DMA_DPA: u64 = 2 << 20;
pub const POISON_DPA: u64 = 3 << 20;
pub const LIFECYCLE_DPA: u64 = 5 << 20;
pub const VENDOR_DPA: u64 = 6 << 20;

/// What the checks learned so far. `None` means the step that finds it failed.
#[derive(Default)]
pub struct Ctx {
    pub cfg: Config,
    pub bdf: Option<String>,
    pub cs: Option<ConfigSpace>,
    pub dvsec_dev: Option<usize>,
    pub dvsec_flex: Option<usize>,
    pub dvsec_regloc: Option<usize>,
    pub root_port: Option<String>,
    pub port_number: Option<u8>,
    /// ACPI _UID of the host bridge.
    pub hb_uid: Option<u32>,
    /// DPA capacity from DVSEC Range 1.
    pub capacity: Option<u64>,
    /// Register Locator entries (BIR, block id, offset).
    pub blocks: Vec<(u8, u8, u64)>,
    pub dsn: Option<u64>,
    pub chbs: Option<Chbs>,
    pub cfmws: Option<Cfmws>,
    /// HPA base and size committed in the endpoint's decoder 0 (firmware step done).
    pub committed: Option<(u64, u64)>,
    pub cxl_modules: bool,
    pub bound: bool,
    pub memdev: Option<String>,
    /// Endpoint port id N (port `endpointN`, decoders `decoderN.x`).
    pub ep_id: Option<u32>,
    pub region: Option<String>,
    /// HPA range the module reports (start, size).
    pub module_range: Option<(u64, u64)>,
    /// Mappings of the device's BARs through sysfs resourceN, made on first use.
    pub bars: [Option<MmioMap>; 6],
    /// Config offset of the DOE capability (l.1).
    pub doe_cap: Option<usize>,
    /// The CDAT as the harness read it over DOE before the CXL modules (l.2).
    pub cdat: Option<Vec<u8>>,
}

/// A value a previous step should have found, or the reason it is missing.
pub fn need<T: Clone>(v: &Option<T>, what: &str) -> Result<T, String> {
    v.clone()
        .ok_or_else(|| format!("prerequisite missing: {what}"))
}

impl Ctx {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    pub fn dev_path(&self) -> Result<String, String> {
        Ok(format!(
            "{PCI_DEVICES}/{}",
            need(&self.bdf, "device (a.1)")?
        ))
    }

    /// Size of the region the firmware step commits: half the capacity, in 256 MiB
    /// units, at least one unit.
    pub fn region_size(capacity: u64) -> u64 {
        let g = cxl_regs::hdm::GRANULE;
        ((capacity / 2) / g * g).max(g)
    }

    /// BAR and offset of the register block `id` per the Register Locator (a.7).
    pub fn block(&self, id: u8) -> Result<(u8, u64), String> {
        self.blocks
            .iter()
            .find(|b| b.1 == id)
            .map(|b| (b.0, b.2))
            .ok_or_else(|| format!("prerequisite missing: register block id {id} (a.7)"))
    }

    /// BAR `n` mapped through sysfs resourceN (kept for later checks).
    pub fn bar(&mut self, n: u8) -> Result<&MmioMap, String> {
        let i = n as usize;
        if i >= self.bars.len() {
            return Err(format!("no BAR {n}"));
        }
        if self.bars[i].is_none() {
            let p = format!("{}/resource{n}", self.dev_path()?);
            self.bars[i] = Some(MmioMap::open_resource(&p)?);
        }
        Ok(self.bars[i].as_ref().unwrap())
    }

    /// Device memory, BAR2.
    pub fn bar2(&mut self) -> Result<&MmioMap, String> {
        self.bar(cxl_regs::layout::BAR_MEM)
    }
}

/// Run every check of the test mode. Group l is in two parts: the harness reads
/// the CDAT itself before the CXL modules load (l.1, l.2), and compares the
/// kernel's view once the endpoint is probed (l.3 on).
pub fn run_all(ctx: &mut Ctx, rep: &mut Reporter) {
    a_pci::run(ctx, rep);
    let vendor = ctx.cfg.vendor_checks.enabled();
    if vendor {
        v_vendor::run_early(ctx, rep);
    }
    b_firmware::run(ctx, rep);
    l_cdat::run_early(ctx, rep);
    c_kernel::run(ctx, rep);
    d_dpa::run(ctx, rep);
    e_region::run(ctx, rep);
    f_mailbox::run(ctx, rep);
    g_bar2::run(ctx, rep);
    h_dma::run(ctx, rep);
    i_cxlcli::run(ctx, rep);
    l_cdat::run(ctx, rep);
    if ctx.cfg.hpa {
        j_hpa::run(ctx, rep);
    }
    if vendor {
        v_vendor::run_late(ctx, rep);
    }
    // Last: it takes the device through resets, unbinds and unplugs, and leaves it
    // attached again with the data of g and j in place.
    if ctx.cfg.lifecycle {
        k_lifecycle::run(ctx, rep);
    }
}

/// The checks that bring the device up (shell mode): a to c.
pub fn run_setup(ctx: &mut Ctx, rep: &mut Reporter) {
    a_pci::run(ctx, rep);
    b_firmware::run(ctx, rep);
    c_kernel::run(ctx, rep);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_size_is_half_in_granules() {
        assert_eq!(Ctx::region_size(512 << 20), 256 << 20);
        assert_eq!(Ctx::region_size(1 << 30), 512 << 20);
        assert_eq!(Ctx::region_size(768 << 20), 256 << 20);
        assert_eq!(Ctx::region_size(256 << 20), 256 << 20);
    }

    #[test]
    fn need_names_the_missing_step() {
        let v: Option<u32> = None;
        assert_eq!(
            need(&v, "x (a.1)").unwrap_err(),
            "prerequisite missing: x (a.1)"
        );
        assert_eq!(need(&Some(3), "x").unwrap(), 3);
    }
}
