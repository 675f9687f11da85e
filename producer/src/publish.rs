//! Shipping events: one Kafka transaction per batch holds the events and the checkpoint that
//! covers them. The producer is idempotent and transactional (`transactional.id` per table), so
//! a restarted producer fences its predecessor and a crash never leaves half a batch visible to
//! `read_committed` consumers.

use std::future::Future;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;
use tunnel_shared::config::KafkaConfig;
use tunnel_shared::event::{ChangeEvent, EventEncoder, Op};
use tunnel_shared::fault::ErrorClass;
use tunnel_shared::kafka::LeaderWatch;
use tunnel_shared::{heartbeat, kafka};

use crate::checkpoint::Checkpoint;
use crate::error::{is_fenced, PublishError, COMMITTING, DELIVERING_COMMITTED};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long deliveries may make no progress once the client said a partition lost its leader
/// for good, before the transaction is given up (and the instance replaced).
const STRANDED_GRACE: Duration = Duration::from_secs(5);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Records the first failed delivery of a transaction. With transactions, `commit_transaction`
/// flushes every message and fails if any could not be delivered; this only keeps the reason.
/// (Per-message delivery futures cost a channel and a wake-up per row.)
/// It also watches the client's log for a partition left without a leader for good.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Option<KafkaError>>,
    leaders: LeaderWatch,
}

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.leaders.observe(level, fac, message);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            if let Ok(mut failed) = self.failed.lock() {
                failed.get_or_insert_with(|| e.clone());
            }
        }
    }
}

type KafkaProducer = ThreadedProducer<Deliveries>;

/// Ships a batch of events with the checkpoint that covers them, all or nothing: what the
/// worker and the snapshot need of [`Publisher`].
pub trait Shipper: Sync {
    /// Ships `events` and `checkpoint` in one transaction; on failure nothing of it is visible
    /// and the same batch may be shipped again.
    fn publish(
        &self,
        events: &[ChangeEvent],
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

impl Shipper for Publisher {
    async fn publish(
        &self,
        events: &[ChangeEvent],
        checkpoint: &Checkpoint,
    ) -> Result<(), PublishError> {
        Publisher::publish(self, events, checkpoint).await
    }
}

/// The topics a publisher writes to.
pub struct PublisherTopics {
    /// The table's events.
    pub table: String,
    /// The checkpoints (and the headers of saved key sets).
    pub checkpoints: String,
    /// The chunks of saved key sets.
    pub keysets: String,
}

pub struct Publisher {
    /// The transactional producer in use; replaced by a new instance after a fatal error.
    producer: Mutex<Arc<KafkaProducer>>,
    /// Its settings, for that new instance.
    config: ClientConfig,
    topic: String,
    checkpoint_topic: String,
    keysets_topic: String,
    table_key: String,
    encoder: EventEncoder,
    /// Set when a commit failed in a way that may have committed anyway (a commit that timed
    /// out, say): the shipped key set may then miss keys of the topic, and is no longer saved
    /// ([`crate::keysnapshot`]).
    doubtful: AtomicBool,
    /// Set when a transaction failed: the next one starts with a new instance (see
    /// [`Publisher::usable`]).
    replace: AtomicBool,
}

/// A saved key set to ship: its chunks (key, value; no value: a tombstone) to partition 0 of
/// the key sets' topic, then its header, made from the offset there from which the chunks are
/// (other producers' messages may be among them), to the checkpoint topic.
pub struct KeySetRecords<F> {
    pub chunks: Vec<(String, Option<Vec<u8>>)>,
    pub header_key: String,
    pub header: F,
}

fn kafka_err(context: &str) -> impl FnOnce(KafkaError) -> PublishError + '_ {
    move |source| PublishError::Kafka {
        context: context.to_string(),
        source,
    }
}

/// Runs a blocking call of the producer off the async threads.
async fn blocking<T: Send + 'static>(
    producer: &Arc<KafkaProducer>,
    call: impl FnOnce(&KafkaProducer) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    let p = producer.clone();
    tokio::task::spawn_blocking(move || call(&p))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// Creates a transactional producer and initialises its transactions, which fences any
/// earlier instance with the same id.
async fn start(config: &ClientConfig) -> Result<Arc<KafkaProducer>, PublishError> {
    let config = config.clone();
    // creating, initialising and (after a failure) dropping an instance all block
    tokio::task::spawn_blocking(move || {
        let producer: KafkaProducer = config
            .create_with_context(Deliveries::default())
            .map_err(kafka_err("creating the producer"))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(kafka_err("initialising transactions"))?;
        Ok(Arc::new(producer))
    })
    .await
    .unwrap_or(Err(PublishError::Kafka {
        context: "starting the producer".into(),
        source: KafkaError::Canceled,
    }))
}

impl Publisher {
    /// Creates the transactional producer and fences any earlier instance with the same id.
    pub async fn new(
        kafka_cfg: &KafkaConfig,
        transactional_id: &str,
        topics: PublisherTopics,
        table_key: String,
        encoder: EventEncoder,
    ) -> Result<Self, PublishError> {
        let config = kafka::transactional_producer_config(kafka_cfg, transactional_id);
        let producer = start(&config).await?;
        Ok(Self {
            producer: Mutex::new(producer),
            config,
            topic: topics.table,
            checkpoint_topic: topics.checkpoints,
            keysets_topic: topics.keysets,
            table_key,
            encoder,
            doubtful: AtomicBool::new(false),
            replace: AtomicBool::new(false),
        })
    }

    /// Whether a commit may have gone through although it failed (see `doubtful`).
    pub fn doubtful(&self) -> bool {
        self.doubtful.load(Ordering::Relaxed)
    }

    /// The end of each partition of the table's topic (the offset its next message will get),
    /// in partition order.
    pub async fn topic_ends(&self) -> Result<Vec<(i32, i64)>, PublishError> {
        let producer = self.usable().await?;
        let topic = self.topic.clone();
        blocking(&producer, move |p| {
            let md = p.client().fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
            let mut ends = Vec::new();
            for part in md.topics().iter().flat_map(|t| t.partitions()) {
                let (_, high) = p
                    .client()
                    .fetch_watermarks(&topic, part.id(), METADATA_TIMEOUT)?;
                ends.push((part.id(), high));
            }
            ends.sort_unstable();
            Ok(ends)
        })
        .await
        .map_err(kafka_err("reading the ends of the table's topic"))
    }

    /// The end of partition 0 of the key sets' topic, as a `read_committed` reader sees it.
    async fn keysets_end(&self, producer: &Arc<KafkaProducer>) -> Result<i64, PublishError> {
        let topic = self.keysets_topic.clone();
        blocking(producer, move |p| {
            p.client()
                .fetch_watermarks(&topic, 0, METADATA_TIMEOUT)
                .map(|(_, high)| high)
        })
        .await
        .map_err(kafka_err("reading the end of the key sets' topic"))
    }

    /// Ships a saved key set in one transaction: its chunks, then the header that names the
    /// offset of partition 0 from which they are: its end as a `read_committed` reader saw it
    /// before (the first chunk cannot go lower). (Offsets of delivered messages would be
    /// exact, but the producer asks for reports of failures only.)
    pub async fn ship_key_set<F: FnOnce(i64) -> Vec<u8>>(
        &self,
        records: KeySetRecords<F>,
    ) -> Result<(), PublishError> {
        let producer = self.usable().await?;
        if let Ok(mut failed) = producer.context().failed.lock() {
            *failed = None;
        }
        let low = self.keysets_end(&producer).await?;
        producer
            .begin_transaction()
            .map_err(kafka_err("beginning a transaction"))?;
        let sent = async {
            for (key, value) in &records.chunks {
                let mut record = BaseRecord::to(&self.keysets_topic)
                    .key(key.as_bytes())
                    .partition(0);
                if let Some(v) = value {
                    record = record.payload(v.as_slice());
                }
                send(&producer, record).await?;
            }
            let header = (records.header)(low);
            let record = BaseRecord::to(&self.checkpoint_topic)
                .key(records.header_key.as_bytes())
                .payload(header.as_slice());
            send(&producer, record).await?;
            delivered(&producer).await
        }
        .await;
        self.finish(&producer, sent).await
    }

    /// How this publisher encodes the table's events (and keys).
    pub fn encoder(&self) -> &EventEncoder {
        &self.encoder
    }

    /// The current instance (a panic elsewhere while it was held leaves it as it was).
    fn instance(&self) -> std::sync::MutexGuard<'_, Arc<KafkaProducer>> {
        self.producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The producer to use now. An instance that has hit a fatal error (a transaction the
    /// broker no longer knows after it restarted, say) can never ship again, and one whose
    /// transaction failed may never deliver again: after a broker outage, librdkafka 2.12 can
    /// keep a partition without a leader for good when a metadata update named none
    /// ("new leader-1 not found in cache", confluentinc/librdkafka#5430), so that every later
    /// transaction times out waiting for its deliveries. Either is replaced by a new instance
    /// with the same transactional id (which fences the old one), unless it was fenced by
    /// another producer.
    async fn usable(&self) -> Result<Arc<KafkaProducer>, PublishError> {
        let current = self.instance().clone();
        let why = match current.client().fatal_error() {
            Some((code, reason)) if is_fenced(code) => {
                return Err(PublishError::Fenced { reason });
            }
            Some((_, reason)) => format!("a fatal error: {reason}"),
            None if self.replace.load(Ordering::Relaxed) => "a failed transaction".to_string(),
            None if current.context().leaders.stranded() => {
                "a partition left without a leader".to_string()
            }
            None => return Ok(current),
        };
        tracing::warn!(after = %why, "starting a new transactional kafka producer");
        let fresh = start(&self.config).await?;
        self.replace.store(false, Ordering::Relaxed);
        tunnel_shared::metrics::metrics().restarted(&format!("{} kafka producer", self.topic));
        let old = std::mem::replace(&mut *self.instance(), fresh.clone());
        // its threads are joined when it is dropped: not on the runtime's threads
        tokio::task::spawn_blocking(move || drop(old));
        Ok(fresh)
    }

    /// Ships `events` and `checkpoint` in one transaction. On failure the transaction is
    /// aborted: nothing of it becomes visible, and the caller may try the same batch again.
    pub async fn publish(
        &self,
        events: &[ChangeEvent],
        checkpoint: &Checkpoint,
    ) -> Result<(), PublishError> {
        self.ship(events, Some(checkpoint), None).await
    }

    /// Ships a heartbeat to every partition of the table's topic, stamped `at_ms`, in a
    /// transaction of its own (see [`tunnel_shared::heartbeat`]).
    pub async fn heartbeat(&self, at_ms: i64) -> Result<(), PublishError> {
        let producer = self.usable().await?;
        let topic = self.topic.clone();
        let partitions = blocking(&producer, move |p| {
            let md = p.client().fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
            Ok(md.topics().first().map_or(0, |t| t.partitions().len()))
        })
        .await
        .map_err(kafka_err("reading the topic's partitions for a heartbeat"))?;
        let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
        self.ship(&[], None, Some((partitions, at_ms))).await
    }

    /// Ships `events`, `checkpoint` and heartbeats (to `partitions` partitions, stamped
    /// `at_ms`) in one transaction.
    async fn ship(
        &self,
        events: &[ChangeEvent],
        checkpoint: Option<&Checkpoint>,
        heartbeats: Option<(i32, i64)>,
    ) -> Result<(), PublishError> {
        // encode everything first: an encoding error must not leave a transaction open
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(events.len() + 1);
        for e in events {
            let key = self.encoder.encode_key(&e.key)?;
            let value = self.encoder.encode_value(e)?;
            // with room for the record's framing and headers
            let bytes = key.len() + value.len();
            if bytes + 4096 > kafka::MAX_MESSAGE_BYTES {
                tracing::error!(key = ?e.key, bytes, limit = kafka::MAX_MESSAGE_BYTES, "an event larger than the largest message Kafka takes here is not shipped: the row stays behind in the replica until it is smaller");
                tunnel_shared::metrics::metrics().error(ErrorClass::Definite);
                continue;
            }
            records.push((key.clone(), Some(value)));
            if e.op == Op::Delete {
                records.push((key, None)); // the tombstone
            }
        }
        let producer = self.usable().await?;
        if let Ok(mut failed) = producer.context().failed.lock() {
            *failed = None;
        }
        producer
            .begin_transaction()
            .map_err(kafka_err("beginning a transaction"))?;
        let sent = match self
            .send_all(&producer, &records, checkpoint, heartbeats)
            .await
        {
            Ok(()) => delivered(&producer).await,
            Err(e) => Err(e),
        };
        self.finish(&producer, sent).await
    }

    /// Commits the transaction whose messages were `sent`, or aborts it.
    async fn finish(
        &self,
        producer: &Arc<KafkaProducer>,
        sent: Result<(), PublishError>,
    ) -> Result<(), PublishError> {
        let committed = match sent {
            Ok(()) => {
                let c = blocking(producer, |p| p.commit_transaction(TXN_TIMEOUT))
                    .await
                    .map_err(kafka_err(COMMITTING));
                if c.is_err() {
                    // the broker may have committed it all the same
                    self.doubtful.store(true, Ordering::Relaxed);
                }
                c
            }
            Err(e) => Err(e),
        };
        let failed = producer
            .context()
            .failed
            .lock()
            .ok()
            .and_then(|mut f| f.take());
        match (committed, failed) {
            (Ok(()), None) => Ok(()),
            // cannot happen with transactions (a failed delivery fails the commit): say so
            (Ok(()), Some(e)) => {
                self.doubtful.store(true, Ordering::Relaxed);
                Err(PublishError::Kafka {
                    context: DELIVERING_COMMITTED.into(),
                    source: e,
                })
            }
            (Err(e), _) => {
                // the instance that replaces a stranded one fences it, which aborts its
                // transaction on the broker: asking it to abort would wait for deliveries that
                // never come
                if !producer.context().leaders.stranded() {
                    abort(producer).await;
                }
                self.replace.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    async fn send_all(
        &self,
        producer: &KafkaProducer,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        checkpoint: Option<&Checkpoint>,
        heartbeats: Option<(i32, i64)>,
    ) -> Result<(), PublishError> {
        for (key, value) in records {
            let mut record = BaseRecord::to(&self.topic).key(key.as_slice());
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            send(producer, record).await?;
        }
        if let Some((partitions, at_ms)) = heartbeats {
            for partition in 0..partitions {
                let headers = OwnedHeaders::new().insert(Header {
                    key: heartbeat::HEADER,
                    value: Some(tunnel_shared::VERSION),
                });
                let record = BaseRecord::<[u8], [u8]>::to(&self.topic)
                    .key(heartbeat::KEY)
                    .partition(partition)
                    .timestamp(at_ms)
                    .headers(headers);
                send(producer, record).await?;
            }
        }
        let Some(checkpoint) = checkpoint else {
            return Ok(());
        };
        let cp = checkpoint.to_json();
        let record = BaseRecord::to(&self.checkpoint_topic)
            .key(self.table_key.as_bytes())
            .payload(cp.as_slice());
        send(producer, record).await
    }
}

/// Waits until every message sent is delivered (or failed). The client's own flush, which the
/// commit starts with, waits in steps of 100 ms while deliveries are outstanding: a tenth of a
/// second per transaction, most of a snapshot chunk's time.
/// Gives up sooner, after [`STRANDED_GRACE`] without a delivery, once the client said a
/// partition lost its leader for good: they would only time out.
async fn delivered(producer: &KafkaProducer) -> Result<(), PublishError> {
    let start = tokio::time::Instant::now();
    let (mut pending, mut progress) = (producer.in_flight_count(), start);
    while pending > 0 {
        let now = tokio::time::Instant::now();
        let stranded = producer.context().leaders.stranded();
        if now >= start + TXN_TIMEOUT || (stranded && now >= progress + STRANDED_GRACE) {
            let context = if stranded {
                "waiting for the transaction's deliveries (a partition lost its leader)"
            } else {
                "waiting for the transaction's deliveries"
            };
            return Err(PublishError::Kafka {
                context: context.into(),
                source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now_pending = producer.in_flight_count();
        if now_pending < pending {
            progress = tokio::time::Instant::now();
        }
        pending = now_pending;
    }
    Ok(())
}

/// Enqueues one record; a full local queue is back-pressure, so wait and try again.
async fn send(
    producer: &KafkaProducer,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), PublishError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => {
                return Err(PublishError::Kafka {
                    context: "enqueuing an event".into(),
                    source: e,
                })
            }
        }
    }
}

async fn abort(producer: &Arc<KafkaProducer>) {
    if let Err(e) = blocking(producer, |p| p.abort_transaction(TXN_TIMEOUT)).await {
        tracing::warn!(error = %e, "aborting the kafka transaction failed");
    }
}
