//! Whether the consumer applies what the producer ships. A reconciliation pass that compared
//! the source with a target whose consumer has stopped would find every event still in
//! flight different, and ship it again on every pass: with the consumer down for a day, the
//! topic would fill with copies. While the consumer applies nothing of what was shipped, the
//! passes are paused instead (said once in the log), and they pick up from the same horizon
//! once it applies again.

use tokio_postgres::Client;
use tunnel_shared::bookkeeping::offsets_table;

/// What the consumer has processed (events applied or dead-lettered, over the topic's
/// partitions, from its bookkeeping in the target), the last time that moved, against the
/// events the producer had shipped by then.
#[derive(Debug, Default)]
pub struct ApplyWatch {
    /// (processed, shipped) when `processed` last moved.
    mark: Option<(i64, u64)>,
    paused: bool,
}

/// What a reconciliation pass should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Compare,
    /// The consumer stopped applying: the pass is skipped. `first` is set on the first such
    /// pass, which says so in the log.
    Pause {
        first: bool,
        unapplied: u64,
    },
    /// The first pass after a pause.
    Resume,
}

impl ApplyWatch {
    /// Whether passes are paused: they are then tried at every interval, to resume as soon as
    /// the consumer applies again.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// `processed`: what the consumer has processed now (`None` when its bookkeeping cannot
    /// be read: nothing is paused on a guess); `shipped`: the events the producer has shipped.
    /// The consumer has stopped when it processed nothing since the last pass although the
    /// producer shipped events since it last did.
    pub fn observe(&mut self, processed: Option<i64>, shipped: u64) -> Verdict {
        let Some(processed) = processed else {
            return self.compare();
        };
        match self.mark {
            Some((p, s)) if p == processed && shipped > s => {
                let first = !self.paused;
                self.paused = true;
                Verdict::Pause {
                    first,
                    unapplied: shipped - s,
                }
            }
            Some((p, _)) if p == processed => self.compare(),
            _ => {
                self.mark = Some((processed, shipped));
                self.compare()
            }
        }
    }

    fn compare(&mut self) -> Verdict {
        if std::mem::take(&mut self.paused) {
            Verdict::Resume
        } else {
            Verdict::Compare
        }
    }
}

/// What the consumer has processed of `topic` (events applied and dead-lettered, all
/// partitions), from the offsets table in the target; `None` when it cannot be read (no
/// consumer has run yet).
pub async fn processed(target: &Client, bookkeeping: &str, topic: &str) -> Option<i64> {
    let sql = format!(
        "SELECT coalesce(sum(applied_events + dead_lettered), 0)::int8 FROM {} WHERE topic = $1",
        offsets_table(bookkeeping)
    );
    let row = target.query_one(&sql, &[&topic]).await.ok()?;
    row.try_get(0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_pause_while_the_consumer_applies_nothing_of_what_was_shipped() {
        let mut w = ApplyWatch::default();
        assert_eq!(w.observe(Some(100), 100), Verdict::Compare);
        // idle pipeline: nothing shipped, nothing applied
        assert_eq!(w.observe(Some(100), 100), Verdict::Compare);
        // the consumer keeps up
        assert_eq!(w.observe(Some(130), 130), Verdict::Compare);
        // shipped, not applied: paused, said once
        assert_eq!(
            w.observe(Some(130), 140),
            Verdict::Pause {
                first: true,
                unapplied: 10
            }
        );
        assert_eq!(
            w.observe(Some(130), 145),
            Verdict::Pause {
                first: false,
                unapplied: 15
            }
        );
        // it applies again
        assert_eq!(w.observe(Some(135), 145), Verdict::Resume);
        assert_eq!(w.observe(Some(145), 145), Verdict::Compare);
        // no bookkeeping to read: compare
        assert_eq!(w.observe(None, 200), Verdict::Compare);
    }
}
