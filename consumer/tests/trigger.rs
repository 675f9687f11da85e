//! Trigger capture against the real stack: `install`/`uninstall`, concurrent writers with late
//! commits, key changes and TRUNCATE, writes under `session_replication_role = replica`, a
//! producer killed mid-batch, and switching a table between poll and trigger capture.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio_postgres::Client;
use tunnel_shared::testkit::{self as tk, Databases, Proc};

const EMPLOYEES: &str = "CREATE TABLE employees (
    emp_id serial PRIMARY KEY, first_name varchar(100), last_name varchar(100), dob date,
    city varchar(100), salary int)";
/// A composite text key: TRUNCATE writes each key out.
const ACCOUNTS: &str = "CREATE TABLE accounts (
    region text, number int, owner text, balance numeric(12,2), PRIMARY KEY (region, number))";

struct Setup {
    dbs: Databases,
    config: PathBuf,
}

/// `tables` in trigger capture (`capture = "trigger"`), with fast passes.
async fn setup(ddl: &str, tables: &[&str], trigger: bool) -> Setup {
    let dbs = Databases::create().await;
    dbs.source().await.batch_execute(ddl).await.unwrap();
    let config = tk::write_config(&dbs, &tk::unique("trg"), &tk::unique("g"), tables, "");
    tk::add_producer_settings(
        &config,
        "reconcile_interval_ms = 500\nrepair_interval_ms = 200\ndelete_interval_ms = 200",
    );
    if trigger {
        set_capture(&config, tables, "trigger");
    }
    Setup { dbs, config }
}

/// Sets `capture` of `tables` in the config file.
fn set_capture(config: &Path, tables: &[&str], capture: &str) {
    let mut text = std::fs::read_to_string(config).unwrap();
    for t in tables {
        let entry = format!("[[tables]]\nname = \"{t}\"\n");
        let start = text
            .find(&entry)
            .unwrap_or_else(|| panic!("no entry for {t}"));
        let end = start + entry.len();
        // drop a capture line set before
        let rest = &text[end..];
        let rest = match rest.strip_prefix("capture = \"poll\"\n") {
            Some(r) => r,
            None => rest.strip_prefix("capture = \"trigger\"\n").unwrap_or(rest),
        };
        text = format!("{}capture = \"{capture}\"\n{rest}", &text[..end]);
    }
    std::fs::write(config, text).unwrap();
}

/// Runs `tunnel-producer <args> --config <config>`: exit code and output.
fn producer_cli(args: &[&str], config: &Path) -> (i32, String) {
    let (code, out, err) = tk::cli("tunnel-producer", args, config, &[]);
    (code, format!("{out}{err}"))
}

fn install(s: &Setup, table: Option<&str>) {
    let mut args = vec!["install", "--url", &s.dbs.source_admin_url];
    if let Some(t) = table {
        args.extend(["--table", t]);
    }
    let (code, out) = producer_cli(&args, &s.config);
    assert_eq!(code, 0, "install failed: {out}");
}

/// The objects of the pipeline left on the source: schemas, tables, functions, triggers.
async fn capture_objects(src: &Client) -> Vec<String> {
    let rows = src
        .query(
            "SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 'data_tunnel'
             UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'data_tunnel%'
             UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE proname LIKE '%_cdc_%'
             UNION ALL SELECT 'table ' || relname FROM pg_class WHERE relname LIKE '%_cdc%'",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn change_rows(src: &Client, table: &str) -> i64 {
    src.query_one(
        &format!("SELECT count(*) FROM data_tunnel.public_{table}_cdc"),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until the change table of `table` holds at most `most` rows.
async fn wait_trimmed(src: &Client, table: &str, most: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = change_rows(src, table).await;
        if n <= most {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the change table of {table} still holds {n} rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn install_dry_run_refusals_and_uninstall_leave_nothing_behind() {
    let s = setup(EMPLOYEES, &["employees"], true).await;
    let src = s.dbs.source().await;
    // --dry-run prints the SQL and creates nothing
    let (code, out) = producer_cli(
        &["install", "--dry-run", "--url", &s.dbs.source_admin_url],
        &s.config,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("CREATE OR REPLACE TRIGGER \"data_tunnel_capture\""),
        "{out}"
    );
    assert!(
        out.contains(
            "GRANT SELECT, DELETE ON \"data_tunnel\".\"public_employees_cdc\" TO \"tunnel_reader\""
        ),
        "{out}"
    );
    assert!(capture_objects(&src).await.is_empty());
    // the producer's own role may not install: it does not own the table
    let (code, out) = producer_cli(&["install"], &s.config);
    assert_ne!(code, 0);
    assert!(
        out.contains("may not install triggers") && out.contains("owner (app)"),
        "{out}"
    );
    // a producer started before install stops the table, saying what to do
    let mut producer = Proc::start("producer", &s.config);
    let status = producer.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = producer.log_text();
    assert!(log.contains("tunnel-producer install"), "{log}");
    // installed twice: idempotent
    install(&s, None);
    install(&s, Some("employees"));
    let objects = capture_objects(&src).await;
    assert_eq!(objects.len(), 8, "{objects:?}");
    let enabled: i64 = src
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'employees'::regclass AND tgenabled = 'A'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(enabled, 2);
    let (code, out) = producer_cli(&["uninstall", "--url", &s.dbs.source_admin_url], &s.config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("removed schema data_tunnel"), "{out}");
    assert_eq!(capture_objects(&src).await, Vec::<String>::new());
}

/// One writer's work: random inserts, updates (some of the key), deletes, in transactions
/// some of which are held open while the others commit.
async fn writer(url: String, seed: u64, rounds: usize) {
    let src = tk::connect(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..rounds {
        let hold = rng.gen_bool(0.2);
        src.batch_execute("BEGIN").await.unwrap();
        for _ in 0..rng.gen_range(1..5) {
            let sql = match rng.gen_range(0..10) {
                0..=3 => format!(
                    "INSERT INTO employees (first_name, city, salary) VALUES ('w{seed}', 'c', {});
                     INSERT INTO accounts VALUES ('r{}', {}, 'o', {}) ON CONFLICT DO NOTHING",
                    rng.gen_range(1..100_000),
                    rng.gen_range(0..3),
                    rng.gen_range(0..500),
                    rng.gen_range(0..1000)
                ),
                4..=5 => "UPDATE employees SET salary = salary + 1 WHERE emp_id = (SELECT emp_id FROM employees ORDER BY random() LIMIT 1);
                     UPDATE accounts SET balance = balance + 1 WHERE (region, number) = (SELECT region, number FROM accounts ORDER BY random() LIMIT 1)".to_string(),
                6 => format!(
                    // a key change
                    "UPDATE employees SET emp_id = emp_id + 1000000 WHERE emp_id = (SELECT emp_id FROM employees WHERE emp_id < 1000000 ORDER BY random() LIMIT 1);
                     UPDATE accounts SET number = number + {} WHERE (region, number) = (SELECT region, number FROM accounts ORDER BY random() LIMIT 1) AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.number >= 1000)",
                    1000 + seed
                ),
                _ => "DELETE FROM employees WHERE emp_id = (SELECT emp_id FROM employees ORDER BY random() LIMIT 1);
                      DELETE FROM accounts WHERE (region, number) = (SELECT region, number FROM accounts ORDER BY random() LIMIT 1)".to_string(),
            };
            // a conflicting key change or a deadlock aborts the transaction: part of the workload
            if src.batch_execute(&sql).await.is_err() {
                break;
            }
        }
        if hold {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
        }
        let _ = src.batch_execute("COMMIT").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_late_commits_key_changes_and_truncate_end_identical() {
    let s = setup(
        &format!("{EMPLOYEES}; {ACCOUNTS}"),
        &["employees", "accounts"],
        true,
    )
    .await;
    let src = s.dbs.source().await;
    src.batch_execute(
        "INSERT INTO employees (first_name, city, salary) SELECT 'e' || i, 'Paris', i FROM generate_series(1, 500) i;
         INSERT INTO accounts SELECT 'r' || (i % 3), i, 'o', i FROM generate_series(1, 300) i",
    )
    .await
    .unwrap();
    install(&s, None);
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    let procs = [&producer, &consumer];
    tk::wait_identical(&s.dbs, "employees", Duration::from_secs(90), &procs).await;
    let seed: u64 = rand::thread_rng().gen();
    let writers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(writer(s.dbs.source_admin_url.clone(), seed + i, 40)))
        .collect();
    // a TRUNCATE of both tables while the writers go on, then rows again
    tokio::time::sleep(Duration::from_millis(1500)).await;
    src.batch_execute(
        "TRUNCATE employees, accounts;
         INSERT INTO employees (first_name, city, salary) SELECT 'after' || i, 'Oslo', i FROM generate_series(1, 50) i;
         INSERT INTO accounts SELECT 'r9', i, 'after', i FROM generate_series(1, 20) i",
    )
    .await
    .unwrap();
    for w in writers {
        w.await.unwrap();
    }
    tk::wait_identical(&s.dbs, "employees", Duration::from_secs(90), &procs).await;
    tk::wait_identical(&s.dbs, "accounts", Duration::from_secs(90), &procs).await;
    let (code, out) = tk::verify(&s.config, &[]);
    assert_eq!(code, 0, "verify after the workload (seed {seed}):\n{out}");
    wait_trimmed(&src, "employees", 0).await;
    wait_trimmed(&src, "accounts", 0).await;
    let log = producer.log_text();
    assert!(log.contains("the table was truncated"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_as_a_replica_role_are_captured() {
    // session_replication_role is a superuser's setting: a private server where the test is one
    let pg = tk::PrivatePostgres::start();
    let dbs = Databases::create_on(Some(&pg), None).await;
    dbs.source().await.batch_execute(EMPLOYEES).await.unwrap();
    let config = tk::write_config(
        &dbs,
        &tk::unique("trg"),
        &tk::unique("g"),
        &["employees"],
        "",
    );
    set_capture(&config, &["employees"], "trigger");
    let s = Setup { dbs, config };
    install(&s, None);
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    let procs = [&producer, &consumer];
    pg.psql(
        &s.dbs.name,
        "SET session_replication_role = replica;
         INSERT INTO employees (first_name, city, salary) SELECT 'r' || i, 'Rome', i FROM generate_series(1, 20) i;
         UPDATE employees SET city = 'Lima' WHERE emp_id <= 5;
         DELETE FROM employees WHERE emp_id > 15;",
    );
    tk::wait_identical(&s.dbs, "employees", Duration::from_secs(90), &procs).await;
    let n: i64 = s
        .dbs
        .target()
        .await
        .query_one("SELECT count(*) FROM employees WHERE city = 'Lima'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    // nothing else is written: the last batch is trimmed all the same
    wait_trimmed(&s.dbs.source().await, "employees", 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_killed_mid_batch_loses_nothing() {
    let s = setup(EMPLOYEES, &["employees"], true).await;
    // a batch read over many passes
    tk::add_producer_settings(&s.config, "scan_chunk_rows = 500");
    let src = s.dbs.source().await;
    src.batch_execute(
        "INSERT INTO employees (first_name, city, salary) SELECT 'e' || i, 'Paris', i FROM generate_series(1, 1000) i",
    )
    .await
    .unwrap();
    install(&s, None);
    let mut producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    tk::wait_identical(
        &s.dbs,
        "employees",
        Duration::from_secs(90),
        &[&producer, &consumer],
    )
    .await;
    // one transaction of 30000 changes, then another of deletes
    src.batch_execute(
        "INSERT INTO employees (first_name, city, salary) SELECT 'n' || i, 'Kyiv', i FROM generate_series(1, 20000) i;
         UPDATE employees SET salary = salary * 2 WHERE emp_id % 2 = 0;
         DELETE FROM employees WHERE emp_id % 7 = 0",
    )
    .await
    .unwrap();
    // killed while the batch is under way: the change table still holds most of it
    let before = producer.log_text().matches("shipped changes").count();
    tk::wait_for(
        "the producer to start the batch",
        Duration::from_secs(60),
        || async {
            let n = change_rows(&src, "employees").await;
            let shipped = producer.log_text().matches("shipped changes").count();
            (shipped > before && n > 0).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    producer.kill9();
    let producer = Proc::start("producer", &s.config);
    tk::wait_identical(
        &s.dbs,
        "employees",
        Duration::from_secs(120),
        &[&producer, &consumer],
    )
    .await;
    let (code, out) = tk::verify(&s.config, &[]);
    assert_eq!(code, 0, "{out}");
    wait_trimmed(&src, "employees", 0).await;
}

/// Updates, deletes and an insert (from key `first` on) in `capture`; the replica follows
/// without a snapshot, and the producer said it switched.
async fn change_and_wait(
    s: &Setup,
    src: &Client,
    producer: &Proc,
    consumer: &Proc,
    capture: &str,
    first: i32,
) {
    src.batch_execute(&format!(
        "UPDATE employees SET city = '{capture}', salary = 1 WHERE emp_id BETWEEN {first} AND {};
         DELETE FROM employees WHERE emp_id BETWEEN {} AND {};
         INSERT INTO employees (first_name) VALUES ('{capture}')",
        first + 9,
        first + 10,
        first + 19
    ))
    .await
    .unwrap();
    tk::wait_identical(
        &s.dbs,
        "employees",
        Duration::from_secs(120),
        &[producer, consumer],
    )
    .await;
    let log = producer.log_text();
    assert!(
        log.contains(&format!("switched to {capture} capture")),
        "{log}"
    );
    assert!(!log.contains("snapshot started"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_between_poll_and_trigger_capture_needs_no_snapshot_and_leaves_no_gap() {
    let s = setup(EMPLOYEES, &["employees"], false).await;
    let src = s.dbs.source().await;
    src.batch_execute(
        "INSERT INTO employees (first_name, city, salary) SELECT 'e' || i, 'Paris', i FROM generate_series(1, 300) i",
    )
    .await
    .unwrap();
    let mut producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    tk::wait_identical(
        &s.dbs,
        "employees",
        Duration::from_secs(90),
        &[&producer, &consumer],
    )
    .await;
    producer.terminate(Duration::from_secs(30));
    // the gap: changes while no producer runs and nothing is installed
    src.batch_execute(
        "UPDATE employees SET city = 'gap' WHERE emp_id <= 10;
         DELETE FROM employees WHERE emp_id BETWEEN 11 AND 20;
         INSERT INTO employees (first_name) VALUES ('gap')",
    )
    .await
    .unwrap();
    install(&s, Some("employees"));
    set_capture(&s.config, &["employees"], "trigger");
    let mut producer = Proc::start("producer", &s.config);
    change_and_wait(&s, &src, &producer, &consumer, "trigger", 21).await;
    producer.terminate(Duration::from_secs(30));
    // and back, the triggers still installed
    set_capture(&s.config, &["employees"], "poll");
    let producer = Proc::start("producer", &s.config);
    change_and_wait(&s, &src, &producer, &consumer, "poll", 41).await;
    let (code, out) = tk::verify(&s.config, &[]);
    assert_eq!(code, 0, "{out}");
}
