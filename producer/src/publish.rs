//! Shipping events: one Kafka transaction per batch holds the events and the checkpoint that
//! covers them. The producer is idempotent and transactional (`transactional.id` per table), so
//! a restarted producer fences its predecessor and a crash never leaves half a batch visible to
//! `read_committed` consumers.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tunnel_shared::config::KafkaConfig;
use tunnel_shared::event::{ChangeEvent, EventEncoder, EventError, Op};
use tunnel_shared::kafka;
use tunnel_shared::retry::Retryable;

use crate::checkpoint::Checkpoint;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("kafka: {context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error(transparent)]
    Encode(#[from] EventError),
}

impl Retryable for PublishError {
    fn is_retryable(&self) -> bool {
        match self {
            PublishError::Kafka { source, .. } => match source {
                KafkaError::Transaction(e) => !e.is_fatal(),
                other => kafka::is_transient(other) || matches!(other, KafkaError::Canceled),
            },
            PublishError::Encode(_) => false,
        }
    }
}

pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    checkpoint_topic: String,
    table_key: String,
    encoder: EventEncoder,
}

fn kafka_err(context: &str) -> impl FnOnce(KafkaError) -> PublishError + '_ {
    move |source| PublishError::Kafka {
        context: context.to_string(),
        source,
    }
}

impl Publisher {
    /// Creates the transactional producer and fences any earlier instance with the same id.
    pub async fn new(
        kafka_cfg: &KafkaConfig,
        transactional_id: &str,
        topic: String,
        checkpoint_topic: String,
        table_key: String,
        encoder: EventEncoder,
    ) -> Result<Self, PublishError> {
        let producer: FutureProducer =
            kafka::transactional_producer_config(kafka_cfg, transactional_id)
                .create()
                .map_err(kafka_err("creating the producer"))?;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(TXN_TIMEOUT))
            .await
            .map_err(|_| PublishError::Kafka {
                context: "initialising transactions".into(),
                source: KafkaError::Canceled,
            })?
            .map_err(kafka_err("initialising transactions"))?;
        Ok(Self {
            producer,
            topic,
            checkpoint_topic,
            table_key,
            encoder,
        })
    }

    /// Ships `events` and `checkpoint` in one transaction. On failure the transaction is
    /// aborted: nothing of it becomes visible, and the caller may try the same batch again.
    pub async fn publish(
        &self,
        events: &[ChangeEvent],
        checkpoint: &Checkpoint,
    ) -> Result<(), PublishError> {
        // encode everything first: an encoding error must not leave a transaction open
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(events.len() + 1);
        for e in events {
            let key = self.encoder.encode_key(&e.key)?;
            records.push((key.clone(), Some(self.encoder.encode_value(e)?)));
            if e.op == Op::Delete {
                records.push((key, None)); // the tombstone
            }
        }
        self.producer
            .begin_transaction()
            .map_err(kafka_err("beginning a transaction"))?;
        match self.send_all(&records, checkpoint).await {
            Ok(()) => {
                let p = self.producer.clone();
                let committed =
                    tokio::task::spawn_blocking(move || p.commit_transaction(TXN_TIMEOUT))
                        .await
                        .unwrap_or(Err(KafkaError::Canceled));
                if let Err(e) = committed {
                    self.abort().await;
                    return Err(PublishError::Kafka {
                        context: "committing a transaction".into(),
                        source: e,
                    });
                }
                Ok(())
            }
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn send_all(
        &self,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        checkpoint: &Checkpoint,
    ) -> Result<(), PublishError> {
        let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(records.len() + 1);
        for (key, value) in records {
            let mut record = FutureRecord::to(&self.topic).key(key.as_slice());
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            deliveries.push(self.send(record).await?);
        }
        let cp = checkpoint.to_json();
        let record = FutureRecord::to(&self.checkpoint_topic)
            .key(self.table_key.as_bytes())
            .payload(cp.as_slice());
        deliveries.push(self.send(record).await?);
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(PublishError::Kafka {
                        context: "delivering an event".into(),
                        source: e,
                    })
                }
                Err(_) => {
                    return Err(PublishError::Kafka {
                        context: "delivering an event".into(),
                        source: KafkaError::Canceled,
                    })
                }
            }
        }
        Ok(())
    }

    /// Enqueues one record; a full local queue is back-pressure, so wait and try again.
    async fn send<'a>(
        &self,
        mut record: FutureRecord<'a, [u8], [u8]>,
    ) -> Result<DeliveryFuture, PublishError> {
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
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

    async fn abort(&self) {
        let p = self.producer.clone();
        let aborted = tokio::task::spawn_blocking(move || p.abort_transaction(TXN_TIMEOUT)).await;
        if let Ok(Err(e)) = aborted {
            tracing::warn!(error = %e, "aborting the kafka transaction failed");
        }
    }
}
