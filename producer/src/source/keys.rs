//! Index-only reads of a single integer key, for the delete scan: aggregates per bucket of key
//! values, and the keys of a range.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row as PgRow;
use tunnel_shared::pg::{qualified, PgError};

use super::connection::Source;
use crate::error::SourceError;

impl Source {
    /// Per bucket of `width` key values in `[lo, hi]`: (bucket, count, sum, xor) of the keys,
    /// from the primary-key index alone.
    pub async fn key_buckets(
        &mut self,
        lo: i64,
        hi: i64,
        width: i64,
    ) -> Result<Vec<(i64, i64, i128, i64)>, SourceError> {
        let Some(k) = self.integer_key() else {
            return Ok(Vec::new());
        };
        // `k - lo` overflows int8 when the range is wider than 2^63: numeric then
        let bucket = if i128::from(hi) - i128::from(lo) <= i128::from(i64::MAX) {
            format!("(({k}::int8 - $1::int8) / $3::int8)::int8")
        } else {
            format!("div({k}::numeric - $1::int8::numeric, $3::int8::numeric)::int8")
        };
        let rows = self
            .index_only(
                &format!(
                    "SELECT {bucket}, count(*)::int8, sum({k}::int8)::text, bit_xor({k}::int8)
                       FROM {} WHERE {k} BETWEEN $1::int8 AND $2::int8 GROUP BY 1",
                    qualified(&self.table.schema, &self.table.name)
                ),
                &[&lo, &hi, &width],
                "aggregating keys",
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let sum: String = r.get(2);
                (r.get(0), r.get(1), sum.parse().unwrap_or(0), r.get(3))
            })
            .collect())
    }

    /// The keys in `[lo, hi]`, in order, from the primary-key index.
    pub async fn keys_between(&mut self, lo: i64, hi: i64) -> Result<Vec<i64>, SourceError> {
        let Some(k) = self.integer_key() else {
            return Ok(Vec::new());
        };
        let rows = self
            .index_only(
                &format!(
                    "SELECT {k}::int8 FROM {} WHERE {k} BETWEEN $1::int8 AND $2::int8 ORDER BY {k}",
                    qualified(&self.table.schema, &self.table.name)
                ),
                &[&lo, &hi],
                "listing keys",
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Runs one statement over the primary-key index alone: a full-range aggregate would
    /// otherwise be planned as a sequential read of the whole table. The settings hold for this
    /// one short read-only transaction only.
    async fn index_only(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<PgRow>, SourceError> {
        let tx = self
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(PgError::query(what))?;
        tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            .await
            .map_err(PgError::query(what))?;
        let rows = tx.query(sql, params).await.map_err(PgError::query(what))?;
        tx.commit().await.map_err(PgError::query(what))?;
        Ok(rows)
    }
}
