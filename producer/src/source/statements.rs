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
