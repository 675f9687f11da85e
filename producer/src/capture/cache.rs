//! The content cache: what was last shipped of the rows a detector may read again, as a hash
//! per key. It decides which operation a row found by a pass becomes (the c/u/d decision), and
//! keeps a row while some detector may still read it again, and for [`RECENT`] after it was
//! shipped: a reconciliation pass that finds such a row different from the target (its event
//! still on the way) does not ship the same content again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tunnel_shared::event::{ChangeEvent, Detection, Op};

use super::detector::Found;
use crate::shipped::ShippedKeys;

/// How long a shipped row's content is kept whoever may read it again: longer than an event
/// takes to reach the target while the consumer keeps up.
const RECENT: Duration = Duration::from_secs(30);
/// Beyond this many rows (a bulk change), rows are kept only while a detector may read them
/// again.
const RECENT_CAP: usize = 100_000;

struct CacheEntry {
    hash: u64,
    /// Tick at which each detector (by slot index) last read the row.
    seen: Vec<u64>,
    /// When this content was shipped (or remembered).
    at: Instant,
}

pub struct ContentCache {
    entries: HashMap<Vec<String>, CacheEntry>,
    /// Detectors (slots) whose reads are tracked.
    slots: usize,
}

impl ContentCache {
    pub fn new(slots: usize) -> Self {
        Self {
            entries: HashMap::new(),
            slots,
        }
    }

    /// Rows shipped before the first tick (by the snapshot), as seen by every detector at
    /// `tick`.
    pub fn remember(
        &mut self,
        rows: impl IntoIterator<Item = (Vec<String>, u64)>,
        tick: u64,
        now: Instant,
    ) {
        for (key, hash) in rows {
            self.entries.insert(
                key,
                CacheEntry {
                    hash,
                    seen: vec![tick; self.slots],
                    at: now,
                },
            );
        }
    }

    /// The events a pass's result becomes, with Debezium's meaning of each operation. A row
    /// whose hash is the one last shipped is no change (except for a repair, which ships what
    /// it was asked for). A row is an insert (`c`) exactly when its key has not been shipped
    /// (or was deleted since), which `shipped` knows for every kind of key whichever detector
    /// found the row (and whatever this cache has forgotten); else it is an update (`u`). Gone
    /// keys are deletes (`d`).
    pub fn changes(
        &self,
        found: &Found,
        detection: Detection,
        shipped: &ShippedKeys,
        ts_ms: i64,
    ) -> Vec<ChangeEvent> {
        let mut events = Vec::new();
        for r in &found.rows {
            let cached = self.entries.get(&r.key_text);
            if cached.is_some_and(|e| e.hash == r.hash) && detection != Detection::Repair {
                continue;
            }
            let op = if shipped.contains(&r.key) {
                Op::Update
            } else {
                Op::Create
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
        events
    }

    /// After the pass of detector `slot` at `tick` was shipped (at `now`): its gone keys are
    /// forgotten, its rows remembered as read by it now. Then a row is kept while some detector
    /// read it at or after its own last pass (`last_ticks`, by slot): only those may read it
    /// again from the same bounds; and for [`RECENT`] after it was shipped.
    pub fn shipped(
        &mut self,
        found: Found,
        slot: usize,
        tick: u64,
        last_ticks: &[u64],
        now: Instant,
    ) {
        for g in &found.gone {
            self.entries.remove(&g.key_text);
        }
        for r in found.rows {
            let slots = self.slots;
            let e = self
                .entries
                .entry(r.key_text)
                .or_insert_with(|| CacheEntry {
                    hash: r.hash,
                    seen: vec![0; slots],
                    at: now,
                });
            if e.hash != r.hash {
                e.hash = r.hash;
                e.at = now;
            }
            e.seen[slot] = tick;
        }
        let recent = self.entries.len() <= RECENT_CAP;
        self.entries.retain(|_, e| {
            (recent && now.saturating_duration_since(e.at) < RECENT)
                || e.seen
                    .iter()
                    .zip(last_ticks)
                    .any(|(seen, last)| seen >= last)
        });
    }

    /// Every row kept (key, hash of its content as last shipped), if there are at most `cap`.
    pub fn rows(&self, cap: usize) -> Vec<(Vec<String>, u64)> {
        if self.entries.len() > cap {
            return Vec::new();
        }
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.hash))
            .collect()
    }

    #[cfg(test)]
    pub fn contains(&self, key: &[String]) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::detector::GoneKey;
    use super::*;
    use crate::source::SourceRow;
    use apache_avro::types::Value;

    pub fn row(key: i64, hash: u64, watermark: Option<i64>) -> SourceRow {
        SourceRow {
            key_text: vec![key.to_string()],
            key: vec![Value::Long(key)],
            row: vec![Some(Value::Long(key))],
            hash,
            watermark,
        }
    }

    pub fn gone(key: i64) -> GoneKey {
        GoneKey {
            key_text: vec![key.to_string()],
            key: vec![Value::Long(key)],
        }
    }

    fn ops(events: &[ChangeEvent]) -> Vec<(Op, Value)> {
        events.iter().map(|e| (e.op, e.key[0].clone())).collect()
    }

    /// The integer keys `keys` shipped.
    pub fn shipped(keys: &[i64]) -> ShippedKeys {
        let mut set = crate::keyset::KeySet::default();
        for k in keys {
            set.insert(*k);
        }
        ShippedKeys::Integer(set)
    }

    #[test]
    fn unchanged_rows_are_dropped_changed_ones_are_updates_new_ones_creates_whoever_finds_them() {
        let mut cache = ContentCache::new(2);
        cache.remember(
            [(vec!["1".to_string()], 10), (vec!["2".to_string()], 20)],
            0,
            Instant::now(),
        );
        let found = Found {
            rows: vec![row(1, 10, None), row(2, 21, None), row(3, 30, None)],
            gone: vec![gone(4)],
            ..Default::default()
        };
        let keys = shipped(&[1, 2, 4]);
        let by_key = cache.changes(&found, Detection::KeyScan, &keys, 5);
        assert_eq!(
            ops(&by_key),
            vec![
                (Op::Update, Value::Long(2)),
                (Op::Create, Value::Long(3)),
                (Op::Delete, Value::Long(4)),
            ]
        );
        assert!(by_key
            .iter()
            .all(|e| e.detected_by == Detection::KeyScan && e.ts_ms == 5));
        assert!(by_key[2].after.is_none());
        let by_watermark = cache.changes(&found, Detection::Watermark, &keys, 5);
        assert_eq!(ops(&by_watermark), ops(&by_key));
    }

    /// A row of a text or composite key: the cache's memory does not decide, the shipped keys
    /// do, whichever detector found it.
    #[test]
    fn a_composite_key_is_a_create_exactly_when_it_was_never_shipped_whoever_finds_it() {
        use crate::shipped::tests::{hashed, key};
        let row = |tenant: &str, id: i32, hash| SourceRow {
            key_text: vec![tenant.to_string(), id.to_string()],
            key: key(tenant, id),
            row: vec![Some(Value::String(tenant.into())), Some(Value::Int(id))],
            hash,
            watermark: Some(1),
        };
        let mut keys = hashed();
        let cache = ContentCache::new(2);
        let found = Found {
            rows: vec![row("a", 1, 10), row("b", 1, 20)],
            ..Default::default()
        };
        for detection in [
            Detection::Watermark,
            Detection::KeyScan,
            Detection::Reconcile,
        ] {
            let events = cache.changes(&found, detection, &keys, 5);
            assert!(events.iter().all(|e| e.op == Op::Create), "{detection:?}");
        }
        // shipped (a restarted producer's cache has forgotten it, the shipped keys have not)
        keys.apply(&cache.changes(&found, Detection::Watermark, &keys, 5));
        let again = cache.changes(&found, Detection::Watermark, &keys, 5);
        assert!(again.iter().all(|e| e.op == Op::Update));
        // deleted, then written again
        let deleted = Found {
            gone: vec![GoneKey {
                key_text: vec!["a".into(), "1".into()],
                key: key("a", 1),
            }],
            ..Default::default()
        };
        keys.apply(&cache.changes(&deleted, Detection::Reconcile, &keys, 5));
        let ops: Vec<Op> = cache
            .changes(&found, Detection::Watermark, &keys, 5)
            .iter()
            .map(|e| e.op)
            .collect();
        assert_eq!(ops, vec![Op::Create, Op::Update]);
    }

    #[test]
    fn a_repair_ships_a_row_even_when_it_is_unchanged() {
        let mut cache = ContentCache::new(1);
        cache.remember([(vec!["1".to_string()], 10)], 0, Instant::now());
        let found = Found {
            rows: vec![row(1, 10, None)],
            ..Default::default()
        };
        let keys = shipped(&[1]);
        assert!(cache
            .changes(&found, Detection::Watermark, &keys, 5)
            .is_empty());
        let repaired = cache.changes(&found, Detection::Repair, &keys, 5);
        assert_eq!(ops(&repaired), vec![(Op::Update, Value::Long(1))]);
    }

    #[test]
    fn a_row_is_kept_while_some_detector_may_read_it_again_or_it_was_shipped_recently() {
        let mut cache = ContentCache::new(2);
        let found = |rows| Found {
            rows,
            ..Default::default()
        };
        let t0 = Instant::now();
        let later = t0 + RECENT + Duration::from_secs(1);
        // slot 0 reads row 1 at tick 1
        cache.shipped(found(vec![row(1, 10, None)]), 0, 1, &[1, 0], t0);
        // slot 1 passes at tick 2 without it: slot 0 may still read it again
        cache.shipped(found(vec![]), 1, 2, &[1, 2], later);
        assert!(cache.contains(&["1".to_string()]));
        // slot 0's next pass (tick 3) no longer reads it: kept while it was shipped recently
        cache.shipped(found(vec![]), 0, 3, &[3, 2], t0 + Duration::from_secs(1));
        assert!(cache.contains(&["1".to_string()]));
        // ... and forgotten after: nobody will read it again from these bounds
        cache.shipped(found(vec![]), 0, 4, &[4, 2], later);
        assert!(!cache.contains(&["1".to_string()]));
    }

    #[test]
    fn a_row_shipped_moments_ago_is_not_shipped_again_by_reconciliation() {
        let mut cache = ContentCache::new(2);
        let t0 = Instant::now();
        let f = Found {
            rows: vec![row(1, 10, None)],
            ..Default::default()
        };
        // the key scan (slot 0) ships it; its next pass no longer reads it
        cache.shipped(f, 0, 1, &[1, 0], t0);
        cache.shipped(Found::default(), 0, 2, &[2, 0], t0);
        // reconciliation finds the target without it (its event on the way): same content
        let again = Found {
            rows: vec![row(1, 10, None)],
            ..Default::default()
        };
        let keys = shipped(&[1]);
        assert!(cache
            .changes(&again, Detection::Reconcile, &keys, 5)
            .is_empty());
        // changed since, silently: shipped
        let changed = Found {
            rows: vec![row(1, 11, None)],
            ..Default::default()
        };
        assert_eq!(
            ops(&cache.changes(&changed, Detection::Reconcile, &keys, 5)),
            vec![(Op::Update, Value::Long(1))]
        );
    }

    #[test]
    fn gone_keys_are_forgotten() {
        let mut cache = ContentCache::new(1);
        cache.remember([(vec!["1".to_string()], 10)], 0, Instant::now());
        let found = Found {
            gone: vec![gone(1)],
            ..Default::default()
        };
        cache.shipped(found, 0, 1, &[0], Instant::now());
        assert!(!cache.contains(&["1".to_string()]));
    }
}
