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

/// The spec of a field of schema `s`: `T` or the union `["null", T]`.
pub fn field_spec(s: &Schema) -> Option<FieldSpec> {
    match s {
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
    }
}

/// The specs of a record's fields; `None` if a field has a type this writer does not handle.
pub fn record_specs(record: &RecordSchema) -> Option<Vec<FieldSpec>> {
    record
        .fields
        .iter()
        .map(|f| field_spec(&f.schema))
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

/// Reads Avro binary data with a bounds check on every read: a short or garbage body is an
/// error, never a panic.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "body ends after {} bytes, {n} more needed at byte {}",
                self.buf.len(),
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn read_long(&mut self) -> Result<i64, String> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.take(1)?[0];
            if shift == 63 && b > 1 {
                return Err(format!("varint longer than 64 bits at byte {}", self.pos));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    pub fn read_bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.read_long()?;
        let n =
            usize::try_from(n).map_err(|_| format!("negative length {n} at byte {}", self.pos))?;
        self.take(n)
    }

    pub fn read_str(&mut self) -> Result<&'a str, String> {
        let b = self.read_bytes()?;
        std::str::from_utf8(b).map_err(|e| format!("string is not UTF-8: {e}"))
    }

    pub fn read_bool(&mut self) -> Result<bool, String> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("boolean byte {b}")),
        }
    }

    fn read_int(&mut self) -> Result<i32, String> {
        let n = self.read_long()?;
        i32::try_from(n).map_err(|_| format!("int {n} out of range"))
    }

    /// Reads a union index of `["null", T]`: whether a value follows.
    pub fn read_present(&mut self) -> Result<bool, String> {
        match self.read_long()? {
            0 => Ok(false),
            1 => Ok(true),
            i => Err(format!("union index {i} of a nullable field")),
        }
    }

    /// Reads one field and renders it in PostgreSQL's text input form (`None` for null).
    pub fn read_field_text(
        &mut self,
        spec: FieldSpec,
        scale: Option<u32>,
    ) -> Result<Option<String>, String> {
        use crate::pgbinary::{date_text, decimal_text, float_text, time_text, timestamp_text};
        if spec.nullable && !self.read_present()? {
            return Ok(None);
        }
        Ok(Some(match spec.ty {
            FieldType::Int => self.read_int()?.to_string(),
            FieldType::Long => self.read_long()?.to_string(),
            FieldType::Float => {
                let f = f32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "float")?);
                float_text(f64::from(f), f.to_string())
            }
            FieldType::Double => {
                let f = f64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "double")?);
                float_text(f, f.to_string())
            }
            FieldType::Boolean => (if self.read_bool()? { "t" } else { "f" }).to_string(),
            FieldType::String | FieldType::Uuid => self.read_str()?.to_string(),
            FieldType::Bytes => {
                let b = self.read_bytes()?;
                let mut s = String::with_capacity(2 + 2 * b.len());
                s.push_str("\\x");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                s
            }
            FieldType::Decimal => {
                let b = self.read_bytes()?;
                decimal_text(
                    &num_bigint::BigInt::from_signed_bytes_be(b),
                    scale.unwrap_or(0),
                )
            }
            FieldType::Date => date_text(self.read_int()?)?,
            FieldType::TimeMicros => time_text(self.read_long()?),
            FieldType::TimestampMicros => timestamp_text(self.read_long()?, "+00")?,
            FieldType::LocalTimestampMicros => timestamp_text(self.read_long()?, "")?,
        }))
    }
}

#[cfg(test)]
mod reader_tests {
    use super::*;

    #[test]
    fn reads_back_what_is_written() {
        let mut b = Vec::new();
        for n in [0i64, -1, 1, 300, -300, i64::MAX, i64::MIN] {
            write_long(&mut b, n);
        }
        write_bytes(&mut b, b"hi");
        let mut r = Reader::new(&b);
        for n in [0i64, -1, 1, 300, -300, i64::MAX, i64::MIN] {
            assert_eq!(r.read_long().unwrap(), n);
        }
        assert_eq!(r.read_str().unwrap(), "hi");
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn short_and_garbage_input_is_an_error() {
        assert!(Reader::new(&[]).read_long().is_err());
        assert!(Reader::new(&[0xff; 11]).read_long().is_err());
        // a length of 100 with 1 byte behind it
        assert!(Reader::new(&[200, 1]).read_bytes().is_err());
        // a negative length
        assert!(Reader::new(&[1]).read_bytes().is_err());
        assert!(Reader::new(&[2]).read_bool().is_err());
    }
}
