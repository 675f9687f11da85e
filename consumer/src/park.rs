//! Parked keys: a key with an event in the DLQ is parked, and its later events follow it into
//! the DLQ instead of reaching the target, so that the replica never shows a row the source
//! never had (a later update applied over a missing insert, an old event replayed over a newer
//! one). `pending` counts the key's DLQ entries not yet replayed; the key is free again when a
//! replay brings it to zero. A consumer keeps the parked keys of its partitions in memory
//! ([`ParkedCache`]), checked against the partitions' offsets rows on every batch.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use tokio_postgres::Transaction;
use tunnel_shared::key::{from_json, to_json, KeyText};
use tunnel_shared::pg::PgError;

use crate::ddl::parked_table;
use crate::model::ToPark;

/// What one consumer knows of the parked keys of the partitions it applies, so that a batch
/// does not read them again. An entry is current while the partition's offsets row shows what
/// this consumer last wrote there (no other consumer applied the partition since) and the same
/// `parked_generation` (a replay, which can free keys, bumps it first thing in its
/// transaction). The offsets row is locked before the cache is consulted, so neither can change
/// during the batch.
#[derive(Default)]
pub(crate) struct ParkedCache {
    parts: FxHashMap<(Arc<str>, i32), Cached>,
    /// Keys in all entries: with none, a lookup costs nothing.
    parked: usize,
}

struct Cached {
    next_offset: i64,
    generation: i64,
    keys: FxHashSet<KeyText>,
}

impl ParkedCache {
    /// Brings the entries of these partitions of `topic` up to date; `stored` holds each
    /// partition's `(next_offset, parked_generation)` as just locked.
    pub(crate) async fn refresh(
        &mut self,
        tx: &Transaction<'_>,
        bk: &str,
        topic: &Arc<str>,
        stored: &HashMap<i32, (i64, i64)>,
    ) -> Result<(), PgError> {
        let stale: Vec<i32> = stored
            .iter()
            .filter(|(p, (next, generation))| {
                self.parts
                    .get(&(topic.clone(), **p))
                    .is_none_or(|c| c.next_offset != *next || c.generation != *generation)
            })
            .map(|(p, _)| *p)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let rows = tx
            .query(
                &format!(
                    "SELECT partition, key FROM {} WHERE topic = $1 AND partition = ANY($2)",
                    parked_table(bk)
                ),
                &[&topic.as_ref(), &stale],
            )
            .await
            .map_err(PgError::query("reading the parked keys"))?;
        for p in &stale {
            let (next_offset, generation) = stored[p];
            self.parts.insert(
                (topic.clone(), *p),
                Cached {
                    next_offset,
                    generation,
                    keys: FxHashSet::default(),
                },
            );
        }
        for r in rows {
            let (p, key) = partition_and_key(&r).map_err(PgError::query(
                "reading the parked keys: a column does not have the type the consumer created it with (changed by hand?)",
            ))?;
            if let (Some(c), Some(k)) = (self.parts.get_mut(&(topic.clone(), p)), from_json(&key)) {
                c.keys.insert(k);
            }
        }
        self.parked = self.parts.values().map(|c| c.keys.len()).sum();
        Ok(())
    }

    pub(crate) fn contains(&self, topic: &Arc<str>, partition: i32, key: &KeyText) -> bool {
        self.parked > 0
            && self
                .parts
                .get(&(topic.clone(), partition))
                .is_some_and(|c| c.keys.contains(key))
    }

    /// After a commit: the partition's new offset, and the keys the batch parked.
    pub(crate) fn committed(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
        parked: impl IntoIterator<Item = KeyText>,
    ) {
        if let Some(c) = self.parts.get_mut(&(topic.clone(), partition)) {
            c.next_offset = next_offset;
            let before = c.keys.len();
            c.keys.extend(parked);
            self.parked += c.keys.len() - before;
        }
    }
}

/// Adds pending DLQ entries to keys, in one statement.
pub(crate) async fn park(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
    keys: &[ToPark],
) -> Result<(), PgError> {
    if keys.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = keys.iter().map(|k| k.0).collect();
    let texts: Vec<String> = keys.iter().map(|k| to_json(&k.1)).collect();
    let counts: Vec<i32> = keys.iter().map(|k| k.2).collect();
    tx.execute(
        &format!(
            "INSERT INTO {} AS p (topic, partition, key, pending)
             SELECT $1, v.p, v.k, v.n FROM unnest($2::int4[], $3::text[], $4::int4[]) AS v(p, k, n)
             ON CONFLICT (topic, key) DO UPDATE SET pending = p.pending + EXCLUDED.pending",
            parked_table(bk)
        ),
        &[&topic, &partitions, &texts, &counts],
    )
    .await
    .map_err(PgError::query("parking keys"))?;
    Ok(())
}

/// One of the key's DLQ entries was replayed: one fewer pending; free the key at zero.
pub(crate) async fn release_one(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
    key: &KeyText,
) -> Result<(), PgError> {
    let t = parked_table(bk);
    let key = to_json(key);
    tx.execute(
        &format!("UPDATE {t} SET pending = pending - 1 WHERE topic = $1 AND key = $2"),
        &[&topic, &key],
    )
    .await
    .map_err(PgError::query("releasing a parked key"))?;
    tx.execute(
        &format!("DELETE FROM {t} WHERE topic = $1 AND key = $2 AND pending <= 0"),
        &[&topic, &key],
    )
    .await
    .map_err(PgError::query("freeing a parked key"))?;
    Ok(())
}

/// A parked key's row: its partition and its key (JSON).
fn partition_and_key(r: &tokio_postgres::Row) -> Result<(i32, String), tokio_postgres::Error> {
    Ok((r.try_get(0)?, r.try_get(1)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tunnel_shared::testkit::Databases;

    fn key(parts: &[&str]) -> KeyText {
        parts.iter().map(|p| Some(p.to_string())).collect()
    }

    async fn parked(
        cache: &mut ParkedCache,
        tx: &Transaction<'_>,
        stored: &HashMap<i32, (i64, i64)>,
        k: &KeyText,
    ) -> bool {
        let topic: Arc<str> = Arc::from("t");
        cache.refresh(tx, "tunnel", &topic, stored).await.unwrap();
        stored.keys().any(|p| cache.contains(&topic, *p, k))
    }

    /// Against the stack's target: parking, the cache and when it reads again, and release.
    #[tokio::test]
    async fn keys_park_the_cache_follows_and_a_replay_frees_them() {
        let dbs = Databases::create().await;
        let mut client = dbs.target().await;
        crate::ddl::ensure_bookkeeping(&mut client, "tunnel")
            .await
            .unwrap();
        let tx = client.transaction().await.unwrap();
        let (a, b, c) = (key(&["1", "x"]), key(&["2", "y,z"]), key(&["3", "\"q\""]));
        park(
            &tx,
            "tunnel",
            "t",
            &[(0, a.clone(), 2), (1, b.clone(), 1), (1, c.clone(), 1)],
        )
        .await
        .unwrap();
        park(&tx, "tunnel", "t", &[(0, a.clone(), 1)])
            .await
            .unwrap();
        let mut cache = ParkedCache::default();
        let at = |next: i64, generation: i64| {
            HashMap::from([(0, (next, generation)), (1, (next, generation))])
        };
        for k in [&a, &b, &c] {
            assert!(parked(&mut cache, &tx, &at(10, 0), k).await, "{k:?}");
        }
        assert!(!parked(&mut cache, &tx, &at(10, 0), &key(&["9", "q"])).await);
        // a replay frees a (three entries) and bumps the generation: the cache reads again
        for _ in 0..2 {
            release_one(&tx, "tunnel", "t", &a).await.unwrap();
        }
        assert!(
            parked(&mut cache, &tx, &at(10, 1), &a).await,
            "one entry left"
        );
        release_one(&tx, "tunnel", "t", &a).await.unwrap();
        // same offsets and generation: the cache answers alone (and is stale by design here)
        assert!(parked(&mut cache, &tx, &at(10, 1), &a).await);
        // another consumer applied the partitions since: read again
        assert!(!parked(&mut cache, &tx, &at(12, 1), &a).await);
        assert!(parked(&mut cache, &tx, &at(12, 1), &b).await);
        // what a committed batch parked is known without reading
        let topic: Arc<str> = Arc::from("t");
        cache.committed(&topic, 0, 15, [key(&["7", "n"])]);
        assert!(
            parked(
                &mut cache,
                &tx,
                &HashMap::from([(0, (15, 1))]),
                &key(&["7", "n"])
            )
            .await
        );
    }
}
