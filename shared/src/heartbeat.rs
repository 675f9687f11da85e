//! Heartbeats: while streaming, the producer sends one record to every partition of a table's
//! topic every `producer.heartbeat_interval_ms`, in a transaction of its own. The consumer
//! measures its lag from the Kafka timestamp of the newest record it applied, heartbeat or
//! event; without heartbeats an idle source would make a stalled consumer look current.
//!
//! A heartbeat has [`KEY`] as key (not our wire format: readers of keys skip it), no value
//! (a tombstone: compaction removes it) and the header [`HEADER`].

/// The header that marks a heartbeat; its value is the producer's version.
pub const HEADER: &str = "tunnel.heartbeat";

/// The key of every heartbeat.
pub const KEY: &[u8] = b"tunnel.heartbeat";

/// Whether a message with this key and these header names is a heartbeat.
pub fn is_heartbeat<'a>(
    key: Option<&[u8]>,
    mut header_names: impl Iterator<Item = &'a str>,
) -> bool {
    key == Some(KEY) && header_names.any(|h| h == HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_and_the_header_together_make_a_heartbeat() {
        assert!(is_heartbeat(Some(KEY), ["x", HEADER].into_iter()));
        assert!(!is_heartbeat(Some(KEY), ["x"].into_iter()));
        assert!(!is_heartbeat(Some(b"\0\0\0\0\x01k"), [HEADER].into_iter()));
        assert!(!is_heartbeat(None, [HEADER].into_iter()));
        // not our wire format: a reader of keys skips it
        assert!(crate::wire::parse(KEY).is_err());
    }
}
