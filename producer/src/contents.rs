//! Reconciliation of contents: the source compared with the target, on a slow cadence. Rows
//! that differ or are missing in the target are read again and shipped as updates (unless the
//! same version is still on its way); rows the source no longer has are shipped as deletes.
//! This finds what no watermark can: rows changed without `updated_at` moving, updates of
//! tables with no watermark column, and deletes of tables whose key is not a single integer.
//!
//! A pass compares one of two things:
//! - the rows written since the last pass ([`tunnel_shared::versions`]): one filtered sequential read
//!   of the source, and a lookup by key in the target of those rows alone. Used for tables with
//!   a single integer key (their deletes are the delete scan's), whenever the last pass's
//!   transaction horizon, kept in the checkpoint, can be used;
//! - the whole table, by the shared diff engine ([`tunnel_shared::reconcile::diff`]): count
//!   and hash by key range on both sides. Used otherwise, and every
//!   `reconcile_full_interval_ms`, since it alone also sees a target changed behind the
//!   pipeline's back.
//!
//! It reads the target through a read-only session of its own. A target that cannot be read
//! (down, table not created yet) skips the pass with a warning: capture goes on regardless.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_postgres::Client;
use tracing::{debug, info, warn};
use tunnel_shared::config::{TableConfig, TargetConfig};
use tunnel_shared::event::Detection;
use tunnel_shared::pg::{self, qualified, PgError, Session};
use tunnel_shared::reconcile::{self, DiffOptions, Differences, Side};
use tunnel_shared::versions::{self, Versions, Written};

use crate::capture::{ChangeDetector, Found, GoneKey, PassContext};
use crate::error::SourceError;
use crate::lag::{self, ApplyWatch, Verdict};
use crate::source::Activity;

/// A listed row: its key in text form and its hash.
type Listed = (Vec<String>, i64);

/// Most rows written since the last pass that are looked up one by one in the target; beyond,
/// the whole table is compared.
const VERSIONS_CAP: usize = versions::LISTING_CAP;

/// What a pass would change of the scan's memory, until it is shipped.
#[derive(Default)]
struct Staged {
    full_at: Option<Instant>,
}

pub struct ContentScan {
    pub interval: Duration,
    /// How often the whole table is compared although the rows written since the last pass
    /// would do (zero: only when they cannot be used).
    full_interval: Duration,
    last_full: Instant,
    /// Whether passes may look at the rows written since the last pass only: deletes are
    /// then the delete scan's to find (tables with a single integer key).
    by_versions: bool,
    /// What the pass in hand would make of `last_full`, kept once it is shipped.
    staged: Staged,
    /// Whether the consumer applies what was shipped (passes pause while it does not).
    applying: ApplyWatch,
    /// The events shipped by the table (all detectors) and processed by the consumer when the
    /// last pass ran, and whether either had moved since the pass before. A pass that compared
    /// a target still applying events in flight (a delete found nowhere else, of a row whose
    /// insert was on its way) must be followed by one more, even when the table is quiet
    /// since: passes go on until one finds both still.
    progress_at_last_pass: (u64, Option<i64>),
    progress_moved: bool,
    /// Whether the last comparison found the target different, and the table's activity then:
    /// passes go on while it differs (the consumer may be catching up), each skipped cheaply
    /// while neither the source, nor what was shipped, nor what was processed has moved.
    differed: Option<Activity>,
    target_cfg: TargetConfig,
    target_table: String,
    target: Option<Client>,
    /// The table's topic: the consumer parks keys per topic.
    topic: String,
}

impl ContentScan {
    pub fn new(
        interval: Duration,
        full_interval: Duration,
        by_versions: bool,
        target_cfg: &TargetConfig,
        table: &TableConfig,
        topic: String,
    ) -> Self {
        Self {
            interval,
            full_interval,
            last_full: Instant::now(),
            by_versions,
            staged: Staged::default(),
            applying: ApplyWatch::default(),
            progress_at_last_pass: (0, None),
            progress_moved: false,
            differed: None,
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

    /// Whether this pass is skipped because the consumer applies nothing of what was shipped
    /// (every event in flight would look like a difference, and be shipped again). Notes
    /// whether the events shipped or processed moved since the last pass.
    async fn paused(&mut self, shipped: u64) -> bool {
        let (bookkeeping, topic) = (
            self.target_cfg.bookkeeping_schema.clone(),
            self.topic.clone(),
        );
        let processed = match self.target().await {
            Ok(target) => lag::processed(target, &bookkeeping, &topic).await,
            Err(_) => None,
        };
        let progress = (shipped, processed);
        self.progress_moved = progress != self.progress_at_last_pass;
        self.progress_at_last_pass = progress;
        match self.applying.observe(processed, shipped) {
            Verdict::Pause { first, unapplied } => {
                if first {
                    warn!(unapplied, "reconciliation paused: the consumer has applied nothing of the events shipped since its last progress; differences now would be events in flight, and nothing is shipped again until it applies");
                }
                true
            }
            Verdict::Resume => {
                info!("reconciliation resumed: the consumer applies again");
                false
            }
            Verdict::Compare => false,
        }
    }

    /// Whether the periodic whole-table comparison is due.
    fn full_due(&self) -> bool {
        !self.full_interval.is_zero() && self.last_full.elapsed() >= self.full_interval
    }

    /// The rows written since the last pass's horizon, when they may stand for the table.
    async fn written_since(
        &self,
        ctx: &mut PassContext<'_>,
    ) -> Result<Option<(Vec<Written>, i64)>, SourceError> {
        let since = match ctx.checkpoint.reconciled_xmin {
            Some(s) if self.by_versions && !self.full_due() => s,
            _ => return Ok(None),
        };
        let table = ctx.source.table().clone();
        let name = qualified(&table.schema, &table.name);
        match versions::changed_since(ctx.source.client_mut(), &table, &name, since, VERSIONS_CAP)
            .await?
        {
            Versions::Changed { rows, horizon } => Ok(Some((rows, horizon))),
            Versions::Unusable(why) => {
                info!(reason = %why, "reconciliation compares the whole table");
                Ok(None)
            }
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
        // a whole-table comparison also finds what changed in the target alone; differences
        // seen once are looked at again, and so is a target compared while events were on
        // their way to it
        self.full_due()
            || self.progress_moved
            || self.differed.is_some()
            || self.applying.is_paused()
            || before.inserted != now.inserted
            || before.updated != now.updated
            || before.deleted != now.deleted
            // a session's statistics may reach `pg_stat_user_tables` ten seconds after its
            // commit; the WAL moves at once
            || before.wal != now.wal
    }
    fn pass<'a>(&'a mut self, ctx: PassContext<'a>) -> BoxFuture<'a, Result<Found, SourceError>> {
        // what an earlier pass staged was not shipped: this pass starts from the same memory
        self.staged = Staged::default();
        Box::pin(async move {
            let mut ctx = ctx;
            // connected before the clock starts: the pass logs what the comparison costs
            if let Err(e) = self.target().await {
                warn!(error = %e, "reconciliation skipped: the target cannot be read");
                return Ok(Found::default());
            }
            if self.paused(ctx.checkpoint.events).await {
                return Ok(Found::default());
            }
            let activity = ctx.source.activity().await?;
            if self.differed.as_ref() == Some(&activity) && !self.progress_moved && !self.full_due()
            {
                // the same comparison would find the same
                return Ok(Found::default());
            }
            match self.compare(&mut ctx).await? {
                Some(compared) => {
                    let differs = !compared.diff.is_empty();
                    self.differed = differs.then_some(activity);
                    self.found(&mut ctx, compared).await
                }
                None => Ok(Found::default()),
            }
        })
    }
    fn shipped(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        if let Some(at) = staged.full_at {
            self.last_full = at;
        }
    }
}

/// A comparison of the source with the target.
struct Compared {
    /// Whether the whole table was compared (else the rows written since the last pass).
    whole_table: bool,
    diff: Differences,
    /// The transaction horizon the next pass starts from (`None`: the one it started from).
    horizon: Option<i64>,
    /// Keys parked by the consumer.
    parked: HashSet<Vec<String>>,
}

impl ContentScan {
    /// Compares the source with the target, and logs what that found; `None` when the target
    /// cannot be compared now.
    async fn compare(
        &mut self,
        ctx: &mut PassContext<'_>,
    ) -> Result<Option<Compared>, SourceError> {
        let started = Instant::now();
        let table = ctx.source.table().clone();
        let written = self.written_since(ctx).await?;
        let horizon = match &written {
            Some((_, h)) => *h,
            // rows written after it are seen by the next pass, whatever this one reads
            None => versions::horizon(ctx.source.client()).await?,
        };
        let target_table = self.target_table.clone();
        let (bookkeeping, topic) = (
            self.target_cfg.bookkeeping_schema.clone(),
            self.topic.clone(),
        );
        let target = match self.target().await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "reconciliation skipped: the target cannot be read");
                return Ok(None);
            }
        };
        let target_side = Side {
            client: target,
            table: target_table,
        };
        // (key, hash) for the target lookup, and each row's transaction id beside it
        let written = written
            .map(|(rows, _)| -> Vec<Listed> { rows.into_iter().map(|w| w.listed).collect() });
        let (mode, listed, diff) = match &written {
            Some(listed) => (
                "written_since_last_pass",
                listed.len(),
                reconcile::compare_listed(&table, &target_side, listed).await,
            ),
            None => (
                "whole_table",
                0,
                whole_table(ctx.source.client(), &table, target_side).await?,
            ),
        };
        let diff = match diff {
            Ok(d) => d,
            Err(e) if ctx.source.is_closed() => return Err(e.into()),
            Err(e) if replica_shape_behind(&e) => {
                // the consumer evolves the replica with the first event of the new schema, which
                // a quiet table, or changes only a comparison finds, never send: one row is
                // shipped again, and the next pass compares from the same horizon
                info!(error = %e, "reconciliation waits for the replica to take the table's new columns: one row shipped again in the new shape");
                let probe = first_key(ctx.source.client(), &table).await?;
                return Ok(Some(Compared {
                    whole_table: false,
                    diff: Differences {
                        differing: probe.into_iter().collect(),
                        ..Differences::default()
                    },
                    horizon: None,
                    parked: HashSet::new(),
                }));
            }
            Err(e) => {
                // not created yet (42P01), or the target went away: try again next time
                if e.sqlstate() != Some("42P01") {
                    warn!(error = %e, "reconciliation skipped");
                }
                return Ok(None);
            }
        };
        info!(
            mode,
            listed,
            rows_compared = diff.rows_compared,
            missing = diff.missing.len(),
            differing = diff.differing.len(),
            extra = diff.extra.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reconciliation pass"
        );
        // keys parked by the consumer differ on purpose: their events wait in the DLQ for a
        // replay, and shipping them again would only add to it
        let parked = parked_keys(target, &bookkeeping, &topic).await;
        Ok(Some(Compared {
            whole_table: written.is_none(),
            diff,
            horizon: Some(horizon),
            parked,
        }))
    }

    /// What a comparison makes of the pass: the rows to ship again, read from the source, and
    /// the keys gone from it.
    async fn found(
        &mut self,
        ctx: &mut PassContext<'_>,
        c: Compared,
    ) -> Result<Found, SourceError> {
        let mut found = Found {
            scanned: c.diff.rows_compared,
            reconciled_xmin: c.horizon,
            ..Default::default()
        };
        if c.whole_table {
            self.staged.full_at = Some(Instant::now());
        }
        let mut again: Vec<Vec<String>> = c.diff.missing;
        again.extend(c.diff.differing);
        again.retain(|k| !c.parked.contains(k));
        // a row whose event is still on its way differs from the target too: the producer's
        // content cache drops it, its content having been shipped moments ago
        found.rows = ctx.source.rows_by_keys(&again).await?;
        let table = ctx.source.table().clone();
        for k in c.diff.extra.into_iter().filter(|k| !c.parked.contains(k)) {
            found.gone.push(GoneKey::from_text(&table, k)?);
        }
        Ok(found)
    }
}

/// The whole table compared with the target ([`reconcile::diff`]), the source session rendering
/// text like the target's for this comparison only. A source error is the outer one (the pass
/// fails and is retried), a target error the inner one.
async fn whole_table(
    source: &Client,
    table: &tunnel_shared::catalog::TableInfo,
    target: Side<'_>,
) -> Result<Result<Differences, PgError>, SourceError> {
    source
        .batch_execute(&tunnel_shared::pg::canonical_set(false))
        .await
        .map_err(PgError::query("preparing the session for reconciliation"))?;
    let diff = reconcile::diff(
        table,
        Side {
            client: source,
            table: qualified(&table.schema, &table.name),
        },
        target,
        DiffOptions::default(),
    )
    .await;
    source
        .batch_execute(&tunnel_shared::pg::canonical_reset())
        .await
        .map_err(PgError::query("resetting the session after reconciliation"))?;
    Ok(diff)
}

/// Whether a comparison failed in the target because the replica does not have the source's
/// columns or types yet (a column added, renamed or retyped at the source, which the consumer
/// applies when an event of the new shape arrives).
fn replica_shape_behind(e: &PgError) -> bool {
    matches!(
        e.sqlstate(),
        // undefined_column, datatype_mismatch, undefined_function, cannot_coerce
        Some("42703" | "42804" | "42883" | "42846")
    )
}

/// The smallest key of the source table, in text form (`None` when it is empty).
async fn first_key(
    source: &Client,
    table: &tunnel_shared::catalog::TableInfo,
) -> Result<Option<Vec<String>>, SourceError> {
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {} LIMIT 1",
        table.key_as_text(None),
        qualified(&table.schema, &table.name),
        table.key_order()
    );
    let row = source
        .query_opt(&sql, &[])
        .await
        .map_err(PgError::query("reading the table's first key"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let key = (0..table.key.len())
        .map(|i| row.try_get::<_, String>(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(PgError::query("reading the table's first key"))?;
    Ok(Some(key))
}

/// The keys the consumer has parked for `topic` (none if its bookkeeping is not there yet).
async fn parked_keys(target: &Client, bookkeeping: &str, topic: &str) -> HashSet<Vec<String>> {
    let sql = format!(
        "SELECT key FROM {} WHERE topic = $1",
        tunnel_shared::bookkeeping::parked_table(bookkeeping)
    );
    match target.query(&sql, &[&topic]).await {
        // each key is stored as a JSON array of its columns' text values
        Ok(rows) => rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .filter_map(|k| tunnel_shared::key::from_json(&k))
            .map(|k| k.into_iter().map(Option::unwrap_or_default).collect())
            .collect(),
        Err(e) => {
            debug!(error = %e, "no parked keys read");
            HashSet::new()
        }
    }
}
