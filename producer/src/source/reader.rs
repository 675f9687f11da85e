//! [`SourceReader`]: what the snapshot reads from the source, so that it can be driven by
//! another reader (a test's) as well as by [`Source`].

use std::future::Future;

use super::connection::Source;
use super::decode::SourceRow;
use crate::error::SourceError;
use crate::horizon::Probe;

/// The reads of the snapshot. Each is one short read-only statement.
pub trait SourceReader: Send {
    /// The statement time and the transactions running; see [`crate::horizon`].
    fn probe(&self) -> impl Future<Output = Result<Probe, SourceError>> + Send;
    /// The highest key visible now.
    fn max_key(&self) -> impl Future<Output = Result<Option<Vec<String>>, SourceError>> + Send;
    /// The transaction horizon of a snapshot taken now ([`tunnel_shared::versions::horizon`]).
    fn transaction_horizon(&self) -> impl Future<Output = Result<i64, SourceError>> + Send;
    /// The planner's estimate of the table's rows.
    fn estimated_rows(&self) -> impl Future<Output = Result<i64, SourceError>> + Send;
    /// Up to `limit` rows with a key above `after` (all keys when `None`), in key order.
    fn rows_after(
        &mut self,
        after: Option<&[String]>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<SourceRow>, SourceError>> + Send;
    /// Up to `limit` rows with a key in `(after, upto]`, in key order.
    fn rows_between(
        &mut self,
        after: Option<&[String]>,
        upto: &[String],
        limit: i64,
    ) -> impl Future<Output = Result<Vec<SourceRow>, SourceError>> + Send;
}

impl SourceReader for Source {
    async fn probe(&self) -> Result<Probe, SourceError> {
        Source::probe(self).await
    }
    async fn max_key(&self) -> Result<Option<Vec<String>>, SourceError> {
        Source::max_key(self).await
    }
    async fn transaction_horizon(&self) -> Result<i64, SourceError> {
        Ok(tunnel_shared::versions::horizon(self.client()).await?)
    }
    async fn estimated_rows(&self) -> Result<i64, SourceError> {
        Source::estimated_rows(self).await
    }
    async fn rows_after(
        &mut self,
        after: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        Source::rows_after(self, after, limit).await
    }
    async fn rows_between(
        &mut self,
        after: Option<&[String]>,
        upto: &[String],
        limit: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        Source::rows_between(self, after, upto, limit).await
    }
}
