//! `tunnel-consumer run --until-caught-up`: a batch run that stops once everything its topics
//! held when it started (the producer's last heartbeat included) is applied or dead-lettered.
//!
//! The goal is each partition's end at start. A partition is caught up when the offset the
//! target's bookkeeping says comes next has reached its end, or when nothing a `read_committed`
//! reader can see lies between the two (the last offsets of a transactional topic are commit
//! markers, never applied, and aborted transactions are skipped).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{debug, info};
use tunnel_shared::bookkeeping::offsets_table;
use tunnel_shared::config::Config;
use tunnel_shared::kafka;
use tunnel_shared::pg::PgError;

/// How often the bookkeeping is read while catching up.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Longest wait for the broker while looking for messages not applied yet.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("kafka: reading the ends of topic {topic}: {source}")]
    Kafka { topic: String, source: KafkaError },
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("the task reading the ends of the topics failed: {0}")]
    Task(String),
}

/// Each table's topic, its partitions' ends at start, and what the target had applied then.
pub struct Goal {
    tables: Vec<Table>,
    started: Instant,
}

struct Table {
    name: String,
    topic: String,
    /// partition -> (first offset, end) at start
    ends: HashMap<i32, (i64, i64)>,
    applied_at_start: i64,
}

impl Goal {
    /// The partitions' ends now, and what the target has applied of them.
    pub async fn at_start(config: &Arc<Config>, target: &Client) -> Result<Goal, CatchUpError> {
        let mut tables = Vec::new();
        for t in &config.tables {
            let topic = config.topic(t);
            let (kafka_cfg, name) = (config.kafka.clone(), topic.clone());
            let marks = tokio::task::spawn_blocking(move || {
                kafka::partition_watermarks(&kafka_cfg, &name, Duration::from_secs(10))
            })
            .await
            .map_err(|e| CatchUpError::Task(e.to_string()))?
            .map_err(|source| CatchUpError::Kafka {
                topic: topic.clone(),
                source,
            })?;
            let (_, applied) =
                bookkeeping(target, &config.target.bookkeeping_schema, &topic).await?;
            tables.push(Table {
                name: t.qualified(),
                topic,
                ends: marks
                    .into_iter()
                    .map(|(p, low, high)| (p, (low, high)))
                    .collect(),
                applied_at_start: applied,
            });
        }
        Ok(Goal {
            tables,
            started: Instant::now(),
        })
    }
}

/// What the target's bookkeeping says of `topic`: the next offset of each partition, and the
/// events applied or dead-lettered in all.
async fn bookkeeping(
    target: &Client,
    schema: &str,
    topic: &str,
) -> Result<(HashMap<i32, i64>, i64), PgError> {
    let rows = match target
        .query(
            &format!(
                "SELECT partition, next_offset, applied_events + dead_lettered FROM {} WHERE topic = $1",
                offsets_table(schema)
            ),
            &[&topic],
        )
        .await
    {
        Ok(rows) => rows,
        // a first run: the consumer creates its bookkeeping when it starts
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            Vec::new()
        }
        Err(e) => return Err(PgError::query("reading the consumer's offsets")(e)),
    };
    let next = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let processed = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
    Ok((next, processed))
}

/// Whether a `read_committed` reader sees no message of `topic` in `[from, end)` of
/// `partition`.
async fn nothing_between(
    config: &Arc<Config>,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
) -> Result<bool, CatchUpError> {
    let (kafka_cfg, name) = (config.kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let mut seen = false;
        kafka::read_ranges(
            &kafka_cfg,
            &name,
            &[(partition, from, end)],
            READ_TIMEOUT,
            |_| {
                seen = true;
                std::ops::ControlFlow::Break(())
            },
        )
        .map(|()| !seen)
    })
    .await
    .map_err(|e| CatchUpError::Task(e.to_string()))?
    .map_err(|source| CatchUpError::Kafka {
        topic: topic.to_string(),
        source,
    })
}

/// Waits until every partition of `goal` is caught up and prints a summary line per table
/// (events applied or dead-lettered by this run, and the time it took); then, or when it
/// fails, sets `stop`.
pub async fn watch_until_caught_up(
    config: Arc<Config>,
    target: Client,
    goal: Goal,
    stop: Arc<watch::Sender<bool>>,
) -> Result<(), CatchUpError> {
    let result = wait_and_report(&config, &target, &goal).await;
    let _ = stop.send(true);
    result
}

async fn wait_and_report(
    config: &Arc<Config>,
    target: &Client,
    goal: &Goal,
) -> Result<(), CatchUpError> {
    let schema = &config.target.bookkeeping_schema;
    // partitions seen caught up stay so: what was written after the start is not waited for
    let mut done: HashMap<(String, i32), bool> = HashMap::new();
    // where each partition's applying stood at the last look: while it moves, the consumer is
    // still applying, and the topic need not be read to know it is not caught up
    let mut last_from: HashMap<(String, i32), i64> = HashMap::new();
    loop {
        let mut all = true;
        for t in &goal.tables {
            let (next, _) = bookkeeping(target, schema, &t.topic).await?;
            for (&p, &(low, end)) in &t.ends {
                let key = (t.topic.clone(), p);
                if done.get(&key).copied().unwrap_or(false) {
                    continue;
                }
                let from = next.get(&p).copied().unwrap_or(low).max(low);
                let moving = last_from
                    .insert(key.clone(), from)
                    .is_some_and(|was| was != from);
                let caught = from >= end
                    || (!moving && nothing_between(config, &t.topic, p, from, end).await?);
                debug!(topic = %t.topic, partition = p, from, end, caught, "catching up");
                done.insert(key, caught);
                all &= caught;
            }
        }
        if all {
            break;
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
    let took = goal.started.elapsed().as_secs_f64();
    for t in &goal.tables {
        let (_, processed) = bookkeeping(target, schema, &t.topic).await?;
        let events = processed - t.applied_at_start;
        info!(table = %t.name, events, "caught up");
        println!("{}: {events} events applied in {took:.2} s", t.name);
    }
    Ok(())
}
