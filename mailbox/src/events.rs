//! The four event logs of a memory device (CXL r3.1 §8.2.9.2): records with
//! handles, overflow tracking, clearing by handle, and per-log interrupt policy.

use std::collections::VecDeque;

use cxl_regs::mailbox::{
    clear_event_records as clr, event_interrupt_policy as pol, event_record as rec, event_status,
    get_event_records as ger, RC_INVALID_HANDLE, RC_INVALID_INPUT,
};
use thiserror::Error;

use crate::le;

/// Errors of event-log commands; each maps to a mailbox return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("event log type {0} is not supported")]
    UnknownLog(u8),
    #[error("event record handle {0:#x} does not name a stored record")]
    InvalidHandle(u16),
    #[error("Clear All Events is only allowed while the log has overflowed")]
    ClearAllWithoutOverflow,
    #[error("interrupt mode {0} is not supported")]
    BadInterruptMode(u8),
}

impl EventError {
    /// The return code of CXL r3.1 §8.2.9.2.2..5 for this error.
    pub fn rc(self) -> u16 {
        match self {
            EventError::InvalidHandle(_) => RC_INVALID_HANDLE,
            _ => RC_INVALID_INPUT,
        }
    }
}

/// The four event logs (CXL r3.1 §8.2.9.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventLog {
    Informational = 0,
    Warning = 1,
    Failure = 2,
    Fatal = 3,
}

impl EventLog {
    pub const ALL: [EventLog; 4] = [
        EventLog::Informational,
        EventLog::Warning,
        EventLog::Failure,
        EventLog::Fatal,
    ];

    /// The log of an Event Log type byte (§8.2.9.2.2); the Dynamic Capacity log (4)
    /// is not supported by this device.
    pub fn from_type(t: u8) -> Option<Self> {
        match t {
            ger::LOG_INFORMATIONAL => Some(EventLog::Informational),
            ger::LOG_WARNING => Some(EventLog::Warning),
            ger::LOG_FAILURE => Some(EventLog::Failure),
            ger::LOG_FATAL => Some(EventLog::Fatal),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// This log's bit in the device status Event Status field (§8.2.8.3.1).
    pub fn status_bit(self) -> u32 {
        match self {
            EventLog::Informational => event_status::INFORMATIONAL,
            EventLog::Warning => event_status::WARNING,
            EventLog::Failure => event_status::FAILURE,
            EventLog::Fatal => event_status::FATAL,
        }
    }
}

/// A 128-byte event record (CXL r3.1 §8.2.9.2.1, Common Event Record). The device
/// fills length, handle, severity and timestamp; the rest comes from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Record identifier UUID (wire byte order), e.g. General Media Event.
    pub uuid: [u8; 16],
    /// Event Record Flags. Bits \[1:0\] (severity) are set by the device from the log
    /// the record goes to; bits above [`rec::FLAGS_DEFINED`] are reserved and dropped.
    pub flags: u32,
    /// Record-specific data at offset 0x30, at most 0x50 bytes (longer is truncated).
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Stored {
    handle: u16,
    timestamp: u64,
    record: EventRecord,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Overflow {
    count: u16,
    first_ts: u64,
    last_ts: u64,
}

#[derive(Debug, Clone, Default)]
struct LogState {
    records: VecDeque<Stored>,
    last_handle: u16,
    overflow: Option<Overflow>,
    /// Interrupt Mode [1:0] set by Set Event Interrupt Policy.
    mode: u8,
}

impl LogState {
    /// Next free non-zero handle. Terminates because a log holds fewer than
    /// 0xffff records (capacity is clamped).
    fn alloc_handle(&mut self) -> u16 {
        loop {
            self.last_handle = self.last_handle.wrapping_add(1);
            let h = self.last_handle;
            if h != 0 && !self.records.iter().any(|r| r.handle == h) {
                return h;
            }
        }
    }
}

/// All event logs of the device.
#[derive(Debug, Clone)]
pub(crate) struct EventLogs {
    logs: [LogState; 4],
    capacity: usize,
    msgnum: u8,
}

impl EventLogs {
    /// `capacity` records per log (1..=0xfffe), `msgnum` the MSI/MSI-X message number
    /// the device reports in the interrupt settings.
    pub(crate) fn new(capacity: u16, msgnum: u8) -> Self {
        Self {
            logs: Default::default(),
            capacity: usize::from(capacity.clamp(1, 0xfffe)),
            msgnum: msgnum & 0xf,
        }
    }

    pub(crate) fn capacity(&self) -> u16 {
        u16::try_from(self.capacity).unwrap_or(u16::MAX)
    }

    fn log(&self, l: EventLog) -> &LogState {
        // The array has one entry per EventLog variant.
        &self.logs[l.index()]
    }

    fn log_mut(&mut self, l: EventLog) -> &mut LogState {
        &mut self.logs[l.index()]
    }

    /// Add a record stamped with `timestamp`. Returns false when the log is full: the
    /// record is dropped and the overflow condition recorded (§8.2.9.2.2).
    pub(crate) fn push(&mut self, l: EventLog, mut record: EventRecord, timestamp: u64) -> bool {
        let cap = self.capacity;
        let log = self.log_mut(l);
        if log.records.len() >= cap {
            let o = log.overflow.get_or_insert(Overflow {
                count: 0,
                first_ts: timestamp,
                last_ts: 0,
            });
            o.count = o.count.saturating_add(1);
            o.last_ts = timestamp;
            return false;
        }
        record.flags = (record.flags & rec::FLAGS_DEFINED & !rec::FLAG_SEVERITY_MASK) | l as u32;
        record.data.truncate(rec::DATA_LEN);
        let handle = log.alloc_handle();
        log.records.push_back(Stored {
            handle,
            timestamp,
            record,
        });
        true
    }

    /// Whether a new record in `l` should raise the event interrupt.
    pub(crate) fn interrupt_enabled(&self, l: EventLog) -> bool {
        self.log(l).mode == pol::MODE_MSI
    }

    /// Event Status bitmap (§8.2.8.3.1): a bit per log holding records.
    pub(crate) fn status(&self) -> u32 {
        EventLog::ALL
            .iter()
            .filter(|l| !self.log(**l).records.is_empty())
            .fold(0, |acc, l| acc | l.status_bit())
    }

    pub(crate) fn len(&self, l: EventLog) -> usize {
        self.log(l).records.len()
    }

    /// Get Event Records output (§8.2.9.2.2): header then up to `max_records`
    /// records, oldest first. Records stay until cleared.
    pub(crate) fn get_records(&self, l: EventLog, max_records: usize, out: &mut Vec<u8>) {
        let log = self.log(l);
        let n = log.records.len().min(max_records);
        let mut flags = 0;
        if n < log.records.len() {
            flags |= ger::FLAG_MORE_RECORDS;
        }
        out.clear();
        out.resize(ger::OUT_RECORDS, 0);
        if let Some(o) = log.overflow {
            flags |= ger::FLAG_OVERFLOW;
            le::put_u16(out, ger::OUT_OVERFLOW_COUNT, o.count);
            le::put_u64(out, ger::OUT_FIRST_OVERFLOW_TS, o.first_ts);
            le::put_u64(out, ger::OUT_LAST_OVERFLOW_TS, o.last_ts);
        }
        le::put_u8(out, ger::OUT_FLAGS, flags);
        le::put_u16(
            out,
            ger::OUT_RECORD_COUNT,
            u16::try_from(n).unwrap_or(u16::MAX),
        );
        for (i, s) in log.records.iter().take(n).enumerate() {
            let base = ger::OUT_RECORDS + i * rec::LEN;
            let mut r = [0u8; rec::LEN];
            r[rec::UUID..rec::UUID + 16].copy_from_slice(&s.record.uuid);
            r[rec::LENGTH] = rec::LEN as u8;
            r[rec::FLAGS..rec::FLAGS + 3].copy_from_slice(&s.record.flags.to_le_bytes()[..3]);
            r[rec::HANDLE..rec::HANDLE + 2].copy_from_slice(&s.handle.to_le_bytes());
            r[rec::TIMESTAMP..rec::TIMESTAMP + 8].copy_from_slice(&s.timestamp.to_le_bytes());
            let d = &s.record.data[..s.record.data.len().min(rec::DATA_LEN)];
            r[rec::DATA..rec::DATA + d.len()].copy_from_slice(d);
            le::put(out, base, &r);
        }
    }

    /// Clear Event Records (§8.2.9.2.3), from its raw input payload (whose length
    /// the caller has checked against the handle count). All handles are checked
    /// before any record is removed, so a bad handle clears nothing.
    pub(crate) fn clear(&mut self, input: &[u8]) -> Result<(), EventError> {
        let t = le::u8_at(input, clr::IN_LOG).unwrap_or(u8::MAX);
        let l = EventLog::from_type(t).ok_or(EventError::UnknownLog(t))?;
        let flags = le::u8_at(input, clr::IN_FLAGS).unwrap_or(0);
        let log = self.log_mut(l);
        if flags & clr::FLAG_CLEAR_ALL != 0 {
            if log.overflow.is_none() {
                return Err(EventError::ClearAllWithoutOverflow);
            }
            log.records.clear();
            log.overflow = None;
            return Ok(());
        }
        let handles: Vec<u16> = input
            .get(clr::IN_HANDLES..)
            .unwrap_or(&[])
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        if let Some(bad) = handles
            .iter()
            .find(|h| !log.records.iter().any(|r| r.handle == **h))
        {
            return Err(EventError::InvalidHandle(*bad));
        }
        let before = log.records.len();
        log.records.retain(|r| !handles.contains(&r.handle));
        // The overflow indication stays until the host has consumed and cleared
        // records (§8.2.9.2.2, Overflow).
        if log.records.len() < before {
            log.overflow = None;
        }
        Ok(())
    }

    /// Get Event Interrupt Policy output (§8.2.9.2.4), r3.1 length.
    pub(crate) fn policy(&self, out: &mut Vec<u8>) {
        out.clear();
        out.resize(pol::LEN, 0);
        for l in EventLog::ALL {
            let mode = self.log(l).mode;
            let msg = if mode == pol::MODE_MSI {
                self.msgnum << pol::MSGNUM_SHIFT
            } else {
                0
            };
            le::put_u8(out, l.index(), mode | msg);
        }
    }

    /// Set Event Interrupt Policy (§8.2.9.2.5): 4 or 5 setting bytes. Only modes
    /// "none" and MSI/MSI-X are supported; the message number field is reported by
    /// the device and ignored on input. The Dynamic Capacity byte must be "none".
    pub(crate) fn set_policy(&mut self, input: &[u8]) -> Result<(), EventError> {
        let mut modes = [0u8; 4];
        for (i, m) in modes.iter_mut().enumerate() {
            let v = le::u8_at(input, i).unwrap_or(0) & pol::MODE_MASK;
            if v != pol::MODE_NONE && v != pol::MODE_MSI {
                return Err(EventError::BadInterruptMode(v));
            }
            *m = v;
        }
        let dcd = le::u8_at(input, pol::DYNAMIC_CAPACITY).unwrap_or(0) & pol::MODE_MASK;
        if dcd != pol::MODE_NONE {
            return Err(EventError::BadInterruptMode(dcd));
        }
        for (l, m) in EventLog::ALL.iter().zip(modes) {
            self.log_mut(*l).mode = m;
        }
        Ok(())
    }

    /// Interrupt policy back to its power-on value (no interrupts).
    pub(crate) fn reset_policy(&mut self) {
        for l in &mut self.logs {
            l.mode = pol::MODE_NONE;
        }
    }

    /// Sanitize does not touch the logs; this exists for a cold reset.
    pub(crate) fn clear_all(&mut self) {
        for l in &mut self.logs {
            l.records.clear();
            l.overflow = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec_with(b: u8) -> EventRecord {
        EventRecord {
            uuid: [b; 16],
            flags: 0xffff_ffff,
            data: vec![b; 0x60],
        }
    }

    fn handles(e: &EventLogs, l: EventLog) -> Vec<u16> {
        let mut out = Vec::new();
        e.get_records(l, 100, &mut out);
        let n = usize::from(le::u16_at(&out, ger::OUT_RECORD_COUNT).unwrap());
        (0..n)
            .map(|i| le::u16_at(&out, ger::OUT_RECORDS + i * rec::LEN + rec::HANDLE).unwrap())
            .collect()
    }

    #[test]
    fn record_fields_are_filled_by_device() {
        let mut e = EventLogs::new(4, 1);
        assert!(e.push(EventLog::Failure, rec_with(7), 1234));
        let mut out = Vec::new();
        e.get_records(EventLog::Failure, 10, &mut out);
        let r = &out[ger::OUT_RECORDS..];
        assert_eq!(r.len(), rec::LEN);
        assert_eq!(r[rec::LENGTH], 0x80);
        // Severity 2 from the log; reserved flag bits dropped.
        assert_eq!(&r[rec::FLAGS..rec::FLAGS + 3], &[0x3e | 2, 0, 0]);
        assert_eq!(le::u64_at(r, rec::TIMESTAMP), Some(1234));
        assert_ne!(le::u16_at(r, rec::HANDLE), Some(0));
        // Data truncated to 0x50 bytes, nothing after the record.
        assert_eq!(r[rec::DATA + 0x4f], 7);
        assert_eq!(e.status(), EventLog::Failure.status_bit());
    }

    #[test]
    fn more_flag_when_records_do_not_fit() {
        let mut e = EventLogs::new(8, 0);
        for i in 0..3 {
            e.push(EventLog::Informational, rec_with(i), 0);
        }
        let mut out = Vec::new();
        e.get_records(EventLog::Informational, 2, &mut out);
        assert_eq!(out[ger::OUT_FLAGS], ger::FLAG_MORE_RECORDS);
        assert_eq!(le::u16_at(&out, ger::OUT_RECORD_COUNT), Some(2));
        assert_eq!(out.len(), ger::OUT_RECORDS + 2 * rec::LEN);
    }

    #[test]
    fn handles_are_unique_and_nonzero_across_wrap() {
        let mut e = EventLogs::new(2, 0);
        e.logs[0].last_handle = 0xfffe;
        e.push(EventLog::Informational, rec_with(1), 0);
        e.push(EventLog::Informational, rec_with(2), 0);
        let h = handles(&e, EventLog::Informational);
        assert_eq!(h, vec![0xffff, 1]);
    }

    #[test]
    fn clear_is_atomic_on_bad_handle() {
        let mut e = EventLogs::new(4, 0);
        e.push(EventLog::Warning, rec_with(1), 0);
        let h = handles(&e, EventLog::Warning)[0];
        let mut input = vec![1u8, 0, 2, 0, 0, 0];
        input.extend_from_slice(&h.to_le_bytes());
        input.extend_from_slice(&h.wrapping_add(100).to_le_bytes());
        assert_eq!(
            e.clear(&input),
            Err(EventError::InvalidHandle(h.wrapping_add(100)))
        );
        assert_eq!(e.len(EventLog::Warning), 1);
    }

    #[test]
    fn policy_round_trip_and_bad_mode() {
        let mut e = EventLogs::new(4, 5);
        assert!(e.set_policy(&[1, 0, 1, 0xf1]).is_ok());
        let mut out = Vec::new();
        e.policy(&mut out);
        assert_eq!(out, vec![0x51, 0, 0x51, 0x51, 0]);
        assert_eq!(
            e.set_policy(&[2, 0, 0, 0]),
            Err(EventError::BadInterruptMode(2))
        );
        assert_eq!(
            e.set_policy(&[0, 0, 0, 0, 1]),
            Err(EventError::BadInterruptMode(1))
        );
        assert!(e.interrupt_enabled(EventLog::Fatal));
        assert!(!e.interrupt_enabled(EventLog::Warning));
    }
}
