//! Parked keys: a key with an event in the DLQ is parked, and its later events follow it into
//! the DLQ instead of reaching the target, so that the replica never shows a row the source
//! never had (a later update applied over a missing insert, an old event replayed over a newer
//! one). `pending` counts the key's DLQ entries not yet replayed; the key is free again when a
//! replay brings it to zero. Rows are locked by the transactions that read or change them, so a
//! replay and a consumer never disagree on a key.

use std::collections::HashSet;

use tokio_postgres::Transaction;
use tunnel_shared::pg::{qualified, PgError};

use crate::apply::KeyText;

pub fn table(bookkeeping_schema: &str) -> String {
    qualified(bookkeeping_schema, "parked_keys")
}

/// The parked keys of these partitions of `topic`, locked until the transaction ends.
pub async fn locked(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashSet<KeyText>, PgError> {
    let rows = tx
        .query(
            &format!(
                "SELECT key FROM {} WHERE topic = $1 AND partition = ANY($2) FOR UPDATE",
                table(bk)
            ),
            &[&topic, &partitions],
        )
        .await
        .map_err(PgError::query("reading the parked keys"))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Adds `count` pending DLQ entries to each key.
pub async fn park(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
    keys: &[(i32, KeyText, i32)],
) -> Result<(), PgError> {
    for (partition, key, count) in keys {
        tx.execute(
            &format!(
                "INSERT INTO {} AS p (topic, partition, key, pending) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (topic, key) DO UPDATE SET pending = p.pending + EXCLUDED.pending",
                table(bk)
            ),
            &[&topic, partition, key, count],
        )
        .await
        .map_err(PgError::query("parking a key"))?;
    }
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
