//! What the consumer tells the metrics and the readiness check: every committed batch (events
//! applied and dead-lettered per table, its time, the Kafka timestamps it reached per
//! partition, for the lag), and a census of the DLQs every [`CENSUS_EVERY`]. The apply loop is
//! the stage `apply`: it makes progress with every batch, and the producer's heartbeats make a
//! batch at least every `producer.heartbeat_interval_ms` while the pipeline works.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;
use tunnel_shared::config::Config;
use tunnel_shared::fault::ErrorClass;
use tunnel_shared::health::health;
use tunnel_shared::kafka;
use tunnel_shared::metrics::{metrics, Dependency, DlqLabels, TableLabels};
use tunnel_shared::pg::{self, Session};

use crate::ddl;
use crate::model::{dlq_topic, Applied};

/// The readiness stage of the apply loop.
const APPLY_STAGE: &str = "apply";
/// How often the DLQs are counted.
const CENSUS_EVERY: Duration = Duration::from_secs(30);

/// Per topic, the source table's name (the label of its metrics).
pub(crate) type Names = Arc<HashMap<Arc<str>, String>>;

pub(crate) struct ApplyObserver {
    names: Names,
}

impl ApplyObserver {
    /// Registers the apply loop's stage.
    pub(crate) fn new(config: &Config, names: HashMap<Arc<str>, String>) -> Self {
        health().register(
            APPLY_STAGE,
            Duration::from_secs(config.health.ready_within_s),
        );
        Self {
            names: Arc::new(names),
        }
    }

    pub(crate) fn names(&self) -> Names {
        self.names.clone()
    }

    fn name<'a>(&'a self, topic: &'a str) -> &'a str {
        self.names.get(topic).map_or(topic, String::as_str)
    }

    /// A batch committed in the target after `took`; `stamps` holds the newest Kafka timestamp
    /// of each of its partitions.
    pub(crate) fn committed(
        &self,
        applied: &Applied,
        stamps: &[(Arc<str>, i32, i64)],
        took: Duration,
    ) {
        let m = metrics();
        m.batches.inc();
        m.apply_duration.observe(took.as_secs_f64());
        for (topic, n) in &applied.by_topic {
            let table = self.name(topic).to_string();
            m.events_applied
                .get_or_create(&TableLabels { table })
                .inc_by(*n as u64);
        }
        for (topic, class, n) in &applied.dead_by_class {
            let labels = DlqLabels {
                table: self.name(topic).to_string(),
                class: (*class).to_string(),
            };
            m.dlq_written.get_or_create(&labels).inc_by(*n as u64);
            m.errors_of(ErrorClass::Definite, *n as u64);
        }
        for (topic, partition, ts) in stamps {
            m.applied_up_to(self.name(topic), *partition, *ts);
        }
        m.dependency(Dependency::Target, true);
        health().beat(APPLY_STAGE);
    }
}

/// Counts each table's DLQ every [`CENSUS_EVERY`]: entries in the topic (it is never
/// compacted nor expired), those a replay resolved (recorded in the target), and so the
/// pending ones. Runs until aborted; a failed count is tried again at the next round.
pub(crate) async fn dlq_census(config: Arc<Config>, names: Names) {
    let session = Session {
        application_name: format!("{}-consumer-census", config.source.application_name),
        statement_timeout: Duration::from_millis(config.target.statement_timeout_ms),
        lock_timeout: Duration::ZERO,
        read_only: true,
        canonical_text: false,
    };
    let mut client = None;
    let mut every = tokio::time::interval(CENSUS_EVERY);
    loop {
        every.tick().await;
        if client
            .as_ref()
            .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
        {
            client = pg::connect(&config.target.url, &session).await.ok();
        }
        let Some(c) = &client else {
            metrics().dependency(Dependency::Target, false);
            continue;
        };
        for (topic, table) in names.iter() {
            if let Err(e) = count_one(&config, c, topic, table).await {
                debug!(table = %table, error = %e, "counting the dlq failed; next round");
            }
        }
    }
}

/// Counts one table's DLQ into its gauges.
async fn count_one(
    config: &Config,
    client: &tokio_postgres::Client,
    topic: &str,
    table: &str,
) -> Result<(), String> {
    let dlq = dlq_topic(topic);
    let (k, d) = (config.kafka.clone(), dlq.clone());
    let ends =
        tokio::task::spawn_blocking(move || kafka::partition_ends(&k, &d, Duration::from_secs(10)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let written: i64 = ends.iter().map(|(_, end)| *end).sum();
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE dlq_topic = $1",
                ddl::resolved_table(&config.target.bookkeeping_schema)
            ),
            &[&dlq],
        )
        .await
        .map_err(|e| e.to_string())?;
    let resolved: i64 = row.try_get(0).map_err(|e| e.to_string())?;
    let labels = TableLabels {
        table: table.to_string(),
    };
    metrics()
        .dlq_pending
        .get_or_create(&labels)
        .set((written - resolved).max(0));
    metrics().dlq_replayed.get_or_create(&labels).set(resolved);
    Ok(())
}
