//! PostgreSQL's calendar over its whole range: dates from 4714-11-24 BC to 5874897-12-31,
//! timestamps from 4714-11-24 00:00:00 BC to 294276-12-31 23:59:59.999999, written and read in
//! PostgreSQL's ISO text form (`YYYY-MM-DD`, years past 9999 in full, `BC` after a year before
//! 1). chrono stops at ±262143 and writes year 0 and earlier as negative years, which
//! PostgreSQL refuses; the conversion here is the proleptic Gregorian calendar on plain
//! integers (days since 1970-01-01), exact for every value PostgreSQL holds.

/// Microseconds in a day.
const DAY_MICROS: i64 = 86_400_000_000;
/// Days from 1970-01-01 back to PostgreSQL's first date, 4714-11-24 BC (Julian day 0).
const FIRST_DAY: i64 = -2_440_588;
/// Days from 1970-01-01 to PostgreSQL's last date, 5874897-12-31.
const LAST_DAY: i64 = 2_145_042_905;

/// Whether `days` since 1970-01-01 is a date PostgreSQL holds.
pub fn date_in_range(days: i32) -> bool {
    (FIRST_DAY..=LAST_DAY).contains(&i64::from(days))
}

/// Whether `us` microseconds since 1970-01-01 00:00 is a timestamp PostgreSQL holds (every
/// such value from its first day on fits: its last is past what 64 bits of microseconds since
/// 1970 reach).
pub fn timestamp_in_range(us: i64) -> bool {
    us.div_euclid(DAY_MICROS) >= FIRST_DAY
}

/// The civil date of `days` since 1970-01-01: (year, month, day), year 0 being 1 BC.
/// (The days-to-civil conversion of the proleptic Gregorian calendar in 400-year eras.)
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (year 0 being 1 BC); `None` for a month or day that
/// does not exist.
fn days_of(year: i64, month: u32, day: u32) -> Option<i64> {
    let leap = year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > month_days {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// `n` zero-padded to at least `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    let mut n = n;
    while n > 0 {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = start.min(digits.len().saturating_sub(width));
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// Writes `YYYY-MM-DD` of `days` since 1970-01-01; whether the year is before 1 (then
/// PostgreSQL writes the year counted back, 1 BC being year 0, with ` BC` at the end).
fn push_date(out: &mut String, days: i64) -> bool {
    let (year, month, day) = civil(days);
    let bc = year <= 0;
    let shown = if bc { 1 - year } else { year };
    push_padded(out, shown.unsigned_abs(), 4);
    out.push('-');
    push_padded(out, u64::from(month), 2);
    out.push('-');
    push_padded(out, u64::from(day), 2);
    bc
}

/// PostgreSQL's text form of the date `days` since 1970-01-01 (the infinities excepted).
pub fn date_text(days: i64) -> String {
    let mut out = String::with_capacity(13);
    if push_date(&mut out, days) {
        out.push_str(" BC");
    }
    out
}

/// PostgreSQL's text form of the timestamp `us` microseconds since 1970-01-01 00:00, with
/// `zone` (`""` or `"+00"`) after the time, and six fraction digits (the infinities excepted).
pub fn timestamp_text(us: i64, zone: &str) -> String {
    timestamp_text_parts(us.div_euclid(DAY_MICROS), us.rem_euclid(DAY_MICROS), zone)
}

/// The same for a timestamp `days` after 1970-01-01 plus `micros` into that day: the last
/// years of PostgreSQL's range are further than 64 bits of microseconds since 1970 reach.
pub fn timestamp_text_parts(days: i64, micros: i64, zone: &str) -> String {
    let mut out = String::with_capacity(36);
    let bc = push_date(&mut out, days);
    let secs = micros / 1_000_000;
    out.push(' ');
    push_padded(&mut out, (secs / 3600) as u64, 2);
    out.push(':');
    push_padded(&mut out, (secs / 60 % 60) as u64, 2);
    out.push(':');
    push_padded(&mut out, (secs % 60) as u64, 2);
    out.push('.');
    push_padded(&mut out, (micros % 1_000_000) as u64, 6);
    out.push_str(zone);
    if bc {
        out.push_str(" BC");
    }
    out
}

/// The text form of a PostgreSQL timestamp as stored: `pg` microseconds since 2000-01-01.
pub fn pg_timestamp_text(pg: i64, zone: &str) -> String {
    const PG_EPOCH_DAYS: i64 = 10_957;
    timestamp_text_parts(
        pg.div_euclid(DAY_MICROS) + PG_EPOCH_DAYS,
        pg.rem_euclid(DAY_MICROS),
        zone,
    )
}

/// Days since 1970-01-01 of a date in PostgreSQL's ISO text form (`2024-02-29`,
/// `0044-03-15 BC`, `10000-01-01`); `None` if it is not one.
pub fn parse_date(text: &str) -> Option<i64> {
    let (text, bc) = strip_bc(text);
    parse_civil(text, bc)
}

/// `text` without a trailing ` BC`, and whether it had one.
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    }
}

/// Days since 1970-01-01 of `YYYY-MM-DD`, the year counted back when `bc`.
fn parse_civil(text: &str, bc: bool) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(y) && digits(m) && digits(d)) || y.len() > 7 {
        return None;
    }
    let year: i64 = y.parse().ok()?;
    if bc && year == 0 {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    days_of(year, m.parse().ok()?, d.parse().ok()?)
}

/// Microseconds since 1970-01-01 00:00 of a timestamp in PostgreSQL's ISO text form, with
/// `+00` or no zone (`2021-01-01 00:10:00.123`, `4713-01-01 00:00:00+00 BC`); `None` if it is
/// not one or lies past what 64 bits of microseconds hold.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let (text, bc) = strip_bc(text);
    let text = text.strip_suffix("+00").unwrap_or(text);
    let (date, time) = text.split_once(' ')?;
    let days = parse_civil(date, bc)?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':');
    let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
    let num = |s: &str| -> Option<i64> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (h, m, s) = (num(h)?, num(m)?, num(s)?);
    if h > 24 || m > 59 || s > 59 || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    let micros = ((h * 60 + m) * 60 + s) * 1_000_000 + frac;
    days.checked_mul(DAY_MICROS)?.checked_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ends_of_postgresqls_ranges() {
        assert_eq!(date_text(FIRST_DAY), "4714-11-24 BC");
        assert_eq!(date_text(LAST_DAY), "5874897-12-31");
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(-719_528), "0001-01-01 BC");
        assert_eq!(date_text(-719_162), "0001-01-01");
        assert_eq!(date_text(-719_163), "0001-12-31 BC");
        assert_eq!(date_text(days_of(10_000, 1, 1).unwrap()), "10000-01-01");
        assert_eq!(
            timestamp_text(FIRST_DAY * DAY_MICROS, ""),
            "4714-11-24 00:00:00.000000 BC"
        );
        assert_eq!(timestamp_text(-1, "+00"), "1969-12-31 23:59:59.999999+00");
        // the last microsecond PostgreSQL holds, as it stores it (since 2000-01-01)
        assert_eq!(
            pg_timestamp_text(9_223_371_331_199_999_999, "+00"),
            "294276-12-31 23:59:59.999999+00"
        );
        // the first day PostgreSQL's timestamps no longer reach
        assert_eq!(days_of(294_277, 1, 1), Some(106_762_940));
        assert!(date_in_range(FIRST_DAY as i32) && !date_in_range(FIRST_DAY as i32 - 1));
        assert!(date_in_range(LAST_DAY as i32) && !date_in_range(LAST_DAY as i32 + 1));
        assert!(timestamp_in_range(i64::MAX - 1));
        assert!(!timestamp_in_range(FIRST_DAY * DAY_MICROS - 1));
    }

    #[test]
    fn days_and_civil_dates_agree_everywhere() {
        let mut d = FIRST_DAY;
        while d <= LAST_DAY {
            let (y, m, day) = civil(d);
            assert_eq!(days_of(y, m, day), Some(d), "{d}");
            assert_eq!(parse_date(&date_text(d)), Some(d), "{}", date_text(d));
            d += 9_973;
        }
        // chrono agrees where it reaches
        for d in [-719_162i64, -1, 0, 59, 10_957, 2_932_896] {
            let c = chrono::DateTime::from_timestamp(d * 86_400, 0).unwrap();
            assert_eq!(date_text(d), c.format("%Y-%m-%d").to_string());
        }
        assert_eq!(days_of(2023, 2, 29), None);
        assert_eq!(
            days_of(2024, 2, 29).map(date_text).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(days_of(1900, 2, 29), None);
        assert_eq!(parse_date("0000-01-01 BC"), None);
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_date("x"), None);
    }

    #[test]
    fn timestamps_read_back_what_is_written() {
        for us in [
            0i64,
            -1,
            1,
            FIRST_DAY * DAY_MICROS,
            -62_135_596_800_000_001,
            1_609_459_800_123_456,
            i64::MAX - 1,
        ] {
            for zone in ["", "+00"] {
                let text = timestamp_text(us, zone);
                assert_eq!(parse_timestamp(&text), Some(us), "{text}");
            }
        }
        assert_eq!(
            parse_timestamp("2021-01-01 00:10:00.123"),
            Some(1_609_459_800_123_000)
        );
        assert_eq!(
            parse_timestamp("2021-01-01 00:10:00"),
            Some(1_609_459_800_000_000)
        );
        assert_eq!(parse_timestamp("2021-01-01"), None);
        assert_eq!(parse_timestamp("294276-12-31 23:59:59.999999+00"), None);
    }
}
