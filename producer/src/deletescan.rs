//! Hard deletes, found without any log: the set of keys shipped is compared with the source's
//! keys over key-value ranges. The span of shipped keys is cut into buckets of about 2048
//! shipped keys each (at most 65536 buckets), whose keys the source counts from the index
//! alone, 4096 buckets to a statement; the buckets whose count differs from the shipped keys'
//! are listed key by key (64 to a statement) when both counts are at most 4096, or else (skewed
//! keys, a mass insert not shipped yet) cut again the same way. A pass therefore reads the keys once, plus the buckets
//! that differ: 1500 deletes scattered over 100M keys read about 106M index entries, where
//! bisection by 64 read 231M (every bucket of the first two levels differed).
//! Keys that were shipped and are gone from the source become deletes. Tables with a single
//! integer key only; others get their deletes from reconciliation.
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
use crate::source::{bucket_bounds, Activity};

pub struct DeleteScan {
    pub interval: Duration,
    /// A range whose shipped and source counts are both at most this is listed key by key;
    /// a larger one is cut into buckets of about this many shipped keys.
    pub leaf_keys: i64,
    /// The most buckets one range is cut into.
    pub max_fanout: i64,
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
            // one level of the bisection at a time, each level's ranges in a few statements;
            // the whole span is cut at once into buckets of about half `leaf_keys` keys, so that
            // however many buckets differ, the keys are read about once more at most
            // each range with the keys shipped in it, and the source's count (none at the top)
            let mut level = vec![(lo, hi, shipped.count(lo..=hi), None)];
            while !level.is_empty() {
                let (leaves, wide): (Vec<_>, Vec<_>) =
                    level.into_iter().partition(|&(lo, hi, ours, theirs)| {
                        span(lo, hi) <= i128::from(self.leaf_keys)
                            || (ours <= self.leaf_keys
                                && theirs.is_some_and(|t: i64| t <= self.leaf_keys))
                    });
                let leaves: Vec<(i64, i64)> =
                    leaves.into_iter().map(|(lo, hi, ..)| (lo, hi)).collect();
                for batch in leaves.chunks(LEAVES_PER_STATEMENT) {
                    let present: HashSet<i64> = ctx
                        .source
                        .keys_in_ranges(batch)
                        .await?
                        .into_iter()
                        .collect();
                    found.scanned += present.len() as u64;
                    for &(lo, hi) in batch {
                        for k in shipped.keys(lo..=hi) {
                            if !present.contains(&k) {
                                found
                                    .gone
                                    .push(GoneKey::from_text(&table, vec![k.to_string()])?);
                            }
                        }
                    }
                }
                let buckets: Vec<(i64, i64)> = wide
                    .iter()
                    .flat_map(|&(lo, hi, ours, theirs)| {
                        // half a leaf on average, on the fuller side (a mass insert not
                        // shipped yet is cut as finely as the keys shipped): a bucket a little
                        // fuller still is one
                        let keys = ours.max(theirs.unwrap_or(0));
                        let fanout = (keys / (self.leaf_keys / 2).max(1) + 1)
                            .clamp(2, self.max_fanout.max(2));
                        buckets(lo, hi, fanout)
                    })
                    .collect();
                let mut next = Vec::new();
                for batch in buckets.chunks(BUCKETS_PER_STATEMENT) {
                    let counts = ctx.source.count_ranges(batch).await?;
                    found.scanned += counts
                        .iter()
                        .map(|&n| u64::try_from(n).unwrap_or(0))
                        .sum::<u64>();
                    for (&(from, to), &theirs) in batch.iter().zip(&counts) {
                        let ours = shipped.count(from..=to);
                        // nothing shipped here, so nothing to delete
                        if ours != 0 && theirs != ours {
                            next.push((from, to, ours, Some(theirs)));
                        }
                    }
                }
                level = next;
            }
            Ok(found)
        })
    }
}

/// Ranges listed key by key in one statement: at most this many leaves (each of at most
/// `leaf_keys` keys).
const LEAVES_PER_STATEMENT: usize = 64;
/// Buckets counted in one statement.
const BUCKETS_PER_STATEMENT: usize = 4096;

/// The number of key values in `[lo, hi]`, wide: a span of random 63-bit keys is wider than
/// `i64` holds.
fn span(lo: i64, hi: i64) -> i128 {
    i128::from(hi) - i128::from(lo) + 1
}

/// `[lo, hi]` cut into at most `fanout` buckets of equal width (the last one shorter).
fn buckets(lo: i64, hi: i64, fanout: i64) -> Vec<(i64, i64)> {
    let fanout = i128::from(fanout.max(2));
    // at most 2^64 / 2 for a fanout of 2 or more: fits
    let width = i64::try_from((span(lo, hi) + fanout - 1) / fanout).unwrap_or(i64::MAX);
    bucket_bounds(lo, hi, width)
        .into_iter()
        .map(|(_, from, to)| (from, to))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::buckets;

    #[test]
    fn buckets_cover_the_range_in_at_most_fanout_pieces() {
        assert_eq!(buckets(1, 10, 4), vec![(1, 3), (4, 6), (7, 9), (10, 10)]);
        assert_eq!(buckets(1, 4096, 64).len(), 64);
        let all = buckets(i64::MIN, i64::MAX, 64);
        assert_eq!(all.len(), 64);
        assert_eq!(all[0].0, i64::MIN);
        assert_eq!(all[63].1, i64::MAX);
        assert!(all.windows(2).all(|w| w[0].1 + 1 == w[1].0));
        assert_eq!(buckets(5, 5, 64), vec![(5, 5)]);
    }
}
