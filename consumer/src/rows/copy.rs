//! `COPY` of snapshot reads and inserts into a replica table. Binary (`FORMAT binary`), written
//! straight from the rows' Avro datums, when every column of the rows has a binary form (see
//! [`binary`](super::binary)) and every row is a datum; text otherwise, or when a value has no
//! binary form in its column (the target then judges it as it always did).

use futures::SinkExt;
use tunnel_shared::datum::Reader;
use tunnel_shared::pg::{quote_ident, PgError};

use super::binary::{self, Encoding};
use super::Columns;
use crate::model::Entry;

/// The signature, flags and header extension length of a binary `COPY` stream.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The field count -1 that ends a binary `COPY` stream.
const BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// What the error of a `COPY` refused at its start says first (see [`copy_in`]).
pub(crate) const COPY_REFUSED: &str = "starting a COPY";

/// Snapshot reads and inserts first try a plain `COPY` into the table, several times cheaper
/// for the server than an upsert. A key that exists already (a replay, a row re-read) makes the
/// `COPY` fail as a whole: it is rolled back to its savepoint and the caller upserts instead.
/// Returns whether the rows were copied.
pub(super) async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    columns: &Columns,
    entries: &[&Entry],
) -> Result<bool, PgError> {
    let ordered = in_key_order(entries);
    let (buf, format, options) = match binary_rows(columns, &ordered) {
        Some(buf) => (buf, "binary", " (FORMAT binary)"),
        None => match text_rows(columns, &ordered) {
            Some(buf) => (buf, "text", ""),
            // a row that does not render: the upsert sets it apart
            None => return Ok(false),
        },
    };
    let cols: Vec<String> = columns
        .shapes
        .iter()
        .map(|s| quote_ident(&s.column))
        .collect();
    tx.batch_execute("SAVEPOINT tunnel_copy")
        .await
        .map_err(PgError::query("setting a savepoint"))?;
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({}) FROM STDIN{options}",
            cols.join(", ")
        ))
        .await
        // refused before copy mode (no such table or column): the connection is then out of
        // step with the server (rust-postgres#1337), so the transaction is given up whole
        .map_err(PgError::query(format!("{COPY_REFUSED} into {table}")))?;
    let copied = async {
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(buf)).await?;
        sink.finish().await
    }
    .await;
    let (sql, ok) = match copied {
        Ok(rows) => {
            tracing::debug!(table = %table, rows, format, "copied rows");
            ("RELEASE SAVEPOINT tunnel_copy", true)
        }
        Err(e) => {
            tracing::debug!(error = %e, "copy failed, upserting instead");
            ("ROLLBACK TO SAVEPOINT tunnel_copy", false)
        }
    };
    tx.batch_execute(sql)
        .await
        .map_err(PgError::query("ending a savepoint"))?;
    Ok(ok)
}

/// The entries in key order: the primary-key index then grows at its right edge, as in a bulk
/// load, instead of splitting pages all over the range the batch's partitions interleave.
fn in_key_order<'e>(entries: &[&'e Entry]) -> Vec<&'e Entry> {
    let mut ordered: Vec<&Entry> = entries.to_vec();
    if ordered.iter().all(|e| e.message.key.len() == 1) {
        // one column: no vector per key
        ordered.sort_by_cached_key(|e| key_part(e.message.key[0].as_deref()));
    } else {
        ordered.sort_by_cached_key(|e| key_order(&e.message.key));
    }
    ordered
}

/// How each field of the rows' writer schema goes into binary `COPY`: `None` for a field no
/// column holds. `None` as a whole when a column has no binary form.
fn binary_plan(columns: &Columns, entry: &Entry) -> Option<Vec<Option<Encoding>>> {
    let (_, layout) = entry.row_datum()?;
    let fields = layout.fields();
    let mut plan = vec![None; fields.len()];
    for (&i, shape) in columns.positions.iter().zip(&columns.shapes) {
        let (spec, scale) = fields.get(i)?;
        plan[i] = Some(binary::encoding(spec.ty, *scale, &shape.pg_type)?);
    }
    Some(plan)
}

/// The rows in binary `COPY` form, when every column has a binary form and every value one in
/// its column.
fn binary_rows(columns: &Columns, entries: &[&Entry]) -> Option<Vec<u8>> {
    let plan = binary_plan(columns, entries.first()?)?;
    let count = i16::try_from(columns.positions.len()).ok()?;
    let mut buf = Vec::with_capacity(BINARY_HEADER.len() + entries.len() * 96);
    buf.extend_from_slice(BINARY_HEADER);
    for e in entries {
        // entries of one value schema: one layout (checked, not assumed)
        let (datum, layout) = e.row_datum()?;
        if layout.fields().len() != plan.len() {
            return None;
        }
        buf.extend_from_slice(&count.to_be_bytes());
        let mut r = Reader::new(datum);
        for ((spec, _), enc) in layout.fields().iter().zip(&plan) {
            let field = r.read_field(*spec).ok()?;
            match (enc, field) {
                (None, _) => {}
                (Some(_), None) => binary::write_null(&mut buf),
                (Some(enc), Some(f)) => binary::write(&mut buf, *enc, f).ok()?,
            }
        }
    }
    buf.extend_from_slice(BINARY_TRAILER);
    Some(buf)
}

/// The rows in text `COPY` form; `None` when a row does not render.
fn text_rows(columns: &Columns, entries: &[&Entry]) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(entries.len() * 64);
    for e in entries {
        let Some(row) = e.row_text() else { continue };
        let row = row.ok()?;
        for (i, v) in columns.values(&row).enumerate() {
            if i > 0 {
                buf.push(b'\t');
            }
            copy_text(&mut buf, v);
        }
        buf.push(b'\n');
    }
    Some(buf)
}

/// A sort key for a key in text form: integers by value, other text as it compares in Rust
/// (an approximation of the target's collation, for locality only).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum KeyPart<'a> {
    Null,
    Int(i64),
    Text(&'a str),
}

fn key_order(key: &[Option<String>]) -> Vec<KeyPart<'_>> {
    key.iter().map(|k| key_part(k.as_deref())).collect()
}

fn key_part(k: Option<&str>) -> KeyPart<'_> {
    match k {
        None => KeyPart::Null,
        Some(t) => t.parse().map(KeyPart::Int).unwrap_or(KeyPart::Text(t)),
    }
}

/// One value in `COPY`'s text format.
fn copy_text(out: &mut Vec<u8>, v: Option<&str>) {
    let Some(s) = v else {
        out.extend_from_slice(b"\\N");
        return;
    };
    if !s
        .bytes()
        .any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b'\t'))
    {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_integers_by_value_and_text_after_them() {
        let keys: Vec<Vec<Option<String>>> = vec![
            vec![Some("10".into())],
            vec![Some("b".into())],
            vec![Some("9".into())],
            vec![Some("-3".into())],
            vec![None],
        ];
        let mut sorted: Vec<&Vec<Option<String>>> = keys.iter().collect();
        sorted.sort_by_cached_key(|k| key_order(k));
        let got: Vec<Option<&str>> = sorted.iter().map(|k| k[0].as_deref()).collect();
        assert_eq!(got, [None, Some("-3"), Some("9"), Some("10"), Some("b")]);
    }

    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let mut out = Vec::new();
        copy_text(&mut out, Some("a\tb\\c\nd\re"));
        out.push(b'|');
        copy_text(&mut out, None);
        assert_eq!(String::from_utf8(out).unwrap(), "a\\tb\\\\c\\nd\\re|\\N");
    }

    #[test]
    fn the_binary_header_is_the_signature_then_two_zero_words() {
        assert_eq!(BINARY_HEADER.len(), 11 + 4 + 4);
        assert_eq!(&BINARY_HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert!(BINARY_HEADER[11..].iter().all(|b| *b == 0));
    }
}
