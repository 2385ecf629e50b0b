//! The checks a to i of issue 4, j (issue 7), l (issue 13), the lifecycle group k
//! (issue 11) and m, in order, sharing what each step found; for a topology with
//! several accelerators, each group runs for each accelerator in turn
//! (`per_device`), accelerator i >= 1's check ids ending in `@i`; group m checks the
//! cxl-type3 beside the accelerator (with-type3); with the example vendor firmware,
//! its own group v around them (issue 14), on the first accelerator.

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
pub mod m_type3;
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

/// The ports of a CXL switch between the root port and an accelerator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchPorts {
    /// Upstream port (its HDM decoders route the switch's share of the window).
    pub usp: String,
    /// Downstream port above the accelerator.
    pub dsp: String,
    /// The downstream port's port number (LNKCAP), the upstream decoder's target.
    pub dsp_port: u8,
}

/// What the checks learned so far about one accelerator. `None` means the step that
/// finds it failed.
#[derive(Default)]
pub struct Ctx {
    /// The run's configuration; `serial` is this accelerator's (the first's + index).
    pub cfg: Config,
    /// Which accelerator of the topology, in bus order.
    pub index: usize,
    pub bdf: Option<String>,
    pub cs: Option<ConfigSpace>,
    pub dvsec_dev: Option<usize>,
    pub dvsec_flex: Option<usize>,
    pub dvsec_regloc: Option<usize>,
    pub root_port: Option<String>,
    pub port_number: Option<u8>,
    /// ACPI _UID of the host bridge.
    pub hb_uid: Option<u32>,
    /// The host bridge's sysfs name (pciDDDD:BB).
    pub host_bridge: Option<String>,
    /// The switch between root port and accelerator, if the topology has one.
    pub switch: Option<SwitchPorts>,
    /// Firmware plan (b_firmware::plan): the host bridge's HDM decoder for this
    /// accelerator, the switch upstream port's, and where its region starts in the
    /// host bridge's window.
    pub hb_decoder: Option<u32>,
    pub usp_decoder: Option<u32>,
    pub window_offset: Option<u64>,
    /// The cxl-type3 beside the accelerator (with-type3; the first accelerator's).
    pub type3: m_type3::Type3,
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
    /// One context per accelerator of the configured topology; accelerator i's
    /// expected serial is the configured one + i (as run-vm starts the backends).
    pub fn for_topology(cfg: Config) -> Vec<Self> {
        (0..cfg.topology.devices())
            .map(|i| {
                let mut c = cfg.clone();
                c.serial = cfg.serial.map(|s| s.wrapping_add(i as u64));
                Self {
                    cfg: c,
                    index: i,
                    ..Default::default()
                }
            })
            .collect()
    }

    /// Take what the first accelerator's checks found about the platform (the CXL
    /// modules loaded, c.1), so that a later accelerator's checks see it.
    fn inherit(&mut self, first: &Ctx) {
        self.cxl_modules = first.cxl_modules;
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

/// Run `group` for each accelerator in turn, accelerator i >= 1 with the check id
/// suffix `@i`.
pub fn per_device(ctxs: &mut [Ctx], rep: &mut Reporter, group: fn(&mut Ctx, &mut Reporter)) {
    for i in 0..ctxs.len() {
        if let ([first, ..], [this, ..]) = ctxs.split_at_mut(i) {
            this.inherit(first);
        }
        rep.suffix = if i == 0 {
            String::new()
        } else {
            format!("@{i}")
        };
        group(&mut ctxs[i], rep);
    }
    rep.suffix.clear();
}

/// Run every check of the test mode. Group l is in two parts: the harness reads
/// the CDAT itself before the CXL modules load (l.1, l.2), and compares the
/// kernel's view once the endpoint is probed (l.3 on).
pub fn run_all(ctxs: &mut [Ctx], rep: &mut Reporter) {
    bring_up(ctxs, rep, true);
    per_device(ctxs, rep, d_dpa::run);
    per_device(ctxs, rep, e_region::run);
    per_device(ctxs, rep, f_mailbox::run);
    per_device(ctxs, rep, g_bar2::run);
    per_device(ctxs, rep, h_dma::run);
    per_device(ctxs, rep, i_cxlcli::run);
    per_device(ctxs, rep, l_cdat::run);
    if ctxs.first().is_some_and(|c| c.cfg.hpa) {
        per_device(ctxs, rep, j_hpa::run);
    }
    type3(ctxs, rep, m_type3::data);
    vendor(ctxs, rep, v_vendor::run_late);
    // Last: it takes the device through resets, unbinds and unplugs, and leaves it
    // attached again with the data of g and j in place.
    if let Some(first) = ctxs.first_mut().filter(|c| c.cfg.lifecycle) {
        k_lifecycle::run(first, rep);
    }
}

/// Run a phase of group v on the first accelerator's context, if the run has the
/// example vendor firmware.
fn vendor(ctxs: &mut [Ctx], rep: &mut Reporter, phase: fn(&mut Ctx, &mut Reporter)) {
    if let Some(first) = ctxs.first_mut().filter(|c| c.cfg.vendor_checks.enabled()) {
        phase(first, rep);
    }
}

/// Run a phase of group m on the first accelerator's context, if the topology has
/// a cxl-type3.
fn type3(ctxs: &mut [Ctx], rep: &mut Reporter, phase: fn(&mut Ctx, &mut Reporter)) {
    if let Some(first) = ctxs.first_mut().filter(|c| c.cfg.topology.type3()) {
        phase(first, rep);
    }
}

/// The checks that bring the accelerators up (shell mode): a to c, with the
/// firmware plan between a and b.
pub fn run_setup(ctxs: &mut [Ctx], rep: &mut Reporter) {
    bring_up(ctxs, rep, false);
}

/// a to c (and the cxl-type3's m.1 to m.4), with the firmware plan between a and
/// b; with `full` (test mode), group v's early checks after a and the harness's
/// own CDAT reads (l.1, l.2) before the CXL modules.
fn bring_up(ctxs: &mut [Ctx], rep: &mut Reporter, full: bool) {
    per_device(ctxs, rep, a_pci::run);
    if full {
        vendor(ctxs, rep, v_vendor::run_early);
    }
    a_pci::placement(ctxs, rep);
    type3(ctxs, rep, m_type3::placement);
    b_firmware::plan(ctxs);
    per_device(ctxs, rep, b_firmware::run);
    type3(ctxs, rep, m_type3::firmware);
    if full {
        per_device(ctxs, rep, l_cdat::run_early);
    }
    per_device(ctxs, rep, c_kernel::run);
    type3(ctxs, rep, m_type3::kernel);
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
