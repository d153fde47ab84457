//! When to look at the remote heads: a standard 5-field cron expression or an
//! `@hourly`-style macro, read in an optional IANA time zone (like CronJob).
//!
//! Pure: every function takes the current time as an argument. After downtime the
//! controller checks once for the most recent missed time, never once per missed time.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Why a schedule cannot be used. The message is written into status as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error(
        "schedule {expr:?} is not a valid cron expression ({detail}); use 5 fields \
         (minute hour day-of-month month day-of-week) or @yearly, @monthly, @weekly, @daily, \
         @midnight, @hourly"
    )]
    InvalidExpression {
        /// The expression as written.
        expr: String,
        /// What the parser said.
        detail: String,
    },
    /// The expression parses but names a time that never comes (like 30 February).
    #[error("schedule {0:?} never fires")]
    NeverFires(String),
    /// The time zone is not in the IANA database.
    #[error("timeZone {0:?} is not a known IANA time zone (for example Europe/Berlin, UTC)")]
    UnknownTimeZone(String),
}

/// A parsed schedule with its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

/// What the schedule says at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The scheduled time that has come and not yet been acted on: the most recent
    /// one after the last schedule time (one catch-up after downtime), if any.
    pub due: Option<Timestamp>,
    /// The next scheduled time after now.
    pub next: Option<Timestamp>,
}

impl Schedule {
    /// Parses `expr` (5 fields or a macro) in `time_zone` (UTC when unset).
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let trimmed = expr.trim();
        // CronJob accepts @midnight as @daily; croner does not know the alias.
        let normalised = if trimmed.eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            trimmed
        };
        let invalid = |detail: String| ScheduleError::InvalidExpression {
            expr: expr.to_string(),
            detail,
        };
        if !normalised.starts_with('@') && normalised.split_whitespace().count() != 5 {
            return Err(invalid(format!(
                "{} fields instead of 5",
                normalised.split_whitespace().count()
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(normalised)
            .map_err(|e| invalid(e.to_string()))?;
        let tz = match time_zone.map(str::trim).filter(|z| !z.is_empty()) {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))?
            }
        };
        let schedule = Self { cron, tz };
        // A pattern such as "0 0 30 2 *" parses but never matches; say so now rather
        // than never checking.
        let probe = Timestamp::from_second(946_684_800).unwrap_or(Timestamp::UNIX_EPOCH);
        if schedule.next_after(probe).is_none() {
            return Err(ScheduleError::NeverFires(expr.to_string()));
        }
        Ok(schedule)
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = t.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last scheduled time at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = t.to_zoned(self.tz.clone());
        self.cron
            .find_previous_occurrence(&zoned, true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The schedule's view at `now`, given when it last fired (`status.lastScheduleTime`).
    /// Without a last time, the most recent scheduled time counts as due, so a new
    /// CodeSource is checked at once and its status gets a schedule time.
    pub fn tick(&self, last: Option<Timestamp>, now: Timestamp) -> Tick {
        let latest = self.latest_at_or_before(now);
        let due = match (latest, last) {
            (Some(latest), Some(last)) if latest > last => Some(latest),
            (Some(latest), None) => Some(latest),
            _ => None,
        };
        Tick {
            due,
            next: self.next_after(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_times_for_common_expressions() {
        let cases = [
            (
                "*/5 * * * *",
                None,
                "2026-03-01T10:02:00Z",
                "2026-03-01T10:05:00Z",
            ),
            (
                "0 * * * *",
                None,
                "2026-03-01T10:00:00Z",
                "2026-03-01T11:00:00Z",
            ),
            (
                "@hourly",
                None,
                "2026-03-01T10:59:59Z",
                "2026-03-01T11:00:00Z",
            ),
            (
                "@daily",
                None,
                "2026-03-01T10:00:00Z",
                "2026-03-02T00:00:00Z",
            ),
            (
                "@midnight",
                None,
                "2026-03-01T10:00:00Z",
                "2026-03-02T00:00:00Z",
            ),
            (
                "@weekly",
                None,
                "2026-03-04T10:00:00Z",
                "2026-03-08T00:00:00Z",
            ),
            (
                "@monthly",
                None,
                "2026-03-04T10:00:00Z",
                "2026-04-01T00:00:00Z",
            ),
            (
                "@yearly",
                None,
                "2026-03-04T10:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                "30 2 * * MON-FRI",
                None,
                "2026-03-06T03:00:00Z",
                "2026-03-09T02:30:00Z",
            ),
            // 02:00 in Berlin is 01:00 UTC in winter.
            (
                "0 2 * * *",
                Some("Europe/Berlin"),
                "2026-01-10T00:00:00Z",
                "2026-01-10T01:00:00Z",
            ),
            // ... and 00:00 UTC in summer.
            (
                "0 2 * * *",
                Some("Europe/Berlin"),
                "2026-07-10T00:30:00Z",
                "2026-07-11T00:00:00Z",
            ),
        ];
        for (expr, tz, now, want) in cases {
            let schedule = Schedule::parse(expr, tz).unwrap();
            assert_eq!(
                schedule.next_after(ts(now)),
                Some(ts(want)),
                "{expr} {tz:?} after {now}"
            );
        }
    }

    #[test]
    fn day_of_month_and_day_of_week_are_either_or_like_cron() {
        // Vixie cron: the 13th OR any Friday.
        let schedule = Schedule::parse("0 0 13 * FRI", None).unwrap();
        assert_eq!(
            schedule.next_after(ts("2026-03-01T00:00:00Z")),
            Some(ts("2026-03-06T00:00:00Z"))
        );
    }

    #[test]
    fn invalid_schedules_are_reported_clearly() {
        let cases = [
            ("", "not a valid cron expression"),
            ("* * * *", "4 fields instead of 5"),
            ("0 * * * * *", "6 fields instead of 5"),
            ("61 * * * *", "not a valid cron expression"),
            ("@sometimes", "not a valid cron expression"),
            ("0 0 30 2 *", "never fires"),
        ];
        for (expr, want) in cases {
            let err = Schedule::parse(expr, None).unwrap_err().to_string();
            assert!(err.contains(want), "{expr:?}: {err}");
        }
    }

    #[test]
    fn unknown_time_zones_are_reported() {
        let err = Schedule::parse("@hourly", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(err, ScheduleError::UnknownTimeZone("Mars/Olympus".into()));
        assert!(Schedule::parse("@hourly", Some("UTC")).is_ok());
    }

    #[test]
    fn given_downtime_over_many_slots_only_one_catch_up_is_due() {
        let schedule = Schedule::parse("*/5 * * * *", None).unwrap();
        // Last fired at 10:00, controller back at 11:02: twelve slots missed.
        let tick = schedule.tick(Some(ts("2026-03-01T10:00:00Z")), ts("2026-03-01T11:02:00Z"));
        assert_eq!(tick.due, Some(ts("2026-03-01T11:00:00Z")));
        assert_eq!(tick.next, Some(ts("2026-03-01T11:05:00Z")));
    }

    #[test]
    fn given_the_slot_was_already_handled_nothing_is_due() {
        let schedule = Schedule::parse("*/5 * * * *", None).unwrap();
        let tick = schedule.tick(Some(ts("2026-03-01T11:00:00Z")), ts("2026-03-01T11:04:59Z"));
        assert_eq!(tick.due, None);
        assert_eq!(tick.next, Some(ts("2026-03-01T11:05:00Z")));
    }

    #[test]
    fn given_no_last_time_the_latest_slot_is_due() {
        let schedule = Schedule::parse("@hourly", None).unwrap();
        let tick = schedule.tick(None, ts("2026-03-01T11:30:00Z"));
        assert_eq!(tick.due, Some(ts("2026-03-01T11:00:00Z")));
    }

    #[test]
    fn a_slot_exactly_now_is_due() {
        let schedule = Schedule::parse("@hourly", None).unwrap();
        let tick = schedule.tick(Some(ts("2026-03-01T10:00:00Z")), ts("2026-03-01T11:00:00Z"));
        assert_eq!(tick.due, Some(ts("2026-03-01T11:00:00Z")));
        assert_eq!(tick.next, Some(ts("2026-03-01T12:00:00Z")));
    }
}
