//! Comparing a source table's columns with its replica's: names, types (as `format_type`
//! prints them), nullability, and defaults where the source's is a constant the target copies
//! (see [`crate::default_expr`]). A default that is not a constant (`now()`, `nextval(...)`)
//! is never copied to the target, so it is not compared: the comparison lists those columns
//! apart. A generated column of the source is replicated as a plain column holding its values:
//! it is compared without its generation expression. Nothing here writes to either database.

use std::fmt;

use tokio_postgres::Client;

use crate::default_expr::constant_default;
use crate::pg::PgError;

/// One column of a table, as its database's catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// As `format_type` prints it.
    pub type_name: String,
    pub nullable: bool,
    /// As `pg_get_expr` prints it.
    pub default: Option<String>,
}

const COLUMNS_SQL: &str = "
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
       CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE n.nspname = $1::text AND c.relname = $2::text AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

/// A table's columns, in their order; empty when the table does not exist.
pub async fn load(client: &Client, schema: &str, table: &str) -> Result<Vec<ColumnDef>, PgError> {
    let rows = client
        .query(COLUMNS_SQL, &[&schema, &table])
        .await
        .map_err(PgError::query(format!(
            "reading the columns of {schema}.{table}"
        )))?;
    Ok(rows
        .iter()
        .map(|r| ColumnDef {
            name: r.get(0),
            type_name: r.get(1),
            nullable: r.get(2),
            default: r.get(3),
        })
        .collect())
}

/// How one column differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnDifference {
    Missing {
        column: String,
    },
    Extra {
        column: String,
    },
    Type {
        column: String,
        source: String,
        target: String,
    },
    Nullability {
        column: String,
        source_nullable: bool,
    },
    Default {
        column: String,
        source: Option<String>,
        target: Option<String>,
    },
}

impl fmt::Display for ColumnDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let null = |n: bool| if n { "nullable" } else { "NOT NULL" };
        let default = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".into());
        match self {
            ColumnDifference::Missing { column } => {
                write!(f, "column {column}: missing from the target")
            }
            ColumnDifference::Extra { column } => {
                write!(f, "column {column}: in the target only")
            }
            ColumnDifference::Type {
                column,
                source,
                target,
            } => write!(
                f,
                "column {column}: type {source} in the source, {target} in the target"
            ),
            ColumnDifference::Nullability {
                column,
                source_nullable,
            } => write!(
                f,
                "column {column}: {} in the source, {} in the target",
                null(*source_nullable),
                null(!source_nullable)
            ),
            ColumnDifference::Default {
                column,
                source,
                target,
            } => write!(
                f,
                "column {column}: default {} in the source, {} in the target",
                default(source),
                default(target)
            ),
        }
    }
}

/// How a replica's columns compare with the source's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnComparison {
    pub differences: Vec<ColumnDifference>,
    /// Columns of the target only that the table's policy keeps (`keep_dropped`): nullable,
    /// without a default. Not a difference.
    pub kept: Vec<String>,
    /// Columns whose source default is not a constant: not compared.
    pub defaults_not_compared: Vec<String>,
}

impl ColumnComparison {
    pub fn is_empty(&self) -> bool {
        self.differences.is_empty()
    }

    /// Whether the rows can be compared: every source column is in the target with its type.
    pub fn rows_comparable(&self) -> bool {
        !self.differences.iter().any(|d| {
            matches!(
                d,
                ColumnDifference::Missing { .. } | ColumnDifference::Type { .. }
            )
        })
    }
}

/// Compares the replica's columns (`target`) with the source's, by name. `keep_dropped`: the
/// table keeps the columns the source dropped (nullable, without a default in the target).
pub fn compare(source: &[ColumnDef], target: &[ColumnDef], keep_dropped: bool) -> ColumnComparison {
    let mut out = ColumnComparison::default();
    for s in source {
        let column = || s.name.clone();
        let Some(t) = target.iter().find(|t| t.name == s.name) else {
            out.differences
                .push(ColumnDifference::Missing { column: column() });
            continue;
        };
        if s.type_name != t.type_name {
            out.differences.push(ColumnDifference::Type {
                column: column(),
                source: s.type_name.clone(),
                target: t.type_name.clone(),
            });
        }
        if s.nullable != t.nullable {
            out.differences.push(ColumnDifference::Nullability {
                column: column(),
                source_nullable: s.nullable,
            });
        }
        let wanted = match &s.default {
            Some(d) => match constant_default(d) {
                Some(c) => Some(c),
                None => {
                    out.defaults_not_compared.push(column());
                    continue;
                }
            },
            None => None,
        };
        if wanted != t.default.as_deref() {
            out.differences.push(ColumnDifference::Default {
                column: column(),
                source: s.default.clone(),
                target: t.default.clone(),
            });
        }
    }
    for t in target
        .iter()
        .filter(|t| !source.iter().any(|s| s.name == t.name))
    {
        if keep_dropped && t.nullable && t.default.is_none() {
            out.kept.push(t.name.clone());
        } else {
            out.differences.push(ColumnDifference::Extra {
                column: t.name.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, type_name: &str, nullable: bool, default: Option<&str>) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_name: type_name.into(),
            nullable,
            default: default.map(str::to_string),
        }
    }

    fn media() -> Vec<ColumnDef> {
        vec![
            c(
                "id",
                "integer",
                false,
                Some("nextval('media_id_seq'::regclass)"),
            ),
            c(
                "format",
                "character varying(5)",
                true,
                Some("'jpg'::character varying"),
            ),
            c("price", "numeric(10,2)", true, Some("0")),
            c(
                "updated_at",
                "timestamp without time zone",
                true,
                Some("now()"),
            ),
        ]
    }

    /// The replica as the consumer makes it: constant defaults copied, others not.
    fn replica() -> Vec<ColumnDef> {
        let mut r = media();
        r[0].default = None;
        r[3].default = None;
        r
    }

    #[test]
    fn a_faithful_replica_is_identical_and_moving_defaults_are_set_apart() {
        let cmp = compare(&media(), &replica(), false);
        assert!(cmp.is_empty(), "{:?}", cmp.differences);
        assert_eq!(cmp.defaults_not_compared, ["id", "updated_at"]);
        assert!(cmp.rows_comparable());
    }

    #[test]
    fn every_kind_of_difference_has_its_line() {
        let mut target = replica();
        target[1].type_name = "character varying(50)".into();
        target[2].nullable = false;
        target[2].default = None;
        target.remove(3);
        target.push(c("old", "text", true, None));
        let cmp = compare(&media(), &target, false);
        let lines: Vec<String> = cmp.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "column format: type character varying(5) in the source, character varying(50) in the target",
                "column price: nullable in the source, NOT NULL in the target",
                "column price: default 0 in the source, none in the target",
                "column updated_at: missing from the target",
                "column old: in the target only",
            ]
        );
        assert!(!cmp.rows_comparable());
        // a kept column is not a difference under keep_dropped (nullable, no default)
        let cmp = compare(&media(), &target, true);
        assert_eq!(cmp.kept, ["old"]);
        assert_eq!(cmp.differences.len(), 4);
    }

    #[test]
    fn a_default_the_target_has_and_the_source_not_is_a_difference() {
        let mut target = replica();
        target[3].default = Some("'x'::text".into());
        let mut source = media();
        source[3].default = None;
        let cmp = compare(&source, &target, false);
        assert_eq!(
            cmp.differences,
            [ColumnDifference::Default {
                column: "updated_at".into(),
                source: None,
                target: Some("'x'::text".into())
            }]
        );
        assert!(cmp.rows_comparable());
    }
}
