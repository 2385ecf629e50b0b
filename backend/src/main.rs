//! `cxl-accel-backend`: the stock daemon, the SDK's [`backend::Builder`] with the
//! built-in firmwares.

use std::process::ExitCode;

fn main() -> ExitCode {
    backend::Builder::new().main()
}
