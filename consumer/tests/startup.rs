//! Start-up against an endpoint that never answers (a mistyped port on a first run): the
//! process gives up after `startup_timeout_s`, exits non-zero and names the endpoint. (A
//! database lost after a successful start is still waited for: consumer/tests/faults.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::time::{Duration, Instant};

use tunnel_shared::testkit::{self as tk, Databases, Proc};

/// The config with `startup_timeout_s = 3` and `url`'s port changed to one nothing listens on;
/// that port.
fn with_a_dead_port(config: &std::path::Path, url: &str) -> u16 {
    let port = tk::free_port();
    let (before, after) = url.split_once("@127.0.0.1:").unwrap();
    let rest = &after[after.find('/').unwrap()..];
    let dead = format!("{before}@127.0.0.1:{port}{rest}");
    let text = std::fs::read_to_string(config).unwrap().replace(url, &dead);
    std::fs::write(config, format!("startup_timeout_s = 3\n{text}")).unwrap();
    port
}

fn gives_up_naming(what: &str, config: &std::path::Path, port: u16) {
    let started = Instant::now();
    let mut p = Proc::start(what, config);
    let status = p.wait_exit(Duration::from_secs(60));
    let took = started.elapsed();
    let log = p.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        took < Duration::from_secs(30),
        "gave up after {took:?}:\n{log}"
    );
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "the endpoint is not named:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_or_target_that_never_answers_ends_the_start_up_naming_it() {
    let dbs = Databases::create().await;
    dbs.source()
        .await
        .batch_execute("CREATE TABLE media (id serial PRIMARY KEY, s3_path text)")
        .await
        .unwrap();
    let config = tk::write_config(&dbs, &tk::unique("up"), &tk::unique("g"), &["media"], "");
    let port = with_a_dead_port(&config, &dbs.source_reader_url);
    gives_up_naming("producer", &config, port);
    let config = tk::write_config(&dbs, &tk::unique("up"), &tk::unique("g"), &["media"], "");
    let port = with_a_dead_port(&config, &dbs.target_url);
    gives_up_naming("consumer", &config, port);
}
