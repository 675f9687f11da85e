//! `tunnel-producer check` and `tunnel-consumer check` against the real stack: all ✓ for a
//! config the run accepts, then one ✗ per way a first run goes wrong, each named with its fix
//! and a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::path::Path;

use tunnel_shared::testkit::{self as tk, Databases};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint,
    updated_at timestamp DEFAULT now())";

/// `tunnel-<what> check --config <config> [--json]` without the environment overrides.
fn check(what: &str, config: &Path, json: bool) -> (i32, String) {
    let extra: &[&str] = if json { &["--json"] } else { &[] };
    let (code, out, err) = tk::cli(&format!("tunnel-{what}"), &["check"], config, extra);
    (code, format!("{out}{err}"))
}

fn edit(config: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    std::fs::write(config, text.replace(from, to)).unwrap();
}

/// The line of a check, which must be marked `mark`.
fn line<'a>(out: &'a str, mark: &str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{mark} {check}")))
        .unwrap_or_else(|| panic!("no '{mark} {check}' line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_the_run_accepts_passes_every_check() {
    let dbs = Databases::create().await;
    dbs.source().await.batch_execute(MEDIA).await.unwrap();
    let config = tk::write_config(
        &dbs,
        &tk::unique("chk"),
        &tk::unique("g"),
        &["media"],
        "[[tables.rules]]\ncheck = \"type in (1, 2)\"\n",
    );
    let (code, out) = check("producer", &config, false);
    assert_eq!(code, 0, "{out}");
    for c in [
        "source:",
        "source session read-only",
        "table public.media: primary key (id), watermark updated_at",
        "pg_locks",
        "kafka:",
        "topic ",
        "kafka transactions",
        "schema registry",
    ] {
        line(&out, "✓", c);
    }
    assert!(out.contains("checks passed: the run can start"), "{out}");
    let (code, out) = check("consumer", &config, true);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(report["passed"], true, "{out}");
    let checks: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["check"].as_str().unwrap())
        .collect();
    for c in [
        "target",
        "target writable",
        "rules of public.media",
        "schema registry",
    ] {
        assert!(checks.contains(&c), "{checks:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_way_a_first_run_goes_wrong_is_named_with_its_fix() {
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(&format!(
        "{MEDIA}; CREATE TABLE nokey (a int, b text);
         CREATE SCHEMA hidden; CREATE TABLE hidden.secret (id int PRIMARY KEY)"
    ))
    .await
    .unwrap();
    // a table without a primary key, and one the reader cannot see
    let config = tk::write_config(
        &dbs,
        &tk::unique("chk"),
        &tk::unique("g"),
        &["media", "nokey"],
        "[[tables]]\nschema = \"hidden\"\nname = \"secret\"\n",
    );
    let (code, out) = check("producer", &config, false);
    assert_ne!(code, 0, "{out}");
    assert!(line(&out, "✗", "table public.nokey").contains("no primary key"));
    assert!(out.contains("add a primary key"), "{out}");
    let hidden = line(&out, "✗", "table hidden.secret");
    assert!(
        hidden.contains("cannot see it") || hidden.contains("cannot SELECT"),
        "{hidden}"
    );
    assert!(out.contains("GRANT USAGE ON SCHEMA"), "{out}");
    line(&out, "✓", "table public.media");
    assert!(
        out.contains("checks failed: the run would not start"),
        "{out}"
    );

    // a wrong password
    let config = tk::write_config(&dbs, &tk::unique("chk"), &tk::unique("g"), &["media"], "");
    let reader = dbs.source_reader_url.clone();
    let start = reader.find("tunnel_reader:").unwrap() + "tunnel_reader:".len();
    let end = start + reader[start..].find('@').unwrap();
    let wrong = format!("{}not-the-password{}", &reader[..start], &reader[end..]);
    edit(&config, &reader, &wrong);
    let (code, out) = check("producer", &config, false);
    assert_ne!(code, 0, "{out}");
    assert!(line(&out, "✗", "source").contains("password authentication failed"));
    assert!(
        !out.contains("not-the-password"),
        "a password was printed: {out}"
    );

    // an unreachable registry
    let config = tk::write_config(&dbs, &tk::unique("chk"), &tk::unique("g"), &["media"], "");
    tk::use_registry(
        &config,
        &format!("http://127.0.0.1:{}/apis/ccompat/v7", tk::free_port()),
    );
    for what in ["producer", "consumer"] {
        let (code, out) = check(what, &config, false);
        assert_ne!(code, 0, "{out}");
        assert!(line(&out, "✗", "schema registry").contains("cannot be reached"));
    }

    // a rule on a column the table does not have
    let config = tk::write_config(
        &dbs,
        &tk::unique("chk"),
        &tk::unique("g"),
        &["media"],
        "[[tables.rules]]\ncheck = \"salary > 10000\"\n",
    );
    let (code, out) = check("consumer", &config, false);
    assert_ne!(code, 0, "{out}");
    assert!(line(&out, "✗", "rules of public.media").contains("salary"));
}
