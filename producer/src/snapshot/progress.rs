//! The snapshot's progress: rows, rows/s and ETA.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tracing::info;

use crate::observe::TableObserver;

/// Rows, rows/s and ETA: a line redrawn on a terminal, and a log line every 5 s.
pub(super) struct Progress {
    total: i64,
    done: u64,
    start: Instant,
    last_log: Instant,
    tty: bool,
    observer: Option<TableObserver>,
}

impl Progress {
    pub(super) fn new(total: i64, already: u64, observer: Option<TableObserver>) -> Self {
        if let Some(o) = &observer {
            o.snapshot_started(total, already);
        }
        Self {
            total,
            done: already,
            start: Instant::now(),
            last_log: Instant::now(),
            tty: std::io::stderr().is_terminal(),
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
        if self.tty {
            eprint!(
                "\rsnapshot: {} / ~{} rows, {:.0} rows/s, eta {:.0}s   ",
                self.done, self.total, rate, eta
            );
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

    pub(super) fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
