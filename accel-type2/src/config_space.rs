//! PCI Express configuration space of the device (PCIe r6 §7.5 onwards, CXL r3.1
//! §8.1), modelled as 4 KiB of bytes with a per-byte write mask and a per-byte RW1C
//! mask:
//!
//! - a bit whose write-mask bit is set is read-write;
//! - a bit whose RW1C-mask bit is set is cleared by writing 1 (PCIe r6 §7.4);
//! - every other bit is read-only: hardware-initialised, or reserved and zero.
//!
//! BAR sizing (PCIe r6 §7.5.1.2.1) falls out of the write masks: the low address bits
//! of a BAR are read-only zero, so writing all ones reads back the size mask with the
//! read-only type bits.
//!
//! Layout of this device:
//!
//! | Offset | Structure                                                  |
//! |--------|------------------------------------------------------------|
//! | 0x000  | Type-0 header (PCIe r6 §7.5.1)                             |
//! | 0x040  | Power Management capability (PCIe r6 §7.5.2)               |
//! | 0x050  | PCI Express capability v2, endpoint (PCIe r6 §7.5.3)       |
//! | 0x090  | MSI-X capability (PCIe r6 §7.7.2)                          |
//! | 0x100  | Device Serial Number (PCIe r6 §7.9.3)                      |
//! | 0x110  | DVSEC id 0, PCIe DVSEC for CXL Devices (CXL r3.1 §8.1.3)   |
//! | 0x150  | DVSEC id 8, Register Locator (CXL r3.1 §8.1.9)             |
//! | 0x170  | DVSEC id 7, Flex Bus Port (CXL r3.1 §8.1.8, §8.2.1.3)      |
//! | 0x190  | DVSEC id 5, GPF for CXL Devices (CXL r3.1 §8.1.7)          |
//! | 0x1a0  | Data Object Exchange (PCIe r6 §7.9.24), see [`crate::doe`] |

use std::sync::Arc;

use cxl_regs::dvsec::{self, device as dev, flex_bus, gpf_device, register_locator as regloc};
use cxl_regs::pci::*;
use cxl_regs::{doe, layout};

use crate::cdat::Cdat;
use crate::doe::DoeMailbox;
use crate::reset::{self, RegisterClass, ResetKind};
use crate::FlitMode;

/// Offsets of the capabilities in this device's config space.
pub const PM_CAP: usize = 0x40;
pub const EXP_CAP: usize = 0x50;
pub const MSIX_CAP: usize = 0x90;
pub const DSN_CAP: usize = 0x100;
pub const DVSEC_DEVICE: usize = 0x110;
pub const DVSEC_LOCATOR: usize = 0x150;
pub const DVSEC_FLEX_BUS: usize = 0x170;
pub const DVSEC_GPF: usize = 0x190;
pub const DOE_CAP: usize = 0x1a0;

/// Link reported in Link Capabilities/Status: 32 GT/s, x16 (the same in both flit
/// modes; PCIe r6 permits Flit Mode at any speed both ends support).
pub const LINK_SPEED: u16 = LINK_SPEED_32GT;
pub const LINK_WIDTH: u16 = 16;

/// What the device's identity and geometry look like in config space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigParams {
    pub vendor_id: u16,
    pub device_id: u16,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    pub serial: u64,
    /// Device memory in bytes (the DVSEC ranges report it).
    pub memory_size: u64,
    /// BAR sizes in bytes, each a power of two, or 0 for an absent BAR. Every present
    /// BAR is 64-bit, so only even indices may be non-zero.
    pub bar_sizes: [u64; 6],
    /// Which present BARs are prefetchable.
    pub bar_prefetchable: [bool; 6],
    pub flit: FlitMode,
    pub mailbox: bool,
    /// DVSEC HDM_Count: 1 or 2.
    pub hdm_count: u8,
    /// The table the DOE mailbox serves.
    pub cdat: Arc<Cdat>,
}

/// The CXL Reset Timeout this device advertises (CXL r3.1 §8.1.3.1): 100 ms.
pub const CXL_RESET_TIMEOUT: u16 = dev::CXL_RESET_TIMEOUT_100MS;

/// Config space bits whose reset behaviour is not that of the function's own
/// registers ([`RegisterClass::PciFunction`], every bit not listed): (offset, mask of
/// the dword read at that offset, class).
const RESET_CLASSES: [(usize, u32, RegisterClass); 13] = {
    use RegisterClass as C;
    let d = DVSEC_DEVICE;
    [
        // PCIe r6 §6.6.2: FLR leaves these link-specific fields alone.
        (
            EXP_CAP + EXP_DEVCTL,
            EXP_DEVCTL_PAYLOAD_MASK as u32,
            C::PcieLink,
        ),
        (EXP_CAP + EXP_LNKCTL, LNKCTL_RW as u32, C::PcieLink),
        (EXP_CAP + EXP_LNKCTL2, LNKCTL2_HASD as u32, C::PcieLink),
        (
            EXP_CAP + EXP_LNKSTA2,
            EXP_LNKSTA2_EQ_REQUEST as u32,
            C::PcieLink,
        ),
        // Link Control 2's other writable fields are RWS (PCIe r6 §7.5.3.19).
        (
            EXP_CAP + EXP_LNKCTL2,
            (LNKCTL2_RW & !LNKCTL2_HASD) as u32,
            C::Sticky,
        ),
        // Flex Bus Port Status error bits are RW1CS (CXL r3.1 §8.2.1.3.3).
        (
            DVSEC_FLEX_BUS + flex_bus::STATUS,
            flex_bus::STATUS_RW1C as u32,
            C::Sticky,
        ),
        (d + dev::CTRL, DVSEC_CTRL_RWL as u32, C::DvsecLockable),
        (
            d + dev::LOCK,
            dev::LOCK_CONFIG_LOCK as u32,
            C::DvsecLockable,
        ),
        (d + dev::range_base_high(0), !0, C::DvsecLockable),
        (
            d + dev::range_base_low(0),
            dev::RANGE_ADDR_LOW_MASK,
            C::DvsecLockable,
        ),
        (d + dev::range_base_high(1), !0, C::DvsecLockable),
        (
            d + dev::range_base_low(1),
            dev::RANGE_ADDR_LOW_MASK,
            C::DvsecLockable,
        ),
        (
            d + dev::CTRL2,
            (CTRL2_RW as u32) | ((STATUS2_BITS as u32) << 16),
            C::DvsecControl2,
        ),
    ]
};

/// The RWL bits of DVSEC CXL Control (CXL r3.1 §8.1.3.2).
const DVSEC_CTRL_RWL: u16 = dev::CTRL_CACHE_ENABLE
    | dev::CTRL_MEM_ENABLE
    | dev::CTRL_CACHE_SF_COVERAGE_MASK
    | dev::CTRL_CACHE_SF_GRANULARITY_MASK
    | dev::CTRL_CACHE_CLEAN_EVICTION;
/// The RW bits of DVSEC CXL Control2 (CXL r3.1 §8.1.3.4); its Initiate bits are
/// write-only triggers that read 0.
const CTRL2_RW: u16 = dev::CTRL2_DISABLE_CACHING | dev::CTRL2_CXL_RESET_MEM_CLR_ENABLE;
/// The DVSEC CXL Status2 bits this device implements (CXL r3.1 §8.1.3.5).
const STATUS2_BITS: u16 =
    dev::STATUS2_CACHE_INVALID | dev::STATUS2_CXL_RESET_COMPLETE | dev::STATUS2_CXL_RESET_ERROR;
/// The RW bits of Link Control (PCIe r6 §7.5.3.7).
const LNKCTL_RW: u16 = EXP_LNKCTL_ASPM_MASK | EXP_LNKCTL_CCC | EXP_LNKCTL_ES | EXP_LNKCTL_HAWD;
/// The writable bits of Link Control 2 (PCIe r6 §7.5.3.19): all but Selectable
/// De-emphasis (HwInit); Hardware Autonomous Speed Disable (bit 5) is RW, the rest
/// RWS.
const LNKCTL2_RW: u16 = !EXP_LNKCTL2_SELECTABLE_DEEMPH;
const LNKCTL2_HASD: u16 = 1 << 5;

/// Side effects of a config write that the device must act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigEffects {
    /// Initiate Function Level Reset was written (PCIe r6 §7.5.3.4).
    pub flr: bool,
    /// Initiate CXL Reset was written (CXL r3.1 §8.1.3.4).
    pub cxl_reset: bool,
    /// MSI-X Enable or Function Mask changed.
    pub msix_changed: bool,
    /// Command register Interrupt Disable changed.
    pub intx_changed: bool,
}

/// The config space register file.
#[derive(Clone)]
pub struct ConfigSpace {
    data: Box<[u8; CONFIG_SPACE_SIZE]>,
    wmask: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    params: ConfigParams,
    doe: DoeMailbox,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// Build config space in its reset state.
    pub fn new(params: ConfigParams) -> Self {
        let doe = DoeMailbox::new(params.cdat.clone());
        let mut cs = Self {
            data: Box::new([0; CONFIG_SPACE_SIZE]),
            wmask: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            params,
            doe,
        };
        cs.build_header();
        cs.build_pm();
        cs.build_express();
        cs.build_msix();
        cs.build_dsn();
        cs.build_dvsec_device();
        cs.build_dvsec_locator();
        cs.build_dvsec_flex_bus();
        cs.build_dvsec_gpf();
        cs.build_doe();
        cs
    }

    pub fn params(&self) -> &ConfigParams {
        &self.params
    }

    /// A reset of `kind`: every bit back to its initial value, except those whose
    /// class [`reset::keeps`] (the DVSEC fields under a set CONFIG_LOCK count as
    /// locked). A kept CONFIG_LOCK keeps its fields read-only.
    pub fn reset(&mut self, kind: ResetKind) {
        // `fresh` has an idle DOE mailbox: every kind of reset aborts an exchange
        // (PCIe r6 §6.30.2; it is function state, reset like the function's own
        // registers), and the table it serves (`params`) is kept.
        let fresh = Self::new(self.params.clone());
        let old = std::mem::replace(self, fresh);
        let locked = old.dvsec_locked();
        for (off, mask, class) in RESET_CLASSES {
            if reset::keeps(class, kind, locked) {
                self.set32(off, (self.read32(off) & !mask) | (old.read32(off) & mask));
            }
        }
        if self.dvsec_locked() {
            self.apply_dvsec_lock();
        }
    }

    // --- building -----------------------------------------------------------

    fn set8(&mut self, off: usize, v: u8) {
        if let Some(b) = self.data.get_mut(off) {
            *b = v;
        }
    }
    fn set16(&mut self, off: usize, v: u16) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set8(off + i, b);
        }
    }
    fn set32(&mut self, off: usize, v: u32) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set8(off + i, b);
        }
    }
    fn mask_bytes(arr: &mut [u8; CONFIG_SPACE_SIZE], off: usize, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if let Some(m) = arr.get_mut(off + i) {
                *m = *b;
            }
        }
    }
    fn rw16(&mut self, off: usize, mask: u16) {
        Self::mask_bytes(&mut self.wmask, off, &mask.to_le_bytes());
    }
    fn rw32(&mut self, off: usize, mask: u32) {
        Self::mask_bytes(&mut self.wmask, off, &mask.to_le_bytes());
    }
    fn w1c16(&mut self, off: usize, mask: u16) {
        Self::mask_bytes(&mut self.w1c, off, &mask.to_le_bytes());
    }

    /// Type-0 header (PCIe r6 §7.5.1.1, §7.5.1.2).
    fn build_header(&mut self) {
        let p = self.params.clone();
        self.set16(VENDOR_ID, p.vendor_id);
        self.set16(DEVICE_ID, p.device_id);
        // Command (§7.5.1.1.3): Memory Space, Bus Master, Parity Error Response, SERR#
        // Enable and Interrupt Disable are RW; no I/O BARs, so I/O Space is RO 0.
        self.rw16(
            COMMAND,
            CMD_MEMORY_SPACE
                | CMD_BUS_MASTER
                | CMD_PARITY_ERROR_RESPONSE
                | CMD_SERR_ENABLE
                | CMD_INTX_DISABLE,
        );
        // Status (§7.5.1.1.4): Capabilities List RO 1, error bits RW1C.
        self.set16(STATUS, STS_CAP_LIST);
        self.w1c16(STATUS, STS_RW1C);
        self.set8(REVISION_ID, 0x01);
        let class = layout::CLASS_CODE.to_le_bytes();
        self.set8(CLASS_CODE, class[0]);
        self.set8(CLASS_CODE + 1, class[1]);
        self.set8(CLASS_CODE + 2, class[2]);
        // Cache Line Size is RW with no effect on PCIe (§7.5.1.1.7).
        Self::mask_bytes(&mut self.wmask, CACHE_LINE_SIZE, &[0xff]);
        self.set8(HEADER_TYPE, HEADER_TYPE_NORMAL);
        for n in 0..NUM_BARS {
            self.build_bar(n);
        }
        self.set16(SUBSYSTEM_VENDOR_ID, p.subsystem_vendor_id);
        self.set16(SUBSYSTEM_ID, p.subsystem_id);
        // No expansion ROM: the register is RO 0 (§7.5.1.2.4).
        self.set8(CAPABILITIES_POINTER, PM_CAP as u8);
        Self::mask_bytes(&mut self.wmask, INTERRUPT_LINE, &[0xff]);
        self.set8(INTERRUPT_PIN, INTERRUPT_PIN_INTA);
    }

    /// A 64-bit memory BAR pair (PCIe r6 §7.5.1.2.1): the type bits are RO, the
    /// address bits below the size are RO 0.
    fn build_bar(&mut self, n: usize) {
        let size = self.params.bar_sizes.get(n).copied().unwrap_or(0);
        if size == 0 || n % 2 == 1 || !size.is_power_of_two() {
            return;
        }
        let mut flags = BAR_MEM_SPACE | BAR_MEM_TYPE_64;
        if self
            .params
            .bar_prefetchable
            .get(n)
            .copied()
            .unwrap_or(false)
        {
            flags |= BAR_MEM_PREFETCHABLE;
        }
        let addr_mask = !(size - 1);
        self.set32(bar_offset(n), flags);
        self.rw32(bar_offset(n), (addr_mask as u32) & BAR_MEM_ADDR_MASK);
        self.rw32(bar_offset(n + 1), (addr_mask >> 32) as u32);
    }

    /// Power Management capability (PCIe r6 §7.5.2): D0 and D3hot only, no PME.
    fn build_pm(&mut self) {
        let c = PM_CAP;
        self.set8(c + CAP_ID, CAP_ID_PM);
        self.set8(c + CAP_NEXT, EXP_CAP as u8);
        self.set16(c + PM_PMC, PM_PMC_VERSION_1_2);
        self.set16(c + PM_PMCSR, PM_PMCSR_NO_SOFT_RESET);
        self.rw16(c + PM_PMCSR, PM_PMCSR_POWER_STATE_MASK);
    }

    /// PCI Express capability, version 2, endpoint (PCIe r6 §7.5.3).
    fn build_express(&mut self) {
        let c = EXP_CAP;
        self.set8(c + CAP_ID, CAP_ID_EXP);
        self.set8(c + CAP_NEXT, MSIX_CAP as u8);
        // Flit Mode Supported is a property of the function, set in both modes.
        self.set16(
            c + EXP_FLAGS,
            EXP_FLAGS_VERSION_2 | EXP_FLAGS_TYPE_ENDPOINT | EXP_FLAGS_FLIT_MODE_SUPPORTED,
        );
        self.set32(
            c + EXP_DEVCAP,
            EXP_DEVCAP_PAYLOAD_256 | EXP_DEVCAP_EXT_TAG | EXP_DEVCAP_RBER | EXP_DEVCAP_FLR,
        );
        // Device Control (§7.5.3.4) defaults: Relaxed Ordering and No Snoop enabled,
        // Max_Read_Request_Size 512 bytes. Phantom Functions and Aux Power PM are
        // not supported (RO 0); Initiate FLR reads 0 and is handled as an effect.
        self.set16(
            c + EXP_DEVCTL,
            EXP_DEVCTL_RELAX_EN | EXP_DEVCTL_NOSNOOP_EN | EXP_DEVCTL_READRQ_512,
        );
        self.rw16(
            c + EXP_DEVCTL,
            EXP_DEVCTL_CERE
                | EXP_DEVCTL_NFERE
                | EXP_DEVCTL_FERE
                | EXP_DEVCTL_URRE
                | EXP_DEVCTL_RELAX_EN
                | EXP_DEVCTL_PAYLOAD_MASK
                | EXP_DEVCTL_EXT_TAG
                | EXP_DEVCTL_NOSNOOP_EN
                | EXP_DEVCTL_READRQ_MASK,
        );
        self.w1c16(c + EXP_DEVSTA, EXP_DEVSTA_RW1C);
        self.set32(
            c + EXP_LNKCAP,
            LINK_SPEED as u32
                | ((LINK_WIDTH as u32) << EXP_LNKCAP_WIDTH_SHIFT)
                | EXP_LNKCAP_ASPM_COMPLIANCE,
        );
        self.rw16(c + EXP_LNKCTL, LNKCTL_RW);
        self.set16(
            c + EXP_LNKSTA,
            LINK_SPEED | (LINK_WIDTH << EXP_LNKSTA_WIDTH_SHIFT) | EXP_LNKSTA_SLC,
        );
        self.set32(
            c + EXP_DEVCAP2,
            EXP_DEVCAP2_COMP_TMOUT_RANGES
                | EXP_DEVCAP2_COMP_TMOUT_DIS
                | EXP_DEVCAP2_10BIT_TAG_COMP
                | EXP_DEVCAP2_EXT_FMT,
        );
        self.rw16(
            c + EXP_DEVCTL2,
            EXP_DEVCTL2_COMP_TIMEOUT_MASK | EXP_DEVCTL2_COMP_TMOUT_DIS,
        );
        // Supported Link Speeds Vector: 2.5 through 32 GT/s.
        let sls: u32 = ((1u32 << (LINK_SPEED + 1)) - 1) & !((1 << EXP_LNKCAP2_SLS_SHIFT) - 1);
        self.set32(c + EXP_LNKCAP2, sls);
        self.set16(c + EXP_LNKCTL2, LINK_SPEED);
        self.rw16(c + EXP_LNKCTL2, LNKCTL2_RW);
        // Link Status 2 (§7.5.3.20): equalization complete; Flit Mode Status only when
        // the link runs 256B flits.
        let mut lnksta2 = EXP_LNKSTA2_EQ_COMPLETE;
        if self.params.flit == FlitMode::Flit256 {
            lnksta2 |= EXP_LNKSTA2_FLIT;
        }
        self.set16(c + EXP_LNKSTA2, lnksta2);
        self.w1c16(c + EXP_LNKSTA2, EXP_LNKSTA2_EQ_REQUEST);
    }

    /// MSI-X capability (PCIe r6 §7.7.2): table and PBA in the engine BAR.
    fn build_msix(&mut self) {
        let c = MSIX_CAP;
        self.set8(c + CAP_ID, CAP_ID_MSIX);
        self.set8(c + CAP_NEXT, 0);
        self.set16(
            c + MSIX_FLAGS,
            (layout::MSIX_VECTORS - 1) & MSIX_FLAGS_QSIZE_MASK,
        );
        self.rw16(c + MSIX_FLAGS, MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL);
        self.set32(
            c + MSIX_TABLE,
            layout::MSIX_TABLE_OFFSET | layout::BAR_ENGINE as u32,
        );
        self.set32(
            c + MSIX_PBA,
            layout::MSIX_PBA_OFFSET | layout::BAR_ENGINE as u32,
        );
    }

    /// Device Serial Number (PCIe r6 §7.9.3).
    fn build_dsn(&mut self) {
        let c = DSN_CAP;
        self.set32(
            c,
            ext_cap_header(EXT_CAP_ID_DSN, DSN_VERSION, DVSEC_DEVICE as u16),
        );
        self.set32(c + DSN_SERIAL_LO, self.params.serial as u32);
        self.set32(c + DSN_SERIAL_HI, (self.params.serial >> 32) as u32);
    }

    fn dvsec_headers(&mut self, c: usize, next: usize, id: u16, revision: u8, length: u16) {
        self.set32(
            c,
            ext_cap_header(EXT_CAP_ID_DVSEC, DVSEC_VERSION, next as u16),
        );
        self.set32(
            c + DVSEC_HEADER1,
            dvsec_header1(dvsec::CXL_VENDOR_ID, revision, length),
        );
        self.set16(c + DVSEC_HEADER2, id);
    }

    /// PCIe DVSEC for CXL Devices (CXL r3.1 §8.1.3).
    fn build_dvsec_device(&mut self) {
        let c = DVSEC_DEVICE;
        self.dvsec_headers(
            c,
            DVSEC_LOCATOR,
            dvsec::ID_CXL_DEVICE,
            dev::REVISION,
            dev::LENGTH,
        );
        let hdm_count = self.params.hdm_count.clamp(1, 2);
        // Capability (§8.1.3.1): a Cache_Capable device that is not an RCD must be
        // Cache Writeback and Invalidate Capable. CXL Reset is supported, with Mem
        // Clr (§9.7).
        self.set16(
            c + dev::CAP,
            dev::CAP_CACHE_CAPABLE
                | dev::CAP_IO_CAPABLE
                | dev::CAP_MEM_CAPABLE
                | dev::cap_hdm_count(hdm_count)
                | dev::CAP_CACHE_WBI_CAPABLE
                | dev::CAP_CXL_RESET_CAPABLE
                | dev::cap_cxl_reset_timeout(CXL_RESET_TIMEOUT)
                | dev::CAP_CXL_RESET_MEM_CLR_CAPABLE,
        );
        // Control (§8.1.3.2): IO_Enable RO 1; the cache and memory enables RWL.
        self.set16(c + dev::CTRL, dev::CTRL_IO_ENABLE);
        self.rw16(c + dev::CTRL, DVSEC_CTRL_RWL);
        // Control2 (§8.1.3.4): Disable Caching and CXL Reset Mem Clr Enable RW; the
        // Initiate bits read 0 and act in `write_dword`. Status2 (§8.1.3.5) is RO.
        self.rw16(c + dev::CTRL2, CTRL2_RW);
        self.rw16(c + dev::LOCK, dev::LOCK_CONFIG_LOCK);
        // Range 1 covers all of device memory; range 2 (when counted) is empty. Both
        // report Memory_Info_Valid and Memory_Active: memory is ready at power-on.
        let flags = dev::RANGE_MEM_INFO_VALID
            | dev::RANGE_MEM_ACTIVE
            | dev::RANGE_MEDIA_TYPE_CDAT
            | dev::RANGE_MEMORY_CLASS_CDAT;
        for i in 0..usize::from(hdm_count) {
            let size = if i == 0 { self.params.memory_size } else { 0 };
            self.set32(c + dev::range_size_high(i), (size >> 32) as u32);
            self.set32(
                c + dev::range_size_low(i),
                dev::range_size_low_value(size, flags),
            );
            self.rw32(c + dev::range_base_high(i), !0);
            self.rw32(c + dev::range_base_low(i), dev::RANGE_ADDR_LOW_MASK);
        }
        // Capability3 (§8.1.3.16): device memory survives warm and hot reset.
        self.set16(
            c + dev::CAP3,
            dev::CAP3_VOLATILE_WARM | dev::CAP3_VOLATILE_HOT,
        );
    }

    /// Register Locator (CXL r3.1 §8.1.9): component registers at BAR0 + 0, and the
    /// memory-device registers at BAR0 + DEVICE_BLOCK_OFFSET when the mailbox is on.
    fn build_dvsec_locator(&mut self) {
        let c = DVSEC_LOCATOR;
        let mut entries = vec![regloc::entry(
            layout::BAR_REGS,
            regloc::BLOCK_COMPONENT,
            layout::COMPONENT_BLOCK_OFFSET,
        )];
        if self.params.mailbox {
            entries.push(regloc::entry(
                layout::BAR_REGS,
                regloc::BLOCK_MEMORY_DEVICE,
                layout::DEVICE_BLOCK_OFFSET,
            ));
        }
        self.dvsec_headers(
            c,
            DVSEC_FLEX_BUS,
            dvsec::ID_REGISTER_LOCATOR,
            regloc::REVISION,
            regloc::length(entries.len()),
        );
        for (i, (lo, hi)) in entries.into_iter().enumerate() {
            let e = c + regloc::BLOCK1 + regloc::ENTRY_SIZE * i;
            self.set32(e, lo);
            self.set32(e + 4, hi);
        }
    }

    /// Flex Bus Port DVSEC (CXL r3.1 §8.1.8, registers §8.2.1.3). The link is
    /// trained: Control mirrors what is enabled and is read-only on this endpoint.
    ///
    /// 256B vs 68B flit differ in exactly these bits:
    /// - Flex Bus Port Control bit 5, "CXL 68B Flit and VH Enable": set in 68B mode;
    /// - Flex Bus Port Status bit 5, "CXL 68B Flit and VH Enabled": set in 68B mode;
    /// - PCIe Link Status 2 bit 10, Flit Mode Status: set in 256B mode.
    ///
    /// Capability bit 5 ("68B Flit and VH Capable") is set in both: a CXL 3 device
    /// supports both modes, and which one runs is a link property.
    fn build_dvsec_flex_bus(&mut self) {
        let c = DVSEC_FLEX_BUS;
        self.dvsec_headers(
            c,
            DVSEC_GPF,
            dvsec::ID_FLEX_BUS_PORT,
            flex_bus::REVISION,
            flex_bus::LENGTH,
        );
        let base = flex_bus::CACHE | flex_bus::IO | flex_bus::MEM;
        self.set16(c + flex_bus::CAP, base | flex_bus::FLIT68_VH);
        let enabled = match self.params.flit {
            FlitMode::Flit256 => base,
            FlitMode::Flit68 => base | flex_bus::FLIT68_VH,
        };
        self.set16(c + flex_bus::CTRL, enabled);
        self.set16(c + flex_bus::STATUS, enabled);
        self.w1c16(c + flex_bus::STATUS, flex_bus::STATUS_RW1C);
    }

    /// GPF DVSEC for CXL Devices (CXL r3.1 §8.1.7): phase 2 takes at most 1 ms and
    /// 100 mW.
    fn build_dvsec_gpf(&mut self) {
        let c = DVSEC_GPF;
        self.dvsec_headers(
            c,
            DOE_CAP,
            dvsec::ID_GPF_DEVICE,
            gpf_device::REVISION,
            gpf_device::LENGTH,
        );
        self.set16(
            c + gpf_device::PHASE2_DURATION,
            1 | (gpf_device::SCALE_1MS << gpf_device::PHASE2_DURATION_SCALE_SHIFT),
        );
        self.set32(c + gpf_device::PHASE2_POWER, 100);
    }

    /// Data Object Exchange (PCIe r6 §7.9.24), the last extended capability. Only
    /// its header lives in the byte array; [`DoeMailbox`] owns the registers.
    fn build_doe(&mut self) {
        self.set32(
            DOE_CAP,
            ext_cap_header(doe::EXT_CAP_ID_DOE, doe::VERSION, 0),
        );
    }

    /// The register of the DOE capability that the dword at `off` is, if any.
    fn doe_register(off: usize) -> Option<usize> {
        let reg = off.checked_sub(DOE_CAP)?;
        (doe::CAPABILITIES..doe::CAP_LEN)
            .contains(&reg)
            .then_some(reg)
    }

    // --- access -------------------------------------------------------------

    /// Read the dword at `offset` (rounded down to a dword); 0 outside config space.
    pub fn read_dword(&self, offset: u64) -> u32 {
        let Ok(off) = usize::try_from(offset & !3) else {
            return 0;
        };
        if off >= CONFIG_SPACE_SIZE {
            return 0;
        }
        if let Some(reg) = Self::doe_register(off) {
            return self.doe.read(reg);
        }
        match self.data.get(off..off + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    pub fn read8(&self, off: usize) -> u8 {
        self.data.get(off).copied().unwrap_or(0)
    }
    pub fn read16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.read8(off), self.read8(off + 1)])
    }
    pub fn read32(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.read8(off),
            self.read8(off + 1),
            self.read8(off + 2),
            self.read8(off + 3),
        ])
    }

    /// Write the bytes of `value` selected by `mask` to the dword at `offset`,
    /// honouring the write and RW1C masks, and report side effects.
    pub fn write_dword(&mut self, offset: u64, value: u32, mask: u32) -> ConfigEffects {
        let mut fx = ConfigEffects::default();
        let Ok(base) = usize::try_from(offset & !3) else {
            return fx;
        };
        if base >= CONFIG_SPACE_SIZE {
            return fx;
        }
        if let Some(reg) = Self::doe_register(base) {
            self.doe.write(reg, value, mask);
            return fx;
        }
        let before_msix =
            self.read16(MSIX_CAP + MSIX_FLAGS) & (MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL);
        let before_cmd = self.read16(COMMAND) & CMD_INTX_DISABLE;
        let before_pm = self.read16(PM_CAP + PM_PMCSR) & PM_PMCSR_POWER_STATE_MASK;
        let vb = value.to_le_bytes();
        let mb = mask.to_le_bytes();
        for lane in 0..4 {
            if mb[lane] == 0 {
                continue;
            }
            let i = base + lane;
            let v = vb[lane] & mb[lane];
            let old = self.data[i];
            let wm = self.wmask[i];
            let mut new = (old & !wm) | (v & wm);
            new &= !(v & self.w1c[i]);
            self.data[i] = new;
        }
        // Initiate Function Level Reset (PCIe r6 §7.5.3.4): write-only, reads 0.
        fx.flr = wrote_one(base, value, mask, EXP_CAP + EXP_DEVCTL, EXP_DEVCTL_BCR_FLR);
        self.cache_management(base, value, mask);
        fx.cxl_reset = wrote_one(
            base,
            value,
            mask,
            DVSEC_DEVICE + dev::CTRL2,
            dev::CTRL2_INITIATE_CXL_RESET,
        );
        // PowerState (PCIe r6 §7.5.2.2): a write of an unsupported state (D1, D2)
        // completes normally but the data is discarded.
        let pm = self.read16(PM_CAP + PM_PMCSR);
        let state = pm & PM_PMCSR_POWER_STATE_MASK;
        if state != PM_PMCSR_D0 && state != PM_PMCSR_D3HOT {
            self.set16(
                PM_CAP + PM_PMCSR,
                (pm & !PM_PMCSR_POWER_STATE_MASK) | before_pm,
            );
        }
        // CONFIG_LOCK (CXL r3.1 §8.1.3.6) is RWO, and locks every RWL field.
        if self.read16(DVSEC_DEVICE + dev::LOCK) & dev::LOCK_CONFIG_LOCK != 0 {
            self.apply_dvsec_lock();
        }
        fx.msix_changed = self.read16(MSIX_CAP + MSIX_FLAGS)
            & (MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL)
            != before_msix;
        fx.intx_changed = self.read16(COMMAND) & CMD_INTX_DISABLE != before_cmd;
        fx
    }

    /// Cache management (CXL r3.1 §9.6) after a write to DVSEC CXL Control2: Cache
    /// Invalid reads 0 while Disable Caching is 0, and Initiate Cache Write Back and
    /// Invalidation with Disable Caching set sets it. This device holds no lines, so
    /// the write-back completes within the write. A write-back asked for while
    /// caching is enabled is undefined (§8.1.3.4) and ignored here.
    fn cache_management(&mut self, base: usize, value: u32, mask: u32) {
        let ctrl2 = DVSEC_DEVICE + dev::CTRL2;
        let status2 = DVSEC_DEVICE + dev::STATUS2;
        let disabled = self.read16(ctrl2) & dev::CTRL2_DISABLE_CACHING != 0;
        let mut st = self.read16(status2);
        if !disabled {
            st &= !dev::STATUS2_CACHE_INVALID;
        } else if wrote_one(base, value, mask, ctrl2, dev::CTRL2_INITIATE_CACHE_WBI) {
            st |= dev::STATUS2_CACHE_INVALID;
        }
        self.set16(status2, st);
    }

    /// DVSEC CXL Control2 CXL Reset Mem Clr Enable (CXL r3.1 §8.1.3.4).
    pub fn cxl_reset_mem_clr_enabled(&self) -> bool {
        self.read16(DVSEC_DEVICE + dev::CTRL2) & dev::CTRL2_CXL_RESET_MEM_CLR_ENABLE != 0
    }

    /// Report the end of a CXL Reset in DVSEC CXL Status2 (CXL r3.1 §8.1.3.5): CXL
    /// Reset Complete, or CXL Reset Error.
    pub fn set_cxl_reset_done(&mut self, ok: bool) {
        let off = DVSEC_DEVICE + dev::STATUS2;
        let st =
            self.read16(off) & !(dev::STATUS2_CXL_RESET_COMPLETE | dev::STATUS2_CXL_RESET_ERROR);
        self.set16(
            off,
            st | if ok {
                dev::STATUS2_CXL_RESET_COMPLETE
            } else {
                dev::STATUS2_CXL_RESET_ERROR
            },
        );
    }

    fn apply_dvsec_lock(&mut self) {
        let c = DVSEC_DEVICE;
        self.rw16(c + dev::LOCK, 0);
        self.rw16(c + dev::CTRL, 0);
        for i in 0..dev::MAX_RANGES {
            self.rw32(c + dev::range_base_high(i), 0);
            self.rw32(c + dev::range_base_low(i), 0);
        }
    }

    // --- state the device model needs -----------------------------------------

    /// The DOE mailbox (read-only view).
    pub fn doe(&self) -> &DoeMailbox {
        &self.doe
    }
    /// Serve `cdat` through the DOE mailbox from now on, and after resets.
    pub fn set_cdat(&mut self, cdat: Arc<Cdat>) {
        self.params.cdat = cdat.clone();
        self.doe.set_cdat(cdat);
    }

    pub fn command(&self) -> u16 {
        self.read16(COMMAND)
    }
    pub fn bus_master(&self) -> bool {
        self.command() & CMD_BUS_MASTER != 0
    }
    pub fn intx_disabled(&self) -> bool {
        self.command() & CMD_INTX_DISABLE != 0
    }
    /// Set or clear the Status register's Interrupt Status bit (RO to software).
    pub fn set_interrupt_status(&mut self, on: bool) {
        let s = self.read16(STATUS);
        let s = if on {
            s | STS_INTERRUPT_STATUS
        } else {
            s & !STS_INTERRUPT_STATUS
        };
        self.set16(STATUS, s);
    }
    pub fn interrupt_status(&self) -> bool {
        self.read16(STATUS) & STS_INTERRUPT_STATUS != 0
    }
    pub fn msix_enabled(&self) -> bool {
        self.read16(MSIX_CAP + MSIX_FLAGS) & MSIX_FLAGS_ENABLE != 0
    }
    pub fn msix_function_masked(&self) -> bool {
        self.read16(MSIX_CAP + MSIX_FLAGS) & MSIX_FLAGS_MASKALL != 0
    }
    /// DVSEC CXL Control Mem_Enable.
    pub fn mem_enable(&self) -> bool {
        self.read16(DVSEC_DEVICE + dev::CTRL) & dev::CTRL_MEM_ENABLE != 0
    }
    /// Set Mem_Enable as firmware would at power-on (ignores the lock).
    pub fn set_mem_enable(&mut self, on: bool) {
        let v = self.read16(DVSEC_DEVICE + dev::CTRL);
        let v = if on {
            v | dev::CTRL_MEM_ENABLE
        } else {
            v & !dev::CTRL_MEM_ENABLE
        };
        self.set16(DVSEC_DEVICE + dev::CTRL, v);
    }
    /// Set or clear Memory_Active in the DVSEC ranges (CXL r3.1 §8.1.3.9: set when
    /// the range is ready for use), as media comes ready or fails.
    pub fn set_memory_active(&mut self, on: bool) {
        for i in 0..usize::from(self.params.hdm_count.clamp(1, 2)) {
            let off = DVSEC_DEVICE + dev::range_size_low(i);
            let v = self.read32(off);
            if v & dev::RANGE_MEM_INFO_VALID == 0 {
                continue;
            }
            let v = if on {
                v | dev::RANGE_MEM_ACTIVE
            } else {
                v & !dev::RANGE_MEM_ACTIVE
            };
            self.set32(off, v);
        }
    }
    /// Whether DVSEC range 1 reports Memory_Active.
    pub fn memory_active(&self) -> bool {
        self.read32(DVSEC_DEVICE + dev::range_size_low(0)) & dev::RANGE_MEM_ACTIVE != 0
    }
    /// Program DVSEC range `i`'s base as firmware would (256 MiB granular).
    pub fn set_range_base(&mut self, i: usize, base: u64) {
        if i < usize::from(self.params.hdm_count.clamp(1, 2)) {
            self.set32(DVSEC_DEVICE + dev::range_base_high(i), (base >> 32) as u32);
            self.set32(
                DVSEC_DEVICE + dev::range_base_low(i),
                base as u32 & dev::RANGE_ADDR_LOW_MASK,
            );
        }
    }
    pub fn range_base(&self, i: usize) -> u64 {
        dev::range_addr(
            self.read32(DVSEC_DEVICE + dev::range_base_high(i)),
            self.read32(DVSEC_DEVICE + dev::range_base_low(i)),
        )
    }
    pub fn dvsec_locked(&self) -> bool {
        self.read16(DVSEC_DEVICE + dev::LOCK) & dev::LOCK_CONFIG_LOCK != 0
    }
    /// Power state D3hot.
    pub fn in_d3hot(&self) -> bool {
        self.read16(PM_CAP + PM_PMCSR) & PM_PMCSR_POWER_STATE_MASK == PM_PMCSR_D3HOT
    }
    /// Record an error in the PCIe Device Status register (RW1C bits).
    pub fn set_device_status(&mut self, bits: u16) {
        let v = self.read16(EXP_CAP + EXP_DEVSTA) | (bits & EXP_DEVSTA_RW1C);
        self.set16(EXP_CAP + EXP_DEVSTA, v);
    }
}

/// Whether a dword write at `base` (value and byte-lane `mask`) writes 1 to `bit` of
/// the 16-bit register at `reg`: how the write-only trigger bits (Initiate FLR,
/// Initiate CXL Reset, Initiate Cache Write Back and Invalidation) are seen.
fn wrote_one(base: usize, value: u32, mask: u32, reg: usize, bit: u16) -> bool {
    let Some(shift) = reg.checked_sub(base).filter(|&s| s < 4) else {
        return false;
    };
    let bits = u64::from(bit) << (8 * shift);
    u64::from(value & mask) & bits != 0
}
