//! What the worker asks before passes: the table's write activity, the probe of running
//! transactions ([`crate::horizon`]), and estimates of the table's size for the scans.

use tunnel_shared::catalog::ColumnKind;
use tunnel_shared::pg::{qualified, PgError};

use super::connection::Source;
use super::statements::columns_sql;
use crate::error::SourceError;
use crate::horizon::Probe;

/// Write activity on the table since the server started (or its statistics were reset), and
/// the server's WAL position, which moves on every commit before the statistics do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Activity {
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub wal: String,
    /// The table's shape: its columns (number, name, type, nullability, default) and primary
    /// key, hashed; `None` when the table is gone (dropped or renamed). See [`super::statements::columns_sql`].
    pub columns: Option<String>,
}

impl Source {
    pub async fn activity(&self) -> Result<Activity, SourceError> {
        let row = self
            .client
            .query_one(
                &format!("SELECT COALESCE((SELECT n_tup_ins FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2), 0),
                        COALESCE((SELECT n_tup_upd FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2), 0),
                        COALESCE((SELECT n_tup_del FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2), 0),
                        (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
                        {}", columns_sql("$3")),
                &[&self.table.schema, &self.table.name, &qualified(&self.table.schema, &self.table.name)],
            )
            .await
            .map_err(PgError::query("reading the table's activity"))?;
        Ok(Activity {
            inserted: row.get(0),
            updated: row.get(1),
            deleted: row.get(2),
            wal: row.get::<_, Option<String>>(3).unwrap_or_default(),
            columns: row.get(4),
        })
    }

    /// The statement time and the transactions running on the server; see [`crate::horizon`].
    pub async fn probe(&self) -> Result<Probe, SourceError> {
        // a `timestamp without time zone` watermark is wall-clock time of the server's zone
        let clock = match self.table.watermark.map(|i| self.table.columns[i].kind) {
            Some(ColumnKind::TimestampTz) => "statement_timestamp()",
            _ => "statement_timestamp()::timestamp",
        };
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT (extract(epoch FROM {clock}) * 1000000)::int8,
                            ARRAY(SELECT virtualxid::text FROM pg_locks
                                   WHERE locktype = 'virtualxid' AND pid <> pg_backend_pid())"
                ),
                &[],
            )
            .await
            .map_err(PgError::query("probing running transactions"))?;
        let running: Vec<String> = row.get(1);
        Ok(Probe {
            at_micros: row.get(0),
            running: running.into_iter().collect(),
        })
    }

    /// The table's heap size in pages and the rows per page, when the server can scan page
    /// ranges (`ctid` range scans, PostgreSQL 14 and later); `None` otherwise.
    pub async fn heap_pages(&self) -> Result<Option<(i64, f64)>, SourceError> {
        let row = self
            .client
            .query_one(
                "SELECT current_setting('server_version_num')::int >= 140000,
                        pg_relation_size($1::text::regclass) / current_setting('block_size')::int8,
                        (SELECT CASE WHEN relpages > 0 THEN reltuples / relpages ELSE 0 END FROM pg_class WHERE oid = $1::text::regclass)::float8",
                &[&qualified(&self.table.schema, &self.table.name)],
            )
            .await
            .map_err(PgError::query("reading the table's size"))?;
        let (supported, pages, per_page): (bool, i64, f64) = (row.get(0), row.get(1), row.get(2));
        Ok(supported.then_some((pages, per_page)))
    }

    /// For a single integer primary key that is not too sparse: its lowest and highest value,
    /// so that scans can cut key ranges by value, without a query to find each range's end.
    /// `None` for other keys, sparse keys (under 5% of the span in use) or an empty table.
    pub async fn integer_key_span(&self) -> Result<Option<(i64, i64)>, SourceError> {
        let Some(name) = self.integer_key() else {
            return Ok(None);
        };
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT (SELECT min({name}) FROM {t})::int8, (SELECT max({name}) FROM {t})::int8,
                            (SELECT GREATEST(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::text::regclass)",
                    t = qualified(&self.table.schema, &self.table.name)
                ),
                &[&qualified(&self.table.schema, &self.table.name)],
            )
            .await
            .map_err(PgError::query("reading the key span"))?;
        let (min, max, estimate): (Option<i64>, Option<i64>, i64) =
            (row.get(0), row.get(1), row.get(2));
        Ok(match (min, max) {
            // in i128: random 63-bit keys span more than i64 holds
            (Some(lo), Some(hi))
                if (i128::from(hi) - i128::from(lo)) / 20 <= i128::from(estimate.max(1000)) =>
            {
                Some((lo, hi))
            }
            _ => None,
        })
    }

    /// The planner's estimate of the table's rows (`pg_class.reltuples`), for progress.
    pub async fn estimated_rows(&self) -> Result<i64, SourceError> {
        let row = self
            .client
            .query_one(
                "SELECT GREATEST(c.reltuples, 0)::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                &[&self.table.schema, &self.table.name],
            )
            .await
            .map_err(PgError::query("estimating the table's size"))?;
        Ok(row.get(0))
    }
}
