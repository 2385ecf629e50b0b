//! The DOE mailbox (PCIe r6 §6.30, registers §7.9.24) and the protocols it serves:
//! DOE Discovery (PCIe r6 §6.30.1.1) and CXL Table Access (CXL r3.1 §8.1.11), which
//! reads out the device's [`Cdat`].
//!
//! The instance is polled: DOE Capabilities reports no interrupt support, so DOE
//! Interrupt Enable and DOE Interrupt Status read 0 and ignore writes (the kernel's
//! `drivers/pci/doe.c` polls Data Object Ready in any case).
//!
//! Life of an exchange:
//! 1. Software writes the request a DW at a time to the Write Data Mailbox.
//! 2. It writes DOE Go. The instance takes the request and either produces the
//!    response at once (DOE Busy and Data Object Ready set), or sets DOE Error.
//! 3. Software reads the Read Data Mailbox and writes it to move on, DW by DW. After
//!    the last DW, Data Object Ready and DOE Busy clear.
//!
//! Choices where the spec leaves room, each kept to one rule:
//! - DOE Busy is set while a response is outstanding: the instance has one buffer,
//!   so it cannot take a new request until the last one's response is read out (or
//!   aborted). Software that checks Busy before writing, as §6.30.2 asks, never
//!   sees a difference.
//! - A write to the Write Data Mailbox, or DOE Go, while DOE Busy or DOE Error is
//!   set is discarded, and sets DOE Error (a request the instance cannot take).
//! - A request that does not make a well-formed object of a supported protocol sets
//!   DOE Error at DOE Go: nothing written, no second header DW, a Length field
//!   different from the DWs written (a partial object, or a Length below 2), more DWs than the instance holds, an
//!   unknown protocol, or a request its protocol cannot answer (§7.9.24.4: "a data
//!   object has been received for which the DOE instance is unable to provide a
//!   response"). §6.30.1 asks for a mismatched object to be discarded; it is, and
//!   DOE Error tells software at once instead of letting it wait out its timeout.
//! - DOE Abort (§6.30.2) drops any request, response and error at once; the
//!   instance is idle again when the write completes.
//! - The Read Data Mailbox reads 0 when no response is ready (before one, or past
//!   the end of one); a write to it then does nothing.
//! - Any access width: the Write Data Mailbox latches the bytes written to it and
//!   transfers the DW on the write that covers its most significant byte, so a DW
//!   written in narrower pieces, low to high, is transferred once; lanes not
//!   written since the last transfer are 0. A write of any width to the Read Data
//!   Mailbox moves on by one DW. The Write Data Mailbox reads 0.
//! - A Function Level Reset or a conventional reset returns the instance to idle
//!   (§6.30.2: an FLR aborts any DOE exchange in progress), through [`DoeMailbox::reset`].

use std::sync::Arc;

use cxl_regs::doe::{self as d};
use thiserror::Error;

use crate::access::merge;
use crate::cdat::Cdat;

/// The most DWs of a request the instance keeps. Every request of the protocols
/// served here is 3 DWs.
pub const MAX_REQUEST_DW: usize = 16;

/// The protocols served, in Discovery index order (index 0 is Discovery itself,
/// PCIe r6 §6.30.1.1).
pub const PROTOCOLS: [(u16, u8); 2] = [
    (d::VENDOR_PCI_SIG, d::TYPE_DISCOVERY),
    (d::VENDOR_CXL, d::TYPE_TABLE_ACCESS),
];

/// Why DOE Error was set.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum DoeError {
    #[error("DOE Go with no data object written")]
    Empty,
    #[error("DOE Go after a single DW: no Data Object Header 2")]
    NoHeader,
    #[error("data object header states {stated} DWs but {written} were written")]
    LengthMismatch { stated: usize, written: usize },
    #[error("data object of {written} DWs is longer than the {MAX_REQUEST_DW} the instance holds")]
    TooLong { written: usize },
    #[error("no protocol vendor {vendor:#06x} type {object_type:#04x}")]
    UnknownProtocol { vendor: u16, object_type: u8 },
    #[error("request of {dw} DWs; this protocol's requests are 3 DWs")]
    RequestLength { dw: usize },
    #[error("Discovery index {index} is past the last protocol")]
    DiscoveryIndex { index: u8 },
    #[error("Table Access request code {code}, table type {table_type}: only Read Entry of the CDAT (0, 0)")]
    TableRequest { code: u8, table_type: u8 },
    #[error("the CDAT has no entry handle {handle}")]
    NoSuchEntry { handle: u16 },
    #[error("a write to the Write Data Mailbox while the instance was busy or in error")]
    WriteWhileBusy,
    #[error("DOE Go while the instance was busy or in error")]
    GoWhileBusy,
}

/// One DOE instance.
#[derive(Debug, Clone)]
pub struct DoeMailbox {
    cdat: Arc<Cdat>,
    /// Bytes of the Write Data Mailbox written since the last DW transfer.
    latch: u32,
    /// The request so far (the first [`MAX_REQUEST_DW`] DWs).
    request: Vec<u32>,
    /// DWs written in all, including those past [`MAX_REQUEST_DW`].
    written: usize,
    /// The response being read out, and the index of the current DW.
    response: Vec<u32>,
    read_pos: usize,
    error: Option<DoeError>,
}

impl DoeMailbox {
    pub fn new(cdat: Arc<Cdat>) -> Self {
        Self {
            cdat,
            latch: 0,
            request: Vec::with_capacity(MAX_REQUEST_DW),
            written: 0,
            response: Vec::new(),
            read_pos: 0,
            error: None,
        }
    }

    /// Back to idle: no request, no response, no error (DOE Abort, FLR, reset).
    pub fn reset(&mut self) {
        self.latch = 0;
        self.request.clear();
        self.written = 0;
        self.response = Vec::new();
        self.read_pos = 0;
        self.error = None;
    }

    /// The table that Table Access serves.
    pub fn cdat(&self) -> &Arc<Cdat> {
        &self.cdat
    }

    /// Serve `cdat` from now on (an exchange in progress is not disturbed: its
    /// response was built already).
    pub fn set_cdat(&mut self, cdat: Arc<Cdat>) {
        self.cdat = cdat;
    }

    /// Why DOE Error is set, if it is.
    pub fn error(&self) -> Option<DoeError> {
        self.error
    }

    fn response_outstanding(&self) -> bool {
        self.read_pos < self.response.len()
    }

    /// DOE Status (PCIe r6 §7.9.24.4).
    pub fn status(&self) -> u32 {
        let mut s = 0;
        if self.response_outstanding() {
            s |= d::STATUS_BUSY | d::STATUS_DATA_OBJECT_READY;
        }
        if self.error.is_some() {
            s |= d::STATUS_ERROR;
        }
        s
    }

    /// Read the register at `reg`, a dword offset from the start of the capability
    /// (the header dword itself is config space's). Reads have no side effects.
    pub fn read(&self, reg: usize) -> u32 {
        match reg {
            // No interrupt support, message number 0; Abort, Interrupt Enable and
            // Go read 0.
            d::CAPABILITIES | d::CONTROL | d::WRITE_MAILBOX => 0,
            d::STATUS => self.status(),
            // Empty unless a response is outstanding (DOE Error clears it).
            d::READ_MAILBOX => self.response.get(self.read_pos).copied().unwrap_or(0),
            _ => 0,
        }
    }

    /// Write the bytes of `value` selected by `mask` to the register at `reg`.
    pub fn write(&mut self, reg: usize, value: u32, mask: u32) {
        match reg {
            d::CONTROL => {
                let v = value & mask;
                if v & d::CTRL_ABORT != 0 {
                    self.reset();
                } else if v & d::CTRL_GO != 0 {
                    self.go();
                }
            }
            d::WRITE_MAILBOX => self.write_mailbox(value, mask),
            d::READ_MAILBOX if self.response_outstanding() => {
                self.read_pos += 1;
                if !self.response_outstanding() {
                    self.response = Vec::new();
                    self.read_pos = 0;
                }
            }
            // Capabilities is RO; Status has no writable bit without interrupt
            // support; the Read Data Mailbox with no response does nothing.
            _ => {}
        }
    }

    fn fail(&mut self, e: DoeError) {
        log::debug!("DOE error: {e}");
        self.latch = 0;
        self.request.clear();
        self.written = 0;
        self.response = Vec::new();
        self.read_pos = 0;
        self.error = Some(e);
    }

    fn write_mailbox(&mut self, value: u32, mask: u32) {
        if self.response_outstanding() || self.error.is_some() {
            self.fail(DoeError::WriteWhileBusy);
            return;
        }
        self.latch = merge(self.latch, value, mask);
        if mask & 0xff00_0000 == 0 {
            return;
        }
        let dw = std::mem::take(&mut self.latch);
        if self.request.len() < MAX_REQUEST_DW {
            self.request.push(dw);
        }
        self.written = self.written.saturating_add(1);
    }

    /// DOE Go: take the request, and answer it or set DOE Error.
    fn go(&mut self) {
        if self.response_outstanding() || self.error.is_some() {
            self.fail(DoeError::GoWhileBusy);
            return;
        }
        let result = self.respond(&self.request, self.written);
        self.latch = 0;
        self.request.clear();
        self.written = 0;
        match result {
            Ok(response) => {
                self.response = response;
                self.read_pos = 0;
            }
            Err(e) => self.fail(e),
        }
    }

    fn respond(&self, request: &[u32], written: usize) -> Result<Vec<u32>, DoeError> {
        if written == 0 {
            return Err(DoeError::Empty);
        }
        if written > MAX_REQUEST_DW {
            return Err(DoeError::TooLong { written });
        }
        let Some(&h2) = request.get(1) else {
            return Err(DoeError::NoHeader);
        };
        let stated = d::header2_length(h2);
        if stated != written {
            return Err(DoeError::LengthMismatch { stated, written });
        }
        let vendor = d::header1_vendor(request[0]);
        let object_type = d::header1_type(request[0]);
        let payload = &request[d::HEADER_DW..];
        match (vendor, object_type) {
            (d::VENDOR_PCI_SIG, d::TYPE_DISCOVERY) => discovery(payload),
            (d::VENDOR_CXL, d::TYPE_TABLE_ACCESS) => self.table_access(payload),
            _ => Err(DoeError::UnknownProtocol {
                vendor,
                object_type,
            }),
        }
    }

    /// Read Entry (CXL r3.1 §8.1.11.1): the entry named by the request's handle,
    /// after a DW that carries the next entry's handle.
    fn table_access(&self, payload: &[u32]) -> Result<Vec<u32>, DoeError> {
        let &[dw] = payload else {
            return Err(DoeError::RequestLength {
                dw: payload.len() + d::HEADER_DW,
            });
        };
        let (code, table_type, handle) = d::table_access_fields(dw);
        if code != d::TABLE_READ_ENTRY || table_type != d::TABLE_TYPE_CDAT {
            return Err(DoeError::TableRequest { code, table_type });
        }
        let (entry, next) = self
            .cdat
            .entry(handle)
            .ok_or(DoeError::NoSuchEntry { handle })?;
        let mut out = object(d::VENDOR_CXL, d::TYPE_TABLE_ACCESS, 1 + entry.len() / 4);
        out.push(d::table_access_dw(
            d::TABLE_READ_ENTRY,
            d::TABLE_TYPE_CDAT,
            next,
        ));
        // Every entry is a whole number of DWs (Cdat::parse checks it).
        out.extend(
            entry
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(out)
    }
}

/// DOE Discovery (PCIe r6 §6.30.1.1): the protocol at the requested index, and the
/// index of the next one (0 after the last).
fn discovery(payload: &[u32]) -> Result<Vec<u32>, DoeError> {
    let &[dw] = payload else {
        return Err(DoeError::RequestLength {
            dw: payload.len() + d::HEADER_DW,
        });
    };
    let index = d::discovery_request_index(dw);
    let Some(&(vendor, protocol)) = PROTOCOLS.get(usize::from(index)) else {
        return Err(DoeError::DiscoveryIndex { index });
    };
    let next = if usize::from(index) + 1 < PROTOCOLS.len() {
        index + 1
    } else {
        0
    };
    let mut out = object(d::VENDOR_PCI_SIG, d::TYPE_DISCOVERY, 1);
    out.push(d::discovery_response(vendor, protocol, next));
    Ok(out)
}

/// The two header DWs of an object with `payload_dw` DWs after them.
fn object(vendor: u16, object_type: u8, payload_dw: usize) -> Vec<u32> {
    let mut v = Vec::with_capacity(d::HEADER_DW + payload_dw);
    v.push(d::header1(vendor, object_type));
    v.push(d::header2(d::HEADER_DW + payload_dw));
    v
}

#[cfg(test)]
mod tests {
    //! Register offsets, bits and object layouts below are written out from PCIe r6
    //! §7.9.24 and §6.30.1 and CXL r3.1 §8.1.11, not taken from `cxl_regs::doe`.
    use super::*;
    use crate::cdat::{CdatConfig, EfiMemoryType};

    const CTRL: usize = 0x08;
    const STATUS: usize = 0x0c;
    const WRITE: usize = 0x10;
    const READ: usize = 0x14;
    const ABORT: u32 = 1;
    const GO: u32 = 0x8000_0000;
    const BUSY: u32 = 1;
    const ERROR: u32 = 4;
    const READY: u32 = 0x8000_0000;
    const ALL: u32 = 0xffff_ffff;

    /// Discovery request for `index`: vendor 0x0001 type 0, 3 DWs.
    fn discovery_req(index: u8) -> [u32; 3] {
        [0x0000_0001, 3, u32::from(index)]
    }
    /// Table Access Read Entry of the CDAT: vendor 0x1e98 type 2, 3 DWs.
    fn read_entry_req(handle: u16) -> [u32; 3] {
        [0x0002_1e98, 3, u32::from(handle) << 16]
    }

    fn mailbox() -> DoeMailbox {
        let cfg = CdatConfig {
            read_latency_ns: 90,
            write_latency_ns: 110,
            read_bandwidth_mbs: 40_000,
            write_bandwidth_mbs: 30_000,
            memory_type: EfiMemoryType::Reserved,
        };
        DoeMailbox::new(Arc::new(Cdat::build(&cfg, 256 << 20, 7).unwrap()))
    }

    fn send(m: &mut DoeMailbox, dws: &[u32]) {
        for &dw in dws {
            m.write(WRITE, dw, ALL);
        }
        m.write(CTRL, GO, ALL);
    }

    /// Read the whole response as software does: read, then write to move on,
    /// until Data Object Ready clears. Bounded, so a stuck instance fails the test.
    fn receive(m: &mut DoeMailbox) -> Vec<u32> {
        let mut out = Vec::new();
        while m.read(STATUS) & READY != 0 {
            assert!(out.len() < 1 << 12, "response never ends");
            out.push(m.read(READ));
            m.write(READ, 0, ALL);
        }
        out
    }

    fn exchange(m: &mut DoeMailbox, dws: &[u32]) -> Vec<u32> {
        send(m, dws);
        assert_eq!(m.read(STATUS), BUSY | READY, "{:?}", m.error());
        receive(m)
    }

    #[test]
    fn idle_instance_reads_zero_everywhere() {
        let m = mailbox();
        for reg in [0x04, CTRL, STATUS, WRITE, READ] {
            assert_eq!(m.read(reg), 0, "register {reg:#x}");
        }
    }

    #[test]
    fn discovery_lists_discovery_then_table_access() {
        let mut m = mailbox();
        assert_eq!(
            exchange(&mut m, &discovery_req(0)),
            [0x0000_0001, 3, 0x0100_0001]
        );
        assert_eq!(m.read(STATUS), 0);
        assert_eq!(
            exchange(&mut m, &discovery_req(1)),
            [0x0000_0001, 3, 0x0002_1e98]
        );
        // Bits above the index are reserved in the request and ignored.
        assert_eq!(
            exchange(&mut m, &[0x0000_0001, 3, 0xabcd_ef01]),
            [0x0000_0001, 3, 0x0002_1e98]
        );
    }

    #[test]
    fn read_entry_walks_the_whole_cdat() {
        let mut m = mailbox();
        let table = m.cdat().bytes().to_vec();
        let mut got = Vec::new();
        let mut handle = 0u16;
        let mut handles = Vec::new();
        loop {
            let r = exchange(&mut m, &read_entry_req(handle));
            assert_eq!(r[0], 0x0002_1e98);
            assert_eq!(r[1] as usize, r.len(), "Length covers the object");
            assert_eq!(r[2] & 0xffff, 0, "response code 0, table type 0");
            for dw in &r[3..] {
                got.extend_from_slice(&dw.to_le_bytes());
            }
            handles.push(handle);
            handle = (r[2] >> 16) as u16;
            if handle == 0xffff {
                break;
            }
        }
        assert_eq!(got, table);
        // Header, DSMAS, four DSLBIS, DSEMTS.
        assert_eq!(handles, [0, 1, 2, 3, 4, 5, 6]);
        // Entry 0 is the 16-byte header alone.
        let r = exchange(&mut m, &read_entry_req(0));
        assert_eq!(r.len(), 3 + 4);
        assert_eq!(r[3] as usize, table.len());
    }

    #[test]
    fn back_to_back_objects_do_not_mix() {
        let mut m = mailbox();
        let a = exchange(&mut m, &read_entry_req(1));
        let b = exchange(&mut m, &discovery_req(1));
        let c = exchange(&mut m, &read_entry_req(1));
        assert_eq!(a, c);
        assert_eq!(b, [0x0000_0001, 3, 0x0002_1e98]);
        assert_eq!(m.read(STATUS), 0);
    }

    #[test]
    fn reads_past_the_end_of_a_response_return_zero() {
        let mut m = mailbox();
        exchange(&mut m, &discovery_req(0));
        assert_eq!(m.read(READ), 0);
        m.write(READ, 0, ALL);
        m.write(READ, 0, ALL);
        assert_eq!(m.read(STATUS), 0);
        assert_eq!(exchange(&mut m, &discovery_req(1)).len(), 3);
    }

    #[test]
    fn reads_do_not_advance_the_response() {
        let mut m = mailbox();
        send(&mut m, &discovery_req(0));
        assert_eq!(m.read(READ), 0x0000_0001);
        assert_eq!(m.read(READ), 0x0000_0001);
        m.write(READ, 0xdead_beef, ALL);
        assert_eq!(m.read(READ), 3);
    }

    #[test]
    fn abort_in_mid_request_discards_it() {
        let mut m = mailbox();
        let req = read_entry_req(2);
        m.write(WRITE, req[0], ALL);
        m.write(WRITE, req[1], ALL);
        m.write(CTRL, ABORT, ALL);
        assert_eq!(m.read(STATUS), 0);
        // Had the two DWs survived, this would be a 5-DW object and an error.
        assert_eq!(exchange(&mut m, &discovery_req(0)).len(), 3);
    }

    #[test]
    fn abort_in_mid_response_drops_it() {
        let mut m = mailbox();
        send(&mut m, &read_entry_req(1));
        m.write(READ, 0, ALL);
        m.write(CTRL, ABORT, ALL);
        assert_eq!(m.read(STATUS), 0);
        assert_eq!(m.read(READ), 0);
        assert_eq!(exchange(&mut m, &discovery_req(0)), [1, 3, 0x0100_0001]);
    }

    #[test]
    fn abort_wins_over_go_in_the_same_write() {
        let mut m = mailbox();
        for dw in discovery_req(0) {
            m.write(WRITE, dw, ALL);
        }
        m.write(CTRL, ABORT | GO, ALL);
        assert_eq!(m.read(STATUS), 0);
    }

    /// Each malformed request sets DOE Error at Go, produces no response, and Abort
    /// brings the instance back.
    #[test]
    fn every_malformed_request_sets_error_and_abort_recovers() {
        let too_long: Vec<u32> = [0x0000_0001, 17].into_iter().chain([0; 15]).collect();
        let cases: Vec<(&str, Vec<u32>, DoeError)> = vec![
            ("nothing written", vec![], DoeError::Empty),
            ("one DW", vec![0x0000_0001], DoeError::NoHeader),
            (
                "partial object",
                vec![0x0000_0001, 3],
                DoeError::LengthMismatch {
                    stated: 3,
                    written: 2,
                },
            ),
            (
                "length 0 means 2^18 DWs",
                vec![0x0000_0001, 0, 0],
                DoeError::LengthMismatch {
                    stated: 1 << 18,
                    written: 3,
                },
            ),
            (
                "length below the header",
                vec![0x0000_0001, 1, 0],
                DoeError::LengthMismatch {
                    stated: 1,
                    written: 3,
                },
            ),
            ("too long", too_long, DoeError::TooLong { written: 17 }),
            (
                "unknown vendor",
                vec![0x0000_1234, 3, 0],
                DoeError::UnknownProtocol {
                    vendor: 0x1234,
                    object_type: 0,
                },
            ),
            (
                "unknown CXL type",
                vec![0x0001_1e98, 3, 0],
                DoeError::UnknownProtocol {
                    vendor: 0x1e98,
                    object_type: 1,
                },
            ),
            (
                "discovery past the last protocol",
                discovery_req(2).to_vec(),
                DoeError::DiscoveryIndex { index: 2 },
            ),
            (
                "discovery with an extra DW",
                vec![0x0000_0001, 4, 0, 0],
                DoeError::RequestLength { dw: 4 },
            ),
            (
                "table access without its DW",
                vec![0x0002_1e98, 2],
                DoeError::RequestLength { dw: 2 },
            ),
            (
                "table access request code 1",
                vec![0x0002_1e98, 3, 0x0000_0001],
                DoeError::TableRequest {
                    code: 1,
                    table_type: 0,
                },
            ),
            (
                "table type 1",
                vec![0x0002_1e98, 3, 0x0000_0100],
                DoeError::TableRequest {
                    code: 0,
                    table_type: 1,
                },
            ),
            (
                "entry handle past the table",
                read_entry_req(7).to_vec(),
                DoeError::NoSuchEntry { handle: 7 },
            ),
            (
                "entry handle 0xffff",
                read_entry_req(0xffff).to_vec(),
                DoeError::NoSuchEntry { handle: 0xffff },
            ),
        ];
        for (what, req, why) in cases {
            let mut m = mailbox();
            send(&mut m, &req);
            assert_eq!(m.read(STATUS), ERROR, "{what}");
            assert_eq!(m.error(), Some(why), "{what}");
            assert_eq!(m.read(READ), 0, "{what}");
            // Error sticks: a well-formed request now is refused too.
            send(&mut m, &discovery_req(0));
            assert_eq!(m.read(STATUS), ERROR, "{what}: error cleared by a request");
            m.write(CTRL, ABORT, ALL);
            assert_eq!(m.read(STATUS), 0, "{what}: abort");
            assert_eq!(m.error(), None);
            assert_eq!(exchange(&mut m, &discovery_req(1)).len(), 3, "{what}");
        }
    }

    #[test]
    fn writes_while_busy_set_error_and_drop_the_response() {
        let mut m = mailbox();
        send(&mut m, &discovery_req(0));
        m.write(WRITE, 0x0000_0001, ALL);
        assert_eq!(m.read(STATUS), ERROR);
        assert_eq!(m.error(), Some(DoeError::WriteWhileBusy));
        assert_eq!(m.read(READ), 0);
        m.write(CTRL, ABORT, ALL);

        send(&mut m, &discovery_req(0));
        m.write(READ, 0, ALL);
        m.write(CTRL, GO, ALL);
        assert_eq!(m.read(STATUS), ERROR);
        assert_eq!(m.error(), Some(DoeError::GoWhileBusy));
        m.write(CTRL, ABORT, ALL);
        assert_eq!(exchange(&mut m, &discovery_req(0)).len(), 3);
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let mut m = mailbox();
        m.write(0x04, ALL, ALL);
        // Interrupt Enable: no interrupt support, so it does not stick.
        m.write(CTRL, 0x2, ALL);
        m.write(STATUS, ALL, ALL);
        assert_eq!(m.read(0x04), 0);
        assert_eq!(m.read(CTRL), 0);
        assert_eq!(m.read(STATUS), 0);
        send(&mut m, &discovery_req(0));
        // Status is not RW1C: writing ones clears neither Busy nor Ready.
        m.write(STATUS, ALL, ALL);
        assert_eq!(m.read(STATUS), BUSY | READY);
        assert_eq!(m.read(CTRL), 0, "Go reads 0");
    }

    #[test]
    fn a_dw_written_in_pieces_is_transferred_once() {
        let mut m = mailbox();
        // DW 0 as four byte writes, DW 1 as two 16-bit writes, DW 2 whole.
        let req = discovery_req(1);
        for lane in 0..4 {
            m.write(WRITE, req[0], 0xff << (8 * lane));
        }
        m.write(WRITE, req[1], 0x0000_ffff);
        m.write(WRITE, req[1], 0xffff_0000);
        m.write(WRITE, req[2], ALL);
        m.write(CTRL, GO, ALL);
        assert_eq!(receive(&mut m), [1, 3, 0x0002_1e98]);
        // Lanes not written since the last transfer read as 0: a lone write of the
        // top byte transfers 0x01000000.
        m.write(WRITE, 0x0100_0000, 0xff00_0000);
        m.write(WRITE, 3, ALL);
        m.write(WRITE, 0, ALL);
        m.write(CTRL, GO, ALL);
        assert_eq!(
            m.error(),
            Some(DoeError::UnknownProtocol {
                vendor: 0,
                object_type: 0
            })
        );
    }

    #[test]
    fn go_written_as_the_top_byte_alone_starts_the_exchange() {
        let mut m = mailbox();
        for dw in discovery_req(0) {
            m.write(WRITE, dw, ALL);
        }
        m.write(CTRL, GO, 0xff00_0000);
        assert_eq!(m.read(STATUS), BUSY | READY);
        // A write of Go's byte without Go set does nothing.
        let mut m = mailbox();
        for dw in discovery_req(0) {
            m.write(WRITE, dw, ALL);
        }
        m.write(CTRL, GO, 0x00ff_ffff);
        assert_eq!(m.read(STATUS), 0);
    }

    #[test]
    fn reset_returns_to_idle_from_any_state() {
        let mut m = mailbox();
        send(&mut m, &read_entry_req(3));
        m.reset();
        assert_eq!(m.read(STATUS), 0);
        send(&mut m, &[]);
        m.reset();
        assert_eq!(m.read(STATUS), 0);
        m.write(WRITE, 1, 0xff);
        m.reset();
        assert_eq!(exchange(&mut m, &discovery_req(0)).len(), 3);
    }

    #[test]
    fn a_new_table_is_served_to_the_next_request() {
        let mut m = mailbox();
        let before = exchange(&mut m, &read_entry_req(0));
        let cdat = Cdat::build(&CdatConfig::default(), 512 << 20, 8).unwrap();
        m.set_cdat(Arc::new(cdat));
        let after = exchange(&mut m, &read_entry_req(0));
        // Header DW 3 (bytes 12..16) is the Sequence.
        assert_eq!(before[3 + 3], 7);
        assert_eq!(after[3 + 3], 8);
    }
}
