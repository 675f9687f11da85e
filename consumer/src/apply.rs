//! Applying a batch of messages to the target in ONE transaction: the offsets of the batch's
//! partitions are locked and read first, then the parked keys; the [`plan`] folds the events
//! at or past the offsets per key (the latest wins) and picks what goes to the DLQ; the rows
//! are written in bulk, and those the target refuses are set apart (see
//! `rows::write_isolating`) so that the good rows still commit. Messages that cannot be
//! applied (undecodable, breaking a rule, refused, or behind a parked key) are in the DLQ,
//! acknowledged, before the transaction, which stores the new offsets, commits. A batch, or
//! any part of the topic, applied again therefore changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use tracing::warn;

use crate::dlq::writer::DeadLetters;
use crate::error::ApplyError;
use crate::evolve;
use crate::model::{Applied, Entry, Item, TargetTable, TopicProgress};
use crate::park::ParkedCache;
use crate::plan::{self, ApplyPlan};
use crate::target::TargetWriter;

/// Applies `items` (in offset order per partition) in the transaction `target`, the rows of
/// each topic into its table of `tables` (a topic without one has its events counted, not
/// written); what cannot be applied goes to `dlq`. `cache` holds the parked keys.
pub(crate) async fn apply_batch(
    mut target: impl TargetWriter,
    dlq: &mut impl DeadLetters,
    tables: &HashMap<Arc<str>, TargetTable>,
    items: &[Item],
    cache: &mut ParkedCache,
) -> Result<Applied, ApplyError> {
    let stored = target.lock(&plan::partitions(items), cache).await?;
    let mut plan = plan::plan(items, &stored, |topic, partition, key| {
        cache.contains(topic, partition, key)
    });
    // on their way to the DLQ while the rows are written; acknowledged before the commit
    let known_dead = plan.dead.len();
    let mut pending = vec![dlq.enqueue(&plan.dead).await?];
    for (entry, reason) in write_rows(&mut target, tables, &plan).await? {
        let retyped = retyped_since(tables, entry);
        if retyped.is_empty() {
            plan.refused(entry, reason);
        } else {
            warn!(
                topic = %entry.topic, partition = entry.partition, offset = entry.offset,
                columns = ?retyped, reason = %reason,
                "skipped a row of an older schema that the replica, retyped since, cannot hold; the source converted that row, and its version in the new type follows"
            );
            plan.superseded(entry);
        }
    }
    if plan.dead.len() > known_dead {
        pending.push(dlq.enqueue(&plan.dead[known_dead..]).await?);
    }
    // in the DLQ (acknowledged) before the offsets move past them
    for p in pending {
        dlq.confirm(p).await?;
    }
    if let Some(first) = plan.dead.first() {
        warn!(
            events = plan.dead.len(), topic = %first.topic, partition = first.partition,
            offset = first.offset, class = first.class, reason = %first.reason,
            "sent events to the DLQ (the first of them named); `tunnel-consumer dlq list` counts them, `dlq show` prints them"
        );
    }
    let progress = plan.progress_by_topic();
    target.store(&progress, &plan.parks()).await?;
    target.commit().await?;
    let applied = applied(&plan, &progress);
    let mut parked = plan.parked_keys();
    for (topic, partition, next) in &applied.next_offsets {
        let keys = parked
            .remove(&(topic.clone(), *partition))
            .unwrap_or_default();
        cache.committed(topic, *partition, *next, keys);
    }
    Ok(applied)
}

/// Writes the planned rows of every table; returns the rows the target refused.
async fn write_rows<'a>(
    target: &mut impl TargetWriter,
    tables: &HashMap<Arc<str>, TargetTable>,
    plan: &ApplyPlan<'a>,
) -> Result<Vec<(&'a Entry, String)>, ApplyError> {
    let mut refused = Vec::new();
    for (topic, rows) in &plan.rows {
        let Some(table) = tables.get(topic) else {
            continue;
        };
        let rows = rows.iter().map(|(k, e)| (*k, *e)).collect();
        refused.extend(target.write_isolating(table, rows).await?);
    }
    Ok(refused)
}

/// The replica's columns whose type changed since the writer schema of `entry`'s value.
/// Such a refused row is stale rather than bad: the source converted its rows when it changed
/// the column's type, and ships them again (a type change the registry refuses needs
/// `tunnel-producer resync`, whose snapshot ships every row in the new type; reconciliation
/// finds the rows another type change rewrote). Dead-lettered, it would park its key, and the
/// row's new version would follow it into the DLQ: the replica would lack the row.
fn retyped_since(tables: &HashMap<Arc<str>, TargetTable>, entry: &Entry) -> Vec<String> {
    match (tables.get(&entry.topic), &entry.value_schema) {
        (Some(table), Some(vs)) => evolve::retyped_since(&table.columns, &vs.fields),
        _ => Vec::new(),
    }
}

/// What a committed plan did.
fn applied(plan: &ApplyPlan<'_>, progress: &[TopicProgress]) -> Applied {
    Applied {
        events: plan.events,
        already_applied: plan.already_applied,
        dead_lettered: plan.dead.len(),
        next_offsets: progress
            .iter()
            .flat_map(|(topic, parts)| parts.iter().map(|(p, pr)| (topic.clone(), *p, pr.next)))
            .collect(),
        by_topic: plan
            .events_by_topic
            .iter()
            .map(|(t, n)| (t.clone(), *n))
            .collect(),
        dead_by_class: {
            let mut dead: FxHashMap<(Arc<str>, &'static str), usize> = FxHashMap::default();
            for r in &plan.dead {
                *dead.entry((r.topic.clone(), r.class)).or_default() += 1;
            }
            dead.into_iter().map(|((t, c), n)| (t, c, n)).collect()
        },
    }
}

#[cfg(test)]
mod tests {
    use rustc_hash::FxHashMap;
    use tunnel_shared::event::Op;

    use super::*;
    use crate::model::fixtures::{event, rejected};

    #[test]
    fn what_a_batch_did_counts_its_events_dead_letters_and_next_offsets() {
        let items = [
            event("t", 1, 7, "a", Op::Create),
            rejected("t", 0, 2, Some("b")),
            event("t", 0, 3, "b", Op::Update),
            event("u", 0, 1, "a", Op::Create),
        ];
        let stored = FxHashMap::from_iter([((Arc::from("u"), 0), 2)]);
        let plan = plan::plan(&items, &stored, |_, _, _| false);
        let a = applied(&plan, &plan.progress_by_topic());
        assert_eq!((a.events, a.already_applied, a.dead_lettered), (1, 1, 2));
        let next: Vec<(&str, i32, i64)> = a
            .next_offsets
            .iter()
            .map(|(t, p, n)| (t.as_ref(), *p, *n))
            .collect();
        assert_eq!(next, [("t", 0, 4), ("t", 1, 8)]);
    }
}
