//! The device's poison list (CXL r3.1 §8.2.9.9.4): 64-byte granular DPA ranges with
//! their error source, bounded by the Identify "Poison List Maximum Media Error
//! Records", with overflow and "more records" reporting for Get Poison List.

use std::collections::BTreeMap;

use cxl_regs::mailbox::{
    poison as p, RC_INJECT_POISON_LIMIT, RC_INVALID_INPUT, RC_INVALID_PHYSICAL_ADDRESS,
};
use thiserror::Error;

use crate::le;

/// Largest length one Media Error Record can describe (le32 count of lines).
const MAX_RECORD_LEN: u64 = u32::MAX as u64 * p::LINE;

/// Errors of poison-list operations; each maps to a mailbox return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PoisonError {
    #[error("address {0:#x} or length is not 64-byte aligned, or the length is 0")]
    Misaligned(u64),
    #[error("range at {0:#x} is outside the device capacity")]
    OutOfRange(u64),
    #[error("the inject poison limit is reached")]
    LimitReached,
}

impl PoisonError {
    /// The return code of §8.2.9.9.4 for this error.
    pub fn rc(self) -> u16 {
        match self {
            PoisonError::Misaligned(_) => RC_INVALID_INPUT,
            PoisonError::OutOfRange(_) => RC_INVALID_PHYSICAL_ADDRESS,
            PoisonError::LimitReached => RC_INJECT_POISON_LIMIT,
        }
    }
}

/// One poisoned range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoisonRecord {
    pub dpa: u64,
    /// Bytes, a multiple of 64.
    pub len: u64,
    /// Error Source ([`p::SOURCE_INJECTED`], ...).
    pub source: u8,
}

#[derive(Debug, Clone)]
pub(crate) struct PoisonList {
    /// start -> (len, source); ranges never overlap.
    records: BTreeMap<u64, (u64, u8)>,
    capacity: u64,
    max: usize,
    inject_limit: usize,
    overflow_ts: Option<u64>,
    /// Continuation of a Get Poison List that returned "More Media Error Records":
    /// (query start, query end, next record start).
    cursor: Option<(u64, u64, u64)>,
}

impl PoisonList {
    pub(crate) fn new(capacity: u64, max: u32, inject_limit: u16) -> Self {
        Self {
            records: BTreeMap::new(),
            capacity,
            // The Identify field is 3 bytes wide.
            max: usize::try_from(max.clamp(1, 0xff_ffff)).unwrap_or(1),
            inject_limit: usize::from(inject_limit),
            overflow_ts: None,
            cursor: None,
        }
    }

    pub(crate) fn max(&self) -> u32 {
        u32::try_from(self.max).unwrap_or(0xff_ffff)
    }

    fn check_range(&self, dpa: u64, len: u64) -> Result<u64, PoisonError> {
        if !dpa.is_multiple_of(p::LINE) || !len.is_multiple_of(p::LINE) || len == 0 {
            return Err(PoisonError::Misaligned(dpa));
        }
        match dpa.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(end),
            _ => Err(PoisonError::OutOfRange(dpa)),
        }
    }

    /// Mark `[dpa, dpa+len)` poisoned with `source`. Parts already poisoned keep
    /// their record. When the list is full the rest is not recorded and the list
    /// reports overflow from `timestamp` on (§8.2.9.9.4.1, Poison List Overflow).
    pub(crate) fn add(
        &mut self,
        dpa: u64,
        len: u64,
        source: u8,
        timestamp: u64,
    ) -> Result<(), PoisonError> {
        let end = self.check_range(dpa, len)?;
        if source == p::SOURCE_INJECTED && self.inject_limit != 0 {
            let injected = self
                .records
                .values()
                .filter(|r| r.1 == p::SOURCE_INJECTED)
                .count();
            if injected >= self.inject_limit && !self.covered(dpa, end) {
                return Err(PoisonError::LimitReached);
            }
        }
        // Gaps of [dpa, end) not covered by existing records.
        let mut gaps = Vec::new();
        let mut pos = dpa;
        let first = self
            .records
            .range(..dpa)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(dpa);
        for (&s, &(l, _)) in self.records.range(first..end) {
            let e = s.saturating_add(l);
            if e <= pos {
                continue;
            }
            if s > pos {
                gaps.push((pos, s));
            }
            pos = pos.max(e);
        }
        if pos < end {
            gaps.push((pos, end));
        }
        for (mut s, e) in gaps {
            while s < e {
                if self.records.len() >= self.max {
                    self.overflow_ts.get_or_insert(timestamp);
                    self.cursor = None;
                    return Ok(());
                }
                let l = (e - s).min(MAX_RECORD_LEN);
                self.records.insert(s, (l, source));
                s += l;
            }
        }
        self.cursor = None;
        Ok(())
    }

    fn covered(&self, dpa: u64, end: u64) -> bool {
        let mut pos = dpa;
        let first = self
            .records
            .range(..=dpa)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(dpa);
        for (&s, &(l, _)) in self.records.range(first..end) {
            if s > pos {
                return false;
            }
            pos = pos.max(s.saturating_add(l));
            if pos >= end {
                return true;
            }
        }
        pos >= end
    }

    /// Whether any byte of `[dpa, dpa+len)` is poisoned.
    pub(crate) fn overlaps(&self, dpa: u64, len: u64) -> bool {
        let end = dpa.saturating_add(len);
        let prev_hit = self
            .records
            .range(..=dpa)
            .next_back()
            .is_some_and(|(s, (l, _))| s.saturating_add(*l) > dpa);
        prev_hit || self.records.range(dpa..end).next().is_some()
    }

    /// Remove the 64-byte line at `dpa` from the list (Clear Poison, §8.2.9.9.4.3).
    /// Returns whether it was poisoned.
    pub(crate) fn clear_line(&mut self, dpa: u64, timestamp: u64) -> Result<bool, PoisonError> {
        let end = self.check_range(dpa, p::LINE)?;
        let Some((&s, &(l, src))) = self.records.range(..=dpa).next_back() else {
            return Ok(false);
        };
        let e = s.saturating_add(l);
        if e <= dpa {
            return Ok(false);
        }
        self.records.remove(&s);
        if s < dpa {
            self.records.insert(s, (dpa - s, src));
        }
        if end < e {
            if self.records.len() >= self.max {
                self.overflow_ts.get_or_insert(timestamp);
            } else {
                self.records.insert(end, (e - end, src));
            }
        }
        self.cursor = None;
        Ok(true)
    }

    /// Forget everything (Sanitize: the media holds no data, hence no poison).
    pub(crate) fn clear_all(&mut self) {
        self.records.clear();
        self.overflow_ts = None;
        self.cursor = None;
    }

    pub(crate) fn records(&self) -> Vec<PoisonRecord> {
        self.records
            .iter()
            .map(|(&dpa, &(len, source))| PoisonRecord { dpa, len, source })
            .collect()
    }

    /// Get Poison List (§8.2.9.9.4.1) from its raw 16-byte input: records overlapping
    /// the queried range, at most `max_records` per call. When more remain, the
    /// "More Media Error Records" flag is set and the next call with the same range
    /// continues where this one stopped.
    pub(crate) fn get_list(
        &mut self,
        input: &[u8],
        max_records: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), PoisonError> {
        let addr = le::u64_at(input, p::GET_ADDRESS).unwrap_or(0);
        let lines = le::u64_at(input, p::GET_LENGTH).unwrap_or(0);
        if addr & !p::ADDR_MASK != 0 || lines == 0 {
            return Err(PoisonError::Misaligned(addr));
        }
        let len = lines
            .checked_mul(p::LINE)
            .ok_or(PoisonError::OutOfRange(addr))?;
        let end = self.check_range(addr, len)?;
        let from = match self.cursor {
            Some((qs, qe, next)) if qs == addr && qe == end => next,
            _ => 0,
        };
        let hits: Vec<(u64, u64, u8)> = self
            .records
            .range(from..end)
            .filter(|(s, (l, _))| s.saturating_add(*l) > addr)
            .map(|(&s, &(l, src))| (s, l, src))
            .collect();
        let n = hits.len().min(max_records);
        let mut flags = 0u8;
        self.cursor = None;
        if let Some(&(next, _, _)) = hits.get(n) {
            flags |= p::FLAG_MORE_RECORDS;
            self.cursor = Some((addr, end, next));
        }
        out.clear();
        out.resize(p::OUT_RECORDS, 0);
        if let Some(ts) = self.overflow_ts {
            flags |= p::FLAG_OVERFLOW;
            le::put_u64(out, p::OUT_OVERFLOW_TS, ts);
        }
        le::put_u8(out, p::OUT_FLAGS, flags);
        le::put_u16(out, p::OUT_COUNT, u16::try_from(n).unwrap_or(u16::MAX));
        for (i, &(s, l, src)) in hits.iter().take(n).enumerate() {
            let base = p::OUT_RECORDS + i * p::RECORD_LEN;
            le::put_u64(
                out,
                base + p::RECORD_ADDRESS,
                s | (u64::from(src) & p::SOURCE_MASK),
            );
            let units = u32::try_from(l / p::LINE).unwrap_or(u32::MAX);
            le::put_u32(out, base + p::RECORD_LENGTH, units);
            le::put_u32(out, base + p::RECORD_LENGTH + 4, 0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn list(l: &PoisonList) -> Vec<(u64, u64)> {
        l.records().iter().map(|r| (r.dpa, r.len)).collect()
    }

    #[test]
    fn add_merges_only_gaps() {
        let mut l = PoisonList::new(GIB, 16, 0);
        l.add(0x1000, 0x100, p::SOURCE_INTERNAL, 0).unwrap();
        l.add(0x0fc0, 0x200, p::SOURCE_INJECTED, 0).unwrap();
        assert_eq!(
            list(&l),
            vec![(0x0fc0, 0x40), (0x1000, 0x100), (0x1100, 0xc0)]
        );
        assert!(l.overlaps(0x10ff, 1));
        assert!(!l.overlaps(0x11c0, 0x40));
    }

    #[test]
    fn add_checks_alignment_and_capacity() {
        let mut l = PoisonList::new(GIB, 16, 0);
        assert_eq!(l.add(0x20, 0x40, 3, 0), Err(PoisonError::Misaligned(0x20)));
        assert_eq!(l.add(0x40, 0, 3, 0), Err(PoisonError::Misaligned(0x40)));
        assert_eq!(l.add(GIB, 0x40, 3, 0), Err(PoisonError::OutOfRange(GIB)));
        assert_eq!(
            l.add(!0x3fu64, 0x40, 3, 0),
            Err(PoisonError::OutOfRange(!0x3fu64))
        );
    }

    #[test]
    fn clear_line_splits() {
        let mut l = PoisonList::new(GIB, 16, 0);
        l.add(0x1000, 0x100, 2, 0).unwrap();
        assert_eq!(l.clear_line(0x1040, 0), Ok(true));
        assert_eq!(list(&l), vec![(0x1000, 0x40), (0x1080, 0x80)]);
        assert_eq!(l.clear_line(0x1040, 0), Ok(false));
        assert_eq!(
            l.clear_line(0x1001, 0),
            Err(PoisonError::Misaligned(0x1001))
        );
    }

    #[test]
    fn overflow_when_full() {
        let mut l = PoisonList::new(GIB, 2, 0);
        for i in 0..3u64 {
            l.add(i * 0x1000, 0x40, 2, 77 + i).unwrap();
        }
        assert_eq!(l.records().len(), 2);
        let mut out = Vec::new();
        let mut q = Vec::new();
        q.extend_from_slice(&0u64.to_le_bytes());
        q.extend_from_slice(&(GIB / 64).to_le_bytes());
        l.get_list(&q, 10, &mut out).unwrap();
        assert_eq!(out[p::OUT_FLAGS], p::FLAG_OVERFLOW);
        assert_eq!(le::u64_at(&out, p::OUT_OVERFLOW_TS), Some(79));
    }

    #[test]
    fn inject_limit_counts_injected_records() {
        let mut l = PoisonList::new(GIB, 16, 1);
        l.add(0, 0x40, p::SOURCE_INJECTED, 0).unwrap();
        // Re-injecting a poisoned line is not a new record.
        l.add(0, 0x40, p::SOURCE_INJECTED, 0).unwrap();
        assert_eq!(
            l.add(0x40, 0x40, p::SOURCE_INJECTED, 0),
            Err(PoisonError::LimitReached)
        );
        // Other sources are not limited.
        l.add(0x40, 0x40, p::SOURCE_INTERNAL, 0).unwrap();
    }

    #[test]
    fn more_records_continue() {
        let mut l = PoisonList::new(GIB, 16, 0);
        for i in 0..5u64 {
            l.add(i * 0x1000, 0x40, 2, 0).unwrap();
        }
        let mut q = Vec::new();
        q.extend_from_slice(&0u64.to_le_bytes());
        q.extend_from_slice(&(GIB / 64).to_le_bytes());
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for _ in 0..3 {
            l.get_list(&q, 2, &mut out).unwrap();
            let n = usize::from(le::u16_at(&out, p::OUT_COUNT).unwrap());
            for i in 0..n {
                seen.push(
                    le::u64_at(&out, p::OUT_RECORDS + i * p::RECORD_LEN).unwrap() & p::ADDR_MASK,
                );
            }
            if out[p::OUT_FLAGS] & p::FLAG_MORE_RECORDS == 0 {
                break;
            }
        }
        assert_eq!(seen, vec![0, 0x1000, 0x2000, 0x3000, 0x4000]);
        assert_eq!(out[p::OUT_FLAGS] & p::FLAG_MORE_RECORDS, 0);
    }

    #[test]
    fn list_includes_record_straddling_query_start() {
        let mut l = PoisonList::new(GIB, 16, 0);
        l.add(0, 0x1000, 2, 0).unwrap();
        let mut q = Vec::new();
        q.extend_from_slice(&0x800u64.to_le_bytes());
        q.extend_from_slice(&1u64.to_le_bytes());
        let mut out = Vec::new();
        l.get_list(&q, 10, &mut out).unwrap();
        assert_eq!(le::u16_at(&out, p::OUT_COUNT), Some(1));
        assert_eq!(le::u64_at(&out, p::OUT_RECORDS), Some(2));
        assert_eq!(le::u32_at(&out, p::OUT_RECORDS + 8), Some(0x40));
    }
}
