//! End-to-end tests of `tunnel-consumer verify --incremental`: the rows written since the last
//! verify that found the table identical, on both sides, and the keys of both sides.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::path::Path;
use std::time::Duration;

use tunnel_shared::testkit::{self as tk, Databases, Proc};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint,
    updated_at timestamp DEFAULT now())";

/// Runs `verify <args>` until it exits 0, or panics with its last report; its last output.
async fn wait_verified(config: &Path, args: &[&str], timeout: Duration, procs: &[&Proc]) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (code, out) = tk::verify(config, args);
        if code == 0 {
            return out;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
            panic!(
                "verify {args:?} never came clean within {timeout:?}; last report (exit {code}):\n{out}\nlogs:\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn incremental_verify_finds_changes_on_both_sides_and_repair_fixes_them() {
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(MEDIA).await.unwrap();
    let config = tk::write_config(&dbs, &tk::unique("ver"), &tk::unique("g"), &["media"], "");
    // reconciliation off: only a repair can fix what changed behind the pipeline
    tk::add_producer_settings(
        &config,
        "reconcile_interval_ms = 0\nrepair_interval_ms = 200",
    );
    // old timestamps: a restarted producer's watermark scan does not read these rows again
    src.batch_execute(
        "INSERT INTO media (s3_path, format, type, updated_at)
           SELECT '/p/' || i, 'jpg', 1, '2020-01-01'::timestamp + i * interval '1 second' FROM generate_series(1, 500) i",
    )
    .await
    .unwrap();
    let mut producer = Proc::start("producer", &config);
    let mut consumer = Proc::start("consumer", &config);
    // nothing recorded yet: the first clean incremental verify compared the whole table
    let out = wait_verified(
        &config,
        &["--incremental"],
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
    assert!(
        out.contains("public.media: comparing the whole table: no verify that found the table identical is recorded"),
        "{out}"
    );
    assert!(out.contains("public.media: identical ("), "{out}");
    assert!(!out.contains("incremental:"), "{out}");
    // and it recorded its horizons: the next one is incremental
    let (code, out) = tk::verify(&config, &["--incremental"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("public.media: identical (incremental: "),
        "{out}"
    );

    assert!(consumer.terminate(Duration::from_secs(30)).success());
    assert!(producer.terminate(Duration::from_secs(30)).success());
    // behind the pipeline in the target, and in the source while nothing is applied
    let tgt = dbs.target().await;
    tgt.batch_execute(
        "UPDATE media SET s3_path = '/target' WHERE id = 10;
         DELETE FROM media WHERE id = 20;
         INSERT INTO media (id, s3_path) VALUES (9001, '/only-in-target')",
    )
    .await
    .unwrap();
    src.batch_execute(
        "UPDATE media SET s3_path = '/silent' WHERE id = 30;
         DELETE FROM media WHERE id = 40;
         INSERT INTO media (id, s3_path) VALUES (9002, '/new')",
    )
    .await
    .unwrap();
    let (code, out) = tk::verify(&config, &["--incremental"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("6 difference(s): 2 missing from the target, 2 extra in the target, 2 differing (incremental: "),
        "{out}"
    );
    assert!(out.contains("missing: (20) (9002)"), "{out}");
    assert!(out.contains("extra: (40) (9001)"), "{out}");
    assert!(out.contains("differing: (10) (30)"), "{out}");
    // the whole table finds the same
    let (code, full) = tk::verify(&config, &[]);
    assert_eq!(code, 1, "{full}");
    for line in [
        "missing: (20) (9002)",
        "extra: (40) (9001)",
        "differing: (10) (30)",
    ] {
        assert!(full.contains(line), "{full}");
    }
    // a verify that found differences records nothing: the next one lists the same rows
    let (code, out) = tk::verify(&config, &["--incremental", "--repair"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("differing: (10) (30)"), "{out}");
    assert!(
        out.contains("asked the producer to ship 6 key(s) again"),
        "{out}"
    );

    let producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    let out = wait_verified(
        &config,
        &["--incremental"],
        Duration::from_secs(60),
        &[&producer, &consumer],
    )
    .await;
    assert!(
        out.contains("public.media: identical (incremental: "),
        "{out}"
    );
    assert!(
        producer.log_text().contains("repair requested"),
        "{}",
        producer.log_text()
    );
    let (code, out) = tk::verify(&config, &[]);
    assert_eq!(code, 0, "{out}");
}
