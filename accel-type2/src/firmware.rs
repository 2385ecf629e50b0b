//! Firmware behaviour hooks, for vendors to prototype device firmware before silicon.
//!
//! A [`Firmware`] is consulted by the device model:
//! - on every HDM decoder commit that passed the spec checks (CXL r3.1 §8.2.4.20.7,
//!   Commit): accept, reject (the decoder reports Error Not Committed) or delay;
//! - on conventional reset, and on CXL Reset (CXL r3.1 §9.7), which firmware
//!   completes after a time it chooses, successfully or with an error;
//! - for vendor-specific mailbox opcodes (0xC000..=0xFFFF, CXL r3.1 §8.2.9);
//! - at power-on and after reset, for decoders to leave committed, as a BIOS would.
//!
//! Shipped implementations: [`DefaultFirmware`] ("default"), [`SlowCommitFirmware`]
//! ("slow-commit") and [`BiosFirmware`] ("bios"). [`by_name`] builds one from its
//! name.

/// What firmware decides about a decoder commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitDecision {
    Accept,
    Reject,
    /// Accept after this many nanoseconds.
    Delay(u64),
}

/// How a CXL Reset ends (CXL r3.1 §9.7): after how many nanoseconds, and whether
/// DVSEC CXL Status2 then reports CXL Reset Complete or CXL Reset Error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CxlResetDecision {
    Complete(u64),
    Fail(u64),
}

/// How long a CXL Reset takes with the default firmware: 10 ms, well inside the
/// 100 ms the device advertises as its CXL Reset Timeout.
pub const DEFAULT_CXL_RESET_NS: u64 = 10_000_000;

/// Firmware hooks with default behaviour.
pub trait Firmware: Send {
    fn name(&self) -> &str;
    /// A decoder that passed the spec checks asks to commit.
    fn on_commit(&mut self, _index: usize, _decoder: &hdm::DecoderState) -> CommitDecision {
        CommitDecision::Accept
    }
    /// The device had a conventional reset (power-on decoders are asked for next).
    fn on_reset(&mut self) {}
    /// A CXL Reset started; `mem_clr`: CXL Reset Mem Clr Enable was set, so device
    /// memory is zeroed when it completes. The registers are already at their
    /// reset values; device registers read all ones until the reset ends.
    fn on_cxl_reset(&mut self, _mem_clr: bool) -> CxlResetDecision {
        CxlResetDecision::Complete(DEFAULT_CXL_RESET_NS)
    }
    /// A vendor-specific mailbox opcode (0xC000..). Returns the return code.
    fn vendor_command(&mut self, _opcode: u16, _input: &[u8], _output: &mut Vec<u8>) -> u16 {
        cxl_regs::mailbox::RC_UNSUPPORTED
    }
    /// Decoders to commit at power-on, as a BIOS would leave them: (index, state).
    fn power_on_decoders(&mut self, _capacity: u64) -> Vec<(usize, hdm::DecoderState)> {
        Vec::new()
    }
    /// Set a parameter at run time (control socket `firmware`).
    fn set_param(&mut self, key: &str, _value: &str) -> Result<(), String> {
        Err(format!("firmware {} has no parameter {key}", self.name()))
    }
    /// The current parameters, as (key, value) pairs.
    fn params(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Firmware parameter values are numbers and sizes in the grammar every cxl-accel
/// interface shares (decimal with an optional binary unit, or 0x hex).
pub use cxl_regs::units::parse_u64;

/// Accept every valid commit, do nothing else.
#[derive(Debug, Default)]
pub struct DefaultFirmware;

impl Firmware for DefaultFirmware {
    fn name(&self) -> &str {
        "default"
    }
}

/// Example vendor firmware: commits take time, and decoders larger than a limit are
/// refused (a device whose firmware can map only part of its memory).
///
/// Parameters: `delay_ms` (default 5; the Linux CXL core polls a commit for 20 ms)
/// and `max_size` in bytes (default: no limit; `none` removes the limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowCommitFirmware {
    pub delay_ns: u64,
    pub max_size: Option<u64>,
    /// Commits refused since construction.
    pub rejected: u64,
}

impl Default for SlowCommitFirmware {
    fn default() -> Self {
        Self {
            delay_ns: 5_000_000,
            max_size: None,
            rejected: 0,
        }
    }
}

impl SlowCommitFirmware {
    pub fn new(delay_ns: u64, max_size: Option<u64>) -> Self {
        Self {
            delay_ns,
            max_size,
            rejected: 0,
        }
    }
}

impl Firmware for SlowCommitFirmware {
    fn name(&self) -> &str {
        "slow-commit"
    }
    fn on_commit(&mut self, index: usize, decoder: &hdm::DecoderState) -> CommitDecision {
        if self.max_size.is_some_and(|max| decoder.size > max) {
            self.rejected = self.rejected.wrapping_add(1);
            log::info!(
                "slow-commit: decoder {index} size {:#x} is over the limit {:#x}",
                decoder.size,
                self.max_size.unwrap_or(0)
            );
            return CommitDecision::Reject;
        }
        CommitDecision::Delay(self.delay_ns)
    }
    fn set_param(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "delay_ms" => {
                let ms = parse_u64(value).map_err(|e| e.to_string())?;
                self.delay_ns = ms
                    .checked_mul(1_000_000)
                    .ok_or_else(|| format!("delay_ms {ms} is too large"))?;
                Ok(())
            }
            "max_size" => {
                self.max_size = match value.trim() {
                    "none" | "" => None,
                    v => Some(parse_u64(v).map_err(|e| e.to_string())?),
                };
                Ok(())
            }
            _ => Err(format!(
                "firmware slow-commit has no parameter {key} (delay_ms, max_size)"
            )),
        }
    }
    fn params(&self) -> Vec<(String, String)> {
        vec![
            ("delay_ms".into(), (self.delay_ns / 1_000_000).to_string()),
            (
                "max_size".into(),
                self.max_size.map_or("none".into(), |m| format!("{m:#x}")),
            ),
        ]
    }
}

/// Firmware that leaves endpoint decoder 0 committed at power-on, as a platform BIOS
/// does for the Type-2 flow of Linux (guest-tests/README.md, module/): HPA `base`, `size` bytes (default:
/// the whole capacity), device-coherent (Target Type 0), locked on commit.
/// Parameters: `base` (required for anything to be committed: the HPA window comes
/// from the platform's CFMWS) and `size`. Changes apply at the next reset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BiosFirmware {
    pub base: Option<u64>,
    pub size: Option<u64>,
}

impl Firmware for BiosFirmware {
    fn name(&self) -> &str {
        "bios"
    }
    fn power_on_decoders(&mut self, capacity: u64) -> Vec<(usize, hdm::DecoderState)> {
        let Some(base) = self.base else {
            return Vec::new();
        };
        let size = self.size.unwrap_or(capacity);
        vec![(
            0,
            hdm::DecoderState {
                base,
                size,
                lock_on_commit: true,
                host_only: false,
                ..Default::default()
            },
        )]
    }
    fn set_param(&mut self, key: &str, value: &str) -> Result<(), String> {
        let v = |s: &str| parse_u64(s).map_err(|e| e.to_string());
        match key {
            "base" => self.base = Some(v(value)?),
            "size" => self.size = Some(v(value)?),
            _ => return Err(format!("firmware bios has no parameter {key} (base, size)")),
        }
        Ok(())
    }
    fn params(&self) -> Vec<(String, String)> {
        let f = |o: Option<u64>| o.map_or("unset".to_string(), |v| format!("{v:#x}"));
        vec![("base".into(), f(self.base)), ("size".into(), f(self.size))]
    }
}

/// The names [`by_name`] accepts.
pub fn names() -> &'static [&'static str] {
    &["default", "slow-commit", "bios"]
}

/// Build a firmware by name.
pub fn by_name(name: &str) -> Option<Box<dyn Firmware>> {
    match name {
        "default" => Some(Box::new(DefaultFirmware)),
        "slow-commit" => Some(Box::new(SlowCommitFirmware::default())),
        "bios" => Some(Box::new(BiosFirmware::default())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_and_reports_its_name() {
        for n in names() {
            let fw = by_name(n).unwrap();
            assert_eq!(fw.name(), *n);
        }
        assert!(by_name("nonesuch").is_none());
    }

    #[test]
    fn parameters_take_the_shared_number_grammar() {
        let mut fw = SlowCommitFirmware::default();
        fw.set_param("max_size", "1GiB").unwrap();
        assert_eq!(fw.max_size, Some(1 << 30));
        fw.set_param("max_size", "1T").unwrap();
        assert_eq!(fw.max_size, Some(1 << 40));
        let e = fw.set_param("max_size", "1.5G").unwrap_err();
        assert!(e.contains("\"1.5G\" is not a number"), "{e}");
        assert_eq!(
            fw.max_size,
            Some(1 << 40),
            "a refused value changes nothing"
        );
        let mut bios = BiosFirmware::default();
        bios.set_param("base", "0x110000000").unwrap();
        assert!(bios
            .set_param("size", "99999999999999T")
            .unwrap_err()
            .contains("64 bits"));
    }

    #[test]
    fn slow_commit_delays_and_rejects_over_the_limit() {
        let mut fw = SlowCommitFirmware::default();
        let d = hdm::DecoderState {
            size: 512 << 20,
            ..Default::default()
        };
        assert_eq!(fw.on_commit(0, &d), CommitDecision::Delay(5_000_000));
        fw.set_param("delay_ms", "7").unwrap();
        fw.set_param("max_size", "256M").unwrap();
        assert_eq!(fw.on_commit(0, &d), CommitDecision::Reject);
        assert_eq!(fw.rejected, 1);
        let small = hdm::DecoderState {
            size: 256 << 20,
            ..Default::default()
        };
        assert_eq!(fw.on_commit(1, &small), CommitDecision::Delay(7_000_000));
        fw.set_param("max_size", "none").unwrap();
        assert_eq!(fw.on_commit(0, &d), CommitDecision::Delay(7_000_000));
        assert!(fw.set_param("delay_ms", "lots").is_err());
        assert!(fw.set_param("delay_ms", "18446744073709551615").is_err());
        assert!(fw.set_param("speed", "1").is_err());
        assert_eq!(fw.params()[0], ("delay_ms".to_string(), "7".to_string()));
    }

    #[test]
    fn default_firmware_refuses_parameters_and_vendor_commands() {
        let mut fw = DefaultFirmware;
        assert!(fw.set_param("delay_ms", "1").is_err());
        let mut out = Vec::new();
        assert_eq!(
            fw.vendor_command(0xc000, &[], &mut out),
            cxl_regs::mailbox::RC_UNSUPPORTED
        );
        assert!(fw.power_on_decoders(1 << 30).is_empty());
    }

    #[test]
    fn bios_commits_decoder_zero_only_once_told_where() {
        let mut fw = BiosFirmware::default();
        assert!(fw.power_on_decoders(512 << 20).is_empty());
        fw.set_param("base", "0x110000000").unwrap();
        let d = fw.power_on_decoders(512 << 20);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, 0);
        assert_eq!((d[0].1.base, d[0].1.size), (0x1_1000_0000, 512 << 20));
        assert!(!d[0].1.host_only);
    }
}
