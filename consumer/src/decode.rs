//! Turning Kafka messages into events: the Confluent frame, the writer schema from the
//! registry (cached by id), then the Avro body. Every failure is a [`DecodeError`] that names
//! what was wrong; nothing here panics on bad bytes.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::Schema;
use tunnel_shared::event::{self, DecodedEvent, EventError};
use tunnel_shared::registry::{Registry, RegistryError};
use tunnel_shared::retry::Retryable;
use tunnel_shared::schema::{self, FieldShape, SchemaError};
use tunnel_shared::wire::{self, WireError};

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

impl Retryable for DecodeError {
    fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::Registry { source, .. } if source.is_retryable())
    }
}

impl DecodeError {
    /// A short class name for logs and DLQ headers.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Wire { .. } | DecodeError::NoKey => "wire_format",
            DecodeError::Registry {
                source: RegistryError::UnknownId(_),
                ..
            } => "unknown_schema",
            DecodeError::Registry { .. } => "registry",
            DecodeError::Avro { .. } => "avro_decode",
            DecodeError::Event { .. } | DecodeError::Schema { .. } => "not_an_event",
        }
    }
}

/// A writer schema with the shape of the rows it describes.
pub struct WriterSchema {
    pub id: u32,
    pub schema: Arc<Schema>,
    pub fields: Vec<FieldShape>,
}

#[derive(Debug)]
pub struct DecodedMessage {
    pub key: Vec<Value>,
    pub key_schema: u32,
    /// `None` for a tombstone.
    pub event: Option<(DecodedEvent, u32)>,
}

pub struct Decoder {
    registry: Arc<Registry>,
    shapes: HashMap<u32, Arc<WriterSchema>>,
}

impl Decoder {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            shapes: HashMap::new(),
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
        let w = Arc::new(WriterSchema { id, schema, fields });
        self.shapes.insert(id, w.clone());
        Ok(w)
    }

    async fn body(
        &mut self,
        bytes: &[u8],
        part: &'static str,
    ) -> Result<(Value, u32), DecodeError> {
        let (id, body) = wire::parse(bytes).map_err(|source| DecodeError::Wire { part, source })?;
        let w = self.writer(id, part).await?;
        let mut reader = body;
        let value = apache_avro::from_avro_datum(&w.schema, &mut reader, None).map_err(|e| {
            DecodeError::Avro {
                part,
                schema_id: id,
                message: e.to_string(),
            }
        })?;
        if !reader.is_empty() {
            return Err(DecodeError::Avro {
                part,
                schema_id: id,
                message: format!("{} bytes left over after the record", reader.len()),
            });
        }
        Ok((value, id))
    }

    pub async fn decode(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<DecodedMessage, DecodeError> {
        let key_bytes = key.ok_or(DecodeError::NoKey)?;
        let (k, key_schema) = self.body(key_bytes, "key").await?;
        let key = event::decode_key(k).map_err(|source| DecodeError::Event {
            part: "key",
            source,
        })?;
        let event = match value {
            None => None,
            Some(v) => {
                let (value, id) = self.body(v, "value").await?;
                let ev = event::decode_envelope(value).map_err(|source| DecodeError::Event {
                    part: "value",
                    source,
                })?;
                Some((ev, id))
            }
        };
        Ok(DecodedMessage {
            key,
            key_schema,
            event,
        })
    }
}
