//! Decoding PostgreSQL's binary column values straight into Avro values, with a length check on
//! every value, and the reverse direction: Avro values into PostgreSQL's text input form, which
//! the consumer casts back into the column's type.
//!
//! Timestamps and dates keep PostgreSQL's `infinity`/`-infinity` as `i64::MAX`/`i64::MIN`
//! (`i32::MAX`/`i32::MIN` for dates), so nothing the source can hold is refused.

use apache_avro::types::Value;
use apache_avro::Decimal;
use num_bigint::BigInt;
use tokio_postgres::types::{FromSql, Type};

use crate::catalog::ColumnKind;

/// The most bytes an Avro decimal of a `numeric(p,s)` takes (p is at most 1000 digits: 416
/// bytes), with room: a longer one is a hostile or broken message, whose text form would cost
/// time and memory out of all proportion.
pub const MAX_DECIMAL_BYTES: usize = 512;
/// The largest scale of a `numeric(p,s)`; a decimal field with a larger one is refused before
/// any value is rendered with it (a scale of 2^31 would write gigabytes of zeros).
pub const MAX_DECIMAL_SCALE: u32 = 1000;

/// Microseconds between 1970-01-01 and 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("column {column}: expected {expected} bytes for {kind}, got {got}")]
    Length {
        column: String,
        kind: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("column {column}: {message}")]
    Invalid { column: String, message: String },
}

/// The raw bytes of one column of a row, whatever its type.
pub struct Raw<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn fixed<const N: usize>(
    column: &str,
    kind: &'static str,
    raw: &[u8],
) -> Result<[u8; N], ValueError> {
    raw.try_into().map_err(|_| ValueError::Length {
        column: column.to_string(),
        kind,
        expected: N,
        got: raw.len(),
    })
}

fn utf8(column: &str, raw: &[u8]) -> Result<String, ValueError> {
    String::from_utf8(raw.to_vec()).map_err(|e| ValueError::Invalid {
        column: column.to_string(),
        message: format!("not UTF-8: {e}"),
    })
}

/// Shifts a PostgreSQL timestamp onto the Unix epoch, keeping the infinities; `None` for the
/// last 30 years of PostgreSQL's range (294247 to 294276), which microseconds since 1970 do not
/// reach in 64 bits (or which would read as `infinity`): those travel as text.
fn shift_micros(pg: i64) -> Option<i64> {
    if pg == i64::MAX || pg == i64::MIN {
        Some(pg)
    } else {
        pg.checked_add(PG_EPOCH_MICROS).filter(|us| *us != i64::MAX)
    }
}

fn shift_days(pg: i32) -> i32 {
    if pg == i32::MAX || pg == i32::MIN {
        pg
    } else {
        pg.saturating_add(PG_EPOCH_DAYS)
    }
}

/// Decodes one non-null binary value of a column of kind `kind`.
pub fn decode(column: &str, kind: ColumnKind, raw: &[u8]) -> Result<Value, ValueError> {
    Ok(match kind {
        ColumnKind::Int2 => Value::Int(i16::from_be_bytes(fixed(column, "int2", raw)?).into()),
        ColumnKind::Int4 => Value::Int(i32::from_be_bytes(fixed(column, "int4", raw)?)),
        ColumnKind::Int8 => Value::Long(i64::from_be_bytes(fixed(column, "int8", raw)?)),
        ColumnKind::Float4 => Value::Float(f32::from_be_bytes(fixed(column, "float4", raw)?)),
        ColumnKind::Float8 => Value::Double(f64::from_be_bytes(fixed(column, "float8", raw)?)),
        ColumnKind::Bool => Value::Boolean(fixed::<1>(column, "bool", raw)?[0] != 0),
        ColumnKind::Text | ColumnKind::AsText => Value::String(utf8(column, raw)?),
        ColumnKind::Json => {
            // jsonb's binary form is a version byte (1) and the text; json's is the text. The
            // byte 0x01 never starts JSON text, so the two cannot be confused.
            let text = match raw.split_first() {
                Some((1, rest)) => rest,
                _ => raw,
            };
            Value::String(utf8(column, text)?)
        }
        ColumnKind::Date => {
            Value::Date(shift_days(i32::from_be_bytes(fixed(column, "date", raw)?)))
        }
        ColumnKind::Timestamp => {
            let pg = i64::from_be_bytes(fixed(column, "timestamp", raw)?);
            match shift_micros(pg) {
                Some(us) => Value::LocalTimestampMicros(us),
                None => Value::String(crate::calendar::pg_timestamp_text(pg, "")),
            }
        }
        ColumnKind::TimestampTz => {
            let pg = i64::from_be_bytes(fixed(column, "timestamptz", raw)?);
            match shift_micros(pg) {
                Some(us) => Value::TimestampMicros(us),
                None => Value::String(crate::calendar::pg_timestamp_text(pg, "+00")),
            }
        }
        ColumnKind::Time => Value::TimeMicros(i64::from_be_bytes(fixed(column, "time", raw)?)),
        ColumnKind::Bytea => Value::Bytes(raw.to_vec()),
        ColumnKind::Uuid => Value::Uuid(uuid::Uuid::from_bytes(fixed(column, "uuid", raw)?)),
        ColumnKind::Decimal { scale, .. } => {
            let text = utf8(column, raw)?;
            match unscaled_decimal(&text, scale) {
                Some(unscaled) => Value::Decimal(Decimal::from(unscaled.to_signed_bytes_be())),
                // the decimal logical type has no NaN or infinities: they travel as text in the
                // field's string branch
                None if is_special_numeric(&text) => Value::String(text),
                None => {
                    return Err(ValueError::Invalid {
                        column: column.to_string(),
                        message: format!(
                            "numeric value '{text}' has more fraction digits than its scale {scale}"
                        ),
                    })
                }
            }
        }
    })
}

/// Whether `text` is one of numeric's values that are not numbers.
pub fn is_special_numeric(text: &str) -> bool {
    matches!(text, "NaN" | "Infinity" | "-Infinity")
}

/// `"-12.3"` at scale 2 is the unscaled integer -1230. `None` for NaN, infinities, or more
/// fraction digits than the scale.
fn unscaled_decimal(text: &str, scale: u32) -> Option<BigInt> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || frac_part.len() > scale as usize
    {
        return None;
    }
    let mut all = String::with_capacity(int_part.len() + scale as usize + 1);
    if negative {
        all.push('-');
    }
    all.push_str(if int_part.is_empty() { "0" } else { int_part });
    all.push_str(frac_part);
    all.extend(std::iter::repeat_n('0', scale as usize - frac_part.len()));
    all.parse().ok()
}

/// The Avro value of a column from PostgreSQL's text output of it (as `col::text` gives it with
/// `DateStyle=ISO`): how keys found missing, listed as text, become the keys of delete events.
pub fn from_pg_text(column: &str, kind: ColumnKind, text: &str) -> Result<Value, ValueError> {
    let bad = |what: &str| ValueError::Invalid {
        column: column.to_string(),
        message: format!("'{text}' is not a valid {what}"),
    };
    Ok(match kind {
        ColumnKind::Int2 | ColumnKind::Int4 => {
            Value::Int(text.parse().map_err(|_| bad("integer"))?)
        }
        ColumnKind::Int8 => Value::Long(text.parse().map_err(|_| bad("bigint"))?),
        ColumnKind::Float4 => Value::Float(text.parse().map_err(|_| bad("real"))?),
        ColumnKind::Float8 => Value::Double(text.parse().map_err(|_| bad("double"))?),
        ColumnKind::Bool => Value::Boolean(text == "t" || text == "true"),
        ColumnKind::Text | ColumnKind::Json | ColumnKind::AsText => Value::String(text.to_string()),
        ColumnKind::Uuid => Value::Uuid(text.parse().map_err(|_| bad("uuid"))?),
        ColumnKind::Date => match text {
            "infinity" => Value::Date(i32::MAX),
            "-infinity" => Value::Date(i32::MIN),
            _ => Value::Date(
                crate::calendar::parse_date(text)
                    .and_then(|d| i32::try_from(d).ok())
                    .ok_or_else(|| bad("date"))?,
            ),
        },
        ColumnKind::Timestamp | ColumnKind::TimestampTz => {
            let us = match text {
                "infinity" => i64::MAX,
                "-infinity" => i64::MIN,
                _ => match crate::calendar::parse_timestamp(text) {
                    Some(us) if us != i64::MAX => us,
                    // past what microseconds since 1970 hold: carried as text
                    _ if crate::calendar::parse_date(text.split(' ').next().unwrap_or(""))
                        .is_some() =>
                    {
                        return Ok(Value::String(text.to_string()))
                    }
                    _ => return Err(bad("timestamp")),
                },
            };
            if kind == ColumnKind::Timestamp {
                Value::LocalTimestampMicros(us)
            } else {
                Value::TimestampMicros(us)
            }
        }
        ColumnKind::Time => {
            let t =
                chrono::NaiveTime::parse_from_str(text, "%H:%M:%S%.f").map_err(|_| bad("time"))?;
            Value::TimeMicros((t - chrono::NaiveTime::MIN).num_microseconds().unwrap_or(0))
        }
        ColumnKind::Decimal { scale, .. } => match unscaled_decimal(text, scale) {
            Some(unscaled) => Value::Decimal(Decimal::from(unscaled.to_signed_bytes_be())),
            None if is_special_numeric(text) => Value::String(text.to_string()),
            None => return Err(bad("decimal")),
        },
        ColumnKind::Bytea => {
            let hex = text.strip_prefix("\\x").ok_or_else(|| bad("bytea"))?;
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
            Value::Bytes(bytes.ok_or_else(|| bad("bytea"))?)
        }
    })
}

/// Wraps a value for a nullable field (`["null", T]`), or passes it through.
pub fn nullable(value: Option<Value>, is_nullable: bool) -> Value {
    match (value, is_nullable) {
        (None, _) => Value::Union(0, Box::new(Value::Null)),
        (Some(v), true) => Value::Union(1, Box::new(v)),
        (Some(v), false) => v,
    }
}

/// PostgreSQL's text input form of a decoded Avro value (`None` for null). `scale` is the
/// decimal scale of the field, when it is a decimal.
pub fn to_pg_text(value: &Value, scale: Option<u32>) -> Result<Option<String>, String> {
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::Union(_, inner) => return to_pg_text(inner, scale),
        Value::Boolean(b) => (if *b { "t" } else { "f" }).to_string(),
        Value::Int(v) => v.to_string(),
        Value::Long(v) => v.to_string(),
        Value::Float(v) => float_text(f64::from(*v), v.to_string()),
        Value::Double(v) => float_text(*v, v.to_string()),
        Value::String(s) => s.clone(),
        Value::Enum(_, s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
        Value::Date(days) => date_text(*days)?,
        Value::LocalTimestampMicros(us) => timestamp_text(*us, "")?,
        Value::TimestampMicros(us) => timestamp_text(*us, "+00")?,
        Value::LocalTimestampMillis(ms) => timestamp_text(ms.saturating_mul(1000), "")?,
        Value::TimestampMillis(ms) => timestamp_text(ms.saturating_mul(1000), "+00")?,
        Value::TimeMicros(us) => time_text(*us),
        Value::TimeMillis(ms) => {
            to_pg_text(&Value::TimeMicros(i64::from(*ms) * 1000), None)?.unwrap_or_default()
        }
        Value::Decimal(d) => {
            let scale = scale.unwrap_or(0);
            let unscaled = BigInt::from(d.clone());
            let bytes = unscaled.bits().div_ceil(8);
            if scale > MAX_DECIMAL_SCALE || bytes > MAX_DECIMAL_BYTES as u64 {
                return Err(format!(
                    "a decimal of {bytes} bytes at scale {scale}: beyond any PostgreSQL numeric(p,s)"
                ));
            }
            decimal_text(&unscaled, scale)
        }
        other => return Err(format!("no PostgreSQL form for Avro value {other:?}")),
    }))
}

pub(crate) fn date_text(days: i32) -> Result<String, String> {
    Ok(match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => crate::calendar::date_text(i64::from(d)),
    })
}

pub(crate) fn time_text(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        us.rem_euclid(1_000_000)
    )
}

pub(crate) fn float_text(v: f64, shortest: String) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        (if v > 0.0 { "Infinity" } else { "-Infinity" }).into()
    } else {
        shortest
    }
}

pub(crate) fn timestamp_text(us: i64, zone: &str) -> Result<String, String> {
    Ok(match us {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => crate::calendar::timestamp_text(us, zone),
    })
}

pub(crate) fn decimal_text(unscaled: &BigInt, scale: u32) -> String {
    let digits = unscaled.magnitude().to_string();
    let sign = if unscaled.sign() == num_bigint::Sign::Minus {
        "-"
    } else {
        ""
    };
    let scale = scale as usize;
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = if digits.len() <= scale {
        format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
    } else {
        digits
    };
    let (int_part, frac_part) = padded.split_at(padded.len() - scale);
    format!("{sign}{int_part}.{frac_part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_length_checks() {
        assert_eq!(
            decode("c", ColumnKind::Int4, &7i32.to_be_bytes()),
            Ok(Value::Int(7))
        );
        assert_eq!(
            decode("c", ColumnKind::Int2, &(-3i16).to_be_bytes()),
            Ok(Value::Int(-3))
        );
        let err = decode("c", ColumnKind::Int8, &[1, 2, 3]).unwrap_err();
        assert!(err.to_string().contains("expected 8 bytes"), "{err}");
        assert!(decode("c", ColumnKind::Uuid, &[0; 15]).is_err());
        assert!(decode("c", ColumnKind::Text, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn timestamp_text_matches_formatted_output() {
        use chrono::{Datelike, Timelike};
        // from year 1 to 9999, in steps that vary every field
        let mut us: i64 = -62_135_596_800_000_000;
        while us < 253_402_300_799_000_000 {
            let t = chrono::DateTime::from_timestamp_micros(us)
                .unwrap()
                .naive_utc();
            let want = format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.nanosecond() / 1_000
            );
            assert_eq!(timestamp_text(us, "+00").unwrap(), want);
            us += 12_345_678_901_234;
        }
        assert_eq!(
            timestamp_text(-62_135_596_800_000_001, "").unwrap(),
            "0001-12-31 23:59:59.999999 BC"
        );
    }

    #[test]
    fn timestamps_shift_to_unix_epoch_and_keep_infinity() {
        // 2000-01-01 00:00:00 is 0 for PostgreSQL
        assert_eq!(
            decode("c", ColumnKind::Timestamp, &0i64.to_be_bytes()),
            Ok(Value::LocalTimestampMicros(PG_EPOCH_MICROS))
        );
        assert_eq!(
            decode("c", ColumnKind::Timestamp, &i64::MAX.to_be_bytes()),
            Ok(Value::LocalTimestampMicros(i64::MAX))
        );
        assert_eq!(
            decode("c", ColumnKind::Date, &0i32.to_be_bytes()),
            Ok(Value::Date(10_957))
        );
        assert_eq!(
            to_pg_text(&Value::LocalTimestampMicros(PG_EPOCH_MICROS + 1), None)
                .unwrap()
                .unwrap(),
            "2000-01-01 00:00:00.000001"
        );
        assert_eq!(
            to_pg_text(&Value::TimestampMicros(i64::MIN), None)
                .unwrap()
                .unwrap(),
            "-infinity"
        );
        assert_eq!(
            to_pg_text(&Value::Date(10_957), None).unwrap().unwrap(),
            "2000-01-01"
        );
        assert_eq!(
            to_pg_text(&Value::TimeMicros(3_723_000_004), None)
                .unwrap()
                .unwrap(),
            "01:02:03.000004"
        );
    }

    #[test]
    fn decimals_round_trip_through_text() {
        let kind = ColumnKind::Decimal {
            precision: 10,
            scale: 2,
        };
        for (input, expected) in [
            ("-12.3", "-12.30"),
            ("0.05", "0.05"),
            ("123", "123.00"),
            (".5", "0.50"),
        ] {
            let v = decode("c", kind, input.as_bytes()).unwrap();
            assert_eq!(
                to_pg_text(&v, Some(2)).unwrap().unwrap(),
                expected,
                "{input}"
            );
        }
        // no decimal holds these: they travel as text (the field's string branch)
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(
                decode("c", kind, special.as_bytes()),
                Ok(Value::String(special.into()))
            );
            assert_eq!(
                from_pg_text("c", kind, special),
                Ok(Value::String(special.into()))
            );
        }
        assert!(decode("c", kind, b"1.234").is_err());
        assert!(decode("c", kind, b"nan").is_err());
        // a hostile decimal: refused before it is rendered
        let huge = Value::Decimal(Decimal::from(vec![0x7f; 100_000]));
        assert!(to_pg_text(&huge, Some(2)).is_err());
        assert!(to_pg_text(&Value::Decimal(Decimal::from(vec![1])), Some(u32::MAX)).is_err());
        assert_eq!(decimal_text(&BigInt::from(-5), 3), "-0.005");
    }

    #[test]
    fn text_forms_of_other_values() {
        assert_eq!(
            to_pg_text(&Value::Bytes(vec![0, 0xab]), None)
                .unwrap()
                .unwrap(),
            "\\x00ab"
        );
        assert_eq!(
            to_pg_text(&Value::Double(f64::NAN), None).unwrap().unwrap(),
            "NaN"
        );
        assert_eq!(
            to_pg_text(&Value::Boolean(true), None).unwrap().unwrap(),
            "t"
        );
        assert_eq!(to_pg_text(&nullable(None, true), None).unwrap(), None);
        assert_eq!(
            to_pg_text(&nullable(Some(Value::Int(4)), true), None)
                .unwrap()
                .unwrap(),
            "4"
        );
    }

    #[test]
    fn text_forms_parse_back_into_the_values_they_came_from() {
        for (kind, v) in [
            (ColumnKind::Int4, Value::Int(-7)),
            (ColumnKind::Int8, Value::Long(1 << 40)),
            (ColumnKind::Date, Value::Date(-400)),
            (
                ColumnKind::Timestamp,
                Value::LocalTimestampMicros(1_600_000_000_123_456),
            ),
            (ColumnKind::TimestampTz, Value::TimestampMicros(-5)),
            (ColumnKind::Time, Value::TimeMicros(3_723_000_004)),
            (ColumnKind::Bytea, Value::Bytes(vec![0, 0xab])),
        ] {
            let text = to_pg_text(&v, None).unwrap().unwrap();
            assert_eq!(from_pg_text("c", kind, &text).unwrap(), v, "{text}");
        }
        let d = from_pg_text(
            "c",
            ColumnKind::Decimal {
                precision: 6,
                scale: 2,
            },
            "-1.5",
        )
        .unwrap();
        assert_eq!(to_pg_text(&d, Some(2)).unwrap().unwrap(), "-1.50");
        assert!(from_pg_text("c", ColumnKind::Int4, "x").is_err());
    }

    #[test]
    fn jsonb_version_byte_is_dropped() {
        assert_eq!(
            decode("c", ColumnKind::Json, b"\x01{\"a\":1}"),
            Ok(Value::String("{\"a\":1}".into()))
        );
        assert_eq!(
            decode("c", ColumnKind::Json, b"[1]"),
            Ok(Value::String("[1]".into()))
        );
    }
}
