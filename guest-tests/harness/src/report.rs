//! One line per check on stdout, and the closing `N passed, N failed`.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Debug, Default)]
pub struct Reporter {
    pub passed: u32,
    pub failed: u32,
    /// Lines printed, for tests.
    pub lines: Vec<String>,
}

/// Result of one check: Ok(detail) or Err(reason).
pub type Outcome = Result<String, String>;

impl Reporter {
    /// Run one check. A panic inside it fails the check with the panic message.
    pub fn check(&mut self, id: &str, title: &str, f: impl FnOnce() -> Outcome) -> bool {
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
        ok
    }

    /// Free-form note (not a check), prefixed with `#`.
    pub fn note(&mut self, msg: &str) {
        println!("# {msg}");
        let _ = std::io::stdout().flush();
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
}
