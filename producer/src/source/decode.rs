//! Rows as the producer ships them: every column decoded from PostgreSQL's binary form, the key
//! in text form beside it, a hash of the row's bytes and the watermark's value.

use std::hash::{Hash, Hasher};

use apache_avro::types::Value;
use tokio_postgres::Row as PgRow;
use tunnel_shared::catalog::{ColumnKind, TableInfo};
use tunnel_shared::event::Row;
use tunnel_shared::pg::PgError;
use tunnel_shared::pgbinary::{self, Raw};

use crate::error::SourceError;

/// One row read from the source.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// The primary key in PostgreSQL's text form, for parameters and checkpoints.
    pub key_text: Vec<String>,
    pub key: Vec<Value>,
    pub row: Row,
    /// A hash of the row's bytes, to tell whether it changed since it was shipped.
    pub hash: u64,
    /// The watermark column's value, microseconds since 1970.
    pub watermark: Option<i64>,
}

/// Decodes rows selected as [`TableInfo::select_list`] followed by [`key_text_list`].
pub(super) fn decode(table: &TableInfo, rows: &[PgRow]) -> Result<Vec<SourceRow>, SourceError> {
    if let Some(first) = rows.first() {
        read_as_the_catalog_says(table, first)?;
    }
    let n_cols = table.columns.len();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut values: Row = Vec::with_capacity(n_cols);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for (i, col) in table.columns.iter().enumerate() {
            let raw: Raw = r.try_get(i).map_err(PgError::query("reading a column"))?;
            raw.0.hash(&mut hasher);
            values.push(match raw.0 {
                None => None,
                Some(bytes) => Some(pgbinary::decode(&col.name, col.kind, bytes).map_err(
                    |source| SourceError::Value {
                        table: table.qualified_name(),
                        source,
                    },
                )?),
            });
        }
        let key = table
            .key
            .iter()
            .map(|&i| values[i].clone().unwrap_or(Value::Null))
            .collect();
        let watermark = table.watermark.and_then(|i| match &values[i] {
            Some(Value::LocalTimestampMicros(us)) | Some(Value::TimestampMicros(us)) => Some(*us),
            _ => None,
        });
        out.push(SourceRow {
            key_text: key_text(r, n_cols, table.key.len()),
            key,
            row: values,
            hash: hasher.finish(),
            watermark,
        });
    }
    Ok(out)
}

/// Refuses rows whose columns came back in other types than the catalog's: a column's type
/// changed since the catalog was read (a statement prepared for each query does not fail
/// then, as a cached plan does). Decoded as the old type, its values would be garbage shipped
/// under the old schema; the error has the table set up again from its new catalog instead.
fn read_as_the_catalog_says(table: &TableInfo, row: &PgRow) -> Result<(), SourceError> {
    for (col, read) in table.columns.iter().zip(row.columns()) {
        if !col.kind.read_as(read.type_()) {
            return Err(SourceError::ReadAsOtherType {
                table: table.qualified_name(),
                column: col.name.clone(),
                catalog: col.type_name.clone(),
                read: read.type_().name().to_string(),
            });
        }
    }
    Ok(())
}

/// A watermark bound in PostgreSQL's text form, for a `$n::text::<type>` parameter.
pub(super) fn watermark_text(kind: ColumnKind, micros: i64) -> String {
    let v = match kind {
        ColumnKind::TimestampTz => Value::TimestampMicros(micros),
        _ => Value::LocalTimestampMicros(micros),
    };
    pgbinary::to_pg_text(&v, None)
        .ok()
        .flatten()
        .unwrap_or_else(|| "-infinity".into())
}

pub(super) fn key_text(r: &PgRow, first: usize, n: usize) -> Vec<String> {
    (first..first + n).map(|i| r.get::<_, String>(i)).collect()
}

/// `"id"::text AS "__tunnel_k0", ...`: the key columns in text form, appended to every row
/// query.
pub(super) fn key_text_list(t: &TableInfo) -> String {
    t.key_as_text(Some("__tunnel_k"))
}
