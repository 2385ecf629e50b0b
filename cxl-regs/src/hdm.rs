//! CXL HDM Decoder Capability Structure (CXL r3.1 §8.2.4.20): register offsets and
//! field constants. Offsets are relative to the start of the structure, i.e. to the
//! pointer found in the CXL.cache/mem capability array (capability id
//! [`CAP_ID`]).
//!
//! Layout (§8.2.4.20): a 16-byte header followed by one 32-byte
//! block per decoder:
//!
//! | Offset          | Register                                         |
//! |-----------------|--------------------------------------------------|
//! | 0x00            | HDM Decoder Capability (§8.2.4.20.1)             |
//! | 0x04            | HDM Decoder Global Control (§8.2.4.20.2)         |
//! | 0x08, 0x0C      | reserved                                         |
//! | 0x10 + 0x20·n   | Decoder n Base Low (§8.2.4.20.3)                 |
//! | 0x14 + 0x20·n   | Decoder n Base High (§8.2.4.20.4)                |
//! | 0x18 + 0x20·n   | Decoder n Size Low (§8.2.4.20.5)                 |
//! | 0x1C + 0x20·n   | Decoder n Size High (§8.2.4.20.6)                |
//! | 0x20 + 0x20·n   | Decoder n Control (§8.2.4.20.7)                  |
//! | 0x24 + 0x20·n   | Decoder n DPA Skip Low (§8.2.4.20.10, endpoint)  |
//! | 0x28 + 0x20·n   | Decoder n DPA Skip High (§8.2.4.20.11, endpoint) |
//! | 0x2C + 0x20·n   | reserved                                         |
//!
//! On a switch or host bridge, 0x24/0x28 hold the Target List instead
//! (§8.2.4.20.8/9); this crate describes the endpoint form.

/// CXL.cache/mem capability id of the HDM Decoder Capability (CXL r3.1 §8.2.4, Table 8-22).
pub const CAP_ID: u16 = 0x5;
/// Capability version reported in the CXL.cache/mem capability header (§8.2.4.20).
pub const CAP_VERSION: u8 = 0x3;

/// Offset of the HDM Decoder Capability register (§8.2.4.20.1).
pub const CAPABILITY: u32 = 0x00;
/// Offset of the HDM Decoder Global Control register (§8.2.4.20.2).
pub const GLOBAL_CONTROL: u32 = 0x04;
/// Length of the header that precedes the first decoder.
pub const HEADER_LEN: u32 = 0x10;
/// Stride between consecutive decoders' register blocks.
pub const DECODER_STRIDE: u32 = 0x20;

/// Offsets inside one decoder's 32-byte block (add [`decoder_offset`]).
pub const DEC_BASE_LO: u32 = 0x00;
pub const DEC_BASE_HI: u32 = 0x04;
pub const DEC_SIZE_LO: u32 = 0x08;
pub const DEC_SIZE_HI: u32 = 0x0C;
pub const DEC_CONTROL: u32 = 0x10;
pub const DEC_DPA_SKIP_LO: u32 = 0x14;
pub const DEC_DPA_SKIP_HI: u32 = 0x18;

/// Offset of decoder `n`'s register block: 0x10 + 0x20·n.
pub const fn decoder_offset(n: u32) -> u32 {
    HEADER_LEN + DECODER_STRIDE * n
}

/// Length in bytes of the whole structure with `n` decoders: 0x10 + 0x20·n.
pub const fn block_len(n: u32) -> u32 {
    decoder_offset(n)
}

// ---- HDM Decoder Capability register (§8.2.4.20.1) ----

/// Decoder Count \[3:0\]: 0 → 1 decoder, n (1..=8) → 2n decoders, n (9..=12) → 4(n−4).
pub const CAP_DECODER_COUNT_MASK: u32 = 0xf;
/// Target Count \[7:4\]: target ports per decoder. Only switches and host bridges
/// have targets; an endpoint reports 0.
pub const CAP_TARGET_COUNT_SHIFT: u32 = 4;
pub const CAP_TARGET_COUNT_MASK: u32 = 0xf << CAP_TARGET_COUNT_SHIFT;
/// A11to8 Interleave Capable, bit 8: HPA bits 11:8 may select the interleave way
/// (granularities 256 B..2 KiB).
pub const CAP_A11TO8_INTERLEAVE: u32 = 1 << 8;
/// A14to12 Interleave Capable, bit 9: HPA bits 14:12 may select the interleave way
/// (granularities 4 KiB..16 KiB).
pub const CAP_A14TO12_INTERLEAVE: u32 = 1 << 9;
/// Poison On Decode Error Capability, bit 10.
pub const CAP_POISON_ON_DECODE_ERROR: u32 = 1 << 10;
/// 3, 6, 12 Way Interleave Capable, bit 11.
pub const CAP_3_6_12_WAY: u32 = 1 << 11;
/// 16 Way Interleave Capable, bit 12.
pub const CAP_16_WAY: u32 = 1 << 12;
/// UIO Capable, bit 13 (r3.1).
pub const CAP_UIO: u32 = 1 << 13;
/// UIO Capable Decoder Count \[19:16\] (r3.1).
pub const CAP_UIO_DECODER_COUNT_MASK: u32 = 0xf << 16;
/// MemData-NXM Capable, bit 20 (r3.1).
pub const CAP_MEMDATA_NXM: u32 = 1 << 20;

/// Encode a decoder count into the Decoder Count field (§8.2.4.20.1).
/// Returns `None` for counts the encoding cannot express.
pub const fn encode_decoder_count(n: u32) -> Option<u32> {
    match n {
        1 => Some(0),
        2 | 4 | 6 | 8 | 10 | 12 | 14 | 16 => Some(n / 2),
        20 | 24 | 28 | 32 => Some(n / 4 + 4),
        _ => None,
    }
}

/// Decode the Decoder Count field (§8.2.4.20.1). Reserved encodings give `None`.
pub const fn decode_decoder_count(field: u32) -> Option<u32> {
    match field & CAP_DECODER_COUNT_MASK {
        0 => Some(1),
        f @ 1..=8 => Some(f * 2),
        f @ 9..=12 => Some((f - 4) * 4),
        _ => None,
    }
}

// ---- HDM Decoder Global Control (§8.2.4.20.2) ----

/// Poison On Decode Error Enable, bit 0 (RW only when the capability bit is set).
pub const GCTRL_POISON_ON_DECODE_ERROR_EN: u32 = 1 << 0;
/// HDM Decoder Enable, bit 1: the device decodes CXL.mem through the HDM decoders
/// rather than through the DVSEC Range registers (§8.1.3.8).
pub const GCTRL_HDM_DECODER_ENABLE: u32 = 1 << 1;

// ---- Decoder n Base / Size / DPA Skip Low (§8.2.4.20.3, .5, .10) ----

/// Bits 31:28 of a Low register hold address bits 31:28; bits 27:0 are reserved and
/// read 0, which makes every base, size and skip a multiple of 256 MiB.
pub const LOW_ADDR_MASK: u32 = 0xf000_0000;
/// The 256 MiB granule of base, size and DPA skip.
pub const GRANULE: u64 = 1 << 28;

// ---- Decoder n Control (§8.2.4.20.7) ----

/// Interleave Granularity \[3:0\]: 2^(IG+8) bytes. 0..=6 (256 B..16 KiB) are defined.
pub const CTRL_IG_MASK: u32 = 0xf;
pub const CTRL_IG_SHIFT: u32 = 0;
/// Interleave Ways \[7:4\]: 0..=4 → 1, 2, 4, 8, 16 ways; 8..=10 → 3, 6, 12 ways.
pub const CTRL_IW_MASK: u32 = 0xf << 4;
pub const CTRL_IW_SHIFT: u32 = 4;
/// Lock On Commit, bit 8: once committed, every RWL field becomes read-only until
/// reset.
pub const CTRL_LOCK_ON_COMMIT: u32 = 1 << 8;
/// Commit, bit 9: software sets it to request that the decoder be committed and
/// clears it to uncommit.
pub const CTRL_COMMIT: u32 = 1 << 9;
/// Committed, bit 10 (RO): the decoder is active.
pub const CTRL_COMMITTED: u32 = 1 << 10;
/// Error Not Committed, bit 11 (RO): the programming was invalid; the decoder is not
/// active.
pub const CTRL_ERROR_NOT_COMMITTED: u32 = 1 << 11;
/// Target Range Type, bit 12: 0 = device-coherent (HDM-D/HDM-DB), 1 = host-only
/// coherent (HDM-H).
pub const CTRL_TARGET_TYPE_HOST_ONLY: u32 = 1 << 12;
/// BI, bit 13 (r3.0+): back-invalidate (HDM-DB). Reserved on a device that is not BI
/// capable.
pub const CTRL_BI: u32 = 1 << 13;
/// UIO, bit 14 (r3.1). Reserved on a device that is not UIO capable.
pub const CTRL_UIO: u32 = 1 << 14;

/// Largest defined Interleave Granularity encoding (16 KiB).
pub const IG_MAX: u8 = 6;
/// Smallest interleave granularity, in bytes (IG = 0).
pub const MIN_GRANULARITY: u64 = 256;

/// Number of interleave ways that an IW encoding stands for (§8.2.4.20.7), or `None`
/// for a reserved encoding.
pub const fn iw_to_ways(iw: u8) -> Option<u32> {
    match iw {
        0..=4 => Some(1 << iw),
        8..=10 => Some(3 << (iw - 8)),
        _ => None,
    }
}

/// IW encoding of a number of ways (§8.2.4.20.7), or `None` if not encodable.
pub const fn ways_to_iw(ways: u32) -> Option<u8> {
    match ways {
        1 => Some(0),
        2 => Some(1),
        4 => Some(2),
        8 => Some(3),
        16 => Some(4),
        3 => Some(8),
        6 => Some(9),
        12 => Some(10),
        _ => None,
    }
}

/// Interleave granularity in bytes of an IG encoding (§8.2.4.20.7), or `None` for a
/// reserved encoding.
pub const fn ig_to_granularity(ig: u8) -> Option<u64> {
    if ig <= IG_MAX {
        Some(MIN_GRANULARITY << ig)
    } else {
        None
    }
}

/// IG encoding of a granularity in bytes, or `None` if not a defined value.
pub const fn granularity_to_ig(bytes: u64) -> Option<u8> {
    if bytes.is_power_of_two() && bytes >= MIN_GRANULARITY && bytes <= (MIN_GRANULARITY << IG_MAX) {
        Some((bytes.trailing_zeros() - MIN_GRANULARITY.trailing_zeros()) as u8)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_count_encoding_round_trips() {
        for n in [1u32, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32] {
            let f = encode_decoder_count(n).unwrap();
            assert!(f <= CAP_DECODER_COUNT_MASK);
            assert_eq!(decode_decoder_count(f), Some(n), "{n} decoders");
        }
        assert_eq!(encode_decoder_count(3), None);
        assert_eq!(encode_decoder_count(18), None);
        assert_eq!(decode_decoder_count(13), None);
        assert_eq!(encode_decoder_count(4), Some(2));
    }

    #[test]
    fn interleave_encodings() {
        for iw in 0u8..16 {
            match iw_to_ways(iw) {
                Some(w) => assert_eq!(ways_to_iw(w), Some(iw)),
                None => assert!(matches!(iw, 5..=7 | 11..=15)),
            }
        }
        assert_eq!(iw_to_ways(10), Some(12));
        assert_eq!(ig_to_granularity(6), Some(16384));
        assert_eq!(ig_to_granularity(7), None);
        assert_eq!(granularity_to_ig(1024), Some(2));
        assert_eq!(granularity_to_ig(768), None);
        assert_eq!(granularity_to_ig(32768), None);
        assert_eq!(granularity_to_ig(128), None);
        assert_eq!(decoder_offset(3), 0x70);
        assert_eq!(block_len(2), 0x50);
    }
}
