//! Stack smoke test: checks the pieces of the local stack (`scripts/stack.sh up`) that the rest of
//! the project takes for granted — the read-only source role, compacted topics, and Avro through
//! the registry and Kafka. Every test uses its own databases, topics and subjects, so they can
//! run in parallel with each other and with the other crates' tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::future::Future;
use std::time::Duration;

use apache_avro::schema::Schema;
use apache_avro::types::Value;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use schema_registry_converter::async_impl::easy_avro::{EasyAvroDecoder, EasyAvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use tunnel_shared::config::KafkaConfig;
use tunnel_shared::kafka::{self, TABLE_TOPIC_CONFIGS};
use tunnel_shared::registry::Registry;
use tunnel_shared::testkit::{self, Databases};
use tunnel_shared::wire;

const WAIT: Duration = Duration::from_secs(30);

fn kafka_config() -> KafkaConfig {
    KafkaConfig {
        topic_prefix: "stack".into(),
        partitions: 3,
        replication_factor: 1,
        consumer_group: testkit::unique("stack_group"),
        ..KafkaConfig::new(&testkit::brokers())
    }
}

fn kafka_admin() -> AdminClient<DefaultClientContext> {
    kafka::admin(&kafka_config()).unwrap_or_else(|e| panic!("kafka admin client: {e}"))
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(WAIT))
        .operation_timeout(Some(WAIT))
}

/// Runs `body` as its own task, then `cleanup` whether the body passed or panicked, then
/// re-raises the body's panic, so that a failed assertion leaves no topic behind.
async fn with_cleanup<B, C>(body: B, cleanup: C)
where
    B: Future<Output = ()> + Send + 'static,
    C: Future<Output = ()>,
{
    let outcome = tokio::spawn(body).await;
    cleanup.await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test body did not finish: {e}"),
        }
    }
}

/// Deletes a topic, logging (not failing on) an error: this is cleanup.
async fn delete_topic(admin: &AdminClient<DefaultClientContext>, topic: &str) {
    match admin.delete_topics(&[topic], &admin_options()).await {
        Ok(results) => {
            for r in results {
                if let Err((t, code)) = r {
                    eprintln!("cleanup: cannot delete topic {t}: {code}");
                }
            }
        }
        Err(e) => eprintln!("cleanup: cannot delete topic {topic}: {e}"),
    }
}

/// The SQLSTATE and message of a failed statement, for assertions and failure messages.
fn sql_error(e: &tokio_postgres::Error) -> (Option<SqlState>, String) {
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    (e.code().cloned(), message)
}

/// Runs `sql` and asserts that it fails with SQLSTATE `expected`.
async fn assert_refused(client: &Client, sql: &str, expected: SqlState, why: &str) {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("the reader could run `{sql}`; expected {why}"),
        Err(e) => {
            let (code, message) = sql_error(&e);
            assert_eq!(
                code.as_ref(),
                Some(&expected),
                "`{sql}` failed, but not with {} ({why}): {message}",
                expected.code()
            );
            eprintln!("refused as expected: `{sql}` -> {message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reader_role_cannot_write() {
    let dbs = Databases::create().await;

    // the application's role owns the database and may write
    let admin = dbs.source().await;
    admin
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items VALUES (1, 'one');",
        )
        .await
        .unwrap_or_else(|e| panic!("admin setup: {}", sql_error(&e).1));

    let reader = testkit::connect(&dbs.source_reader_url).await;

    // the role's default makes every transaction read-only
    let row = reader
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap_or_else(|e| panic!("SHOW default_transaction_read_only: {}", sql_error(&e).1));
    assert_eq!(row.get::<_, String>(0), "on");

    // reading works (the default privileges of template1 grant SELECT on new tables)
    let rows = reader
        .query("SELECT id, name FROM items ORDER BY id", &[])
        .await
        .unwrap_or_else(|e| panic!("reader SELECT: {}", sql_error(&e).1));
    let read: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(read, vec![(1, "one".to_string())]);

    let writes = [
        "INSERT INTO items VALUES (2, 'two')",
        "UPDATE items SET name = 'uno' WHERE id = 1",
        "DELETE FROM items WHERE id = 1",
        "CREATE TABLE reader_table (id int)",
    ];

    // first line of defence: the session is read-only
    for sql in writes {
        assert_refused(
            &reader,
            sql,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            "a read-only transaction (25006)",
        )
        .await;
    }

    // second line: a session that asks for a read-write transaction still lacks the privileges
    for sql in writes {
        reader
            .batch_execute("BEGIN READ WRITE")
            .await
            .unwrap_or_else(|e| panic!("BEGIN READ WRITE: {}", sql_error(&e).1));
        assert_refused(
            &reader,
            sql,
            SqlState::INSUFFICIENT_PRIVILEGE,
            "permission denied (42501)",
        )
        .await;
        reader
            .batch_execute("ROLLBACK")
            .await
            .unwrap_or_else(|e| panic!("ROLLBACK: {}", sql_error(&e).1));
    }

    // nothing changed
    assert_eq!(
        testkit::table_text(&admin, "items").await,
        vec!["(1,one)".to_string()]
    );
    let exists: bool = admin
        .query_one("SELECT to_regclass('reader_table') IS NOT NULL", &[])
        .await
        .unwrap_or_else(|e| panic!("to_regclass: {}", sql_error(&e).1))
        .get(0);
    assert!(!exists, "the reader created a table");

    // the target's role may create tables and write
    let target = dbs.target().await;
    target
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items VALUES (1, 'one'), (2, 'two');
             UPDATE items SET name = 'uno' WHERE id = 1;
             DELETE FROM items WHERE id = 2;",
        )
        .await
        .unwrap_or_else(|e| panic!("target role cannot write: {}", sql_error(&e).1));
    assert_eq!(
        testkit::table_text(&target, "items").await,
        vec!["(1,uno)".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compacted_topic_config_reads_back() {
    let topic = testkit::unique("stack_compact");
    let body = {
        let topic = topic.clone();
        async move {
            let admin = kafka_admin();
            kafka::ensure_topic(&admin, &topic, 3, 1, TABLE_TOPIC_CONFIGS)
                .await
                .unwrap_or_else(|e| panic!("ensure_topic: {e}"));

            // a freshly created topic's metadata may take a moment to reach every broker view
            let resource = testkit::wait_for("the topic's configs", WAIT, || {
                let admin = &admin;
                let topic = &topic;
                async move {
                    let results = admin
                        .describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options())
                        .await
                        .ok()?;
                    results.into_iter().next()?.ok()
                }
            })
            .await;
            let entries = resource.entry_map();
            for (name, expected) in TABLE_TOPIC_CONFIGS {
                let entry = entries
                    .get(name)
                    .unwrap_or_else(|| panic!("topic {topic} has no config {name}"));
                assert_eq!(
                    entry.value.as_deref(),
                    Some(*expected),
                    "config {name} of topic {topic}"
                );
                assert!(!entry.is_default, "config {name} of {topic} is the default");
            }
            assert_eq!(
                entries
                    .get("cleanup.policy")
                    .and_then(|e| e.value.as_deref()),
                Some("compact")
            );

            // the partitions asked for
            let partitions = testkit::wait_for("the topic's metadata", WAIT, || {
                let admin = &admin;
                let topic = &topic;
                async move {
                    let md = tokio::task::block_in_place(|| {
                        admin
                            .inner()
                            .fetch_metadata(Some(topic), Duration::from_secs(5))
                    })
                    .ok()?;
                    let t = md.topics().first()?;
                    (t.error().is_none() && !t.partitions().is_empty())
                        .then(|| t.partitions().len())
                }
            })
            .await;
            assert_eq!(partitions, 3, "partitions of {topic}");

            // a second call finds the topic and succeeds
            kafka::ensure_topic(&admin, &topic, 3, 1, TABLE_TOPIC_CONFIGS)
                .await
                .unwrap_or_else(|e| panic!("second ensure_topic is not idempotent: {e}"));
        }
    };
    with_cleanup(body, async { delete_topic(&kafka_admin(), &topic).await }).await;
}

const MEDIA_SCHEMA: &str = r#"{
  "type": "record",
  "name": "media",
  "namespace": "tunnel.stack",
  "fields": [
    {"name": "id", "type": "int"},
    {"name": "s3_path", "type": "string"},
    {"name": "caption", "type": ["null", "string"], "default": null},
    {"name": "created_at", "type": {"type": "long", "logicalType": "local-timestamp-micros"}}
  ]
}"#;

fn media_value(caption: Option<&str>) -> Value {
    Value::Record(vec![
        ("id".into(), Value::Int(42)),
        (
            "s3_path".into(),
            Value::String("s3://bucket/media/42.jpg".into()),
        ),
        (
            "caption".into(),
            match caption {
                Some(c) => Value::Union(1, Box::new(Value::String(c.into()))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
        (
            "created_at".into(),
            Value::LocalTimestampMicros(1_718_000_000_123_456),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn avro_round_trip_through_registry() {
    let topic = testkit::unique("stack_avro");
    let subject = format!("{topic}-value");
    let body = {
        let topic = topic.clone();
        let subject = subject.clone();
        async move { avro_round_trip(topic, subject).await }
    };
    let cleanup = async {
        delete_topic(&kafka_admin(), &topic).await;
        delete_subject(&subject).await;
    };
    with_cleanup(body, cleanup).await;
}

async fn avro_round_trip(topic: String, subject: String) {
    let registry_url = testkit::registry_url();
    let schema = Schema::parse_str(MEDIA_SCHEMA).unwrap_or_else(|e| panic!("media schema: {e}"));
    let sr_settings = || {
        SrSettings::new_builder(registry_url.clone())
            .set_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|e| panic!("registry settings: {e}"))
    };

    // encode: registers the supplied schema under <topic>-value and frames the body with its id
    let encoder = EasyAvroEncoder::new(sr_settings());
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.clone(),
        false,
        get_supplied_schema(&schema),
    );
    assert_eq!(
        strategy.get_subject().ok().as_deref(),
        Some(subject.as_str())
    );
    let records = [media_value(Some("a cat")), media_value(None)];
    let mut encoded = Vec::new();
    for record in &records {
        let bytes = tokio::time::timeout(WAIT, encoder.encode_value(record.clone(), &strategy))
            .await
            .unwrap_or_else(|_| panic!("encoding timed out after {WAIT:?}"))
            .unwrap_or_else(|e| panic!("encode through the registry: {e:?}"));
        encoded.push(bytes);
    }

    // the Confluent wire format: magic byte 0, a big-endian schema id, the Avro body
    let mut ids = Vec::new();
    for bytes in &encoded {
        assert_eq!(bytes[0], wire::MAGIC, "magic byte of {bytes:?}");
        let (id, avro_body) = wire::parse(bytes).unwrap_or_else(|e| panic!("wire::parse: {e}"));
        assert_eq!(
            id,
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])
        );
        assert!(!avro_body.is_empty());
        ids.push(id);
    }
    let id = ids[0];
    assert!(ids.iter().all(|i| *i == id), "one schema, one id: {ids:?}");

    // the project's registry client sees the same schema under that id, and the same id for the
    // same schema
    let registry = Registry::new(&registry_url).unwrap_or_else(|e| panic!("Registry::new: {e}"));
    let fetched = registry
        .schema(id)
        .await
        .unwrap_or_else(|e| panic!("Registry::schema({id}): {e}"));
    assert_eq!(
        *fetched, schema,
        "the registry's schema {id} is not the one registered"
    );
    match &*fetched {
        Schema::Record(r) => {
            let created_at = r
                .fields
                .iter()
                .find(|f| f.name == "created_at")
                .unwrap_or_else(|| panic!("schema {id} has no created_at"));
            assert_eq!(
                created_at.schema,
                Schema::LocalTimestampMicros,
                "the logical type did not survive the registry"
            );
        }
        other => panic!("schema {id} is not a record: {other:?}"),
    }
    let again = registry
        .register(&subject, MEDIA_SCHEMA)
        .await
        .unwrap_or_else(|e| panic!("Registry::register({subject}): {e}"));
    assert_eq!(
        again, id,
        "registering the same schema again gave another id"
    );

    // compatibility level of the subject
    registry
        .set_compatibility(&subject, "BACKWARD")
        .await
        .unwrap_or_else(|e| panic!("set_compatibility({subject}, BACKWARD): {e}"));
    let level = registry
        .compatibility(&subject)
        .await
        .unwrap_or_else(|e| panic!("compatibility({subject}): {e}"));
    assert_eq!(level.as_deref(), Some("BACKWARD"));

    // through Kafka and back
    let admin = kafka_admin();
    kafka::ensure_topic(&admin, &topic, 3, 1, TABLE_TOPIC_CONFIGS)
        .await
        .unwrap_or_else(|e| panic!("ensure_topic: {e}"));
    let config = kafka_config();
    let producer: FutureProducer = kafka::producer_config(&config)
        .create()
        .unwrap_or_else(|e| panic!("producer: {e}"));
    for (i, bytes) in encoded.iter().enumerate() {
        let key = format!("media-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(bytes),
                Timeout::After(WAIT),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }

    let consumer: StreamConsumer = kafka::consumer_config(&config, &config.consumer_group)
        .create()
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    consumer
        .subscribe(&[&topic])
        .unwrap_or_else(|e| panic!("subscribe {topic}: {e}"));
    let decoder = EasyAvroDecoder::new(sr_settings());
    let mut received: Vec<(String, Vec<u8>)> = Vec::new();
    while received.len() < encoded.len() {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out after {WAIT:?} waiting for message {} of {} on {topic}",
                    received.len() + 1,
                    encoded.len()
                )
            })
            .unwrap_or_else(|e| panic!("consume {topic}: {e}"));
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let payload = message.payload().unwrap_or_default().to_vec();
        received.push((key, payload));
    }
    received.sort();

    for (i, (key, payload)) in received.iter().enumerate() {
        assert_eq!(key, &format!("media-{i}"));
        assert_eq!(payload, &encoded[i], "the bytes of {key} changed in Kafka");
        let decoded = tokio::time::timeout(WAIT, decoder.decode(Some(payload)))
            .await
            .unwrap_or_else(|_| panic!("decoding timed out after {WAIT:?}"))
            .unwrap_or_else(|e| panic!("decode {key}: {e:?}"));
        assert_eq!(decoded.value, records[i], "decoded {key}");
        assert_eq!(
            decoded.name.map(|n| n.fullname(None)).as_deref(),
            Some("tunnel.stack.media")
        );
    }
}

/// Deletes a subject from the registry (soft, then permanent), logging errors: this is cleanup.
async fn delete_subject(subject: &str) {
    let client = match reqwest::Client::builder().timeout(WAIT).build() {
        Ok(c) => c,
        Err(e) => return eprintln!("cleanup: http client: {e}"),
    };
    let url = format!(
        "{}/subjects/{subject}",
        testkit::registry_url().trim_end_matches('/')
    );
    for url in [url.clone(), format!("{url}?permanent=true")] {
        match client.delete(&url).send().await {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {}
            Ok(r) => eprintln!("cleanup: DELETE {url}: HTTP {}", r.status()),
            Err(e) => eprintln!("cleanup: DELETE {url}: {e}"),
        }
    }
}

/// The fault tests' broker: what was committed before a SIGKILL is there after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_private_broker_keeps_its_data_across_a_sigkill() {
    let mut broker = tokio::task::spawn_blocking(testkit::PrivateBroker::start)
        .await
        .unwrap();
    let kafka = KafkaConfig {
        brokers: broker.brokers(),
        ..kafka_config()
    };
    let admin = kafka::admin(&kafka).unwrap();
    kafka::ensure_topic(&admin, "t", 1, 1, TABLE_TOPIC_CONFIGS)
        .await
        .unwrap();
    let producer: FutureProducer = kafka::producer_config(&kafka).create().unwrap();
    producer
        .send(FutureRecord::to("t").key("k").payload("v"), WAIT)
        .await
        .unwrap();
    drop(producer);
    broker.kill9();
    let mut broker = tokio::task::spawn_blocking(move || {
        broker.restart();
        broker
    })
    .await
    .unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut n = 0;
        kafka::read_to_end(&kafka, "t", Duration::from_secs(60), |_| n += 1).map(|()| n)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(read, 1);
    broker.kill9();
}
