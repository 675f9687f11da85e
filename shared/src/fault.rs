//! How every error of the pipeline is classed, and the classes of this library's errors.
//!
//! Each error is one of three kinds, and what a stage does with it follows from the kind alone:
//! - **transient**: the same operation may succeed later (a connection refused, a broker or a
//!   database restarting, a lock or statement timeout): retried with back-off, never skipped;
//! - **definite**: this input is bad (a message that does not decode, a value the target
//!   refuses, a schema id the registry does not know): trying again fails the same way, so the
//!   input goes to the DLQ, or is skipped with a record, and the stage goes on;
//! - **fatal**: nothing will work until an operator acts (a bad URL, a refused password, a
//!   missing table or privilege, a config the pipeline cannot honour): the stage stops with a
//!   message that says what to do.
//!
//! The classes of the library's errors are all here. Errors whose kind depends on who met
//! them (a derived schema that does not work is the producer's fatal problem but a bad message
//! for the consumer; a rule that does not compile is a config problem) are classed by the
//! crate that wraps them.

use crate::catalog::CatalogError;
use crate::config::ConfigError;
use crate::event::EventError;
use crate::kafka::{self, TopicError};
use crate::pg::PgError;
use crate::pgbinary::ValueError;
use crate::registry::RegistryError;
use crate::wire::WireError;

/// What a stage does with an error; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with back-off.
    Transient,
    /// This input is bad: dead-letter it or skip it with a record, then go on.
    Definite,
    /// Stop, telling the operator what to do.
    Fatal,
}

impl ErrorClass {
    /// The class's name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Definite => "definite",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// Every error of the pipeline knows its class.
pub trait Classify {
    fn class(&self) -> ErrorClass;

    /// Whether the same operation may succeed later.
    fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

/// Transient when trying again can help, else `otherwise`.
fn transient_or(transient: bool, otherwise: ErrorClass) -> ErrorClass {
    if transient {
        ErrorClass::Transient
    } else {
        otherwise
    }
}

impl Classify for PgError {
    fn class(&self) -> ErrorClass {
        match self {
            PgError::BadUrl { .. } | PgError::Tls { .. } => ErrorClass::Fatal,
            // a refused password or an unknown database stays so until someone acts
            PgError::Connect { source, .. } => {
                transient_or(pg_transient(source), ErrorClass::Fatal)
            }
            PgError::Query { source, .. } => match source.code().map(|c| c.code()) {
                // data exception or integrity constraint: this row, not the statement
                Some(c) if c.starts_with("22") || c.starts_with("23") => ErrorClass::Definite,
                _ => transient_or(pg_transient(source), ErrorClass::Fatal),
            },
        }
    }
}

/// Connection failures, server shutdowns, timeouts, lock waits and serialization failures can
/// succeed later; anything else (syntax, permissions, constraint violations) cannot.
fn pg_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // no SQLSTATE: transient only if the connection broke (I/O), not for a client-side
        // error such as a parameter that cannot be bound
        None => {
            let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
            // a certificate refused in the TLS handshake comes as an I/O error too: it stays
            // refused until an operator changes the CA file, the sslmode or the server
            let tls_refused = io
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>());
            e.is_closed() || (io.is_some() && !tls_refused)
        }
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57") // operator intervention: shutdown, statement_timeout
                || c == "40001" // serialization failure
                || c == "40P01" // deadlock
                || c == "55P03" // lock_not_available (lock_timeout)
        }
    }
}

impl Classify for RegistryError {
    fn class(&self) -> ErrorClass {
        match self {
            RegistryError::Unreachable { .. } => ErrorClass::Transient,
            RegistryError::Refused { retryable, .. } => transient_or(*retryable, ErrorClass::Fatal),
            // a message that names a schema the registry does not have, or cannot use
            RegistryError::UnknownId(_) | RegistryError::BadSchema { .. } => ErrorClass::Definite,
            // a CA file that cannot be read, credentials that cannot be sent
            RegistryError::Setup { .. } => ErrorClass::Fatal,
        }
    }
}

impl Classify for CatalogError {
    fn class(&self) -> ErrorClass {
        match self {
            CatalogError::Pg(e) => e.class(),
            CatalogError::NotFound(_)
            | CatalogError::NoPrimaryKey(_)
            | CatalogError::NoSelect(_)
            | CatalogError::BadWatermark { .. } => ErrorClass::Fatal,
        }
    }
}

impl Classify for TopicError {
    fn class(&self) -> ErrorClass {
        match self {
            TopicError::Client { .. } => ErrorClass::Transient,
            TopicError::Create { source, .. } => {
                transient_or(kafka::is_transient(source), ErrorClass::Fatal)
            }
        }
    }
}

impl Classify for ConfigError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Fatal
    }
}

impl Classify for WireError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Definite
    }
}

impl Classify for EventError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Definite
    }
}

impl Classify for ValueError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Definite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors() {
        let unreachable = RegistryError::Unreachable {
            url: "http://r".into(),
            message: "refused".into(),
        };
        assert_eq!(unreachable.class(), ErrorClass::Transient);
        assert!(unreachable.is_transient());
        let refused = |retryable| RegistryError::Refused {
            what: "x".into(),
            message: "m".into(),
            retryable,
        };
        assert_eq!(refused(true).class(), ErrorClass::Transient);
        assert_eq!(refused(false).class(), ErrorClass::Fatal);
        assert_eq!(RegistryError::UnknownId(7).class(), ErrorClass::Definite);
    }

    #[test]
    fn catalog_and_url_errors_are_fatal() {
        assert_eq!(
            CatalogError::NoPrimaryKey("t".into()).class(),
            ErrorClass::Fatal
        );
        let bad = PgError::BadUrl {
            url: "x".into(),
            message: "m".into(),
        };
        assert_eq!(bad.class(), ErrorClass::Fatal);
        assert_eq!(CatalogError::Pg(bad).class(), ErrorClass::Fatal);
    }

    #[test]
    fn topic_errors() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let down = KafkaError::AdminOp(RDKafkaErrorCode::AllBrokersDown);
        let create = |source| TopicError::Create {
            topic: "t".into(),
            source,
        };
        assert_eq!(create(down).class(), ErrorClass::Transient);
        let denied = KafkaError::AdminOp(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert_eq!(create(denied).class(), ErrorClass::Fatal);
    }

    #[test]
    fn bad_input_is_definite() {
        assert_eq!(WireError::TooShort(3).class(), ErrorClass::Definite);
        assert_eq!(ErrorClass::Definite.as_str(), "definite");
    }
}
