//! Reconciliation of contents: the source compared with the target by the shared diff engine
//! ([`tunnel_shared::reconcile`]), on a slow cadence. Rows that differ or are missing in the
//! target are read again and shipped as updates (unless the same version is still on its way);
//! rows the source no longer has are shipped as deletes. This finds what no watermark can: rows
//! changed without `updated_at` moving, updates of tables with no watermark column, and deletes
//! of tables whose key is not a single integer.
//!
//! It reads the target through a read-only session of its own. A target that cannot be read
//! (down, table not created yet) skips the pass with a warning: capture goes on regardless.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_postgres::Client;
use tracing::{debug, warn};
use tunnel_shared::config::{TableConfig, TargetConfig};
use tunnel_shared::event::Detection;
use tunnel_shared::pg::{self, qualified, PgError, Session};
use tunnel_shared::reconcile::{self, DiffOptions, Side, CANONICAL_TEXT};

use crate::capture::{ChangeDetector, Found, GoneKey, PassContext};
use crate::source::{Activity, SourceError};

pub struct ContentScan {
    pub interval: Duration,
    target_cfg: TargetConfig,
    target_table: String,
    target: Option<Client>,
    /// The table's topic: the consumer parks keys per topic.
    topic: String,
}

impl ContentScan {
    pub fn new(
        interval: Duration,
        target_cfg: &TargetConfig,
        table: &TableConfig,
        topic: String,
    ) -> Self {
        Self {
            interval,
            target_cfg: target_cfg.clone(),
            target_table: qualified(table.target_schema(), table.target_name()),
            target: None,
            topic,
        }
    }

    async fn target(&mut self) -> Result<&Client, PgError> {
        if self.target.as_ref().is_none_or(|c| c.is_closed()) {
            let session = Session {
                application_name: "data-tunnel-reconcile".into(),
                statement_timeout: Duration::from_millis(self.target_cfg.statement_timeout_ms),
                lock_timeout: Duration::from_secs(1),
                read_only: true,
                canonical_text: true,
            };
            self.target = Some(pg::connect(&self.target_cfg.url, &session).await?);
        }
        match &self.target {
            Some(c) => Ok(c),
            None => unreachable!("connected above"),
        }
    }
}

impl ChangeDetector for ContentScan {
    fn detection(&self) -> Detection {
        Detection::Reconcile
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn wants(&self, before: &Activity, now: &Activity) -> bool {
        before.inserted != now.inserted
            || before.updated != now.updated
            || before.deleted != now.deleted
    }
    fn pass<'a>(&'a mut self, ctx: PassContext<'a>) -> BoxFuture<'a, Result<Found, SourceError>> {
        Box::pin(async move {
            let mut found = Found::default();
            let table = ctx.source.table().clone();
            let target_table = self.target_table.clone();
            let (bookkeeping, topic) = (
                self.target_cfg.bookkeeping_schema.clone(),
                self.topic.clone(),
            );
            let target = match self.target().await {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, "reconciliation skipped: the target cannot be read");
                    return Ok(found);
                }
            };
            // the source session renders text like the target's for this pass only
            let source = ctx.source.client();
            source
                .batch_execute(&canonical_set())
                .await
                .map_err(PgError::query("preparing the session for reconciliation"))?;
            let diff = reconcile::diff(
                &table,
                Side {
                    client: source,
                    table: qualified(&table.schema, &table.name),
                },
                Side {
                    client: target,
                    table: target_table,
                },
                DiffOptions::default(),
            )
            .await;
            source
                .batch_execute("RESET DateStyle; RESET IntervalStyle; RESET TimeZone; RESET extra_float_digits; RESET bytea_output; RESET work_mem")
                .await
                .map_err(PgError::query("resetting the session after reconciliation"))?;
            let diff = match diff {
                Ok(d) => d,
                Err(e) if ctx.source.is_closed() => return Err(e.into()),
                Err(e) => {
                    // not created yet (42P01), or the target went away: try again next time
                    if e.sqlstate() != Some("42P01") {
                        warn!(error = %e, "reconciliation skipped");
                    }
                    return Ok(found);
                }
            };
            found.scanned = diff.rows_compared;
            // keys parked by the consumer differ on purpose: their events wait in the DLQ for a
            // replay, and shipping them again would only add to it
            let parked = parked_keys(target, &bookkeeping, &topic).await;
            let mut again: Vec<Vec<String>> = diff.missing;
            again.extend(diff.differing);
            again.retain(|k| !parked.contains(k));
            found.rows = ctx.source.rows_by_keys(&again).await?;
            for k in diff.extra.into_iter().filter(|k| !parked.contains(k)) {
                found.gone.push(GoneKey::from_text(&table, k)?);
            }
            Ok(found)
        })
    }
}

/// The keys the consumer has parked for `topic` (none if its bookkeeping is not there yet).
async fn parked_keys(target: &Client, bookkeeping: &str, topic: &str) -> HashSet<Vec<String>> {
    let sql = format!(
        "SELECT key FROM {} WHERE topic = $1",
        qualified(bookkeeping, "parked_keys")
    );
    match target.query(&sql, &[&topic]).await {
        // each key is stored as a JSON array of its columns' text values
        Ok(rows) => rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .filter_map(|k| serde_json::from_str::<Vec<Option<String>>>(&k).ok())
            .map(|k| k.into_iter().map(Option::unwrap_or_default).collect())
            .collect(),
        Err(e) => {
            debug!(error = %e, "no parked keys read");
            HashSet::new()
        }
    }
}

/// `SET` statements for [`CANONICAL_TEXT`].
fn canonical_set() -> String {
    CANONICAL_TEXT
        .split("-c ")
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| format!("SET {k} = '{v}';"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_settings_become_set_statements() {
        let s = super::canonical_set();
        assert!(s.contains("SET TimeZone = 'UTC';"), "{s}");
        assert!(s.contains("SET DateStyle = 'ISO,YMD';"), "{s}");
    }
}
