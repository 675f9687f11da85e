//! What the producer knows of the keys it has shipped, for every table: whether a key's latest
//! event is not a delete. It is what tells an insert (`c`: a key never shipped, or deleted
//! since) from an update (`u`), whichever detector found the row. At start it is read back from
//! its saved copy and the topic's messages after it ([`crate::keysnapshot`]), or rebuilt from
//! the whole compacted topic (a key whose latest message is not a tombstone is shipped), and
//! kept current as events are shipped, by the snapshot's chunks and by the passes alike.
//!
//! A table with a single integer key keeps the exact [`KeySet`] (which delete scans also read);
//! any other key (text, uuid, composite) is kept as [`KeyHashes`].

use std::hash::Hasher;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use rustc_hash::FxHashSet;
use tracing::info;
use tunnel_shared::catalog::TableInfo;
use tunnel_shared::config::Config;
use tunnel_shared::event::{ChangeEvent, EventEncoder, Op};
use tunnel_shared::kafka;

use crate::error::CheckpointError;
use crate::keyset::{key_i64, KeySet};

/// The keys shipped so far (and not deleted since).
#[derive(Clone)]
pub enum ShippedKeys {
    /// A single integer key: the keys themselves.
    Integer(KeySet),
    /// Any other key: a hash of each.
    Hashed(KeyHashes),
}

impl ShippedKeys {
    /// Nothing shipped yet, in the form that suits the table's key (`encoder`: the table's, for
    /// the bytes of its keys).
    pub fn empty(table: &TableInfo, encoder: &EventEncoder) -> Self {
        match table.integer_key() {
            Some(_) => Self::Integer(KeySet::default()),
            None => Self::Hashed(KeyHashes::new(encoder.clone())),
        }
    }

    /// Whether `key` (a row's key values, in key order) has been shipped and not deleted since.
    pub fn contains(&self, key: &[Value]) -> bool {
        match self {
            Self::Integer(keys) => key_i64(key).is_some_and(|k| keys.contains(k)),
            Self::Hashed(keys) => keys.contains(key),
        }
    }

    /// Keeps the set current with events just shipped: a delete removes its key, any other
    /// event adds it. The one place shipped events reach the set (snapshot and passes alike).
    pub fn apply(&mut self, events: &[ChangeEvent]) {
        match self {
            Self::Integer(keys) => keys.apply(events),
            Self::Hashed(keys) => keys.apply(events),
        }
    }

    /// The exact set of a table with a single integer key (what delete scans compare).
    pub fn integer(&self) -> Option<&KeySet> {
        match self {
            Self::Integer(keys) => Some(keys),
            Self::Hashed(_) => None,
        }
    }

    /// What the set holds, as saved with it: a saved set is read back only into its own kind
    /// (and hashes only made by the same function).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Integer(_) => "integer",
            Self::Hashed(_) => "siphash13",
        }
    }

    /// The size of [`ShippedKeys::to_bytes`], without writing it.
    pub(crate) fn saved_len(&self) -> u64 {
        match self {
            Self::Integer(keys) => keys.serialized_bytes(),
            Self::Hashed(keys) => keys.len() * 8,
        }
    }

    /// The set as bytes: the roaring format for integer keys, the hashes (8 bytes each, little
    /// endian, in no order) for the others.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Integer(keys) => keys.to_bytes(),
            Self::Hashed(keys) => {
                let mut out = Vec::with_capacity(keys.hashes.len() * 8);
                for h in &keys.hashes {
                    out.extend_from_slice(&h.to_le_bytes());
                }
                out
            }
        }
    }

    /// Takes in a set saved by [`ShippedKeys::to_bytes`] from a set of the same kind, in place
    /// of what this one holds. Damaged bytes are refused, never a panic.
    pub(crate) fn load_bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self {
            Self::Integer(keys) => *keys = KeySet::from_bytes(bytes)?,
            Self::Hashed(keys) => {
                if !bytes.len().is_multiple_of(8) {
                    return Err(format!(
                        "{} bytes of hashes, not a multiple of 8",
                        bytes.len()
                    ));
                }
                let mut hashes = FxHashSet::default();
                hashes.reserve(bytes.len() / 8);
                for h in bytes.chunks_exact(8) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(h);
                    hashes.insert(u64::from_le_bytes(b));
                }
                if hashes.len() != bytes.len() / 8 {
                    return Err("the same hash saved twice".into());
                }
                keys.hashes = hashes;
            }
        }
        Ok(())
    }

    /// Takes in one message of the topic, in offset order: `body` is its key after the wire
    /// format's header, `present` whether it has a value (a tombstone has none).
    pub(crate) fn read_message(&mut self, body: &[u8], present: bool) {
        match self {
            Self::Integer(keys) => {
                if let Ok(k) = tunnel_shared::datum::Reader::new(body).read_long() {
                    if present {
                        keys.insert(k);
                    } else {
                        keys.remove(k);
                    }
                }
            }
            Self::Hashed(keys) => keys.set(hash_body(body), present),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            Self::Integer(keys) => keys.len(),
            Self::Hashed(keys) => keys.len(),
        }
    }

    /// About how much memory the set takes, for logs.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            Self::Integer(keys) => keys.serialized_bytes(),
            Self::Hashed(keys) => keys.bytes(),
        }
    }
}

/// The shipped keys of a table whose key is not a single integer, as a 64-bit hash of each
/// key's bytes in the topic (its Avro datum, the same whether the key comes from a row, an event
/// or a message read back): about 19 bytes a key (18.9 MB at a million keys), whatever the
/// key's size.
///
/// Two keys with the same hash are one to this set. A key never shipped whose hash is that of a
/// shipped key is taken for shipped: its insert is labelled `u` instead of `c`; and a delete of
/// one of the two makes the other look never shipped, so that its next change is labelled `c`.
/// With `n` keys shipped, the odds that a new key collides are about `n / 2^64` (one in 18
/// trillion at a million keys). Nothing else depends on the hashes: what is shipped and applied
/// is the same either way.
#[derive(Clone)]
pub struct KeyHashes {
    /// Writes a key's bytes exactly as the published messages hold them.
    encoder: EventEncoder,
    hashes: FxHashSet<u64>,
}

impl KeyHashes {
    fn new(encoder: EventEncoder) -> Self {
        Self {
            encoder,
            hashes: FxHashSet::default(),
        }
    }

    /// The hash of a key's values; `None` for values that do not fit the table's key schema,
    /// which could not have been shipped either.
    fn hash(&self, key: &[Value]) -> Option<u64> {
        self.encoder.key_body(key).ok().map(|b| hash_body(&b))
    }

    fn contains(&self, key: &[Value]) -> bool {
        self.hash(key).is_some_and(|h| self.hashes.contains(&h))
    }

    fn apply(&mut self, events: &[ChangeEvent]) {
        for e in events {
            if let Some(h) = self.hash(&e.key) {
                self.set(h, e.op != Op::Delete);
            }
        }
    }

    fn set(&mut self, hash: u64, shipped: bool) {
        if shipped {
            self.hashes.insert(hash);
        } else {
            self.hashes.remove(&hash);
        }
    }

    fn len(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// The table's memory: a bucket (8 bytes and a control byte) per slot, slots a power of two
    /// at most 7/8 full.
    fn bytes(&self) -> u64 {
        let buckets = (self.hashes.capacity() as u64 * 8)
            .div_ceil(7)
            .next_power_of_two();
        buckets * 9
    }
}

/// A key's hash: SipHash-1-3 with the keys (0, 0) over its bytes. The hashes are saved with the
/// key set ([`crate::keysnapshot`]): the function must stay the same from one build to the next,
/// hence the `siphasher` crate and not the standard library's hasher (the same function today,
/// with no such promise).
pub(crate) fn hash_body(body: &[u8]) -> u64 {
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    h.write(body);
    h.finish()
}

/// The keys shipped so far, from the compacted topic, into `keys` (empty): a key whose latest
/// message is a value is shipped, a key whose latest message is a tombstone is not.
pub async fn rebuild(
    config: &Config,
    topic: &str,
    mut keys: ShippedKeys,
) -> Result<ShippedKeys, CheckpointError> {
    let (kafka, topic) = (config.kafka.clone(), topic.to_string());
    let started = Instant::now();
    let read = tokio::task::spawn_blocking(move || {
        let mut messages = 0u64;
        let result = kafka::read_to_end(&kafka, &topic, Duration::from_secs(600), |m| {
            use rdkafka::Message;
            messages += 1;
            if let Some((_, body)) = m.key().and_then(|k| tunnel_shared::wire::parse(k).ok()) {
                keys.read_message(body, m.payload().is_some());
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
        hashed = matches!(keys, ShippedKeys::Hashed(_)),
        bytes = keys.bytes(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rebuilt the shipped key set from the topic"
    );
    Ok(keys)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tunnel_shared::catalog::{Column, ColumnKind};
    use tunnel_shared::event::Detection;

    /// A table keyed by `(tenant text, id integer)`.
    pub fn composite_table() -> TableInfo {
        let column = |name: &str, type_name: &str, kind| Column {
            name: name.into(),
            type_name: type_name.into(),
            kind,
            nullable: false,
            attnum: 0,
            default: None,
        };
        TableInfo {
            schema: "public".into(),
            name: "items".into(),
            columns: vec![
                column("tenant", "text", ColumnKind::Text),
                column("id", "integer", ColumnKind::Int4),
                column("v", "text", ColumnKind::Text),
            ],
            key: vec![0, 1],
            watermark: None,
        }
    }

    pub fn encoder(table: &TableInfo) -> EventEncoder {
        let schemas = tunnel_shared::schema::derive(table, "p").unwrap();
        EventEncoder::new(schemas, 1, 2, table).unwrap()
    }

    /// Nothing shipped yet, for [`composite_table`].
    pub fn hashed() -> ShippedKeys {
        let t = composite_table();
        ShippedKeys::empty(&t, &encoder(&t))
    }

    /// Nothing shipped yet, kept as hashes whatever `table`'s key.
    pub fn hashed_for(table: &TableInfo) -> ShippedKeys {
        ShippedKeys::Hashed(KeyHashes::new(encoder(table)))
    }

    pub fn key(tenant: &str, id: i32) -> Vec<Value> {
        vec![Value::String(tenant.into()), Value::Int(id)]
    }

    fn event(op: Op, key: Vec<Value>) -> ChangeEvent {
        ChangeEvent {
            op,
            key,
            after: None,
            detected_by: Detection::Watermark,
            updated_at: None,
            ts_ms: 0,
        }
    }

    #[test]
    fn a_table_gets_the_exact_set_only_for_a_single_integer_key() {
        let t = composite_table();
        assert!(hashed().integer().is_none());
        let mut int = t.clone();
        int.key = vec![1];
        assert!(ShippedKeys::empty(&int, &encoder(&int)).integer().is_some());
    }

    #[test]
    fn shipped_events_add_and_remove_hashed_keys() {
        let mut s = hashed();
        s.apply(&[
            event(Op::Read, key("a", 1)),
            event(Op::Create, key("a", 2)),
            event(Op::Update, key("b", 1)),
        ]);
        assert!(s.contains(&key("a", 1)) && s.contains(&key("a", 2)));
        assert!(s.contains(&key("b", 1)));
        // each column counts: neither a different tenant nor a different id is the same key
        assert!(!s.contains(&key("b", 2)) && !s.contains(&key("c", 1)));
        s.apply(&[event(Op::Delete, key("a", 2))]);
        assert!(!s.contains(&key("a", 2)));
        assert_eq!(s.len(), 2);
        // values that are not the table's key were never shipped
        assert!(!s.contains(&[Value::Long(1)]));
    }

    /// What a restarted producer reads back from the topic gives the same answers as the set
    /// kept by the producer that shipped it.
    #[test]
    fn the_messages_of_the_topic_rebuild_the_same_set() {
        let t = composite_table();
        let enc = encoder(&t);
        let mut rebuilt = ShippedKeys::empty(&t, &enc);
        let mut message = |k: Vec<Value>, present| {
            let framed = enc.encode_key(&k).unwrap();
            let (_, body) = tunnel_shared::wire::parse(&framed).unwrap();
            rebuilt.read_message(body, present);
        };
        message(key("a", 1), true);
        message(key("a", 2), true);
        // a delete: its `d` event, then its tombstone
        message(key("a", 2), true);
        message(key("a", 2), false);
        message(key("é ü", -7), true);
        assert!(rebuilt.contains(&key("a", 1)));
        assert!(!rebuilt.contains(&key("a", 2)));
        assert!(rebuilt.contains(&key("é ü", -7)));
        assert_eq!(rebuilt.len(), 2);

        let mut int = t.clone();
        int.key = vec![1];
        let enc = encoder(&int);
        let mut rebuilt = ShippedKeys::empty(&int, &enc);
        for (k, present) in [(5, true), (-3, true), (5, false)] {
            let framed = enc.encode_key(&[Value::Int(k)]).unwrap();
            let (_, body) = tunnel_shared::wire::parse(&framed).unwrap();
            rebuilt.read_message(body, present);
        }
        assert!(rebuilt.contains(&[Value::Int(-3)]) && rebuilt.contains(&[Value::Long(-3)]));
        assert!(!rebuilt.contains(&[Value::Int(5)]));
    }

    /// The hash is fixed: a saved set of hashes is only worth anything if the next build hashes
    /// keys the same way.
    #[test]
    fn the_hash_of_a_key_never_changes() {
        let mut std = std::hash::DefaultHasher::new();
        std.write(b"tenant-42");
        assert_eq!(hash_body(b"tenant-42"), std.finish());
        assert_eq!(hash_body(b""), 0xd1fb_a762_150c_532c);
    }

    #[test]
    fn a_set_round_trips_through_bytes() {
        let mut s = hashed();
        s.apply(&[event(Op::Read, key("a", 1)), event(Op::Read, key("b", 2))]);
        let bytes = s.to_bytes();
        assert_eq!(bytes.len() as u64, s.saved_len());
        let mut back = hashed();
        back.load_bytes(&bytes).unwrap();
        assert!(back.contains(&key("a", 1)) && back.contains(&key("b", 2)));
        assert_eq!(back.len(), 2);
        assert!(hashed().load_bytes(&bytes[..9]).is_err());
        let mut twice = bytes[..8].to_vec();
        twice.extend_from_slice(&bytes[..8]);
        assert!(hashed().load_bytes(&twice).is_err());

        let mut int = composite_table();
        int.key = vec![1];
        let mut s = ShippedKeys::empty(&int, &encoder(&int));
        s.apply(&[event(Op::Read, vec![Value::Int(7)])]);
        let bytes = s.to_bytes();
        assert_eq!(bytes.len() as u64, s.saved_len());
        let mut back = ShippedKeys::empty(&int, &encoder(&int));
        back.load_bytes(&bytes).unwrap();
        assert!(back.contains(&[Value::Int(7)]) && back.len() == 1);
        assert_ne!(back.kind(), hashed().kind());
    }

    /// The memory of the hashed set at a million keys (printed with `--nocapture`).
    #[test]
    fn a_million_hashed_keys_take_about_nineteen_megabytes() {
        let mut s = KeyHashes::new(encoder(&composite_table()));
        for i in 0..1_000_000u64 {
            s.set(hash_body(&i.to_le_bytes()), true);
        }
        assert_eq!(s.len(), 1_000_000);
        let bytes = s.bytes();
        println!(
            "1M hashed keys: {bytes} bytes ({:.1} MB)",
            bytes as f64 / 1e6
        );
        assert!(bytes <= 20_000_000, "{bytes}");
    }
}
