//! Repairs asked for by `tunnel-consumer verify --repair`: requests in the topic
//! `<prefix>._repairs` (key = the table, value = JSON `{"keys": [["1"], ["7"]]}`, keys in text
//! form) name rows to ship again. Going through the producer keeps every change of a key in the
//! order the producer ships them; the target is never written by anything but the consumer.
//! How far the requests were read is part of the checkpoint.

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::warn;
use tunnel_shared::config::KafkaConfig;
use tunnel_shared::event::Detection;
use tunnel_shared::kafka;

use crate::capture::{ChangeDetector, Found, GoneKey, PassContext};
use crate::error::SourceError;
use crate::source::{Activity, Source, SourceRow};
use tunnel_shared::catalog::TableInfo;
use tunnel_shared::fault::{Classify, ErrorClass};

/// One repair request.
#[derive(Debug, Serialize, Deserialize)]
pub struct RepairRequest {
    pub keys: Vec<Vec<String>>,
}

pub struct RepairScan {
    pub interval: Duration,
    kafka: KafkaConfig,
    topic: String,
    table_key: String,
    consumer: Option<BaseConsumer<kafka::EndIsExpected>>,
    /// The offset the consumer reads next: a pass that starts elsewhere (the one before was
    /// not shipped) assigns the partition again from its own start.
    position: i64,
}

impl RepairScan {
    pub fn new(interval: Duration, kafka: &KafkaConfig, topic: String, table_key: String) -> Self {
        Self {
            interval,
            kafka: kafka.clone(),
            topic,
            table_key,
            consumer: None,
            position: 0,
        }
    }

    /// The requests after offset `from`, and the offset after the last one read.
    fn read(&mut self, from: i64) -> Result<(Vec<Vec<String>>, i64), KafkaError> {
        if self.position != from {
            self.consumer = None;
        }
        if self.consumer.is_none() {
            let c = kafka::reader(&self.kafka, &format!("{}.reader", self.topic))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, 0, Offset::Offset(from))?;
            c.assign(&tpl)?;
            self.consumer = Some(c);
        }
        let Some(consumer) = &self.consumer else {
            return Ok((Vec::new(), from));
        };
        let mut keys = Vec::new();
        let mut next = from;
        // what has arrived, without waiting: this pass shares its table's loop with capture
        loop {
            match consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    if m.key() != Some(self.table_key.as_bytes()) {
                        continue;
                    }
                    match m.payload().map(serde_json::from_slice::<RepairRequest>) {
                        Some(Ok(r)) => keys.extend(r.keys),
                        Some(Err(e)) => {
                            warn!(offset = m.offset(), error = %e, "repair request is not valid JSON; skipped")
                        }
                        None => {}
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_)))
                | Some(Err(KafkaError::Global(RDKafkaErrorCode::PartitionEOF))) => break,
                Some(Err(e)) => return Err(e),
            }
        }
        self.position = next;
        Ok((keys, next))
    }
}

/// The keys of a request that can name a row of `table`: as many values as its key has
/// columns, each of its column's type. Others are logged and skipped: a bad request must not
/// stop the producer (it would be read again after every restart).
fn usable_keys(table: &TableInfo, keys: Vec<Vec<String>>) -> Vec<Vec<String>> {
    keys.into_iter()
        .filter(|k| match GoneKey::from_text(table, k.clone()) {
            Ok(_) if k.len() == table.key.len() => true,
            Ok(_) => {
                warn!(key = ?k, columns = table.key.len(), "repair request: the key has the wrong number of values; skipped");
                false
            }
            Err(e) => {
                warn!(key = ?k, error = %e, "repair request: the key does not fit the table's key; skipped");
                false
            }
        })
        .collect()
}

/// The rows of `keys`; when the source refuses a value (a type the check above could not
/// parse), each key is looked up alone and those it refuses are skipped.
async fn rows_by_keys(
    source: &mut Source,
    keys: &[Vec<String>],
) -> Result<Vec<SourceRow>, SourceError> {
    match source.rows_by_keys(keys).await {
        Err(e) if e.class() == ErrorClass::Definite => {
            let mut rows = Vec::new();
            for k in keys {
                match source.rows_by_keys(std::slice::from_ref(k)).await {
                    Ok(found) => rows.extend(found),
                    Err(e) if e.class() == ErrorClass::Definite => {
                        warn!(key = ?k, error = %e, "repair request: the source refuses the key; skipped")
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(rows)
        }
        other => other,
    }
}

impl ChangeDetector for RepairScan {
    fn detection(&self) -> Detection {
        Detection::Repair
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn wants(&self, _: &Activity, _: &Activity) -> bool {
        true // requests arrive in Kafka, not in the source
    }
    fn pass<'a>(&'a mut self, ctx: PassContext<'a>) -> BoxFuture<'a, Result<Found, SourceError>> {
        Box::pin(async move {
            let mut found = Found::default();
            let from = ctx.checkpoint.repairs_offset;
            let (keys, next) = match self.read(from) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "cannot read repair requests");
                    self.consumer = None;
                    return Ok(found);
                }
            };
            if next == from {
                return Ok(found);
            }
            found.repairs_upto = Some(next);
            if keys.is_empty() {
                return Ok(found);
            }
            let table = ctx.source.table().clone();
            let keys = usable_keys(&table, keys);
            found.rows = rows_by_keys(ctx.source, &keys).await?;
            let present: std::collections::HashSet<&Vec<String>> =
                found.rows.iter().map(|r| &r.key_text).collect();
            let gone: Vec<Vec<String>> = keys
                .iter()
                .filter(|k| !present.contains(k))
                .cloned()
                .collect();
            for k in gone {
                found.gone.push(GoneKey::from_text(&table, k)?);
            }
            found.scanned = keys.len() as u64;
            tracing::info!(keys = keys.len(), "repair requested");
            Ok(found)
        })
    }
}

#[cfg(test)]
mod tests {
    use tunnel_shared::catalog::{Column, ColumnKind};

    use super::*;

    #[test]
    fn keys_that_cannot_name_a_row_are_skipped() {
        let table = TableInfo {
            schema: "public".into(),
            name: "media".into(),
            columns: vec![Column {
                name: "id".into(),
                type_name: "integer".into(),
                kind: ColumnKind::Int4,
                nullable: false,
                attnum: 0,
                default: None,
            }],
            key: vec![0],
            watermark: None,
        };
        let keys = |k: &[&[&str]]| -> Vec<Vec<String>> {
            k.iter()
                .map(|k| k.iter().map(|v| v.to_string()).collect())
                .collect()
        };
        let asked = keys(&[&["7"], &["x"], &["1", "2"], &[], &["99999999999"], &["-3"]]);
        assert_eq!(usable_keys(&table, asked), keys(&[&["7"], &["-3"]]));
    }
}
