//! The diff engine against real databases: a table and its copy on the two servers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::time::Duration;

use tunnel_shared::catalog;
use tunnel_shared::pg::{self, qualified, Session};
use tunnel_shared::reconcile::{self, DiffOptions, Side, Tick};
use tunnel_shared::testkit::Databases;

fn session() -> Session {
    Session {
        application_name: "reconcile-test".into(),
        statement_timeout: Duration::from_secs(30),
        lock_timeout: Duration::ZERO,
        read_only: false,
        canonical_text: true,
    }
}

async fn both(dbs: &Databases, sql: &str) {
    dbs.source().await.batch_execute(sql).await.unwrap();
    dbs.target().await.batch_execute(sql).await.unwrap();
}

async fn run_diff(dbs: &Databases, table: &str, opts: DiffOptions) -> reconcile::Differences {
    run_diff_reporting(dbs, table, opts).await.0
}

/// [`run_diff`], with the progress it reported.
async fn run_diff_reporting(
    dbs: &Databases,
    table: &str,
    opts: DiffOptions,
) -> (reconcile::Differences, Vec<Tick>) {
    let src = pg::connect(
        &dbs.source_reader_url,
        &Session {
            read_only: true,
            ..session()
        },
    )
    .await
    .unwrap();
    let tgt = pg::connect(&dbs.target_url, &session()).await.unwrap();
    let info = catalog::load_table(&src, "public", table, Some(""))
        .await
        .unwrap();
    let name = qualified("public", table);
    let mut ticks = Vec::new();
    let mut on_tick = |t: Tick| ticks.push(t);
    let d = reconcile::diff_reporting(
        &info,
        Side {
            client: &src,
            table: name.clone(),
        },
        Side {
            client: &tgt,
            table: name,
        },
        opts,
        Some(&mut on_tick),
    )
    .await
    .unwrap();
    (d, ticks)
}

fn keys(v: &[Vec<String>]) -> Vec<String> {
    v.iter().map(|k| k.join(",")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn integer_keys_every_kind_of_difference_is_found() {
    let dbs = Databases::create().await;
    both(
        &dbs,
        "CREATE TABLE media (id int PRIMARY KEY, s3_path varchar(1024), doc json, price numeric(8,2), at timestamptz, flag bool);
         INSERT INTO media SELECT i, '/p/' || i, ('{\"i\": ' || i || '}')::json, i / 7.0, '2021-01-01'::timestamptz + i * interval '1 minute', i % 2 = 0
           FROM generate_series(1, 20000) i;",
    )
    .await;
    let small = DiffOptions {
        fanout: 16,
        leaf_rows: 100,

        ..DiffOptions::default()
    };
    let clean = run_diff(&dbs, "media", small).await;
    assert!(clean.is_empty(), "{clean:?}");
    // unchanged: one aggregate per side, no listing
    assert_eq!(clean.queries, 2);
    dbs.source()
        .await
        .batch_execute(
            "DELETE FROM media WHERE id IN (17, 15000);
             INSERT INTO media VALUES (20001, '/new', NULL, NULL, NULL, NULL);
             UPDATE media SET s3_path = '/changed' WHERE id = 5;
             UPDATE media SET doc = NULL WHERE id = 9999;
             UPDATE media SET price = price + 0.01 WHERE id = 12345;",
        )
        .await
        .unwrap();
    // a swap of two rows' values in one column must not cancel out
    both(&dbs, "SELECT 1").await;
    dbs.target()
        .await
        .batch_execute("UPDATE media SET flag = NOT flag WHERE id IN (300, 301)")
        .await
        .unwrap();
    let d = run_diff(&dbs, "media", small).await;
    assert_eq!(keys(&d.extra), vec!["15000", "17"]);
    assert_eq!(keys(&d.missing), vec!["20001"]);
    assert_eq!(keys(&d.differing), vec!["12345", "300", "301", "5", "9999"]);
    assert!(
        d.rows_compared < 3 * 20_000 + 2_000,
        "bisection read too much: {}",
        d.rows_compared
    );
    // cut into top ranges first: the same differences, and progress up to the whole span
    let (cut, ticks) = run_diff_reporting(
        &dbs,
        "media",
        DiffOptions {
            top_ranges: 7,
            ..small
        },
    )
    .await;
    assert_eq!((&cut.missing, &cut.extra), (&d.missing, &d.extra));
    assert_eq!(cut.differing, d.differing);
    let settled: Vec<f64> = ticks.iter().filter_map(|t| t.settled).collect();
    assert!(settled.len() >= 7, "{ticks:?}");
    assert!(settled.windows(2).all(|w| w[0] <= w[1]), "{settled:?}");
    assert_eq!(settled.last().copied(), Some(1.0), "{settled:?}");
    // keys only: the keys on one side alone, never a differing row
    let k = run_diff(
        &dbs,
        "media",
        DiffOptions {
            keys_only: true,
            ..small
        },
    )
    .await;
    assert_eq!((&k.missing, &k.extra), (&d.missing, &d.extra));
    assert!(k.differing.is_empty(), "{k:?}");
    // the same keys on both sides: one aggregate per side settles it
    dbs.target()
        .await
        .batch_execute(
            "DELETE FROM media WHERE id IN (17, 15000);
             INSERT INTO media VALUES (20001, '/other', NULL, NULL, NULL, NULL);",
        )
        .await
        .unwrap();
    let k = run_diff(
        &dbs,
        "media",
        DiffOptions {
            keys_only: true,
            ..small
        },
    )
    .await;
    assert!(k.is_empty(), "{k:?}");
    assert_eq!(k.queries, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn composite_text_keys_are_compared_by_row_ranges() {
    let dbs = Databases::create().await;
    both(
        &dbs,
        "CREATE TABLE kv (region text, n int, v text, PRIMARY KEY (region, n));
         INSERT INTO kv SELECT r, i, 'v' || i FROM generate_series(1, 3000) i, unnest(ARRAY['eu', 'us', 'ap']) r;",
    )
    .await;
    let opts = DiffOptions {
        fanout: 16,
        leaf_rows: 500,

        ..DiffOptions::default()
    };
    assert!(run_diff(&dbs, "kv", opts).await.is_empty());
    dbs.source()
        .await
        .batch_execute("DELETE FROM kv WHERE region = 'us' AND n = 7; UPDATE kv SET v = 'x' WHERE region = 'eu' AND n = 2999; INSERT INTO kv VALUES ('zz', 1, 'z')")
        .await
        .unwrap();
    let d = run_diff(&dbs, "kv", opts).await;
    assert_eq!(keys(&d.extra), vec!["us,7"]);
    assert_eq!(keys(&d.differing), vec!["eu,2999"]);
    assert_eq!(keys(&d.missing), vec!["zz,1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_spanning_the_whole_bigint_range_are_compared() {
    let dbs = Databases::create().await;
    // 64-bit ids scattered over both signs (the same on both sides), and the two ends of bigint: `max - min` overflows int8
    both(
        &dbs,
        "CREATE TABLE ids (id int8 PRIMARY KEY, v text);
         INSERT INTO ids VALUES (-9223372036854775808, 'min'), (9223372036854775807, 'max');
         INSERT INTO ids SELECT hashint8extended(i, 42), 'v' || i
           FROM generate_series(1, 3000) i ON CONFLICT DO NOTHING;",
    )
    .await;
    let opts = DiffOptions {
        fanout: 16,
        leaf_rows: 100,

        ..DiffOptions::default()
    };
    assert!(run_diff(&dbs, "ids", opts).await.is_empty());
    dbs.source()
        .await
        .batch_execute(
            "UPDATE ids SET v = 'changed' WHERE id = 9223372036854775807;
             DELETE FROM ids WHERE id = -9223372036854775808;
             INSERT INTO ids VALUES (4611686018427387904, 'new')",
        )
        .await
        .unwrap();
    let d = run_diff(&dbs, "ids", opts).await;
    assert_eq!(keys(&d.extra), vec!["-9223372036854775808"]);
    assert_eq!(keys(&d.differing), vec!["9223372036854775807"]);
    assert_eq!(keys(&d.missing), vec!["4611686018427387904"]);
}
