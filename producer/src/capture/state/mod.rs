//! The capture state of a table once streaming: per detector (slot) its horizon, the bounds of
//! its last shipped pass, when it is due and what activity it last saw; the content cache; the
//! shipped key set; the checkpoint. A plain state machine without I/O. A pass goes through it
//! in steps:
//!
//! 1. [`CaptureState::due`]: which detectors are due and may find something (this moves only
//!    their schedule);
//! 2. [`CaptureState::plan`]: from a probe, the bounds the pass reads from;
//! 3. [`CaptureState::outcome`]: from what the pass found, the events to ship, the next
//!    checkpoint and whether it must be shipped now;
//! 4. [`CaptureState::shipped`]: once that was shipped (or there was nothing to ship), the
//!    slot's horizon and bounds move and the cache, key set and checkpoint follow.
//!
//! Only the last step changes what is shipped next: a pass repeated after a failed publish
//! reads from the same bounds and ships the same thing.
//!
//! Detectors run in two lanes. The key scan and repairs (foreground) run on their intervals on
//! the table's connection. The others (background: watermark, delete scan, reconciliation)
//! run one at a time on a connection of their own, while the foreground goes on, each
//! started when it is due, may find something, and the source cost budget allows
//! ([`CaptureState::background`]). Keys the foreground ships while a background pass reads
//! are read again before that pass is shipped ([`CaptureState::overlap`]): its versions of
//! them may be older.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tunnel_shared::event::{ChangeEvent, Detection};

use super::cache::ContentCache;
use super::detector::Found;
use crate::budget::{self, Budget, Candidate};
use crate::checkpoint::Checkpoint;
use crate::horizon::{Bounds, Horizon, Margins, Probe};
use crate::shipped::ShippedKeys;
use crate::source::Activity;

/// A detector as the state sees it.
#[derive(Debug, Clone, Copy)]
pub struct SlotSpec {
    pub detection: Detection,
    pub interval: Duration,
    /// Background detectors: how much a wait counts when several are due ([`budget::pick`]).
    pub priority: u32,
}

/// Whether passes of `detection` run in the background lane (their own connection, one at a
/// time, within the source cost budget).
pub fn in_background(detection: Detection) -> bool {
    matches!(
        detection,
        Detection::Watermark | Detection::DeleteScan | Detection::Reconcile
    )
}

struct Slot {
    detection: Detection,
    interval: Duration,
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
    priority: u32,
    background: bool,
    /// A background detector that was due and may find something, waiting for its turn.
    waiting_since: Option<Instant>,
    /// A background detector's share of the source cost budget.
    budget: Budget,
}

/// The bounds of one pass, and the horizon its detector keeps once the pass is shipped.
#[derive(Debug)]
pub struct Plan {
    slot: usize,
    horizon: Horizon,
    /// The horizon's bounds for this pass.
    observed: Bounds,
    /// What the pass reads from: the horizon's bounds with the watermark margins applied.
    bounds: Bounds,
    gave_up_on: Vec<String>,
}

impl Plan {
    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    /// The horizon's clock for this pass (microseconds since the epoch, the source's clock):
    /// every transaction that started before it has ended.
    pub fn horizon_micros(&self) -> Option<i64> {
        self.observed.ts
    }

    /// Transactions the horizon stopped waiting for at this probe.
    pub fn gave_up_on(&self) -> &[String] {
        &self.gave_up_on
    }
}

/// What a pass ships.
#[derive(Debug)]
pub struct Outcome {
    events: Vec<ChangeEvent>,
    next: Checkpoint,
    ship: bool,
    after_snapshot: bool,
}

impl Outcome {
    pub fn events(&self) -> &[ChangeEvent] {
        &self.events
    }

    /// The checkpoint shipped with the events.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.next
    }

    /// Whether anything must be shipped: events, or a checkpoint that is due.
    pub fn must_ship(&self) -> bool {
        self.ship
    }

    /// Whether this is the first watermark pass after a snapshot that remembered rows.
    pub fn after_snapshot(&self) -> bool {
        self.after_snapshot
    }
}

pub struct CaptureState {
    margins: Margins,
    /// Checkpoints without events wait this long (older bounds are always safe to restart
    /// from).
    checkpoint_interval: Duration,
    slots: Vec<Slot>,
    cache: ContentCache,
    /// The keys shipped so far: inserts or updates, and what delete scans compare.
    shipped: ShippedKeys,
    checkpoint: Checkpoint,
    tick: u64,
    /// Whether rows of the snapshot are remembered for the first watermark pass after it.
    snapshot_rows_remembered: bool,
    /// When a checkpoint was last shipped.
    last_shipped: Instant,
    /// Whether background passes are spaced by a budget (else by their intervals alone).
    budgeted: bool,
    /// The background pass under way (its slot), and the keys the foreground shipped since it
    /// began.
    in_flight: Option<(usize, HashSet<Vec<String>>)>,
}

impl CaptureState {
    /// Every detector starts from the checkpoint's bounds and is due at `started`, except
    /// reconciliation, whose first comparison waits one interval: right after a snapshot the
    /// target is still catching up, and every row in flight would look different. `remembered`
    /// are rows the snapshot shipped that the first watermark pass reads again (key, hash).
    pub fn new(
        specs: &[SlotSpec],
        margins: Margins,
        checkpoint_interval: Duration,
        checkpoint: Checkpoint,
        shipped: ShippedKeys,
        remembered: HashMap<Vec<String>, u64>,
        started: Instant,
    ) -> Self {
        let slots = specs
            .iter()
            .map(|s| Slot {
                detection: s.detection,
                interval: s.interval,
                horizon: Horizon::new(checkpoint.bounds.clone(), margins.max_wait_micros),
                bounds: checkpoint.bounds.clone(),
                next_due: match s.detection {
                    Detection::Reconcile => started + s.interval,
                    _ => started,
                },
                last_activity: None,
                last_tick: 0,
                priority: s.priority,
                background: in_background(s.detection),
                waiting_since: None,
                budget: Budget::new(0.0, started),
            })
            .collect();
        let mut cache = ContentCache::new(specs.len());
        let snapshot_rows_remembered = !remembered.is_empty();
        cache.remember(remembered, 0, started);
        Self {
            margins,
            checkpoint_interval,
            slots,
            cache,
            shipped,
            checkpoint,
            tick: 0,
            snapshot_rows_remembered,
            last_shipped: started,
            budgeted: false,
            in_flight: None,
        }
    }

    /// Background passes within `share` of one source core (0: on their intervals alone),
    /// shared among the background detectors by priority: each is spaced by its own passes'
    /// cost, so an expensive detector (the delete scan of a large table) never holds back a
    /// cheap one.
    pub fn with_budget(mut self, share: f64) -> Self {
        let total: u32 = self
            .slots
            .iter()
            .filter(|s| s.background)
            .map(|s| s.priority.max(1))
            .sum();
        let at = self.last_shipped;
        for s in self.slots.iter_mut().filter(|s| s.background) {
            let part = f64::from(s.priority.max(1)) / f64::from(total.max(1));
            s.budget = Budget::new(share * part, at);
        }
        self.budgeted = share > 0.0;
        self
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn shipped_keys(&self) -> &ShippedKeys {
        &self.shipped
    }

    /// The rows the content cache keeps (key, hash), at most `cap` (none beyond).
    pub fn cached_rows(&self, cap: usize) -> Vec<(Vec<String>, u64)> {
        self.cache.rows(cap)
    }

    /// When something is next to be done (at `now`): a foreground detector due, a background
    /// one due to be looked at, or one waiting for the budget (none while a background pass is
    /// under way).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let background_idle = self.in_flight.is_none();
        self.slots
            .iter()
            .filter(|s| !s.background || background_idle)
            .map(|s| match s.waiting_since {
                Some(_) => s.budget.ready_at(now),
                None => s.next_due,
            })
            .min()
    }

    /// The foreground detectors due at `now` that `wants` (slot, activity at its last pass,
    /// activity now) says may find something; every due detector is next due one interval
    /// later. Background detectors due and wanted from now on wait for their turn
    /// ([`CaptureState::background`]); those not wanted are looked at again an interval later.
    pub fn due(
        &mut self,
        now: Instant,
        activity: &Activity,
        mut wants: impl FnMut(usize, &Activity, &Activity) -> bool,
    ) -> Vec<usize> {
        let mut run = Vec::new();
        let in_flight = self.in_flight.as_ref().map(|(slot, _)| *slot);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if now < slot.next_due || slot.waiting_since.is_some() || in_flight == Some(i) {
                continue;
            }
            slot.next_due = now + slot.interval;
            let wanted = slot
                .last_activity
                .as_ref()
                .is_none_or(|before| wants(i, before, activity));
            match (wanted, slot.background) {
                (true, true) => slot.waiting_since = Some(now),
                (true, false) => run.push(i),
                (false, _) => {}
            }
        }
        run
    }

    /// The background detector to run now, if none is under way and one is waiting whose
    /// budget allows it: it is then under way until [`CaptureState::shipped`] or
    /// [`CaptureState::abandoned`].
    pub fn background(&mut self, now: Instant) -> Option<usize> {
        if self.in_flight.is_some() {
            return None;
        }
        let candidates: Vec<Candidate> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.budget.ready_at(now) <= now)
            .filter_map(|(slot, s)| {
                s.waiting_since.map(|waiting_since| Candidate {
                    slot,
                    priority: s.priority,
                    waiting_since,
                })
            })
            .collect();
        let slot = budget::pick(&candidates, now)?;
        self.slots[slot].waiting_since = None;
        self.in_flight = Some((slot, HashSet::new()));
        Some(slot)
    }

    /// The background pass under way failed (`retry_at`: when it may be tried again): nothing
    /// of it is kept, and it is due again then.
    pub fn abandoned(&mut self, slot: usize, now: Instant, retry_at: Instant) {
        if self.in_flight.as_ref().is_some_and(|(s, _)| *s == slot) {
            self.in_flight = None;
        }
        let s = &mut self.slots[slot];
        s.waiting_since = None;
        s.next_due = retry_at.max(now);
    }

    /// Background detectors waiting for their turn or reading now.
    pub fn busy_background(&self) -> Vec<usize> {
        let in_flight = self.in_flight.as_ref().map(|(slot, _)| *slot);
        (0..self.slots.len())
            .filter(|i| self.slots[*i].waiting_since.is_some() || in_flight == Some(*i))
            .collect()
    }

    /// Keys of `found` (a background pass's) that the foreground shipped while it read: its
    /// versions of those may be older than what was shipped, so they are read again.
    pub fn overlap(&self, found: &Found) -> Vec<Vec<String>> {
        let Some((_, meanwhile)) = &self.in_flight else {
            return Vec::new();
        };
        found
            .rows
            .iter()
            .map(|r| &r.key_text)
            .chain(found.gone.iter().map(|g| &g.key_text))
            .filter(|k| meanwhile.contains(*k))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect()
    }

    /// A pass of `slot` that kept the source busy for `cost`, ended at `now`: charged to its
    /// budget.
    pub fn charge(&mut self, slot: usize, cost: Duration, now: Instant) {
        self.slots[slot].budget.charge(cost, now);
    }

    /// The bounds of a pass of detector `slot` that follows `probe`.
    pub fn plan(&self, slot: usize, probe: Probe) -> Plan {
        let mut horizon = self.slots[slot].horizon.clone();
        let observation = horizon.observe(probe, self.checkpoint.max_key.clone());
        Plan {
            slot,
            horizon,
            bounds: self.effective_bounds(&observation.bounds),
            observed: observation.bounds,
            gave_up_on: observation.gave_up_on,
        }
    }

    /// The horizon's bounds, with the time bound lowered to the horizon's clock bound less the
    /// overlap (against clock differences between sessions), or to just above the highest
    /// watermark a complete pass shipped if that is lower: applications that write their own,
    /// older timestamps are still seen, and rows sharing that highest value (a bulk load) are
    /// not read again by every pass.
    fn effective_bounds(&self, b: &Bounds) -> Bounds {
        let clock = b.ts.map(|t| t.saturating_sub(self.margins.overlap_micros));
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

    /// What the pass `plan` found becomes: events, the next checkpoint, and whether they are
    /// shipped now (`now`: for the checkpoint's interval; `ts_ms`: the events' time).
    pub fn outcome(&self, plan: &Plan, found: &Found, ts_ms: i64, now: Instant) -> Outcome {
        let detection = self.slots[plan.slot].detection;
        let events = self.cache.changes(found, detection, &self.shipped, ts_ms);
        let mut next = self.checkpoint.clone();
        next.bounds = self.restart_bounds(plan.slot, &plan.observed);
        if let Some(upto) = found.repairs_upto {
            next.repairs_offset = upto;
        }
        if let Some(h) = found.reconciled_xmin {
            next.reconciled_xmin = Some(h);
        }
        if let Some(t) = &found.trigger_upto {
            next.trigger = Some(t.clone());
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
                || now.saturating_duration_since(self.last_shipped) >= self.checkpoint_interval);
        Outcome {
            ship: !events.is_empty() || checkpoint_due,
            events,
            next,
            after_snapshot,
        }
    }

    /// The bounds a restarted producer may start every detector from: the key bound of the key
    /// scan and the time bound of the watermark scan, as used by their latest passes (`bounds`
    /// for detector `slot`, which is about to ship).
    fn restart_bounds(&self, slot: usize, bounds: &Bounds) -> Bounds {
        let used = |d: Detection| {
            self.slots
                .iter()
                .enumerate()
                .find(|(_, s)| s.detection == d)
                .map(|(j, s)| if j == slot { bounds } else { &s.bounds })
        };
        // a table without the scan (trigger capture) keeps what the scan had reached, for a
        // switch back to poll capture
        let before = &self.checkpoint.bounds;
        Bounds {
            key: used(Detection::KeyScan).map_or(before.key.clone(), |b| b.key.clone()),
            ts: used(Detection::Watermark).map_or(before.ts, |b| b.ts),
        }
    }

    /// The events of `outcome` failed to ship in a way that may have committed them all the
    /// same ([`crate::error::PublishError::may_have_committed`]): the keys they insert or
    /// update are taken into the shipped key set, and nothing else moves. A key set with a key
    /// the topic lacks costs at most a delete event for a row the replica never had; one that
    /// lacks a key of the topic hides that row's delete from every later delete scan, when the
    /// row is deleted before the pass is repeated (the repeated pass no longer finds it).
    pub fn maybe_shipped(&mut self, outcome: &Outcome) {
        let upserts: Vec<ChangeEvent> = outcome
            .events
            .iter()
            .filter(|e| e.op != tunnel_shared::event::Op::Delete)
            .cloned()
            .collect();
        self.shipped.apply(&upserts);
    }

    /// The pass was shipped (or had nothing to ship) at `now`, after taking `took`: its slot
    /// keeps the pass's horizon and bounds and `activity`, the key set and the cache take in
    /// its events and rows, and its checkpoint becomes the current one.
    pub fn shipped(
        &mut self,
        plan: Plan,
        found: Found,
        outcome: Outcome,
        activity: &Activity,
        now: Instant,
        took: Duration,
    ) {
        self.tick += 1;
        let tick = self.tick;
        if outcome.ship {
            self.last_shipped = now;
        }
        if outcome.after_snapshot {
            self.snapshot_rows_remembered = false;
        }
        match &mut self.in_flight {
            Some((s, _)) if *s == plan.slot => self.in_flight = None,
            Some((_, meanwhile)) => meanwhile.extend(
                found
                    .rows
                    .iter()
                    .map(|r| r.key_text.clone())
                    .chain(found.gone.iter().map(|g| g.key_text.clone())),
            ),
            None => {}
        }
        let slot = &mut self.slots[plan.slot];
        // without a budget, a pass may take at most half of the source time of its detector:
        // a pass that took longer than its interval waits as long again before the next one
        if !self.budgeted {
            slot.next_due = slot.next_due.max(now + took);
        }
        slot.horizon = plan.horizon;
        slot.bounds = plan.observed;
        slot.last_activity = Some(activity.clone());
        slot.last_tick = tick;
        self.shipped.apply(&outcome.events);
        let last_ticks: Vec<u64> = self.slots.iter().map(|s| s.last_tick).collect();
        self.cache.shipped(found, plan.slot, tick, &last_ticks, now);
        self.checkpoint = outcome.next;
    }
}

#[cfg(test)]
mod tests;
