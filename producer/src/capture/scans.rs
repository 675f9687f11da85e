//! The two scans that find inserts and updates: by key ([`KeyScan`]) and by watermark
//! ([`WatermarkScan`]).

use std::time::Duration;

use futures::future::BoxFuture;
use tunnel_shared::event::Detection;

use super::detector::{ChangeDetector, Found, PassContext};
use crate::error::SourceError;
use crate::source::Activity;

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
