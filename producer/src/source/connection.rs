//! The source connection: a read-only session, and the table's catalog read at connect.

use std::time::Duration;

use tokio_postgres::Client;
use tunnel_shared::catalog::{self, TableInfo};
use tunnel_shared::config::{SourceConfig, TableConfig};
use tunnel_shared::pg::{self, quote_ident, Session};

use super::statements::{prepare, Statements};
use super::throttle::Throttle;
use crate::error::SourceError;

pub struct Source {
    pub(super) client: Client,
    pub(super) table: TableInfo,
    pub(super) statements: Statements,
    pub(super) throttle: Throttle,
    pub(super) read_rows: u64,
    /// The table's shape when its catalog was read ([`super::statements::columns_sql`]).
    pub(super) columns: Option<String>,
}

impl Source {
    /// Connects with a read-only session and reads the table's catalog.
    pub async fn connect(
        cfg: &SourceConfig,
        table: &TableConfig,
        max_rows_per_second: u64,
    ) -> Result<Self, SourceError> {
        let session = Session {
            application_name: cfg.application_name.clone(),
            statement_timeout: Duration::from_millis(cfg.statement_timeout_ms),
            lock_timeout: Duration::from_millis(cfg.lock_timeout_ms),
            read_only: true,
            canonical_text: false,
        };
        let client = pg::connect(&cfg.url, &session).await?;
        // read before the catalog: a change in between is then noticed at the first probe
        let columns: Option<String> = client
            .query_one(
                &format!("SELECT {}", super::statements::columns_sql("$1")),
                &[&pg::qualified(&table.schema, &table.name)],
            )
            .await
            .map_err(pg::PgError::query("reading the table's shape"))?
            .get(0);
        let info = catalog::load_table(
            &client,
            &table.schema,
            &table.name,
            table.watermark_column.as_deref(),
        )
        .await?;
        let statements = prepare(&client, &info).await?;
        Ok(Self {
            client,
            table: info,
            statements,
            throttle: Throttle::new(max_rows_per_second),
            read_rows: 0,
            columns,
        })
    }

    /// The connection, for the reconciliation pass's own queries.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The connection, for statements in a transaction of their own.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Whether the connection broke (the worker then reconnects).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub fn table(&self) -> &TableInfo {
        &self.table
    }

    /// Whether the table's shape in `activity` is another than the one this connection read
    /// its catalog with: a DDL (or the table dropped or renamed) since.
    pub fn shape_changed(&self, activity: &super::Activity) -> bool {
        activity.columns != self.columns
    }

    /// Whether `other` read the same shape of the table when it connected.
    pub fn same_shape(&self, other: &Source) -> bool {
        self.columns == other.columns
    }

    /// Rows read from the table since the start.
    pub fn read_rows(&self) -> u64 {
        self.read_rows
    }

    /// The single integer key column's quoted name.
    pub(super) fn integer_key(&self) -> Option<String> {
        self.table.integer_key().map(|c| quote_ident(&c.name))
    }
}
