//! `cxl-accel-backend`: command line in, [`backend::run`] out.

use std::process::ExitCode;

use backend::config::{Cli, Command, Config};
use clap::Parser;

/// Exit status for a configuration the daemon refuses (as clap uses for bad syntax).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    if let Some(Command::QemuArgs(q)) = &cli.command {
        return match q.output() {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cxl-accel-backend qemu-args: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    if let Some(Command::Ctl(ctl)) = cli.command {
        return match backend::control::request(&ctl.control, &ctl.cmd, ctl.args.as_deref()) {
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
                eprintln!("cxl-accel-backend: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let config = match Config::from_args(cli.daemon) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cxl-accel-backend: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if config.print_qemu_args {
        return match config.qemu_args() {
            Ok(args) => {
                print!("{args}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cxl-accel-backend: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    match backend::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
