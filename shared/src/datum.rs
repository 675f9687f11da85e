//! Writing Avro binary datums of the pipeline's own event schemas directly, without building a
//! tree of `apache_avro::types::Value` records for every event: the producer's hot path. The
//! output is byte-for-byte what `apache_avro::to_avro_datum` writes (a test checks it), and
//! every value is checked against the type of its field.

use apache_avro::schema::{RecordSchema, Schema};
use apache_avro::types::Value;

use crate::pgbinary::MAX_DECIMAL_BYTES;

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

/// A record field: its type, whether it is the union `["null", T]`, and whether it is
/// `["null", T, "string"]`: a decimal or timestamp whose third branch carries, as PostgreSQL's
/// text form, a value the logical type cannot hold (`NaN`, `±Infinity` of a numeric; a
/// timestamp past what microseconds since 1970 hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub ty: FieldType,
    pub nullable: bool,
    pub special: bool,
}

impl FieldSpec {
    /// `T`, or `["null", T]` when `nullable`.
    pub fn plain(ty: FieldType, nullable: bool) -> Self {
        Self {
            ty,
            nullable,
            special: false,
        }
    }
}

/// Whether a field of type `ty` may carry PostgreSQL's text form of a value in a string
/// branch of its union (see [`FieldSpec`]).
pub fn may_be_special(ty: FieldType) -> bool {
    matches!(
        ty,
        FieldType::Decimal | FieldType::TimestampMicros | FieldType::LocalTimestampMicros
    )
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
            [Schema::Null, inner] => Some(FieldSpec::plain(field_type(inner)?, true)),
            [Schema::Null, inner, Schema::String] => {
                let ty = field_type(inner)?;
                may_be_special(ty).then_some(FieldSpec {
                    ty,
                    nullable: true,
                    special: true,
                })
            }
            _ => None,
        },
        other => Some(FieldSpec::plain(field_type(other)?, false)),
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
        (Some(Value::String(text)), true) if spec.special => {
            // the value the logical type cannot hold, as PostgreSQL's text form of it
            write_long(buf, 2);
            write_bytes(buf, text.as_bytes());
            return Ok(());
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
        let spec = FieldSpec::plain(FieldType::Int, false);
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

    /// Reads one field (`None` for null). Dates and timestamps are checked to be within what
    /// their text form can render (or `i32`/`i64` MIN/MAX, PostgreSQL's infinities), so that a
    /// field read once renders, as text or binary, without failing.
    pub fn read_field(&mut self, spec: FieldSpec) -> Result<Option<Field<'a>>, String> {
        if spec.special {
            match self.read_long()? {
                0 => return Ok(None),
                1 => {}
                2 => return Ok(Some(Field::Special(self.read_str()?))),
                i => return Err(format!("union index {i} of a field of three branches")),
            }
        } else if spec.nullable && !self.read_present()? {
            return Ok(None);
        }
        Ok(Some(match spec.ty {
            FieldType::Int => Field::Int(self.read_int()?),
            FieldType::Long => Field::Long(self.read_long()?),
            FieldType::Float => Field::Float(f32::from_le_bytes(
                self.take(4)?.try_into().map_err(|_| "float")?,
            )),
            FieldType::Double => Field::Double(f64::from_le_bytes(
                self.take(8)?.try_into().map_err(|_| "double")?,
            )),
            FieldType::Boolean => Field::Bool(self.read_bool()?),
            FieldType::String | FieldType::Uuid => Field::Str(self.read_str()?),
            FieldType::Bytes => Field::Bytes(self.read_bytes()?),
            FieldType::Decimal => {
                let b = self.read_bytes()?;
                if b.len() > MAX_DECIMAL_BYTES {
                    return Err(format!(
                        "a decimal of {} bytes: PostgreSQL's numeric(p,s) needs at most {MAX_DECIMAL_BYTES}",
                        b.len()
                    ));
                }
                Field::Decimal(b)
            }
            FieldType::Date => {
                let d = self.read_int()?;
                if d != i32::MAX && d != i32::MIN && !crate::calendar::date_in_range(d) {
                    return Err(format!("date {d} days is out of PostgreSQL's range"));
                }
                Field::Date(d)
            }
            FieldType::TimeMicros => Field::Time(self.read_long()?),
            FieldType::TimestampMicros | FieldType::LocalTimestampMicros => {
                let us = self.read_long()?;
                if us != i64::MAX && us != i64::MIN && !crate::calendar::timestamp_in_range(us) {
                    return Err(format!("timestamp {us} µs is out of PostgreSQL's range"));
                }
                if spec.ty == FieldType::TimestampMicros {
                    Field::Timestamp(us)
                } else {
                    Field::LocalTimestamp(us)
                }
            }
        }))
    }

    /// Reads one field and renders it in PostgreSQL's text input form (`None` for null).
    pub fn read_field_text(
        &mut self,
        spec: FieldSpec,
        scale: Option<u32>,
    ) -> Result<Option<String>, String> {
        Ok(self.read_field(spec)?.map(|f| f.text(scale)))
    }
}

/// One non-null field as read from a datum, borrowing strings and bytes from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Bool(bool),
    /// A string, or a uuid in its text form.
    Str(&'a str),
    Bytes(&'a [u8]),
    /// The unscaled value, a big-endian two's-complement integer.
    Decimal(&'a [u8]),
    /// Days since 1970-01-01; `i32::MAX`/`i32::MIN` are `infinity`/`-infinity`.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since 1970-01-01 UTC; `i64::MAX`/`i64::MIN` are the infinities.
    Timestamp(i64),
    /// The same, without a time zone.
    LocalTimestamp(i64),
    /// A decimal or timestamp its logical type cannot hold, in PostgreSQL's text form.
    Special(&'a str),
}

impl Field<'_> {
    /// PostgreSQL's text input form; `scale` is the decimal scale of the field.
    pub fn text(&self, scale: Option<u32>) -> String {
        use crate::pgbinary::{date_text, decimal_text, float_text, time_text, timestamp_text};
        match *self {
            Field::Int(n) => n.to_string(),
            Field::Long(n) => n.to_string(),
            Field::Float(f) => float_text(f64::from(f), f.to_string()),
            Field::Double(f) => float_text(f, f.to_string()),
            Field::Bool(b) => (if b { "t" } else { "f" }).to_string(),
            Field::Str(s) => s.to_string(),
            Field::Bytes(b) => {
                let mut s = String::with_capacity(2 + 2 * b.len());
                s.push_str("\\x");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                s
            }
            Field::Decimal(b) => decimal_text(
                &num_bigint::BigInt::from_signed_bytes_be(b),
                scale.unwrap_or(0),
            ),
            // [`Reader::read_field`] checked the range: the number never stands in for a date
            Field::Date(d) => date_text(d).unwrap_or_else(|_| d.to_string()),
            Field::Time(us) => time_text(us),
            Field::Timestamp(us) => timestamp_text(us, "+00").unwrap_or_else(|_| us.to_string()),
            Field::LocalTimestamp(us) => timestamp_text(us, "").unwrap_or_else(|_| us.to_string()),
            Field::Special(s) => s.to_string(),
        }
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
    fn fields_borrow_their_bytes_and_dates_beyond_the_text_form_are_errors() {
        let spec = |ty| FieldSpec::plain(ty, true);
        let mut b = Vec::new();
        write_field(
            &mut b,
            spec(FieldType::String),
            Some(&Value::String("hé".into())),
        )
        .unwrap();
        write_field(&mut b, spec(FieldType::Date), None).unwrap();
        write_field(&mut b, spec(FieldType::Date), Some(&Value::Date(i32::MAX))).unwrap();
        write_field(
            &mut b,
            spec(FieldType::TimestampMicros),
            Some(&Value::TimestampMicros(i64::MIN)),
        )
        .unwrap();
        let mut r = Reader::new(&b);
        assert_eq!(
            r.read_field(spec(FieldType::String)),
            Ok(Some(Field::Str("hé")))
        );
        assert_eq!(r.read_field(spec(FieldType::Date)), Ok(None));
        let inf = r.read_field(spec(FieldType::Date)).unwrap().unwrap();
        assert_eq!(inf.text(None), "infinity");
        let minus_inf = r
            .read_field(spec(FieldType::TimestampMicros))
            .unwrap()
            .unwrap();
        assert_eq!(minus_inf, Field::Timestamp(i64::MIN));
        assert_eq!(minus_inf.text(None), "-infinity");
        assert_eq!(r.remaining(), 0);
        // out of the text form's range: refused when read, as when rendered
        let mut b = Vec::new();
        write_long(&mut b, i64::from(i32::MAX - 1));
        write_long(&mut b, i64::MIN + 1);
        let mut r = Reader::new(&b);
        let not_null = |ty| FieldSpec::plain(ty, false);
        assert!(r.read_field(not_null(FieldType::Date)).is_err());
        assert!(r
            .read_field(not_null(FieldType::LocalTimestampMicros))
            .is_err());
    }

    #[test]
    fn a_decimal_longer_than_any_numeric_is_an_error() {
        let spec = FieldSpec::plain(FieldType::Decimal, false);
        let mut b = Vec::new();
        write_bytes(&mut b, &[0x7f; MAX_DECIMAL_BYTES]);
        write_bytes(&mut b, &[0x7f; MAX_DECIMAL_BYTES + 1]);
        let mut r = Reader::new(&b);
        assert!(r.read_field(spec).is_ok());
        assert!(r.read_field(spec).is_err());
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
