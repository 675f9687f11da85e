//! The values that validation rules compare: a column's PostgreSQL type decides how its text
//! form is read, so that `salary > 10000` compares numbers and `dob > 2007-01-01` dates.

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// How the values of a column compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Integer,
    /// `numeric`: compared exactly, digit by digit.
    Decimal,
    Float,
    Date,
    Timestamp,
    TimestampTz,
    Bool,
    Text,
    /// Anything else: only `IS NOT NULL`, `LENGTH`, regular expressions and `IN` (as text).
    Other,
}

/// A value read as its column's kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    Integer(i128),
    Decimal(Decimal),
    Float(f64),
    /// Dates and timestamps as seconds and nanoseconds since the epoch (UTC for `timestamptz`),
    /// with the infinities at the ends.
    Instant(i64, u32),
    Bool(bool),
    Text(String),
}

pub fn kind_of(pg_type: &str) -> Kind {
    let t = pg_type.trim().to_ascii_lowercase();
    let base = t.split('(').next().unwrap_or("").trim();
    match base {
        "smallint" | "integer" | "bigint" | "int2" | "int4" | "int8" | "int" => Kind::Integer,
        "numeric" | "decimal" => Kind::Decimal,
        "real" | "double precision" | "float4" | "float8" => Kind::Float,
        "date" => Kind::Date,
        "timestamp without time zone" | "timestamp" => Kind::Timestamp,
        "timestamp with time zone" | "timestamptz" => Kind::TimestampTz,
        "boolean" | "bool" => Kind::Bool,
        "text" | "character varying" | "varchar" | "character" | "char" | "bpchar" | "name"
        | "citext" => Kind::Text,
        _ => Kind::Other,
    }
}

/// Reads a value (PostgreSQL's text form, or a rule's constant) as `kind`.
pub fn read(kind: Kind, s: &str) -> Option<Typed> {
    let s = s.trim();
    Some(match kind {
        Kind::Integer => Typed::Integer(s.parse().ok()?),
        Kind::Decimal => Typed::Decimal(Decimal::parse(s)?),
        Kind::Float => Typed::Float(match s.to_ascii_lowercase().as_str() {
            "nan" => f64::NAN,
            "infinity" | "inf" => f64::INFINITY,
            "-infinity" | "-inf" => f64::NEG_INFINITY,
            _ => s.parse().ok()?,
        }),
        Kind::Date => instant(s, |s| {
            let (s, bc) = bc(s);
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            Some(era(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp(), bc))
        })?,
        Kind::Timestamp => instant(s, |s| {
            let (s, bc) = bc(s);
            let t = naive(s)?;
            Some(era(t.and_utc().timestamp(), bc))
                .map(|(secs, _)| (secs, t.and_utc().timestamp_subsec_nanos()))
        })?,
        Kind::TimestampTz => instant(s, |s| {
            let t = zoned(s)?;
            Some((t.timestamp(), t.timestamp_subsec_nanos()))
        })?,
        Kind::Bool => Typed::Bool(match s.to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" => true,
            "f" | "false" | "no" | "off" | "0" => false,
            _ => return None,
        }),
        Kind::Text | Kind::Other => Typed::Text(s.to_string()),
    })
}

fn instant(s: &str, parse: impl Fn(&str) -> Option<(i64, u32)>) -> Option<Typed> {
    match s.to_ascii_lowercase().as_str() {
        "infinity" => Some(Typed::Instant(i64::MAX, 0)),
        "-infinity" => Some(Typed::Instant(i64::MIN, 0)),
        _ => parse(s).map(|(secs, nanos)| Typed::Instant(secs, nanos)),
    }
}

fn bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

/// A BC date is far before any AD date; the exact distance does not matter for an order.
fn era(secs: i64, bc: bool) -> (i64, u32) {
    if bc {
        (i64::MIN / 2 - secs, 0)
    } else {
        (secs, 0)
    }
}

fn naive(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })
}

/// A `timestamptz` in PostgreSQL's text form (`2024-01-01 10:00:00+00`, `+05:30`), or
/// without an offset (then UTC).
fn zoned(s: &str) -> Option<DateTime<FixedOffset>> {
    let utc = || FixedOffset::east_opt(0);
    // the offset: the last '+' or a '-' after the time part
    let split = s
        .rfind(['+', '-'])
        .filter(|&i| i > 10 && s[..i].contains(':'));
    match split {
        Some(i) => {
            let (t, off) = s.split_at(i);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let mut parts = off[1..].split(':');
            let h: i32 = parts.next()?.parse().ok()?;
            let m: i32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
            let sec: i32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
            let offset = FixedOffset::east_opt(sign * (h * 3600 + m * 60 + sec))?;
            offset.from_local_datetime(&naive(t)?).single()
        }
        None => Some(Utc.from_utc_datetime(&naive(s)?).with_timezone(&utc()?)),
    }
}

/// Compares two values of one kind; `None` when they cannot be compared.
pub fn compare(a: &Typed, b: &Typed) -> Option<Ordering> {
    Some(match (a, b) {
        (Typed::Integer(x), Typed::Integer(y)) => x.cmp(y),
        (Typed::Decimal(x), Typed::Decimal(y)) => x.cmp(y),
        // as in PostgreSQL, NaN is equal to itself and greater than every other value
        (Typed::Float(x), Typed::Float(y)) => match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => x.partial_cmp(y)?,
        },
        (Typed::Instant(s1, n1), Typed::Instant(s2, n2)) => (s1, n1).cmp(&(s2, n2)),
        (Typed::Bool(x), Typed::Bool(y)) => x.cmp(y),
        (Typed::Text(x), Typed::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => return None,
    })
}

/// An exact decimal: sign, the digits without leading or trailing zeros, and the position of
/// the decimal point; or NaN and the infinities, ordered as PostgreSQL orders them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decimal {
    NegInfinity,
    Finite {
        negative: bool,
        /// Digits before the point, counted in `digits` (may be negative for 0.00x).
        point: i64,
        digits: Vec<u8>,
    },
    Infinity,
    NaN,
}

impl Decimal {
    pub fn parse(s: &str) -> Option<Decimal> {
        match s.to_ascii_lowercase().as_str() {
            "nan" => return Some(Decimal::NaN),
            "infinity" | "+infinity" => return Some(Decimal::Infinity),
            "-infinity" => return Some(Decimal::NegInfinity),
            _ => {}
        }
        let (negative, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        let mut point = int.len() as i64 + exp;
        let lead = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..lead);
        point -= lead as i64;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Some(Decimal::Finite {
                negative: false,
                point: 0,
                digits,
            });
        }
        Some(Decimal::Finite {
            negative,
            point,
            digits,
        })
    }

    fn rank(&self) -> u8 {
        match self {
            Decimal::NegInfinity => 0,
            Decimal::Finite { .. } => 1,
            Decimal::Infinity => 2,
            Decimal::NaN => 3,
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                Decimal::Finite {
                    negative: n1,
                    point: p1,
                    digits: d1,
                },
                Decimal::Finite {
                    negative: n2,
                    point: p2,
                    digits: d2,
                },
            ) => {
                let (z1, z2) = (d1.is_empty(), d2.is_empty());
                let sign = |neg: bool, zero: bool| {
                    if zero {
                        0
                    } else if neg {
                        -1
                    } else {
                        1
                    }
                };
                let (s1, s2) = (sign(*n1, z1), sign(*n2, z2));
                if s1 != s2 || s1 == 0 {
                    return s1.cmp(&s2);
                }
                let magnitude = p1.cmp(p2).then_with(|| d1.cmp(d2));
                if s1 < 0 {
                    magnitude.reverse()
                } else {
                    magnitude
                }
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(kind: Kind, a: &str, b: &str) -> Option<Ordering> {
        compare(&read(kind, a)?, &read(kind, b)?)
    }

    #[test]
    fn decimals_compare_exactly() {
        use Ordering::*;
        let d = Kind::Decimal;
        assert_eq!(cmp(d, "10000.00", "10000"), Some(Equal));
        assert_eq!(cmp(d, "10000.01", "10000"), Some(Greater));
        assert_eq!(cmp(d, "9999.999999999999999999", "10000"), Some(Less));
        assert_eq!(cmp(d, "-5", "-40"), Some(Greater));
        assert_eq!(cmp(d, "0.001", "0.01"), Some(Less));
        assert_eq!(cmp(d, "-0.00", "0"), Some(Equal));
        assert_eq!(cmp(d, "1e3", "999.5"), Some(Greater));
        assert_eq!(cmp(d, "NaN", "Infinity"), Some(Greater));
        assert_eq!(cmp(d, "-Infinity", "-1e300"), Some(Less));
        assert_eq!(read(d, "12a"), None);
        assert_eq!(read(d, "."), None);
    }

    #[test]
    fn dates_and_timestamps_compare_by_value() {
        use Ordering::*;
        assert_eq!(cmp(Kind::Date, "2007-01-02", "2007-01-01"), Some(Greater));
        assert_eq!(cmp(Kind::Date, "0044-03-15 BC", "0001-01-01"), Some(Less));
        assert_eq!(cmp(Kind::Date, "infinity", "9999-12-31"), Some(Greater));
        assert_eq!(
            cmp(
                Kind::Timestamp,
                "2024-01-01 10:00:00.5",
                "2024-01-01 10:00:00"
            ),
            Some(Greater)
        );
        assert_eq!(
            cmp(
                Kind::TimestampTz,
                "2024-01-01 12:00:00+02",
                "2024-01-01 10:00:00+00"
            ),
            Some(Equal)
        );
        assert_eq!(
            cmp(
                Kind::TimestampTz,
                "2024-01-01 10:00:01+00",
                "2024-01-01 10:00:00"
            ),
            Some(Greater)
        );
        assert_eq!(
            cmp(
                Kind::TimestampTz,
                "2024-01-01 10:00:00-05:30",
                "2024-01-01 15:30:00+00"
            ),
            Some(Equal)
        );
    }

    #[test]
    fn floats_order_nan_last_and_kinds_follow_the_type_name() {
        assert_eq!(cmp(Kind::Float, "NaN", "Infinity"), Some(Ordering::Greater));
        assert_eq!(cmp(Kind::Float, "1.5e2", "150"), Some(Ordering::Equal));
        assert_eq!(kind_of("numeric(10,2)"), Kind::Decimal);
        assert_eq!(kind_of("character varying(1024)"), Kind::Text);
        assert_eq!(kind_of("timestamp with time zone"), Kind::TimestampTz);
        assert_eq!(kind_of("jsonb"), Kind::Other);
        assert_eq!(kind_of("integer[]"), Kind::Other);
    }
}
