//! Collecting batches: polling the group's partitions, skipping what the target already has
//! (seeking past it on a partition seen for the first time), and taking the rest in (decoded
//! and checked against the rules) while the previous batch is applied. Once a batch is
//! committed in the target, its offsets are committed to Kafka too, so that the usual tools
//! show the group's lag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tracing::{debug, info, warn};
use tunnel_shared::config::{Config, KafkaConfig};
use tunnel_shared::fault::Classify;
use tunnel_shared::kafka::LeaderWatch;
use tunnel_shared::metrics::{metrics, Dependency};
use tunnel_shared::pg::{self, Session};
use tunnel_shared::retry::Backoff;
use tunnel_shared::{heartbeat, kafka};

use crate::error::RunError;
use crate::intake::{Consumed, Intake, Raw};
use crate::model::{Applied, Heartbeat, Item};
use crate::offsets;

/// How long a consumer whose log said a partition lost its leader is kept (in case the
/// partition recovers by itself) before it is replaced.
const STRANDED_GRACE: Duration = Duration::from_secs(10);
/// How often an idle consumer looks at that.
const LEADER_CHECK: Duration = Duration::from_secs(1);

/// Logs the group's rebalances. Nothing has to be handed over by hand: a partition's offsets
/// live in the target and are locked by the transaction that applies it, so a new owner that
/// starts while the old one still applies a batch waits for that batch, then skips what it
/// applied.
pub(crate) struct GroupContext {
    /// Per topic, the source table's name (the label of its lag).
    names: crate::observe::Names,
    /// Whether the client's log said a partition lost its leader for good.
    leaders: LeaderWatch,
}

impl rdkafka::ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.leaders.observe(level, fac, message);
    }
}

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
                info!(partitions = %describe(tpl), "partitions revoked");
                // their lag is the new owner's to report
                for e in tpl.elements() {
                    let table = self.names.get(e.topic()).map_or(e.topic(), String::as_str);
                    metrics().partition_revoked(table, e.partition());
                }
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
        }
    }
}

/// What the group's consumer is made of: a new one can be made of it.
pub(crate) struct Subscription {
    pub(crate) kafka: KafkaConfig,
    pub(crate) group: String,
    /// Per topic, the source table's name.
    pub(crate) names: crate::observe::Names,
    pub(crate) topics: Vec<Arc<str>>,
}

impl Subscription {
    /// A consumer of the group, subscribed to its topics.
    pub(crate) fn subscribe(&self) -> Result<StreamConsumer<GroupContext>, KafkaError> {
        let consumer: StreamConsumer<GroupContext> =
            kafka::consumer_config(&self.kafka, &self.group).create_with_context(GroupContext {
                names: self.names.clone(),
                leaders: LeaderWatch::default(),
            })?;
        let topics: Vec<&str> = self.topics.iter().map(|t| t.as_ref()).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }
}

/// Polls, filters and decodes batches.
pub(crate) struct Collector {
    subscription: Subscription,
    consumer: StreamConsumer<GroupContext>,
    /// When this collector first saw that its consumer's log said a partition lost its leader.
    stranded_since: Option<Instant>,
    intake: Intake,
    /// A connection of its own for offset look-ups, so that they can run during an apply.
    lookup: Client,
    /// How to open it again after the target went away.
    target_url: String,
    session: Session,
    bk: String,
    topics: Vec<Arc<str>>,
    /// The next offset the target needs, per partition, as far as this process knows.
    known: FxHashMap<(Arc<str>, i32), i64>,
    max: usize,
    wait: Duration,
    /// Batches the applier has committed, with what it made of them.
    done: mpsc::UnboundedReceiver<Done>,
}

/// A batch the applier has committed, with what it made of it: handed back to be freed
/// where it was allocated (mimalloc frees from another thread lazily, and the pages of a batch
/// freed elsewhere are not reused at once).
pub(crate) type Done = (Applied, Vec<Item>);

/// A batch to apply, with the newest Kafka timestamp (ms) of each of its partitions (for the
/// lag, once it is committed).
pub(crate) struct Batch {
    pub(crate) items: Vec<Item>,
    pub(crate) stamps: Vec<(Arc<str>, i32, i64)>,
}

impl Collector {
    /// A collector of the batches of `consumer` (made of `subscription`), with `lookup` a
    /// connection to the target of its own; `done` brings the committed batches back.
    pub(crate) fn new(
        subscription: Subscription,
        consumer: StreamConsumer<GroupContext>,
        intake: Intake,
        lookup: Client,
        session: Session,
        config: &Config,
        done: mpsc::UnboundedReceiver<Done>,
    ) -> Self {
        let topics = subscription.topics.clone();
        Self {
            subscription,
            consumer,
            stranded_since: None,
            intake,
            lookup,
            target_url: config.target.url.clone(),
            session,
            bk: config.target.bookkeeping_schema.clone(),
            topics,
            known: FxHashMap::default(),
            max: config.consumer.batch_max_events,
            wait: Duration::from_millis(config.consumer.batch_max_wait_ms),
            done,
        }
    }

    /// Sends batches to `batches` until asked to stop, or until the applier is gone.
    pub(crate) async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        batches: mpsc::Sender<Batch>,
    ) -> Result<(), RunError> {
        loop {
            self.settle();
            match self.next_batch(&mut stop).await? {
                Some(items) => {
                    if batches.send(items).await.is_err() {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            }
        }
    }

    /// The next batch: the first message, then whatever arrives within `wait`, up to `max`,
    /// without what the target already has. `None` when asked to stop.
    async fn next_batch(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Batch>, RunError> {
        loop {
            if *stop.borrow() {
                return Ok(None);
            }
            self.mind_leaders()?;
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = stop.changed() => return Ok(None),
                // an idle consumer looks at its leaders now and then too
                _ = tokio::time::sleep(LEADER_CHECK) => continue,
            };
            let mut batch: Vec<Consumed> = Vec::new();
            match first {
                Ok(m) => batch.push(self.owned(&m)),
                Err(e) => {
                    self.reported(e)?;
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
                        Err(e) => self.reported(e)?,
                    },
                    _ = &mut deadline => break,
                }
            }
            metrics().dependency(Dependency::Kafka, true);
            let batch = self.filter_and_decode(batch).await?;
            if batch.items.iter().any(|i| matches!(i, Item::Event(_))) {
                metrics().dependency(Dependency::Registry, true);
            }
            if !batch.items.is_empty() {
                return Ok(Some(batch));
            }
        }
    }

    /// Replaces the consumer by a new one of the same group [`STRANDED_GRACE`] after its log
    /// said a partition lost its leader for good (see [`LeaderWatch`]): it would never fetch
    /// from that partition again. Nothing is lost or applied twice: the new consumer starts
    /// from the offsets committed to Kafka, which are never ahead of the target's, and what
    /// the target already has is skipped as after any rebalance.
    fn mind_leaders(&mut self) -> Result<(), RunError> {
        if !self.consumer.context().leaders.stranded() {
            return Ok(());
        }
        let since = *self.stranded_since.get_or_insert_with(Instant::now);
        if since.elapsed() < STRANDED_GRACE {
            return Ok(());
        }
        warn!("starting a new kafka consumer: a partition was left without a leader");
        let fresh = self.subscription.subscribe()?;
        let old = std::mem::replace(&mut self.consumer, fresh);
        self.stranded_since = None;
        metrics().restarted("kafka consumer");
        // leaving the group blocks until the broker answers: not on the runtime's threads
        tokio::task::spawn_blocking(move || drop(old));
        Ok(())
    }

    /// An error the consumer's queue handed out instead of a message. Most are reports of what
    /// librdkafka is already retrying by itself (a broker down, a coordinator moving): they are
    /// logged and the next message is asked for at once. (Waiting a back-off after each one
    /// let the dozens of reports queued during a broker outage hold the consumer for minutes
    /// after the broker was back: rebalances and messages wait behind them in the same queue.)
    /// A fatal one ends the consumer, which then exits with the reason.
    fn reported(&self, e: KafkaError) -> Result<(), RunError> {
        let fatal = matches!(e, KafkaError::MessageConsumptionFatal(_))
            || self.consumer.client().fatal_error().is_some();
        if fatal {
            return Err(RunError::Kafka(e));
        }
        warn!(error = %e, "kafka consumer error");
        if matches!(
            e.rdkafka_error_code(),
            Some(
                rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                    | rdkafka::types::RDKafkaErrorCode::AllBrokersDown
            )
        ) {
            metrics().dependency(Dependency::Kafka, false);
        }
        Ok(())
    }

    fn owned(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Consumed {
        use rdkafka::message::Headers;
        let heartbeat = m
            .headers()
            .is_some_and(|h| heartbeat::is_heartbeat(m.key(), h.iter().map(|header| header.key)));
        let raw = Raw {
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
        };
        Consumed {
            raw,
            timestamp_ms: m.timestamp().to_millis(),
            heartbeat,
        }
    }

    /// The offset the target stored for a partition seen for the first time (after an
    /// assignment). A target that is down or restarting meanwhile is waited for, its
    /// connection opened again, as everywhere else: the consumer stopped with "reading stored
    /// offsets: connection closed" when the target went away during a rebalance.
    async fn stored_offset(&mut self, topic: &str, partition: i32) -> Result<i64, RunError> {
        let mut backoff = Backoff::default();
        loop {
            let e = match offsets::stored(&self.lookup, &self.bk, topic, partition).await {
                Ok(stored) => return Ok(stored),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e.into()),
            };
            metrics().dependency(Dependency::Target, false);
            backoff
                .wait_after("reading the offset stored in the target", &e)
                .await;
            if self.lookup.is_closed() {
                match pg::connect(&self.target_url, &self.session).await {
                    Ok(c) => self.lookup = c,
                    Err(e) if e.is_transient() => {
                        debug!(error = %e, "the target is not back yet");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// Skips what the target already has, seeking past it on a partition seen for the first
    /// time, and decodes the rest.
    async fn filter_and_decode(&mut self, batch: Vec<Consumed>) -> Result<Batch, RunError> {
        let mut entries = Vec::with_capacity(batch.len());
        let mut stamps: FxHashMap<(Arc<str>, i32), i64> = FxHashMap::default();
        for Consumed {
            raw,
            timestamp_ms,
            heartbeat,
        } in batch
        {
            if let Some(ts) = timestamp_ms {
                let stamp = stamps
                    .entry((raw.topic.clone(), raw.partition))
                    .or_insert(ts);
                *stamp = (*stamp).max(ts);
            }
            let tp = (raw.topic.clone(), raw.partition);
            let known = match self.known.get(&tp) {
                Some(&next) => next,
                None => {
                    let stored = self.stored_offset(&raw.topic, raw.partition).await?;
                    self.known.insert(tp, stored);
                    if raw.offset + 1 < stored {
                        info!(topic = %raw.topic, partition = raw.partition, offset = stored, "seeking to the offset stored in the target");
                        // a seek waits for the fetcher (up to 5 s): not on the runtime's thread
                        let sought = kafka::without_blocking_the_runtime(|| {
                            self.consumer.seek(
                                &raw.topic,
                                raw.partition,
                                Offset::Offset(stored),
                                Duration::from_secs(5),
                            )
                        });
                        if let Err(e) = sought {
                            debug!(error = %e, "seek failed; already-applied events are skipped instead");
                        }
                    }
                    stored
                }
            };
            if raw.offset < known {
                continue;
            }
            if heartbeat {
                entries.push(Item::Heartbeat(Heartbeat {
                    topic: raw.topic,
                    partition: raw.partition,
                    offset: raw.offset,
                }));
                continue;
            }
            entries.push(self.intake.take(raw).await);
        }
        Ok(Batch {
            items: entries,
            stamps: stamps.into_iter().map(|((t, p), ts)| (t, p, ts)).collect(),
        })
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
    fn applied(&mut self, applied: &Applied) {
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
            dead_lettered = applied.dead_lettered,
            "applied a batch"
        );
    }
}
