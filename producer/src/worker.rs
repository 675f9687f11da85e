//! One table's worker: sets the table up ([`crate::setup`]), runs the snapshot until it is
//! done ([`crate::snapshot`]), then streams changes ([`crate::stream`]) until asked to stop.
//! When the table's shape changes while it streams (a DDL), it sets the table up again from the
//! new catalog (new schemas, checked against the registry before they are registered) and goes
//! on from its checkpoint; after a column was added it snapshots the table again, since only
//! the source knows that column's values in the rows that exist ([`crate::shape`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use tunnel_shared::catalog::{CatalogError, TableInfo};
use tunnel_shared::config::{Capture, Config, TableConfig};
use tunnel_shared::fault::Classify;
use tunnel_shared::retry::Backoff;

use crate::capture::{CaptureState, ChangeDetector};
use crate::checkpoint::Checkpoint;
use crate::detectors;
use crate::error::{SourceError, WorkerError};
use crate::horizon::Margins;
use crate::observe::TableObserver;
use crate::setup::{self, Prepared};
use crate::shape::ShapeChange;
use crate::snapshot::{Snapshot, Snapshotted};
use crate::stream::{shape_may_have_changed, Ended, Stream};

pub struct Worker {
    config: Arc<Config>,
    table: TableConfig,
    shutdown: watch::Receiver<bool>,
    prepared: Prepared,
}

impl Worker {
    /// Connects, registers schemas, creates topics, fences older producers of this table and
    /// loads its checkpoint.
    pub async fn start(
        config: Arc<Config>,
        table: TableConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, WorkerError> {
        let prepared = setup::prepare(config.clone(), table.clone(), shutdown.clone()).await?;
        tunnel_shared::retry::started();
        Ok(Self {
            config,
            table,
            shutdown,
            prepared,
        })
    }

    /// Snapshot (if not done), then stream until shutdown, or run every detector once
    /// (`once`); set up again after each change of the table's shape.
    pub async fn run(self, once: bool) -> Result<(), WorkerError> {
        let Worker {
            config,
            table,
            shutdown,
            mut prepared,
        } = self;
        loop {
            let before = prepared.link.source().table().clone();
            if run_prepared(prepared, &table, once).await? == Ended::Stopped {
                return Ok(());
            }
            prepared = match set_up_again(&config, &table, &shutdown, once).await? {
                Some(p) => p,
                None => return Ok(()),
            };
            prepared.link.observe().restarted();
            after_shape_change(&before, &mut prepared, &table)?;
        }
    }
}

/// How often a dropped table is looked for.
const RETURN_CHECK: Duration = Duration::from_secs(5);

/// Sets the table up again after a change of its shape. A table that is no longer there
/// (dropped, or renamed away) is waited for under its name while streaming: a reload that
/// drops and creates it again goes on by itself, and its next reconciliation compares the
/// whole table. A batch run (`once`) stops the table instead. `None`: asked to stop meanwhile.
async fn set_up_again(
    config: &Arc<Config>,
    table: &TableConfig,
    shutdown: &watch::Receiver<bool>,
    once: bool,
) -> Result<Option<Prepared>, WorkerError> {
    let mut waiting: Option<TableObserver> = None;
    loop {
        match setup::prepare(config.clone(), table.clone(), shutdown.clone()).await {
            Ok(mut prepared) => {
                if let Some(observer) = waiting {
                    info!("the table is back: replicating it again, its next reconciliation compares the whole table");
                    observer.resumed();
                    prepared.checkpoint.reconciled_xmin = None;
                }
                return Ok(Some(prepared));
            }
            Err(WorkerError::Source(SourceError::Catalog(
                e @ (CatalogError::NotFound(_) | CatalogError::NoSelect(_)),
            ))) if !once => {
                if waiting.is_none() {
                    let reason = match e {
                        CatalogError::NoSelect(_) => "the reader role can no longer SELECT from the table: waiting for the grant",
                        _ => "the table was dropped or renamed: waiting for it to come back under its name (to replicate it under another name, change the config and restart the producer)",
                    };
                    warn!("{reason}");
                    let observer =
                        TableObserver::new(&table.qualified(), config.health.ready_within_s);
                    observer.waiting(reason);
                    waiting = Some(observer);
                }
                let mut stop = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(RETURN_CHECK) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(None),
                }
            }
            Err(e) => return Err(gone(e, table)),
        }
    }
}

/// A table that a DDL made unusable when it is set up again (its primary key dropped, its
/// watermark column gone, a rule's column gone; in a batch run, dropped or its SELECT revoked
/// too) stops alone, saying what to do; the other tables go on.
fn gone(e: WorkerError, table: &TableConfig) -> WorkerError {
    let name = table.qualified();
    let problem = match &e {
        WorkerError::Source(SourceError::Catalog(c)) => match c {
            CatalogError::NotFound(_) => "the table was dropped or renamed. Ways out: restore it under its name, or change the table's name in the config (a renamed table is replicated anew: `tunnel-producer resync`)".to_string(),
            CatalogError::NoPrimaryKey(_) => format!("its primary key was dropped: events are keyed by it and deletes found by it. Ways out: add the same primary key back and restart the producer, or replicate the table anew with its new key (another topic_prefix or target table, then `tunnel-producer resync --table {name}`)"),
            CatalogError::NoSelect(_) => "the reader role can no longer SELECT from it. Way out: grant it SELECT again and restart the producer".to_string(),
            CatalogError::BadWatermark { column, problem, .. } => format!("its watermark column '{column}' {problem}. Ways out: restore the column, or set watermark_column for the table in the config (\"\" for none: updates are then found by reconciliation) and restart the producer"),
            CatalogError::Pg(_) => return e,
        },
        WorkerError::Rule { source, .. } => format!("a validation rule no longer fits its columns: {source}. Way out: change the rule in the config and restart the producer"),
        _ => return e,
    };
    WorkerError::Shape {
        table: name,
        problem,
    }
}

/// What a change of the table's shape means for the worker set up again: a changed primary
/// key stops the table; an added column resets the checkpoint to a new snapshot.
fn after_shape_change(
    before: &TableInfo,
    prepared: &mut Prepared,
    table: &TableConfig,
) -> Result<(), WorkerError> {
    let change = ShapeChange::between(before, prepared.link.source().table());
    if change.key_changed {
        return Err(WorkerError::Shape {
            table: table.qualified(),
            problem: format!(
                "{}: the replica's key would no longer name the same rows. Ways out: restore the key, or replicate the table anew (another topic_prefix or target table, then `tunnel-producer resync --table {}`)",
                change.describe(),
                table.qualified()
            ),
        });
    }
    let again = change.snapshot_again();
    info!(
        change = %change.describe(),
        snapshot_again = again,
        "the table's shape changed: set up with its new schema"
    );
    if again {
        prepared.checkpoint = prepared.checkpoint.snapshot_again();
    }
    Ok(())
}

/// A table that was in poll capture and is now in trigger capture has its next reconciliation
/// compare the whole table: what changed between the poll capture's last passes and the
/// triggers' installation is found there, without a snapshot. A table back in poll capture
/// forgets the change table's position, for its next switch.
fn switched_capture(checkpoint: &mut Checkpoint, table: &TableConfig, snapshotted_here: bool) {
    match table.capture {
        Capture::Trigger if checkpoint.trigger.is_none() && !snapshotted_here => {
            info!("switched to trigger capture: the next reconciliation compares the whole table");
            checkpoint.reconciled_xmin = None;
        }
        Capture::Poll if checkpoint.trigger.is_some() => {
            info!("switched to poll capture: the scans go on from where they were before trigger capture");
            checkpoint.trigger = None;
        }
        _ => {}
    }
}

/// Snapshot (if not done), then stream until shutdown or a change of the table's shape.
async fn run_prepared(
    prepared: Prepared,
    table: &TableConfig,
    once: bool,
) -> Result<Ended, WorkerError> {
    let Prepared {
        mut link,
        checkpoint,
        shipped,
        mut key_saver,
    } = prepared;
    let started = Instant::now();
    let detectors: Vec<Box<dyn ChangeDetector>> =
        detectors::for_table(link.config(), table, link.source().table());
    let p = &link.config().producer;
    let (margins, chunk_rows) = (Margins::from_config(p), p.snapshot_chunk_rows);
    let checkpoint_interval = Duration::from_millis(p.checkpoint_interval_ms);
    let events_before = checkpoint.events;
    let mut snapshot =
        Snapshot::new(chunk_rows, margins, checkpoint, shipped).observed_by(link.observe().clone());
    let mut backoff = Backoff::default();
    let snapshotted_here = !snapshot.done();
    while !snapshot.done() {
        let (source, publisher, stop) = link.ends();
        match snapshot.run(source, publisher, stop).await {
            Ok(()) if link.stopping() => return Ok(Ended::Stopped),
            Ok(()) => {}
            Err(e) if shape_may_have_changed(&e) && link.shape_changed_now().await => {
                warn!(error = %e, "a snapshot read failed after a DDL: setting the table up again");
                return Ok(Ended::ShapeChanged);
            }
            Err(e) if e.is_transient() => {
                backoff
                    .wait_after("a snapshot chunk (resuming from the last shipped key)", &e)
                    .await;
                link.reconnect_if_closed().await?;
            }
            Err(e) => return Err(e),
        }
    }
    // streaming starts from the bounds the snapshot recorded
    let Snapshotted {
        mut checkpoint,
        shipped,
        mut remembered,
    } = snapshot.finish();
    // what the last batch run shipped, for the first passes to skip (not kept further)
    remembered.extend(std::mem::take(&mut checkpoint.recent));
    switched_capture(&mut checkpoint, table, snapshotted_here);
    if snapshotted_here {
        // a restart from now on reads the keys saved here, not the whole topic
        key_saver
            .save(link.publisher(), &shipped, checkpoint.events, "snapshot")
            .await?;
    }
    let state = CaptureState::new(
        &detectors::specs(&detectors),
        margins,
        checkpoint_interval,
        checkpoint,
        shipped,
        remembered,
        started,
    )
    .with_budget(link.config().source.max_cpu_share);
    let stream = Stream::new(link, detectors, state)
        .announcing_the_first_watermark_pass(snapshotted_here)
        .saving_key_sets(key_saver);
    if once {
        stream.run_once(started, events_before).await
    } else {
        stream.run().await
    }
}

/// `tunnel-producer resync`: registers the table's current schemas whatever the registry would
/// say, and ships a checkpoint that has the next run snapshot the table again (into the same
/// target table: the snapshot's events are upserts).
pub async fn resync(config: Arc<Config>, table: &str) -> anyhow::Result<()> {
    let Some(t) = config
        .tables
        .iter()
        .find(|t| t.qualified() == table || (t.schema == "public" && t.name == table))
        .cloned()
    else {
        let known: Vec<String> = config.tables.iter().map(TableConfig::qualified).collect();
        anyhow::bail!(
            "table {table} is not in the config (its tables: {})",
            known.join(", ")
        );
    };
    let (_stop, shutdown) = watch::channel(false);
    let prepared = setup::prepare_with(config, t.clone(), shutdown, setup::Registration::Forced)
        .await
        .map_err(|e| anyhow::anyhow!("table {}: {e}", t.qualified()))?;
    let checkpoint = prepared.checkpoint.snapshot_again();
    prepared
        .link
        .publisher()
        .publish(&[], &checkpoint)
        .await
        .map_err(|e| anyhow::anyhow!("table {}: shipping the checkpoint: {e}", t.qualified()))?;
    println!(
        "{}: schemas registered; the next `tunnel-producer run` snapshots the table again",
        t.qualified()
    );
    Ok(())
}

impl Checkpoint {
    /// The checkpoint of a table to snapshot again: what the stream had reached is dropped
    /// (the new snapshot records it anew); the count of events and the repair requests read
    /// are kept.
    fn snapshot_again(&self) -> Checkpoint {
        Checkpoint {
            events: self.events,
            repairs_offset: self.repairs_offset,
            ..Checkpoint::new(&self.table)
        }
    }
}
