//! Heartbeats: while streaming, the producer sends a record for each table to the heartbeat
//! topic (`<prefix>._heartbeats`, as Debezium's `__debezium-heartbeat`) every
//! `producer.heartbeat_interval_ms`, in a transaction of its own. The table topics hold only
//! change events, so that any Confluent-compatible reader (a Kafka Connect sink with the Avro
//! converter, `kafka-avro-console-consumer`, confluent-kafka's `AvroDeserializer`) reads every
//! record of them.
//!
//! A heartbeat ([`Beat`]) names the table's topic, when it was sent, and each partition's end
//! (high watermark) after everything the producer had committed. The consumer measures its lag
//! from the newest record it applied; a heartbeat counts as applied on a partition once the
//! consumer's position there reached that end (the position skips transaction markers), so
//! an idle source does not make a stalled consumer look current.
//!
//! Earlier producers sent heartbeats into the table topics: a record with [`KEY`] as key
//! (not our wire format), no value and the header [`HEADER`]. Readers still skip those.

use serde::{Deserialize, Serialize};

/// The header that marked a heartbeat in a table topic (earlier producers).
pub const HEADER: &str = "tunnel.heartbeat";

/// The key of every heartbeat an earlier producer sent into a table topic.
pub const KEY: &[u8] = b"tunnel.heartbeat";

/// The largest heartbeat record read; a larger one is not ours.
const MAX_BEAT_BYTES: usize = 1 << 20;

/// Whether a message with this key and these header names is a heartbeat of an earlier producer
/// in a table topic.
pub fn is_heartbeat<'a>(
    key: Option<&[u8]>,
    mut header_names: impl Iterator<Item = &'a str>,
) -> bool {
    key == Some(KEY) && header_names.any(|h| h == HEADER)
}

/// One heartbeat: the value of a record of the heartbeat topic, keyed by the table's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beat {
    /// The table's topic.
    pub topic: String,
    /// When it was sent (ms since the epoch).
    pub at_ms: i64,
    /// Per partition of the topic, its end (the offset after its last record) once everything
    /// committed before the heartbeat was in it: `(partition, end)`.
    pub ends: Vec<(i32, i64)>,
    /// The producer's version.
    pub version: String,
}

/// Why a record of the heartbeat topic was not a heartbeat.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    #[error("a heartbeat record without a value")]
    Empty,
    #[error("a heartbeat record of {0} bytes: larger than any heartbeat")]
    TooLarge(usize),
    #[error("not a heartbeat: {0}")]
    Garbage(#[from] serde_json::Error),
}

impl Beat {
    /// The record's value.
    pub fn to_json(&self) -> Vec<u8> {
        // a struct of strings and integers always serializes
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record's value.
    pub fn parse(value: Option<&[u8]>) -> Result<Self, BeatError> {
        let v = value.ok_or(BeatError::Empty)?;
        if v.len() > MAX_BEAT_BYTES {
            return Err(BeatError::TooLarge(v.len()));
        }
        Ok(serde_json::from_slice(v)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_and_the_header_together_make_an_earlier_heartbeat() {
        assert!(is_heartbeat(Some(KEY), ["x", HEADER].into_iter()));
        assert!(!is_heartbeat(Some(KEY), ["x"].into_iter()));
        assert!(!is_heartbeat(Some(b"\0\0\0\0\x01k"), [HEADER].into_iter()));
        assert!(!is_heartbeat(None, [HEADER].into_iter()));
        // not our wire format: a reader of keys skips it
        assert!(crate::wire::parse(KEY).is_err());
    }

    #[test]
    fn a_beat_reads_back_and_garbage_is_refused() {
        let beat = Beat {
            topic: "tunnel.public.t".into(),
            at_ms: 1_700_000_000_000,
            ends: vec![(0, 12), (1, 0), (2, 9_000_000_000)],
            version: "x".into(),
        };
        assert_eq!(Beat::parse(Some(&beat.to_json())).unwrap(), beat);
        assert!(matches!(Beat::parse(None), Err(BeatError::Empty)));
        assert!(matches!(
            Beat::parse(Some(b"\0\0\0\0\x01")),
            Err(BeatError::Garbage(_))
        ));
        assert!(matches!(
            Beat::parse(Some(
                br#"{"topic":"t","at_ms":1,"ends":[[0,"x"]],"version":""}"#
            )),
            Err(BeatError::Garbage(_))
        ));
        let big = vec![b' '; MAX_BEAT_BYTES + 1];
        assert!(matches!(
            Beat::parse(Some(&big)),
            Err(BeatError::TooLarge(_))
        ));
    }
}
