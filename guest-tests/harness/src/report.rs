//! One line per check on stdout, and the closing `N passed, N failed`.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Debug)]
pub struct Reporter {
    pub passed: u32,
    pub failed: u32,
    /// Lines printed, for tests.
    pub lines: Vec<String>,
    /// Hold after the check with this id (`--hold-after`): print [`hold_marker`] and
    /// call `hold`, which never returns in the guest, so that the host acts at a known
    /// point of the run (the QEMU SIGKILL fault test of scripts/lib/faults.sh).
    pub hold_after: Option<String>,
    /// Whether the hold point was reached.
    pub held: bool,
    /// What holding does: [`hold_forever`] (tests substitute their own).
    pub hold: fn(),
    /// Appended to every check id: empty for the first accelerator, `@i` for
    /// accelerator i of a topology with several (checks/mod.rs, `per_device`), so a
    /// one-accelerator run keeps the ids it always had.
    pub suffix: String,
}

impl Default for Reporter {
    fn default() -> Self {
        Self {
            passed: 0,
            failed: 0,
            lines: Vec::new(),
            hold_after: None,
            held: false,
            hold: hold_forever,
            suffix: String::new(),
        }
    }
}

/// The line printed at the hold point: `# hold-after <id>: waiting for the host`.
pub fn hold_marker(id: &str) -> String {
    format!("hold-after {id}: waiting for the host")
}

/// Block for good: the host ends the guest (run-vm's --kill-after, or its timeout).
pub fn hold_forever() {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Result of one check: Ok(detail) or Err(reason).
pub type Outcome = Result<String, String>;

impl Reporter {
    /// Run one check. A panic inside it fails the check with the panic message.
    pub fn check(&mut self, id: &str, title: &str, f: impl FnOnce() -> Outcome) -> bool {
        let id = &format!("{id}{}", self.suffix);
        let r = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => Err(format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("?")
            )),
        };
        let (ok, line) = match r {
            Ok(d) if d.is_empty() => (true, format!("ok {id} {title}")),
            Ok(d) => (true, format!("ok {id} {title}: {d}")),
            Err(e) => (false, format!("FAIL {id} {title}: {e}")),
        };
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        println!("{line}");
        let _ = std::io::stdout().flush();
        self.lines.push(line);
        if self.hold_after.as_deref() == Some(id) {
            self.held = true;
            self.note(&hold_marker(id));
            (self.hold)();
        }
        ok
    }

    /// Free-form note (not a check), prefixed with `#`.
    pub fn note(&mut self, msg: &str) {
        let line = format!("# {msg}");
        println!("{line}");
        let _ = std::io::stdout().flush();
        self.lines.push(line);
    }

    /// After the run: a hold point that no check reached is a failure (a mistyped
    /// id would otherwise leave the host waiting for a line that never comes).
    pub fn check_hold_reached(&mut self) {
        if let Some(id) = self.hold_after.clone().filter(|_| !self.held) {
            self.check("hold-after", "the hold point was reached", || {
                Err(format!("no check {id} ran"))
            });
        }
    }

    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed)
    }
}

/// Silence the default panic message: the failing check reports it.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn counts_and_formats() {
        quiet_panics();
        let mut r = Reporter::default();
        assert!(r.check("a.1", "first", || Ok(String::new())));
        assert!(r.check("a.2", "second", || Ok("detail".into())));
        assert!(!r.check("a.3", "third", || Err("why".into())));
        assert!(!r.check("a.4", "fourth", || panic!("boom {}", 1)));
        assert!(!r.check("a.5", "fifth", || -> Outcome { panic!("static") }));
        assert_eq!(r.lines[0], "ok a.1 first");
        assert_eq!(r.lines[1], "ok a.2 second: detail");
        assert_eq!(r.lines[2], "FAIL a.3 third: why");
        assert_eq!(r.lines[3], "FAIL a.4 fourth: panic: boom 1");
        assert_eq!(r.lines[4], "FAIL a.5 fifth: panic: static");
        assert_eq!(r.summary(), "2 passed, 3 failed");
    }

    static HELD: AtomicU32 = AtomicU32::new(0);
    fn count_hold() {
        HELD.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn holds_after_the_named_check_only() {
        let mut r = Reporter {
            hold_after: Some("g.2".into()),
            hold: count_hold,
            ..Default::default()
        };
        r.check("g.1", "one", || Ok(String::new()));
        r.check("g.20", "not g.2", || Ok(String::new()));
        assert_eq!(HELD.load(Ordering::SeqCst), 0);
        assert!(!r.held);
        r.check("g.2", "two", || Err("failed".into()));
        assert_eq!(HELD.load(Ordering::SeqCst), 1, "a failed check holds too");
        assert!(r.held);
        assert_eq!(
            r.lines[2..],
            [
                "FAIL g.2 two: failed",
                "# hold-after g.2: waiting for the host"
            ]
        );
        r.check_hold_reached();
        assert_eq!((r.passed, r.failed), (2, 1), "reached: no extra failure");

        let mut missed = Reporter {
            hold_after: Some("g.9".into()),
            hold: count_hold,
            ..Default::default()
        };
        missed.check("g.1", "one", || Ok(String::new()));
        missed.check_hold_reached();
        assert_eq!(
            missed.lines[1],
            "FAIL hold-after the hold point was reached: no check g.9 ran"
        );
        assert_eq!(HELD.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_suffix_names_the_accelerator_and_its_hold_point() {
        let mut r = Reporter {
            hold_after: Some("c.5@1".into()),
            hold: count_second_hold,
            ..Default::default()
        };
        r.check("c.5", "first accelerator", || Ok(String::new()));
        r.suffix = "@1".into();
        r.check("c.5", "second accelerator", || Ok(String::new()));
        assert_eq!(
            r.lines,
            [
                "ok c.5 first accelerator",
                "ok c.5@1 second accelerator",
                "# hold-after c.5@1: waiting for the host"
            ]
        );
        assert_eq!(SECOND.load(Ordering::SeqCst), 1);
    }

    static SECOND: AtomicU32 = AtomicU32::new(0);
    fn count_second_hold() {
        SECOND.fetch_add(1, Ordering::SeqCst);
    }
}
