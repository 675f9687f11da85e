//! Fault injection: the pipeline under a steady load of inserts, updates and deletes while a
//! piece of its infrastructure fails, each case ending with the target identical to the source
//! within a stated bound, every event applied exactly once, and `verify` clean. The broker is a
//! private one ([`PrivateBroker`]), so killing it disturbs no other test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tunnel_shared::testkit::{self as tk, Databases, PrivateBroker, Proc};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY,
    s3_path varchar(1024),
    format varchar(5),
    type smallint,
    updated_at timestamp DEFAULT now())";

/// How long the pipeline may take to be identical again once the fault is over.
const RECOVERY: Duration = Duration::from_secs(90);

/// Inserts, updates and deletes at about 20 a second until `stop`; returns how many it made.
async fn steady_load(url: String, stop: Arc<AtomicBool>, seed: u64) -> usize {
    let client = tk::connect(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id: i32 = rng.gen_range(1..=500);
        let sql = match rng.gen_range(0..10) {
            0..=4 => "INSERT INTO media (s3_path, format, type) VALUES ('/load', 'jpg', 1)",
            5..=8 => "UPDATE media SET s3_path = '/u' || id, updated_at = now() WHERE id = (SELECT id FROM media ORDER BY abs(id - $1) LIMIT 1)",
            _ => "DELETE FROM media WHERE id = (SELECT id FROM media ORDER BY abs(id - $1) LIMIT 1)",
        };
        let result = if sql.contains("$1") {
            client.execute(sql, &[&id]).await
        } else {
            client.execute(sql, &[]).await
        };
        result.unwrap();
        n += 1;
        // the load's own pace, not a wait for a condition
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n
}

/// A steady load running until [`Load::end`].
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Load {
    fn start(dbs: &Databases, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(steady_load(
            dbs.source_admin_url.clone(),
            stop.clone(),
            seed,
        ));
        Load { stop, task }
    }

    /// Stops the load; how many changes it made.
    async fn end(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// A table under load, replicated through a private broker.
struct Case {
    dbs: Databases,
    broker: Option<PrivateBroker>,
    config: std::path::PathBuf,
    prefix: String,
    group: String,
}

impl Case {
    async fn new() -> Case {
        Self::with_rows(500).await
    }

    /// `media` with `rows` rows before the pipeline starts.
    async fn with_rows(rows: i64) -> Case {
        let broker = tokio::task::spawn_blocking(PrivateBroker::start)
            .await
            .unwrap();
        let dbs = Databases::create().await;
        dbs.source()
            .await
            .batch_execute(&format!(
                "{MEDIA}; INSERT INTO media (s3_path, format, type) SELECT '/seed/' || i, 'jpg', 1 FROM generate_series(1, {rows}) i"
            ))
            .await
            .unwrap();
        let (prefix, group) = (tk::unique("f"), tk::unique("g"));
        let config = tk::write_config(&dbs, &prefix, &group, &["media"], "");
        tk::use_brokers(&config, &broker.brokers());
        Case {
            dbs,
            broker: Some(broker),
            config,
            prefix,
            group,
        }
    }

    fn broker(&mut self) -> &mut PrivateBroker {
        self.broker.as_mut().expect("the broker")
    }

    /// The outage: SIGKILL, 5 s without a broker, a restart. Returns when it is back.
    async fn broker_outage(&mut self) -> Instant {
        self.broker().kill9();
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.restart_broker().await;
        Instant::now()
    }

    /// After a fault that ended at `back`: the load goes on for 10 s, then the pipeline must
    /// recover ([`Case::assert_recovered`]). How many changes the load made.
    async fn recover_under(
        &mut self,
        load: Load,
        what: &str,
        back: Instant,
        procs: &[&Proc],
    ) -> usize {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let changes = load.end().await;
        self.assert_recovered(what, back, procs).await;
        changes
    }

    async fn restart_broker(&mut self) {
        let mut broker = self.broker.take().expect("the broker");
        let broker = tokio::task::spawn_blocking(move || {
            broker.restart();
            broker
        })
        .await
        .unwrap();
        self.broker = Some(broker);
    }

    /// Identical within [`RECOVERY`] of `since` (the end of the fault), every committed event
    /// applied exactly once, `verify` clean. Prints how long the recovery took.
    async fn assert_recovered(&mut self, what: &str, since: Instant, procs: &[&Proc]) {
        tk::wait_identical(&self.dbs, "media", RECOVERY, procs).await;
        eprintln!(
            "fault '{what}': identical {:.1} s after the fault ended (load stopped 10 s after it)",
            since.elapsed().as_secs_f64()
        );
        let topic = format!("{}.public.media", self.prefix);
        let book = tk::bookkeeping(&self.dbs.target().await, &topic).await;
        let mut kafka = tk::kafka_config(&self.prefix, &self.group, 3);
        kafka.brokers = self.broker().brokers();
        let (t, upto) = (topic.clone(), book.clone());
        let counts = tokio::task::spawn_blocking(move || tk::count_messages(&kafka, &t, &upto))
            .await
            .unwrap();
        for (partition, (_, applied)) in &book {
            assert_eq!(
                counts.get(partition).copied().unwrap_or(0),
                *applied,
                "partition {partition}: events in the topic vs events applied"
            );
        }
        let (code, out) = tk::verify(&self.config, &[]);
        assert_eq!(code, 0, "verify after recovery: {out}");
    }
}

/// The broker is SIGKILLed while the pipeline streams, and started again 5 s later.
#[tokio::test(flavor = "multi_thread")]
async fn broker_sigkill_in_steady_state() {
    let mut case = Case::new().await;
    let producer = Proc::start("producer", &case.config);
    let consumer = Proc::start("consumer", &case.config);
    let load = Load::start(&case.dbs, 1);
    tk::wait_identical(&case.dbs, "media", RECOVERY, &[&producer, &consumer]).await;
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
    let mut case = Case::with_rows(300_000).await;
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
    tk::wait_identical(&case.dbs, "media", RECOVERY, &[&producer, &consumer]).await;
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
