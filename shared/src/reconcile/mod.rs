//! Comparing a source table with its replica the way data-diff tools do: per key range a count
//! and an XOR of row hashes, computed by the same SQL on both databases; only the ranges that
//! differ are cut further, down to ranges small enough to list (key, hash) and compare row by
//! row. Unchanged ranges cost one aggregate query per side and ship nothing.
//!
//! The producer's reconciliation pass and `tunnel-consumer verify` both run this. Nothing here
//! writes to either database.

use std::collections::HashMap;
use std::time::Instant;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::catalog::TableInfo;
use crate::pg::{quote_ident, PgError};

mod hash;
mod listed;

pub use hash::{key_hash_expr, listing_select, row_hash_expr};
pub use listed::compare_listed;

/// How far to cut, and what is compared.
#[derive(Debug, Clone, Copy)]
pub struct DiffOptions {
    /// Buckets per level of an integer key's range.
    pub fanout: i64,
    /// A range of at most this many key values (integer keys) or rows (other keys) is listed
    /// row by row.
    pub leaf_rows: i64,
    /// An integer key's span is first cut into this many ranges, compared one after another:
    /// 1 (one aggregate over the whole table at the top) unless progress is to be reported
    /// along the way.
    pub top_ranges: i64,
    /// Compare the keys alone (a hash of the key instead of the row's): finds the keys only
    /// on one side, never a differing row, without reading or hashing the other columns.
    pub keys_only: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            fanout: 64,
            leaf_rows: 2_000,
            top_ranges: 1,
            keys_only: false,
        }
    }
}

/// How far a comparison has got, reported after each range compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// The share of an integer key's span settled (0 to 1); `None` for other keys.
    pub settled: Option<f64>,
    /// Rows the two sides' queries went over so far, together.
    pub rows_compared: u64,
}

/// What is told each [`Tick`].
pub type OnTick<'a> = &'a mut (dyn FnMut(Tick) + Send);

/// Keys (in PostgreSQL's text form) that differ between the two tables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Differences {
    /// In the source, not in the target.
    pub missing: Vec<Vec<String>>,
    /// In the target, not in the source.
    pub extra: Vec<Vec<String>>,
    /// In both, with different contents.
    pub differing: Vec<Vec<String>>,
    /// Aggregate and listing queries run, per side.
    pub queries: u64,
    /// Rows the two sides' queries went over, together.
    pub rows_compared: u64,
    pub elapsed_ms: u64,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }
}

/// One side of the comparison: a connection and the table's qualified, quoted name there.
pub struct Side<'a> {
    pub client: &'a Client,
    pub table: String,
}

struct Run<'a, 'p> {
    t: &'a TableInfo,
    hash: String,
    source: Side<'a>,
    target: Side<'a>,
    opts: DiffOptions,
    out: Differences,
    on_tick: Option<OnTick<'p>>,
    /// Of an integer key's span: its width, and how much of it is settled.
    span: (f64, f64),
}

/// Compares `source` with `target`, both holding table `t`'s columns.
pub async fn diff(
    t: &TableInfo,
    source: Side<'_>,
    target: Side<'_>,
    opts: DiffOptions,
) -> Result<Differences, PgError> {
    diff_reporting(t, source, target, opts, None).await
}

/// [`diff`], telling `on_tick` how far it has got after each range compared.
pub async fn diff_reporting<'a>(
    t: &'a TableInfo,
    source: Side<'a>,
    target: Side<'a>,
    opts: DiffOptions,
    on_tick: Option<OnTick<'_>>,
) -> Result<Differences, PgError> {
    let started = Instant::now();
    let mut run = Run {
        t,
        hash: if opts.keys_only {
            key_hash_expr(t)
        } else {
            row_hash_expr(t)
        },
        source,
        target,
        opts,
        out: Differences::default(),
        on_tick,
        span: (0.0, 0.0),
    };
    // keys alone usually match: one aggregate over each whole table (no grouping, which can
    // run in parallel) settles that before any range is cut
    let settled = opts.keys_only && run.whole_tables_match().await?;
    match t.integer_key().map(|c| quote_ident(&c.name)) {
        _ if settled => run.tick(Some(1.0)),
        Some(k) => run.by_value(&k).await?,
        None => run.by_rows().await?,
    }
    let mut out = run.out;
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    for v in [&mut out.missing, &mut out.extra, &mut out.differing] {
        v.sort();
    }
    Ok(out)
}

type Buckets = HashMap<i64, (i64, i64)>;

/// `lo..=hi` cut into `n` (at least 1) ranges of about equal width, in order.
fn top_ranges(lo: i64, hi: i64, n: i64) -> Vec<(i64, i64)> {
    let span = i128::from(hi) - i128::from(lo) + 1;
    let n = i128::from(n.max(1)).min(span);
    let width = (span + n - 1) / n;
    let mut out = Vec::new();
    let mut from = i128::from(lo);
    while from <= i128::from(hi) {
        let to = (from + width - 1).min(i128::from(hi));
        // both within lo..=hi, so within i64
        out.push((from as i64, to as i64));
        from = to + 1;
    }
    out
}

/// Buckets wider than this many key values are cut further even when most of them differ.
const DENSE_LIST_MAX: i64 = 500_000;

/// Runs the same statement on both sides at the same time (they are different servers).
async fn query_both(
    source: &Side<'_>,
    target: &Side<'_>,
    sql: &str,
    params: &[String],
    what: &str,
) -> Result<(Vec<tokio_postgres::Row>, Vec<tokio_postgres::Row>), PgError> {
    let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
    let (a_sql, b_sql) = (
        sql.replace("{}", &source.table),
        sql.replace("{}", &target.table),
    );
    tokio::try_join!(
        source.client.query(&a_sql, &p),
        target.client.query(&b_sql, &p)
    )
    .map_err(PgError::query(what))
}

impl Run<'_, '_> {
    async fn by_value(&mut self, k: &str) -> Result<(), PgError> {
        let span = format!("SELECT min({k})::int8, max({k})::int8 FROM {{}}");
        let mut lo = i64::MAX;
        let mut hi = i64::MIN;
        for side in [&self.source, &self.target] {
            let r = side
                .client
                .query_one(&span.replace("{}", &side.table), &[])
                .await
                .map_err(PgError::query("reading the key span"))?;
            if let (Some(a), Some(b)) = (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)) {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if lo > hi {
            return Ok(()); // both empty
        }
        self.span = ((i128::from(hi) - i128::from(lo) + 1) as f64, 0.0);
        // the top ranges in reverse: the first is popped first
        let mut stack = top_ranges(lo, hi, self.opts.top_ranges);
        stack.reverse();
        while let Some((lo, hi)) = stack.pop() {
            // keys may span more than i64 holds (random 63-bit ids of both signs): widths are
            // worked out in i128, and the bucket of a key in numeric when `k - lo` could overflow
            let span = i128::from(hi) - i128::from(lo) + 1;
            let range = format!("{k} BETWEEN '{lo}'::int8 AND '{hi}'::int8");
            if span <= i128::from(self.opts.leaf_rows) {
                self.compare_rows(&range, &[]).await?;
                self.settle(span);
                continue;
            }
            let fanout = i128::from(self.opts.fanout);
            let width = i64::try_from((span + fanout - 1) / fanout).unwrap_or(i64::MAX);
            let bucket = if span <= i128::from(i64::MAX) {
                format!("(({k}::int8 - '{lo}'::int8) / {width})::int8")
            } else {
                format!("div({k}::numeric - '{lo}'::int8, {width})::int8")
            };
            let sql = format!(
                "SELECT {bucket}, count(*)::int8, bit_xor({h}) FROM {{}} WHERE {range} GROUP BY 1",
                h = self.hash
            );
            let (a, b) = self.buckets(&sql).await?;
            let mut differing = Vec::new();
            for i in 0..self.opts.fanout {
                if a.get(&i) != b.get(&i) {
                    let from = i128::from(lo) + i128::from(i) * i128::from(width);
                    let Ok(from) = i64::try_from(from) else { break };
                    if from > hi {
                        break;
                    }
                    differing.push((from, from.saturating_add(width - 1).min(hi)));
                }
            }
            // differences everywhere: cutting further would read the same rows again at every
            // level, so the buckets are listed now (when they are not too large to hold)
            let dense = differing.len() * 2 > self.opts.fanout as usize && width <= DENSE_LIST_MAX;
            let cut: i128 = differing
                .iter()
                .map(|(a, b)| i128::from(*b) - i128::from(*a) + 1)
                .sum();
            self.settle(span - cut);
            for (from, to) in differing {
                if dense {
                    self.compare_rows(&format!("{k} BETWEEN '{from}'::int8 AND '{to}'::int8"), &[])
                        .await?;
                    self.settle(i128::from(to) - i128::from(from) + 1);
                } else {
                    stack.push((from, to));
                }
            }
        }
        Ok(())
    }

    /// Whether count and hash XOR of the whole tables are the same on both sides.
    async fn whole_tables_match(&mut self) -> Result<bool, PgError> {
        let sql = format!("SELECT count(*)::int8, bit_xor({}) FROM {{}}", self.hash);
        let (a, b) = self.aggregate(&sql, &[]).await?;
        Ok(a == b)
    }

    /// `width` more key values of an integer key's span are settled.
    fn settle(&mut self, width: i128) {
        self.span.1 += width as f64;
        let settled = Some((self.span.1 / self.span.0.max(1.0)).clamp(0.0, 1.0));
        self.tick(settled);
    }

    fn tick(&mut self, settled: Option<f64>) {
        let rows_compared = self.out.rows_compared;
        if let Some(f) = self.on_tick.as_mut() {
            f(Tick {
                settled,
                rows_compared,
            });
        }
    }

    /// Per bucket (count, xor) on both sides, queried at the same time.
    async fn buckets(&mut self, sql: &str) -> Result<(Buckets, Buckets), PgError> {
        let (a, b) = query_both(
            &self.source,
            &self.target,
            sql,
            &[],
            "aggregating a key range",
        )
        .await?;
        self.out.queries += 2;
        let mut to_map = |rows: Vec<tokio_postgres::Row>| -> Buckets {
            rows.iter()
                .map(|r| {
                    let count: i64 = r.get(1);
                    self.out.rows_compared += count as u64;
                    (r.get(0), (count, r.get::<_, Option<i64>>(2).unwrap_or(0)))
                })
                .collect()
        };
        let a = to_map(a);
        let b = to_map(b);
        Ok((a, b))
    }

    /// Other keys: ranges of about `leaf_rows` rows cut on the source's key order (the same
    /// collation on both sides), one aggregate per side per range.
    async fn by_rows(&mut self) -> Result<(), PgError> {
        let t = self.t;
        let keys_text = t.key_as_text(None);
        let mut after: Option<Vec<String>> = None;
        loop {
            let mut params: Vec<String> = Vec::new();
            let mut cond_after = String::from("true");
            if let Some(a) = &after {
                cond_after = format!("{} > {}", t.key_tuple(), t.key_subquery(1));
                params.extend(a.iter().cloned());
            }
            let next_sql = format!(
                "SELECT {} FROM {} WHERE {cond_after} ORDER BY {} OFFSET {} LIMIT 1",
                keys_text,
                self.source.table,
                t.key_order(),
                self.opts.leaf_rows - 1
            );
            let p: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
            let upto: Option<Vec<String>> = self
                .source
                .client
                .query_opt(&next_sql, &p)
                .await
                .map_err(PgError::query("finding a key range"))?
                .map(|r| (0..t.key.len()).map(|i| r.get(i)).collect());
            let mut cond = cond_after.clone();
            if let Some(u) = &upto {
                cond.push_str(&format!(
                    " AND {} <= {}",
                    t.key_tuple(),
                    t.key_subquery(params.len() + 1)
                ));
                params.extend(u.iter().cloned());
            }
            let agg = format!(
                "SELECT count(*)::int8, bit_xor({}) FROM {{}} WHERE {cond}",
                self.hash
            );
            let (a, b) = self.aggregate(&agg, &params).await?;
            if a != b {
                self.compare_rows(&cond, &params).await?;
            }
            self.tick(None);
            match upto {
                Some(u) => after = Some(u),
                None => return Ok(()),
            }
        }
    }

    async fn aggregate(
        &mut self,
        sql: &str,
        params: &[String],
    ) -> Result<((i64, i64), (i64, i64)), PgError> {
        let (a, b) = query_both(
            &self.source,
            &self.target,
            sql,
            params,
            "aggregating a key range",
        )
        .await?;
        self.out.queries += 2;
        let mut one = |rows: Vec<tokio_postgres::Row>| -> (i64, i64) {
            let Some(r) = rows.first() else { return (0, 0) };
            let count: i64 = r.get(0);
            self.out.rows_compared += count as u64;
            (count, r.get::<_, Option<i64>>(1).unwrap_or(0))
        };
        let a = one(a);
        let b = one(b);
        Ok((a, b))
    }

    /// Lists (key, hash) of a range on both sides and records the differences.
    async fn compare_rows(&mut self, cond: &str, params: &[String]) -> Result<(), PgError> {
        let t = self.t;
        let sql = format!(
            "SELECT {}, {} FROM {{}} WHERE {cond}",
            t.key_as_text(None),
            self.hash
        );
        let n = t.key.len();
        let (a, b) = query_both(
            &self.source,
            &self.target,
            &sql,
            params,
            "listing a key range",
        )
        .await?;
        self.out.queries += 2;
        self.out.rows_compared += (a.len() + b.len()) as u64;
        let index = |rows: Vec<tokio_postgres::Row>| -> HashMap<Vec<String>, i64> {
            rows.iter()
                .map(|r| ((0..n).map(|i| r.get(i)).collect(), r.get(n)))
                .collect()
        };
        let sides = [index(a), index(b)];
        let (src, tgt) = (&sides[0], &sides[1]);
        for (k, h) in src {
            match tgt.get(k) {
                None => self.out.missing.push(k.clone()),
                Some(h2) if h2 != h => self.out.differing.push(k.clone()),
                Some(_) => {}
            }
        }
        for k in tgt.keys() {
            if !src.contains_key(k) {
                self.out.extra.push(k.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_ranges_cover_the_span_once_in_order() {
        assert_eq!(top_ranges(1, 10, 1), vec![(1, 10)]);
        assert_eq!(top_ranges(1, 10, 3), vec![(1, 4), (5, 8), (9, 10)]);
        assert_eq!(top_ranges(5, 6, 10), vec![(5, 5), (6, 6)]);
        let r = top_ranges(i64::MIN, i64::MAX, 7);
        assert_eq!(r.len(), 7);
        assert_eq!(r[0].0, i64::MIN);
        assert_eq!(r[6].1, i64::MAX);
        for w in r.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0);
        }
    }
}
