//! Streaming: the detectors' passes, each shipped on its own, until asked to stop. The I/O of
//! a pass (probe, read, ship) is here; what it decides is [`CaptureState`]'s.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use tunnel_shared::fault::Classify;
use tunnel_shared::retry::Backoff;

use crate::capture::{CaptureState, ChangeDetector, PassContext};
use crate::error::{SourceError, WorkerError};
use crate::keysnapshot::KeySetSaver;
use crate::setup::Link;
use crate::source::Activity;

/// Whether a failed read may be what a DDL between the catalog read and the statement causes:
/// any error the server answered with (a prepared statement whose result changed, `0A000`; a
/// column or table gone, `42703`, `42P01`; a function of the old type, `42883`; ...), or a
/// value of another size than the column's type had. The caller then asks the catalog
/// ([`crate::setup::Link::shape_changed_now`]): only a changed shape sets the table up again.
pub fn shape_may_have_changed(e: &WorkerError) -> bool {
    match e {
        WorkerError::Source(SourceError::Pg(pg)) => pg.sqlstate().is_some(),
        WorkerError::Source(SourceError::Value { .. } | SourceError::ReadAsOtherType { .. }) => {
            true
        }
        _ => false,
    }
}

/// Why streaming ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop.
    Stopped,
    /// The table's shape changed (a DDL, or the table dropped or renamed): the worker sets the
    /// table up again from its new catalog.
    ShapeChanged,
}

pub struct Stream {
    link: Link,
    /// By slot, as in `state`.
    detectors: Vec<Box<dyn ChangeDetector>>,
    state: CaptureState,
    /// When the last heartbeat went out.
    heartbeat_at: Option<Instant>,
    /// Whether the first watermark pass is to be logged (after a snapshot of this process).
    announce_first_watermark: bool,
    /// Saves the shipped key set between passes.
    key_saver: KeySetSaver,
}

impl Stream {
    pub fn new(link: Link, detectors: Vec<Box<dyn ChangeDetector>>, state: CaptureState) -> Self {
        Self {
            link,
            detectors,
            state,
            heartbeat_at: None,
            announce_first_watermark: false,
            key_saver: KeySetSaver::disabled(),
        }
    }

    /// Saves the shipped key set with `saver` (see [`crate::keysnapshot`]).
    pub fn saving_key_sets(mut self, saver: KeySetSaver) -> Self {
        self.key_saver = saver;
        self
    }

    /// Logs the first watermark pass ("first watermark pass after the snapshot done") when
    /// `snapshotted` (whether the snapshot's rows were read again by it or not).
    pub fn announcing_the_first_watermark_pass(mut self, snapshotted: bool) -> Self {
        self.announce_first_watermark = snapshotted;
        self
    }

    /// Runs the detectors as they fall due until shutdown; a pass that fails transiently is
    /// tried again after a back-off (its state did not move).
    pub async fn run(mut self) -> Result<Ended, WorkerError> {
        let mut backoff = Backoff::default();
        info!("streaming changes");
        let specs: Vec<_> = self
            .detectors
            .iter()
            .map(|d| (d.detection(), d.interval()))
            .collect();
        self.link.observe().streaming(&specs);
        while !self.link.stopping() {
            let next_due = self.state.next_due().unwrap_or_else(Instant::now);
            let mut shutdown = self.link.shutdown();
            tokio::select! {
                _ = tokio::time::sleep_until(next_due.into()) => {}
                _ = shutdown.changed() => continue,
            }
            match self.tick().await {
                Ok(true) => return Ok(Ended::ShapeChanged),
                Ok(false) => {
                    backoff.reset();
                    self.heartbeat_if_due().await?;
                    let (keys, events) =
                        (self.state.shipped_keys(), self.state.checkpoint().events);
                    self.key_saver
                        .save_if_due(self.link.publisher(), keys, events)
                        .await?;
                }
                Err(e) if shape_may_have_changed(&e) && self.link.shape_changed_now().await => {
                    info!(error = %e, "a read failed after a DDL: setting the table up again");
                    return Ok(Ended::ShapeChanged);
                }
                Err(e) if e.is_transient() => {
                    self.failed(&e);
                    backoff.wait_after("a pass", &e).await;
                    self.link.reconnect_if_closed().await?;
                }
                Err(e) => return Err(e),
            }
        }
        let (keys, events) = (self.state.shipped_keys(), self.state.checkpoint().events);
        self.key_saver
            .save(self.link.publisher(), keys, events, "stop")
            .await?;
        info!("stopped");
        Ok(Ended::Stopped)
    }

    /// Which dependency a failed pass says is down.
    fn failed(&self, e: &WorkerError) {
        match e {
            WorkerError::Source(_) => self.link.observe().source(false),
            WorkerError::Publish(_) => self.link.observe().kafka_failed(),
            _ => {}
        }
    }

    /// Ships a heartbeat to every partition when `heartbeat_interval_ms` has passed since the
    /// last one (after a tick: the source was just read). One that fails transiently is tried
    /// again at the next tick.
    async fn heartbeat_if_due(&mut self) -> Result<(), WorkerError> {
        let every = Duration::from_millis(self.link.config().producer.heartbeat_interval_ms);
        if every.is_zero() || self.heartbeat_at.is_some_and(|at| at.elapsed() < every) {
            return Ok(());
        }
        match self
            .link
            .publisher()
            .heartbeat(chrono::Utc::now().timestamp_millis())
            .await
        {
            Ok(()) => {
                self.heartbeat_at = Some(Instant::now());
                self.link.observe().heartbeat();
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.link.observe().kafka_failed();
                debug!(error = %e, "a heartbeat failed; the next tick tries again");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs the detectors that are due and may find something, each pass shipped on its own so
    /// that a slow pass (the watermark scan of a large table) never delays a fast one.
    /// Whether the table's shape changed (then no detector ran).
    async fn tick(&mut self) -> Result<bool, WorkerError> {
        let activity = self.link.source().activity().await?;
        self.link.observe().source(true);
        if self.link.source().shape_changed(&activity) {
            info!("the table's columns changed: setting the table up again");
            return Ok(true);
        }
        let detectors = &self.detectors;
        let mut idle = Vec::new();
        let run = self.state.due(Instant::now(), &activity, |i, before, now| {
            let wants = detectors[i].wants(before, now);
            if !wants {
                idle.push(i);
            }
            wants
        });
        for i in idle {
            self.link.observe().checked(self.detectors[i].detection());
        }
        for i in run {
            self.pass(i, &activity).await?;
        }
        Ok(false)
    }

    /// One pass of detector `i`: probe, read, ship what changed with the checkpoint, and only
    /// then move its horizon.
    async fn pass(&mut self, i: usize, activity: &Activity) -> Result<(), WorkerError> {
        let started = Instant::now();
        let probe = self.link.source().probe().await?;
        let plan = self.state.plan(i, probe);
        let horizon_micros = plan.horizon_micros();
        if !plan.gave_up_on().is_empty() {
            warn!(transactions = ?plan.gave_up_on(), "transactions open longer than horizon_max_wait_s: moving on without them; rows they write later are found by reconciliation only");
        }
        let detection = self.detectors[i].detection();
        let read_before = self.link.source().read_rows();
        let ctx = PassContext {
            source: self.link.source_mut(),
            bounds: plan.bounds(),
            shipped: self.state.shipped_keys().integer(),
            checkpoint: self.state.checkpoint(),
        };
        let found = self.detectors[i].pass(ctx).await?;
        let read = self.link.source().read_rows() - read_before;
        let ts_ms = chrono::Utc::now().timestamp_millis();
        let outcome = self.state.outcome(&plan, &found, ts_ms, Instant::now());
        if outcome.must_ship() {
            self.link
                .publisher()
                .publish(outcome.events(), outcome.checkpoint())
                .await?;
            self.link.observe().checkpoint_shipped();
        }
        let (events, deletes, scanned) = (outcome.events().len(), found.gone.len(), found.scanned);
        if outcome.after_snapshot()
            || (self.announce_first_watermark
                && detection == tunnel_shared::event::Detection::Watermark)
        {
            self.announce_first_watermark = false;
            info!(
                read_rows = found.rows.len(),
                shipped = events,
                "first watermark pass after the snapshot done"
            );
        }
        // shipped: remember what was shipped and seen
        self.detectors[i].shipped();
        let now = Instant::now();
        self.state
            .shipped(plan, found, outcome, activity, now, now - started);
        self.link
            .observe()
            .pass(detection, read, events, started.elapsed(), horizon_micros);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if events > 0 {
            info!(
                detector = detection.as_str(),
                events,
                deletes,
                scanned,
                read_rows = read,
                elapsed_ms,
                "shipped changes"
            );
        } else {
            debug!(
                detector = detection.as_str(),
                read_rows = read,
                scanned,
                elapsed_ms,
                "pass found no change"
            );
        }
        Ok(())
    }
}
