//! A ceiling on the rows read per second.

use std::time::{Duration, Instant};

/// Keeps the rows read per second under a ceiling by sleeping after a read that got ahead.
pub(super) struct Throttle {
    per_second: u64,
    window_start: Instant,
    rows: u64,
}

impl Throttle {
    pub(super) fn new(per_second: u64) -> Self {
        Self {
            per_second,
            window_start: Instant::now(),
            rows: 0,
        }
    }

    pub(super) async fn account(&mut self, rows: u64) {
        if self.per_second == 0 {
            return;
        }
        if self.window_start.elapsed() > Duration::from_secs(10) {
            self.window_start = Instant::now();
            self.rows = 0;
        }
        self.rows += rows;
        let due = Duration::from_secs_f64(self.rows as f64 / self.per_second as f64);
        let elapsed = self.window_start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}
