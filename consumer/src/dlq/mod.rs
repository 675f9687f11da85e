//! The dead-letter queue: every message that cannot be applied goes, unchanged, to its topic's
//! `<topic>.dlq` with headers that say where it came from and why. Entries are written (and
//! acknowledged by Kafka) before the target transaction that moves the source offset past them
//! commits, so a crash in between can duplicate a DLQ entry but never lose one.
//!
//! What was replayed is recorded in the target (`<bookkeeping>.dlq_resolved`), in the same
//! transaction as the rows it applied: the DLQ topic itself is never rewritten.

mod inspect;
mod read;
mod replay;
mod scope;
pub(crate) mod select;
pub(crate) mod writer;

pub(crate) use inspect::{list, show, ShowOptions};
pub(crate) use replay::{replay, ReplayOptions};
