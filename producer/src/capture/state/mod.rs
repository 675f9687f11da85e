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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tunnel_shared::event::{ChangeEvent, Detection};

use super::cache::ContentCache;
use super::detector::Found;
use crate::checkpoint::Checkpoint;
use crate::horizon::{Bounds, Horizon, Margins, Probe};
use crate::shipped::ShippedKeys;
use crate::source::Activity;

/// A detector as the state sees it.
#[derive(Debug, Clone, Copy)]
pub struct SlotSpec {
    pub detection: Detection,
    pub interval: Duration,
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
            })
            .collect();
        let mut cache = ContentCache::new(specs.len());
        let snapshot_rows_remembered = !remembered.is_empty();
        cache.remember(remembered, 0);
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
        }
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn shipped_keys(&self) -> &ShippedKeys {
        &self.shipped
    }

    /// When the next detector is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots.iter().map(|s| s.next_due).min()
    }

    /// The detectors due at `now` that `wants` (slot, activity at its last pass, activity now)
    /// says may find something; every due detector is next due one interval later.
    pub fn due(
        &mut self,
        now: Instant,
        activity: &Activity,
        mut wants: impl FnMut(usize, &Activity, &Activity) -> bool,
    ) -> Vec<usize> {
        let mut run = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if now < slot.next_due {
                continue;
            }
            slot.next_due = now + slot.interval;
            let wanted = slot
                .last_activity
                .as_ref()
                .is_none_or(|before| wants(i, before, activity));
            if wanted {
                run.push(i);
            }
        }
        run
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
        Bounds {
            key: used(Detection::KeyScan).and_then(|b| b.key.clone()),
            ts: used(Detection::Watermark).and_then(|b| b.ts),
        }
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
        let slot = &mut self.slots[plan.slot];
        // a pass may take at most half of the source time of its detector: a pass that took
        // longer than its interval waits as long again before the next one
        slot.next_due = slot.next_due.max(now + took);
        slot.horizon = plan.horizon;
        slot.bounds = plan.observed;
        slot.last_activity = Some(activity.clone());
        slot.last_tick = tick;
        self.shipped.apply(&outcome.events);
        let last_ticks: Vec<u64> = self.slots.iter().map(|s| s.last_tick).collect();
        self.cache.shipped(found, plan.slot, tick, &last_ticks);
        self.checkpoint = outcome.next;
    }
}

#[cfg(test)]
mod tests;
