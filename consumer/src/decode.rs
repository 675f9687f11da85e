//! Turning Kafka messages into events: the Confluent frame, the writer schema from the
//! registry (cached by id), then the Avro body. Every failure is a [`DecodeError`] that names
//! what was wrong; nothing here panics on bad bytes.

use std::sync::Arc;

use apache_avro::types::Value;
use rustc_hash::FxHashMap;
use tunnel_shared::datum;
use tunnel_shared::event::{self, EnvelopeLayout, RecordLayout};
use tunnel_shared::pgbinary::to_pg_text;
use tunnel_shared::registry::Registry;
use tunnel_shared::schema;
use tunnel_shared::wire;

use crate::error::DecodeError;
use crate::model::{Event, Row, WriterSchema};
use crate::stand_in::TargetTypes;

pub(crate) struct Decoder {
    registry: Arc<Registry>,
    /// A writer schema's fields are kept as the target can hold them.
    types: Arc<TargetTypes>,
    shapes: FxHashMap<u32, Arc<WriterSchema>>,
}

impl Decoder {
    pub(crate) fn new(registry: Arc<Registry>, types: Arc<TargetTypes>) -> Self {
        Self {
            registry,
            types,
            shapes: FxHashMap::default(),
        }
    }

    pub(crate) async fn writer(
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
        let fields = self
            .types
            .fit(fields)
            .await
            .map_err(|source| DecodeError::TargetTypes { part, source })?;
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
    pub(crate) async fn key(
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

    /// An event with its writer schema: its row kept as the datum it is in `bytes` (the
    /// pipeline's own layout, read and checked whole) or in text form (other layouts).
    pub(crate) async fn value(
        &mut self,
        bytes: &[u8],
    ) -> Result<(Event, Arc<WriterSchema>), DecodeError> {
        let part = "value";
        let (id, body) = wire::parse(bytes).map_err(|source| DecodeError::Wire { part, source })?;
        let w = self.writer(id, part).await?;
        let event = match &w.envelope {
            Some(layout) => {
                let scanned = layout.scan(body).map_err(Self::avro(part, id))?;
                // the row's place in the whole message, where the entry keeps it
                let header = bytes.len() - body.len();
                Event {
                    op: scanned.op,
                    after: scanned
                        .row
                        .map(|r| Row::Datum(r.start + header..r.end + header)),
                }
            }
            None => {
                let ev = event::decode_envelope(Self::generic(&w, body, part)?)
                    .map_err(|source| DecodeError::Event { part, source })?;
                let after = match &ev.after {
                    Some(row) => Some(Row::Text(Self::texts(&w, row, part)?)),
                    None => None,
                };
                Event { op: ev.op, after }
            }
        };
        Ok((event, w))
    }
}
