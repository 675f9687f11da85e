//! Rows listed from the source, looked up by key in the target: the last step of a comparison
//! once the differing ranges are small enough.

use std::collections::HashMap;
use std::time::Instant;

use tokio_postgres::types::ToSql;

use super::{listing_select, Differences, Side};
use crate::catalog::TableInfo;
use crate::pg::PgError;

/// Keys per statement when listed rows are looked up in the target.
const LOOKUP_CHUNK: usize = 5_000;

/// Compares rows listed from the source (key in text form and the row's hash, selected with
/// [`listing_select`] in a session with [`crate::pg::CANONICAL_TEXT`]) with the rows of the same keys in
/// the target, looked up by key: those the target lacks are `missing`, those whose hash
/// differs `differing`. Nothing else of the target is read.
pub async fn compare_listed(
    t: &TableInfo,
    target: &Side<'_>,
    listed: &[(Vec<String>, i64)],
) -> Result<Differences, PgError> {
    let started = Instant::now();
    let mut out = Differences::default();
    for chunk in listed.chunks(LOOKUP_CHUNK) {
        let keys: Vec<&Vec<String>> = chunk.iter().map(|(k, _)| k).collect();
        let there = hashes_by_keys(t, target, &keys).await?;
        out.queries += 1;
        out.rows_compared += (chunk.len() + there.len()) as u64;
        for (k, h) in chunk {
            match there.get(k) {
                None => out.missing.push(k.clone()),
                Some(h2) if h2 != h => out.differing.push(k.clone()),
                Some(_) => {}
            }
        }
    }
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(out)
}

/// The hash of each row of `keys` (one statement) that `side` has.
async fn hashes_by_keys(
    t: &TableInfo,
    side: &Side<'_>,
    keys: &[&Vec<String>],
) -> Result<HashMap<Vec<String>, i64>, PgError> {
    let n = t.key.len();
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        listing_select(t),
        side.table,
        t.key_in_arrays()
    );
    let columns: Vec<Vec<&str>> = (0..n)
        .map(|i| keys.iter().map(|k| k[i].as_str()).collect())
        .collect();
    let params: Vec<&(dyn ToSql + Sync)> =
        columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    let rows = side
        .client
        .query(&sql, &params)
        .await
        .map_err(PgError::query("looking up listed keys"))?;
    Ok(rows
        .iter()
        .map(|r| ((0..n).map(|i| r.get(i)).collect(), r.get(n)))
        .collect())
}
