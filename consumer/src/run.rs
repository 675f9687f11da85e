//! The consumer loop: poll a batch, decode it, make sure the target tables exist, apply it in
//! one target transaction (with its offsets), then tell Kafka the committed position so that
//! lag is visible to the usual tools. Transient failures are retried with back-off, never
//! skipped; SIGINT/SIGTERM finish the batch in hand before exiting.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tracing::{debug, info, warn};
use tunnel_shared::config::Config;
use tunnel_shared::fault::Classify;
use tunnel_shared::kafka::{self, TopicError, TABLE_TOPIC_CONFIGS};
use tunnel_shared::pg::{self, PgError, Session};
use tunnel_shared::registry::{Registry, RegistryError};
use tunnel_shared::retry::{retry, Backoff};

use tunnel_shared::rules::{self, Rule};
use tunnel_shared::schema;

use crate::apply::{self, ApplyError, Item, TargetTable};
use crate::decode::Decoder;
use crate::dlq::{self, DlqWriter};
use crate::intake::{Intake, Raw};
use crate::{ddl, park};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("config: {0}")]
    Rules(String),
    #[error("the collecting task ended abnormally: {0}")]
    Collector(String),
    #[error(transparent)]
    Dlq(#[from] dlq::writer::DlqError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

const SETUP_ATTEMPTS: u32 = 20;

pub async fn run(config: Arc<Config>, mut stop: watch::Receiver<bool>) -> Result<(), RunError> {
    let registry = Arc::new(Registry::new(&config.registry.url)?);
    let decoder = Decoder::new(registry.clone());
    let session = Session {
        application_name: format!("{}-consumer", config.source.application_name),
        statement_timeout: Duration::from_millis(config.target.statement_timeout_ms),
        lock_timeout: Duration::ZERO,
        read_only: false,
        canonical_text: false,
    };
    let client = retry("connecting to the target", SETUP_ATTEMPTS, || {
        pg::connect(&config.target.url, &session)
    })
    .await?;
    let bk = config.target.bookkeeping_schema.clone();
    retry("creating the bookkeeping table", SETUP_ATTEMPTS, || async {
        let mut c = pg::connect(&config.target.url, &session).await?;
        ddl::ensure_bookkeeping(&mut c, &bk).await
    })
    .await?;
    let mut targets: HashMap<Arc<str>, TargetTable> = HashMap::new();
    let mut rules_of: HashMap<Arc<str>, Vec<Rule>> = HashMap::new();
    let admin = kafka::admin(&config.kafka)?;
    let dlq_writer = DlqWriter::new(&config.kafka)?;
    for t in &config.tables {
        let topic = config.topic(t);
        let k = &config.kafka;
        retry("creating the table's topic", SETUP_ATTEMPTS, || {
            kafka::ensure_topic(
                &admin,
                &topic,
                k.partitions,
                k.replication_factor,
                TABLE_TOPIC_CONFIGS,
            )
        })
        .await?;
        let dlq_topic = dlq::topic_of(&topic);
        retry("creating the table's DLQ topic", SETUP_ATTEMPTS, || {
            kafka::ensure_topic(
                &admin,
                &dlq_topic,
                k.partitions,
                k.replication_factor,
                dlq::writer::DLQ_TOPIC_CONFIGS,
            )
        })
        .await?;
        let table_rules = t
            .parsed_rules()
            .map_err(|e| RunError::Rules(format!("table {}: {e}", t.qualified())))?;
        check_rules_at_start(&registry, &topic, &t.qualified(), &table_rules).await?;
        rules_of.insert(Arc::from(topic.as_str()), table_rules);
        targets.insert(
            Arc::from(topic.as_str()),
            TargetTable {
                schema: t.target_schema().to_string(),
                name: t.target_name().to_string(),
            },
        );
    }
    let group = config.kafka.consumer_group.clone();
    let consumer: StreamConsumer<GroupContext> =
        kafka::consumer_config(&config.kafka, &group).create_with_context(GroupContext)?;
    let topics: Vec<&str> = targets.keys().map(|t| t.as_ref()).collect();
    consumer.subscribe(&topics)?;
    info!(group = %group, topics = ?topics, "consuming");

    let lookup = retry("connecting to the target", SETUP_ATTEMPTS, || {
        pg::connect(&config.target.url, &session)
    })
    .await?;
    // applied batches come back to be freed where they were allocated: mimalloc frees from
    // another thread lazily, and the pages of a batch freed elsewhere are not reused at once
    let (done_tx, done_rx) = mpsc::unbounded_channel::<(apply::Applied, Vec<Item>)>();
    let mut collector = Collector {
        consumer,
        intake: Intake::new(decoder, rules_of),
        lookup,
        bk: bk.clone(),
        topics: targets.keys().cloned().collect(),
        known: FxHashMap::default(),
        max: config.consumer.batch_max_events,
        wait: Duration::from_millis(config.consumer.batch_max_wait_ms),
        done: done_rx,
    };
    let mut applier = Applier {
        client,
        config: config.clone(),
        session,
        group,
        targets,
        ready: HashSet::new(),
        dlq: dlq_writer,
        parked: park::ParkedCache::default(),
    };
    // the collector runs on a task of its own, one batch ahead: decoding the next batch uses
    // the other core while this one is applied (within one task they would only take turns)
    let (batch_tx, mut batch_rx) = mpsc::channel::<Vec<Item>>(1);
    let mut collecting = tokio::spawn(async move {
        loop {
            collector.settle();
            match collector.next_batch(&mut stop).await? {
                Some(items) => {
                    if batch_tx.send(items).await.is_err() {
                        return Ok::<_, RunError>(());
                    }
                }
                None => return Ok(()),
            }
        }
    });
    loop {
        tokio::select! {
            items = batch_rx.recv() => {
                let Some(items) = items else { break };
                match applier.apply(&items).await {
                    Ok(applied) => {
                        let _ = done_tx.send((applied, items));
                    }
                    Err(e) => {
                        collecting.abort();
                        return Err(e);
                    }
                }
            }
            // the collector failed (or stopped) with no batch on its way
            ended = &mut collecting, if batch_rx.is_empty() => {
                match ended {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(RunError::Collector(e.to_string())),
                }
            }
        }
    }
    info!("stopped");
    Ok(())
}

/// Logs the group's rebalances. Nothing has to be handed over by hand: a partition's offsets
/// live in the target and are locked by the transaction that applies it, so a new owner that
/// starts while the old one still applies a batch waits for that batch, then skips what it
/// applied.
struct GroupContext;

impl rdkafka::ClientContext for GroupContext {}

impl rdkafka::consumer::ConsumerContext for GroupContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        use rdkafka::consumer::Rebalance;
        let describe = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = %describe(tpl), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                info!(partitions = %describe(tpl), "partitions revoked")
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
        }
    }
}

/// Polls, filters and decodes batches.
struct Collector {
    consumer: StreamConsumer<GroupContext>,
    intake: Intake,
    /// A connection of its own for offset look-ups, so that they can run during an apply.
    lookup: Client,
    bk: String,
    topics: Vec<Arc<str>>,
    /// The next offset the target needs, per partition, as far as this process knows.
    known: FxHashMap<(Arc<str>, i32), i64>,
    max: usize,
    wait: Duration,
    /// Batches the applier has committed, with what it made of them.
    done: mpsc::UnboundedReceiver<(apply::Applied, Vec<Item>)>,
}

impl Collector {
    /// The next batch: the first message, then whatever arrives within `wait`, up to `max`,
    /// without what the target already has. `None` when asked to stop.
    async fn next_batch(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Vec<Item>>, RunError> {
        let mut backoff = Backoff::default();
        loop {
            if *stop.borrow() {
                return Ok(None);
            }
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = stop.changed() => return Ok(None),
            };
            let mut batch: Vec<Raw> = Vec::new();
            match first {
                Ok(m) => batch.push(self.owned(&m)),
                Err(e) => {
                    warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
            // one timer for the whole batch, looked at only when no message is ready
            let deadline = tokio::time::sleep(self.wait);
            tokio::pin!(deadline);
            while batch.len() < self.max {
                tokio::select! {
                    biased;
                    m = self.consumer.recv() => match m {
                        Ok(m) => {
                            batch.push(self.owned(&m));
                            if batch.len().is_multiple_of(1024) {
                                self.settle();
                            }
                        }
                        Err(e) => warn!(error = %e, "kafka consumer error"),
                    },
                    _ = &mut deadline => break,
                }
            }
            let entries = self.filter_and_decode(batch).await?;
            if !entries.is_empty() {
                return Ok(Some(entries));
            }
        }
    }

    fn owned(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Raw {
        Raw {
            topic: self
                .topics
                .iter()
                .find(|t| t.as_ref() == m.topic())
                .cloned()
                .unwrap_or_else(|| Arc::from(m.topic())),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
        }
    }

    /// Skips what the target already has, seeking past it on a partition seen for the first
    /// time, and decodes the rest.
    async fn filter_and_decode(&mut self, batch: Vec<Raw>) -> Result<Vec<Item>, RunError> {
        let mut entries = Vec::with_capacity(batch.len());
        for raw in batch {
            let tp = (raw.topic.clone(), raw.partition);
            let known = match self.known.get(&tp) {
                Some(&next) => next,
                None => {
                    let stored =
                        stored_offset(&self.lookup, &self.bk, &raw.topic, raw.partition).await?;
                    self.known.insert(tp, stored);
                    if raw.offset + 1 < stored {
                        info!(topic = %raw.topic, partition = raw.partition, offset = stored, "seeking to the offset stored in the target");
                        if let Err(e) = self.consumer.seek(
                            &raw.topic,
                            raw.partition,
                            Offset::Offset(stored),
                            Duration::from_secs(5),
                        ) {
                            debug!(error = %e, "seek failed; already-applied events are skipped instead");
                        }
                    }
                    stored
                }
            };
            if raw.offset < known {
                continue;
            }
            entries.push(self.intake.take(raw).await);
        }
        Ok(entries)
    }

    /// Takes in the batches the applier has committed since last asked, and frees them.
    fn settle(&mut self) {
        while let Ok((applied, items)) = self.done.try_recv() {
            self.applied(&applied);
            drop(items);
        }
    }

    /// After a batch committed in the target: remember its offsets, and tell Kafka too, so
    /// that the usual tools show the group's lag.
    fn applied(&mut self, applied: &apply::Applied) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in &applied.next_offsets {
            self.known.insert((topic.clone(), *partition), *next);
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                debug!(error = %e, "committing offsets to kafka failed (the target holds the real ones)");
            }
        }
        debug!(
            events = applied.events,
            skipped = applied.already_applied,
            "applied a batch"
        );
    }
}

/// Applies batches to the target: tables created when first needed, transient failures
/// retried on the same batch.
struct Applier {
    client: Client,
    config: Arc<Config>,
    session: Session,
    group: String,
    targets: HashMap<Arc<str>, TargetTable>,
    ready: HashSet<Arc<str>>,
    dlq: DlqWriter,
    parked: park::ParkedCache,
}

impl Applier {
    async fn apply(&mut self, items: &[Item]) -> Result<apply::Applied, RunError> {
        for e in items.iter().filter_map(|i| match i {
            Item::Event(e) => Some(e),
            Item::Rejected(_) => None,
        }) {
            if self.ready.contains(&e.topic) {
                continue;
            }
            let (Some(vs), Some(target)) = (&e.value_schema, self.targets.get(&e.topic)) else {
                continue;
            };
            let (vf, kf) = (vs.fields.clone(), e.key_schema.fields.clone());
            let (url, session) = (&self.config.target.url, &self.session);
            retry("creating the target table", SETUP_ATTEMPTS, || async {
                let mut c = pg::connect(url, session).await?;
                ddl::ensure_table(&mut c, &target.schema, &target.name, &vf, &kf).await
            })
            .await?;
            info!(table = %format!("{}.{}", target.schema, target.name), "target table ready");
            self.ready.insert(e.topic.clone());
        }
        let usable: HashMap<Arc<str>, TargetTable> = self
            .targets
            .iter()
            .filter(|(t, _)| self.ready.contains(*t))
            .map(|(t, v)| (t.clone(), v.clone()))
            .collect();
        let bk = &self.config.target.bookkeeping_schema;
        let mut backoff = Backoff::default();
        loop {
            match apply::apply_batch(
                &mut self.client,
                bk,
                &self.group,
                &usable,
                items,
                &mut self.dlq,
                &mut self.parked,
            )
            .await
            {
                Ok(a) => return Ok(a),
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, delay_ms = delay.as_millis() as u64, "apply failed, retrying the batch");
                    tokio::time::sleep(delay).await;
                    if self.client.is_closed() {
                        let (url, session) = (&self.config.target.url, &self.session);
                        self.client = retry("reconnecting to the target", u32::MAX, || {
                            pg::connect(url, session)
                        })
                        .await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

async fn stored_offset(
    client: &Client,
    bk: &str,
    topic: &str,
    partition: i32,
) -> Result<i64, PgError> {
    let rows = client
        .query(
            &format!(
                "SELECT next_offset FROM {} WHERE topic = $1 AND partition = $2",
                ddl::offsets_table(bk)
            ),
            &[&topic, &partition],
        )
        .await
        .map_err(PgError::query("reading stored offsets"))?;
    Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
}

/// Checks the rules against the latest value schema registered for the topic, so that a rule on
/// a column the table does not have stops the consumer at start-up. A topic with no schema yet
/// is checked when its first event arrives (the events then go to the DLQ with the reason).
async fn check_rules_at_start(
    registry: &Registry,
    topic: &str,
    table: &str,
    table_rules: &[Rule],
) -> Result<(), RunError> {
    if table_rules.is_empty() {
        return Ok(());
    }
    let subject = format!("{topic}-value");
    let id = retry("reading the latest value schema", SETUP_ATTEMPTS, || {
        registry.latest_id(&subject)
    })
    .await?;
    let Some(id) = id else {
        return Ok(());
    };
    let writer = retry("reading the latest value schema", SETUP_ATTEMPTS, || {
        registry.schema(id)
    })
    .await?;
    let fields = schema::row_fields(&writer, "value")
        .map_err(|e| RunError::Rules(format!("table {table}: {e}")))?;
    let columns: Vec<(&str, &str)> = fields
        .iter()
        .map(|f| (f.column.as_str(), f.pg_type.as_str()))
        .collect();
    rules::compile(table_rules, &columns)
        .map_err(|e| RunError::Rules(format!("table {table}: {e}")))?;
    Ok(())
}
