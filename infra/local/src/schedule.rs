//! EventBridge schedule expressions, as the host fires them: `rate(value unit)`, `cron(min hour dom month dow year)`
//! (the AWS six-field form, UTC) and Scheduler's one-time `at(yyyy-mm-ddThh:mm:ss)`.
//!
//! The cron subset covers `*`, `?`, values, names (`JAN`, `MON`), ranges, lists and `/` steps. The `L`, `W` and
//! `#` forms are rejected at start-up rather than fired at the wrong time.

use chrono::{DateTime, Datelike, Duration as TimeDelta, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every period, the first one period after start-up.
    Rate(Duration),
    Cron(Cron),
    /// Once, at this instant (skipped when it has passed).
    At(DateTime<Utc>),
}

/// A parsed AWS cron expression: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    /// `None` when the field is `?`.
    days_of_month: Option<Vec<bool>>,
    months: Vec<bool>,
    /// 1 = Sunday .. 7 = Saturday; `None` when the field is `?`.
    days_of_week: Option<Vec<bool>>,
    years: Vec<bool>,
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const FIRST_YEAR: u32 = 1970;
const LAST_YEAR: u32 = 2199;

impl Schedule {
    pub fn parse(expression: &str) -> Result<Self, String> {
        let expression = expression.trim();
        let inner = |prefix: &str| expression.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(')'));
        if let Some(body) = inner("rate(") {
            return parse_rate(body).map(Schedule::Rate);
        }
        if let Some(body) = inner("cron(") {
            return Cron::parse(body).map(Schedule::Cron);
        }
        if let Some(body) = inner("at(") {
            let at = NaiveDateTime::parse_from_str(body.trim(), "%Y-%m-%dT%H:%M:%S")
                .map_err(|_| format!("`{expression}`: expected at(yyyy-mm-ddThh:mm:ss)"))?;
            return Ok(Schedule::At(Utc.from_utc_datetime(&at)));
        }
        Err(format!(
            "`{expression}` is not a schedule expression keel-local can fire; expected rate(...), cron(...) or at(...)"
        ))
    }

    /// The first firing strictly after `after`, for schedules that fire at wall-clock instants (`None` for a rate,
    /// which fires relative to start-up, or when nothing is left to fire).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Rate(_) => None,
            Schedule::Cron(cron) => cron.next_after(after),
            Schedule::At(at) => (*at > after).then_some(*at),
        }
    }
}

fn parse_rate(body: &str) -> Result<Duration, String> {
    let bad = || format!("`rate({body})`: expected rate(<positive integer> minute(s)|hour(s)|day(s))");
    let mut parts = body.split_whitespace();
    let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let value: u64 = value.parse().ok().filter(|v| *v > 0).ok_or_else(bad)?;
    let seconds = match unit {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return Err(bad()),
    };
    // EventBridge insists on the singular for 1 and the plural otherwise.
    if (value == 1) == unit.ends_with('s') {
        return Err(format!("`rate({body})`: use the singular unit for 1 and the plural otherwise"));
    }
    Ok(Duration::from_secs(value.saturating_mul(seconds)))
}

impl Cron {
    pub fn parse(body: &str) -> Result<Self, String> {
        let fields: Vec<&str> = body.split_whitespace().collect();
        let [minutes, hours, dom, month, dow, year] = fields[..] else {
            return Err(format!(
                "`cron({body})`: expected six fields: minutes hours day-of-month month day-of-week year"
            ));
        };
        let at = |name: &str, e: String| format!("`cron({body})` {name}: {e}");
        let days_of_month =
            if dom == "?" { None } else { Some(field(dom, 1, 31, &[]).map_err(|e| at("day-of-month", e))?) };
        let days_of_week =
            if dow == "?" { None } else { Some(field(dow, 1, 7, &DAYS).map_err(|e| at("day-of-week", e))?) };
        if days_of_month.is_some() == days_of_week.is_some() {
            return Err(format!("`cron({body})`: exactly one of day-of-month and day-of-week must be `?`"));
        }
        Ok(Self {
            minutes: field(minutes, 0, 59, &[]).map_err(|e| at("minutes", e))?,
            hours: field(hours, 0, 23, &[]).map_err(|e| at("hours", e))?,
            days_of_month,
            months: field(month, 1, 12, &MONTHS).map_err(|e| at("month", e))?,
            days_of_week,
            years: field(year, FIRST_YEAR, LAST_YEAR, &[]).map_err(|e| at("year", e))?,
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let allowed = |set: &Vec<bool>, v: u32| set.get(v as usize).copied().unwrap_or(false);
        allowed(&self.months, date.month())
            && allowed(&self.years, date.year().try_into().unwrap_or(0))
            && match (&self.days_of_month, &self.days_of_week) {
                (Some(dom), _) => allowed(dom, date.day()),
                (None, Some(dow)) => allowed(dow, date.weekday().num_days_from_sunday() + 1),
                (None, None) => false,
            }
    }

    /// The first matching minute strictly after `after`, searching up to ten years ahead.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + TimeDelta::minutes(1);
        let mut date = start.date_naive();
        let limit = date + TimeDelta::days(3660);
        while date <= limit {
            if self.day_matches(date) {
                for hour in (0..24).filter(|h| self.hours[*h as usize]) {
                    for minute in (0..60).filter(|m| self.minutes[*m as usize]) {
                        let candidate = Utc.from_utc_datetime(&date.and_hms_opt(hour, minute, 0)?);
                        if candidate >= start {
                            return Some(candidate);
                        }
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }
}

/// One cron field as a table of allowed values, indexed by value.
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<bool>, String> {
    let mut allowed = vec![false; max as usize + 1];
    let value = |raw: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(raw)) {
            return Ok(min + i as u32);
        }
        raw.parse::<u32>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| format!("`{raw}` is not a value from {min} to {max}"))
    };
    for part in text.split(',') {
        let upper = part.to_ascii_uppercase();
        let numbered = |suffix: char| {
            upper.strip_suffix(suffix).is_some_and(|rest| rest.is_empty() || rest.chars().all(|c| c.is_ascii_digit()))
        };
        if upper.contains('#') || upper == "LW" || numbered('L') || numbered('W') {
            return Err(format!("`{part}`: the L, W and # forms are not supported by keel-local"));
        }
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().ok().filter(|s| *s > 0).ok_or_else(|| format!("`{part}` has a bad step"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `5/15` means from 5 to the end, every 15.
                None if part.contains('/') => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if from > to {
            return Err(format!("`{part}`: the range runs backwards"));
        }
        for v in (from..=to).step_by(step as usize) {
            allowed[v as usize] = true;
        }
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rates_parse_with_eventbridge_units() {
        assert_eq!(Schedule::parse("rate(1 minute)").unwrap(), Schedule::Rate(Duration::from_secs(60)));
        assert_eq!(Schedule::parse("rate(5 minutes)").unwrap(), Schedule::Rate(Duration::from_secs(300)));
        assert_eq!(Schedule::parse("rate(2 hours)").unwrap(), Schedule::Rate(Duration::from_secs(7200)));
        assert_eq!(Schedule::parse("rate(1 day)").unwrap(), Schedule::Rate(Duration::from_secs(86_400)));
        for bad in
            ["rate(0 minutes)", "rate(1 minutes)", "rate(5 minute)", "rate(5 weeks)", "rate(five minutes)", "rate()"]
        {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_expressions_are_rejected() {
        for bad in
            ["every 5 minutes", "cron(* * * * *)", "cron(0 12 * * * *)", "cron(0 12 L * ? *)", "cron(0 12 ? * 6#3 *)"]
        {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_finds_the_next_matching_minute() {
        let daily = Schedule::parse("cron(15 10 * * ? *)").unwrap();
        assert_eq!(daily.next_after(at("2026-03-01T09:00:00Z")), Some(at("2026-03-01T10:15:00Z")));
        assert_eq!(daily.next_after(at("2026-03-01T10:15:00Z")), Some(at("2026-03-02T10:15:00Z")));
        let every_5 = Schedule::parse("cron(0/5 * * * ? *)").unwrap();
        assert_eq!(every_5.next_after(at("2026-03-01T09:07:30Z")), Some(at("2026-03-01T09:10:00Z")));
        // Weekdays at 18:00: 2026-03-06 is a Friday, so the next after Friday evening is Monday.
        let weekdays = Schedule::parse("cron(0 18 ? * MON-FRI *)").unwrap();
        assert_eq!(weekdays.next_after(at("2026-03-06T18:30:00Z")), Some(at("2026-03-09T18:00:00Z")));
        let sundays = Schedule::parse("cron(0 0 ? * 1 *)").unwrap();
        assert_eq!(sundays.next_after(at("2026-03-02T00:00:00Z")), Some(at("2026-03-08T00:00:00Z")));
        let past = Schedule::parse("cron(0 0 1 JAN ? 2020)").unwrap();
        assert_eq!(past.next_after(at("2026-03-01T00:00:00Z")), None);
    }

    #[test]
    fn at_fires_once_in_the_future() {
        let once = Schedule::parse("at(2030-01-02T03:04:05)").unwrap();
        assert_eq!(once.next_after(at("2029-01-01T00:00:00Z")), Some(at("2030-01-02T03:04:05Z")));
        assert_eq!(once.next_after(at("2030-01-02T03:04:05Z")), None);
    }
}
