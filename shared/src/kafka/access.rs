//! Whether the brokers let this client in, asked once at start-up: a refusal (a certificate
//! that does not verify, a SASL password or mechanism the brokers do not take) is fatal at
//! once, naming the brokers, what librdkafka said and what to check. A broker that is only
//! down is left to the retries of the work that follows.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The first refusal librdkafka reported; other errors are logged as they come.
#[derive(Default)]
struct Refusals(Mutex<Option<(RDKafkaErrorCode, String)>>);

impl ClientContext for Refusals {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(
                code @ (RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed),
            ) => {
                let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert((code, reason.to_string()));
            }
            _ => warn!(error = %error, reason, "kafka client error"),
        }
    }
}

impl ConsumerContext for Refusals {}

impl Refusals {
    fn first(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
            // the errors librdkafka queued meanwhile reach the context when polled
            let _ = consumer.poll(Duration::ZERO);
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
