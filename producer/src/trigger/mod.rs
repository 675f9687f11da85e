//! Trigger capture (`capture = "trigger"`): for operators who may install objects on the
//! source. `tunnel-producer install` creates, in a schema of the pipeline's own
//! (`source.capture_schema`), a change table per table and the row and TRUNCATE triggers that
//! fill it; [`TriggerScan`] reads it in commit-safe batches, ships the rows of the keys it
//! names, and trims what was shipped.
//!
//! The ordering argument (also in docs/design.md): every change row carries the id of the
//! transaction that wrote it (`pg_current_xact_id()`). A batch is bounded by a snapshot of the
//! server (`pg_current_snapshot()`): it holds the changes of the transactions that snapshot
//! sees as finished and the previous batch's snapshot did not. A transaction that snapshot
//! saw as finished has all its change rows visible to every later statement, so no batch can
//! miss a row that appears later, whatever order transactions commit in; a transaction still
//! running is left to a later batch, without holding back the others (the way PgQ cuts its
//! batches). The change rows only name keys: the producer ships each key's row as it is now,
//! or a delete when it is gone, so several changes of a key in one batch become one event, and
//! a batch read again after a crash ships the same rows again (the consumer applies them once).
//!
//! - [`names`]: the objects' names;
//! - [`install`]: `install` and `uninstall`, and the SQL they run;
//! - [`scan`]: the detector.

pub mod install;
mod names;
mod scan;

pub use install::installed;
pub use names::Objects;
pub use scan::TriggerScan;
