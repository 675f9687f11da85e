//! How far a whole-table comparison has got: a bar on standard error when it is a terminal
//! ([`tunnel_shared::progress`]), else a log line every 10 s. Standard output is left to the
//! report.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::info;
use tunnel_shared::pg::PgError;
use tunnel_shared::progress::Bar;
use tunnel_shared::reconcile::Tick;

/// Rows per top range of an integer key when a table is cut for progress: each is one
/// aggregate per side, reported when it is done.
const ROWS_PER_TOP_RANGE: i64 = 1_000_000;

/// Most top ranges (a level of the bisection has as many buckets).
const MAX_TOP_RANGES: i64 = 64;

const LOG_EVERY: Duration = Duration::from_secs(10);

/// The planner's estimate of the rows of `table` (qualified, quoted), 0 when unknown.
pub(super) async fn estimated_rows(client: &Client, table: &str) -> Result<i64, PgError> {
    let row = client
        .query_one(
            "SELECT GREATEST(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await
        .map_err(PgError::query("estimating the table's rows"))?;
    Ok(row.get(0))
}

/// Below this correlation of the key with the rows' physical order (on either side), a range
/// of keys is spread over the whole table and each top range would read all of it again.
const MIN_CORRELATION: f64 = 0.8;

/// The planner's statistics of the correlation of column `column` of `schema.table` with the
/// rows' physical order (-1 to 1), when analysed.
pub(super) async fn key_correlation(
    client: &Client,
    schema: &str,
    table: &str,
    column: &str,
) -> Result<Option<f64>, PgError> {
    let row = client
        .query_opt(
            "SELECT correlation::float8 FROM pg_stats WHERE schemaname = $1 AND tablename = $2 AND attname = $3",
            &[&schema, &table, &column],
        )
        .await
        .map_err(PgError::query("reading the key's correlation"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// How many ranges an integer key's span is cut into first, for a table of `rows` rows whose
/// key's correlation with the physical order is `correlation` on each side: one when the key
/// is not known to follow that order (a range query there reads most of the table).
pub(super) fn top_ranges(rows: i64, correlation: [Option<f64>; 2]) -> i64 {
    let ordered = correlation
        .iter()
        .all(|c| c.is_some_and(|c| c.abs() >= MIN_CORRELATION));
    if !ordered {
        return 1;
    }
    (rows / ROWS_PER_TOP_RANGE).clamp(1, MAX_TOP_RANGES)
}

pub(super) struct Progress {
    what: String,
    /// Rows both sides hold, by the planner's estimates.
    total_rows: u64,
    start: Instant,
    last_log: Instant,
    tty: bool,
    bar: Bar,
}

impl Progress {
    /// `what`: the table and the kind of comparison; `total_rows`: both sides' rows, estimated.
    pub(super) fn new(what: String, total_rows: u64) -> Self {
        let bar = Bar::new(&format!("verify {what}"), total_rows, "rows");
        Self {
            what,
            total_rows,
            start: Instant::now(),
            last_log: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            bar,
        }
    }

    pub(super) fn tick(&mut self, t: Tick) {
        let elapsed = self.start.elapsed();
        let (done, _) = share_and_eta(self.total_rows, elapsed, t);
        self.bar
            .set_position((done * self.total_rows as f64) as u64);
        if !self.tty && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let (done, eta) = share_and_eta(self.total_rows, elapsed, t);
            info!(
                table = %self.what,
                percent = (done * 100.0) as u64,
                rows_compared = t.rows_compared,
                estimated_rows = self.total_rows,
                eta_s = eta.map(|e| e.as_secs()),
                "verify progress"
            );
        }
    }

    /// The comparison is over: the bar goes (the report follows).
    pub(super) fn finish(self) {}
}

/// The share done (the key span settled, else rows over the estimate) and the time left.
fn share_and_eta(total_rows: u64, elapsed: Duration, t: Tick) -> (f64, Option<Duration>) {
    let done = match t.settled {
        Some(f) => f,
        None if total_rows > 0 => (t.rows_compared as f64 / total_rows as f64).min(1.0),
        None => 0.0,
    };
    let eta = (done > 0.0).then(|| elapsed.mul_f64((1.0 - done) / done));
    (done, eta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_ranges_grow_with_the_table_and_stop_at_a_level() {
        let ordered = [Some(1.0), Some(-0.95)];
        assert_eq!(top_ranges(0, ordered), 1);
        assert_eq!(top_ranges(999_999, ordered), 1);
        assert_eq!(top_ranges(10_000_000, ordered), 10);
        assert_eq!(top_ranges(1_000_000_000, ordered), MAX_TOP_RANGES);
    }

    #[test]
    fn keys_scattered_over_the_table_are_not_cut() {
        assert_eq!(top_ranges(10_000_000, [Some(1.0), Some(0.1)]), 1);
        assert_eq!(top_ranges(10_000_000, [None, Some(1.0)]), 1);
    }

    #[test]
    fn the_share_done_and_the_time_left() {
        let t = Tick {
            settled: Some(0.25),
            rows_compared: 5_000_000,
        };
        let (done, eta) = share_and_eta(20_000_000, Duration::from_secs(5), t);
        assert_eq!((done, eta), (0.25, Some(Duration::from_secs(15))));
        // other keys: the share is the rows over the estimate
        let t = Tick {
            settled: None,
            rows_compared: 500,
        };
        let (done, eta) = share_and_eta(1_000, Duration::from_secs(1), t);
        assert_eq!((done, eta), (0.5, Some(Duration::from_secs(1))));
        let t = Tick {
            settled: None,
            rows_compared: 0,
        };
        assert_eq!(share_and_eta(0, Duration::from_secs(1), t), (0.0, None));
    }
}
