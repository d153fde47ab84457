//! Failed attempts per client address: a sender whose hooks keep failing
//! authentication (or keep naming CodeSources that do not exist) is answered 429 for
//! the rest of the window without any work, so a flood of forged hooks costs neither
//! API requests nor signature checks. Pure bookkeeping, the clock is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts allowed per address and window. A Git host retrying a misconfigured
/// hook sends a handful per minute; a flood sends hundreds per second.
pub const MAX_FAILURES: u32 = 20;
/// The window the failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; beyond, windows that ended are forgotten first, then
/// the whole table (a spoofed-source flood cannot grow memory without bound).
const MAX_ADDRESSES: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failures per address in the current window.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl FailureLimiter {
    /// `Some(wait)` when `addr` used up its failures: answer 429 and say when to retry.
    pub fn blocked(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = windows.get(&addr)?;
        let ends = window.started + WINDOW;
        (window.failures >= MAX_FAILURES && now < ends).then(|| ends - now)
    }

    /// Counts one failed attempt of `addr`.
    pub fn failed(&self, addr: IpAddr, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_ADDRESSES && !windows.contains_key(&addr) {
            windows.retain(|_, w| now < w.started + WINDOW);
            if windows.len() >= MAX_ADDRESSES {
                windows.clear();
            }
        }
        let window = windows.entry(addr).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= window.started + WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn an_address_is_blocked_after_its_failures_until_the_window_ends() {
        let limiter = FailureLimiter::default();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            limiter.failed(addr(1), t0);
        }
        assert_eq!(limiter.blocked(addr(1), t0), None, "one failure left");
        limiter.failed(addr(1), t0);
        assert_eq!(limiter.blocked(addr(1), t0), Some(WINDOW));
        let later = t0 + Duration::from_secs(45);
        assert_eq!(
            limiter.blocked(addr(1), later),
            Some(Duration::from_secs(15))
        );
        // Others are not affected.
        assert_eq!(limiter.blocked(addr(2), t0), None);
        // A new window starts clean.
        let next = t0 + WINDOW;
        assert_eq!(limiter.blocked(addr(1), next), None);
        limiter.failed(addr(1), next);
        assert_eq!(limiter.blocked(addr(1), next), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let limiter = FailureLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        let len = limiter.windows.lock().unwrap().len();
        assert!(len <= MAX_ADDRESSES, "{len}");
    }
}
