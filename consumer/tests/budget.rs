//! The source cost budget and the background lane, end to end: passes stay within
//! `max_cpu_share` of one source core under steady writes (measured by `pg_stat_statements`,
//! not by the producer), and the key scan ships new rows while a long background pass reads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_postgres::Client;
use tunnel_shared::testkit::{self as tk, Databases, Proc};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint,
    updated_at timestamp DEFAULT now())";

/// A source and target with a `media` table of `n` rows, and the config (`producer` and
/// `source` settings added).
async fn setup(n: i64, producer: &str, source: &str) -> (Databases, std::path::PathBuf, Client) {
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(MEDIA).await.unwrap();
    src.batch_execute(&format!(
        "INSERT INTO media (s3_path, format, type) SELECT '/p/' || i, 'jpg', 1 FROM generate_series(1, {n}) i; ANALYZE media"
    ))
    .await
    .unwrap();
    let config = tk::write_config(&dbs, &tk::unique("bud"), &tk::unique("g"), &["media"], "");
    tk::add_producer_settings(&config, producer);
    tk::add_source_settings(&config, source);
    (dbs, config, src)
}

/// Waits until the replica of `media` equals the source, at most `secs` seconds.
async fn identical(dbs: &Databases, secs: u64, procs: &[&Proc]) {
    tk::wait_identical(dbs, "media", Duration::from_secs(secs), procs).await;
}

/// Seconds the reader role's statements have run in this database so far
/// (`pg_stat_statements`, which the stack loads and every test database has).
async fn source_seconds(src: &Client) -> f64 {
    let row = src
        .query_one(
            "SELECT coalesce(sum(total_exec_time), 0)::float8 / 1000 FROM pg_stat_statements
              WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND userid = 'tunnel_reader'::regrole",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_stay_within_the_source_cost_budget_under_steady_writes() {
    // 300k rows: a watermark pass reads ~20 MB; on its 100 ms interval, unbudgeted, the
    // passes take a third of a core and more
    const ROWS: i64 = 300_000;
    const SHARE: f64 = 0.05;
    let (dbs, config, src) = setup(ROWS, "", &format!("max_cpu_share = {SHARE}")).await;
    let producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    identical(&dbs, 180, &[&producer, &consumer]).await;

    // steady writes, 10 a second: inserts, updates with and without updated_at, deletes
    let before = source_seconds(&src).await;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..300u32 {
        tick.tick().await;
        let id = rand::thread_rng().gen_range(1..=ROWS);
        let sql = match i % 4 {
            0 => "INSERT INTO media (s3_path, format, type) VALUES ('/new', 'png', 2)".to_string(),
            1 => format!("UPDATE media SET s3_path = '/u{i}', updated_at = now() WHERE id = {id}"),
            2 => format!("UPDATE media SET format = 'gif' WHERE id = {id}"),
            _ => format!("DELETE FROM media WHERE id = {id}"),
        };
        src.batch_execute(&sql).await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let spent = source_seconds(&src).await - before;
    let share = spent / elapsed;
    eprintln!(
        "source time of the pipeline's statements: {spent:.2} s over {elapsed:.1} s = {:.1}% of one core (budget {:.0}%)",
        share * 100.0,
        SHARE * 100.0
    );
    // every change arrives, silent ones and deletes included
    identical(&dbs, 120, &[&producer, &consumer]).await;
    // the key scan, probes and activity reads (a few ms a tick) come on top of the budget,
    // and a pass's cost is charged after it: twice the share is the bound
    assert!(
        share <= 2.0 * SHARE,
        "the pipeline took {:.1}% of a source core over {elapsed:.0} s, budget {:.0}%\n{}",
        share * 100.0,
        SHARE * 100.0,
        producer.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_scan_ships_new_rows_while_a_long_background_pass_reads() {
    // the watermark scan alone in the background (no deletes, reconciliation off), no budget,
    // and every connection's reads capped at 5000 rows/s: a pass that reads the whole table
    // takes 6 s whatever the machine
    const ROWS: i64 = 30_000;
    let (dbs, config, src) = setup(
        ROWS,
        "max_rows_per_second = 5000\nreconcile_interval_ms = 0",
        "max_cpu_share = 0",
    )
    .await;
    let producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    producer
        .wait_logged(
            "first watermark pass after the snapshot done",
            Duration::from_secs(120),
        )
        .await;
    identical(&dbs, 60, &[&producer, &consumer]).await;

    // every row changes: the next watermark pass reads all 30k (6 s at the cap)
    src.batch_execute("UPDATE media SET format = 'bulk', updated_at = now()")
        .await
        .unwrap();
    let bulk_at = Instant::now();
    let tgt = dbs.target().await;
    // new rows every 250 ms meanwhile; when each became visible in the target, and when the
    // first bulk change did
    let mut inserted: HashMap<i32, Instant> = HashMap::new();
    let mut seen: HashMap<i32, Instant> = HashMap::new();
    let mut bulk_seen: Option<Instant> = None;
    let mut last_insert = Instant::now() - Duration::from_secs(1);
    let deadline = bulk_at + Duration::from_secs(90);
    loop {
        let now = Instant::now();
        if now.duration_since(last_insert) >= Duration::from_millis(250) && inserted.len() < 60 {
            let id: i32 = src
                .query_one(
                    "INSERT INTO media (s3_path, format, type) VALUES ('/during', 'png', 2) RETURNING id",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            inserted.insert(id, Instant::now());
            last_insert = now;
        }
        let rows = tgt
            .query("SELECT id FROM media WHERE s3_path = '/during'", &[])
            .await
            .unwrap();
        for r in rows {
            seen.entry(r.get(0)).or_insert_with(Instant::now);
        }
        let bulk: i64 = tgt
            .query_one("SELECT count(*) FROM media WHERE format = 'bulk'", &[])
            .await
            .unwrap()
            .get(0);
        if bulk > 0 && bulk_seen.is_none() {
            bulk_seen = Some(Instant::now());
        }
        if bulk == ROWS && seen.len() == inserted.len() && inserted.len() >= 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bulk change ({bulk} of {ROWS} rows) or the new rows ({} of {}) did not arrive\n{}",
            seen.len(),
            inserted.len(),
            producer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bulk_seen = bulk_seen.unwrap();
    // rows inserted well after the long pass began reached the target before it ended
    let during: Vec<(Duration, Duration)> = inserted
        .iter()
        .filter(|(_, at)| at.duration_since(bulk_at) >= Duration::from_millis(1_500))
        .filter(|(id, _)| seen[*id] < bulk_seen)
        .map(|(id, at)| (at.duration_since(bulk_at), seen[id].duration_since(*at)))
        .collect();
    eprintln!(
        "bulk change visible after {:?}; rows inserted 1.5 s or more after it and visible before it: {} (insert time after the bulk change, latency): {during:?}",
        bulk_seen.duration_since(bulk_at),
        during.len()
    );
    assert!(
        !during.is_empty(),
        "no row inserted 1.5 s after the bulk change reached the target before it did (after {:?}): the key scan waited for the watermark pass\n{}",
        bulk_seen.duration_since(bulk_at),
        producer.log_text()
    );
    identical(&dbs, 60, &[&producer, &consumer]).await;
}
