//! The snapshot's progress: rows, rows/s and ETA, as a bar on a terminal and a log line every
//! 5 s.

use std::time::{Duration, Instant};

use tracing::info;
use tunnel_shared::progress::Bar;

use crate::observe::TableObserver;

/// Rows, rows/s and ETA: a bar on a terminal, and a log line every 5 s.
pub(super) struct Progress {
    total: i64,
    done: u64,
    start: Instant,
    last_log: Instant,
    bar: Bar,
    observer: Option<TableObserver>,
}

impl Progress {
    pub(super) fn new(total: i64, already: u64, observer: Option<TableObserver>) -> Self {
        if let Some(o) = &observer {
            o.snapshot_started(total, already);
        }
        let what = match &observer {
            Some(o) => format!("snapshot {}", o.table()),
            None => "snapshot".to_string(),
        };
        let bar = Bar::new(&what, total.max(0) as u64, "rows");
        bar.set_position(already);
        Self {
            total,
            done: already,
            start: Instant::now(),
            last_log: Instant::now(),
            bar,
            observer,
        }
    }

    pub(super) fn add(&mut self, rows: u64) {
        self.done += rows;
        if let Some(o) = &self.observer {
            o.snapshot_chunk(rows, self.done);
        }
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let eta = if rate > 0.0 && self.total as f64 > self.done as f64 {
            (self.total as f64 - self.done as f64) / rate
        } else {
            0.0
        };
        self.bar.inc(rows);
        if self.done > self.total.max(0) as u64 {
            self.bar.set_length(self.done);
        }
        if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            info!(
                rows = self.done,
                estimated_rows = self.total,
                rows_per_s = rate as u64,
                eta_s = eta as u64,
                "snapshot progress"
            );
        }
    }

    pub(super) fn finish(&self) {}
}
