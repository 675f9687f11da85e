//! The capture state's steps, pass by pass.
#![allow(clippy::unwrap_used)]
use std::collections::HashSet;

use apache_avro::types::Value;
use tunnel_shared::event::Op;

use super::super::cache::tests::{gone, row};
use super::super::detector::GoneKey;
use super::*;
use crate::keyset::KeySet;
use crate::source::SourceRow;

const KEY_SCAN: usize = 0;
const WATERMARK: usize = 1;
const RECONCILE: usize = 2;

fn key(k: &str) -> Option<Vec<String>> {
    Some(vec![k.to_string()])
}

fn probe(at_micros: i64) -> Probe {
    Probe {
        at_micros,
        running: HashSet::new(),
    }
}

fn checkpoint(ts: i64, max_watermark: Option<i64>) -> Checkpoint {
    let mut cp = Checkpoint::new("public.media");
    cp.bounds = Bounds {
        key: key("10"),
        ts: Some(ts),
    };
    cp.max_watermark = max_watermark;
    cp
}

fn state_with(cp: Checkpoint, remembered: &[(i64, u64)], started: Instant) -> CaptureState {
    let remembered = remembered
        .iter()
        .map(|(k, h)| (vec![k.to_string()], *h))
        .collect();
    state_keys(
        cp,
        ShippedKeys::Integer(KeySet::default()),
        remembered,
        started,
    )
}

fn state_keys(
    cp: Checkpoint,
    shipped: ShippedKeys,
    remembered: HashMap<Vec<String>, u64>,
    started: Instant,
) -> CaptureState {
    let spec = |detection, ms| SlotSpec {
        detection,
        interval: Duration::from_millis(ms),
        priority: 1,
    };
    CaptureState::new(
        &[
            spec(Detection::KeyScan, 100),
            spec(Detection::Watermark, 100),
            spec(Detection::Reconcile, 1000),
        ],
        Margins {
            overlap_micros: 100,
            max_wait_micros: i64::MAX,
        },
        Duration::from_secs(60),
        cp,
        shipped,
        remembered,
        started,
    )
}

fn state(cp: Checkpoint) -> CaptureState {
    state_with(cp, &[], Instant::now())
}

fn found(rows: Vec<SourceRow>) -> Found {
    Found {
        rows,
        ..Default::default()
    }
}

fn ops(o: &Outcome) -> Vec<(Op, Value)> {
    o.events()
        .iter()
        .map(|e| (e.op, e.key[0].clone()))
        .collect()
}

/// One pass of `slot`, shipped; returns its outcome's checkpoint.
fn pass(s: &mut CaptureState, slot: usize, at: i64, f: Found) -> Checkpoint {
    let plan = s.plan(slot, probe(at));
    let o = s.outcome(&plan, &f, 0, Instant::now());
    let next = o.checkpoint().clone();
    s.shipped(
        plan,
        f,
        o,
        &Activity::default(),
        Instant::now(),
        Duration::ZERO,
    );
    next
}

#[test]
fn a_pass_repeated_after_a_failed_publish_ships_the_same_and_keeps_its_bounds() {
    let mut s = state(checkpoint(5_000, None));
    let f = || Found {
        rows: vec![row(11, 1, None), row(12, 2, None)],
        max_key: key("12"),
        ..Default::default()
    };
    let first = s.plan(KEY_SCAN, probe(1_000));
    let shipped_first = s.outcome(&first, &f(), 7, Instant::now());
    assert!(shipped_first.must_ship());
    // the publish failed: nothing is recorded, the pass runs again after a later probe
    let again = s.plan(KEY_SCAN, probe(2_000));
    assert_eq!(again.bounds(), first.bounds());
    let shipped_again = s.outcome(&again, &f(), 7, Instant::now());
    assert_eq!(ops(&shipped_again), ops(&shipped_first));
    assert_eq!(shipped_again.checkpoint(), shipped_first.checkpoint());
    assert_eq!(s.checkpoint(), &checkpoint(5_000, None));
    // shipped this time: the rows are known, and the keys recorded
    s.shipped(
        again,
        f(),
        shipped_again,
        &Activity::default(),
        Instant::now(),
        Duration::ZERO,
    );
    assert_eq!(s.checkpoint().max_key, key("12"));
    assert_eq!(
        s.shipped_keys().integer().unwrap().keys(0..=100),
        vec![11, 12]
    );
    let plan = s.plan(KEY_SCAN, probe(3_000));
    assert!(s
        .outcome(&plan, &f(), 7, Instant::now())
        .events()
        .is_empty());
}

#[test]
fn keys_of_a_commit_that_may_have_gone_through_stay_in_the_key_set_for_the_delete_scan() {
    let mut s = state(checkpoint(5_000, None));
    let first = s.plan(KEY_SCAN, probe(1_000));
    let found = Found {
        rows: vec![row(11, 1, None), row(12, 2, None)],
        max_key: key("12"),
        ..Default::default()
    };
    let outcome = s.outcome(&first, &found, 7, Instant::now());
    // its commit failed, and the broker may have committed it: the replica may hold 11 and 12
    s.maybe_shipped(&outcome);
    assert_eq!(s.checkpoint(), &checkpoint(5_000, None));
    // 12 is deleted before the pass is repeated: the repeated pass finds 11 alone
    let again = s.plan(KEY_SCAN, probe(2_000));
    let found = Found {
        rows: vec![row(11, 1, None)],
        max_key: key("11"),
        ..Default::default()
    };
    let outcome = s.outcome(&again, &found, 7, Instant::now());
    // 11 is an update now: the topic may have it
    assert_eq!(ops(&outcome), vec![(Op::Update, Value::Long(11))]);
    s.shipped(
        again,
        found,
        outcome,
        &Activity::default(),
        Instant::now(),
        Duration::ZERO,
    );
    // 12 is still a key the delete scan compares, so its delete is found
    assert_eq!(
        s.shipped_keys().integer().unwrap().keys(0..=100),
        vec![11, 12]
    );
}

#[test]
fn a_row_is_a_create_exactly_when_its_key_was_never_shipped_whoever_finds_it() {
    let mut s = state(checkpoint(5_000, None));
    // the watermark scan finds a new row before the key scan does: still an insert
    let plan = s.plan(WATERMARK, probe(1_000));
    let o = s.outcome(
        &plan,
        &found(vec![row(1, 10, Some(6_000))]),
        0,
        Instant::now(),
    );
    assert_eq!(ops(&o), vec![(Op::Create, Value::Long(1))]);
    pass(&mut s, KEY_SCAN, 1_000, found(vec![row(2, 20, None)]));
    let f = Found {
        rows: vec![row(2, 21, Some(6_000)), row(3, 30, Some(6_000))],
        gone: vec![gone(4)],
        ..Default::default()
    };
    let plan = s.plan(WATERMARK, probe(2_000));
    let o = s.outcome(&plan, &f, 0, Instant::now());
    assert_eq!(
        ops(&o),
        vec![
            (Op::Update, Value::Long(2)),
            (Op::Create, Value::Long(3)),
            (Op::Delete, Value::Long(4)),
        ]
    );
    // the key scan's create and these three
    assert_eq!(o.checkpoint().events, 4);
    // key 2 deleted (reconciliation finds it gone), then written again: an insert again
    let deleted = Found {
        gone: vec![gone(2)],
        ..Default::default()
    };
    pass(&mut s, RECONCILE, 3_000, deleted);
    let plan = s.plan(WATERMARK, probe(4_000));
    let o = s.outcome(
        &plan,
        &found(vec![row(2, 22, Some(7_000))]),
        0,
        Instant::now(),
    );
    assert_eq!(ops(&o), vec![(Op::Create, Value::Long(2))]);
}

/// The same for a composite key (text, integer), which has no single integer to keep: rows the
/// watermark scan finds are inserts when new, updates once shipped, inserts again after their
/// delete; and a restarted producer, its cache empty, knows them from the shipped keys alone.
#[test]
fn a_composite_key_row_is_a_create_exactly_when_its_key_was_never_shipped_whoever_finds_it() {
    use crate::shipped::tests::{hashed, key};
    let row = |tenant: &str, id: i32, hash| SourceRow {
        key_text: vec![tenant.to_string(), id.to_string()],
        key: key(tenant, id),
        row: vec![Some(Value::String(tenant.into())), Some(Value::Int(id))],
        hash,
        watermark: Some(6_000),
    };
    let ops = |o: &Outcome| -> Vec<(Op, Vec<Value>)> {
        o.events().iter().map(|e| (e.op, e.key.clone())).collect()
    };
    let mut s = state_keys(
        checkpoint(5_000, None),
        hashed(),
        HashMap::new(),
        Instant::now(),
    );
    // below the key scan's bound: found by the watermark scan alone
    let plan = s.plan(WATERMARK, probe(1_000));
    let f = found(vec![row("a", 1, 10), row("a", 2, 20)]);
    let o = s.outcome(&plan, &f, 0, Instant::now());
    assert_eq!(
        ops(&o),
        vec![(Op::Create, key("a", 1)), (Op::Create, key("a", 2))]
    );
    s.shipped(
        plan,
        f,
        o,
        &Activity::default(),
        Instant::now(),
        Duration::ZERO,
    );
    // changed, and one of them deleted (reconciliation finds it gone)
    let plan = s.plan(WATERMARK, probe(2_000));
    let o = s.outcome(&plan, &found(vec![row("a", 1, 11)]), 0, Instant::now());
    assert_eq!(ops(&o), vec![(Op::Update, key("a", 1))]);
    let deleted = Found {
        gone: vec![GoneKey {
            key_text: vec!["a".into(), "2".into()],
            key: key("a", 2),
        }],
        ..Default::default()
    };
    pass(&mut s, RECONCILE, 3_000, deleted);
    // a restart: the shipped keys as read back from the topic, nothing in the cache
    let mut restarted = state_keys(
        s.checkpoint().clone(),
        s.shipped_keys().clone(),
        HashMap::new(),
        Instant::now(),
    );
    let plan = restarted.plan(WATERMARK, probe(4_000));
    let f = found(vec![row("a", 1, 11), row("a", 2, 21), row("b", 1, 30)]);
    let o = restarted.outcome(&plan, &f, 0, Instant::now());
    assert_eq!(
        ops(&o),
        vec![
            (Op::Update, key("a", 1)),
            (Op::Create, key("a", 2)),
            (Op::Create, key("b", 1)),
        ]
    );
    restarted.shipped(
        plan,
        f,
        o,
        &Activity::default(),
        Instant::now(),
        Duration::ZERO,
    );
    assert!(restarted.shipped_keys().contains(&key("a", 2)));
}

#[test]
fn restart_bounds_take_the_key_scans_key_and_the_watermark_scans_time() {
    let mut s = state(checkpoint(0, None));
    let keys_up_to = |k: &str| Found {
        max_key: key(k),
        ..Default::default()
    };
    // the key scan's horizon moves to the key seen before its first probe's entry drained
    pass(&mut s, KEY_SCAN, 1_000, keys_up_to("20"));
    pass(&mut s, KEY_SCAN, 2_000, keys_up_to("20"));
    pass(&mut s, KEY_SCAN, 3_000, keys_up_to("20"));
    let next = pass(&mut s, KEY_SCAN, 4_000, keys_up_to("20"));
    // its time bound moved too (to 2000), but a restart takes the watermark scan's
    assert_eq!(
        next.bounds,
        Bounds {
            key: key("20"),
            ts: Some(0)
        }
    );
    let next = pass(&mut s, WATERMARK, 5_000, Found::default());
    assert_eq!(next.bounds.key, key("20"));
    // the other detectors do not count
    let next = pass(&mut s, RECONCILE, 6_000, Found::default());
    assert_eq!(next.bounds.key, key("20"));
}

#[test]
fn the_time_bound_is_lowered_by_the_overlap_and_to_above_the_highest_watermark_shipped() {
    let bound = |max_watermark| {
        let s = state(checkpoint(5_000, max_watermark));
        let plan = s.plan(WATERMARK, probe(1_000));
        assert_eq!(plan.bounds().key, key("10"));
        plan.bounds().ts
    };
    assert_eq!(bound(None), Some(4_900));
    assert_eq!(bound(Some(1_000)), Some(1_001));
    assert_eq!(bound(Some(10_000)), Some(4_900));
}

#[test]
fn only_a_watermark_pass_moves_the_highest_watermark_shipped() {
    let mut s = state(checkpoint(5_000, Some(1_000)));
    let next = pass(&mut s, KEY_SCAN, 1_000, found(vec![row(1, 1, Some(9_000))]));
    assert_eq!(next.max_watermark, Some(1_000));
    let next = pass(
        &mut s,
        WATERMARK,
        1_000,
        found(vec![row(2, 1, Some(7_000))]),
    );
    assert_eq!(next.max_watermark, Some(7_000));
}

#[test]
fn the_first_watermark_pass_after_the_snapshot_skips_remembered_rows_and_ships_at_once() {
    let mut s = state_with(checkpoint(5_000, None), &[(1, 10)], Instant::now());
    // a key scan pass is not it, and waits for the checkpoint interval
    let plan = s.plan(KEY_SCAN, probe(1_000));
    let o = s.outcome(
        &plan,
        &Found {
            max_key: key("11"),
            ..Default::default()
        },
        0,
        Instant::now(),
    );
    assert!(!o.after_snapshot() && !o.must_ship());
    let plan = s.plan(WATERMARK, probe(1_000));
    let f = found(vec![row(1, 10, Some(6_000))]);
    let o = s.outcome(&plan, &f, 0, Instant::now());
    assert!(o.events().is_empty());
    assert!(o.after_snapshot() && o.must_ship());
    s.shipped(
        plan,
        f,
        o,
        &Activity::default(),
        Instant::now(),
        Duration::ZERO,
    );
    // the next one is an ordinary pass: its checkpoint waits
    let plan = s.plan(WATERMARK, probe(2_000));
    let o = s.outcome(
        &plan,
        &found(vec![row(1, 10, Some(7_000))]),
        0,
        Instant::now(),
    );
    assert!(!o.after_snapshot() && !o.must_ship());
    assert_eq!(o.checkpoint().max_watermark, Some(7_000));
}

#[test]
fn a_checkpoint_without_events_is_shipped_once_its_interval_has_passed() {
    let started = Instant::now();
    let s = state_with(checkpoint(5_000, None), &[], started);
    let plan = s.plan(KEY_SCAN, probe(1_000));
    let f = Found {
        max_key: key("11"),
        ..Default::default()
    };
    assert!(!s.outcome(&plan, &f, 0, started).must_ship());
    let later = started + Duration::from_secs(60);
    assert!(s.outcome(&plan, &f, 0, later).must_ship());
    // nothing new: nothing to ship however long it has been
    assert!(!s.outcome(&plan, &Found::default(), 0, later).must_ship());
}

#[test]
fn detectors_run_when_due_and_wanted_reconciliation_one_interval_after_the_start() {
    let started = Instant::now();
    let mut s = state_with(checkpoint(5_000, None), &[], started);
    let activity = Activity::default();
    // never ran: wanted whatever the activity; the watermark scan waits for its turn in the
    // background lane
    assert_eq!(s.due(started, &activity, |_, _, _| false), vec![KEY_SCAN]);
    assert_eq!(s.busy_background(), vec![WATERMARK]);
    assert!(s.due(started, &activity, |_, _, _| true).is_empty());
    assert_eq!(s.background(started), Some(WATERMARK));
    pass(&mut s, WATERMARK, 1_000, Found::default());
    pass(&mut s, KEY_SCAN, 1_000, Found::default());
    let later = started + Duration::from_millis(1_000);
    assert!(s.due(later, &activity, |i, _, _| i != KEY_SCAN).is_empty());
    assert_eq!(s.busy_background(), vec![WATERMARK, RECONCILE]);
    assert_eq!(s.next_due(later), Some(later));
    assert_eq!(s.background(later), Some(WATERMARK));
    // one background pass at a time: the next waits until it is shipped
    assert_eq!(s.background(later), None);
    assert_eq!(s.next_due(later), Some(later + Duration::from_millis(100)));
    pass(&mut s, WATERMARK, 2_000, Found::default());
    assert_eq!(s.background(later), Some(RECONCILE));
}

#[test]
fn background_passes_wait_for_the_budget_the_key_scan_does_not() {
    let started = Instant::now();
    let mut s = state_with(checkpoint(5_000, None), &[], started).with_budget(0.1);
    let activity = Activity::default();
    assert_eq!(s.due(started, &activity, |_, _, _| true), vec![KEY_SCAN]);
    assert_eq!(s.background(started), Some(WATERMARK));
    // the watermark pass kept the source busy for 300 ms: 6 s of rest at its share, half of
    // 10% (the two background detectors weigh the same here)
    s.charge(WATERMARK, Duration::from_millis(300), started);
    pass(&mut s, WATERMARK, 1_000, Found::default());
    let later = started + Duration::from_millis(1_100);
    assert_eq!(s.due(later, &activity, |_, _, _| true), vec![KEY_SCAN]);
    assert_eq!(s.busy_background(), vec![WATERMARK, RECONCILE]);
    // reconciliation has a share of its own: it goes, the watermark scan waits
    assert_eq!(s.background(later), Some(RECONCILE));
    pass(&mut s, RECONCILE, 1_200, Found::default());
    assert_eq!(s.busy_background(), vec![WATERMARK]);
    // the key scan stays on its interval meanwhile
    let soon = later + Duration::from_millis(100);
    assert_eq!(s.due(soon, &activity, |_, _, _| true), vec![KEY_SCAN]);
    assert_eq!(s.background(soon), None);
    assert_eq!(s.next_due(soon), Some(soon + Duration::from_millis(100)));
    assert_eq!(s.background(started + Duration::from_millis(5_900)), None);
    assert_eq!(
        s.background(started + Duration::from_millis(6_100)),
        Some(WATERMARK)
    );
}

#[test]
fn keys_the_foreground_ships_during_a_background_pass_are_read_again() {
    let started = Instant::now();
    let mut s = state_with(checkpoint(5_000, None), &[], started);
    let activity = Activity::default();
    s.due(started, &activity, |_, _, _| true);
    assert_eq!(s.background(started), Some(WATERMARK));
    let bg_plan = s.plan(WATERMARK, probe(1_000));
    // the key scan ships key 11 while the watermark scan reads
    pass(&mut s, KEY_SCAN, 1_100, found(vec![row(11, 2, None)]));
    let mut f = Found {
        rows: vec![row(11, 1, None), row(3, 1, None)],
        gone: vec![gone(12)],
        ..Default::default()
    };
    assert_eq!(s.overlap(&f), vec![vec!["11".to_string()]]);
    // read again: the newer version takes the place of the pass's
    f.read_again(&s.overlap(&f), vec![row(11, 2, None)]);
    let o = s.outcome(&bg_plan, &f, 0, started);
    // 11 is what the key scan shipped: unchanged; 3 is new; 12 is gone
    assert_eq!(
        ops(&o),
        vec![(Op::Create, Value::Long(3)), (Op::Delete, Value::Long(12))]
    );
    s.shipped(bg_plan, f, o, &activity, started, Duration::ZERO);
    // no background pass under way: nothing to read again
    assert!(s.overlap(&found(vec![row(11, 3, None)])).is_empty());
}

#[test]
fn a_key_found_gone_but_shipped_meanwhile_is_gone_only_if_still_missing() {
    let mut f = Found {
        gone: vec![gone(5), gone(6)],
        ..Default::default()
    };
    let keys = vec![vec!["5".to_string()], vec!["6".to_string()]];
    // 5 is back (inserted again), 6 is still missing
    f.read_again(&keys, vec![row(5, 9, None)]);
    assert_eq!(f.rows.len(), 1);
    assert_eq!(f.gone.len(), 1);
    assert_eq!(f.gone[0].key_text, vec!["6".to_string()]);
}

#[test]
fn a_failed_background_pass_is_due_again_after_its_back_off() {
    let started = Instant::now();
    let mut s = state_with(checkpoint(5_000, None), &[], started);
    let activity = Activity::default();
    s.due(started, &activity, |_, _, _| true);
    assert_eq!(s.background(started), Some(WATERMARK));
    let retry = started + Duration::from_secs(2);
    s.abandoned(WATERMARK, started, retry);
    assert!(s.busy_background().is_empty());
    assert_eq!(s.background(started), None);
    s.due(started + Duration::from_secs(1), &activity, |_, _, _| true);
    assert!(!s.busy_background().contains(&WATERMARK));
    s.due(retry, &activity, |_, _, _| true);
    assert!(s.busy_background().contains(&WATERMARK));
}
