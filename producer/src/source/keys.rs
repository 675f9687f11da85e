//! Index-only reads of a single integer key, for the delete scan: aggregates per bucket of key
//! values, and the keys of a range.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row as PgRow;
use tunnel_shared::pg::{qualified, PgError};

use super::connection::Source;
use crate::error::SourceError;

impl Source {
    /// Per bucket of `width` key values in `[lo, hi]`: (bucket, count of the keys), from the
    /// primary-key index alone. Each bucket is its own index range scan with a plain count
    /// (half the time of one `GROUP BY` over the whole range, which hashes every key; a sum or
    /// XOR of the keys besides would cost a third more and tell the delete scan nothing it
    /// needs, see [`crate::deletescan`]). Empty buckets are left out.
    pub async fn key_buckets(
        &mut self,
        lo: i64,
        hi: i64,
        width: i64,
    ) -> Result<Vec<(i64, i64)>, SourceError> {
        let Some(k) = self.integer_key() else {
            return Ok(Vec::new());
        };
        let (ids, (froms, tos)): (Vec<i64>, (Vec<i64>, Vec<i64>)) = bucket_bounds(lo, hi, width)
            .into_iter()
            .map(|(b, from, to)| (b, (from, to)))
            .unzip();
        let rows = self
            .index_only(
                &format!(
                    "SELECT r.b, a.n
                       FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS r(b, lo, hi),
                            LATERAL (SELECT count(*)::int8 AS n
                                       FROM {} WHERE {k} BETWEEN r.lo AND r.hi) a
                      WHERE a.n > 0",
                    qualified(&self.table.schema, &self.table.name)
                ),
                &[&ids, &froms, &tos],
                "counting keys",
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
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

/// The buckets of `width` key values that cover `[lo, hi]`: (bucket, first key, last key), the
/// bucket numbered from `lo` as `(key - lo) / width`; computed wide, so that a span of the whole
/// `int8` range does not overflow.
fn bucket_bounds(lo: i64, hi: i64, width: i64) -> Vec<(i64, i64, i64)> {
    let (lo, hi, width) = (i128::from(lo), i128::from(hi), i128::from(width.max(1)));
    if hi < lo {
        return Vec::new();
    }
    let count = (hi - lo) / width + 1;
    (0..count)
        .map(|b| {
            let from = lo + b * width;
            let to = (from + width - 1).min(hi);
            // within [lo, hi], so within i64
            (
                i64::try_from(b).unwrap_or(i64::MAX),
                i64::try_from(from).unwrap_or(i64::MAX),
                i64::try_from(to).unwrap_or(i64::MAX),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::bucket_bounds;

    #[test]
    fn buckets_cover_the_range_exactly_and_are_numbered_from_its_start() {
        assert_eq!(
            bucket_bounds(1, 10, 4),
            vec![(0, 1, 4), (1, 5, 8), (2, 9, 10)]
        );
        assert_eq!(bucket_bounds(5, 5, 100), vec![(0, 5, 5)]);
        assert!(bucket_bounds(6, 5, 1).is_empty());
        // the whole int8 range in 64 buckets: no overflow, the last ends at the top
        let width = i64::try_from((i128::from(i64::MAX) - i128::from(i64::MIN)) / 64 + 1).unwrap();
        let b = bucket_bounds(i64::MIN, i64::MAX, width);
        assert_eq!(b.len(), 64);
        assert_eq!(b[0].1, i64::MIN);
        assert_eq!(b[63].2, i64::MAX);
        assert!(b.windows(2).all(|w| w[0].2 + 1 == w[1].1));
    }
}
