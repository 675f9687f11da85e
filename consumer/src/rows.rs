//! Writing rows into a replica table: bulk deletes and upserts (`unnest` of text arrays cast
//! to the column types), and `COPY` for batches of inserts. [`write`] fails as a whole;
//! [`write_isolating`] sets the rows the target refuses apart, so that the others still commit.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tunnel_shared::event::Op;
use tunnel_shared::key::KeyText;
use tunnel_shared::pg::{qualified, quote_ident, PgError};

use crate::model::{Entry, TargetTable, WriterSchema};

/// Rows written with one value schema.
struct UpsertGroup<'a> {
    value_schema: Arc<WriterSchema>,
    key_schema: Arc<WriterSchema>,
    entries: Vec<&'a Entry>,
}

/// Writes `rows`, each set in a savepoint; when the target refuses a row, the set is rolled
/// back and halved until the refused rows stand alone. Returns them with the target's reason.
/// A batch with no bad row costs one savepoint; k bad rows in n cost about 2k·log2(n) writes.
pub(crate) async fn write_isolating<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    target: &TargetTable,
    rows: Vec<(&'a KeyText, &'a Entry)>,
) -> Result<Vec<(&'a Entry, String)>, PgError> {
    let mut refused = Vec::new();
    let mut stack = vec![rows];
    while let Some(set) = stack.pop() {
        if set.is_empty() {
            continue;
        }
        tx.batch_execute("SAVEPOINT tunnel_rows")
            .await
            .map_err(PgError::query("setting a savepoint"))?;
        match write(tx, target, &set).await {
            Ok(()) => {
                tx.batch_execute("RELEASE SAVEPOINT tunnel_rows")
                    .await
                    .map_err(PgError::query("releasing a savepoint"))?;
            }
            Err(e) if is_row_rejection(&e) => {
                tx.batch_execute(
                    "ROLLBACK TO SAVEPOINT tunnel_rows; RELEASE SAVEPOINT tunnel_rows",
                )
                .await
                .map_err(PgError::query("rolling back to a savepoint"))?;
                if set.len() == 1 {
                    refused.push((set[0].1, rejection_reason(&e)));
                } else {
                    let mut set = set;
                    let second = set.split_off(set.len() / 2);
                    stack.push(second);
                    stack.push(set);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// Whether the target refused a row for what it holds (SQLSTATE class 22, data exception:
/// overflow, value too long, bad format; class 23, integrity constraint violation), rather
/// than for a reason that concerns the whole batch.
fn is_row_rejection(e: &PgError) -> bool {
    e.sqlstate()
        .is_some_and(|s| s.starts_with("22") || s.starts_with("23"))
}

/// The target's own words for a refused row: its message and detail.
fn rejection_reason(e: &PgError) -> String {
    match e {
        PgError::Query { source, .. } => match source.as_db_error() {
            Some(db) => match db.detail() {
                Some(d) => format!("{} ({}): {d}", db.message(), db.code().code()),
                None => format!("{} ({})", db.message(), db.code().code()),
            },
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// Deletes and upserts `rows` (the latest event of each key) in `target`.
async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    target: &TargetTable,
    rows: &[(&KeyText, &Entry)],
) -> Result<(), PgError> {
    let table = qualified(&target.schema, &target.name);
    // deletes (a `d` event or a tombstone), keyed by the key schema
    let mut deletes: HashMap<u32, (Arc<WriterSchema>, Vec<&KeyText>)> = HashMap::new();
    // upserts, grouped by the writer schema of their value
    let mut upserts: HashMap<u32, UpsertGroup<'_>> = HashMap::new();
    for &(key, e) in rows {
        match (&e.message.event, &e.value_schema) {
            (Some((ev, _)), Some(vs)) if ev.op != Op::Delete => {
                upserts
                    .entry(vs.id)
                    .or_insert_with(|| UpsertGroup {
                        value_schema: vs.clone(),
                        key_schema: e.key_schema.clone(),
                        entries: Vec::new(),
                    })
                    .entries
                    .push(e);
            }
            _ => deletes
                .entry(e.key_schema.id)
                .or_insert_with(|| (e.key_schema.clone(), Vec::new()))
                .1
                .push(key),
        }
    }
    for (key_schema, keys) in deletes.values() {
        delete(tx, target, &table, key_schema, keys).await?;
    }
    for group in upserts.values() {
        let UpsertGroup {
            value_schema,
            entries,
            ..
        } = group;
        if entries.iter().all(|e| is_insert(e))
            && copy_in(tx, &table, &value_schema.fields, entries).await?
        {
            continue;
        }
        upsert(tx, target, &table, group).await?;
    }
    Ok(())
}

/// Deletes the rows of `keys` (of one key schema) from `table`.
async fn delete(
    tx: &tokio_postgres::Transaction<'_>,
    target: &TargetTable,
    table: &str,
    key_schema: &WriterSchema,
    keys: &[&KeyText],
) -> Result<(), PgError> {
    let shapes = &key_schema.fields;
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(keys.len()); shapes.len()];
    for k in keys {
        for (i, v) in k.iter().enumerate() {
            columns[i].push(v.clone());
        }
    }
    let key_cols: Vec<String> = shapes.iter().map(|s| quote_ident(&s.column)).collect();
    let sql = format!(
        "DELETE FROM {table} WHERE ({}) IN ({})",
        key_cols.join(", "),
        unnest_select(shapes)
    );
    execute_columns(tx, &sql, &columns, || {
        format!("deleting from {}.{}", target.schema, target.name)
    })
    .await?;
    Ok(())
}

/// Inserts the rows of `group` into `table`, updating those whose key exists (when they
/// differ).
async fn upsert(
    tx: &tokio_postgres::Transaction<'_>,
    target: &TargetTable,
    table: &str,
    group: &UpsertGroup<'_>,
) -> Result<(), PgError> {
    let shapes = &group.value_schema.fields;
    let mut columns: Vec<Vec<Option<String>>> =
        vec![Vec::with_capacity(group.entries.len()); shapes.len()];
    for e in &group.entries {
        let Some((ev, _)) = &e.message.event else {
            continue;
        };
        let Some(after) = &ev.after else { continue };
        for (column, t) in columns.iter_mut().zip(after) {
            column.push(t.clone());
        }
    }
    let sql = upsert_sql(table, shapes, &group.key_schema.fields);
    execute_columns(tx, &sql, &columns, || {
        format!("upserting into {}.{}", target.schema, target.name)
    })
    .await?;
    Ok(())
}

/// `INSERT ... ON CONFLICT` of rows of `shapes` keyed by `key`: a row that exists is updated
/// only when it differs.
fn upsert_sql(
    table: &str,
    shapes: &[tunnel_shared::schema::FieldShape],
    key: &[tunnel_shared::schema::FieldShape],
) -> String {
    let cols: Vec<String> = shapes.iter().map(|s| quote_ident(&s.column)).collect();
    let key_cols: Vec<String> = key.iter().map(|s| quote_ident(&s.column)).collect();
    let non_key: Vec<&String> = cols.iter().filter(|c| !key_cols.contains(c)).collect();
    let on_conflict = if non_key.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", key_cols.join(", "))
    } else {
        let set: Vec<String> = non_key
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let mine: Vec<String> = non_key.iter().map(|c| format!("t.{c}")).collect();
        let theirs: Vec<String> = non_key.iter().map(|c| format!("EXCLUDED.{c}")).collect();
        // compared as text: some types (json, point, ...) have no equality operator
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {} WHERE ROW({})::text IS DISTINCT FROM ROW({})::text",
            key_cols.join(", "),
            set.join(", "),
            mine.join(", "),
            theirs.join(", ")
        )
    };
    format!(
        "INSERT INTO {table} AS t ({}) {} {on_conflict}",
        cols.join(", "),
        unnest_select(shapes)
    )
}

/// Runs `sql` with one text-array parameter per column (see [`unnest_select`]).
async fn execute_columns(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    columns: &[Vec<Option<String>>],
    context: impl FnOnce() -> String,
) -> Result<u64, PgError> {
    let params: Vec<&(dyn ToSql + Sync)> =
        columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    tx.execute(sql, &params)
        .await
        .map_err(|source| PgError::Query {
            context: context(),
            source,
        })
}

/// Whether an entry is a snapshot read or an insert (its key is most likely new).
fn is_insert(e: &Entry) -> bool {
    matches!(&e.message.event, Some((ev, _)) if matches!(ev.op, Op::Read | Op::Create))
}

/// Snapshot reads and inserts first try a plain `COPY` into the table, several times cheaper
/// for the server than an upsert. A key that exists already (a replay, a row re-read) makes the
/// `COPY` fail as a whole: it is rolled back to its savepoint and the caller upserts instead.
/// Returns whether the rows were copied.
async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    shapes: &[tunnel_shared::schema::FieldShape],
    entries: &[&Entry],
) -> Result<bool, PgError> {
    use futures::SinkExt;
    let mut buf = Vec::with_capacity(entries.len() * 64);
    // in key order: the primary-key index then grows at its right edge, as in a bulk load,
    // instead of splitting pages all over the range the batch's partitions interleave
    let mut ordered: Vec<&&Entry> = entries.iter().collect();
    if ordered.iter().all(|e| e.message.key.len() == 1) {
        // one column: no vector per key
        ordered.sort_by_cached_key(|e| key_part(e.message.key[0].as_deref()));
    } else {
        ordered.sort_by_cached_key(|e| key_order(&e.message.key));
    }
    for e in ordered {
        let Some((ev, _)) = &e.message.event else {
            continue;
        };
        let Some(after) = &ev.after else { continue };
        for (i, v) in after.iter().take(shapes.len()).enumerate() {
            if i > 0 {
                buf.push(b'\t');
            }
            copy_text(&mut buf, v.as_deref());
        }
        buf.push(b'\n');
    }
    let cols: Vec<String> = shapes.iter().map(|s| quote_ident(&s.column)).collect();
    tx.batch_execute("SAVEPOINT tunnel_copy")
        .await
        .map_err(PgError::query("setting a savepoint"))?;
    let copied = async {
        let sink = tx
            .copy_in(&format!("COPY {table} ({}) FROM STDIN", cols.join(", ")))
            .await?;
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(buf)).await?;
        sink.finish().await
    }
    .await;
    let (sql, ok) = match copied {
        Ok(_) => ("RELEASE SAVEPOINT tunnel_copy", true),
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

/// `SELECT u.c0::<type>, ... FROM unnest($1::text[], ...) AS u(c0, ...)`: the rows of the
/// text-array parameters, cast to the fields' types.
fn unnest_select(shapes: &[tunnel_shared::schema::FieldShape]) -> String {
    let casts: Vec<String> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| format!("u.c{i}::{}", s.pg_type))
        .collect();
    format!(
        "SELECT {} FROM unnest({}) AS u({})",
        casts.join(", "),
        array_params(shapes.len()),
        alias_list(shapes.len())
    )
}

/// `$1::text[], $2::text[], ...`
fn array_params(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}::text[]"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `c0, c1, ...`
fn alias_list(n: usize) -> String {
    (0..n)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(", ")
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
    fn an_upsert_updates_only_rows_that_differ_and_a_key_only_table_does_nothing() {
        let f = |c: &str| tunnel_shared::schema::FieldShape {
            field: c.into(),
            column: c.into(),
            pg_type: "text".into(),
            nullable: true,
            scale: None,
        };
        let (id, name) = (f("id"), f("name"));
        let sql = upsert_sql("t", &[id.clone(), name], std::slice::from_ref(&id));
        assert!(
            sql.contains(r#"ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name" WHERE"#),
            "{sql}"
        );
        let sql = upsert_sql("t", std::slice::from_ref(&id), std::slice::from_ref(&id));
        assert!(sql.ends_with(r#"ON CONFLICT ("id") DO NOTHING"#), "{sql}");
    }

    #[test]
    fn sql_fragments() {
        assert_eq!(array_params(2), "$1::text[], $2::text[]");
        assert_eq!(alias_list(3), "c0, c1, c2");
    }
}
