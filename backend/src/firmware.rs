//! Firmware models selectable with `--firmware NAME`.

use accel_type2::{DefaultFirmware, Firmware};

/// The firmware model called `name`, if there is one.
pub fn by_name(name: &str) -> Option<Box<dyn Firmware>> {
    match name {
        "default" => Some(Box::new(DefaultFirmware)),
        _ => None,
    }
}

/// Names accepted by [`by_name`].
pub fn names() -> Vec<&'static str> {
    vec!["default"]
}
