//! The device's Coherent Device Attribute Table (CXL CDAT Specification r1.03),
//! served through the DOE mailbox's Table Access protocol (CXL r3.1 §8.1.11).
//!
//! A table is either built from the device's configuration ([`Cdat::build`]) or a
//! vendor's binary served as is after validation ([`Cdat::parse`]). Either way it is
//! held as its bytes plus an index of its entries: entry handle 0 is the 16-byte
//! header, handle *n* the *n*-th structure, which is how the Read Entry request of
//! CXL r3.1 §8.1.11.1 names them.
//!
//! The built table describes device memory as one volatile range:
//! - a DSMAS (handle 0) over DPA 0..capacity, the device's single volatile partition;
//! - four DSLBIS (read and write latency, read and write bandwidth) of that range;
//! - a DSEMTS giving the EFI memory type platform firmware should map it with.

use cxl_regs::cdat::{self as c, dsemts, dslbis, dsmas, hmat};
use cxl_regs::le;
use thiserror::Error;

/// Longest table accepted: far beyond any real device's, small enough that a file
/// of any size cannot make the backend allocate much.
pub const MAX_TABLE_LEN: usize = 64 << 10;
/// Most entries (header included) a table may have: handles run 0..=0xfffe, and
/// 0xffff means "no next entry".
pub const MAX_ENTRIES: usize = 0xffff;
/// The largest latency accepted, in ns (the kernel multiplies entry and base unit
/// in 32 bits of picoseconds: 4.29 ms at most).
pub const MAX_LATENCY_NS: u64 = 1_000_000;
/// The largest bandwidth accepted, in MB/s (10 TB/s).
pub const MAX_BANDWIDTH_MBS: u64 = 10_000_000;

/// Errors of building or validating a CDAT.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CdatError {
    #[error("the table is {len} bytes, shorter than the 16-byte CDAT header")]
    TooShort { len: usize },
    #[error("the table is {len} bytes; at most {MAX_TABLE_LEN} are accepted")]
    TooLarge { len: usize },
    #[error(
        "the table is {actual} bytes but its header's Length field says {header}: a \
         truncated file, or bytes after the table"
    )]
    LengthMismatch { header: u64, actual: usize },
    #[error("bad checksum: the table's bytes sum to {sum:#04x} (mod 256), not 0")]
    Checksum { sum: u8 },
    #[error("structure at byte {offset}: its header does not fit in the table")]
    Truncated { offset: usize },
    #[error(
        "structure at byte {offset} (type {st_type}): length {length} runs past the end \
         of the table ({table} bytes)"
    )]
    PastEnd {
        offset: usize,
        st_type: u8,
        length: usize,
        table: usize,
    },
    #[error("structure at byte {offset} (type {st_type}): length {length}, expected {expected}")]
    StructureLength {
        offset: usize,
        st_type: u8,
        length: usize,
        expected: usize,
    },
    #[error(
        "structure at byte {offset} (type {st_type}): length {length} is not a whole \
         number of DWs, which the DOE Table Access protocol needs"
    )]
    Unaligned {
        offset: usize,
        st_type: u8,
        length: usize,
    },
    #[error("the table has more than {} structures", MAX_ENTRIES - 1)]
    TooManyEntries,
    #[error("the table has no DSMAS: it describes no device memory")]
    NoDsmas,
    #[error("two DSMAS structures use handle {handle}")]
    DuplicateHandle { handle: u8 },
    #[error("DSMAS handle {handle} has DPA length 0")]
    EmptyDsmas { handle: u8 },
    #[error(
        "DSMAS handle {handle} covers DPA {base:#x}+{length:#x}, past the device's \
         capacity of {capacity:#x} bytes"
    )]
    DsmasOutsideCapacity {
        handle: u8,
        base: u64,
        length: u64,
        capacity: u64,
    },
    #[error("structure at byte {offset} (type {st_type}) names DSMAS handle {handle}, which no DSMAS has")]
    UnknownHandle {
        offset: usize,
        st_type: u8,
        handle: u8,
    },
    #[error(
        "DSEMTS at byte {offset}: DPA offset {dpa_offset:#x}+{length:#x} runs past DSMAS \
         handle {handle} ({dsmas_length:#x} bytes)"
    )]
    DsemtsOutsideDsmas {
        offset: usize,
        handle: u8,
        dpa_offset: u64,
        length: u64,
        dsmas_length: u64,
    },
    #[error("{what} {value} is out of range (1..={max})")]
    OutOfRange {
        what: &'static str,
        value: u64,
        max: u64,
    },
}

/// The EFI memory type a DSEMTS reports (CDAT r1.03 Table 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EfiMemoryType {
    /// EfiConventionalMemory: ordinary system RAM.
    Conventional,
    /// EfiConventionalMemory with EFI_MEMORY_SP: memory set aside for a specific
    /// purpose, which Linux turns into "Soft Reserved" and a device-dax instance.
    SpecificPurpose,
    /// EfiReservedMemoryType: not for the OS's general use.
    ///
    /// The default for this device. An accelerator's memory is the device's
    /// working memory, owned by its driver, not capacity for the host:
    /// - Linux's CXL core models it as device memory (`CXL_DECODER_DEVMEM`,
    ///   drivers/cxl/core/region.c): a Type-2 region is never handed to the dax or
    ///   kmem drivers; the accelerator's driver attaches to it
    ///   (`devm_cxl_probe_mem`).
    /// - The DSEMTS tells platform firmware how to describe the range in the EFI
    ///   memory map when firmware maps it (as the `bios` firmware model does).
    ///   EfiConventionalMemory would put it in the page allocator as System RAM.
    ///   EFI_MEMORY_SP would make the kernel reserve it as "Soft Reserved" and let
    ///   the `hmem` driver (drivers/dax/hmem) claim it as a device-dax instance that
    ///   `daxctl` can online as System RAM. Both give the host memory the
    ///   accelerator relies on, and which vanishes with a device reset.
    /// - EfiReservedMemoryType keeps every kernel allocator off the range (an E820
    ///   reserved region), leaving it to the driver through the CXL region.
    ///
    /// The kernel itself does not read DSEMTS (drivers/cxl/core/cdat.c parses DSMAS
    /// and DSLBIS only), so this matters to firmware and to vendors' own tools.
    #[default]
    Reserved,
}

impl EfiMemoryType {
    /// The DSEMTS "EFI Memory Type and Attribute" code.
    pub fn code(self) -> u8 {
        match self {
            Self::Conventional => dsemts::EFI_CONVENTIONAL,
            Self::SpecificPurpose => dsemts::EFI_CONVENTIONAL_SP,
            Self::Reserved => dsemts::EFI_RESERVED,
        }
    }
    /// The name used on the command line and in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Conventional => "conventional",
            Self::SpecificPurpose => "specific-purpose",
            Self::Reserved => "reserved",
        }
    }
    pub const NAMES: &'static str = "reserved, specific-purpose or conventional";
    /// Parse a name (case-insensitive); `sp` is short for specific-purpose.
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "conventional" => Some(Self::Conventional),
            "specific-purpose" | "sp" => Some(Self::SpecificPurpose),
            "reserved" => Some(Self::Reserved),
            _ => None,
        }
    }
}

/// Performance and memory type of the built table.
///
/// Defaults describe DRAM behind the accelerator's memory controller, as seen from
/// the device's CXL port: 100 ns to read, 120 ns to write (a write is acknowledged
/// after the controller's write queue), and 51.2 GB/s each way (two DDR5-6400
/// channels, 2 x 25.6 GB/s, below the 63 GB/s of a x16 32 GT/s link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdatConfig {
    pub read_latency_ns: u64,
    pub write_latency_ns: u64,
    pub read_bandwidth_mbs: u64,
    pub write_bandwidth_mbs: u64,
    pub memory_type: EfiMemoryType,
}

impl Default for CdatConfig {
    fn default() -> Self {
        Self {
            read_latency_ns: 100,
            write_latency_ns: 120,
            read_bandwidth_mbs: 51_200,
            write_bandwidth_mbs: 51_200,
            memory_type: EfiMemoryType::Reserved,
        }
    }
}

impl CdatConfig {
    /// Check every figure is one a DSLBIS can carry and the kernel can use.
    pub fn validate(&self) -> Result<(), CdatError> {
        let check = |what, value, max| {
            if value == 0 || value > max {
                Err(CdatError::OutOfRange { what, value, max })
            } else {
                Ok(())
            }
        };
        check("read latency (ns)", self.read_latency_ns, MAX_LATENCY_NS)?;
        check("write latency (ns)", self.write_latency_ns, MAX_LATENCY_NS)?;
        check(
            "read bandwidth (MB/s)",
            self.read_bandwidth_mbs,
            MAX_BANDWIDTH_MBS,
        )?;
        check(
            "write bandwidth (MB/s)",
            self.write_bandwidth_mbs,
            MAX_BANDWIDTH_MBS,
        )
    }
}

/// Where the device's CDAT comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdatSource {
    /// Built from the device's configuration and these figures.
    Built(CdatConfig),
    /// A vendor's binary, served as is once it validates.
    Vendor(Vec<u8>),
}

impl Default for CdatSource {
    fn default() -> Self {
        Self::Built(CdatConfig::default())
    }
}

/// A validated CDAT and the index of its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdat {
    bytes: Vec<u8>,
    /// (offset, length) of each entry; entry 0 is the header.
    entries: Vec<(usize, usize)>,
}

/// A DSMAS as validation sees it.
struct Range {
    handle: u8,
    length: u64,
}

impl Cdat {
    /// The table of `source` for a device of `capacity` bytes. A built table gets
    /// `sequence`; a vendor's keeps its own.
    pub fn from_source(
        source: &CdatSource,
        capacity: u64,
        sequence: u32,
    ) -> Result<Self, CdatError> {
        match source {
            CdatSource::Built(cfg) => Self::build(cfg, capacity, sequence),
            CdatSource::Vendor(bytes) => Self::parse(bytes.clone(), capacity),
        }
    }

    /// Build the table that describes device memory of `capacity` bytes with the
    /// figures of `cfg`.
    pub fn build(cfg: &CdatConfig, capacity: u64, sequence: u32) -> Result<Self, CdatError> {
        cfg.validate()?;
        let handle = 0u8;
        let mut t = vec![0u8; c::HEADER_LEN];
        t[c::HDR_REVISION] = c::REVISION;
        put32(&mut t, c::HDR_SEQUENCE, sequence);

        let mut s = structure(c::TYPE_DSMAS, c::DSMAS_LEN);
        s[dsmas::HANDLE] = handle;
        // Volatile, not shareable: flags 0.
        put64(&mut s, dsmas::DPA_BASE, 0);
        put64(&mut s, dsmas::DPA_LENGTH, capacity);
        t.extend_from_slice(&s);

        for (data_type, value) in [
            (hmat::READ_LATENCY, cfg.read_latency_ns * 1000),
            (hmat::WRITE_LATENCY, cfg.write_latency_ns * 1000),
            (hmat::READ_BANDWIDTH, cfg.read_bandwidth_mbs),
            (hmat::WRITE_BANDWIDTH, cfg.write_bandwidth_mbs),
        ] {
            let (base, entry) = encode_hmat(value);
            let mut s = structure(c::TYPE_DSLBIS, c::DSLBIS_LEN);
            s[dslbis::HANDLE] = handle;
            s[dslbis::FLAGS] = dslbis::FLAGS_MEMORY;
            s[dslbis::DATA_TYPE] = data_type;
            put64(&mut s, dslbis::ENTRY_BASE_UNIT, base);
            s[dslbis::ENTRY0..dslbis::ENTRY0 + 2].copy_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&s);
        }

        let mut s = structure(c::TYPE_DSEMTS, c::DSEMTS_LEN);
        s[dsemts::HANDLE] = handle;
        s[dsemts::MEMORY_TYPE] = cfg.memory_type.code();
        put64(&mut s, dsemts::DPA_OFFSET, 0);
        put64(&mut s, dsemts::DPA_LENGTH, capacity);
        t.extend_from_slice(&s);

        let len = t.len() as u32;
        put32(&mut t, c::HDR_LENGTH, len);
        t[c::HDR_CHECKSUM] = checksum_byte(&t);
        Self::parse(t, capacity)
    }

    /// Validate a table for a device of `capacity` bytes: header, structure
    /// lengths, checksum, handles, and every DSMAS inside the capacity.
    pub fn parse(bytes: Vec<u8>, capacity: u64) -> Result<Self, CdatError> {
        let len = bytes.len();
        if len > MAX_TABLE_LEN {
            return Err(CdatError::TooLarge { len });
        }
        if len < c::HEADER_LEN {
            return Err(CdatError::TooShort { len });
        }
        let header_len = u64::from(get32(&bytes, c::HDR_LENGTH));
        if header_len != len as u64 {
            return Err(CdatError::LengthMismatch {
                header: header_len,
                actual: len,
            });
        }
        let sum = byte_sum(&bytes);
        if sum != 0 {
            return Err(CdatError::Checksum { sum });
        }
        let mut entries = vec![(0, c::HEADER_LEN)];
        let mut off = c::HEADER_LEN;
        while off < len {
            if off + c::STRUCT_HEADER_LEN > len {
                return Err(CdatError::Truncated { offset: off });
            }
            let st_type = bytes[off + c::ST_TYPE];
            let length = usize::from(get16(&bytes, off + c::ST_LENGTH));
            if let Some(expected) = c::fixed_len(st_type) {
                if length != expected {
                    return Err(CdatError::StructureLength {
                        offset: off,
                        st_type,
                        length,
                        expected,
                    });
                }
            } else if length < c::STRUCT_HEADER_LEN {
                return Err(CdatError::StructureLength {
                    offset: off,
                    st_type,
                    length,
                    expected: c::STRUCT_HEADER_LEN,
                });
            }
            if off + length > len {
                return Err(CdatError::PastEnd {
                    offset: off,
                    st_type,
                    length,
                    table: len,
                });
            }
            if length % 4 != 0 {
                return Err(CdatError::Unaligned {
                    offset: off,
                    st_type,
                    length,
                });
            }
            if entries.len() == MAX_ENTRIES {
                return Err(CdatError::TooManyEntries);
            }
            entries.push((off, length));
            off += length;
        }
        let cdat = Self { bytes, entries };
        cdat.check_ranges(capacity)?;
        Ok(cdat)
    }

    /// DSMAS ranges inside the capacity with distinct handles; every structure
    /// that names a DSMAS names one that exists.
    fn check_ranges(&self, capacity: u64) -> Result<(), CdatError> {
        let mut ranges: Vec<Range> = Vec::new();
        for s in self.structures().filter(|s| s[c::ST_TYPE] == c::TYPE_DSMAS) {
            let handle = s[dsmas::HANDLE];
            let base = get64(s, dsmas::DPA_BASE);
            let length = get64(s, dsmas::DPA_LENGTH);
            if ranges.iter().any(|r| r.handle == handle) {
                return Err(CdatError::DuplicateHandle { handle });
            }
            if length == 0 {
                return Err(CdatError::EmptyDsmas { handle });
            }
            if base.checked_add(length).is_none_or(|end| end > capacity) {
                return Err(CdatError::DsmasOutsideCapacity {
                    handle,
                    base,
                    length,
                    capacity,
                });
            }
            ranges.push(Range { handle, length });
        }
        if ranges.is_empty() {
            return Err(CdatError::NoDsmas);
        }
        for &(offset, _) in &self.entries[1..] {
            let s = &self.bytes[offset..];
            let st_type = s[c::ST_TYPE];
            let handle = match st_type {
                c::TYPE_DSLBIS => s[dslbis::HANDLE],
                c::TYPE_DSMSCIS => s[c::dsmscis::HANDLE],
                c::TYPE_DSEMTS => s[dsemts::HANDLE],
                _ => continue,
            };
            let Some(range) = ranges.iter().find(|r| r.handle == handle) else {
                return Err(CdatError::UnknownHandle {
                    offset,
                    st_type,
                    handle,
                });
            };
            if st_type == c::TYPE_DSEMTS {
                let dpa_offset = get64(s, dsemts::DPA_OFFSET);
                let length = get64(s, dsemts::DPA_LENGTH);
                if dpa_offset
                    .checked_add(length)
                    .is_none_or(|end| end > range.length)
                {
                    return Err(CdatError::DsemtsOutsideDsmas {
                        offset,
                        handle,
                        dpa_offset,
                        length,
                        dsmas_length: range.length,
                    });
                }
            }
        }
        Ok(())
    }

    /// The structures after the header, each as a slice of its own length.
    fn structures(&self) -> impl Iterator<Item = &[u8]> {
        self.entries[1..]
            .iter()
            .map(|&(off, len)| &self.bytes[off..off + len])
    }

    /// The whole table.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The header's Sequence field.
    pub fn sequence(&self) -> u32 {
        get32(&self.bytes, c::HDR_SEQUENCE)
    }

    /// Number of entries, header included.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Entry `handle` and the handle of the one after it (0xffff after the last),
    /// as a Read Entry response carries them; None for a handle the table lacks.
    pub fn entry(&self, handle: u16) -> Option<(&[u8], u16)> {
        let i = usize::from(handle);
        let &(off, len) = self.entries.get(i)?;
        let next = if i + 1 < self.entries.len() {
            (i + 1) as u16
        } else {
            cxl_regs::doe::LAST_ENTRY
        };
        Some((&self.bytes[off..off + len], next))
    }
}

/// The DSLBIS encoding of `value` (picoseconds or MB/s): the smallest power-of-ten
/// Entry Base Unit whose entry, rounded to nearest, fits below 0xffff (which means
/// "no information"). Exact whenever `value` has at most 4 significant digits past
/// the base, or is below 65535.
pub fn encode_hmat(value: u64) -> (u64, u16) {
    let mut base = 1u64;
    loop {
        let entry = value / base + u64::from(value % base >= base.div_ceil(2) && base > 1);
        if entry < u64::from(dslbis::ENTRY_INVALID) {
            return (base, entry as u16);
        }
        base *= 10;
    }
}

/// The checksum byte that makes `table` (with its checksum byte counted as 0) sum
/// to 0 mod 256.
pub fn checksum_byte(table: &[u8]) -> u8 {
    let others = byte_sum(table).wrapping_sub(table.get(c::HDR_CHECKSUM).copied().unwrap_or(0));
    0u8.wrapping_sub(others)
}

fn byte_sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}

fn structure(st_type: u8, len: usize) -> Vec<u8> {
    let mut s = vec![0u8; len];
    s[c::ST_TYPE] = st_type;
    s[c::ST_LENGTH..c::ST_LENGTH + 2].copy_from_slice(&(len as u16).to_le_bytes());
    s
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
/// A field of a structure whose length parse() checked (0 if it did not fit).
fn get16(b: &[u8], off: usize) -> u16 {
    le::u16_at(b, off).unwrap_or(0)
}
fn get32(b: &[u8], off: usize) -> u32 {
    le::u32_at(b, off).unwrap_or(0)
}
fn get64(b: &[u8], off: usize) -> u64 {
    le::u64_at(b, off).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    //! Offsets, lengths and codes here are written out from CDAT r1.03 (Tables 1-8)
    //! and ACPI HMAT, not taken from `cxl_regs::cdat`; checksums are recomputed by a
    //! helper of the test's own.
    use super::*;

    const MIB: u64 = 1 << 20;

    fn le16(b: &[u8], o: usize) -> u16 {
        le::u16_at(b, o).unwrap()
    }
    fn le32(b: &[u8], o: usize) -> u32 {
        le::u32_at(b, o).unwrap()
    }
    fn le64(b: &[u8], o: usize) -> u64 {
        le::u64_at(b, o).unwrap()
    }

    /// Set byte 5 so that all bytes sum to 0 mod 256.
    fn fix_checksum(t: &mut [u8]) {
        t[5] = 0;
        let sum: u32 = t.iter().map(|&b| u32::from(b)).sum();
        t[5] = ((256 - sum % 256) % 256) as u8;
    }

    /// The value the kernel derives from a DSLBIS (drivers/cxl/core/cdat.c,
    /// `cdat_normalize`): entry times base unit, latencies rounded up to ns.
    fn kernel_value(s: &[u8]) -> u64 {
        let base = le64(s, 8);
        let entry = u64::from(le16(s, 16));
        let v = entry * base;
        if s[6] <= 2 {
            v.div_ceil(1000)
        } else {
            v
        }
    }

    fn perf() -> CdatConfig {
        CdatConfig {
            read_latency_ns: 85,
            write_latency_ns: 140,
            read_bandwidth_mbs: 64_000,
            write_bandwidth_mbs: 128_000,
            memory_type: EfiMemoryType::SpecificPurpose,
        }
    }

    #[test]
    fn built_table_layout() {
        let cap = 1024 * MIB;
        let cdat = Cdat::build(&perf(), cap, 5).unwrap();
        let t = cdat.bytes();
        // Header 16 + DSMAS 24 + 4 DSLBIS of 24 + DSEMTS 24.
        assert_eq!(t.len(), 16 + 24 + 4 * 24 + 24);
        assert_eq!(le32(t, 0) as usize, t.len());
        assert_eq!(t[4], 2, "revision");
        assert_eq!(t[6..12], [0; 6], "reserved");
        assert_eq!(le32(t, 12), 5, "sequence");
        let sum = t.iter().fold(0u32, |s, &b| s + u32::from(b));
        assert_eq!(sum % 256, 0, "checksum");

        let dsmas = &t[16..40];
        assert_eq!((dsmas[0], le16(dsmas, 2)), (0, 24), "DSMAS type, length");
        assert_eq!(dsmas[4], 0, "handle");
        assert_eq!(dsmas[5], 0, "flags: volatile, not shareable");
        assert_eq!((le64(dsmas, 8), le64(dsmas, 16)), (0, cap));

        let mut by_type = std::collections::BTreeMap::new();
        for i in 0..4 {
            let s = &t[40 + 24 * i..64 + 24 * i];
            assert_eq!((s[0], le16(s, 2)), (1, 24), "DSLBIS type, length");
            assert_eq!(s[4], 0, "handle of the DSMAS");
            assert_eq!(s[5] & 0xf, 0, "memory hierarchy: memory");
            assert_ne!(le16(s, 16), 0xffff);
            assert_eq!((le16(s, 18), le16(s, 20), le16(s, 22)), (0, 0, 0));
            by_type.insert(s[6], kernel_value(s));
        }
        // HMAT data types 1 read latency, 2 write latency, 4 read bw, 5 write bw.
        let want: std::collections::BTreeMap<u8, u64> =
            [(1, 85), (2, 140), (4, 64_000), (5, 128_000)].into();
        assert_eq!(by_type, want);

        let dsemts = &t[136..160];
        assert_eq!((dsemts[0], le16(dsemts, 2)), (4, 24), "DSEMTS type, length");
        assert_eq!(dsemts[4], 0, "handle");
        assert_eq!(dsemts[5], 1, "EfiConventionalMemory with EFI_MEMORY_SP");
        assert_eq!((le64(dsemts, 8), le64(dsemts, 16)), (0, cap));
    }

    #[test]
    fn the_default_memory_type_is_efi_reserved() {
        let cdat = Cdat::build(&CdatConfig::default(), 256 * MIB, 0).unwrap();
        assert_eq!(cdat.bytes()[136 + 5], 2);
        for (name, code) in [("conventional", 0), ("sp", 1), ("Reserved", 2)] {
            assert_eq!(EfiMemoryType::from_name(name).unwrap().code(), code);
        }
        assert_eq!(EfiMemoryType::from_name("persistent"), None);
    }

    #[test]
    fn entries_index_the_table() {
        let cdat = Cdat::build(&perf(), 256 * MIB, 0).unwrap();
        assert_eq!(cdat.entry_count(), 7);
        let (h, next) = cdat.entry(0).unwrap();
        assert_eq!((h.len(), next), (16, 1));
        let (s, next) = cdat.entry(1).unwrap();
        assert_eq!((s[0], s.len(), next), (0, 24, 2));
        let (s, next) = cdat.entry(6).unwrap();
        assert_eq!((s[0], next), (4, 0xffff));
        assert!(cdat.entry(7).is_none());
    }

    #[test]
    fn hmat_encoding() {
        // Below 0xffff: exact, base unit 1.
        assert_eq!(encode_hmat(1), (1, 1));
        assert_eq!(encode_hmat(65_534), (1, 65_534));
        // 65535 is the "no information" entry: the next base unit.
        assert_eq!(encode_hmat(65_535), (10, 6554));
        assert_eq!(encode_hmat(100_000), (10, 10_000));
        assert_eq!(encode_hmat(128_000), (10, 12_800));
        // Not exact: nearest, within half a base unit.
        let (b, e) = encode_hmat(1_234_567);
        assert_eq!((b, e), (100, 12_346));
        // The largest input still fits, without overflow.
        let (b, e) = encode_hmat(u64::MAX);
        assert_eq!((b, e), (1_000_000_000_000_000, 18_447));
    }

    #[test]
    fn figures_out_of_range_are_refused() {
        for cfg in [
            CdatConfig {
                read_latency_ns: 0,
                ..perf()
            },
            CdatConfig {
                write_latency_ns: MAX_LATENCY_NS + 1,
                ..perf()
            },
            CdatConfig {
                write_bandwidth_mbs: 0,
                ..perf()
            },
            CdatConfig {
                read_bandwidth_mbs: MAX_BANDWIDTH_MBS + 1,
                ..perf()
            },
        ] {
            assert!(matches!(
                Cdat::build(&cfg, 256 * MIB, 0),
                Err(CdatError::OutOfRange { .. })
            ));
        }
    }

    fn valid() -> Vec<u8> {
        Cdat::build(&perf(), 512 * MIB, 0).unwrap().bytes().to_vec()
    }

    #[test]
    fn a_vendor_table_is_served_byte_for_byte() {
        let mut t = valid();
        // A structure of a type this revision does not define (length 8) and a
        // DSIS are carried as they are.
        t.extend_from_slice(&[0x7f, 0, 8, 0, 0xaa, 0xbb, 0xcc, 0xdd]);
        t.extend_from_slice(&[3, 0, 8, 0, 1, 0, 0, 0]);
        let n = t.len() as u32;
        t[0..4].copy_from_slice(&n.to_le_bytes());
        t[12] = 0x42;
        fix_checksum(&mut t);
        let cdat = Cdat::parse(t.clone(), 512 * MIB).unwrap();
        assert_eq!(cdat.bytes(), t);
        assert_eq!(cdat.sequence(), 0x42);
        assert_eq!(cdat.entry_count(), 9);
    }

    #[test]
    fn truncated_tables_are_refused() {
        let t = valid();
        assert_eq!(
            Cdat::parse(t[..10].to_vec(), 512 * MIB),
            Err(CdatError::TooShort { len: 10 })
        );
        // Cut in the last structure: the header's Length no longer matches.
        let cut = t[..t.len() - 4].to_vec();
        assert_eq!(
            Cdat::parse(cut.clone(), 512 * MIB),
            Err(CdatError::LengthMismatch {
                header: 160,
                actual: 156
            })
        );
        // The same with Length and checksum fixed: the DSEMTS now has 20 bytes.
        let mut cut = cut;
        cut[0..4].copy_from_slice(&156u32.to_le_bytes());
        fix_checksum(&mut cut);
        assert!(matches!(
            Cdat::parse(cut, 512 * MIB),
            Err(CdatError::PastEnd { offset: 136, .. })
        ));
        // Two stray bytes after the last structure.
        let mut t2 = valid();
        t2.extend_from_slice(&[0, 0]);
        t2[0..4].copy_from_slice(&162u32.to_le_bytes());
        fix_checksum(&mut t2);
        assert_eq!(
            Cdat::parse(t2, 512 * MIB),
            Err(CdatError::Truncated { offset: 160 })
        );
    }

    #[test]
    fn a_bad_checksum_is_refused() {
        let mut t = valid();
        t[5] = t[5].wrapping_add(3);
        assert_eq!(
            Cdat::parse(t, 512 * MIB),
            Err(CdatError::Checksum { sum: 3 })
        );
    }

    #[test]
    fn a_dsmas_past_capacity_is_refused() {
        let t = valid();
        // Fits 512 MiB, not 256 MiB.
        assert!(matches!(
            Cdat::parse(t.clone(), 256 * MIB),
            Err(CdatError::DsmasOutsideCapacity {
                handle: 0,
                base: 0,
                length,
                capacity
            }) if length == 512 * MIB && capacity == 256 * MIB
        ));
        // A base that makes base + length overflow.
        let mut t = t;
        t[16 + 8..16 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        fix_checksum(&mut t);
        assert!(matches!(
            Cdat::parse(t, u64::MAX),
            Err(CdatError::DsmasOutsideCapacity { .. })
        ));
    }

    #[test]
    fn inconsistent_structures_are_refused() {
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut t = valid();
            f(&mut t);
            let n = t.len() as u32;
            t[0..4].copy_from_slice(&n.to_le_bytes());
            fix_checksum(&mut t);
            Cdat::parse(t, 512 * MIB).unwrap_err()
        };
        // DSMAS length 28.
        assert!(matches!(
            edit(&|t| t[16 + 2] = 28),
            CdatError::StructureLength {
                offset: 16,
                st_type: 0,
                length: 28,
                expected: 24
            }
        ));
        // An unknown type of 6 bytes: not whole DWs.
        assert!(matches!(
            edit(&|t| t.extend_from_slice(&[0x40, 0, 6, 0, 0, 0])),
            CdatError::Unaligned { length: 6, .. }
        ));
        // An unknown type with a length below its own header.
        assert!(matches!(
            edit(&|t| t.extend_from_slice(&[0x40, 0, 2, 0])),
            CdatError::StructureLength { length: 2, .. }
        ));
        // DSLBIS naming handle 9.
        assert!(matches!(
            edit(&|t| t[40 + 4] = 9),
            CdatError::UnknownHandle {
                offset: 40,
                st_type: 1,
                handle: 9
            }
        ));
        // DSEMTS beyond its DSMAS.
        assert!(matches!(
            edit(&|t| t[136 + 8] = 1),
            CdatError::DsemtsOutsideDsmas { handle: 0, .. }
        ));
        // A second DSMAS with handle 0; then with length 0.
        let dsmas: Vec<u8> = valid()[16..40].to_vec();
        assert!(matches!(
            edit(&|t| t.extend_from_slice(&dsmas)),
            CdatError::DuplicateHandle { handle: 0 }
        ));
        let mut empty = dsmas.clone();
        empty[4] = 1;
        empty[16..24].fill(0);
        assert!(matches!(
            edit(&|t| t.extend_from_slice(&empty)),
            CdatError::EmptyDsmas { handle: 1 }
        ));
        // No DSMAS at all: the header alone.
        assert_eq!(edit(&|t| t.truncate(16)), CdatError::NoDsmas);
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        assert_eq!(
            Cdat::parse(vec![0; MAX_TABLE_LEN + 1], u64::MAX),
            Err(CdatError::TooLarge {
                len: MAX_TABLE_LEN + 1
            })
        );
    }
}
