//! Schema evolution end to end: a DDL on the source while the pipeline runs under a steady
//! insert/update load reaches the replica, which ends identical to the source, rows and columns
//! (`verify` compares both). Changes the replica cannot follow stop their table with one clear
//! error, and the other tables go on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tunnel_shared::testkit::{self as tk, Databases, Proc};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY,
    s3_path text,
    format varchar(5),
    price numeric(10,2),
    qty int4 NOT NULL DEFAULT 1,
    updated_at timestamp DEFAULT now());
    INSERT INTO media (s3_path, format, price, qty)
    SELECT '/seed/' || i, 'jpg', i / 100.0, i FROM generate_series(1, 2000) i";

const TIMEOUT: Duration = Duration::from_secs(90);

/// Inserts and updates (of `s3_path` and `updated_at` only, which no DDL here touches) about
/// 20 a second until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    async fn start(dbs: &Databases) -> Load {
        let client = dbs.source().await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut n: i32 = 0;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let sql = if n % 2 == 0 {
                    "INSERT INTO media (s3_path) VALUES ('/load')"
                } else {
                    "UPDATE media SET s3_path = '/u' || id, updated_at = now() WHERE id = (SELECT max(id) FROM media) - 7"
                };
                // a statement may fail while a DDL holds its lock: the load goes on
                let _ = client.execute(sql, &[]).await;
                // the load's own pace, not a wait for a condition
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Load { stop, task }
    }

    async fn end(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

struct Case {
    dbs: Databases,
    config: std::path::PathBuf,
    producer: Proc,
    consumer: Proc,
}

impl Case {
    /// `media` (2000 rows) replicated, identical, with the load running.
    async fn start(extra_tables: &str) -> (Case, Load) {
        Self::start_with(extra_tables, "").await
    }

    /// As [`Case::start`], with `media_options` in its `[[tables]]` entry (`other`, the extra
    /// table, then has none).
    async fn start_with(extra_tables: &str, media_options: &str) -> (Case, Load) {
        let dbs = Databases::create().await;
        dbs.source()
            .await
            .batch_execute(&format!("{MEDIA}; {extra_tables}"))
            .await
            .unwrap();
        let mut tables = vec![];
        if !extra_tables.is_empty() {
            tables.push("other");
        }
        tables.push("media");
        let config = tk::write_config(
            &dbs,
            &tk::unique("sc"),
            &tk::unique("g"),
            &tables,
            media_options,
        );
        tk::add_producer_settings(&config, "reconcile_interval_ms = 2000");
        let producer = Proc::start("producer", &config);
        let consumer = Proc::start("consumer", &config);
        tk::wait_identical(&dbs, "media", TIMEOUT, &[&producer, &consumer]).await;
        let load = Load::start(&dbs).await;
        (
            Case {
                dbs,
                config,
                producer,
                consumer,
            },
            load,
        )
    }

    async fn ddl(&self, sql: &str) {
        self.dbs.source().await.batch_execute(sql).await.unwrap();
    }

    /// The load goes on for 3 s after the DDL, then the target must be identical to the source
    /// and `verify` clean (rows and columns).
    async fn assert_followed(self, load: Load, what: &str) {
        // the load's own duration after the DDL, not a wait for a condition
        tokio::time::sleep(Duration::from_secs(3)).await;
        load.end().await;
        let started = std::time::Instant::now();
        tk::wait_identical(
            &self.dbs,
            "media",
            TIMEOUT,
            &[&self.producer, &self.consumer],
        )
        .await;
        // a constraint (NOT NULL once every row has a value) may follow the rows by a batch
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let (code, out) = loop {
            let (code, out) = tk::verify(&self.config, &[]);
            if code == 0 || std::time::Instant::now() > deadline {
                break (code, out);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert_eq!(code, 0, "{what}: verify: {out}");
        eprintln!(
            "schema change '{what}': identical and verified {:.1} s after the load stopped",
            started.elapsed().as_secs_f64()
        );
    }
}

async fn follows(ddl: &str, what: &str) {
    let (case, load) = Case::start("").await;
    case.ddl(ddl).await;
    case.assert_followed(load, what).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nullable_column_added() {
    follows("ALTER TABLE media ADD COLUMN note text", "add nullable").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_added_with_a_constant_default_existing_rows_included() {
    follows(
        "ALTER TABLE media ADD COLUMN note text DEFAULT 'n/a'",
        "add with constant default",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_added_with_a_volatile_default_existing_rows_included() {
    follows(
        "ALTER TABLE media ADD COLUMN score float8 DEFAULT random()",
        "add with volatile default",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_not_null_column_added_with_a_default() {
    follows(
        "ALTER TABLE media ADD COLUMN stamp timestamptz NOT NULL DEFAULT now()",
        "add NOT NULL with default now()",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn columns_widened() {
    follows(
        "ALTER TABLE media ALTER COLUMN format TYPE varchar(50);
         ALTER TABLE media ALTER COLUMN price TYPE numeric(12,2);
         ALTER TABLE media ALTER COLUMN qty TYPE int8;
         UPDATE media SET format = 'a-longer-format' WHERE id = 5",
        "widen varchar, numeric, int4 -> int8",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_dropped() {
    follows("ALTER TABLE media DROP COLUMN price", "drop").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_renamed_keeps_its_data() {
    let (case, load) = Case::start("").await;
    case.ddl("ALTER TABLE media RENAME COLUMN format TO kind")
        .await;
    case.assert_followed(load, "rename").await;
}

/// A quiet table whose columns are renamed and retyped, then whose rows change without the
/// watermark moving: only a comparison finds those changes, and it meets a replica that has
/// not taken the new columns yet, since no event of the new shape was sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_table_renamed_and_retyped_then_updated_silently() {
    let (case, load) = Case::start("").await;
    load.end().await;
    let procs = [&case.producer, &case.consumer];
    tk::wait_identical(&case.dbs, "media", TIMEOUT, &procs).await;
    case.ddl("ALTER TABLE media RENAME COLUMN format TO kind; ALTER TABLE media ALTER COLUMN qty TYPE int8")
        .await;
    case.ddl("UPDATE media SET kind = 'png', qty = qty + 1 WHERE id % 10 = 0")
        .await;
    tk::wait_identical(&case.dbs, "media", TIMEOUT, &procs).await;
    let (code, out) = tk::verify(&case.config, &[]);
    assert_eq!(code, 0, "verify: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_ddls_in_quick_succession() {
    let (case, load) = Case::start("").await;
    case.ddl("ALTER TABLE media ADD COLUMN note text DEFAULT 'x'")
        .await;
    case.ddl("ALTER TABLE media RENAME COLUMN format TO kind; ALTER TABLE media ALTER COLUMN kind TYPE varchar(20)")
        .await;
    case.assert_followed(load, "two DDLs in quick succession")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ddl_while_the_consumer_is_stopped() {
    let (mut case, load) = Case::start("").await;
    case.consumer.terminate(TIMEOUT);
    case.ddl(
        "ALTER TABLE media ADD COLUMN note text DEFAULT 'n/a'; ALTER TABLE media DROP COLUMN qty",
    )
    .await;
    // the load's own duration with the consumer stopped
    tokio::time::sleep(Duration::from_secs(3)).await;
    case.consumer = Proc::start("consumer", &case.config);
    case.assert_followed(load, "DDL while the consumer is stopped")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ddl_during_the_initial_snapshot() {
    let dbs = Databases::create().await;
    dbs.source()
        .await
        .batch_execute(&format!(
            "{MEDIA}; INSERT INTO media (s3_path) SELECT '/more/' || i FROM generate_series(1, 200000) i"
        ))
        .await
        .unwrap();
    let config = tk::write_config(&dbs, &tk::unique("sc"), &tk::unique("g"), &["media"], "");
    let producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    let target = dbs.target().await;
    tk::wait_for("the snapshot under way", TIMEOUT, || async {
        let n: i64 = target
            .query_one("SELECT count(*) FROM media", &[])
            .await
            .ok()?
            .get(0);
        (n > 1000).then_some(())
    })
    .await;
    dbs.source()
        .await
        .batch_execute("ALTER TABLE media ADD COLUMN note text DEFAULT 'n/a'")
        .await
        .unwrap();
    tk::wait_identical(&dbs, "media", TIMEOUT * 2, &[&producer, &consumer]).await;
    let (code, out) = tk::verify(&config, &[]);
    assert_eq!(code, 0, "verify: {out}");
}

/// A type the registry cannot take (`text` to `int4`): that table stops with one error naming
/// the column, both types and the ways out; the other table goes on.
#[tokio::test(flavor = "multi_thread")]
async fn an_incompatible_type_change_stops_only_its_table() {
    let other =
        "CREATE TABLE other (id int PRIMARY KEY, v text); INSERT INTO other VALUES (1, 'a')";
    let (case, load) = Case::start(other).await;
    tk::wait_identical(
        &case.dbs,
        "other",
        TIMEOUT,
        &[&case.producer, &case.consumer],
    )
    .await;
    case.ddl("ALTER TABLE media ALTER COLUMN s3_path TYPE int4 USING length(s3_path)")
        .await;
    case.producer.wait_logged("table stopped", TIMEOUT).await;
    let log = case.producer.log_text();
    assert!(
        log.contains("column s3_path changed from text to integer") && log.contains("resync"),
        "{log}"
    );
    case.ddl("INSERT INTO other VALUES (2, 'b')").await;
    tk::wait_identical(
        &case.dbs,
        "other",
        TIMEOUT,
        &[&case.producer, &case.consumer],
    )
    .await;
    load.end().await;
}

/// A primary key on other columns: that table stops with the reason. A table dropped is
/// waited for, and once created again (other rows, old timestamps, some keys reused) it is
/// replicated again: identical, `verify` clean.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_primary_key_stops_the_table_and_a_dropped_one_is_waited_for() {
    let (case, load) = Case::start("").await;
    load.end().await;
    case.ddl("ALTER TABLE media DROP CONSTRAINT media_pkey; ALTER TABLE media ADD PRIMARY KEY (id, s3_path)")
        .await;
    case.producer.wait_logged("table stopped", TIMEOUT).await;
    assert!(
        case.producer.log_text().contains("the primary key changed"),
        "{}",
        case.producer.log_text()
    );
    let (case2, load2) = Case::start("").await;
    load2.end().await;
    case2.ddl("DROP TABLE media").await;
    case2
        .producer
        .wait_logged("waiting for it to come back", TIMEOUT)
        .await;
    case2
        .ddl(&MEDIA.replace("generate_series(1, 2000)", "generate_series(1, 700)"))
        .await;
    case2
        .ddl("UPDATE media SET updated_at = '2020-01-01', s3_path = '/again/' || id")
        .await;
    let procs = [&case2.producer, &case2.consumer];
    tk::wait_identical(&case2.dbs, "media", TIMEOUT, &procs).await;
    let (code, out) = tk::verify(&case2.config, &[]);
    assert_eq!(code, 0, "verify: {out}");
    assert!(!case2.producer.log_text().contains("table stopped"));
}

/// Types the target does not have (an enum, a domain, an array of the enum), at creation and
/// added later, are held as text with their constant defaults; a generated column is held as
/// a plain column with its values: identical, and `verify` clean.
#[tokio::test(flavor = "multi_thread")]
async fn types_the_target_lacks_are_held_as_text() {
    let other = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE TABLE other (id int PRIMARY KEY, m mood NOT NULL DEFAULT 'ok', p posint,
            ms mood[], g int GENERATED ALWAYS AS (id * 2) STORED);
        INSERT INTO other (id, m, p, ms) VALUES (1, 'sad', 5, '{sad,happy}'), (2, 'ok', NULL, NULL)";
    let (case, load) = Case::start(other).await;
    let procs = [&case.producer, &case.consumer];
    tk::wait_identical(&case.dbs, "other", TIMEOUT, &procs).await;
    case.ddl("ALTER TABLE media ADD COLUMN feel mood DEFAULT 'happy'; INSERT INTO other (id, p, ms) VALUES (3, 7, '{ok}')")
        .await;
    tk::wait_identical(&case.dbs, "other", TIMEOUT, &procs).await;
    case.assert_followed(load, "types the target lacks").await;
}

/// The replica table dropped by hand while the pipeline runs: the consumer creates it again
/// and goes on; `verify --repair` has the rows it held shipped again: identical.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_table_dropped_by_hand_is_created_again_and_repaired() {
    let (case, load) = Case::start("").await;
    load.end().await;
    let procs = [&case.producer, &case.consumer];
    tk::wait_identical(&case.dbs, "media", TIMEOUT, &procs).await;
    let target = case.dbs.target().await;
    target.batch_execute("DROP TABLE media").await.unwrap();
    case.ddl("INSERT INTO media (s3_path) VALUES ('/after-the-drop')")
        .await;
    tk::wait_for(
        "the new row in the replica created again",
        TIMEOUT,
        || async {
            let rows = tk::try_table_text(&target, "media").await?;
            rows.iter()
                .any(|r| r.contains("/after-the-drop"))
                .then_some(())
        },
    )
    .await;
    case.consumer
        .wait_logged("creating it again", TIMEOUT)
        .await;
    let (code, out) = tk::verify(&case.config, &["--repair"]);
    assert_ne!(code, 0, "the replica lacked the rows it held: {out}");
    tk::wait_identical(&case.dbs, "media", TIMEOUT, &procs).await;
    let (code, out) = tk::verify(&case.config, &[]);
    assert_eq!(code, 0, "verify: {out}");
}

/// Rows of several megabytes (past Kafka's default limit of 1 MB) are replicated; a row past
/// the pipeline's limit (64 MiB) is not shipped, with an error naming its key, and the rows
/// after it are.
#[tokio::test(flavor = "multi_thread")]
async fn large_rows_are_replicated_and_one_too_large_is_named_and_passed_over() {
    let (case, load) = Case::start("").await;
    load.end().await;
    let procs = [&case.producer, &case.consumer];
    case.ddl(
        "INSERT INTO media (id, s3_path) VALUES (100001, repeat('x', 3000000)),
        (100002, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200000) g))",
    )
    .await;
    tk::wait_identical(&case.dbs, "media", TIMEOUT, &procs).await;
    case.ddl("INSERT INTO media (id, s3_path) VALUES (100003, repeat('y', 70000000))")
        .await;
    case.ddl("INSERT INTO media (id, s3_path) VALUES (100004, '/after')")
        .await;
    let target = case.dbs.target().await;
    tk::wait_for("the row after the one too large", TIMEOUT, || async {
        let n: i64 = target
            .query_one("SELECT count(*) FROM media WHERE id = 100004", &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    case.producer
        .wait_logged("larger than the largest message", TIMEOUT)
        .await;
    assert!(case.producer.log_text().contains("100003"));
}

/// The primary key dropped: that table stops alone, naming the way out, while the producer
/// goes on with the other table.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_primary_key_stops_only_its_table() {
    let other = "CREATE TABLE other (id int PRIMARY KEY, v text, w int);
        INSERT INTO other VALUES (1, 'a', 1)";
    let (case, load) = Case::start(other).await;
    load.end().await;
    let procs = [&case.producer, &case.consumer];
    tk::wait_identical(&case.dbs, "other", TIMEOUT, &procs).await;
    case.ddl("ALTER TABLE media DROP CONSTRAINT media_pkey")
        .await;
    case.producer.wait_logged("table stopped", TIMEOUT).await;
    let log = case.producer.log_text();
    assert!(log.contains("primary key was dropped"), "{log}");
    case.ddl("INSERT INTO other VALUES (2, 'b', 2)").await;
    tk::wait_identical(&case.dbs, "other", TIMEOUT, &procs).await;
    assert_eq!(case.producer.log_text().matches("table stopped").count(), 1);
}

/// After a type change the registry refuses (`varchar` to `int4`), the way out the error names:
/// the target table dropped (its values would not convert), `tunnel-producer resync`, which
/// registers the new schema and has the next run snapshot the table again; the consumer
/// creates the table anew and the snapshot fills it: identical, `verify` clean.
#[tokio::test(flavor = "multi_thread")]
async fn resync_after_an_incompatible_change_snapshots_the_table_again() {
    let (mut case, load) = Case::start("").await;
    load.end().await;
    stop_for_the_type_change(&mut case).await;
    case.consumer.terminate(TIMEOUT);
    drop_target_and_resync(&case).await;
    case.producer = Proc::start("producer", &case.config);
    case.consumer = Proc::start("consumer", &case.config);
    tk::wait_identical(
        &case.dbs,
        "media",
        TIMEOUT,
        &[&case.producer, &case.consumer],
    )
    .await;
    let (code, out) = tk::verify(&case.config, &[]);
    assert_eq!(code, 0, "verify after resync: {out}");
}

/// The same with an event of the old schema still unapplied when the consumer stopped (it
/// lagged): after the resync its `varchar` value meets the replica's `int4` column. It must
/// not hold back the row's new version from the snapshot (it once parked its key, and the
/// replica ended one row short), and the replica is created in the new type.
#[tokio::test(flavor = "multi_thread")]
async fn resync_with_an_event_of_the_old_schema_unapplied_ends_identical() {
    let (mut case, load) = Case::start("").await;
    load.end().await;
    case.consumer.terminate(TIMEOUT);
    let shipped = || case.producer.log_text().matches("shipped changes").count();
    let before = shipped();
    case.ddl("UPDATE media SET s3_path = '/late', updated_at = now() WHERE id = 1993")
        .await;
    tk::wait_for("the update shipped", TIMEOUT, || async {
        (shipped() > before).then_some(())
    })
    .await;
    stop_for_the_type_change(&mut case).await;
    drop_target_and_resync(&case).await;
    // small batches: the old event and the snapshot's row of its key are applied apart
    let text = std::fs::read_to_string(&case.config).unwrap().replace(
        "batch_max_wait_ms = 20",
        "batch_max_wait_ms = 20\nbatch_max_events = 50",
    );
    std::fs::write(&case.config, text).unwrap();
    case.producer = Proc::start("producer", &case.config);
    case.producer.wait_logged("snapshot done", TIMEOUT).await;
    case.consumer = Proc::start("consumer", &case.config);
    tk::wait_identical(
        &case.dbs,
        "media",
        TIMEOUT,
        &[&case.producer, &case.consumer],
    )
    .await;
    let (code, out) = tk::verify(&case.config, &[]);
    assert_eq!(code, 0, "verify after resync: {out}");
}

/// `format` to `int4` on the source: the producer stops, the registry refusing the schema.
async fn stop_for_the_type_change(case: &mut Case) {
    case.ddl("ALTER TABLE media ALTER COLUMN format TYPE int4 USING length(format)")
        .await;
    let status = case.producer.wait_exit(TIMEOUT);
    let log = case.producer.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("column format changed from character varying(5) to integer"),
        "{log}"
    );
}

/// The target table dropped, then `tunnel-producer resync --table media`.
async fn drop_target_and_resync(case: &Case) {
    case.dbs
        .target()
        .await
        .batch_execute("DROP TABLE media")
        .await
        .unwrap();
    let mut resync = std::process::Command::new(tk::bin("tunnel-producer"));
    resync
        .args(["resync", "--table", "media", "--config"])
        .arg(&case.config);
    for (var, _) in tunnel_shared::config::ENV_OVERRIDES {
        resync.env_remove(var);
    }
    let out = resync.output().unwrap();
    assert!(
        out.status.success(),
        "resync: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With `on_schema_change = "keep_dropped"`, a column dropped from the source stays in the
/// replica with its values (NULL in rows written since); `verify` lists it apart and is clean.
#[tokio::test(flavor = "multi_thread")]
async fn keep_dropped_keeps_a_dropped_column_with_its_values() {
    let (case, load) = Case::start_with("", "on_schema_change = \"keep_dropped\"\n").await;
    case.ddl("ALTER TABLE media DROP COLUMN price").await;
    // the load's own duration after the DDL
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.end().await;
    let target = case.dbs.target().await;
    tk::wait_for("the load's last rows in the target", TIMEOUT, || async {
        let (src, tgt) = (case.dbs.source().await, &target);
        let a: i64 = src
            .query_one("SELECT count(*) FROM media", &[])
            .await
            .ok()?
            .get(0);
        let b: i64 = tgt
            .query_one("SELECT count(*) FROM media", &[])
            .await
            .ok()?
            .get(0);
        (a == b).then_some(())
    })
    .await;
    let kept: i64 = target
        .query_one(
            "SELECT count(*) FROM media WHERE price IS NOT NULL AND id <= 2000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 2000, "the seed rows keep their prices in the replica");
    tk::wait_for("verify clean", TIMEOUT, || async {
        (tk::verify(&case.config, &[]).0 == 0).then_some(())
    })
    .await;
}

/// Two consumers of one group meet the new schema in their own partitions at once: the DDL is
/// run once (the second finds the version stored), and the replica follows.
#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_of_a_group_evolve_the_replica_once() {
    let (case, load) = Case::start("").await;
    let second = Proc::start("consumer", &case.config);
    case.consumer
        .wait_logged("partitions revoked", TIMEOUT)
        .await;
    case.ddl("ALTER TABLE media ADD COLUMN note text DEFAULT 'n/a'; ALTER TABLE media RENAME COLUMN format TO kind")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.end().await;
    tk::wait_identical(
        &case.dbs,
        "media",
        TIMEOUT,
        &[&case.producer, &case.consumer, &second],
    )
    .await;
    let (code, out) = tk::verify(&case.config, &[]);
    assert_eq!(code, 0, "verify: {out}");
    let evolved = [case.consumer.log_text(), second.log_text()]
        .iter()
        .map(|l| l.matches("replica evolved to a new value schema").count())
        .sum::<usize>();
    assert_eq!(evolved, 1, "the replica was evolved {evolved} times");
}
