//! Reading a saved key set back at start, then the table topic's messages shipped since; or,
//! when there is none that can be used, rebuilding the set from the whole topic.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rdkafka::Message;
use tracing::{info, warn};
use tunnel_shared::config::{Config, KafkaConfig, TableConfig};
use tunnel_shared::kafka::{self, TABLE_TOPIC_CONFIGS};

use super::{decode, Assembler, Header};
use crate::error::CheckpointError;
use crate::keysnapshot::KeySetSaver;
use crate::shipped::{self, ShippedKeys};

/// Longest wait for the broker while reading a saved set or the messages after it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The shipped keys a table's worker starts with, and what saves them from now on.
pub struct Loaded {
    pub keys: ShippedKeys,
    pub saver: KeySetSaver,
}

/// The oldest saved set that is used: half the table topic's `delete.retention.ms`. A tombstone
/// shipped after the set was taken stays in the topic at least that long; past it, compaction
/// may have removed a key's delete and its tombstone both, and replaying the messages after
/// the set would not see that the key was deleted.
fn max_age() -> Duration {
    let ms = TABLE_TOPIC_CONFIGS
        .iter()
        .find(|(k, _)| *k == "delete.retention.ms")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(86_400_000);
    Duration::from_millis(ms / 2)
}

/// The keys shipped so far: the table's saved set (`header`: its header as the checkpoint topic
/// holds it) with the messages shipped since, or the whole topic read again
/// ([`shipped::rebuild`]) when no saved set can be used (none, damaged, incomplete, too old,
/// of another topic). `empty`: an empty set of the table's kind; `shipped_before`: whether the
/// table ever shipped anything (no: the set is empty, nothing is read); `events`: the
/// checkpoint's count of events.
pub async fn load_or_rebuild(
    config: &Config,
    table: &TableConfig,
    header: Option<Vec<u8>>,
    empty: ShippedKeys,
    shipped_before: bool,
    events: u64,
) -> Result<Loaded, CheckpointError> {
    let table_key = table.qualified();
    let parsed = header.map(|bytes| parse_header(&bytes, &table_key));
    // the chunks of the last generation, which the next one deletes past its own count
    let chunks = match &parsed {
        Some(Ok(h)) => h.chunks,
        _ => 0,
    };
    let saver = |saved_events| KeySetSaver::new(&config.producer, &table_key, chunks, saved_events);
    if !shipped_before {
        return Ok(Loaded {
            keys: empty,
            saver: saver(Some(events)),
        });
    }
    let topic = config.topic(table);
    let reason = match parsed {
        None => {
            info!("no saved key set: rebuilding the shipped key set from the topic");
            None
        }
        Some(Err(reason)) => Some(reason),
        Some(Ok(header)) => {
            let (kafka, keysets) = (config.kafka.clone(), config.keysets_topic());
            let (t, keys) = (topic.clone(), empty.clone());
            let read = tokio::task::spawn_blocking(move || {
                from_saved(&kafka, &keysets, &t, &header, keys)
            })
            .await
            .unwrap_or_else(|e| Err(format!("reading it ended abnormally: {e}")));
            match read {
                Ok((keys, tail, stats)) => {
                    // (logged here: the blocking thread is outside the table's span)
                    info!(
                        keys = keys.len(),
                        saved_keys = stats.saved_keys,
                        tail_messages = stats.messages,
                        chunks = stats.chunks,
                        saved_bytes = stats.bytes,
                        age_s = stats.age_s,
                        hashed = matches!(keys, ShippedKeys::Hashed(_)),
                        elapsed_ms = stats.elapsed_ms,
                        "loaded the shipped key set from its saved copy and the topic's messages after it"
                    );
                    // the set is the saved one when nothing was shipped since
                    let saved_events = (tail == 0).then_some(events);
                    return Ok(Loaded {
                        keys,
                        saver: saver(saved_events),
                    });
                }
                Err(reason) => Some(reason),
            }
        }
    };
    if let Some(reason) = reason {
        warn!(%reason, "the saved key set cannot be used: rebuilding the shipped key set from the topic");
    }
    let keys = shipped::rebuild(config, &topic, empty).await?;
    Ok(Loaded {
        keys,
        saver: saver(None),
    })
}

/// A header as the checkpoint topic holds it, checked against this producer and table.
pub(super) fn parse_header(bytes: &[u8], table: &str) -> Result<Header, String> {
    let h: Header =
        serde_json::from_slice(bytes).map_err(|e| format!("its header is not valid: {e}"))?;
    if h.version != Header::VERSION {
        return Err(format!(
            "header version {} (this producer reads {})",
            h.version,
            Header::VERSION
        ));
    }
    if h.table != table {
        return Err(format!("the header is of table {}", h.table));
    }
    Ok(h)
}

/// What reading a saved set back took, for the log.
struct Stats {
    saved_keys: u64,
    messages: u64,
    chunks: u32,
    bytes: u64,
    age_s: i64,
    elapsed_ms: u64,
}

/// The saved set of `header` from the key sets' topic, brought up to date with the messages of
/// the table's `topic` shipped after it; with the count of those that are events. Any doubt
/// refuses it, with the reason.
fn from_saved(
    kafka_cfg: &KafkaConfig,
    keysets: &str,
    topic: &str,
    header: &Header,
    keys: ShippedKeys,
) -> Result<(ShippedKeys, u64, Stats), String> {
    let started = Instant::now();
    let age_ms = chrono::Utc::now().timestamp_millis() - header.written_at_ms;
    if age_ms < 0 || age_ms as u128 > max_age().as_millis() {
        return Err(format!(
            "it was saved {} s ago, more than {} s (half the topic's delete.retention.ms) or in the future",
            age_ms / 1000,
            max_age().as_secs()
        ));
    }
    let tail = tail_ranges(kafka_cfg, topic, &header.covers)?;
    let bytes = read_chunks(kafka_cfg, keysets, header)?;
    let mut keys = decode(header, &bytes, keys)?;
    drop(bytes);
    let saved_keys = keys.len();
    let (mut messages, mut events) = (0u64, 0u64);
    kafka::read_ranges(kafka_cfg, topic, &tail, IDLE_TIMEOUT, |m| {
        messages += 1;
        if let Some((_, body)) = m.key().and_then(|k| tunnel_shared::wire::parse(k).ok()) {
            events += 1;
            keys.read_message(body, m.payload().is_some());
        }
        ControlFlow::Continue(())
    })
    .map_err(|e| format!("reading the topic after it: {e}"))?;
    let stats = Stats {
        saved_keys,
        messages,
        chunks: header.chunks,
        bytes: header.bytes,
        age_s: age_ms / 1000,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    Ok((keys, events, stats))
}

/// The messages of the table's topic after the saved set: for each partition, from its end in
/// `covers` to its end now. The topic must have the same partitions, each holding every offset
/// from `covers` on (not a topic deleted and created again, not records deleted).
fn tail_ranges(
    kafka_cfg: &KafkaConfig,
    topic: &str,
    covers: &[(i32, i64)],
) -> Result<Vec<(i32, i64, i64)>, String> {
    let marks = kafka::partition_watermarks(kafka_cfg, topic, IDLE_TIMEOUT)
        .map_err(|e| format!("reading the ends of the topic: {e}"))?;
    if marks.len() != covers.len() {
        return Err(format!(
            "it covers {} partitions, the topic has {}",
            covers.len(),
            marks.len()
        ));
    }
    let mut ranges = Vec::with_capacity(marks.len());
    for (&(p, low, high), &(cp, from)) in marks.iter().zip(covers) {
        if p != cp || from < low || from > high {
            return Err(format!(
                "partition {cp} from offset {from}, the topic's partition {p} holds {low}..{high}"
            ));
        }
        ranges.push((p, from, high));
    }
    Ok(ranges)
}

/// The bytes of the saved set, from the chunks of its generation: read from the header's
/// offset until they are all in (the rest of the partition when one is missing).
fn read_chunks(kafka_cfg: &KafkaConfig, keysets: &str, header: &Header) -> Result<Vec<u8>, String> {
    let marks = kafka::partition_watermarks(kafka_cfg, keysets, IDLE_TIMEOUT)
        .map_err(|e| format!("reading the end of {keysets}: {e}"))?;
    let Some(&(_, low, end)) = marks.iter().find(|(p, _, _)| *p == 0) else {
        return Err(format!("{keysets} has no partition 0"));
    };
    if header.first_offset < low || header.first_offset >= end {
        return Err(format!(
            "its chunks are from offset {}, {keysets} holds {low}..{end}",
            header.first_offset
        ));
    }
    let mut assembler = Assembler::new(header);
    let mut refused: Option<String> = None;
    kafka::read_ranges(
        kafka_cfg,
        keysets,
        &[(0, header.first_offset, end)],
        IDLE_TIMEOUT,
        |m| match m.key().map(|k| assembler.offer(k, m.payload())) {
            Some(Err(e)) => {
                refused = Some(e);
                ControlFlow::Break(())
            }
            _ if assembler.complete() => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    )
    .map_err(|e| format!("reading its chunks from {keysets}: {e}"))?;
    if let Some(e) = refused {
        return Err(e);
    }
    assembler.finish()
}
