//! Commit-time consistency checks of an endpoint HDM decoder (CXL r3.1
//! §8.2.4.20.12 "Committing Decoder Programming", with the field definitions of
//! §8.2.4.20.3–.11).
//!
//! The spec lists checks the decoder logic performs when Commit goes 0→1 (base at or
//! above the previous decoder's limit, no wrap-around, in-order commit). This device
//! performs those and the endpoint-specific ones that keep the DPA map coherent
//! (valid IW/IG, DPA range inside the capacity), in the order of [`CommitError`]'s
//! variants; the first failure is reported.

use cxl_regs::hdm::GRANULE;
use thiserror::Error;

use crate::interleave::Interleave;
use crate::DecoderState;

/// Highest HPA (exclusive) a decoder may cover: CXL decodes HPA[51:0]
/// (§8.2.4.20.13 expresses the decode over HPA bits 51:0).
pub const HPA_LIMIT: u64 = 1 << 52;

/// Why a decoder could not be committed. Reported to the guest as Error Not
/// Committed (§8.2.4.20.7, bit 11); kept for logging by the device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CommitError {
    /// §8.2.4.20.12: decoder m must be committed before decoder m+1.
    #[error("decoder {index} committed out of order: decoder {prev} is not committed")]
    OutOfOrder { index: usize, prev: usize },
    /// A zero-sized decoder decodes nothing. CXL r3.2 allows committing one to burn
    /// a slot, but Linux up to 7.3 fails port enumeration on it ("Committed with zero
    /// size"), so this device refuses it.
    #[error("decoder size is zero")]
    ZeroSize,
    /// Base, size and DPA skip are multiples of 256 MiB (§8.2.4.20.3/.5/.10: bits
    /// 27:0 of the Low registers are reserved).
    #[error("base, size or DPA skip is not 256 MiB aligned")]
    Misaligned,
    /// §8.2.4.20.12: Base + Size must not wrap; CXL decodes HPA[51:0].
    #[error("HPA range {base:#x}+{size:#x} wraps or exceeds 52 bits")]
    HpaOutOfRange { base: u64, size: u64 },
    /// §8.2.4.20.12: Decoder[m+1].Base >= Decoder[m].Base + Decoder[m].Size.
    #[error("HPA base {base:#x} is below the previous decoder's limit {prev_limit:#x}")]
    HpaOverlap { base: u64, prev_limit: u64 },
    /// §8.2.4.20.7: IW encodings 0..=4 and 8..=10 are defined.
    #[error("interleave ways encoding {0} is reserved")]
    BadInterleaveWays(u8),
    /// §8.2.4.20.7: IG encodings 0..=6 (256 B..16 KiB) are defined.
    #[error("interleave granularity encoding {0} is reserved")]
    BadInterleaveGranularity(u8),
    /// Each member of a W-way set holds Size/W bytes of DPA, which must itself be a
    /// whole number of 256 MiB granules (DPA is allocated in 256 MiB units, like the
    /// DPA skip; Linux requires region sizes aligned to 256 MiB · ways).
    #[error("size {size:#x} is not a multiple of {ways} x 256 MiB")]
    SizeNotDivisible { size: u64, ways: u32 },
    /// The DPA range, placed after the previous decoder's DPA range plus this
    /// decoder's skip (§8.2.4.20.10), must end within the device's capacity.
    #[error("DPA range {dpa_base:#x}+{dpa_size:#x} exceeds the capacity {capacity:#x}")]
    DpaBeyondCapacity {
        dpa_base: u64,
        dpa_size: u64,
        capacity: u64,
    },
    /// The device model's firmware refused the commit.
    #[error("rejected by the device firmware")]
    Rejected,
}

/// The DPA a decoder uses once committed: `(dpa_base, dpa_size)`.
pub(crate) type DpaSpan = (u64, u64);

/// Check that `cand`, as decoder `index` of `decoders` (all decoders below `index`
/// being as stored), may be committed on a device of `capacity` bytes. On success
/// returns the DPA span it would occupy.
pub(crate) fn validate(
    decoders: &[DecoderState],
    index: usize,
    cand: &DecoderState,
    capacity: u64,
) -> Result<DpaSpan, CommitError> {
    // In order: every lower decoder committed (the bank keeps committed decoders a
    // prefix, so checking index-1 is enough, but checking all costs nothing).
    let below = decoders.get(..index).unwrap_or(&[]);
    if let Some(prev) = below.iter().rposition(|d| !d.committed) {
        return Err(CommitError::OutOfOrder { index, prev });
    }
    if cand.size == 0 {
        return Err(CommitError::ZeroSize);
    }
    if !cand.base.is_multiple_of(GRANULE)
        || !cand.size.is_multiple_of(GRANULE)
        || !cand.dpa_skip.is_multiple_of(GRANULE)
    {
        return Err(CommitError::Misaligned);
    }
    if !matches!(cand.base.checked_add(cand.size), Some(limit) if limit <= HPA_LIMIT) {
        return Err(CommitError::HpaOutOfRange {
            base: cand.base,
            size: cand.size,
        });
    }
    if let Some(prev) = below.last() {
        // Stored committed decoders passed this check, so this cannot overflow;
        // saturate anyway rather than trust it.
        let prev_limit = prev.base.saturating_add(prev.size);
        if cand.base < prev_limit {
            return Err(CommitError::HpaOverlap {
                base: cand.base,
                prev_limit,
            });
        }
    }
    if cxl_regs::hdm::iw_to_ways(cand.iw).is_none() {
        return Err(CommitError::BadInterleaveWays(cand.iw));
    }
    let ways = Interleave::new(cand.iw, cand.ig)
        .ok_or(CommitError::BadInterleaveGranularity(cand.ig))?
        .ways();
    let per_way_unit = GRANULE.saturating_mul(u64::from(ways));
    if !cand.size.is_multiple_of(per_way_unit) {
        return Err(CommitError::SizeNotDivisible {
            size: cand.size,
            ways,
        });
    }
    let dpa_size = cand.size / u64::from(ways);
    let prev_end = dpa_end_of(below);
    let over = |dpa_base: u64| CommitError::DpaBeyondCapacity {
        dpa_base,
        dpa_size,
        capacity,
    };
    let dpa_base = prev_end
        .checked_add(cand.dpa_skip)
        .ok_or_else(|| over(u64::MAX))?;
    match dpa_base.checked_add(dpa_size) {
        Some(end) if end <= capacity => Ok((dpa_base, dpa_size)),
        _ => Err(over(dpa_base)),
    }
}

/// DPA size of a decoder: Size / ways (0 for an invalid IW).
pub(crate) fn dpa_size_of(d: &DecoderState) -> u64 {
    match cxl_regs::hdm::iw_to_ways(d.iw) {
        Some(w) => d.size / u64::from(w),
        None => 0,
    }
}

/// End (exclusive) of the DPA used by `decoders`, each placed after the previous
/// one's DPA range plus its own skip (§8.2.4.20.10). Saturates; the bank never stores
/// committed decoders for which this overflows.
pub(crate) fn dpa_end_of(decoders: &[DecoderState]) -> u64 {
    decoders.iter().fold(0u64, |end, d| {
        end.saturating_add(d.dpa_skip)
            .saturating_add(dpa_size_of(d))
    })
}
