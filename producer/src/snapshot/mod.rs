//! The initial snapshot: the whole table in keyset-paginated chunks, each its own short
//! statement and its own Kafka transaction with the checkpoint, so that a restarted producer
//! resumes after the last shipped key.
//!
//! Transactions that were already running when the snapshot started may write behind its
//! cursor and commit later, with keys and timestamps older than anything streaming looks at.
//! The snapshot therefore notes which transactions were running at its start and the key it had
//! reached when the last of them ended; once the scan is over it reads those keys again
//! (`CatchUp`). Streaming then starts from the key and time taken before the snapshot began.
//!
//! [`Snapshot`] is the phase as an object: it holds the checkpoint, the shipped key set and the
//! rows to remember, is run (again, after a transient failure) until done, and hands streaming
//! what it needs ([`Snapshotted`]).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};
use tunnel_shared::event::{ChangeEvent, Detection, Op};

use crate::checkpoint::{Checkpoint, SnapshotPhase};
use crate::error::WorkerError;
use crate::horizon::{Bounds, Margins};
use crate::publish::Shipper;
use crate::shipped::ShippedKeys;
use crate::source::{SourceReader, SourceRow};

use progress::Progress;

use crate::observe::TableObserver;

mod progress;

/// Most snapshot rows remembered for the first watermark pass (see [`Snapshot::record`]).
const SNAPSHOT_CACHE_ROWS: usize = 100_000;

/// A chunk read and not shipped yet, with the checkpoint that covers it.
type Pending = Option<(Checkpoint, Vec<SourceRow>)>;

/// What streaming starts from once the snapshot is done.
pub struct Snapshotted {
    pub checkpoint: Checkpoint,
    pub shipped: ShippedKeys,
    /// Rows shipped that the first watermark pass reads again: key (text form) and hash.
    pub remembered: HashMap<Vec<String>, u64>,
}

/// A chunk just shipped: its events, and the rows among them to remember.
struct Shipped {
    events: Vec<ChangeEvent>,
    recent: Vec<(Vec<String>, u64)>,
}

pub struct Snapshot {
    chunk_rows: i64,
    margins: Margins,
    /// What was shipped last, or (during the scan) the chunk read ahead of it.
    checkpoint: Checkpoint,
    shipped: ShippedKeys,
    remembered: HashMap<Vec<String>, u64>,
    /// The rows the scan read while transactions older than the snapshot were open (key,
    /// hash), at most `SNAPSHOT_CACHE_ROWS`: the catch-up ships again only those that changed
    /// since (by this process; after a restart it ships them all again).
    read_undrained: HashMap<Vec<String>, u64>,
    /// Told of the progress, when the snapshot runs for a worker.
    observer: Option<TableObserver>,
}

impl Snapshot {
    pub fn new(
        chunk_rows: i64,
        margins: Margins,
        checkpoint: Checkpoint,
        shipped: ShippedKeys,
    ) -> Self {
        Self {
            chunk_rows,
            margins,
            checkpoint,
            shipped,
            remembered: HashMap::new(),
            read_undrained: HashMap::new(),
            observer: None,
        }
    }

    /// Reports the progress to `observer` (metrics and readiness).
    pub fn observed_by(mut self, observer: TableObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn done(&self) -> bool {
        self.checkpoint.snapshot.phase == SnapshotPhase::Done
    }

    pub fn finish(self) -> Snapshotted {
        Snapshotted {
            checkpoint: self.checkpoint,
            shipped: self.shipped,
            remembered: self.remembered,
        }
    }

    /// Runs the snapshot from its checkpoint until it is done or `stop` is set. After an
    /// error it may be run again: it resumes from what was shipped.
    pub async fn run<R: SourceReader, S: Shipper>(
        &mut self,
        source: &mut R,
        shipper: &S,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        if self.checkpoint.snapshot.started_at_micros == 0 {
            self.begin(source, shipper).await?;
        }
        let total = source.estimated_rows().await.unwrap_or(0);
        info!(estimated_rows = total, phase = ?self.checkpoint.snapshot.phase, "snapshot started");
        let mut run = Run {
            source,
            stop,
            out: Outlet {
                shipper,
                progress: Progress::new(total, self.checkpoint.events, self.observer.clone()),
                // the snapshot's start is fixed by now: the rows the first watermark pass reads
                // again
                recent_from: self.recent_from(),
                maybe_shipped: Vec::new(),
            },
        };
        let scanned = self.scan(&mut run).await;
        self.shipped
            .apply(&std::mem::take(&mut run.out.maybe_shipped));
        scanned?;
        let caught_up = self.catch_up(&mut run).await;
        self.shipped
            .apply(&std::mem::take(&mut run.out.maybe_shipped));
        if caught_up? {
            return Ok(());
        }
        run.out.progress.finish();
        info!(events = self.checkpoint.events, "snapshot done");
        Ok(())
    }

    /// Notes where streaming starts once the snapshot is done, and ships that first.
    async fn begin<R: SourceReader, S: Shipper>(
        &mut self,
        source: &mut R,
        shipper: &S,
    ) -> Result<(), WorkerError> {
        let max_key = source.max_key().await?;
        let probe = source.probe().await?;
        let mut next = self.checkpoint.clone();
        next.snapshot.start = Bounds {
            key: max_key,
            ts: Some(probe.at_micros),
        };
        next.snapshot.started_at_micros = probe.at_micros;
        // the snapshot reads every row written before it started: reconciliation starts there
        next.reconciled_xmin = Some(source.transaction_horizon().await?);
        next.snapshot.start_running = probe.running.into_iter().collect();
        next.snapshot.start_running.sort();
        next.snapshot.drained = next.snapshot.start_running.is_empty();
        shipper.publish(&[], &next).await?;
        self.checkpoint = next;
        Ok(())
    }

    /// The earliest watermark the first pass after the snapshot may read again: the snapshot's
    /// start, less the overlap and a second of margin.
    fn recent_from(&self) -> i64 {
        self.checkpoint
            .snapshot
            .started_at_micros
            .saturating_sub(self.margins.overlap_micros)
            .saturating_sub(1_000_000)
    }

    /// Reads the table chunk by chunk, each chunk shipped while the next one is read, then
    /// ships the last. After an error the checkpoint is the one this scan started from: resume
    /// from what Kafka has, not from what was only read.
    async fn scan<R: SourceReader, S: Shipper>(
        &mut self,
        run: &mut Run<'_, R, S>,
    ) -> Result<(), WorkerError> {
        let published = self.checkpoint.clone();
        let mut pending: Pending = None;
        let scanned = self.scan_chunks(run, &mut pending).await;
        let flushed = match pending.take() {
            Some((cp, rows)) if scanned.is_ok() => run
                .out
                .ship(&cp, rows)
                .await
                .map(|shipped| self.record(shipped)),
            _ => Ok(()),
        };
        if let Err(e) = scanned.and(flushed) {
            self.checkpoint = published;
            return Err(e);
        }
        Ok(())
    }

    /// The scan's chunks; each is left in `pending` and shipped while the next one is read.
    /// `self.checkpoint` runs one chunk ahead of what Kafka has.
    async fn scan_chunks<R: SourceReader, S: Shipper>(
        &mut self,
        run: &mut Run<'_, R, S>,
        pending: &mut Pending,
    ) -> Result<(), WorkerError> {
        let (chunk, max_wait) = (self.chunk_rows, self.margins.max_wait_micros);
        let Run { source, stop, out } = run;
        while self.checkpoint.snapshot.phase == SnapshotPhase::Scan {
            if *stop.borrow() {
                return Ok(());
            }
            let mut next = self.checkpoint.clone();
            let read = async {
                let drained =
                    !next.snapshot.drained && start_drained(&**source, &next, max_wait).await?;
                let rows = source
                    .rows_after(next.snapshot.after_key.as_deref(), chunk)
                    .await?;
                Ok::<_, WorkerError>((drained, rows))
            };
            let shipping = async {
                match pending.take() {
                    Some((cp, rows)) => out.ship(&cp, rows).await.map(Some),
                    None => Ok(None),
                }
            };
            let (read, shipped) = tokio::join!(read, shipping);
            if let Some(shipped) = shipped? {
                self.record(shipped);
            }
            let (drained, rows) = read?;
            if !next.snapshot.drained && !drained {
                for r in &rows {
                    if self.read_undrained.len() >= SNAPSHOT_CACHE_ROWS {
                        break;
                    }
                    self.read_undrained.insert(r.key_text.clone(), r.hash);
                }
            }
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
            if done {
                finish_scan(&**source, &mut next, max_wait, stop).await?;
            }
            self.checkpoint = next.clone();
            *pending = Some((next, rows));
        }
        Ok(())
    }

    /// Reads again the keys read while transactions older than the snapshot were open, then
    /// marks the snapshot done. Returns whether it stopped because `stop` was set.
    async fn catch_up<R: SourceReader, S: Shipper>(
        &mut self,
        run: &mut Run<'_, R, S>,
    ) -> Result<bool, WorkerError> {
        while self.checkpoint.snapshot.phase == SnapshotPhase::CatchUp {
            if *run.stop.borrow() {
                return Ok(true);
            }
            let mut next = self.checkpoint.clone();
            let rows = match next.snapshot.drained_upto.clone() {
                None => {
                    next.snapshot.phase = SnapshotPhase::Done;
                    Vec::new()
                }
                Some(upto) => {
                    let mut rows = run
                        .source
                        .rows_between(next.snapshot.after_key.as_deref(), &upto, self.chunk_rows)
                        .await?;
                    if let Some(last) = rows.last() {
                        next.snapshot.after_key = Some(last.key_text.clone());
                    }
                    if (rows.len() as i64) < self.chunk_rows {
                        next.snapshot.phase = SnapshotPhase::Done;
                    }
                    // a row unchanged since the scan shipped it is not shipped again (a row that
                    // breaks a validation rule would be in the DLQ twice)
                    rows.retain(|r| self.read_undrained.get(&r.key_text) != Some(&r.hash));
                    account(&mut next, &rows);
                    rows
                }
            };
            let shipped = run.out.ship(&next, rows).await?;
            self.record(shipped);
            self.checkpoint = next;
        }
        Ok(false)
    }

    /// Takes in a chunk just shipped: its keys join the shipped key set, and its recent rows
    /// are remembered, at most `SNAPSHOT_CACHE_ROWS` of them (a table loaded in bulk just
    /// before its snapshot): past that, the first watermark pass ships them again, which the
    /// consumer applies without effect. Without this it would ship every one of them a second
    /// time (a row that breaks a validation rule would then be in the DLQ twice).
    fn record(&mut self, shipped: Shipped) {
        self.shipped.apply(&shipped.events);
        for (key, hash) in shipped.recent {
            if self.remembered.len() >= SNAPSHOT_CACHE_ROWS {
                break;
            }
            self.remembered.insert(key, hash);
        }
    }
}

/// Whether none of the transactions running at the snapshot's start is running any more (or
/// they have been waited for longer than `horizon_max_wait_s`).
async fn start_drained<R: SourceReader>(
    source: &R,
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
/// again what was read while they were open, or finish. A stop ends the wait (for up to
/// `horizon_max_wait_s`) at once; the scan is then still in its last phase, and a restarted
/// producer waits again.
async fn finish_scan<R: SourceReader>(
    source: &R,
    next: &mut Checkpoint,
    max_wait_micros: i64,
    stop: &watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    while !next.snapshot.drained {
        if start_drained(source, next, max_wait_micros).await? {
            next.snapshot.drained = true;
            next.snapshot.drained_upto = next.snapshot.after_key.clone();
        } else if *stop.borrow() {
            return Ok(());
        } else {
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
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

/// Counts a chunk's rows into the checkpoint.
fn account(next: &mut Checkpoint, rows: &[SourceRow]) {
    next.events += rows.len() as u64;
    next.max_watermark = rows
        .iter()
        .filter_map(|r| r.watermark)
        .chain(next.max_watermark)
        .max();
}

/// What one run of the snapshot works with.
struct Run<'a, R, S> {
    source: &'a mut R,
    stop: &'a watch::Receiver<bool>,
    out: Outlet<'a, S>,
}

/// Where a run ships its chunks.
struct Outlet<'a, S> {
    shipper: &'a S,
    progress: Progress,
    /// Shipped rows with a watermark from here on are the ones the first watermark pass reads
    /// again.
    recent_from: i64,
    /// Events of chunks whose commit failed in a way that may have gone through: their keys
    /// join the shipped key set all the same (see [`crate::capture::CaptureState::maybe_shipped`]).
    maybe_shipped: Vec<ChangeEvent>,
}

impl<S: Shipper> Outlet<'_, S> {
    /// Ships a chunk as `r` events with the checkpoint that covers it.
    async fn ship(
        &mut self,
        next: &Checkpoint,
        rows: Vec<SourceRow>,
    ) -> Result<Shipped, WorkerError> {
        let ts_ms = chrono::Utc::now().timestamp_millis();
        let mut recent = Vec::new();
        let events: Vec<ChangeEvent> = rows
            .into_iter()
            .map(|r| {
                if r.watermark.is_some_and(|t| t >= self.recent_from) {
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
        if let Err(e) = self.shipper.publish(&events, next).await {
            if e.may_have_committed() {
                tracing::warn!(error = %e, events = events.len(), "a commit of snapshot rows failed in a way that may have gone through: their keys count as shipped");
                self.maybe_shipped.extend(events);
            }
            return Err(e.into());
        }
        self.progress.add(events.len() as u64);
        Ok(Shipped { events, recent })
    }
}

#[cfg(test)]
mod tests;
