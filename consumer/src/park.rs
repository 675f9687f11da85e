//! Parked keys: a key with an event in the DLQ is parked, and its later events follow it into
//! the DLQ instead of reaching the target, so that the replica never shows a row the source
//! never had (a later update applied over a missing insert, an old event replayed over a newer
//! one). `pending` counts the key's DLQ entries not yet replayed; the key is free again when a
//! replay brings it to zero. Counts change under the row's lock, and a consumer and a replay never
//! disagree on a key (see [`parked_among`]).

use std::collections::HashSet;

use tokio_postgres::Transaction;
use tunnel_shared::pg::{qualified, PgError};

use crate::apply::KeyText;

pub fn table(bookkeeping_schema: &str) -> String {
    qualified(bookkeeping_schema, "parked_keys")
}

/// Above this many parked keys in a batch's partitions, only the batch's own keys are looked up.
const READ_ALL_UP_TO: usize = 5_000;

/// The parked keys among `keys` in these partitions of `topic`. No lock is needed: a key is
/// parked only by the consumer that owns its partition (serialized by the offsets lock), and a
/// replay that frees a key commits its rows first; an event that still sees the key parked
/// parks it again with itself as the pending entry.
pub async fn parked_among(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
    partitions: &[i32],
    keys: &[&KeyText],
) -> Result<HashSet<KeyText>, PgError> {
    parked_among_reading_up_to(tx, bk, topic, partitions, keys, READ_ALL_UP_TO).await
}

async fn parked_among_reading_up_to(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
    partitions: &[i32],
    keys: &[&KeyText],
    read_all_up_to: usize,
) -> Result<HashSet<KeyText>, PgError> {
    let t = table(bk);
    let rows = tx
        .query(
            &format!(
                "SELECT key FROM {t} WHERE topic = $1 AND partition = ANY($2) LIMIT {}",
                read_all_up_to + 1
            ),
            &[&topic, &partitions],
        )
        .await
        .map_err(PgError::query("reading the parked keys"))?;
    if rows.len() <= read_all_up_to {
        return Ok(rows.into_iter().map(|r| r.get(0)).collect());
    }
    let wanted = serde_json::to_string(keys).unwrap_or_else(|_| "[]".into());
    let rows = tx
        .query(
            &format!(
                "SELECT key FROM {t} WHERE topic = $1 AND key IN (
                     SELECT ARRAY(SELECT jsonb_array_elements_text(k)) FROM jsonb_array_elements($2::text::jsonb) k)"
            ),
            &[&topic, &wanted],
        )
        .await
        .map_err(PgError::query("reading the parked keys of a batch"))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Adds pending DLQ entries to keys: `(partition, key, count)`, in one statement.
pub async fn park(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
    keys: &[(i32, KeyText, i32)],
) -> Result<(), PgError> {
    if keys.is_empty() {
        return Ok(());
    }
    let rows = serde_json::to_string(keys).unwrap_or_else(|_| "[]".into());
    tx.execute(
        &format!(
            "INSERT INTO {} AS p (topic, partition, key, pending)
             SELECT $1, (e->>0)::int4, ARRAY(SELECT jsonb_array_elements_text(e->1)), (e->>2)::int4
               FROM jsonb_array_elements($2::text::jsonb) e
             ON CONFLICT (topic, key) DO UPDATE SET pending = p.pending + EXCLUDED.pending",
            table(bk)
        ),
        &[&topic, &rows],
    )
    .await
    .map_err(PgError::query("parking keys"))?;
    Ok(())
}

/// One of the key's DLQ entries was replayed: one fewer pending; free the key at zero.
pub async fn release_one(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
    key: &KeyText,
) -> Result<(), PgError> {
    let t = table(bk);
    tx.execute(
        &format!("UPDATE {t} SET pending = pending - 1 WHERE topic = $1 AND key = $2"),
        &[&topic, key],
    )
    .await
    .map_err(PgError::query("releasing a parked key"))?;
    tx.execute(
        &format!("DELETE FROM {t} WHERE topic = $1 AND key = $2 AND pending <= 0"),
        &[&topic, key],
    )
    .await
    .map_err(PgError::query("freeing a parked key"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tunnel_shared::testkit::Databases;

    fn key(parts: &[&str]) -> KeyText {
        parts.iter().map(|p| Some(p.to_string())).collect()
    }

    /// Against the stack's target: parking, both ways of reading parked keys, and release.
    #[tokio::test]
    async fn keys_park_read_back_and_free() {
        let dbs = Databases::create().await;
        let mut client = dbs.target().await;
        crate::ddl::ensure_bookkeeping(&mut client, "tunnel")
            .await
            .unwrap();
        let tx = client.transaction().await.unwrap();
        let (a, b, c) = (
            key(&["1", "x"]),
            key(&["2", "y,z"]),
            key(&["3", "\"quoted\""]),
        );
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
        let other = key(&["9", "q"]);
        let batch = [&a, &c, &other];
        for limit in [READ_ALL_UP_TO, 1] {
            let got = parked_among_reading_up_to(&tx, "tunnel", "t", &[0, 1], &batch, limit)
                .await
                .unwrap();
            let want: HashSet<KeyText> = if limit == 1 {
                [a.clone(), c.clone()].into()
            } else {
                [a.clone(), b.clone(), c.clone()].into()
            };
            assert_eq!(got, want, "read-all limit {limit}");
        }
        for _ in 0..2 {
            release_one(&tx, "tunnel", "t", &a).await.unwrap();
        }
        let still = parked_among(&tx, "tunnel", "t", &[0], &[&a]).await.unwrap();
        assert_eq!(still, [a.clone()].into(), "one of three entries left");
        release_one(&tx, "tunnel", "t", &a).await.unwrap();
        assert!(parked_among(&tx, "tunnel", "t", &[0], &[&a])
            .await
            .unwrap()
            .is_empty());
    }
}
