//! The consumer's `COPY` of snapshot reads and inserts: binary for a table whose every column has
//! a binary form, written straight from the Avro datums, text for a table with a column that
//! has none. Both replicas must equal their source exactly: extreme values, NULLs, the
//! infinities, negative numerics, time zones; and an update after the sync (rendered as text
//! from the same datums) too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::time::Duration;

use tunnel_shared::testkit::{self as tk, Databases, Proc};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Every type binary `COPY` writes.
const EVERY_TYPE: &str = "CREATE TABLE every_type (
    id int8 PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, f4 real, f8 double precision, ok boolean,
    t text, vc varchar(20), bp char(3), nm name,
    d date, ts timestamp, ts3 timestamp(3), tstz timestamptz, tm time,
    num numeric(12,3), big numeric(38,0), raw bytea, u uuid, js json, jb jsonb,
    updated_at timestamp DEFAULT now())";

const EVERY_TYPE_ROWS: &str = "INSERT INTO every_type VALUES
  (1, 32767, 2147483647, 9223372036854775807, 3.4028235e38, 1.7976931348623157e308, true,
   E'tab\\there\\nnewline \\\\ backslash, é ✓', 'naïve \"quoted\"', 'ab', repeat('n', 63),
   '9999-12-31', '9999-12-31 23:59:59.999999', '2021-01-01 00:10:00.123', '2021-06-01 12:00:00+02',
   '24:00:00', 999999999.999, 99999999999999999999999999999999999999, '\\x00ff10',
   'ffffffff-ffff-ffff-ffff-ffffffffffff', '{\"x\" : 1}', '{\"a\": [1, 2, {\"b\": null}]}', DEFAULT),
  (2, -32768, -2147483648, -9223372036854775808, -3.4028235e38, -1.7976931348623157e308, false,
   '', '', '   ', '', '0001-01-01', '0001-01-01 00:00:00', '1970-01-01 00:00:00',
   '1970-01-01 00:00:00+00', '00:00:00', -999999999.999, -99999999999999999999999999999999999999,
   '\\x', '00000000-0000-0000-0000-000000000000', '[]', '[]', DEFAULT),
  (3, 0, 0, 0, 'NaN', 'Infinity', NULL, 'x', 'x', 'x', 'x', 'infinity', '-infinity', 'infinity',
   '-infinity', '12:34:56.789012', -0.001, 0, '\\xdeadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
   'null', 'null', DEFAULT),
  (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, DEFAULT),
  (5, -1, -1, -1, '-0', '-Infinity', true, 'y', 'y', 'y', 'y', '-infinity', 'infinity',
   '-infinity', 'infinity', '00:00:00.000001', -12.3, -1, '\\x00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
   '\"s\"', '{\"b\": 1, \"a\": 2}', DEFAULT),
  (6, 1, 1, 1, 1.17549435e-38, 2.2250738585072014e-308, false, 'z', 'z', 'z', 'z', '1999-12-31',
   '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00.001', '1999-12-31 23:59:59.999999-08',
   '23:59:59.999999', 0.5, 10000, '\\xff', '01234567-89ab-cdef-0123-456789abcdef', '1', '1', DEFAULT)";

/// A table with a column binary `COPY` has no form for (`interval`): copied as text.
const MIXED: &str =
    "CREATE TABLE mixed (id int4 PRIMARY KEY, span interval, d date, n numeric(6,2),
        updated_at timestamp DEFAULT now());
    INSERT INTO mixed VALUES (1, '1 day', 'infinity', -1.5), (2, NULL, '2024-02-29', NULL)";

/// The consumer's log lines that say it copied rows into `table`.
fn copy_lines(log: &str, table: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("copied rows") && l.contains(table))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn supported_types_copy_in_binary_and_others_in_text_and_both_replicate_exactly() {
    // the copy's format is logged at debug; this is the only test of this binary
    std::env::set_var("TUNNEL_TEST_LOG", "info,tunnel_consumer::rows::copy=debug");
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(&format!("{EVERY_TYPE}; {EVERY_TYPE_ROWS}; {MIXED}"))
        .await
        .unwrap();
    let config = tk::write_config(
        &dbs,
        &tk::unique("copy"),
        &tk::unique("g"),
        &["every_type", "mixed"],
        "",
    );
    let producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    tk::wait_identical(&dbs, "every_type", TIMEOUT, &[&producer, &consumer]).await;
    tk::wait_identical(&dbs, "mixed", TIMEOUT, &[&producer, &consumer]).await;

    let log = consumer.log_text();
    let binary = copy_lines(&log, "every_type");
    assert!(!binary.is_empty(), "no copy into every_type logged:\n{log}");
    assert!(
        binary.iter().all(|l| l.contains("binary")),
        "every_type was not copied in binary: {binary:#?}"
    );
    let text = copy_lines(&log, "mixed");
    assert!(!text.is_empty(), "no copy into mixed logged:\n{log}");
    assert!(
        text.iter().all(|l| l.contains("text")),
        "mixed was not copied as text: {text:#?}"
    );

    // inserts after the snapshot, and updates: the upsert renders the same datums as text
    src.batch_execute(
        "INSERT INTO every_type SELECT id + 100, i2, i4, i8, f4, f8, ok, t, vc, bp, nm, d, ts, ts3,
                tstz, tm, num, big, raw, u, js, jb FROM every_type;
         UPDATE every_type SET num = -num, tstz = '2020-02-02 02:02:02.5+05:30', d = '-infinity',
                updated_at = now() WHERE id IN (1, 2, 4);
         UPDATE mixed SET span = '2 hours', n = -0.01, updated_at = now() WHERE id = 2",
    )
    .await
    .unwrap();
    tk::wait_identical(&dbs, "every_type", TIMEOUT, &[&producer, &consumer]).await;
    tk::wait_identical(&dbs, "mixed", TIMEOUT, &[&producer, &consumer]).await;
    let (code, out) = tk::verify(&config, &[]);
    assert_eq!(code, 0, "verify: {out}");
    drop((producer, consumer));
}
