//! End-to-end tests of the dead-letter queue against the real stack: validation rules, bad
//! bytes on the topic, rows the target refuses, parked keys, and `dlq list|show|replay`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value as Json;
use tokio_postgres::Client;
use tunnel_shared::testkit::{self as tk, Databases, Proc};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint,
    updated_at timestamp DEFAULT now())";
/// The seed's employees table, with an `updated_at` so that its updates are found at once
/// (without one, only reconciliation finds them, and it leaves parked keys alone).
const EMPLOYEES: &str = "CREATE TABLE employees (
    emp_id serial PRIMARY KEY, first_name varchar(100), last_name varchar(100), dob date,
    city varchar(100), salary int, updated_at timestamp DEFAULT now())";

/// The seed's rules for employees.
const SEED_RULES: &str = r#"[[tables.rules]]
name = "salary_floor"
check = "salary > 10000"
[[tables.rules]]
name = "emp_id_not_negative"
check = "emp_id >= 0"
[[tables.rules]]
name = "born_after_2007"
check = "dob > 2007-01-01"
"#;

const FAST: &str =
    "delete_interval_ms = 200\nreconcile_interval_ms = 500\nrepair_interval_ms = 200";

struct Setup {
    dbs: Databases,
    config: PathBuf,
    prefix: String,
}

async fn setup(ddl: &str, table: &str, extra: &str) -> Setup {
    let dbs = Databases::create().await;
    dbs.source().await.batch_execute(ddl).await.unwrap();
    let prefix = tk::unique("dlq");
    let config = tk::write_config(&dbs, &prefix, &tk::unique("g"), &[table], extra);
    tk::add_producer_settings(&config, FAST);
    Setup {
        dbs,
        config,
        prefix,
    }
}

/// `dlq list` output once it shows `want` pending entries in total.
async fn wait_pending(config: &Path, want: usize, procs: &[&Proc]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = tk::consumer_cli(&["dlq", "list"], config, &[]);
        assert_eq!(code, 0, "dlq list failed: {out}{err}");
        if out.contains(&format!(": {want} pending")) {
            return out;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
            panic!(
                "the DLQ never held {want} pending entries; last list:\n{out}\nlogs:\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The ids in the target table, sorted (`None` while the table does not exist).
async fn ids(target: &Client, sql: &str) -> Option<Vec<i32>> {
    let rows = target.query(sql, &[]).await.ok()?;
    Some(rows.iter().map(|r| r.get(0)).collect())
}

async fn wait_ids(target: &Client, sql: &str, want: &[i32], procs: &[&Proc]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = ids(target, sql).await;
        if got.as_deref() == Some(want) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
            panic!(
                "target ids never became {want:?}; last {got:?}\nlogs:\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The count printed beside a reason in `dlq list` (0 when absent).
fn count_of(list: &str, reason: &str) -> usize {
    list.lines()
        .filter_map(|l| {
            let t = l.trim();
            let (n, r) = t.split_once("  ")?;
            (r.trim() == reason).then(|| n.trim().parse::<usize>().ok())?
        })
        .sum()
}

/// The entries `dlq show` prints (a stream of JSON objects).
fn show(config: &Path, extra: &[&str]) -> Vec<Json> {
    let (code, out, err) = tk::consumer_cli(&["dlq", "show"], config, extra);
    assert_eq!(code, 0, "dlq show failed: {out}{err}");
    serde_json::Deserializer::from_str(out.trim_start_matches("no DLQ entries match"))
        .into_iter::<Json>()
        .map(|v| v.unwrap_or_else(|e| panic!("dlq show printed bad JSON ({e}):\n{out}")))
        .collect()
}

const EMP_IDS: &str = "SELECT emp_id FROM employees ORDER BY 1";

#[tokio::test(flavor = "multi_thread")]
async fn seed_rules_park_bad_rows_and_a_replay_after_the_fix_applies_them_once() {
    let s = setup(EMPLOYEES, "employees", SEED_RULES).await;
    let src = s.dbs.source().await;
    let tgt = s.dbs.target().await;
    src.batch_execute(
        "INSERT INTO employees VALUES
           (1, 'Ada', 'L', '2010-01-01', 'Oslo', 20000),
           (2, 'Bob', 'M', '2010-01-01', 'Rome', 5000),
           (3, 'Cy', 'N', '2011-01-01', 'Lima', 30000),
           (-4, 'Di', 'O', '2012-01-01', 'Pune', 40000),
           (5, 'Ed', 'P', '2000-01-01', 'Kyiv', 50000),
           (6, 'Flo', 'Q', '2013-01-01', 'Riga', 60000);",
    )
    .await
    .unwrap();
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    let procs = [&producer, &consumer];
    wait_ids(&tgt, EMP_IDS, &[1, 3, 6], &procs).await;
    let list = wait_pending(&s.config, 3, &procs).await;
    for rule in ["salary_floor", "emp_id_not_negative", "born_after_2007"] {
        assert_eq!(count_of(&list, &format!("rule '{rule}'")), 1, "{list}");
    }
    let shown = show(&s.config, &["--reason", "salary_floor"]);
    assert_eq!(shown.len(), 1, "{shown:?}");
    let e = &shown[0];
    assert_eq!(e["class"], "rule");
    assert_eq!(e["reason"], "salary > 10000 failed: salary = 5000");
    assert_eq!(e["value"]["after"]["salary"], 5000, "{e}");
    assert_eq!(e["headers"]["tunnel.key"], r#"["2"]"#);

    // later events of a parked key follow it into the DLQ, even when they are valid
    src.batch_execute(
        "UPDATE employees SET salary = 6000, updated_at = now() WHERE emp_id = 2;
         UPDATE employees SET dob = '2008-01-01', updated_at = now() WHERE emp_id = 5;",
    )
    .await
    .unwrap();
    let list = wait_pending(&s.config, 5, &procs).await;
    assert_eq!(count_of(&list, "rule 'salary_floor'"), 2, "{list}");
    assert_eq!(count_of(&list, "parked"), 1, "{list}");
    assert_eq!(ids(&tgt, EMP_IDS).await.unwrap(), vec![1, 3, 6]);

    // fix the salary rule, and replay: a dry run first
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("salary > 10000", "salary > 1000")).unwrap();
    let (code, out, err) = tk::consumer_cli(
        &["dlq", "replay"],
        &s.config,
        &["--reason", "salary_floor", "--dry-run"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("2 would be applied, 0 would be sent back"),
        "{out}"
    );
    assert_eq!(ids(&tgt, EMP_IDS).await.unwrap(), vec![1, 3, 6]);
    let (code, out, err) = tk::consumer_cli(&["dlq", "replay"], &s.config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // employee 2's two events apply in order; -4 and 5 fail again, and 5's parked update
    // follows its insert back
    assert!(
        out.contains("5 entries replayed: 2 were applied, 3 were sent back"),
        "{out}"
    );
    let salary2: i32 = tgt
        .query_one("SELECT salary FROM employees WHERE emp_id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(salary2, 6000);
    let list = wait_pending(&s.config, 3, &procs).await;
    assert!(
        list.contains("2 resolved by replay") || list.contains("5 resolved"),
        "{list}"
    );
    assert_eq!(count_of(&list, "rule 'emp_id_not_negative'"), 1, "{list}");
    assert_eq!(count_of(&list, "rule 'born_after_2007'"), 1, "{list}");
    assert_eq!(count_of(&list, "parked"), 1, "{list}");
    let requeued = show(&s.config, &["--reason", "parked"]);
    assert!(requeued[0]["headers"]["tunnel.replay.of"].is_string());

    // a second replay of the fixed rule finds nothing; of everything, applies nothing
    let (_, out, _) =
        tk::consumer_cli(&["dlq", "replay"], &s.config, &["--reason", "salary_floor"]);
    assert!(out.contains("nothing to replay"), "{out}");
    let (code, out, err) = tk::consumer_cli(&["dlq", "replay"], &s.config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 were applied"), "{out}");
    assert_eq!(ids(&tgt, EMP_IDS).await.unwrap(), vec![1, 2, 3, 6]);

    // key 2 is free again: its next change reaches the target; the consumer kept going
    src.batch_execute(
        "UPDATE employees SET salary = 70000, updated_at = now() WHERE emp_id = 2;
         INSERT INTO employees VALUES (7, 'Gus', 'R', '2014-01-01', 'Bern', 80000);",
    )
    .await
    .unwrap();
    wait_ids(&tgt, EMP_IDS, &[1, 2, 3, 6, 7], &procs).await;
    tk::wait_for(
        "employee 2's new salary",
        Duration::from_secs(30),
        || async {
            let r = tgt
                .query_one("SELECT salary FROM employees WHERE emp_id = 2", &[])
                .await
                .ok()?;
            (r.get::<_, i32>(0) == 70000).then_some(())
        },
    )
    .await;
}

const MEDIA_IDS: &str = "SELECT id FROM media ORDER BY 1";

/// A media pipeline running, with row 1 in the target.
struct Media {
    s: Setup,
    src: Client,
    tgt: Client,
    producer: Proc,
    consumer: Proc,
}

async fn media_with_one_row() -> Media {
    let s = setup(MEDIA, "media", "").await;
    let src = s.dbs.source().await;
    let tgt = s.dbs.target().await;
    src.batch_execute("INSERT INTO media (id, s3_path, format, type) VALUES (1, '/a', 'jpg', 1)")
        .await
        .unwrap();
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    wait_ids(&tgt, MEDIA_IDS, &[1], &[&producer, &consumer]).await;
    Media {
        s,
        src,
        tgt,
        producer,
        consumer,
    }
}

/// Produces raw bytes straight to a partition of a topic.
fn produce_raw(topic: &str, partition: i32, key: Option<&[u8]>, value: Option<&[u8]>) {
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tk::brokers())
        .create()
        .unwrap();
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer.send(record).map_err(|(e, _)| e).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_truncated_and_unknown_schema_messages_go_to_the_dlq_and_the_consumer_goes_on() {
    let Media {
        s,
        src,
        tgt,
        producer,
        consumer,
    } = media_with_one_row().await;
    let procs = [&producer, &consumer];
    let sql = MEDIA_IDS;

    // a real message of the topic, to cut short and to relabel
    let topic = format!("{}.public.media", s.prefix);
    let kafka = tk::kafka_config(&s.prefix, "unused", 3);
    let mut real: Option<(i32, Vec<u8>, Vec<u8>)> = None;
    tunnel_shared::kafka::read_to_end(&kafka, &topic, Duration::from_secs(30), |m| {
        use rdkafka::Message;
        if let (Some(k), Some(v)) = (m.key(), m.payload()) {
            real = Some((m.partition(), k.to_vec(), v.to_vec()));
        }
    })
    .unwrap();
    let (partition, key, value) = real.expect("a message in the topic");
    produce_raw(
        &topic,
        partition,
        Some(b"not avro"),
        Some(b"\xff\xfe garbage"),
    );
    produce_raw(
        &topic,
        partition,
        Some(&key),
        Some(&value[..value.len() - 3]),
    );
    let mut unknown = value.clone();
    unknown[1..5].copy_from_slice(&2_000_000_000u32.to_be_bytes());
    produce_raw(&topic, partition, Some(&key), Some(&unknown));

    let list = wait_pending(&s.config, 3, &procs).await;
    assert_eq!(count_of(&list, "wire_format"), 1, "{list}");
    assert_eq!(count_of(&list, "avro_decode"), 1, "{list}");
    assert_eq!(count_of(&list, "unknown_schema"), 1, "{list}");
    let garbage = show(&s.config, &["--reason", "wire_format"]);
    let g = &garbage[0];
    assert_eq!(g["source"]["topic"], topic.as_str());
    assert_eq!(g["source"]["partition"], partition);
    assert!(g["source"]["offset"].as_i64().unwrap() > 0);
    assert!(g["reason"].as_str().unwrap().contains("magic byte"), "{g}");
    let h = &g["headers"];
    assert!(h["tunnel.consumer.version"].is_string() && h["tunnel.timestamp"].is_string());
    assert!(
        g["key"]["hex"]
            .as_str()
            .unwrap()
            .starts_with(&hex(b"not avro")),
        "{g}"
    );

    // the consumer went on: a new row arrives
    src.batch_execute("INSERT INTO media (id, s3_path, format, type) VALUES (2, '/b', 'png', 1)")
        .await
        .unwrap();
    wait_ids(&tgt, sql, &[1, 2], &procs).await;
    assert!(consumer.log_text().contains("goes to the DLQ"));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_target_refuses_goes_alone_to_the_dlq_and_the_rest_of_its_batch_commits() {
    let Media {
        s,
        src,
        tgt,
        producer,
        consumer,
    } = media_with_one_row().await;
    let procs = [&producer, &consumer];
    let sql = MEDIA_IDS;
    tgt.batch_execute("ALTER TABLE media ADD CONSTRAINT no_type_99 CHECK (type <> 99)")
        .await
        .unwrap();
    // one source transaction, so one chunk for the producer and most likely one batch
    src.batch_execute(
        "INSERT INTO media (id, s3_path, format, type)
         SELECT g, '/m' || g, 'jpg', CASE WHEN g = 25 THEN 99 ELSE 1 END FROM generate_series(2, 60) g",
    )
    .await
    .unwrap();
    let want: Vec<i32> = (1..=60).filter(|i| *i != 25).collect();
    wait_ids(&tgt, sql, &want, &procs).await;
    let list = wait_pending(&s.config, 1, &procs).await;
    assert_eq!(count_of(&list, "target_rejected"), 1, "{list}");
    let e = &show(&s.config, &[])[0];
    assert_eq!(e["headers"]["tunnel.key"], r#"["25"]"#);
    assert!(e["reason"].as_str().unwrap().contains("no_type_99"), "{e}");

    // the target is fixed; the replay brings the row
    tgt.batch_execute("ALTER TABLE media DROP CONSTRAINT no_type_99")
        .await
        .unwrap();
    let (code, out, err) = tk::consumer_cli(&["dlq", "replay"], &s.config, &["--key", "25"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 were applied"), "{out}");
    let all: Vec<i32> = (1..=60).collect();
    wait_ids(&tgt, sql, &all, &procs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_on_a_column_the_table_lacks_stops_producer_and_consumer_at_start() {
    let Media {
        s,
        producer,
        consumer,
        ..
    } = media_with_one_row().await;
    let _running = (producer, consumer);
    // the same pipeline, with a typo in a rule: both refuse to start, naming it
    let dir = std::env::temp_dir().join(tk::unique("tunnel_cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("config.toml");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &bad,
        format!("{text}[[tables.rules]]\nname = \"typo\"\ncheck = \"tpye in (1, 2)\"\n"),
    )
    .unwrap();
    for what in ["producer", "consumer"] {
        let mut p = Proc::start(what, &bad);
        let status = p.wait_exit(Duration::from_secs(60));
        let log = p.log_text();
        assert_eq!(status.code(), Some(1), "{what}: {log}");
        assert!(
            log.contains("rule 'typo': column 'tpye' is not a column of the table"),
            "{what}: {log}"
        );
    }
}

/// The `dlq show` output, unparsed.
fn show_text(config: &Path, extra: &[&str]) -> String {
    let (code, out, err) = tk::consumer_cli(&["dlq", "show"], config, extra);
    assert_eq!(code, 0, "dlq show failed: {out}{err}");
    out
}

/// `dlq replay` output, checked to contain `want`.
fn replay(config: &Path, extra: &[&str], want: &str) {
    let (code, out, err) = tk::consumer_cli(&["dlq", "replay"], config, extra);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(want), "wanted '{want}' in:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dlq_larger_than_what_its_reader_holds_is_listed_shown_and_replayed_whole() {
    const ROWS: i32 = 1500;
    const PARKED: i32 = 30;
    let rule = "[[tables.rules]]\nname = \"type_ok\"\ncheck = \"type < 90\"\n";
    let s = setup(MEDIA, "media", rule).await;
    let src = s.dbs.source().await;
    let tgt = s.dbs.target().await;
    src.batch_execute(&format!(
        "INSERT INTO media (id, s3_path, format, type)
         SELECT g, '/m' || g, 'jpg', 99 FROM generate_series(1, {ROWS}) g"
    ))
    .await
    .unwrap();
    let producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    let procs = [&producer, &consumer];
    wait_pending(&s.config, ROWS as usize, &procs).await;
    // later (valid) events of parked keys follow them
    src.batch_execute(&format!(
        "UPDATE media SET type = 1, updated_at = now() WHERE id <= {PARKED}"
    ))
    .await
    .unwrap();
    let all = (ROWS + PARKED) as usize;
    let list = wait_pending(&s.config, all, &procs).await;
    assert_eq!(count_of(&list, "rule 'type_ok'"), ROWS as usize, "{list}");
    assert_eq!(count_of(&list, "parked"), PARKED as usize, "{list}");

    // shown in DLQ order, up to the limit
    let out = show_text(&s.config, &["--limit", "3"]);
    let (json, more) = out
        .rsplit_once("(more entries: raise --limit)")
        .unwrap_or_else(|| panic!("no note of more entries:\n{out}"));
    assert!(more.trim().is_empty(), "{out}");
    let shown: Vec<Json> = serde_json::Deserializer::from_str(json)
        .into_iter::<Json>()
        .map(Result::unwrap)
        .collect();
    let positions: Vec<(i64, i64)> = shown
        .iter()
        .map(|e| {
            let d = &e["dlq"];
            (
                d["partition"].as_i64().unwrap(),
                d["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(positions, [(0, 0), (0, 1), (0, 2)], "{out}");

    // every entry fails again and is sent back while the DLQ is read: the replay reads only
    // what the DLQ held when it began
    replay(
        &s.config,
        &[],
        &format!("{all} entries replayed: 0 were applied, {all} were sent back"),
    );
    let list = wait_pending(&s.config, all, &procs).await;
    assert!(
        list.contains(&format!("{all} resolved by replay")),
        "{list}"
    );

    // fixed: the parked entries bring the earlier entries of their keys along
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("type < 90", "type < 100")).unwrap();
    let two = 2 * PARKED;
    replay(
        &s.config,
        &["--reason", "parked"],
        &format!("{two} entries replayed: {two} were applied, 0 were sent back"),
    );
    let rest = (ROWS - PARKED) as usize;
    replay(
        &s.config,
        &[],
        &format!("{rest} entries replayed: {rest} were applied, 0 were sent back"),
    );
    let list = wait_pending(&s.config, 0, &procs).await;
    let resolved = 2 * all;
    assert!(
        list.contains(&format!("{resolved} resolved by replay")),
        "{list}"
    );
    let types: Vec<(i16, i64)> = tgt
        .query(
            "SELECT type, count(*) FROM media GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(types, [(1, PARKED as i64), (99, (ROWS - PARKED) as i64)]);
}
