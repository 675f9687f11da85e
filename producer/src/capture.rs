//! The ways the producer finds changes on a source it may only read. Each is a
//! [`ChangeDetector`]: the worker runs each on its own cadence, skips it when the table's
//! activity shows it cannot find anything, and ships what it returns. Delete scans and content
//! reconciliation join them as further detectors.

use std::time::Duration;

use futures::future::BoxFuture;
use tunnel_shared::event::Detection;

use apache_avro::types::Value;
use tunnel_shared::catalog::TableInfo;
use tunnel_shared::pgbinary;

use crate::checkpoint::Checkpoint;
use crate::horizon::Bounds;
use crate::keyset::KeySet;
use crate::source::{Activity, Source, SourceError, SourceRow};

/// What a pass may look at besides the source.
pub struct PassContext<'a> {
    pub source: &'a mut Source,
    pub bounds: &'a Bounds,
    /// The keys shipped so far (tables with a single integer key).
    pub shipped: Option<&'a KeySet>,
    pub checkpoint: &'a Checkpoint,
}

/// A key that is gone from the source.
#[derive(Debug, Clone)]
pub struct GoneKey {
    pub key_text: Vec<String>,
    pub key: Vec<Value>,
}

impl GoneKey {
    /// From the key's text form, with the types of the table's key columns.
    pub fn from_text(table: &TableInfo, key_text: Vec<String>) -> Result<Self, SourceError> {
        let key = table
            .key_columns()
            .zip(&key_text)
            .map(|(c, t)| {
                pgbinary::from_pg_text(&c.name, c.kind, t).map_err(|source| SourceError::Value {
                    table: table.qualified_name(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { key_text, key })
    }
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct Found {
    /// Rows that may have changed. The worker ships those that differ from what it last
    /// shipped.
    pub rows: Vec<SourceRow>,
    /// The highest key the pass saw in key order, if it read keys in order to the end.
    pub max_key: Option<Vec<String>>,
    /// Keys shipped before that the source no longer has: shipped as deletes.
    pub gone: Vec<GoneKey>,
    /// Index entries or rows the pass went over besides `rows`, for its log line.
    pub scanned: u64,
    /// How far the repair requests have been read (the repair pass only).
    pub repairs_upto: Option<i64>,
    /// The transaction horizon the next reconciliation pass starts from (that pass only).
    pub reconciled_xmin: Option<i64>,
}

/// One way of detecting changes.
///
/// Contract: a pass reads the source through `source` only (short read-only statements), reads
/// every row that may have changed at or above `bounds` (rows below them were seen by earlier
/// passes; see [`crate::horizon`]), and returns them without shipping anything. A pass may be
/// repeated with the same bounds at any time (after a failed publish, after a restart): it
/// must not keep state that assumes its result was shipped.
pub trait ChangeDetector: Send + Sync {
    fn detection(&self) -> Detection;
    fn interval(&self) -> Duration;
    /// Whether activity on the table since this detector's last pass may mean new results.
    fn wants(&self, before: &Activity, now: &Activity) -> bool;
    fn pass<'a>(&'a mut self, ctx: PassContext<'a>) -> BoxFuture<'a, Result<Found, SourceError>>;
}

/// Inserts, found by key: `pk > bound`, an index range scan that stays cheap at any size.
pub struct KeyScan {
    pub interval: Duration,
    pub chunk_rows: i64,
}

impl ChangeDetector for KeyScan {
    fn detection(&self) -> Detection {
        Detection::KeyScan
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn wants(&self, before: &Activity, now: &Activity) -> bool {
        before.inserted != now.inserted || before.wal != now.wal
    }
    fn pass<'a>(&'a mut self, ctx: PassContext<'a>) -> BoxFuture<'a, Result<Found, SourceError>> {
        let PassContext { source, bounds, .. } = ctx;
        Box::pin(async move {
            let mut found = Found {
                max_key: bounds.key.clone(),
                ..Default::default()
            };
            loop {
                let chunk = source
                    .rows_after(found.max_key.as_deref(), self.chunk_rows)
                    .await?;
                let n = chunk.len() as i64;
                if let Some(last) = chunk.last() {
                    found.max_key = Some(last.key_text.clone());
                }
                found.rows.extend(chunk);
                if n < self.chunk_rows {
                    return Ok(found);
                }
            }
        })
    }
}

/// Updates, found by the watermark column (`updated_at >= bound`). The column is not indexed,
/// so the table is read in ranges of about `chunk_rows` rows, each its own short statement:
/// ranges of heap pages (TID range scans, PostgreSQL 14+), else key ranges.
pub struct WatermarkScan {
    pub interval: Duration,
    pub chunk_rows: i64,
}

impl ChangeDetector for WatermarkScan {
    fn detection(&self) -> Detection {
        Detection::Watermark
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn wants(&self, before: &Activity, now: &Activity) -> bool {
        before.updated != now.updated || before.inserted != now.inserted || before.wal != now.wal
    }
    fn pass<'a>(&'a mut self, ctx: PassContext<'a>) -> BoxFuture<'a, Result<Found, SourceError>> {
        let PassContext { source, bounds, .. } = ctx;
        Box::pin(async move {
            let since = bounds.ts.unwrap_or(i64::MIN);
            let mut found = Found::default();
            if let Some((pages, rows_per_page)) = source.heap_pages().await? {
                // ranges of heap pages: each statement reads only its pages, in order, so a
                // pass costs about one sequential read of the table however it is cut
                let step = ((self.chunk_rows as f64 / rows_per_page.max(1.0)).ceil() as i64).max(1);
                let mut from = 0;
                loop {
                    let to = from + step;
                    let last = to >= pages;
                    found.rows.extend(
                        source
                            .rows_changed_in_pages(from, (!last).then_some(to), since)
                            .await?,
                    );
                    if last {
                        return Ok(found);
                    }
                    from = to;
                }
            }
            if let Some((min, max)) = source.integer_key_span().await? {
                // integer keys: ranges of `chunk_rows` key values, no query for their ends
                let mut after = min.saturating_sub(1);
                while after < max {
                    let upto = after.saturating_add(self.chunk_rows).min(max);
                    let (a, u) = ([after.to_string()], [upto.to_string()]);
                    found
                        .rows
                        .extend(source.rows_changed_since(Some(&a), Some(&u), since).await?);
                    after = upto;
                }
                return Ok(found);
            }
            let mut after: Option<Vec<String>> = None;
            loop {
                let upto = source
                    .key_at_offset(after.as_deref(), self.chunk_rows)
                    .await?;
                let rows = source
                    .rows_changed_since(after.as_deref(), upto.as_deref(), since)
                    .await?;
                found.rows.extend(rows);
                match upto {
                    Some(k) => after = Some(k),
                    None => return Ok(found),
                }
            }
        })
    }
}
