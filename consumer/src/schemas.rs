//! Keeping the replica tables up with the writer schemas of the events, in the batch's own
//! transaction. Each batch reads, per topic, the value schema id its table was evolved to
//! (the row locked `FOR SHARE`, so that no other consumer changes the table under the batch).
//! When the batch holds an event of a newer schema, the DDL lock is taken for the
//! transaction, the version row re-read `FOR UPDATE`, and the table evolved to that schema
//! (`evolve::diff`, `ddl::evolve_table`) with its column mapping and version stored: committed
//! or rolled back with the rows. A second consumer of the group then finds the version stored
//! and does nothing. The tables' columns are cached per topic with the version they were read
//! at, and read again when the stored version moves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Transaction;
use tracing::info;

use crate::ddl;
use crate::error::ApplyError;
use crate::evolve;
use crate::model::{Item, TargetColumn, TargetTable, WriterSchema};

/// A topic's table's columns, as read at a stored version (`None`: none stored yet).
type Known = (Option<i64>, Arc<[TargetColumn]>);

/// The replica tables' columns, as last committed.
#[derive(Default)]
pub(crate) struct Schemas {
    known: HashMap<Arc<str>, Known>,
    /// When a table's columns that the source has NOT NULL and the replica not yet (a column
    /// added whose values were on their way) were last tried again, per topic.
    not_null_tried: Mutex<HashMap<Arc<str>, Instant>>,
}

/// How often a `SET NOT NULL` the replica refused is tried again (each try reads the table
/// until its first null).
const NOT_NULL_RETRY: Duration = Duration::from_secs(10);

/// The batch's tables with their columns, and what to remember once the batch commits.
pub(crate) struct Prepared {
    pub(crate) tables: HashMap<Arc<str>, TargetTable>,
    known: Vec<(Arc<str>, Known)>,
}

impl Schemas {
    /// Evolves the tables of `items`' topics to the newest value schema of their events where
    /// it is newer than the stored one, in `tx`; returns `tables` with their columns.
    pub(crate) async fn prepare(
        &self,
        tx: &Transaction<'_>,
        bk: &str,
        tables: &HashMap<Arc<str>, TargetTable>,
        items: &[Item],
    ) -> Result<Prepared, ApplyError> {
        let newest = newest_schemas(tables, items);
        let mut topics: Vec<&Arc<str>> = newest.keys().collect();
        topics.sort();
        let mut out = Prepared {
            tables: tables.clone(),
            known: Vec::with_capacity(topics.len()),
        };
        if topics.is_empty() {
            return Ok(out);
        }
        let locked = newest
            .iter()
            .any(|(topic, w)| newer(w, self.known.get(topic).and_then(|(id, _)| *id)));
        if locked {
            ddl::lock_ddl(tx).await?;
        }
        let names: Vec<&str> = topics.iter().map(|t| t.as_ref()).collect();
        let stored = ddl::stored_versions(tx, bk, &names, locked).await?;
        for topic in topics {
            let Some(table) = tables.get(topic) else {
                continue;
            };
            let mut version = stored.get(topic.as_ref()).copied();
            let mut columns = match self.known.get(topic) {
                Some((id, columns)) if *id == version => columns.clone(),
                _ => Arc::from(ddl::load_columns(tx, bk, table).await?),
            };
            let w = &newest[topic];
            if let (Some(w), true) = (w, newer(w, version)) {
                if !locked {
                    // the stored version went back (the bookkeeping was reset): evolve anyway
                    ddl::lock_ddl(tx).await?;
                }
                let evolution =
                    evolve::diff(&columns, &w.fields, table.policy).map_err(|source| {
                        ApplyError::Evolve {
                            table: table.display(),
                            source,
                        }
                    })?;
                ddl::evolve_table(tx, table, &evolution.steps).await?;
                ddl::store_mapping(tx, bk, table, &evolution.columns).await?;
                ddl::store_version(tx, bk, topic, table, w.id).await?;
                if !evolution.steps.is_empty() {
                    info!(
                        table = %table.display(), schema_id = w.id, steps = evolution.steps.len(),
                        "replica evolved to a new value schema"
                    );
                }
                columns = Arc::from(evolution.columns);
                version = Some(i64::from(w.id));
            } else if let Some(w) = w.as_ref().filter(|w| Some(i64::from(w.id)) == version) {
                if self.not_null_again(tx, topic, table, &columns, w).await? {
                    columns = Arc::from(ddl::load_columns(tx, bk, table).await?);
                }
            }
            if let Some(t) = out.tables.get_mut(topic) {
                t.columns = columns.clone();
            }
            out.known.push((topic.clone(), (version, columns)));
        }
        Ok(out)
    }

    /// Tries again, at most every [`NOT_NULL_RETRY`], the `SET NOT NULL` of columns the
    /// current schema `w` has NOT NULL and the replica does not (refused before, while rows of
    /// the replica still held nulls: a column added NOT NULL with a default the replica could
    /// not copy is filled by the snapshot that follows it). Whether it tried (the columns are
    /// then read again).
    async fn not_null_again(
        &self,
        tx: &Transaction<'_>,
        topic: &Arc<str>,
        table: &TargetTable,
        columns: &[TargetColumn],
        w: &WriterSchema,
    ) -> Result<bool, ApplyError> {
        let Ok(evolution) = evolve::diff(columns, &w.fields, table.policy) else {
            return Ok(false);
        };
        let pending: Vec<evolve::Step> = evolution
            .steps
            .into_iter()
            .filter(|s| matches!(s, evolve::Step::SetNotNull { .. }))
            .collect();
        if pending.is_empty() {
            return Ok(false);
        }
        {
            let mut tried = self
                .not_null_tried
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if tried
                .get(topic)
                .is_some_and(|at| at.elapsed() < NOT_NULL_RETRY)
            {
                return Ok(false);
            }
            tried.insert(topic.clone(), Instant::now());
        }
        ddl::evolve_table(tx, table, &pending).await?;
        Ok(true)
    }

    /// Remembers the columns of a committed batch's tables.
    pub(crate) fn committed(&mut self, prepared: Prepared) {
        self.known.extend(prepared.known);
    }
}

/// Whether `w` is newer than version `than` (`None`: no version).
fn newer(w: &Option<Arc<WriterSchema>>, than: Option<i64>) -> bool {
    w.as_ref()
        .is_some_and(|w| than.is_none_or(|id| i64::from(w.id) > id))
}

/// Per topic of `items` that has a table: the newest value schema of its events (`None` when
/// it has only deletes and tombstones).
fn newest_schemas(
    tables: &HashMap<Arc<str>, TargetTable>,
    items: &[Item],
) -> HashMap<Arc<str>, Option<Arc<WriterSchema>>> {
    let mut newest: HashMap<Arc<str>, Option<Arc<WriterSchema>>> = HashMap::new();
    for e in items.iter().filter_map(|i| match i {
        Item::Event(e) if tables.contains_key(&e.topic) => Some(e),
        _ => None,
    }) {
        let slot = newest.entry(e.topic.clone()).or_default();
        if let Some(vs) = &e.value_schema {
            if slot.as_ref().is_none_or(|w| w.id < vs.id) {
                *slot = Some(vs.clone());
            }
        }
    }
    newest
}
