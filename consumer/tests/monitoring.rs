//! The alert rules of deploy/prometheus/alerts.yml in a real Prometheus (a private one, from
//! the stack's `TUNNEL_PROMETHEUS_BIN`) scraping a real producer and consumer every second:
//! the consumer stops, the lag alert goes to firing for the table; the consumer comes back, the
//! alert resolves and the replica is identical again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tunnel_shared::testkit::{self as tk, Databases, PrivatePrometheus, Proc};

const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY,
    s3_path varchar(1024),
    format varchar(5),
    type smallint,
    updated_at timestamp DEFAULT now())";

const LAG_ALERT: &str = "TunnelConsumerLagHigh";

/// The lag alert's threshold and `for:` as written in alerts.yml, and what this test puts
/// instead: a lag above 15 s for 5 s fires. alerts.yml writes each exactly once (its header
/// says so); [`lowered_rules`] fails when that stops being true.
const THRESHOLD: (&str, &str) = ("> 300", "> 15");
const FOR: (&str, &str) = ("for: 2m # lag-for", "for: 5s # lag-for");
const LOWERED_THRESHOLD_S: f64 = 15.0;

/// The lag per table as the alert computes it (its expression without the threshold).
const LAG: &str = "max by (table) (time() - max by (table, partition) (last_over_time(tunnel_consumer_last_applied_timestamp_seconds[1h])))";

const TIMEOUT: Duration = Duration::from_secs(120);

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// deploy/prometheus/alerts.yml with the lag alert's threshold and `for:` lowered by a plain
/// textual substitution of the two strings above.
fn lowered_rules() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/alerts.yml"
    );
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in [THRESHOLD, FOR] {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{path} must hold '{from}' exactly once (the lag alert's), for this test to lower it"
        );
        text = text.replacen(from, to, 1);
    }
    assert!(text.contains(THRESHOLD.1) && text.contains(FOR.1));
    text
}

/// A row inserted at the source every 500 ms until dropped.
struct Trickle {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<u32>>,
}

impl Trickle {
    fn start(dbs: &Databases) -> Trickle {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, url) = (stop.clone(), dbs.source_admin_url.clone());
        let task = tokio::spawn(async move {
            let src = tk::connect(&url).await;
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                src.execute(
                    "INSERT INTO media (s3_path, format, type) VALUES ('/trickle/' || $1::int, 'jpg', 1)",
                    &[&(n as i32)],
                )
                .await
                .unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            n
        });
        Trickle {
            stop,
            task: Some(task),
        }
    }

    async fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The lag alert of `table` in its current state, if active.
async fn lag_alert(prometheus: &PrivatePrometheus, table: &str) -> Option<String> {
    prometheus
        .alerts()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.name == LAG_ALERT && a.labels.get("table").map(String::as_str) == Some(table))
        .map(|a| a.state)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lag_alert_fires_while_the_consumer_is_down_and_resolves_when_it_is_back() {
    let dbs = Databases::create().await;
    dbs.source()
        .await
        .batch_execute(&format!(
            "{MEDIA}; INSERT INTO media (s3_path, format, type) SELECT '/seed/' || i, 'jpg', 1 FROM generate_series(1, 20) i"
        ))
        .await
        .unwrap();
    let config = tk::write_config(&dbs, &tk::unique("m"), &tk::unique("g"), &["media"], "");
    // a heartbeat a second: the lag is honest within seconds while the source is idle
    tk::add_producer_settings(&config, "heartbeat_interval_ms = 1000");
    let cfg = config.display().to_string();
    let producer_addr = format!("127.0.0.1:{}", tk::free_port());
    let consumer_addr = format!("127.0.0.1:{}", tk::free_port());
    let run = |addr: &str| -> Vec<String> {
        ["run", "--config", &cfg, "--metrics-addr", addr]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let (producer_args, consumer_args) = (run(&producer_addr), run(&consumer_addr));

    let rules = lowered_rules();
    let jobs = [
        ("tunnel-producer".to_string(), producer_addr.clone()),
        ("tunnel-consumer".to_string(), consumer_addr.clone()),
    ];
    let prometheus = tokio::task::spawn_blocking(move || {
        let jobs: Vec<(&str, &str)> = jobs.iter().map(|(j, a)| (j.as_str(), a.as_str())).collect();
        PrivatePrometheus::start(&jobs, &rules)
    })
    .await
    .unwrap();
    // the rule Prometheus loaded is the lowered one
    let rules = prometheus.get("/api/v1/rules").await.unwrap();
    let lag_rule = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .find(|r| r["name"] == LAG_ALERT)
        .unwrap_or_else(|| panic!("no {LAG_ALERT} among the loaded rules: {rules}"))
        .clone();
    assert_eq!(lag_rule["duration"].as_f64(), Some(5.0), "{lag_rule}");
    assert!(
        lag_rule["query"].as_str().unwrap().ends_with("> 15"),
        "{lag_rule}"
    );

    let producer = Proc::start_with("producer", &args(&producer_args), &config);
    let mut consumer = Proc::start_with("consumer", &args(&consumer_args), &config);
    let trickle = Trickle::start(&dbs);
    tk::wait_identical(&dbs, "media", TIMEOUT, &[&producer, &consumer]).await;

    // the table's label as the consumer reports it (schema-qualified or not)
    let table = tk::wait_for(
        "the consumer's lag series in Prometheus",
        TIMEOUT,
        || async {
            prometheus.query(LAG).await?.into_iter().find_map(|s| {
                let t = s.labels.get("table")?;
                (t == "media" || t.ends_with(".media")).then(|| t.clone())
            })
        },
    )
    .await;
    tk::wait_for("a low lag and both processes ready", TIMEOUT, || async {
        let lag = prometheus.query(LAG).await?;
        let low = lag
            .iter()
            .any(|s| s.labels.get("table") == Some(&table) && s.value < LOWERED_THRESHOLD_S / 2.0);
        let ready = prometheus.query("tunnel_ready == 1").await?;
        let jobs_ready = ["tunnel-producer", "tunnel-consumer"].iter().all(|j| {
            ready
                .iter()
                .any(|s| s.labels.get("job").map(String::as_str) == Some(j))
        });
        (low && jobs_ready).then_some(())
    })
    .await;
    assert_eq!(lag_alert(&prometheus, &table).await, None);

    // the consumer stops: its series vanish, the lag computed from the last values grows
    consumer.terminate(Duration::from_secs(30));
    let stopped = Instant::now();
    tk::wait_for("the consumer's target down", TIMEOUT, || async {
        let up = prometheus
            .query(r#"up{job="tunnel-consumer"} == 0"#)
            .await?;
        (!up.is_empty()).then_some(())
    })
    .await;
    tk::wait_for(
        &format!("{LAG_ALERT} firing for {table}"),
        TIMEOUT,
        || async {
            (lag_alert(&prometheus, &table).await.as_deref() == Some("firing")).then_some(())
        },
    )
    .await;
    println!(
        "{LAG_ALERT} firing for {table} {:.1} s after the consumer stopped",
        stopped.elapsed().as_secs_f64()
    );

    // the consumer comes back and catches up: the alert resolves
    let consumer = Proc::start_with("consumer", &args(&consumer_args), &config);
    let back = Instant::now();
    tk::wait_for(
        &format!("{LAG_ALERT} resolved for {table}"),
        TIMEOUT,
        || async {
            prometheus
                .alerts()
                .await
                .is_some_and(|a| {
                    !a.iter()
                        .any(|a| a.name == LAG_ALERT && a.labels.get("table") == Some(&table))
                })
                .then_some(())
        },
    )
    .await;
    println!(
        "{LAG_ALERT} resolved for {table} {:.1} s after the consumer started again",
        back.elapsed().as_secs_f64()
    );
    let inserted = trickle.stop().await;
    assert!(
        inserted > 10,
        "the trickle made too few inserts ({inserted})"
    );
    tk::wait_identical(&dbs, "media", TIMEOUT, &[&producer, &consumer]).await;
    let lag = prometheus.query(LAG).await.unwrap();
    assert!(
        lag.iter()
            .any(|s| s.labels.get("table") == Some(&table) && s.value < LOWERED_THRESHOLD_S),
        "{lag:?}\n{}",
        prometheus.log_text()
    );
}
