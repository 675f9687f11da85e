//! What the replica must change to hold the rows of a newer writer schema: its columns are
//! matched with the schema's fields by source attnum (by name for a field or a column without
//! one), and the differences become [`Step`]s, which `ddl` turns into SQL. Also which target
//! column each field of any writer schema (older ones included) goes to: [`project`].
//! Plain code: nothing here does I/O.

use std::collections::HashSet;

use tunnel_shared::config::SchemaChangePolicy;
use tunnel_shared::schema::FieldShape;

use crate::model::TargetColumn;

/// One change to a replica table's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Drop {
        column: String,
    },
    Rename {
        from: String,
        to: String,
    },
    /// `not_null` only together with a default: the rows already there get it.
    Add {
        column: String,
        pg_type: String,
        default: Option<String>,
        not_null: bool,
    },
    AlterType {
        column: String,
        from: String,
        to: String,
    },
    SetDefault {
        column: String,
        default: String,
    },
    DropDefault {
        column: String,
    },
    SetNotNull {
        column: String,
    },
    DropNotNull {
        column: String,
    },
}

/// The steps that bring a table to a writer schema, and its columns afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Evolution {
    pub(crate) steps: Vec<Step>,
    pub(crate) columns: Vec<TargetColumn>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EvolveError {
    #[error(
        "column {column} is part of the replica's primary key and the source no longer has it: \
         a change of the key is not followed; recreate the replica"
    )]
    KeyColumnGone { column: String },
}

/// Which column of `columns` holds `field`: the one with its attnum, else (a column adopted
/// by name, or a schema without attnums) the one with its name.
fn find(columns: &[TargetColumn], field: &FieldShape) -> Option<usize> {
    if let Some(a) = field.attnum {
        if let Some(i) = columns.iter().position(|c| c.attnum == Some(a)) {
            return Some(i);
        }
        return columns
            .iter()
            .position(|c| c.attnum.is_none() && c.name == field.column);
    }
    columns.iter().position(|c| c.name == field.column)
}

/// For each field of a writer schema, the index in `columns` of the column it is written to;
/// `None` for a field whose column is gone (dropped since that schema). An empty `columns`
/// (not read) maps nothing: the caller then writes the fields' own columns.
pub(crate) fn project(columns: &[TargetColumn], fields: &[FieldShape]) -> Vec<Option<usize>> {
    let mut used = vec![false; columns.len()];
    fields
        .iter()
        .map(|f| {
            let i = find(columns, f).filter(|i| !used[*i])?;
            used[i] = true;
            Some(i)
        })
        .collect()
}

/// The columns of `columns` that hold a field of `fields` (an older writer schema) with
/// another type than the field's: columns whose type changed since that schema.
pub(crate) fn retyped_since(columns: &[TargetColumn], fields: &[FieldShape]) -> Vec<String> {
    project(columns, fields)
        .iter()
        .zip(fields)
        .filter_map(|(i, f)| i.map(|i| &columns[i]).filter(|c| c.pg_type != f.pg_type))
        .map(|c| c.name.clone())
        .collect()
}

/// The steps that make `current` hold the rows of `writer` (the newest schema), under `policy`.
pub(crate) fn diff(
    current: &[TargetColumn],
    writer: &[FieldShape],
    policy: SchemaChangePolicy,
) -> Result<Evolution, EvolveError> {
    let matched = project(current, writer);
    let held: HashSet<usize> = matched.iter().flatten().copied().collect();
    let wanted: HashSet<&str> = writer.iter().map(|f| f.column.as_str()).collect();
    let mut steps = Vec::new();
    let mut columns = Vec::with_capacity(writer.len());
    // columns no field holds any more: first, so that their names are free
    for (i, c) in current
        .iter()
        .enumerate()
        .filter(|(i, _)| !held.contains(i))
    {
        if c.in_key {
            return Err(EvolveError::KeyColumnGone {
                column: c.name.clone(),
            });
        }
        match policy {
            SchemaChangePolicy::Evolve => steps.push(Step::Drop {
                column: c.name.clone(),
            }),
            SchemaChangePolicy::KeepDropped => {
                let mut name = c.name.clone();
                if wanted.contains(name.as_str()) {
                    // a new column takes its name: the kept one steps aside
                    name = free_name(&format!("{}_dropped", c.name), current, writer, &[], i);
                    steps.push(Step::Rename {
                        from: c.name.clone(),
                        to: name.clone(),
                    });
                }
                if !c.nullable {
                    steps.push(Step::DropNotNull {
                        column: name.clone(),
                    });
                }
                if c.default.is_some() {
                    steps.push(Step::DropDefault {
                        column: name.clone(),
                    });
                }
                columns.push(TargetColumn {
                    name,
                    nullable: true,
                    default: None,
                    ..c.clone()
                });
            }
        }
    }
    renames(current, writer, &matched, &mut steps);
    let mut later = Vec::new();
    for (f, m) in writer.iter().zip(&matched) {
        let Some(c) = m.map(|i| &current[i]) else {
            let not_null = !f.nullable && f.default.is_some();
            steps.push(Step::Add {
                column: f.column.clone(),
                pg_type: f.pg_type.clone(),
                default: f.default.clone(),
                not_null,
            });
            columns.push(TargetColumn {
                name: f.column.clone(),
                attnum: f.attnum,
                pg_type: f.pg_type.clone(),
                nullable: !not_null,
                default: f.default.clone(),
                in_key: false,
            });
            continue;
        };
        let column = || f.column.clone();
        let mut default = c.default.as_deref();
        if c.pg_type != f.pg_type {
            if default.is_some() {
                // the old default may not cast to the new type: set again afterwards
                later.push(Step::DropDefault { column: column() });
                default = None;
            }
            later.push(Step::AlterType {
                column: column(),
                from: c.pg_type.clone(),
                to: f.pg_type.clone(),
            });
        }
        if default != f.default.as_deref() {
            later.push(match &f.default {
                Some(d) => Step::SetDefault {
                    column: column(),
                    default: d.clone(),
                },
                None => Step::DropDefault { column: column() },
            });
        }
        // the primary key's columns stay NOT NULL whatever a schema says
        if !c.in_key && c.nullable != f.nullable {
            later.push(if f.nullable {
                Step::DropNotNull { column: column() }
            } else {
                Step::SetNotNull { column: column() }
            });
        }
        columns.push(TargetColumn {
            name: f.column.clone(),
            attnum: f.attnum.or(c.attnum),
            pg_type: f.pg_type.clone(),
            nullable: if c.in_key { c.nullable } else { f.nullable },
            default: f.default.clone(),
            in_key: c.in_key,
        });
    }
    // adds come before the changes of kept columns: SET NOT NULL, the riskiest, last
    later.sort_by_key(|s| matches!(s, Step::SetNotNull { .. }));
    steps.extend(later);
    Ok(Evolution { steps, columns })
}

/// The renames of held columns whose field has another name; through temporary names when
/// one takes the name another gives up (a swap, say).
fn renames(
    current: &[TargetColumn],
    writer: &[FieldShape],
    matched: &[Option<usize>],
    steps: &mut Vec<Step>,
) {
    let moves: Vec<(usize, &str, &str)> = writer
        .iter()
        .zip(matched)
        .filter_map(|(f, m)| {
            let i = (*m)?;
            (current[i].name != f.column).then_some((i, current[i].name.as_str(), &*f.column))
        })
        .collect();
    let sources: HashSet<&str> = moves.iter().map(|(_, from, _)| *from).collect();
    if !moves.iter().any(|(_, _, to)| sources.contains(to)) {
        for (_, from, to) in moves {
            steps.push(Step::Rename {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        return;
    }
    let mut temps: Vec<String> = Vec::with_capacity(moves.len());
    for (i, _, _) in &moves {
        let temp = free_name("tunnel_renaming", current, writer, &temps, *i);
        temps.push(temp);
    }
    for ((_, from, _), temp) in moves.iter().zip(&temps) {
        steps.push(Step::Rename {
            from: from.to_string(),
            to: temp.clone(),
        });
    }
    for ((_, _, to), temp) in moves.iter().zip(temps) {
        steps.push(Step::Rename {
            from: temp,
            to: to.to_string(),
        });
    }
}

/// `<base>_<n>` (`n` from `seed` up), a name that neither the table, nor the schema, nor
/// `also` uses.
fn free_name(
    base: &str,
    current: &[TargetColumn],
    writer: &[FieldShape],
    also: &[String],
    seed: usize,
) -> String {
    let taken = |n: &str| {
        current.iter().any(|c| c.name == n)
            || writer.iter().any(|f| f.column == n)
            || also.iter().any(|a| a == n)
    };
    (seed..)
        .map(|n| format!("{base}_{n}"))
        .find(|n| !taken(n))
        .unwrap_or_else(|| base.to_string())
}

#[cfg(test)]
mod tests;
