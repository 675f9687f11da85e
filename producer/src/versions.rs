//! Rows whose current version was written since a transaction horizon, read from the source by
//! their `xmin`: the cheap first step of a reconciliation pass ([`crate::contents`]).
//!
//! Every insert or update writes a new row version stamped (`xmin`) with the id of the writing
//! transaction, whether or not it touches `updated_at`. A pass records the horizon of its
//! snapshot, `txid_snapshot_xmin`: every transaction that was not visible to the pass has an id
//! at or above it. The next pass lists the rows whose `xmin` is at or above that horizon, and
//! only those are compared with the target. Rows below it were compared (or shipped) already.
//!
//! Transaction ids are 32 bits on disk and wrap around. The horizon is kept 64 bits wide
//! (epoch-extended, as the `txid_*` functions give it), and rows are tested with `age(xmin)`,
//! the distance from the server's current transaction id taken modulo 2^32 and read as a
//! signed 32-bit number: `0 <= age(xmin) <= age(horizon)` holds exactly for the ids from the
//! horizon to now, as long as the horizon is less than 2^31 ids old. An older horizon (a
//! producer stopped for two billion transactions), one ahead of the server (a restored or
//! replaced source) or far too many listed rows are answered with [`Versions::Unusable`], and
//! the caller compares the whole table instead. Frozen rows keep their original `xmin` on
//! PostgreSQL 9.4 and later, so freezing never makes a row look changed. A row version older
//! than 2^32 ids can come back into the window, which costs a needless comparison, never a
//! missed change; a change is missed only if the updating transaction's id equals, modulo
//! 2^32, that of the version it replaced, which the periodic whole-table comparison covers.

use tokio_postgres::Client;
use tunnel_shared::catalog::TableInfo;
use tunnel_shared::pg::{qualified, PgError};
use tunnel_shared::reconcile;

/// Ids per wraparound half: a horizon must stay closer than this to the server's next id.
const HALF_RANGE: i64 = 1 << 31;

/// The transaction horizon of the session's snapshot now (64 bits, epoch-extended).
pub async fn horizon(client: &Client) -> Result<i64, PgError> {
    let row = client
        .query_one("SELECT txid_snapshot_xmin(txid_current_snapshot())", &[])
        .await
        .map_err(PgError::query("reading the transaction horizon"))?;
    Ok(row.get(0))
}

/// A row written since the horizon.
#[derive(Debug, Clone)]
pub struct Written {
    /// The key in text form and the row's hash ([`reconcile::listing_select`]).
    pub listed: (Vec<String>, i64),
}

/// What [`changed_since`] found.
#[derive(Debug)]
pub enum Versions {
    /// The rows written since the horizon, key (text form) and hash, and the horizon of the
    /// snapshot they were read in (the next pass starts there).
    Changed { rows: Vec<Written>, horizon: i64 },
    /// The horizon cannot be used (why, for the log): compare the whole table instead.
    Unusable(String),
}

/// Lists the rows of `t` whose version was written at or after `since` (a horizon from an
/// earlier pass), with their hashes ([`reconcile::listing_select`]), in one read-only snapshot;
/// more than `cap` rows make the result [`Versions::Unusable`].
pub async fn changed_since(
    client: &mut Client,
    t: &TableInfo,
    since: i64,
    cap: usize,
) -> Result<Versions, PgError> {
    let what = "listing rows written since the last reconciliation";
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(PgError::query(what))?;
    // the hashes must render text as the target's session does; JIT compilation costs more
    // than it saves on one filter
    tx.batch_execute(&format!(
        "{} SET LOCAL jit = off",
        tunnel_shared::pg::canonical_set(true)
    ))
    .await
    .map_err(PgError::query(what))?;
    // `age` reads the current id once per transaction: the threshold and the filter agree
    let bounds = tx
        .query_one(
            "SELECT txid_snapshot_xmin(txid_current_snapshot()),
                    txid_snapshot_xmax(txid_current_snapshot()),
                    age(($1::int8 % 4294967296)::text::xid)",
            &[&since],
        )
        .await
        .map_err(PgError::query(what))?;
    let (horizon, next, threshold): (i64, i64, i32) = (bounds.get(0), bounds.get(1), bounds.get(2));
    if since > next {
        return Ok(Versions::Unusable(format!(
            "the last reconciliation's horizon {since} is ahead of the server's next transaction id {next} (a replaced source?)"
        )));
    }
    if next - since >= HALF_RANGE - 1 || threshold < 0 {
        return Ok(Versions::Unusable(format!(
            "the last reconciliation's horizon {since} is {} transactions old, too far for 32-bit ids",
            next - since
        )));
    }
    let sql = format!(
        // the upper bound first: it fails for nearly every row, which then costs one `age` call
        "SELECT {} FROM {} WHERE age(xmin) <= $1 AND age(xmin) >= 0 LIMIT $2",
        reconcile::listing_select(t),
        qualified(&t.schema, &t.name)
    );
    let limit = i64::try_from(cap).unwrap_or(i64::MAX).saturating_add(1);
    let found = tx
        .query(&sql, &[&threshold, &limit])
        .await
        .map_err(PgError::query(what))?;
    tx.commit().await.map_err(PgError::query(what))?;
    if found.len() > cap {
        return Ok(Versions::Unusable(format!(
            "more than {cap} rows were written since the last reconciliation"
        )));
    }
    let n = t.key.len();
    let rows = found
        .iter()
        .map(|r| Written {
            listed: ((0..n).map(|i| r.get(i)).collect(), r.get(n)),
        })
        .collect();
    Ok(Versions::Changed { rows, horizon })
}
