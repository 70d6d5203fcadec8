//! The runner's output: one line per check as soon as it finishes, then the tally.
//!
//! The format is a contract with scripts and CI logs:
//! `ok   <group>/<name>` or `FAIL <group>/<name>: <reason>`, reasons on one line, and a last
//! line `N passed, N failed`.

use std::io::Write as _;

/// Counts results and prints each as it arrives.
#[derive(Default)]
pub struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    /// Prints and counts the result of the check `name` (`group/check`).
    pub fn record(&mut self, name: &str, result: anyhow::Result<()>) {
        let line = match result {
            Ok(()) => {
                self.passed += 1;
                format!("ok   {name}")
            }
            Err(e) => {
                self.failed += 1;
                let reason: String = format!("{e:#}")
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                format!("FAIL {name}: {reason}")
            }
        };
        print_line(&line);
    }

    /// Checks that passed.
    pub fn passed(&self) -> usize {
        self.passed
    }

    /// Checks that failed.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// The last line: `N passed, N failed`.
    pub fn tally(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed)
    }
}

/// Prints a line and flushes it (a long run against a slow registry should show progress,
/// even when piped). A closed stdout (`| head`) is not worth a panic: the exit status still
/// tells the result.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
