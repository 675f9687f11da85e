//! The target's DDL, in one place: the bookkeeping tables (consumed offsets, parked keys, the
//! replica tables' column mapping and schema versions), and the replica tables, created from
//! the event schemas with the source's column types and constant defaults, then evolved with
//! the source (the steps come from `evolve`). The replica has exactly the source's columns;
//! bookkeeping lives in its own schema.

use std::collections::HashMap;

use tokio_postgres::{Client, Transaction};
use tunnel_shared::pg::{qualified, quote_ident, PgError};
use tunnel_shared::schema::FieldShape;

use crate::error::{ApplyError, DdlRefused};
use crate::evolve::Step;
use crate::model::{TargetColumn, TargetTable};

/// Serializes DDL between consumers that start together.
const DDL_LOCK: i64 = 0x7475_6e6e_656c; // "tunnel"

pub(crate) use tunnel_shared::bookkeeping::{
    columns_table, offsets_table, parked_table, resolved_table, verified_table, versions_table,
};

pub(crate) async fn ensure_bookkeeping(client: &mut Client, schema: &str) -> Result<(), PgError> {
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {t} (
             topic text NOT NULL,
             partition int4 NOT NULL,
             next_offset int8 NOT NULL,
             group_id text,
             applied_events int8 NOT NULL DEFAULT 0,
             updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (topic, partition));
         ALTER TABLE {t} ADD COLUMN IF NOT EXISTS dead_lettered int8 NOT NULL DEFAULT 0;
         ALTER TABLE {t} ADD COLUMN IF NOT EXISTS parked_generation int8 NOT NULL DEFAULT 0;
         COMMENT ON TABLE {t} IS 'Data Tunnel: the next Kafka offset to apply, per partition; written in the same transaction as the rows it covers';
         CREATE TABLE IF NOT EXISTS {p} (
             topic text NOT NULL,
             partition int4 NOT NULL,
             key text NOT NULL,
             pending int4 NOT NULL,
             since timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (topic, key));
         COMMENT ON TABLE {p} IS 'Data Tunnel: keys (a JSON array of their columns as text) with events in the DLQ; their later events follow them there until a replay';
         CREATE TABLE IF NOT EXISTS {r} (
             dlq_topic text NOT NULL,
             partition int4 NOT NULL,
             dlq_offset int8 NOT NULL,
             outcome text NOT NULL,
             resolved_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (dlq_topic, partition, dlq_offset));
         COMMENT ON TABLE {r} IS 'Data Tunnel: DLQ entries already replayed (applied, or sent back to the DLQ with a new reason)';
         CREATE TABLE IF NOT EXISTS {c} (
             target_schema text NOT NULL,
             target_table text NOT NULL,
             column_name text NOT NULL,
             source_attnum int2,
             PRIMARY KEY (target_schema, target_table, column_name));
         COMMENT ON TABLE {c} IS 'Data Tunnel: the source column (attnum; NULL when known by name only) each replica column holds';
         CREATE TABLE IF NOT EXISTS {v} (
             topic text PRIMARY KEY,
             target_schema text NOT NULL,
             target_table text NOT NULL,
             value_schema_id int8 NOT NULL,
             evolved_at timestamptz NOT NULL DEFAULT now());
         COMMENT ON TABLE {v} IS 'Data Tunnel: per topic, the highest value schema id the replica table was evolved to';
         CREATE TABLE IF NOT EXISTS {vf} (
             source_schema text NOT NULL,
             source_table text NOT NULL,
             target_schema text NOT NULL,
             target_table text NOT NULL,
             source_horizon int8 NOT NULL,
             target_horizon int8 NOT NULL,
             whole_table bool NOT NULL,
             verified_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (source_schema, source_table, target_schema, target_table));
         COMMENT ON TABLE {vf} IS 'Data Tunnel: the transaction horizons (epoch-extended txids of the source and of the target) of the last verify that found the table identical; verify --incremental compares the rows written since'",
        s = quote_ident(schema),
        t = offsets_table(schema),
        p = parked_table(schema),
        r = resolved_table(schema),
        c = columns_table(schema),
        v = versions_table(schema),
        vf = verified_table(schema),
    );
    locked(client, &sql, "creating the bookkeeping table").await
}

/// `CREATE TABLE IF NOT EXISTS` for a replica table.
pub(crate) fn create_table_sql(
    schema: &str,
    table: &str,
    columns: &[FieldShape],
    key: &[FieldShape],
) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| {
            format!(
                "{} {}{}{}",
                quote_ident(&c.column),
                c.pg_type,
                // validated: a constant (see `tunnel_shared::default_expr`)
                c.default
                    .as_ref()
                    .map(|d| format!(" DEFAULT {d}"))
                    .unwrap_or_default(),
                if c.nullable { "" } else { " NOT NULL" }
            )
        })
        .collect();
    let pk: Vec<String> = key.iter().map(|k| quote_ident(&k.column)).collect();
    format!(
        "CREATE SCHEMA IF NOT EXISTS {};\nCREATE TABLE IF NOT EXISTS {} (\n    {},\n    PRIMARY KEY ({})\n)",
        quote_ident(schema),
        qualified(schema, table),
        cols.join(",\n    "),
        pk.join(", ")
    )
}

/// Creates a replica table if it does not exist, and records which source column each of its
/// columns holds, by name from `columns` when nothing is recorded yet: for the table just
/// created, and for one created before the mapping existed. A table created by this call
/// replaces what was recorded for one of its name (dropped by hand), and has `version` (its
/// topic and the value schema id `columns` come from) stored as its schema version, so that
/// events of older schemas do not evolve it back.
pub(crate) async fn ensure_table(
    client: &mut Client,
    bk: &str,
    target: &TargetTable,
    columns: &[FieldShape],
    key: &[FieldShape],
    version: Option<(&str, u32)>,
) -> Result<(), PgError> {
    let what = format!("creating the target table {}", target.display());
    let sql = create_table_sql(&target.schema, &target.name, columns, key);
    let tx = client.transaction().await.map_err(PgError::query(&what))?;
    lock_ddl(&tx).await?;
    let existed: bool = tx
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&qualified(&target.schema, &target.name)],
        )
        .await
        .map_err(PgError::query(&what))?
        .try_get(0)
        .map_err(PgError::query(&what))?;
    tx.batch_execute(&sql)
        .await
        .map_err(PgError::query(&what))?;
    if !existed {
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE target_schema = $1 AND target_table = $2",
                columns_table(bk)
            ),
            &[&target.schema, &target.name],
        )
        .await
        .map_err(PgError::query(&what))?;
        if let Some((topic, id)) = version {
            store_version(&tx, bk, topic, target, id).await?;
        }
    }
    let map = format!(
        "INSERT INTO {m} (target_schema, target_table, column_name, source_attnum)
         SELECT $1::text, $2::text, a.attname::text, f.attnum
           FROM pg_catalog.pg_attribute a
           JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN unnest($3::text[], $4::int2[]) AS f(name, attnum) ON f.name = a.attname::text
          WHERE n.nspname = $1::text AND c.relname = $2::text AND a.attnum > 0 AND NOT a.attisdropped
            AND NOT EXISTS (SELECT 1 FROM {m} WHERE target_schema = $1::text AND target_table = $2::text)
         ON CONFLICT DO NOTHING",
        m = columns_table(bk)
    );
    let names: Vec<&str> = columns.iter().map(|c| c.column.as_str()).collect();
    let attnums: Vec<Option<i16>> = columns.iter().map(|c| c.attnum).collect();
    tx.execute(&map, &[&target.schema, &target.name, &names, &attnums])
        .await
        .map_err(PgError::query(format!(
            "recording the columns of {}",
            target.display()
        )))?;
    tx.commit().await.map_err(PgError::query(what))
}

async fn locked(client: &mut Client, sql: &str, what: &str) -> Result<(), PgError> {
    let tx = client.transaction().await.map_err(PgError::query(what))?;
    lock_ddl(&tx).await?;
    tx.batch_execute(sql).await.map_err(PgError::query(what))?;
    tx.commit().await.map_err(PgError::query(what))
}

/// Takes the DDL lock until the end of the transaction: consumers starting together, or
/// evolving the same table, take turns.
pub(crate) async fn lock_ddl(tx: &Transaction<'_>) -> Result<(), PgError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await
        .map_err(PgError::query("taking the DDL lock"))?;
    Ok(())
}

/// The value schema id each of `topics` was evolved to, its row locked (`FOR UPDATE` by
/// the transaction that may evolve, `FOR SHARE` by the others: a batch never writes to a
/// table another transaction is changing).
pub(crate) async fn stored_versions(
    tx: &Transaction<'_>,
    bk: &str,
    topics: &[&str],
    for_update: bool,
) -> Result<HashMap<String, i64>, PgError> {
    let sql = format!(
        "SELECT topic, value_schema_id FROM {} WHERE topic = ANY($1) FOR {}",
        versions_table(bk),
        if for_update { "UPDATE" } else { "SHARE" }
    );
    let rows = tx.query(&sql, &[&topics]).await.map_err(PgError::query(
        "reading the replica tables' schema versions",
    ))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(PgError::changed_by_hand(versions_table(bk)))
}

/// Records that `topic`'s table was evolved to value schema `id`.
pub(crate) async fn store_version(
    tx: &Transaction<'_>,
    bk: &str,
    topic: &str,
    target: &TargetTable,
    id: u32,
) -> Result<(), PgError> {
    let sql = format!(
        "INSERT INTO {} (topic, target_schema, target_table, value_schema_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (topic) DO UPDATE SET target_schema = EXCLUDED.target_schema,
             target_table = EXCLUDED.target_table, value_schema_id = EXCLUDED.value_schema_id,
             evolved_at = now()",
        versions_table(bk)
    );
    tx.execute(
        &sql,
        &[&topic, &target.schema, &target.name, &i64::from(id)],
    )
    .await
    .map_err(PgError::query("storing a replica table's schema version"))?;
    Ok(())
}

/// A replica table's columns with the source columns recorded for them (empty when the table
/// does not exist). Generated columns are left out: nothing writes them.
pub(crate) async fn load_columns(
    tx: &Transaction<'_>,
    bk: &str,
    target: &TargetTable,
) -> Result<Vec<TargetColumn>, PgError> {
    let sql = format!(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
                pg_get_expr(d.adbin, d.adrelid),
                COALESCE(a.attnum = ANY(i.indkey::int2[]), false), m.source_attnum
           FROM pg_catalog.pg_attribute a
           JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
           LEFT JOIN {m} m ON m.target_schema = $1::text AND m.target_table = $2::text
                          AND m.column_name = a.attname::text
          WHERE n.nspname = $1::text AND c.relname = $2::text AND a.attnum > 0
            AND NOT a.attisdropped AND a.attgenerated = ''
          ORDER BY a.attnum",
        m = columns_table(bk)
    );
    let rows = tx
        .query(&sql, &[&target.schema, &target.name])
        .await
        .map_err(PgError::query(format!(
            "reading the columns of {}",
            target.display()
        )))?;
    rows.iter()
        .map(|r| {
            Ok(TargetColumn {
                name: r.try_get(0)?,
                pg_type: r.try_get(1)?,
                nullable: r.try_get(2)?,
                default: r.try_get(3)?,
                in_key: r.try_get(4)?,
                attnum: r.try_get(5)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(PgError::changed_by_hand(columns_table(bk)))
}

/// Records which source column each of the table's `columns` holds (all of them, in place of
/// what was recorded).
pub(crate) async fn store_mapping(
    tx: &Transaction<'_>,
    bk: &str,
    target: &TargetTable,
    columns: &[TargetColumn],
) -> Result<(), PgError> {
    let m = columns_table(bk);
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let attnums: Vec<Option<i16>> = columns.iter().map(|c| c.attnum).collect();
    let what = || format!("recording the columns of {}", target.display());
    // two statements: an INSERT does not see what a DELETE of the same statement removed, and
    // its keys would collide with the rows deleted
    tx.execute(
        &format!("DELETE FROM {m} WHERE target_schema = $1 AND target_table = $2"),
        &[&target.schema, &target.name],
    )
    .await
    .map_err(PgError::query(what()))?;
    let sql = format!(
        "INSERT INTO {m} (target_schema, target_table, column_name, source_attnum)
         SELECT $1, $2, f.name, f.attnum FROM unnest($3::text[], $4::int2[]) AS f(name, attnum)"
    );
    tx.execute(&sql, &[&target.schema, &target.name, &names, &attnums])
        .await
        .map_err(PgError::query(what()))?;
    Ok(())
}

/// The SQL of one step on table `table` (qualified and quoted). Types and defaults come from
/// schemas that `tunnel_shared::schema::row_fields` validated (`is_type_name`, and constants
/// only), or from the target's own catalog; names are quoted.
pub(crate) fn step_sql(table: &str, step: &Step) -> String {
    let q = quote_ident;
    match step {
        Step::Drop { column } => format!("ALTER TABLE {table} DROP COLUMN {}", q(column)),
        Step::Rename { from, to } => {
            format!("ALTER TABLE {table} RENAME COLUMN {} TO {}", q(from), q(to))
        }
        Step::Add {
            column,
            pg_type,
            default,
            not_null,
        } => format!(
            "ALTER TABLE {table} ADD COLUMN {} {pg_type}{}{}",
            q(column),
            default
                .as_ref()
                .map(|d| format!(" DEFAULT {d}"))
                .unwrap_or_default(),
            if *not_null { " NOT NULL" } else { "" }
        ),
        Step::AlterType { column, to, .. } => format!(
            "ALTER TABLE {table} ALTER COLUMN {c} TYPE {to} USING {c}::{to}",
            c = q(column)
        ),
        Step::SetDefault { column, default } => format!(
            "ALTER TABLE {table} ALTER COLUMN {} SET DEFAULT {default}",
            q(column)
        ),
        Step::DropDefault { column } => {
            format!(
                "ALTER TABLE {table} ALTER COLUMN {} DROP DEFAULT",
                q(column)
            )
        }
        Step::SetNotNull { column } => {
            format!(
                "ALTER TABLE {table} ALTER COLUMN {} SET NOT NULL",
                q(column)
            )
        }
        Step::DropNotNull { column } => {
            format!(
                "ALTER TABLE {table} ALTER COLUMN {} DROP NOT NULL",
                q(column)
            )
        }
    }
}

/// Runs the steps that evolve `target`, one statement each. A `SET NOT NULL` that rows of the
/// replica refuse (their fix may still be on its way in another partition) is left out with a
/// warning; any other refusal stops the consumer ([`ApplyError::Ddl`]), naming the step.
pub(crate) async fn evolve_table(
    tx: &Transaction<'_>,
    target: &TargetTable,
    steps: &[Step],
) -> Result<(), ApplyError> {
    let table = qualified(&target.schema, &target.name);
    for step in steps {
        let sql = step_sql(&table, step);
        tracing::info!(table = %target.display(), ddl = %sql, "evolving the replica");
        if let Step::SetNotNull { column } = step {
            let ran = tx
                .batch_execute(&format!(
                    "SAVEPOINT tunnel_ddl; {sql}; RELEASE SAVEPOINT tunnel_ddl"
                ))
                .await;
            match ran {
                Err(e) if e.code().map(|c| c.code()) == Some("23502") => {
                    tracing::warn!(
                        table = %target.display(), column = %column, error = %e,
                        "the replica holds nulls in a column the source made not null: left nullable (verify reports it)"
                    );
                    tx.batch_execute(
                        "ROLLBACK TO SAVEPOINT tunnel_ddl; RELEASE SAVEPOINT tunnel_ddl",
                    )
                    .await
                    .map_err(PgError::query("rolling back to a savepoint"))?;
                    continue;
                }
                Err(e) => {
                    return Err(ddl_error(
                        target,
                        step,
                        &sql,
                        PgError::Query {
                            context: "evolving the replica".into(),
                            source: e,
                        },
                    ))
                }
                Ok(()) => continue,
            }
        }
        tx.batch_execute(&sql).await.map_err(|e| {
            ddl_error(
                target,
                step,
                &sql,
                PgError::Query {
                    context: "evolving the replica".into(),
                    source: e,
                },
            )
        })?;
    }
    Ok(())
}

/// The error of a step the target refused, with what to do.
fn ddl_error(target: &TargetTable, step: &Step, sql: &str, source: PgError) -> ApplyError {
    let (column, change, hint) = match step {
        Step::AlterType { column, from, to } => (
            column,
            format!("its type from {from} to {to}"),
            format!(
                "a value of the replica does not convert, or there is no cast: convert the column by hand \
                 (ALTER TABLE ... ALTER COLUMN {} TYPE {to} USING <expression>), or fix the values that do not convert, then restart the consumer",
                quote_ident(column)
            ),
        ),
        Step::Drop { column }
        | Step::Rename { from: column, .. }
        | Step::Add { column, .. }
        | Step::SetDefault { column, .. }
        | Step::DropDefault { column }
        | Step::SetNotNull { column }
        | Step::DropNotNull { column } => (
            column,
            format!("it with `{sql}`"),
            "make the replica's column match the source's by hand (see docs/operations.md, \"Schema changes\"), then restart the consumer".to_string(),
        ),
    };
    ApplyError::Ddl(Box::new(DdlRefused {
        table: target.display(),
        column: column.clone(),
        change,
        hint,
        source,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(column: &str, pg_type: &str, nullable: bool) -> FieldShape {
        FieldShape {
            field: column.into(),
            column: column.into(),
            pg_type: pg_type.into(),
            nullable,
            scale: None,
            attnum: None,
            default: None,
        }
    }

    #[test]
    fn create_table_uses_source_types_and_key() {
        let cols = vec![
            f("id", "integer", false),
            f("s3_path", "character varying(1024)", true),
        ];
        let sql = create_table_sql("public", "media", &cols, &cols[..1]);
        assert!(sql.contains("\"id\" integer NOT NULL"), "{sql}");
        assert!(
            sql.contains("\"s3_path\" character varying(1024),"),
            "{sql}"
        );
        assert!(sql.contains("PRIMARY KEY (\"id\")"), "{sql}");
    }

    #[test]
    fn created_tables_copy_constant_defaults() {
        let mut label = f("label", "text", false);
        label.default = Some("'n/a'::text".into());
        let sql = create_table_sql("public", "t", &[label], &[]);
        assert!(
            sql.contains("\"label\" text DEFAULT 'n/a'::text NOT NULL"),
            "{sql}"
        );
    }

    #[test]
    fn every_step_has_its_statement() {
        let t = "\"public\".\"media\"";
        let c = |x: &str| x.to_string();
        for (step, sql) in [
            (Step::Drop { column: c("a\"b") }, "ALTER TABLE \"public\".\"media\" DROP COLUMN \"a\"\"b\""),
            (
                Step::Rename { from: c("s3_path"), to: c("path") },
                "ALTER TABLE \"public\".\"media\" RENAME COLUMN \"s3_path\" TO \"path\"",
            ),
            (
                Step::Add {
                    column: c("label"),
                    pg_type: c("text"),
                    default: Some(c("'n/a'::text")),
                    not_null: true,
                },
                "ALTER TABLE \"public\".\"media\" ADD COLUMN \"label\" text DEFAULT 'n/a'::text NOT NULL",
            ),
            (
                Step::Add { column: c("x"), pg_type: c("integer"), default: None, not_null: false },
                "ALTER TABLE \"public\".\"media\" ADD COLUMN \"x\" integer",
            ),
            (
                Step::AlterType {
                    column: c("format"),
                    from: c("character varying(5)"),
                    to: c("character varying(50)"),
                },
                "ALTER TABLE \"public\".\"media\" ALTER COLUMN \"format\" TYPE character varying(50) USING \"format\"::character varying(50)",
            ),
            (
                Step::SetDefault { column: c("n"), default: c("0") },
                "ALTER TABLE \"public\".\"media\" ALTER COLUMN \"n\" SET DEFAULT 0",
            ),
            (Step::DropDefault { column: c("n") }, "ALTER TABLE \"public\".\"media\" ALTER COLUMN \"n\" DROP DEFAULT"),
            (Step::SetNotNull { column: c("n") }, "ALTER TABLE \"public\".\"media\" ALTER COLUMN \"n\" SET NOT NULL"),
            (Step::DropNotNull { column: c("n") }, "ALTER TABLE \"public\".\"media\" ALTER COLUMN \"n\" DROP NOT NULL"),
        ] {
            assert_eq!(step_sql(t, &step), sql);
        }
    }
}
