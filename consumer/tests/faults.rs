//! Fault injection: the pipeline under a steady load of inserts, updates and deletes while a
//! piece of its infrastructure fails, each case ending with the target identical to the source
//! within a stated bound, every event applied exactly once, and `verify` clean. The server a
//! case breaks (broker, registry, source or target PostgreSQL) is a private one, so breaking it
//! disturbs no other test. Each case prints how long the pipeline took to recover.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

#[path = "faults/case.rs"]
mod case;

use std::time::{Duration, Instant};

use case::{Case, Load, Private, MEDIA, RECOVERY};
use tunnel_shared::testkit::{self as tk, Databases, Proc};

/// The broker is SIGKILLed while the pipeline streams, and started again 5 s later.
#[tokio::test(flavor = "multi_thread")]
async fn broker_sigkill_in_steady_state() {
    let mut case = Case::new().await;
    let producer = Proc::start("producer", &case.config);
    let consumer = Proc::start("consumer", &case.config);
    let load = Load::start(&case.dbs, 1);
    load.caught_up(&case.dbs, &[&producer, &consumer]).await;
    let back = case.broker_outage().await;
    let what = "broker SIGKILL in steady state";
    let changes = case
        .recover_under(load, what, back, &[&producer, &consumer])
        .await;
    assert!(changes > 100, "the load made too few changes");
}

/// The broker is SIGKILLed while the consumer joins its group (right after it starts).
#[tokio::test(flavor = "multi_thread")]
async fn broker_sigkill_while_the_consumer_joins() {
    let mut case = Case::new().await;
    let producer = Proc::start("producer", &case.config);
    let load = Load::start(&case.dbs, 2);
    let target = case.dbs.target().await;
    let consumer = Proc::start("consumer", &case.config);
    // the consumer has connected once (its bookkeeping exists), not yet applied anything
    tk::wait_for("the consumer's bookkeeping", RECOVERY, || async {
        target
            .query_opt(
                "SELECT 1 FROM pg_tables WHERE schemaname = 'tunnel' AND tablename = 'offsets'",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;
    let back = case.broker_outage().await;
    let what = "broker SIGKILL while the consumer joins";
    case.recover_under(load, what, back, &[&producer, &consumer])
        .await;
}

/// The broker is SIGKILLed in the middle of the snapshot, and started again 5 s later: the
/// producer resumes after the last chunk Kafka has.
#[tokio::test(flavor = "multi_thread")]
async fn broker_sigkill_during_the_snapshot() {
    let mut case = Case::build(
        Private {
            broker: true,
            ..Private::default()
        },
        300_000,
        "",
    )
    .await;
    let producer = Proc::start("producer", &case.config);
    let consumer = Proc::start("consumer", &case.config);
    let target = case.dbs.target().await;
    tk::wait_for("the snapshot under way", RECOVERY, || async {
        let n: i64 = target
            .query_one("SELECT count(*) FROM media", &[])
            .await
            .ok()?
            .get(0);
        (n > 10_000).then_some(())
    })
    .await;
    assert!(
        !producer.log_text().contains("snapshot done"),
        "the snapshot ended before the fault: make the table larger"
    );
    let back = case.broker_outage().await;
    let load = Load::start(&case.dbs, 4);
    let what = "broker SIGKILL during the snapshot";
    case.recover_under(load, what, back, &[&producer, &consumer])
        .await;
}

/// A network partition: the broker stops answering (SIGSTOP) for longer than the consumer's
/// session timeout (10 s), without closing a connection, then answers again (SIGCONT).
#[tokio::test(flavor = "multi_thread")]
async fn broker_partitioned_longer_than_the_session_timeout() {
    let mut case = Case::new().await;
    let producer = Proc::start("producer", &case.config);
    let consumer = Proc::start("consumer", &case.config);
    let load = Load::start(&case.dbs, 3);
    load.caught_up(&case.dbs, &[&producer, &consumer]).await;
    case.broker().pause(true);
    // the partition itself: 15 s, past session.timeout.ms
    tokio::time::sleep(Duration::from_secs(15)).await;
    case.broker().pause(false);
    let back = Instant::now();
    let what = "broker partitioned 15 s";
    case.recover_under(load, what, back, &[&producer, &consumer])
        .await;
}

/// An operator changes a column of the consumer's bookkeeping by hand: the consumer stops with
/// an error that names the table (it panicked before).
#[tokio::test(flavor = "multi_thread")]
async fn a_bookkeeping_column_changed_by_hand_stops_the_consumer_with_the_reason() {
    let dbs = Databases::create().await;
    dbs.source()
        .await
        .batch_execute(&format!(
            "{MEDIA}; INSERT INTO media (s3_path) VALUES ('/a')"
        ))
        .await
        .unwrap();
    let config = tk::write_config(&dbs, &tk::unique("f"), &tk::unique("g"), &["media"], "");
    let producer = Proc::start("producer", &config);
    let mut consumer = Proc::start("consumer", &config);
    tk::wait_identical(&dbs, "media", RECOVERY, &[&producer, &consumer]).await;
    consumer.terminate(Duration::from_secs(30));
    dbs.target()
        .await
        .batch_execute("ALTER TABLE tunnel.offsets ALTER COLUMN next_offset TYPE numeric")
        .await
        .unwrap();
    dbs.source()
        .await
        .batch_execute("INSERT INTO media (s3_path) VALUES ('/b')")
        .await
        .unwrap();
    let mut consumer = Proc::start("consumer", &config);
    let status = consumer.wait_exit(RECOVERY);
    let log = consumer.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("tunnel") && log.contains("changed by hand") && !log.contains("panicked"),
        "{log}"
    );
}

/// Repair requests that cannot name a row (a key of the wrong type, of the wrong length, not
/// JSON at all) are logged and skipped: the producer goes on (it stopped, and stopped again at
/// every restart, before).
#[tokio::test(flavor = "multi_thread")]
async fn malformed_repair_requests_are_skipped() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dbs = Databases::create().await;
    dbs.source()
        .await
        .batch_execute(&format!(
            "{MEDIA}; INSERT INTO media (s3_path) VALUES ('/a')"
        ))
        .await
        .unwrap();
    let (prefix, group) = (tk::unique("f"), tk::unique("g"));
    let config = tk::write_config(&dbs, &prefix, &group, &["media"], "");
    let mut producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    tk::wait_identical(&dbs, "media", RECOVERY, &[&producer, &consumer]).await;
    let kafka = tk::kafka_config(&prefix, &group, 3);
    let sender: FutureProducer = tunnel_shared::kafka::producer_config(&kafka)
        .create()
        .unwrap();
    for request in [
        r#"{"keys": [["not a number"]]}"#,
        r#"{"keys": [["1", "2"], []]}"#,
        r#"{"keys": [["99999999999"]]}"#,
        "not json",
    ] {
        sender
            .send(
                FutureRecord::to(&format!("{prefix}._repairs"))
                    .key("public.media")
                    .payload(request),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    tk::wait_for("the requests skipped", RECOVERY, || async {
        (producer.log_text().matches("skipped").count() >= 4).then_some(())
    })
    .await;
    dbs.source()
        .await
        .batch_execute("INSERT INTO media (s3_path) VALUES ('/b')")
        .await
        .unwrap();
    tk::wait_identical(&dbs, "media", RECOVERY, &[&producer, &consumer]).await;
    assert!(producer.running(), "{}", producer.log_text());
}

/// Waits until the target's `media` has more than `rows` rows (the snapshot is under way).
async fn wait_target_rows(dbs: &Databases, rows: i64) {
    let target = dbs.target().await;
    tk::wait_for("the snapshot under way", RECOVERY, || async {
        let n: i64 = target
            .query_one("SELECT count(*) FROM media", &[])
            .await
            .ok()?
            .get(0);
        (n > rows).then_some(())
    })
    .await;
}

fn broker_only() -> Private {
    Private {
        broker: true,
        ..Private::default()
    }
}

/// The broker is SIGKILLed while the group rebalances: a second consumer joins, the first has
/// just given up its partitions.
#[tokio::test(flavor = "multi_thread")]
async fn broker_sigkill_during_a_rebalance() {
    let mut case = Case::new().await;
    let producer = Proc::start("producer", &case.config);
    let first = Proc::start("consumer", &case.config);
    let load = Load::start(&case.dbs, 5);
    load.caught_up(&case.dbs, &[&producer, &first]).await;
    let second = Proc::start("consumer", &case.config);
    first.wait_logged("partitions revoked", RECOVERY).await;
    let back = case.broker_outage().await;
    let what = "broker SIGKILL during a rebalance";
    case.recover_under(load, what, back, &[&producer, &first, &second])
        .await;
}

/// The broker is SIGKILLed while rows that break a rule go to the DLQ: after it, the target
/// holds exactly the rows that pass, every event is counted once (applied or dead-lettered),
/// and the DLQ holds one entry per event dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn broker_sigkill_while_rows_go_to_the_dlq() {
    let rule = "[[tables.rules]]\nname = \"known_type\"\ncheck = \"type in (1, 2)\"\n";
    let mut case = Case::build(broker_only(), 500, rule).await;
    let producer = Proc::start("producer", &case.config);
    let consumer = Proc::start("consumer", &case.config);
    let load = Load::start(&case.dbs, 6);
    let target = case.dbs.target().await;
    tk::wait_for("rows dead-lettered", RECOVERY, || async {
        let n: i64 = target
            .query_one(
                "SELECT coalesce(sum(dead_lettered), 0)::int8 FROM tunnel.offsets",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    let back = case.broker_outage().await;
    // the load goes on for 10 s after the fault, as in the other cases
    tokio::time::sleep(Duration::from_secs(10)).await;
    load.end().await;
    let passing = "(SELECT * FROM media WHERE type <> 3)";
    tk::wait_identical(&case.dbs, passing, RECOVERY, &[&producer, &consumer]).await;
    eprintln!(
        "fault 'broker SIGKILL during DLQ writes': identical (rows that pass) {:.1} s after the fault ended",
        back.elapsed().as_secs_f64()
    );
    case.assert_each_event_handled_once().await;
    let dead: i64 = target
        .query_one(
            "SELECT coalesce(sum(dead_lettered), 0)::int8 FROM tunnel.offsets",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (code, out, err) = tk::consumer_cli(&["dlq", "list"], &case.config, &[]);
    assert_eq!(code, 0, "dlq list: {out}{err}");
    let pending: i64 = out
        .split_whitespace()
        .skip_while(|w| !w.ends_with(".dlq:"))
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("dlq list: {out}"));
    assert_eq!(pending, dead, "DLQ entries vs events dead-lettered: {out}");
}

/// The registry is SIGKILLed while events the consumer has not decoded yet wait in the topic,
/// and while it is down the producer and the consumer are killed and started again (they cannot
/// reach it when they start): both wait for it, nothing goes to the DLQ, and they resume once
/// it is back (10 s later).
#[tokio::test(flavor = "multi_thread")]
async fn registry_sigkill_while_the_pipeline_restarts() {
    let mut case = Case::build(
        Private {
            broker: true,
            registry: true,
            ..Private::default()
        },
        500,
        "",
    )
    .await;
    let mut producer = Proc::start("producer", &case.config);
    let mut consumer = Proc::start("consumer", &case.config);
    let load = Load::start(&case.dbs, 7);
    load.caught_up(&case.dbs, &[&producer, &consumer]).await;
    // events the consumer has not decoded yet wait in the topic when the registry dies
    consumer.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    case.kill_registry();
    producer.kill9();
    let producer = Proc::start("producer", &case.config);
    let consumer = Proc::start("consumer", &case.config);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let back = case.restart_registry().await;
    let what = "registry SIGKILL, producer and consumer restarted without it";
    case.recover_under(load, what, back, &[&producer, &consumer])
        .await;
    let target = case.dbs.target().await;
    let dead: i64 = target
        .query_one(
            "SELECT coalesce(sum(dead_lettered), 0)::int8 FROM tunnel.offsets",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "events dead-lettered while the registry was down");
}

/// A PostgreSQL server (the source's or the target's) stops the hard way
/// (`pg_ctl stop -m immediate`) in steady state and starts 5 s later.
async fn postgres_immediate_stop(source: bool, seed: u64) {
    let private = Private {
        source,
        target: !source,
        ..Private::default()
    };
    let mut case = Case::build(private, 500, "").await;
    let producer = Proc::start("producer", &case.config);
    let consumer = Proc::start("consumer", &case.config);
    let load = Load::start(&case.dbs, seed);
    load.caught_up(&case.dbs, &[&producer, &consumer]).await;
    let back = case.postgres_outage(source).await;
    let which = if source { "source" } else { "target" };
    let what = format!("{which} PostgreSQL immediate stop");
    case.recover_under(load, &what, back, &[&producer, &consumer])
        .await;
}

/// The target stops: the consumer waits and resumes; what it had not committed it applies
/// again from the offsets stored in the target.
#[tokio::test(flavor = "multi_thread")]
async fn target_postgres_immediate_stop() {
    postgres_immediate_stop(false, 8).await;
}

/// The source stops: the producer waits and resumes (the load's own statements fail
/// meanwhile).
#[tokio::test(flavor = "multi_thread")]
async fn source_postgres_immediate_stop() {
    postgres_immediate_stop(true, 9).await;
}

/// The producer (`producer`) or the consumer is SIGKILLed in the middle of a 300k-row
/// snapshot and started again at once.
async fn sigkill_during_the_snapshot(producer_dies: bool, seed: u64) {
    let mut case = Case::build(Private::default(), 300_000, "").await;
    let mut producer = Proc::start("producer", &case.config);
    let mut consumer = Proc::start("consumer", &case.config);
    wait_target_rows(&case.dbs, 10_000).await;
    assert!(
        !producer.log_text().contains("snapshot done"),
        "the snapshot ended before the fault: make the table larger"
    );
    let victim = if producer_dies {
        &mut producer
    } else {
        &mut consumer
    };
    victim.kill9();
    let what = if producer_dies {
        "producer"
    } else {
        "consumer"
    };
    *victim = Proc::start(what, &case.config);
    let back = Instant::now();
    let load = Load::start(&case.dbs, seed);
    let what = format!("{what} SIGKILL during the snapshot");
    case.recover_under(load, &what, back, &[&producer, &consumer])
        .await;
}

/// The producer resumes after the last chunk Kafka has.
#[tokio::test(flavor = "multi_thread")]
async fn producer_sigkill_during_the_snapshot() {
    sigkill_during_the_snapshot(true, 10).await;
}

/// The consumer resumes from the offsets stored in the target.
#[tokio::test(flavor = "multi_thread")]
async fn consumer_sigkill_during_the_snapshot() {
    sigkill_during_the_snapshot(false, 11).await;
}

/// The consumer is SIGKILLed while it joins its group (before its first batch) and the
/// producer in steady state; both are started again at once.
#[tokio::test(flavor = "multi_thread")]
async fn producer_and_consumer_sigkill_at_start_and_in_steady_state() {
    let mut case = Case::build(Private::default(), 500, "").await;
    let mut producer = Proc::start("producer", &case.config);
    let load = Load::start(&case.dbs, 12);
    let mut consumer = Proc::start("consumer", &case.config);
    consumer.wait_logged("consuming", RECOVERY).await;
    consumer.kill9();
    let consumer = Proc::start("consumer", &case.config);
    load.caught_up(&case.dbs, &[&producer, &consumer]).await;
    producer.kill9();
    let producer = Proc::start("producer", &case.config);
    let back = Instant::now();
    let what = "consumer SIGKILL at group join, producer SIGKILL in steady state";
    case.recover_under(load, what, back, &[&producer, &consumer])
        .await;
}
