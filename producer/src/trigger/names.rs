//! The names of the objects trigger capture keeps on the source for one table.

use tunnel_shared::config::{SourceConfig, TableConfig};
use tunnel_shared::pg::{qualified, quote_ident};

/// The name of the row trigger on a captured table.
pub const ROW_TRIGGER: &str = "data_tunnel_capture";
/// The name of the TRUNCATE trigger on a captured table.
pub const TRUNCATE_TRIGGER: &str = "data_tunnel_truncate";

/// One captured table's objects: its change table and trigger functions live in the capture
/// schema; the triggers are on the table itself.
#[derive(Debug, Clone)]
pub struct Objects {
    pub schema: String,
    pub change_table: String,
    pub source_schema: String,
    pub source_name: String,
}

impl Objects {
    pub fn new(source: &SourceConfig, table: &TableConfig) -> Self {
        Self::of(source, &table.schema, &table.name)
    }

    /// The objects of `schema.name`, whether or not the config still lists it.
    pub fn of(source: &SourceConfig, schema: &str, name: &str) -> Self {
        Self {
            schema: source.capture_schema.clone(),
            change_table: TableConfig::change_table_name_of(schema, name),
            source_schema: schema.to_string(),
            source_name: name.to_string(),
        }
    }

    /// `"data_tunnel"."public_media_cdc"`.
    pub fn change_table_sql(&self) -> String {
        qualified(&self.schema, &self.change_table)
    }

    /// The row trigger's function.
    pub fn row_function_sql(&self) -> String {
        qualified(&self.schema, &format!("{}_row", self.change_table))
    }

    /// The TRUNCATE trigger's function.
    pub fn truncate_function_sql(&self) -> String {
        qualified(&self.schema, &format!("{}_truncate", self.change_table))
    }

    pub fn source_sql(&self) -> String {
        qualified(&self.source_schema, &self.source_name)
    }

    pub fn schema_sql(&self) -> String {
        quote_ident(&self.schema)
    }

    /// `schema.table` of the captured table, as in the config and the logs.
    pub fn source_name(&self) -> String {
        format!("{}.{}", self.source_schema, self.source_name)
    }

    /// The comment install puts on the change table: it names the table it belongs to, so
    /// that a change table of another table with the same name is refused.
    pub fn comment(&self) -> String {
        format!("data tunnel change table of {}", self.source_name())
    }
}
