//! The change event: an envelope modelled on Debezium's (`op`, `after`, `source`, `ts_ms`),
//! keyed by the row's primary key. A delete is a `d` event followed by a tombstone (a null
//! value) for the same key, so that compaction eventually drops the key.

use apache_avro::types::Value;

use crate::pgbinary::nullable;
use crate::schema::TableSchemas;
use crate::wire;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("cannot encode {what}: {message}")]
    Encode { what: String, message: String },
    #[error("event does not decode: {0}")]
    Decode(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// read by the snapshot
    Read,
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }

    pub fn parse(code: &str) -> Option<Op> {
        Some(match code {
            "r" => Op::Read,
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            _ => return None,
        })
    }
}

/// How the producer found a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Snapshot,
    KeyScan,
    Watermark,
    DeleteScan,
    Reconcile,
}

impl Detection {
    pub fn as_str(self) -> &'static str {
        match self {
            Detection::Snapshot => "snapshot",
            Detection::KeyScan => "key_scan",
            Detection::Watermark => "watermark",
            Detection::DeleteScan => "delete_scan",
            Detection::Reconcile => "reconcile",
        }
    }
}

/// One row's values, in column order; `None` is SQL NULL.
pub type Row = Vec<Option<Value>>;

#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub op: Op,
    /// The primary key's values, in key order.
    pub key: Vec<Value>,
    /// The whole row after the change; `None` for a delete.
    pub after: Option<Row>,
    pub detected_by: Detection,
    /// The watermark column's value, microseconds since 1970.
    pub updated_at: Option<i64>,
    pub ts_ms: i64,
}

/// Encodes a table's events in the Confluent wire format with its registered schema ids.
#[derive(Clone)]
pub struct EventEncoder {
    schemas: TableSchemas,
    key_id: u32,
    value_id: u32,
    table_schema: String,
    table_name: String,
    key_fields: Vec<String>,
    row_fields: Vec<(String, bool)>,
}

impl EventEncoder {
    pub fn new(
        schemas: TableSchemas,
        key_id: u32,
        value_id: u32,
        table: &crate::catalog::TableInfo,
    ) -> Result<Self, EventError> {
        let shapes = |s, what| {
            crate::schema::row_fields(s, what).map_err(|e| EventError::Encode {
                what: what.to_string(),
                message: e.to_string(),
            })
        };
        let key_fields = shapes(&schemas.key, "key")?
            .into_iter()
            .map(|f| f.field)
            .collect();
        let row_fields = shapes(&schemas.value, "value")?
            .into_iter()
            .map(|f| (f.field, f.nullable))
            .collect();
        Ok(Self {
            schemas,
            key_id,
            value_id,
            table_schema: table.schema.clone(),
            table_name: table.name.clone(),
            key_fields,
            row_fields,
        })
    }

    pub fn encode_key(&self, key: &[Value]) -> Result<Vec<u8>, EventError> {
        if key.len() != self.key_fields.len() {
            return Err(EventError::Encode {
                what: "key".into(),
                message: format!(
                    "{} values for {} key columns",
                    key.len(),
                    self.key_fields.len()
                ),
            });
        }
        let record = Value::Record(
            self.key_fields
                .iter()
                .cloned()
                .zip(key.iter().cloned())
                .collect(),
        );
        let body = apache_avro::to_avro_datum(&self.schemas.key, record).map_err(|e| {
            EventError::Encode {
                what: "key".into(),
                message: e.to_string(),
            }
        })?;
        Ok(wire::frame(self.key_id, &body))
    }

    pub fn encode_value(&self, event: &ChangeEvent) -> Result<Vec<u8>, EventError> {
        let after = match &event.after {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(row) => {
                if row.len() != self.row_fields.len() {
                    return Err(EventError::Encode {
                        what: "row".into(),
                        message: format!(
                            "{} values for {} columns",
                            row.len(),
                            self.row_fields.len()
                        ),
                    });
                }
                let fields = self
                    .row_fields
                    .iter()
                    .zip(row.iter())
                    .map(|((name, is_nullable), v)| {
                        (name.clone(), nullable(v.clone(), *is_nullable))
                    })
                    .collect();
                Value::Union(1, Box::new(Value::Record(fields)))
            }
        };
        let source = Value::Record(vec![
            ("version".into(), Value::String(crate::VERSION.into())),
            ("schema".into(), Value::String(self.table_schema.clone())),
            ("table".into(), Value::String(self.table_name.clone())),
            ("snapshot".into(), Value::Boolean(event.op == Op::Read)),
            (
                "detected_by".into(),
                Value::String(event.detected_by.as_str().into()),
            ),
            (
                "updated_at".into(),
                nullable(event.updated_at.map(Value::TimestampMicros), true),
            ),
        ]);
        let envelope = Value::Record(vec![
            ("op".into(), Value::String(event.op.code().into())),
            ("after".into(), after),
            ("source".into(), source),
            ("ts_ms".into(), Value::Long(event.ts_ms)),
        ]);
        let body = apache_avro::to_avro_datum(&self.schemas.value, envelope).map_err(|e| {
            EventError::Encode {
                what: "event".into(),
                message: e.to_string(),
            }
        })?;
        Ok(wire::frame(self.value_id, &body))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, ColumnKind, TableInfo};

    fn table() -> TableInfo {
        TableInfo {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_name: "integer".into(),
                    kind: ColumnKind::Int4,
                    nullable: false,
                },
                Column {
                    name: "v".into(),
                    type_name: "text".into(),
                    kind: ColumnKind::Text,
                    nullable: true,
                },
            ],
            key: vec![0],
            watermark: None,
        }
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let t = table();
        let schemas = crate::schema::derive(&t, "p").unwrap();
        let (key_schema, value_schema) = (schemas.key.clone(), schemas.value.clone());
        let enc = EventEncoder::new(schemas, 1, 2, &t).unwrap();
        let ev = ChangeEvent {
            op: Op::Update,
            key: vec![Value::Int(5)],
            after: Some(vec![Some(Value::Int(5)), None]),
            detected_by: Detection::Watermark,
            updated_at: Some(1_000),
            ts_ms: 9,
        };
        let k = enc.encode_key(&ev.key).unwrap();
        let v = enc.encode_value(&ev).unwrap();
        let (kid, kbody) = wire::parse(&k).unwrap();
        let (vid, vbody) = wire::parse(&v).unwrap();
        assert_eq!((kid, vid), (1, 2));
        let key = apache_avro::from_avro_datum(&key_schema, &mut &kbody[..], None).unwrap();
        assert_eq!(decode_key(key).unwrap(), vec![Value::Int(5)]);
        let value = apache_avro::from_avro_datum(&value_schema, &mut &vbody[..], None).unwrap();
        let d = decode_envelope(value).unwrap();
        assert_eq!(d.op, Op::Update);
        assert_eq!(d.after, Some(vec![Value::Int(5), Value::Null]));
    }

    #[test]
    fn wrong_arity_is_an_error_not_a_panic() {
        let t = table();
        let enc = EventEncoder::new(crate::schema::derive(&t, "p").unwrap(), 1, 2, &t).unwrap();
        assert!(enc.encode_key(&[]).is_err());
    }
}
