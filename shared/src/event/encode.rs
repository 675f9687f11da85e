//! Encoding a table's events: keys and envelopes written directly as Avro datums, in the
//! Confluent wire format with the table's registered schema ids.

use apache_avro::types::Value;
use apache_avro::Schema;

use super::{ChangeEvent, EventError, Op};
use crate::datum::{self, FieldSpec};
use crate::schema::TableSchemas;
use crate::wire;

/// Encodes a table's events in the Confluent wire format with its registered schema ids.
#[derive(Clone)]
pub struct EventEncoder {
    key_id: u32,
    value_id: u32,
    table_schema: String,
    table_name: String,
    key_specs: Vec<FieldSpec>,
    row_specs: Vec<FieldSpec>,
}

impl EventEncoder {
    pub fn new(
        schemas: TableSchemas,
        key_id: u32,
        value_id: u32,
        table: &crate::catalog::TableInfo,
    ) -> Result<Self, EventError> {
        let bad = |what: &str, message: &str| EventError::Encode {
            what: what.to_string(),
            message: message.to_string(),
        };
        let Schema::Record(key) = &schemas.key else {
            return Err(bad("key schema", "not a record"));
        };
        let key_specs = datum::record_specs(key)
            .ok_or_else(|| bad("key schema", "a field type the writer does not know"))?;
        // the envelope this encoder writes field by field: op, after, source, ts_ms
        let Schema::Record(envelope) = &schemas.value else {
            return Err(bad("value schema", "not a record"));
        };
        let names: Vec<&str> = envelope.fields.iter().map(|f| f.name.as_str()).collect();
        if names != ["op", "after", "source", "ts_ms"] {
            return Err(bad(
                "value schema",
                &format!("unexpected envelope fields {names:?}"),
            ));
        }
        let row = match &envelope.fields[1].schema {
            Schema::Union(u) => match u.variants() {
                [Schema::Null, Schema::Record(r)] => r,
                _ => return Err(bad("value schema", "'after' is not [null, record]")),
            },
            _ => return Err(bad("value schema", "'after' is not a union")),
        };
        let row_specs = datum::record_specs(row)
            .ok_or_else(|| bad("value schema", "a field type the writer does not know"))?;
        Ok(Self {
            key_id,
            value_id,
            table_schema: table.schema.clone(),
            table_name: table.name.clone(),
            key_specs,
            row_specs,
        })
    }

    pub fn encode_key(&self, key: &[Value]) -> Result<Vec<u8>, EventError> {
        Ok(wire::frame(self.key_id, &self.key_body(key)?))
    }

    /// The key's Avro datum, what [`EventEncoder::encode_key`] frames: the bytes a key message
    /// of the topic holds after the wire format's header.
    pub fn key_body(&self, key: &[Value]) -> Result<Vec<u8>, EventError> {
        let bad = |message: String| EventError::Encode {
            what: "key".into(),
            message,
        };
        if key.len() != self.key_specs.len() {
            return Err(bad(format!(
                "{} values for {} key columns",
                key.len(),
                self.key_specs.len()
            )));
        }
        let mut body = Vec::with_capacity(16);
        for (spec, v) in self.key_specs.iter().zip(key) {
            datum::write_field(&mut body, *spec, Some(v)).map_err(bad)?;
        }
        Ok(body)
    }

    pub fn encode_value(&self, event: &ChangeEvent) -> Result<Vec<u8>, EventError> {
        let bad = |message: String| EventError::Encode {
            what: "event".into(),
            message,
        };
        let mut body = Vec::with_capacity(128);
        datum::write_bytes(&mut body, event.op.code().as_bytes());
        match &event.after {
            None => datum::write_long(&mut body, 0),
            Some(row) => {
                if row.len() != self.row_specs.len() {
                    return Err(bad(format!(
                        "{} values for {} columns",
                        row.len(),
                        self.row_specs.len()
                    )));
                }
                datum::write_long(&mut body, 1);
                for (spec, v) in self.row_specs.iter().zip(row) {
                    datum::write_field(&mut body, *spec, v.as_ref()).map_err(bad)?;
                }
            }
        }
        // source: version, schema, table, snapshot, detected_by, updated_at
        datum::write_bytes(&mut body, crate::VERSION.as_bytes());
        datum::write_bytes(&mut body, self.table_schema.as_bytes());
        datum::write_bytes(&mut body, self.table_name.as_bytes());
        body.push(u8::from(event.op == Op::Read));
        datum::write_bytes(&mut body, event.detected_by.as_str().as_bytes());
        match event.updated_at {
            None => datum::write_long(&mut body, 0),
            Some(us) => {
                datum::write_long(&mut body, 1);
                datum::write_long(&mut body, us);
            }
        }
        datum::write_long(&mut body, event.ts_ms);
        Ok(wire::frame(self.value_id, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, ColumnKind, TableInfo};
    use crate::event::{
        decode_envelope, decode_key, Detection, EnvelopeLayout, RecordLayout, Row, TextEvent,
    };

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
                    attnum: 1,
                    default: None,
                },
                Column {
                    name: "v".into(),
                    type_name: "text".into(),
                    kind: ColumnKind::Text,
                    nullable: true,
                    attnum: 2,
                    default: None,
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
        assert_eq!(enc.key_body(&ev.key).unwrap(), kbody);
        let value = apache_avro::from_avro_datum(&value_schema, &mut &vbody[..], None).unwrap();
        let d = decode_envelope(value).unwrap();
        assert_eq!(d.op, Op::Update);
        assert_eq!(d.after, Some(vec![Value::Int(5), Value::Null]));
    }

    /// The direct writer must produce exactly what apache-avro writes for the same event.
    #[test]
    fn direct_encoding_equals_apache_avro() {
        use crate::pgbinary::nullable;
        let t = TableInfo {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_name: "bigint".into(),
                    kind: ColumnKind::Int8,
                    nullable: false,
                    attnum: 3,
                    default: None,
                },
                Column {
                    name: "v".into(),
                    type_name: "text".into(),
                    kind: ColumnKind::Text,
                    nullable: true,
                    attnum: 4,
                    default: None,
                },
                Column {
                    name: "p".into(),
                    type_name: "numeric(6,2)".into(),
                    kind: ColumnKind::Decimal {
                        precision: 6,
                        scale: 2,
                    },
                    nullable: true,
                    attnum: 5,
                    default: None,
                },
                Column {
                    name: "u".into(),
                    type_name: "uuid".into(),
                    kind: ColumnKind::Uuid,
                    nullable: false,
                    attnum: 6,
                    default: None,
                },
                Column {
                    name: "ts".into(),
                    type_name: "timestamp".into(),
                    kind: ColumnKind::Timestamp,
                    nullable: true,
                    attnum: 7,
                    default: None,
                },
                Column {
                    name: "d".into(),
                    type_name: "date".into(),
                    kind: ColumnKind::Date,
                    nullable: true,
                    attnum: 8,
                    default: None,
                },
                Column {
                    name: "f".into(),
                    type_name: "real".into(),
                    kind: ColumnKind::Float4,
                    nullable: true,
                    attnum: 9,
                    default: None,
                },
                Column {
                    name: "b".into(),
                    type_name: "bytea".into(),
                    kind: ColumnKind::Bytea,
                    nullable: true,
                    attnum: 10,
                    default: None,
                },
                Column {
                    name: "ok".into(),
                    type_name: "boolean".into(),
                    kind: ColumnKind::Bool,
                    nullable: true,
                    attnum: 11,
                    default: None,
                },
            ],
            key: vec![0, 3],
            watermark: Some(4),
        };
        let schemas = crate::schema::derive(&t, "p").unwrap();
        let enc = EventEncoder::new(schemas.clone(), 1, 2, &t).unwrap();
        let u = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
        let row: Row = vec![
            Some(Value::Long(-70_000)),
            Some(Value::String("naïve".into())),
            Some(Value::Decimal(apache_avro::Decimal::from(vec![0xff, 0x85]))),
            Some(Value::Uuid(u)),
            None,
            Some(Value::Date(-3)),
            Some(Value::Float(1.5)),
            Some(Value::Bytes(vec![0, 1, 2])),
            Some(Value::Boolean(true)),
        ];
        for (op, after) in [(Op::Update, Some(row.clone())), (Op::Delete, None)] {
            let ev = ChangeEvent {
                op,
                key: vec![Value::Long(-70_000), Value::Uuid(u)],
                after: after.clone(),
                detected_by: Detection::KeyScan,
                updated_at: Some(-5),
                ts_ms: 1_700_000_000_000,
            };
            let row_value = match &after {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(r) => Value::Union(
                    1,
                    Box::new(Value::Record(
                        t.columns
                            .iter()
                            .zip(r)
                            // a row's fields are all optional in the schema
                            .map(|(c, v)| (c.name.clone(), nullable(v.clone(), true)))
                            .collect(),
                    )),
                ),
            };
            let expected = apache_avro::to_avro_datum(
                &schemas.value,
                Value::Record(vec![
                    ("op".into(), Value::String(op.code().into())),
                    ("after".into(), row_value),
                    (
                        "source".into(),
                        Value::Record(vec![
                            ("version".into(), Value::String(crate::VERSION.into())),
                            ("schema".into(), Value::String("public".into())),
                            ("table".into(), Value::String("t".into())),
                            ("snapshot".into(), Value::Boolean(false)),
                            ("detected_by".into(), Value::String("key_scan".into())),
                            (
                                "updated_at".into(),
                                Value::Union(1, Box::new(Value::TimestampMicros(-5))),
                            ),
                        ]),
                    ),
                    ("ts_ms".into(), Value::Long(1_700_000_000_000)),
                ]),
            )
            .unwrap();
            assert_eq!(enc.encode_value(&ev).unwrap()[5..], expected[..], "{op:?}");
            let key = apache_avro::to_avro_datum(
                &schemas.key,
                Value::Record(vec![
                    ("id".into(), Value::Long(-70_000)),
                    ("u".into(), Value::Uuid(u)),
                ]),
            )
            .unwrap();
            assert_eq!(enc.encode_key(&ev.key).unwrap()[5..], key[..]);
            // the direct reader gives what apache-avro's decoding rendered as text gives
            let layout = EnvelopeLayout::of(&schemas.value).unwrap();
            let direct = layout.read(&expected).unwrap();
            let generic = decode_envelope(
                apache_avro::from_avro_datum(&schemas.value, &mut &expected[..], None).unwrap(),
            )
            .unwrap();
            let shapes = crate::schema::row_fields(&schemas.value, "value").unwrap();
            let rendered = generic.after.map(|row| {
                row.iter()
                    .zip(&shapes)
                    .map(|(v, f)| crate::pgbinary::to_pg_text(v, f.scale).unwrap())
                    .collect::<Vec<_>>()
            });
            assert_eq!(
                direct,
                TextEvent {
                    op,
                    after: rendered
                }
            );
            // a scan leaves the row where it is: the same text from its range
            let scanned = layout.scan(&expected).unwrap();
            assert_eq!(scanned.op, op);
            let from_range = scanned.row.map(|range| {
                layout
                    .row()
                    .read(&mut datum::Reader::new(&expected[range]))
                    .unwrap()
            });
            assert_eq!(from_range, direct.after);
            let key_layout = RecordLayout::of_key(&schemas.key).unwrap();
            let mut r = datum::Reader::new(&key);
            assert_eq!(
                key_layout.read(&mut r).unwrap(),
                vec![Some("-70000".to_string()), Some(u.to_string())]
            );
            assert!(
                layout.read(&expected[..expected.len() - 1]).is_err(),
                "a truncated body must not decode"
            );
        }
    }

    #[test]
    fn wrong_arity_is_an_error_not_a_panic() {
        let t = table();
        let enc = EventEncoder::new(crate::schema::derive(&t, "p").unwrap(), 1, 2, &t).unwrap();
        assert!(enc.encode_key(&[]).is_err());
    }
}
