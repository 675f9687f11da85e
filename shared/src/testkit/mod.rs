//! Helpers for the integration tests of every crate (feature `testkit`): the stack's
//! connection settings, a fresh source and target database per test, unique topic prefixes and
//! groups, and a config file that points at them.

mod broker;
mod postgres;
mod process;
mod prometheus;
mod registry;
mod webhook;

pub use broker::PrivateBroker;
pub use postgres::PrivatePostgres;
pub use process::{bin, Proc};
pub use prometheus::{Alert, PrivatePrometheus, Sample};
pub use registry::PrivateRegistry;
pub use webhook::{Received, Webhook};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_postgres::{Client, NoTls};

/// A connection setting from `scripts/stack.sh env`, with the stack's default as fallback.
pub fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

pub fn source_admin_url() -> String {
    env_or(
        "TUNNEL_SOURCE_ADMIN_URL",
        "postgres://app:app@127.0.0.1:5433/source",
    )
}
pub fn source_reader_url() -> String {
    env_or(
        "TUNNEL_SOURCE_URL",
        "postgres://tunnel_reader:reader@127.0.0.1:5433/source",
    )
}
pub fn target_url() -> String {
    env_or(
        "TUNNEL_TARGET_URL",
        "postgres://tunnel_writer:writer@127.0.0.1:5434/target",
    )
}
pub fn brokers() -> String {
    env_or("TUNNEL_KAFKA_BROKERS", "127.0.0.1:9092")
}
pub fn registry_url() -> String {
    env_or(
        "TUNNEL_REGISTRY_URL",
        "http://127.0.0.1:8081/apis/ccompat/v7",
    )
}

/// A TCP port nothing listens on now (for a private server of a test, or a process's
/// `--metrics-addr`).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("bind a free port: {e}"));
    l.local_addr()
        .unwrap_or_else(|e| panic!("local addr: {e}"))
        .port()
}

/// A short random lowercase name with a prefix, e.g. `t_k3j9x2ab`.
pub fn unique(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let suffix: String = (0..8)
        .map(|_| {
            let n = rng.gen_range(0..36u8);
            (if n < 10 { b'0' + n } else { b'a' + n - 10 }) as char
        })
        .collect();
    format!("{prefix}_{suffix}")
}

/// Replaces the database of a `postgres://` URL.
pub fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => format!("{}/{db}", &url[..i]),
        _ => format!("{url}/{db}"),
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to {url} (is the stack up? scripts/stack.sh up): {e}")
        });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A pair of fresh databases, one on the source server and one on the target server.
pub struct Databases {
    pub name: String,
    /// The application's role on the source (may write).
    pub source_admin_url: String,
    /// The SELECT-only role on the source.
    pub source_reader_url: String,
    pub target_url: String,
}

impl Databases {
    /// Fresh databases on the stack's source and target servers.
    pub async fn create() -> Databases {
        Self::create_on(None, None).await
    }

    /// Fresh databases, the source's and the target's on private servers where given (for a
    /// test that stops one of them), else on the stack's.
    pub async fn create_on(
        source: Option<&PrivatePostgres>,
        target: Option<&PrivatePostgres>,
    ) -> Databases {
        let name = unique("t");
        let (admin_url, reader_url) = match source {
            Some(pg) => pg.source_urls(),
            None => (source_admin_url(), source_reader_url()),
        };
        let target_url = target.map_or_else(target_url, PrivatePostgres::target_url);
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create source database {name}: {e}"));
        let target = connect(&target_url).await;
        target
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create target database {name}: {e}"));
        Databases {
            source_admin_url: with_database(&admin_url, &name),
            source_reader_url: with_database(&reader_url, &name),
            target_url: with_database(&target_url, &name),
            name,
        }
    }

    pub async fn source(&self) -> Client {
        connect(&self.source_admin_url).await
    }
    pub async fn target(&self) -> Client {
        connect(&self.target_url).await
    }
}

/// Writes a config file for one test into a fresh temporary directory and returns its path.
/// `extra` is appended verbatim (e.g. `[producer]` settings or more `[[tables]]`).
pub fn write_config(
    dbs: &Databases,
    prefix: &str,
    group: &str,
    tables: &[&str],
    extra: &str,
) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("tunnel_cfg"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let mut text = format!(
        r#"[source]
url = "{src}"
# no budget: passes on their (fast) intervals, as the tests' timings expect; tests run many
# debug-build pipelines at once on a loaded machine, where a pass of a few rows takes hundreds
# of milliseconds, which a budget would space by seconds (consumer/tests/budget.rs tests it)
max_cpu_share = 0
[target]
url = "{tgt}"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
consumer_group = "{group}"
partitions = 3
[registry]
url = "{registry}"
[producer]
insert_interval_ms = 50
update_interval_ms = 100
checkpoint_interval_ms = 500
[consumer]
batch_max_wait_ms = 20
"#,
        src = dbs.source_reader_url,
        tgt = dbs.target_url,
        brokers = brokers(),
        registry = registry_url(),
    );
    for t in tables {
        text.push_str(&format!("[[tables]]\nname = \"{t}\"\n"));
    }
    text.push_str(extra);
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rows of a table as text, sorted; `None` while the table does not exist.
pub async fn try_table_text(client: &Client, table: &str) -> Option<Vec<String>> {
    let r = client
        .query(
            &format!("SELECT whole_row::text FROM {table} whole_row ORDER BY 1"),
            &[],
        )
        .await
        .ok()?;
    Some(r.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Adds settings to the `[producer]` section of a config written by [`write_config`].
pub fn add_producer_settings(config: &std::path::Path, settings: &str) {
    let text = std::fs::read_to_string(config)
        .unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
    let text = text.replacen("[producer]\n", &format!("[producer]\n{settings}\n"), 1);
    std::fs::write(config, text).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
}

/// Sets keys of the `[source]` section of a config written by [`write_config`] (`settings`:
/// `key = value` lines; a key already there is replaced).
pub fn add_source_settings(config: &std::path::Path, settings: &str) {
    let text = std::fs::read_to_string(config)
        .unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
    let keys: Vec<String> = settings
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| format!("{} =", k.trim())))
        .collect();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !keys.iter().any(|k| l.starts_with(k.as_str())))
        .collect();
    let text =
        (kept.join("\n") + "\n").replacen("[target]\n", &format!("{settings}\n[target]\n"), 1);
    std::fs::write(config, text).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
}

/// Points a config written by [`write_config`] at another registry (a [`PrivateRegistry`]).
pub fn use_registry(config: &std::path::Path, url: &str) {
    let text = std::fs::read_to_string(config)
        .unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
    let text = text.replacen(
        &format!("url = \"{}\"", registry_url()),
        &format!("url = \"{url}\""),
        1,
    );
    std::fs::write(config, text).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
}

/// Points a config written by [`write_config`] at other brokers (a [`PrivateBroker`]).
pub fn use_brokers(config: &std::path::Path, brokers: &str) {
    let text = std::fs::read_to_string(config)
        .unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
    let text = text.replacen(
        &format!("brokers = \"{}\"", self::brokers()),
        &format!("brokers = \"{brokers}\""),
        1,
    );
    std::fs::write(config, text).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
}

/// Waits until `table` holds the same rows in the target as in the source, or panics after
/// `timeout` with both sides' sizes and the processes' logs.
pub async fn wait_identical(dbs: &Databases, table: &str, timeout: Duration, procs: &[&Proc]) {
    let deadline = Instant::now() + timeout;
    // connections made again after a failed read: the servers may be restarting
    let (mut src, mut tgt) = (None, None);
    loop {
        let a = read_reconnecting(&mut src, &dbs.source_admin_url, table).await;
        let b = read_reconnecting(&mut tgt, &dbs.target_url, table).await;
        if a.is_some() && a == b {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log_summary()).collect();
            let states: Vec<String> = procs.iter().map(|p| p.kernel_state()).collect();
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            panic!(
                "{table}: the target did not match the source within {timeout:?} (source {} rows, target {} rows)\n{}\nprocesses: {}\nlogs:\n{}",
                a.len(),
                b.len(),
                row_difference(&a, &b),
                states.join(", "),
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first rows only in the source and only in the target (as text), for a failure message.
fn row_difference(source: &[String], target: &[String]) -> String {
    let (a, b): (HashSet<&String>, HashSet<&String>) =
        (source.iter().collect(), target.iter().collect());
    let first = |rows: &[String], other: &HashSet<&String>| -> Vec<String> {
        rows.iter()
            .filter(|r| !other.contains(r))
            .take(5)
            .cloned()
            .collect()
    };
    format!(
        "only in the source: {:?}\nonly in the target: {:?}",
        first(source, &b),
        first(target, &a)
    )
}

/// [`try_table_text`] on `client`, connecting first when there is none; a failed read drops
/// the connection, so the next call makes a new one.
async fn read_reconnecting(
    client: &mut Option<Client>,
    url: &str,
    table: &str,
) -> Option<Vec<String>> {
    if client.is_none() {
        let (c, conn) = tokio_postgres::connect(url, NoTls).await.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *client = Some(c);
    }
    let text = try_table_text(client.as_ref()?, table).await;
    if text.is_none() {
        *client = None;
    }
    text
}

/// Runs `tunnel-consumer verify` on a config; its exit code and what it printed.
pub fn verify(config: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let (code, out, err) = consumer_cli(&["verify"], config, extra);
    (code, format!("{out}{err}"))
}

/// Runs `tunnel-consumer <command...> --config <config> <extra...>` without the environment
/// overrides; its exit code, standard output and standard error.
pub fn consumer_cli(
    command: &[&str],
    config: &std::path::Path,
    extra: &[&str],
) -> (i32, String, String) {
    cli("tunnel-consumer", command, config, extra)
}

/// Runs `<binary> <command...> --config <config> <extra...>` without the environment overrides
/// (and `TUNNEL_INSTALL_URL`); its exit code, standard output and standard error.
pub fn cli(
    binary: &str,
    command: &[&str],
    config: &std::path::Path,
    extra: &[&str],
) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(bin(binary));
    cmd.args(command)
        .args(["--config", &config.display().to_string()])
        .args(extra);
    for (var, _) in crate::config::ENV_OVERRIDES {
        cmd.env_remove(var);
    }
    cmd.env_remove("TUNNEL_INSTALL_URL");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {binary} {command:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The rows of a query as text, sorted, for comparing a source table with its replica.
pub async fn table_text(client: &Client, table: &str) -> Vec<String> {
    let rows = client
        .query(
            &format!("SELECT whole_row::text FROM {table} whole_row ORDER BY 1"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("read {table}: {e}"));
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

/// The Kafka settings of a test's config (`write_config`), for reading its topics directly.
pub fn kafka_config(prefix: &str, group: &str, partitions: i32) -> crate::config::KafkaConfig {
    crate::config::KafkaConfig {
        topic_prefix: prefix.to_string(),
        partitions,
        replication_factor: 1,
        consumer_group: group.to_string(),
        ..crate::config::KafkaConfig::new(&brokers())
    }
}

/// Per partition: (next offset, events applied) from the target's bookkeeping.
pub async fn bookkeeping(target: &Client, topic: &str) -> HashMap<i32, (i64, i64)> {
    target
        .query(
            "SELECT partition, next_offset, applied_events FROM tunnel.offsets WHERE topic = $1",
            &[&topic],
        )
        .await
        .unwrap_or_else(|e| panic!("read tunnel.offsets: {e}"))
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// Committed data messages (heartbeats left out) per partition below `upto[partition]`.
pub fn count_messages(
    kafka: &crate::config::KafkaConfig,
    topic: &str,
    upto: &HashMap<i32, (i64, i64)>,
) -> HashMap<i32, i64> {
    let mut cfg = crate::kafka::consumer_config(kafka, &unique("count"));
    cfg.set("enable.partition.eof", "true");
    let consumer: rdkafka::consumer::BaseConsumer =
        cfg.create().unwrap_or_else(|e| panic!("consumer: {e}"));
    use rdkafka::consumer::Consumer;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in upto.keys() {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    consumer
        .assign(&tpl)
        .unwrap_or_else(|e| panic!("assign: {e}"));
    let mut counts: HashMap<i32, i64> = HashMap::new();
    let mut ended = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ended < upto.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "counting messages timed out"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                use rdkafka::message::{Headers, Message};
                let heartbeat = m.headers().is_some_and(|h| {
                    crate::heartbeat::is_heartbeat(m.key(), h.iter().map(|header| header.key))
                });
                if !heartbeat && m.offset() < upto[&m.partition()].0 {
                    *counts.entry(m.partition()).or_default() += 1;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(KafkaError::Global(RDKafkaErrorCode::PartitionEOF))) => {}
            Some(Err(e)) => panic!("counting messages: {e}"),
            None => {}
        }
    }
    counts
}
