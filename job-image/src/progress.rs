//! Progress lines for `kubectl logs`: one readable line per finished step, with what was
//! done, sizes and the time it took.
//!
//! ```text
//! list     https://git.example.com/control.git: 12 branches, 8 selected (0.21s)
//! fetch    https://git.example.com/control.git: 8 refs, 41.2 MiB received (2.31s)
//! module   stdlib 9.6.0 from the Forge: 1.10 MiB (0.40s)
//! env      production: 3,014 files, 40.1 MiB, 20 modules (0.52s)
//! write    production -> .versions/production/1a2b3c4d5e6f-0f1e2d3c4b5a (0.33s)
//! ```

use std::fmt::Display;
use std::time::{Duration, Instant};

/// A step being timed.
#[derive(Debug)]
pub struct Step {
    name: &'static str,
    subject: String,
    started: Instant,
}

impl Step {
    /// Starts timing step `name` (a short verb) on `subject`.
    pub fn start(name: &'static str, subject: impl Display) -> Self {
        Self {
            name,
            subject: subject.to_string(),
            started: Instant::now(),
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Logs the finished step with `detail`.
    pub fn done(self, detail: impl Display) {
        tracing::info!(
            "{}",
            line(
                self.name,
                &self.subject,
                &detail.to_string(),
                self.started.elapsed()
            )
        );
    }

    /// Logs the failed step with its reason.
    pub fn failed(self, reason: impl Display) {
        tracing::warn!(
            "{}",
            line(
                self.name,
                &self.subject,
                &format!("FAILED: {reason}"),
                self.started.elapsed()
            )
        );
    }
}

/// Formats one progress line.
pub fn line(name: &str, subject: &str, detail: &str, elapsed: Duration) -> String {
    if detail.is_empty() {
        format!("{name:<8} {subject} ({})", seconds(elapsed))
    } else {
        format!("{name:<8} {subject}: {detail} ({})", seconds(elapsed))
    }
}

/// `0.21s`, `12.3s`, `2m05s`.
pub fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.2}s")
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// `3,014`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_well() {
        assert_eq!(
            line(
                "fetch",
                "git://h/r",
                "8 branches",
                Duration::from_millis(2310)
            ),
            "fetch    git://h/r: 8 branches (2.31s)"
        );
        assert_eq!(
            line("purge", "old", "", Duration::from_millis(5)),
            "purge    old (0.01s)"
        );
        assert_eq!(seconds(Duration::from_secs(125)), "2m05s");
        assert_eq!(seconds(Duration::from_millis(12_340)), "12.3s");
    }

    #[test]
    fn counts_have_separators() {
        for (n, want) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (3014, "3,014"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(count(n), want);
        }
    }
}
