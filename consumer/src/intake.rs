//! Turning consumed messages into items: decoded events that pass their table's validation
//! rules, or DLQ entries that say why not. Used by the consumer loop and by `dlq replay`, so a
//! replayed entry is judged exactly as a fresh one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};
use tunnel_shared::fault::Classify;
use tunnel_shared::key::KeyText;
use tunnel_shared::metrics::{metrics, Dependency};
use tunnel_shared::registry::RegistryError;
use tunnel_shared::retry::Backoff;
use tunnel_shared::rules::{self, CompiledRule, Rule};

use crate::decode::Decoder;
use crate::error::DecodeError;
use crate::model::{class, DecodedMessage, Entry, Item, Rejected, WriterSchema};

/// A message as consumed.
pub(crate) struct Raw {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
}

/// A consumed message as the collector reads it: the message, its Kafka timestamp (ms) and
/// whether it is a heartbeat of the producer.
pub(crate) struct Consumed {
    pub(crate) raw: Raw,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) heartbeat: bool,
}

/// A decoded message with its key's and value's writer schemas.
type Decoded = (DecodedMessage, Arc<WriterSchema>, Option<Arc<WriterSchema>>);

/// A table's rules compiled against one value schema, or why they do not fit it.
type Compiled = Result<Arc<Vec<CompiledRule>>, String>;

pub(crate) struct Intake {
    decoder: Decoder,
    /// The validation rules of each topic, and their compiled form per value schema id (or
    /// why they do not fit that schema).
    rules: HashMap<Arc<str>, Vec<Rule>>,
    compiled: HashMap<(Arc<str>, u32), Compiled>,
    /// Schema ids the registry did not know when first asked (asked again once, a second later).
    unknown_ids: HashSet<u32>,
}

impl Intake {
    pub(crate) fn new(decoder: Decoder, rules: HashMap<Arc<str>, Vec<Rule>>) -> Self {
        Self {
            decoder,
            rules,
            compiled: HashMap::new(),
            unknown_ids: HashSet::new(),
        }
    }

    /// Decodes and validates a message.
    pub(crate) async fn take(&mut self, raw: Raw) -> Item {
        match self.decode(raw).await {
            Item::Event(e) => self.validate(e),
            rejected => rejected,
        }
    }

    /// Decodes a message; what cannot be decoded becomes a DLQ entry. Only a registry that
    /// cannot be reached is waited for (with back-off), since it says nothing of the message.
    async fn decode(&mut self, raw: Raw) -> Item {
        let mut backoff = Backoff::default();
        loop {
            match self.decode_parts(&raw).await {
                Ok(decoded) => return Item::Event(entry(raw, decoded)),
                Err((_, e)) if e.is_transient() => {
                    if matches!(e, DecodeError::Registry { .. }) {
                        metrics().dependency(Dependency::Registry, false);
                    }
                    backoff
                        .wait_after("decoding needs the registry and the target", &e)
                        .await;
                }
                Err((
                    _,
                    DecodeError::Registry {
                        source: RegistryError::UnknownId(id),
                        ..
                    },
                )) if self.unknown_ids.insert(id) => {
                    // a schema registered a moment ago may not be visible everywhere yet
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err((key, e)) => return Item::Rejected(undecodable(raw, key, &e)),
            }
        }
    }

    /// The key, the event and their writer schemas; on failure, the key when it could be
    /// decoded (the DLQ entry names it).
    async fn decode_parts(&mut self, raw: &Raw) -> Result<Decoded, (Option<KeyText>, DecodeError)> {
        let Some(key_bytes) = raw.key.as_deref() else {
            return Err((None, DecodeError::NoKey));
        };
        let (key, key_schema) = self.decoder.key(key_bytes).await.map_err(|e| (None, e))?;
        let (event, value_schema) = match raw.value.as_deref() {
            None => (None, None),
            Some(v) => match self.decoder.value(v).await {
                Ok((event, w)) => (Some((event, w.id)), Some(w)),
                Err(e) => return Err((Some(key), e)),
            },
        };
        let message = DecodedMessage { key, event };
        Ok((message, key_schema, value_schema))
    }

    /// Checks an event's row against its table's rules.
    fn validate(&mut self, e: Entry) -> Item {
        let Some(table_rules) = self.rules.get(&e.topic).filter(|r| !r.is_empty()) else {
            return Item::Event(e);
        };
        let Some(vs) = &e.value_schema else {
            return Item::Event(e);
        };
        let row = match e.row_text() {
            None => return Item::Event(e),
            Some(Ok(row)) => row,
            Some(Err(m)) => {
                let reason = DecodeError::Avro {
                    part: "value",
                    schema_id: vs.id,
                    message: m,
                };
                return Item::Rejected(e.rejected(reason.dlq_class(), reason.to_string()));
            }
        };
        let slot = (e.topic.clone(), vs.id);
        if !self.compiled.contains_key(&slot) {
            let columns: Vec<(&str, &str)> = vs
                .fields
                .iter()
                .map(|f| (f.column.as_str(), f.pg_type.as_str()))
                .collect();
            let c = rules::compile(table_rules, &columns)
                .map(Arc::new)
                .map_err(|err| format!("{err} (in value schema {})", vs.id));
            self.compiled.insert(slot.clone(), c);
        }
        let Some(compiled) = self.compiled.get(&slot) else {
            return Item::Event(e);
        };
        let (reason, rule) = match compiled {
            Ok(c) => match rules::check(c, &row) {
                Ok(()) => return Item::Event(e),
                Err(v) => (v.reason, Some(v.rule)),
            },
            Err(problem) => (problem.clone(), None),
        };
        debug!(topic = %e.topic, partition = e.partition, offset = e.offset, reason = %reason, "row breaks a rule, it goes to the DLQ");
        let mut r = e.rejected(class::RULE, reason);
        r.rule = rule;
        Item::Rejected(r)
    }
}

/// A decoded message as an entry.
fn entry(raw: Raw, (message, key_schema, value_schema): Decoded) -> Entry {
    Entry {
        topic: raw.topic,
        partition: raw.partition,
        offset: raw.offset,
        message,
        key_schema,
        value_schema,
        key_bytes: raw.key,
        value_bytes: raw.value,
    }
}

/// A message that does not decode, on its way to the DLQ; `key` when it could be decoded.
fn undecodable(raw: Raw, key: Option<KeyText>, e: &DecodeError) -> Rejected {
    warn!(topic = %raw.topic, partition = raw.partition, offset = raw.offset, class = e.dlq_class(), error = %e, "message cannot be decoded, it goes to the DLQ");
    Rejected {
        topic: raw.topic,
        partition: raw.partition,
        offset: raw.offset,
        key_bytes: raw.key,
        value_bytes: raw.value,
        key,
        class: e.dlq_class(),
        reason: e.to_string(),
        rule: None,
        replay_of: None,
    }
}
