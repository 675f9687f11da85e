//! Our topics read by a third-party reader: Confluent's Python client and its
//! `AvroDeserializer` read a whole table topic (snapshot, inserts, updates, deletes with their
//! tombstones, while heartbeats go out many times a second) and fail on no record. Heartbeats
//! used to sit in the table topics, where every Confluent-compatible reader failed on them
//! (`Invalid magic byte`); they go to the heartbeat topic now.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tunnel_shared::testkit::{self as tk, Databases, Proc};

const TIMEOUT: Duration = Duration::from_secs(120);

const TABLE: &str = "CREATE TABLE orders (
    id int8 PRIMARY KEY,
    note text,
    amount numeric(12,3),
    at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now());
  INSERT INTO orders (id, note, amount, at)
    SELECT i, 'order ' || i, CASE WHEN i % 10 = 0 THEN 'NaN' ELSE i * 1.5 END,
           '2026-01-01'::timestamptz + i * interval '1 hour'
      FROM generate_series(1, 300) i";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The python of an environment with confluent-kafka (installed on first use).
fn python() -> String {
    let out = Command::new("bash")
        .arg(root().join("scripts/pyclients.sh"))
        .output()
        .expect("running scripts/pyclients.sh");
    assert!(
        out.status.success(),
        "scripts/pyclients.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The heartbeats of `table` in the heartbeat topic.
async fn heartbeats(prefix: &str, table: &str) -> usize {
    let kafka = tk::kafka_config(prefix, "unused", 1);
    let (topic, key) = (format!("{prefix}._heartbeats"), table.to_string());
    tokio::task::spawn_blocking(move || {
        let mut n = 0;
        let _ = tunnel_shared::kafka::read_to_end(&kafka, &topic, Duration::from_secs(30), |m| {
            use rdkafka::Message;
            if m.key() == Some(key.as_bytes()) {
                n += 1;
            }
        });
        n
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn confluents_avro_deserializer_reads_every_record_of_a_table_topic() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(TABLE).await.unwrap();
    let prefix = tk::unique("tp");
    let config = tk::write_config(&dbs, &prefix, &tk::unique("g"), &["orders"], "");
    tk::add_producer_settings(&config, "heartbeat_interval_ms = 100");
    let producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    tk::wait_identical(&dbs, "orders", TIMEOUT, &[&producer, &consumer]).await;

    src.batch_execute(
        "INSERT INTO orders (id, note, amount, at) SELECT i, 'late ' || i, i, now() FROM generate_series(301, 350) i;
         UPDATE orders SET note = note || ' (changed)', updated_at = now() WHERE id % 3 = 0;
         DELETE FROM orders WHERE id % 7 = 0",
    )
    .await
    .unwrap();
    tk::wait_identical(&dbs, "orders", TIMEOUT, &[&producer, &consumer]).await;
    // heartbeats went out meanwhile, and go on
    let before = heartbeats(&prefix, "public.orders").await;
    tk::wait_for("more heartbeats of the table", TIMEOUT, || async {
        (heartbeats(&prefix, "public.orders").await >= before + 5).then_some(())
    })
    .await;

    let topic = format!("{prefix}.public.orders");
    let out = Command::new(&python)
        .arg(root().join("consumer/tests/thirdparty/decode.py"))
        .args([tk::brokers(), tk::registry_url(), topic.clone()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "decode.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found["failures"], 0, "{found}");
    assert_eq!(found["errors"].as_array().map(Vec::len), Some(0), "{found}");
    let ops = &found["ops"];
    for op in ["r", "c", "u", "d"] {
        assert!(ops[op].as_u64().unwrap_or(0) > 0, "no {op} events: {found}");
    }
    assert_eq!(found["tombstones"], ops["d"], "{found}");
    // every record read was an event or a tombstone: nothing else is in the topic
    let events: u64 = ["r", "c", "u", "d"]
        .iter()
        .map(|op| ops[op].as_u64().unwrap())
        .sum();
    assert_eq!(
        found["records"].as_u64(),
        Some(events + found["tombstones"].as_u64().unwrap()),
        "{found}"
    );
    assert_eq!(ops["r"], 300, "{found}");
    drop((producer, consumer));
}
