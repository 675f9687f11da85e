//! One table's worker: sets up schemas, topics and the transactional publisher, runs the
//! snapshot, then streams changes from its detectors until asked to stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use tunnel_shared::config::{Config, TableConfig};
use tunnel_shared::event::{ChangeEvent, Detection, EventEncoder, Op};
use tunnel_shared::fault::{Classify, ErrorClass};
use tunnel_shared::kafka::{self, TopicError};
use tunnel_shared::registry::{Registry, RegistryError};
use tunnel_shared::retry::{retry, Backoff};
use tunnel_shared::rules::RuleError;
use tunnel_shared::schema::{self, SchemaError};

use crate::capture::{ChangeDetector, KeyScan, PassContext, WatermarkScan};
use crate::checkpoint::{self, Checkpoint, CheckpointError, SnapshotPhase};
use crate::contents::ContentScan;
use crate::deletescan::DeleteScan;
use crate::horizon::{Bounds, Horizon};
use crate::keyset::KeySet;
use crate::publish::{PublishError, Publisher};
use crate::repair::RepairScan;
use crate::setup;
use crate::snapshot;
use crate::source::{Activity, Source, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("table {table}: {source}")]
    Rule { table: String, source: RuleError },
}

impl Classify for WorkerError {
    fn class(&self) -> ErrorClass {
        match self {
            WorkerError::Source(e) => e.class(),
            WorkerError::Registry(e) => e.class(),
            WorkerError::Topic(e) => e.class(),
            WorkerError::Publish(e) => e.class(),
            WorkerError::Schema(_) | WorkerError::Checkpoint(_) | WorkerError::Rule { .. } => {
                ErrorClass::Fatal
            }
        }
    }
}

/// How many times setup steps are tried before the worker gives up.
pub(crate) const SETUP_ATTEMPTS: u32 = 20;

/// Most snapshot rows remembered for the first watermark pass (see `remember_shipped`).
const SNAPSHOT_CACHE_ROWS: usize = 100_000;

struct Slot {
    detector: Box<dyn ChangeDetector>,
    /// This detector's own horizon: the argument in [`crate::horizon`] holds for one sequence
    /// of passes, so a probe only counts for the detector whose pass followed it.
    horizon: Horizon,
    /// The bounds of this detector's last shipped pass.
    bounds: Bounds,
    next_due: Instant,
    /// Activity seen before this detector's last shipped pass.
    last_activity: Option<Activity>,
    /// Tick of this detector's last shipped pass.
    last_tick: u64,
}

struct CacheEntry {
    hash: u64,
    /// Tick at which each detector (by slot index) last read the row.
    seen: Vec<u64>,
}

pub struct Worker {
    pub(crate) config: Arc<Config>,
    pub(crate) table: TableConfig,
    pub(crate) source: Source,
    pub(crate) publisher: Publisher,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) shutdown: watch::Receiver<bool>,
    slots: Vec<Slot>,
    /// What was last shipped of the rows a detector may read again.
    cache: HashMap<Vec<String>, CacheEntry>,
    tick: u64,
    /// The keys shipped so far, for tables with a single integer key (delete scans).
    pub(crate) keyset: Option<KeySet>,
    /// Whether rows of the snapshot are remembered for the first watermark pass after it.
    snapshot_rows_remembered: bool,
    /// When a checkpoint was last shipped; checkpoints without events wait for
    /// `checkpoint_interval_ms` (older bounds are always safe to restart from).
    last_shipped: Instant,
}

impl Worker {
    /// Connects, registers schemas, creates topics, fences older producers of this table and
    /// loads its checkpoint.
    pub async fn start(
        config: Arc<Config>,
        table: TableConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, WorkerError> {
        let p = &config.producer;
        let source = retry("connecting to the source", SETUP_ATTEMPTS, || {
            Source::connect(&config.source, &table, p.max_rows_per_second)
        })
        .await?;
        let info = source.table().clone();
        info!(
            columns = info.columns.len(),
            key = %info.key_order(),
            watermark = info.watermark.map(|i| info.columns[i].name.as_str()).unwrap_or("none"),
            "read the source catalog"
        );
        // the consumer applies the rules; a rule on a column the table lacks is refused here
        // already, before anything is shipped
        let columns: Vec<(&str, &str)> = info
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_name.as_str()))
            .collect();
        let rule_error = |source| WorkerError::Rule {
            table: table.qualified(),
            source,
        };
        let rules = table.parsed_rules().map_err(rule_error)?;
        tunnel_shared::rules::compile(&rules, &columns).map_err(rule_error)?;
        let topic = config.topic(&table);
        let schemas = schema::derive(&info, &config.kafka.topic_prefix)?;
        let registry = Registry::new(&config.registry.url)?;
        let admin = kafka::admin(&config.kafka)?;
        let cp_topic = config.checkpoint_topic();
        let repair_topic = config.repair_topic();
        // the schemas and the three topics do not depend on each other: set up at once
        let ((key_id, value_id), ()) = tokio::try_join!(
            setup::register_schemas(&registry, &topic, &schemas, &config.registry.compatibility),
            setup::ensure_topics(&admin, &config.kafka, &topic, &cp_topic, &repair_topic),
        )?;
        // the checkpoint is read while the transactional producer fences older ones
        let kcfg = config.kafka.clone();
        let (t2, key2) = (cp_topic.clone(), table.qualified());
        let loading = tokio::task::spawn_blocking(move || checkpoint::load(&kcfg, &t2, &key2));
        let encoder =
            EventEncoder::new(schemas, key_id, value_id, &info).map_err(PublishError::from)?;
        let table_key = table.qualified();
        let txn_id = format!("{}.producer.{}", config.kafka.topic_prefix, table_key);
        let publisher = retry(
            "starting the transactional producer",
            SETUP_ATTEMPTS,
            || {
                Publisher::new(
                    &config.kafka,
                    &txn_id,
                    topic.clone(),
                    cp_topic.clone(),
                    table_key.clone(),
                    encoder.clone(),
                )
            },
        )
        .await?;
        let loaded = loading.await.unwrap_or(Ok(None))?;
        let checkpoint = match loaded {
            Some(cp) => {
                info!(phase = ?cp.snapshot.phase, events = cp.events, "resuming from checkpoint");
                cp
            }
            None => Checkpoint::new(&table_key),
        };
        let mut slots: Vec<Slot> = Vec::new();
        let now = Instant::now();
        let max_wait = (p.horizon_max_wait_s as i64).saturating_mul(1_000_000);
        let start = checkpoint.bounds.clone();
        let mut add = |detector: Box<dyn ChangeDetector>| {
            slots.push(Slot {
                detector,
                horizon: Horizon::new(start.clone(), max_wait),
                bounds: start.clone(),
                next_due: now,
                last_activity: None,
                last_tick: 0,
            })
        };
        add(Box::new(KeyScan {
            interval: Duration::from_millis(p.insert_interval_ms),
            chunk_rows: p.scan_chunk_rows,
        }));
        if info.watermark.is_some() {
            add(Box::new(WatermarkScan {
                interval: Duration::from_millis(p.update_interval_ms),
                chunk_rows: p.scan_chunk_rows,
            }));
        }
        // nothing was ever shipped for a table without a checkpoint: no topic to read back
        let keyset = match info.integer_key() {
            Some(_) if checkpoint.snapshot.started_at_micros == 0 => Some(KeySet::default()),
            Some(_) => Some(crate::keyset::rebuild(&config, &topic).await?),
            None => None,
        };
        if keyset.is_some() {
            add(Box::new(DeleteScan {
                interval: Duration::from_millis(p.delete_interval_ms),
                fanout: 64,
                leaf_span: 4096,
            }));
        }
        if p.reconcile_interval_ms > 0 {
            // the first comparison waits one interval: right after a snapshot the target is
            // still catching up, and every row in flight would look different
            add(Box::new(ContentScan::new(
                Duration::from_millis(p.reconcile_interval_ms),
                Duration::from_millis(p.reconcile_full_interval_ms),
                keyset.is_some(),
                &config.target,
                &table,
                config.topic(&table),
            )));
        }
        add(Box::new(RepairScan::new(
            Duration::from_millis(p.repair_interval_ms),
            &config.kafka,
            config.repair_topic(),
            table.qualified(),
        )));
        for slot in &mut slots {
            if slot.detector.detection() == Detection::Reconcile {
                slot.next_due = now + slot.detector.interval();
            }
        }
        Ok(Self {
            config,
            table,
            source,
            publisher,
            checkpoint,
            shutdown,
            slots,
            cache: HashMap::new(),
            tick: 0,
            last_shipped: Instant::now(),
            snapshot_rows_remembered: false,
            keyset,
        })
    }

    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Snapshot (if not done), then stream until shutdown.
    pub async fn run(mut self) -> Result<(), WorkerError> {
        let mut backoff = Backoff::default();
        while self.checkpoint.snapshot.phase != SnapshotPhase::Done {
            match snapshot::run(&mut self).await {
                Ok(()) if self.stopping() => return Ok(()),
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, delay_ms = delay.as_millis() as u64, "snapshot chunk failed, resuming from the last shipped key");
                    tokio::time::sleep(delay).await;
                    self.reconnect_if_needed().await?;
                }
                Err(e) => return Err(e),
            }
        }
        // after the snapshot, streaming starts from the bounds the snapshot recorded
        let max_wait = self.max_wait_micros();
        for slot in &mut self.slots {
            slot.horizon = Horizon::new(self.checkpoint.bounds.clone(), max_wait);
            slot.bounds = self.checkpoint.bounds.clone();
        }
        backoff.reset();
        info!("streaming changes");
        while !self.stopping() {
            let next_due = self
                .slots
                .iter()
                .map(|s| s.next_due)
                .min()
                .unwrap_or_else(Instant::now);
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(next_due.into()) => {}
                _ = shutdown.changed() => continue,
            }
            match self.tick().await {
                Ok(()) => backoff.reset(),
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, delay_ms = delay.as_millis() as u64, "pass failed, retrying");
                    tokio::time::sleep(delay).await;
                    self.reconnect_if_needed().await?;
                }
                Err(e) => return Err(e),
            }
        }
        info!("stopped");
        Ok(())
    }

    pub(crate) fn max_wait_micros(&self) -> i64 {
        (self.config.producer.horizon_max_wait_s as i64).saturating_mul(1_000_000)
    }

    pub(crate) async fn reconnect_if_needed(&mut self) -> Result<(), WorkerError> {
        if self.source.is_closed() {
            let p = &self.config.producer;
            self.source = retry("reconnecting to the source", SETUP_ATTEMPTS, || {
                Source::connect(&self.config.source, &self.table, p.max_rows_per_second)
            })
            .await?;
            info!("reconnected to the source");
        }
        Ok(())
    }

    /// Runs the detectors that are due and may find something, each pass shipped on its own so
    /// that a slow pass (the watermark scan of a large table) never delays a fast one.
    async fn tick(&mut self) -> Result<(), WorkerError> {
        let activity = self.source.activity().await?;
        let now = Instant::now();
        let mut run = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if now < slot.next_due {
                continue;
            }
            slot.next_due = now + slot.detector.interval();
            let wanted = slot
                .last_activity
                .as_ref()
                .is_none_or(|before| slot.detector.wants(before, &activity));
            if wanted {
                run.push(i);
            }
        }
        for i in run {
            self.pass(i, &activity).await?;
        }
        Ok(())
    }

    /// One pass of detector `i`: probe, read, ship what changed with the checkpoint, and only
    /// then move its horizon.
    async fn pass(&mut self, i: usize, activity: &Activity) -> Result<(), WorkerError> {
        let started = Instant::now();
        let probe = self.source.probe().await?;
        let mut horizon = self.slots[i].horizon.clone();
        let observation = horizon.observe(probe, self.checkpoint.max_key.clone());
        if !observation.gave_up_on.is_empty() {
            warn!(transactions = ?observation.gave_up_on, "transactions open longer than horizon_max_wait_s: moving on without them; rows they write later are found by reconciliation only");
        }
        let bounds = self.effective_bounds(&observation.bounds);
        let detection = self.slots[i].detector.detection();
        let read_before = self.source.read_rows();
        let ctx = PassContext {
            source: &mut self.source,
            bounds: &bounds,
            shipped: self.keyset.as_ref(),
            checkpoint: &self.checkpoint,
        };
        let found = self.slots[i].detector.pass(ctx).await?;
        let read = self.source.read_rows() - read_before;
        let ts_ms = chrono::Utc::now().timestamp_millis();
        let mut events = Vec::new();
        for r in &found.rows {
            let op = match self.cache.get(&r.key_text) {
                Some(e) if e.hash == r.hash => continue,
                Some(_) => Op::Update,
                None if detection == Detection::KeyScan => Op::Create,
                None => Op::Update,
            };
            events.push(ChangeEvent {
                op,
                key: r.key.clone(),
                after: Some(r.row.clone()),
                detected_by: detection,
                updated_at: r.watermark,
                ts_ms,
            });
        }
        for g in &found.gone {
            events.push(ChangeEvent {
                op: Op::Delete,
                key: g.key.clone(),
                after: None,
                detected_by: detection,
                updated_at: None,
                ts_ms,
            });
        }
        let mut next = self.checkpoint.clone();
        next.bounds = self.restart_bounds(i, &observation.bounds);
        if let Some(upto) = found.repairs_upto {
            next.repairs_offset = upto;
        }
        if let Some(h) = found.reconciled_xmin {
            next.reconciled_xmin = Some(h);
        }
        if detection == Detection::KeyScan && found.max_key.is_some() {
            next.max_key = found.max_key.clone();
        }
        // only a complete watermark pass may move the data-driven bound: rows the key scan found
        // may carry newer timestamps than updates the watermark scan has not read yet
        if detection == Detection::Watermark {
            next.max_watermark = found
                .rows
                .iter()
                .filter_map(|r| r.watermark)
                .chain(next.max_watermark)
                .max();
        }
        next.events += events.len() as u64;
        // the first watermark pass after a snapshot skips the rows the snapshot remembered: its
        // bounds are kept at once, or a restart would read those rows again and, its memory
        // gone, ship them again
        let after_snapshot = detection == Detection::Watermark && self.snapshot_rows_remembered;
        let checkpoint_due = next != self.checkpoint
            && (after_snapshot
                || self.last_shipped.elapsed()
                    >= Duration::from_millis(self.config.producer.checkpoint_interval_ms));
        if !events.is_empty() || checkpoint_due {
            self.publisher.publish(&events, &next).await?;
            self.last_shipped = Instant::now();
        }
        if after_snapshot {
            self.snapshot_rows_remembered = false;
            info!(
                read_rows = found.rows.len(),
                shipped = events.len(),
                "first watermark pass after the snapshot done"
            );
        }
        // shipped: remember what was shipped and seen
        self.tick += 1;
        let tick = self.tick;
        let slot = &mut self.slots[i];
        // a pass may take at most half of the source time of its detector: a pass that took
        // longer than its interval waits as long again before the next one
        slot.next_due = slot.next_due.max(Instant::now() + started.elapsed());
        slot.horizon = horizon;
        slot.bounds = observation.bounds;
        slot.last_activity = Some(activity.clone());
        slot.last_tick = tick;
        let n_slots = self.slots.len();
        if let Some(keys) = &mut self.keyset {
            for e in &events {
                if let Some(k) = crate::keyset::key_i64(&e.key) {
                    if e.op == Op::Delete {
                        keys.remove(k);
                    } else {
                        keys.insert(k);
                    }
                }
            }
        }
        for g in &found.gone {
            self.cache.remove(&g.key_text);
        }
        for r in found.rows {
            let e = self.cache.entry(r.key_text).or_insert_with(|| CacheEntry {
                hash: r.hash,
                seen: vec![0; n_slots],
            });
            e.hash = r.hash;
            e.seen[i] = tick;
        }
        let last_ticks: Vec<u64> = self.slots.iter().map(|s| s.last_tick).collect();
        self.cache.retain(|_, e| {
            e.seen
                .iter()
                .zip(&last_ticks)
                .any(|(seen, last)| seen >= last)
        });
        self.checkpoint = next;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if !events.is_empty() {
            info!(
                detector = detection.as_str(),
                events = events.len(),
                deletes = found.gone.len(),
                scanned = found.scanned,
                read_rows = read,
                elapsed_ms,
                "shipped changes"
            );
        } else {
            tracing::debug!(
                detector = detection.as_str(),
                read_rows = read,
                scanned = found.scanned,
                elapsed_ms,
                "pass found no change"
            );
        }
        Ok(())
    }

    /// The bounds a restarted producer may start every detector from: the key bound of the key
    /// scan and the time bound of the watermark scan, as used by their latest passes (`bounds`
    /// for detector `i`, which is about to ship).
    fn restart_bounds(&self, i: usize, bounds: &Bounds) -> Bounds {
        let used = |d: Detection| {
            self.slots
                .iter()
                .enumerate()
                .find(|(_, s)| s.detector.detection() == d)
                .map(|(j, s)| {
                    if j == i {
                        bounds.clone()
                    } else {
                        s.bounds.clone()
                    }
                })
        };
        Bounds {
            key: used(Detection::KeyScan).and_then(|b| b.key),
            ts: used(Detection::Watermark).and_then(|b| b.ts),
        }
    }

    /// The horizon's bounds, with the time bound lowered to the highest watermark value shipped
    /// minus the overlap: applications that write their own (older) timestamps are still seen.
    /// The earliest watermark the first pass after the snapshot may read again: the snapshot's
    /// start, less the overlap and a second of margin.
    pub(crate) fn recent_from(&self) -> i64 {
        let overlap = (self.config.producer.watermark_overlap_ms as i64).saturating_mul(1000);
        self.checkpoint
            .snapshot
            .started_at_micros
            .saturating_sub(overlap)
            .saturating_sub(1_000_000)
    }

    /// Remembers rows the snapshot shipped that changed shortly before it started: the first
    /// watermark pass reads them again, and without this would ship them a second time (a row
    /// that breaks a validation rule would then be in the DLQ twice). At most
    /// `SNAPSHOT_CACHE_ROWS` rows (a table loaded in bulk just before its snapshot): past that,
    /// they are shipped again, which the consumer applies without effect.
    pub(crate) fn remember_shipped(&mut self, rows: Vec<(Vec<String>, u64)>) {
        let n_slots = self.slots.len();
        self.snapshot_rows_remembered |= !rows.is_empty();
        for (key, hash) in rows {
            if self.cache.len() >= SNAPSHOT_CACHE_ROWS {
                break;
            }
            self.cache.insert(
                key,
                CacheEntry {
                    hash,
                    seen: vec![self.tick; n_slots],
                },
            );
        }
    }

    fn effective_bounds(&self, b: &Bounds) -> Bounds {
        // the horizon's clock bound, less the overlap against clock differences between sessions
        let overlap = (self.config.producer.watermark_overlap_ms as i64).saturating_mul(1000);
        let clock = b.ts.map(|t| t.saturating_sub(overlap));
        // values above the highest one a complete pass shipped: applications that write their
        // own, older timestamps are still seen, and rows sharing that highest value (a bulk
        // load) are not read again by every pass
        let data = self.checkpoint.max_watermark.map(|m| m.saturating_add(1));
        let ts = match (clock, data) {
            (Some(c), Some(d)) => Some(c.min(d)),
            (c, _) => c,
        };
        Bounds {
            key: b.key.clone(),
            ts,
        }
    }
}
