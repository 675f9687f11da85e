//! Checks of a loaded config that its types alone do not make: what the pipeline cannot work
//! with is refused at load, with the key's name and what to do.

use super::{redact_url, Config};

/// librdkafka properties the pipeline sets itself, and what a different value would break.
const RESERVED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    (
        "isolation.level",
        "the consumer reads only committed transactions (read_committed)",
    ),
    (
        "enable.auto.commit",
        "the consumer's offsets are stored in the target, in the transaction that applies them",
    ),
    (
        "enable.auto.offset.store",
        "the consumer's offsets are stored in the target, in the transaction that applies them",
    ),
    (
        "enable.idempotence",
        "the producer's transactions need an idempotent producer",
    ),
    (
        "transactional.id",
        "each table's producer has its own transactional id, derived from the topic prefix",
    ),
    ("group.id", "the group is kafka.consumer_group"),
];

/// The longest any interval, timeout or wait may be set to (a year).
const MAX_DURATION_S: u64 = 365 * 24 * 3600;
/// The most rows a chunk, a scan statement or a consumer batch may be set to hold.
const MAX_CHUNK_ROWS: u64 = 10_000_000;
/// The highest row rate that may be set.
const MAX_ROWS_PER_SECOND: u64 = 1_000_000_000_000;
/// The largest size in MB that may be set.
const MAX_MB: u64 = 1 << 20;
/// The most partitions a table topic may be set to have.
const MAX_PARTITIONS: i32 = 100_000;

/// The longest identifier PostgreSQL keeps whole (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER_BYTES: usize = 63;

impl Config {
    pub(super) fn validate(&self) -> Result<(), String> {
        self.validate_tables()?;
        self.validate_endpoints()?;
        self.validate_kafka()?;
        self.validate_settings()?;
        self.validate_bounds()
    }

    /// No setting so large that the arithmetic on it overflows: a deadline of `u64::MAX` ms
    /// panicked when added to a clock, and a chunk size cast to a statement's `bigint` wrapped
    /// negative.
    fn validate_bounds(&self) -> Result<(), String> {
        let (s, t, p, c, h, a) = (
            &self.source,
            &self.target,
            &self.producer,
            &self.consumer,
            &self.health,
            &self.alerts,
        );
        let durations_ms = [
            ("source.statement_timeout_ms", s.statement_timeout_ms),
            ("source.lock_timeout_ms", s.lock_timeout_ms),
            ("target.statement_timeout_ms", t.statement_timeout_ms),
            ("producer.insert_interval_ms", p.insert_interval_ms),
            ("producer.update_interval_ms", p.update_interval_ms),
            ("producer.watermark_overlap_ms", p.watermark_overlap_ms),
            ("producer.checkpoint_interval_ms", p.checkpoint_interval_ms),
            ("producer.delete_interval_ms", p.delete_interval_ms),
            ("producer.reconcile_interval_ms", p.reconcile_interval_ms),
            (
                "producer.reconcile_full_interval_ms",
                p.reconcile_full_interval_ms,
            ),
            ("producer.repair_interval_ms", p.repair_interval_ms),
            ("producer.heartbeat_interval_ms", p.heartbeat_interval_ms),
            ("consumer.batch_max_wait_ms", c.batch_max_wait_ms),
        ];
        let durations_s = [
            ("startup_timeout_s", self.startup_timeout_s),
            ("producer.horizon_max_wait_s", p.horizon_max_wait_s),
            (
                "producer.key_snapshot_interval_s",
                p.key_snapshot_interval_s,
            ),
            ("health.ready_within_s", h.ready_within_s),
            ("alerts.lag_above_s", a.lag_above_s),
            ("alerts.check_interval_s", a.check_interval_s),
            ("alerts.repeat_after_s", a.repeat_after_s),
        ];
        let max_ms = MAX_DURATION_S * 1000;
        let durations = durations_ms
            .iter()
            .map(|&(name, v)| (name, v, max_ms, "ms"))
            .chain(
                durations_s
                    .iter()
                    .map(|&(name, v)| (name, v, MAX_DURATION_S, "s")),
            );
        for (name, value, most, unit) in durations {
            if value > most {
                return Err(format!(
                    "{name} = {value} is longer than a year ({most} {unit}): nothing here waits that long"
                ));
            }
        }
        let sizes = [
            (
                "producer.snapshot_chunk_rows",
                u64::try_from(p.snapshot_chunk_rows).unwrap_or(0),
                MAX_CHUNK_ROWS,
            ),
            (
                "producer.scan_chunk_rows",
                u64::try_from(p.scan_chunk_rows).unwrap_or(0),
                MAX_CHUNK_ROWS,
            ),
            (
                "producer.max_rows_per_second",
                p.max_rows_per_second,
                MAX_ROWS_PER_SECOND,
            ),
            (
                "producer.key_snapshot_max_mb",
                p.key_snapshot_max_mb,
                MAX_MB,
            ),
            (
                "consumer.batch_max_events",
                u64::try_from(c.batch_max_events).unwrap_or(u64::MAX),
                MAX_CHUNK_ROWS,
            ),
        ];
        for (name, value, most) in sizes {
            if value > most {
                return Err(format!("{name} = {value} is above its largest, {most}"));
            }
        }
        if self.kafka.partitions > MAX_PARTITIONS {
            return Err(format!(
                "kafka.partitions = {} is above Kafka's practical largest, {MAX_PARTITIONS}",
                self.kafka.partitions
            ));
        }
        if self.kafka.replication_factor > i32::from(i16::MAX) {
            return Err(format!(
                "kafka.replication_factor = {} is above Kafka's largest, {}",
                self.kafka.replication_factor,
                i16::MAX
            ));
        }
        Ok(())
    }

    /// At least one table, none twice, each with rules that parse and have distinct names.
    fn validate_tables(&self) -> Result<(), String> {
        if self.tables.is_empty() {
            return Err("no [[tables]] entry: name at least one table to replicate".into());
        }
        let schema = &self.source.capture_schema;
        if schema.is_empty() || schema.len() > MAX_IDENTIFIER_BYTES {
            return Err(format!(
                "source.capture_schema must be a schema name of 1 to {MAX_IDENTIFIER_BYTES} bytes, got '{schema}'"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.tables {
            if t.name.is_empty() || t.schema.is_empty() {
                return Err("a [[tables]] entry has an empty schema or name".into());
            }
            if !seen.insert(t.qualified()) {
                return Err(format!("table {} is listed twice", t.qualified()));
            }
            if t.capture == super::Capture::Trigger
                && t.change_table_name().len() > MAX_IDENTIFIER_BYTES
            {
                return Err(format!(
                    "table {}: its change table's name {} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES} bytes: use capture = \"poll\" or a shorter table name",
                    t.qualified(),
                    t.change_table_name()
                ));
            }
            let rules = t
                .parsed_rules()
                .map_err(|e| format!("table {}: {e}", t.qualified()))?;
            let mut names = std::collections::BTreeSet::new();
            for r in &rules {
                if !names.insert(r.name.as_str()) {
                    return Err(format!(
                        "table {}: two rules are named '{}'",
                        t.qualified(),
                        r.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The databases' and the registry's URLs.
    fn validate_endpoints(&self) -> Result<(), String> {
        for (name, url) in [
            ("source.url", &self.source.url),
            ("target.url", &self.target.url),
        ] {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(format!(
                    "{name} must be a postgres:// URL, got '{}'",
                    redact_url(url)
                ));
            }
        }
        if !(self.registry.url.starts_with("http://") || self.registry.url.starts_with("https://"))
        {
            return Err(format!(
                "registry.url must be an http(s) URL, got '{}'",
                redact_url(&self.registry.url)
            ));
        }
        match self.registry.compatibility.as_str() {
            "BACKWARD"
            | "BACKWARD_TRANSITIVE"
            | "FORWARD"
            | "FORWARD_TRANSITIVE"
            | "FULL"
            | "FULL_TRANSITIVE"
            | "NONE" => Ok(()),
            other => Err(format!(
                "registry.compatibility '{other}' is not a known level"
            )),
        }
    }

    /// The brokers, the topics' sizes, and no `[kafka.properties]` that would undo what the
    /// pipeline's guarantees rest on.
    fn validate_kafka(&self) -> Result<(), String> {
        if self.kafka.brokers.trim().is_empty() {
            return Err("kafka.brokers is empty".into());
        }
        if self.kafka.partitions < 1 || self.kafka.replication_factor < 1 {
            return Err("kafka.partitions and kafka.replication_factor must be at least 1".into());
        }
        if let Some((key, why)) = self.kafka.properties.keys().find_map(|k| {
            RESERVED_KAFKA_PROPERTIES
                .iter()
                .find(|(name, _)| name == k)
                .map(|(name, why)| (*name, *why))
        }) {
            return Err(format!(
                "[kafka.properties] may not set '{key}': {why}; remove it"
            ));
        }
        self.kafka.validate_security()
    }

    /// Chunk sizes and intervals that the loops can work with.
    fn validate_settings(&self) -> Result<(), String> {
        let share = self.source.max_cpu_share;
        if !(0.0..=1.0).contains(&share) {
            return Err(format!(
                "source.max_cpu_share must be between 0 (no budget) and 1 (one whole core), not {share}"
            ));
        }
        let p = &self.producer;
        if p.snapshot_chunk_rows < 1 || p.scan_chunk_rows < 1 {
            return Err("producer chunk sizes must be at least 1".into());
        }
        // 0 would run a pass back to back; reconcile_interval_ms = 0 switches reconciliation off
        for (name, ms) in [
            ("insert_interval_ms", p.insert_interval_ms),
            ("update_interval_ms", p.update_interval_ms),
            ("delete_interval_ms", p.delete_interval_ms),
            ("repair_interval_ms", p.repair_interval_ms),
        ] {
            if ms == 0 {
                return Err(format!("producer.{name} must be at least 1 ms"));
            }
        }
        if self.consumer.batch_max_events == 0 {
            return Err("consumer.batch_max_events must be at least 1".into());
        }
        if self.health.ready_within_s == 0 {
            return Err("health.ready_within_s must be at least 1 s".into());
        }
        let a = &self.alerts;
        if a.check_interval_s == 0 || a.lag_above_s == 0 {
            return Err(
                "alerts.check_interval_s and alerts.lag_above_s must be at least 1 s".into(),
            );
        }
        if let Some(url) = &a.webhook_url {
            // the URL is not repeated: it may hold a token
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err("alerts.webhook_url must be an http:// or https:// URL".into());
            }
        }
        Ok(())
    }
}
