//! The trigger capture detector: reads the table's change table in commit-safe batches (see
//! the module above), ships the rows of the keys the batch names as they are now (a delete for
//! a key that is gone), and trims the changes of batches already shipped.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tracing::{debug, info};
use tunnel_shared::catalog::TableInfo;
use tunnel_shared::event::Detection;
use tunnel_shared::metrics::TableLabels;
use tunnel_shared::pg::PgError;

use super::names::Objects;
use crate::capture::{ChangeDetector, Found, GoneKey, PassContext};
use crate::checkpoint::TriggerPosition;
use crate::error::SourceError;
use crate::source::{Activity, Source};

/// How often the triggers are checked to be installed and enabled ALWAYS.
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// Most change rows trimmed by one statement.
const TRIM_ROWS: i64 = 10_000;

pub struct TriggerScan {
    interval: Duration,
    /// Most change rows read by one pass; a batch with more is read over several passes.
    batch_rows: i64,
    objects: Objects,
    /// When the installation was last found in place.
    checked_at: Option<Instant>,
    /// The consumed snapshot the change table was last trimmed to, and whether more is left.
    trimmed: Option<String>,
    trim_more: bool,
    /// Whether the last pass left part of its batch for the next.
    batch_open: bool,
    /// Whether the last pass read changes, and, once it was shipped, that they are to be
    /// trimmed: the next pass runs for that even when nothing else was written.
    read_changes: bool,
    trim_pending: bool,
}

impl TriggerScan {
    pub fn new(interval: Duration, batch_rows: i64, objects: Objects) -> Self {
        Self {
            interval,
            batch_rows: batch_rows.max(1),
            objects,
            checked_at: None,
            trimmed: None,
            trim_more: false,
            batch_open: false,
            read_changes: false,
            trim_pending: false,
        }
    }

    /// Fails, naming what to do, unless the change table exists and both triggers are enabled
    /// ALWAYS (so that writes under `session_replication_role = replica` are recorded too).
    async fn check_installed(&mut self, source: &Source) -> Result<(), SourceError> {
        if self.checked_at.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return Ok(());
        }
        let o = &self.objects;
        let problem = super::install::installed(source.client(), o)
            .await
            .map_err(PgError::query("checking the capture triggers"))?;
        if let Some(problem) = problem {
            return Err(SourceError::NotInstalled {
                table: o.source_name(),
                problem: format!(
                    "{problem}: run `tunnel-producer install --config <file> --table {}` as the table's owner, or set capture = \"poll\"",
                    o.source_name()
                ),
            });
        }
        self.checked_at = Some(Instant::now());
        Ok(())
    }

    /// Removes the changes of the batches up to `consumed`, which were shipped; a few
    /// thousand at a time, in a short transaction of its own.
    async fn trim(&mut self, source: &mut Source, consumed: &str) -> Result<u64, SourceError> {
        if self.trimmed.as_deref() == Some(consumed) && !self.trim_more {
            return Ok(0);
        }
        let sql = format!(
            "DELETE FROM {ct} WHERE seq IN (SELECT seq FROM {ct}
               WHERE pg_visible_in_snapshot(xid, (SELECT $1::text::pg_snapshot))
               ORDER BY seq LIMIT $2)",
            ct = self.objects.change_table_sql()
        );
        let tx = source
            .client_mut()
            .build_transaction()
            .read_only(false)
            .start()
            .await
            .map_err(PgError::query("trimming the change table"))?;
        let n = tx
            .execute(&sql, &[&consumed, &TRIM_ROWS])
            .await
            .map_err(PgError::query("trimming the change table"))?;
        tx.commit()
            .await
            .map_err(PgError::query("trimming the change table"))?;
        self.trimmed = Some(consumed.to_string());
        self.trim_more = n as i64 >= TRIM_ROWS;
        Ok(n)
    }

    /// Sets the change table's size metric: `n_live_tup`, which PostgreSQL keeps, so that a
    /// change table grown by an outage is not counted row by row.
    async fn report_size(&self, source: &Source) {
        let rows: Option<i64> = source
            .client()
            .query_opt(
                "SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = to_regclass($1)",
                &[&self.objects.change_table_sql()],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        if let Some(rows) = rows {
            tunnel_shared::metrics::metrics()
                .change_table_rows
                .get_or_create(&TableLabels {
                    table: self.objects.source_name(),
                })
                .set(rows.max(0));
        }
    }

    /// The statement that reads a batch's changes after a sequence number: `$1` the sequence
    /// number, `$2` the batch's snapshot, `$3` the limit, `$4` the consumed snapshot (when
    /// `consumed`).
    fn read_sql(&self, table: &TableInfo, consumed: bool) -> String {
        let key = |col: &str| -> Vec<String> {
            table
                .key_columns()
                .enumerate()
                .map(|(i, c)| format!("(c.{col}->>{i})::{}::text", c.type_name))
                .collect()
        };
        let mut sql = format!(
            "SELECT c.seq, c.action::text, {}, {} FROM {} c
              WHERE c.seq > $1 AND pg_visible_in_snapshot(c.xid, (SELECT $2::text::pg_snapshot))",
            key("key").join(", "),
            key("old_key").join(", "),
            self.objects.change_table_sql()
        );
        if consumed {
            sql.push_str(" AND NOT pg_visible_in_snapshot(c.xid, (SELECT $4::text::pg_snapshot))");
        }
        sql.push_str(" ORDER BY c.seq LIMIT $3");
        sql
    }
}

/// What a batch's change rows name.
#[derive(Default)]
struct Changes {
    keys: Vec<Vec<String>>,
    truncated: bool,
    last_seq: Option<i64>,
    rows: i64,
}

fn collect(rows: &[tokio_postgres::Row], key_len: usize) -> Changes {
    let mut seen = HashSet::new();
    let mut out = Changes::default();
    for r in rows {
        out.rows += 1;
        out.last_seq = Some(r.get(0));
        let action: String = r.get(1);
        if action == "T" {
            out.truncated = true;
        }
        for first in [2, 2 + key_len] {
            let key: Option<Vec<String>> = (first..first + key_len)
                .map(|i| r.get::<_, Option<String>>(i))
                .collect();
            if let Some(k) = key {
                if seen.insert(k.clone()) {
                    out.keys.push(k);
                }
            }
        }
    }
    out
}

impl ChangeDetector for TriggerScan {
    fn detection(&self) -> Detection {
        Detection::Trigger
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn wants(&self, before: &Activity, now: &Activity) -> bool {
        // a commit moves the WAL position before anything else
        self.batch_open || self.trim_more || self.trim_pending || before.wal != now.wal
    }
    fn shipped(&mut self) {
        self.trim_pending |= std::mem::take(&mut self.read_changes);
    }
    fn pass<'a>(&'a mut self, ctx: PassContext<'a>) -> BoxFuture<'a, Result<Found, SourceError>> {
        Box::pin(async move {
            let PassContext {
                source,
                shipped,
                checkpoint,
                ..
            } = ctx;
            self.check_installed(source).await?;
            let position = checkpoint.trigger.clone().unwrap_or_default();
            let mut trimmed = 0;
            if let Some(consumed) = &position.consumed {
                trimmed = self.trim(source, consumed).await?;
            }
            self.trim_pending = false;
            let table = source.table().clone();
            let batch = match &position.batch {
                Some(b) => b.clone(),
                None => source
                    .client()
                    .query_one("SELECT pg_current_snapshot()::text", &[])
                    .await
                    .map_err(PgError::query("taking the batch's snapshot"))?
                    .get(0),
            };
            let after = if position.batch.is_some() {
                position.after_seq
            } else {
                0
            };
            let sql = self.read_sql(&table, position.consumed.is_some());
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after, &batch, &self.batch_rows];
            if let Some(c) = &position.consumed {
                params.push(c);
            }
            let rows = source
                .client()
                .query(&sql, &params)
                .await
                .map_err(PgError::query("reading the change table"))?;
            let changes = collect(&rows, table.key.len());
            self.read_changes = changes.rows > 0;
            let complete = changes.rows < self.batch_rows;
            self.batch_open = !complete;
            let mut found = Found {
                scanned: changes.rows as u64,
                trigger_upto: Some(if complete {
                    TriggerPosition {
                        consumed: Some(batch),
                        batch: None,
                        after_seq: 0,
                    }
                } else {
                    TriggerPosition {
                        consumed: position.consumed.clone(),
                        batch: Some(batch),
                        after_seq: changes.last_seq.unwrap_or(after),
                    }
                }),
                ..Default::default()
            };
            found.rows = source.rows_by_keys(&changes.keys).await?;
            let present: HashSet<&Vec<String>> = found.rows.iter().map(|r| &r.key_text).collect();
            let mut gone: HashSet<Vec<String>> = changes
                .keys
                .iter()
                .filter(|k| !present.contains(k))
                .cloned()
                .collect();
            if changes.truncated {
                // an integer key: the keys shipped that the table no longer has
                if let (Some(shipped), Some(lo), Some(hi)) = (
                    shipped,
                    shipped.and_then(|s| s.min()),
                    shipped.and_then(|s| s.max()),
                ) {
                    let now: HashSet<i64> = source
                        .keys_in_ranges(&[(lo, hi)])
                        .await?
                        .into_iter()
                        .collect();
                    gone.extend(
                        shipped
                            .keys(lo..=hi)
                            .into_iter()
                            .filter(|k| !now.contains(k))
                            .map(|k| vec![k.to_string()]),
                    );
                }
                info!(gone = gone.len(), "the table was truncated");
            }
            for k in gone {
                found.gone.push(GoneKey::from_text(&table, k)?);
            }
            if changes.rows > 0 || trimmed > 0 {
                self.report_size(source).await;
                debug!(
                    changes = changes.rows,
                    keys = changes.keys.len(),
                    trimmed,
                    "change table read"
                );
            }
            Ok(found)
        })
    }
}

#[cfg(test)]
mod tests {
    use tunnel_shared::catalog::{Column, ColumnKind};

    use super::*;

    #[test]
    fn the_read_statement_casts_each_key_value_to_its_column_type() {
        let table = TableInfo {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                Column {
                    name: "a".into(),
                    type_name: "integer".into(),
                    kind: ColumnKind::Int4,
                    nullable: false,
                    attnum: 1,
                    default: None,
                },
                Column {
                    name: "b".into(),
                    type_name: "character varying(10)".into(),
                    kind: ColumnKind::Text,
                    nullable: false,
                    attnum: 2,
                    default: None,
                },
            ],
            key: vec![0, 1],
            watermark: None,
        };
        let scan = TriggerScan::new(
            Duration::from_millis(100),
            10,
            Objects {
                schema: "data_tunnel".into(),
                change_table: "public_t_cdc".into(),
                source_schema: "public".into(),
                source_name: "t".into(),
            },
        );
        let sql = scan.read_sql(&table, true);
        assert!(
            sql.contains("(c.key->>0)::integer::text, (c.key->>1)::character varying(10)::text")
        );
        assert!(sql.contains("(c.old_key->>1)::character varying(10)::text"));
        assert!(sql.contains("NOT pg_visible_in_snapshot(c.xid, (SELECT $4::text::pg_snapshot))"));
        assert!(!scan.read_sql(&table, false).contains("$4"));
    }
}
