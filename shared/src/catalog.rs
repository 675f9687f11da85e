//! What a table looks like, read from the source's catalog: columns, types, nullability and the
//! primary key. Everything downstream (Avro schemas, SELECT lists, the target's DDL) derives
//! from a [`TableInfo`].

use tokio_postgres::Client;

use crate::pg::{quote_ident, PgError};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("table {0} does not exist on the source, or the role cannot see it")]
    NotFound(String),
    #[error(
        "table {0} has no primary key: the pipeline needs one to key its events and find deletes"
    )]
    NoPrimaryKey(String),
    #[error("the role cannot SELECT from table {0}: grant it SELECT")]
    NoSelect(String),
    #[error("table {table}: watermark column '{column}' {problem}")]
    BadWatermark {
        table: String,
        column: String,
        problem: String,
    },
    #[error(transparent)]
    Pg(#[from] PgError),
}

/// How a column's values travel; see docs/design.md for the whole mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    /// text, varchar, bpchar, name, citext
    Text,
    Date,
    /// timestamp without time zone
    Timestamp,
    /// timestamp with time zone
    TimestampTz,
    /// time without time zone
    Time,
    /// numeric(p, s) with 0 <= s <= p
    Decimal {
        precision: u32,
        scale: u32,
    },
    Bytea,
    Uuid,
    /// json and jsonb, carried as their text
    Json,
    /// anything else (numeric without a precision, interval, arrays, enums, ...): carried as
    /// PostgreSQL's text form of the value, which the target parses back into the same type.
    AsText,
}

impl ColumnKind {
    /// `smallint`, `integer` or `bigint`.
    pub fn is_integer(self) -> bool {
        matches!(self, ColumnKind::Int2 | ColumnKind::Int4 | ColumnKind::Int8)
    }

    fn from_catalog(typname: &str, typmod: i32) -> ColumnKind {
        match typname {
            "int2" => ColumnKind::Int2,
            "int4" => ColumnKind::Int4,
            "int8" => ColumnKind::Int8,
            "float4" => ColumnKind::Float4,
            "float8" => ColumnKind::Float8,
            "bool" => ColumnKind::Bool,
            "text" | "varchar" | "bpchar" | "name" | "citext" => ColumnKind::Text,
            "date" => ColumnKind::Date,
            "timestamp" => ColumnKind::Timestamp,
            "timestamptz" => ColumnKind::TimestampTz,
            "time" => ColumnKind::Time,
            "numeric" if typmod >= 4 => {
                let precision = (((typmod - 4) >> 16) & 0xffff) as u32;
                // the scale is an 11-bit signed number since PostgreSQL 15
                let raw_scale = ((typmod - 4) & 0x7ff) as u32;
                if raw_scale <= precision && precision >= 1 {
                    ColumnKind::Decimal {
                        precision,
                        scale: raw_scale,
                    }
                } else {
                    ColumnKind::AsText
                }
            }
            "bytea" => ColumnKind::Bytea,
            "uuid" => ColumnKind::Uuid,
            "json" | "jsonb" => ColumnKind::Json,
            _ => ColumnKind::AsText,
        }
    }

    /// Whether the producer reads the column through a `::text` cast.
    pub fn read_as_text(self) -> bool {
        matches!(self, ColumnKind::Decimal { .. } | ColumnKind::AsText)
    }

    /// Whether a column of this kind, selected as [`TableInfo::select_list`] does, can come
    /// back as `read` (the type of a result column; a domain comes back as its base type).
    /// Not so when the column's type changed after the catalog was read: its values would be
    /// decoded as the old type's, which they are not.
    pub fn read_as(self, read: &tokio_postgres::types::Type) -> bool {
        use tokio_postgres::types::Type;
        match self {
            ColumnKind::Int2 => *read == Type::INT2,
            ColumnKind::Int4 => *read == Type::INT4,
            ColumnKind::Int8 => *read == Type::INT8,
            ColumnKind::Float4 => *read == Type::FLOAT4,
            ColumnKind::Float8 => *read == Type::FLOAT8,
            ColumnKind::Bool => *read == Type::BOOL,
            ColumnKind::Text => {
                [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(read)
                    || read.name() == "citext"
            }
            ColumnKind::Date => *read == Type::DATE,
            ColumnKind::Timestamp => *read == Type::TIMESTAMP,
            ColumnKind::TimestampTz => *read == Type::TIMESTAMPTZ,
            ColumnKind::Time => *read == Type::TIME,
            ColumnKind::Bytea => *read == Type::BYTEA,
            ColumnKind::Uuid => *read == Type::UUID,
            ColumnKind::Json => *read == Type::JSON || *read == Type::JSONB,
            ColumnKind::Decimal { .. } | ColumnKind::AsText => *read == Type::TEXT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type as PostgreSQL spells it (`format_type`), e.g. `character varying(1024)`.
    pub type_name: String,
    pub kind: ColumnKind,
    pub nullable: bool,
    /// The column's number in the table (`attnum`): it stays when the column is renamed.
    pub attnum: i16,
    /// The default expression as PostgreSQL prints it (`pg_get_expr`), if there is one.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order.
    pub key: Vec<usize>,
    /// Index into `columns` of the watermark column, if there is one.
    pub watermark: Option<usize>,
}

impl TableInfo {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.key.iter().map(|&i| &self.columns[i])
    }

    /// The key's column when the key is one integer column (`smallint`, `integer`, `bigint`):
    /// such keys are compared by value ranges and kept in the shipped key set.
    pub fn integer_key(&self) -> Option<&Column> {
        match self.key[..] {
            [k] => Some(&self.columns[k]).filter(|c| c.kind.is_integer()),
            _ => None,
        }
    }

    /// `"a", "b"::text, ...`: the SELECT list that reads every column in the form
    /// [`crate::pgbinary`] decodes.
    pub fn select_list(&self) -> String {
        self.columns
            .iter()
            .map(select_expr)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `"id"` or `("a", "b")`: the primary key as one SQL expression, for keyset pagination.
    pub fn key_tuple(&self) -> String {
        let cols: Vec<String> = self.key_columns().map(|c| quote_ident(&c.name)).collect();
        if cols.len() == 1 {
            cols[0].clone()
        } else {
            format!("({})", cols.join(", "))
        }
    }

    /// `"a"::text, "b"::text`: the key columns in PostgreSQL's text form; with an alias
    /// prefix `p`, each named `"p0"`, `"p1"`, ...
    pub fn key_as_text(&self, alias: Option<&str>) -> String {
        self.key_columns()
            .enumerate()
            .map(|(i, c)| match alias {
                Some(p) => format!(
                    "{}::text AS {}",
                    quote_ident(&c.name),
                    quote_ident(&format!("{p}{i}"))
                ),
                None => format!("{}::text", quote_ident(&c.name)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `"a", "b"`: the primary key columns, for ORDER BY.
    pub fn key_order(&self) -> String {
        self.key_columns()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `("a", "b") IN (SELECT u.c0::int4, u.c1::text FROM unnest($1::text[], $2::text[]) AS
    /// u(c0, c1))`: the rows whose key is one of those listed, one text array per key column
    /// (parameters `$1`..), for lookups of many keys in one statement.
    pub fn key_in_arrays(&self) -> String {
        let n = self.key.len();
        let casts: Vec<String> = self
            .key_columns()
            .enumerate()
            .map(|(i, c)| format!("u.c{i}::{}", c.type_name))
            .collect();
        let arrays: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
        let aliases: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        format!(
            "{} IN (SELECT {} FROM unnest({}) AS u({}))",
            self.key_tuple(),
            casts.join(", "),
            arrays.join(", "),
            aliases.join(", ")
        )
    }

    /// `(SELECT $1::text::int4, $2::text::text)`: key parameters as a subquery, compared with
    /// [`Self::key_tuple`]. The casts run once per statement, never once per row.
    pub fn key_subquery(&self, first: usize) -> String {
        let params: Vec<String> = self
            .key_columns()
            .enumerate()
            .map(|(i, c)| format!("${}::text::{}", first + i, c.type_name))
            .collect();
        format!("(SELECT {})", params.join(", "))
    }

    /// `$1::text::int4` or `($1::text::int4, $2::text::text)`: key parameters passed as text
    /// and cast to the key's types, starting at parameter `first`.
    pub fn key_params(&self, first: usize) -> String {
        let params: Vec<String> = self
            .key_columns()
            .enumerate()
            .map(|(i, c)| format!("${}::text::{}", first + i, c.type_name))
            .collect();
        if params.len() == 1 {
            params[0].clone()
        } else {
            format!("({})", params.join(", "))
        }
    }
}

fn select_expr(c: &Column) -> String {
    if c.kind.read_as_text() {
        format!("{}::text", quote_ident(&c.name))
    } else {
        quote_ident(&c.name)
    }
}

const COLUMNS_SQL: &str = "
SELECT a.attname::text,
       format_type(a.atttypid, a.atttypmod),
       COALESCE(bt.typname, t.typname)::text,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
       NOT a.attnotnull,
       COALESCE((SELECT k.n FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, n) WHERE k.att = a.attnum), 0)::int4,
       c.relkind::text,
       has_table_privilege(c.oid, 'SELECT'),
       a.attnum,
       pg_get_expr(d.adbin, d.adrelid)
  FROM pg_catalog.pg_attribute a
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
  LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

/// Reads a table's shape. `watermark`: `None` picks a `timestamp`/`timestamptz` column named
/// `updated_at` if there is one; `Some("")` means no watermark column; `Some(name)` names it.
pub async fn load_table(
    client: &Client,
    schema: &str,
    name: &str,
    watermark: Option<&str>,
) -> Result<TableInfo, CatalogError> {
    let qualified = format!("{schema}.{name}");
    let rows = client
        .query(COLUMNS_SQL, &[&schema, &name])
        .await
        .map_err(PgError::query(format!(
            "reading the catalog of {qualified}"
        )))?;
    if rows.is_empty() {
        return Err(CatalogError::NotFound(qualified));
    }
    let relkind: String = rows[0].get(6);
    if relkind != "r" && relkind != "p" {
        return Err(CatalogError::NotFound(qualified));
    }
    let can_select: bool = rows[0].get(7);
    if !can_select {
        return Err(CatalogError::NoSelect(qualified));
    }
    let mut columns = Vec::with_capacity(rows.len());
    let mut key: Vec<(i32, usize)> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let typname: String = row.get(2);
        let typmod: i32 = row.get(3);
        let key_pos: i32 = row.get(5);
        if key_pos > 0 {
            key.push((key_pos, i));
        }
        columns.push(Column {
            name: row.get(0),
            type_name: row.get(1),
            kind: ColumnKind::from_catalog(&typname, typmod),
            nullable: row.get(4),
            attnum: row.get(8),
            default: row.get(9),
        });
    }
    if key.is_empty() {
        return Err(CatalogError::NoPrimaryKey(qualified));
    }
    key.sort();
    let key = key.into_iter().map(|(_, i)| i).collect();
    let watermark = pick_watermark(&qualified, &columns, watermark)?;
    Ok(TableInfo {
        schema: schema.to_string(),
        name: name.to_string(),
        columns,
        key,
        watermark,
    })
}

fn pick_watermark(
    table: &str,
    columns: &[Column],
    wanted: Option<&str>,
) -> Result<Option<usize>, CatalogError> {
    let is_time = |c: &Column| matches!(c.kind, ColumnKind::Timestamp | ColumnKind::TimestampTz);
    match wanted {
        Some("") => Ok(None),
        None => Ok(columns
            .iter()
            .position(|c| c.name == "updated_at" && is_time(c))),
        Some(name) => {
            let Some(i) = columns.iter().position(|c| c.name == name) else {
                return Err(CatalogError::BadWatermark {
                    table: table.to_string(),
                    column: name.to_string(),
                    problem: "does not exist".into(),
                });
            };
            if !is_time(&columns[i]) {
                return Err(CatalogError::BadWatermark {
                    table: table.to_string(),
                    column: name.to_string(),
                    problem: format!("is {}, not timestamp or timestamptz", columns[i].type_name),
                });
            }
            Ok(Some(i))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_read_in_another_type_than_its_kind_is_told_apart() {
        use tokio_postgres::types::Type;
        let varchar = ColumnKind::from_catalog("varchar", 9);
        assert!(varchar.read_as(&Type::VARCHAR) && varchar.read_as(&Type::TEXT));
        // varchar(5) to integer after the catalog was read: four bytes that are no text
        assert!(!varchar.read_as(&Type::INT4));
        assert!(!ColumnKind::Int4.read_as(&Type::INT8));
        assert!(ColumnKind::Json.read_as(&Type::JSONB));
        // read through ::text: numeric of any precision, arrays, enums
        let decimal = ColumnKind::from_catalog("numeric", (10 << 16) + 2 + 4);
        assert!(decimal.read_as(&Type::TEXT) && !decimal.read_as(&Type::NUMERIC));
        assert!(ColumnKind::AsText.read_as(&Type::TEXT));
    }

    fn col(name: &str, type_name: &str, kind: ColumnKind) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            kind,
            nullable: true,
            attnum: 1,
            default: None,
        }
    }

    #[test]
    fn numeric_typmod_decodes_precision_and_scale() {
        // numeric(10,2): typmod = ((10 << 16) | 2) + 4
        let typmod = ((10 << 16) | 2) + 4;
        assert_eq!(
            ColumnKind::from_catalog("numeric", typmod),
            ColumnKind::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(ColumnKind::from_catalog("numeric", -1), ColumnKind::AsText);
        assert_eq!(ColumnKind::from_catalog("interval", -1), ColumnKind::AsText);
    }

    #[test]
    fn sql_fragments_for_single_and_composite_keys() {
        let mut t = TableInfo {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                col("a", "integer", ColumnKind::Int4),
                col("b", "text", ColumnKind::Text),
                col("n", "numeric", ColumnKind::AsText),
            ],
            key: vec![0],
            watermark: None,
        };
        assert_eq!(t.key_tuple(), "\"a\"");
        assert_eq!(t.key_params(1), "$1::text::integer");
        assert_eq!(t.select_list(), "\"a\", \"b\", \"n\"::text");
        assert_eq!(t.integer_key().map(|c| c.name.as_str()), Some("a"));
        t.key = vec![1, 0];
        assert!(t.integer_key().is_none());
        assert_eq!(t.key_as_text(None), "\"b\"::text, \"a\"::text");
        assert_eq!(
            t.key_as_text(Some("k")),
            "\"b\"::text AS \"k0\", \"a\"::text AS \"k1\""
        );
        assert_eq!(t.key_tuple(), "(\"b\", \"a\")");
        assert_eq!(t.key_order(), "\"b\", \"a\"");
        assert_eq!(t.key_params(3), "($3::text::text, $4::text::integer)");
        assert_eq!(
            t.key_subquery(3),
            "(SELECT $3::text::text, $4::text::integer)"
        );
    }

    #[test]
    fn watermark_is_picked_or_refused() {
        let cols = vec![
            col("id", "integer", ColumnKind::Int4),
            col(
                "updated_at",
                "timestamp without time zone",
                ColumnKind::Timestamp,
            ),
        ];
        assert_eq!(pick_watermark("t", &cols, None).unwrap(), Some(1));
        assert_eq!(pick_watermark("t", &cols, Some("")).unwrap(), None);
        let err = pick_watermark("t", &cols, Some("id"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not timestamp"), "{err}");
        let err = pick_watermark("t", &cols, Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
