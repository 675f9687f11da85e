//! Helpers for the integration tests of every crate (feature `testkit`): the stack's
//! connection settings, a fresh source and target database per test, unique topic prefixes and
//! groups, and a config file that points at them.

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
    pub async fn create() -> Databases {
        let name = unique("t");
        let admin = connect(&source_admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create source database {name}: {e}"));
        let target = connect(&target_url()).await;
        target
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create target database {name}: {e}"));
        Databases {
            source_admin_url: with_database(&source_admin_url(), &name),
            source_reader_url: with_database(&source_reader_url(), &name),
            target_url: with_database(&target_url(), &name),
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

/// The rows of a query as text, sorted, for comparing a source table with its replica.
pub async fn table_text(client: &Client, table: &str) -> Vec<String> {
    let rows = client
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
        .unwrap_or_else(|e| panic!("read {table}: {e}"));
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}
