//! The producer's errors and their classes ([`tunnel_shared::fault`]): a transient error is
//! retried with back-off (setup steps up to [`SETUP_ATTEMPTS`] times, passes and snapshot chunks
//! for as long as it lasts), a fatal one stops the table's worker with a message for the
//! operator. The producer has no input of its own to dead-letter: a definite error (a value it
//! cannot decode or encode) stops it too, since skipping a row would lose a change.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tunnel_shared::catalog::CatalogError;
use tunnel_shared::event::EventError;
use tunnel_shared::fault::{Classify, ErrorClass};
use tunnel_shared::kafka::{self, TopicError};
use tunnel_shared::pg::PgError;
use tunnel_shared::pgbinary::ValueError;
use tunnel_shared::registry::RegistryError;
use tunnel_shared::rules::RuleError;
use tunnel_shared::schema::SchemaError;

/// How many times setup steps are tried before the worker gives up.
pub const SETUP_ATTEMPTS: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("table {table}: {source}")]
    Value { table: String, source: ValueError },
    /// Trigger capture is configured but not installed (or no longer).
    #[error("table {table}: trigger capture is not installed: {problem}")]
    NotInstalled { table: String, problem: String },
    #[error("table {table}: column {column} was read as {read}, not as the {catalog} of the catalog: its type changed")]
    ReadAsOtherType {
        table: String,
        column: String,
        catalog: String,
        read: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("kafka: {context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error(transparent)]
    Encode(#[from] EventError),
    #[error("kafka: the transactional producer was fenced ({reason}): another tunnel-producer for this table has started, or the role may not use its transactional id; run one producer per table")]
    Fenced { reason: String },
}

/// The context of a commit that failed (it may have gone through all the same).
pub const COMMITTING: &str = "committing a transaction";
/// The context of a failed delivery that a commit reported as committed.
pub const DELIVERING_COMMITTED: &str = "delivering an event of a committed transaction";

impl PublishError {
    /// Whether the transaction may be visible although shipping it failed: its commit failed
    /// (the broker may have logged the decision before it went away), or it was committed
    /// with a failed delivery. Every other failure comes before the commit, and the
    /// transaction is aborted.
    pub fn may_have_committed(&self) -> bool {
        matches!(self, PublishError::Kafka { context, .. }
            if context == COMMITTING || context == DELIVERING_COMMITTED)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoints from topic {topic}: {source}")]
    Read { topic: String, source: KafkaError },
    #[error("checkpoint of {table} in topic {topic} is not valid: {message}")]
    Corrupt {
        table: String,
        topic: String,
        message: String,
    },
}

/// What stops a table's worker, or fails one of its passes.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("table {table}: {source}")]
    Rule { table: String, source: RuleError },
    /// The table's shape changed in a way the replica cannot follow: this table stops, the
    /// others go on.
    #[error("table {table} stopped: {problem}")]
    Shape { table: String, problem: String },
}

impl WorkerError {
    /// Whether the error stops only its table: the producer's other tables go on.
    pub fn stops_only_the_table(&self) -> bool {
        matches!(
            self,
            WorkerError::Shape { .. } | WorkerError::Source(SourceError::NotInstalled { .. })
        )
    }
}

impl Classify for WorkerError {
    fn class(&self) -> ErrorClass {
        match self {
            WorkerError::Source(e) => e.class(),
            WorkerError::Registry(e) => e.class(),
            WorkerError::Topic(e) => e.class(),
            WorkerError::Publish(e) => e.class(),
            WorkerError::Checkpoint(e) => e.class(),
            // a derived schema the registry refuses, or a rule on a column the table lacks:
            // the table or the config must change
            WorkerError::Schema(_) | WorkerError::Rule { .. } | WorkerError::Shape { .. } => {
                ErrorClass::Fatal
            }
        }
    }
}

impl Classify for SourceError {
    fn class(&self) -> ErrorClass {
        match self {
            SourceError::Pg(e) => e.class(),
            SourceError::Catalog(e) => e.class(),
            SourceError::Value { source, .. } => source.class(),
            SourceError::NotInstalled { .. } => ErrorClass::Fatal,
            // the catalog read again sets the table up anew; read again if it did not change
            SourceError::ReadAsOtherType { .. } => ErrorClass::Transient,
        }
    }
}

impl Classify for PublishError {
    fn class(&self) -> ErrorClass {
        let transient = match self {
            PublishError::Kafka { source, .. } => match source {
                // a fatal transaction error ends that producer instance, not the worker: the
                // publisher starts a new one on the next try (unless it was fenced)
                KafkaError::Transaction(e) => !(e.is_fatal() && is_fenced(e.code())),
                other => kafka::is_transient(other) || matches!(other, KafkaError::Canceled),
            },
            PublishError::Encode(e) => return e.class(),
            PublishError::Fenced { .. } => false,
        };
        if transient {
            ErrorClass::Transient
        } else {
            ErrorClass::Fatal
        }
    }
}

/// A checkpoint that cannot be read or understood stops the worker: starting over without it
/// would ship the whole table again.
impl Classify for CheckpointError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Fatal
    }
}

/// Whether a fatal error means that another instance owns the transactional id now (or that
/// the role may not use it): a new instance would only fence that one, so the worker stops.
pub(crate) fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;

    fn publish(source: KafkaError) -> PublishError {
        PublishError::Kafka {
            context: "committing a transaction".into(),
            source,
        }
    }

    #[test]
    fn a_broker_away_is_retried_a_refused_transaction_stops_the_worker() {
        let away = publish(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        assert_eq!(away.class(), ErrorClass::Transient);
        assert!(WorkerError::from(away).is_transient());
        assert_eq!(publish(KafkaError::Canceled).class(), ErrorClass::Transient);
        let denied = publish(KafkaError::MessageProduction(
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ));
        assert_eq!(denied.class(), ErrorClass::Fatal);
        let fenced = PublishError::Fenced {
            reason: "ProducerFenced".into(),
        };
        assert_eq!(WorkerError::from(fenced).class(), ErrorClass::Fatal);
        assert!(is_fenced(RDKafkaErrorCode::ProducerFenced));
        assert!(!is_fenced(RDKafkaErrorCode::InvalidTransactionalState));
    }

    #[test]
    fn source_errors_keep_the_class_of_their_cause() {
        let bad_url = SourceError::Pg(PgError::BadUrl {
            url: "x".into(),
            message: "m".into(),
        });
        assert_eq!(bad_url.class(), ErrorClass::Fatal);
        let missing = SourceError::Catalog(CatalogError::NoPrimaryKey("public.media".into()));
        assert_eq!(WorkerError::from(missing).class(), ErrorClass::Fatal);
    }

    #[test]
    fn checkpoint_schema_and_rule_errors_are_fatal() {
        let corrupt = CheckpointError::Corrupt {
            table: "public.media".into(),
            topic: "t._checkpoints".into(),
            message: "version 9".into(),
        };
        assert_eq!(corrupt.class(), ErrorClass::Fatal);
        let read = CheckpointError::Read {
            topic: "t._checkpoints".into(),
            source: KafkaError::Canceled,
        };
        assert_eq!(WorkerError::from(read).class(), ErrorClass::Fatal);
        let unreachable = RegistryError::Unreachable {
            url: "http://r".into(),
            message: "refused".into(),
        };
        assert!(WorkerError::from(unreachable).is_transient());
        let clash = SchemaError::NameClash {
            table: "public.media".into(),
            a: "a-b".into(),
            b: "a_b".into(),
            field: "a_b".into(),
        };
        assert_eq!(WorkerError::from(clash).class(), ErrorClass::Fatal);
    }
}
