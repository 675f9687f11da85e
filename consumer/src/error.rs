//! The consumer's errors, and how each is classed (see `tunnel_shared::fault`): transient ones
//! are retried with back-off and never skipped; definite ones concern one message, which goes
//! to the DLQ; fatal ones stop the process with a message for the operator. An error that
//! reaches the top of a command stops it whatever its class: a transient one there has outlasted
//! its retries.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tunnel_shared::catalog::CatalogError;
use tunnel_shared::event::EventError;
use tunnel_shared::fault::{Classify, ErrorClass};
use tunnel_shared::kafka::{self, TopicError};
use tunnel_shared::pg::PgError;
use tunnel_shared::registry::RegistryError;
use tunnel_shared::schema::SchemaError;
use tunnel_shared::wire::WireError;

use crate::evolve::EvolveError;
use crate::model::class;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("{part}: {source}")]
    Wire {
        part: &'static str,
        source: WireError,
    },
    #[error("{part}: {source}")]
    Registry {
        part: &'static str,
        source: RegistryError,
    },
    #[error("{part}: Avro body does not decode with writer schema {schema_id}: {message}")]
    Avro {
        part: &'static str,
        schema_id: u32,
        message: String,
    },
    #[error("{part}: {source}")]
    Event {
        part: &'static str,
        source: EventError,
    },
    #[error("{part}: {source}")]
    Schema {
        part: &'static str,
        source: SchemaError,
    },
    #[error("message has no key")]
    NoKey,
    /// The target could not be asked which of the schema's types it has.
    #[error("{part}: {source}")]
    TargetTypes { part: &'static str, source: PgError },
}

impl Classify for DecodeError {
    fn class(&self) -> ErrorClass {
        // a registry that does not answer, refuses this consumer (401, 403, another refusal)
        // or cannot be asked (its CA file) holds the message back until it can be read; only a
        // schema id the registry does not have, or a schema that is no usable Avro, is this
        // message's fault, as is anything else: it goes to the DLQ
        match self {
            DecodeError::Registry {
                source: RegistryError::UnknownId(_) | RegistryError::BadSchema { .. },
                ..
            } => ErrorClass::Definite,
            DecodeError::Registry { .. } => ErrorClass::Transient,
            DecodeError::TargetTypes { .. } => ErrorClass::Transient,
            _ => ErrorClass::Definite,
        }
    }
}

impl DecodeError {
    /// The DLQ class of a message that fails so: a short name for logs and DLQ headers.
    pub(crate) fn dlq_class(&self) -> &'static str {
        match self {
            DecodeError::Wire { .. } | DecodeError::NoKey => class::WIRE_FORMAT,
            DecodeError::Registry {
                source: RegistryError::UnknownId(_),
                ..
            } => class::UNKNOWN_SCHEMA,
            // a schema the registry holds but that is not usable Avro
            DecodeError::Registry { .. } => class::NOT_AN_EVENT,
            DecodeError::Avro { .. } => class::AVRO_DECODE,
            DecodeError::Event { .. } | DecodeError::Schema { .. } => class::NOT_AN_EVENT,
            // transient: held back, never dead-lettered
            DecodeError::TargetTypes { .. } => class::NOT_AN_EVENT,
        }
    }
}

/// Writing to a DLQ topic failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DlqError {
    #[error("writing to the DLQ topic {topic}: {source}")]
    Send { topic: String, source: KafkaError },
    #[error(transparent)]
    Topic(#[from] TopicError),
}

impl Classify for DlqError {
    fn class(&self) -> ErrorClass {
        // a DLQ that cannot be written holds the batch back: it is never skipped. Kafka down
        // or busy is waited out; what no retry can change (an entry larger than the topic
        // takes, a role that may not write or create the topic) stops the consumer, which
        // says why, instead of retrying for ever
        match self {
            DlqError::Send { source, .. } => match source.rdkafka_error_code() {
                Some(
                    RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::MessageBatchTooLarge
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::InvalidTopic,
                ) => ErrorClass::Fatal,
                _ => ErrorClass::Transient,
            },
            DlqError::Topic(e) => e.class(),
        }
    }
}

/// Applying a batch failed; the transaction rolled back and nothing of the batch is applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// The target refused a step of a schema change.
    #[error(transparent)]
    Ddl(Box<DdlRefused>),
    /// A schema change the replica cannot follow.
    #[error("table {table}: {source}")]
    Evolve { table: String, source: EvolveError },
}

impl ApplyError {
    /// Whether the target has no table (or bookkeeping table) that the batch needs: dropped
    /// by hand while the consumer ran.
    pub(crate) fn table_missing(&self) -> bool {
        matches!(self, ApplyError::Pg(e) if e.sqlstate() == Some("42P01"))
    }

    /// Whether a `COPY` was refused at its start, which leaves the connection out of step
    /// with the server (rust-postgres#1337): it must not be used again.
    pub(crate) fn copy_refused(&self) -> bool {
        matches!(self, ApplyError::Pg(PgError::Query { context, .. }) if context.starts_with(crate::rows::COPY_REFUSED))
    }
}

impl Classify for ApplyError {
    fn class(&self) -> ErrorClass {
        match self {
            ApplyError::Pg(e) => e.class(),
            ApplyError::Dlq(e) => e.class(),
            // a lost connection or a lock timeout is tried again; a refusal (a value that
            // does not convert, a cast that does not exist) is not, however often
            ApplyError::Ddl(refused) => match refused.source.class() {
                ErrorClass::Transient => ErrorClass::Transient,
                _ => ErrorClass::Fatal,
            },
            ApplyError::Evolve { .. } => ErrorClass::Fatal,
        }
    }
}

/// A step of a schema change that the target refused, with what to do.
#[derive(Debug, thiserror::Error)]
#[error("table {table}, column {column}: the target refused to change {change} ({source}); {hint}")]
pub(crate) struct DdlRefused {
    pub(crate) table: String,
    pub(crate) column: String,
    pub(crate) change: String,
    pub(crate) hint: String,
    pub(crate) source: PgError,
}

/// What stops `tunnel-consumer run`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("config: {0}")]
    Rules(String),
    #[error("the collecting task ended abnormally: {0}")]
    Collector(String),
    #[error(transparent)]
    Dlq(#[from] DlqError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl Classify for RunError {
    fn class(&self) -> ErrorClass {
        match self {
            RunError::Pg(e) => e.class(),
            RunError::Registry(e) => e.class(),
            RunError::Topic(e) => e.class(),
            RunError::Dlq(e) => e.class(),
            RunError::Apply(e) => e.class(),
            // a consumer that cannot be created or subscribe, rules that do not fit the table,
            // a task that panicked: nothing works until someone looks
            RunError::Kafka(_) | RunError::Rules(_) | RunError::Collector(_) => ErrorClass::Fatal,
        }
    }
}

/// What the `dlq` commands can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DlqCliError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("reading the DLQ: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Dlq(#[from] DlqError),
    #[error("no table {0} in the config")]
    NoSuchTable(String),
    #[error("config: {0}")]
    Config(String),
}

impl Classify for DlqCliError {
    fn class(&self) -> ErrorClass {
        match self {
            DlqCliError::Pg(e) => e.class(),
            DlqCliError::Kafka(e) => kafka_class(e),
            DlqCliError::Registry(e) => e.class(),
            DlqCliError::Dlq(e) => e.class(),
            DlqCliError::NoSuchTable(_) | DlqCliError::Config(_) => ErrorClass::Fatal,
        }
    }
}

/// What `tunnel-consumer verify` can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("no table {0} in the config")]
    NoSuchTable(String),
    #[error("table {table}: the replica {target} does not exist in the target")]
    NoReplica { table: String, target: String },
    #[error("asking the producer for a repair: {0}")]
    Repair(#[from] KafkaError),
}

impl Classify for VerifyError {
    fn class(&self) -> ErrorClass {
        match self {
            VerifyError::Pg(e) => e.class(),
            VerifyError::Catalog(e) => e.class(),
            VerifyError::Repair(e) => kafka_class(e),
            VerifyError::NoSuchTable(_) | VerifyError::NoReplica { .. } => ErrorClass::Fatal,
        }
    }
}

/// A Kafka client's error: transient when the cluster may answer later, else fatal (a topic
/// or a permission that an operator has to grant).
fn kafka_class(e: &KafkaError) -> ErrorClass {
    if kafka::is_transient(e) {
        ErrorClass::Transient
    } else {
        ErrorClass::Fatal
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    fn unreachable() -> RegistryError {
        RegistryError::Unreachable {
            url: "http://r".into(),
            message: "refused".into(),
        }
    }

    fn bad_url() -> PgError {
        PgError::BadUrl {
            url: "x".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn a_message_that_does_not_decode_goes_to_the_dlq_unless_the_registry_is_down() {
        let down = DecodeError::Registry {
            part: "value",
            source: unreachable(),
        };
        assert_eq!(down.class(), ErrorClass::Transient);
        // a registry that refuses this consumer is no fault of the message
        for (message, retryable) in [
            ("401 Unauthorized", false),
            ("403 Forbidden", false),
            ("400 Bad Request", false),
        ] {
            let refused = DecodeError::Registry {
                part: "value",
                source: RegistryError::Refused {
                    what: "schema 7".into(),
                    message: message.into(),
                    retryable,
                },
            };
            assert_eq!(refused.class(), ErrorClass::Transient, "{message}");
        }
        let setup = DecodeError::Registry {
            part: "key",
            source: RegistryError::Setup {
                url: "https://r".into(),
                message: "ca_file unreadable".into(),
            },
        };
        assert_eq!(setup.class(), ErrorClass::Transient);
        let unknown = DecodeError::Registry {
            part: "value",
            source: RegistryError::UnknownId(7),
        };
        assert_eq!(unknown.class(), ErrorClass::Definite);
        assert_eq!(unknown.dlq_class(), class::UNKNOWN_SCHEMA);
        assert_eq!(DecodeError::NoKey.class(), ErrorClass::Definite);
        assert_eq!(DecodeError::NoKey.dlq_class(), class::WIRE_FORMAT);
        let avro = DecodeError::Avro {
            part: "key",
            schema_id: 1,
            message: "m".into(),
        };
        assert_eq!(avro.dlq_class(), class::AVRO_DECODE);
    }

    #[test]
    fn a_dlq_that_cannot_be_written_holds_the_batch_back() {
        let send = || DlqError::Send {
            topic: "t.dlq".into(),
            source: KafkaError::Canceled,
        };
        assert_eq!(send().class(), ErrorClass::Transient);
        assert_eq!(ApplyError::Dlq(send()).class(), ErrorClass::Transient);
        assert_eq!(
            RunError::Apply(ApplyError::Dlq(send())).class(),
            ErrorClass::Transient
        );
        assert_eq!(ApplyError::Pg(bad_url()).class(), ErrorClass::Fatal);
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            let never = DlqError::Send {
                topic: "t.dlq".into(),
                source: KafkaError::MessageProduction(code),
            };
            assert_eq!(
                ApplyError::Dlq(never).class(),
                ErrorClass::Fatal,
                "{code:?}"
            );
        }
        let busy = DlqError::Send {
            topic: "t.dlq".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut),
        };
        assert_eq!(busy.class(), ErrorClass::Transient);
    }

    #[test]
    fn a_refused_schema_change_stops_the_consumer_unless_the_target_was_away() {
        let refused = |source| {
            ApplyError::Ddl(Box::new(DdlRefused {
                table: "public.media".into(),
                column: "format".into(),
                change: "its type from text to integer".into(),
                hint: "convert it by hand".into(),
                source,
            }))
        };
        let e = refused(bad_url());
        assert_eq!(e.class(), ErrorClass::Fatal);
        let text = e.to_string();
        for part in ["public.media", "format", "text to integer", "by hand"] {
            assert!(text.contains(part), "{text}");
        }
        let gone = ApplyError::Evolve {
            table: "public.media".into(),
            source: EvolveError::KeyColumnGone {
                column: "id".into(),
            },
        };
        assert_eq!(gone.class(), ErrorClass::Fatal);
    }

    #[test]
    fn config_and_missing_tables_are_fatal() {
        assert_eq!(RunError::Rules("r".into()).class(), ErrorClass::Fatal);
        assert_eq!(RunError::Collector("c".into()).class(), ErrorClass::Fatal);
        assert_eq!(
            RunError::Registry(unreachable()).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            DlqCliError::NoSuchTable("t".into()).class(),
            ErrorClass::Fatal
        );
        assert_eq!(DlqCliError::Pg(bad_url()).class(), ErrorClass::Fatal);
        let missing = VerifyError::NoReplica {
            table: "public.t".into(),
            target: "public.t".into(),
        };
        assert_eq!(missing.class(), ErrorClass::Fatal);
        assert_eq!(
            VerifyError::NoSuchTable("t".into()).class(),
            ErrorClass::Fatal
        );
    }

    #[test]
    fn kafka_errors_are_transient_only_while_the_cluster_may_answer() {
        let down = KafkaError::AdminOp(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(DlqCliError::Kafka(down).class(), ErrorClass::Transient);
        let denied = KafkaError::AdminOp(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert_eq!(VerifyError::Repair(denied).class(), ErrorClass::Fatal);
    }
}
