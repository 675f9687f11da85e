//! Avro schemas of a table's events, derived from its catalog entry, and read back on the
//! consumer side into the shape of the target table.
//!
//! Every row field carries custom attributes: `pg.name` (the column's name, which Avro's
//! naming rules may have forced to change) and `pg.type` (the column's PostgreSQL type), so that
//! the consumer can create the target table with the source's types from the schema alone;
//! newer schemas add `pg.attnum` (the source column's number, which a rename keeps),
//! `pg.nullable` (whether the column takes NULL, when the field's union no longer tells) and
//! `pg.default` (the column's default as `pg_get_expr` prints it, absent when it has none),
//! so that the consumer can follow the source's DDL. Schemas without them still read: fields
//! are then matched by name, and nullability comes from the union.

pub use crate::type_name::is_type_name;
use apache_avro::schema::{RecordSchema, Schema, UnionSchema};
use serde_json::{json, Value as Json};

use crate::catalog::{ColumnKind, TableInfo};
use crate::default_expr::constant_default;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("table {table}: columns {a} and {b} map to the same Avro field name {field}")]
    NameClash {
        table: String,
        a: String,
        b: String,
        field: String,
    },
    #[error("derived Avro schema does not parse: {0}")]
    Avro(String),
    #[error("schema {what} is not an event schema of this pipeline: {problem}")]
    NotAnEventSchema { what: String, problem: String },
}

/// The key and value schemas of one table's topic.
#[derive(Debug, Clone)]
pub struct TableSchemas {
    pub key: Schema,
    pub value: Schema,
    pub key_json: String,
    pub value_json: String,
}

/// A name that satisfies Avro's rules: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn avro_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn field_type(kind: ColumnKind) -> Json {
    match kind {
        ColumnKind::Int2 | ColumnKind::Int4 => json!("int"),
        ColumnKind::Int8 => json!("long"),
        ColumnKind::Float4 => json!("float"),
        ColumnKind::Float8 => json!("double"),
        ColumnKind::Bool => json!("boolean"),
        ColumnKind::Text | ColumnKind::Json | ColumnKind::AsText => json!("string"),
        ColumnKind::Date => json!({"type": "int", "logicalType": "date"}),
        ColumnKind::Timestamp => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
        ColumnKind::TimestampTz => json!({"type": "long", "logicalType": "timestamp-micros"}),
        ColumnKind::Time => json!({"type": "long", "logicalType": "time-micros"}),
        ColumnKind::Decimal { precision, scale } => json!({
            "type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale
        }),
        ColumnKind::Bytea => json!("bytes"),
        ColumnKind::Uuid => json!({"type": "string", "logicalType": "uuid"}),
    }
}

fn record(
    table: &TableInfo,
    name: &str,
    columns: &[usize],
    all_required: bool,
) -> Result<Json, SchemaError> {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    let mut fields = Vec::with_capacity(columns.len());
    for &i in columns {
        let c = &table.columns[i];
        let field = avro_name(&c.name);
        if let Some(other) = seen.insert(field.clone(), &c.name) {
            return Err(SchemaError::NameClash {
                table: table.qualified_name(),
                a: other.to_string(),
                b: c.name.clone(),
                field,
            });
        }
        let ty = field_type(c.kind);
        // A row's fields are all optional, NOT NULL columns too (`pg.nullable` says which
        // are): a column added later, or renamed, then keeps the schema BACKWARD compatible.
        // a numeric's NaN and infinities, and the last years of timestamps, have no value in
        // the logical type: a row field carries them as text in a third branch
        let special = matches!(
            c.kind,
            ColumnKind::Decimal { .. } | ColumnKind::Timestamp | ColumnKind::TimestampTz
        );
        let mut f = if all_required {
            json!({"name": field, "type": ty})
        } else if special {
            json!({"name": field, "type": ["null", ty, "string"], "default": null})
        } else {
            json!({"name": field, "type": ["null", ty], "default": null})
        };
        f["pg.name"] = json!(c.name);
        f["pg.type"] = json!(c.type_name);
        if !all_required {
            f["pg.attnum"] = json!(c.attnum);
            f["pg.nullable"] = json!(c.nullable);
            if let Some(d) = &c.default {
                f["pg.default"] = json!(d);
            }
        }
        fields.push(f);
    }
    Ok(json!({"type": "record", "name": name, "fields": fields}))
}

/// The Avro namespace of a table's schemas: `<prefix>.<schema>.<table>`, each part made valid.
pub fn namespace(prefix: &str, table: &TableInfo) -> String {
    [prefix, &table.schema, &table.name]
        .iter()
        .flat_map(|p| p.split('.'))
        .map(avro_name)
        .collect::<Vec<_>>()
        .join(".")
}

/// Derives the key schema (the primary key) and the value schema (the event envelope) of a
/// table.
pub fn derive(table: &TableInfo, prefix: &str) -> Result<TableSchemas, SchemaError> {
    let ns = namespace(prefix, table);
    let mut key = record(table, "Key", &table.key, true)?;
    key["namespace"] = json!(ns);
    let all: Vec<usize> = (0..table.columns.len()).collect();
    let row = record(table, "Value", &all, false)?;
    let value = json!({
        "type": "record",
        "name": "Envelope",
        "namespace": ns,
        "doc": format!("A change of a row of {} (Data Tunnel)", table.qualified_name()),
        "fields": [
            {"name": "op", "type": "string",
             "doc": "r = read by the snapshot, c = insert, u = update, d = delete"},
            {"name": "after", "type": ["null", row], "default": null,
             "doc": "the row after the change; null for a delete"},
            {"name": "source", "type": {
                "type": "record", "name": "Source",
                "fields": [
                    {"name": "version", "type": "string"},
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "snapshot", "type": "boolean"},
                    {"name": "detected_by", "type": "string",
                     "doc": "snapshot, key_scan, watermark, delete_scan, reconcile, repair or trigger"},
                    {"name": "updated_at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
                     "default": null,
                     "doc": "the row's watermark column, microseconds since 1970 (wall clock for timestamp without time zone)"}
                ]
            }},
            {"name": "ts_ms", "type": "long", "doc": "when the producer captured the change"}
        ]
    });
    let key_json = key.to_string();
    let value_json = value.to_string();
    Ok(TableSchemas {
        key: Schema::parse_str(&key_json).map_err(|e| SchemaError::Avro(e.to_string()))?,
        value: Schema::parse_str(&value_json).map_err(|e| SchemaError::Avro(e.to_string()))?,
        key_json,
        value_json,
    })
}

/// One column of the target table, as an event schema describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldShape {
    /// The Avro field name.
    pub field: String,
    /// The PostgreSQL column name.
    pub column: String,
    /// The PostgreSQL type (`pg.type`), e.g. `character varying(1024)`.
    pub pg_type: String,
    /// `pg.nullable` when the schema has it, else whether the field is a union with null.
    pub nullable: bool,
    /// The scale of a decimal field.
    pub scale: Option<u32>,
    /// The source column's number (`pg.attnum`), stable across renames.
    pub attnum: Option<i16>,
    /// The source column's default (`pg.default`) when it is a constant the target may copy
    /// (see [`crate::default_expr::constant_default`]); other defaults are not kept.
    pub default: Option<String>,
}

/// The row of an envelope schema (its `after` record), or the fields of a key schema.
pub fn row_fields(schema: &Schema, what: &str) -> Result<Vec<FieldShape>, SchemaError> {
    let bad = |problem: &str| SchemaError::NotAnEventSchema {
        what: what.to_string(),
        problem: problem.to_string(),
    };
    let Schema::Record(top) = schema else {
        return Err(bad("not a record"));
    };
    let row: &RecordSchema = if top.name.name == "Envelope" {
        let after = top
            .fields
            .iter()
            .find(|f| f.name == "after")
            .ok_or_else(|| bad("no 'after' field"))?;
        match &after.schema {
            Schema::Union(u) => u
                .variants()
                .iter()
                .find_map(|v| match v {
                    Schema::Record(r) => Some(r),
                    _ => None,
                })
                .ok_or_else(|| bad("'after' holds no record"))?,
            _ => return Err(bad("'after' is not a union with null")),
        }
    } else {
        top
    };
    row.fields
        .iter()
        .map(|f| {
            let attr = |k: &str| {
                f.custom_attributes
                    .get(k)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            let (inner, nullable) = match &f.schema {
                Schema::Union(u) => (non_null_variant(u), true),
                other => (Some(other), false),
            };
            let inner =
                inner.ok_or_else(|| bad(&format!("field {} has no non-null type", f.name)))?;
            let scale = match inner {
                Schema::Decimal(d) => Some(d.scale as u32),
                _ => None,
            };
            let pg_type = match attr("pg.type") {
                Some(t) if is_type_name(&t) => t,
                Some(t) => {
                    return Err(bad(&format!(
                        "field {}: pg.type '{t}' is not a PostgreSQL type name",
                        f.name
                    )))
                }
                None => default_pg_type(inner).ok_or_else(|| {
                    bad(&format!(
                        "field {} has no pg.type and no default type",
                        f.name
                    ))
                })?,
            };
            let nullable = match f.custom_attributes.get("pg.nullable") {
                None => nullable,
                Some(Json::Bool(b)) => *b,
                Some(other) => {
                    return Err(bad(&format!(
                        "field {}: pg.nullable {other} is not a boolean",
                        f.name
                    )))
                }
            };
            let attnum = match f.custom_attributes.get("pg.attnum") {
                None => None,
                Some(v) => Some(
                    v.as_i64()
                        .and_then(|n| i16::try_from(n).ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            bad(&format!(
                                "field {}: pg.attnum {v} is not a column number",
                                f.name
                            ))
                        })?,
                ),
            };
            let default = attr("pg.default").and_then(|d| constant_default(&d).map(str::to_string));
            Ok(FieldShape {
                field: f.name.clone(),
                column: attr("pg.name").unwrap_or_else(|| f.name.clone()),
                pg_type,
                nullable,
                scale,
                attnum,
                default,
            })
        })
        .collect()
}

fn non_null_variant(u: &UnionSchema) -> Option<&Schema> {
    u.variants().iter().find(|v| !matches!(v, Schema::Null))
}

/// The PostgreSQL type for a field that has no `pg.type` (a schema written by another tool).
fn default_pg_type(s: &Schema) -> Option<String> {
    Some(
        match s {
            Schema::Int => "integer",
            Schema::Long => "bigint",
            Schema::Float => "real",
            Schema::Double => "double precision",
            Schema::Boolean => "boolean",
            Schema::String => "text",
            Schema::Bytes => "bytea",
            Schema::Date => "date",
            Schema::TimeMicros | Schema::TimeMillis => "time",
            Schema::TimestampMicros | Schema::TimestampMillis => "timestamp with time zone",
            Schema::LocalTimestampMicros | Schema::LocalTimestampMillis => "timestamp",
            Schema::Uuid => "uuid",
            Schema::Decimal(d) => return Some(format!("numeric({},{})", d.precision, d.scale)),
            _ => return None,
        }
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn type_names_are_checked() {
        for ok in [
            "integer",
            "character varying(1024)",
            "character varying",
            "numeric(12,3)",
            "numeric",
            "timestamp without time zone",
            "timestamp(3) with time zone",
            "time(6) without time zone",
            "double precision",
            "interval day to second(3)",
            "interval",
            "bit varying(5)",
            "text[]",
            "integer[][]",
            "\"char\"",
            "public.mood",
            "\"My Schema\".\"We\"\"ird; type\"",
            "character(1)",
        ] {
            assert!(super::is_type_name(ok), "{ok}");
        }
        for bad in [
            "",
            "integer); DROP TABLE t; --",
            "integer NOT NULL",
            "integer references secret",
            "text DEFAULT 'x'",
            "int4 /* c */",
            "text\n",
            "\"unclosed",
            "\"a\"\"",
            "numeric(1,2,3)",
            "Integer",
            "x;y",
        ] {
            assert!(!super::is_type_name(bad), "{bad}");
        }
    }

    use super::*;
    use crate::catalog::Column;

    pub(crate) fn media() -> TableInfo {
        let col = |name: &str, type_name: &str, kind, nullable| Column {
            name: String::from(name),
            type_name: String::from(type_name),
            kind,
            nullable,
            attnum: 1,
            default: None,
        };
        TableInfo {
            schema: "public".into(),
            name: "media".into(),
            columns: vec![
                col("id", "integer", ColumnKind::Int4, false),
                col("s3_path", "character varying(1024)", ColumnKind::Text, true),
                col("format", "character varying(5)", ColumnKind::Text, true),
                col("type", "smallint", ColumnKind::Int2, true),
                col(
                    "updated_at",
                    "timestamp without time zone",
                    ColumnKind::Timestamp,
                    true,
                ),
                col(
                    "price",
                    "numeric(10,2)",
                    ColumnKind::Decimal {
                        precision: 10,
                        scale: 2,
                    },
                    true,
                ),
            ],
            key: vec![0],
            watermark: Some(4),
        }
    }

    #[test]
    fn derived_schemas_parse_and_read_back() {
        let t = media();
        let s = derive(&t, "tunnel").unwrap();
        let key = row_fields(&s.key, "key").unwrap();
        assert_eq!(key.len(), 1);
        assert_eq!(key[0].column, "id");
        assert!(!key[0].nullable);
        let row = row_fields(&s.value, "value").unwrap();
        assert_eq!(row.len(), 6);
        assert_eq!(row[1].pg_type, "character varying(1024)");
        assert!(row[1].nullable);
        assert_eq!(row[5].scale, Some(2));
        assert!(s.value_json.contains("tunnel.public.media"));
    }

    #[test]
    fn odd_column_names_are_made_valid_and_kept() {
        let mut t = media();
        t.columns[1].name = "s3 path".into();
        t.columns[2].name = "2fmt".into();
        let s = derive(&t, "tunnel").unwrap();
        let row = row_fields(&s.value, "value").unwrap();
        assert_eq!(row[1].field, "s3_path");
        assert_eq!(row[1].column, "s3 path");
        assert_eq!(row[2].field, "_2fmt");
    }

    #[test]
    fn evolution_attributes_are_read_and_checked() {
        let schema = |extra: &str| {
            Schema::parse_str(&format!(
                r#"{{"type": "record", "name": "Value", "fields": [
                    {{"name": "id", "type": "int", "pg.name": "id", "pg.type": "integer",
                      "pg.attnum": 1, "pg.nullable": false}},
                    {{"name": "label", "type": ["null", "string"], "default": null,
                      "pg.type": "text", "pg.attnum": 3, "pg.nullable": false,
                      "pg.default": "'n/a'::text"}},
                    {{"name": "at", "type": ["null", "string"], "default": null,
                      "pg.type": "text", "pg.default": "now()"{extra}}}
                ]}}"#
            ))
            .unwrap()
        };
        let row = row_fields(&schema(""), "value").unwrap();
        assert_eq!((row[0].attnum, row[0].nullable), (Some(1), false));
        assert_eq!(row[1].attnum, Some(3));
        assert!(!row[1].nullable, "pg.nullable wins over the union");
        assert_eq!(row[1].default.as_deref(), Some("'n/a'::text"));
        assert_eq!(row[2].default, None, "not a constant: not copied");
        assert!(row[2].nullable, "no pg.nullable: the union tells");
        assert_eq!(row[2].attnum, None);
        for bad in [
            r#", "pg.attnum": 0"#,
            r#", "pg.attnum": 40000"#,
            r#", "pg.attnum": "3""#,
            r#", "pg.nullable": "yes""#,
        ] {
            let err = row_fields(&schema(bad), "value").unwrap_err().to_string();
            assert!(err.contains("field at"), "{bad}: {err}");
        }
    }

    #[test]
    fn clashing_names_are_refused() {
        let mut t = media();
        t.columns[2].name = "s3-path".into();
        let err = derive(&t, "tunnel").unwrap_err().to_string();
        assert!(err.contains("same Avro field name"), "{err}");
    }
}
