//! The conditions of `deploy/prometheus/alerts.yml`, evaluated in the process from what its
//! metrics and health say ([`Observed`], read by [`observe`]): [`Evaluator::findings`] is pure,
//! given an observation and the time.

use std::collections::BTreeMap;
use std::time::Duration;

use super::notify::{Finding, Key, Kind};
use crate::health::health;
use crate::metrics::{metrics, Role};

/// Added to three reconciliation intervals before a late pass fires (a pass takes time too).
pub const RECONCILE_SLACK: Duration = Duration::from_secs(60);

/// The detector whose passes must complete within their interval.
pub const RECONCILE: &str = "reconcile";

/// At most this many readiness problems are spelled out in one line.
const PROBLEMS_SHOWN: usize = 3;

/// What the process's metrics and health say, now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Lag in seconds of each (table, partition) this consumer applies.
    pub lags: Vec<(String, f64)>,
    /// Why the process is not ready (`/readyz`); empty when ready.
    pub problems: Vec<String>,
    /// Entries this process wrote to each table's DLQ since it started.
    pub dlq_written: BTreeMap<String, u64>,
    /// Pending entries of each table's DLQ.
    pub dlq_pending: BTreeMap<String, i64>,
    /// Seconds since the last complete pass of each (table, detector).
    pub pass_ages: BTreeMap<(String, String), f64>,
    /// The configured interval in seconds of each (table, detector).
    pub intervals: BTreeMap<(String, String), f64>,
    /// Stopped tables (or stages), with why when known.
    pub stopped: BTreeMap<String, Option<String>>,
}

/// Reads the process's metrics and health.
pub fn observe() -> Observed {
    let m = metrics();
    let mut stopped: BTreeMap<String, Option<String>> =
        m.stopped_tables().into_iter().map(|t| (t, None)).collect();
    for (stage, reason) in health().stopped() {
        // a stage is named after its table: `public.media/reconcile`
        let table = stage.split('/').next().unwrap_or(&stage).to_string();
        stopped.insert(table, Some(reason));
    }
    Observed {
        lags: m
            .lags()
            .into_iter()
            .map(|(labels, lag)| (labels.table, lag))
            .collect(),
        problems: health().readiness().problems,
        dlq_written: m.dlq_written_by_table(),
        dlq_pending: m.dlq_pending_by_table(),
        pass_ages: m
            .pass_ages()
            .into_iter()
            .map(|(l, age)| ((l.table, l.detector), age))
            .collect(),
        intervals: m
            .detector_intervals()
            .into_iter()
            .map(|(l, s)| ((l.table, l.detector), s))
            .collect(),
        stopped,
    }
}

/// Evaluates the conditions of one role check after check (the DLQ's growth is measured from
/// the previous check).
pub struct Evaluator {
    role: Role,
    lag_above_s: u64,
    previous_written: BTreeMap<String, u64>,
    previous_pending: Option<BTreeMap<String, i64>>,
    /// When a detector without any pass yet was first seen.
    first_seen: BTreeMap<(String, String), Duration>,
}

impl Evaluator {
    pub fn new(role: Role, lag_above_s: u64) -> Self {
        Self {
            role,
            lag_above_s,
            // the counters start at zero with the process
            previous_written: BTreeMap::new(),
            previous_pending: None,
            first_seen: BTreeMap::new(),
        }
    }

    /// The conditions firing in `now`'s observation (`now`: time since any fixed start).
    pub fn findings(&mut self, obs: &Observed, now: Duration) -> Vec<Finding> {
        let mut out = Vec::new();
        if !obs.problems.is_empty() {
            out.push(not_ready(&obs.problems));
        }
        for (table, reason) in &obs.stopped {
            out.push(stopped(table, reason.as_deref()));
        }
        match self.role {
            Role::Consumer => {
                self.lag(obs, &mut out);
                self.dlq(obs, &mut out);
            }
            Role::Producer => self.reconcile(obs, now, &mut out),
        }
        out
    }

    fn lag(&self, obs: &Observed, out: &mut Vec<Finding>) {
        let mut worst: BTreeMap<&str, f64> = BTreeMap::new();
        for (table, lag) in &obs.lags {
            let w = worst.entry(table.as_str()).or_insert(*lag);
            *w = w.max(*lag);
        }
        let bound = self.lag_above_s;
        for (table, lag) in worst {
            if lag > bound as f64 {
                out.push(Finding {
                    key: key(Kind::Lag, table),
                    firing: format!("lag of {table} is {lag:.0} s (above {bound} s)"),
                    resolved: format!("lag of {table} is back under {bound} s"),
                });
            }
        }
    }

    fn dlq(&mut self, obs: &Observed, out: &mut Vec<Finding>) {
        let mut tables: Vec<&String> = obs
            .dlq_written
            .keys()
            .chain(obs.dlq_pending.keys())
            .collect();
        tables.sort();
        tables.dedup();
        for table in tables {
            let written = obs.dlq_written.get(table).copied().unwrap_or(0);
            let written_before = self.previous_written.get(table).copied().unwrap_or(0);
            let new = written.saturating_sub(written_before);
            let pending = obs.dlq_pending.get(table).copied();
            let pending_before = self
                .previous_pending
                .as_ref()
                .and_then(|p| p.get(table).copied());
            // a table first seen with pending entries: they may be older than the process
            let pending_grew =
                matches!((pending, pending_before), (Some(now), Some(before)) if now > before);
            if new == 0 && !pending_grew {
                continue;
            }
            let pending_text = pending.map_or(String::new(), |p| format!(", {p} pending"));
            out.push(Finding {
                key: key(Kind::DlqGrowing, table),
                firing: format!(
                    "DLQ of {table} is growing: {new} entries written since the last check{pending_text}"
                ),
                resolved: format!("DLQ of {table} stopped growing"),
            });
        }
        self.previous_written = obs.dlq_written.clone();
        self.previous_pending = Some(obs.dlq_pending.clone());
    }

    fn reconcile(&mut self, obs: &Observed, now: Duration, out: &mut Vec<Finding>) {
        self.first_seen.retain(|k, _| obs.intervals.contains_key(k));
        for (labels, interval) in &obs.intervals {
            if labels.1 != RECONCILE || *interval <= 0.0 {
                continue;
            }
            let age = match obs.pass_ages.get(labels) {
                Some(age) => {
                    self.first_seen.remove(labels);
                    *age
                }
                // no pass yet: counted from when the detector was first seen
                None => now
                    .saturating_sub(*self.first_seen.entry(labels.clone()).or_insert(now))
                    .as_secs_f64(),
            };
            let bound = 3.0 * interval + RECONCILE_SLACK.as_secs_f64();
            if age > bound {
                let table = &labels.0;
                out.push(Finding {
                    key: key(Kind::ReconcileLate, table),
                    firing: format!(
                        "no complete reconciliation pass of {table} for {age:.0} s (interval {interval:.0} s)"
                    ),
                    resolved: format!("reconciliation of {table} completed a pass again"),
                });
            }
        }
    }
}

fn key(kind: Kind, subject: &str) -> Key {
    Key {
        kind,
        subject: subject.to_string(),
    }
}

fn not_ready(problems: &[String]) -> Finding {
    let mut text = problems
        .iter()
        .take(PROBLEMS_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > PROBLEMS_SHOWN {
        text.push_str(&format!("; and {} more", problems.len() - PROBLEMS_SHOWN));
    }
    Finding {
        key: key(Kind::NotReady, ""),
        firing: format!("not ready: {text}"),
        resolved: "ready again".into(),
    }
}

fn stopped(table: &str, reason: Option<&str>) -> Finding {
    Finding {
        key: key(Kind::TableStopped, table),
        firing: match reason {
            Some(r) => format!("{table} stopped: {r}"),
            None => format!("{table} stopped by a schema change it cannot follow"),
        },
        resolved: format!("{table} is no longer stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn firing(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.firing.as_str()).collect()
    }

    #[test]
    fn lag_fires_per_table_on_the_worst_partition_above_the_bound() {
        let mut e = Evaluator::new(Role::Consumer, 300);
        let obs = Observed {
            lags: vec![
                ("public.media".into(), 12.0),
                ("public.media".into(), 412.3),
                ("public.users".into(), 299.0),
                ("public.tags".into(), 300.0),
            ],
            ..Observed::default()
        };
        let f = e.findings(&obs, secs(0));
        assert_eq!(
            firing(&f),
            vec!["lag of public.media is 412 s (above 300 s)"]
        );
        assert_eq!(f[0].resolved, "lag of public.media is back under 300 s");
        assert_eq!(f[0].key, key(Kind::Lag, "public.media"));
        // the producer does not look at the consumer's lag
        let mut p = Evaluator::new(Role::Producer, 300);
        assert!(p.findings(&obs, secs(0)).is_empty());
    }

    #[test]
    fn not_ready_is_one_condition_of_the_process_with_its_problems() {
        let mut e = Evaluator::new(Role::Producer, 300);
        let problems: Vec<String> = (1..=5).map(|i| format!("s{i}: no progress")).collect();
        let f = e.findings(
            &Observed {
                problems,
                ..Observed::default()
            },
            secs(0),
        );
        assert_eq!(
            firing(&f),
            vec!["not ready: s1: no progress; s2: no progress; s3: no progress; and 2 more"]
        );
        assert_eq!(f[0].key, key(Kind::NotReady, ""));
    }

    #[test]
    fn the_dlq_grows_when_this_consumer_wrote_entries_or_pending_ones_increased() {
        let mut e = Evaluator::new(Role::Consumer, 300);
        let obs = |written: &[(&str, u64)], pending: &[(&str, i64)]| Observed {
            dlq_written: written.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            dlq_pending: pending.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            ..Observed::default()
        };
        // pending entries left from before the process: not growth
        assert!(e.findings(&obs(&[], &[("a", 4)]), secs(0)).is_empty());
        // written by this consumer
        assert_eq!(
            firing(&e.findings(&obs(&[("a", 2)], &[("a", 4)]), secs(15))),
            vec!["DLQ of a is growing: 2 entries written since the last check, 4 pending"]
        );
        // nothing new
        assert!(e
            .findings(&obs(&[("a", 2)], &[("a", 4)]), secs(30))
            .is_empty());
        // pending grew (another consumer wrote them); a table first seen with some: not
        // growth, they may be older than the process
        let f = e.findings(&obs(&[("a", 2)], &[("a", 6), ("b", 1)]), secs(45));
        assert_eq!(
            firing(&f),
            vec!["DLQ of a is growing: 0 entries written since the last check, 6 pending"]
        );
        assert_eq!(f[0].resolved, "DLQ of a stopped growing");
        // a replay lowered pending: not growth
        assert!(e
            .findings(&obs(&[("a", 2)], &[("a", 1), ("b", 1)]), secs(60))
            .is_empty());
    }

    #[test]
    fn a_reconciliation_is_late_after_three_intervals_and_the_slack() {
        let mut e = Evaluator::new(Role::Producer, 300);
        let t = ("public.media".to_string(), RECONCILE.to_string());
        let other = ("public.media".to_string(), "insert".to_string());
        let obs = |age: Option<f64>| Observed {
            intervals: [(t.clone(), 100.0), (other.clone(), 0.05)].into(),
            pass_ages: age
                .map(|a| [(t.clone(), a), (other.clone(), 1_000.0)].into())
                .unwrap_or_default(),
            ..Observed::default()
        };
        assert!(e.findings(&obs(Some(360.0)), secs(0)).is_empty());
        let f = e.findings(&obs(Some(361.0)), secs(15));
        assert_eq!(
            firing(&f),
            vec!["no complete reconciliation pass of public.media for 361 s (interval 100 s)"]
        );
        assert_eq!(f[0].key, key(Kind::ReconcileLate, "public.media"));
        // never passed: counted from when it was first seen
        let mut e = Evaluator::new(Role::Producer, 300);
        assert!(e.findings(&obs(None), secs(1_000)).is_empty());
        assert!(e.findings(&obs(None), secs(1_360)).is_empty());
        assert_eq!(e.findings(&obs(None), secs(1_361)).len(), 1);
        // the consumer does not look at the producer's detectors
        let mut c = Evaluator::new(Role::Consumer, 300);
        assert!(c.findings(&obs(Some(10_000.0)), secs(0)).is_empty());
    }

    #[test]
    fn a_stopped_table_fires_with_its_reason_in_either_process() {
        for role in [Role::Producer, Role::Consumer] {
            let mut e = Evaluator::new(role, 300);
            let obs = Observed {
                stopped: [
                    (
                        "public.a".to_string(),
                        Some("column x changed from text to integer".to_string()),
                    ),
                    ("public.b".to_string(), None),
                ]
                .into(),
                ..Observed::default()
            };
            let f = e.findings(&obs, secs(0));
            assert_eq!(
                firing(&f),
                vec![
                    "public.a stopped: column x changed from text to integer",
                    "public.b stopped by a schema change it cannot follow",
                ]
            );
            assert_eq!(f[1].resolved, "public.b is no longer stopped");
        }
    }

    #[test]
    fn the_observation_reads_the_process_metrics_and_health() {
        let m = metrics();
        m.applied_up_to(
            "observe_test.media",
            1,
            chrono::Utc::now().timestamp_millis() - 30_000,
        );
        m.dlq_written
            .get_or_create(&crate::metrics::DlqLabels {
                table: "observe_test.media".into(),
                class: "definite".into(),
            })
            .inc();
        let stage = "observe_test.media/reconcile";
        health().stop(stage, "column x changed from text to integer");
        let obs = observe();
        health().remove(stage);
        let lag = obs
            .lags
            .iter()
            .find(|(t, _)| t == "observe_test.media")
            .map(|(_, l)| *l);
        assert!(lag.is_some_and(|l| (29.0..120.0).contains(&l)), "{obs:?}");
        assert_eq!(obs.dlq_written.get("observe_test.media"), Some(&1));
        assert_eq!(
            obs.stopped.get("observe_test.media"),
            Some(&Some("column x changed from text to integer".to_string()))
        );
        assert!(obs.problems.iter().any(|p| p.starts_with(stage)), "{obs:?}");
        m.partition_revoked("observe_test.media", 1);
    }
}
