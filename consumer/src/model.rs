//! What the consumer works with, at the bottom of the crate: a consumed message decoded into an
//! [`Entry`] (or a [`Rejected`] one on its way to the DLQ), the [`TargetTable`] its rows go
//! to, what a batch did to each partition and in all ([`Applied`]), and the names the DLQ
//! uses (error classes, headers, topics). Nothing here does I/O, and nothing here imports the
//! rest of the crate.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use apache_avro::Schema;
use tunnel_shared::config::SchemaChangePolicy;
use tunnel_shared::datum;
use tunnel_shared::event::{EnvelopeLayout, Op, RecordLayout};
use tunnel_shared::key::KeyText;
use tunnel_shared::schema::FieldShape;

/// A writer schema with the shape of the rows it describes, and the direct readers of this
/// pipeline's own layouts (other layouts are decoded through apache-avro).
pub(crate) struct WriterSchema {
    pub(crate) id: u32,
    pub(crate) schema: Arc<Schema>,
    pub(crate) fields: Vec<FieldShape>,
    pub(crate) envelope: Option<EnvelopeLayout>,
    pub(crate) record: Option<RecordLayout>,
}

#[derive(Debug)]
pub(crate) struct DecodedMessage {
    /// The key in PostgreSQL's text form.
    pub(crate) key: KeyText,
    /// `None` for a tombstone.
    pub(crate) event: Option<(Event, u32)>,
}

/// A change event as the consumer keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) op: Op,
    /// `None` for a delete.
    pub(crate) after: Option<Row>,
}

/// The row of an event: in PostgreSQL's text form (events of other layouts, decoded through
/// apache-avro), or where its Avro datum is in the message's value, read and checked whole
/// already (the pipeline's own layout): rendered as text only when something needs the text,
/// and written into binary `COPY` straight from the datum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Row {
    Text(Vec<Option<String>>),
    Datum(Range<usize>),
}

/// One consumed message, decoded, with the schemas it was written with and its original bytes
/// (for the DLQ).
pub(crate) struct Entry {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) message: DecodedMessage,
    pub(crate) key_schema: Arc<WriterSchema>,
    pub(crate) value_schema: Option<Arc<WriterSchema>>,
    pub(crate) key_bytes: Option<Vec<u8>>,
    pub(crate) value_bytes: Option<Vec<u8>>,
}

impl Entry {
    /// The row of a create, update or read event in PostgreSQL's text form; `None` for a
    /// delete or a tombstone. A datum row was read whole when it was decoded, and reads again
    /// the same; should it not, the error says why.
    pub(crate) fn row_text(&self) -> Option<Result<Cow<'_, [Option<String>]>, String>> {
        let (ev, _) = self.message.event.as_ref()?;
        match ev.after.as_ref()? {
            Row::Text(t) => Some(Ok(Cow::Borrowed(t))),
            Row::Datum(_) => {
                let (bytes, layout) = self.row_datum()?;
                Some(layout.read(&mut datum::Reader::new(bytes)).map(Cow::Owned))
            }
        }
    }

    /// The Avro datum of the event's row with the layout to read it, when it was kept as one.
    pub(crate) fn row_datum(&self) -> Option<(&[u8], &RecordLayout)> {
        let (ev, _) = self.message.event.as_ref()?;
        let Some(Row::Datum(range)) = &ev.after else {
            return None;
        };
        let layout = self.value_schema.as_ref()?.envelope.as_ref()?.row();
        let datum = self.value_bytes.as_deref()?.get(range.clone())?;
        Some((datum, layout))
    }

    /// This entry on its way to the DLQ.
    pub(crate) fn rejected(&self, class: &'static str, reason: String) -> Rejected {
        Rejected {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key_bytes: self.key_bytes.clone(),
            value_bytes: self.value_bytes.clone(),
            key: Some(self.message.key.clone()),
            class,
            reason,
            rule: None,
            replay_of: None,
        }
    }
}

/// A message on its way to the DLQ.
#[derive(Debug, Clone)]
pub(crate) struct Rejected {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key_bytes: Option<Vec<u8>>,
    pub(crate) value_bytes: Option<Vec<u8>>,
    /// The decoded key, when it could be decoded: the key is then parked.
    pub(crate) key: Option<KeyText>,
    pub(crate) class: &'static str,
    pub(crate) reason: String,
    pub(crate) rule: Option<String>,
    /// Set when a replay sends an entry back: the DLQ entry it replaces.
    pub(crate) replay_of: Option<String>,
}

/// A consumed message: an event to apply, one already known to go to the DLQ, or a heartbeat of
/// the producer (nothing to apply; its offset is stored like any other).
pub(crate) enum Item {
    Event(Entry),
    Rejected(Rejected),
    Heartbeat(Heartbeat),
}

/// Where a heartbeat was read.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

impl Item {
    /// The message's topic, partition and offset.
    pub(crate) fn position(&self) -> (&Arc<str>, i32, i64) {
        match self {
            Item::Event(e) => (&e.topic, e.partition, e.offset),
            Item::Rejected(r) => (&r.topic, r.partition, r.offset),
            Item::Heartbeat(h) => (&h.topic, h.partition, h.offset),
        }
    }

    /// The message's decoded key, when it could be decoded.
    pub(crate) fn key(&self) -> Option<&KeyText> {
        match self {
            Item::Event(e) => Some(&e.message.key),
            Item::Rejected(r) => r.key.as_ref(),
            Item::Heartbeat(_) => None,
        }
    }
}

/// Where a topic's rows go.
#[derive(Debug, Clone)]
pub(crate) struct TargetTable {
    pub(crate) schema: String,
    pub(crate) name: String,
    /// What the table does when the source's columns change.
    pub(crate) policy: SchemaChangePolicy,
    /// The table's columns with the source columns they hold, as last read in a transaction
    /// that serialized with schema changes; empty when not read (rows then go to the columns
    /// of their writer schema's names).
    pub(crate) columns: Arc<[TargetColumn]>,
}

impl TargetTable {
    /// A table whose columns are not read yet.
    pub(crate) fn new(schema: &str, name: &str, policy: SchemaChangePolicy) -> Self {
        Self {
            schema: schema.to_string(),
            name: name.to_string(),
            policy,
            columns: Arc::from([]),
        }
    }

    /// `schema.name`, for messages.
    pub(crate) fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// A column of a replica table, and the source column it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetColumn {
    pub(crate) name: String,
    /// The source column's attnum; `None` for a column known by name only (the table was
    /// created, or last evolved, from a schema without attnums).
    pub(crate) attnum: Option<i16>,
    /// As `format_type` prints it.
    pub(crate) pg_type: String,
    pub(crate) nullable: bool,
    /// As `pg_get_expr` prints it.
    pub(crate) default: Option<String>,
    /// Part of the primary key.
    pub(crate) in_key: bool,
}

/// A topic's partition.
pub(crate) type Partition = (Arc<str>, i32);

/// What a batch did to a partition: its next offset, the messages processed, and how many of
/// them went to the DLQ.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) next: i64,
    pub(crate) processed: i64,
    pub(crate) dead: i64,
}

/// A topic with what a batch did to each of its partitions.
pub(crate) type TopicProgress = (Arc<str>, Vec<(i32, Progress)>);

/// What applying a batch did, once committed.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Events applied (after skipping those already applied).
    pub(crate) events: usize,
    /// Events skipped because an earlier transaction had applied them.
    pub(crate) already_applied: usize,
    /// Messages written to the DLQ.
    pub(crate) dead_lettered: usize,
    /// The next offset of every partition of the batch.
    pub(crate) next_offsets: Vec<(Arc<str>, i32, i64)>,
    /// Events applied, per topic.
    pub(crate) by_topic: Vec<(Arc<str>, usize)>,
    /// Messages written to the DLQ, per topic and class.
    pub(crate) dead_by_class: Vec<(Arc<str>, &'static str, usize)>,
}

/// A key to park: its partition, the key, and how many DLQ entries it gains.
pub(crate) type ToPark = (i32, KeyText, i32);

/// The DLQ topic of a table's topic.
pub(crate) fn dlq_topic(source_topic: &str) -> String {
    format!("{source_topic}.dlq")
}

/// Why a message went to the DLQ.
pub(crate) mod class {
    /// Not in the Confluent wire format, truncated, or without a key.
    pub(crate) const WIRE_FORMAT: &str = "wire_format";
    pub(crate) const UNKNOWN_SCHEMA: &str = "unknown_schema";
    pub(crate) const AVRO_DECODE: &str = "avro_decode";
    /// Avro that decodes but is not a change event of this pipeline.
    pub(crate) const NOT_AN_EVENT: &str = "not_an_event";
    pub(crate) const RULE: &str = "rule";
    /// The target refused the row (constraint, overflow, value too long...).
    pub(crate) const TARGET_REJECTED: &str = "target_rejected";
    /// A later event of a key that has an earlier event in the DLQ (see docs/operations.md).
    pub(crate) const PARKED: &str = "parked";
}

/// Header names of a DLQ entry.
pub(crate) mod header {
    pub(crate) const SOURCE_TOPIC: &str = "tunnel.source.topic";
    pub(crate) const SOURCE_PARTITION: &str = "tunnel.source.partition";
    pub(crate) const SOURCE_OFFSET: &str = "tunnel.source.offset";
    pub(crate) const CLASS: &str = "tunnel.error.class";
    pub(crate) const REASON: &str = "tunnel.error.reason";
    pub(crate) const RULE: &str = "tunnel.error.rule";
    /// The decoded key as a JSON array of its columns' text values, when it could be decoded.
    pub(crate) const KEY: &str = "tunnel.key";
    pub(crate) const CONSUMER_VERSION: &str = "tunnel.consumer.version";
    pub(crate) const TIMESTAMP: &str = "tunnel.timestamp";
    /// On an entry that failed again in a replay: the entry it replaces (`topic/partition/offset`).
    pub(crate) const REPLAY_OF: &str = "tunnel.replay.of";
}

/// Entries and rejected messages for the unit tests of the modules above.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::sync::Arc;

    use tunnel_shared::event::Op;
    use tunnel_shared::key::KeyText;

    use super::{class, DecodedMessage, Entry, Event, Item, Rejected, Row, WriterSchema};

    fn schema() -> Arc<WriterSchema> {
        Arc::new(WriterSchema {
            id: 1,
            schema: Arc::new(apache_avro::Schema::Null),
            fields: Vec::new(),
            envelope: None,
            record: None,
        })
    }

    /// A one-column key.
    pub(crate) fn key(k: &str) -> KeyText {
        vec![Some(k.to_string())]
    }

    /// An event of key `k` (its row is the key alone; a delete has none).
    pub(crate) fn event(topic: &str, partition: i32, offset: i64, k: &str, op: Op) -> Item {
        let after = (op != Op::Delete).then(|| Row::Text(key(k)));
        Item::Event(Entry {
            topic: Arc::from(topic),
            partition,
            offset,
            message: DecodedMessage {
                key: key(k),
                event: Some((Event { op, after }, 1)),
            },
            key_schema: schema(),
            value_schema: Some(schema()),
            key_bytes: None,
            value_bytes: None,
        })
    }

    /// A heartbeat of the producer.
    pub(crate) fn heartbeat(topic: &str, partition: i32, offset: i64) -> Item {
        Item::Heartbeat(super::Heartbeat {
            topic: Arc::from(topic),
            partition,
            offset,
        })
    }

    /// A message that broke a rule, with its key when it has one.
    pub(crate) fn rejected(topic: &str, partition: i32, offset: i64, k: Option<&str>) -> Item {
        Item::Rejected(Rejected {
            topic: Arc::from(topic),
            partition,
            offset,
            key_bytes: None,
            value_bytes: None,
            key: k.map(key),
            class: class::RULE,
            reason: "breaks a rule".into(),
            rule: Some("r".into()),
            replay_of: None,
        })
    }
}
