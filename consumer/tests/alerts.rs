//! The built-in notifier end to end: the real binaries with `[alerts] webhook_url` pointing at
//! a receiver in the test. The producer stops, so its heartbeats stop and the consumer's lag
//! grows: the consumer posts the lag alert firing, and resolved once the producer is back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::time::Duration;

use tunnel_shared::testkit::{self as tk, Databases, Proc, Webhook};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY,
    s3_path varchar(1024),
    format varchar(5),
    type smallint,
    updated_at timestamp DEFAULT now());
    INSERT INTO media (s3_path, format, type) SELECT '/seed/' || i, 'jpg', 1 FROM generate_series(1, 50) i";

const FIRING: &str = "[FIRING] data-tunnel consumer: lag of public.media is ";
const RESOLVED: &str = "[RESOLVED] data-tunnel consumer: lag of public.media is back under 5 s";

/// The consumer's lag lines among the posts from the `from`th on, in order (a post may hold
/// other lines).
fn lag_lines(hook: &Webhook, from: usize) -> Vec<String> {
    hook.received()
        .iter()
        .skip(from)
        .flat_map(|r| r.text.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.starts_with(FIRING) || l.starts_with(RESOLVED))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_posts_its_lag_firing_when_the_producer_stops_and_resolved_once_it_is_back() {
    let hook = Webhook::start().await;
    let dbs = Databases::create().await;
    dbs.source().await.batch_execute(MEDIA).await.unwrap();
    let prefix = tk::unique("it");
    let group = tk::unique("g");
    let alerts = format!(
        "[alerts]\nwebhook_url = \"{}\"\nlag_above_s = 5\ncheck_interval_s = 1\n",
        hook.url()
    );
    let config = tk::write_config(&dbs, &prefix, &group, &["media"], &alerts);
    // heartbeats keep the lag honest while the source is idle
    tk::add_producer_settings(&config, "heartbeat_interval_ms = 500");
    let mut producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    tk::wait_identical(
        &dbs,
        "media",
        Duration::from_secs(120),
        &[&producer, &consumer],
    )
    .await;

    // a lag at start (the consumer catching up) is over before the producer stops
    tk::wait_for(
        "no firing lag of the consumer before the producer stops",
        Duration::from_secs(30),
        || async {
            let lines = lag_lines(&hook, 0);
            lines
                .last()
                .is_none_or(|l| l.starts_with(RESOLVED))
                .then_some(())
        },
    )
    .await;
    let from = hook.received().len();
    assert!(producer.terminate(Duration::from_secs(30)).success());

    let (fired_at, fired) = hook
        .wait_post(
            "the consumer's lag firing",
            from,
            Duration::from_secs(120),
            |t| t.lines().any(|l| l.starts_with(FIRING)),
        )
        .await;
    assert_eq!(fired.method, "POST");
    assert_eq!(fired.path, "/hook");
    assert!(
        fired.content_type.starts_with("application/json"),
        "{fired:?}"
    );
    // Slack-compatible: one "text" field
    assert_eq!(
        fired
            .json
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["text".to_string()]),
        "{fired:?}"
    );
    let line = fired
        .text
        .lines()
        .find(|l| l.starts_with(FIRING))
        .unwrap()
        .to_string();
    assert!(line.ends_with(" s (above 5 s)"), "{line}");

    let stopped = producer;
    let producer = Proc::start("producer", &config);
    let (resolved_at, _) = hook
        .wait_post(
            "the consumer's lag resolved",
            fired_at + 1,
            Duration::from_secs(90),
            |t| t.lines().any(|l| l == RESOLVED),
        )
        .await;
    // since the producer stopped: firing once (no repeat within repeat_after_s), resolved once
    let lines = lag_lines(&hook, from);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with(FIRING) && lines[1] == RESOLVED,
        "{lines:#?}"
    );
    assert!(resolved_at > fired_at);

    // the pipeline goes on, and the URL was never logged
    dbs.source()
        .await
        .batch_execute("INSERT INTO media (s3_path, format, type) VALUES ('/after', 'jpg', 1)")
        .await
        .unwrap();
    tk::wait_identical(
        &dbs,
        "media",
        Duration::from_secs(120),
        &[&producer, &consumer],
    )
    .await;
    for p in [&stopped, &producer, &consumer] {
        assert!(!p.log_text().contains(&hook.url()), "{}", p.log_text());
    }
}
