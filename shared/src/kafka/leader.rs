//! Noticing a partition that librdkafka will never deliver to or fetch from again.
//!
//! librdkafka 2.12 (and later, confluentinc/librdkafka#5430) skips a metadata update that
//! names no leader for a partition (a broker fenced by the controller after a long pause or a
//! network partition) and logs `METADATAUPDATE ... new leader-1 not found in cache`. The
//! partition can then stay without a leader in that client for good, even after the broker is
//! back: a producer's deliveries time out one transaction after another, a consumer fetches
//! nothing. Only a new client instance recovers, so the clients watch their log for that line
//! and replace themselves when the partition does not recover by itself.

use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::config::RDKafkaLogLevel;
use tracing::{debug, error, info, warn};

/// Whether a librdkafka log line says a metadata update left a partition without a leader.
fn strands_a_partition(fac: &str, message: &str) -> bool {
    fac == "METADATAUPDATE" && message.contains("new leader-1 not found in cache")
}

/// Passes a librdkafka log line on to `tracing` at its level.
pub(super) fn forward(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Debug => debug!(fac, "librdkafka: {message}"),
        RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => info!(fac, "librdkafka: {message}"),
        RDKafkaLogLevel::Warning => warn!(fac, "librdkafka: {message}"),
        _ => error!(fac, "librdkafka: {message}"),
    }
}

/// Set once a client's log said a partition was left without a leader (see the module
/// documentation); a client context holds one and passes its log lines through it.
#[derive(Debug, Default)]
pub struct LeaderWatch {
    stranded: AtomicBool,
}

impl LeaderWatch {
    /// Looks at a log line of the client, then passes it on to `tracing`.
    pub fn observe(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if strands_a_partition(fac, message) {
            self.stranded.store(true, Ordering::Relaxed);
        }
        forward(level, fac, message);
    }

    /// Whether the client's log said so since it was created.
    pub fn stranded(&self) -> bool {
        self.stranded.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_leader_strands_a_partition() {
        let watch = LeaderWatch::default();
        watch.observe(
            RDKafkaLogLevel::Warning,
            "METADATAUPDATE",
            "Partition t(AAAAAAAAAAAAAAAAAAAAAA)[0]: new leader2 not found in cache",
        );
        watch.observe(
            RDKafkaLogLevel::Warning,
            "FAIL",
            "localhost:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused",
        );
        assert!(!watch.stranded());
        watch.observe(
            RDKafkaLogLevel::Warning,
            "METADATAUPDATE",
            "Partition t(AAAAAAAAAAAAAAAAAAAAAA)[3]: new leader-1 not found in cache",
        );
        assert!(watch.stranded());
    }
}
