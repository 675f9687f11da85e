//! Hard deletes, found without any log: the set of keys shipped is compared with the source's
//! keys by bisection over key-value ranges. One level is one index-only query over a range that
//! counts the keys of each bucket; only buckets whose count differs from the shipped keys' are
//! cut further, down to ranges listed key by key. Keys that were shipped and are gone from the
//! source become deletes. Tables with a single integer key only; others get their deletes from
//! reconciliation.
//!
//! A count is enough: a bucket holds the same keys as were shipped unless some were deleted
//! or some are new and not shipped yet, and other detectors ship every new key. A deleted key
//! therefore shows as a smaller count once the rows inserted beside it are shipped: at the
//! latest one pass later, when an unshipped insert in its bucket hid it. (A sum and an XOR of
//! the keys would catch that case at once, for a third more time on every pass.)

use std::collections::HashSet;
use std::time::Duration;

use futures::future::BoxFuture;
use tunnel_shared::event::Detection;

use crate::capture::{ChangeDetector, Found, GoneKey, PassContext};
use crate::error::SourceError;
use crate::source::Activity;

pub struct DeleteScan {
    pub interval: Duration,
    /// Buckets per level.
    pub fanout: i64,
    /// Ranges of at most this many key values are listed.
    pub leaf_span: i64,
}

impl ChangeDetector for DeleteScan {
    fn detection(&self) -> Detection {
        Detection::DeleteScan
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn wants(&self, before: &Activity, now: &Activity) -> bool {
        // the statistics of a session that wrote less than a second after its last report
        // reach `pg_stat_user_tables` up to ten seconds later; the WAL moves at the commit
        before.deleted != now.deleted || before.wal != now.wal
    }
    fn pass<'a>(&'a mut self, ctx: PassContext<'a>) -> BoxFuture<'a, Result<Found, SourceError>> {
        Box::pin(async move {
            let mut found = Found::default();
            let Some(shipped) = ctx.shipped else {
                return Ok(found);
            };
            let (Some(lo), Some(hi)) = (shipped.min(), shipped.max()) else {
                return Ok(found);
            };
            let table = ctx.source.table().clone();
            let mut stack = vec![(lo, hi)];
            while let Some((lo, hi)) = stack.pop() {
                // widths in i128: a span of random 63-bit keys is wider than i64 can hold
                let span = i128::from(hi) - i128::from(lo) + 1;
                if span <= i128::from(self.leaf_span) {
                    let present: HashSet<i64> =
                        ctx.source.keys_between(lo, hi).await?.into_iter().collect();
                    found.scanned += present.len() as u64;
                    for k in shipped.keys(lo..=hi) {
                        if !present.contains(&k) {
                            found
                                .gone
                                .push(GoneKey::from_text(&table, vec![k.to_string()])?);
                        }
                    }
                    continue;
                }
                let fanout = i128::from(self.fanout);
                // at most 2^64 / 2 for a fanout of 2 or more: fits
                let width = i64::try_from((span + fanout - 1) / fanout).unwrap_or(i64::MAX);
                let buckets = ctx.source.key_buckets(lo, hi, width).await?;
                found.scanned += buckets.iter().map(|b| b.1.max(0) as u64).sum::<u64>();
                for i in 0..self.fanout {
                    // bucket i holds lo + i * width ..= lo + (i + 1) * width - 1, as in SQL
                    let from = i128::from(lo) + i128::from(i) * i128::from(width);
                    if from > i128::from(hi) {
                        break;
                    }
                    let to = (from + i128::from(width) - 1).min(i128::from(hi));
                    // both within lo..=hi, so within i64
                    let (Ok(from), Ok(to)) = (i64::try_from(from), i64::try_from(to)) else {
                        break;
                    };
                    let ours = shipped.count(from..=to);
                    if ours == 0 {
                        continue; // nothing shipped here, so nothing to delete
                    }
                    let theirs = buckets.iter().find(|b| b.0 == i).map_or(0, |b| b.1);
                    if theirs != ours {
                        stack.push((from, to));
                    }
                }
            }
            Ok(found)
        })
    }
}
