//! The CronJob controller: creates a Job from `jobTemplate` at each scheduled time (the most
//! recent one if several were missed), honours `suspend` and `concurrencyPolicy`
//! (Allow/Forbid/Replace), keeps `successfulJobsHistoryLimit`/`failedJobsHistoryLimit`
//! finished Jobs, and reports `lastScheduleTime`, `lastSuccessfulTime` and `active`.
//!
//! Schedules: the five cron fields (numbers, names, `*`, ranges, lists, `/step`; day of month
//! and day of week match either when both are restricted), `@yearly`/`@annually`,
//! `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`, in UTC; and, a simulator
//! extension for fast tests, `@every <n>s|m|h`.

use serde_json::{Value, json};

use super::{list_all, owned_by, rt, s, set_status, terminating};
use crate::{
    store::{Propagation, Store},
    time,
};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Cron {
        minutes: Vec<bool>,
        hours: Vec<bool>,
        days: Vec<bool>,
        months: Vec<bool>,
        weekdays: Vec<bool>,
        days_star: bool,
        weekdays_star: bool,
    },
    Every(i64),
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<bool>, String> {
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| v.eq_ignore_ascii_case(n)) {
            return Ok(i as u32 + min);
        }
        let n: u32 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
        // Day of week 7 is Sunday too.
        let n = if max == 6 && n == 7 { 0 } else { n };
        if n < min || n > max {
            return Err(format!("{n} is out of {min}-{max}"));
        }
        Ok(n)
    };
    let mut set = vec![false; max as usize + 1];
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, st)) => (
                r,
                st.parse::<u32>()
                    .map_err(|_| format!("bad step in {item:?}"))?,
            ),
            None => (item, 1),
        };
        if step == 0 {
            return Err(format!("step 0 in {item:?}"));
        }
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, max),
                None => (value(r)?, value(r)?),
            },
        };
        let mut v = lo;
        while v <= hi {
            set[v as usize] = true;
            v += step;
        }
    }
    Ok(set)
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let spec = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        if let Some(every) = spec.strip_prefix("@every ") {
            let every = every.trim();
            let (n, unit) = every.split_at(every.len().saturating_sub(1));
            let n: i64 = n.parse().map_err(|_| format!("bad @every {every:?}"))?;
            let secs = match unit {
                "s" => n,
                "m" => n * 60,
                "h" => n * 3600,
                _ => return Err(format!("bad @every unit in {every:?} (s, m or h)")),
            };
            return if secs > 0 {
                Ok(Self::Every(secs))
            } else {
                Err("@every needs a positive duration".into())
            };
        }
        let f: Vec<&str> = spec.split_whitespace().collect();
        let [min, hour, dom, mon, dow] = f.as_slice() else {
            return Err(format!("{spec:?} does not have 5 fields"));
        };
        Ok(Self::Cron {
            minutes: field(min, 0, 59, &[])?,
            hours: field(hour, 0, 23, &[])?,
            days: field(dom, 1, 31, &[])?,
            months: field(mon, 1, 12, &MONTHS)?,
            weekdays: field(dow, 0, 6, &WEEKDAYS)?,
            days_star: dom.starts_with('*'),
            weekdays_star: dow.starts_with('*'),
        })
    }

    /// The first scheduled time strictly after `t` (seconds since the epoch, UTC).
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let Self::Cron {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_star,
            weekdays_star,
        } = self
        else {
            let Self::Every(secs) = self else {
                return None;
            };
            return Some(t + secs);
        };
        let mut t = (t.div_euclid(60) + 1) * 60;
        // Five years of days at most: enough for any satisfiable schedule (Feb 29 included).
        for _ in 0..(5 * 366 * 24 * 60) {
            let day_number = t.div_euclid(86_400);
            let (y, m, d) = time::civil_from_days(day_number);
            if !months[m as usize] {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                t = time::days_from_civil(ny, i64::from(nm), 1) * 86_400;
                continue;
            }
            // 1970-01-01 was a Thursday (4).
            let weekday = (day_number + 4).rem_euclid(7) as usize;
            let dom_ok = days[d as usize];
            let dow_ok = weekdays[weekday];
            let day_ok = match (days_star, weekdays_star) {
                (false, false) => dom_ok || dow_ok,
                (true, false) => dow_ok,
                (false, true) => dom_ok,
                (true, true) => true,
            };
            if !day_ok {
                t = (day_number + 1) * 86_400;
                continue;
            }
            let secs = t.rem_euclid(86_400);
            let (hour, minute) = ((secs / 3600) as usize, ((secs % 3600) / 60) as usize);
            if !hours[hour] {
                t = (t.div_euclid(3600) + 1) * 3600;
                continue;
            }
            if !minutes[minute] {
                t += 60;
                continue;
            }
            return Some(t);
        }
        None
    }
}

fn finished(job: &Value) -> Option<&'static str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["status"] == json!("True") && matches!(s(&c["type"]), "Complete" | "Failed"))
        .map(|c| {
            if s(&c["type"]) == "Complete" {
                "Complete"
            } else {
                "Failed"
            }
        })
}

pub(super) fn reconcile(store: &Store) {
    let cj_rt = rt(store, "batch", "cronjobs");
    let job_rt = rt(store, "batch", "jobs");
    let jobs = list_all(store, &job_rt);
    let now = time::now_secs();
    for cj in list_all(store, &cj_rt) {
        if terminating(&cj) {
            continue;
        }
        let ns = s(&cj["metadata"]["namespace"]).to_owned();
        let name = s(&cj["metadata"]["name"]).to_owned();
        let mut mine: Vec<&Value> = owned_by(&jobs, &cj);
        mine.retain(|j| !terminating(j));
        let Ok(schedule) = Schedule::parse(s(&cj["spec"]["schedule"])) else {
            continue;
        };
        let last = time::parse_rfc3339(s(&cj["status"]["lastScheduleTime"]))
            .or_else(|| time::parse_rfc3339(s(&cj["metadata"]["creationTimestamp"])))
            .unwrap_or(now);
        // The most recent scheduled time not after now (missed ones are skipped).
        let mut due = None;
        let mut t = last;
        while let Some(next) = schedule.next_after(t).filter(|n| *n <= now) {
            due = Some(next);
            t = next;
        }
        let active: Vec<&&Value> = mine.iter().filter(|j| finished(j).is_none()).collect();
        let policy = s(&cj["spec"]["concurrencyPolicy"]);
        let mut last_schedule = cj["status"]["lastScheduleTime"].clone();
        // A run more than startingDeadlineSeconds late is missed, not started.
        let too_late = |due: i64| {
            cj["spec"]["startingDeadlineSeconds"]
                .as_i64()
                .is_some_and(|deadline| now > due + deadline)
        };
        if let Some(due) = due
            && !too_late(due)
            && cj["spec"]["suspend"] != json!(true)
            && (policy != "Forbid" || active.is_empty())
        {
            if policy == "Replace" {
                for j in &active {
                    let _ = store.delete(
                        &job_rt,
                        Some(&ns),
                        s(&j["metadata"]["name"]),
                        Propagation::Background,
                        false,
                    );
                }
            }
            let suffix = if matches!(schedule, Schedule::Every(_)) {
                due
            } else {
                due / 60
            };
            let template = &cj["spec"]["jobTemplate"];
            let mut annotations = template["metadata"]["annotations"].clone();
            if !annotations.is_object() {
                annotations = json!({});
            }
            annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] =
                json!(time::rfc3339(due));
            let job = json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {
                    "name": format!("{name}-{suffix}"), "namespace": ns,
                    "labels": template["metadata"]["labels"], "annotations": annotations,
                    "ownerReferences": super::owner_ref(&cj),
                },
                "spec": template["spec"],
            });
            let _ = store.create(&job_rt, Some(&ns), job, false);
            last_schedule = json!(time::rfc3339(due));
        }
        // History limits, oldest first.
        for (kind, limit) in [
            (
                "Complete",
                cj["spec"]["successfulJobsHistoryLimit"]
                    .as_u64()
                    .unwrap_or(3),
            ),
            (
                "Failed",
                cj["spec"]["failedJobsHistoryLimit"].as_u64().unwrap_or(1),
            ),
        ] {
            let mut done: Vec<&&Value> =
                mine.iter().filter(|j| finished(j) == Some(kind)).collect();
            done.sort_by_key(|j| {
                (
                    s(&j["metadata"]["creationTimestamp"]).to_owned(),
                    s(&j["metadata"]["resourceVersion"])
                        .parse::<u64>()
                        .unwrap_or(0),
                )
            });
            let excess = done.len().saturating_sub(limit as usize);
            for j in &done[..excess] {
                let _ = store.delete(
                    &job_rt,
                    Some(&ns),
                    s(&j["metadata"]["name"]),
                    Propagation::Background,
                    false,
                );
            }
        }
        let last_success = mine
            .iter()
            .filter(|j| finished(j) == Some("Complete"))
            .filter_map(|j| j["status"]["completionTime"].as_str().map(str::to_owned))
            .max()
            .map(Value::from)
            .unwrap_or_else(|| cj["status"]["lastSuccessfulTime"].clone());
        let mut status = json!({
            "active": active.iter().map(|j| json!({
                "kind": "Job", "apiVersion": "batch/v1", "namespace": ns,
                "name": j["metadata"]["name"], "uid": j["metadata"]["uid"],
            })).collect::<Vec<_>>(),
        });
        if !last_schedule.is_null() {
            status["lastScheduleTime"] = last_schedule;
        }
        if !last_success.is_null() {
            status["lastSuccessfulTime"] = last_success;
        }
        if status["active"] == json!([]) {
            status.as_object_mut().map(|o| o.remove("active"));
        }
        set_status(store, &cj_rt, &cj, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        time::days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60
    }

    #[test]
    fn next_times() {
        let every_5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every_5.next_after(at(2026, 3, 1, 10, 2)),
            Some(at(2026, 3, 1, 10, 5))
        );
        let nightly = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            nightly.next_after(at(2026, 3, 1, 10, 2)),
            Some(at(2026, 3, 2, 2, 30))
        );
        // 2026-03-02 is a Monday.
        let mondays = Schedule::parse("0 9 * * mon").unwrap();
        assert_eq!(
            mondays.next_after(at(2026, 3, 2, 9, 0)),
            Some(at(2026, 3, 9, 9, 0))
        );
        let leap = Schedule::parse("0 0 29 feb *").unwrap();
        assert_eq!(
            leap.next_after(at(2026, 1, 1, 0, 0)),
            Some(at(2028, 2, 29, 0, 0))
        );
        let either = Schedule::parse("0 0 13 * fri").unwrap();
        // 2026-03-06 is a Friday, before the 13th.
        assert_eq!(
            either.next_after(at(2026, 3, 1, 0, 0)),
            Some(at(2026, 3, 6, 0, 0))
        );
        assert_eq!(
            Schedule::parse("@hourly")
                .unwrap()
                .next_after(at(2026, 3, 1, 10, 2)),
            Some(at(2026, 3, 1, 11, 0))
        );
        assert_eq!(Schedule::parse("@every 2s").unwrap(), Schedule::Every(2));
        assert!(Schedule::parse("* * *").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
    }
}
