//! Decoding events: the layouts the direct reader uses for the pipeline's own keys and
//! envelopes, and the generic path through decoded Avro values.

use apache_avro::types::Value;
use apache_avro::Schema;

use super::{EventError, Op};
use crate::datum::{self, FieldSpec};

/// A record (a key, or an envelope's row) whose fields the direct reader can read.
#[derive(Debug, Clone)]
pub struct RecordLayout {
    fields: Vec<(FieldSpec, Option<u32>)>,
}

impl RecordLayout {
    pub fn of(record: &apache_avro::schema::RecordSchema) -> Option<Self> {
        let specs = datum::record_specs(record)?;
        let scales = record.fields.iter().map(|f| {
            let inner = match &f.schema {
                Schema::Union(u) => u.variants().get(1),
                other => Some(other),
            };
            match inner {
                Some(Schema::Decimal(d)) => Some(
                    u32::try_from(d.scale)
                        .ok()
                        .filter(|s| *s <= crate::pgbinary::MAX_DECIMAL_SCALE),
                ),
                _ => Some(None),
            }
        });
        // a decimal of a scale no numeric has: not a layout of ours
        let scales: Option<Vec<Option<u32>>> = scales.collect::<Option<Vec<_>>>();
        let scales = scales?;
        Some(Self {
            fields: specs.into_iter().zip(scales).collect(),
        })
    }

    /// The key layout of a key schema.
    pub fn of_key(schema: &Schema) -> Option<Self> {
        match schema {
            Schema::Record(r) => Self::of(r),
            _ => None,
        }
    }

    /// Reads the record's fields in PostgreSQL's text form.
    pub fn read(&self, r: &mut datum::Reader<'_>) -> Result<Vec<Option<String>>, String> {
        self.fields
            .iter()
            .map(|(spec, scale)| r.read_field_text(*spec, *scale))
            .collect()
    }

    /// Reads past the record, checking every field as [`RecordLayout::read`] would.
    pub fn skip(&self, r: &mut datum::Reader<'_>) -> Result<(), String> {
        for (spec, _) in &self.fields {
            r.read_field(*spec)?;
        }
        Ok(())
    }

    /// Each field's spec and decimal scale.
    pub fn fields(&self) -> &[(FieldSpec, Option<u32>)] {
        &self.fields
    }
}

/// An event with its row in PostgreSQL's text form, as the consumer applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextEvent {
    pub op: Op,
    /// `None` for a delete.
    pub after: Option<Vec<Option<String>>>,
}

/// How to read an envelope written by this pipeline without building Avro values: `None` for
/// schemas of another layout (those go through apache-avro).
#[derive(Debug, Clone)]
pub struct EnvelopeLayout {
    row: RecordLayout,
}

impl EnvelopeLayout {
    pub fn of(schema: &Schema) -> Option<Self> {
        let Schema::Record(envelope) = schema else {
            return None;
        };
        let names: Vec<&str> = envelope.fields.iter().map(|f| f.name.as_str()).collect();
        if names != ["op", "after", "source", "ts_ms"] {
            return None;
        }
        let row = match &envelope.fields[1].schema {
            Schema::Union(u) => match u.variants() {
                [Schema::Null, Schema::Record(r)] => RecordLayout::of(r)?,
                _ => return None,
            },
            _ => return None,
        };
        let Schema::Record(source) = &envelope.fields[2].schema else {
            return None;
        };
        let source_types: Vec<Option<FieldSpec>> = source
            .fields
            .iter()
            .map(|f| datum::field_spec(&f.schema))
            .collect();
        let expected = [
            Some(FieldSpec::plain(datum::FieldType::String, false)),
            Some(FieldSpec::plain(datum::FieldType::String, false)),
            Some(FieldSpec::plain(datum::FieldType::String, false)),
            Some(FieldSpec::plain(datum::FieldType::Boolean, false)),
            Some(FieldSpec::plain(datum::FieldType::String, false)),
            Some(FieldSpec::plain(datum::FieldType::TimestampMicros, true)),
        ];
        if source_types != expected
            || !matches!(envelope.fields[0].schema, Schema::String)
            || !matches!(envelope.fields[3].schema, Schema::Long)
        {
            return None;
        }
        Some(Self { row })
    }

    /// The layout of the envelope's row.
    pub fn row(&self) -> &RecordLayout {
        &self.row
    }

    /// Reads an event with its row in text form.
    pub fn read(&self, body: &[u8]) -> Result<TextEvent, String> {
        let scanned = self.scan(body)?;
        let after = match scanned.row {
            Some(range) => Some(self.row.read(&mut datum::Reader::new(&body[range]))?),
            None => None,
        };
        Ok(TextEvent {
            op: scanned.op,
            after,
        })
    }

    /// Reads and checks a whole event, leaving its row as the datum it is: where the row is in
    /// `body`. Every field is checked as [`EnvelopeLayout::read`] checks it, so a scanned row
    /// always renders.
    pub fn scan(&self, body: &[u8]) -> Result<ScannedEvent, String> {
        let mut r = datum::Reader::new(body);
        let code = r.read_str()?;
        let op = Op::parse(code).ok_or_else(|| format!("unknown op '{code}'"))?;
        let after = if r.read_present()? {
            let start = body.len() - r.remaining();
            self.row.skip(&mut r)?;
            Some(start..body.len() - r.remaining())
        } else {
            None
        };
        // source: version, schema, table, snapshot, detected_by, updated_at; then ts_ms
        for _ in 0..3 {
            r.read_bytes()?;
        }
        r.read_bool()?;
        r.read_bytes()?;
        if r.read_present()? {
            r.read_long()?;
        }
        r.read_long()?;
        if r.remaining() > 0 {
            return Err(format!("{} bytes left over after the event", r.remaining()));
        }
        if op != Op::Delete && after.is_none() {
            return Err(format!("'{}' event without 'after'", op.code()));
        }
        Ok(ScannedEvent { op, row: after })
    }
}

/// An event read by [`EnvelopeLayout::scan`]: its operation and where its row's datum is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedEvent {
    pub op: Op,
    /// `None` for a delete.
    pub row: Option<std::ops::Range<usize>>,
}

/// An event as the consumer sees it: its operation and, unless it is a delete, the row's
/// values in field order (nulls as `Value::Null`).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub op: Op,
    pub after: Option<Vec<Value>>,
}

fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

/// Takes a decoded envelope apart.
pub fn decode_envelope(value: Value) -> Result<DecodedEvent, EventError> {
    let Value::Record(fields) = value else {
        return Err(EventError::Decode("the value is not a record".into()));
    };
    let mut op = None;
    let mut after = None;
    for (name, v) in fields {
        match name.as_str() {
            "op" => match v {
                Value::String(s) => {
                    op = Some(
                        Op::parse(&s)
                            .ok_or_else(|| EventError::Decode(format!("unknown op '{s}'")))?,
                    )
                }
                _ => return Err(EventError::Decode("'op' is not a string".into())),
            },
            "after" => match unwrap_union(v) {
                Value::Null => after = None,
                Value::Record(row) => {
                    after = Some(row.into_iter().map(|(_, v)| unwrap_union(v)).collect())
                }
                _ => return Err(EventError::Decode("'after' is not a record".into())),
            },
            _ => {}
        }
    }
    let op = op.ok_or_else(|| EventError::Decode("no 'op' field".into()))?;
    if op != Op::Delete && after.is_none() {
        return Err(EventError::Decode(format!(
            "'{}' event without 'after'",
            op.code()
        )));
    }
    Ok(DecodedEvent { op, after })
}

/// Takes a decoded key record apart into its values.
pub fn decode_key(value: Value) -> Result<Vec<Value>, EventError> {
    match value {
        Value::Record(fields) => Ok(fields.into_iter().map(|(_, v)| unwrap_union(v)).collect()),
        _ => Err(EventError::Decode("the key is not a record".into())),
    }
}
