//! A table to replicate: where it is, where its replica goes, how its changes are found, and
//! the rules its rows must pass.

use serde::Deserialize;

use crate::rules::{Rule, RuleError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    #[serde(default = "default_schema")]
    pub schema: String,
    pub name: String,
    /// Column whose value the database moves on every insert and update. Absent: a
    /// `timestamp`/`timestamptz` column named `updated_at` if the table has one. `""`: none
    /// (updates are then found by reconciliation only).
    #[serde(default)]
    pub watermark_column: Option<String>,
    /// Where the consumer writes the replica; defaults to the source's schema and name.
    #[serde(default)]
    pub target_schema: Option<String>,
    #[serde(default)]
    pub target_name: Option<String>,
    /// Validation rules: rows that break one go to the DLQ instead of the target.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// What the target does when the source's columns change.
    #[serde(default)]
    pub on_schema_change: SchemaChangePolicy,
    /// How changes are found: `poll` (read-only queries) or `trigger` (a change table filled
    /// by triggers that `tunnel-producer install` creates).
    #[serde(default)]
    pub capture: Capture,
}

/// How the producer finds a table's changes (see docs/design.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capture {
    /// Key scans, watermark scans, delete scans and reconciliation: SELECT only.
    #[default]
    Poll,
    /// A change table on the source, written by row and TRUNCATE triggers.
    Trigger,
}

/// What the consumer does to the replica when the source's columns change (see
/// docs/operations.md, "Schema changes").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaChangePolicy {
    /// The replica follows: columns added, renamed, retyped, and dropped.
    #[default]
    Evolve,
    /// As `evolve`, except that a column dropped from the source stays in the replica with its
    /// values (nullable, NULL in new rows).
    KeepDropped,
}

/// A validation rule (see [`crate::rules`] for the grammar).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in the DLQ and usable as a replay filter; defaults to the check's text.
    #[serde(default)]
    pub name: Option<String>,
    /// E.g. `salary > 10000`, `type in (1, 2)`, `length(name) <= 64`, `email ~ '^.+@.+$'`.
    pub check: String,
}

impl TableConfig {
    /// `schema.table`, as used in logs and topic names.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
    pub fn target_schema(&self) -> &str {
        self.target_schema.as_deref().unwrap_or(&self.schema)
    }
    pub fn target_name(&self) -> &str {
        self.target_name.as_deref().unwrap_or(&self.name)
    }
    /// The name of the table's change table in `source.capture_schema` (trigger capture):
    /// `<schema>_<name>_cdc`.
    pub fn change_table_name(&self) -> String {
        Self::change_table_name_of(&self.schema, &self.name)
    }

    /// [`Self::change_table_name`] of `schema.name`.
    pub fn change_table_name_of(schema: &str, name: &str) -> String {
        format!("{schema}_{name}_cdc")
    }
    /// The table's validation rules, parsed.
    pub fn parsed_rules(&self) -> Result<Vec<Rule>, RuleError> {
        self.rules
            .iter()
            .map(|r| Rule::parse(r.name.as_deref(), &r.check))
            .collect()
    }
}

fn default_schema() -> String {
    "public".into()
}
