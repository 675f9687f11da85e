//! The tables a `dlq` command works on, and its connection to the target (where replays are
//! recorded).

use std::time::Duration;

use tokio_postgres::Client;
use tunnel_shared::config::{Config, TableConfig};
use tunnel_shared::pg::{self, Session};

use crate::ddl;
use crate::error::DlqCliError;
use crate::model::dlq_topic;

pub(super) struct Scope<'a> {
    pub(super) config: &'a Config,
    pub(super) target: Client,
    pub(super) tables: Vec<ScopeTable<'a>>,
}

pub(super) struct ScopeTable<'a> {
    pub(super) table: &'a TableConfig,
    pub(super) source_topic: String,
    pub(super) dlq_topic: String,
}

impl<'a> Scope<'a> {
    pub(super) async fn open(
        config: &'a Config,
        table: Option<&str>,
    ) -> Result<Scope<'a>, DlqCliError> {
        let tables: Vec<ScopeTable<'a>> = config
            .tables
            .iter()
            .filter(|t| table.is_none_or(|n| n == t.qualified() || n == t.name))
            .map(|t| {
                let source_topic = config.topic(t);
                ScopeTable {
                    table: t,
                    dlq_topic: dlq_topic(&source_topic),
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

    pub(super) fn bk(&self) -> &str {
        &self.config.target.bookkeeping_schema
    }
}
