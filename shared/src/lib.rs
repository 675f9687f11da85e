//! Common library of Data Tunnel: configuration, the source catalog, Avro schemas and the
//! registry, Kafka client settings, PostgreSQL helpers and the change-event model shared by
//! `tunnel-producer` and `tunnel-consumer`.

pub mod alerts;
pub mod bookkeeping;
pub mod calendar;
pub mod catalog;
pub mod check;
pub mod columns;
pub mod config;
pub mod datum;
pub mod default_expr;
pub mod event;
pub mod fault;
pub mod health;
pub mod heartbeat;
pub mod kafka;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod pg;
pub mod pgbinary;
pub mod progress;
pub mod reconcile;
pub mod registry;
pub mod retry;
pub mod rules;
mod rules_value;
pub mod schema;
pub mod shutdown;
pub mod startup;
mod type_name;
pub mod versions;
pub mod wire;

#[cfg(feature = "testkit")]
pub mod testkit;

/// The version every binary reports and stamps into the events it writes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
