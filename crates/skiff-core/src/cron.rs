//! Cron schedules: the standard five fields (minute, hour, day of month, month, day of
//! week) with lists, ranges, steps and names, `?` for "any", and the `@hourly`-style
//! macros; next run times computed in a time zone.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{ToSpan, Zoned};

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether day-of-month / day-of-week were `*` or `?`: when both are restricted a day
    /// matches either (as in Vixie cron).
    any_day: bool,
    any_weekday: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule {schedule:?}: {reason}")]
pub struct CronError {
    pub schedule: String,
    pub reason: String,
}

const MONTHS: &[&str] = &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(text: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Result<(u64, bool), String> {
    if text == "*" || text == "?" {
        return Ok(((min..=max).fold(0, |b, v| b | 1 << v), true));
    }
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + name_base);
        }
        s.parse::<u32>().map_err(|_| format!("{s:?} is not a number or name"))
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("step {s:?} is not a number"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err("a step of 0 never advances".into());
        }
        let (lo, hi) = match range {
            "*" | "?" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if part.contains('/') => (value(r)?, max),
                None => (value(r)?, value(r)?),
            },
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{part:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, false))
}

impl Schedule {
    pub fn parse(schedule: &str) -> Result<Schedule, CronError> {
        let err = |reason: String| CronError { schedule: schedule.into(), reason };
        let expanded = match schedule.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(err(format!("unknown macro {s:?}"))),
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!("expected 5 fields (minute hour day-of-month month day-of-week), found {}", fields.len())));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[], 0).map_err(err)?;
        let (hours, _) = field(fields[1], 0, 23, &[], 0).map_err(err)?;
        let (days, any_day) = field(fields[2], 1, 31, &[], 0).map_err(err)?;
        let (months, _) = field(fields[3], 1, 12, MONTHS, 1).map_err(err)?;
        let (mut weekdays, any_weekday) = field(fields[4], 0, 7, WEEKDAYS, 0).map_err(err)?;
        // 7 is Sunday too.
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule { minutes, hours: hours as u32, days: days as u32, months: months as u16, weekdays: (weekdays & 0x7f) as u8, any_day, any_weekday })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first run strictly after `after`, in `after`'s time zone; None if there is none
    /// within five years (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: &Zoned) -> Option<Zoned> {
        let tz: TimeZone = after.time_zone().clone();
        let start = after.datetime().checked_add(1.minute()).ok()?;
        let mut t = DateTime::new(start.year(), start.month(), start.day(), start.hour(), start.minute(), 0, 0).ok()?;
        let limit = t.checked_add(5.years()).ok()?;
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                let first = t.date().first_of_month().checked_add(1.month()).ok()?;
                t = first.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = DateTime::new(t.year(), t.month(), t.day(), t.hour(), 0, 0, 0).ok()?.checked_add(1.hour()).ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let z = tz.to_ambiguous_zoned(t).compatible().ok()?;
            if z > *after {
                return Some(z);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str, tz: &str) -> Zoned {
        s.parse::<DateTime>().unwrap().to_zoned(TimeZone::get(tz).unwrap()).unwrap()
    }

    #[test]
    fn fields_ranges_steps_names() {
        let s = Schedule::parse("*/15 9-17 * JAN-mar mon-fri").unwrap();
        let next = s.next_after(&at("2026-01-02T17:50", "UTC")).unwrap();
        assert_eq!(next.datetime().to_string(), "2026-01-05T09:00:00");
        let s = Schedule::parse("@hourly").unwrap();
        assert_eq!(s.next_after(&at("2026-01-02T17:50", "UTC")).unwrap().datetime().to_string(), "2026-01-02T18:00:00");
        let s = Schedule::parse("0 0 13 * 5").unwrap(); // the 13th or any Friday
        assert_eq!(s.next_after(&at("2026-02-01T00:00", "UTC")).unwrap().date().to_string(), "2026-02-06");
        assert!(Schedule::parse("0 0 30 2 *").unwrap().next_after(&at("2026-01-01T00:00", "UTC")).is_none());
    }

    #[test]
    fn time_zones() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        // 02:30 does not exist on 2026-03-08 in New York; it runs at 03:30 local.
        let next = s.next_after(&at("2026-03-07T03:00", "America/New_York")).unwrap();
        assert_eq!(next.datetime().to_string(), "2026-03-08T03:30:00");
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(Schedule::parse("* * *").unwrap_err().reason.contains("expected 5 fields"));
        assert!(Schedule::parse("61 * * * *").unwrap_err().reason.contains("outside"));
        assert!(Schedule::parse("*/0 * * * *").is_err());
        assert!(Schedule::parse("@sometimes").is_err());
        assert!(Schedule::parse("0 0 * FOO *").is_err());
    }
}
