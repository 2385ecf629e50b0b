//! CXL Designated Vendor-Specific Extended Capabilities (CXL r3.1 §8.1), vendor ID
//! 0x1E98. Offsets are relative to the start of the DVSEC (its extended capability
//! header); DVSEC Header 1/2 are at +4/+8 (see [`crate::pci::DVSEC_HEADER1`]).

/// The CXL consortium's DVSEC vendor ID (CXL r3.1 §8.1.1).
pub const CXL_VENDOR_ID: u16 = 0x1e98;

/// DVSEC IDs (CXL r3.1 §8.1.1, Table 8-2).
pub const ID_CXL_DEVICE: u16 = 0x0000;
pub const ID_NON_CXL_FUNCTION_MAP: u16 = 0x0002;
pub const ID_EXTENSIONS_FOR_PORTS: u16 = 0x0003;
pub const ID_GPF_PORT: u16 = 0x0004;
pub const ID_GPF_DEVICE: u16 = 0x0005;
pub const ID_FLEX_BUS_PORT: u16 = 0x0007;
pub const ID_REGISTER_LOCATOR: u16 = 0x0008;
pub const ID_MLD: u16 = 0x0009;

/// PCIe DVSEC for CXL Devices (CXL r3.1 §8.1.3).
pub mod device {
    /// DVSEC revision of the r3.1 layout (with Capability3 at 0x38).
    pub const REVISION: u8 = 3;
    /// Length of the DVSEC, header included.
    pub const LENGTH: u16 = 0x3c;

    /// DVSEC CXL Capability (§8.1.3.1), 16-bit.
    pub const CAP: usize = 0x0a;
    pub const CAP_CACHE_CAPABLE: u16 = 1 << 0;
    pub const CAP_IO_CAPABLE: u16 = 1 << 1;
    pub const CAP_MEM_CAPABLE: u16 = 1 << 2;
    pub const CAP_MEM_HWINIT_MODE: u16 = 1 << 3;
    /// HDM_Count \[5:4\]: number of HDM ranges, 1 or 2.
    pub const CAP_HDM_COUNT_SHIFT: u32 = 4;
    pub const CAP_HDM_COUNT_MASK: u16 = 0b11 << 4;
    /// Cache Writeback and Invalidate Capable, bit 6: Disable Caching, Initiate Cache
    /// Write Back and Invalidation and Cache Invalid are implemented (§9.6).
    pub const CAP_CACHE_WBI_CAPABLE: u16 = 1 << 6;
    /// CXL Reset Capable, bit 7 (§9.7).
    pub const CAP_CXL_RESET_CAPABLE: u16 = 1 << 7;
    /// CXL Reset Timeout \[10:8\]: the longest a CXL Reset may take, Mem Clr included.
    pub const CAP_CXL_RESET_TIMEOUT_SHIFT: u32 = 8;
    pub const CAP_CXL_RESET_TIMEOUT_MASK: u16 = 0b111 << 8;
    /// CXL Reset Mem Clr Capable, bit 11: volatile HDM can be cleared by CXL Reset.
    pub const CAP_CXL_RESET_MEM_CLR_CAPABLE: u16 = 1 << 11;
    pub const CAP_VIRAL_CAPABLE: u16 = 1 << 14;

    /// CXL Reset Timeout encodings: 000b 10 ms, 001b 100 ms, 010b 1 s, 011b 10 s,
    /// 100b 100 s; the others are reserved.
    pub const CXL_RESET_TIMEOUT_10MS: u16 = 0b000;
    pub const CXL_RESET_TIMEOUT_100MS: u16 = 0b001;
    pub const CXL_RESET_TIMEOUT_1S: u16 = 0b010;
    pub const CXL_RESET_TIMEOUT_10S: u16 = 0b011;
    pub const CXL_RESET_TIMEOUT_100S: u16 = 0b100;

    /// The CXL Reset Timeout field value for an encoding.
    pub const fn cap_cxl_reset_timeout(encoding: u16) -> u16 {
        (encoding << CAP_CXL_RESET_TIMEOUT_SHIFT) & CAP_CXL_RESET_TIMEOUT_MASK
    }
    /// The timeout a Capability register value advertises, in nanoseconds; `None`
    /// for a reserved encoding.
    pub const fn cxl_reset_timeout_ns(cap: u16) -> Option<u64> {
        match (cap & CAP_CXL_RESET_TIMEOUT_MASK) >> CAP_CXL_RESET_TIMEOUT_SHIFT {
            CXL_RESET_TIMEOUT_10MS => Some(10_000_000),
            CXL_RESET_TIMEOUT_100MS => Some(100_000_000),
            CXL_RESET_TIMEOUT_1S => Some(1_000_000_000),
            CXL_RESET_TIMEOUT_10S => Some(10_000_000_000),
            CXL_RESET_TIMEOUT_100S => Some(100_000_000_000),
            _ => None,
        }
    }

    /// HDM_Count field value.
    pub const fn cap_hdm_count(count: u8) -> u16 {
        ((count as u16) << CAP_HDM_COUNT_SHIFT) & CAP_HDM_COUNT_MASK
    }

    /// DVSEC CXL Control (§8.1.3.2), 16-bit. Fields are RWL: locked by CONFIG_LOCK.
    pub const CTRL: usize = 0x0c;
    pub const CTRL_CACHE_ENABLE: u16 = 1 << 0;
    /// IO_Enable, bit 1: RO, always 1.
    pub const CTRL_IO_ENABLE: u16 = 1 << 1;
    pub const CTRL_MEM_ENABLE: u16 = 1 << 2;
    /// Cache_SF_Coverage \[7:3\].
    pub const CTRL_CACHE_SF_COVERAGE_MASK: u16 = 0x1f << 3;
    /// Cache_SF_Granularity \[10:8\].
    pub const CTRL_CACHE_SF_GRANULARITY_MASK: u16 = 0b111 << 8;
    pub const CTRL_CACHE_CLEAN_EVICTION: u16 = 1 << 11;
    pub const CTRL_VIRAL_ENABLE: u16 = 1 << 14;

    /// DVSEC CXL Status (§8.1.3.3), 16-bit: Viral_Status bit 14 (RW1CS).
    pub const STATUS: usize = 0x0e;
    pub const STATUS_VIRAL: u16 = 1 << 14;

    /// DVSEC CXL Control2 (§8.1.3.4), 16-bit.
    pub const CTRL2: usize = 0x10;
    /// Disable Caching, bit 0 (RW): no new modified lines are cached.
    pub const CTRL2_DISABLE_CACHING: u16 = 1 << 0;
    /// Initiate Cache Write Back and Invalidation, bit 1: a written 1 starts it;
    /// reads 0, a written 0 is ignored.
    pub const CTRL2_INITIATE_CACHE_WBI: u16 = 1 << 1;
    /// Initiate CXL Reset, bit 2: a written 1 starts a CXL Reset (§9.7); reads 0, a
    /// written 0 is ignored.
    pub const CTRL2_INITIATE_CXL_RESET: u16 = 1 << 2;
    /// CXL Reset Mem Clr Enable, bit 3 (RW): the next CXL Reset clears volatile HDM.
    pub const CTRL2_CXL_RESET_MEM_CLR_ENABLE: u16 = 1 << 3;

    /// DVSEC CXL Status2 (§8.1.3.5), 16-bit; these bits are RO.
    pub const STATUS2: usize = 0x12;
    /// Cache Invalid, bit 0: no valid line is held and Disable Caching is 1.
    pub const STATUS2_CACHE_INVALID: u16 = 1 << 0;
    /// CXL Reset Complete, bit 1: the last CXL Reset completed successfully; cleared
    /// when Initiate CXL Reset is written 1.
    pub const STATUS2_CXL_RESET_COMPLETE: u16 = 1 << 1;
    /// CXL Reset Error, bit 2: the last CXL Reset completed with errors; cleared when
    /// Initiate CXL Reset is written 1.
    pub const STATUS2_CXL_RESET_ERROR: u16 = 1 << 2;

    /// DVSEC CXL Lock (§8.1.3.6), 16-bit: CONFIG_LOCK bit 0 (RWO). Once set, every
    /// RWL field of this DVSEC is read-only until the next conventional reset; the
    /// lock and the fields it locks are not affected by CXL Reset.
    pub const LOCK: usize = 0x14;
    pub const LOCK_CONFIG_LOCK: u16 = 1 << 0;

    /// DVSEC CXL Capability2 (§8.1.3.7), 16-bit.
    pub const CAP2: usize = 0x16;

    /// Range `i` (0 or 1) Size High (§8.1.3.8, §8.1.3.10), 32-bit, RO.
    pub const fn range_size_high(i: usize) -> usize {
        0x18 + 0x10 * i
    }
    /// Range `i` Size Low, 32-bit, RO.
    pub const fn range_size_low(i: usize) -> usize {
        0x1c + 0x10 * i
    }
    /// Range `i` Base High (§8.1.3.12, §8.1.3.14), 32-bit, RWL.
    pub const fn range_base_high(i: usize) -> usize {
        0x20 + 0x10 * i
    }
    /// Range `i` Base Low, 32-bit: Memory_Base_Low \[31:28\] RWL.
    pub const fn range_base_low(i: usize) -> usize {
        0x24 + 0x10 * i
    }
    pub const MAX_RANGES: usize = 2;

    /// Range Size Low fields (§8.1.3.9).
    pub const RANGE_MEM_INFO_VALID: u32 = 1 << 0;
    pub const RANGE_MEM_ACTIVE: u32 = 1 << 1;
    /// Media_Type \[4:2\]; 010b = characteristics are communicated through CDAT.
    pub const RANGE_MEDIA_TYPE_SHIFT: u32 = 2;
    pub const RANGE_MEDIA_TYPE_CDAT: u32 = 0b010 << 2;
    /// Memory_Class \[7:5\]; 010b = characteristics are communicated through CDAT.
    pub const RANGE_MEMORY_CLASS_SHIFT: u32 = 5;
    pub const RANGE_MEMORY_CLASS_CDAT: u32 = 0b010 << 5;
    /// Desired_Interleave \[12:8\].
    pub const RANGE_DESIRED_INTERLEAVE_MASK: u32 = 0x1f << 8;
    /// Memory_Active_Timeout \[15:13\].
    pub const RANGE_MEM_ACTIVE_TIMEOUT_MASK: u32 = 0b111 << 13;
    /// Memory_Size_Low \[31:28\] (and Memory_Base_Low \[31:28\] in the base register).
    pub const RANGE_ADDR_LOW_MASK: u32 = 0xf << 28;
    /// Ranges are 256 MiB granular.
    pub const RANGE_GRANULE: u64 = 1 << 28;

    /// The Size Low dword for a range of `size` bytes with the given flag bits.
    pub const fn range_size_low_value(size: u64, flags: u32) -> u32 {
        ((size as u32) & RANGE_ADDR_LOW_MASK) | (flags & !RANGE_ADDR_LOW_MASK)
    }
    /// Reassemble a range address from its high and low dwords.
    pub const fn range_addr(high: u32, low: u32) -> u64 {
        ((high as u64) << 32) | ((low & RANGE_ADDR_LOW_MASK) as u64)
    }

    /// DVSEC CXL Capability3 (§8.1.3.16), 16-bit.
    pub const CAP3: usize = 0x38;
    /// Default Volatile HDM State after Cold/Warm/Hot Reset, bits 0..2: 1 = preserved.
    pub const CAP3_VOLATILE_COLD: u16 = 1 << 0;
    pub const CAP3_VOLATILE_WARM: u16 = 1 << 1;
    pub const CAP3_VOLATILE_HOT: u16 = 1 << 2;
}

/// GPF DVSEC for CXL Devices (CXL r3.1 §8.1.7).
pub mod gpf_device {
    pub const REVISION: u8 = 0;
    pub const LENGTH: u16 = 0x10;
    /// GPF Phase 2 Duration (§8.1.7.1), 16-bit: Base \[3:0\], Scale \[11:8\].
    pub const PHASE2_DURATION: usize = 0x0a;
    pub const PHASE2_DURATION_BASE_MASK: u16 = 0xf;
    pub const PHASE2_DURATION_SCALE_SHIFT: u32 = 8;
    /// Time scale encodings: 0 = 1 us, 1 = 10 us, 2 = 100 us, 3 = 1 ms, 4 = 10 ms,
    /// 5 = 100 ms, 6 = 1 s, 7 = 10 s.
    pub const SCALE_1MS: u16 = 3;
    /// GPF Phase 2 Power (§8.1.7.2), 32-bit, in mW.
    pub const PHASE2_POWER: usize = 0x0c;
}

/// PCIe DVSEC for Flex Bus Port (CXL r3.1 §8.1.8; register layout in §8.2.1.3).
///
/// Capability (§8.2.1.3.1), Control (§8.2.1.3.2) and Status (§8.2.1.3.3) share
/// their bit positions: Cache 0, IO 1, Mem 2, "68B Flit and VH" 5, MLD 6,
/// "Latency-Optimized 256B Flit" 13, "PBR Flit" 14. The Status register also has
/// the RW1CS error bits 7..=12.
///
/// Which flit mode is in effect is reported jointly with PCIe: CXL runs 256B flits
/// exactly when the PCIe Link Status 2 Flit Mode Status bit is set (CXL r3.1
/// §6.4.1.1, Table 6-4); otherwise "68B Flit and VH Enabled" says the link runs
/// 68B flits with Virtual Hierarchy (CXL 2.0) semantics.
pub mod flex_bus {
    /// DVSEC revision 2 (CXL 3.x layout with Capability2/Control2/Status2).
    pub const REVISION: u8 = 2;
    pub const LENGTH: u16 = 0x20;

    /// DVSEC Flex Bus Port Capability (§8.2.1.3.1), 16-bit, HwInit.
    pub const CAP: usize = 0x0a;
    /// DVSEC Flex Bus Port Control (§8.2.1.3.2), 16-bit.
    pub const CTRL: usize = 0x0c;
    /// DVSEC Flex Bus Port Status (§8.2.1.3.3), 16-bit.
    pub const STATUS: usize = 0x0e;
    /// Received Modified TS Data Phase1 (§8.2.1.3.4), 32-bit.
    pub const RCVD_MOD_TS_PHASE1: usize = 0x10;
    /// Capability2 / Control2 / Status2 (§8.2.1.3.5 .. §8.2.1.3.7), 32-bit.
    pub const CAP2: usize = 0x14;
    pub const CTRL2: usize = 0x18;
    pub const STATUS2: usize = 0x1c;

    pub const CACHE: u16 = 1 << 0;
    pub const IO: u16 = 1 << 1;
    pub const MEM: u16 = 1 << 2;
    /// "CXL 68B Flit and VH" Capable / Enable / Enabled, bit 5 (CXL 2.0's CXL2p0 bit).
    pub const FLIT68_VH: u16 = 1 << 5;
    /// "CXL Multi-Logical Device" Capable / Enable / Enabled, bit 6.
    pub const MLD: u16 = 1 << 6;
    /// "CXL Latency-Optimized 256B Flit" Capable / Enable / Enabled, bit 13.
    pub const LATENCY_OPT_256B: u16 = 1 << 13;
    /// "CXL PBR Flit" Capable / Enable / Enabled, bit 14.
    pub const PBR_FLIT: u16 = 1 << 14;
    /// Status bits 7..=12 are RW1CS error flags: Even Half Failed, Correctable and
    /// Uncorrectable Protocol ID Framing Error, Unexpected Protocol ID Dropped,
    /// Retimers Present Mismatched, FlexBusEnableBits Phase2 Mismatch.
    pub const STATUS_RW1C: u16 = 0x3f << 7;
}

/// Register Locator DVSEC (CXL r3.1 §8.1.9).
pub mod register_locator {
    pub const REVISION: u8 = 0;
    /// Register Block 1 starts here; each entry is 8 bytes (§8.1.9.1).
    pub const BLOCK1: usize = 0x0c;
    pub const ENTRY_SIZE: usize = 8;

    /// Length of a Register Locator DVSEC with `entries` register blocks.
    pub const fn length(entries: usize) -> u16 {
        (BLOCK1 + ENTRY_SIZE * entries) as u16
    }

    /// Register Offset Low: Register BIR \[2:0\], Register Block Identifier \[15:8\],
    /// Register Block Offset Low \[31:16\] (64 KiB aligned).
    pub const BIR_MASK: u32 = 0x7;
    pub const BLOCK_ID_SHIFT: u32 = 8;
    pub const BLOCK_ID_MASK: u32 = 0xff << 8;
    pub const OFFSET_LOW_MASK: u32 = 0xffff << 16;

    /// Register Block Identifiers (§8.1.9.1, Table 8-19).
    pub const BLOCK_EMPTY: u8 = 0;
    pub const BLOCK_COMPONENT: u8 = 1;
    pub const BLOCK_BAR_VIRTUALIZATION_ACL: u8 = 2;
    pub const BLOCK_MEMORY_DEVICE: u8 = 3;
    pub const BLOCK_CPMU: u8 = 4;

    /// The two dwords of an entry locating block `id` at `offset` in BAR `bir`.
    /// `offset` must be 64 KiB aligned.
    pub const fn entry(bir: u8, id: u8, offset: u64) -> (u32, u32) {
        let low = ((bir as u32) & BIR_MASK)
            | (((id as u32) << BLOCK_ID_SHIFT) & BLOCK_ID_MASK)
            | ((offset as u32) & OFFSET_LOW_MASK);
        (low, (offset >> 32) as u32)
    }
    /// Decode an entry: (BIR, block id, offset).
    pub const fn decode(low: u32, high: u32) -> (u8, u8, u64) {
        (
            (low & BIR_MASK) as u8,
            ((low & BLOCK_ID_MASK) >> BLOCK_ID_SHIFT) as u8,
            ((high as u64) << 32) | ((low & OFFSET_LOW_MASK) as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_locator_entry_round_trips() {
        let (lo, hi) = register_locator::entry(0, register_locator::BLOCK_MEMORY_DEVICE, 0x1_0000);
        assert_eq!(lo, 0x0001_0300);
        assert_eq!(hi, 0);
        assert_eq!(register_locator::decode(lo, hi), (0, 3, 0x1_0000));
        let (lo, hi) = register_locator::entry(4, 1, 0x2_0003_0000);
        assert_eq!(register_locator::decode(lo, hi), (4, 1, 0x2_0003_0000));
    }

    #[test]
    fn range_fields() {
        let low = device::range_size_low_value(
            0x1_3000_0000,
            device::RANGE_MEM_INFO_VALID | device::RANGE_MEM_ACTIVE,
        );
        assert_eq!(low, 0x3000_0003);
        assert_eq!(device::range_addr(1, low), 0x1_3000_0000);
        assert_eq!(device::cap_hdm_count(2), 0x20);
    }

    #[test]
    fn cxl_reset_timeout_decodes_the_spec_encodings() {
        // Capability bits 10:8, CXL r3.1 §8.1.3.1.
        assert_eq!(device::cxl_reset_timeout_ns(0x0000), Some(10_000_000));
        assert_eq!(device::cxl_reset_timeout_ns(0x0180), Some(100_000_000));
        assert_eq!(device::cxl_reset_timeout_ns(0x0400), Some(100_000_000_000));
        assert_eq!(device::cxl_reset_timeout_ns(0x0500), None);
        assert_eq!(device::cxl_reset_timeout_ns(0x0700), None);
        assert_eq!(device::cap_cxl_reset_timeout(2), 0x0200);
    }
}
