//! Read back from the topic, every event means what Debezium's does: `r` for the snapshot, `c`
//! exactly for a key not shipped before (or deleted since), `u` for one that was, `d` and a
//! tombstone for a delete; whatever the table's key, whichever detector found the row, and
//! across a restart of the producer.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tunnel_shared::config::KafkaConfig;

use super::{setup, setup_media, tk, Proc, Setup, FAST};

/// Each key's events in order: its key (the columns' text values) and the ops (`r`, `c`, `u`,
/// `d`; `T` for a tombstone).
type Ops = BTreeMap<Vec<String>, String>;

/// The Kafka settings of `s`'s config and the topic of `table`.
pub(super) fn topic_of(s: &Setup, table: &str) -> (KafkaConfig, String) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let prefix = text
        .lines()
        .find_map(|l| l.strip_prefix("topic_prefix = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_string();
    let kafka = tk::kafka_config(&prefix, "unused", 3);
    (kafka, format!("{prefix}.public.{table}"))
}

/// Every event of `topic` in order per key, read back from Kafka and decoded with the writer
/// schemas in the registry.
pub(super) async fn ops_by_key(kafka: &KafkaConfig, topic: &str) -> Ops {
    let (k, t) = (kafka.clone(), topic.to_string());
    let raw = tokio::task::spawn_blocking(move || {
        // a key's messages are all in one partition, read in offset order
        let mut raw: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        tunnel_shared::kafka::read_to_end(&k, &t, Duration::from_secs(60), |m| {
            use rdkafka::Message;
            // the producer's heartbeats are not events
            if m.key() == Some(tunnel_shared::heartbeat::KEY) {
                return;
            }
            raw.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().map(<[u8]>::to_vec),
            ));
        })
        .unwrap();
        raw
    })
    .await
    .unwrap();
    let registry = tunnel_shared::registry::Registry::new(&tk::registry_url()).unwrap();
    let mut ops = Ops::new();
    for (key, value) in raw {
        let (schema_id, mut body) = tunnel_shared::wire::parse(&key).unwrap();
        let schema = registry.schema(schema_id).await.unwrap();
        let datum = apache_avro::from_avro_datum(&schema, &mut body, None).unwrap();
        let key: Vec<String> = tunnel_shared::event::decode_key(datum)
            .unwrap()
            .iter()
            .map(|v| {
                tunnel_shared::pgbinary::to_pg_text(v, None)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let op = match value {
            None => 'T',
            Some(v) => {
                let (schema_id, mut body) = tunnel_shared::wire::parse(&v).unwrap();
                let schema = registry.schema(schema_id).await.unwrap();
                let datum = apache_avro::from_avro_datum(&schema, &mut body, None).unwrap();
                let event = tunnel_shared::event::decode_envelope(datum).unwrap();
                event.op.code().chars().next().unwrap()
            }
        };
        ops.entry(key).or_default().push(op);
    }
    ops
}

/// `ops` keyed by a single integer key.
pub(super) fn by_integer(ops: Ops) -> BTreeMap<i64, String> {
    ops.into_iter()
        .map(|(k, seq)| (k[0].parse().unwrap(), seq))
        .collect()
}

/// The rules every key's events keep: the first is `r` exactly for a key the snapshot read,
/// else `c`; a later `c` only right after the key's delete and tombstone; never an update
/// right after them.
pub(super) fn assert_debeziums_ops<K: std::fmt::Debug>(
    ops: &BTreeMap<K, String>,
    in_snapshot: impl Fn(&K) -> bool,
) {
    for (key, seq) in ops {
        let expected_first = if in_snapshot(key) { 'r' } else { 'c' };
        assert_eq!(
            seq.chars().next(),
            Some(expected_first),
            "key {key:?}: {seq}"
        );
        for (i, _) in seq.match_indices('c').filter(|(i, _)| *i > 0) {
            assert!(seq[..i].ends_with("dT"), "key {key:?}: {seq}");
        }
        assert!(
            !seq.contains("dTu"),
            "key {key:?}: an update after a delete: {seq}"
        );
    }
}

/// Rows written below the highest key are found by the watermark scan alone: still `c`.
#[tokio::test(flavor = "multi_thread")]
async fn events_read_back_from_the_topic_carry_debeziums_ops() {
    let (s, src) = setup_media(200, FAST).await;
    let producer = Proc::start("producer", &s.config);
    producer
        .wait_logged("snapshot done", Duration::from_secs(60))
        .await;
    src.batch_execute(
        "INSERT INTO media (id, s3_path) SELECT -i, '/neg' FROM generate_series(1, 5) i;
         INSERT INTO media (s3_path) SELECT '/new' FROM generate_series(1, 20);
         UPDATE media SET s3_path = '/u', updated_at = now() WHERE id BETWEEN 1 AND 10;
         DELETE FROM media WHERE id BETWEEN 11 AND 15;",
    )
    .await
    .unwrap();
    let (kafka, topic) = topic_of(&s, "media");
    let deleted = |ops: &BTreeMap<i64, String>| {
        (11..=15).all(|k| ops.get(&k).is_some_and(|o| o.ends_with("dT")))
    };
    tk::wait_for("the deletes", Duration::from_secs(60), || async {
        deleted(&by_integer(ops_by_key(&kafka, &topic).await)).then_some(())
    })
    .await;
    // two deleted keys written again, below the highest key
    src.batch_execute("INSERT INTO media (id, s3_path) VALUES (11, '/again'), (12, '/again')")
        .await
        .unwrap();
    let ops = tk::wait_for("every change", Duration::from_secs(60), || async {
        let ops = by_integer(ops_by_key(&kafka, &topic).await);
        let done = (-5..=-1).chain(201..=220).all(|k| ops.contains_key(&k))
            && [11, 12]
                .iter()
                .all(|k| ops[k].contains("dT") && !ops[k].ends_with("dT"))
            && (1..=10).all(|k| ops[&k].contains('u'));
        done.then_some(ops)
    })
    .await;
    assert_debeziums_ops(&ops, |k| (1..=200).contains(k));
    assert_eq!(
        ops[&1].as_str().chars().filter(|c| *c == 'u').count(),
        1,
        "{ops:?}"
    );
    drop(producer);
}

const TAGS: &str = "CREATE TABLE tags (
    name text PRIMARY KEY, v text, updated_at timestamp DEFAULT now())";
const ITEMS: &str = "CREATE TABLE items (
    tenant text, id int, v text, updated_at timestamp DEFAULT now(), PRIMARY KEY (tenant, id))";

/// A key of `tags` or `items` as read back.
fn k(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

/// The keys each of `tables` should have events for, with what they should show.
struct Expect {
    /// Keys that must have events.
    present: Vec<Vec<String>>,
    /// Keys deleted and written again: a delete, then an event.
    again: Vec<Vec<String>>,
    /// Keys whose events must include an update.
    updated: Vec<Vec<String>>,
    /// Keys whose events must end with a delete and its tombstone.
    deleted: Vec<Vec<String>>,
}

impl Expect {
    fn met(&self, ops: &Ops) -> bool {
        let seq = |key: &Vec<String>| ops.get(key).map(String::as_str).unwrap_or("");
        self.present.iter().all(|key| !seq(key).is_empty())
            && self
                .again
                .iter()
                .all(|key| seq(key).contains("dT") && !seq(key).ends_with("dT"))
            && self.updated.iter().all(|key| seq(key).contains('u'))
            && self.deleted.iter().all(|key| seq(key).ends_with("dT"))
    }
}

/// Waits until each table's events meet its expectations; returns them.
async fn wait_ops(s: &Setup, what: &str, expect: &[(&str, Expect)]) -> HashMap<String, Ops> {
    tk::wait_for(what, Duration::from_secs(40), || async {
        let mut all = HashMap::new();
        for (table, e) in expect {
            let (kafka, topic) = topic_of(s, table);
            let ops = ops_by_key(&kafka, &topic).await;
            if !e.met(&ops) {
                return None;
            }
            all.insert(table.to_string(), ops);
        }
        Some(all)
    })
    .await
}

/// A text key and a composite key (tenant, id): inserts found by the key scan (above the
/// highest key) and by the watermark scan alone (below it), updates, deletes (found by
/// reconciliation) and keys written again after their delete. The producer is killed in the
/// middle: the shipped keys it reads back from the topic make updates of keys shipped before
/// `u`, and a key deleted before `c` again.
#[tokio::test(flavor = "multi_thread")]
async fn text_and_composite_keys_carry_debeziums_ops_across_a_producer_restart() {
    let s = setup(&format!("{TAGS}; {ITEMS}"), &["tags", "items"], FAST).await;
    let src = s.dbs.source().await;
    src.batch_execute(
        "INSERT INTO tags (name, v) SELECT 'm' || lpad(i::text, 2, '0'), 'v' FROM generate_series(1, 30) i;
         INSERT INTO items (tenant, id, v) SELECT t, i, 'v' FROM unnest(ARRAY['t1', 't2']) t, generate_series(1, 15) i;",
    )
    .await
    .unwrap();
    let mut producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    // (not the line of the first watermark pass "after the snapshot done")
    let snapshots_done = |log: String| {
        log.lines()
            .filter(|l| l.contains("snapshot done") && !l.contains("watermark"))
            .count()
    };
    tk::wait_for("both snapshots", Duration::from_secs(30), || async {
        (snapshots_done(producer.log_text()) == 2).then_some(())
    })
    .await;
    // deletes are found by reconciliation, which compares with the target: it has to hold the
    // rows first
    for table in ["tags", "items"] {
        let procs = [&producer, &consumer];
        tk::wait_identical(&s.dbs, table, Duration::from_secs(30), &procs).await;
    }
    src.batch_execute(
        "INSERT INTO tags (name, v) SELECT 'z0' || i, 'key scan' FROM generate_series(1, 3) i;
         INSERT INTO tags (name, v) SELECT 'a0' || i, 'watermark' FROM generate_series(1, 3) i;
         UPDATE tags SET v = 'u', updated_at = now() WHERE name IN ('m01', 'm02');
         DELETE FROM tags WHERE name IN ('m03', 'm04');
         INSERT INTO items (tenant, id, v) SELECT 't3', i, 'key scan' FROM generate_series(1, 3) i;
         INSERT INTO items (tenant, id, v) SELECT 't1', 100 + i, 'watermark' FROM generate_series(1, 3) i;
         UPDATE items SET v = 'u', updated_at = now() WHERE tenant = 't1' AND id IN (1, 2);
         DELETE FROM items WHERE tenant = 't1' AND id IN (3, 4);",
    )
    .await
    .unwrap();
    let before = [
        (
            "tags",
            Expect {
                present: [1, 2, 3]
                    .iter()
                    .flat_map(|i| [k(&[&format!("z0{i}")]), k(&[&format!("a0{i}")])])
                    .collect(),
                again: vec![],
                updated: vec![k(&["m01"]), k(&["m02"])],
                deleted: vec![k(&["m03"]), k(&["m04"])],
            },
        ),
        (
            "items",
            Expect {
                present: [1, 2, 3]
                    .iter()
                    .flat_map(|i| {
                        [
                            k(&["t3", &i.to_string()]),
                            k(&["t1", &(100 + i).to_string()]),
                        ]
                    })
                    .collect(),
                again: vec![],
                updated: vec![k(&["t1", "1"]), k(&["t1", "2"])],
                deleted: vec![k(&["t1", "3"]), k(&["t1", "4"])],
            },
        ),
    ];
    wait_ops(&s, "the changes before the restart", &before).await;
    producer.kill9();
    let producer = Proc::start("producer", &s.config);
    tk::wait_for(
        "the restarted producer",
        Duration::from_secs(30),
        || async { (producer.log_text().matches("streaming changes").count() == 2).then_some(()) },
    )
    .await;
    // both sets were saved when their snapshot was done: read back with the changes after
    let log = producer.log_text();
    assert_eq!(
        log.matches("loaded the shipped key set from its saved copy")
            .count(),
        2,
        "{log}"
    );
    assert!(!log.contains("rebuilt the shipped key set"), "{log}");
    // keys shipped before the restart changed (`u`), deleted keys written again and new keys
    // (`c`), by the watermark scan (below the highest key) and the key scan (above it)
    src.batch_execute(
        "UPDATE tags SET v = 'u2', updated_at = now() WHERE name IN ('a01', 'z01', 'm05');
         INSERT INTO tags (name, v) VALUES ('m03', 'again'), ('a05', 'watermark'), ('z05', 'key scan');
         UPDATE items SET v = 'u2', updated_at = now()
           WHERE (tenant, id) IN (('t1', 101), ('t3', 1), ('t2', 5));
         INSERT INTO items (tenant, id, v) VALUES ('t1', 3, 'again'), ('t1', 105, 'watermark'), ('t3', 5, 'key scan');",
    )
    .await
    .unwrap();
    let after = [
        (
            "tags",
            Expect {
                present: vec![k(&["a05"]), k(&["z05"])],
                again: vec![k(&["m03"])],
                updated: vec![k(&["a01"]), k(&["z01"]), k(&["m05"])],
                deleted: vec![k(&["m04"])],
            },
        ),
        (
            "items",
            Expect {
                present: vec![k(&["t1", "105"]), k(&["t3", "5"])],
                again: vec![k(&["t1", "3"])],
                updated: vec![k(&["t1", "101"]), k(&["t3", "1"]), k(&["t2", "5"])],
                deleted: vec![k(&["t1", "4"])],
            },
        ),
    ];
    let all = wait_ops(&s, "the changes after the restart", &after).await;
    let tags = &all["tags"];
    assert_debeziums_ops(tags, |key| key[0].starts_with('m'));
    let items = &all["items"];
    assert_debeziums_ops(items, |key| {
        key[0] != "t3" && key[1].parse::<i32>().is_ok_and(|id| id <= 15)
    });
    for (ops, key) in [(tags, k(&["m03"])), (items, k(&["t1", "3"]))] {
        assert!(ops[&key].contains("dTc"), "{key:?}: {}", ops[&key]);
    }
    // inserted before the restart, updated after it: one create, then updates only
    for (ops, key) in [
        (tags, k(&["a01"])),
        (tags, k(&["z01"])),
        (items, k(&["t1", "101"])),
        (items, k(&["t3", "1"])),
    ] {
        let seq = &ops[&key];
        assert!(
            seq.starts_with('c') && !seq[1..].contains(['c', 'd']),
            "{key:?}: {seq}"
        );
    }
    drop((producer, consumer));
}
