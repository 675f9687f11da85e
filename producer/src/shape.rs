//! What changed in a table's shape between two reads of its catalog (a DDL while the producer
//! runs): columns matched by their number (`attnum`), so that a renamed column is a rename and
//! not a drop and an add. The worker decides from it what to do ([`ShapeChange::snapshot_again`],
//! [`ShapeChange::key_changed`]).

use std::collections::HashMap;
use std::fmt;

use tunnel_shared::catalog::{Column, TableInfo};

/// One column's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnChange {
    Added(String),
    Dropped(String),
    Renamed {
        from: String,
        to: String,
    },
    Retyped {
        column: String,
        from: String,
        to: String,
    },
    /// Nullability or default.
    Constraint(String),
}

impl fmt::Display for ColumnChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnChange::Added(c) => write!(f, "column {c} added"),
            ColumnChange::Dropped(c) => write!(f, "column {c} dropped"),
            ColumnChange::Renamed { from, to } => write!(f, "column {from} renamed to {to}"),
            ColumnChange::Retyped { column, from, to } => {
                write!(f, "column {column} changed from {from} to {to}")
            }
            ColumnChange::Constraint(c) => write!(f, "column {c}: nullability or default changed"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShapeChange {
    pub columns: Vec<ColumnChange>,
    /// The primary key's columns (by number) are others.
    pub key_changed: bool,
}

impl ShapeChange {
    /// Compares two reads of a table's catalog.
    pub fn between(old: &TableInfo, new: &TableInfo) -> ShapeChange {
        let by_num = |t: &TableInfo| -> HashMap<i16, Column> {
            t.columns.iter().map(|c| (c.attnum, c.clone())).collect()
        };
        let (before, after) = (by_num(old), by_num(new));
        let mut columns = Vec::new();
        for c in &new.columns {
            match before.get(&c.attnum) {
                None => columns.push(ColumnChange::Added(c.name.clone())),
                Some(o) => {
                    if o.name != c.name {
                        columns.push(ColumnChange::Renamed {
                            from: o.name.clone(),
                            to: c.name.clone(),
                        });
                    }
                    if o.type_name != c.type_name {
                        columns.push(ColumnChange::Retyped {
                            column: c.name.clone(),
                            from: o.type_name.clone(),
                            to: c.type_name.clone(),
                        });
                    }
                    if o.nullable != c.nullable || o.default != c.default {
                        columns.push(ColumnChange::Constraint(c.name.clone()));
                    }
                }
            }
        }
        for c in &old.columns {
            if !after.contains_key(&c.attnum) {
                columns.push(ColumnChange::Dropped(c.name.clone()));
            }
        }
        let key =
            |t: &TableInfo| -> Vec<i16> { t.key.iter().map(|&i| t.columns[i].attnum).collect() };
        ShapeChange {
            columns,
            key_changed: key(old) != key(new),
        }
    }

    /// Whether every row must be shipped again: a column was added, whose values in the rows
    /// that exist (a default evaluated once, or a volatile one per row) only the source knows.
    /// A rename, a drop or a widening changes no value the target does not have.
    pub fn snapshot_again(&self) -> bool {
        self.columns
            .iter()
            .any(|c| matches!(c, ColumnChange::Added(_)))
    }

    /// The changes, for a log line: `column note added, column size changed from ...`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.columns.iter().map(ToString::to_string).collect();
        if self.key_changed {
            parts.push("the primary key changed".into());
        }
        if parts.is_empty() {
            "no column changed".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunnel_shared::catalog::ColumnKind;

    fn col(attnum: i16, name: &str, type_name: &str) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            kind: ColumnKind::Text,
            nullable: true,
            attnum,
            default: None,
        }
    }

    fn table(columns: Vec<Column>) -> TableInfo {
        TableInfo {
            schema: "public".into(),
            name: "media".into(),
            columns,
            key: vec![0],
            watermark: None,
        }
    }

    #[test]
    fn a_rename_is_found_by_the_columns_number_not_as_a_drop_and_an_add() {
        let old = table(vec![col(1, "id", "integer"), col(2, "name", "text")]);
        let new = table(vec![col(1, "id", "integer"), col(2, "label", "text")]);
        let c = ShapeChange::between(&old, &new);
        assert_eq!(
            c.columns,
            vec![ColumnChange::Renamed {
                from: "name".into(),
                to: "label".into()
            }]
        );
        assert!(!c.snapshot_again() && !c.key_changed);
    }

    #[test]
    fn an_added_column_ships_every_row_again_a_drop_or_a_widening_does_not() {
        let old = table(vec![
            col(1, "id", "integer"),
            col(2, "f", "character varying(5)"),
        ]);
        let added = table(vec![
            col(1, "id", "integer"),
            col(2, "f", "character varying(5)"),
            col(3, "note", "text"),
        ]);
        assert!(ShapeChange::between(&old, &added).snapshot_again());
        let widened = table(vec![
            col(1, "id", "integer"),
            col(2, "f", "character varying(50)"),
        ]);
        let w = ShapeChange::between(&old, &widened);
        assert_eq!(
            w.describe(),
            "column f changed from character varying(5) to character varying(50)"
        );
        assert!(!w.snapshot_again());
        let dropped = table(vec![col(1, "id", "integer")]);
        let d = ShapeChange::between(&old, &dropped);
        assert_eq!(d.columns, vec![ColumnChange::Dropped("f".into())]);
        assert!(!d.snapshot_again());
    }

    #[test]
    fn a_key_on_other_columns_is_a_key_change() {
        let old = table(vec![col(1, "id", "integer"), col(2, "code", "text")]);
        let mut new = old.clone();
        new.key = vec![1];
        assert!(ShapeChange::between(&old, &new).key_changed);
    }
}
