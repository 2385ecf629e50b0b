//! Command line and configuration file, validated into a [`Config`].
//!
//! Every daemon option can be given on the command line or in a TOML file passed with
//! `--config`; the command line wins. Validation happens before anything is created
//! on disk, so a bad value leaves no socket or file behind.

use std::fs;
use std::path::{Path, PathBuf};

use accel_type2::cdat::{self, Cdat, CdatConfig, CdatError, CdatSource, EfiMemoryType};
use accel_type2::{AccelConfig, FlitMode};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cxl_regs::units::{parse_hex, parse_u64, UnitsError};
use serde::Deserialize;
use thiserror::Error;

use crate::sdk::Catalog;
use crate::topology::{self, Machine, Topology, TopologyError};

/// Device memory granularity: the kernel's DPA capacity is counted in 256 MiB units.
pub const MEMORY_GRANULE: u64 = 256 << 20;
/// Default device memory size (README "Options").
pub const DEFAULT_MEMORY_SIZE: u64 = 512 << 20;

/// Errors of building a [`Config`].
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("no socket path: pass --socket PATH (or set `socket` in the config file)")]
    MissingSocket,
    /// A number or size that the shared grammar ([`cxl_regs::units`]) refuses.
    #[error("`{key}`: {source}")]
    Number {
        key: &'static str,
        source: UnitsError,
    },
    #[error(
        "memory size {size:#x} ({human}) is not a non-zero multiple of 256 MiB \
         (e.g. 256M, 512M, 4G)",
        size = .0,
        human = human_size(*.0)
    )]
    MemorySizeGranule(u64),
    #[error("{what} {value:#x} does not fit in {bits} bits")]
    OutOfRange {
        what: &'static str,
        value: u64,
        bits: u32,
    },
    #[error("decoder count {0} is not supported: use 1, 2 or 4")]
    BadDecoders(u64),
    #[error("unknown firmware {name:?}; available: {available}")]
    UnknownFirmware { name: String, available: String },
    #[error("invalid value {value:?} for `{key}`: expected {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    ParseFile {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("firmware parameter {key}={value}: {source}")]
    FirmwareParam {
        key: String,
        value: String,
        source: Box<accel_type2::ParamError>,
    },
    #[error("{0:?} is not KEY=VALUE")]
    BadKeyValue(String),
    #[error("--socket, --control and --firmware-socket must be different paths")]
    SamePaths,
    #[error(
        "firmware-deadline-ms {0} is out of range: 1 to {max} (a hook waits this long inside \
         a register access)",
        max = crate::fwsocket::MAX_DEADLINE_MS
    )]
    FirmwareDeadline(u64),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Sdk(#[from] crate::sdk::SdkError),
    #[error(
        "max-dma-maps {0} is out of range: 1 to {max} (QEMU refuses a device that \
         announces more)",
        max = crate::memory::MAX_DMA_MAPS_LIMIT
    )]
    MaxDmaMaps(u64),
    #[error("cannot read CDAT file {path}: {source}")]
    CdatRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CDAT file {path} is refused: {source}")]
    CdatInvalid { path: PathBuf, source: CdatError },
    #[error("CDAT figures: {0}")]
    CdatFigures(CdatError),
    #[error(
        "{0} describes the built CDAT; a vendor table given with --cdat carries its own \
         figures: drop one or the other"
    )]
    CdatConflict(&'static str),
}

/// `on` / `off` switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn is_on(self) -> bool {
        self == OnOff::On
    }
}

/// Link flit mode, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flit {
    /// 256B flit (PCIe 6 / CXL 3): LNKSTA2 Flit Mode Status set.
    #[value(name = "256b")]
    Flit256,
    /// 68B flit (CXL 1.1/2.0): Flex Bus DVSEC reports 68B flit and VH.
    #[value(name = "68b")]
    Flit68,
}

impl From<Flit> for FlitMode {
    fn from(f: Flit) -> Self {
        match f {
            Flit::Flit256 => FlitMode::Flit256,
            Flit::Flit68 => FlitMode::Flit68,
        }
    }
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "cxl-accel-backend",
    version,
    about = "Emulate a CXL Type-2 accelerator for QEMU, over vfio-user",
    long_about = "Emulate a CXL Type-2 accelerator with local device memory, served to an \
unmodified QEMU (>= 10.1) as a `vfio-user-pci` device.\n\n\
Start the backend first, then QEMU with the arguments that --print-qemu-args shows. \
Device memory (BAR2) is a memfd, or a file given with --memory-file that persists across \
restarts. When QEMU disconnects the backend keeps its state and waits for the next \
connection, unless --once is given. SIGINT and SIGTERM shut it down cleanly.\n\n\
Every option can also be set in a TOML file given with --config, with the same names \
(memory-size = \"1G\", mailbox = \"off\", ...); the command line overrides the file. \
Logging goes to stderr and is controlled with RUST_LOG (default: info).",
    after_help = "Examples:\n  \
cxl-accel-backend --socket /run/cxl-accel.sock --memory-size 1G --control /run/cxl-accel.ctl\n  \
cxl-accel-backend --socket /run/cxl-accel.sock --memory-size 1G --print-qemu-args\n  \
cxl-accel-backend ctl --control /run/cxl-accel.ctl status\n  \
cxl-accel-backend ctl --control /run/cxl-accel.ctl inject-poison '{\"dpa\":4096,\"len\":64}'",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send one command to a running backend's control socket and print the reply.
    ///
    /// Commands: status, inject-ras, inject-event, inject-poison, firmware. Arguments
    /// are a JSON object merged into the request, e.g. '{"dpa":4096,"len":64}'.
    /// Exits 0 when the backend answers {"ok":true}, 1 otherwise.
    Ctl(CtlArgs),
    /// Print the QEMU arguments of a CXL topology, with one accelerator per --socket
    /// (each served by a backend of its own): the machine, guest RAM, host bridges,
    /// ports, devices and fixed memory windows. Add the CPU, kernel and console.
    ///
    /// Topologies: direct (one accelerator on a root port), switch (a CXL switch
    /// between the root port and the accelerator), two-devices (two root ports of one
    /// host bridge), two-host-bridges (one accelerator on each), with-type3 (QEMU's
    /// cxl-type3 beside the accelerator on the same host bridge), type3-only.
    QemuArgs(QemuArgsArgs),
}

/// Arguments of `qemu-args`.
#[derive(Debug, Args)]
pub struct QemuArgsArgs {
    /// The topology.
    #[arg(long, value_name = "NAME", default_value = "direct")]
    pub topology: String,
    /// The vfio-user socket of each accelerator, in placement order (repeat).
    #[arg(long, value_name = "PATH")]
    pub socket: Vec<PathBuf>,
    /// Size of each host bridge's fixed memory window.
    #[arg(long, value_name = "SIZE", value_parser = parse_u64, default_value = "4G")]
    pub window: u64,
    /// Volatile memory of the cxl-type3 (with-type3, type3-only).
    #[arg(long, value_name = "SIZE", value_parser = parse_u64, default_value = "512M")]
    pub type3_size: u64,
    /// QEMU accelerator for -machine (tcg, kvm).
    #[arg(long, value_name = "NAME")]
    pub accel: Option<String>,
    /// An extra property of every accelerator's -device, KEY=JSON (repeatable), e.g.
    /// x-cxl-mem=true for the patched QEMU of scripts/qemu.
    #[arg(long = "device-prop", value_name = "KEY=JSON")]
    pub device_props: Vec<String>,
    /// Window Restrictions of every fixed memory window (a QEMU that takes them,
    /// such as the patched one of scripts/qemu), e.g. 0x5.
    #[arg(long, value_name = "MASK", value_parser = parse_u64)]
    pub fmw_restrictions: Option<u64>,
    /// Print the arguments NUL-terminated, one per argument (for scripts), instead
    /// of shell lines.
    #[arg(long)]
    pub null: bool,
}

impl QemuArgsArgs {
    /// The machine these arguments describe.
    pub fn machine(&self) -> Result<Machine, TopologyError> {
        let mut m = Machine::new(Topology::parse(&self.topology)?, self.socket.clone());
        m.window = self.window;
        m.type3_size = self.type3_size;
        m.accel = self.accel.clone();
        m.fmw_restrictions = self
            .fmw_restrictions
            .map(|r| u16::try_from(r).map_err(|_| TopologyError::Restrictions(r)))
            .transpose()?;
        for p in &self.device_props {
            m.add_device_prop(p)?;
        }
        Ok(m)
    }

    /// What `qemu-args` prints.
    pub fn output(&self) -> Result<String, TopologyError> {
        let m = self.machine()?;
        if self.null {
            Ok(m.args()?.iter().map(|a| format!("{a}\0")).collect())
        } else {
            m.shell_lines()
        }
    }
}

/// Arguments of `ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Control socket of the running backend (its --control PATH).
    #[arg(long, value_name = "PATH")]
    pub control: PathBuf,
    /// Command name: status, inject-ras, inject-event, inject-poison, firmware.
    #[arg(value_name = "COMMAND")]
    pub cmd: String,
    /// Command arguments, as a JSON object.
    #[arg(value_name = "JSON")]
    pub args: Option<String>,
}

/// Daemon options. Each one is optional here, so that the config file can supply it.
#[derive(Debug, Default, Args)]
pub struct DaemonArgs {
    /// vfio-user socket to listen on (created mode 0600; a stale socket is replaced).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Device memory size: bytes or K/M/G/T suffix, a non-zero multiple of 256 MiB
    /// [default: 512M].
    #[arg(long, value_name = "SIZE", value_parser = parse_u64)]
    pub memory_size: Option<u64>,
    /// Back device memory with this file (created or extended; persistent). Without it,
    /// device memory is a volatile memfd.
    #[arg(long, value_name = "PATH")]
    pub memory_file: Option<PathBuf>,
    /// Keep the Label Storage Area in this file (created if missing). Without it, the LSA
    /// lives in memory for the life of the process.
    #[arg(long, value_name = "PATH")]
    pub lsa_file: Option<PathBuf>,
    /// Expose the CXL mailbox and memory-device registers [default: on].
    #[arg(long, value_name = "on|off")]
    pub mailbox: Option<OnOff>,
    /// Link flit mode reported in LNKSTA2 and the Flex Bus DVSEC [default: 256b].
    #[arg(long, value_name = "MODE")]
    pub flit: Option<Flit>,
    /// Number of HDM decoders: 1, 2 or 4 [default: 2].
    #[arg(long, value_name = "N", value_parser = parse_u64)]
    pub decoders: Option<u64>,
    /// Device serial number (decimal or 0x hex), also the memdev serial.
    #[arg(long, value_name = "N", value_parser = parse_u64)]
    pub serial: Option<u64>,
    /// PCI vendor id (hex, 0x optional) [default: 1234].
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pub vendor_id: Option<u64>,
    /// PCI device id (hex, 0x optional) [default: cc02].
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pub device_id: Option<u64>,
    #[arg(long, value_name = "NAME", help = firmware_help())]
    pub firmware: Option<String>,
    /// Set a firmware parameter before power-on (repeatable), e.g. `base=0x110000000`
    /// for the `bios` firmware's pre-committed decoder.
    #[arg(long = "firmware-param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub firmware_params: Vec<(String, String)>,
    /// Serve a JSON-lines control socket at PATH (see the `ctl` subcommand).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Consult a firmware process over JSON lines at the firmware hooks: the backend
    /// listens at PATH (0600) and the process connects (examples/README.md). Without
    /// an answer in time, the --firmware firmware answers.
    #[arg(long, value_name = "PATH")]
    pub firmware_socket: Option<PathBuf>,
    /// How long a hook waits for the firmware process [default: 10, at most 1000].
    #[arg(long, value_name = "MS", value_parser = parse_u64)]
    pub firmware_deadline_ms: Option<u64>,
    /// Exit after the first client disconnects.
    #[arg(long)]
    pub once: bool,
    /// Print the QEMU arguments that attach this device, then exit.
    #[arg(long)]
    pub print_qemu_args: bool,
    /// Read options from this TOML file; command-line options override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Most DMA mappings (guest RAM ranges, each with its fd) a client may hold;
    /// more are refused with ENOSPC. Announced to QEMU, which needs one per RAM
    /// section of the guest (README "Limits") [default: 1024, at most 65535].
    #[arg(long, value_name = "N", value_parser = parse_u64)]
    pub max_dma_maps: Option<u64>,
    /// Serve this CDAT binary (a vendor's table) as is through the DOE mailbox, once
    /// it validates: header Length equal to the file size, checksum, structure
    /// lengths, and every DSMAS inside the device memory. Without it the table is
    /// built from the options below.
    #[arg(long, value_name = "FILE")]
    pub cdat: Option<PathBuf>,
    /// Built CDAT: device memory read latency in ns, from the device's CXL port
    /// (DSLBIS) [default: 100].
    #[arg(long, value_name = "NS", value_parser = parse_u64)]
    pub cdat_read_latency: Option<u64>,
    /// Built CDAT: write latency in ns [default: 120].
    #[arg(long, value_name = "NS", value_parser = parse_u64)]
    pub cdat_write_latency: Option<u64>,
    /// Built CDAT: read bandwidth in MB/s [default: 51200].
    #[arg(long, value_name = "MBPS", value_parser = parse_u64)]
    pub cdat_read_bandwidth: Option<u64>,
    /// Built CDAT: write bandwidth in MB/s [default: 51200].
    #[arg(long, value_name = "MBPS", value_parser = parse_u64)]
    pub cdat_write_bandwidth: Option<u64>,
    /// Built CDAT: the EFI memory type of device memory (DSEMTS): reserved,
    /// specific-purpose or conventional [default: reserved].
    #[arg(long, value_name = "TYPE", value_parser = parse_memory_type)]
    pub cdat_memory_type: Option<EfiMemoryType>,
    /// Confine each thread with a seccomp filter that allows only the system calls it
    /// makes once the sockets and memory are set up (see backend/SECCOMP.md); any other
    /// call ends the process with status 159 [default: off].
    #[arg(long, value_name = "on|off")]
    pub seccomp: Option<OnOff>,
}

/// A number or a string in a config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NumOrString {
    Num(u64),
    Str(String),
}

/// A boolean or `"on"`/`"off"` in a config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BoolOrString {
    Bool(bool),
    Str(String),
}

/// The TOML config file: the same keys as the long options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub memory_size: Option<NumOrString>,
    pub memory_file: Option<PathBuf>,
    pub lsa_file: Option<PathBuf>,
    pub mailbox: Option<BoolOrString>,
    pub flit: Option<String>,
    pub decoders: Option<NumOrString>,
    pub serial: Option<NumOrString>,
    pub vendor_id: Option<NumOrString>,
    pub device_id: Option<NumOrString>,
    pub firmware: Option<String>,
    /// `[firmware-params]` table: key = value.
    pub firmware_params: Option<std::collections::BTreeMap<String, NumOrString>>,
    pub control: Option<PathBuf>,
    pub firmware_socket: Option<PathBuf>,
    pub firmware_deadline_ms: Option<NumOrString>,
    pub once: Option<bool>,
    pub seccomp: Option<BoolOrString>,
    pub max_dma_maps: Option<NumOrString>,
    pub cdat: Option<PathBuf>,
    pub cdat_read_latency: Option<NumOrString>,
    pub cdat_write_latency: Option<NumOrString>,
    pub cdat_read_bandwidth: Option<NumOrString>,
    pub cdat_write_bandwidth: Option<NumOrString>,
    pub cdat_memory_type: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::ParseFile { source, .. } => ConfigError::ParseFile {
                path: path.into(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::ParseFile {
            path: PathBuf::new(),
            source: Box::new(e),
        })
    }
}

/// The validated daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    pub memory_size: u64,
    pub memory_file: Option<PathBuf>,
    pub lsa_file: Option<PathBuf>,
    pub mailbox: bool,
    pub flit: FlitMode,
    pub decoders: u8,
    pub serial: u64,
    pub vendor_id: u16,
    pub device_id: u16,
    pub firmware: String,
    /// Applied in order to the firmware before power-on.
    pub firmware_params: Vec<(String, String)>,
    pub control: Option<PathBuf>,
    /// The firmware process's socket (`--firmware-socket`).
    pub firmware_socket: Option<PathBuf>,
    /// How long a hook waits for the firmware process.
    pub firmware_deadline_ms: u64,
    pub once: bool,
    pub print_qemu_args: bool,
    /// Confine the threads with seccomp filters (`--seccomp on`).
    pub seccomp: bool,
    /// Most DMA mappings a client may hold (`--max-dma-maps`).
    pub max_dma_maps: u32,
    /// The CDAT the DOE mailbox serves (a vendor's validated bytes, or figures).
    pub cdat: CdatSource,
    /// The file a vendor CDAT came from.
    pub cdat_file: Option<PathBuf>,
}

impl Config {
    /// Merge the command line over the config file (if any) and validate, with the
    /// stock daemon's firmwares.
    pub fn from_args(args: DaemonArgs) -> Result<Self, ConfigError> {
        Self::from_args_in(args, &Catalog::builtin())
    }

    /// [`Config::from_args`] with the firmwares of `catalog`.
    pub fn from_args_in(args: DaemonArgs, catalog: &Catalog) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::merge_in(args, file, catalog)
    }

    /// Merge `args` over `file` and validate, with the stock daemon's firmwares.
    pub fn merge(args: DaemonArgs, file: FileConfig) -> Result<Self, ConfigError> {
        Self::merge_in(args, file, &Catalog::builtin())
    }

    /// [`Config::merge`] with the firmwares of `catalog`.
    pub fn merge_in(
        args: DaemonArgs,
        file: FileConfig,
        catalog: &Catalog,
    ) -> Result<Self, ConfigError> {
        let defaults = AccelConfig::default();
        let figures = CdatFigures::merge(&args, &file)?;

        let socket = args
            .socket
            .or(file.socket)
            .ok_or(ConfigError::MissingSocket)?;
        let memory_size = match (args.memory_size, file.memory_size) {
            (Some(v), _) => v,
            (None, Some(NumOrString::Num(v))) => v,
            (None, Some(NumOrString::Str(s))) => {
                num("memory-size", NumOrString::Str(s), parse_u64)?
            }
            (None, None) => DEFAULT_MEMORY_SIZE,
        };
        if memory_size == 0 || !memory_size.is_multiple_of(MEMORY_GRANULE) {
            return Err(ConfigError::MemorySizeGranule(memory_size));
        }
        let mailbox = match (args.mailbox, file.mailbox) {
            (Some(v), _) => v.is_on(),
            (None, Some(v)) => on_off("mailbox", v)?,
            (None, None) => defaults.mailbox,
        };
        let flit = match (args.flit, file.flit) {
            (Some(v), _) => v.into(),
            (None, Some(s)) => match s.to_ascii_lowercase().as_str() {
                "256b" => FlitMode::Flit256,
                "68b" => FlitMode::Flit68,
                _ => {
                    return Err(ConfigError::BadValue {
                        key: "flit",
                        value: s,
                        expected: "256b or 68b",
                    })
                }
            },
            (None, None) => defaults.flit,
        };
        let decoders = match (args.decoders, file.decoders) {
            (Some(v), _) => v,
            (None, Some(v)) => num("decoders", v, parse_u64)?,
            (None, None) => u64::from(defaults.decoders),
        };
        if !matches!(decoders, 1 | 2 | 4) {
            return Err(ConfigError::BadDecoders(decoders));
        }
        let serial = match (args.serial, file.serial) {
            (Some(v), _) => v,
            (None, Some(v)) => num("serial", v, parse_u64)?,
            (None, None) => defaults.serial,
        };
        let vendor_id = match (args.vendor_id, file.vendor_id) {
            (Some(v), _) => v,
            (None, Some(v)) => num("vendor-id", v, parse_hex)?,
            (None, None) => u64::from(defaults.vendor_id),
        };
        let device_id = match (args.device_id, file.device_id) {
            (Some(v), _) => v,
            (None, Some(v)) => num("device-id", v, parse_hex)?,
            (None, None) => u64::from(defaults.device_id),
        };
        let firmware = args
            .firmware
            .or(file.firmware)
            .unwrap_or_else(|| catalog.default_name().to_string());
        if catalog.build(&firmware).is_none() {
            return Err(ConfigError::UnknownFirmware {
                name: firmware,
                available: catalog.names().join(", "),
            });
        }
        let mut firmware_params: Vec<(String, String)> = file
            .firmware_params
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                NumOrString::Num(n) => (k, n.to_string()),
                NumOrString::Str(s) => (k, s),
            })
            .collect();
        firmware_params.extend(args.firmware_params);
        // Validated on a throwaway instance, so that a bad parameter stops the daemon
        // before anything is created.
        if let Some(mut fw) = catalog.build(&firmware) {
            for (key, value) in &firmware_params {
                fw.set_param(key, value)
                    .map_err(|source| ConfigError::FirmwareParam {
                        key: key.clone(),
                        value: value.clone(),
                        source: Box::new(source),
                    })?;
            }
        }
        let seccomp = match (args.seccomp, file.seccomp) {
            (Some(v), _) => v.is_on(),
            (None, Some(v)) => on_off("seccomp", v)?,
            (None, None) => false,
        };
        let control = args.control.or(file.control);
        let firmware_socket = args.firmware_socket.or(file.firmware_socket);
        let paths = [
            Some(socket.as_path()),
            control.as_deref(),
            firmware_socket.as_deref(),
        ];
        let given: Vec<&Path> = paths.into_iter().flatten().collect();
        if given
            .iter()
            .enumerate()
            .any(|(i, p)| given.iter().skip(i.saturating_add(1)).any(|q| q == p))
        {
            return Err(ConfigError::SamePaths);
        }
        let firmware_deadline_ms = match (args.firmware_deadline_ms, file.firmware_deadline_ms) {
            (Some(v), _) => v,
            (None, Some(v)) => num("firmware-deadline-ms", v, parse_u64)?,
            (None, None) => crate::fwsocket::DEFAULT_DEADLINE_MS,
        };
        if !(1..=crate::fwsocket::MAX_DEADLINE_MS).contains(&firmware_deadline_ms) {
            return Err(ConfigError::FirmwareDeadline(firmware_deadline_ms));
        }
        let max_dma_maps = match (args.max_dma_maps, file.max_dma_maps) {
            (Some(v), _) => v,
            (None, Some(v)) => num("max-dma-maps", v, parse_u64)?,
            (None, None) => u64::from(crate::memory::DEFAULT_MAX_DMA_MAPS),
        };
        let max_dma_maps = u32::try_from(max_dma_maps)
            .ok()
            .filter(|n| (1..=crate::memory::MAX_DMA_MAPS_LIMIT).contains(n))
            .ok_or(ConfigError::MaxDmaMaps(max_dma_maps))?;
        let cdat_file = args.cdat.or(file.cdat);
        let cdat = match &cdat_file {
            Some(path) => {
                if let Some(name) = figures.named() {
                    return Err(ConfigError::CdatConflict(name));
                }
                CdatSource::Vendor(load_cdat(path, memory_size)?)
            }
            None => {
                let cfg = figures.config();
                cfg.validate().map_err(ConfigError::CdatFigures)?;
                CdatSource::Built(cfg)
            }
        };

        Ok(Config {
            socket,
            memory_size,
            memory_file: args.memory_file.or(file.memory_file),
            lsa_file: args.lsa_file.or(file.lsa_file),
            mailbox,
            flit,
            decoders: decoders as u8,
            serial,
            vendor_id: narrow16("vendor id", vendor_id)?,
            device_id: narrow16("device id", device_id)?,
            firmware,
            firmware_params,
            control,
            firmware_socket,
            firmware_deadline_ms,
            once: args.once || file.once.unwrap_or(false),
            print_qemu_args: args.print_qemu_args,
            seccomp,
            max_dma_maps,
            cdat,
            cdat_file,
        })
    }

    /// The device model's configuration.
    pub fn accel_config(&self) -> AccelConfig {
        AccelConfig {
            vendor_id: self.vendor_id,
            device_id: self.device_id,
            subsystem_vendor_id: self.vendor_id,
            serial: self.serial,
            memory_size: self.memory_size,
            flit: self.flit,
            mailbox: self.mailbox,
            decoders: self.decoders,
            cdat: self.cdat.clone(),
            ..AccelConfig::default()
        }
    }

    /// A JSON summary for the control socket's `status`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "socket": self.socket,
            "memory_size": self.memory_size,
            "memory_file": self.memory_file,
            "lsa_file": self.lsa_file,
            "mailbox": self.mailbox,
            "flit": self.flit,
            "decoders": self.decoders,
            "serial": format!("{:#x}", self.serial),
            "vendor_id": format!("{:#06x}", self.vendor_id),
            "device_id": format!("{:#06x}", self.device_id),
            "firmware": self.firmware,
            "firmware_params": self.firmware_params,
            "control": self.control,
            "firmware_socket": self.firmware_socket,
            "firmware_deadline_ms": self.firmware_deadline_ms,
            "once": self.once,
            "seccomp": self.seccomp,
            "max_dma_maps": self.max_dma_maps,
            "cdat": match &self.cdat {
                CdatSource::Vendor(bytes) => serde_json::json!({
                    "file": self.cdat_file,
                    "length": bytes.len(),
                }),
                CdatSource::Built(c) => serde_json::json!({
                    "read_latency_ns": c.read_latency_ns,
                    "write_latency_ns": c.write_latency_ns,
                    "read_bandwidth_mbs": c.read_bandwidth_mbs,
                    "write_bandwidth_mbs": c.write_bandwidth_mbs,
                    "memory_type": c.memory_type.name(),
                }),
            },
        })
    }

    /// The QEMU arguments of the `direct` topology (README "Run it beside QEMU") with
    /// this device's socket, one option per line, quoted for a shell. The generator is
    /// [`crate::topology`]; the window holds the device memory (QEMU wants a multiple of
    /// 256 MiB), at least the 4 GiB of the known-good machine.
    pub fn qemu_args(&self) -> Result<String, TopologyError> {
        let mut m = Machine::new(Topology::Direct, vec![absolute(&self.socket)]);
        m.window = self.memory_size.max(topology::DEFAULT_WINDOW);
        m.shell_lines()
    }
}

/// The built CDAT's figures as given on the command line or in the file (None
/// where neither sets one).
struct CdatFigures {
    read_latency_ns: Option<u64>,
    write_latency_ns: Option<u64>,
    read_bandwidth_mbs: Option<u64>,
    write_bandwidth_mbs: Option<u64>,
    memory_type: Option<EfiMemoryType>,
}

impl CdatFigures {
    fn merge(args: &DaemonArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let pick = |key: &'static str,
                    cli: Option<u64>,
                    file: &Option<NumOrString>|
         -> Result<Option<u64>, ConfigError> {
            match (cli, file) {
                (Some(v), _) => Ok(Some(v)),
                (None, Some(v)) => num(key, v.clone(), parse_u64).map(Some),
                (None, None) => Ok(None),
            }
        };
        let memory_type = match (args.cdat_memory_type, &file.cdat_memory_type) {
            (Some(t), _) => Some(t),
            (None, Some(s)) => Some(parse_memory_type(s)?),
            (None, None) => None,
        };
        Ok(Self {
            read_latency_ns: pick(
                "cdat-read-latency",
                args.cdat_read_latency,
                &file.cdat_read_latency,
            )?,
            write_latency_ns: pick(
                "cdat-write-latency",
                args.cdat_write_latency,
                &file.cdat_write_latency,
            )?,
            read_bandwidth_mbs: pick(
                "cdat-read-bandwidth",
                args.cdat_read_bandwidth,
                &file.cdat_read_bandwidth,
            )?,
            write_bandwidth_mbs: pick(
                "cdat-write-bandwidth",
                args.cdat_write_bandwidth,
                &file.cdat_write_bandwidth,
            )?,
            memory_type,
        })
    }

    /// The option name of the first figure that is set.
    fn named(&self) -> Option<&'static str> {
        [
            (self.read_latency_ns.is_some(), "--cdat-read-latency"),
            (self.write_latency_ns.is_some(), "--cdat-write-latency"),
            (self.read_bandwidth_mbs.is_some(), "--cdat-read-bandwidth"),
            (self.write_bandwidth_mbs.is_some(), "--cdat-write-bandwidth"),
            (self.memory_type.is_some(), "--cdat-memory-type"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }

    /// The figures over the defaults.
    fn config(&self) -> CdatConfig {
        let d = CdatConfig::default();
        CdatConfig {
            read_latency_ns: self.read_latency_ns.unwrap_or(d.read_latency_ns),
            write_latency_ns: self.write_latency_ns.unwrap_or(d.write_latency_ns),
            read_bandwidth_mbs: self.read_bandwidth_mbs.unwrap_or(d.read_bandwidth_mbs),
            write_bandwidth_mbs: self.write_bandwidth_mbs.unwrap_or(d.write_bandwidth_mbs),
            memory_type: self.memory_type.unwrap_or(d.memory_type),
        }
    }
}

/// Read a vendor CDAT (refusing files bigger than any table could be before
/// reading them) and validate it for `capacity` bytes of device memory.
fn load_cdat(path: &Path, capacity: u64) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let read_err = |source| ConfigError::CdatRead {
        path: path.into(),
        source,
    };
    let f = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    f.take((cdat::MAX_TABLE_LEN as u64).saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    Cdat::parse(bytes.clone(), capacity).map_err(|source| ConfigError::CdatInvalid {
        path: path.into(),
        source,
    })?;
    Ok(bytes)
}

/// Parse a DSEMTS memory type name.
pub fn parse_memory_type(s: &str) -> Result<EfiMemoryType, ConfigError> {
    EfiMemoryType::from_name(s.trim()).ok_or_else(|| ConfigError::BadValue {
        key: "cdat-memory-type",
        value: s.to_string(),
        expected: EfiMemoryType::NAMES,
    })
}

fn firmware_help() -> String {
    Catalog::builtin().firmware_help()
}

fn on_off(key: &'static str, v: BoolOrString) -> Result<bool, ConfigError> {
    match v {
        BoolOrString::Bool(b) => Ok(b),
        BoolOrString::Str(s) => match s.to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" => Ok(true),
            "off" | "false" | "no" => Ok(false),
            _ => Err(ConfigError::BadValue {
                key,
                value: s,
                expected: "on or off",
            }),
        },
    }
}

/// A config file value: a TOML integer, or a string in the grammar of `parse`.
fn num(
    key: &'static str,
    v: NumOrString,
    parse: fn(&str) -> Result<u64, UnitsError>,
) -> Result<u64, ConfigError> {
    match v {
        NumOrString::Num(n) => Ok(n),
        NumOrString::Str(s) => parse(&s).map_err(|source| ConfigError::Number { key, source }),
    }
}

fn narrow16(what: &'static str, v: u64) -> Result<u16, ConfigError> {
    u16::try_from(v).map_err(|_| ConfigError::OutOfRange {
        what,
        value: v,
        bits: 16,
    })
}

/// Parse `KEY=VALUE`.
pub fn parse_key_value(s: &str) -> Result<(String, String), ConfigError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(ConfigError::BadKeyValue(s.to_string())),
    }
}

/// `4G`, `512M`, `1536M`, or bytes when not a whole number of KiB.
pub fn human_size(v: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        if v != 0 && v.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", v >> shift);
        }
    }
    v.to_string()
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(socket: &str) -> DaemonArgs {
        DaemonArgs {
            socket: Some(socket.into()),
            ..Default::default()
        }
    }

    /// The options and the config file read numbers with the shared grammar
    /// (`cxl_regs::units`; its table test covers the grammar itself).
    #[test]
    fn options_and_file_share_the_number_grammar() {
        let cli = Cli::try_parse_from([
            "cxl-accel-backend",
            "--socket",
            "/tmp/s",
            "--memory-size",
            "1GiB",
            "--serial",
            "4K",
            "--vendor-id",
            "1b36",
        ])
        .unwrap();
        let c = Config::from_args(cli.daemon).unwrap();
        assert_eq!(
            (c.memory_size, c.serial, c.vendor_id),
            (1 << 30, 4096, 0x1b36)
        );
        let cli =
            Cli::try_parse_from(["cxl-accel-backend", "--socket", "/s", "--memory-size", "1T"]);
        assert_eq!(cli.unwrap().daemon.memory_size, Some(1 << 40));
        for bad in ["", "12X", "-1G", "1.5G", "0x10M", "99999999999T"] {
            let r =
                Cli::try_parse_from(["cxl-accel-backend", "--socket", "/s", "--memory-size", bad]);
            assert!(r.is_err(), "{bad:?} accepted");
        }
        let file = FileConfig::parse("socket = \"/s\"\nmemory-size = \"0x10000000\"").unwrap();
        assert_eq!(
            Config::merge(DaemonArgs::default(), file)
                .unwrap()
                .memory_size,
            256 << 20
        );
        let file = FileConfig::parse("socket = \"/s\"\nmemory-size = \"256 MiB\"").unwrap();
        let e = Config::merge(DaemonArgs::default(), file).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Number { key: "memory-size", source: UnitsError::NotANumber(v) } if v == "256 MiB"),
            "{e:?}"
        );
        let file = FileConfig::parse("socket = \"/s\"\ndevice-id = \"0xcg\"").unwrap();
        let e = Config::merge(DaemonArgs::default(), file).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`device-id`: \"0xcg\" is not a hexadecimal number (hex digits, optional 0x)"
        );
    }

    #[test]
    fn memory_size_must_be_granular() {
        let mut a = args("/tmp/s");
        a.memory_size = Some(300 << 20);
        let e = Config::merge(a, FileConfig::default()).unwrap_err();
        assert!(matches!(e, ConfigError::MemorySizeGranule(_)));
        assert!(e.to_string().contains("256 MiB"), "{e}");
        let mut a = args("/tmp/s");
        a.memory_size = Some(0);
        assert!(Config::merge(a, FileConfig::default()).is_err());
    }

    #[test]
    fn defaults_match_design() {
        let c = Config::merge(args("/tmp/s"), FileConfig::default()).unwrap();
        assert_eq!(c.memory_size, 512 << 20);
        assert!(c.mailbox);
        assert_eq!(c.flit, FlitMode::Flit256);
        assert_eq!(c.decoders, 2);
        assert_eq!((c.vendor_id, c.device_id), (0x1234, 0xcc02));
        assert_eq!(c.firmware, "default");
        assert!(!c.once);
    }

    #[test]
    fn command_line_overrides_file() {
        let file = FileConfig::parse(
            r#"
            socket = "/tmp/from-file"
            memory-size = "1G"
            mailbox = "off"
            flit = "68b"
            decoders = 4
            serial = "0xabc"
            vendor-id = "1e98"
            device-id = 0x0d93
            once = true
            "#,
        )
        .unwrap();
        let mut a = args("/tmp/from-cli");
        a.memory_size = Some(2 << 30);
        a.mailbox = Some(OnOff::On);
        let c = Config::merge(a, file).unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/from-cli"));
        assert_eq!(c.memory_size, 2 << 30);
        assert!(c.mailbox);
        assert_eq!(c.flit, FlitMode::Flit68);
        assert_eq!(c.decoders, 4);
        assert_eq!(c.serial, 0xabc);
        assert_eq!(c.vendor_id, 0x1e98);
        assert_eq!(c.device_id, 0x0d93);
        assert!(c.once);
    }

    #[test]
    fn file_errors_are_reported() {
        assert!(FileConfig::parse("sockett = \"/x\"").is_err());
        let file = FileConfig::parse("socket = \"/x\"\nflit = \"32b\"").unwrap();
        let e = Config::merge(DaemonArgs::default(), file).unwrap_err();
        assert!(e.to_string().contains("256b or 68b"), "{e}");
        let e = Config::merge(DaemonArgs::default(), FileConfig::default()).unwrap_err();
        assert!(matches!(e, ConfigError::MissingSocket));
    }

    #[test]
    fn bad_values() {
        let mut a = args("/tmp/s");
        a.decoders = Some(3);
        assert!(matches!(
            Config::merge(a, FileConfig::default()),
            Err(ConfigError::BadDecoders(3))
        ));
        let mut a = args("/tmp/s");
        a.vendor_id = Some(0x1_0000);
        assert!(Config::merge(a, FileConfig::default()).is_err());
        let mut a = args("/tmp/s");
        a.firmware = Some("no-such-firmware".into());
        let e = Config::merge(a, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("default"), "{e}");
        let mut a = args("/tmp/s");
        a.control = Some("/tmp/s".into());
        assert!(matches!(
            Config::merge(a, FileConfig::default()),
            Err(ConfigError::SamePaths)
        ));
    }

    #[test]
    fn max_dma_maps_from_cli_or_file_within_what_qemu_accepts() {
        let c = Config::merge(args("/tmp/s"), FileConfig::default()).unwrap();
        assert_eq!(c.max_dma_maps, 1024, "the README's default");
        let file = FileConfig::parse("max-dma-maps = 300").unwrap();
        let c = Config::merge(args("/tmp/s"), file).unwrap();
        assert_eq!(c.max_dma_maps, 300);
        assert_eq!(c.to_json()["max_dma_maps"], 300);
        let file = FileConfig::parse("max-dma-maps = \"0x100\"").unwrap();
        let mut a = args("/tmp/s");
        a.max_dma_maps = Some(65535);
        assert_eq!(Config::merge(a, file).unwrap().max_dma_maps, 65535);
        // QEMU (hw/vfio-user/proxy.c) refuses a server announcing more than 65535.
        for bad in [0, 65536, u64::MAX] {
            let mut a = args("/tmp/s");
            a.max_dma_maps = Some(bad);
            assert!(matches!(
                Config::merge(a, FileConfig::default()),
                Err(ConfigError::MaxDmaMaps(n)) if n == bad
            ));
        }
        let file = FileConfig::parse("max-dma-maps = \"lots\"").unwrap();
        assert!(Config::merge(args("/tmp/s"), file).is_err());
    }

    #[test]
    fn seccomp_is_off_by_default_and_set_from_cli_or_file() {
        let c = Config::merge(args("/s"), FileConfig::default()).unwrap();
        assert!(!c.seccomp);
        assert_eq!(c.to_json()["seccomp"], false);
        let mut a = args("/s");
        a.seccomp = Some(OnOff::On);
        assert!(Config::merge(a, FileConfig::default()).unwrap().seccomp);
        let file = FileConfig::parse("seccomp = true").unwrap();
        assert!(Config::merge(args("/s"), file).unwrap().seccomp);
        let file = FileConfig::parse("seccomp = \"on\"").unwrap();
        let mut a = args("/s");
        a.seccomp = Some(OnOff::Off);
        assert!(!Config::merge(a, file).unwrap().seccomp);
        let file = FileConfig::parse("seccomp = \"sometimes\"").unwrap();
        assert!(Config::merge(args("/s"), file).is_err());
    }

    #[test]
    fn firmware_params_from_file_and_cli() {
        let file = FileConfig::parse(
            "socket = \"/s\"\nfirmware = \"bios\"\n[firmware-params]\nbase = \"0x110000000\"\nsize = 268435456\n",
        )
        .unwrap();
        let a = DaemonArgs {
            firmware_params: vec![("base".into(), "0x120000000".into())],
            ..Default::default()
        };
        let c = Config::merge(a, file).unwrap();
        assert_eq!(c.firmware, "bios");
        // File first, command line last: the command line wins when applied in order.
        assert_eq!(
            c.firmware_params.last().unwrap(),
            &("base".into(), "0x120000000".into())
        );
        assert!(c
            .firmware_params
            .contains(&("size".into(), "268435456".into())));

        let mut a = args("/s");
        a.firmware = Some("bios".into());
        a.firmware_params = vec![("nonsense".into(), "1".into())];
        let e = Config::merge(a, FileConfig::default()).unwrap_err();
        assert!(matches!(e, ConfigError::FirmwareParam { .. }), "{e}");
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=1").is_err());
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
    }

    #[test]
    fn qemu_args_name_the_socket_and_window() {
        let mut a = args("/run/x.sock");
        a.memory_size = Some(8 << 30);
        let c = Config::merge(a, FileConfig::default()).unwrap();
        let q = c.qemu_args().unwrap();
        assert!(q.contains(r#""path":"/run/x.sock""#), "{q}");
        let json = q.lines().find_map(|l| l.strip_prefix("-device '")).unwrap();
        let json = json.trim_end_matches(" \\").trim_end_matches('\'');
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["driver"], "vfio-user-pci");
        assert_eq!(v["bus"], "rp0");
        // Quotes in a path survive JSON and shell quoting.
        let c = Config::merge(args("/tmp/it's \"odd\".sock"), FileConfig::default()).unwrap();
        assert!(
            c.qemu_args()
                .unwrap()
                .contains(r#"/tmp/it'\''s \"odd\".sock"#),
            "{}",
            c.qemu_args().unwrap()
        );
        assert!(q.contains("hdm_for_passthrough=on"));
        assert!(q.contains("cxl-fmw.0.size=8G"));
        assert!(q.contains("memory-backend-memfd,id=ram0,size=1G,share=on"));
        // The host bridge's generic port, on a NUMA node of its own with HMAT figures.
        assert!(
            q.contains("acpi-generic-port,id=gp0,pci-bus=cxl.1,node=1"),
            "{q}"
        );
        assert!(
            q.contains("hmat=on") && q.contains("initiator=0,target=1"),
            "{q}"
        );
    }

    #[test]
    fn cdat_figures_default_then_file_then_cli() {
        let c = Config::merge(args("/s"), FileConfig::default()).unwrap();
        assert_eq!(c.cdat, CdatSource::Built(CdatConfig::default()));
        assert_eq!(c.to_json()["cdat"]["memory_type"], "reserved");
        let file = FileConfig::parse(
            "cdat-read-latency = 90\ncdat-write-bandwidth = \"0x4000\"\n\
             cdat-memory-type = \"specific-purpose\"\n",
        )
        .unwrap();
        let mut a = args("/s");
        a.cdat_read_latency = Some(80);
        let c = Config::merge(a, file).unwrap();
        let CdatSource::Built(cfg) = c.cdat else {
            panic!("{:?}", c.cdat)
        };
        assert_eq!(cfg.read_latency_ns, 80, "the command line wins");
        assert_eq!(cfg.write_bandwidth_mbs, 0x4000);
        assert_eq!(cfg.memory_type, EfiMemoryType::SpecificPurpose);
        assert_eq!(cfg.write_latency_ns, CdatConfig::default().write_latency_ns);
        assert_eq!(c.accel_config().cdat, CdatSource::Built(cfg));
    }

    #[test]
    fn cdat_figures_out_of_range_or_unknown_are_refused() {
        let mut a = args("/s");
        a.cdat_write_latency = Some(0);
        let e = Config::merge(a, FileConfig::default()).unwrap_err();
        assert!(matches!(e, ConfigError::CdatFigures(_)), "{e}");
        assert!(e.to_string().contains("write latency"), "{e}");
        let file = FileConfig::parse("cdat-memory-type = \"persistent\"").unwrap();
        let e = Config::merge(args("/s"), file).unwrap_err();
        assert!(e.to_string().contains("specific-purpose"), "{e}");
    }

    #[test]
    fn a_vendor_cdat_file_is_loaded_and_checked_against_the_memory_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vendor.cdat");
        let table = Cdat::build(&CdatConfig::default(), 512 << 20, 3).unwrap();
        fs::write(&path, table.bytes()).unwrap();
        let mut a = args("/s");
        a.cdat = Some(path.clone());
        let c = Config::merge(a, FileConfig::default()).unwrap();
        assert_eq!(c.cdat, CdatSource::Vendor(table.bytes().to_vec()));
        assert_eq!(c.to_json()["cdat"]["length"], table.bytes().len());
        // The same file for 256 MiB of memory: its DSMAS is past the capacity.
        let mut a = args("/s");
        a.cdat = Some(path.clone());
        a.memory_size = Some(256 << 20);
        let e = Config::merge(a, FileConfig::default()).unwrap_err();
        assert!(matches!(e, ConfigError::CdatInvalid { .. }), "{e}");
        // Figures of the built table make no sense with a vendor one.
        let mut a = args("/s");
        a.cdat = Some(path.clone());
        a.cdat_write_bandwidth = Some(1000);
        let e = Config::merge(a, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--cdat-write-bandwidth"), "{e}");
        // A missing file.
        let mut a = args("/s");
        a.cdat = Some(dir.path().join("missing.cdat"));
        assert!(matches!(
            Config::merge(a, FileConfig::default()),
            Err(ConfigError::CdatRead { .. })
        ));
    }

    #[test]
    fn qemu_args_subcommand() {
        let parse = |args: &[&str]| {
            let mut v = vec!["cxl-accel-backend", "qemu-args"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).unwrap().command {
                Some(Command::QemuArgs(q)) => q,
                other => panic!("{other:?}"),
            }
        };
        let q = parse(&[
            "--topology",
            "two-devices",
            "--socket",
            "/a",
            "--socket",
            "/b",
            "--null",
            "--fmw-restrictions",
            "0x5",
        ]);
        let out = q.output().unwrap();
        let args: Vec<&str> = out.split_terminator('\0').collect();
        assert_eq!(args.first(), Some(&"-machine"));
        assert_eq!(
            args.last(),
            Some(&"cxl-fmw.0.targets.0=cxl.1,cxl-fmw.0.size=4G,cxl-fmw.0.restrictions=0x5")
        );
        assert_eq!(
            args.iter().filter(|a| a.contains("vfio-user-pci")).count(),
            2
        );
        // one socket for a two-accelerator topology, a bad name, a wide mask: refused
        let e = parse(&["--topology", "two-devices", "--socket", "/a"]).output();
        assert!(matches!(e, Err(TopologyError::SocketCount { .. })), "{e:?}");
        assert!(parse(&["--topology", "mesh"]).output().is_err());
        let e = parse(&["--socket", "/a", "--fmw-restrictions", "0x10000"]).output();
        assert_eq!(e, Err(TopologyError::Restrictions(0x10000)));
        // shell lines by default
        let q = parse(&["--socket", "/a", "--window", "8G"]);
        assert!(q.output().unwrap().ends_with("cxl-fmw.0.size=8G\n"));
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "cxl-accel-backend",
            "--socket",
            "/tmp/s",
            "--memory-size",
            "1G",
            "--flit",
            "68b",
            "--mailbox",
            "off",
            "--serial",
            "0x10",
            "--vendor-id",
            "0x8086",
        ])
        .unwrap();
        let c = Config::from_args(cli.daemon).unwrap();
        assert_eq!(c.memory_size, 1 << 30);
        assert_eq!(c.flit, FlitMode::Flit68);
        assert!(!c.mailbox);
        assert_eq!(c.serial, 16);
        assert_eq!(c.vendor_id, 0x8086);
        let cli = Cli::try_parse_from([
            "cxl-accel-backend",
            "ctl",
            "--control",
            "/tmp/c",
            "inject-poison",
            "{\"dpa\":0}",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Ctl(_))));
        assert!(Cli::try_parse_from(["cxl-accel-backend", "--memory-size", "1Q"]).is_err());
    }

    #[test]
    fn firmware_socket_options_from_the_command_line_and_the_file() {
        let c = Config::merge(args("/tmp/s"), FileConfig::default()).unwrap();
        assert_eq!((c.firmware_socket, c.firmware_deadline_ms), (None, 10));
        let file =
            FileConfig::parse("firmware-socket = \"/tmp/fw\"\nfirmware-deadline-ms = 25").unwrap();
        let c = Config::merge(args("/tmp/s"), file).unwrap();
        assert_eq!(c.firmware_socket.as_deref(), Some(Path::new("/tmp/fw")));
        assert_eq!(c.firmware_deadline_ms, 25);
        for ms in [0, 1001] {
            let a = DaemonArgs {
                firmware_deadline_ms: Some(ms),
                ..args("/tmp/s")
            };
            assert!(matches!(
                Config::merge(a, FileConfig::default()),
                Err(ConfigError::FirmwareDeadline(v)) if v == ms
            ));
        }
        // Three sockets, three paths.
        for (control, fw) in [(None, "/tmp/s"), (Some("/tmp/c"), "/tmp/c")] {
            let a = DaemonArgs {
                control: control.map(PathBuf::from),
                firmware_socket: Some(fw.into()),
                ..args("/tmp/s")
            };
            assert!(matches!(
                Config::merge(a, FileConfig::default()),
                Err(ConfigError::SamePaths)
            ));
        }
        let json = Config::merge(
            DaemonArgs {
                firmware_socket: Some("/tmp/fw".into()),
                ..args("/tmp/s")
            },
            FileConfig::default(),
        )
        .unwrap()
        .to_json();
        assert_eq!(json["firmware_socket"], "/tmp/fw");
        assert_eq!(json["firmware_deadline_ms"], 10);
    }
}
