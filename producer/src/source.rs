//! Reading the source table: short statements on one connection, keyset-paginated, within a
//! rows-per-second ceiling. Never a write, never a transaction left open between statements.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row as PgRow, Statement};
use tunnel_shared::catalog::{self, CatalogError, ColumnKind, TableInfo};
use tunnel_shared::config::{SourceConfig, TableConfig};
use tunnel_shared::event::Row;
use tunnel_shared::fault::{Classify, ErrorClass};
use tunnel_shared::pg::{self, qualified, quote_ident, PgError, Session};
use tunnel_shared::pgbinary::{self, Raw, ValueError};

use crate::horizon::Probe;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("table {table}: {source}")]
    Value { table: String, source: ValueError },
}

impl Classify for SourceError {
    fn class(&self) -> ErrorClass {
        match self {
            SourceError::Pg(e) => e.class(),
            SourceError::Catalog(e) => e.class(),
            SourceError::Value { source, .. } => source.class(),
        }
    }
}

/// One row read from the source.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// The primary key in PostgreSQL's text form, for parameters and checkpoints.
    pub key_text: Vec<String>,
    pub key: Vec<Value>,
    pub row: Row,
    /// A hash of the row's bytes, to tell whether it changed since it was shipped.
    pub hash: u64,
    /// The watermark column's value, microseconds since 1970.
    pub watermark: Option<i64>,
}

/// Write activity on the table since the server started (or its statistics were reset), and
/// the server's WAL position, which moves on every commit before the statistics do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Activity {
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub wal: String,
}

struct Statements {
    first_chunk: Statement,
    next_chunk: Statement,
    key_at_offset_first: Statement,
    key_at_offset_next: Statement,
    max_key: Statement,
}

pub struct Source {
    client: Client,
    table: TableInfo,
    statements: Statements,
    throttle: Throttle,
    read_rows: u64,
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

    /// The single integer key column's quoted name.
    fn integer_key(&self) -> Option<String> {
        self.table.integer_key().map(|c| quote_ident(&c.name))
    }

    /// Per bucket of `width` key values in `[lo, hi]`: (bucket, count, sum, xor) of the keys,
    /// from the primary-key index alone.
    pub async fn key_buckets(
        &mut self,
        lo: i64,
        hi: i64,
        width: i64,
    ) -> Result<Vec<(i64, i64, i128, i64)>, SourceError> {
        let Some(k) = self.integer_key() else {
            return Ok(Vec::new());
        };
        let rows = self
            .index_only(
                &format!(
                    "SELECT (({k}::int8 - $1::int8) / $3::int8)::int8, count(*)::int8, sum({k}::int8)::text, bit_xor({k}::int8)
                       FROM {} WHERE {k} BETWEEN $1::int8 AND $2::int8 GROUP BY 1",
                    qualified(&self.table.schema, &self.table.name)
                ),
                &[&lo, &hi, &width],
                "aggregating keys",
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let sum: String = r.get(2);
                (r.get(0), r.get(1), sum.parse().unwrap_or(0), r.get(3))
            })
            .collect())
    }

    /// The keys in `[lo, hi]`, in order, from the primary-key index.
    pub async fn keys_between(&mut self, lo: i64, hi: i64) -> Result<Vec<i64>, SourceError> {
        let Some(k) = self.integer_key() else {
            return Ok(Vec::new());
        };
        let rows = self
            .index_only(
                &format!(
                    "SELECT {k}::int8 FROM {} WHERE {k} BETWEEN $1::int8 AND $2::int8 ORDER BY {k}",
                    qualified(&self.table.schema, &self.table.name)
                ),
                &[&lo, &hi],
                "listing keys",
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Runs one statement over the primary-key index alone: a full-range aggregate would
    /// otherwise be planned as a sequential read of the whole table. The settings hold for this
    /// one short read-only transaction only.
    async fn index_only(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<PgRow>, SourceError> {
        let tx = self
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(PgError::query(what))?;
        tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            .await
            .map_err(PgError::query(what))?;
        let rows = tx.query(sql, params).await.map_err(PgError::query(what))?;
        tx.commit().await.map_err(PgError::query(what))?;
        Ok(rows)
    }

    /// The rows with these keys (text form) that exist now.
    pub async fn rows_by_keys(
        &mut self,
        keys: &[Vec<String>],
    ) -> Result<Vec<SourceRow>, SourceError> {
        let mut out = Vec::new();
        let n = self.table.key.len();
        for chunk in keys.chunks(1000) {
            let columns: Vec<Vec<&str>> = (0..n)
                .map(|i| chunk.iter().map(|k| k[i].as_str()).collect())
                .collect();
            let params: Vec<&(dyn ToSql + Sync)> =
                columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            let clause = format!("WHERE {}", self.table.key_in_arrays());
            out.extend(self.select_rows(&clause, &params, "reading by key").await?);
        }
        Ok(out)
    }

    /// Whether the connection broke (the worker then reconnects).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The table's heap size in pages and the rows per page, when the server can scan page
    /// ranges (`ctid` range scans, PostgreSQL 14 and later); `None` otherwise.
    pub async fn heap_pages(&self) -> Result<Option<(i64, f64)>, SourceError> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT current_setting('server_version_num')::int >= 140000,
                            pg_relation_size('{t}'::regclass) / current_setting('block_size')::int8,
                            (SELECT CASE WHEN relpages > 0 THEN reltuples / relpages ELSE 0 END FROM pg_class WHERE oid = '{t}'::regclass)::float8",
                    t = qualified(&self.table.schema, &self.table.name)
                ),
                &[],
            )
            .await
            .map_err(PgError::query("reading the table's size"))?;
        let (supported, pages, per_page): (bool, i64, f64) = (row.get(0), row.get(1), row.get(2));
        Ok(supported.then_some((pages, per_page)))
    }

    /// Rows on heap pages `[from, to)` (`to = None`: to the end, pages added since included)
    /// whose watermark is at or above `since_micros`, read by a TID range scan.
    pub async fn rows_changed_in_pages(
        &mut self,
        from: i64,
        to: Option<i64>,
        since_micros: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let Some(wm) = self.table.watermark else {
            return Ok(Vec::new());
        };
        let wm_col = &self.table.columns[wm];
        let since = watermark_text(wm_col.kind, since_micros);
        let upper = match to {
            Some(p) => format!(" AND ctid < '({p},0)'::tid"),
            None => String::new(),
        };
        let clause = format!(
            "WHERE ctid >= '({from},0)'::tid{upper} AND {} >= (SELECT $1::text::{})",
            quote_ident(&wm_col.name),
            wm_col.type_name
        );
        self.select_rows(&clause, &[&since], "scanning for changes")
            .await
    }

    /// For a single integer primary key that is not too sparse: its lowest and highest value,
    /// so that scans can cut key ranges by value, without a query to find each range's end.
    /// `None` for other keys, sparse keys (under 5% of the span in use) or an empty table.
    pub async fn integer_key_span(&self) -> Result<Option<(i64, i64)>, SourceError> {
        let Some(name) = self.integer_key() else {
            return Ok(None);
        };
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT (SELECT min({name}) FROM {t})::int8, (SELECT max({name}) FROM {t})::int8,
                            (SELECT GREATEST(reltuples, 0)::int8 FROM pg_class WHERE oid = '{t}'::regclass)",
                    t = qualified(&self.table.schema, &self.table.name)
                ),
                &[],
            )
            .await
            .map_err(PgError::query("reading the key span"))?;
        let (min, max, estimate): (Option<i64>, Option<i64>, i64) =
            (row.get(0), row.get(1), row.get(2));
        Ok(match (min, max) {
            (Some(lo), Some(hi)) if (hi - lo) / 20 <= estimate.max(1000) => Some((lo, hi)),
            _ => None,
        })
    }

    /// The planner's estimate of the table's rows (`pg_class.reltuples`), for progress.
    pub async fn estimated_rows(&self) -> Result<i64, SourceError> {
        let row = self
            .client
            .query_one(
                "SELECT GREATEST(c.reltuples, 0)::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                &[&self.table.schema, &self.table.name],
            )
            .await
            .map_err(PgError::query("estimating the table's size"))?;
        Ok(row.get(0))
    }

    /// Up to `limit` rows with a key in `(after, upto]`, in key order.
    pub async fn rows_between(
        &mut self,
        after: Option<&[String]>,
        upto: &[String],
        limit: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        let mut conds = Vec::new();
        if let Some(k) = after {
            conds.push(format!(
                "{} > {}",
                self.table.key_tuple(),
                self.table.key_params(1)
            ));
            params.extend(k.iter().map(|s| s as &(dyn ToSql + Sync)));
        }
        conds.push(format!(
            "{} <= {}",
            self.table.key_tuple(),
            self.table.key_params(params.len() + 1)
        ));
        params.extend(upto.iter().map(|s| s as &(dyn ToSql + Sync)));
        params.push(&limit);
        let clause = format!(
            "WHERE {} ORDER BY {} LIMIT ${}",
            conds.join(" AND "),
            self.table.key_order(),
            params.len()
        );
        self.select_rows(&clause, &params, "reading by key range")
            .await
    }

    pub fn table(&self) -> &TableInfo {
        &self.table
    }

    /// Rows read from the table since the start.
    pub fn read_rows(&self) -> u64 {
        self.read_rows
    }

    pub async fn activity(&self) -> Result<Activity, SourceError> {
        let row = self
            .client
            .query_one(
                "SELECT COALESCE((SELECT n_tup_ins FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2), 0),
                        COALESCE((SELECT n_tup_upd FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2), 0),
                        COALESCE((SELECT n_tup_del FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2), 0),
                        (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text",
                &[&self.table.schema, &self.table.name],
            )
            .await
            .map_err(PgError::query("reading the table's activity"))?;
        Ok(Activity {
            inserted: row.get(0),
            updated: row.get(1),
            deleted: row.get(2),
            wal: row.get::<_, Option<String>>(3).unwrap_or_default(),
        })
    }

    /// The statement time and the transactions running on the server; see [`crate::horizon`].
    pub async fn probe(&self) -> Result<Probe, SourceError> {
        // a `timestamp without time zone` watermark is wall-clock time of the server's zone
        let clock = match self.table.watermark.map(|i| self.table.columns[i].kind) {
            Some(ColumnKind::TimestampTz) => "statement_timestamp()",
            _ => "statement_timestamp()::timestamp",
        };
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT (extract(epoch FROM {clock}) * 1000000)::int8,
                            ARRAY(SELECT virtualxid::text FROM pg_locks
                                   WHERE locktype = 'virtualxid' AND pid <> pg_backend_pid())"
                ),
                &[],
            )
            .await
            .map_err(PgError::query("probing running transactions"))?;
        let running: Vec<String> = row.get(1);
        Ok(Probe {
            at_micros: row.get(0),
            running: running.into_iter().collect(),
        })
    }

    /// The highest key visible now.
    pub async fn max_key(&self) -> Result<Option<Vec<String>>, SourceError> {
        let rows = self
            .client
            .query(&self.statements.max_key, &[])
            .await
            .map_err(PgError::query("reading the highest key"))?;
        Ok(rows.first().map(|r| key_text(r, 0, self.table.key.len())))
    }

    /// Runs `first` (no lower key) or `next` (keys above `after`, the key's parameters first),
    /// with `last` as the final parameter.
    async fn paginated(
        &self,
        first: &Statement,
        next: &Statement,
        after: Option<&[String]>,
        last: &i64,
    ) -> Result<Vec<PgRow>, tokio_postgres::Error> {
        match after {
            None => self.client.query(first, &[last]).await,
            Some(k) => {
                let mut params: Vec<&(dyn ToSql + Sync)> =
                    k.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
                params.push(last);
                self.client.query(next, &params).await
            }
        }
    }

    /// Up to `limit` rows with a key above `after` (all keys when `None`), in key order.
    pub async fn rows_after(
        &mut self,
        after: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let (first, next) = (&self.statements.first_chunk, &self.statements.next_chunk);
        let rows = self
            .paginated(first, next, after, &limit)
            .await
            .map_err(PgError::query(format!(
                "reading {} by key",
                self.table.qualified_name()
            )))?;
        self.decode_rows(&rows).await
    }

    /// The key `n` rows after `after`, or `None` when fewer rows remain: the upper end of a
    /// key range of about `n` rows, found on the primary-key index alone.
    pub async fn key_at_offset(
        &self,
        after: Option<&[String]>,
        n: i64,
    ) -> Result<Option<Vec<String>>, SourceError> {
        let offset = n - 1;
        let (first, next) = (
            &self.statements.key_at_offset_first,
            &self.statements.key_at_offset_next,
        );
        let rows = self
            .paginated(first, next, after, &offset)
            .await
            .map_err(PgError::query("finding a key range"))?;
        Ok(rows.first().map(|r| key_text(r, 0, self.table.key.len())))
    }

    /// Rows with a key in `(after, upto]` (open ends when `None`) whose watermark is at or above
    /// `since_micros`.
    pub async fn rows_changed_since(
        &mut self,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        since_micros: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let Some(wm) = self.table.watermark else {
            return Ok(Vec::new());
        };
        let wm_col = &self.table.columns[wm];
        let since_text = watermark_text(wm_col.kind, since_micros);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since_text];
        let mut conds = vec![format!(
            "{} >= (SELECT $1::text::{})",
            quote_ident(&wm_col.name),
            wm_col.type_name
        )];
        if let Some(k) = after {
            conds.push(format!(
                "{} > {}",
                self.table.key_tuple(),
                self.table.key_params(params.len() + 1)
            ));
            params.extend(k.iter().map(|s| s as &(dyn ToSql + Sync)));
        }
        if let Some(k) = upto {
            conds.push(format!(
                "{} <= {}",
                self.table.key_tuple(),
                self.table.key_params(params.len() + 1)
            ));
            params.extend(k.iter().map(|s| s as &(dyn ToSql + Sync)));
        }
        let clause = format!(
            "WHERE {} ORDER BY {}",
            conds.join(" AND "),
            self.table.key_order()
        );
        self.select_rows(&clause, &params, "scanning for changes")
            .await
    }

    /// Every column of the rows that `clause` (`WHERE ...`, `ORDER BY ...`) selects, decoded.
    async fn select_rows(
        &mut self,
        clause: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let sql = format!(
            "SELECT {}, {} FROM {} {clause}",
            self.table.select_list(),
            key_text_list(&self.table),
            qualified(&self.table.schema, &self.table.name)
        );
        let rows = self
            .client
            .query(&sql, params)
            .await
            .map_err(PgError::query(format!(
                "{what}: {}",
                self.table.qualified_name()
            )))?;
        self.decode_rows(&rows).await
    }

    async fn decode_rows(&mut self, rows: &[PgRow]) -> Result<Vec<SourceRow>, SourceError> {
        let n_cols = self.table.columns.len();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut values: Row = Vec::with_capacity(n_cols);
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for (i, col) in self.table.columns.iter().enumerate() {
                let raw: Raw = r.try_get(i).map_err(PgError::query("reading a column"))?;
                raw.0.hash(&mut hasher);
                values.push(match raw.0 {
                    None => None,
                    Some(bytes) => Some(pgbinary::decode(&col.name, col.kind, bytes).map_err(
                        |source| SourceError::Value {
                            table: self.table.qualified_name(),
                            source,
                        },
                    )?),
                });
            }
            let key = self
                .table
                .key
                .iter()
                .map(|&i| values[i].clone().unwrap_or(Value::Null))
                .collect();
            let watermark = self.table.watermark.and_then(|i| match &values[i] {
                Some(Value::LocalTimestampMicros(us)) | Some(Value::TimestampMicros(us)) => {
                    Some(*us)
                }
                _ => None,
            });
            out.push(SourceRow {
                key_text: key_text(r, n_cols, self.table.key.len()),
                key,
                row: values,
                hash: hasher.finish(),
                watermark,
            });
        }
        self.read_rows += rows.len() as u64;
        self.throttle.account(rows.len() as u64).await;
        Ok(out)
    }
}

/// A watermark bound in PostgreSQL's text form, for a `$n::text::<type>` parameter.
fn watermark_text(kind: ColumnKind, micros: i64) -> String {
    let v = match kind {
        ColumnKind::TimestampTz => Value::TimestampMicros(micros),
        _ => Value::LocalTimestampMicros(micros),
    };
    pgbinary::to_pg_text(&v, None)
        .ok()
        .flatten()
        .unwrap_or_else(|| "-infinity".into())
}

fn key_text(r: &PgRow, first: usize, n: usize) -> Vec<String> {
    (first..first + n).map(|i| r.get::<_, String>(i)).collect()
}

/// `"id"::text, ...`: the key columns in text form, appended to every row query.
fn key_text_list(t: &TableInfo) -> String {
    t.key_columns()
        .enumerate()
        .map(|(i, c)| format!("{}::text AS \"__tunnel_k{i}\"", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn prepare(client: &Client, t: &TableInfo) -> Result<Statements, SourceError> {
    let name = qualified(&t.schema, &t.name);
    let n_key = t.key.len();
    let rows = format!(
        "SELECT {}, {} FROM {name}",
        t.select_list(),
        key_text_list(t)
    );
    let keys = format!("SELECT {} FROM {name}", key_text_list(t));
    let after = format!("WHERE {} > {}", t.key_tuple(), t.key_params(1));
    let order = t.key_order();
    let prep = |sql: String| async move {
        client.prepare(&sql).await.map_err(PgError::query(format!(
            "preparing a query on {}",
            t.qualified_name()
        )))
    };
    Ok(Statements {
        first_chunk: prep(format!("{rows} ORDER BY {order} LIMIT $1")).await?,
        next_chunk: prep(format!(
            "{rows} {after} ORDER BY {order} LIMIT ${}",
            n_key + 1
        ))
        .await?,
        key_at_offset_first: prep(format!("{keys} ORDER BY {order} OFFSET $1 LIMIT 1")).await?,
        key_at_offset_next: prep(format!(
            "{keys} {after} ORDER BY {order} OFFSET ${} LIMIT 1",
            n_key + 1
        ))
        .await?,
        max_key: prep(format!(
            "{keys} ORDER BY {} LIMIT 1",
            t.key_columns()
                .map(|c| format!("{} DESC", quote_ident(&c.name)))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await?,
    })
}

/// Keeps the rows read per second under a ceiling by sleeping after a read that got ahead.
struct Throttle {
    per_second: u64,
    window_start: Instant,
    rows: u64,
}

impl Throttle {
    fn new(per_second: u64) -> Self {
        Self {
            per_second,
            window_start: Instant::now(),
            rows: 0,
        }
    }

    async fn account(&mut self, rows: u64) {
        if self.per_second == 0 {
            return;
        }
        if self.window_start.elapsed() > Duration::from_secs(10) {
            self.window_start = Instant::now();
            self.rows = 0;
        }
        self.rows += rows;
        let due = Duration::from_secs_f64(self.rows as f64 / self.per_second as f64);
        let elapsed = self.window_start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}
