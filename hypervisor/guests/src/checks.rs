//! Check reporting shared by the guests that run several checks: one line per check,
//! `<guest>: PASS <what>` or `<guest>: FAIL <what> (<detail>)`, then a summary.

use core::fmt::Display;

/// Counts passed and failed checks and prints each.
#[derive(Debug, Default)]
pub struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    pub const fn new() -> Checks {
        Checks { passed: 0, failed: 0 }
    }

    pub fn pass(&mut self, what: impl Display) {
        crate::say!("PASS {what}");
        self.passed += 1;
    }

    pub fn fail(&mut self, what: impl Display, detail: impl Display) {
        crate::say!("FAIL {what} ({detail})");
        self.failed += 1;
    }

    /// Passes if `got == expected`, else fails with both in hex.
    pub fn expect_eq(&mut self, what: impl Display, got: u64, expected: u64) {
        if got == expected {
            self.pass(what);
        } else {
            self.fail(what, format_args!("got {got:#x}, expected {expected:#x}"));
        }
    }

    /// Prints `<guest>: <n> passed, <m> failed` and returns the test exit code: 0 if all
    /// passed, else 1.
    pub fn finish(self) -> u32 {
        crate::say!("{} passed, {} failed", self.passed, self.failed);
        u32::from(self.failed != 0)
    }
}
