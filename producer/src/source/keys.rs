//! Index-only reads of a single integer key, for the delete scan: the number of keys in each of
//! a list of ranges, and the keys of a list of ranges.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row as PgRow;
use tunnel_shared::pg::{qualified, PgError};

use super::connection::Source;
use crate::error::SourceError;

impl Source {
    /// The number of keys in each of `ranges` (inclusive), in their order, from the
    /// primary-key index alone: one statement, each range its own index range scan with a
    /// plain `count(*)` (half the time of one `GROUP BY` that hashes every key).
    pub async fn count_ranges(&mut self, ranges: &[(i64, i64)]) -> Result<Vec<i64>, SourceError> {
        let Some(k) = self.integer_key() else {
            return Ok(Vec::new());
        };
        let (froms, tos): (Vec<i64>, Vec<i64>) = ranges.iter().copied().unzip();
        let rows = self
            .index_only(
                &format!(
                    "SELECT (SELECT count(*) FROM {} WHERE {k} BETWEEN r.lo AND r.hi)::int8
                       FROM unnest($1::int8[], $2::int8[]) WITH ORDINALITY AS r(lo, hi, i)
                      ORDER BY r.i",
                    qualified(&self.table.schema, &self.table.name)
                ),
                &[&froms, &tos],
                "counting keys",
            )
            .await?;
        if rows.len() != ranges.len() {
            return Err(SourceError::Value {
                table: self.table.qualified_name(),
                source: tunnel_shared::pgbinary::ValueError::Invalid {
                    column: "key counts".into(),
                    message: format!("{} counts for {} ranges", rows.len(), ranges.len()),
                },
            });
        }
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The keys in `ranges` (inclusive), from the primary-key index alone, in one statement.
    pub async fn keys_in_ranges(&mut self, ranges: &[(i64, i64)]) -> Result<Vec<i64>, SourceError> {
        let Some(k) = self.integer_key() else {
            return Ok(Vec::new());
        };
        let (froms, tos): (Vec<i64>, Vec<i64>) = ranges.iter().copied().unzip();
        let rows = self
            .index_only(
                &format!(
                    "SELECT x.k FROM unnest($1::int8[], $2::int8[]) AS r(lo, hi),
                            LATERAL (SELECT {k}::int8 AS k FROM {} WHERE {k} BETWEEN r.lo AND r.hi) x",
                    qualified(&self.table.schema, &self.table.name)
                ),
                &[&froms, &tos],
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
pub(crate) fn bucket_bounds(lo: i64, hi: i64, width: i64) -> Vec<(i64, i64, i64)> {
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
