//! The producer saves its shipped key set (when the snapshot is done, then every
//! `key_snapshot_interval_s`, and at a clean stop); a restart reads it back with the topic's
//! messages after it instead of the whole topic, and labels and deletes stay right. A saved set
//! that cannot be used (damaged, incomplete) is refused: the topic is read again.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::ops::{assert_debeziums_ops, by_integer, ops_by_key, topic_of};
use super::{setup_media, tk, Proc, Setup};

const WAIT: Duration = Duration::from_secs(60);

/// Fast delete passes; no reconciliation, so that the deletes are the delete scan's, which
/// compares the shipped key set with the source.
const SETTINGS: &str = "delete_interval_ms = 200\nreconcile_interval_ms = 0";

/// The value of `field=` in the first log line holding `marker`.
fn logged_field(log: &str, marker: &str, field: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let at = line.find(&format!("{field}="))? + field.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The restarted producer's log once it streams again.
async fn restarted(s: &Setup) -> Proc {
    let producer = Proc::start("producer", &s.config);
    producer.wait_logged("streaming changes", WAIT).await;
    producer
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_killed_mid_stream_reads_its_saved_key_set_and_the_messages_after_it() {
    let (s, src) = setup_media(3000, SETTINGS).await;
    let mut producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    producer
        .wait_logged("saved the shipped key set", WAIT)
        .await;
    let log = producer.log_text();
    assert!(log.contains("why=\"snapshot\""), "{log}");
    tk::wait_identical(&s.dbs, "media", WAIT, &[&producer, &consumer]).await;
    // shipped after the set was saved: only the topic's messages after it know these
    src.batch_execute(
        "INSERT INTO media (id, s3_path) SELECT i, '/new' FROM generate_series(3001, 3020) i;
         DELETE FROM media WHERE id BETWEEN 1 AND 10;
         UPDATE media SET s3_path = '/u', updated_at = now() WHERE id BETWEEN 11 AND 20;",
    )
    .await
    .unwrap();
    tk::wait_identical(&s.dbs, "media", WAIT, &[&producer, &consumer]).await;
    producer.kill9();
    // while it is down: deletes of keys of the saved set and of keys shipped after it, keys
    // deleted after it written again, updates of keys shipped after it, new keys
    src.batch_execute(
        "DELETE FROM media WHERE id BETWEEN 3001 AND 3005 OR id BETWEEN 21 AND 25;
         INSERT INTO media (id, s3_path) SELECT i, '/again' FROM generate_series(1, 3) i;
         UPDATE media SET s3_path = '/u2', updated_at = now() WHERE id = 3006;
         INSERT INTO media (id, s3_path) SELECT i, '/later' FROM generate_series(3021, 3025) i;",
    )
    .await
    .unwrap();
    let producer = restarted(&s).await;
    let log = producer.log_text();
    let marker = "loaded the shipped key set from its saved copy";
    assert!(log.contains(marker), "{log}");
    assert!(!log.contains("rebuilt the shipped key set"), "{log}");
    // the 20 inserts, 10 deletes (each an event and a tombstone) and 10 updates at least
    let tail = logged_field(&log, marker, "tail_messages").unwrap();
    assert!(tail >= 50, "tail_messages={tail}\n{log}");
    assert_eq!(logged_field(&log, marker, "keys"), Some(3010), "{log}");
    tk::wait_identical(&s.dbs, "media", WAIT, &[&producer, &consumer]).await;
    let (kafka, topic) = topic_of(&s, "media");
    let ops = by_integer(ops_by_key(&kafka, &topic).await);
    assert_debeziums_ops(&ops, |k| (1..=3000).contains(k));
    // (a restarted producer may ship recent rows again: as updates of keys it shipped)
    for k in 1..=3 {
        assert!(ops[&k].contains("dTc"), "key {k}: {}", ops[&k]);
    }
    for k in (3001..=3005).chain(21..=25) {
        assert!(ops[&k].ends_with("dT"), "key {k}: {}", ops[&k]);
    }
    assert!(ops[&3006].starts_with("cu"), "{}", ops[&3006]);
    for k in 3021..=3025 {
        assert!(ops[&k].starts_with('c'), "key {k}: {}", ops[&k]);
    }
    drop(consumer);
}

/// Sends `value` keyed `key` to the topic `<prefix><suffix>` (partition 0).
async fn send(s: &Setup, suffix: &str, key: &str, value: &[u8]) {
    let (kafka, topic) = topic_of(s, "media");
    let prefix = topic.trim_end_matches(".public.media");
    let sender: FutureProducer = tunnel_shared::kafka::producer_config(&kafka)
        .create()
        .unwrap();
    sender
        .send(
            FutureRecord::to(&format!("{prefix}.{suffix}"))
                .key(key)
                .payload(value)
                .partition(0),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
}

/// Overwrites the header of the table's saved set in the checkpoint topic with `header`.
async fn replace_header(s: &Setup, header: &[u8]) {
    send(s, "_checkpoints", "public.media#keys", header).await;
}

/// The header of the table's saved set, as the checkpoint topic holds it now.
async fn header(s: &Setup) -> serde_json::Value {
    let (kafka, topic) = topic_of(s, "media");
    let cp_topic = format!("{}._checkpoints", topic.trim_end_matches(".public.media"));
    let bytes = tokio::task::spawn_blocking(move || {
        let mut latest = None;
        tunnel_shared::kafka::read_to_end(&kafka, &cp_topic, WAIT, |m| {
            use rdkafka::Message;
            if m.key() == Some(b"public.media#keys".as_slice()) {
                latest = m.payload().map(<[u8]>::to_vec);
            }
        })
        .unwrap();
        latest
    })
    .await
    .unwrap()
    .expect("a saved key set");
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incomplete_or_damaged_saved_key_set_is_refused_and_the_topic_read_again() {
    let (s, src) = setup_media(500, SETTINGS).await;
    let mut producer = Proc::start("producer", &s.config);
    let consumer = Proc::start("consumer", &s.config);
    producer
        .wait_logged("saved the shipped key set", WAIT)
        .await;
    tk::wait_identical(&s.dbs, "media", WAIT, &[&producer, &consumer]).await;
    producer.kill9();
    let saved = header(&s).await;
    // a generation of two chunks of which only the first was written: incomplete
    let mut incomplete = saved.clone();
    incomplete["generation"] = serde_json::json!(7);
    incomplete["chunks"] = serde_json::json!(2);
    let mut chunk = b"TKS1".to_vec();
    chunk.extend_from_slice(&7u64.to_be_bytes());
    chunk.extend_from_slice(&0u32.to_be_bytes());
    chunk.extend_from_slice(&2u32.to_be_bytes());
    chunk.extend_from_slice(b"half a set");
    send(&s, "_keysets", "public.media#keys.0", &chunk).await;
    replace_header(&s, &serde_json::to_vec(&incomplete).unwrap()).await;
    src.batch_execute("DELETE FROM media WHERE id BETWEEN 1 AND 5")
        .await
        .unwrap();
    let mut producer = restarted(&s).await;
    let log = producer.log_text();
    assert!(log.contains("the saved key set cannot be used"), "{log}");
    assert!(log.contains("is missing"), "{log}");
    assert!(
        log.contains("rebuilt the shipped key set from the topic"),
        "{log}"
    );
    tk::wait_identical(&s.dbs, "media", WAIT, &[&producer, &consumer]).await;
    producer.kill9();
    // a checksum that does not match the chunks: damaged
    let mut s_sum = saved.clone();
    s_sum["checksum"] = serde_json::json!(saved["checksum"].as_u64().unwrap() ^ 1);
    replace_header(&s, &serde_json::to_vec(&s_sum).unwrap()).await;
    src.batch_execute("DELETE FROM media WHERE id BETWEEN 6 AND 10; INSERT INTO media (id, s3_path) VALUES (1, '/again')")
        .await
        .unwrap();
    let mut producer = restarted(&s).await;
    let log = producer.log_text();
    assert!(log.contains("checksum"), "{log}");
    assert!(
        log.contains("rebuilt the shipped key set from the topic"),
        "{log}"
    );
    tk::wait_identical(&s.dbs, "media", WAIT, &[&producer, &consumer]).await;
    // not a header at all
    producer.kill9();
    replace_header(&s, b"\x00garbage").await;
    let mut producer = restarted(&s).await;
    let log = producer.log_text();
    assert!(log.contains("its header is not valid"), "{log}");
    // a clean stop saves the set the topic gave (it was never saved): the next start reads it
    producer.terminate(WAIT);
    let producer = restarted(&s).await;
    let log = producer.log_text();
    assert!(
        log.contains("loaded the shipped key set from its saved copy"),
        "{log}"
    );
    src.batch_execute(
        "DELETE FROM media WHERE id = 11; INSERT INTO media (id, s3_path) VALUES (2, '/again')",
    )
    .await
    .unwrap();
    tk::wait_identical(&s.dbs, "media", WAIT, &[&producer, &consumer]).await;
    let (kafka, topic) = topic_of(&s, "media");
    let ops = by_integer(ops_by_key(&kafka, &topic).await);
    assert_debeziums_ops(&ops, |k| (1..=500).contains(k));
    assert!(ops[&1].contains("dTc"), "{}", ops[&1]);
    assert!(ops[&2].contains("dTc"), "{}", ops[&2]);
    assert!(ops[&11].ends_with("dT"));
}
