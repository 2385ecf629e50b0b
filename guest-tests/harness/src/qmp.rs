//! Host side: one command to QEMU's QMP monitor (a UNIX socket), for
//! scripts/run-vm when the guest harness asks the host to hot-unplug or re-plug
//! the device (`cxl-guest-test qmp`).
//!
//! The QMP protocol (QEMU's docs/interop/qmp-spec.rst): one JSON object per line;
//! a greeting, then `qmp_capabilities` leaves negotiation mode; each command gets a
//! `return` or an `error`; asynchronous `event` objects may come in between.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

pub const USAGE: &str = "usage: cxl-guest-test qmp --socket PATH [--wait-event NAME[:DEVICE]] \
[--timeout SECS] COMMAND_JSON";

/// An event to wait for after the command returned: its name and, if given, the
/// `device` member of its data (DEVICE_DELETED names the device's id there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventWait {
    pub name: String,
    pub device: Option<String>,
}

impl EventWait {
    pub fn parse(s: &str) -> Self {
        match s.split_once(':') {
            Some((n, d)) => Self {
                name: n.to_string(),
                device: Some(d.to_string()),
            },
            None => Self {
                name: s.to_string(),
                device: None,
            },
        }
    }

    pub fn matches(&self, msg: &Value) -> bool {
        msg.get("event").and_then(Value::as_str) == Some(self.name.as_str())
            && self
                .device
                .as_deref()
                .is_none_or(|d| msg.pointer("/data/device").and_then(Value::as_str) == Some(d))
    }
}

/// What one QMP message is.
#[derive(Debug, PartialEq)]
pub enum Message {
    Greeting,
    Return(Value),
    Error(String),
    Event(Value),
}

pub fn classify(line: &str) -> Result<Message, String> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| format!("QMP sent no JSON ({e}): {line}"))?;
    if v.get("QMP").is_some() {
        Ok(Message::Greeting)
    } else if let Some(r) = v.get("return") {
        Ok(Message::Return(r.clone()))
    } else if let Some(e) = v.get("error") {
        Ok(Message::Error(format!(
            "{}: {}",
            e.get("class").and_then(Value::as_str).unwrap_or("?"),
            e.get("desc").and_then(Value::as_str).unwrap_or("?")
        )))
    } else if v.get("event").is_some() {
        Ok(Message::Event(v))
    } else {
        Err(format!("QMP sent an unknown message: {line}"))
    }
}

struct Session {
    out: UnixStream,
    lines: BufReader<UnixStream>,
    deadline: Instant,
    /// Events seen so far.
    events: Vec<Value>,
}

impl Session {
    fn next(&mut self) -> Result<Message, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        self.lines
            .get_mut()
            .set_read_timeout(Some(left))
            .map_err(|e| format!("QMP socket: {e}"))?;
        let mut line = String::new();
        match self.lines.read_line(&mut line) {
            Ok(0) => Err("QMP closed the connection".into()),
            Ok(_) => classify(line.trim()),
            Err(e) => Err(format!("QMP socket: {e}")),
        }
    }

    /// Send `cmd` and wait for its `return` (events are kept).
    fn execute(&mut self, cmd: &str) -> Result<Value, String> {
        self.out
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("QMP socket: {e}"))?;
        loop {
            match self.next()? {
                Message::Return(v) => return Ok(v),
                Message::Error(e) => return Err(format!("{cmd}: {e}")),
                Message::Event(ev) => self.events.push(ev),
                Message::Greeting => return Err("QMP sent a second greeting".into()),
            }
        }
    }
}

/// Run `cmd` on the QMP socket at `path`; with `wait`, also wait for that event.
/// Returns the command's `return` value and the event, as text.
pub fn run(
    path: &str,
    cmd: &str,
    wait: Option<&EventWait>,
    timeout: Duration,
) -> Result<String, String> {
    serde_json::from_str::<Value>(cmd).map_err(|e| format!("command is no JSON ({e}): {cmd}"))?;
    let s = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
    let mut q = Session {
        out: s.try_clone().map_err(|e| format!("{path}: {e}"))?,
        lines: BufReader::new(s),
        deadline: Instant::now() + timeout,
        events: Vec::new(),
    };
    match q.next()? {
        Message::Greeting => {}
        m => return Err(format!("QMP did not greet: {m:?}")),
    }
    q.execute(r#"{"execute":"qmp_capabilities"}"#)?;
    let ret = q.execute(cmd)?;
    let Some(w) = wait else {
        return Ok(format!("return {ret}"));
    };
    let ev = loop {
        if let Some(ev) = q.events.iter().find(|e| w.matches(e)) {
            break ev.clone();
        }
        match q.next() {
            Ok(Message::Event(ev)) => q.events.push(ev),
            Ok(m) => return Err(format!("unexpected QMP message {m:?}")),
            Err(e) => return Err(format!("waiting for event {}: {e}", w.name)),
        }
    };
    Ok(format!("return {ret}; event {ev}"))
}

/// `cxl-guest-test qmp ...`: exit 0 when the command (and the awaited event) came.
pub fn main(args: &[String]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut socket = None;
    let mut wait = None;
    let mut timeout = Duration::from_secs(30);
    let mut cmd = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), cmd.is_none()) {
            ("--socket", _) => socket = it.next().cloned(),
            ("--wait-event", _) => wait = it.next().map(|s| EventWait::parse(s)),
            ("--timeout", _) => match it.next().and_then(|s| s.parse().ok()) {
                Some(s) => timeout = Duration::from_secs(s),
                None => {
                    eprintln!("qmp: --timeout takes seconds\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            (c, true) if !c.starts_with("--") => cmd = Some(c.to_string()),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(socket), Some(cmd)) = (socket, cmd) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match run(&socket, &cmd, wait.as_ref(), timeout) {
        Ok(s) => {
            println!("qmp: {s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("qmp: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn messages_and_events() {
        assert_eq!(
            classify(r#"{"QMP": {"version": {}, "capabilities": []}}"#).unwrap(),
            Message::Greeting
        );
        assert_eq!(
            classify(r#"{"return": {}}"#).unwrap(),
            Message::Return(serde_json::json!({}))
        );
        assert_eq!(
            classify(r#"{"error": {"class": "GenericError", "desc": "Device 'x' not found"}}"#)
                .unwrap(),
            Message::Error("GenericError: Device 'x' not found".into())
        );
        assert!(classify("not json").is_err());
        assert!(classify(r#"{"what": 1}"#).is_err());
        let ev: Value = serde_json::from_str(
            r#"{"event": "DEVICE_DELETED", "data": {"device": "accel0", "path": "/machine/peripheral/accel0"}}"#,
        )
        .unwrap();
        let other: Value = serde_json::from_str(
            r#"{"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/accel0/x"}}"#,
        )
        .unwrap();
        let w = EventWait::parse("DEVICE_DELETED:accel0");
        assert!(w.matches(&ev) && !w.matches(&other));
        assert!(EventWait::parse("DEVICE_DELETED").matches(&other));
        assert!(!EventWait::parse("RESET").matches(&ev));
    }

    /// A fake QMP server: greets, answers capabilities, then the command with an
    /// event before and after the return.
    #[test]
    fn runs_a_command_and_waits_for_its_event() {
        let dir = std::env::temp_dir().join(format!("qmp-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            w.write_all(b"{\"return\": {}}\r\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("device_del"));
            w.write_all(b"{\"event\": \"DEVICE_DELETED\", \"data\": {\"path\": \"/x/y\"}}\r\n")
                .unwrap();
            w.write_all(b"{\"return\": {}}\r\n").unwrap();
            w.write_all(b"{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"accel0\"}}\r\n")
                .unwrap();
            line.clear();
            // the client hangs up
            let _ = r.read_line(&mut line);
        });
        let p = path.to_str().unwrap();
        let out = run(
            p,
            r#"{"execute":"device_del","arguments":{"id":"accel0"}}"#,
            Some(&EventWait::parse("DEVICE_DELETED:accel0")),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.contains("\"device\":\"accel0\""), "{out}");
        server.join().unwrap();
        // a command that is not JSON is refused before connecting
        assert!(run(p, "device_del", None, Duration::from_secs(1))
            .unwrap_err()
            .contains("no JSON"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
