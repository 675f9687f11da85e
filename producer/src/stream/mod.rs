//! Streaming: the detectors' passes, each shipped on its own, until asked to stop. The I/O of
//! a pass (probe, read, ship) is here; what it decides is [`CaptureState`]'s. The key scan and
//! repairs run on the table's connection; the other detectors one at a time in the background
//! lane ([`background`]), within the source cost budget.

mod background;

use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
use tunnel_shared::event::Detection;
use tunnel_shared::fault::Classify;
use tunnel_shared::retry::Backoff;

use crate::capture::{CaptureState, ChangeDetector, Found, PassContext, Plan};
use crate::error::{SourceError, WorkerError};
use crate::keysnapshot::KeySetSaver;
use crate::setup::Link;
use crate::source::Activity;
use background::{Done, Lane, Start};

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

/// Most rows a batch run leaves in its checkpoint for the next run to skip when unchanged.
const RECENT_ROWS_KEPT: usize = 10_000;

/// Why streaming ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop.
    Stopped,
    /// The table's shape changed (a DDL, or the table dropped or renamed): the worker sets the
    /// table up again from its new catalog.
    ShapeChanged,
}

/// A background pass under way: what its shipping needs besides what it found.
struct Pending {
    plan: Plan,
    activity: Activity,
    started: Instant,
}

pub struct Stream {
    link: Link,
    /// By slot, as in `state`; `None` while its pass runs in the background lane.
    detectors: Vec<Option<Box<dyn ChangeDetector>>>,
    /// Each slot's detection and configured interval.
    specs: Vec<(Detection, Duration)>,
    /// When each slot's last pass started.
    last_started: Vec<Option<Instant>>,
    state: CaptureState,
    lane: Lane,
    pending: Option<Pending>,
    /// Back-off of the background lane after a failed pass (the foreground goes on).
    lane_backoff: Backoff,
    /// When the last heartbeat went out.
    heartbeat_at: Option<Instant>,
    /// Whether the first watermark pass is to be logged (after a snapshot of this process).
    announce_first_watermark: bool,
    /// Saves the shipped key set between passes.
    key_saver: KeySetSaver,
}

/// What woke the stream.
enum Wake {
    Due,
    Finished(Option<Box<Done>>),
}

impl Stream {
    pub fn new(link: Link, detectors: Vec<Box<dyn ChangeDetector>>, state: CaptureState) -> Self {
        let specs: Vec<_> = detectors
            .iter()
            .map(|d| (d.detection(), d.interval()))
            .collect();
        Self {
            link,
            last_started: vec![None; detectors.len()],
            detectors: detectors.into_iter().map(Some).collect(),
            specs,
            state,
            lane: Lane::default(),
            pending: None,
            lane_backoff: Backoff::default(),
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
        let ended = self.streaming().await;
        self.lane.abort();
        ended
    }

    /// A batch run: every detector once, in slot order, on the table's connection (a change
    /// table's batch to its end), then the checkpoint and the key set saved; prints the table's
    /// summary line. `started`, `events_before`: when the table's run started and the events
    /// shipped before it (a snapshot of this run counts in the summary).
    pub async fn run_once(
        mut self,
        started: Instant,
        events_before: u64,
    ) -> Result<Ended, WorkerError> {
        let activity = self.link.source().activity().await?;
        if self.link.source().shape_changed(&activity) {
            info!("the table's columns changed: setting the table up again");
            return Ok(Ended::ShapeChanged);
        }
        for i in 0..self.detectors.len() {
            // a change table's batch may take several passes
            loop {
                let before = self.state.checkpoint().trigger.clone();
                self.pass(i, &activity).await?;
                let after = &self.state.checkpoint().trigger;
                if after.as_ref().is_none_or(|t| t.batch.is_none()) || *after == before {
                    break;
                }
            }
        }
        // the bounds of the key and watermark scans move only once a later probe has seen the
        // transactions of an earlier one end (crate::horizon): two more passes each, or every
        // run would read again all that changed since the first
        for _ in 0..2 {
            for i in 0..self.detectors.len() {
                if matches!(self.detection(i), Detection::KeyScan | Detection::Watermark) {
                    self.pass(i, &activity).await?;
                }
            }
        }
        let mut checkpoint = self.state.checkpoint().clone();
        checkpoint.recent = self.state.cached_rows(RECENT_ROWS_KEPT);
        self.link.publisher().publish(&[], &checkpoint).await?;
        self.link.observe().checkpoint_shipped();
        let (keys, events) = (self.state.shipped_keys(), checkpoint.events);
        self.key_saver
            .save(self.link.publisher(), keys, events, "batch run")
            .await?;
        let shipped = events - events_before;
        info!(events = shipped, "batch run done");
        println!(
            "{}: {shipped} events shipped in {:.2} s",
            checkpoint.table,
            started.elapsed().as_secs_f64()
        );
        Ok(Ended::Stopped)
    }

    async fn streaming(&mut self) -> Result<Ended, WorkerError> {
        let mut backoff = Backoff::default();
        info!("streaming changes");
        self.link.observe().streaming(&self.specs);
        while !self.link.stopping() {
            let now = Instant::now();
            let next_due = self
                .state
                .next_due(now)
                .unwrap_or(now + Duration::from_secs(1));
            let mut shutdown = self.link.shutdown();
            let wake = tokio::select! {
                _ = tokio::time::sleep_until(next_due.into()) => Wake::Due,
                done = self.lane.finished() => Wake::Finished(done.map(Box::new)),
                _ = shutdown.changed() => continue,
            };
            let result = match wake {
                Wake::Due => self.tick().await,
                Wake::Finished(Some(done)) => self.finish(*done).await,
                Wake::Finished(None) => {
                    error!("a background pass panicked: setting the table up again");
                    return Ok(Ended::ShapeChanged);
                }
            };
            match result {
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

    fn detection(&self, slot: usize) -> Detection {
        self.specs[slot].0
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

    /// Runs the foreground detectors that are due and may find something, each pass shipped on
    /// its own, then starts the background pass whose turn it is. Whether the table's shape
    /// changed (then no detector ran).
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
            // the detector of a pass under way is in the lane: never due meanwhile
            let wants = detectors[i].as_ref().is_some_and(|d| d.wants(before, now));
            if !wants {
                idle.push(i);
            }
            wants
        });
        for i in idle {
            self.link.observe().checked(self.detection(i));
        }
        // background detectors waiting for their turn, or reading, are alive
        for i in self.state.busy_background() {
            self.link.observe().alive(self.detection(i));
        }
        for i in run {
            self.pass(i, &activity).await?;
        }
        self.start_background(activity).await
    }

    /// Starts the background pass whose turn it is, if any (on the lane's connection, opened
    /// first if needed). Whether the table's shape changed.
    async fn start_background(&mut self, activity: Activity) -> Result<bool, WorkerError> {
        if self.lane.busy() {
            return Ok(false);
        }
        let now = Instant::now();
        let Some(slot) = self.state.background(now) else {
            return Ok(false);
        };
        let source = match self.lane.take_source() {
            Some(s) => Ok(Some(s)),
            None => self.link.second_source().await,
        };
        let source = match source {
            Ok(Some(s)) => s,
            Ok(None) => {
                info!("the table's columns changed: setting the table up again");
                return Ok(true);
            }
            Err(e) => {
                self.state
                    .abandoned(slot, now, now + self.lane_backoff.next_delay());
                return Err(e);
            }
        };
        let probe = match self.link.source().probe().await {
            Ok(p) => p,
            Err(e) => {
                self.lane.put_source(source);
                self.state
                    .abandoned(slot, now, now + self.lane_backoff.next_delay());
                return Err(e.into());
            }
        };
        let plan = self.state.plan(slot, probe);
        if !plan.gave_up_on().is_empty() {
            warn!(transactions = ?plan.gave_up_on(), "transactions open longer than horizon_max_wait_s: moving on without them; rows they write later are found by reconciliation only");
        }
        let Some(detector) = self.detectors[slot].take() else {
            self.lane.put_source(source);
            self.state.abandoned(slot, now, now);
            return Ok(false);
        };
        self.lane.start(Start {
            slot,
            detector,
            source,
            bounds: plan.bounds().clone(),
            shipped: self.state.shipped_keys().integer().cloned(),
            checkpoint: self.state.checkpoint().clone(),
        });
        self.pending = Some(Pending {
            plan,
            activity,
            started: now,
        });
        Ok(false)
    }

    /// A background pass ended: what it found is shipped (keys the foreground shipped
    /// meanwhile read again first), or, if it failed, it waits for its turn again after a
    /// back-off. Whether the table's shape changed.
    async fn finish(&mut self, done: Done) -> Result<bool, WorkerError> {
        let Done {
            slot,
            detector,
            source,
            result,
            took,
            read_rows,
        } = done;
        self.detectors[slot] = Some(detector);
        self.lane.put_source(source);
        let now = Instant::now();
        self.state.charge(slot, took, now);
        let Some(Pending {
            plan,
            activity,
            started,
        }) = self.pending.take()
        else {
            return Ok(false);
        };
        let found = match result {
            Ok(found) => found,
            Err(e) => {
                let e = WorkerError::from(e);
                if shape_may_have_changed(&e) && self.link.shape_changed_now().await {
                    info!(error = %e, "a read failed after a DDL: setting the table up again");
                    return Ok(true);
                }
                self.state
                    .abandoned(slot, now, now + self.lane_backoff.next_delay());
                if e.is_transient() {
                    self.failed(&e);
                    warn!(detector = self.detection(slot).as_str(), error = %e, "a background pass failed; it is tried again after a back-off");
                    return Ok(false);
                }
                return Err(e);
            }
        };
        match self
            .ship(slot, plan, found, &activity, started, read_rows)
            .await
        {
            Ok(()) => {
                self.lane_backoff.reset();
                Ok(false)
            }
            Err(e) => {
                self.state
                    .abandoned(slot, now, now + self.lane_backoff.next_delay());
                Err(e)
            }
        }
    }

    /// One foreground pass of detector `i`: probe, read, ship what changed with the checkpoint,
    /// and only then move its horizon.
    async fn pass(&mut self, i: usize, activity: &Activity) -> Result<(), WorkerError> {
        let started = Instant::now();
        let probe = self.link.source().probe().await?;
        let plan = self.state.plan(i, probe);
        if !plan.gave_up_on().is_empty() {
            warn!(transactions = ?plan.gave_up_on(), "transactions open longer than horizon_max_wait_s: moving on without them; rows they write later are found by reconciliation only");
        }
        let read_before = self.link.source().read_rows();
        let Some(detector) = self.detectors[i].as_mut() else {
            return Ok(());
        };
        let ctx = PassContext {
            source: self.link.source_mut(),
            bounds: plan.bounds(),
            shipped: self.state.shipped_keys().integer(),
            checkpoint: self.state.checkpoint(),
        };
        let found = detector.pass(ctx).await;
        let read = self.link.source().read_rows() - read_before;
        self.ship(i, plan, found?, activity, started, read).await
    }

    /// Ships what the pass `plan` of slot `i` found, with the checkpoint, then moves its
    /// horizon. A background pass's rows of keys the foreground shipped while it read are read
    /// again first.
    async fn ship(
        &mut self,
        i: usize,
        plan: Plan,
        mut found: Found,
        activity: &Activity,
        started: Instant,
        read: u64,
    ) -> Result<(), WorkerError> {
        let overlap = self.state.overlap(&found);
        if !overlap.is_empty() {
            let fresh = self.link.source_mut().rows_by_keys(&overlap).await?;
            debug!(
                keys = overlap.len(),
                "read again: shipped by the key scan while a background pass read them"
            );
            found.read_again(&overlap, fresh);
        }
        let detection = self.detection(i);
        let horizon_micros = plan.horizon_micros();
        let ts_ms = chrono::Utc::now().timestamp_millis();
        let outcome = self.state.outcome(&plan, &found, ts_ms, Instant::now());
        if outcome.must_ship() {
            if let Err(e) = self
                .link
                .publisher()
                .publish(outcome.events(), outcome.checkpoint())
                .await
            {
                if e.may_have_committed() {
                    warn!(error = %e, events = outcome.events().len(), "a commit failed in a way that may have gone through: its keys count as shipped, so that deletes of them are still found");
                    self.state.maybe_shipped(&outcome);
                }
                return Err(e.into());
            }
            self.link.observe().checkpoint_shipped();
        }
        let (events, deletes, scanned) = (outcome.events().len(), found.gone.len(), found.scanned);
        if outcome.after_snapshot()
            || (self.announce_first_watermark && detection == Detection::Watermark)
        {
            self.announce_first_watermark = false;
            info!(
                read_rows = found.rows.len(),
                shipped = events,
                "first watermark pass after the snapshot done"
            );
        }
        // shipped: remember what was shipped and seen
        if let Some(d) = self.detectors[i].as_mut() {
            d.shipped();
        }
        let now = Instant::now();
        self.state
            .shipped(plan, found, outcome, activity, now, now - started);
        let elapsed = started.elapsed();
        self.link
            .observe()
            .pass(detection, read, events, elapsed, horizon_micros);
        // the budget may space passes wider than the configured interval: the gauge says how
        // far apart they are, for the alerts on overdue passes
        if let Some(previous) = self.last_started[i].replace(started) {
            let spacing = started.saturating_duration_since(previous);
            self.link
                .observe()
                .spacing(detection, spacing.max(self.specs[i].1));
        }
        let elapsed_ms = elapsed.as_millis() as u64;
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
