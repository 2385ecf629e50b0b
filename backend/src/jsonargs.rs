//! Reading the JSON objects that peers send (control requests, the firmware
//! process's answers): numbers in the shared grammar, booleans, hex byte strings,
//! event records. Every reader returns an error that names the key.

use accel_type2::{EventLog, EventRecord};
use serde_json::{Map, Value};

/// A number, or a string in the shared number grammar (`cxl_regs::units`).
pub fn get_u64(req: &Map<String, Value>, key: &str) -> Result<u64, String> {
    match req.get(key) {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("\"{key}\" must be a non-negative integer")),
        Some(Value::String(s)) => {
            cxl_regs::units::parse_u64(s).map_err(|e| format!("\"{key}\": {e}"))
        }
        Some(_) => Err(format!("\"{key}\" must be a number")),
        None => Err(format!("missing \"{key}\"")),
    }
}

/// [`get_u64`] for an optional key.
pub fn opt_u64(req: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match req.get(key) {
        None => Ok(None),
        Some(_) => get_u64(req, key).map(Some),
    }
}

pub fn opt_bool(req: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match req.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("\"{key}\" must be true or false")),
    }
}

/// Hex digits, with optional dashes (UUIDs) and an optional 0x prefix.
pub fn hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s
        .trim_start_matches("0x")
        .bytes()
        .filter(|b| *b != b'-')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{s:?}: odd number of hex digits"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{s:?} is not hex"))
        })
        .collect()
}

/// Bytes as lower-case hex digits.
pub fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The optional hex string at `key` ([`hex_bytes`]); empty when absent.
pub fn opt_hex(req: &Map<String, Value>, key: &str) -> Result<Vec<u8>, String> {
    match req.get(key) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => hex_bytes(s).map_err(|e| format!("\"{key}\": {e}")),
        Some(_) => Err(format!("\"{key}\" must be a hex string")),
    }
}

/// An event record: `log` (informational, warning, failure, fatal; default
/// informational), `uuid` (16 bytes hex), `flags`, `data` (at most 0x50 bytes hex),
/// as the control socket's `inject-event` and the firmware process's `events` give
/// it (CXL r3.1 §8.2.9.2.1, Common Event Record).
pub fn event_record(req: &Map<String, Value>) -> Result<(EventLog, EventRecord), String> {
    let log = match req
        .get("log")
        .map(|v| v.as_str().ok_or("\"log\" must be a string"))
        .transpose()?
        .unwrap_or("informational")
    {
        "informational" | "info" => EventLog::Informational,
        "warning" | "warn" => EventLog::Warning,
        "failure" => EventLog::Failure,
        "fatal" => EventLog::Fatal,
        other => return Err(format!("unknown event log {other:?}")),
    };
    let mut uuid = [0u8; 16];
    if req.contains_key("uuid") {
        let bytes = opt_hex(req, "uuid")?;
        uuid = bytes
            .try_into()
            .map_err(|_| "\"uuid\" must be 16 bytes".to_string())?;
    }
    let flags = match opt_u64(req, "flags")? {
        Some(f) => u32::try_from(f).map_err(|_| "\"flags\" too big")?,
        None => 0,
    };
    let data = opt_hex(req, "data")?;
    if data.len() > 0x50 {
        return Err("\"data\" is at most 0x50 bytes".into());
    }
    Ok((log, EventRecord { uuid, flags, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(hex_bytes("00ff10").unwrap(), vec![0, 0xff, 0x10]);
        assert_eq!(hex_bytes("0x0a-0b").unwrap(), vec![10, 11]);
        assert!(hex_bytes("abc").is_err());
        assert!(hex_bytes("zz").is_err());
        assert_eq!(hex_string(&[0, 0xab, 7]), "00ab07");
    }

    #[test]
    fn numbers() {
        let m: Map<String, Value> =
            serde_json::from_str(r#"{"a":5,"b":"0x10","c":-1,"d":true}"#).unwrap();
        assert_eq!(get_u64(&m, "a").unwrap(), 5);
        assert_eq!(get_u64(&m, "b").unwrap(), 16);
        assert!(get_u64(&m, "c").is_err());
        assert!(get_u64(&m, "d").is_err());
        assert!(get_u64(&m, "e").is_err());
        assert_eq!(opt_u64(&m, "e").unwrap(), None);
    }

    #[test]
    fn events() {
        let m: Map<String, Value> = serde_json::from_str(
            r#"{"log":"failure","uuid":"00112233-4455-6677-8899-aabbccddeeff","data":"0102"}"#,
        )
        .unwrap();
        let (log, r) = event_record(&m).unwrap();
        assert_eq!(log, EventLog::Failure);
        assert_eq!(r.uuid[15], 0xff);
        assert_eq!(r.data, vec![1, 2]);
        for bad in [
            r#"{"log":"loud"}"#,
            r#"{"log":3}"#,
            r#"{"uuid":"00"}"#,
            r#"{"flags":"x"}"#,
            r#"{"data":7}"#,
        ] {
            let m: Map<String, Value> = serde_json::from_str(bad).unwrap();
            assert!(event_record(&m).is_err(), "{bad}");
        }
    }
}
