//! Coherent Device Attribute Table (CDAT) layouts (CXL CDAT Specification r1.03):
//! the table header, the common structure header and the structures a device may
//! carry. All fields are little-endian; offsets are from the start of the header or
//! structure. Structure data follows the ACPI HMAT conventions the CDAT borrows.

/// CDAT header (CDAT r1.03 Table 1): 16 bytes.
pub const HEADER_LEN: usize = 16;
/// Length of the whole table in bytes, header included (u32).
pub const HDR_LENGTH: usize = 0;
/// Revision (u8).
pub const HDR_REVISION: usize = 4;
/// Checksum (u8): every byte of the table, this one included, sums to 0 mod 256.
pub const HDR_CHECKSUM: usize = 5;
/// Sequence (u32): changes whenever the table's contents change.
pub const HDR_SEQUENCE: usize = 12;
/// The revision the tables of CDAT r1.0x devices carry (the value QEMU's cxl-type3
/// reports too).
pub const REVISION: u8 = 2;

/// Common structure header (CDAT r1.03 Table 2): Type (u8), reserved (u8), Length
/// in bytes, header included (u16).
pub const STRUCT_HEADER_LEN: usize = 4;
pub const ST_TYPE: usize = 0;
pub const ST_LENGTH: usize = 2;

/// Structure types (CDAT r1.03 Table 2).
pub const TYPE_DSMAS: u8 = 0;
pub const TYPE_DSLBIS: u8 = 1;
pub const TYPE_DSMSCIS: u8 = 2;
pub const TYPE_DSIS: u8 = 3;
pub const TYPE_DSEMTS: u8 = 4;
pub const TYPE_SSLBIS: u8 = 5;

/// The fixed length of each structure type, or None for SSLBIS (a header plus
/// 8-byte entries) and types this revision does not define.
pub const fn fixed_len(st_type: u8) -> Option<usize> {
    match st_type {
        TYPE_DSMAS => Some(DSMAS_LEN),
        TYPE_DSLBIS => Some(DSLBIS_LEN),
        TYPE_DSMSCIS => Some(DSMSCIS_LEN),
        TYPE_DSIS => Some(DSIS_LEN),
        TYPE_DSEMTS => Some(DSEMTS_LEN),
        _ => None,
    }
}

/// Device Scoped Memory Affinity Structure (CDAT r1.03 Table 3): one DPA range.
pub mod dsmas {
    pub const LEN: usize = 24;
    /// DSMAD Handle (u8): how DSLBIS, DSMSCIS and DSEMTS name this range.
    pub const HANDLE: usize = 4;
    /// Flags (u8).
    pub const FLAGS: usize = 5;
    /// DPA Base (u64).
    pub const DPA_BASE: usize = 8;
    /// DPA Length (u64).
    pub const DPA_LENGTH: usize = 16;
    /// Flags bit 2: the range is non-volatile.
    pub const FLAG_NON_VOLATILE: u8 = 1 << 2;
    /// Flags bit 3: the range is shareable between hosts.
    pub const FLAG_SHAREABLE: u8 = 1 << 3;
    /// Flags bit 4: hardware-managed coherency across hosts.
    pub const FLAG_HW_COHERENT: u8 = 1 << 4;
    /// Flags bit 5: interconnect-specific dynamic capacity management.
    pub const FLAG_DYNAMIC_CAPACITY: u8 = 1 << 5;
    /// Flags bit 6: the range is read-only.
    pub const FLAG_READ_ONLY: u8 = 1 << 6;
}
pub const DSMAS_LEN: usize = dsmas::LEN;

/// Device Scoped Latency and Bandwidth Information Structure (CDAT r1.03 Table 5).
/// Fields follow ACPI HMAT's System Locality Latency and Bandwidth Information
/// Structure: a value is `entry * entry base unit`, latencies in picoseconds and
/// bandwidths in MB/s.
pub mod dslbis {
    pub const LEN: usize = 24;
    /// Handle (u8): the DSMAS this describes.
    pub const HANDLE: usize = 4;
    /// Flags (u8): HMAT Memory Hierarchy \[3:0\].
    pub const FLAGS: usize = 5;
    /// Data Type (u8).
    pub const DATA_TYPE: usize = 6;
    /// Entry Base Unit (u64).
    pub const ENTRY_BASE_UNIT: usize = 8;
    /// Entry\[0\] (u16); Entry\[1\] and Entry\[2\] follow and are reserved here.
    pub const ENTRY0: usize = 16;
    /// Memory Hierarchy: the memory itself (not a memory-side cache level).
    pub const FLAGS_MEMORY: u8 = 0;
    pub const FLAGS_HIERARCHY_MASK: u8 = 0x0f;
    /// An entry value that means "no information".
    pub const ENTRY_INVALID: u16 = 0xffff;
}
pub const DSLBIS_LEN: usize = dslbis::LEN;

/// HMAT data types (ACPI 6.5 §5.2.28.4, System Locality Latency and Bandwidth
/// Information Structure), used by DSLBIS and SSLBIS.
pub mod hmat {
    pub const ACCESS_LATENCY: u8 = 0;
    pub const READ_LATENCY: u8 = 1;
    pub const WRITE_LATENCY: u8 = 2;
    pub const ACCESS_BANDWIDTH: u8 = 3;
    pub const READ_BANDWIDTH: u8 = 4;
    pub const WRITE_BANDWIDTH: u8 = 5;
    /// Whether a data type is a latency (picoseconds) rather than a bandwidth (MB/s).
    pub const fn is_latency(data_type: u8) -> bool {
        data_type <= WRITE_LATENCY
    }
}

/// Device Scoped Memory Side Cache Information Structure (CDAT r1.03 Table 6).
pub mod dsmscis {
    pub const LEN: usize = 20;
    pub const HANDLE: usize = 4;
    /// Memory Side Cache Size (u64).
    pub const CACHE_SIZE: usize = 8;
    /// Cache Attributes (u32), as in HMAT.
    pub const CACHE_ATTRIBUTES: usize = 16;
}
pub const DSMSCIS_LEN: usize = dsmscis::LEN;

/// Device Scoped Initiator Structure (CDAT r1.03 Table 7).
pub mod dsis {
    pub const LEN: usize = 8;
    pub const FLAGS: usize = 4;
    pub const HANDLE: usize = 5;
}
pub const DSIS_LEN: usize = dsis::LEN;

/// Device Scoped EFI Memory Type Structure (CDAT r1.03 Table 8): the EFI memory
/// type that platform firmware should give the range when it maps it.
pub mod dsemts {
    pub const LEN: usize = 24;
    /// DSMAS Handle (u8).
    pub const HANDLE: usize = 4;
    /// EFI Memory Type and Attribute (u8).
    pub const MEMORY_TYPE: usize = 5;
    /// DPA Offset (u64), relative to the DSMAS's DPA Base.
    pub const DPA_OFFSET: usize = 8;
    /// DPA Length (u64).
    pub const DPA_LENGTH: usize = 16;
    /// EfiConventionalMemory.
    pub const EFI_CONVENTIONAL: u8 = 0;
    /// EfiConventionalMemory with the EFI_MEMORY_SP (specific purpose) attribute.
    pub const EFI_CONVENTIONAL_SP: u8 = 1;
    /// EfiReservedMemoryType.
    pub const EFI_RESERVED: u8 = 2;
}
pub const DSEMTS_LEN: usize = dsemts::LEN;

/// Switch Scoped Latency and Bandwidth Information Structure (CDAT r1.03 Table 9):
/// a 16-byte head, then 8-byte entries (Table 10). Switches only.
pub mod sslbis {
    pub const HEAD_LEN: usize = 16;
    pub const DATA_TYPE: usize = 4;
    pub const ENTRY_BASE_UNIT: usize = 8;
    pub const ENTRY_LEN: usize = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_lengths() {
        assert_eq!(fixed_len(TYPE_DSMAS), Some(24));
        assert_eq!(fixed_len(TYPE_DSIS), Some(8));
        assert_eq!(fixed_len(TYPE_DSMSCIS), Some(20));
        assert_eq!(fixed_len(TYPE_SSLBIS), None);
        assert_eq!(fixed_len(9), None);
        assert!(hmat::is_latency(hmat::WRITE_LATENCY));
        assert!(!hmat::is_latency(hmat::ACCESS_BANDWIDTH));
    }
}
