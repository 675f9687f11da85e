//! Writing DLQ entries: the original key and value bytes, and the headers; every send is
//! awaited until Kafka has acknowledged it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tunnel_shared::config::KafkaConfig;
use tunnel_shared::kafka::{self, TopicError};

use crate::error::DlqError;
use crate::model::{dlq_topic, header, Rejected};

/// Where a batch's rejected messages go: handed over first, confirmed (acknowledged by Kafka)
/// before the batch commits.
pub(crate) trait DeadLetters {
    /// Entries handed over, not yet known to be acknowledged.
    type Pending;

    /// Hands `entries` over without waiting for their acknowledgement.
    async fn enqueue(&mut self, entries: &[Rejected]) -> Result<Self::Pending, DlqError>;

    /// Waits until every entry of `pending` is acknowledged.
    async fn confirm(&mut self, pending: Self::Pending) -> Result<(), DlqError>;
}

/// The configs of a DLQ topic: kept until deleted by an operator (entries are never compacted
/// away: two entries of one key are two events).
pub(crate) const DLQ_TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("retention.ms", "-1"),
    // an entry holds the message that failed, which may be as large as the table's topic takes
    (
        "max.message.bytes",
        tunnel_shared::kafka::MAX_MESSAGE_BYTES_TEXT,
    ),
];

pub(crate) struct DlqWriter {
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    partitions: i32,
    replication: i32,
    /// DLQ topics known to exist.
    ready: HashSet<String>,
    /// Partition count of each DLQ topic.
    counts: HashMap<String, i32>,
}

impl DlqWriter {
    pub(crate) fn new(kafka_config: &KafkaConfig) -> Result<Self, DlqError> {
        // entries are handed over before the batch's rows are written and confirmed after,
        // so a short linger costs no latency and gathers a batch's entries in one request
        let producer = kafka::producer_config(kafka_config)
            .create()
            .map_err(|source| TopicError::Client {
                brokers: kafka_config.brokers.clone(),
                source,
            })?;
        Ok(Self {
            producer,
            admin: kafka::admin(kafka_config)?,
            partitions: kafka_config.partitions,
            replication: kafka_config.replication_factor,
            ready: HashSet::new(),
            counts: HashMap::new(),
        })
    }

    /// Creates the DLQ topic of `source_topic` if it does not exist.
    async fn ensure(&mut self, source_topic: &str) -> Result<(), DlqError> {
        let topic = dlq_topic(source_topic);
        if self.ready.contains(&topic) {
            return Ok(());
        }
        kafka::ensure_topic(
            &self.admin,
            &topic,
            self.partitions,
            self.replication,
            DLQ_TOPIC_CONFIGS,
        )
        .await?;
        // a metadata request waits for the broker (up to 10 s): not on the runtime's thread
        let count = kafka::without_blocking_the_runtime(|| {
            self.producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
        })
        .ok()
        .and_then(|md| {
            md.topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().len() as i32)
        })
        .filter(|n| *n > 0)
        .unwrap_or(self.partitions);
        self.counts.insert(topic.clone(), count);
        self.ready.insert(topic);
        Ok(())
    }

    /// Sends every entry and waits until Kafka has acknowledged all of them.
    pub(crate) async fn send_all(&mut self, entries: &[Rejected]) -> Result<(), DlqError> {
        let pending = self.hand_over(entries).await?;
        acknowledged(pending).await
    }

    /// Hands every entry to the producer without waiting for Kafka: [`acknowledged`] waits. An
    /// entry goes to the DLQ partition of its source partition, so that the entries of one key
    /// stay in order.
    async fn hand_over(&mut self, entries: &[Rejected]) -> Result<Pending, DlqError> {
        for e in entries {
            self.ensure(&e.topic).await?;
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut pending = Vec::with_capacity(entries.len());
        for e in entries {
            let topic = dlq_topic(&e.topic);
            let count = self.counts.get(&topic).copied().unwrap_or(1).max(1);
            let (partition, offset) = (e.partition.to_string(), e.offset.to_string());
            let key = e.key.as_deref().map(tunnel_shared::key::to_json);
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: header::SOURCE_TOPIC,
                    value: Some(e.topic.as_ref()),
                })
                .insert(Header {
                    key: header::SOURCE_PARTITION,
                    value: Some(&partition),
                })
                .insert(Header {
                    key: header::SOURCE_OFFSET,
                    value: Some(&offset),
                })
                .insert(Header {
                    key: header::CLASS,
                    value: Some(e.class),
                })
                .insert(Header {
                    key: header::REASON,
                    value: Some(&e.reason),
                })
                .insert(Header {
                    key: header::CONSUMER_VERSION,
                    value: Some(env!("CARGO_PKG_VERSION")),
                })
                .insert(Header {
                    key: header::TIMESTAMP,
                    value: Some(&now),
                });
            for (name, value) in [
                (header::RULE, e.rule.as_deref()),
                (header::KEY, key.as_deref()),
                (header::REPLAY_OF, e.replay_of.as_deref()),
            ] {
                if let Some(v) = value {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(v),
                    });
                }
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
                .partition(e.partition.rem_euclid(count))
                .headers(headers);
            if let Some(k) = &e.key_bytes {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &e.value_bytes {
                record = record.payload(v.as_slice());
            }
            // enqueue without waiting; a full queue is back-pressure: wait and try again
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(d) => break d,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((source, _)) => return Err(DlqError::Send { topic, source }),
                }
            };
            pending.push((topic, delivery));
        }
        Ok(Pending(pending))
    }
}

/// Entries handed to the producer, not yet known to be acknowledged.
#[derive(Default)]
pub(crate) struct Pending(Vec<(String, DeliveryFuture)>);

/// Waits until Kafka has acknowledged every entry of `pending`.
async fn acknowledged(pending: Pending) -> Result<(), DlqError> {
    for (topic, delivery) in pending.0 {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((source, _))) => return Err(DlqError::Send { topic, source }),
            Err(_) => {
                return Err(DlqError::Send {
                    topic,
                    source: KafkaError::Canceled,
                })
            }
        }
    }
    Ok(())
}

impl DeadLetters for DlqWriter {
    type Pending = Pending;

    async fn enqueue(&mut self, entries: &[Rejected]) -> Result<Pending, DlqError> {
        self.hand_over(entries).await
    }

    async fn confirm(&mut self, pending: Pending) -> Result<(), DlqError> {
        acknowledged(pending).await
    }
}
