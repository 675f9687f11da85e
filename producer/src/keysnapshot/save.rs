//! Saving the shipped key set: every `key_snapshot_interval_s` while streaming, when the
//! snapshot is done and at a clean stop, whenever it changed since it was last saved.
//!
//! The set is taken between two of the worker's transactions: it then holds exactly the keys
//! of the events committed so far, and the ends of the table's topic (read just before, while
//! no transaction is open and no other producer may write to the topic: this one fenced them)
//! are where those events end. The generation ships in a transaction of its own: if it fails,
//! the one before stays whole and the set is saved again later.

use std::time::{Duration, Instant};

use tracing::{info, warn};
use tunnel_shared::config::ProducerConfig;
use tunnel_shared::fault::Classify;

use super::{chunk_key, header_key, Generation, Header};
use crate::error::WorkerError;
use crate::publish::{KeySetRecords, Publisher};
use crate::shipped::ShippedKeys;

/// Saves a table's shipped key set when due.
pub struct KeySetSaver {
    table: String,
    /// `None`: never saved.
    every: Option<Duration>,
    max_bytes: u64,
    last_at: Instant,
    /// The checkpoint's count of events when the set was last saved (or loaded as saved);
    /// `None`: the set in memory was never saved.
    saved_events: Option<u64>,
    /// Chunks of the last generation.
    chunks: u32,
    /// Whether "not saved" was logged already.
    told: bool,
}

impl KeySetSaver {
    /// `chunks`: those of the table's last generation; `saved_events`: see the field.
    pub fn new(
        config: &ProducerConfig,
        table: &str,
        chunks: u32,
        saved_events: Option<u64>,
    ) -> Self {
        Self {
            table: table.to_string(),
            every: (config.key_snapshot_interval_s > 0)
                .then(|| Duration::from_secs(config.key_snapshot_interval_s)),
            max_bytes: config.key_snapshot_max_mb.saturating_mul(1_000_000),
            last_at: Instant::now(),
            saved_events,
            chunks,
            told: false,
        }
    }

    /// One that never saves.
    pub fn disabled() -> Self {
        Self {
            table: String::new(),
            every: None,
            max_bytes: 0,
            last_at: Instant::now(),
            saved_events: None,
            chunks: 0,
            told: true,
        }
    }

    /// Saves `keys` if it changed (`events`: the checkpoint's count of events now) and
    /// `key_snapshot_interval_s` has passed since the last time. Call between transactions
    /// only, with the set holding every event shipped.
    pub async fn save_if_due(
        &mut self,
        publisher: &Publisher,
        keys: &ShippedKeys,
        events: u64,
    ) -> Result<(), WorkerError> {
        match self.every {
            Some(every) if self.last_at.elapsed() >= every => {
                self.save(publisher, keys, events, "interval").await
            }
            _ => Ok(()),
        }
    }

    /// Saves `keys` now if it changed (the snapshot is done, the worker stops; `why`: for the
    /// log).
    pub async fn save(
        &mut self,
        publisher: &Publisher,
        keys: &ShippedKeys,
        events: u64,
        why: &'static str,
    ) -> Result<(), WorkerError> {
        if self.every.is_none() || self.saved_events == Some(events) {
            return Ok(());
        }
        self.last_at = Instant::now();
        if publisher.doubtful() {
            self.tell("a commit failed in a way that may have gone through: the key set is no longer saved until the producer restarts", keys);
            return Ok(());
        }
        if keys.saved_len() > self.max_bytes {
            self.tell("the key set is larger than key_snapshot_max_mb: not saved (a restart reads the whole topic)", keys);
            return Ok(());
        }
        match self.ship(publisher, keys, events, why).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => {
                warn!(error = %e, "saving the shipped key set failed: tried again later");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn tell(&mut self, what: &str, keys: &ShippedKeys) {
        if !self.told {
            self.told = true;
            warn!(keys = keys.len(), bytes = keys.saved_len(), "{what}");
        }
    }

    async fn ship(
        &mut self,
        publisher: &Publisher,
        keys: &ShippedKeys,
        events: u64,
        why: &'static str,
    ) -> Result<(), WorkerError> {
        let started = Instant::now();
        let covers = publisher.topic_ends().await?;
        let generation = u64::try_from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0))
            .unwrap_or(0)
            .max(1);
        // a set of hundreds of MB takes a while to write out
        let cut = tunnel_shared::kafka::without_blocking_the_runtime(|| {
            Generation::cut(generation, &keys.to_bytes())
        });
        let count = cut.chunks.len() as u32;
        let mut chunks: Vec<(String, Option<Vec<u8>>)> = Vec::with_capacity(cut.chunks.len());
        let (checksum, bytes) = (cut.checksum, cut.bytes);
        for (i, value) in cut.chunks.into_iter().enumerate() {
            chunks.push((chunk_key(&self.table, i as u32), Some(value)));
        }
        // the last generation's chunks past this one's count: deleted, for compaction
        for i in count..self.chunks {
            chunks.push((chunk_key(&self.table, i), None));
        }
        let header = Header {
            version: Header::VERSION,
            table: self.table.clone(),
            generation,
            kind: keys.kind().to_string(),
            keys: keys.len(),
            bytes,
            chunks: count,
            checksum,
            first_offset: 0,
            covers,
            events,
            written_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        publisher
            .ship_key_set(KeySetRecords {
                chunks,
                header_key: header_key(&self.table),
                header: move |first_offset| {
                    // a struct of strings and numbers always serializes
                    serde_json::to_vec(&Header {
                        first_offset,
                        ..header
                    })
                    .unwrap_or_default()
                },
            })
            .await?;
        self.chunks = count;
        self.saved_events = Some(events);
        info!(
            keys = keys.len(),
            bytes,
            chunks = count,
            why,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "saved the shipped key set"
        );
        Ok(())
    }
}
