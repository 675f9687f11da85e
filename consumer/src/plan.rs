//! What a batch does, decided without touching anything: from the batch, the offsets the
//! target has stored and the keys parked before it, [`plan`] folds the events to the latest
//! of every key per table, skips what was applied already, sends rejected messages and the
//! later events of their keys (and of keys parked before) to the DLQ, and counts each
//! partition's progress. The rows the target refuses while written are added afterwards
//! ([`ApplyPlan::refused`]).

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use tunnel_shared::key::KeyText;

use crate::model::{class, Entry, Item, Partition, Progress, Rejected, ToPark, TopicProgress};

/// The reason given to an event that follows its parked key into the DLQ.
const PARKED_REASON: &str = "an earlier event of this key is in the DLQ; replay it first";

/// The partitions of a batch, per topic, each once.
pub(crate) fn partitions(items: &[Item]) -> FxHashMap<Arc<str>, Vec<i32>> {
    let mut by_topic: FxHashMap<Arc<str>, Vec<i32>> = FxHashMap::default();
    for item in items {
        let (topic, partition, _) = item.position();
        let parts = by_topic.entry(topic.clone()).or_default();
        if !parts.contains(&partition) {
            parts.push(partition);
        }
    }
    by_topic
}

/// What applying a batch does.
#[derive(Default)]
pub(crate) struct ApplyPlan<'a> {
    /// Per table (topic), the latest event of every key: the rows to write.
    pub(crate) rows: FxHashMap<Arc<str>, FxHashMap<&'a KeyText, &'a Entry>>,
    /// The messages for the DLQ, in the order found.
    pub(crate) dead: Vec<Rejected>,
    /// Per partition with messages past its stored offset: what the batch did to it.
    pub(crate) progress: FxHashMap<Partition, Progress>,
    /// Events applied (after skipping those already applied).
    pub(crate) events: usize,
    /// Events skipped because an earlier transaction had applied them.
    pub(crate) already_applied: usize,
    /// Events applied, per topic.
    pub(crate) events_by_topic: FxHashMap<Arc<str>, usize>,
}

/// Plans `items` (in offset order per partition): `stored` holds the next offset of each
/// partition (0 when absent), `parked_before` tells whether a key of a partition was parked
/// before the batch.
pub(crate) fn plan<'a>(
    items: &'a [Item],
    stored: &FxHashMap<Partition, i64>,
    parked_before: impl Fn(&Arc<str>, i32, &KeyText) -> bool,
) -> ApplyPlan<'a> {
    let mut plan = ApplyPlan::default();
    // keys parked by this batch, per partition
    let mut parked_here: FxHashMap<Partition, FxHashSet<KeyText>> = FxHashMap::default();
    for item in items {
        let (topic, partition, offset) = item.position();
        let from = stored
            .get(&(topic.clone(), partition))
            .copied()
            .unwrap_or(0);
        if offset < from {
            plan.already_applied += 1;
            continue;
        }
        let p = plan.progress.entry((topic.clone(), partition)).or_default();
        p.next = p.next.max(from).max(offset + 1);
        if matches!(item, Item::Heartbeat(_)) {
            // nothing to apply, and not an event: only its offset counts
            continue;
        }
        p.processed += 1;
        match item {
            Item::Heartbeat(_) => {}
            Item::Rejected(r) => {
                p.dead += 1;
                // the key's earlier events in this batch still apply; its later ones are parked
                if let Some(k) = &r.key {
                    parked_here
                        .entry((topic.clone(), partition))
                        .or_default()
                        .insert(k.clone());
                }
                plan.dead.push(r.clone());
            }
            Item::Event(e)
                if (!parked_here.is_empty()
                    && parked_here
                        .get(&(topic.clone(), partition))
                        .is_some_and(|keys| keys.contains(&e.message.key)))
                    || parked_before(topic, partition, &e.message.key) =>
            {
                p.dead += 1;
                plan.dead
                    .push(e.rejected(class::PARKED, PARKED_REASON.into()));
            }
            Item::Event(e) => {
                plan.events += 1;
                *plan.events_by_topic.entry(topic.clone()).or_default() += 1;
                plan.rows
                    .entry(topic.clone())
                    .or_default()
                    .insert(&e.message.key, e);
            }
        }
    }
    plan
}

impl ApplyPlan<'_> {
    /// A row of the plan that the target refused: not applied after all, but dead-lettered
    /// (and its key parked).
    pub(crate) fn refused(&mut self, entry: &Entry, reason: String) {
        self.superseded(entry);
        if let Some(p) = self
            .progress
            .get_mut(&(entry.topic.clone(), entry.partition))
        {
            p.dead += 1;
        }
        self.dead
            .push(entry.rejected(class::TARGET_REJECTED, reason));
    }

    /// A row of the plan that the target refused and that a newer version of its key
    /// follows: not applied, and neither dead-lettered nor parked (which would send that newer
    /// version to the DLQ after it).
    pub(crate) fn superseded(&mut self, entry: &Entry) {
        self.events -= 1;
        if let Some(n) = self.events_by_topic.get_mut(&entry.topic) {
            *n = n.saturating_sub(1);
        }
    }

    /// The keys to park, per topic: every key with a message for the DLQ, with how many it
    /// has (under the partition of its first one).
    pub(crate) fn parks(&self) -> Vec<(Arc<str>, Vec<ToPark>)> {
        let mut parks: FxHashMap<Arc<str>, FxHashMap<&KeyText, (i32, i32)>> = FxHashMap::default();
        for r in &self.dead {
            if let Some(k) = &r.key {
                parks
                    .entry(r.topic.clone())
                    .or_default()
                    .entry(k)
                    .or_insert((r.partition, 0))
                    .1 += 1;
            }
        }
        parks
            .into_iter()
            .map(|(topic, keys)| {
                let keys = keys
                    .into_iter()
                    .map(|(k, (p, n))| (p, k.clone(), n))
                    .collect();
                (topic, keys)
            })
            .collect()
    }

    /// The keys parked by this batch, per partition: those of its messages for the DLQ.
    pub(crate) fn parked_keys(&self) -> FxHashMap<Partition, FxHashSet<KeyText>> {
        let mut keys: FxHashMap<Partition, FxHashSet<KeyText>> = FxHashMap::default();
        for r in &self.dead {
            if let Some(k) = &r.key {
                keys.entry((r.topic.clone(), r.partition))
                    .or_default()
                    .insert(k.clone());
            }
        }
        keys
    }

    /// The progress of every partition, per topic, in topic and partition order.
    pub(crate) fn progress_by_topic(&self) -> Vec<TopicProgress> {
        let mut by_topic: FxHashMap<&Arc<str>, Vec<(i32, Progress)>> = FxHashMap::default();
        for ((topic, partition), p) in &self.progress {
            by_topic.entry(topic).or_default().push((*partition, *p));
        }
        let mut out: Vec<TopicProgress> = by_topic
            .into_iter()
            .map(|(topic, mut parts)| {
                parts.sort_unstable_by_key(|(p, _)| *p);
                (topic.clone(), parts)
            })
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::fixtures::{event, heartbeat, key, rejected};
    use tunnel_shared::event::Op;

    fn nothing_parked(_: &Arc<str>, _: i32, _: &KeyText) -> bool {
        false
    }

    /// The offset of the row planned for a key of a topic.
    fn row(plan: &ApplyPlan<'_>, topic: &str, k: &str) -> Option<i64> {
        plan.rows.get(topic)?.get(&key(k)).map(|e| e.offset)
    }

    fn dead(plan: &ApplyPlan<'_>) -> Vec<(i64, &'static str)> {
        plan.dead.iter().map(|r| (r.offset, r.class)).collect()
    }

    fn progress(plan: &ApplyPlan<'_>, topic: &str, partition: i32) -> Progress {
        plan.progress[&(Arc::from(topic), partition)]
    }

    #[test]
    fn a_heartbeat_moves_its_partition_on_without_counting_as_an_event() {
        let items = [
            event("t", 0, 10, "a", Op::Create),
            heartbeat("t", 0, 11),
            heartbeat("t", 1, 4),
        ];
        let stored = FxHashMap::from_iter([((Arc::from("t"), 1), 6)]);
        let plan = plan(&items, &stored, nothing_parked);
        assert_eq!(plan.events, 1);
        assert_eq!(plan.events_by_topic[&Arc::from("t")], 1);
        assert_eq!(
            progress(&plan, "t", 0),
            Progress {
                next: 12,
                processed: 1,
                dead: 0
            }
        );
        // one already applied (behind the stored offset) is skipped like any message
        assert_eq!(plan.already_applied, 1);
        assert!(!plan.progress.contains_key(&(Arc::from("t"), 1)));
    }

    #[test]
    fn a_key_parked_mid_batch_applies_its_earlier_events_and_dead_letters_its_later_ones() {
        let items = [
            event("t", 0, 10, "a", Op::Create),
            event("t", 0, 11, "b", Op::Create),
            rejected("t", 0, 12, Some("a")),
            event("t", 0, 13, "a", Op::Update),
            event("t", 0, 14, "b", Op::Update),
            // another partition is not parked by the key of partition 0
            event("t", 1, 3, "a", Op::Update),
        ];
        let plan = plan(&items, &FxHashMap::default(), nothing_parked);
        assert_eq!(row(&plan, "t", "a"), Some(3), "partition 1's event of a");
        assert_eq!(row(&plan, "t", "b"), Some(14));
        assert_eq!(dead(&plan), [(12, class::RULE), (13, class::PARKED)]);
        assert_eq!(plan.events, 4);
        assert_eq!(
            progress(&plan, "t", 0),
            Progress {
                next: 15,
                processed: 5,
                dead: 2
            }
        );
        let parks = plan.parks();
        assert_eq!(parks.len(), 1);
        assert_eq!(parks[0].1, [(0, key("a"), 2)]);
        let parked = plan.parked_keys();
        assert_eq!(parked.len(), 1);
        assert!(parked[&(Arc::from("t"), 0)].contains(&key("a")));
    }

    #[test]
    fn a_delete_after_an_update_of_the_same_key_wins_the_fold() {
        let items = [
            event("t", 0, 1, "a", Op::Update),
            event("t", 0, 2, "a", Op::Delete),
        ];
        let plan = plan(&items, &FxHashMap::default(), nothing_parked);
        let entry = plan.rows["t"][&key("a")];
        assert_eq!(entry.offset, 2);
        assert!(matches!(&entry.message.event, Some((ev, _)) if ev.op == Op::Delete));
        assert_eq!(plan.events, 2);
        assert!(plan.dead.is_empty() && plan.parks().is_empty());
    }

    #[test]
    fn offsets_already_applied_are_skipped_and_counted() {
        let items = [
            event("t", 0, 5, "a", Op::Create),
            rejected("t", 0, 6, Some("b")),
            event("t", 0, 7, "a", Op::Update),
            event("t", 0, 8, "c", Op::Create),
        ];
        let stored = FxHashMap::from_iter([((Arc::from("t"), 0), 8)]);
        let plan = plan(&items, &stored, nothing_parked);
        assert_eq!(plan.already_applied, 3);
        assert_eq!(plan.events, 1);
        assert_eq!(row(&plan, "t", "a"), None);
        assert_eq!(row(&plan, "t", "c"), Some(8));
        assert!(
            plan.dead.is_empty(),
            "the rejected message was handled before"
        );
        assert_eq!(
            progress(&plan, "t", 0),
            Progress {
                next: 9,
                processed: 1,
                dead: 0
            }
        );
        // a partition with nothing new makes no progress to store
        let all_old = plan_of_old(&items);
        assert_eq!(all_old.already_applied, 4);
        assert!(all_old.progress.is_empty() && all_old.progress_by_topic().is_empty());
    }

    fn plan_of_old(items: &[Item]) -> ApplyPlan<'_> {
        let stored = FxHashMap::from_iter([((Arc::from("t"), 0), 100)]);
        plan(items, &stored, nothing_parked)
    }

    #[test]
    fn a_key_parked_before_the_batch_sends_its_events_to_the_dlq() {
        let items = [
            event("t", 0, 1, "a", Op::Update),
            event("t", 0, 2, "b", Op::Update),
            event("t", 1, 1, "a", Op::Update),
        ];
        let parked = |topic: &Arc<str>, partition: i32, k: &KeyText| {
            topic.as_ref() == "t" && partition == 0 && *k == key("a")
        };
        let plan = plan(&items, &FxHashMap::default(), parked);
        assert_eq!(dead(&plan), [(1, class::PARKED)]);
        assert_eq!(plan.dead[0].reason, PARKED_REASON);
        assert_eq!(row(&plan, "t", "b"), Some(2));
        assert_eq!(row(&plan, "t", "a"), Some(1), "partition 1's event");
        assert_eq!(plan.parks()[0].1, [(0, key("a"), 1)]);
        assert_eq!(progress(&plan, "t", 0).dead, 1);
    }

    #[test]
    fn partitions_and_topics_are_planned_apart() {
        let items = [
            event("t", 0, 4, "a", Op::Create),
            event("u", 0, 9, "a", Op::Create),
            event("t", 2, 7, "a", Op::Update),
            rejected("u", 1, 3, None),
            event("t", 0, 5, "b", Op::Create),
        ];
        let stored = FxHashMap::from_iter([((Arc::from("t"), 2), 3)]);
        let plan = plan(&items, &stored, nothing_parked);
        let mut parts: Vec<(String, Vec<i32>)> = partitions(&items)
            .into_iter()
            .map(|(t, p)| (t.to_string(), p))
            .collect();
        parts.sort();
        assert_eq!(
            parts,
            [("t".to_string(), vec![0, 2]), ("u".to_string(), vec![0, 1])]
        );
        // the same key in two topics is two rows
        assert_eq!(row(&plan, "t", "a"), Some(7));
        assert_eq!(row(&plan, "u", "a"), Some(9));
        assert_eq!(plan.events, 4);
        let next: Vec<(String, i32, i64, i64)> = plan
            .progress_by_topic()
            .into_iter()
            .flat_map(|(t, ps)| {
                ps.into_iter()
                    .map(move |(p, pr)| (t.to_string(), p, pr.next, pr.dead))
            })
            .collect();
        assert_eq!(
            next,
            [
                ("t".to_string(), 0, 6, 0),
                ("t".to_string(), 2, 8, 0),
                ("u".to_string(), 0, 10, 0),
                ("u".to_string(), 1, 4, 1),
            ]
        );
        // a message without a key goes to the DLQ but parks nothing
        assert!(plan.parks().is_empty() && plan.parked_keys().is_empty());
    }

    #[test]
    fn a_row_the_target_refuses_is_dead_lettered_and_its_key_parked() {
        let items = [
            event("t", 0, 1, "a", Op::Create),
            event("t", 0, 2, "b", Op::Create),
            rejected("t", 0, 3, Some("c")),
        ];
        let mut plan = plan(&items, &FxHashMap::default(), nothing_parked);
        let Item::Event(b) = &items[1] else {
            unreachable!()
        };
        plan.refused(b, "value too long".into());
        assert_eq!(plan.events, 1);
        assert_eq!(dead(&plan), [(3, class::RULE), (2, class::TARGET_REJECTED)]);
        assert_eq!(plan.dead[1].reason, "value too long");
        assert_eq!(
            progress(&plan, "t", 0),
            Progress {
                next: 4,
                processed: 3,
                dead: 2
            }
        );
        let mut parks = plan.parks().remove(0).1;
        parks.sort();
        assert_eq!(parks, [(0, key("b"), 1), (0, key("c"), 1)]);
        assert_eq!(plan.parked_keys()[&(Arc::from("t"), 0)].len(), 2);
    }

    /// A refused row of an older schema whose column was retyped since: its key's next
    /// version (the resync's snapshot) must reach the target, so nothing is parked.
    #[test]
    fn a_superseded_row_is_not_applied_and_parks_nothing() {
        let items = [
            event("t", 0, 1, "a", Op::Update),
            event("t", 0, 2, "b", Op::Read),
        ];
        let mut plan = plan(&items, &FxHashMap::default(), nothing_parked);
        let Item::Event(a) = &items[0] else {
            unreachable!()
        };
        plan.superseded(a);
        assert_eq!(plan.events, 1);
        assert!(plan.dead.is_empty() && plan.parks().is_empty());
        assert_eq!(
            progress(&plan, "t", 0),
            Progress {
                next: 3,
                processed: 2,
                dead: 0
            }
        );
    }
}
