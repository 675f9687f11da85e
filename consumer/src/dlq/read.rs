//! Reading a DLQ topic back: its entries with their headers, and which of them a replay has
//! already resolved (recorded in the target).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::message::{Headers, Message};
use tokio_postgres::Client;
use tunnel_shared::config::KafkaConfig;
use tunnel_shared::kafka;
use tunnel_shared::key::KeyText;
use tunnel_shared::pg::PgError;

use crate::ddl;
use crate::model::header;

/// One DLQ entry as stored in Kafka.
#[derive(Debug, Clone)]
pub(crate) struct DlqEntry {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: BTreeMap<String, String>,
}

impl DlqEntry {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    pub(crate) fn class(&self) -> &str {
        self.header(header::CLASS).unwrap_or("unknown")
    }
    pub(crate) fn rule(&self) -> Option<&str> {
        self.header(header::RULE)
    }
    /// The decoded key recorded by the consumer, if it could decode it.
    pub(crate) fn key_text(&self) -> Option<KeyText> {
        tunnel_shared::key::from_json(self.header(header::KEY)?)
    }
    pub(crate) fn source_partition(&self) -> Option<i32> {
        self.header(header::SOURCE_PARTITION)?.parse().ok()
    }
    pub(crate) fn source_offset(&self) -> Option<i64> {
        self.header(header::SOURCE_OFFSET)?.parse().ok()
    }
    /// `rule <name>` for a rule violation, else the class: what `dlq list` counts by.
    pub(crate) fn reason_group(&self) -> String {
        match self.rule() {
            Some(r) => format!("rule '{r}'"),
            None => self.class().to_string(),
        }
    }
    /// `topic/partition/offset`: how a replayed entry names the one it replaces.
    pub(crate) fn position(&self, dlq_topic: &str) -> String {
        format!("{dlq_topic}/{}/{}", self.partition, self.offset)
    }
}

/// Every entry of a DLQ topic, in partition and offset order. A topic that does not exist has
/// no entries. The topic is read by a synchronous client, on a thread of its own.
pub(crate) async fn read_all(
    kafka_config: &KafkaConfig,
    dlq_topic: &str,
) -> Result<Vec<DlqEntry>, rdkafka::error::KafkaError> {
    let (kafka_config, dlq_topic) = (kafka_config.clone(), dlq_topic.to_string());
    tokio::task::spawn_blocking(move || read_all_blocking(&kafka_config, &dlq_topic))
        .await
        .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
}

fn read_all_blocking(
    kafka_config: &KafkaConfig,
    dlq_topic: &str,
) -> Result<Vec<DlqEntry>, rdkafka::error::KafkaError> {
    let mut entries = Vec::new();
    kafka::read_to_end(kafka_config, dlq_topic, Duration::from_secs(60), |m| {
        let mut headers = BTreeMap::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                if let Some(v) = h.value {
                    headers.insert(h.key.to_string(), String::from_utf8_lossy(v).into_owned());
                }
            }
        }
        entries.push(DlqEntry {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
    })?;
    entries.sort_by_key(|e| (e.partition, e.offset));
    Ok(entries)
}

/// The entries of `dlq_topic` a replay has resolved, and how (`applied`, `requeued`).
pub(crate) async fn resolved(
    client: &Client,
    bk: &str,
    dlq_topic: &str,
) -> Result<HashMap<(i32, i64), String>, PgError> {
    let rows = client
        .query(
            &format!(
                "SELECT partition, dlq_offset, outcome FROM {} WHERE dlq_topic = $1",
                ddl::resolved_table(bk)
            ),
            &[&dlq_topic],
        )
        .await
        .map_err(PgError::query("reading the resolved DLQ entries"))?;
    rows.into_iter()
        .map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(PgError::query("reading the resolved DLQ entries: a column does not have the type the consumer created it with (changed by hand?)"))
}
