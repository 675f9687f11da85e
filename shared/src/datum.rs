//! Writing Avro binary datums of the pipeline's own event schemas directly, without building a
//! tree of `apache_avro::types::Value` records for every event: the producer's hot path. The
//! output is byte-for-byte what `apache_avro::to_avro_datum` writes (a test checks it), and
//! every value is checked against the type of its field.

use apache_avro::schema::{RecordSchema, Schema};
use apache_avro::types::Value;

/// The Avro type of a field, as far as writing needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Int,
    Long,
    Float,
    Double,
    Boolean,
    String,
    Bytes,
    Decimal,
    Uuid,
    Date,
    TimeMicros,
    TimestampMicros,
    LocalTimestampMicros,
}

/// A record field: its type and whether it is the union `["null", T]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub ty: FieldType,
    pub nullable: bool,
}

fn field_type(s: &Schema) -> Option<FieldType> {
    Some(match s {
        Schema::Int => FieldType::Int,
        Schema::Long => FieldType::Long,
        Schema::Float => FieldType::Float,
        Schema::Double => FieldType::Double,
        Schema::Boolean => FieldType::Boolean,
        Schema::String => FieldType::String,
        Schema::Bytes => FieldType::Bytes,
        Schema::Decimal(_) => FieldType::Decimal,
        Schema::Uuid => FieldType::Uuid,
        Schema::Date => FieldType::Date,
        Schema::TimeMicros => FieldType::TimeMicros,
        Schema::TimestampMicros => FieldType::TimestampMicros,
        Schema::LocalTimestampMicros => FieldType::LocalTimestampMicros,
        _ => return None,
    })
}

/// The specs of a record's fields; `None` if a field has a type this writer does not handle.
pub fn record_specs(record: &RecordSchema) -> Option<Vec<FieldSpec>> {
    record
        .fields
        .iter()
        .map(|f| match &f.schema {
            Schema::Union(u) => match u.variants() {
                [Schema::Null, inner] => Some(FieldSpec {
                    ty: field_type(inner)?,
                    nullable: true,
                }),
                _ => None,
            },
            other => Some(FieldSpec {
                ty: field_type(other)?,
                nullable: false,
            }),
        })
        .collect()
}

/// Appends Avro's zig-zag varint encoding of `n`.
pub fn write_long(buf: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

pub fn write_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    write_long(buf, b.len() as i64);
    buf.extend_from_slice(b);
}

/// Appends one value of a field; `None` is null (only for nullable fields).
pub fn write_field(
    buf: &mut Vec<u8>,
    spec: FieldSpec,
    value: Option<&Value>,
) -> Result<(), String> {
    match (value, spec.nullable) {
        (None | Some(Value::Null), true) => {
            write_long(buf, 0);
            return Ok(());
        }
        (None | Some(Value::Null), false) => {
            return Err("null for a field that is not nullable".into())
        }
        (Some(_), true) => write_long(buf, 1),
        (Some(_), false) => {}
    }
    let Some(v) = value else { return Ok(()) };
    match (spec.ty, v) {
        (FieldType::Int, Value::Int(n)) | (FieldType::Date, Value::Date(n)) => {
            write_long(buf, i64::from(*n))
        }
        (FieldType::Long, Value::Long(n))
        | (FieldType::TimeMicros, Value::TimeMicros(n))
        | (FieldType::TimestampMicros, Value::TimestampMicros(n))
        | (FieldType::LocalTimestampMicros, Value::LocalTimestampMicros(n)) => write_long(buf, *n),
        (FieldType::Float, Value::Float(f)) => buf.extend_from_slice(&f.to_le_bytes()),
        (FieldType::Double, Value::Double(f)) => buf.extend_from_slice(&f.to_le_bytes()),
        (FieldType::Boolean, Value::Boolean(b)) => buf.push(u8::from(*b)),
        (FieldType::String, Value::String(s)) => write_bytes(buf, s.as_bytes()),
        (FieldType::Bytes, Value::Bytes(b)) => write_bytes(buf, b),
        (FieldType::Uuid, Value::Uuid(u)) => {
            write_bytes(buf, u.hyphenated().to_string().as_bytes())
        }
        (FieldType::Decimal, Value::Decimal(d)) => {
            let bytes = <Vec<u8>>::try_from(d).map_err(|e| e.to_string())?;
            write_bytes(buf, &bytes)
        }
        (ty, v) => return Err(format!("value {v:?} does not fit a field of type {ty:?}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_matches_the_spec() {
        for (n, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 1]),
        ] {
            let mut b = Vec::new();
            write_long(&mut b, n);
            assert_eq!(b, bytes, "{n}");
        }
        let mut b = Vec::new();
        write_long(&mut b, i64::MIN);
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn wrong_types_and_nulls_are_errors() {
        let spec = FieldSpec {
            ty: FieldType::Int,
            nullable: false,
        };
        let mut b = Vec::new();
        assert!(write_field(&mut b, spec, None).is_err());
        assert!(write_field(&mut b, spec, Some(&Value::String("x".into()))).is_err());
        assert!(write_field(&mut b, spec, Some(&Value::Int(3))).is_ok());
    }
}
