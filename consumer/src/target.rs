//! The target's side of applying a batch ([`TargetWriter`]), and its implementation on one
//! PostgreSQL transaction ([`BatchTransaction`]): the batch's offsets rows locked first, the
//! parked keys read (when the cache is stale), the rows written with the refused ones set
//! apart, then the new offsets and the parked keys stored in one round trip, and the commit.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use tokio_postgres::{Client, Transaction};
use tunnel_shared::key::KeyText;
use tunnel_shared::pg::PgError;

use crate::model::{Entry, Partition, TargetTable, ToPark, TopicProgress};
use crate::park::{self, ParkedCache};
use crate::{offsets, rows};

/// What applying a batch needs of the target, all within one transaction.
pub(crate) trait TargetWriter {
    /// Locks the offsets of these partitions (per topic) and brings `cache` up to date with
    /// their parked keys; returns each partition's next offset.
    async fn lock(
        &mut self,
        partitions: &FxHashMap<Arc<str>, Vec<i32>>,
        cache: &mut ParkedCache,
    ) -> Result<FxHashMap<Partition, i64>, PgError>;

    /// Writes `rows` into `table`; returns the rows the target refused, with its reason.
    async fn write_isolating<'a>(
        &mut self,
        table: &TargetTable,
        rows: Vec<(&'a KeyText, &'a Entry)>,
    ) -> Result<Vec<(&'a Entry, String)>, PgError>;

    /// Stores the partitions' progress (per topic) and the keys to park (per topic).
    async fn store(
        &mut self,
        progress: &[TopicProgress],
        parks: &[(Arc<str>, Vec<ToPark>)],
    ) -> Result<(), PgError>;

    /// Commits all of the above.
    async fn commit(self) -> Result<(), PgError>;
}

/// A batch's transaction in the target.
pub(crate) struct BatchTransaction<'a> {
    tx: Transaction<'a>,
    bk: &'a str,
    group: &'a str,
}

impl<'a> BatchTransaction<'a> {
    /// Begins the transaction; `bk` is the bookkeeping schema, `group` the consumer group
    /// recorded with the offsets.
    pub(crate) async fn begin(
        client: &'a mut Client,
        bk: &'a str,
        group: &'a str,
    ) -> Result<Self, PgError> {
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("beginning the apply transaction"))?;
        Ok(Self { tx, bk, group })
    }

    /// The transaction, for what is done in it before the batch's rows (schema changes).
    pub(crate) fn tx(&self) -> &Transaction<'a> {
        &self.tx
    }
}

impl TargetWriter for BatchTransaction<'_> {
    async fn lock(
        &mut self,
        partitions: &FxHashMap<Arc<str>, Vec<i32>>,
        cache: &mut ParkedCache,
    ) -> Result<FxHashMap<Partition, i64>, PgError> {
        let mut stored = FxHashMap::default();
        for (topic, parts) in partitions {
            let rows = offsets::lock(&self.tx, self.bk, self.group, topic, parts).await?;
            let mut locked: HashMap<i32, (i64, i64)> = HashMap::with_capacity(rows.len());
            for (partition, next, generation) in rows {
                locked.insert(partition, (next, generation));
                stored.insert((topic.clone(), partition), next);
            }
            cache.refresh(&self.tx, self.bk, topic, &locked).await?;
        }
        Ok(stored)
    }

    async fn write_isolating<'r>(
        &mut self,
        table: &TargetTable,
        rows: Vec<(&'r KeyText, &'r Entry)>,
    ) -> Result<Vec<(&'r Entry, String)>, PgError> {
        rows::write_isolating(&self.tx, table, rows).await
    }

    async fn store(
        &mut self,
        progress: &[TopicProgress],
        parks: &[(Arc<str>, Vec<ToPark>)],
    ) -> Result<(), PgError> {
        let (tx, bk, group) = (&self.tx, self.bk, self.group);
        // the offsets and the parked keys are written in one round trip (pipelined)
        let store_offsets = futures::future::try_join_all(
            progress
                .iter()
                .map(|(topic, parts)| offsets::store(tx, bk, group, topic, parts)),
        );
        let store_parks = futures::future::try_join_all(
            parks
                .iter()
                .map(|(topic, keys)| park::park(tx, bk, topic, keys)),
        );
        futures::future::try_join(store_offsets, store_parks).await?;
        Ok(())
    }

    async fn commit(self) -> Result<(), PgError> {
        self.tx
            .commit()
            .await
            .map_err(PgError::query("committing the apply transaction"))
    }
}
