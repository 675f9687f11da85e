//! Applying a batch of messages to the target in ONE transaction: the offsets of the batch's
//! partitions are locked and read first, then the parked keys; events at or past the
//! offsets are folded per key (the latest wins) and written in bulk; the rows the target refuses
//! are isolated by halving the set in savepoints, so that the good rows still commit. Messages
//! that cannot be applied (undecodable, breaking a rule, refused, or behind a parked key) are
//! written to the DLQ before the transaction, which stores the new offsets, commits. A batch, or
//! any part of the topic, applied again therefore changes nothing.

use std::collections::HashMap;

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;

use tokio_postgres::Client;
use tunnel_shared::fault::{Classify, ErrorClass};
use tunnel_shared::pg::PgError;

use crate::ddl;
use crate::decode::{DecodedMessage, WriterSchema};
use crate::dlq::{self, class, DlqWriter, Rejected};
use crate::park;
use crate::rows;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Dlq(#[from] dlq::writer::DlqError),
}

impl Classify for ApplyError {
    fn class(&self) -> ErrorClass {
        match self {
            ApplyError::Pg(e) => e.class(),
            ApplyError::Dlq(e) => e.class(),
        }
    }
}

pub use tunnel_shared::key::KeyText;

/// One consumed message, decoded, with the schemas it was written with and its original bytes
/// (for the DLQ).
pub struct Entry {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub message: DecodedMessage,
    pub key_schema: Arc<WriterSchema>,
    pub value_schema: Option<Arc<WriterSchema>>,
    pub key_bytes: Option<Vec<u8>>,
    pub value_bytes: Option<Vec<u8>>,
}

impl Entry {
    /// This entry on its way to the DLQ.
    pub fn rejected(&self, class: &'static str, reason: String) -> Rejected {
        Rejected {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key_bytes: self.key_bytes.clone(),
            value_bytes: self.value_bytes.clone(),
            key: Some(self.message.key.clone()),
            class,
            reason,
            rule: None,
            replay_of: None,
        }
    }
}

/// A consumed message: an event to apply, or one already known to go to the DLQ.
pub enum Item {
    Event(Entry),
    Rejected(Rejected),
}

impl Item {
    fn position(&self) -> (&Arc<str>, i32, i64) {
        match self {
            Item::Event(e) => (&e.topic, e.partition, e.offset),
            Item::Rejected(r) => (&r.topic, r.partition, r.offset),
        }
    }
}

/// Where a topic's rows go.
#[derive(Debug, Clone)]
pub struct TargetTable {
    pub schema: String,
    pub name: String,
}

#[derive(Debug, Default)]
pub struct Applied {
    /// Events applied (after skipping those already applied).
    pub events: usize,
    /// Events skipped because an earlier transaction had applied them.
    pub already_applied: usize,
    /// Messages written to the DLQ.
    pub dead_lettered: usize,
    /// The next offset of every partition of the batch.
    pub next_offsets: Vec<(Arc<str>, i32, i64)>,
}

/// Per partition: the next offset, the messages processed, and how many went to the DLQ.
#[derive(Default, Clone, Copy)]
struct Progress {
    next: i64,
    processed: i64,
    dead: i64,
}

/// Applies `items` (in offset order per partition) in one target transaction.
pub async fn apply_batch(
    client: &mut Client,
    bookkeeping_schema: &str,
    group: &str,
    targets: &HashMap<Arc<str>, TargetTable>,
    items: &[Item],
    dlq_writer: &mut DlqWriter,
    cache: &mut park::ParkedCache,
) -> Result<Applied, ApplyError> {
    let bk = bookkeeping_schema;
    let offsets_table = ddl::offsets_table(bk);
    let tx = client
        .transaction()
        .await
        .map_err(PgError::query("beginning the apply transaction"))?;
    // lock and read the offsets and parked keys of every partition in the batch
    let mut by_topic: FxHashMap<Arc<str>, Vec<i32>> = FxHashMap::default();
    for item in items {
        let (topic, partition, _) = item.position();
        let parts = by_topic.entry(topic.clone()).or_default();
        if !parts.contains(&partition) {
            parts.push(partition);
        }
    }
    let mut stored: FxHashMap<(Arc<str>, i32), i64> = FxHashMap::default();
    for (topic, parts) in &by_topic {
        tx.execute(
            &format!(
                "INSERT INTO {offsets_table} (topic, partition, next_offset, group_id)
                 SELECT $1, p, 0, $3 FROM unnest($2::int4[]) p ON CONFLICT DO NOTHING"
            ),
            &[&topic.as_ref(), parts, &group],
        )
        .await
        .map_err(PgError::query(
            "registering partitions in the offsets table",
        ))?;
        let rows = tx
            .query(
                &format!("SELECT partition, next_offset, parked_generation FROM {offsets_table} WHERE topic = $1 AND partition = ANY($2) FOR UPDATE"),
                &[&topic.as_ref(), parts],
            )
            .await
            .map_err(PgError::query("locking the offsets of the batch"))?;
        let mut locked: HashMap<i32, (i64, i64)> = HashMap::new();
        for r in rows {
            locked.insert(r.get(0), (r.get(1), r.get(2)));
            stored.insert((topic.clone(), r.get(0)), r.get(1));
        }
        cache.refresh(&tx, bk, topic, &locked).await?;
    }
    // fold: per table, the latest event of every key; parked keys and rejects to the DLQ
    let mut applied = Applied::default();
    let mut latest: FxHashMap<Arc<str>, FxHashMap<&KeyText, &Entry>> = FxHashMap::default();
    let mut progress: FxHashMap<(Arc<str>, i32), Progress> = FxHashMap::default();
    let mut dead: Vec<Rejected> = Vec::new();
    // keys parked by this batch, per partition
    let mut parked_here: FxHashMap<(Arc<str>, i32), FxHashSet<KeyText>> = FxHashMap::default();
    for item in items {
        let (topic, partition, offset) = item.position();
        let from = stored
            .get(&(topic.clone(), partition))
            .copied()
            .unwrap_or(0);
        if offset < from {
            applied.already_applied += 1;
            continue;
        }
        let p = progress.entry((topic.clone(), partition)).or_default();
        p.next = p.next.max(from).max(offset + 1);
        p.processed += 1;
        match item {
            Item::Rejected(r) => {
                p.dead += 1;
                // the key's earlier events in this batch still apply; its later ones are parked
                if let Some(k) = &r.key {
                    parked_here
                        .entry((topic.clone(), partition))
                        .or_default()
                        .insert(k.clone());
                }
                dead.push(r.clone());
            }
            Item::Event(e)
                if (!parked_here.is_empty()
                    && parked_here
                        .get(&(topic.clone(), partition))
                        .is_some_and(|keys| keys.contains(&e.message.key)))
                    || cache.contains(topic, partition, &e.message.key) =>
            {
                p.dead += 1;
                dead.push(e.rejected(
                    class::PARKED,
                    "an earlier event of this key is in the DLQ; replay it first".into(),
                ));
            }
            Item::Event(e) => {
                applied.events += 1;
                latest
                    .entry(topic.clone())
                    .or_default()
                    .insert(&e.message.key, e);
            }
        }
    }
    // on their way to the DLQ while the rows are written; acknowledged before the commit
    let mut pending = vec![dlq_writer.enqueue(&dead).await?];
    let known_dead = dead.len();
    for (topic, rows) in &latest {
        let Some(target) = targets.get(topic) else {
            continue;
        };
        let rows: Vec<(&KeyText, &Entry)> = rows.iter().map(|(k, e)| (*k, *e)).collect();
        for (e, reason) in write_isolating(&tx, target, rows).await? {
            applied.events -= 1;
            if let Some(p) = progress.get_mut(&(e.topic.clone(), e.partition)) {
                p.dead += 1;
            }
            dead.push(e.rejected(class::TARGET_REJECTED, reason));
        }
    }
    let mut park_rows: Vec<(Arc<str>, Vec<park::ToPark>)> = Vec::new();
    if !dead.is_empty() {
        pending.push(dlq_writer.enqueue(&dead[known_dead..]).await?);
        // in the DLQ (acknowledged) before the offsets move past them
        for p in pending {
            dlq::writer::confirm(p).await?;
        }
        let mut parks: FxHashMap<Arc<str>, FxHashMap<KeyText, (i32, i32)>> = FxHashMap::default();
        for r in &dead {
            if let Some(k) = &r.key {
                let e = parks
                    .entry(r.topic.clone())
                    .or_default()
                    .entry(k.clone())
                    .or_insert((r.partition, 0));
                e.1 += 1;
            }
        }
        park_rows = parks
            .into_iter()
            .map(|(topic, keys)| {
                let keys: Vec<park::ToPark> =
                    keys.into_iter().map(|(k, (p, n))| (p, k, n)).collect();
                (topic, keys)
            })
            .collect();
        applied.dead_lettered = dead.len();
    }
    let mut offset_rows = Vec::new();
    for (topic, parts) in &by_topic {
        let (mut ps, mut ns, mut cs, mut ds) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in parts {
            if let Some(pr) = progress.get(&(topic.clone(), *p)) {
                ps.push(*p);
                ns.push(pr.next);
                cs.push(pr.processed);
                ds.push(pr.dead);
                applied.next_offsets.push((topic.clone(), *p, pr.next));
            }
        }
        if !ps.is_empty() {
            offset_rows.push((topic.clone(), ps, ns, cs, ds));
        }
    }
    // the parked keys and the offsets are written in one round trip (pipelined)
    let offsets_sql = format!(
        "UPDATE {offsets_table} o SET next_offset = v.n, group_id = $6, applied_events = o.applied_events + v.c,
                dead_lettered = o.dead_lettered + v.d, updated_at = now()
           FROM unnest($2::int4[], $3::int8[], $4::int8[], $5::int8[]) AS v(p, n, c, d)
          WHERE o.topic = $1 AND o.partition = v.p"
    );
    let store_offsets =
        futures::future::try_join_all(offset_rows.iter().map(|(topic, ps, ns, cs, ds)| async {
            tx.execute(&offsets_sql, &[&topic.as_ref(), ps, ns, cs, ds, &group])
                .await
                .map_err(PgError::query("storing the offsets of the batch"))
        }));
    let store_parks = futures::future::try_join_all(
        park_rows
            .iter()
            .map(|(topic, keys)| park::park(&tx, bk, topic, keys)),
    );
    futures::future::try_join(store_offsets, store_parks).await?;
    tx.commit()
        .await
        .map_err(PgError::query("committing the apply transaction"))?;
    for r in &dead {
        if let Some(k) = &r.key {
            parked_here
                .entry((r.topic.clone(), r.partition))
                .or_default()
                .insert(k.clone());
        }
    }
    for (topic, partition, next) in &applied.next_offsets {
        let keys = parked_here
            .remove(&(topic.clone(), *partition))
            .unwrap_or_default();
        cache.committed(topic, *partition, *next, keys);
    }
    Ok(applied)
}

/// Whether the target refused a row for what it holds (SQLSTATE class 22, data exception:
/// overflow, value too long, bad format; class 23, integrity constraint violation), rather
/// than for a reason that concerns the whole batch.
pub fn is_row_rejection(e: &PgError) -> bool {
    e.sqlstate()
        .is_some_and(|s| s.starts_with("22") || s.starts_with("23"))
}

/// The target's own words for a refused row: its message and detail.
pub fn rejection_reason(e: &PgError) -> String {
    match e {
        PgError::Query { source, .. } => match source.as_db_error() {
            Some(db) => match db.detail() {
                Some(d) => format!("{} ({}): {d}", db.message(), db.code().code()),
                None => format!("{} ({})", db.message(), db.code().code()),
            },
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// Writes `rows`, each set in a savepoint; when the target refuses a row, the set is rolled
/// back and halved until the refused rows stand alone. Returns them with the target's reason.
/// A batch with no bad row costs one savepoint; k bad rows in n cost about 2k·log2(n) writes.
pub async fn write_isolating<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    target: &TargetTable,
    rows: Vec<(&'a KeyText, &'a Entry)>,
) -> Result<Vec<(&'a Entry, String)>, ApplyError> {
    let mut refused = Vec::new();
    let mut stack = vec![rows];
    while let Some(set) = stack.pop() {
        if set.is_empty() {
            continue;
        }
        tx.batch_execute("SAVEPOINT tunnel_rows")
            .await
            .map_err(PgError::query("setting a savepoint"))?;
        match rows::write(tx, target, &set).await {
            Ok(()) => {
                tx.batch_execute("RELEASE SAVEPOINT tunnel_rows")
                    .await
                    .map_err(PgError::query("releasing a savepoint"))?;
            }
            Err(e) if is_row_rejection(&e) => {
                tx.batch_execute(
                    "ROLLBACK TO SAVEPOINT tunnel_rows; RELEASE SAVEPOINT tunnel_rows",
                )
                .await
                .map_err(PgError::query("rolling back to a savepoint"))?;
                if set.len() == 1 {
                    refused.push((set[0].1, rejection_reason(&e)));
                } else {
                    let mut set = set;
                    let second = set.split_off(set.len() / 2);
                    stack.push(second);
                    stack.push(set);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(refused)
}
