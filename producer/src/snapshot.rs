//! The initial snapshot: the whole table in keyset-paginated chunks, each its own short
//! statement and its own Kafka transaction with the checkpoint, so that a restarted producer
//! resumes after the last shipped key.
//!
//! Transactions that were already running when the snapshot started may write behind its
//! cursor and commit later, with keys and timestamps older than anything streaming looks at.
//! The snapshot therefore notes which transactions were running at its start and the key it had
//! reached when the last of them ended; once the scan is over it reads those keys again
//! (`CatchUp`). Streaming then starts from the key and time taken before the snapshot began.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use tunnel_shared::event::{ChangeEvent, Detection, Op};

use crate::checkpoint::{Checkpoint, SnapshotPhase};
use crate::horizon::Bounds;
use crate::publish::Publisher;
use crate::source::{Source, SourceRow};
use crate::worker::{Worker, WorkerError};

pub async fn run(w: &mut Worker) -> Result<(), WorkerError> {
    let chunk = w.config.producer.snapshot_chunk_rows;
    if w.checkpoint.snapshot.started_at_micros == 0 {
        let max_key = w.source.max_key().await?;
        let probe = w.source.probe().await?;
        let mut next = w.checkpoint.clone();
        next.snapshot.start = Bounds {
            key: max_key,
            ts: Some(probe.at_micros),
        };
        next.snapshot.started_at_micros = probe.at_micros;
        // the snapshot reads every row written before it started: reconciliation starts there
        next.reconciled_xmin = Some(
            crate::versions::horizon(w.source.client())
                .await
                .map_err(crate::source::SourceError::from)?,
        );
        next.snapshot.start_running = probe.running.into_iter().collect();
        next.snapshot.start_running.sort();
        next.snapshot.drained = next.snapshot.start_running.is_empty();
        w.publisher.publish(&[], &next).await?;
        w.checkpoint = next;
    }
    let total = w.source.estimated_rows().await.unwrap_or(0);
    let mut progress = Progress::new(total, w.checkpoint.events);
    info!(estimated_rows = total, phase = ?w.checkpoint.snapshot.phase, "snapshot started");
    // the next chunk is read while the previous one is being committed to Kafka
    let published = w.checkpoint.clone();
    let mut pending: Option<(Checkpoint, Vec<SourceRow>)> = None;
    // the snapshot's start is fixed by now: the rows the first watermark pass reads again
    let recent_from = w.recent_from();
    let scanned = scan(w, chunk, recent_from, &mut pending, &mut progress).await;
    let flushed = match pending.take() {
        Some((cp, rows)) if scanned.is_ok() => {
            ship(&w.publisher, &cp, rows, &mut progress, recent_from)
                .await
                .map(|recent| w.remember_shipped(recent))
        }
        _ => Ok(()),
    };
    if let Err(e) = scanned.and(flushed) {
        // resume from what Kafka has, not from what was only read
        w.checkpoint = published;
        return Err(e);
    }
    while w.checkpoint.snapshot.phase == SnapshotPhase::CatchUp {
        if w.stopping() {
            return Ok(());
        }
        let mut next = w.checkpoint.clone();
        let Some(upto) = next.snapshot.drained_upto.clone() else {
            next.snapshot.phase = SnapshotPhase::Done;
            ship(&w.publisher, &next, Vec::new(), &mut progress, recent_from).await?;
            w.checkpoint = next;
            break;
        };
        let rows = w
            .source
            .rows_between(next.snapshot.after_key.as_deref(), &upto, chunk)
            .await?;
        if let Some(last) = rows.last() {
            next.snapshot.after_key = Some(last.key_text.clone());
        }
        if (rows.len() as i64) < chunk {
            next.snapshot.phase = SnapshotPhase::Done;
        }
        account(&mut next, &rows);
        let recent = ship(&w.publisher, &next, rows, &mut progress, recent_from).await?;
        w.remember_shipped(recent);
        w.checkpoint = next;
    }
    progress.finish();
    info!(events = w.checkpoint.events, "snapshot done");
    Ok(())
}

/// Whether none of the transactions running at the snapshot's start is running any more (or
/// they have been waited for longer than `horizon_max_wait_s`).
async fn start_drained(
    source: &Source,
    cp: &Checkpoint,
    max_wait_micros: i64,
) -> Result<bool, WorkerError> {
    let probe = source.probe().await?;
    let still: Vec<&String> = cp
        .snapshot
        .start_running
        .iter()
        .filter(|v| probe.running.contains(*v))
        .collect();
    if still.is_empty() {
        return Ok(true);
    }
    if probe.at_micros - cp.snapshot.started_at_micros > max_wait_micros {
        warn!(transactions = ?still, "transactions older than the snapshot are still open after horizon_max_wait_s; moving on without them");
        return Ok(true);
    }
    Ok(false)
}

/// The scan reached the end: wait for the transactions older than the snapshot, then read
/// again what was read while they were open, or finish.
async fn finish_scan(w: &mut Worker, next: &mut Checkpoint) -> Result<(), WorkerError> {
    while !next.snapshot.drained {
        if start_drained(&w.source, next, w.max_wait_micros()).await? {
            next.snapshot.drained = true;
            next.snapshot.drained_upto = next.snapshot.after_key.clone();
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    next.snapshot.phase = match next.snapshot.drained_upto {
        Some(_) => SnapshotPhase::CatchUp,
        None => SnapshotPhase::Done,
    };
    next.snapshot.after_key = None;
    next.bounds = next.snapshot.start.clone();
    Ok(())
}

/// Reads the table chunk by chunk; each chunk is left in `pending` and shipped while the next
/// one is read. `w.checkpoint` runs one chunk ahead of what Kafka has. Shipped rows with a
/// watermark from `recent_from` on are remembered (see `ship`).
async fn scan(
    w: &mut Worker,
    chunk: i64,
    recent_from: i64,
    pending: &mut Option<(Checkpoint, Vec<SourceRow>)>,
    progress: &mut Progress,
) -> Result<(), WorkerError> {
    let max_wait = w.max_wait_micros();
    while w.checkpoint.snapshot.phase == SnapshotPhase::Scan {
        if w.stopping() {
            return Ok(());
        }
        let mut next = w.checkpoint.clone();
        let source = &mut w.source;
        let read = async {
            let drained = !next.snapshot.drained && start_drained(source, &next, max_wait).await?;
            let rows = source
                .rows_after(next.snapshot.after_key.as_deref(), chunk)
                .await?;
            Ok::<_, WorkerError>((drained, rows))
        };
        let publisher = &w.publisher;
        let shipping = async {
            match pending.take() {
                Some((cp, rows)) => ship(publisher, &cp, rows, progress, recent_from).await,
                None => Ok(Vec::new()),
            }
        };
        let (read, shipped) = tokio::join!(read, shipping);
        w.remember_shipped(shipped?);
        let (drained, rows) = read?;
        if drained {
            next.snapshot.drained = true;
            next.snapshot.drained_upto = next.snapshot.after_key.clone();
        }
        let done = (rows.len() as i64) < chunk;
        if let Some(last) = rows.last() {
            next.snapshot.after_key = Some(last.key_text.clone());
            next.max_key = Some(last.key_text.clone());
        }
        account(&mut next, &rows);
        if let Some(keys) = &mut w.keyset {
            for r in &rows {
                if let Some(k) = crate::keyset::key_i64(&r.key) {
                    keys.insert(k);
                }
            }
        }
        if done {
            finish_scan(w, &mut next).await?;
        }
        w.checkpoint = next.clone();
        *pending = Some((next, rows));
    }
    Ok(())
}

/// Counts a chunk's rows into the checkpoint.
fn account(next: &mut Checkpoint, rows: &[SourceRow]) {
    next.events += rows.len() as u64;
    next.max_watermark = rows
        .iter()
        .filter_map(|r| r.watermark)
        .chain(next.max_watermark)
        .max();
}

/// Ships a chunk as `r` events with the checkpoint that covers it. Returns the key and hash of
/// the rows whose watermark is at or after `recent_from`: the first watermark pass reads them
/// again (see [`Worker::remember_shipped`]).
async fn ship(
    publisher: &Publisher,
    next: &Checkpoint,
    rows: Vec<SourceRow>,
    progress: &mut Progress,
    recent_from: i64,
) -> Result<Vec<(Vec<String>, u64)>, WorkerError> {
    let ts_ms = chrono::Utc::now().timestamp_millis();
    let mut recent = Vec::new();
    let events: Vec<ChangeEvent> = rows
        .into_iter()
        .map(|r| {
            if r.watermark.is_some_and(|t| t >= recent_from) {
                recent.push((r.key_text, r.hash));
            }
            ChangeEvent {
                op: Op::Read,
                key: r.key,
                after: Some(r.row),
                detected_by: Detection::Snapshot,
                updated_at: r.watermark,
                ts_ms,
            }
        })
        .collect();
    publisher.publish(&events, next).await?;
    progress.add(events.len() as u64);
    Ok(recent)
}

/// Rows, rows/s and ETA: a line redrawn on a terminal, and a log line every 5 s.
struct Progress {
    total: i64,
    done: u64,
    start: Instant,
    last_log: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: i64, already: u64) -> Self {
        Self {
            total,
            done: already,
            start: Instant::now(),
            last_log: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, rows: u64) {
        self.done += rows;
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let eta = if rate > 0.0 && self.total as f64 > self.done as f64 {
            (self.total as f64 - self.done as f64) / rate
        } else {
            0.0
        };
        if self.tty {
            eprint!(
                "\rsnapshot: {} / ~{} rows, {:.0} rows/s, eta {:.0}s   ",
                self.done, self.total, rate, eta
            );
        }
        if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            info!(
                rows = self.done,
                estimated_rows = self.total,
                rows_per_s = rate as u64,
                eta_s = eta as u64,
                "snapshot progress"
            );
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
