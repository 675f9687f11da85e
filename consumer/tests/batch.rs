//! Batch runs against the real stack: `tunnel-producer run --once` and `tunnel-consumer run
//! --until-caught-up`, as a scheduler runs them: the first run copies the table, a run after
//! any mix of changes (inserts, updates with and without `updated_at`, deletes) leaves the
//! replica identical, and a run with nothing new ships nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::path::Path;
use std::time::Duration;

use tunnel_shared::testkit::{self as tk, Databases, Proc};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint,
    updated_at timestamp DEFAULT now())";
const EMPLOYEES: &str = "CREATE TABLE employees (
    emp_id serial PRIMARY KEY, first_name varchar(100), city varchar(100), salary int)";

/// Runs `tunnel-<what> run --config <config> <flag>` to its end: exit code and output.
fn batch(what: &str, flag: &str, config: &Path) -> (i32, String) {
    let mut p = Proc::start_with(
        what,
        &["run", "--config", &config.display().to_string(), flag],
        config,
    );
    let status = p.wait_exit(Duration::from_secs(120));
    (status.code().unwrap_or(-1), p.log_text())
}

/// The summary number of `table` in a batch run's output (`public.media: 12 events ...`).
fn events(out: &str, table: &str) -> i64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{table}: ")))
        .unwrap_or_else(|| panic!("no summary line for {table} in:\n{out}"));
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line}"))
}

/// One scheduled run: the producer, then the consumer; the events each reported per table.
fn scheduled_run(config: &Path, tables: &[&str]) -> Vec<(i64, i64)> {
    let (code, produced) = batch("producer", "--once", config);
    assert_eq!(code, 0, "producer --once:\n{produced}");
    let (code, consumed) = batch("consumer", "--until-caught-up", config);
    assert_eq!(code, 0, "consumer --until-caught-up:\n{consumed}");
    tables
        .iter()
        .map(|t| (events(&produced, t), events(&consumed, t)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_runs_copy_every_change_and_ship_nothing_when_nothing_changed() {
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(&format!("{MEDIA}; {EMPLOYEES}"))
        .await
        .unwrap();
    src.batch_execute(
        "INSERT INTO media (s3_path, format, type) SELECT '/p/' || i, 'jpg', 1 FROM generate_series(1, 2000) i;
         INSERT INTO employees (first_name, city, salary) SELECT 'e' || i, 'Oslo', i FROM generate_series(1, 50) i",
    )
    .await
    .unwrap();
    let config = tk::write_config(
        &dbs,
        &tk::unique("batch"),
        &tk::unique("g"),
        &["media", "employees"],
        "",
    );
    let tables = ["public.media", "public.employees"];
    // the first run: the snapshot
    let first = scheduled_run(&config, &tables);
    assert_eq!(first, vec![(2000, 2000), (50, 50)]);
    tk::wait_identical(&dbs, "media", Duration::from_secs(5), &[]).await;
    tk::wait_identical(&dbs, "employees", Duration::from_secs(5), &[]).await;
    // every kind of change, employees without a watermark column
    src.batch_execute(
        "INSERT INTO media (s3_path, format, type) VALUES ('/new', 'png', 1);
         UPDATE media SET format = 'gif', updated_at = now() WHERE id = 10;
         UPDATE media SET s3_path = '/silent' WHERE id = 11;
         DELETE FROM media WHERE id IN (12, 13);
         UPDATE employees SET salary = 99 WHERE emp_id = 3;
         DELETE FROM employees WHERE emp_id = 4;
         INSERT INTO employees (first_name) VALUES ('new')",
    )
    .await
    .unwrap();
    let second = scheduled_run(&config, &tables);
    tk::wait_identical(&dbs, "media", Duration::from_secs(5), &[]).await;
    tk::wait_identical(&dbs, "employees", Duration::from_secs(5), &[]).await;
    assert!(second[0].0 >= 5, "{second:?}");
    let (code, out) = tk::verify(&config, &[]);
    assert_eq!(code, 0, "{out}");
    // nothing changed: nothing shipped, nothing applied
    let third = scheduled_run(&config, &tables);
    assert_eq!(third, vec![(0, 0), (0, 0)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_error_exits_2_and_a_failure_exits_1() {
    let dir = std::env::temp_dir().join(tk::unique("batchcfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.toml");
    let mut cmd = std::process::Command::new(tk::bin("tunnel-producer"));
    let out = cmd
        .args(["run", "--once", "--config", &missing.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // a table that does not exist stops the run with 1
    let dbs = Databases::create().await;
    let config = tk::write_config(
        &dbs,
        &tk::unique("batch"),
        &tk::unique("g"),
        &["nowhere"],
        "",
    );
    let (code, out) = batch("producer", "--once", &config);
    assert_eq!(code, 1, "{out}");
}
