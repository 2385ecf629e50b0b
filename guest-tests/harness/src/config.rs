//! Run configuration: the `cxltest.*` keys of the kernel command line, overridden by
//! command-line flags of the same names.

use std::fmt;

/// What the harness does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run checks a to k and print the verdict.
    Test,
    /// Firmware step and module load (checks a to c), then an interactive shell.
    Shell,
    /// The benchmark against QEMU's cxl-type3 (see `bench.rs`).
    Bench,
    /// Hostile guest: random register writes, resets, then the checks of `Test`.
    Chaos,
}

/// What bench mode does (`--bench`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BenchJob {
    /// Every in-guest figure, backend against cxl-type3: `trap`, then `data`.
    #[default]
    All,
    /// The trapped accesses only (register read, write + read back, mailbox
    /// Identify) and their counted phases: what the host repeats per placement.
    Trap,
    /// Device memory only: bandwidth through BAR2 and the DMA engine.
    Data,
    /// Bring the VM's one device up to an assembled region, for the host's timing.
    Ready,
}

/// Where the accelerators sit (run-vm's --topology; the QEMU arguments come from
/// backend/src/topology.rs). The harness checks each accelerator's place, commits
/// the decoders of every port on its path, and checks each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// One accelerator on a root port of a CXL host bridge.
    #[default]
    Direct,
    /// One accelerator below a CXL switch (upstream and downstream port) on a root port.
    Switch,
    /// Two accelerators on two root ports of one host bridge.
    TwoDevices,
    /// Two host bridges, one accelerator on a root port of each.
    TwoHostBridges,
    /// One accelerator and QEMU's cxl-type3 on two root ports of one host bridge.
    WithType3,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::Direct => "direct",
            Topology::Switch => "switch",
            Topology::TwoDevices => "two-devices",
            Topology::TwoHostBridges => "two-host-bridges",
            Topology::WithType3 => "with-type3",
        }
    }

    /// Number of accelerators.
    pub fn devices(self) -> usize {
        match self {
            Topology::TwoDevices | Topology::TwoHostBridges => 2,
            Topology::Direct | Topology::Switch | Topology::WithType3 => 1,
        }
    }

    /// Whether each accelerator sits below a switch.
    pub fn switch(self) -> bool {
        self == Topology::Switch
    }

    /// Whether a cxl-type3 sits beside the accelerator.
    pub fn type3(self) -> bool {
        self == Topology::WithType3
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which checks of the example vendor firmware run (`--vendor-checks`, group v).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VendorChecks {
    /// None: the device runs some other firmware.
    #[default]
    Off,
    /// The firmware hooks (examples/firmware.py over --firmware-socket).
    Hooks,
    /// The hooks and the engine operation (the examples/vendor-firmware binary).
    Full,
}

impl VendorChecks {
    pub fn enabled(self) -> bool {
        self != VendorChecks::Off
    }
    /// Whether the engine operation is checked.
    pub fn engine(self) -> bool {
        self == VendorChecks::Full
    }
}

/// Flit mode the backend was started with (`--flit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flit {
    Flit256,
    Flit68,
}

impl fmt::Display for Flit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flit::Flit256 => "256b",
            Flit::Flit68 => "68b",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    pub flit: Flit,
    pub mailbox: bool,
    /// Device memory size in bytes.
    pub size: u64,
    /// Expected Device Serial Number; `None` = not checked against a fixed value.
    pub serial: Option<u64>,
    pub vendor: u16,
    pub device: u16,
    /// Chaos mode: how long the random accesses last.
    pub seconds: u64,
    /// Chaos mode: the random seed (`None`: from the clock, printed).
    pub seed: Option<u64>,
    /// Bench mode: which job.
    pub bench: BenchJob,
    /// The region's HPA reaches device memory (patched QEMU, scripts/qemu): run check j.
    pub hpa: bool,
    /// After check j passes: HPA bandwidth against guest RAM (`# bench:` notes).
    pub hpabench: bool,
    /// Hold the run after the check with this id (e.g. `g.2`), for the host.
    pub hold_after: Option<String>,
    /// Run check group k (lifecycle) after the others in test mode.
    pub lifecycle: bool,
    /// The host hot-unplugs and re-plugs the device when the harness asks
    /// (scripts/run-vm --hotplug): run check k's QMP hot-plug steps.
    pub hotplug: bool,
    /// The machine's topology.
    pub topology: Topology,
    /// Volatile memory of the cxl-type3 (with-type3).
    pub type3_size: u64,
    /// The example vendor firmware's checks (group v).
    pub vendor_checks: VendorChecks,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Test,
            flit: Flit::Flit256,
            mailbox: true,
            size: 512 << 20,
            serial: None,
            vendor: cxl_regs::layout::DEFAULT_VENDOR_ID,
            device: cxl_regs::layout::DEFAULT_DEVICE_ID,
            seconds: 30,
            seed: None,
            bench: BenchJob::All,
            hpa: false,
            hpabench: false,
            hold_after: None,
            lifecycle: true,
            hotplug: false,
            topology: Topology::Direct,
            type3_size: 512 << 20,
            vendor_checks: VendorChecks::Off,
        }
    }
}

pub const USAGE: &str = "usage: cxl-guest-test [test|shell|bench|chaos] [options]
       cxl-guest-test verify-pattern --file MEMORY_FILE --size BYTES   (on the host)
       cxl-guest-test qmp --socket PATH [--wait-event NAME[:DEVICE]] [--timeout SECS]
                      COMMAND_JSON                          (on the host: QEMU's QMP)

Reads cxltest.<key>=<value> from /proc/cmdline, then applies the options:
  --mode test|shell|bench|chaos
  --flit 256b|68b          flit mode the backend runs (default 256b)
  --mailbox on|off         whether the backend exposes the mailbox (default on)
  --size BYTES             device memory size, e.g. 0x20000000, 512M, 1GiB (default 512M)
  --serial 0xHEX           expected Device Serial Number (default: not checked)
  --vendor HEX             PCI vendor id, 0x optional (default 1234)
  --device HEX             PCI device id, 0x optional (default cc02)
  --hpa on|off             the region HPA reaches device memory: run check j (default off)
  --hpabench on|off        after check j: HPA bandwidth vs guest RAM (default off)
  --lifecycle on|off       test mode: run check group k, the lifecycle (default on)
  --hotplug on|off         the host hot-plugs the device on request (run-vm --hotplug):
                           run k's hot-unplug and re-plug steps (default off)
  --seconds N              chaos mode: seconds of random accesses (default 30)
  --seed N                 chaos mode: random seed (default: from the clock)
  --bench all|trap|data|ready
                           bench mode: every figure; trapped accesses only; device
                           memory only; or bring-up time only
  --hold-after ID          after check ID (e.g. g.2) print `# hold-after ID: waiting
                           for the host` and wait for good (a fault test's kill point)
  --topology NAME          direct (default), switch, two-devices, two-host-bridges,
                           with-type3: where the accelerators sit; accelerator i >= 1
                           has serial + i and its checks' ids end in @i
  --type3-size BYTES       with-type3: the cxl-type3's volatile memory (default 512M)
  --vendor-checks off|hooks|full
                           check the example vendor firmware's behaviour (group v):
                           its hooks, or the hooks and its engine operation (default off)
  --cmdline FILE           read the cxltest.* keys from FILE instead of /proc/cmdline
  --no-cmdline             ignore the kernel command line
  -h, --help";

/// A number or size in the grammar every cxl-accel interface shares
/// ([`cxl_regs::units`]: decimal with an optional binary unit K/M/G/T[B|iB], or 0x hex).
pub fn parse_u64(s: &str) -> Result<u64, String> {
    cxl_regs::units::parse_u64(s).map_err(|e| e.to_string())
}

/// A PCI id as the backend's `--vendor-id`/`--device-id` take it: hex, 0x optional.
fn parse_id(s: &str) -> Result<u16, String> {
    let v = cxl_regs::units::parse_hex(s).map_err(|e| e.to_string())?;
    u16::try_from(v).map_err(|_| format!("{s:?} does not fit 16 bits"))
}

/// `on` or `off` (or 1/0, true/false, yes/no) for `key`.
fn parse_on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "1" | "true" | "yes" => Ok(true),
        "off" | "0" | "false" | "no" => Ok(false),
        _ => Err(format!("{key}: expected on|off, got {value:?}")),
    }
}

/// Keys understood by [`Config::set`].
pub const KEYS: [&str; 18] = [
    "mode",
    "flit",
    "mailbox",
    "size",
    "serial",
    "vendor",
    "device",
    "seconds",
    "seed",
    "bench",
    "hpa",
    "hpabench",
    "hold-after",
    "lifecycle",
    "hotplug",
    "topology",
    "type3-size",
    "vendor-checks",
];

impl Config {
    /// Apply one `key=value` setting (keys without the `cxltest.` prefix).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "mode" => {
                self.mode = match value {
                    "test" => Mode::Test,
                    "shell" => Mode::Shell,
                    "bench" => Mode::Bench,
                    "chaos" => Mode::Chaos,
                    _ => {
                        return Err(format!(
                            "mode: expected test|shell|bench|chaos, got {value:?}"
                        ))
                    }
                }
            }
            "flit" => {
                self.flit = match value.to_ascii_lowercase().as_str() {
                    "256b" | "256" => Flit::Flit256,
                    "68b" | "68" => Flit::Flit68,
                    _ => return Err(format!("flit: expected 256b|68b, got {value:?}")),
                }
            }
            "mailbox" => self.mailbox = parse_on_off(key, value)?,
            "size" => {
                let size = parse_u64(value)?;
                if size == 0 || size % (256 << 20) != 0 {
                    return Err(format!(
                        "size: {size:#x} is not a non-zero multiple of 256 MiB"
                    ));
                }
                self.size = size;
            }
            "serial" => self.serial = Some(parse_u64(value)?),
            "vendor" => self.vendor = parse_id(value)?,
            "device" => self.device = parse_id(value)?,
            "hpa" => self.hpa = parse_on_off(key, value)?,
            "hpabench" => self.hpabench = parse_on_off(key, value)?,
            "lifecycle" => self.lifecycle = parse_on_off(key, value)?,
            "hotplug" => self.hotplug = parse_on_off(key, value)?,
            "hold-after" => {
                // a check id: a letter, a dot, a number (a.1, g.2, j.4), and for
                // accelerator i >= 1 of a topology, @i (c.5@1)
                let digits = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
                let (check, dev) = match value.split_once('@') {
                    Some((c, d)) => (c, Some(d)),
                    None => (value, None),
                };
                let valid = dev.is_none_or(digits)
                    && check.split_once('.').is_some_and(|(l, n)| {
                        l.len() == 1 && l.bytes().all(|b| b.is_ascii_lowercase()) && digits(n)
                    });
                if !valid {
                    return Err(format!(
                        "hold-after: expected a check id like g.2, got {value:?}"
                    ));
                }
                self.hold_after = Some(value.to_string());
            }
            "topology" => {
                self.topology = [
                    Topology::Direct,
                    Topology::Switch,
                    Topology::TwoDevices,
                    Topology::TwoHostBridges,
                    Topology::WithType3,
                ]
                .into_iter()
                .find(|t| t.name() == value)
                .ok_or_else(|| {
                    format!(
                        "topology: expected direct|switch|two-devices|two-host-bridges|with-type3, got {value:?}"
                    )
                })?
            }
            "type3-size" => {
                let size = parse_u64(value)?;
                if size == 0 || size % (256 << 20) != 0 {
                    return Err(format!(
                        "type3-size: {size:#x} is not a non-zero multiple of 256 MiB"
                    ));
                }
                self.type3_size = size;
            }
            "vendor-checks" => {
                self.vendor_checks = match value {
                    "off" => VendorChecks::Off,
                    "hooks" => VendorChecks::Hooks,
                    "full" => VendorChecks::Full,
                    _ => {
                        return Err(format!(
                            "vendor-checks: expected off|hooks|full, got {value:?}"
                        ))
                    }
                }
            }
            "seconds" => self.seconds = parse_u64(value)?,
            "seed" => self.seed = Some(parse_u64(value)?),
            "bench" => {
                self.bench = match value {
                    "all" => BenchJob::All,
                    "trap" => BenchJob::Trap,
                    "data" => BenchJob::Data,
                    "ready" => BenchJob::Ready,
                    _ => {
                        return Err(format!(
                            "bench: expected all|trap|data|ready, got {value:?}"
                        ))
                    }
                }
            }
            _ => return Err(format!("unknown key {key:?}")),
        }
        Ok(())
    }

    /// Apply the `cxltest.*` keys of a kernel command line. Other words are ignored;
    /// a bad value of a known key is an error. `cxltest.args` belongs to /init (it
    /// becomes argv); unknown keys are returned, for a warning.
    pub fn apply_cmdline(&mut self, cmdline: &str) -> Result<Vec<String>, String> {
        let mut unknown = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            let Some(kv) = word.strip_prefix("cxltest.") else {
                continue;
            };
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("kernel command line: {word:?} has no value"))?;
            let v = v.trim_matches('"');
            if k == "args" {
                continue;
            }
            if !KEYS.contains(&k) {
                unknown.push(word.to_string());
                continue;
            }
            self.set(k, v)
                .map_err(|e| format!("kernel command line: {e}"))?;
        }
        Ok(unknown)
    }
}

/// What `parse_args` found besides the settings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub settings: Vec<(String, String)>,
    pub cmdline_file: Option<String>,
    pub no_cmdline: bool,
    pub help: bool,
}

/// Parse argv (without the program name). A bare first word is the mode.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Args, String> {
    let mut out = Args::default();
    let mut it = args.into_iter().peekable();
    let mut first = true;
    while let Some(a) = it.next() {
        let is_first = std::mem::replace(&mut first, false);
        if a == "-h" || a == "--help" {
            out.help = true;
            continue;
        }
        if a == "--no-cmdline" {
            out.no_cmdline = true;
            continue;
        }
        if let Some(flag) = a.strip_prefix("--") {
            let (k, v) = match flag.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    let v = it.next().ok_or_else(|| format!("--{flag} needs a value"))?;
                    (flag.to_string(), v)
                }
            };
            if k == "cmdline" {
                out.cmdline_file = Some(v);
            } else {
                out.settings.push((k, v));
            }
            continue;
        }
        if is_first && !a.contains('=') {
            out.settings.push(("mode".into(), a));
            continue;
        }
        // `key=value` as /init passes cxltest.args words, e.g. `seconds=30`.
        if let Some((k, v)) = a.split_once('=').filter(|(k, _)| KEYS.contains(k)) {
            out.settings.push((k.to_string(), v.to_string()));
            continue;
        }
        return Err(format!("unexpected argument {a:?}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings read the shared grammar (its table test is in cxl_regs::units):
    /// what the backend accepts for the same option, the harness accepts too.
    #[test]
    fn settings_take_the_backends_spellings() {
        let mut c = Config::default();
        for (size, want) in [("1GiB", 1u64 << 30), ("768M", 768 << 20), ("1T", 1 << 40)] {
            c.set("size", size).unwrap();
            assert_eq!(c.size, want, "{size}");
        }
        for bad in ["1.5G", "0x10M", "512B", "99999999999T"] {
            assert!(c.set("size", bad).is_err(), "{bad:?} accepted");
        }
        // PCI ids as `--vendor-id`/`--device-id` take them: hex without 0x too
        c.set("vendor", "1b36").unwrap();
        c.set("device", "0x0001").unwrap();
        assert_eq!((c.vendor, c.device), (0x1b36, 0x0001));
        c.set("vendor", "1234").unwrap();
        assert_eq!(c.vendor, 0x1234, "a bare id is hex, as for the backend");
        assert!(c.set("vendor", "10000").is_err());
        assert!(c.set("device", "4K").is_err());
    }

    #[test]
    fn cmdline_keys() {
        let mut c = Config::default();
        c.apply_cmdline(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 cxltest.mode=shell cxltest.flit=68b \
             cxltest.mailbox=off cxltest.size=1073741824 cxltest.serial=0xabc \
             cxltest.vendor=0x1b36 cxltest.device=0x0001 quiet",
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Shell);
        assert_eq!(c.flit, Flit::Flit68);
        assert!(!c.mailbox);
        assert_eq!(c.size, 1 << 30);
        assert_eq!(c.serial, Some(0xabc));
        assert_eq!((c.vendor, c.device), (0x1b36, 0x0001));
        assert_eq!(c.topology, Topology::Direct);
        c.apply_cmdline("cxltest.topology=two-host-bridges cxltest.type3-size=1G")
            .unwrap();
        assert_eq!(c.topology, Topology::TwoHostBridges);
        assert_eq!((c.topology.devices(), c.type3_size), (2, 1 << 30));
        assert!(c.apply_cmdline("cxltest.topology=ring").is_err());
        assert!(c.apply_cmdline("cxltest.type3-size=100M").is_err());
    }

    #[test]
    fn cmdline_errors() {
        let mut c = Config::default();
        assert!(c.apply_cmdline("cxltest.flit=128b").is_err());
        assert!(c.apply_cmdline("cxltest.size=100").is_err());
        assert!(c.apply_cmdline("cxltest.mode").is_err());
        // unrelated words, /init's args key and unknown keys leave the config alone
        let mut d = Config::default();
        let unknown = d
            .apply_cmdline("cxl_core.dyndbg=+p cxltestx=1 cxltest.args=--x,1 cxltest.bogus=1")
            .unwrap();
        assert_eq!(unknown, vec!["cxltest.bogus=1".to_string()]);
        assert_eq!(d, Config::default());
    }

    #[test]
    fn argv() {
        let a = parse_args(
            ["shell", "--flit", "68b", "--mailbox=off", "--no-cmdline"].map(String::from),
        )
        .unwrap();
        assert!(a.no_cmdline);
        assert_eq!(
            a.settings,
            vec![
                ("mode".into(), "shell".into()),
                ("flit".into(), "68b".into()),
                ("mailbox".into(), "off".into())
            ]
        );
        assert!(parse_args(["test", "extra"].map(String::from)).is_err());
        assert!(parse_args(["--flit"].map(String::from)).is_err());
        let b = parse_args(["--cmdline", "/tmp/c"].map(String::from)).unwrap();
        assert_eq!(b.cmdline_file.as_deref(), Some("/tmp/c"));
        // chaos settings, as flags or as bare key=value words
        let c = parse_args(["chaos", "seconds=30", "--seed=0x5"].map(String::from)).unwrap();
        assert_eq!(
            c.settings,
            vec![
                ("mode".into(), "chaos".into()),
                ("seconds".into(), "30".into()),
                ("seed".into(), "0x5".into())
            ]
        );
        assert!(parse_args(["chaos", "bogus=1"].map(String::from)).is_err());
        // bench jobs
        let mut b = Config::default();
        assert_eq!(b.bench, BenchJob::All);
        for (k, v) in &parse_args(["bench", "bench=ready"].map(String::from))
            .unwrap()
            .settings
        {
            b.set(k, v).unwrap();
        }
        assert_eq!((b.mode, b.bench), (Mode::Bench, BenchJob::Ready));
        b.set("bench", "trap").unwrap();
        assert_eq!(b.bench, BenchJob::Trap);
        b.set("bench", "data").unwrap();
        assert_eq!(b.bench, BenchJob::Data);
        assert!(b.set("bench", "fast").is_err());
        assert_eq!(b.bench, BenchJob::Data, "a bad value changes nothing");
        // the HPA bandwidth figure, as /init passes it
        let mut h = Config::default();
        assert!(!h.hpabench);
        for (k, v) in &parse_args(["test", "hpabench=on"].map(String::from))
            .unwrap()
            .settings
        {
            h.set(k, v).unwrap();
        }
        assert!(h.hpabench);
        assert!(h.set("hpabench", "maybe").is_err());
        // group k and its hot-plug steps, as run-vm passes them
        let mut k = Config::default();
        assert!(k.lifecycle && !k.hotplug);
        k.apply_cmdline("cxltest.hotplug=on cxltest.lifecycle=off")
            .unwrap();
        assert!(!k.lifecycle && k.hotplug);
        assert!(k.set("hotplug", "sometimes").is_err());
        assert!(k.hotplug, "a refused value changes nothing");
        // the fault test's hold point, as /init passes cxltest.args words
        let mut k = Config::default();
        for (key, v) in &parse_args(["test", "hold-after=g.2"].map(String::from))
            .unwrap()
            .settings
        {
            k.set(key, v).unwrap();
        }
        assert_eq!(k.hold_after.as_deref(), Some("g.2"));
        k.set("hold-after", "c.5@1").unwrap();
        assert_eq!(k.hold_after.as_deref(), Some("c.5@1"));
        k.set("hold-after", "g.2").unwrap();
        for bad in [
            "",
            "g",
            "g.",
            ".2",
            "gg.2",
            "G.2",
            "g.2;reboot",
            "g.x",
            "g.2@",
            "g.2@x",
        ] {
            assert!(k.set("hold-after", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            k.hold_after.as_deref(),
            Some("g.2"),
            "a refused id changes nothing"
        );
        let mut cfg = Config::default();
        for (k, v) in &c.settings {
            cfg.set(k, v).unwrap();
        }
        assert_eq!(
            (cfg.mode, cfg.seconds, cfg.seed),
            (Mode::Chaos, 30, Some(5))
        );
    }
}
