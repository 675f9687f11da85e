//! The set of keys already shipped, for tables with a single integer primary key: a compact
//! `RoaringTreemap`, never stored in the source. It is rebuilt at start from the compacted
//! topic (a key whose latest message is not a tombstone is shipped) and kept current as events
//! are shipped.

use std::ops::RangeInclusive;

use std::time::{Duration, Instant};

use roaring::RoaringTreemap;
use tracing::info;
use tunnel_shared::config::Config;
use tunnel_shared::event::{ChangeEvent, Op};
use tunnel_shared::kafka;

use crate::error::CheckpointError;

/// Maps an `i64` onto a `u64` in the same order (the sign bit flipped).
fn to_u64(k: i64) -> u64 {
    (k as u64) ^ (1 << 63)
}

fn to_i64(k: u64) -> i64 {
    (k ^ (1 << 63)) as i64
}

/// Count, sum and XOR of the keys of a range: what a delete scan compares with the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyAggregate {
    pub count: i64,
    pub sum: i128,
    pub xor: i64,
}

#[derive(Debug, Default, Clone)]
pub struct KeySet {
    keys: RoaringTreemap,
}

impl KeySet {
    fn insert(&mut self, k: i64) {
        self.keys.insert(to_u64(k));
    }

    fn remove(&mut self, k: i64) {
        self.keys.remove(to_u64(k));
    }

    fn len(&self) -> u64 {
        self.keys.len()
    }

    pub fn min(&self) -> Option<i64> {
        self.keys.min().map(to_i64)
    }

    pub fn max(&self) -> Option<i64> {
        self.keys.max().map(to_i64)
    }

    fn range(&self, r: &RangeInclusive<i64>) -> impl Iterator<Item = i64> + '_ {
        let (start, end) = (to_u64(*r.start()), to_u64(*r.end()));
        let mut it = self.keys.iter();
        it.advance_to(start);
        it.take_while(move |k| *k <= end).map(to_i64)
    }

    pub fn aggregate(&self, r: RangeInclusive<i64>) -> KeyAggregate {
        let mut a = KeyAggregate::default();
        for k in self.range(&r) {
            a.count += 1;
            a.sum += i128::from(k);
            a.xor ^= k;
        }
        a
    }

    /// Whether `k` has been shipped (and not deleted since).
    pub fn contains(&self, k: i64) -> bool {
        self.keys.contains(to_u64(k))
    }

    /// Whether the single integer key of an event's row has been shipped; `None` for another
    /// kind of key.
    pub fn contains_key(&self, key: &[apache_avro::types::Value]) -> Option<bool> {
        key_i64(key).map(|k| self.contains(k))
    }

    /// The keys of a range, in order.
    pub fn keys(&self, r: RangeInclusive<i64>) -> Vec<i64> {
        self.range(&r).collect()
    }

    /// Keeps the set current with events just shipped: a delete removes its key, any other
    /// event adds it. The one place shipped events reach the set (snapshot and passes alike).
    pub fn apply(&mut self, events: &[ChangeEvent]) {
        for e in events {
            if let Some(k) = key_i64(&e.key) {
                if e.op == Op::Delete {
                    self.remove(k);
                } else {
                    self.insert(k);
                }
            }
        }
    }

    /// Serialized size, for logs.
    pub fn serialized_bytes(&self) -> u64 {
        self.keys.serialized_size() as u64
    }
}

/// A single integer key's value.
fn key_i64(key: &[apache_avro::types::Value]) -> Option<i64> {
    match key {
        [apache_avro::types::Value::Int(k)] => Some(i64::from(*k)),
        [apache_avro::types::Value::Long(k)] => Some(*k),
        _ => None,
    }
}

/// The keys shipped so far, from the compacted topic: a key whose latest message is a value is
/// shipped, a key whose latest message is a tombstone is not.
pub async fn rebuild(config: &Config, topic: &str) -> Result<KeySet, CheckpointError> {
    let (kafka, topic) = (config.kafka.clone(), topic.to_string());
    let started = Instant::now();
    let read = tokio::task::spawn_blocking(move || {
        let mut keys = KeySet::default();
        let mut messages = 0u64;
        let result = kafka::read_to_end(&kafka, &topic, Duration::from_secs(600), |m| {
            use rdkafka::Message;
            messages += 1;
            let key = m
                .key()
                .and_then(|k| tunnel_shared::wire::parse(k).ok())
                .and_then(|(_, body)| tunnel_shared::datum::Reader::new(body).read_long().ok());
            if let Some(k) = key {
                if m.payload().is_some() {
                    keys.insert(k);
                } else {
                    keys.remove(k);
                }
            }
        });
        result
            .map(|()| (keys, messages))
            .map_err(|source| (topic, source))
    })
    .await;
    let (keys, messages) = match read {
        Ok(Ok(v)) => v,
        Ok(Err((topic, source))) => return Err(CheckpointError::Read { topic, source }),
        Err(_) => {
            return Err(CheckpointError::Read {
                topic: config.kafka.topic_prefix.clone(),
                source: rdkafka::error::KafkaError::Canceled,
            })
        }
    };
    info!(
        keys = keys.len(),
        messages,
        bytes = keys.serialized_bytes(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rebuilt the shipped key set from the topic"
    );
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;
    use tunnel_shared::event::Detection;

    #[test]
    fn order_is_kept_across_the_sign() {
        let mut s = KeySet::default();
        for k in [-5, 3, i64::MIN, i64::MAX, 0] {
            s.insert(k);
        }
        assert_eq!(s.min(), Some(i64::MIN));
        assert_eq!(s.max(), Some(i64::MAX));
        assert_eq!(s.keys(-10..=10), vec![-5, 0, 3]);
        let a = s.aggregate(-10..=10);
        assert_eq!((a.count, a.sum, a.xor), (3, -2, -5 ^ 3));
        s.remove(0);
        assert_eq!(s.aggregate(0..=0).count, 0);
        assert_eq!(s.len(), 4);
    }

    fn event(op: Op, key: Value) -> ChangeEvent {
        ChangeEvent {
            op,
            key: vec![key],
            after: None,
            detected_by: Detection::KeyScan,
            updated_at: None,
            ts_ms: 0,
        }
    }

    #[test]
    fn shipped_events_add_and_remove_keys() {
        let mut s = KeySet::default();
        s.apply(&[
            event(Op::Read, Value::Long(7)),
            event(Op::Create, Value::Int(8)),
            event(Op::Update, Value::Long(9)),
            // not a single integer key: not the set's
            event(Op::Create, Value::String("x".into())),
        ]);
        assert_eq!(s.keys(0..=100), vec![7, 8, 9]);
        s.apply(&[event(Op::Delete, Value::Int(8))]);
        assert_eq!(s.keys(0..=100), vec![7, 9]);
    }
}
