//! The name of every metric, as Prometheus shows it (`tunnel_` prefix, base units, `_total` on
//! counters), with its help text. docs/operations.md lists the same names: a test checks it.

/// A metric: its name as exposed, and its help text.
pub struct Name {
    pub name: &'static str,
    pub help: &'static str,
}

macro_rules! names {
    ($($(#[$doc:meta])* $id:ident = $name:literal, $help:literal;)*) => {
        $($(#[$doc])* pub const $id: Name = Name { name: $name, help: $help };)*
        /// Every metric, in the order of the list above.
        pub const ALL: &[Name] = &[$($id),*];
    };
}

names! {
    // both binaries
    UP = "tunnel_up",
        "Whether the last use of a dependency (source, target, kafka, registry) succeeded (1) or failed (0).";
    READY = "tunnel_ready",
        "Whether every stage made progress within health.ready_within_s (1), as /readyz answers.";
    STAGE_PROGRESS_AGE = "tunnel_stage_progress_age_seconds",
        "Seconds since a stage last made progress (a pass, a snapshot chunk, a batch).";
    STAGE_RESTARTS = "tunnel_stage_restarts_total",
        "Times a stage started again after a failure or a change (a table set up again after a DDL, a reconnect).";
    ERRORS = "tunnel_errors_total",
        "Errors met, by class: transient (retried), definite (input set aside: DLQ or skip), fatal (stops).";
    // producer, per table and detector
    PASSES = "tunnel_producer_passes_total",
        "Complete passes of a detector (insert key scan, update watermark scan, delete scan, reconcile, repair).";
    ROWS_READ = "tunnel_producer_rows_read_total",
        "Rows read from the source by a detector or the snapshot.";
    EVENTS_SHIPPED = "tunnel_producer_events_shipped_total",
        "Change events shipped to Kafka (committed) by a detector or the snapshot.";
    PASS_DURATION = "tunnel_producer_pass_duration_seconds",
        "How long a detector's pass took, read and ship.";
    LAST_PASS_AGE = "tunnel_producer_last_pass_age_seconds",
        "Seconds since a detector last completed a pass or found, from the table's activity, that it had nothing to look at.";
    DETECTOR_INTERVAL = "tunnel_producer_detector_interval_seconds",
        "A detector's configured interval (for alert rules on tunnel_producer_last_pass_age_seconds).";
    HORIZON_AGE = "tunnel_producer_horizon_age_seconds",
        "How far behind now a detector's capture horizon was at its last pass: every transaction that started before the horizon has ended (a long-open transaction holds it back, up to producer.horizon_max_wait_s).";
    CHECKPOINT_AGE = "tunnel_producer_checkpoint_age_seconds",
        "Seconds since the table's checkpoint was last shipped.";
    SNAPSHOT_ROWS = "tunnel_producer_snapshot_rows",
        "Rows the table's current snapshot has shipped.";
    SNAPSHOT_ROWS_ESTIMATED = "tunnel_producer_snapshot_rows_estimated",
        "Rows the table's current snapshot expects (the planner's estimate).";
    CHANGE_TABLE_ROWS = "tunnel_producer_change_table_rows",
        "Rows in the table's change table (trigger capture), after the last pass trimmed it.";
    HEARTBEATS = "tunnel_producer_heartbeats_total",
        "Heartbeat transactions shipped to the table's topic (one record per partition).";
    TABLE_STOPPED = "tunnel_producer_table_stopped",
        "1 when the table was stopped (a schema change the replica cannot follow), else 0.";
    // consumer
    EVENTS_APPLIED = "tunnel_consumer_events_applied_total",
        "Events applied to the target table (after those already applied were skipped).";
    BATCHES = "tunnel_consumer_batches_total",
        "Batches committed in the target.";
    APPLY_DURATION = "tunnel_consumer_apply_duration_seconds",
        "How long a batch took to apply and commit in the target.";
    LAG = "tunnel_consumer_lag_seconds",
        "Seconds between now and the Kafka timestamp of the newest record (event or heartbeat) applied from a partition.";
    LAST_APPLIED = "tunnel_consumer_last_applied_timestamp_seconds",
        "Kafka timestamp (seconds since the epoch) of the newest record applied from a partition: with last_over_time, the lag stays visible while the consumer is down.";
    DLQ_WRITTEN = "tunnel_consumer_dlq_entries_written_total",
        "Entries this consumer wrote to the table's DLQ, by error class.";
    DLQ_PENDING = "tunnel_consumer_dlq_pending_entries",
        "Entries in the table's DLQ not resolved by a replay.";
    DLQ_REPLAYED = "tunnel_consumer_dlq_replayed_entries",
        "Entries of the table's DLQ resolved by `tunnel-consumer dlq replay`.";
}
