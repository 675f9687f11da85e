//! Scaling consumers: several `tunnel-consumer` processes in one group share a table's
//! partitions; adding and removing them under a steady load loses nothing and applies nothing
//! twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tunnel_shared::testkit::{self as tk, Databases, Proc};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint,
    updated_at timestamp DEFAULT now())";

/// Inserts, updates and deletes in small transactions until told to stop; returns how many
/// transactions it committed.
async fn steady_load(url: String, stop: Arc<AtomicBool>, done: Arc<AtomicUsize>) {
    let client = tk::connect(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    while !stop.load(Ordering::Relaxed) {
        let sql = match rng.gen_range(0..10) {
            0..=4 => format!(
                "INSERT INTO media (s3_path, format, type) SELECT '/l/' || g, 'jpg', {} FROM generate_series(1, 5) g",
                rng.gen_range(1..4)
            ),
            5..=7 => format!(
                "UPDATE media SET s3_path = s3_path || 'u', updated_at = now() WHERE id % 97 = {}",
                rng.gen_range(0..97)
            ),
            _ => format!("DELETE FROM media WHERE id % 89 = {}", rng.gen_range(0..89)),
        };
        client.batch_execute(&sql).await.unwrap();
        done.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// How many times a consumer's log says it was given partitions of topics under `prefix`.
fn assignments(c: &Proc, prefix: &str) -> usize {
    c.log_text()
        .matches(&format!("partitions assigned partitions={prefix}"))
        .count()
}

async fn wait_assigned(c: &Proc, prefix: &str, times: usize) {
    tk::wait_for(
        "a consumer to get partitions",
        Duration::from_secs(60),
        || async { (assignments(c, prefix) >= times).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_to_three_consumers_and_back_under_load_loses_nothing_and_applies_nothing_twice() {
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(MEDIA).await.unwrap();
    src.batch_execute("INSERT INTO media (s3_path, format, type) SELECT '/s/' || g, 'png', 1 FROM generate_series(1, 2000) g")
        .await
        .unwrap();
    let prefix = tk::unique("scale");
    let group = tk::unique("g");
    let config = tk::write_config(&dbs, &prefix, &group, &["media"], "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("partitions = 3", "partitions = 6")).unwrap();
    tk::add_producer_settings(&config, "delete_interval_ms = 200");

    let producer = Proc::start("producer", &config);
    let c1 = Proc::start("consumer", &config);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(steady_load(
        dbs.source_admin_url.clone(),
        stop.clone(),
        done.clone(),
    ));
    wait_assigned(&c1, &prefix, 1).await;
    let tgt = dbs.target().await;
    tk::wait_for("the snapshot applied", Duration::from_secs(60), || async {
        let n: i64 = tgt
            .query_one(
                "SELECT coalesce(sum(applied_events), 0)::int8 FROM tunnel.offsets",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n >= 2000).then_some(())
    })
    .await;

    // up to three: each newcomer is given partitions
    let mut c2 = Proc::start("consumer", &config);
    wait_assigned(&c2, &prefix, 1).await;
    let mut c3 = Proc::start("consumer", &config);
    wait_assigned(&c3, &prefix, 1).await;
    let before = done.load(Ordering::Relaxed);
    tk::wait_for(
        "load while three consumers run",
        Duration::from_secs(30),
        || async { (done.load(Ordering::Relaxed) > before + 50).then_some(()) },
    )
    .await;

    // and back to one: c1 takes their partitions over
    let assigned_before = assignments(&c1, &prefix);
    assert!(
        c3.terminate(Duration::from_secs(30)).success(),
        "c3: {}",
        c3.log_text()
    );
    assert!(
        c2.terminate(Duration::from_secs(30)).success(),
        "c2: {}",
        c2.log_text()
    );
    wait_assigned(&c1, &prefix, assigned_before + 1).await;
    let before = done.load(Ordering::Relaxed);
    tk::wait_for(
        "load after scaling down",
        Duration::from_secs(30),
        || async { (done.load(Ordering::Relaxed) > before + 50).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    // the target equals the source
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (code, out) = tk::verify(&config, &[]);
        if code == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "verify never came clean: {out}\nproducer:\n{}\nconsumer:\n{}",
            producer.log_text(),
            c1.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // every event below the stored offsets was applied once: the bookkeeping's count of
    // applied events equals the number of events in the topic, partition by partition
    let topic = format!("{prefix}.public.media");
    let kafka = tk::kafka_config(&prefix, &group, 6);
    let book = tk::bookkeeping(&tgt, &topic).await;
    assert_eq!(book.len(), 6, "all six partitions applied: {book:?}");
    let counts = tk::count_messages(&kafka, &topic, &book);
    for (partition, (_, applied)) in &book {
        assert_eq!(
            counts.get(partition).copied().unwrap_or(0),
            *applied,
            "partition {partition}: events in the topic vs events applied"
        );
    }
}
