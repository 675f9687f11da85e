//! The producer's checkpoint: where the snapshot got to, the capture bounds and the highest key
//! and watermark shipped. It lives in a compacted Kafka topic (key = the table) and is written
//! in the same Kafka transaction as the events it covers, so that after a crash the checkpoint
//! and the events in the topic always agree. Nothing is ever written to the source.

use std::time::Duration;

use rdkafka::Message;
use serde::{Deserialize, Serialize};
use tunnel_shared::config::KafkaConfig;
use tunnel_shared::kafka;

use crate::error::CheckpointError;
use crate::horizon::Bounds;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPhase {
    /// reading the table in key order
    #[default]
    Scan,
    /// reading again the keys that were read while transactions older than the snapshot were
    /// still open (they may have written behind the cursor)
    CatchUp,
    Done,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    pub phase: SnapshotPhase,
    /// The last key shipped by the current phase.
    pub after_key: Option<Vec<String>>,
    /// The bounds streaming starts from once the snapshot is done.
    pub start: Bounds,
    /// Transactions running when the snapshot started.
    pub start_running: Vec<String>,
    pub started_at_micros: i64,
    /// Whether those transactions have all ended.
    pub drained: bool,
    /// The key the scan had reached when they had (`None`: before the first row). Keys up to it
    /// are read again in `CatchUp`.
    pub drained_upto: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub table: String,
    pub snapshot: SnapshotState,
    /// The bounds a restarted producer streams from.
    pub bounds: Bounds,
    /// The highest key shipped by a key scan or the snapshot.
    pub max_key: Option<Vec<String>>,
    /// The highest watermark value shipped.
    pub max_watermark: Option<i64>,
    /// Events shipped since the table was first snapshotted.
    pub events: u64,
    /// The offset after the last repair request read from `<prefix>._repairs`.
    #[serde(default)]
    pub repairs_offset: i64,
    /// Every row version written by a transaction below this id (64-bit, as
    /// `txid_snapshot_xmin` gives it) was shipped or compared with the target: the next
    /// reconciliation looks at the rows written since (see [`crate::versions`]).
    #[serde(default)]
    pub reconciled_xmin: Option<i64>,
    /// How far trigger capture has read the change table (tables in trigger capture).
    #[serde(default)]
    pub trigger: Option<TriggerPosition>,
    /// Rows a batch run (`run --once`) shipped or saw, as (key, content hash): the next run's
    /// first passes read the newest rows again (the capture horizon's overlap), and skip those
    /// unchanged instead of shipping them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<(Vec<String>, u64)>,
}

/// How far trigger capture has read a change table (see [`crate::trigger`]). Snapshots are
/// in `pg_snapshot`'s text form (`xmin:xmax:xip,...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerPosition {
    /// The changes of every transaction this snapshot sees as finished were shipped; `None`:
    /// nothing was, the whole change table is to be read.
    pub consumed: Option<String>,
    /// A batch read over several passes: the snapshot that bounds it ...
    pub batch: Option<String>,
    /// ... and the sequence number of the last change of it shipped.
    pub after_seq: i64,
}

impl Checkpoint {
    pub const VERSION: u32 = 1;

    pub fn new(table: &str) -> Self {
        Self {
            version: Self::VERSION,
            table: table.to_string(),
            ..Default::default()
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // a struct of strings and numbers always serializes
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What the checkpoint topic holds for a table.
pub struct Loaded {
    /// Its newest checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// The header of its newest saved key set, as written (see [`crate::keysnapshot`]).
    pub key_set_header: Option<Vec<u8>>,
}

/// Reads the checkpoint topic to its end and returns the newest checkpoint of `table` and the
/// header of its newest saved key set (the message keyed `header_key`).
pub fn load(
    kafka_cfg: &KafkaConfig,
    topic: &str,
    table: &str,
    header_key: &str,
) -> Result<Loaded, CheckpointError> {
    let mut latest: Option<Vec<u8>> = None;
    let mut header: Option<Vec<u8>> = None;
    kafka::read_to_end(kafka_cfg, topic, Duration::from_secs(60), |m| {
        if m.key() == Some(table.as_bytes()) {
            latest = m.payload().map(<[u8]>::to_vec);
        } else if m.key() == Some(header_key.as_bytes()) {
            header = m.payload().map(<[u8]>::to_vec);
        }
    })
    .map_err(|source| CheckpointError::Read {
        topic: topic.to_string(),
        source,
    })?;
    Ok(Loaded {
        checkpoint: parse(latest, topic, table)?,
        key_set_header: header,
    })
}

/// The checkpoint in `latest`, checked.
fn parse(
    latest: Option<Vec<u8>>,
    topic: &str,
    table: &str,
) -> Result<Option<Checkpoint>, CheckpointError> {
    match latest {
        None => Ok(None),
        Some(bytes) => {
            let cp: Checkpoint =
                serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
                    table: table.to_string(),
                    topic: topic.to_string(),
                    message: e.to_string(),
                })?;
            if cp.version != Checkpoint::VERSION {
                return Err(CheckpointError::Corrupt {
                    table: table.to_string(),
                    topic: topic.to_string(),
                    message: format!(
                        "version {} (this producer writes {})",
                        cp.version,
                        Checkpoint::VERSION
                    ),
                });
            }
            Ok(Some(cp))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_through_json() {
        let mut cp = Checkpoint::new("public.media");
        cp.snapshot.phase = SnapshotPhase::CatchUp;
        cp.snapshot.drained = true;
        cp.max_key = Some(vec!["42".into()]);
        cp.bounds = Bounds {
            key: Some(vec!["40".into()]),
            ts: Some(7),
        };
        let back: Checkpoint = serde_json::from_slice(&cp.to_json()).unwrap();
        assert_eq!(back, cp);
    }
}
