//! `acme-backend`: cxl-accel's daemon with the Acme CX-2 firmware and its CRC32
//! engine operation. Every option of `cxl-accel-backend` works the same; `--firmware`
//! defaults to `acme` (the built-in firmwares stay selectable).

use std::process::ExitCode;

use acme_firmware::{AcmeFirmware, Crc32Op, OP_CRC32};

fn main() -> ExitCode {
    backend::Builder::new()
        .name("acme-backend")
        .firmware(
            "acme",
            "Acme CX-2: 2 ms commits under a limit, opcodes 0xC000/0xC001, media timing, signed images",
            || Box::new(AcmeFirmware::default()),
        )
        .default_firmware("acme")
        .engine_operation(OP_CRC32, Crc32Op)
        .main()
}
