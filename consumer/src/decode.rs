//! Turning Kafka messages into events: the Confluent frame, the writer schema from the
//! registry (cached by id), then the Avro body. Every failure is a [`DecodeError`] that names
//! what was wrong; nothing here panics on bad bytes.

use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::Schema;
use rustc_hash::FxHashMap;
use tunnel_shared::datum;
use tunnel_shared::event::{self, EnvelopeLayout, EventError, RecordLayout, TextEvent};
use tunnel_shared::fault::{Classify, ErrorClass};
use tunnel_shared::pgbinary::to_pg_text;
use tunnel_shared::registry::{Registry, RegistryError};
use tunnel_shared::schema::{self, FieldShape, SchemaError};
use tunnel_shared::wire::{self, WireError};

use crate::dlq::class;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
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
}

impl Classify for DecodeError {
    fn class(&self) -> ErrorClass {
        // a registry that is down holds the message back; anything else is this message's
        // fault: it goes to the DLQ
        match self {
            DecodeError::Registry { source, .. } if source.is_transient() => ErrorClass::Transient,
            _ => ErrorClass::Definite,
        }
    }
}

impl DecodeError {
    /// A short class name for logs and DLQ headers.
    pub fn class(&self) -> &'static str {
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
        }
    }
}

/// A writer schema with the shape of the rows it describes, and the direct readers of this
/// pipeline's own layouts (other layouts are decoded through apache-avro).
pub struct WriterSchema {
    pub id: u32,
    pub schema: Arc<Schema>,
    pub fields: Vec<FieldShape>,
    envelope: Option<EnvelopeLayout>,
    record: Option<RecordLayout>,
}

#[derive(Debug)]
pub struct DecodedMessage {
    /// The key in PostgreSQL's text form.
    pub key: Vec<Option<String>>,
    /// `None` for a tombstone.
    pub event: Option<(TextEvent, u32)>,
}

pub struct Decoder {
    registry: Arc<Registry>,
    shapes: FxHashMap<u32, Arc<WriterSchema>>,
}

impl Decoder {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            shapes: FxHashMap::default(),
        }
    }

    pub async fn writer(
        &mut self,
        id: u32,
        part: &'static str,
    ) -> Result<Arc<WriterSchema>, DecodeError> {
        if let Some(w) = self.shapes.get(&id) {
            return Ok(w.clone());
        }
        let schema = self
            .registry
            .schema(id)
            .await
            .map_err(|source| DecodeError::Registry { part, source })?;
        let fields = schema::row_fields(&schema, part)
            .map_err(|source| DecodeError::Schema { part, source })?;
        let envelope = EnvelopeLayout::of(&schema);
        let record = RecordLayout::of_key(&schema);
        let w = Arc::new(WriterSchema {
            id,
            schema,
            fields,
            envelope,
            record,
        });
        self.shapes.insert(id, w.clone());
        Ok(w)
    }

    fn avro(part: &'static str, id: u32) -> impl Fn(String) -> DecodeError {
        move |message| DecodeError::Avro {
            part,
            schema_id: id,
            message,
        }
    }

    /// The generic path: apache-avro values, then their text form.
    fn generic(w: &WriterSchema, body: &[u8], part: &'static str) -> Result<Value, DecodeError> {
        let mut reader = body;
        let value = apache_avro::from_avro_datum(&w.schema, &mut reader, None)
            .map_err(|e| Self::avro(part, w.id)(e.to_string()))?;
        if !reader.is_empty() {
            return Err(Self::avro(part, w.id)(format!(
                "{} bytes left over after the record",
                reader.len()
            )));
        }
        Ok(value)
    }

    fn texts(
        w: &WriterSchema,
        values: &[Value],
        part: &'static str,
    ) -> Result<Vec<Option<String>>, DecodeError> {
        values
            .iter()
            .zip(&w.fields)
            .map(|(v, f)| {
                to_pg_text(v, f.scale)
                    .map_err(|m| Self::avro(part, w.id)(format!("field {}: {m}", f.field)))
            })
            .collect()
    }

    /// A key in text form, with its writer schema.
    pub async fn key(
        &mut self,
        bytes: &[u8],
    ) -> Result<(Vec<Option<String>>, Arc<WriterSchema>), DecodeError> {
        let part = "key";
        let (id, body) = wire::parse(bytes).map_err(|source| DecodeError::Wire { part, source })?;
        let w = self.writer(id, part).await?;
        let key = match &w.record {
            Some(layout) => {
                let mut r = datum::Reader::new(body);
                let key = layout.read(&mut r).map_err(Self::avro(part, id))?;
                if r.remaining() > 0 {
                    return Err(Self::avro(part, id)(format!(
                        "{} bytes left over after the key",
                        r.remaining()
                    )));
                }
                key
            }
            None => {
                let values = event::decode_key(Self::generic(&w, body, part)?)
                    .map_err(|source| DecodeError::Event { part, source })?;
                Self::texts(&w, &values, part)?
            }
        };
        Ok((key, w))
    }

    /// An event with its row in text form, with its writer schema.
    pub async fn value(
        &mut self,
        bytes: &[u8],
    ) -> Result<(TextEvent, Arc<WriterSchema>), DecodeError> {
        let part = "value";
        let (id, body) = wire::parse(bytes).map_err(|source| DecodeError::Wire { part, source })?;
        let w = self.writer(id, part).await?;
        let event = match &w.envelope {
            Some(layout) => layout.read(body).map_err(Self::avro(part, id))?,
            None => {
                let ev = event::decode_envelope(Self::generic(&w, body, part)?)
                    .map_err(|source| DecodeError::Event { part, source })?;
                let after = match &ev.after {
                    Some(row) => Some(Self::texts(&w, row, part)?),
                    None => None,
                };
                TextEvent { op: ev.op, after }
            }
        };
        Ok((event, w))
    }
}
