//! One line per check on stdout, and the closing
//! `N passed, N failed, N skipped, N xfail`.
//!
//! A check ends in one of four ways:
//! - `ok <id> <title>[: detail]`: it passed;
//! - `FAIL <id> <title>: reason`: it failed;
//! - `skip <id> <title>: reason`: it could not run here (the kernel refused a step,
//!   with its errno, or the host offers no way to do it). Never a pass;
//! - `xfail <id> <title>: known kernel issue: reason`: it failed exactly as a kernel
//!   defect that is understood and documented (README, Limits) makes it fail. The
//!   check matches the defect's signature; any other failure is a `FAIL`, and once the
//!   kernel is fixed the check passes.
//!
//! The summary keeps the `N passed, N failed` prefix that scripts/run-vm and
//! scripts/e2e parse; only failures fail the run.
//!
//! The guest asks the host to act with a line `# <what>: waiting for the host`
//! ([`host_marker`]), which scripts/run-vm watches the console for: a hold point
//! (`hold-after <id>`: the host kills QEMU there) or a request (`host-request <n>
//! <verb>`: the host hot-unplugs or re-plugs the device, and the guest polls for it).

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Debug)]
pub struct Reporter {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub xfailed: u32,
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
            skipped: 0,
            xfailed: 0,
            lines: Vec::new(),
            hold_after: None,
            held: false,
            hold: hold_forever,
            suffix: String::new(),
        }
    }
}

/// A note that asks the host to act: `<what>: waiting for the host`.
pub fn host_marker(what: &str) -> String {
    format!("{what}: waiting for the host")
}

/// The line printed at the hold point: `# hold-after <id>: waiting for the host`.
pub fn hold_marker(id: &str) -> String {
    host_marker(&format!("hold-after {id}"))
}

/// Ask the host to act from inside a check: print
/// `# host-request <n> <verb>: waiting for the host` (the guest then polls for the
/// effect). Returns the line.
pub fn host_request(n: u32, verb: &str) -> String {
    let line = format!("# {}", host_marker(&format!("host-request {n} {verb}")));
    println!("{line}");
    let _ = std::io::stdout().flush();
    line
}

/// Block for good: the host ends the guest (run-vm's --kill-after, or its timeout).
pub fn hold_forever() {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Result of one check: Ok(detail) or Err(reason).
pub type Outcome = Result<String, String>;

/// Why a step did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPassed {
    Fail(String),
    /// It could not run here; the reason names what refused it.
    Skip(String),
    /// A documented kernel defect, recognised by its signature.
    KnownKernelIssue(String),
}

impl From<String> for NotPassed {
    fn from(s: String) -> Self {
        NotPassed::Fail(s)
    }
}

impl From<&str> for NotPassed {
    fn from(s: &str) -> Self {
        NotPassed::Fail(s.to_string())
    }
}

/// Result of one step: Ok(detail) or how it did not pass.
pub type StepOutcome = Result<String, NotPassed>;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
    Skipped,
    KnownKernelIssue,
}

fn panic_reason(p: Box<dyn std::any::Any + Send>) -> String {
    format!(
        "panic: {}",
        p.downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("?")
    )
}

impl Reporter {
    /// Run one check. A panic inside it fails the check with the panic message.
    pub fn check(&mut self, id: &str, title: &str, f: impl FnOnce() -> Outcome) -> bool {
        self.step(id, title, || f().map_err(NotPassed::Fail)) == Verdict::Passed
    }

    /// Run one check that may also be skipped or end in a known kernel issue.
    pub fn step(&mut self, id: &str, title: &str, f: impl FnOnce() -> StepOutcome) -> Verdict {
        let id = &format!("{id}{}", self.suffix);
        let r = catch_unwind(AssertUnwindSafe(f))
            .unwrap_or_else(|p| Err(NotPassed::Fail(panic_reason(p))));
        let (v, line) = match r {
            Ok(d) if d.is_empty() => (Verdict::Passed, format!("ok {id} {title}")),
            Ok(d) => (Verdict::Passed, format!("ok {id} {title}: {d}")),
            Err(NotPassed::Fail(e)) => (Verdict::Failed, format!("FAIL {id} {title}: {e}")),
            Err(NotPassed::Skip(e)) => (Verdict::Skipped, format!("skip {id} {title}: {e}")),
            Err(NotPassed::KnownKernelIssue(e)) => (
                Verdict::KnownKernelIssue,
                format!("xfail {id} {title}: known kernel issue: {e}"),
            ),
        };
        match v {
            Verdict::Passed => self.passed += 1,
            Verdict::Failed => self.failed += 1,
            Verdict::Skipped => self.skipped += 1,
            Verdict::KnownKernelIssue => self.xfailed += 1,
        }
        println!("{line}");
        let _ = std::io::stdout().flush();
        self.lines.push(line);
        if self.hold_after.as_deref() == Some(id) {
            self.held = true;
            self.note(&hold_marker(id));
            (self.hold)();
        }
        v
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
        format!(
            "{} passed, {} failed, {} skipped, {} xfail",
            self.passed, self.failed, self.skipped, self.xfailed
        )
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
        assert_eq!(r.summary(), "2 passed, 3 failed, 0 skipped, 0 xfail");
    }

    #[test]
    fn skips_and_known_issues_are_neither_passes_nor_failures() {
        let mut r = Reporter::default();
        let s = r.step("k.1", "reset", || {
            Err(NotPassed::Skip("kernel refused: EINVAL (22)".into()))
        });
        let x = r.step("k.2", "cycle", || {
            Err(NotPassed::KnownKernelIssue("stale commit_end".into()))
        });
        // a plain error converts to a failure
        let f = r.step("k.3", "other", || Err("broken".to_string().into()));
        let p = r.step("k.4", "fine", || Ok("done".into()));
        assert_eq!(
            [s, x, f, p],
            [
                Verdict::Skipped,
                Verdict::KnownKernelIssue,
                Verdict::Failed,
                Verdict::Passed
            ]
        );
        assert_eq!(r.lines[0], "skip k.1 reset: kernel refused: EINVAL (22)");
        assert_eq!(
            r.lines[1],
            "xfail k.2 cycle: known kernel issue: stale commit_end"
        );
        assert_eq!(r.lines[2], "FAIL k.3 other: broken");
        assert_eq!(r.lines[3], "ok k.4 fine: done");
        assert_eq!(
            host_request(1, "unplug"),
            "# host-request 1 unplug: waiting for the host"
        );
        let sum = r.summary();
        assert_eq!(sum, "1 passed, 1 failed, 1 skipped, 1 xfail");
        // scripts/run-vm and scripts/e2e read the first two counts with these
        // patterns: '^ *[0-9]+ passed, [0-9]+ failed' and 's/.* ([0-9]+) failed.*/\1/'
        let (p, rest) = sum.split_once(" passed, ").unwrap();
        let f = rest.split_once(" failed").unwrap().0;
        assert_eq!((p, f), ("1", "1"));
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
