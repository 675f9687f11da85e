//! The TOML configuration shared by the producer and the consumer.
//!
//! Every option is documented in `config/example.toml`. Hosts and secrets can be overridden by
//! environment variables (see [`ENV_OVERRIDES`]), so that one file serves every environment.

mod kafka;
mod secrets;
mod table;
mod tls_params;
mod validate;

pub use kafka::{KafkaConfig, SaslMechanism, SecurityProtocol};
pub use secrets::Secret;
pub use table::{Capture, RuleConfig, SchemaChangePolicy, TableConfig};

use std::path::Path;

use serde::Deserialize;

/// A TOML error on one line: where (line and column, from 1) and what, without the drawing
/// of the line that toml's own message has.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Environment variables that override a setting of the file, and the setting they override.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("TUNNEL_SOURCE_URL", "source.url"),
    ("TUNNEL_TARGET_URL", "target.url"),
    ("TUNNEL_KAFKA_BROKERS", "kafka.brokers"),
    ("TUNNEL_REGISTRY_URL", "registry.url"),
    ("TUNNEL_ALERTS_WEBHOOK_URL", "alerts.webhook_url"),
    ("TUNNEL_SOURCE_PASSWORD", "source.password_file"),
    ("TUNNEL_TARGET_PASSWORD", "target.password_file"),
    ("TUNNEL_REGISTRY_PASSWORD", "registry.password_file"),
    ("TUNNEL_REGISTRY_TOKEN", "registry.token_file"),
    ("TUNNEL_KAFKA_PASSWORD", "kafka.sasl_password_file"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub target: TargetConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    #[serde(default)]
    pub producer: ProducerConfig,
    #[serde(default)]
    pub consumer: ConsumerConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The tables to replicate; at least one.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// At start-up, how long an endpoint (source, target, Kafka, registry) that has never
    /// answered is retried before the process exits with its error (0: no limit). Once the
    /// process has started, a lost connection is waited for as before.
    #[serde(default = "default_startup_timeout_s")]
    pub startup_timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user:password@host:port/database`; override: `TUNNEL_SOURCE_URL`.
    pub url: String,
    /// A file holding the password (the URL then has none); override:
    /// `TUNNEL_SOURCE_PASSWORD` (the password itself).
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// TLS, as libpq's parameters of the same names (which the URL may hold instead):
    /// `sslmode` (`disable`, `allow`, `prefer` (default), `require`, `verify-ca`,
    /// `verify-full`), `sslrootcert` (PEM CAs), `sslcert` and `sslkey` (a client certificate).
    #[serde(default)]
    pub sslmode: Option<String>,
    #[serde(default)]
    pub sslrootcert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub sslcert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub sslkey: Option<std::path::PathBuf>,
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// Longest a single statement may run on the source before PostgreSQL cancels it.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Longest a statement may wait for a lock on the source (a pending `ALTER TABLE` never
    /// queues behind us for longer than this).
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// The share of one source core the producer's passes of each table may take on average
    /// (their statements' time against wall time; see docs/design.md "What it costs the
    /// source"); 0 = no budget, passes run on their intervals alone.
    #[serde(default = "default_max_cpu_share")]
    pub max_cpu_share: f64,
    /// The schema `tunnel-producer install` creates on the source for the change tables and
    /// trigger functions of tables with `capture = "trigger"`.
    #[serde(default = "default_capture_schema")]
    pub capture_schema: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Override: `TUNNEL_TARGET_URL`.
    pub url: String,
    /// As `source.password_file`; override: `TUNNEL_TARGET_PASSWORD`.
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// As in `[source]`.
    #[serde(default)]
    pub sslmode: Option<String>,
    #[serde(default)]
    pub sslrootcert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub sslcert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub sslkey: Option<std::path::PathBuf>,
    /// Schema of the target database that holds the pipeline's bookkeeping (consumed offsets).
    #[serde(default = "default_bookkeeping_schema")]
    pub bookkeeping_schema: String,
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API; override: `TUNNEL_REGISTRY_URL`.
    pub url: String,
    /// Compatibility level set on every subject the producer registers.
    #[serde(default = "default_compatibility")]
    pub compatibility: String,
    /// HTTP basic authentication: the user; its password from `TUNNEL_REGISTRY_PASSWORD`
    /// (which wins), `password_file` or `password`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// A bearer token from `TUNNEL_REGISTRY_TOKEN` (which wins), this file or `token` (not
    /// with `username`).
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// A PEM file of the CA certificates an `https://` registry's certificate must chain to
    /// (besides the system's).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Never shown; the one from the environment or the file replaces it at load time.
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// Rows per snapshot chunk (one short read-only transaction each).
    pub snapshot_chunk_rows: i64,
    /// Rows per chunk of the streaming scans.
    pub scan_chunk_rows: i64,
    /// Ceiling on the rows read from the source per second, over all passes; 0 = no ceiling.
    pub max_rows_per_second: u64,
    /// How often new keys are looked for (`pk > max shipped key`).
    pub insert_interval_ms: u64,
    /// How often the watermark column is scanned for updates.
    pub update_interval_ms: u64,
    /// How far below the capture horizon's clock each update scan starts, against clock
    /// differences between sessions.
    pub watermark_overlap_ms: u64,
    /// Longest the capture horizon waits for transactions that were open on the source before
    /// moving on anyway (with a warning); see docs/design.md.
    pub horizon_max_wait_s: u64,
    /// Longest between two checkpoints when nothing changes.
    pub checkpoint_interval_ms: u64,
    /// How often shipped keys are compared with the source's to find hard deletes (single
    /// integer keys), while the table's delete counter moves.
    pub delete_interval_ms: u64,
    /// How often the source is compared with the target to find changes no watermark shows
    /// (silent updates, tables without a watermark column, deletes of other keys); 0 = never.
    pub reconcile_interval_ms: u64,
    /// How often a reconciliation pass compares the whole table although the rows written
    /// since the last pass would do; 0 = only when those cannot be used.
    pub reconcile_full_interval_ms: u64,
    /// How often repair requests (from `tunnel-consumer verify --repair`) are looked for.
    pub repair_interval_ms: u64,
    /// How often, while streaming, a heartbeat goes to every partition of the table's topic,
    /// so that the consumer's lag stays honest when the source is idle; 0 = never.
    pub heartbeat_interval_ms: u64,
    /// How often, while streaming, the set of keys shipped is saved to `<prefix>._keysets` (when
    /// it changed), so that a restart reads it back instead of the whole table topic; also
    /// saved when the snapshot is done and at a clean stop. 0 = never (a restart reads the
    /// whole topic).
    pub key_snapshot_interval_s: u64,
    /// Largest key set saved (serialized, MB); a larger one is not saved and a restart reads
    /// the whole topic.
    pub key_snapshot_max_mb: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Most events applied in one target transaction.
    pub batch_max_events: usize,
    /// Longest a batch waits to fill before it is applied.
    pub batch_max_wait_ms: u64,
}

/// What `/readyz` calls making progress.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A stage (a table's detector, a snapshot, the consumer's apply loop) that has not made
    /// progress for this long makes the process not ready. A detector that runs less often
    /// than this gets three of its intervals.
    pub ready_within_s: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { ready_within_s: 60 }
    }
}

/// The built-in notifier: the conditions of `deploy/prometheus/alerts.yml`, posted to a
/// webhook for those without Prometheus.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Where to post (Slack-compatible JSON `{"text": ...}`); none: no notifications.
    /// Override: `TUNNEL_ALERTS_WEBHOOK_URL` (it may hold a token: it is never logged).
    pub webhook_url: Option<String>,
    /// The consumer's lag above which `lag` fires.
    pub lag_above_s: u64,
    /// How often the conditions are looked at.
    pub check_interval_s: u64,
    /// A condition that stays firing is posted again after this long.
    pub repeat_after_s: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            lag_above_s: 300,
            check_interval_s: 15,
            repeat_after_s: 3_600,
        }
    }
}

impl std::fmt::Debug for AlertsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertsConfig")
            .field("webhook_url", &self.webhook_url.as_ref().map(|_| "<set>"))
            .field("lag_above_s", &self.lag_above_s)
            .field("check_interval_s", &self.check_interval_s)
            .field("repeat_after_s", &self.repeat_after_s)
            .finish()
    }
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            snapshot_chunk_rows: 10_000,
            scan_chunk_rows: 100_000,
            max_rows_per_second: 0,
            insert_interval_ms: 100,
            update_interval_ms: 250,
            watermark_overlap_ms: 1_000,
            horizon_max_wait_s: 600,
            checkpoint_interval_ms: 10_000,
            delete_interval_ms: 1_000,
            reconcile_interval_ms: 1_000,
            reconcile_full_interval_ms: 86_400_000,
            repair_interval_ms: 1_000,
            heartbeat_interval_ms: 10_000,
            key_snapshot_interval_s: 300,
            key_snapshot_max_mb: 256,
        }
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 10_000,
            batch_max_wait_ms: 50,
        }
    }
}

fn default_application_name() -> String {
    "data-tunnel".into()
}
fn default_statement_timeout_ms() -> u64 {
    30_000
}
fn default_lock_timeout_ms() -> u64 {
    1_000
}
fn default_max_cpu_share() -> f64 {
    0.05
}
fn default_startup_timeout_s() -> u64 {
    60
}
fn default_capture_schema() -> String {
    "data_tunnel".into()
}
fn default_bookkeeping_schema() -> String {
    "tunnel".into()
}
fn default_compatibility() -> String {
    "BACKWARD".into()
}

impl Config {
    /// Reads, parses, applies the environment overrides and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let env: Vec<(String, String)> = ENV_OVERRIDES
            .iter()
            .filter_map(|(var, _)| std::env::var(var).ok().map(|v| ((*var).to_string(), v)))
            .collect();
        Self::parse(&text, &shown, &env)
    }

    /// Parses config text; `env` holds the override variables that are set.
    pub fn parse(text: &str, path: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: toml_error(text, &e),
        })?;
        for (var, value) in env {
            match var.as_str() {
                "TUNNEL_SOURCE_URL" => config.source.url = value.clone(),
                "TUNNEL_TARGET_URL" => config.target.url = value.clone(),
                "TUNNEL_KAFKA_BROKERS" => config.kafka.brokers = value.clone(),
                "TUNNEL_REGISTRY_URL" => config.registry.url = value.clone(),
                "TUNNEL_ALERTS_WEBHOOK_URL" => config.alerts.webhook_url = Some(value.clone()),
                _ => {}
            }
        }
        let env_value = |name: &str| {
            env.iter()
                .find(|(var, _)| var == name)
                .map(|(_, v)| v.as_str())
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_string(),
            message,
        };
        let (s, t) = (&config.source, &config.target);
        let tls = [
            tls_params::TlsParams::of(&s.sslmode, &s.sslrootcert, &s.sslcert, &s.sslkey),
            tls_params::TlsParams::of(&t.sslmode, &t.sslrootcert, &t.sslcert, &t.sslkey),
        ];
        for ((setting, url), tls) in [
            ("source", &mut config.source.url),
            ("target", &mut config.target.url),
        ]
        .into_iter()
        .zip(tls)
        {
            *url = tls.applied_to(url, setting).map_err(invalid)?;
        }
        for (setting, var, url, file) in [
            (
                "source",
                "TUNNEL_SOURCE_PASSWORD",
                &mut config.source.url,
                &config.source.password_file,
            ),
            (
                "target",
                "TUNNEL_TARGET_PASSWORD",
                &mut config.target.url,
                &config.target.password_file,
            ),
        ] {
            let key = format!("{setting}.password_file");
            if let Some(pw) =
                secrets::password(&key, env_value(var), file.as_deref()).map_err(invalid)?
            {
                *url = secrets::with_password(url, &pw, setting).map_err(invalid)?;
            }
        }
        config
            .kafka
            .resolve_password(env_value("TUNNEL_KAFKA_PASSWORD"))
            .map_err(invalid)?;
        let r = &mut config.registry;
        for (key, var, file, value) in [
            (
                "password",
                "TUNNEL_REGISTRY_PASSWORD",
                &r.password_file,
                &mut r.password,
            ),
            (
                "token",
                "TUNNEL_REGISTRY_TOKEN",
                &r.token_file,
                &mut r.token,
            ),
        ] {
            if file.is_some() && value.is_some() {
                return Err(invalid(format!(
                    "registry: {key} and {key}_file are both set: keep one"
                )));
            }
            let setting = format!("registry.{key}_file");
            if let Some(s) =
                secrets::secret(&setting, env_value(var), file.as_deref()).map_err(invalid)?
            {
                *value = Some(s);
            }
        }
        match (&r.username, &r.password, &r.token) {
            (Some(_), _, Some(_)) => {
                return Err(invalid(
                    "registry: basic authentication (username) or a token, not both".into(),
                ))
            }
            (None, Some(_), _) => {
                return Err(invalid(
                    "registry: a password (password_file or TUNNEL_REGISTRY_PASSWORD) needs registry.username".into(),
                ))
            }
            _ => {}
        }
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// The topic of a table: `<prefix>.<schema>.<table>`.
    pub fn topic(&self, table: &TableConfig) -> String {
        format!(
            "{}.{}.{}",
            self.kafka.topic_prefix, table.schema, table.name
        )
    }

    /// The topic that carries repair requests to the producer.
    pub fn repair_topic(&self) -> String {
        format!("{}._repairs", self.kafka.topic_prefix)
    }

    /// The compacted topic that holds the producer's checkpoints.
    pub fn checkpoint_topic(&self) -> String {
        format!("{}._checkpoints", self.kafka.topic_prefix)
    }

    /// The compacted topic that holds the chunks of the producer's saved key sets.
    pub fn keysets_topic(&self) -> String {
        format!("{}._keysets", self.kafka.topic_prefix)
    }
}

/// A URL with its password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
