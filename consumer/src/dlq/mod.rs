//! The dead-letter queue: every message that cannot be applied goes, unchanged, to its topic's
//! `<topic>.dlq` with headers that say where it came from and why. Entries are written (and
//! acknowledged by Kafka) before the target transaction that moves the source offset past them
//! commits, so a crash in between can duplicate a DLQ entry but never lose one.
//!
//! What was replayed is recorded in the target (`<bookkeeping>.dlq_resolved`), in the same
//! transaction as the rows it applied: the DLQ topic itself is never rewritten.

mod inspect;
mod read;
mod replay;
pub mod select;
pub mod writer;

pub use inspect::{list, show, ShowOptions};
pub use replay::{replay, ReplayOptions};
pub use writer::DlqWriter;

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tunnel_shared::config::{Config, TableConfig};
use tunnel_shared::pg::{self, PgError, Session};
use tunnel_shared::registry::RegistryError;

use crate::apply::{ApplyError, KeyText};
use crate::ddl;

/// What the `dlq` commands can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DlqCliError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("reading the DLQ: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Dlq(#[from] writer::DlqError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("no table {0} in the config")]
    NoSuchTable(String),
    #[error("config: {0}")]
    Config(String),
}

/// The tables a `dlq` command works on, and a connection to the target (where replays are
/// recorded).
struct Scope<'a> {
    config: &'a Config,
    target: Client,
    tables: Vec<ScopeTable<'a>>,
}

struct ScopeTable<'a> {
    table: &'a TableConfig,
    source_topic: String,
    dlq_topic: String,
}

impl<'a> Scope<'a> {
    async fn open(config: &'a Config, table: Option<&str>) -> Result<Scope<'a>, DlqCliError> {
        let tables: Vec<ScopeTable<'a>> = config
            .tables
            .iter()
            .filter(|t| table.is_none_or(|n| n == t.qualified() || n == t.name))
            .map(|t| {
                let source_topic = config.topic(t);
                ScopeTable {
                    table: t,
                    dlq_topic: topic_of(&source_topic),
                    source_topic,
                }
            })
            .collect();
        if tables.is_empty() {
            return Err(DlqCliError::NoSuchTable(table.unwrap_or_default().into()));
        }
        let session = Session {
            application_name: "data-tunnel-dlq".into(),
            statement_timeout: Duration::from_millis(config.target.statement_timeout_ms),
            lock_timeout: Duration::ZERO,
            read_only: false,
            canonical_text: false,
        };
        let mut target = pg::connect(&config.target.url, &session).await?;
        ddl::ensure_bookkeeping(&mut target, &config.target.bookkeeping_schema).await?;
        Ok(Scope {
            config,
            target,
            tables,
        })
    }

    fn bk(&self) -> &str {
        &self.config.target.bookkeeping_schema
    }
}

/// Header names of a DLQ entry.
pub mod header {
    pub const SOURCE_TOPIC: &str = "tunnel.source.topic";
    pub const SOURCE_PARTITION: &str = "tunnel.source.partition";
    pub const SOURCE_OFFSET: &str = "tunnel.source.offset";
    pub const CLASS: &str = "tunnel.error.class";
    pub const REASON: &str = "tunnel.error.reason";
    pub const RULE: &str = "tunnel.error.rule";
    /// The decoded key as a JSON array of its columns' text values, when it could be decoded.
    pub const KEY: &str = "tunnel.key";
    pub const CONSUMER_VERSION: &str = "tunnel.consumer.version";
    pub const TIMESTAMP: &str = "tunnel.timestamp";
    /// On an entry that failed again in a replay: the entry it replaces (`topic/partition/offset`).
    pub const REPLAY_OF: &str = "tunnel.replay.of";
}

/// Why a message went to the DLQ.
pub mod class {
    /// Not in the Confluent wire format, truncated, or without a key.
    pub const WIRE_FORMAT: &str = "wire_format";
    pub const UNKNOWN_SCHEMA: &str = "unknown_schema";
    pub const AVRO_DECODE: &str = "avro_decode";
    /// Avro that decodes but is not a change event of this pipeline.
    pub const NOT_AN_EVENT: &str = "not_an_event";
    pub const RULE: &str = "rule";
    /// The target refused the row (constraint, overflow, value too long...).
    pub const TARGET_REJECTED: &str = "target_rejected";
    /// A later event of a key that has an earlier event in the DLQ (see docs/operations.md).
    pub const PARKED: &str = "parked";
}

/// The DLQ topic of a table's topic.
pub fn topic_of(source_topic: &str) -> String {
    format!("{source_topic}.dlq")
}

/// A message on its way to the DLQ.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key_bytes: Option<Vec<u8>>,
    pub value_bytes: Option<Vec<u8>>,
    /// The decoded key, when it could be decoded: the key is then parked.
    pub key: Option<KeyText>,
    pub class: &'static str,
    pub reason: String,
    pub rule: Option<String>,
    /// Set when a replay sends an entry back: the DLQ entry it replaces.
    pub replay_of: Option<String>,
}
