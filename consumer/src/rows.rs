//! Writing rows into a replica table: bulk deletes and upserts (`unnest` of text arrays cast
//! to the column types), and `COPY` for batches of inserts (see [`copy`]). [`write`] fails as
//! a whole; [`write_isolating`] sets the rows the target refuses apart, so that the others
//! still commit.

mod binary;
mod copy;

pub(crate) use copy::COPY_REFUSED;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tunnel_shared::event::Op;
use tunnel_shared::key::KeyText;
use tunnel_shared::pg::{qualified, quote_ident, PgError};
use tunnel_shared::schema::{is_type_name, FieldShape};

use crate::evolve;
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
            Ok(unrendered) => {
                tx.batch_execute("RELEASE SAVEPOINT tunnel_rows")
                    .await
                    .map_err(PgError::query("releasing a savepoint"))?;
                refused.extend(unrendered);
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

/// Deletes and upserts `rows` (the latest event of each key) in `target`. Returns the rows left
/// out because their datum did not render as text, with why (it rendered when the message was
/// decoded: none, unless something is badly wrong).
async fn write<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    target: &TargetTable,
    rows: &[(&'a KeyText, &'a Entry)],
) -> Result<Vec<(&'a Entry, String)>, PgError> {
    let table = qualified(&target.schema, &target.name);
    // deletes (a `d` event or a tombstone), keyed by the key schema
    let mut deletes: HashMap<u32, (Arc<WriterSchema>, Vec<&KeyText>)> = HashMap::new();
    // upserts, grouped by the writer schema of their value
    let mut upserts: HashMap<u32, UpsertGroup<'a>> = HashMap::new();
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
    let mut unrendered = Vec::new();
    for group in upserts.values() {
        let columns = Columns::of(target, &group.value_schema.fields);
        if group.entries.iter().all(|e| is_insert(e))
            && copy::copy_in(tx, &table, &columns, &group.entries).await?
        {
            continue;
        }
        unrendered.extend(upsert(tx, target, &table, group, &columns).await?);
    }
    Ok(unrendered)
}

/// The fields of a writer schema that the target table has a column for: their positions in
/// the row, and their shapes named and typed as the target's columns. An older schema's
/// fields go to the columns that hold them now (renamed ones found, dropped ones left out);
/// the columns it does not know keep their value (their default in a new row).
struct Columns {
    positions: Vec<usize>,
    shapes: Vec<FieldShape>,
}

impl Columns {
    fn of(target: &TargetTable, fields: &[FieldShape]) -> Self {
        if target.columns.is_empty() {
            // not read: the writer's own columns
            return Self {
                positions: (0..fields.len()).collect(),
                shapes: fields.to_vec(),
            };
        }
        let mut out = Self {
            positions: Vec::with_capacity(fields.len()),
            shapes: Vec::with_capacity(fields.len()),
        };
        let held = evolve::project(&target.columns, fields);
        for (i, (f, m)) in fields.iter().zip(held).enumerate() {
            let Some(c) = m.and_then(|m| target.columns.get(m)) else {
                continue;
            };
            out.positions.push(i);
            out.shapes.push(FieldShape {
                column: c.name.clone(),
                // the target's own catalog's spelling, when it has the usual shape
                pg_type: if is_type_name(&c.pg_type) {
                    c.pg_type.clone()
                } else {
                    f.pg_type.clone()
                },
                ..f.clone()
            });
        }
        out
    }

    /// The key's columns: each field's target column (its own name when none holds it).
    fn key(target: &TargetTable, fields: &[FieldShape]) -> Vec<FieldShape> {
        let held = evolve::project(&target.columns, fields);
        fields
            .iter()
            .zip(held)
            .map(|(f, m)| match m.and_then(|m| target.columns.get(m)) {
                Some(c) => FieldShape {
                    column: c.name.clone(),
                    ..f.clone()
                },
                None => f.clone(),
            })
            .collect()
    }

    /// The values of a row for these columns.
    fn values<'r>(&'r self, row: &'r [Option<String>]) -> impl Iterator<Item = Option<&'r str>> {
        self.positions
            .iter()
            .map(|&i| row.get(i).and_then(|v| v.as_deref()))
    }
}

/// Deletes the rows of `keys` (of one key schema) from `table`.
async fn delete(
    tx: &tokio_postgres::Transaction<'_>,
    target: &TargetTable,
    table: &str,
    key_schema: &WriterSchema,
    keys: &[&KeyText],
) -> Result<(), PgError> {
    let shapes = &Columns::key(target, &key_schema.fields);
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
/// differ). Returns the rows left out because they did not render as text.
async fn upsert<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    target: &TargetTable,
    table: &str,
    group: &UpsertGroup<'a>,
    shapes: &Columns,
) -> Result<Vec<(&'a Entry, String)>, PgError> {
    let mut columns: Vec<Vec<Option<String>>> =
        vec![Vec::with_capacity(group.entries.len()); shapes.shapes.len()];
    let mut unrendered = Vec::new();
    for &e in &group.entries {
        let after = match e.row_text() {
            None => continue,
            Some(Ok(after)) => after,
            Some(Err(m)) => {
                unrendered.push((e, format!("the row does not render as text: {m}")));
                continue;
            }
        };
        for (column, t) in columns.iter_mut().zip(shapes.values(&after)) {
            column.push(t.map(str::to_string));
        }
    }
    let key = Columns::key(target, &group.key_schema.fields);
    let sql = upsert_sql(table, &shapes.shapes, &key);
    execute_columns(tx, &sql, &columns, || {
        format!("upserting into {}.{}", target.schema, target.name)
    })
    .await?;
    Ok(unrendered)
}

/// `INSERT ... ON CONFLICT` of rows of `shapes` keyed by `key`: a row that exists is updated
/// only when it differs.
fn upsert_sql(table: &str, shapes: &[FieldShape], key: &[FieldShape]) -> String {
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

/// `SELECT u.c0::<type>, ... FROM unnest($1::text[], ...) AS u(c0, ...)`: the rows of the
/// text-array parameters, cast to the fields' types.
fn unnest_select(shapes: &[FieldShape]) -> String {
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
    fn an_upsert_updates_only_rows_that_differ_and_a_key_only_table_does_nothing() {
        let f = |c: &str| FieldShape {
            field: c.into(),
            column: c.into(),
            pg_type: "text".into(),
            nullable: true,
            scale: None,
            attnum: None,
            default: None,
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
    fn an_older_schema_writes_only_the_columns_that_hold_its_fields() {
        use std::sync::Arc;

        use tunnel_shared::config::SchemaChangePolicy;

        use crate::model::TargetColumn;

        let field = |c: &str, attnum: i16, pg_type: &str| FieldShape {
            field: c.into(),
            column: c.into(),
            pg_type: pg_type.into(),
            nullable: true,
            scale: None,
            attnum: Some(attnum),
            default: None,
        };
        let col = |c: &str, attnum: i16, pg_type: &str| TargetColumn {
            name: c.into(),
            attnum: Some(attnum),
            pg_type: pg_type.into(),
            nullable: true,
            default: None,
            in_key: attnum == 1,
        };
        // the old schema: id, s3_path, format; since then s3_path became path (and bigger),
        // format was dropped, label added
        let old = [
            field("id", 1, "integer"),
            field("s3_path", 2, "character varying(10)"),
            field("format", 3, "text"),
        ];
        let mut target = TargetTable::new("public", "media", SchemaChangePolicy::Evolve);
        target.columns = Arc::from(vec![
            col("id", 1, "integer"),
            col("path", 2, "character varying(50)"),
            col("label", 4, "text"),
        ]);
        let columns = Columns::of(&target, &old);
        assert_eq!(columns.positions, [0, 1]);
        let row = [Some("7".to_string()), Some("a/b".to_string()), None];
        let values: Vec<Option<&str>> = columns.values(&row).collect();
        assert_eq!(values, [Some("7"), Some("a/b")]);
        let key = Columns::key(&target, &old[..1]);
        let sql = upsert_sql("t", &columns.shapes, &key);
        assert_eq!(
            sql,
            "INSERT INTO t AS t (\"id\", \"path\") SELECT u.c0::integer, u.c1::character varying(50) \
             FROM unnest($1::text[], $2::text[]) AS u(c0, c1) ON CONFLICT (\"id\") DO UPDATE SET \
             \"path\" = EXCLUDED.\"path\" WHERE ROW(t.\"path\")::text IS DISTINCT FROM ROW(EXCLUDED.\"path\")::text",
            "label is left out: its default in a new row, its value in an updated one"
        );
        // columns not read yet: the writer's own
        let unread = TargetTable::new("public", "media", SchemaChangePolicy::Evolve);
        assert_eq!(Columns::of(&unread, &old).positions, [0, 1, 2]);
    }

    #[test]
    fn sql_fragments() {
        assert_eq!(array_params(2), "$1::text[], $2::text[]");
        assert_eq!(alias_list(3), "c0, c1, c2");
    }
}
