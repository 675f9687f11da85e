//! Applying a batch of events to the target in ONE transaction: the offsets of the batch's
//! partitions are locked and read first, events at or past them are folded per key (the latest
//! wins), then upserted and deleted in bulk (`unnest` of text arrays, cast to the column types),
//! and the new offsets are written in the same transaction. A batch, or any part of the topic,
//! applied again therefore changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tunnel_shared::event::Op;
use tunnel_shared::pg::{qualified, quote_ident, PgError};
use tunnel_shared::retry::Retryable;

use crate::ddl;
use crate::decode::{DecodedMessage, WriterSchema};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl Retryable for ApplyError {
    fn is_retryable(&self) -> bool {
        match self {
            ApplyError::Pg(e) => e.is_retryable(),
        }
    }
}

/// One consumed message, decoded, with the schemas it was written with.
pub struct Entry {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub message: DecodedMessage,
    pub key_schema: Arc<WriterSchema>,
    pub value_schema: Option<Arc<WriterSchema>>,
}

/// Where a topic's rows go.
#[derive(Debug, Clone)]
pub struct TargetTable {
    pub schema: String,
    pub name: String,
}

#[derive(Debug, Default)]
pub struct Applied {
    /// Events applied (after skipping those already applied).
    pub events: usize,
    /// Events skipped because an earlier transaction had applied them.
    pub already_applied: usize,
    /// The next offset of every partition of the batch.
    pub next_offsets: Vec<(Arc<str>, i32, i64)>,
}

type KeyText = Vec<Option<String>>;

/// Applies `entries` (in offset order per partition) in one target transaction.
pub async fn apply_batch(
    client: &mut Client,
    bookkeeping_schema: &str,
    group: &str,
    targets: &HashMap<Arc<str>, TargetTable>,
    entries: &[Entry],
) -> Result<Applied, ApplyError> {
    let offsets_table = ddl::offsets_table(bookkeeping_schema);
    let tx = client
        .transaction()
        .await
        .map_err(PgError::query("beginning the apply transaction"))?;
    // lock and read the offsets of every partition in the batch
    let mut by_topic: HashMap<Arc<str>, Vec<i32>> = HashMap::new();
    for e in entries {
        let parts = by_topic.entry(e.topic.clone()).or_default();
        if !parts.contains(&e.partition) {
            parts.push(e.partition);
        }
    }
    let mut stored: HashMap<(Arc<str>, i32), i64> = HashMap::new();
    for (topic, parts) in &by_topic {
        tx.execute(
            &format!(
                "INSERT INTO {offsets_table} (topic, partition, next_offset, group_id)
                 SELECT $1, p, 0, $3 FROM unnest($2::int4[]) p ON CONFLICT DO NOTHING"
            ),
            &[&topic.as_ref(), parts, &group],
        )
        .await
        .map_err(PgError::query(
            "registering partitions in the offsets table",
        ))?;
        let rows = tx
            .query(
                &format!("SELECT partition, next_offset FROM {offsets_table} WHERE topic = $1 AND partition = ANY($2) FOR UPDATE"),
                &[&topic.as_ref(), parts],
            )
            .await
            .map_err(PgError::query("locking the offsets of the batch"))?;
        for r in rows {
            stored.insert((topic.clone(), r.get(0)), r.get(1));
        }
    }
    // fold: per table, the latest event of every key
    let mut applied = Applied::default();
    let mut latest: HashMap<Arc<str>, HashMap<KeyText, &Entry>> = HashMap::new();
    let mut next: HashMap<(Arc<str>, i32), (i64, i64)> = HashMap::new();
    for e in entries {
        let from = stored
            .get(&(e.topic.clone(), e.partition))
            .copied()
            .unwrap_or(0);
        if e.offset < from {
            applied.already_applied += 1;
            continue;
        }
        applied.events += 1;
        let n = next
            .entry((e.topic.clone(), e.partition))
            .or_insert((from, 0));
        n.0 = n.0.max(e.offset + 1);
        n.1 += 1;
        latest
            .entry(e.topic.clone())
            .or_default()
            .insert(e.message.key.clone(), e);
    }
    for (topic, rows) in &latest {
        let Some(target) = targets.get(topic) else {
            continue;
        };
        upsert_and_delete(&tx, target, rows).await?;
    }
    for (topic, parts) in &by_topic {
        let mut ps = Vec::new();
        let mut ns = Vec::new();
        let mut cs = Vec::new();
        for p in parts {
            if let Some((n, c)) = next.get(&(topic.clone(), *p)) {
                ps.push(*p);
                ns.push(*n);
                cs.push(*c);
                applied.next_offsets.push((topic.clone(), *p, *n));
            }
        }
        if ps.is_empty() {
            continue;
        }
        tx.execute(
            &format!(
                "UPDATE {offsets_table} o SET next_offset = v.n, group_id = $5, applied_events = o.applied_events + v.c, updated_at = now()
                   FROM unnest($2::int4[], $3::int8[], $4::int8[]) AS v(p, n, c)
                  WHERE o.topic = $1 AND o.partition = v.p"
            ),
            &[&topic.as_ref(), &ps, &ns, &cs, &group],
        )
        .await
        .map_err(PgError::query("storing the offsets of the batch"))?;
    }
    tx.commit()
        .await
        .map_err(PgError::query("committing the apply transaction"))?;
    Ok(applied)
}

/// Rows written with one value schema.
struct UpsertGroup<'a> {
    value_schema: Arc<WriterSchema>,
    key_schema: Arc<WriterSchema>,
    entries: Vec<&'a Entry>,
}

async fn upsert_and_delete(
    tx: &tokio_postgres::Transaction<'_>,
    target: &TargetTable,
    rows: &HashMap<KeyText, &Entry>,
) -> Result<(), ApplyError> {
    let table = qualified(&target.schema, &target.name);
    // deletes (a `d` event or a tombstone), keyed by the key schema
    let mut deletes: HashMap<u32, (Arc<WriterSchema>, Vec<&KeyText>)> = HashMap::new();
    // upserts, grouped by the writer schema of their value
    let mut upserts: HashMap<u32, UpsertGroup<'_>> = HashMap::new();
    for (key, e) in rows {
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
        let shapes = &key_schema.fields;
        let mut columns: Vec<Vec<Option<String>>> =
            vec![Vec::with_capacity(keys.len()); shapes.len()];
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
        let params: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        tx.execute(&sql, &params)
            .await
            .map_err(PgError::query(format!(
                "deleting from {}.{}",
                target.schema, target.name
            )))?;
    }
    for UpsertGroup {
        value_schema,
        key_schema,
        entries,
    } in upserts.values()
    {
        if entries.iter().all(|e| is_insert(e))
            && copy_in(tx, &table, &value_schema.fields, entries).await?
        {
            continue;
        }
        let shapes = &value_schema.fields;
        let mut columns: Vec<Vec<Option<String>>> =
            vec![Vec::with_capacity(entries.len()); shapes.len()];
        for e in entries {
            let Some((ev, _)) = &e.message.event else {
                continue;
            };
            let Some(after) = &ev.after else { continue };
            for (column, t) in columns.iter_mut().zip(after) {
                column.push(t.clone());
            }
        }
        let cols: Vec<String> = shapes.iter().map(|s| quote_ident(&s.column)).collect();
        let key_cols: Vec<String> = key_schema
            .fields
            .iter()
            .map(|s| quote_ident(&s.column))
            .collect();
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
        let sql = format!(
            "INSERT INTO {table} AS t ({}) {} {on_conflict}",
            cols.join(", "),
            unnest_select(shapes)
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        tx.execute(&sql, &params)
            .await
            .map_err(PgError::query(format!(
                "upserting into {}.{}",
                target.schema, target.name
            )))?;
    }
    Ok(())
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
) -> Result<bool, ApplyError> {
    use futures::SinkExt;
    let mut buf = Vec::with_capacity(entries.len() * 64);
    for e in entries {
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

/// One value in `COPY`'s text format.
fn copy_text(out: &mut Vec<u8>, v: Option<&str>) {
    let Some(s) = v else {
        out.extend_from_slice(b"\\N");
        return;
    };
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
    fn copy_text_escapes_what_copy_would_misread() {
        let mut out = Vec::new();
        copy_text(&mut out, Some("a\tb\\c\nd\re"));
        out.push(b'|');
        copy_text(&mut out, None);
        assert_eq!(String::from_utf8(out).unwrap(), "a\\tb\\\\c\\nd\\re|\\N");
    }

    #[test]
    fn sql_fragments() {
        assert_eq!(array_params(2), "$1::text[], $2::text[]");
        assert_eq!(alias_list(3), "c0, c1, c2");
    }
}
