//! `dlq list` and `dlq show`: what is in the DLQ, counted by reason or shown entry by entry
//! with its key and value decoded.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};
use tunnel_shared::config::Config;
use tunnel_shared::registry::Registry;
use tunnel_shared::wire;

use super::read;
use super::scope::Scope;
use super::select::Filter;
use crate::error::DlqCliError;
use crate::model::header;

/// Prints, per table, the pending entries counted by reason, and how many were replayed: counted
/// as the DLQ is read, without holding its entries.
pub(crate) async fn list(config: &Config, table: Option<&str>) -> Result<(), DlqCliError> {
    let scope = Scope::open(config, table).await?;
    for t in &scope.tables {
        let snapshot = read::Snapshot::take(&config.kafka, &t.dlq_topic).await?;
        let resolved = read::resolved_positions(&scope.target, scope.bk(), &t.dlq_topic).await?;
        let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
        let (mut pending, mut replayed) = (0, 0);
        let mut entries = snapshot.headers(&config.kafka);
        while let Some(e) = entries.next().await? {
            if resolved.contains(&(e.partition, e.offset)) {
                replayed += 1;
            } else {
                pending += 1;
                *by_reason.entry(e.reason_group()).or_default() += 1;
            }
        }
        println!(
            "{}: {pending} pending, {replayed} resolved by replay",
            t.dlq_topic
        );
        for (reason, n) in by_reason {
            println!("  {n:>8}  {reason}");
        }
    }
    Ok(())
}

pub(crate) struct ShowOptions {
    pub(crate) table: Option<String>,
    pub(crate) filter: Filter,
    /// Resolved entries too.
    pub(crate) all: bool,
    pub(crate) limit: usize,
}

/// Prints the chosen entries as JSON, one object per entry: position, status, headers, and the
/// key and value decoded with their writer schemas (or the bytes in hex when they do not
/// decode, with the reason), as the DLQ is read.
pub(crate) async fn show(config: &Config, opts: &ShowOptions) -> Result<(), DlqCliError> {
    let scope = Scope::open(config, opts.table.as_deref()).await?;
    let registry = Registry::from_config(&config.registry)?;
    let mut shown = 0;
    for t in &scope.tables {
        let snapshot = read::Snapshot::take(&config.kafka, &t.dlq_topic).await?;
        let resolved = read::resolved(&scope.target, scope.bk(), &t.dlq_topic).await?;
        let mut entries = snapshot.entries(&config.kafka);
        while let Some(e) = entries.next().await? {
            if !opts.filter.matches(&e) {
                continue;
            }
            let status = resolved.get(&(e.partition, e.offset));
            if status.is_some() && !opts.all {
                continue;
            }
            if shown >= opts.limit {
                println!("(more entries: raise --limit)");
                return Ok(());
            }
            shown += 1;
            let out = json!({
                "dlq": { "topic": t.dlq_topic, "partition": e.partition, "offset": e.offset },
                "status": status.map_or("pending", String::as_str),
                "class": e.class(),
                "reason": e.header(header::REASON),
                "rule": e.rule(),
                "source": {
                    "topic": e.header(header::SOURCE_TOPIC),
                    "partition": e.source_partition(),
                    "offset": e.source_offset(),
                },
                "key": decoded(&registry, e.key.as_deref()).await,
                "value": decoded(&registry, e.value.as_deref()).await,
                "headers": e.headers,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&out).unwrap_or_else(|_| out.to_string())
            );
        }
    }
    if shown == 0 {
        println!("no DLQ entries match");
    }
    Ok(())
}

/// Bytes in the Confluent wire format, decoded with their writer schema into JSON.
async fn decoded(registry: &Registry, bytes: Option<&[u8]>) -> Json {
    let Some(bytes) = bytes else {
        return Json::Null;
    };
    let undecodable = |why: String| json!({ "undecodable": why, "hex": hex(bytes) });
    let (id, body) = match wire::parse(bytes) {
        Ok(p) => p,
        Err(e) => return undecodable(e.to_string()),
    };
    let schema = match registry.schema(id).await {
        Ok(s) => s,
        Err(e) => return undecodable(e.to_string()),
    };
    let mut reader = body;
    match apache_avro::from_avro_datum(&schema, &mut reader, None) {
        Ok(v) => Json::try_from(v).unwrap_or_else(|e| undecodable(e.to_string())),
        Err(e) => undecodable(format!("with writer schema {id}: {e}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    const MAX: usize = 256;
    let mut s: String = bytes.iter().take(MAX).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > MAX {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    s
}
