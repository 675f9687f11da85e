//! The queries that read rows: by key range (the snapshot, the key scan), by key (repairs,
//! reconciliation) and by watermark (the watermark scan, by heap pages or key ranges).

use tokio_postgres::types::ToSql;
use tokio_postgres::{Row as PgRow, Statement};
use tunnel_shared::pg::{qualified, quote_ident, PgError};

use super::connection::Source;
use super::decode::{decode, key_text, key_text_list, watermark_text, SourceRow};
use crate::error::SourceError;

impl Source {
    /// Up to `limit` rows with a key above `after` (all keys when `None`), in key order.
    pub async fn rows_after(
        &mut self,
        after: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let (first, next) = (&self.statements.first_chunk, &self.statements.next_chunk);
        let rows = self
            .paginated(first, next, after, &limit)
            .await
            .map_err(PgError::query(format!(
                "reading {} by key",
                self.table.qualified_name()
            )))?;
        self.decode_rows(&rows).await
    }

    /// Up to `limit` rows with a key in `(after, upto]`, in key order.
    pub async fn rows_between(
        &mut self,
        after: Option<&[String]>,
        upto: &[String],
        limit: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        let mut conds = Vec::new();
        if let Some(k) = after {
            conds.push(format!(
                "{} > {}",
                self.table.key_tuple(),
                self.table.key_params(1)
            ));
            params.extend(k.iter().map(|s| s as &(dyn ToSql + Sync)));
        }
        conds.push(format!(
            "{} <= {}",
            self.table.key_tuple(),
            self.table.key_params(params.len() + 1)
        ));
        params.extend(upto.iter().map(|s| s as &(dyn ToSql + Sync)));
        params.push(&limit);
        let clause = format!(
            "WHERE {} ORDER BY {} LIMIT ${}",
            conds.join(" AND "),
            self.table.key_order(),
            params.len()
        );
        self.select_rows(&clause, &params, "reading by key range")
            .await
    }

    /// The rows with these keys (text form) that exist now.
    pub async fn rows_by_keys(
        &mut self,
        keys: &[Vec<String>],
    ) -> Result<Vec<SourceRow>, SourceError> {
        let mut out = Vec::new();
        let n = self.table.key.len();
        for chunk in keys.chunks(1000) {
            let columns: Vec<Vec<&str>> = (0..n)
                .map(|i| chunk.iter().map(|k| k[i].as_str()).collect())
                .collect();
            let params: Vec<&(dyn ToSql + Sync)> =
                columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            let clause = format!("WHERE {}", self.table.key_in_arrays());
            out.extend(self.select_rows(&clause, &params, "reading by key").await?);
        }
        Ok(out)
    }

    /// Rows with a key in `(after, upto]` (open ends when `None`) whose watermark is at or above
    /// `since_micros`.
    pub async fn rows_changed_since(
        &mut self,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        since_micros: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let Some(wm) = self.table.watermark else {
            return Ok(Vec::new());
        };
        let wm_col = &self.table.columns[wm];
        let since_text = watermark_text(wm_col.kind, since_micros);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since_text];
        let mut conds = vec![format!(
            "{} >= (SELECT $1::text::{})",
            quote_ident(&wm_col.name),
            wm_col.type_name
        )];
        if let Some(k) = after {
            conds.push(format!(
                "{} > {}",
                self.table.key_tuple(),
                self.table.key_params(params.len() + 1)
            ));
            params.extend(k.iter().map(|s| s as &(dyn ToSql + Sync)));
        }
        if let Some(k) = upto {
            conds.push(format!(
                "{} <= {}",
                self.table.key_tuple(),
                self.table.key_params(params.len() + 1)
            ));
            params.extend(k.iter().map(|s| s as &(dyn ToSql + Sync)));
        }
        let clause = format!(
            "WHERE {} ORDER BY {}",
            conds.join(" AND "),
            self.table.key_order()
        );
        self.select_rows(&clause, &params, "scanning for changes")
            .await
    }

    /// Rows on heap pages `[from, to)` (`to = None`: to the end, pages added since included)
    /// whose watermark is at or above `since_micros`, read by a TID range scan.
    pub async fn rows_changed_in_pages(
        &mut self,
        from: i64,
        to: Option<i64>,
        since_micros: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let Some(wm) = self.table.watermark else {
            return Ok(Vec::new());
        };
        let wm_col = &self.table.columns[wm];
        let since = watermark_text(wm_col.kind, since_micros);
        let upper = match to {
            Some(p) => format!(" AND ctid < '({p},0)'::tid"),
            None => String::new(),
        };
        let clause = format!(
            "WHERE ctid >= '({from},0)'::tid{upper} AND {} >= (SELECT $1::text::{})",
            quote_ident(&wm_col.name),
            wm_col.type_name
        );
        self.select_rows(&clause, &[&since], "scanning for changes")
            .await
    }

    /// The key `n` rows after `after`, or `None` when fewer rows remain: the upper end of a
    /// key range of about `n` rows, found on the primary-key index alone.
    pub async fn key_at_offset(
        &self,
        after: Option<&[String]>,
        n: i64,
    ) -> Result<Option<Vec<String>>, SourceError> {
        let offset = n - 1;
        let (first, next) = (
            &self.statements.key_at_offset_first,
            &self.statements.key_at_offset_next,
        );
        let rows = self
            .paginated(first, next, after, &offset)
            .await
            .map_err(PgError::query("finding a key range"))?;
        Ok(rows.first().map(|r| key_text(r, 0, self.table.key.len())))
    }

    /// The highest key visible now.
    pub async fn max_key(&self) -> Result<Option<Vec<String>>, SourceError> {
        let rows = self
            .client
            .query(&self.statements.max_key, &[])
            .await
            .map_err(PgError::query("reading the highest key"))?;
        Ok(rows.first().map(|r| key_text(r, 0, self.table.key.len())))
    }

    /// Runs `first` (no lower key) or `next` (keys above `after`, the key's parameters first),
    /// with `last` as the final parameter.
    async fn paginated(
        &self,
        first: &Statement,
        next: &Statement,
        after: Option<&[String]>,
        last: &i64,
    ) -> Result<Vec<PgRow>, tokio_postgres::Error> {
        match after {
            None => self.client.query(first, &[last]).await,
            Some(k) => {
                let mut params: Vec<&(dyn ToSql + Sync)> =
                    k.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
                params.push(last);
                self.client.query(next, &params).await
            }
        }
    }

    /// Every column of the rows that `clause` (`WHERE ...`, `ORDER BY ...`) selects, decoded.
    async fn select_rows(
        &mut self,
        clause: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let sql = format!(
            "SELECT {}, {} FROM {} {clause}",
            self.table.select_list(),
            key_text_list(&self.table),
            qualified(&self.table.schema, &self.table.name)
        );
        let rows = self
            .client
            .query(&sql, params)
            .await
            .map_err(PgError::query(format!(
                "{what}: {}",
                self.table.qualified_name()
            )))?;
        self.decode_rows(&rows).await
    }

    async fn decode_rows(&mut self, rows: &[PgRow]) -> Result<Vec<SourceRow>, SourceError> {
        let out = decode(&self.table, rows)?;
        self.read_rows += rows.len() as u64;
        self.throttle.account(rows.len() as u64).await;
        Ok(out)
    }
}
