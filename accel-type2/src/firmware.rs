//! Firmware behaviour hooks, for vendors to prototype device firmware before silicon.
//!
//! A [`Firmware`] stands in for the device's firmware wherever the spec leaves a
//! behaviour to the device. The device model consults it:
//!
//! | hook | when | spec behaviour it stands in for |
//! |---|---|---|
//! | [`Firmware::on_commit`], [`Firmware::on_commit_due`] | a decoder commit passed the spec checks; a delayed one's time is up | CXL r3.1 §8.2.4.20.7 (Commit, Committed, Error Not Committed) |
//! | [`Firmware::power_on_decoders`] | power-on and conventional reset | decoders platform firmware leaves committed for the Linux Type-2 flow (guest-tests/README.md) |
//! | [`Firmware::on_reset`] | every reset, of each kind | CXL r3.1 chapter 9 ([`ResetKind`]) |
//! | [`Firmware::on_cxl_reset`] | Initiate CXL Reset | how long it takes and whether it fails (CXL r3.1 §9.7, §8.1.3.5) |
//! | [`Firmware::media_ready`] | after each reset | when Memory_Active and Media Status say ready (CXL r3.1 §8.1.3.9, §8.2.8.5.1) |
//! | [`Firmware::vendor_command`] | a vendor mailbox opcode (0xC000..) | CXL r3.1 §8.2.9 |
//! | [`Firmware::identify`], [`Firmware::health_info`], [`Firmware::fw_info`] | Identify, Get Health Info, Get FW Info | CXL r3.1 §8.2.9.9.1.1, §8.2.9.9.3.1, §8.2.9.3.1 |
//! | [`Firmware::transfer_fw`], [`Firmware::activate_fw`] | each Transfer FW part, Activate FW | which images the device takes (CXL r3.1 §8.2.9.3.2, §8.2.9.3.3) |
//! | [`Firmware::take_events`] | after each hook, and on each poll | event records the device generates (CXL r3.1 §8.2.9.2) |
//! | [`Firmware::set_param`], [`Firmware::params`] | `--firmware-param`, the control socket | (the prototype's own knobs) |
//!
//! Every hook has a default equal to the behaviour of [`DefaultFirmware`], so a
//! firmware overrides only what it models. The accelerator's own function behind
//! BAR4 is a separate trait, [`crate::engine::EngineOperation`].
//!
//! Shipped implementations: [`DefaultFirmware`] ("default"), [`SlowCommitFirmware`]
//! ("slow-commit") and [`BiosFirmware`] ("bios"). [`by_name`] builds one from its
//! name.

use thiserror::Error;

pub use crate::reset::ResetKind;
pub use cxl_regs::units::UnitsError;
pub use mailbox::{
    EventLog, EventRecord, FwAction, FwError, FwInfo, FwPart, HealthInfo, Identify, ReturnCode,
};

/// What firmware decides about a decoder commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitDecision {
    /// Committed at once.
    Accept,
    /// Error Not Committed.
    Reject,
    /// Decide again after this many nanoseconds ([`Firmware::on_commit_due`]); until
    /// then the decoder reads Commit set, Committed and Error Not Committed clear.
    Delay(u64),
}

/// How a CXL Reset ends (CXL r3.1 §9.7): after how many nanoseconds, and whether
/// DVSEC CXL Status2 then reports CXL Reset Complete or CXL Reset Error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CxlResetDecision {
    Complete(u64),
    Fail(u64),
}

/// When device memory is ready after a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaReadiness {
    /// Ready this many nanoseconds after the reset (after its end, for a CXL Reset).
    /// Until then the DVSEC Range Memory_Active bits are clear (CXL r3.1 §8.1.3.9)
    /// and the Memory Device Status register's Media Status reads Not Ready
    /// (§8.2.8.5.1).
    ReadyAfter(u64),
    /// The media failed: Memory_Active stays clear and Media Status reads Error until
    /// the next reset.
    Failed,
}

/// How long a CXL Reset takes with the default firmware: 10 ms, well inside the
/// 100 ms the device advertises as its CXL Reset Timeout.
pub const DEFAULT_CXL_RESET_NS: u64 = 10_000_000;

/// Why a firmware parameter was refused ([`Firmware::set_param`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParamError {
    #[error("firmware {firmware} has no parameter {key}{}", known_list(.known))]
    Unknown {
        firmware: String,
        key: String,
        known: Vec<String>,
    },
    #[error("{key}: {source}")]
    Number {
        key: String,
        #[source]
        source: UnitsError,
    },
    #[error("{key}={value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" ({})", known.join(", "))
    }
}

impl ParamError {
    /// `key` is not one of `known`, the parameters of `firmware`.
    pub fn unknown(firmware: &str, key: &str, known: &[&str]) -> Self {
        ParamError::Unknown {
            firmware: firmware.to_string(),
            key: key.to_string(),
            known: known.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// `value` for `key` is not valid, for `reason`.
    pub fn invalid(key: &str, value: &str, reason: impl Into<String>) -> Self {
        ParamError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// `value` as a number or size in the grammar every cxl-accel interface shares, for
/// parameter `key`.
pub fn param_u64(key: &str, value: &str) -> Result<u64, ParamError> {
    parse_u64(value).map_err(|source| ParamError::Number {
        key: key.to_string(),
        source,
    })
}

/// Firmware hooks with default behaviour (see the module's table).
///
/// Hooks run inside the register access that triggers them, under the device's lock:
/// they should answer quickly. Work that takes time is modelled by answering with a
/// time ([`CommitDecision::Delay`], [`CxlResetDecision`], [`MediaReadiness`]), not by
/// sleeping.
pub trait Firmware: Send {
    fn name(&self) -> &str;

    /// A decoder that passed the spec checks asks to commit (CXL r3.1 §8.2.4.20.7).
    fn on_commit(&mut self, _index: usize, _decoder: &hdm::DecoderState) -> CommitDecision {
        CommitDecision::Accept
    }

    /// The time of a [`CommitDecision::Delay`] is up: decide again (another delay
    /// keeps the commit pending). By default the delayed commit is accepted.
    fn on_commit_due(&mut self, _index: usize, _decoder: &hdm::DecoderState) -> CommitDecision {
        CommitDecision::Accept
    }

    /// Decoders to commit at power-on and after a conventional reset, as a BIOS
    /// would leave them: (index, state).
    fn power_on_decoders(&mut self, _capacity: u64) -> Vec<(usize, hdm::DecoderState)> {
        Vec::new()
    }

    /// The device had a reset of `kind`: the registers are at their reset values
    /// ([`crate::reset`] has the table). After a conventional reset, the power-on
    /// decoders are asked for next; a CXL Reset is then timed by
    /// [`Firmware::on_cxl_reset`].
    fn on_reset(&mut self, _kind: ResetKind) {}

    /// A CXL Reset started; `mem_clr`: CXL Reset Mem Clr Enable was set, so device
    /// memory is zeroed when it completes. The registers are already at their
    /// reset values; device registers read all ones until the reset ends.
    fn on_cxl_reset(&mut self, _mem_clr: bool) -> CxlResetDecision {
        CxlResetDecision::Complete(DEFAULT_CXL_RESET_NS)
    }

    /// When media is ready after a reset of `kind` (asked when a conventional reset
    /// or an FLR happens, and when a CXL Reset ends). By default at once.
    fn media_ready(&mut self, _kind: ResetKind) -> MediaReadiness {
        MediaReadiness::ReadyAfter(0)
    }

    /// A vendor-specific mailbox opcode (0xC000..): fill `output` (at most the
    /// payload size) and succeed, or fail with a return code.
    fn vendor_command(
        &mut self,
        _opcode: u16,
        _input: &[u8],
        _output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode> {
        Err(ReturnCode::Unsupported)
    }

    /// Identify Memory Device: change the fields reported.
    fn identify(&mut self, _fields: &mut Identify) {}

    /// Get Health Info: change the values reported.
    fn health_info(&mut self, _health: &mut HealthInfo) {}

    /// Get FW Info: change what is reported.
    fn fw_info(&mut self, _info: &mut FwInfo) {}

    /// A Transfer FW part that passed the mailbox's checks: accept it, or refuse it
    /// (say [`FwError::Verification`] for an image this firmware does not take).
    fn transfer_fw(&mut self, _part: &FwPart<'_>) -> Result<(), FwError> {
        Ok(())
    }

    /// Activate FW of `slot` (`online`, or at the next cold reset): accept, or
    /// refuse ([`FwError::ActivationRolledBack`], ...).
    fn activate_fw(&mut self, _slot: u8, _online: bool) -> Result<(), FwError> {
        Ok(())
    }

    /// Event records the firmware generated since the last call, for the device's
    /// event logs (CXL r3.1 §8.2.9.2; the interrupt policy the host set applies).
    fn take_events(&mut self) -> Vec<(EventLog, EventRecord)> {
        Vec::new()
    }

    /// Set a parameter (`--firmware-param`, control socket `firmware`). A refused
    /// value changes nothing.
    fn set_param(&mut self, key: &str, _value: &str) -> Result<(), ParamError> {
        Err(ParamError::unknown(self.name(), key, &[]))
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
    fn set_param(&mut self, key: &str, value: &str) -> Result<(), ParamError> {
        match key {
            "delay_ms" => {
                let ms = param_u64(key, value)?;
                self.delay_ns = ms
                    .checked_mul(1_000_000)
                    .ok_or_else(|| ParamError::invalid(key, value, "too large"))?;
                Ok(())
            }
            "max_size" => {
                self.max_size = match value.trim() {
                    "none" | "" => None,
                    v => Some(param_u64(key, v)?),
                };
                Ok(())
            }
            _ => Err(ParamError::unknown(
                self.name(),
                key,
                &["delay_ms", "max_size"],
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
    fn set_param(&mut self, key: &str, value: &str) -> Result<(), ParamError> {
        match key {
            "base" => self.base = Some(param_u64(key, value)?),
            "size" => self.size = Some(param_u64(key, value)?),
            _ => return Err(ParamError::unknown(self.name(), key, &["base", "size"])),
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

/// One line about a firmware [`by_name`] builds.
pub fn about(name: &str) -> Option<&'static str> {
    Some(match name {
        "default" => "accepts every valid commit; media ready at once",
        "slow-commit" => "delays commits, rejects those over a size limit (delay_ms, max_size)",
        "bios" => "pre-commits decoder 0 at power-on (base, size)",
        _ => return None,
    })
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
            assert!(about(n).is_some());
        }
        assert!(by_name("nonesuch").is_none());
        assert!(about("nonesuch").is_none());
    }

    #[test]
    fn parameters_take_the_shared_number_grammar() {
        let mut fw = SlowCommitFirmware::default();
        fw.set_param("max_size", "1GiB").unwrap();
        assert_eq!(fw.max_size, Some(1 << 30));
        fw.set_param("max_size", "1T").unwrap();
        assert_eq!(fw.max_size, Some(1 << 40));
        let e = fw.set_param("max_size", "1.5G").unwrap_err();
        assert!(
            matches!(&e, ParamError::Number { key, source: UnitsError::NotANumber(v) }
                if key == "max_size" && v == "1.5G"),
            "{e}"
        );
        assert_eq!(
            fw.max_size,
            Some(1 << 40),
            "a refused value changes nothing"
        );
        let mut bios = BiosFirmware::default();
        bios.set_param("base", "0x110000000").unwrap();
        assert!(matches!(
            bios.set_param("size", "99999999999999T"),
            Err(ParamError::Number {
                source: UnitsError::Overflow(_),
                ..
            })
        ));
        let e = bios.set_param("speed", "1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "firmware bios has no parameter speed (base, size)"
        );
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
            Err(ReturnCode::Unsupported)
        );
        assert_eq!(
            fw.media_ready(ResetKind::Conventional),
            MediaReadiness::ReadyAfter(0)
        );
        assert!(fw.take_events().is_empty());
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
