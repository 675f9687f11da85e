//! End-to-end tests of the pipeline against the real stack: a source database written by an
//! "application", `tunnel-producer` and `tunnel-consumer` as real processes, and a target
//! database that must end up identical to the source.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use rdkafka::admin::AdminOptions;
use tokio_postgres::Client;
use tunnel_shared::config::KafkaConfig;
use tunnel_shared::testkit::{self as tk, Databases, Proc};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY,
    s3_path varchar(1024),
    format varchar(5),
    type smallint,
    updated_at timestamp DEFAULT now())";

struct Pipeline {
    dbs: Databases,
    config: PathBuf,
    prefix: String,
    group: String,
}

impl Pipeline {
    async fn new(ddl: &str) -> Pipeline {
        Self::with_config(ddl, "").await
    }

    /// `producer_settings` go into the `[producer]` section of the test config.
    async fn with_config(ddl: &str, producer_settings: &str) -> Pipeline {
        let dbs = Databases::create().await;
        dbs.source()
            .await
            .batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("source DDL: {e}"));
        let prefix = tk::unique("it");
        let group = tk::unique("g");
        let config = tk::write_config(&dbs, &prefix, &group, &["media"], "");
        if !producer_settings.is_empty() {
            tk::add_producer_settings(&config, producer_settings);
        }
        Pipeline {
            dbs,
            config,
            prefix,
            group,
        }
    }

    fn topic(&self) -> String {
        format!("{}.public.media", self.prefix)
    }

    /// Waits until the target's table equals the source's, or panics with both and the logs.
    async fn wait_identical(&self, what: &str, timeout: Duration, procs: &[&Proc]) {
        let (src, tgt) = (self.dbs.source().await, self.dbs.target().await);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let a = rows(&src, "media").await;
            let b = rows(&tgt, "media").await;
            if a.is_some() && a == b {
                return;
            }
            if std::time::Instant::now() > deadline {
                let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
                panic!("{what}: target never matched the source within {timeout:?}\nsource: {a:#?}\ntarget: {b:#?}\nlogs:\n{}", logs.join("\n----\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kafka(&self) -> KafkaConfig {
        tk::kafka_config(&self.prefix, &self.group, 3)
    }
}

async fn rows(client: &Client, table: &str) -> Option<Vec<String>> {
    tk::try_table_text(client, table).await
}

async fn row(client: &Client, id: i32) -> Option<String> {
    client
        .query_opt(
            "SELECT whole_row::text FROM media whole_row WHERE id = $1",
            &[&id],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

const HOUR_1: &str = "INSERT INTO media (id, s3_path, format, type, updated_at) VALUES
    (1, '/a.jpg', 'jpg', 1, '2021-01-01 00:10'),
    (2, '/b.jpg', 'jpg', 1, '2021-01-01 00:20'),
    (3, '/c.jpg', 'jpg', 1, '2021-01-01 00:30');
    SELECT setval('media_id_seq', 3);";
const HOUR_2: &str =
    "UPDATE media SET s3_path = '/xx.jpg', updated_at = '2021-01-01 01:21' WHERE id = 1;
    INSERT INTO media (id, s3_path, format, type, updated_at) VALUES
    (4, '/d.mp4', 'mp4', 2, '2021-01-01 01:30'),
    (5, '/e.jpg', 'jpg', 1, '2021-01-01 01:40');
    SELECT setval('media_id_seq', 5);";
const HOUR_3: &str = "UPDATE media SET s3_path = '/zz.gif', format = 'gif', updated_at = '2021-01-01 02:30' WHERE id = 2;
    DELETE FROM media WHERE id = 3;
    INSERT INTO media (id, s3_path, format, type, updated_at) VALUES (6, '/f.jpg', 'jpg', 1, '2021-01-01 01:40');
    SELECT setval('media_id_seq', 6);
    UPDATE media SET s3_path = '/x.jpg' WHERE id = 1;";

#[tokio::test(flavor = "multi_thread")]
async fn three_hour_window_hours_one_and_two_and_hour_three_insert_and_update() {
    let p = Pipeline::new(MEDIA).await;
    let src = p.dbs.source().await;
    src.batch_execute(HOUR_1).await.unwrap();
    let producer = Proc::start("producer", &p.config);
    let consumer = Proc::start("consumer", &p.config);
    p.wait_identical("hour 1", Duration::from_secs(60), &[&producer, &consumer])
        .await;
    src.batch_execute(HOUR_2).await.unwrap();
    p.wait_identical("hour 2", Duration::from_secs(20), &[&producer, &consumer])
        .await;
    let tgt = p.dbs.target().await;
    assert_eq!(
        row(&tgt, 1).await.as_deref(),
        Some("(1,/xx.jpg,jpg,1,\"2021-01-01 01:21:00\")")
    );
    src.batch_execute(HOUR_3).await.unwrap();
    // row 6 (updated_at not newer than hour 2's maximum) and row 2's update must arrive
    tk::wait_for(
        "rows 2 and 6 of hour 3",
        Duration::from_secs(20),
        || async {
            let (a2, a6) = (row(&tgt, 2).await, row(&tgt, 6).await);
            (a2 == row(&src, 2).await && a6 == row(&src, 6).await && a6.is_some()).then_some(())
        },
    )
    .await;
    assert_eq!(
        row(&tgt, 6).await.as_deref(),
        Some("(6,/f.jpg,jpg,1,\"2021-01-01 01:40:00\")")
    );
    assert_eq!(
        row(&tgt, 2).await.as_deref(),
        Some("(2,/zz.gif,gif,1,\"2021-01-01 02:30:00\")")
    );
}

/// One writer: random inserts and updates that stamp `now()` (the transaction's START time),
/// some in transactions held open while the others commit.
async fn writer(url: String, ops: usize, seed: u64) {
    let client = tk::connect(&url).await;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for i in 0..ops {
        let slow = rng.gen_bool(0.2);
        let insert = rng.gen_bool(0.5);
        let id: i32 = rng.gen_range(1..=200);
        let path = format!("/w{seed}/{i}.jpg");
        client.batch_execute("BEGIN").await.unwrap();
        if slow {
            // the transaction starts (now() is fixed here), works a while, then writes
            client.batch_execute("SELECT 1").await.unwrap();
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..800))).await;
        }
        let sql = if insert {
            "INSERT INTO media (s3_path, format, type) VALUES ($1, 'jpg', 1)"
        } else {
            "UPDATE media SET s3_path = $1, updated_at = now() WHERE id = (SELECT id FROM media ORDER BY abs(id - $2) LIMIT 1)"
        };
        if insert {
            client.execute(sql, &[&path]).await.unwrap();
        } else {
            client.execute(sql, &[&path, &id]).await.unwrap();
        }
        if slow {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..500))).await;
        }
        client.batch_execute("COMMIT").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_and_late_commits_end_identical() {
    // no overlap window: only the capture horizon protects the late commits
    let p = Pipeline::with_config(MEDIA, "watermark_overlap_ms = 0").await;
    let src = p.dbs.source().await;
    src.batch_execute("INSERT INTO media (s3_path, format, type) SELECT '/seed/' || i, 'jpg', 1 FROM generate_series(1, 100) i")
        .await
        .unwrap();
    let producer = Proc::start("producer", &p.config);
    let consumer = Proc::start("consumer", &p.config);
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(p.dbs.source_admin_url.clone(), 60, w)))
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    p.wait_identical(
        "after the writers",
        Duration::from_secs(30),
        &[&producer, &consumer],
    )
    .await;
    let counted: i64 = src
        .query_one("SELECT count(*) FROM media", &[])
        .await
        .unwrap()
        .get(0);
    assert!(counted > 100, "the writers inserted nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_producer_and_consumer_loses_nothing_and_applies_nothing_twice() {
    let p = Pipeline::new(MEDIA).await;
    let src = p.dbs.source().await;
    src.batch_execute("INSERT INTO media (s3_path, format, type) SELECT '/seed/' || i, 'jpg', 1 FROM generate_series(1, 3000) i")
        .await
        .unwrap();
    let mut producer = Proc::start("producer", &p.config);
    let mut consumer = Proc::start("consumer", &p.config);
    let load = tokio::spawn(writer(p.dbs.source_admin_url.clone(), 150, 7));
    // let the stream get going, then kill both in the middle of it
    let tgt = p.dbs.target().await;
    tk::wait_for(
        "the first rows in the target",
        Duration::from_secs(60),
        || async {
            rows(&tgt, "media")
                .await
                .filter(|r| r.len() > 100)
                .map(|_| ())
        },
    )
    .await;
    producer.kill9();
    consumer.kill9();
    let producer = Proc::start("producer", &p.config);
    let consumer = Proc::start("consumer", &p.config);
    load.await.unwrap();
    p.wait_identical(
        "after the restart",
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
    // every committed event below the stored offset was applied exactly once
    let book = tk::bookkeeping(&tgt, &p.topic()).await;
    let counts = tk::count_messages(&p.kafka(), &p.topic(), &book);
    for (partition, (_, applied)) in &book {
        assert_eq!(
            counts.get(partition).copied().unwrap_or(0),
            *applied,
            "partition {partition}: events in the topic vs events applied"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_earliest_leaves_target_unchanged() {
    let p = Pipeline::new(MEDIA).await;
    let src = p.dbs.source().await;
    src.batch_execute(HOUR_1).await.unwrap();
    src.batch_execute(HOUR_2).await.unwrap();
    let mut producer = Proc::start("producer", &p.config);
    let mut consumer = Proc::start("consumer", &p.config);
    p.wait_identical(
        "initial sync",
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
    assert!(
        producer.terminate(Duration::from_secs(30)).success(),
        "producer exit: {}",
        producer.log_text()
    );
    assert!(
        consumer.terminate(Duration::from_secs(30)).success(),
        "consumer exit: {}",
        consumer.log_text()
    );
    let tgt = p.dbs.target().await;
    let before = rows(&tgt, "media").await;
    let book_before = tk::bookkeeping(&tgt, &p.topic()).await;
    // forget the group's offsets in Kafka: the consumer starts again from the earliest offset
    let admin = tunnel_shared::kafka::admin(&p.kafka()).unwrap();
    let deleted = admin
        .delete_groups(&[&p.group], &AdminOptions::new())
        .await
        .unwrap();
    assert!(
        deleted.iter().all(|r| r.is_ok()),
        "delete group: {deleted:?}"
    );
    let consumer = Proc::start("consumer", &p.config);
    // the consumer seeks where the first message it gets (offset 0) is not the last one the
    // target has: a partition that holds a single event is skipped without a seek
    let with_data = book_before.values().filter(|(next, _)| *next > 1).count();
    tk::wait_for(
        "the consumer to seek past what the target has",
        Duration::from_secs(30),
        || async {
            (consumer
                .log_text()
                .matches("seeking to the offset stored in the target")
                .count()
                >= with_data)
                .then_some(())
        },
    )
    .await;
    assert_eq!(rows(&tgt, "media").await, before);
    assert_eq!(tk::bookkeeping(&tgt, &p.topic()).await, book_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn new_group_on_empty_target_rebuilds_from_the_topic_alone() {
    let p = Pipeline::new(MEDIA).await;
    let src = p.dbs.source().await;
    src.batch_execute(HOUR_1).await.unwrap();
    src.batch_execute(HOUR_2).await.unwrap();
    let mut producer = Proc::start("producer", &p.config);
    let consumer = Proc::start("consumer", &p.config);
    p.wait_identical(
        "initial sync",
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
    assert!(producer.terminate(Duration::from_secs(30)).success());
    drop(consumer);
    // a second, empty target database and a new group: only the topic can fill it
    let empty = tk::unique("rebuild");
    p.dbs
        .target()
        .await
        .batch_execute(&format!("CREATE DATABASE {empty}"))
        .await
        .unwrap();
    let empty_url = tk::with_database(&p.dbs.target_url, &empty);
    let text = std::fs::read_to_string(&p.config)
        .unwrap()
        .replace(&p.dbs.target_url, &empty_url)
        .replace(&p.group, &format!("{}-rebuild", p.group));
    let config = p.config.with_file_name("rebuild.toml");
    std::fs::write(&config, text).unwrap();
    let consumer = Proc::start("consumer", &config);
    let rebuilt = tk::connect(&empty_url).await;
    let expected = rows(&src, "media").await;
    tk::wait_for("the rebuilt table", Duration::from_secs(60), || async {
        (rows(&rebuilt, "media").await == expected).then_some(())
    })
    .await;
    drop(consumer);
}

fn run_expecting_failure(what: &str, config: &std::path::Path) -> String {
    let mut cmd = std::process::Command::new(tk::bin(&format!("tunnel-{what}")));
    cmd.args(["run", "--config", &config.display().to_string()]);
    for (var, _) in tunnel_shared::config::ENV_OVERRIDES {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "tunnel-{what} accepted {}",
        config.display()
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "tunnel-{what}: want one error line, got:\n{stderr}"
    );
    errors[0].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_and_bad_connection_strings_fail_with_one_clear_line() {
    let dir = std::env::temp_dir().join(tk::unique("badcfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let good = "[source]\nurl = \"postgres://u:p@127.0.0.1:5433/db\"\n[target]\nurl = \"postgres://u:p@127.0.0.1:5434/db\"\n[kafka]\nbrokers = \"127.0.0.1:9092\"\n[registry]\nurl = \"http://127.0.0.1:8081/apis/ccompat/v7\"\n[[tables]]\nname = \"media\"\n";
    let cases = [
        ("missing.toml", None, "cannot read config file"),
        (
            "unknown.toml",
            Some(good.replace("[kafka]", "[kafka]\nbrokerz = \"x\"")),
            "brokerz",
        ),
        (
            "syntax.toml",
            Some(good.replace("[kafka]", "[kafka")),
            "not valid",
        ),
        (
            "scheme.toml",
            Some(good.replace(
                "postgres://u:p@127.0.0.1:5433",
                "mysql://u:p@127.0.0.1:5433",
            )),
            "source.url",
        ),
        (
            "port.toml",
            Some(good.replace("127.0.0.1:5433", "127.0.0.1:notaport")),
            "bad connection string",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.join(name);
        if let Some(t) = &text {
            std::fs::write(&path, t).unwrap();
        }
        let what = if name == "port.toml" {
            vec!["producer"]
        } else {
            vec!["producer", "consumer"]
        };
        for w in what {
            let line = run_expecting_failure(w, &path);
            assert!(
                line.contains(expected),
                "{name}: '{line}' does not say '{expected}'"
            );
            assert!(
                !line.contains(":p@"),
                "{name}: the password shows in '{line}'"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn composite_keys_and_every_mapped_type_replicate_exactly() {
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE kinds (
            region text NOT NULL, n int8 NOT NULL,
            i2 int2, i4 int4, f4 real, f8 double precision, ok boolean,
            name varchar(20), fixed char(3), d date, ts timestamp, tstz timestamptz, t time,
            price numeric(12,3), anynum numeric, raw bytea, id uuid, doc jsonb, js json,
            span interval, tags text[], feeling mood,
            updated_at timestamp DEFAULT now(),
            PRIMARY KEY (region, n))",
    )
    .await
    .unwrap();
    // the enum must exist on the target too: the replica uses the source's types
    dbs.target()
        .await
        .batch_execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        .await
        .unwrap();
    src.batch_execute(
        "INSERT INTO kinds VALUES
          ('eu', 1, -32768, 2147483647, 1.5, -2.25e-300, true, 'naïve \"quoted\"', 'ab',
           '2024-02-29', '2021-01-01 00:10:00.123456', '2021-06-01 12:00:00+02', '23:59:59.999999',
           -123456789.125, 3.14159265358979323846264338327950288, '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '{\"a\": [1, 2, {\"b\": null}]}', '{\"x\" : 1}', '1 year 2 mons 3 days 04:05:06', '{a,\"b c\",NULL}', 'happy', DEFAULT),
          ('eu', 2, NULL, NULL, 'NaN', '-Infinity', NULL, NULL, NULL,
           'infinity', '-infinity', 'infinity', NULL, 0, 'NaN', '', NULL, 'null', NULL, NULL, '{}', NULL, DEFAULT),
          ('us', 1, 0, 0, 0, 0, false, '', '   ', '0001-01-01', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00',
           '00:00:00', 0.001, -0, '\\x', '00000000-0000-0000-0000-000000000000', '[]', '[]', '0', '{}', 'sad', DEFAULT)",
    )
    .await
    .unwrap();
    let prefix = tk::unique("types");
    let config = tk::write_config(&dbs, &prefix, &tk::unique("g"), &["kinds"], "");
    let producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    let tgt = dbs.target().await;
    let expected = rows(&src, "kinds").await;
    tk::wait_for("the replica of kinds", Duration::from_secs(60), || async {
        (rows(&tgt, "kinds").await == expected).then_some(())
    })
    .await;
    // an update of a composite key's row arrives too
    src.batch_execute(
        "UPDATE kinds SET name = 'changed', updated_at = now() WHERE region = 'us' AND n = 1",
    )
    .await
    .unwrap();
    let expected = rows(&src, "kinds").await;
    tk::wait_for("the update", Duration::from_secs(20), || async {
        (rows(&tgt, "kinds").await == expected).then_some(())
    })
    .await;
    // the replica has exactly the source's columns and types
    let columns = "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY attnum)
                     FROM pg_attribute WHERE attrelid = 'kinds'::regclass AND attnum > 0 AND NOT attisdropped";
    let a: String = src.query_one(columns, &[]).await.unwrap().get(0);
    let b: String = tgt.query_one(columns, &[]).await.unwrap().get(0);
    assert_eq!(a, b);
    drop((producer, consumer));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_primary_key_is_refused() {
    let dbs = Databases::create().await;
    dbs.source()
        .await
        .batch_execute("CREATE TABLE media (id int, s3_path text)")
        .await
        .unwrap();
    let config = tk::write_config(&dbs, &tk::unique("nopk"), &tk::unique("g"), &["media"], "");
    let line = run_expecting_failure("producer", &config);
    assert!(line.contains("has no primary key"), "{line}");
}

/// A table whose `bigint` ids are random over the whole range (negative ones, `i64::MIN + 1`,
/// `i64::MAX`): the snapshot, the key scan, the delete scan and reconciliation (silent updates)
/// all work on key spans wider than 2^63 (they overflowed before), and `verify` is clean.
#[tokio::test(flavor = "multi_thread")]
async fn random_63_bit_ids_replicate_inserts_silent_updates_and_deletes() {
    let p = Pipeline::with_config(
        "CREATE TABLE media (id bigint PRIMARY KEY, s3_path text, updated_at timestamp DEFAULT now())",
        "reconcile_interval_ms = 1000\ndelete_interval_ms = 500",
    )
    .await;
    let mut ids: Vec<i64> = vec![i64::MIN + 1, -1, 0, 1, i64::MAX];
    let mut rng = rand::thread_rng();
    ids.extend((0..2000).map(|_| rng.gen::<i64>()));
    ids.sort_unstable();
    ids.dedup();
    let src = p.dbs.source().await;
    src.execute(
        "INSERT INTO media (id, s3_path) SELECT i, '/seed' FROM unnest($1::int8[]) i",
        &[&ids],
    )
    .await
    .unwrap();
    let producer = Proc::start("producer", &p.config);
    let consumer = Proc::start("consumer", &p.config);
    let timeout = Duration::from_secs(90);
    p.wait_identical("snapshot", timeout, &[&producer, &consumer])
        .await;
    let new: Vec<i64> = (0..200).map(|_| rng.gen::<i64>()).collect();
    let gone: Vec<i64> = ids.iter().copied().step_by(7).collect();
    let silent: Vec<i64> = ids.iter().copied().skip(3).step_by(11).collect();
    src.execute(
        "INSERT INTO media (id, s3_path) SELECT i, '/new' FROM unnest($1::int8[]) i ON CONFLICT DO NOTHING",
        &[&new],
    )
    .await
    .unwrap();
    src.execute("DELETE FROM media WHERE id = ANY($1)", &[&gone])
        .await
        .unwrap();
    // updated_at stays: only reconciliation can see these
    src.execute(
        "UPDATE media SET s3_path = '/silent' WHERE id = ANY($1)",
        &[&silent],
    )
    .await
    .unwrap();
    p.wait_identical(
        "inserts, deletes, silent updates",
        timeout,
        &[&producer, &consumer],
    )
    .await;
    let (code, out) = tk::verify(&p.config, &[]);
    assert_eq!(code, 0, "verify: {out}");
}
