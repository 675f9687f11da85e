//! Prometheus metrics of both binaries. Every stage records into one process-wide set of
//! families (a counter or gauge update is an atomic add, so recording costs nothing worth
//! measuring when nobody scrapes); `run --metrics-addr` serves them with `/healthz` and
//! `/readyz` ([`serve`]). Names and help texts are in [`names`]. No label names a key or a
//! row: tables, detectors, partitions, dependencies and error classes only.

pub mod names;
mod readback;
mod serve;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

pub use serve::{serve, ServeError};

use crate::fault::ErrorClass;
use names::Name;

/// A table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

/// A table's detector (or its snapshot).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectorLabels {
    pub table: String,
    pub detector: String,
}

/// A partition of a table's topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub table: String,
    pub partition: String,
}

/// Dead-lettered entries of a table, by error class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DlqLabels {
    pub table: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

/// What a process depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependency {
    Source,
    Target,
    Kafka,
    Registry,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Source => "source",
            Dependency::Target => "target",
            Dependency::Kafka => "kafka",
            Dependency::Registry => "registry",
        }
    }
}

/// Which binary: only its metrics are exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Producer,
    Consumer,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Seconds since the Unix epoch, now.
pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A gauge of ages: the time of an event is recorded, its age is set when scraped.
struct Ages<L> {
    gauge: Family<L, FloatGauge>,
    at: Mutex<HashMap<L, f64>>,
}

impl<L: Clone + std::hash::Hash + Eq> Ages<L> {
    fn new() -> Self {
        Self {
            gauge: Family::default(),
            at: Mutex::new(HashMap::new()),
        }
    }

    /// `labels` had its event at `at_s` (seconds since the epoch); a later time only.
    fn mark_at(&self, labels: &L, at_s: f64) {
        if let Ok(mut at) = self.at.lock() {
            let slot = at.entry(labels.clone()).or_insert(at_s);
            if at_s > *slot {
                *slot = at_s;
            }
        }
    }

    fn forget(&self, labels: &L) {
        if let Ok(mut at) = self.at.lock() {
            at.remove(labels);
        }
        self.gauge.remove(labels);
    }

    fn refresh(&self, now: f64) {
        if let Ok(at) = self.at.lock() {
            for (labels, t) in at.iter() {
                self.gauge.get_or_create(labels).set((now - t).max(0.0));
            }
        }
    }

    /// The ages, now.
    fn ages(&self, now: f64) -> Vec<(L, f64)> {
        self.at.lock().map_or_else(
            |_| Vec::new(),
            |at| {
                at.iter()
                    .map(|(l, t)| (l.clone(), (now - t).max(0.0)))
                    .collect()
            },
        )
    }
}

/// Every family of both binaries.
pub struct Metrics {
    up: Family<DependencyLabels, Gauge>,
    stage_restarts: Family<StageLabels, Counter>,
    errors: Family<ClassLabels, Counter>,
    pub passes: Family<DetectorLabels, Counter>,
    pub rows_read: Family<DetectorLabels, Counter>,
    pub events_shipped: Family<DetectorLabels, Counter>,
    pub pass_duration: Family<DetectorLabels, Histogram>,
    last_pass: Ages<DetectorLabels>,
    pub detector_interval: Family<DetectorLabels, FloatGauge>,
    pub horizon_age: Family<DetectorLabels, FloatGauge>,
    checkpoint: Ages<TableLabels>,
    pub snapshot_rows: Family<TableLabels, Gauge>,
    pub snapshot_rows_estimated: Family<TableLabels, Gauge>,
    pub change_table_rows: Family<TableLabels, Gauge>,
    pub heartbeats: Family<TableLabels, Counter>,
    pub table_stopped: Family<TableLabels, Gauge>,
    pub events_applied: Family<TableLabels, Counter>,
    pub batches: Counter,
    pub apply_duration: Histogram,
    lag: Ages<PartitionLabels>,
    last_applied: Family<PartitionLabels, FloatGauge>,
    pub dlq_written: Family<DlqLabels, Counter>,
    pub dlq_pending: Family<TableLabels, Gauge>,
    pub dlq_replayed: Family<TableLabels, Gauge>,
    registry: OnceLock<Registry>,
}

/// Registers a family under its name as exposed (the library adds `_total` to a counter's name
/// itself).
fn register(r: &mut Registry, n: &Name, m: Box<dyn Metric>) {
    let name = n.name.strip_suffix("_total").unwrap_or(n.name);
    r.register(name, n.help, Boxed(m));
}

/// A boxed metric, registered as itself.
#[derive(Debug)]
struct Boxed(Box<dyn Metric>);

impl prometheus_client::encoding::EncodeMetric for Boxed {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        self.0.metric_type()
    }
}

fn histogram() -> Histogram {
    // 1 ms to about 9 minutes
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        Self {
            up: Family::default(),
            stage_restarts: Family::default(),
            errors: Family::default(),
            passes: Family::default(),
            rows_read: Family::default(),
            events_shipped: Family::default(),
            pass_duration: Family::new_with_constructor(histogram),
            last_pass: Ages::new(),
            detector_interval: Family::default(),
            horizon_age: Family::default(),
            checkpoint: Ages::new(),
            snapshot_rows: Family::default(),
            snapshot_rows_estimated: Family::default(),
            change_table_rows: Family::default(),
            heartbeats: Family::default(),
            table_stopped: Family::default(),
            events_applied: Family::default(),
            batches: Counter::default(),
            apply_duration: histogram(),
            lag: Ages::new(),
            last_applied: Family::default(),
            dlq_written: Family::default(),
            dlq_pending: Family::default(),
            dlq_replayed: Family::default(),
            registry: OnceLock::new(),
        }
    }

    /// Registers the families `role` exposes (once; later calls do nothing).
    pub fn expose(&'static self, role: Role) {
        self.registry.get_or_init(|| {
            let mut r = Registry::default();
            let mut add = |n: &Name, m: Box<dyn Metric>| register(&mut r, n, m);
            use names::*;
            add(&UP, Box::new(self.up.clone()));
            add(&READY, Box::new(crate::health::health().ready_gauge()));
            add(
                &STAGE_PROGRESS_AGE,
                Box::new(crate::health::health().age_family()),
            );
            add(&STAGE_RESTARTS, Box::new(self.stage_restarts.clone()));
            add(&ERRORS, Box::new(self.errors.clone()));
            match role {
                Role::Producer => {
                    add(&PASSES, Box::new(self.passes.clone()));
                    add(&ROWS_READ, Box::new(self.rows_read.clone()));
                    add(&EVENTS_SHIPPED, Box::new(self.events_shipped.clone()));
                    add(&PASS_DURATION, Box::new(self.pass_duration.clone()));
                    add(&LAST_PASS_AGE, Box::new(self.last_pass.gauge.clone()));
                    add(&DETECTOR_INTERVAL, Box::new(self.detector_interval.clone()));
                    add(&HORIZON_AGE, Box::new(self.horizon_age.clone()));
                    add(&CHECKPOINT_AGE, Box::new(self.checkpoint.gauge.clone()));
                    add(&SNAPSHOT_ROWS, Box::new(self.snapshot_rows.clone()));
                    add(
                        &SNAPSHOT_ROWS_ESTIMATED,
                        Box::new(self.snapshot_rows_estimated.clone()),
                    );
                    add(&CHANGE_TABLE_ROWS, Box::new(self.change_table_rows.clone()));
                    add(&HEARTBEATS, Box::new(self.heartbeats.clone()));
                    add(&TABLE_STOPPED, Box::new(self.table_stopped.clone()));
                }
                Role::Consumer => {
                    add(&EVENTS_APPLIED, Box::new(self.events_applied.clone()));
                    add(&BATCHES, Box::new(self.batches.clone()));
                    add(&APPLY_DURATION, Box::new(self.apply_duration.clone()));
                    add(&LAG, Box::new(self.lag.gauge.clone()));
                    add(&LAST_APPLIED, Box::new(self.last_applied.clone()));
                    add(&DLQ_WRITTEN, Box::new(self.dlq_written.clone()));
                    add(&DLQ_PENDING, Box::new(self.dlq_pending.clone()));
                    add(&DLQ_REPLAYED, Box::new(self.dlq_replayed.clone()));
                }
            }
            r
        });
    }

    /// The exposed families in the OpenMetrics text format, ages brought up to now.
    pub fn encode(&self) -> String {
        let now = now_s();
        self.last_pass.refresh(now);
        self.checkpoint.refresh(now);
        self.lag.refresh(now);
        crate::health::health().refresh();
        let mut out = String::new();
        if let Some(r) = self.registry.get() {
            // writing into a String does not fail
            let _ = prometheus_client::encoding::text::encode(&mut out, r);
        }
        out
    }

    /// The last use of `dependency` succeeded (`true`) or failed.
    pub fn dependency(&self, dependency: Dependency, up: bool) {
        let labels = DependencyLabels {
            dependency: dependency.as_str().into(),
        };
        self.up.get_or_create(&labels).set(i64::from(up));
    }

    /// A stage started again.
    pub fn restarted(&self, stage: &str) {
        self.stage_restarts
            .get_or_create(&StageLabels {
                stage: stage.into(),
            })
            .inc();
    }

    /// An error of `class` was met.
    pub fn error(&self, class: ErrorClass) {
        self.errors_of(class, 1);
    }

    /// `n` errors of `class` were met.
    pub fn errors_of(&self, class: ErrorClass, n: u64) {
        self.errors
            .get_or_create(&ClassLabels {
                class: class.as_str().into(),
            })
            .inc_by(n);
    }

    /// A detector completed a pass now (or found it had nothing to look at).
    pub fn pass_done(&self, labels: &DetectorLabels) {
        self.last_pass.mark_at(labels, now_s());
    }

    /// The seconds since each detector's last pass, now.
    pub fn pass_ages(&self) -> Vec<(DetectorLabels, f64)> {
        self.last_pass.ages(now_s())
    }

    /// The table's checkpoint was shipped now.
    pub fn checkpoint_shipped(&self, table: &str) {
        self.checkpoint.mark_at(
            &TableLabels {
                table: table.into(),
            },
            now_s(),
        );
    }

    /// A record of `table`'s `partition` stamped `at_ms` (Kafka timestamp) was applied.
    pub fn applied_up_to(&self, table: &str, partition: i32, at_ms: i64) {
        let labels = PartitionLabels {
            table: table.into(),
            partition: partition.to_string(),
        };
        let at_s = at_ms as f64 / 1000.0;
        self.lag.mark_at(&labels, at_s);
        let g = self.last_applied.get_or_create(&labels);
        if at_s > g.get() {
            g.set(at_s);
        }
    }

    /// The partition is no longer this consumer's (its lag is another's to report).
    pub fn partition_revoked(&self, table: &str, partition: i32) {
        let labels = PartitionLabels {
            table: table.into(),
            partition: partition.to_string(),
        };
        self.lag.forget(&labels);
        self.last_applied.remove(&labels);
    }

    /// The lag of each partition, now.
    pub fn lags(&self) -> Vec<(PartitionLabels, f64)> {
        self.lag.ages(now_s())
    }
}

#[cfg(test)]
mod tests {
    use super::readback::parse_sample;
    use super::*;

    #[test]
    fn the_exposition_uses_the_names_of_the_list() {
        let m = metrics();
        m.expose(Role::Consumer);
        m.events_applied
            .get_or_create(&TableLabels {
                table: "public.media".into(),
            })
            .inc_by(3);
        m.applied_up_to(
            "public.media",
            2,
            chrono::Utc::now().timestamp_millis() - 5_000,
        );
        m.dependency(Dependency::Target, true);
        let text = m.encode();
        assert!(
            text.contains("tunnel_consumer_events_applied_total{table=\"public.media\"} 3"),
            "{text}"
        );
        let lag = text
            .lines()
            .find(|l| l.starts_with("tunnel_consumer_lag_seconds{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        assert!(lag.is_some_and(|l| (4.0..60.0).contains(&l)), "{text}");
        assert!(
            text.contains("tunnel_up{dependency=\"target\"} 1"),
            "{text}"
        );
        // only the consumer's families
        assert!(!text.contains("tunnel_producer_"), "{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap_or_default();
            assert!(
                names::ALL.iter().any(|n| n.name.starts_with(name)),
                "{name} is not in the list of names"
            );
        }
    }

    #[test]
    fn the_notifier_reads_the_families_back_by_table() {
        let m = metrics();
        let dlq = |class: &str| DlqLabels {
            table: "read_back.t".into(),
            class: class.into(),
        };
        m.dlq_written.get_or_create(&dlq("definite")).inc_by(2);
        m.dlq_written.get_or_create(&dlq("rule")).inc_by(3);
        m.dlq_pending
            .get_or_create(&TableLabels {
                table: "read_back.t".into(),
            })
            .set(7);
        m.detector_interval
            .get_or_create(&DetectorLabels {
                table: "read_back.t".into(),
                detector: "reconcile".into(),
            })
            .set(2.5);
        m.table_stopped
            .get_or_create(&TableLabels {
                table: "read_back.t".into(),
            })
            .set(1);
        assert_eq!(m.dlq_written_by_table().get("read_back.t"), Some(&5));
        assert_eq!(m.dlq_pending_by_table().get("read_back.t"), Some(&7));
        assert!(m
            .detector_intervals()
            .iter()
            .any(|(l, v)| l.table == "read_back.t" && l.detector == "reconcile" && *v == 2.5));
        assert!(m.stopped_tables().contains(&"read_back.t".to_string()));
        let (labels, v) = parse_sample(r#"x_total{table="a\"b",class="c"} 4"#).unwrap();
        assert_eq!(labels.get("table").map(String::as_str), Some("a\"b"));
        assert_eq!(labels.get("class").map(String::as_str), Some("c"));
        assert_eq!(v, 4.0);
    }

    #[test]
    fn every_name_follows_the_conventions() {
        for n in names::ALL {
            assert!(n.name.starts_with("tunnel_"), "{}", n.name);
            assert!(
                n.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                n.name
            );
            assert!(
                !n.name.contains("_ms") && !n.name.contains("millis"),
                "{}",
                n.name
            );
            assert!(!n.help.is_empty());
        }
    }
}
