//! Readiness: each stage of the process (a table's detector or snapshot, the consumer's apply
//! loop) says when it makes progress; the process is ready while every stage has within its
//! bound and none was stopped. `/readyz` answers from here, and so does `tunnel_ready`.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct StageLabels {
    stage: String,
}

struct Stage {
    bound: Duration,
    last: Instant,
    stopped: Option<String>,
}

/// The stages of the process.
pub struct Health {
    stages: Mutex<BTreeMap<String, Stage>>,
    ready: Gauge,
    ages: Family<StageLabels, FloatGauge>,
}

/// Whether the process is ready, and a line per stage that is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub problems: Vec<String>,
    pub stages: usize,
}

static HEALTH: OnceLock<Health> = OnceLock::new();

/// The process's stages.
pub fn health() -> &'static Health {
    HEALTH.get_or_init(Health::new)
}

impl Health {
    fn new() -> Self {
        Self {
            stages: Mutex::new(BTreeMap::new()),
            ready: Gauge::default(),
            ages: Family::default(),
        }
    }

    /// A stage that must make progress at least every `bound`, counted from now (again, if it
    /// existed: a stage set up anew starts afresh).
    pub fn register(&self, stage: &str, bound: Duration) {
        if let Ok(mut s) = self.stages.lock() {
            s.insert(
                stage.to_string(),
                Stage {
                    bound,
                    last: Instant::now(),
                    stopped: None,
                },
            );
        }
    }

    /// The stage made progress now.
    pub fn beat(&self, stage: &str) {
        if let Ok(mut s) = self.stages.lock() {
            if let Some(st) = s.get_mut(stage) {
                st.last = Instant::now();
            }
        }
    }

    /// The stage stopped for good (`reason` says why): not ready until it is set up again.
    pub fn stop(&self, stage: &str, reason: &str) {
        if let Ok(mut s) = self.stages.lock() {
            let entry = s.entry(stage.to_string()).or_insert(Stage {
                bound: Duration::ZERO,
                last: Instant::now(),
                stopped: None,
            });
            entry.stopped = Some(reason.to_string());
        }
    }

    /// The stage ended as it should (a snapshot done): it no longer counts.
    pub fn remove(&self, stage: &str) {
        if let Ok(mut s) = self.stages.lock() {
            s.remove(stage);
        }
        self.ages.remove(&StageLabels {
            stage: stage.to_string(),
        });
    }

    /// Every stage of `table` (`<table>/...`) ends: it is set up again, or stopped.
    pub fn remove_table(&self, table: &str) {
        let prefix = format!("{table}/");
        let gone: Vec<String> = self.stages.lock().map_or_else(
            |_| Vec::new(),
            |s| {
                s.keys()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect()
            },
        );
        for stage in gone {
            self.remove(&stage);
        }
    }

    /// Ready when every stage made progress within its bound and none stopped.
    pub fn readiness(&self) -> Readiness {
        let Ok(s) = self.stages.lock() else {
            return Readiness {
                ready: false,
                problems: vec!["the health state is unreadable".into()],
                stages: 0,
            };
        };
        let mut problems = Vec::new();
        for (name, st) in s.iter() {
            if let Some(reason) = &st.stopped {
                problems.push(format!("{name}: stopped: {reason}"));
            } else if st.last.elapsed() > st.bound {
                problems.push(format!(
                    "{name}: no progress for {} s (bound {} s)",
                    st.last.elapsed().as_secs(),
                    st.bound.as_secs()
                ));
            }
        }
        Readiness {
            ready: problems.is_empty(),
            problems,
            stages: s.len(),
        }
    }

    /// The stopped stages and why each stopped.
    pub fn stopped(&self) -> Vec<(String, String)> {
        self.stages.lock().map_or_else(
            |_| Vec::new(),
            |s| {
                s.iter()
                    .filter_map(|(name, st)| Some((name.clone(), st.stopped.clone()?)))
                    .collect()
            },
        )
    }

    /// Brings `tunnel_ready` and the stages' ages up to now.
    pub(crate) fn refresh(&self) {
        self.ready.set(i64::from(self.readiness().ready));
        if let Ok(s) = self.stages.lock() {
            for (name, st) in s.iter() {
                self.ages
                    .get_or_create(&StageLabels {
                        stage: name.clone(),
                    })
                    .set(st.last.elapsed().as_secs_f64());
            }
        }
    }

    pub(crate) fn ready_gauge(&self) -> Gauge {
        self.ready.clone()
    }

    pub(crate) fn age_family(&self) -> Family<StageLabels, FloatGauge> {
        self.ages.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_without_progress_within_its_bound_or_stopped_is_not_ready() {
        let h = Health::new();
        assert!(h.readiness().ready);
        h.register("apply", Duration::from_millis(50));
        h.register("public.t/reconcile", Duration::from_secs(60));
        assert!(h.readiness().ready);
        std::thread::sleep(Duration::from_millis(80));
        let r = h.readiness();
        assert!(!r.ready);
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].starts_with("apply: no progress"), "{r:?}");
        h.beat("apply");
        assert!(h.readiness().ready);
        h.stop(
            "public.t/reconcile",
            "column x changed from text to integer",
        );
        let r = h.readiness();
        assert!(
            !r.ready && r.problems[0].contains("changed from text"),
            "{r:?}"
        );
        assert_eq!(
            h.stopped(),
            vec![(
                "public.t/reconcile".to_string(),
                "column x changed from text to integer".to_string()
            )]
        );
        h.remove("public.t/reconcile");
        assert!(h.readiness().ready);
    }
}
