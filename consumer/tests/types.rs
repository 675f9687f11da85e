//! Every PostgreSQL type a real schema holds, with the edge values of each, replicated exactly:
//! compared as text on both sides after the snapshot, after inserts and after updates that move
//! every value to another row. Values the Avro logical types cannot hold (a numeric's `NaN` and
//! infinities, the last years of `timestamp`, BC dates and timestamps) must neither stop the
//! table nor go to the dead-letter topic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::time::Duration;

use tunnel_shared::testkit::{self as tk, Databases, Proc};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Types and domains of the source only: the target holds them as text.
const SOURCE_TYPES: &str = "
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'with \"quote\"');
    CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
    CREATE TYPE pair AS (a int4, b text)";

const TABLE: &str = "CREATE TABLE all_types (
    id int8 PRIMARY KEY,
    i2 int2, i4 int4, i8 int8,
    n numeric, n12 numeric(12,3), n0 numeric(5,0), nneg numeric(3,5),
    f4 real, f8 double precision,
    ok boolean,
    d date, ts timestamp, ts0 timestamp(0), tstz timestamptz, tm time, tmtz timetz,
    span interval,
    t text, vc varchar(10), bp char(4), ch \"char\", nm name,
    raw bytea, u uuid, js json, jb jsonb,
    ia int4[], ta text[], na numeric[], tsa timestamp[], ba bool[][],
    ip inet, net cidr, mac macaddr, mac8 macaddr8,
    r4 int4range, r8 int8range, rn numrange, rts tsrange, rtz tstzrange, rd daterange,
    b bit(5), vb varbit,
    m money,
    feeling mood, pos positive, pr pair,
    pt point, bx box, tv tsvector, oi oid)";

/// Row 1: the largest values; row 2: the smallest; row 3: the special values; row 4: NULLs;
/// row 5: odd text and nesting; row 6: plain values.
const ROWS: &str = "INSERT INTO all_types VALUES
  (1, 32767, 2147483647, 9223372036854775807,
   '123456789012345678901234567890.123456789012345678901234567890', 999999999.999, 99999, 0.00999,
   3.4028235e38, 1.7976931348623157e308, true,
   '5874897-12-31', '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59',
   '294276-12-31 23:59:59.999999+00', '24:00:00', '24:00:00-15:59',
   '178000000 years 11 mons 30 days 2562047788:00:54.775807',
   repeat('x', 1000), 'abcdefghij', 'abcd', 'z', repeat('n', 63),
   '\\xffffffffffff', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '{\"b\":1,  \"a\" :[1,2]  , \"b\": 2}',
   '{\"b\": 1, \"a\": [1, 2.50]}',
   '{2147483647,-2147483648}', '{\"a,b\",\"\\\\\\\"\"}', '{1e100,-1e-100}',
   '{\"294276-12-31 23:59:59.999999\"}', '{{t,f},{f,t}}',
   '255.255.255.255/32', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128', 'ff:ff:ff:ff:ff:ff',
   'ff:ff:ff:ff:ff:ff:ff:ff',
   '[-2147483648,2147483647)', '[1,9223372036854775807)', '(-1e30,1e30]',
   '[\"2020-01-01 00:00:00\",infinity)', '(-infinity,\"2020-01-01 00:00:00+00\"]', '[2020-01-01,)',
   B'11111', B'1010101010101010101', '92233720368547758.07',
   'happy', 2147483647, '(2147483647,\"a \"\"b\"\" c\")',
   '(1e308,-1e308)', '((1,1),(0,0))', 'a:1A fat:2B,4C cat:5D', 4294967295),
  (2, -32768, -2147483648, -9223372036854775808,
   '-0.000000000000000000000000000000000000000000000000000000000000001', -999999999.999, -99999,
   -0.00999,
   -3.4028235e38, -1.7976931348623157e308, false,
   '4714-11-24 BC', '4714-11-24 00:00:00 BC', '4713-01-01 00:00:00 BC',
   '4714-11-24 00:00:00+00 BC', '00:00:00', '00:00:00+15:59',
   '-178000000 years -11 mons -30 days -2562047788:00:54.775807',
   '', '', '', '', '',
   '\\x', '00000000-0000-0000-0000-000000000000', '[]', '{}',
   '{}', '{}', '{}', '{}', '{}',
   '0.0.0.0/0', '::/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00',
   'empty', 'empty', 'empty', 'empty', 'empty', 'empty',
   B'00000', B'', '-92233720368547758.08',
   'sad', 1, '(,)',
   '(0,0)', '((0,0),(0,0))', '', 0),
  (3, 0, 0, 0,
   'NaN', 'NaN', 'NaN', 'NaN',
   'NaN', 'NaN', NULL,
   'infinity', 'infinity', '-infinity', '-infinity', '12:34:56.789012', '12:34:56.789012+05:30',
   '1 year -2 mons +3 days -04:05:06.789',
   E'\\x01\\x02\\x1f\\x7f tab\\there', 'é✓😀', 'e', E'\\\\', 'ünï',
   '\\x00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'null', 'null',
   '{{1,NULL},{NULL,4}}', '{NULL,\"NULL\",\"\"}', '{NaN,Infinity,-Infinity,NULL}',
   '{infinity,-infinity,\"4713-01-01 00:00:00 BC\"}', '{{NULL,NULL}}',
   '::1', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
   '(,)', '[0,1)', '(NaN,NaN]', '(,)', '(,)', '(,)',
   B'10101', B'1', '0',
   'with \"quote\"', 42, '(,\"\")',
   '(NaN,Infinity)', '((1,2),(3,4))', 'x', 1),
  (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL),
  (5, -1, -1, -1,
   'Infinity', '-0.001', 0, 0,
   '-0', '-0', true,
   '0001-01-01 BC', '0001-12-31 23:59:59.999999 BC', '0001-01-01 00:00:00', '1999-12-31 23:59:59.999999-08',
   '00:00:00.000001', '23:59:59.999999-00:30',
   '-1 days +1 microsecond',
   E'\\u00a0\\u2028\\u2029\\ufeff\\U0001f600\\U00020000\\U000e0001\\U000f0000\\U0010fffd', 'ア', 'ß', 'ÿ', 'ǅ',
   '\\x5c30', '01234567-89ab-cdef-0123-456789abcdef', '  {\"x\" : \"\\u00e9\\ud83d\\ude00\"}  ',
   '{\"x\": \"é\", \"deep\": {\"a\": [[[]]]}}',
   '{{{1}},{{2}}}', '{\"{}\",\" \",\"\\\\\\\\\"}', '{0.000000001}', '{\"2000-02-29 12:00:00\"}', '{{t}}',
   '192.168.1.1/24', '2001:db8::/32', '01:02:03:04:05:06', '01:02:03:04:05:06:07:08',
   '[1,2]', '(1,2)', '[1.5,1.5]', '[\"2000-01-01 00:00:00 BC\",\"2000-01-01 00:00:00\"]',
   '[\"2021-06-01 12:00:00+02\",\"2021-06-01 13:00:00+02\")', '[0001-01-01 BC,2000-01-01]',
   B'01010', B'0000000000', '-0.01',
   'ok', 7, '(-1,\"(x)\")',
   '(-0,0)', '((-1,-1),(1,1))', E'''a b'':1 \\\\:2', 7),
  (6, 1, 1, 1,
   '-Infinity', '1', 1, 0.00001,
   1.17549435e-38, 2.2250738585072014e-308, false,
   '2024-02-29', '2000-01-01 00:00:00', '1970-01-01 00:00:00', '2021-06-01 12:00:00+02',
   '23:59:59.999999', '23:59:59.999999+00',
   '0',
   'plain', 'plain', 'p', 'p', 'plain',
   '\\x01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '1', '1',
   '{1}', '{a}', '{1}', '{\"2021-01-01 00:00:00\"}', '{{f}}',
   '10.1.2.3', '10.1.0.0/16', '01:01:01:01:01:01', '01:01:01:01:01:01:01:01',
   '[1,3)', '[1,3)', '[1,3)', '[\"2021-01-01 00:00:00\",\"2021-01-02 00:00:00\")',
   '[\"2021-01-01 00:00:00+00\",\"2021-01-02 00:00:00+00\")', '[2021-01-01,2021-01-02)',
   B'00001', B'11', '1.00',
   'happy', 3, '(3,c)',
   '(1,2)', '((2,2),(1,1))', 'plain', 3)";

#[tokio::test(flavor = "multi_thread")]
async fn every_type_with_its_edge_values_replicates_exactly_as_text() {
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(&format!("{SOURCE_TYPES}; {TABLE}; {ROWS}"))
        .await
        .unwrap();
    let config = tk::write_config(
        &dbs,
        &tk::unique("types"),
        &tk::unique("g"),
        &["all_types"],
        "",
    );
    let producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    tk::wait_identical(&dbs, "all_types", TIMEOUT, &[&producer, &consumer]).await;

    // every column but the key
    let cols: String = src
        .query_one(
            "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
              WHERE attrelid = 'all_types'::regclass AND attnum > 1 AND NOT attisdropped",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let cols: Vec<&str> = cols.split(',').collect();
    assert!(cols.len() > 40, "{cols:?}");

    // inserts after the snapshot: every row again under another key
    src.batch_execute(&format!(
        "INSERT INTO all_types SELECT id + 100, {} FROM all_types",
        cols.join(", ")
    ))
    .await
    .unwrap();
    tk::wait_identical(&dbs, "all_types", TIMEOUT, &[&producer, &consumer]).await;

    // updates: every value moves to another row (the table has no watermark column, so these
    // are found by reconciliation), the NULLs and special values among them
    let set: Vec<String> = cols.iter().map(|c| format!("{c} = s.{c}")).collect();
    src.batch_execute(&format!(
        "UPDATE all_types t SET {} FROM all_types s WHERE s.id = (t.id % 6) + 1 + (t.id / 100) * 100",
        set.join(", ")
    ))
    .await
    .unwrap();
    tk::wait_identical(&dbs, "all_types", TIMEOUT, &[&producer, &consumer]).await;

    // the replica's columns have the source's types, except the source's own types (held as
    // text: the target has no such types)
    let shape = "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                   FROM pg_attribute WHERE attrelid = 'all_types'::regclass AND attnum > 0 AND NOT attisdropped";
    let a: String = src.query_one(shape, &[]).await.unwrap().get(0);
    let b: String = dbs
        .target()
        .await
        .query_one(shape, &[])
        .await
        .unwrap()
        .get(0);
    let a = a
        .replace("feeling mood", "feeling text")
        .replace("pos positive", "pos text")
        .replace("pr pair", "pr text");
    assert_eq!(a, b);

    // nothing was dead-lettered, and verify finds the tables identical
    let (code, out) = tk::verify(&config, &[]);
    assert_eq!(code, 0, "verify: {out}");
    let (code, out, err) = tk::consumer_cli(&["dlq", "list"], &config, &[]);
    assert_eq!(code, 0, "dlq list: {out}{err}");
    let pending = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum::<u64>();
    assert_eq!(pending, 0, "events went to the dead-letter topic:\n{out}");
    drop((producer, consumer));
}
