//! Reading the source table: short statements on one connection, keyset-paginated, within a
//! rows-per-second ceiling. Never a write, never a transaction left open between statements.
//!
//! - [`connection`]: the read-only session and the table's catalog, read at connect;
//! - [`statements`]: the statements prepared at connect;
//! - [`decode`]: rows as the producer ships them (values, key text, hash, watermark);
//! - [`rows`]: the queries that read rows (by key range, by key, by watermark);
//! - [`keys`]: index-only reads of a single integer key (the delete scan);
//! - [`activity`]: the table's write statistics, the horizon's probe and size estimates;
//! - [`reader`]: [`SourceReader`], what the worker and the snapshot read.

mod activity;
mod connection;
mod decode;
mod keys;
mod reader;
mod rows;
mod statements;
mod throttle;

pub use activity::Activity;
pub use connection::Source;
pub use decode::SourceRow;
pub(crate) use keys::bucket_bounds;
pub use reader::SourceReader;
