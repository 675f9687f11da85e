//! The consumer's side of schema evolution against the real stack, with hand-written schema
//! versions (the producer's side is tested on its own): events of a newer value schema evolve
//! the replica in their batch's transaction (column renamed and widened, type widened, column
//! added with a constant default, one added with a default that is not copied, one dropped),
//! events of the older schema still apply afterwards, and a change the target refuses stops
//! the consumer with a message that names the table, the column and both types.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::Schema;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{json, Value as Json};
use tokio_postgres::Client;
use tunnel_shared::catalog::{Column, ColumnKind, TableInfo};
use tunnel_shared::columns::{self, ColumnDef};
use tunnel_shared::event::{ChangeEvent, Detection, EventEncoder, Op};
use tunnel_shared::registry::Registry;
use tunnel_shared::schema::{self, TableSchemas};
use tunnel_shared::testkit::{self as tk, Databases, Proc};

/// A column of a hand-written version: name, type, kind, nullable, attnum, default.
type Col = (
    &'static str,
    &'static str,
    ColumnKind,
    bool,
    i16,
    Option<&'static str>,
);

/// The schemas of one version of `media`, as the producer writes them with the evolution
/// attributes: every row field a union with null, NOT NULL told by `pg.nullable`.
fn version(cols: &[Col]) -> (TableInfo, TableSchemas) {
    let t = TableInfo {
        schema: "public".into(),
        name: "media".into(),
        columns: cols
            .iter()
            .map(|c| Column {
                name: c.0.into(),
                type_name: c.1.into(),
                kind: c.2,
                nullable: c.3,
                attnum: c.4,
                default: c.5.map(String::from),
            })
            .collect(),
        key: vec![0],
        watermark: None,
    };
    let derived = schema::derive(&t, "tunnel").unwrap();
    let mut key: Json = serde_json::from_str(&derived.key_json).unwrap();
    key["fields"][0]["pg.attnum"] = json!(1);
    let mut value: Json = serde_json::from_str(&derived.value_json).unwrap();
    let fields = value["fields"][1]["type"][1]["fields"]
        .as_array_mut()
        .unwrap();
    for (f, c) in fields.iter_mut().zip(cols) {
        if f["type"].is_array() {
            // already a union
        } else {
            f["type"] = json!(["null", f["type"].clone()]);
            f["default"] = Json::Null;
        }
        f["pg.attnum"] = json!(c.4);
        f["pg.nullable"] = json!(c.3);
        if let Some(d) = c.5 {
            f["pg.default"] = json!(d);
        }
    }
    let (key_json, value_json) = (key.to_string(), value.to_string());
    let schemas = TableSchemas {
        key: Schema::parse_str(&key_json).unwrap(),
        value: Schema::parse_str(&value_json).unwrap(),
        key_json,
        value_json,
    };
    (t, schemas)
}

/// Registers a version's schemas; returns its encoder.
async fn register(registry: &Registry, topic: &str, cols: &[Col]) -> EventEncoder {
    let (t, s) = version(cols);
    let key_id = registry
        .register(&format!("{topic}-key"), &s.key_json)
        .await
        .unwrap();
    let value_id = registry
        .register(&format!("{topic}-value"), &s.value_json)
        .await
        .unwrap();
    EventEncoder::new(s, key_id, value_id, &t).unwrap()
}

/// Produces inserts (`id`, row) to partition 0 of `topic`, in order.
fn produce(topic: &str, encoder: &EventEncoder, rows: &[(i32, Vec<Option<Value>>)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tk::brokers())
        .create()
        .unwrap();
    for (id, row) in rows {
        let event = ChangeEvent {
            op: Op::Create,
            key: vec![Value::Int(*id)],
            after: Some(row.clone()),
            detected_by: Detection::KeyScan,
            updated_at: None,
            ts_ms: 0,
        };
        let key = encoder.encode_key(&event.key).unwrap();
        let value = encoder.encode_value(&event).unwrap();
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(0)
            .key(key.as_slice())
            .payload(value.as_slice());
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn s(v: &str) -> Option<Value> {
    Some(Value::String(v.into()))
}

async fn rows(tgt: &Client, sql: &str) -> Vec<String> {
    tgt.query(sql, &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_default()
}

async fn wait_rows(tgt: &Client, sql: &str, want: &[&str], consumer: &Proc) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = rows(tgt, sql).await;
        if got == want {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "rows {got:?}, want {want:?}; consumer log:\n{}",
                consumer.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const V1: &[Col] = &[
    ("id", "integer", ColumnKind::Int4, false, 1, None),
    (
        "s3_path",
        "character varying(10)",
        ColumnKind::Text,
        true,
        2,
        None,
    ),
    (
        "format",
        "character varying(5)",
        ColumnKind::Text,
        true,
        3,
        None,
    ),
    ("n", "integer", ColumnKind::Int4, true, 4, Some("0")),
];

/// s3_path renamed path and widened, format dropped, n widened, label added NOT NULL with a
/// constant default, seen added with a default that is not a constant.
const V2: &[Col] = &[
    ("id", "integer", ColumnKind::Int4, false, 1, None),
    (
        "path",
        "character varying(50)",
        ColumnKind::Text,
        true,
        2,
        None,
    ),
    ("n", "bigint", ColumnKind::Int8, true, 4, Some("0")),
    (
        "label",
        "text",
        ColumnKind::Text,
        false,
        5,
        Some("'n/a'::text"),
    ),
    (
        "seen",
        "text",
        ColumnKind::Text,
        true,
        6,
        Some("now()::text"),
    ),
];

/// path turned into an integer: its values do not convert.
const V3: &[Col] = &[
    ("id", "integer", ColumnKind::Int4, false, 1, None),
    ("path", "integer", ColumnKind::Int4, true, 2, None),
    ("n", "bigint", ColumnKind::Int8, true, 4, Some("0")),
    (
        "label",
        "text",
        ColumnKind::Text,
        false,
        5,
        Some("'n/a'::text"),
    ),
    (
        "seen",
        "text",
        ColumnKind::Text,
        true,
        6,
        Some("now()::text"),
    ),
];

fn def(name: &str, type_name: &str, nullable: bool, default: Option<&str>) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        type_name: type_name.into(),
        nullable,
        default: default.map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_schema_evolves_the_replica_and_older_events_still_apply() {
    let dbs = Databases::create().await;
    let prefix = tk::unique("evo");
    let config = tk::write_config(&dbs, &prefix, &tk::unique("g"), &["media"], "");
    let topic = format!("{prefix}.public.media");
    let registry = Registry::new(&tk::registry_url()).unwrap();
    let v1 = register(&registry, &topic, V1).await;
    // the last version is not BACKWARD compatible (a string becomes an int)
    registry
        .set_compatibility(&format!("{topic}-value"), "NONE")
        .await
        .unwrap();
    let mut consumer = Proc::start("consumer", &config);
    consumer
        .wait_logged("partitions assigned", Duration::from_secs(60))
        .await;
    let tgt = dbs.target().await;
    produce(
        &topic,
        &v1,
        &[
            (
                1,
                vec![Some(Value::Int(1)), s("a/1"), s("jpg"), Some(Value::Int(5))],
            ),
            (2, vec![Some(Value::Int(2)), s("a/2"), None, None]),
        ],
    );
    let listing = "SELECT format('%s|%s|%s', id, s3_path, n) FROM media ORDER BY id";
    wait_rows(&tgt, listing, &["1|a/1|5", "2|a/2|"], &consumer).await;
    let created = columns::load(&tgt, "public", "media").await.unwrap();
    assert_eq!(
        created[3],
        def("n", "integer", true, Some("0")),
        "constant default copied"
    );

    let v2 = register(&registry, &topic, V2).await;
    produce(
        &topic,
        &v2,
        &[(
            3,
            vec![
                Some(Value::Int(3)),
                s("b/3"),
                Some(Value::Long(1 << 40)),
                s("x"),
                s("t"),
            ],
        )],
    );
    // an event of the older schema, after the change
    produce(
        &topic,
        &v1,
        &[(
            4,
            vec![
                Some(Value::Int(4)),
                s("old/4"),
                s("png"),
                Some(Value::Int(7)),
            ],
        )],
    );
    let listing =
        "SELECT format('%s|%s|%s|%s|%s', id, path, n, label, seen) FROM media ORDER BY id";
    wait_rows(
        &tgt,
        listing,
        &[
            "1|a/1|5|n/a|",
            "2|a/2||n/a|",
            "3|b/3|1099511627776|x|t",
            "4|old/4|7|n/a|",
        ],
        &consumer,
    )
    .await;
    assert_eq!(
        columns::load(&tgt, "public", "media").await.unwrap(),
        [
            def("id", "integer", false, None),
            def("path", "character varying(50)", true, None),
            def("n", "bigint", true, Some("0")),
            def("label", "text", false, Some("'n/a'::text")),
            def("seen", "text", true, None),
        ],
        "renamed, widened, dropped, added; now()::text not copied"
    );
    let mapping = rows(
        &tgt,
        "SELECT format('%s=%s', column_name, source_attnum) FROM tunnel.schema_columns
          WHERE target_table = 'media' ORDER BY source_attnum",
    )
    .await;
    assert_eq!(mapping, ["id=1", "path=2", "n=4", "label=5", "seen=6"]);

    // a change the target refuses stops the consumer, and says what to do
    let v3 = register(&registry, &topic, V3).await;
    produce(
        &topic,
        &v3,
        &[(
            5,
            vec![Some(Value::Int(5)), Some(Value::Int(5)), None, s("y"), None],
        )],
    );
    let status = consumer.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = consumer.log_text();
    for part in [
        "table public.media, column path",
        "character varying(50) to integer",
        "restart the consumer",
    ] {
        assert!(log.contains(part), "{part}:\n{log}");
    }
    // nothing of that batch was applied
    assert_eq!(rows(&tgt, "SELECT count(*)::text FROM media").await, ["4"]);
}
