//! Whether the brokers let this client in, asked once at start-up: a refusal (a certificate
//! that does not verify, a SASL password or mechanism the brokers do not take) is fatal at
//! once, naming the brokers, what librdkafka said and what to check. A broker that is only
//! down is left to the retries of the work that follows.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;
use tracing::warn;

use crate::config::KafkaConfig;
use crate::fault::{Classify, ErrorClass};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("kafka at {brokers} refused this client: {reason}; {hint}")]
    Refused {
        brokers: String,
        reason: String,
        hint: &'static str,
    },
    #[error("cannot create a Kafka client for {brokers}: {source}")]
    Client { brokers: String, source: KafkaError },
}

impl Classify for AccessError {
    fn class(&self) -> ErrorClass {
        // the config must change: retrying with the same certificates or password cannot help
        ErrorClass::Fatal
    }
}

/// What to check after a refusal of kind `code`.
fn hint(code: RDKafkaErrorCode) -> &'static str {
    match code {
        RDKafkaErrorCode::SSL => {
            "check kafka.ssl_ca_location (the CA the brokers' certificates chain to), that the \
             certificates name the host in kafka.brokers, and that the brokers' port speaks TLS"
        }
        _ => {
            "check kafka.sasl_username, its password (kafka.sasl_password_file, \
             TUNNEL_KAFKA_PASSWORD or kafka.sasl_password) and kafka.sasl_mechanism"
        }
    }
}

/// Whether an error of this code is a refusal of this client (not a broker that is down).
fn refusal(code: Option<RDKafkaErrorCode>) -> Option<RDKafkaErrorCode> {
    code.filter(|c| {
        matches!(
            c,
            RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
        )
    })
}

/// The first refusal librdkafka reported as an event, and its last failure log line that says
/// the brokers refused this client (the events carry only a code, and not every failure has
/// one).
#[derive(Default)]
struct Refusals {
    first: Mutex<Option<(RDKafkaErrorCode, String)>>,
    failure: Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl ClientContext for Refusals {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" {
            // only what a retry cannot mend: librdkafka also says "SASL authentication error"
            // of a connection that merely went down
            let code = if message.contains("Authentication failed") {
                Some(RDKafkaErrorCode::Authentication)
            } else if message.contains("certificate verify failed") {
                Some(RDKafkaErrorCode::SSL)
            } else {
                None
            };
            if let Some(code) = code {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((code, message.to_string()));
            }
        }
        super::leader::forward(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match refusal(error.rdkafka_error_code()) {
            Some(code) => self.refused(code, Some(reason)),
            None => warn!(error = %error, reason, "kafka client error"),
        }
    }
}

impl ConsumerContext for Refusals {}

impl Refusals {
    fn refused(&self, code: RDKafkaErrorCode, reason: Option<&str>) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| (code, reason.unwrap_or_default().to_string()));
    }

    /// The refusal: an error event's (with the failure log line's text when the event had
    /// none), else the failure log line's alone (librdkafka does not always queue an event
    /// for a failed handshake).
    fn first(&self) -> Option<(RDKafkaErrorCode, String)> {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let event = self.first.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (event, failure) {
            (Some((code, reason)), _) if !reason.is_empty() => Some((code, reason)),
            (Some((code, _)), Some((_, text))) => Some((code, text)),
            (Some((code, _)), None) => Some((code, format!("{code:?}"))),
            (None, failure) => failure,
        }
    }
}

/// Asks the brokers for their metadata for up to `within`: `Ok` once they answer, or when
/// they did not refuse this client by then (down, or slow: the callers' own retries follow).
pub async fn check_access(kafka: &KafkaConfig, within: Duration) -> Result<(), AccessError> {
    let brokers = kafka.brokers.clone();
    let config = super::base_config(kafka);
    // a metadata request blocks its thread: not the runtime's
    let checked = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<Refusals> = config
            .create_with_context(Refusals::default())
            .map_err(|source| AccessError::Client {
                brokers: brokers.clone(),
                source,
            })?;
        let deadline = Instant::now() + within;
        loop {
            let answered = consumer
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok();
            // the errors librdkafka queued meanwhile come out of the consumer's queue
            while let Some(event) = consumer.poll(Duration::ZERO) {
                if let Err(e) = event {
                    if let Some(code) = refusal(e.rdkafka_error_code()) {
                        consumer.context().refused(code, None);
                    }
                }
            }
            if let Some((code, reason)) = consumer.context().first() {
                return Err(AccessError::Refused {
                    brokers,
                    reason,
                    hint: hint(code),
                });
            }
            if answered || Instant::now() >= deadline {
                return Ok(());
            }
        }
    })
    .await;
    checked.unwrap_or(Ok(()))
}
