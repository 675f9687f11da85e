//! Rows whose current version was written since a transaction horizon, read by their `xmin`:
//! the cheap first step of the producer's reconciliation pass (on the source) and of
//! `tunnel-consumer verify --incremental` (on the source and on the target).
//!
//! Every insert or update writes a new row version stamped (`xmin`) with the id of the writing
//! transaction, whether or not it touches `updated_at`. A pass records the horizon of its
//! snapshot, `txid_snapshot_xmin`: every transaction that was not visible to the pass has an id
//! at or above it. The next pass lists the rows whose `xmin` is at or above that horizon, and
//! only those are compared with the other side. Rows below it were compared (or shipped)
//! already. Horizons are per server: a source's and a target's are never mixed.
//!
//! Transaction ids are 32 bits on disk and wrap around. The horizon is kept 64 bits wide
//! (epoch-extended, as the `txid_*` functions give it), and rows are tested with `age(xmin)`,
//! the distance from the server's current transaction id taken modulo 2^32 and read as a
//! signed 32-bit number: `0 <= age(xmin) <= age(horizon)` holds exactly for the ids from the
//! horizon to now, as long as the horizon is less than 2^31 ids old. An older horizon (a
//! producer stopped for two billion transactions), one ahead of the server (a restored or
//! replaced server) or far too many listed rows are answered with [`Versions::Unusable`], and
//! the caller compares the whole table instead. Frozen rows keep their original `xmin` on
//! PostgreSQL 9.4 and later, so freezing never makes a row look changed. A row version older
//! than 2^32 ids can come back into the window, which costs a needless comparison, never a
//! missed change; a change is missed only if the updating transaction's id equals, modulo
//! 2^32, that of the version it replaced, which the periodic whole-table comparison covers.

use tokio_postgres::Client;

use crate::catalog::TableInfo;
use crate::pg::PgError;
use crate::reconcile;

/// Ids per wraparound half: a horizon must stay closer than this to the server's next id.
const HALF_RANGE: i64 = 1 << 31;

/// Most rows written since a horizon that are listed and looked up one by one; beyond, the
/// whole table is compared.
pub const LISTING_CAP: usize = 200_000;

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

/// Lists the rows of `table` (the qualified, quoted name of table `t` or of its replica) whose
/// version was written at or after `since` (a horizon from an earlier pass on the same server),
/// with their hashes ([`reconcile::listing_select`]), in one read-only snapshot; more than
/// `cap` rows make the result [`Versions::Unusable`].
pub async fn changed_since(
    client: &mut Client,
    t: &TableInfo,
    table: &str,
    since: i64,
    cap: usize,
) -> Result<Versions, PgError> {
    let what = "listing rows written since a transaction horizon";
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
        crate::pg::canonical_set(true)
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
    if let Some(why) = unusable(since, next, threshold) {
        return Ok(Versions::Unusable(why));
    }
    let sql = format!(
        // the upper bound first: it fails for nearly every row, which then costs one `age` call
        "SELECT {} FROM {} WHERE age(xmin) <= $1 AND age(xmin) >= 0 LIMIT $2",
        reconcile::listing_select(t),
        table
    );
    let limit = i64::try_from(cap).unwrap_or(i64::MAX).saturating_add(1);
    let found = tx
        .query(&sql, &[&threshold, &limit])
        .await
        .map_err(PgError::query(what))?;
    tx.commit().await.map_err(PgError::query(what))?;
    if found.len() > cap {
        return Ok(Versions::Unusable(format!(
            "more than {cap} rows were written since the horizon {since}"
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

/// Why the horizon `since` cannot be used on a server whose next transaction id is `next`
/// (both epoch-extended), `threshold` being `age(since)` read there; `None` when it can.
fn unusable(since: i64, next: i64, threshold: i32) -> Option<String> {
    if since > next {
        return Some(format!(
            "the recorded horizon {since} is ahead of the server's next transaction id {next} (a restored or replaced server?)"
        ));
    }
    if next - since >= HALF_RANGE - 1 || threshold < 0 {
        return Some(format!(
            "the recorded horizon {since} is {} transactions old, too far for 32-bit ids",
            next - since
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `age()` as the server computes it in a transaction that has no id of its own: the
    /// distance from its next id, modulo 2^32, read as a signed 32-bit number.
    fn age(next: i64, xid: i64) -> i32 {
        (((next as u64) & 0xffff_ffff).wrapping_sub((xid as u64) & 0xffff_ffff) as u32) as i32
    }

    #[test]
    fn a_recent_horizon_is_usable_across_an_epoch_boundary() {
        // the horizon in epoch 0, the server already in epoch 1
        let since = (1 << 32) - 1_000;
        let next = (1 << 32) + 5_000;
        let threshold = age(next, since);
        assert_eq!(threshold, 6_000);
        assert_eq!(unusable(since, next, threshold), None);
        assert_eq!(
            unusable(next, next, age(next, next)),
            None,
            "nothing written since"
        );
    }

    #[test]
    fn a_horizon_ahead_of_the_server_is_refused() {
        let why = unusable(10_000, 9_000, age(9_000, 10_000)).unwrap_or_default();
        assert!(why.contains("ahead"), "{why}");
    }

    #[test]
    fn a_horizon_half_the_id_space_old_is_refused() {
        let since = 100;
        for next in [
            since + HALF_RANGE - 1,
            since + HALF_RANGE,
            since + (3 << 31),
        ] {
            let why = unusable(since, next, age(next, since)).unwrap_or_default();
            assert!(why.contains("too far"), "{next}: {why}");
        }
        // just inside the window
        let next = since + HALF_RANGE - 2;
        assert_eq!(unusable(since, next, age(next, since)), None);
    }

    #[test]
    fn a_wrapped_age_is_refused_even_when_the_distance_looks_small() {
        // a threshold read as negative means the server's ids wrapped past the horizon
        assert!(unusable(100, 200, -5).is_some());
    }
}
