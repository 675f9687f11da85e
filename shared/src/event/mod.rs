//! The change event: an envelope modelled on Debezium's (`op`, `after`, `source`, `ts_ms`),
//! keyed by the row's primary key. A delete is a `d` event followed by a tombstone (a null
//! value) for the same key, so that compaction eventually drops the key.

mod decode;
mod encode;

pub use decode::{
    decode_envelope, decode_key, DecodedEvent, EnvelopeLayout, RecordLayout, ScannedEvent,
    TextEvent,
};
pub use encode::EventEncoder;

use apache_avro::types::Value;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("cannot encode {what}: {message}")]
    Encode { what: String, message: String },
    #[error("event does not decode: {0}")]
    Decode(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// read by the snapshot
    Read,
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }

    pub fn parse(code: &str) -> Option<Op> {
        Some(match code {
            "r" => Op::Read,
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            _ => return None,
        })
    }
}

/// How the producer found a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Snapshot,
    KeyScan,
    Watermark,
    DeleteScan,
    Reconcile,
    /// asked for by `tunnel-consumer verify --repair`
    Repair,
    /// named by the change table of trigger capture
    Trigger,
}

impl Detection {
    pub fn as_str(self) -> &'static str {
        match self {
            Detection::Snapshot => "snapshot",
            Detection::KeyScan => "key_scan",
            Detection::Watermark => "watermark",
            Detection::DeleteScan => "delete_scan",
            Detection::Reconcile => "reconcile",
            Detection::Repair => "repair",
            Detection::Trigger => "trigger",
        }
    }
}

/// One row's values, in column order; `None` is SQL NULL.
pub type Row = Vec<Option<Value>>;

#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub op: Op,
    /// The primary key's values, in key order.
    pub key: Vec<Value>,
    /// The whole row after the change; `None` for a delete.
    pub after: Option<Row>,
    pub detected_by: Detection,
    /// The watermark column's value, microseconds since 1970.
    pub updated_at: Option<i64>,
    pub ts_ms: i64,
}
