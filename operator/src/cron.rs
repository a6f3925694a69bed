//! Cron schedules of DataLoads: five fields (minute hour day-of-month month
//! day-of-week) or a macro, in UTC, with CronJob's meaning: a day matches
//! when either day field does if both are restricted.

use k8s_openapi::jiff::civil::{DateTime, date};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(raw: &str, names: &[&str], first: u32) -> Option<u32> {
    if let Ok(n) = raw.parse() {
        return Some(n);
    }
    let upper = raw.to_ascii_uppercase();
    names
        .iter()
        .position(|n| *n == upper)
        .map(|i| i as u32 + first)
}

/// One field as a bit set over `min..=max`.
fn field(raw: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let bad = |why: &str| format!("{what} field {raw:?}: {why}");
    let mut set = 0u64;
    for item in raw.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad("step is not a positive number"))?,
            ),
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = value(a, names, min).ok_or_else(|| bad("not a number or name"))?;
            let b = value(b, names, min).ok_or_else(|| bad("not a number or name"))?;
            (a, b)
        } else {
            let a = value(range, names, min).ok_or_else(|| bad("not a number or name"))?;
            (a, if item.contains('/') { max } else { a })
        };
        if lo < min || hi > max || lo > hi {
            return Err(bad(&format!("values must be within {min}-{max}")));
        }
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Self, String> {
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "schedule {expr:?} needs five fields (minute hour day month weekday)"
            ));
        }
        let mut weekdays = field(f[4], "day-of-week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule {
            minutes: field(f[0], "minute", 0, 59, &[])?,
            hours: field(f[1], "hour", 0, 23, &[])?,
            days: field(f[2], "day-of-month", 1, 31, &[])?,
            months: field(f[3], "month", 1, 12, &MONTHS)?,
            weekdays,
            any_day: f[2] == "*" || f[2] == "?",
            any_weekday: f[4] == "*" || f[4] == "?",
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let day = self.days & (1 << dt.day()) != 0;
        let weekday = self.weekdays & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => day,
            (true, false) => weekday,
            (false, false) => day || weekday,
        }
    }

    /// The first scheduled minute strictly after `t`, if any within five
    /// years (`0 0 30 2 *` never comes).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(TimeZone::UTC).datetime();
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.year() + 5;
        while dt.year() <= limit {
            if self.months & (1 << dt.month()) == 0 {
                let (y, m) = if dt.month() == 12 {
                    (dt.year() + 1, 1)
                } else {
                    (dt.year(), dt.month() + 1)
                };
                dt = date(y, m, 1).at(0, 0, 0, 0);
                continue;
            }
            if !self.day_matches(dt) {
                dt = dt.date().checked_add(1.day()).ok()?.at(0, 0, 0, 0);
                continue;
            }
            if self.hours & (1 << dt.hour()) == 0 {
                dt = dt
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << dt.minute()) == 0 {
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            return dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
        }
        None
    }

    /// The latest scheduled time in `(after, now]`: a controller that was
    /// down over several runs starts one, for the most recent (CronJob).
    pub fn latest_due(&self, after: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let mut due = None;
        let mut t = after;
        // Bounded: a minutely schedule missed for a week is 10,080 steps.
        for _ in 0..20_000 {
            match self.next_after(t) {
                Some(n) if n <= now => {
                    due = Some(n);
                    t = n;
                }
                _ => break,
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_runs_follow_the_fields() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every5.next_after(ts("2026-01-01T10:02:30Z")),
            Some(ts("2026-01-01T10:05:00Z"))
        );
        assert_eq!(
            every5.next_after(ts("2026-01-01T10:05:00Z")),
            Some(ts("2026-01-01T10:10:00Z"))
        );
        let nightly = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            nightly.next_after(ts("2026-01-31T03:00:00Z")),
            Some(ts("2026-02-01T02:30:00Z"))
        );
        let mondays = Schedule::parse("0 9 * * MON").unwrap();
        // 2026-11-22 is a Sunday.
        assert_eq!(
            mondays.next_after(ts("2026-11-22T12:00:00Z")),
            Some(ts("2026-11-23T09:00:00Z"))
        );
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next_after(ts("2026-12-31T23:59:00Z")),
            Some(ts("2027-01-01T00:00:00Z"))
        );
        let either = Schedule::parse("0 0 13 * 5").unwrap();
        // The 13th (a Friday here) and every Friday.
        assert_eq!(
            either.next_after(ts("2026-11-01T00:00:00Z")),
            Some(ts("2026-11-06T00:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("0 0 30 2 *")
                .unwrap()
                .next_after(ts("2026-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn missed_runs_collapse_to_the_latest() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        assert_eq!(
            s.latest_due(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:45:00Z")),
            Some(ts("2026-01-01T10:40:00Z"))
        );
        assert_eq!(
            s.latest_due(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:09:59Z")),
            None
        );
    }

    #[test]
    fn bad_schedules_are_named() {
        assert!(
            Schedule::parse("* * * *")
                .unwrap_err()
                .contains("five fields")
        );
        assert!(
            Schedule::parse("61 * * * *")
                .unwrap_err()
                .contains("minute")
        );
        assert!(
            Schedule::parse("* * * FOO *")
                .unwrap_err()
                .contains("month")
        );
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("step"));
    }
}
