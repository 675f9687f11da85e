//! The statements prepared once per connection: the reads every pass repeats.

use tokio_postgres::{Client, Statement};
use tunnel_shared::catalog::TableInfo;
use tunnel_shared::pg::{qualified, quote_ident, PgError};

use super::decode::key_text_list;
use crate::error::SourceError;

pub(super) struct Statements {
    pub(super) first_chunk: Statement,
    pub(super) next_chunk: Statement,
    pub(super) key_at_offset_first: Statement,
    pub(super) key_at_offset_next: Statement,
    pub(super) max_key: Statement,
}

pub(super) async fn prepare(client: &Client, t: &TableInfo) -> Result<Statements, SourceError> {
    let name = qualified(&t.schema, &t.name);
    let n_key = t.key.len();
    let rows = format!(
        "SELECT {}, {} FROM {name}",
        t.select_list(),
        key_text_list(t)
    );
    let keys = format!("SELECT {} FROM {name}", key_text_list(t));
    let after = format!("WHERE {} > {}", t.key_tuple(), t.key_params(1));
    let order = t.key_order();
    let prep = |sql: String| async move {
        client.prepare(&sql).await.map_err(PgError::query(format!(
            "preparing a query on {}",
            t.qualified_name()
        )))
    };
    Ok(Statements {
        first_chunk: prep(format!("{rows} ORDER BY {order} LIMIT $1")).await?,
        next_chunk: prep(format!(
            "{rows} {after} ORDER BY {order} LIMIT ${}",
            n_key + 1
        ))
        .await?,
        key_at_offset_first: prep(format!("{keys} ORDER BY {order} OFFSET $1 LIMIT 1")).await?,
        key_at_offset_next: prep(format!(
            "{keys} {after} ORDER BY {order} OFFSET ${} LIMIT 1",
            n_key + 1
        ))
        .await?,
        max_key: prep(format!(
            "{keys} ORDER BY {} LIMIT 1",
            t.key_columns()
                .map(|c| format!("{} DESC", quote_ident(&c.name)))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await?,
    })
}

/// The fingerprint of a table's shape as an SQL expression, `param` the placeholder of its
/// qualified name: read with every activity probe, from the catalog's indexes, so that a DDL is
/// noticed between two passes.
pub(super) fn columns_sql(param: &str) -> String {
    format!(
        "(SELECT md5(string_agg(a.attnum || ':' || a.attname || ':' || format_type(a.atttypid, a.atttypmod)
                 || ':' || a.attnotnull || ':' || coalesce(pg_get_expr(d.adbin, d.adrelid), ''), ',' ORDER BY a.attnum))
                 || ':' || coalesce((SELECT indkey::text FROM pg_index WHERE indrelid = to_regclass({param}) AND indisprimary), '')
            FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = to_regclass({param}) AND a.attnum > 0 AND NOT a.attisdropped)"
    )
}
