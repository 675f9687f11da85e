//! The contract of a way of finding changes on a source the producer may only read: a
//! [`ChangeDetector`] reads, from its bounds, the rows that may have changed and the keys that
//! are gone ([`Found`]), and ships nothing itself.

use std::collections::HashSet;
use std::time::Duration;

use apache_avro::types::Value;
use futures::future::BoxFuture;
use tunnel_shared::catalog::TableInfo;
use tunnel_shared::event::Detection;
use tunnel_shared::pgbinary;

use crate::checkpoint::{Checkpoint, TriggerPosition};
use crate::error::SourceError;
use crate::horizon::Bounds;
use crate::keyset::KeySet;
use crate::source::{Activity, Source, SourceRow};

/// What a pass may look at besides the source.
pub struct PassContext<'a> {
    pub source: &'a mut Source,
    pub bounds: &'a Bounds,
    /// The keys shipped so far (tables with a single integer key).
    pub shipped: Option<&'a KeySet>,
    pub checkpoint: &'a Checkpoint,
}

/// A key that is gone from the source.
#[derive(Debug, Clone)]
pub struct GoneKey {
    pub key_text: Vec<String>,
    pub key: Vec<Value>,
}

impl GoneKey {
    /// From the key's text form, with the types of the table's key columns.
    pub fn from_text(table: &TableInfo, key_text: Vec<String>) -> Result<Self, SourceError> {
        let key = table
            .key_columns()
            .zip(&key_text)
            .map(|(c, t)| {
                pgbinary::from_pg_text(&c.name, c.kind, t).map_err(|source| SourceError::Value {
                    table: table.qualified_name(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { key_text, key })
    }
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct Found {
    /// Rows that may have changed. The worker ships those that differ from what it last
    /// shipped.
    pub rows: Vec<SourceRow>,
    /// The highest key the pass saw in key order, if it read keys in order to the end.
    pub max_key: Option<Vec<String>>,
    /// Keys shipped before that the source no longer has: shipped as deletes.
    pub gone: Vec<GoneKey>,
    /// Index entries or rows the pass went over besides `rows`, for its log line.
    pub scanned: u64,
    /// How far the repair requests have been read (the repair pass only).
    pub repairs_upto: Option<i64>,
    /// The transaction horizon the next reconciliation pass starts from (that pass only).
    pub reconciled_xmin: Option<i64>,
    /// How far the change table has been read (trigger capture only).
    pub trigger_upto: Option<TriggerPosition>,
}

impl Found {
    /// `fresh`: the rows of `keys` read again after the pass (the foreground shipped those keys
    /// while it read, so its versions may be older). They take the place of the pass's
    /// versions; a key the pass found gone stays gone only if it is still missing.
    pub fn read_again(&mut self, keys: &[Vec<String>], fresh: Vec<SourceRow>) {
        let keys: HashSet<&Vec<String>> = keys.iter().collect();
        let present: HashSet<Vec<String>> = fresh.iter().map(|r| r.key_text.clone()).collect();
        self.rows.retain(|r| !keys.contains(&r.key_text));
        self.gone
            .retain(|g| !keys.contains(&g.key_text) || !present.contains(&g.key_text));
        self.rows.extend(fresh);
    }
}

/// One way of detecting changes.
///
/// Contract: a pass reads the source through `source` only (short read-only statements), reads
/// every row that may have changed at or above `bounds` (rows below them were seen by earlier
/// passes; see [`crate::horizon`]), and returns them without shipping anything. A pass may be
/// repeated with the same bounds at any time (after a failed publish, after a restart): what it
/// keeps across passes moves on in [`ChangeDetector::shipped`], never in the pass itself.
pub trait ChangeDetector: Send + Sync {
    fn detection(&self) -> Detection;
    fn interval(&self) -> Duration;
    /// Whether activity on the table since this detector's last pass may mean new results.
    fn wants(&self, before: &Activity, now: &Activity) -> bool;
    fn pass<'a>(&'a mut self, ctx: PassContext<'a>) -> BoxFuture<'a, Result<Found, SourceError>>;
    /// The last pass's result was shipped (or had nothing to ship): what the detector keeps
    /// across passes may move on now, and only now.
    fn shipped(&mut self) {}
}
