//! Commit-time consistency checks of an endpoint HDM decoder (CXL r3.1
//! §8.2.4.20.12 "Committing Decoder Programming", with the field definitions of
//! §8.2.4.20.3–.11).
//!
//! The spec lists checks the decoder logic performs when Commit goes 0→1 (base at or
//! above the previous decoder's limit, no wrap-around, in-order commit). This device
//! performs those and the endpoint-specific ones that keep the DPA map coherent
//! (valid IW/IG, DPA range inside the capacity and below any decoder that stayed
//! committed above), in the order of [`CommitError`]'s variants; the first failure
//! is reported.

use cxl_regs::hdm::GRANULE;
use thiserror::Error;

use crate::interleave::Interleave;
use crate::DecoderState;

/// Highest HPA (exclusive) a decoder may cover: CXL decodes HPA\[51:0\]
/// (§8.2.4.20.13 expresses the decode over HPA bits 51:0).
pub const HPA_LIMIT: u64 = 1 << 52;

/// Why a decoder could not be committed. Reported to the guest as Error Not
/// Committed (§8.2.4.20.7, bit 11); kept for logging by the device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CommitError {
    /// §8.2.4.20.12: decoder m must be committed before decoder m+1. `prev` is the
    /// highest decoder below `index` that is not committed.
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
    /// §8.2.4.20.12: Base + Size must not wrap; CXL decodes HPA\[51:0\].
    #[error("HPA range {base:#x}+{size:#x} wraps or exceeds 52 bits")]
    HpaOutOfRange { base: u64, size: u64 },
    /// §8.2.4.20.12: Decoder\[m+1\].Base >= Decoder\[m\].Base + Decoder\[m\].Size.
    #[error("HPA base {base:#x} is below the previous decoder's limit {prev_limit:#x}")]
    HpaOverlap { base: u64, prev_limit: u64 },
    /// §8.2.4.20.12: decoder m's range lies below decoder m+1's. Only reachable
    /// when re-committing under a decoder that stayed committed.
    #[error("HPA limit {limit:#x} is above the next committed decoder's base {next_base:#x}")]
    HpaOverlapsNext { limit: u64, next_base: u64 },
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
    /// The DPA range would run into the DPA range that the next committed decoder
    /// latched when it was committed.
    #[error(
        "DPA end {dpa_end:#x} is above the next committed decoder's DPA base {next_dpa_base:#x}"
    )]
    DpaOverlapsNext { dpa_end: u64, next_dpa_base: u64 },
    /// The device model's firmware refused the commit.
    #[error("rejected by the device firmware")]
    Rejected,
}

/// A committed decoder as the checks see it: its registers and the DPA base it
/// latched when it was committed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    pub st: DecoderState,
    pub dpa_base: u64,
}

/// What the checks for decoder `index` need to know about the other decoders.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Neighbours {
    /// Highest decoder below `index` that is not committed, if any.
    pub uncommitted_below: Option<usize>,
    /// Decoder `index`-1, if it exists (it is committed when
    /// `uncommitted_below` is `None`).
    pub prev: Option<Placed>,
    /// Nearest committed decoder above `index`: it exists only after an
    /// out-of-order uncommit, and keeps decoding with its latched DPA base, so the
    /// decoder re-committed below it must fit underneath in both HPA and DPA.
    pub next: Option<Placed>,
}

/// Check that `cand` may be committed as decoder `index`, given its `nb`
/// neighbours, on a device of `capacity` bytes. On success returns the DPA base it
/// latches (§8.2.4.20.10: the end of the previous decoder's DPA range plus this
/// decoder's DPA skip).
pub(crate) fn validate(
    index: usize,
    cand: &DecoderState,
    nb: &Neighbours,
    capacity: u64,
) -> Result<u64, CommitError> {
    if let Some(prev) = nb.uncommitted_below {
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
    let limit = match cand.base.checked_add(cand.size) {
        Some(limit) if limit <= HPA_LIMIT => limit,
        _ => {
            return Err(CommitError::HpaOutOfRange {
                base: cand.base,
                size: cand.size,
            })
        }
    };
    if let Some(prev) = nb.prev {
        // Committed decoders passed the range check, so this cannot overflow;
        // saturate anyway rather than trust it.
        let prev_limit = prev.st.base.saturating_add(prev.st.size);
        if cand.base < prev_limit {
            return Err(CommitError::HpaOverlap {
                base: cand.base,
                prev_limit,
            });
        }
    }
    if let Some(next) = nb.next {
        if limit > next.st.base {
            return Err(CommitError::HpaOverlapsNext {
                limit,
                next_base: next.st.base,
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
    let prev_end = nb
        .prev
        .map_or(0, |p| p.dpa_base.saturating_add(dpa_size_of(&p.st)));
    let over = |dpa_base: u64| CommitError::DpaBeyondCapacity {
        dpa_base,
        dpa_size,
        capacity,
    };
    let dpa_base = prev_end
        .checked_add(cand.dpa_skip)
        .ok_or_else(|| over(u64::MAX))?;
    let dpa_end = match dpa_base.checked_add(dpa_size) {
        Some(end) if end <= capacity => end,
        _ => return Err(over(dpa_base)),
    };
    if let Some(next) = nb.next {
        if dpa_end > next.dpa_base {
            return Err(CommitError::DpaOverlapsNext {
                dpa_end,
                next_dpa_base: next.dpa_base,
            });
        }
    }
    Ok(dpa_base)
}

/// DPA size of a decoder: Size / ways (0 for an invalid IW).
pub(crate) fn dpa_size_of(d: &DecoderState) -> u64 {
    match cxl_regs::hdm::iw_to_ways(d.iw) {
        Some(w) => d.size / u64::from(w),
        None => 0,
    }
}
