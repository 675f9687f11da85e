//! PostgreSQL's binary forms of column values, written straight from the fields of a row's Avro
//! datum: what binary `COPY` sends. The reverse of `tunnel_shared::pgbinary`, which decodes
//! these forms on the producer's side into the same Avro values.
//!
//! A column has a binary form here only when its Avro type carries exactly what its text form
//! would (a `real` field into a `double precision` column, say, would not read back the same
//! as text, so it has none): a table with a column that has none is copied as text.

use num_bigint::{BigInt, Sign};
use tunnel_shared::datum::{Field, FieldType};

/// Microseconds between 1970-01-01 and 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
/// `NAMEDATALEN - 1`: the longest `name` the target receives (its text input would cut a
/// longer one short, its binary input refuses it as an error of the whole `COPY`).
const NAME_MAX_BYTES: usize = 63;
/// The largest display scale of a `numeric` (`NUMERIC_DSCALE_MAX`).
const NUMERIC_DSCALE_MAX: u32 = 0x3fff;

/// How the values of a column are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    /// `text`, `varchar`, `bpchar` and `json`: the string's bytes.
    Text,
    Name,
    /// A version byte (1), then the text.
    Jsonb,
    Bytea,
    Uuid,
    /// At the field's decimal scale.
    Numeric(u32),
    Date,
    Time,
    /// `timestamp` and `timestamptz` alike: microseconds since 2000-01-01 (UTC).
    Timestamp,
}

/// A value that has no binary form in its column (an `int` field beyond `smallint`, a `name`
/// too long...): the rows are copied as text instead, where the target judges the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NoBinaryForm;

/// The binary form of fields of Avro type `ty` (of decimal scale `scale`) in a column of type
/// `pg_type`, as `format_type` prints it; `None` when this module has none.
pub(super) fn encoding(ty: FieldType, scale: Option<u32>, pg_type: &str) -> Option<Encoding> {
    use Encoding as E;
    use FieldType as T;
    Some(match (ty, base_type(pg_type).as_str()) {
        (T::Int, "smallint") => E::Int2,
        (T::Int, "integer") => E::Int4,
        (T::Int | T::Long, "bigint") => E::Int8,
        (T::Float, "real") => E::Float4,
        (T::Double, "double precision") => E::Float8,
        (T::Boolean, "boolean") => E::Bool,
        (T::String, "text" | "character varying" | "character" | "bpchar" | "json") => E::Text,
        (T::String, "name") => E::Name,
        (T::String, "jsonb") => E::Jsonb,
        (T::Bytes, "bytea") => E::Bytea,
        (T::Uuid, "uuid") => E::Uuid,
        (T::Decimal, "numeric") => E::Numeric(scale.filter(|s| *s <= NUMERIC_DSCALE_MAX)?),
        (T::Date, "date") => E::Date,
        (T::TimeMicros, "time without time zone") => E::Time,
        (T::LocalTimestampMicros, "timestamp without time zone")
        | (T::TimestampMicros, "timestamp with time zone") => E::Timestamp,
        _ => return None,
    })
}

/// A type without its modifier: `character varying(10)` is `character varying`,
/// `timestamp(3) without time zone` is `timestamp without time zone`.
fn base_type(pg_type: &str) -> String {
    match pg_type.split_once('(') {
        Some((head, rest)) => match rest.split_once(')') {
            Some((_, tail)) => format!("{head}{tail}"),
            None => pg_type.to_string(),
        },
        None => pg_type.to_string(),
    }
}

/// Appends a NULL: the length -1.
pub(super) fn write_null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

/// Appends the value's length and binary form.
pub(super) fn write(
    out: &mut Vec<u8>,
    enc: Encoding,
    field: Field<'_>,
) -> Result<(), NoBinaryForm> {
    use Encoding as E;
    match (enc, field) {
        (E::Int2, Field::Int(n)) => {
            let n = i16::try_from(n).map_err(|_| NoBinaryForm)?;
            fixed(out, &n.to_be_bytes())?;
        }
        (E::Int4, Field::Int(n)) => fixed(out, &n.to_be_bytes())?,
        (E::Int8, Field::Int(n)) => fixed(out, &i64::from(n).to_be_bytes())?,
        (E::Int8, Field::Long(n)) => fixed(out, &n.to_be_bytes())?,
        (E::Float4, Field::Float(f)) => fixed(out, &f.to_be_bytes())?,
        (E::Float8, Field::Double(f)) => fixed(out, &f.to_be_bytes())?,
        (E::Bool, Field::Bool(b)) => fixed(out, &[u8::from(b)])?,
        (E::Text, Field::Str(s)) => fixed(out, s.as_bytes())?,
        (E::Name, Field::Str(s)) if s.len() <= NAME_MAX_BYTES => fixed(out, s.as_bytes())?,
        (E::Jsonb, Field::Str(s)) => {
            length(out, s.len() + 1)?;
            out.push(1);
            out.extend_from_slice(s.as_bytes());
        }
        (E::Bytea, Field::Bytes(b)) => fixed(out, b)?,
        (E::Uuid, Field::Str(s)) => {
            let u = uuid::Uuid::parse_str(s).map_err(|_| NoBinaryForm)?;
            fixed(out, u.as_bytes())?;
        }
        (E::Numeric(scale), Field::Decimal(b)) => numeric(out, b, scale)?,
        (E::Date, Field::Date(d)) => {
            // the infinities are the same numbers on both sides
            let pg = match d {
                i32::MAX | i32::MIN => d,
                _ => d.checked_sub(PG_EPOCH_DAYS).ok_or(NoBinaryForm)?,
            };
            fixed(out, &pg.to_be_bytes())?;
        }
        (E::Time, Field::Time(us)) => fixed(out, &us.to_be_bytes())?,
        (E::Timestamp, Field::Timestamp(us) | Field::LocalTimestamp(us)) => {
            let pg = match us {
                i64::MAX | i64::MIN => us,
                _ => us.checked_sub(PG_EPOCH_MICROS).ok_or(NoBinaryForm)?,
            };
            fixed(out, &pg.to_be_bytes())?;
        }
        _ => return Err(NoBinaryForm),
    }
    Ok(())
}

/// Appends the length of a value.
fn length(out: &mut Vec<u8>, len: usize) -> Result<(), NoBinaryForm> {
    let len = i32::try_from(len).map_err(|_| NoBinaryForm)?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends a value's length and bytes.
fn fixed(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), NoBinaryForm> {
    length(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// A `numeric`'s binary form: the number of base-10000 digits, the weight of the first, the
/// sign, the display scale, then the digits, leading and trailing zero digits left out. The
/// value is the unscaled integer `unscaled` (big-endian two's complement) at scale `scale`.
fn numeric(out: &mut Vec<u8>, unscaled: &[u8], scale: u32) -> Result<(), NoBinaryForm> {
    let n = BigInt::from_signed_bytes_be(unscaled);
    let decimal = n.magnitude().to_string();
    let scale_len = scale as usize;
    // the integer part and the fraction (exactly `scale` digits)
    let (int_part, frac_part) = if decimal.len() > scale_len {
        let (i, f) = decimal.split_at(decimal.len() - scale_len);
        (i.to_string(), f.to_string())
    } else {
        (String::new(), format!("{decimal:0>scale_len$}"))
    };
    // aligned on groups of four digits either side of the point
    let int_pad = (4 - int_part.len() % 4) % 4;
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let int_aligned = format!("{}{int_part}", "0".repeat(int_pad));
    let frac_aligned = format!("{frac_part}{}", "0".repeat(frac_pad));
    let mut digits: Vec<i16> = Vec::with_capacity((int_aligned.len() + frac_aligned.len()) / 4);
    for chunk in int_aligned
        .as_bytes()
        .chunks(4)
        .chain(frac_aligned.as_bytes().chunks(4))
    {
        let d = chunk
            .iter()
            .fold(0i16, |acc, b| acc * 10 + i16::from(b - b'0'));
        digits.push(d);
    }
    let mut weight = i64::try_from(int_aligned.len() / 4).map_err(|_| NoBinaryForm)? - 1;
    let leading = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading);
    weight -= i64::try_from(leading).map_err(|_| NoBinaryForm)?;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let (weight, sign) = if digits.is_empty() {
        (0, 0u16)
    } else if n.sign() == Sign::Minus {
        (weight, 0x4000)
    } else {
        (weight, 0)
    };
    let ndigits = i16::try_from(digits.len()).map_err(|_| NoBinaryForm)?;
    let weight = i16::try_from(weight).map_err(|_| NoBinaryForm)?;
    let dscale = i16::try_from(scale).map_err(|_| NoBinaryForm)?;
    length(out, 8 + 2 * digits.len())?;
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(enc: Encoding, field: Field<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, enc, field).unwrap();
        out
    }

    /// A value's expected bytes: its length, then its form.
    fn framed(form: &[u8]) -> Vec<u8> {
        let mut out = (form.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(form);
        out
    }

    #[test]
    fn types_and_their_modifiers_pick_an_encoding() {
        use FieldType as T;
        assert_eq!(encoding(T::Int, None, "smallint"), Some(Encoding::Int2));
        assert_eq!(encoding(T::Int, None, "bigint"), Some(Encoding::Int8));
        assert_eq!(
            encoding(T::String, None, "character varying(1024)"),
            Some(Encoding::Text)
        );
        assert_eq!(
            encoding(
                T::LocalTimestampMicros,
                None,
                "timestamp(3) without time zone"
            ),
            Some(Encoding::Timestamp)
        );
        assert_eq!(
            encoding(T::Decimal, Some(2), "numeric(10,2)"),
            Some(Encoding::Numeric(2))
        );
        // no exact binary form: copied as text
        assert_eq!(encoding(T::Float, None, "double precision"), None);
        assert_eq!(
            encoding(T::LocalTimestampMicros, None, "timestamp with time zone"),
            None
        );
        assert_eq!(encoding(T::String, None, "interval"), None);
        assert_eq!(encoding(T::String, None, "integer[]"), None);
        assert_eq!(encoding(T::Decimal, None, "numeric"), None);
    }

    #[test]
    fn fixed_width_values() {
        assert_eq!(bytes(Encoding::Int2, Field::Int(-2)), framed(&[0xff, 0xfe]));
        assert_eq!(
            bytes(Encoding::Int4, Field::Int(258)),
            framed(&[0, 0, 1, 2])
        );
        assert_eq!(bytes(Encoding::Int8, Field::Int(-1)), framed(&[0xff; 8]));
        assert_eq!(
            bytes(Encoding::Int8, Field::Long(i64::MAX)),
            framed(&i64::MAX.to_be_bytes())
        );
        assert_eq!(
            bytes(Encoding::Float4, Field::Float(1.5)),
            framed(&[0x3f, 0xc0, 0, 0])
        );
        assert_eq!(
            bytes(Encoding::Float8, Field::Double(-2.0)),
            framed(&[0xc0, 0, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(bytes(Encoding::Bool, Field::Bool(true)), framed(&[1]));
        let mut out = Vec::new();
        assert_eq!(
            write(&mut out, Encoding::Int2, Field::Int(40_000)),
            Err(NoBinaryForm)
        );
        assert_eq!(
            write(&mut out, Encoding::Int4, Field::Str("1")),
            Err(NoBinaryForm)
        );
        write_null(&mut out);
        assert_eq!(out, [0xff; 4]);
    }

    #[test]
    fn strings_json_bytes_and_uuids() {
        assert_eq!(
            bytes(Encoding::Text, Field::Str("hé")),
            framed("hé".as_bytes())
        );
        assert_eq!(bytes(Encoding::Text, Field::Str("")), framed(&[]));
        assert_eq!(
            bytes(Encoding::Jsonb, Field::Str("[1]")),
            framed(b"\x01[1]")
        );
        assert_eq!(
            bytes(Encoding::Bytea, Field::Bytes(&[0, 0xab])),
            framed(&[0, 0xab])
        );
        assert_eq!(
            bytes(
                Encoding::Uuid,
                Field::Str("00010203-0405-0607-0809-0a0b0c0d0e0f")
            ),
            framed(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
        );
        let mut out = Vec::new();
        assert!(write(&mut out, Encoding::Uuid, Field::Str("nope")).is_err());
        assert_eq!(bytes(Encoding::Name, Field::Str(&"n".repeat(63))).len(), 67);
        assert!(write(&mut out, Encoding::Name, Field::Str(&"n".repeat(64))).is_err());
    }

    #[test]
    fn dates_and_timestamps_shift_to_2000_and_keep_the_infinities() {
        // 2000-01-01 is day 10957 after 1970-01-01, PostgreSQL's day 0
        assert_eq!(bytes(Encoding::Date, Field::Date(10_957)), framed(&[0; 4]));
        assert_eq!(
            bytes(Encoding::Date, Field::Date(0)),
            framed(&(-10_957i32).to_be_bytes())
        );
        assert_eq!(
            bytes(Encoding::Date, Field::Date(i32::MAX)),
            framed(&[0x7f, 0xff, 0xff, 0xff])
        );
        assert_eq!(
            bytes(Encoding::Date, Field::Date(i32::MIN)),
            framed(&[0x80, 0, 0, 0])
        );
        assert_eq!(
            bytes(
                Encoding::Timestamp,
                Field::LocalTimestamp(PG_EPOCH_MICROS + 1)
            ),
            framed(&1i64.to_be_bytes())
        );
        assert_eq!(
            bytes(Encoding::Timestamp, Field::Timestamp(0)),
            framed(&(-PG_EPOCH_MICROS).to_be_bytes())
        );
        assert_eq!(
            bytes(Encoding::Timestamp, Field::Timestamp(i64::MAX)),
            framed(&i64::MAX.to_be_bytes())
        );
        assert_eq!(
            bytes(Encoding::Timestamp, Field::LocalTimestamp(i64::MIN)),
            framed(&i64::MIN.to_be_bytes())
        );
        assert_eq!(
            bytes(Encoding::Time, Field::Time(3_723_000_004)),
            framed(&3_723_000_004i64.to_be_bytes())
        );
    }

    /// `numeric_send`'s output: ndigits, weight, sign, dscale, digits (all 16-bit).
    fn numeric_form(weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> Vec<u8> {
        let mut form = Vec::new();
        form.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        form.extend_from_slice(&weight.to_be_bytes());
        form.extend_from_slice(&sign.to_be_bytes());
        form.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            form.extend_from_slice(&d.to_be_bytes());
        }
        framed(&form)
    }

    fn num(unscaled: i64, scale: u32) -> Vec<u8> {
        let be = BigInt::from(unscaled).to_signed_bytes_be();
        bytes(Encoding::Numeric(scale), Field::Decimal(&be))
    }

    #[test]
    fn numerics_in_base_10000_digits() {
        // as `SELECT numeric_send(x)` prints them
        assert_eq!(num(1230, 2), numeric_form(0, 0, 2, &[12, 3000])); // 12.30
        assert_eq!(num(-5, 3), numeric_form(-1, 0x4000, 3, &[50])); // -0.005
        assert_eq!(num(0, 2), numeric_form(0, 0, 2, &[])); // 0.00
        assert_eq!(num(10_000, 0), numeric_form(1, 0, 0, &[1])); // 10000
        assert_eq!(num(123_456_789, 0), numeric_form(2, 0, 0, &[1, 2345, 6789]));
        assert_eq!(num(1, 8), numeric_form(-2, 0, 8, &[1])); // 0.00000001
        assert_eq!(
            num(-123_456_789_012, 4), // -12345678.9012
            numeric_form(1, 0x4000, 4, &[1234, 5678, 9012])
        );
        assert_eq!(
            num(i64::MIN, 0), // -9223372036854775808
            numeric_form(4, 0x4000, 0, &[922, 3372, 368, 5477, 5808])
        );
    }
}
