//! The offsets table in the target: per partition, the next offset to apply, written in the
//! transaction that applies the rows before it, and the `parked_generation` a replay bumps so
//! that the consumers read the parked keys again.

use std::sync::Arc;

use tokio_postgres::{Client, Transaction};
use tunnel_shared::pg::PgError;

use crate::ddl::offsets_table;
use crate::model::Progress;

/// A locked offsets row: the partition, its next offset and its `parked_generation`.
pub(crate) type Locked = (i32, i64, i64);

/// Registers the partitions of `topic` (at offset 0 when new) and locks their rows until the
/// transaction ends.
pub(crate) async fn lock(
    tx: &Transaction<'_>,
    bk: &str,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<Locked>, PgError> {
    let table = offsets_table(bk);
    tx.execute(
        &format!(
            "INSERT INTO {table} (topic, partition, next_offset, group_id)
             SELECT $1, p, 0, $3 FROM unnest($2::int4[]) p ON CONFLICT DO NOTHING"
        ),
        &[&topic, &partitions, &group],
    )
    .await
    .map_err(PgError::query(
        "registering partitions in the offsets table",
    ))?;
    let rows = tx
        .query(
            &format!("SELECT partition, next_offset, parked_generation FROM {table} WHERE topic = $1 AND partition = ANY($2) FOR UPDATE"),
            &[&topic, &partitions],
        )
        .await
        .map_err(PgError::query("locking the offsets of the batch"))?;
    let unexpected = || {
        PgError::query(format!("reading {table}: a column does not have the type the consumer created it with (changed by hand?)"))
    };
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(unexpected())
}

/// Stores what a batch did to these partitions of `topic`: their next offsets, and the events
/// applied and dead-lettered added to their counts.
pub(crate) async fn store(
    tx: &Transaction<'_>,
    bk: &str,
    group: &str,
    topic: &Arc<str>,
    partitions: &[(i32, Progress)],
) -> Result<u64, PgError> {
    let ps: Vec<i32> = partitions.iter().map(|(p, _)| *p).collect();
    let ns: Vec<i64> = partitions.iter().map(|(_, pr)| pr.next).collect();
    let cs: Vec<i64> = partitions.iter().map(|(_, pr)| pr.processed).collect();
    let ds: Vec<i64> = partitions.iter().map(|(_, pr)| pr.dead).collect();
    tx.execute(
        &format!(
            "UPDATE {} o SET next_offset = v.n, group_id = $6, applied_events = o.applied_events + v.c,
                    dead_lettered = o.dead_lettered + v.d, updated_at = now()
               FROM unnest($2::int4[], $3::int8[], $4::int8[], $5::int8[]) AS v(p, n, c, d)
              WHERE o.topic = $1 AND o.partition = v.p",
            offsets_table(bk)
        ),
        &[&topic.as_ref(), &ps, &ns, &cs, &ds, &group],
    )
    .await
    .map_err(PgError::query("storing the offsets of the batch"))
}

/// The next offset the target needs from a partition (0 for one never applied).
pub(crate) async fn stored(
    client: &Client,
    bk: &str,
    topic: &str,
    partition: i32,
) -> Result<i64, PgError> {
    let rows = client
        .query(
            &format!(
                "SELECT next_offset FROM {} WHERE topic = $1 AND partition = $2",
                offsets_table(bk)
            ),
            &[&topic, &partition],
        )
        .await
        .map_err(PgError::query("reading stored offsets"))?;
    match rows.first() {
        Some(r) => r.try_get(0).map_err(PgError::query(format!(
            "reading {}: next_offset is not the bigint the consumer created (changed by hand?)",
            offsets_table(bk)
        ))),
        None => Ok(0),
    }
}

/// Tells the consumers of `topic` that a replay may free parked keys: they read them again
/// when they next lock the partitions' rows.
pub(crate) async fn announce_replay(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
) -> Result<(), PgError> {
    tx.execute(
        &format!(
            "UPDATE {} SET parked_generation = parked_generation + 1 WHERE topic = $1",
            offsets_table(bk)
        ),
        &[&topic],
    )
    .await
    .map_err(PgError::query("announcing the replay to the consumers"))?;
    Ok(())
}
