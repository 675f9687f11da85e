//! The names of the consumer's bookkeeping tables in the target, in the schema the config
//! names (`target.bookkeeping_schema`): the consumer creates and writes them, the producer's
//! reconciliation reads them (parked keys, what the consumer has applied).

use crate::pg::qualified;

/// Per partition: the next offset to apply, and what was applied and dead-lettered.
pub fn offsets_table(bookkeeping_schema: &str) -> String {
    qualified(bookkeeping_schema, "offsets")
}

/// Keys with events in the DLQ.
pub fn parked_table(bookkeeping_schema: &str) -> String {
    qualified(bookkeeping_schema, "parked_keys")
}

/// DLQ entries already replayed.
pub fn resolved_table(bookkeeping_schema: &str) -> String {
    qualified(bookkeeping_schema, "dlq_resolved")
}

/// Per replica table: which source column (attnum) each of its columns holds.
pub fn columns_table(bookkeeping_schema: &str) -> String {
    qualified(bookkeeping_schema, "schema_columns")
}

/// Per topic: the value schema the replica table was last evolved to.
pub fn versions_table(bookkeeping_schema: &str) -> String {
    qualified(bookkeeping_schema, "schema_versions")
}

/// Per replica table: the transaction horizons, on the source and on the target, of the last
/// `verify` that found it identical (where `verify --incremental` starts).
pub fn verified_table(bookkeeping_schema: &str) -> String {
    qualified(bookkeeping_schema, "verified")
}
