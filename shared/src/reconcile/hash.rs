//! The row hashes both sides compute: the same SQL expression over each column's value, so
//! that a row's hash is equal on both databases exactly when its contents are.

use crate::catalog::{ColumnKind, TableInfo};
use crate::pg::quote_ident;

/// The SQL expression of a row's hash (`bigint`): each column hashed with its type's hash
/// function (as text where there is none), seeded with a hash of the row's key and the column's
/// position, and the columns XORed. A value moved to another row or column changes the hash.
pub fn row_hash_expr(t: &TableInfo) -> String {
    let seed = key_hash_expr(t);
    let cells: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let col = quote_ident(&c.name);
            let s = format!("({seed} # {})", i + 1);
            // each column cast to its kind's type: a no-op where it has that type, and the
            // value's own type where the replica holds it as text (a domain the target lacks)
            let h = match c.kind {
                ColumnKind::Int2 => format!("hashint2extended({col}::int2, {s})"),
                ColumnKind::Int4 => format!("hashint4extended({col}::int4, {s})"),
                ColumnKind::Int8 => format!("hashint8extended({col}::int8, {s})"),
                ColumnKind::Float4 => format!("hashfloat4extended({col}::float4, {s})"),
                ColumnKind::Float8 => format!("hashfloat8extended({col}::float8, {s})"),
                ColumnKind::Text if !c.type_name.starts_with("character(") => {
                    format!("hashtextextended({col}::text, {s})")
                }
                ColumnKind::Timestamp => {
                    format!("timestamp_hash_extended({col}::timestamp, {s})")
                }
                ColumnKind::TimestampTz => {
                    format!("timestamp_hash_extended({col}::timestamptz AT TIME ZONE 'UTC', {s})")
                }
                ColumnKind::Decimal { .. } => {
                    format!("hash_numeric_extended({col}::numeric, {s})")
                }
                ColumnKind::Uuid => format!("uuid_hash_extended({col}::uuid, {s})"),
                _ => format!("hashtextextended({col}::text, {s})"),
            };
            // a null cell hashes to its seed turned around, never to nothing
            format!("COALESCE({h}, ~{s})")
        })
        .collect();
    format!("({})", cells.join(" # "))
}

/// The SQL expression of the hash (`bigint`) of a row's key alone.
pub fn key_hash_expr(t: &TableInfo) -> String {
    match t.integer_key() {
        Some(k) => format!("hashint8extended({}::int8, 0)", quote_ident(&k.name)),
        None => format!("hashtextextended(ROW({})::text, 0)", t.key_order()),
    }
}

/// `"id"::text, <row hash>`: what a listing of rows selects, keys first.
pub fn listing_select(t: &TableInfo) -> String {
    format!("{}, {}", t.key_as_text(None), row_hash_expr(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Column;

    #[test]
    fn hash_expression_seeds_every_cell_with_the_key() {
        let t = TableInfo {
            schema: "public".into(),
            name: "media".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_name: "integer".into(),
                    kind: ColumnKind::Int4,
                    nullable: false,
                    attnum: 1,
                    default: None,
                },
                Column {
                    name: "s3_path".into(),
                    type_name: "character varying(1024)".into(),
                    kind: ColumnKind::Text,
                    nullable: true,
                    attnum: 2,
                    default: None,
                },
                Column {
                    name: "doc".into(),
                    type_name: "json".into(),
                    kind: ColumnKind::Json,
                    nullable: true,
                    attnum: 3,
                    default: None,
                },
            ],
            key: vec![0],
            watermark: None,
        };
        let h = row_hash_expr(&t);
        assert!(
            h.contains("hashint4extended(\"id\"::int4, (hashint8extended(\"id\"::int8, 0) # 1))"),
            "{h}"
        );
        assert!(
            h.contains("hashtextextended(\"doc\"::text, (hashint8extended(\"id\"::int8, 0) # 3))"),
            "{h}"
        );
        assert_eq!(h.matches("COALESCE(").count(), 3);
        assert_eq!(key_hash_expr(&t), "hashint8extended(\"id\"::int8, 0)");
    }
}
