//! cxl-guest-test: the in-guest harness of cxl-accel. It runs as the guest's init
//! step, performs the firmware step a BIOS would, loads the kernel's CXL modules
//! and the accelerator module, and checks the device end to end (issue 4, a to j),
//! then its lifecycle (issue 11, k).
//!
//! Output: one line per check (`ok`, `FAIL`, `skip` or `xfail`, see `report`), then
//! exactly `N passed, N failed, N skipped, N xfail`. Exit code 0 iff nothing failed.

mod bench;
mod cedt;
mod cfgsave;
mod chaos;
mod checks;
mod config;
mod doe;
mod hdmprog;
mod hmat;
mod json;
mod kmsg;
mod mbox;
mod mmio;
mod pcicfg;
mod qmp;
mod report;
mod sys;

use config::{Config, Mode};
use std::process::ExitCode;

fn load_config() -> Result<(Config, Vec<String>), String> {
    let args = config::parse_args(std::env::args().skip(1))?;
    if args.help {
        println!("{}", config::USAGE);
        std::process::exit(0);
    }
    let mut cfg = Config::default();
    let mut unknown = Vec::new();
    if !args.no_cmdline {
        let path = args.cmdline_file.as_deref().unwrap_or("/proc/cmdline");
        let s = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        unknown = cfg.apply_cmdline(&s)?;
    }
    for (k, v) in &args.settings {
        cfg.set(k, v).map_err(|e| format!("--{k}: {e}"))?;
    }
    Ok((cfg, unknown))
}

/// Host side: does the backend's memory file hold the pattern check g left?
fn verify_pattern(args: &[String]) -> ExitCode {
    let mut file = None;
    let mut size = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--file", Some(f)) => file = Some(f.clone()),
            ("--size", Some(s)) => match config::parse_u64(s) {
                Ok(v) => size = Some(v),
                Err(e) => {
                    eprintln!("verify-pattern: {e}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("usage: cxl-guest-test verify-pattern --file MEMORY_FILE --size BYTES");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(file), Some(size)) = (file, size) else {
        eprintln!("usage: cxl-guest-test verify-pattern --file MEMORY_FILE --size BYTES");
        return ExitCode::from(2);
    };
    match checks::g_bar2::verify_file(&file, size) {
        Ok(msg) => {
            println!("verify-pattern: {msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("verify-pattern: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("verify-pattern") => return verify_pattern(&argv[2..]),
        Some("qmp") => return qmp::main(&argv[2..]),
        _ => {}
    }
    let (cfg, unknown) = match load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cxl-guest-test: {e}\n{}", config::USAGE);
            println!("FAIL config {e}");
            println!("0 passed, 1 failed");
            return ExitCode::from(2);
        }
    };
    report::quiet_panics();
    let mut rep = report::Reporter {
        hold_after: cfg.hold_after.clone(),
        ..Default::default()
    };
    rep.note(&format!(
        "cxl-guest-test {}: mode {:?}, topology {}, flit {}, mailbox {}, size {:#x}, serial {}, id {:04x}:{:04x}",
        env!("CARGO_PKG_VERSION"),
        cfg.mode,
        cfg.topology,
        cfg.flit,
        if cfg.mailbox { "on" } else { "off" },
        cfg.size,
        cfg.serial.map(|s| format!("{s:#x}")).unwrap_or_else(|| "-".into()),
        cfg.vendor,
        cfg.device
    ));
    for w in unknown {
        rep.note(&format!("ignoring unknown kernel command line key {w}"));
    }
    let mode = cfg.mode;
    let mut ctxs = checks::Ctx::for_topology(cfg.clone());
    match mode {
        Mode::Test => checks::run_all(&mut ctxs, &mut rep),
        Mode::Shell => checks::run_setup(&mut ctxs, &mut rep),
        Mode::Chaos => {
            chaos::run(&cfg, &mut rep);
            checks::run_all(&mut ctxs, &mut rep);
        }
        Mode::Bench => {
            bench::run(&cfg, &mut rep);
        }
    }
    rep.check_hold_reached();
    println!("{}", rep.summary());
    if mode == Mode::Shell {
        drop(ctxs);
        shell();
    }
    if rep.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Replace this process with an interactive shell (shell mode).
fn shell() {
    use std::os::unix::process::CommandExt;
    println!("# set-up checks done; starting /bin/sh (exit to power off)");
    let err = std::process::Command::new("/bin/sh").arg("-i").exec();
    eprintln!("cxl-guest-test: exec /bin/sh: {err}");
}
