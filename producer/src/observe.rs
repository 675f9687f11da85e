//! What one table's worker tells the metrics and the readiness check: a pass of each detector
//! (or a tick where its table showed nothing to look at), the snapshot's progress, the
//! checkpoint and heartbeats shipped, the table stopped. Stages are `<table>/<detector>` and
//! `<table>/snapshot`.

use std::time::Duration;

use tunnel_shared::event::Detection;
use tunnel_shared::health::health;
use tunnel_shared::metrics::{metrics, Dependency, DetectorLabels, TableLabels};

/// The recorder of one table.
#[derive(Debug, Clone)]
pub struct TableObserver {
    table: String,
    ready_within: Duration,
}

impl TableObserver {
    /// The table, `schema.name`.
    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn new(table: &str, ready_within_s: u64) -> Self {
        Self {
            table: table.to_string(),
            ready_within: Duration::from_secs(ready_within_s),
        }
    }

    fn labels(&self, d: Detection) -> DetectorLabels {
        DetectorLabels {
            table: self.table.clone(),
            detector: d.as_str().into(),
        }
    }

    fn table_labels(&self) -> TableLabels {
        TableLabels {
            table: self.table.clone(),
        }
    }

    fn stage(&self, d: Detection) -> String {
        format!("{}/{}", self.table, d.as_str())
    }

    /// Streaming starts with these detectors (and their intervals): each is a stage that must
    /// pass within the readiness bound, or three of its intervals when it runs less often.
    pub fn streaming(&self, detectors: &[(Detection, Duration)]) {
        health().remove(&self.stage(Detection::Snapshot));
        for (d, interval) in detectors {
            let bound = self.ready_within.max(*interval * 3);
            health().register(&self.stage(*d), bound);
            metrics()
                .detector_interval
                .get_or_create(&self.labels(*d))
                .set(interval.as_secs_f64());
            metrics().pass_done(&self.labels(*d));
        }
    }

    /// A complete pass of `d`: rows read, events shipped, its time, and its horizon's clock
    /// (microseconds since the epoch: transactions that started before it have all ended).
    pub fn pass(
        &self,
        d: Detection,
        rows_read: u64,
        events: usize,
        took: Duration,
        horizon_micros: Option<i64>,
    ) {
        let labels = self.labels(d);
        let m = metrics();
        m.passes.get_or_create(&labels).inc();
        m.rows_read.get_or_create(&labels).inc_by(rows_read);
        m.events_shipped
            .get_or_create(&labels)
            .inc_by(events as u64);
        m.pass_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(horizon) = horizon_micros {
            let age = tunnel_shared::metrics::now_s() - horizon as f64 / 1e6;
            m.horizon_age.get_or_create(&labels).set(age.max(0.0));
        }
        self.checked(d);
    }

    /// `d` was due, and the table's activity showed it nothing to look at: as good as a pass.
    pub fn checked(&self, d: Detection) {
        metrics().pass_done(&self.labels(d));
        health().beat(&self.stage(d));
    }

    /// `d` is waiting for its turn in the background lane, or reading: alive, not stuck.
    pub fn alive(&self, d: Detection) {
        health().beat(&self.stage(d));
    }

    /// How far apart `d`'s last two passes started (the budget may space them wider than its
    /// interval): the interval the alerts on overdue passes compare with.
    pub fn spacing(&self, d: Detection, spacing: Duration) {
        metrics()
            .detector_interval
            .get_or_create(&self.labels(d))
            .set(spacing.as_secs_f64());
    }

    /// The table's checkpoint went out (with events, or alone).
    pub fn checkpoint_shipped(&self) {
        metrics().checkpoint_shipped(&self.table);
        metrics().dependency(Dependency::Kafka, true);
    }

    /// A heartbeat transaction went out.
    pub fn heartbeat(&self) {
        metrics()
            .heartbeats
            .get_or_create(&self.table_labels())
            .inc();
        metrics().dependency(Dependency::Kafka, true);
    }

    /// The source answered (`true`) or failed.
    pub fn source(&self, up: bool) {
        metrics().dependency(Dependency::Source, up);
    }

    /// Shipping to Kafka failed.
    pub fn kafka_failed(&self) {
        metrics().dependency(Dependency::Kafka, false);
    }

    /// A snapshot (or its next attempt) starts, expecting about `estimated` rows, `done`
    /// already shipped.
    pub fn snapshot_started(&self, estimated: i64, done: u64) {
        health().register(&self.stage(Detection::Snapshot), self.ready_within);
        let m = metrics();
        m.snapshot_rows_estimated
            .get_or_create(&self.table_labels())
            .set(estimated.max(0));
        m.snapshot_rows
            .get_or_create(&self.table_labels())
            .set(i64::try_from(done).unwrap_or(i64::MAX));
    }

    /// A snapshot chunk of `rows` rows went out.
    pub fn snapshot_chunk(&self, rows: u64, done: u64) {
        let m = metrics();
        let labels = self.labels(Detection::Snapshot);
        m.rows_read.get_or_create(&labels).inc_by(rows);
        m.events_shipped.get_or_create(&labels).inc_by(rows);
        m.snapshot_rows
            .get_or_create(&self.table_labels())
            .set(i64::try_from(done).unwrap_or(i64::MAX));
        metrics().checkpoint_shipped(&self.table);
        health().beat(&self.stage(Detection::Snapshot));
    }

    /// The table is set up again (after a change of its shape): its stages start afresh.
    pub fn restarted(&self) {
        metrics().restarted(&self.table);
        health().remove_table(&self.table);
    }

    /// The table cannot be replicated for now (`reason`): counted as stopped until
    /// [`Self::resumed`].
    pub fn waiting(&self, reason: &str) {
        metrics()
            .table_stopped
            .get_or_create(&self.table_labels())
            .set(1);
        health().remove_table(&self.table);
        health().stop(&self.table, reason);
    }

    /// The table waited for is back.
    pub fn resumed(&self) {
        metrics()
            .table_stopped
            .get_or_create(&self.table_labels())
            .set(0);
        health().remove(&self.table);
    }

    /// The table stopped for good (`reason`), the others go on.
    pub fn stopped(&self, reason: &str) {
        metrics()
            .table_stopped
            .get_or_create(&self.table_labels())
            .set(1);
        metrics().error(tunnel_shared::fault::ErrorClass::Fatal);
        health().remove_table(&self.table);
        health().stop(&self.table, reason);
    }
}
