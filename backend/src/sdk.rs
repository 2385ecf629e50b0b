//! The firmware SDK: build a daemon of your own around your firmware.
//!
//! A vendor crate depends on `backend` and `accel-type2` (by path or git), implements
//! [`accel_type2::Firmware`] (and, for its accelerator's own function behind BAR4,
//! [`accel_type2::EngineOperation`]), and gets the whole daemon with one call: the
//! command line and config file, the vfio-user server, the control socket, seccomp,
//! persistence, `--firmware-socket`. Its firmwares are chosen with `--firmware NAME`
//! beside the built-in ones.
//!
//! ```
//! use backend::Builder;
//! use accel_type2::{CommitDecision, Firmware, ReturnCode};
//!
//! /// Commits take 2 ms; vendor opcode 0xC000 answers "pong".
//! struct Acme;
//!
//! impl Firmware for Acme {
//!     fn name(&self) -> &str {
//!         "acme"
//!     }
//!     fn on_commit(&mut self, _i: usize, _d: &hdm::DecoderState) -> CommitDecision {
//!         CommitDecision::Delay(2_000_000)
//!     }
//!     fn vendor_command(
//!         &mut self,
//!         opcode: u16,
//!         _input: &[u8],
//!         output: &mut Vec<u8>,
//!     ) -> Result<(), ReturnCode> {
//!         match opcode {
//!             0xc000 => {
//!                 output.extend_from_slice(b"pong");
//!                 Ok(())
//!             }
//!             _ => Err(ReturnCode::Unsupported),
//!         }
//!     }
//! }
//!
//! let builder = Builder::new()
//!     .name("acme-backend")
//!     .firmware("acme", "Acme's commit timing and vendor opcodes", || Box::new(Acme))
//!     .default_firmware("acme");
//!
//! // A real binary ends with `std::process::ExitCode` from `builder.main()`. Here:
//! // the same command line, parsed and validated, then the daemon built and run
//! // for one client, driven with the `vfio_user` crate's client.
//! let dir = tempfile::tempdir().unwrap();
//! let socket = dir.path().join("acme.sock");
//! let config = builder
//!     .config_from(["acme-backend", "--socket", socket.to_str().unwrap(), "--once"])
//!     .unwrap();
//! assert_eq!(config.firmware, "acme");
//! let stop = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
//! let daemon = builder.daemon(config, stop).unwrap();
//! let serving = std::thread::spawn(move || daemon.run());
//!
//! // The mailbox is in BAR0 (cxl_regs::layout); a vendor opcode goes to Acme.
//! use cxl_regs::layout::{MAILBOX_OFFSET, MAILBOX_PAYLOAD_OFFSET};
//! let mut client = vfio_user::Client::new(&socket).unwrap();
//! client.region_write(0, MAILBOX_OFFSET + 0x08, &0xc000u64.to_le_bytes()).unwrap();
//! client.region_write(0, MAILBOX_OFFSET + 0x04, &1u32.to_le_bytes()).unwrap();
//! let mut status = [0u8; 8];
//! client.region_read(0, MAILBOX_OFFSET + 0x10, &mut status).unwrap();
//! assert_eq!(u64::from_le_bytes(status) >> 32, 0, "return code Success");
//! let mut out = [0u8; 4];
//! client.region_read(0, MAILBOX_PAYLOAD_OFFSET, &mut out).unwrap();
//! assert_eq!(&out, b"pong");
//! drop(client); // --once: the daemon ends when its client leaves
//! serving.join().unwrap().unwrap();
//! ```

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use accel_type2::firmware::{self, DefaultFirmware};
use accel_type2::{EngineOperation, Firmware};
use clap::{CommandFactory, FromArgMatches};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{Cli, Command, Config, ConfigError};
use crate::Daemon;

/// Builds a fresh firmware (the daemon builds one to validate parameters, and one to
/// run).
pub type FirmwareFactory = Arc<dyn Fn() -> Box<dyn Firmware> + Send + Sync>;

/// One firmware a daemon offers.
#[derive(Clone)]
pub struct FirmwareEntry {
    pub name: String,
    /// One line for `--help`.
    pub about: String,
    pub factory: FirmwareFactory,
}

/// Mistakes in a [`Builder`]'s registrations.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdkError {
    #[error("firmware {0:?} is registered twice")]
    DuplicateFirmware(String),
    #[error("firmware name {0:?} is not a word of letters, digits, '-' or '_'")]
    BadFirmwareName(String),
    #[error("the default firmware {0:?} is not registered")]
    UnknownDefault(String),
    #[error("engine operation {0:#x} is registered twice")]
    DuplicateOperation(u8),
    #[error("engine operation 0 is the DMA copy; use 1..=255")]
    CopyOperation,
}

/// The firmwares a daemon offers (`--firmware NAME`), its default, and the
/// accelerator's engine operations.
#[derive(Clone)]
pub struct Catalog {
    firmwares: Vec<FirmwareEntry>,
    default: String,
    operations: Vec<(u8, Arc<dyn EngineOperation>)>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// The stock daemon's: the model's built-in firmwares (`default`, `slow-commit`,
    /// `bios`); no engine operations.
    pub fn builtin() -> Self {
        let firmwares = firmware::names()
            .iter()
            .map(|&name| FirmwareEntry {
                name: name.into(),
                about: firmware::about(name).unwrap_or_default().into(),
                factory: Arc::new(move || {
                    firmware::by_name(name).unwrap_or_else(|| Box::new(DefaultFirmware))
                }),
            })
            .collect();
        Self {
            firmwares,
            default: "default".into(),
            operations: Vec::new(),
        }
    }

    /// The names `--firmware` takes, in registration order.
    pub fn names(&self) -> Vec<&str> {
        self.firmwares.iter().map(|f| f.name.as_str()).collect()
    }

    pub fn entries(&self) -> &[FirmwareEntry] {
        &self.firmwares
    }

    /// What `--firmware` defaults to.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// A fresh firmware named `name`.
    pub fn build(&self, name: &str) -> Option<Box<dyn Firmware>> {
        self.firmwares
            .iter()
            .find(|f| f.name == name)
            .map(|f| (f.factory)())
    }

    /// The accelerator's engine operations: (CONTROL.OP, operation).
    pub fn operations(&self) -> &[(u8, Arc<dyn EngineOperation>)] {
        &self.operations
    }

    fn add_firmware(&mut self, entry: FirmwareEntry) -> Result<(), SdkError> {
        let ok = !entry.name.is_empty()
            && entry
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(SdkError::BadFirmwareName(entry.name));
        }
        if self.firmwares.iter().any(|f| f.name == entry.name) {
            return Err(SdkError::DuplicateFirmware(entry.name));
        }
        self.firmwares.push(entry);
        Ok(())
    }

    fn add_operation(
        &mut self,
        op: u8,
        operation: Arc<dyn EngineOperation>,
    ) -> Result<(), SdkError> {
        if op == cxl_regs::layout::engine::OP_COPY {
            return Err(SdkError::CopyOperation);
        }
        if self.operations.iter().any(|(o, _)| *o == op) {
            return Err(SdkError::DuplicateOperation(op));
        }
        self.operations.push((op, operation));
        Ok(())
    }

    /// `--firmware`'s help text.
    pub fn firmware_help(&self) -> String {
        let list: Vec<String> = self
            .firmwares
            .iter()
            .map(|f| format!("{} ({})", f.name, f.about))
            .collect();
        format!(
            "Firmware behaviour model: {} [default: {}]",
            list.join("; "),
            self.default
        )
    }
}

/// Builds a daemon binary: register firmwares and engine operations, then
/// [`main`](Builder::main). See the module example.
#[derive(Clone)]
pub struct Builder {
    catalog: Catalog,
    name: &'static str,
    errors: Vec<SdkError>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

/// Exit status for a configuration the daemon refuses (as clap uses for bad syntax).
const EXIT_USAGE: u8 = 2;

impl Builder {
    /// The stock daemon: the built-in firmwares, no engine operations.
    pub fn new() -> Self {
        Self {
            catalog: Catalog::builtin(),
            name: "cxl-accel-backend",
            errors: Vec::new(),
        }
    }

    /// The program name `--help` shows.
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Offer firmware `name` (`--firmware NAME`), built by `factory`; `about` is its
    /// line in `--help`.
    pub fn firmware<F>(mut self, name: &str, about: &str, factory: F) -> Self
    where
        F: Fn() -> Box<dyn Firmware> + Send + Sync + 'static,
    {
        let entry = FirmwareEntry {
            name: name.into(),
            about: about.into(),
            factory: Arc::new(factory),
        };
        if let Err(e) = self.catalog.add_firmware(entry) {
            self.errors.push(e);
        }
        self
    }

    /// What `--firmware` defaults to (a registered name).
    pub fn default_firmware(mut self, name: &str) -> Self {
        self.catalog.default = name.into();
        self
    }

    /// Give the accelerator engine operation `op` (CONTROL.OP, 1..=255) with every
    /// firmware.
    pub fn engine_operation<O>(mut self, op: u8, operation: O) -> Self
    where
        O: EngineOperation + 'static,
    {
        if let Err(e) = self.catalog.add_operation(op, Arc::new(operation)) {
            self.errors.push(e);
        }
        self
    }

    /// The registrations, or the first mistake in them.
    pub fn catalog(&self) -> Result<&Catalog, SdkError> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        if self.catalog.build(&self.catalog.default).is_none() {
            return Err(SdkError::UnknownDefault(self.catalog.default.clone()));
        }
        Ok(&self.catalog)
    }

    fn command(&self) -> clap::Command {
        let help = self.catalog.firmware_help();
        Cli::command()
            .name(self.name)
            .bin_name(self.name)
            .mut_arg("firmware", |a| a.help(help))
    }

    /// Parse a command line (the program name first) into a validated [`Config`],
    /// as the daemon does (`ctl` is not a daemon command line here).
    pub fn config_from<I, T>(&self, args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let catalog = self.catalog().map_err(ConfigError::Sdk)?;
        let matches = self
            .command()
            .try_get_matches_from(args)
            .map_err(|e| ConfigError::Usage(e.to_string()))?;
        let cli = Cli::from_arg_matches(&matches).map_err(|e| ConfigError::Usage(e.to_string()))?;
        if cli.command.is_some() {
            return Err(ConfigError::Usage(
                "a subcommand is not a daemon command line".into(),
            ));
        }
        Config::from_args_in(cli.daemon, catalog)
    }

    /// Build the daemon for `config` (sockets bound, device built); [`Daemon::run`]
    /// serves it until `stop` is written. For embedding and tests; [`main`] also
    /// handles signals.
    ///
    /// [`main`]: Builder::main
    pub fn daemon(&self, config: Config, stop: EventFd) -> Result<Daemon, crate::Error> {
        let catalog = self.catalog().map_err(crate::Error::Sdk)?;
        Daemon::with_catalog(config, stop, catalog)
    }

    /// Run the daemon for `config` until SIGINT/SIGTERM (or `--once`).
    pub fn run(&self, config: Config) -> Result<(), crate::Error> {
        let catalog = self.catalog().map_err(crate::Error::Sdk)?;
        crate::run_with(config, catalog)
    }

    /// The whole program: the process's command line, then the daemon, or the `ctl`
    /// subcommand. Logging goes to stderr (`RUST_LOG`, default info).
    pub fn main(self) -> ExitCode {
        self.main_with_args(std::env::args_os())
    }

    /// [`main`](Builder::main) with a given command line.
    pub fn main_with_args<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = match self.command().try_get_matches_from(args) {
            Ok(m) => m,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::SUCCESS
                };
            }
        };
        let cli = match Cli::from_arg_matches(&matches) {
            Ok(c) => c,
            Err(e) => {
                let _ = e.print();
                return ExitCode::from(EXIT_USAGE);
            }
        };
        // A second logger (an embedding program's) is not an error.
        let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .try_init();
        let name = self.name;
        if let Some(Command::QemuArgs(q)) = &cli.command {
            return print_qemu_args(&format!("{name} qemu-args"), q.output());
        }
        if let Some(Command::Ctl(ctl)) = cli.command {
            return match crate::control::request(&ctl.control, &ctl.cmd, ctl.args.as_deref()) {
                Ok(reply) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&reply).unwrap_or_default()
                    );
                    if reply.get("ok").and_then(|v| v.as_bool()) == Some(true) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("{name}: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        let catalog = match self.catalog() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let config = match Config::from_args_in(cli.daemon, catalog) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        if config.print_qemu_args {
            return print_qemu_args(name, config.qemu_args());
        }
        match crate::run_with(config, catalog) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Print the generator's QEMU arguments (`qemu-args`, `--print-qemu-args`), or say
/// why there are none (a usage error).
fn print_qemu_args(who: &str, args: Result<String, crate::topology::TopologyError>) -> ExitCode {
    match args {
        Ok(args) => {
            print!("{args}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{who}: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);
    impl Firmware for Named {
        fn name(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn registrations_are_checked() {
        let b = Builder::new().firmware("acme", "x", || Box::new(Named("acme")));
        assert_eq!(
            b.catalog().unwrap().names(),
            vec!["default", "slow-commit", "bios", "acme"]
        );
        let dup = b
            .clone()
            .firmware("bios", "again", || Box::new(Named("bios")));
        assert_eq!(
            dup.catalog().err(),
            Some(SdkError::DuplicateFirmware("bios".into()))
        );
        let bad = Builder::new().firmware("a b", "x", || Box::new(Named("x")));
        assert!(matches!(bad.catalog(), Err(SdkError::BadFirmwareName(_))));
        let nodefault = Builder::new().default_firmware("nonesuch");
        assert_eq!(
            nodefault.catalog().err(),
            Some(SdkError::UnknownDefault("nonesuch".into()))
        );
    }

    #[test]
    fn the_command_line_selects_a_registered_firmware() {
        let b = Builder::new()
            .firmware("acme", "x", || Box::new(Named("acme")))
            .default_firmware("acme");
        let c = b.config_from(["t", "--socket", "/tmp/s"]).unwrap();
        assert_eq!(c.firmware, "acme", "the builder's default");
        let c = b
            .config_from(["t", "--socket", "/tmp/s", "--firmware", "bios"])
            .unwrap();
        assert_eq!(c.firmware, "bios");
        let e = b
            .config_from(["t", "--socket", "/tmp/s", "--firmware", "zork"])
            .unwrap_err();
        assert!(
            e.to_string().contains("default, slow-commit, bios, acme"),
            "{e}"
        );
        let help = b.command().render_help().to_string();
        assert!(help.contains("acme (x)"), "{help}");
        // The stock daemon does not know acme.
        assert!(Builder::new()
            .config_from(["t", "--socket", "/tmp/s", "--firmware", "acme"])
            .is_err());
    }
}
