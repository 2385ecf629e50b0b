//! The one grammar for numbers and sizes that cxl-accel reads from people: the
//! backend's options and config file, firmware parameters, the control socket, the
//! in-guest harness (and so the scripts, which pass the user's strings through to it).
//!
//! [`parse_u64`], a number or a size:
//!
//! ```text
//! value   = space* (decimal [unit] | hex) space*
//! decimal = digit+                       e.g. 4096, 512M, 4GiB, 1t
//! hex     = ("0x" | "0X") hexdigit+      e.g. 0x20000000 (no unit: 0x1B is 27)
//! unit    = ("K" | "M" | "G" | "T") ["B" | "iB"]    letters in any case
//! ```
//!
//! Units are binary (K = 2^10, M = 2^20, G = 2^30, T = 2^40), with or without `B` or
//! `iB`: memory sizes are counted in powers of two. A bare `B`, a sign, a fraction,
//! underscores and anything after the number are refused; so is a value beyond
//! `u64::MAX`, as [`UnitsError::Overflow`].
//!
//! [`parse_hex`], an identifier written in hexadecimal (PCI vendor and device ids, as
//! `lspci -n` prints them): hex digits with an optional `0x`, no unit.

use alloc::string::{String, ToString};
use thiserror::Error;

/// Why a string is not a number of the grammar above. Each variant carries the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitsError {
    #[error(
        "{0:?} is not a number: expected decimal (with an optional binary unit K, M, G \
         or T, optionally followed by B or iB) or 0x-prefixed hexadecimal"
    )]
    NotANumber(String),
    #[error("{0:?} is not a hexadecimal number (hex digits, optional 0x)")]
    NotHex(String),
    #[error("{0:?} does not fit in 64 bits")]
    Overflow(String),
}

/// Binary unit letters (lower case) and their shifts.
const UNITS: [(u8, u32); 4] = [(b'k', 10), (b'm', 20), (b'g', 30), (b't', 40)];

/// Split a trailing unit off a decimal value: (digits, shift). `None` when the text
/// ends in letters that are not a unit.
fn split_unit(t: &str) -> Option<(&str, u32)> {
    let lower_ends = |suffix: &str| {
        t.len() >= suffix.len()
            && t.is_char_boundary(t.len() - suffix.len())
            && t[t.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    // `iB` and `B` after the unit letter are optional.
    let tail = if lower_ends("ib") {
        2
    } else if lower_ends("b") {
        1
    } else {
        0
    };
    let stem = &t[..t.len() - tail];
    let last = stem.as_bytes().last().map(u8::to_ascii_lowercase);
    match UNITS.iter().find(|(c, _)| Some(*c) == last) {
        Some(&(_, shift)) => Some((&stem[..stem.len() - 1], shift)),
        // A `B` or `iB` without a unit letter before it is not a unit.
        None if tail == 0 => Some((t, 0)),
        None => None,
    }
}

/// Parse a number or a size (see the module documentation for the grammar).
pub fn parse_u64(s: &str) -> Result<u64, UnitsError> {
    let t = s.trim();
    let bad = || UnitsError::NotANumber(s.to_string());
    let overflow = || UnitsError::Overflow(s.to_string());
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return hex_digits(hex).ok_or_else(bad)?.ok_or_else(overflow);
    }
    let (digits, shift) = split_unit(t).ok_or_else(bad)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mut v: u64 = 0;
    for b in digits.bytes() {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    v.checked_mul(1u64 << shift).ok_or_else(overflow)
}

/// Parse a hexadecimal identifier: hex digits, `0x` optional, no unit.
pub fn parse_hex(s: &str) -> Result<u64, UnitsError> {
    let t = s.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    hex_digits(hex)
        .ok_or_else(|| UnitsError::NotHex(s.to_string()))?
        .ok_or_else(|| UnitsError::Overflow(s.to_string()))
}

/// `None`: not all hex digits (or empty); `Some(None)`: overflow.
fn hex_digits(h: &str) -> Option<Option<u64>> {
    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut v: u64 = 0;
    for b in h.bytes() {
        // is_ascii_hexdigit above: to_digit cannot fail.
        let d = u64::from((b as char).to_digit(16)?);
        match v.checked_mul(16).and_then(|v| v.checked_add(d)) {
            Some(n) => v = n,
            None => return Some(None),
        }
    }
    Some(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * 1024 * 1024;
    const TIB: u64 = 1024 * 1024 * 1024 * 1024;

    /// Accepted spellings and their values, worked out by hand from the grammar.
    const GOOD: &[(&str, u64)] = &[
        ("0", 0),
        ("4096", 4096),
        ("  12 ", 12),
        ("007", 7),
        ("18446744073709551615", u64::MAX),
        ("0x20000000", 536_870_912),
        ("0X1f", 31),
        ("0xABCdef", 0xab_cdef),
        ("0x1B", 27),
        ("0xffffffffffffffff", u64::MAX),
        ("1K", KIB),
        ("1k", KIB),
        ("1KB", KIB),
        ("1kib", KIB),
        ("1KiB", KIB),
        ("512M", 512 * MIB),
        ("512m", 512 * MIB),
        ("512MB", 512 * MIB),
        ("512MiB", 512 * MIB),
        ("1G", GIB),
        ("1GiB", GIB),
        ("1gb", GIB),
        ("4G", 4 * GIB),
        ("1T", TIB),
        ("1t", TIB),
        ("1TiB", TIB),
        ("16777215T", 16_777_215 * TIB),
        ("0K", 0),
    ];

    /// Refused spellings, and whether the refusal is an overflow.
    const BAD: &[(&str, bool)] = &[
        ("", false),
        ("   ", false),
        ("M", false),
        ("GiB", false),
        ("B", false),
        ("512B", false),
        ("512iB", false),
        ("12X", false),
        ("1P", false),
        ("-1", false),
        ("+5", false),
        ("-1G", false),
        ("1.5G", false),
        ("1_000", false),
        ("1 G", false),
        ("1GG", false),
        ("1Gi", false),
        ("0x", false),
        ("0xzz", false),
        ("0x10M", false),
        ("0x+1", false),
        ("x10", false),
        ("1e3", false),
        ("18446744073709551616", true),
        ("0x10000000000000000", true),
        ("16777216T", true),
        ("99999999999999G", true),
    ];

    #[test]
    fn numbers_and_sizes() {
        for &(s, want) in GOOD {
            assert_eq!(parse_u64(s), Ok(want), "{s:?}");
        }
        for &(s, overflow) in BAD {
            match parse_u64(s) {
                Err(UnitsError::Overflow(e)) if overflow => assert_eq!(e, s),
                Err(UnitsError::NotANumber(e)) if !overflow => assert_eq!(e, s),
                other => panic!("{s:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn hex_identifiers() {
        for (s, want) in [
            ("1234", 0x1234),
            ("cc02", 0xcc02),
            ("0x1b36", 0x1b36),
            (" 0XCC02 ", 0xcc02),
            ("FFFFFFFFFFFFFFFF", u64::MAX),
        ] {
            assert_eq!(parse_hex(s), Ok(want), "{s:?}");
        }
        for s in ["", "0x", "12g", "1K", "-1", "+1", "0x0x1"] {
            assert_eq!(parse_hex(s), Err(UnitsError::NotHex(s.into())), "{s:?}");
        }
        assert_eq!(
            parse_hex("10000000000000000"),
            Err(UnitsError::Overflow("10000000000000000".into()))
        );
    }

    #[test]
    fn messages_name_the_input() {
        let e = parse_u64("12X").unwrap_err().to_string();
        assert!(e.starts_with("\"12X\" is not a number"), "{e}");
        let e = parse_u64("99999999999T").unwrap_err().to_string();
        assert_eq!(e, "\"99999999999T\" does not fit in 64 bits");
    }
}
