//! The kernel log through /dev/kmsg (Documentation/ABI/testing/dev-kmsg): one record
//! per read(2), `<prio>,<seq>,<usec>,<flags>;<text>` with continuation lines
//! (` KEY=value`) after it; EAGAIN once no record is left (O_NONBLOCK), EPIPE when
//! the record the reader was at has been overwritten (the next read goes on).
//!
//! A reader keeps its position, so [`Kmsg::read_new`] returns what the kernel logged
//! since the last call: the lifecycle checks look at each step's own messages.

use std::fs::File;
use std::io::{ErrorKind, Read};

/// What ndctl's `check_dmesg` (test/common) treats as a failed test when the kernel
/// logs it: a WARN splat, a BUG, a stack trace.
pub const ALARMS: [&str; 3] = ["WARNING", "BUG", "Call Trace"];

pub struct Kmsg {
    file: File,
}

/// The text of one /dev/kmsg record: after the first `;`, up to the first newline.
pub fn record_text(rec: &str) -> &str {
    let text = rec.split_once(';').map(|x| x.1).unwrap_or(rec);
    text.lines().next().unwrap_or("")
}

/// The messages among `lines` that hold one of [`ALARMS`].
pub fn alarms(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| ALARMS.iter().any(|a| l.contains(a)))
        .map(String::as_str)
        .collect()
}

impl Kmsg {
    /// A reader at the oldest record the kernel still holds.
    pub fn open() -> Result<Self, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|e| format!("/dev/kmsg: {e}"))?;
        Ok(Self { file })
    }

    /// Every message logged since the last call (since the oldest record the first
    /// time), text only.
    pub fn read_new(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => out.push(record_text(&String::from_utf8_lossy(&buf[..k])).to_string()),
                // overwritten records: the next read returns the oldest one left
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break, // EAGAIN: nothing more for now
            }
        }
        out
    }
}

/// The last `n` kernel log lines that contain one of `needles` (for failure
/// reasons).
pub fn tail(needles: &[&str], n: usize) -> String {
    let Ok(mut k) = Kmsg::open() else {
        return String::new();
    };
    let lines: Vec<String> = k
        .read_new()
        .into_iter()
        .filter(|m| needles.iter().any(|s| m.contains(s)))
        .collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_text_is_the_first_line_after_the_prefix() {
        assert_eq!(
            record_text("4,1234,56789,-;cxl_port port1: decoder1.0: Committed out of order\n"),
            "cxl_port port1: decoder1.0: Committed out of order"
        );
        assert_eq!(
            record_text(
                "6,7,8,-;pci 0000:0d:00.0: hi\n SUBSYSTEM=pci\n DEVICE=+pci:0000:0d:00.0\n"
            ),
            "pci 0000:0d:00.0: hi"
        );
        // a message that itself holds ';'
        assert_eq!(record_text("6,7,8,-;a; b\n"), "a; b");
    }

    #[test]
    fn alarms_are_what_check_dmesg_greps() {
        let lines: Vec<String> = [
            "WARNING: CPU: 0 PID: 1 at drivers/cxl/core/region.c:123 foo+0x1/0x2",
            "cxl_accel_t2 0000:0d:00.0: attached",
            "BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "Call Trace:",
            "warning: lower case is not an alarm",
        ]
        .map(String::from)
        .to_vec();
        let a = alarms(&lines);
        assert_eq!(a.len(), 3);
        assert!(a[0].starts_with("WARNING") && a[1].starts_with("BUG") && a[2] == "Call Trace:");
        assert!(alarms(&lines[1..2]).is_empty());
    }
}
