//! End-to-end tests of what a read-only source does not announce: hard deletes, rows changed
//! without `updated_at` moving, tables without a watermark column, and `verify`/`--repair`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use tokio_postgres::Client;
use tunnel_shared::testkit::{self as tk, Databases, Proc};

/// Debezium's meaning of each op, read back from the topic.
#[path = "capture/ops.rs"]
mod ops;

/// A restarted producer reads its saved key set back, or the topic when it cannot.
#[path = "capture/restart.rs"]
mod restart;

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint,
    updated_at timestamp DEFAULT now())";
/// The seed's example table: no `updated_at` at all.
const EMPLOYEES: &str = "CREATE TABLE employees (
    emp_id serial PRIMARY KEY, first_name varchar(100), last_name varchar(100), dob date,
    city varchar(100), salary int)";

/// Fast cadences for the passes that find deletes and silent changes.
const FAST: &str =
    "delete_interval_ms = 200\nreconcile_interval_ms = 500\nrepair_interval_ms = 200";

struct Setup {
    dbs: Databases,
    config: PathBuf,
}

async fn setup(ddl: &str, tables: &[&str], producer_settings: &str) -> Setup {
    let dbs = Databases::create().await;
    dbs.source().await.batch_execute(ddl).await.unwrap();
    let config = tk::write_config(&dbs, &tk::unique("cap"), &tk::unique("g"), tables, "");
    tk::add_producer_settings(&config, producer_settings);
    Setup { dbs, config }
}

/// A `media` table of `n` rows (ids 1 to `n`) in the source, and a connection to the source.
async fn setup_media(n: i64, producer_settings: &str) -> (Setup, Client) {
    let s = setup(MEDIA, &["media"], producer_settings).await;
    let src = s.dbs.source().await;
    src.batch_execute(&format!("INSERT INTO media (s3_path, format, type) SELECT '/p/' || i, 'jpg', 1 FROM generate_series(1, {n}) i"))
        .await
        .unwrap();
    (s, src)
}

/// Waits until `verify` exits 0 (the replica is identical), or panics with its last report.
async fn wait_verified(config: &std::path::Path, timeout: Duration, procs: &[&Proc]) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (code, out) = tk::verify(config, &[]);
        if code == 0 {
            return;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
            panic!("verify never came clean within {timeout:?}; last report (exit {code}):\n{out}\nlogs:\n{}", logs.join("\n----\n"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hour_window_all_three_traps_then_verify_is_clean() {
    let s = setup(MEDIA, &["media"], FAST).await;
    let src = s.dbs.source().await;
    src.batch_execute(
        "INSERT INTO media (id, s3_path, format, type, updated_at) VALUES
           (1, '/a.jpg', 'jpg', 1, '2021-01-01 00:10'), (2, '/b.jpg', 'jpg', 1, '2021-01-01 00:20'),
           (3, '/c.jpg', 'jpg', 1, '2021-01-01 00:30');",
    )
    .await
    .unwrap();
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    wait_verified(&s.config, Duration::from_secs(60), &[&producer, &consumer]).await;
    src.batch_execute(
        "UPDATE media SET s3_path = '/xx.jpg', updated_at = '2021-01-01 01:21' WHERE id = 1;
         INSERT INTO media (id, s3_path, format, type, updated_at) VALUES
           (4, '/d.mp4', 'mp4', 2, '2021-01-01 01:30'), (5, '/e.jpg', 'jpg', 1, '2021-01-01 01:40');",
    )
    .await
    .unwrap();
    wait_verified(&s.config, Duration::from_secs(20), &[&producer, &consumer]).await;
    src.batch_execute(
        "UPDATE media SET s3_path = '/zz.gif', format = 'gif', updated_at = '2021-01-01 02:30' WHERE id = 2;
         DELETE FROM media WHERE id = 3;
         INSERT INTO media (id, s3_path, format, type, updated_at) VALUES (6, '/f.jpg', 'jpg', 1, '2021-01-01 01:40');
         UPDATE media SET s3_path = '/x.jpg' WHERE id = 1;",
    )
    .await
    .unwrap();
    wait_verified(&s.config, Duration::from_secs(30), &[&producer, &consumer]).await;
    let tgt = s.dbs.target().await;
    assert_eq!(
        tk::try_table_text(&tgt, "media").await.unwrap(),
        vec![
            "(1,/x.jpg,jpg,1,\"2021-01-01 01:21:00\")",
            "(2,/zz.gif,gif,1,\"2021-01-01 02:30:00\")",
            "(4,/d.mp4,mp4,2,\"2021-01-01 01:30:00\")",
            "(5,/e.jpg,jpg,1,\"2021-01-01 01:40:00\")",
            "(6,/f.jpg,jpg,1,\"2021-01-01 01:40:00\")",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_differences_and_repair_ships_them_through_the_producer() {
    // reconciliation off: only a repair can fix a change that moved no watermark
    let s = setup(
        MEDIA,
        &["media"],
        "reconcile_interval_ms = 0\nrepair_interval_ms = 200",
    )
    .await;
    let src = s.dbs.source().await;
    // old timestamps: a restarted producer's watermark scan does not read these rows again
    src.batch_execute(
        "INSERT INTO media (s3_path, format, type, updated_at)
           SELECT '/p/' || i, 'jpg', 1, '2020-01-01'::timestamp + i * interval '1 second' FROM generate_series(1, 500) i",
    )
    .await
    .unwrap();
    let mut producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    wait_verified(&s.config, Duration::from_secs(60), &[&producer, &consumer]).await;
    assert!(producer.terminate(Duration::from_secs(30)).success());
    src.batch_execute("UPDATE media SET s3_path = '/silent' WHERE id IN (7, 300); INSERT INTO media (id, s3_path) VALUES (9001, '/new')")
        .await
        .unwrap();
    let (code, out) = tk::verify(&s.config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 missing from the target"), "{out}");
    assert!(out.contains("missing: (9001)"), "{out}");
    assert!(out.contains("differing: (300) (7)"), "{out}");
    // nothing was written by verify itself
    let (code, _) = tk::verify(&s.config, &["--repair"]);
    assert_eq!(code, 1);
    let producer = Proc::start("producer", &s.config);
    wait_verified(&s.config, Duration::from_secs(30), &[&producer, &consumer]).await;
    assert!(
        producer.log_text().contains("repair requested"),
        "{}",
        producer.log_text()
    );
    // a bad table name is an error (exit 2), not a difference
    let (code, out) = tk::verify(&s.config, &["--table", "nope"]);
    assert_eq!(code, 2, "{out}");
}

/// Inserts, updates (some that do not touch `updated_at`) and deletes on both tables.
async fn churn(url: String, ops: usize, seed: u64) {
    let c = tk::connect(&url).await;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for i in 0..ops {
        let id: i32 = rng.gen_range(1..=400);
        let sql = match rng.gen_range(0..6) {
            0 => format!("INSERT INTO media (s3_path, format, type) VALUES ('/w{seed}/{i}', 'jpg', 1)"),
            1 => format!("UPDATE media SET s3_path = '/u{seed}/{i}', updated_at = now() WHERE id = {id}"),
            2 => format!("UPDATE media SET format = 'gif' WHERE id = {id}"), // updated_at untouched
            3 => format!("DELETE FROM media WHERE id = {id}"),
            4 => format!("INSERT INTO employees (first_name, last_name, dob, city, salary) VALUES ('f{i}', 'l{seed}', '1990-01-01', 'Paris', {})", 20000 + i),
            _ => {
                if rng.gen_bool(0.5) {
                    format!("UPDATE employees SET salary = salary + 1, city = 'Lyon' WHERE emp_id = {}", id % 150 + 1)
                } else {
                    format!("DELETE FROM employees WHERE emp_id = {}", id % 150 + 1)
                }
            }
        };
        c.batch_execute(&sql).await.unwrap();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_silent_updates_and_a_table_without_updated_at_end_verified() {
    let s = setup(
        &format!("{MEDIA}; {EMPLOYEES}"),
        &["media", "employees"],
        FAST,
    )
    .await;
    let src = s.dbs.source().await;
    src.batch_execute(
        "INSERT INTO media (s3_path, format, type) SELECT '/seed/' || i, 'jpg', 1 FROM generate_series(1, 300) i;
         INSERT INTO employees (first_name, last_name, dob, city, salary)
           SELECT 'f' || i, 'l' || i, '1980-01-01'::date + i, 'Oslo', 15000 + i FROM generate_series(1, 100) i;",
    )
    .await
    .unwrap();
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    let writers: Vec<_> = (0..3)
        .map(|w| tokio::spawn(churn(s.dbs.source_admin_url.clone(), 120, w)))
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    wait_verified(&s.config, Duration::from_secs(60), &[&producer, &consumer]).await;
    let deleted: i64 = src
        .query_one("SELECT 400 - count(*) FROM media WHERE id <= 400", &[])
        .await
        .unwrap()
        .get(0);
    assert!(deleted > 0, "the churn deleted nothing");
}

/// A count, or -1 while the table does not exist yet.
/// The deletes the producer's log says its delete scan shipped.
fn delete_scan_deletes(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("detector=\"delete_scan\""))
        .filter_map(|l| {
            l.split("deletes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.map(|r| r.get(0)).unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_scan_reads_the_index_only_and_finds_exactly_the_deleted_keys() {
    const N: i64 = 200_000;
    // reconciliation off: the delete scan alone must find the deletes
    let (s, src) = setup_media(N, "delete_interval_ms = 200\nreconcile_interval_ms = 0").await;
    src.batch_execute("VACUUM ANALYZE media").await.unwrap();
    // the delete scan's top-level query, as the producer runs it: index only, no heap page
    src.batch_execute(
        "BEGIN READ ONLY; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off",
    )
    .await
    .unwrap();
    let plan: String = src
        .query(
            &format!(
                "EXPLAIN (ANALYZE, FORMAT TEXT)
                 SELECT (SELECT count(*) FROM media WHERE id BETWEEN r.lo AND r.hi)::int8
                   FROM unnest(ARRAY[1, 100001]::int8[], ARRAY[100000, {N}]::int8[])
                        WITH ORDINALITY AS r(lo, hi, i)
                  ORDER BY r.i"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    src.batch_execute("COMMIT").await.unwrap();
    assert!(
        plan.contains("Index Only Scan") && plan.contains("Heap Fetches: 0"),
        "{plan}"
    );

    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    let tgt = s.dbs.target().await;
    tk::wait_for("the initial sync", Duration::from_secs(120), || async {
        (tk::try_table_text(&tgt, "media")
            .await
            .map(|r| r.len() as i64)
            == Some(N))
        .then_some(())
    })
    .await;
    // the first delete pass ran over unchanged keys and shipped nothing
    assert!(
        !producer.log_text().contains("detector=\"delete_scan\""),
        "{}",
        producer.log_text()
    );
    let gone = [
        3i64, 977, 15_000, 15_001, 42_424, 99_999, 123_456, 150_000, 187_654, N,
    ];
    let list = gone
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    src.batch_execute(&format!("DELETE FROM media WHERE id IN ({list})"))
        .await
        .unwrap();
    tk::wait_for(
        "the deletes in the target",
        Duration::from_secs(30),
        || async { (count(&tgt, "SELECT count(*) FROM media").await == N - 10).then_some(()) },
    )
    .await;
    assert_eq!(
        count(
            &tgt,
            &format!("SELECT count(*) FROM media WHERE id IN ({list})")
        )
        .await,
        0
    );
    let log = producer.log_text();
    assert_eq!(delete_scan_deletes(&log), 10, "{log}");
    drop(consumer);
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_killed_during_a_delete_pass_does_not_ship_the_table_again() {
    const N: i64 = 100_000;
    let (s, src) = setup_media(N, "delete_interval_ms = 100\nreconcile_interval_ms = 0").await;
    let mut producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    let tgt = s.dbs.target().await;
    tk::wait_for("the initial sync", Duration::from_secs(120), || async {
        (count(&tgt, "SELECT count(*) FROM media").await == N).then_some(())
    })
    .await;
    // every row was written just before the snapshot: a restart before the first watermark
    // pass has kept its bounds reads them all again (and ships them: its memory of the
    // snapshot's rows is gone), which is not what this test is about
    producer
        .wait_logged(
            "first watermark pass after the snapshot done",
            Duration::from_secs(60),
        )
        .await;
    src.batch_execute("DELETE FROM media WHERE id % 1000 = 0")
        .await
        .unwrap();
    // the pass starts once the statistics show the deletes (within about a second): kill the
    // producer around then; whenever it lands, the restart must not ship the table again
    tokio::time::sleep(Duration::from_millis(700)).await;
    producer.kill9();
    let producer = Proc::start("producer", &s.config);
    tk::wait_for(
        "the deletes in the target",
        Duration::from_secs(60),
        || async {
            (count(&tgt, "SELECT count(*) FROM media").await == N - N / 1000).then_some(())
        },
    )
    .await;
    let log = producer.log_text();
    assert!(
        !log.contains("snapshot started"),
        "the restarted producer snapshotted again:\n{log}"
    );
    let shipped_after: u64 = log
        .lines()
        .filter(|l| l.contains("shipped changes"))
        .filter_map(|l| {
            l.split(" events=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        shipped_after <= (N / 1000) as u64 + 50,
        "the restarted producer shipped {shipped_after} events\n{log}"
    );
    drop(consumer);
}

/// The values of `field=` in the lines of `log` that contain `marker`.
fn field_values(log: &str, marker: &str, field: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            l.split(&format!(" {field}="))
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_reads_only_the_rows_written_since_its_last_pass() {
    const N: i64 = 20_000;
    let (s, src) = setup_media(
        N,
        "reconcile_interval_ms = 300\nreconcile_full_interval_ms = 0",
    )
    .await;
    let mut producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    wait_verified(&s.config, Duration::from_secs(90), &[&producer, &consumer]).await;
    // changes no watermark shows: updated_at untouched
    src.batch_execute("UPDATE media SET format = 'gif' WHERE id IN (5, 5000, 19999)")
        .await
        .unwrap();
    wait_verified(&s.config, Duration::from_secs(30), &[&producer, &consumer]).await;
    let log = producer.log_text();
    assert!(log.contains("reconciliation pass"), "{log}");
    assert!(
        !log.contains("whole_table"),
        "a pass compared the whole table:\n{log}"
    );
    // the pass that found the three rows looked up about those rows alone
    let listed = field_values(&log, "reconciliation pass", "listed");
    let differing = field_values(&log, "reconciliation pass", "differing");
    assert!(
        listed
            .iter()
            .zip(&differing)
            .any(|(l, d)| *d == 3 && *l < 100),
        "{log}"
    );
    // restarted, the producer starts from the horizon in its checkpoint
    producer.terminate(Duration::from_secs(20));
    src.batch_execute("UPDATE media SET format = 'png' WHERE id = 77")
        .await
        .unwrap();
    let producer = Proc::start("producer", &s.config);
    wait_verified(&s.config, Duration::from_secs(30), &[&producer, &consumer]).await;
    let log = producer.log_text();
    assert!(log.contains("reconciliation pass"), "{log}");
    assert!(
        !log.contains("whole_table") && !log.contains("snapshot started"),
        "{log}"
    );
    let listed = field_values(&log, "reconciliation pass", "listed");
    assert!(listed.iter().all(|l| *l < 100), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_whole_table_pass_repairs_a_target_changed_behind_the_pipeline() {
    let s = setup(
        EMPLOYEES,
        &["employees"],
        "reconcile_interval_ms = 300\nreconcile_full_interval_ms = 1500",
    )
    .await;
    let src = s.dbs.source().await;
    src.batch_execute("INSERT INTO employees (first_name, last_name, dob, city, salary) SELECT 'f' || i, 'l' || i, '1990-01-01', 'x', i FROM generate_series(1, 500) i")
        .await
        .unwrap();
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    wait_verified(&s.config, Duration::from_secs(60), &[&producer, &consumer]).await;
    // nothing moves in the source: only the whole-table comparison can see this
    let tgt = s.dbs.target().await;
    tgt.batch_execute("UPDATE employees SET city = 'drifted' WHERE emp_id = 42")
        .await
        .unwrap();
    wait_verified(&s.config, Duration::from_secs(30), &[&producer, &consumer]).await;
    let log = producer.log_text();
    assert!(log.contains("whole_table"), "{log}");
}

/// With the consumer stopped, the reconciliation does not ship the events still in flight
/// again on every pass (they fill the topic with copies): it pauses, says so once, and picks up
/// when the consumer applies again.
#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_pauses_while_the_consumer_applies_nothing() {
    let (s, src) = setup_media(100, FAST).await;
    let producer = Proc::start("producer", &s.config);
    let mut consumer = Proc::start("consumer", &s.config);
    tk::wait_identical(
        &s.dbs,
        "media",
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
    consumer.kill9();
    src.batch_execute("INSERT INTO media (s3_path) SELECT '/late' FROM generate_series(1, 50)")
        .await
        .unwrap();
    // the application goes on writing: passes keep running
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (url, on) = (s.dbs.source_admin_url.clone(), writing.clone());
    let writer = tokio::spawn(async move {
        let client = tk::connect(&url).await;
        let mut i = 0;
        while on.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            client
                .execute(
                    "UPDATE media SET s3_path = $1, updated_at = now() WHERE id = $2",
                    &[&format!("/w{i}"), &(i % 100 + 1)],
                )
                .await
                .unwrap();
            // the application's pace
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // the window in which passes (every 500 ms) used to ship the in-flight rows again and
    // again: the assertion is about what does not happen in it
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = producer.log_text();
    let reshipped = log
        .lines()
        .filter(|l| l.contains("shipped changes") && l.contains("detector=\"reconcile\""))
        .count();
    assert!(reshipped <= 1, "shipped again {reshipped} times:\n{log}");
    assert_eq!(log.matches("reconciliation paused").count(), 1, "{log}");
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let consumer = Proc::start("consumer", &s.config);
    tk::wait_identical(
        &s.dbs,
        "media",
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
    producer
        .wait_logged("reconciliation resumed", Duration::from_secs(30))
        .await;
}

/// A table whose key is not one integer finds its deletes by reconciliation only. Rows deleted
/// while their inserts were still on their way to the target (here: the consumer not started
/// yet) look the same on both sides to a pass that runs then; the table is quiet afterwards,
/// and the deletes must still reach the target (a later pass compares again once the events
/// in flight are applied).
#[tokio::test(flavor = "multi_thread")]
async fn deletes_made_while_the_target_catches_up_reach_it_on_a_quiet_table() {
    let s = setup(
        "CREATE TABLE items (code text PRIMARY KEY, v int);
         INSERT INTO items SELECT 'k' || i, i FROM generate_series(1, 5000) i",
        &["items"],
        "reconcile_interval_ms = 500",
    )
    .await;
    let producer = Proc::start("producer", &s.config);
    producer
        .wait_logged("snapshot done", Duration::from_secs(60))
        .await;
    let target = s.dbs.target().await;
    // the consumer has never run: the target has no table yet, then an empty one
    target
        .batch_execute("CREATE TABLE items (code text PRIMARY KEY, v int)")
        .await
        .unwrap();
    s.dbs
        .source()
        .await
        .batch_execute("DELETE FROM items WHERE v % 100 = 0")
        .await
        .unwrap();
    // passes run against the empty target meanwhile (the producer's own interval)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let consumer = Proc::start("consumer", &s.config);
    tk::wait_identical(
        &s.dbs,
        "items",
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
}

/// A session that writes less than a second after its statistics were last reported has its
/// counts in `pg_stat_user_tables` ten seconds later (PostgreSQL's idle report interval); a
/// delete and a silent update made so, on an otherwise quiet table, still reach the target in
/// seconds: the passes look at the WAL position too.
#[tokio::test(flavor = "multi_thread")]
async fn a_lone_delete_and_silent_update_arrive_before_the_statistics_report_them() {
    let (s, src) = setup_media(1000, FAST).await;
    src.batch_execute("CREATE TABLE prime (x int)")
        .await
        .unwrap();
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    tk::wait_identical(
        &s.dbs,
        "media",
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
    // a write elsewhere reports this session's statistics now; the next ones wait
    src.batch_execute("INSERT INTO prime VALUES (1)")
        .await
        .unwrap();
    src.batch_execute(
        "BEGIN; DELETE FROM media WHERE id = 7; UPDATE media SET s3_path = 'silent' WHERE id = 9; COMMIT",
    )
    .await
    .unwrap();
    let written = std::time::Instant::now();
    let target = s.dbs.target().await;
    tk::wait_for(
        "the delete and the silent update in the target",
        Duration::from_secs(60),
        || async {
            let gone = count(&target, "SELECT count(*) FROM media WHERE id = 7").await == 0;
            let silent = count(
                &target,
                "SELECT count(*) FROM media WHERE id = 9 AND s3_path = 'silent'",
            )
            .await
                == 1;
            (gone && silent).then_some(())
        },
    )
    .await;
    let took = written.elapsed();
    // the statistics would have said so after ten seconds
    assert!(
        took < Duration::from_secs(7),
        "the delete and the silent update took {took:?} to reach the target"
    );
}

/// Keys spread over the whole `int8` range (the extremes included) and a dense run beside
/// them: the delete scan cuts the span by the keys it holds, not by their values, and finds
/// exactly the deleted ones.
#[tokio::test(flavor = "multi_thread")]
async fn delete_scan_finds_deletes_among_sparse_and_skewed_keys() {
    let s = setup(
        "CREATE TABLE sparse (id int8 PRIMARY KEY, v int);
         INSERT INTO sparse SELECT DISTINCT ((random() - 0.5) * 1.8e19)::numeric::int8, 0 FROM generate_series(1, 20000);
         INSERT INTO sparse SELECT i, 1 FROM generate_series(1, 30000) i ON CONFLICT DO NOTHING;
         INSERT INTO sparse VALUES (-9223372036854775808, 2), (9223372036854775807, 2) ON CONFLICT DO NOTHING",
        &["sparse"],
        "delete_interval_ms = 200\nreconcile_interval_ms = 0",
    )
    .await;
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    tk::wait_identical(
        &s.dbs,
        "sparse",
        Duration::from_secs(120),
        &[&producer, &consumer],
    )
    .await;
    // the extremes, some of the spread keys, and some of the dense run
    let deleted = s
        .dbs
        .source()
        .await
        .query(
            "DELETE FROM sparse
              WHERE id IN (-9223372036854775808, 9223372036854775807, 1, 15000, 30000)
                 OR id IN (SELECT id FROM sparse WHERE v = 0 ORDER BY id LIMIT 7 OFFSET 3000)
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .len();
    assert_eq!(deleted, 12);
    tk::wait_identical(
        &s.dbs,
        "sparse",
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
    let log = producer.log_text();
    assert_eq!(delete_scan_deletes(&log), deleted, "{log}");
}
