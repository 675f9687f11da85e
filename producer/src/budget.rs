//! The source cost budget (`[source] max_cpu_share`): the share of one source core the
//! producer's background passes of a table (watermark, delete scan, reconciliation) may take
//! on average, split among those detectors by priority. Each is charged what its passes took
//! (wall time around the pass, not counting waits: an overestimate of the source's CPU when
//! the producer's own machine is busy), and its part refills at its share per second of wall
//! time. A detector starts a pass only while its part is not in debt, so a pass that cost more
//! than there was is followed by as much rest as it needs: a pass of 300 ms at a share of 0.05
//! waits 6 s. Cheap passes therefore run often and expensive ones rarely, whatever the table's
//! size, with no interval to tune, and an expensive detector never holds back a cheap one. The
//! key scan and repairs are not budgeted: new rows are an index range scan of a few buffers.
//!
//! Among background detectors that are due, may find something and whose part allows, the one
//! that has waited longest, weighted by its priority, runs first ([`pick`]).

use std::time::{Duration, Instant};

/// How much unspent budget may be saved up, in seconds of wall time: after a quiet minute a
/// burst of passes may take this much more than the share, not a minute's worth.
const SAVED_SECONDS: f64 = 2.0;

#[derive(Debug, Clone)]
pub struct Budget {
    /// Seconds of source time per second of wall time; 0: no budget (intervals only).
    share: f64,
    /// Source seconds the passes may still spend (negative: in debt).
    balance: f64,
    at: Instant,
}

impl Budget {
    pub fn new(share: f64, now: Instant) -> Self {
        Self {
            share,
            balance: 0.0,
            at: now,
        }
    }

    /// Whether a budget is set (else every pass runs on its interval alone).
    pub fn limited(&self) -> bool {
        self.share > 0.0
    }

    fn balance_at(&self, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.share;
        (self.balance + refill).min(self.share * SAVED_SECONDS)
    }

    /// A pass that kept the source busy for `cost`, ended at `now`.
    pub fn charge(&mut self, cost: Duration, now: Instant) {
        if !self.limited() {
            return;
        }
        self.balance = self.balance_at(now) - cost.as_secs_f64();
        self.at = now;
    }

    /// When a background pass may start: now, or once the debt is paid off.
    pub fn ready_at(&self, now: Instant) -> Instant {
        let balance = self.balance_at(now);
        if !self.limited() || balance >= 0.0 {
            return now;
        }
        now + Duration::from_secs_f64((-balance / self.share).min(86_400.0))
    }
}

/// A background detector that is due and may find something: its slot, its priority, and
/// since when it has been waiting.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub slot: usize,
    pub priority: u32,
    pub waiting_since: Instant,
}

/// The candidate to run first: the longest wait weighted by priority (a detector of priority 4
/// goes before one of priority 1 that has waited less than four times as long), the lowest
/// slot on a tie. A low priority delays a detector; it never starves it.
pub fn pick(candidates: &[Candidate], now: Instant) -> Option<usize> {
    let score = |c: &Candidate| {
        // a millisecond at least: fresh candidates are still ordered by priority
        let waited = now.saturating_duration_since(c.waiting_since).as_secs_f64() + 0.001;
        waited * f64::from(c.priority.max(1))
    };
    candidates
        .iter()
        .fold(None::<(&Candidate, f64)>, |best, c| {
            let s = score(c);
            match best {
                Some((_, b)) if b >= s => best,
                _ => Some((c, s)),
            }
        })
        .map(|(c, _)| c.slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_pass_is_followed_by_the_rest_its_cost_needs_at_the_share() {
        let t0 = Instant::now();
        let mut b = Budget::new(0.05, t0);
        assert_eq!(b.ready_at(t0), t0);
        // 300 ms of source time at 5%: 6 s of rest
        b.charge(ms(300), t0);
        let ready = b.ready_at(t0);
        assert!(
            ready >= t0 + ms(5_990) && ready <= t0 + ms(6_010),
            "{ready:?}"
        );
        // halfway, still in debt; the same instant answers the same
        assert_eq!(b.ready_at(t0 + ms(3_000)), ready);
        assert_eq!(b.ready_at(t0 + ms(6_100)), t0 + ms(6_100));
    }

    #[test]
    fn cheap_passes_run_often_and_saving_up_is_capped() {
        let t0 = Instant::now();
        let mut b = Budget::new(0.05, t0);
        // 5 ms every 100 ms is 5%: never in debt for long
        let mut now = t0;
        for _ in 0..100 {
            b.charge(ms(5), now);
            now += ms(100);
            assert!(b.ready_at(now) <= now + ms(1));
        }
        // an idle hour saves up two seconds' worth (100 ms), not 3 minutes
        let later = now + Duration::from_secs(3600);
        b.charge(ms(150), later);
        assert!(b.ready_at(later) > later + ms(900));
    }

    #[test]
    fn no_budget_means_no_wait() {
        let t0 = Instant::now();
        let mut b = Budget::new(0.0, t0);
        b.charge(Duration::from_secs(10), t0);
        assert_eq!(b.ready_at(t0), t0);
        assert!(!b.limited());
    }

    #[test]
    fn the_longest_weighted_wait_goes_first_and_nobody_starves() {
        let t0 = Instant::now();
        let c = |slot, priority, waited_ms: u64| Candidate {
            slot,
            priority,
            waiting_since: t0 - ms(waited_ms),
        };
        assert_eq!(pick(&[], t0), None);
        // fresh: by priority
        assert_eq!(pick(&[c(1, 1, 0), c(2, 4, 0)], t0), Some(2));
        // priority 4 waited 1 s, priority 1 waited 3 s: 4 > 3
        assert_eq!(pick(&[c(1, 1, 3_000), c(2, 4, 1_000)], t0), Some(2));
        // priority 1 waited 5 s: 5 > 4
        assert_eq!(pick(&[c(1, 1, 5_000), c(2, 4, 1_000)], t0), Some(1));
        // a tie: the lowest slot
        assert_eq!(pick(&[c(1, 2, 1_000), c(2, 2, 1_000)], t0), Some(1));
    }
}
