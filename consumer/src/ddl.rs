//! The target's DDL, in one place: the bookkeeping table of consumed offsets, and the replica
//! tables, created from the event schemas with the source's column types. The replica has
//! exactly the source's columns; bookkeeping lives in its own schema.

use tokio_postgres::Client;
use tunnel_shared::pg::{qualified, quote_ident, PgError};
use tunnel_shared::schema::FieldShape;

/// Serializes DDL between consumers that start together.
const DDL_LOCK: i64 = 0x7475_6e6e_656c; // "tunnel"

pub(crate) use tunnel_shared::bookkeeping::{offsets_table, parked_table, resolved_table};

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
         COMMENT ON TABLE {r} IS 'Data Tunnel: DLQ entries already replayed (applied, or sent back to the DLQ with a new reason)'",
        s = quote_ident(schema),
        t = offsets_table(schema),
        p = parked_table(schema),
        r = resolved_table(schema),
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
                "{} {}{}",
                quote_ident(&c.column),
                c.pg_type,
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

pub(crate) async fn ensure_table(
    client: &mut Client,
    schema: &str,
    table: &str,
    columns: &[FieldShape],
    key: &[FieldShape],
) -> Result<(), PgError> {
    let sql = create_table_sql(schema, table, columns, key);
    locked(
        client,
        &sql,
        &format!("creating the target table {schema}.{table}"),
    )
    .await
}

async fn locked(client: &mut Client, sql: &str, what: &str) -> Result<(), PgError> {
    let tx = client.transaction().await.map_err(PgError::query(what))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await
        .map_err(PgError::query(what))?;
    tx.batch_execute(sql).await.map_err(PgError::query(what))?;
    tx.commit().await.map_err(PgError::query(what))
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
}
