//! The capture horizon: how far the key scan and the watermark scan may move their lower bound
//! without missing a row whose transaction commits late.
//!
//! A transaction stamps `updated_at` with its START time and takes its key from the sequence
//! when it inserts, but its rows become visible only when it COMMITS. A scan that moved its
//! bound to the highest value it has seen would miss such a row. So before every pass the
//! producer takes a *probe*: the statement time and the set of virtual transaction ids that are
//! running on the source (`pg_locks`, readable by any role). Each probe becomes an [`Entry`]
//! together with the highest key already seen. Once none of an entry's transactions is still
//! running, every transaction that started before the probe has finished, and its rows were
//! visible to the pass that followed the probe that saw them finish. The pass after that may
//! therefore start at the entry's key and time. docs/design.md has the full argument.

use std::collections::HashSet;

use tunnel_shared::config::ProducerConfig;

/// One probe of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `statement_timestamp()` of the probe, microseconds since 1970 (wall clock for
    /// `timestamp without time zone` columns).
    pub at_micros: i64,
    /// Virtual transaction ids running on the server at the probe, ours excluded.
    pub running: HashSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    at_micros: i64,
    running: HashSet<String>,
    /// The highest key seen by a read that happened before the probe (text form).
    max_key: Option<Vec<String>>,
}

/// Lower bounds for a pass: keys strictly above `key`, watermark values at or above `ts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bounds {
    pub key: Option<Vec<String>>,
    pub ts: Option<i64>,
}

/// The time margins of the bounds, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Margins {
    /// Subtracted from the clock bound, against clock differences between sessions
    /// (`watermark_overlap_ms`).
    pub overlap_micros: i64,
    /// How long a horizon waits for a transaction before moving on (`horizon_max_wait_s`).
    pub max_wait_micros: i64,
}

impl Margins {
    pub fn from_config(p: &ProducerConfig) -> Self {
        Self {
            overlap_micros: (p.watermark_overlap_ms as i64).saturating_mul(1000),
            max_wait_micros: (p.horizon_max_wait_s as i64).saturating_mul(1_000_000),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Horizon {
    entries: Vec<Entry>,
    /// The bounds the next pass uses.
    current: Bounds,
    /// The bounds that become current after the next pass.
    pending: Option<Bounds>,
    /// How long an entry may wait for its transactions before it is taken anyway.
    max_wait_micros: i64,
}

/// What [`Horizon::observe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The bounds the pass that follows this probe must use.
    pub bounds: Bounds,
    /// Transactions that held the horizon back past `max_wait` and were given up on.
    pub gave_up_on: Vec<String>,
}

impl Horizon {
    /// A horizon whose first pass uses `start`.
    pub fn new(start: Bounds, max_wait_micros: i64) -> Self {
        Self {
            entries: Vec::new(),
            current: start,
            pending: None,
            max_wait_micros,
        }
    }

    /// Records a probe taken before a pass. `max_key` is the highest key read before the probe.
    /// Returns the bounds that pass must read from.
    pub fn observe(&mut self, probe: Probe, max_key: Option<Vec<String>>) -> Observation {
        // the bounds found at the previous probe become current now
        if let Some(p) = self.pending.take() {
            self.current = p;
        }
        let mut gave_up_on = Vec::new();
        let drained = self.entries.iter().rposition(|e| {
            let still = e.running.intersection(&probe.running).count();
            if still == 0 {
                return true;
            }
            if probe.at_micros - e.at_micros > self.max_wait_micros {
                gave_up_on.extend(e.running.intersection(&probe.running).cloned());
                return true;
            }
            false
        });
        if let Some(i) = drained {
            let e = &self.entries[i];
            self.pending = Some(Bounds {
                key: e.max_key.clone().or_else(|| self.current.key.clone()),
                ts: Some(e.at_micros.max(self.current.ts.unwrap_or(i64::MIN))),
            });
            self.entries.drain(..=i);
        }
        gave_up_on.sort();
        gave_up_on.dedup();
        self.entries.push(Entry {
            at_micros: probe.at_micros,
            running: probe.running,
            max_key,
        });
        Observation {
            bounds: self.current.clone(),
            gave_up_on,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(at: i64, running: &[&str]) -> Probe {
        Probe {
            at_micros: at,
            running: running.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn key(k: &str) -> Option<Vec<String>> {
        Some(vec![k.to_string()])
    }

    #[test]
    fn bounds_advance_one_pass_after_the_probe_drains() {
        let mut h = Horizon::new(
            Bounds {
                key: key("0"),
                ts: Some(0),
            },
            i64::MAX,
        );
        // probe 1 sees nothing running; probe 2 finds it drained, so pass 3 starts from it
        assert_eq!(h.observe(probe(10, &[]), key("5")).bounds.key, key("0"));
        assert_eq!(h.observe(probe(20, &[]), key("8")).bounds.key, key("0"));
        let b = h.observe(probe(30, &[]), key("9")).bounds;
        assert_eq!(
            b,
            Bounds {
                key: key("5"),
                ts: Some(10)
            }
        );
    }

    #[test]
    fn a_running_transaction_holds_the_bounds_back_until_it_ends() {
        let mut h = Horizon::new(
            Bounds {
                key: key("0"),
                ts: Some(0),
            },
            i64::MAX,
        );
        h.observe(probe(10, &["3/7"]), key("5"));
        // 3/7 still runs: entry at 10 cannot drain, and neither can later ones that saw it
        h.observe(probe(20, &["3/7"]), key("6"));
        assert_eq!(
            h.observe(probe(30, &["3/7"]), key("7")).bounds.key,
            key("0")
        );
        // it ended: the newest entry that no longer sees it (30 still saw it) ... all drain now
        h.observe(probe(40, &[]), key("8"));
        let b = h.observe(probe(50, &[]), key("9")).bounds;
        assert_eq!(
            b,
            Bounds {
                key: key("7"),
                ts: Some(30)
            }
        );
    }

    #[test]
    fn gives_up_after_max_wait_and_says_on_whom() {
        let mut h = Horizon::new(Bounds::default(), 100);
        h.observe(probe(0, &["9/1"]), key("1"));
        let o = h.observe(probe(50, &["9/1"]), key("2"));
        assert!(o.gave_up_on.is_empty());
        let o = h.observe(probe(200, &["9/1"]), key("3"));
        assert_eq!(o.gave_up_on, vec!["9/1".to_string()]);
        let o = h.observe(probe(210, &["9/1"]), key("4"));
        assert_eq!(o.bounds.key, key("2"));
    }

    #[test]
    fn time_bound_never_moves_back() {
        let mut h = Horizon::new(
            Bounds {
                key: None,
                ts: Some(1_000),
            },
            i64::MAX,
        );
        h.observe(probe(10, &[]), None);
        h.observe(probe(20, &[]), None);
        let b = h.observe(probe(30, &[]), None).bounds;
        assert_eq!(b.ts, Some(1_000));
        assert_eq!(b.key, None);
    }
}
