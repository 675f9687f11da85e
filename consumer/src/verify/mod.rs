//! `tunnel-consumer verify`: compares every configured source table with its replica, first
//! their columns (names, types, nullability, and the defaults that are constants: a default
//! such as `now()` or `nextval(...)` is never copied to the replica, and not compared), then
//! their rows by the same range bisection as the producer's reconciliation, and prints the
//! columns that differ, the keys missing from the target, extra in it, and differing (the
//! first N of each, and the totals). Rows are not compared while the replica lacks a column or
//! has another type. `--repair` asks the producer, through the topic `<prefix>._repairs`, to
//! ship the differing rows again: the target is only ever written by the consumer.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tunnel_shared::catalog;
use tunnel_shared::columns::{self, ColumnComparison};
use tunnel_shared::config::{Config, SchemaChangePolicy, TableConfig};
use tunnel_shared::kafka;
use tunnel_shared::pg::{self, qualified, Session};
use tunnel_shared::reconcile::{self, DiffOptions, Differences, Side};

use crate::error::VerifyError;

pub(crate) struct Options {
    pub(crate) table: Option<String>,
    pub(crate) show: usize,
    pub(crate) repair: bool,
}

/// Verifies the configured tables; `Ok(true)` when every one is identical to its replica.
pub(crate) async fn run(config: &Config, opts: &Options) -> Result<bool, VerifyError> {
    let tables: Vec<&TableConfig> = config
        .tables
        .iter()
        .filter(|t| {
            opts.table
                .as_ref()
                .is_none_or(|name| *name == t.qualified() || *name == t.name)
        })
        .collect();
    if tables.is_empty() {
        return Err(VerifyError::NoSuchTable(
            opts.table.clone().unwrap_or_default(),
        ));
    }
    let session = |read_only| Session {
        application_name: "data-tunnel-verify".into(),
        statement_timeout: Duration::from_millis(config.source.statement_timeout_ms),
        lock_timeout: Duration::from_millis(config.source.lock_timeout_ms),
        read_only,
        canonical_text: true,
    };
    let source = pg::connect(&config.source.url, &session(true)).await?;
    let target = pg::connect(&config.target.url, &session(true)).await?;
    let mut identical = true;
    for t in tables {
        let info =
            catalog::load_table(&source, &t.schema, &t.name, t.watermark_column.as_deref()).await?;
        let target_name = qualified(t.target_schema(), t.target_name());
        let replica_columns = columns::load(&target, t.target_schema(), t.target_name()).await?;
        if replica_columns.is_empty() {
            return Err(VerifyError::NoReplica {
                table: t.qualified(),
                target: target_name,
            });
        }
        let source_columns = columns::load(&source, &t.schema, &t.name).await?;
        let keep = t.on_schema_change == SchemaChangePolicy::KeepDropped;
        let cmp = columns::compare(&source_columns, &replica_columns, keep);
        print_columns(t, &cmp);
        if !cmp.is_empty() {
            identical = false;
        }
        if !cmp.rows_comparable() {
            println!("  rows not compared: the replica lacks a column or has another type");
            continue;
        }
        let d = reconcile::diff(
            &info,
            Side {
                client: &source,
                table: qualified(&t.schema, &t.name),
            },
            Side {
                client: &target,
                table: target_name.clone(),
            },
            DiffOptions::default(),
        )
        .await
        .map_err(|e| match e.sqlstate() {
            Some("42P01") => VerifyError::NoReplica {
                table: t.qualified(),
                target: target_name.clone(),
            },
            _ => VerifyError::Pg(e),
        })?;
        print_report(t, &d, opts.show, !cmp.is_empty());
        if !d.is_empty() {
            identical = false;
            if opts.repair {
                let n = request_repair(config, t, &d).await?;
                println!(
                    "  asked the producer to ship {n} key(s) again (topic {})",
                    config.repair_topic()
                );
            }
        }
    }
    Ok(identical)
}

/// The columns that differ, one line each; the columns kept by the policy and those whose
/// default is not compared, on a line of their own.
fn print_columns(t: &TableConfig, cmp: &ColumnComparison) {
    if !cmp.differences.is_empty() {
        println!(
            "{}: {} column difference(s)",
            t.qualified(),
            cmp.differences.len()
        );
        for d in &cmp.differences {
            println!("  {d}");
        }
    }
    if !cmp.kept.is_empty() {
        println!(
            "{}: kept in the target after the source dropped them (on_schema_change = \"keep_dropped\"): {}",
            t.qualified(),
            cmp.kept.join(", ")
        );
    }
    if !cmp.defaults_not_compared.is_empty() {
        println!(
            "{}: defaults not compared (not constants, never copied to the target): {}",
            t.qualified(),
            cmp.defaults_not_compared.join(", ")
        );
    }
}

/// The rows' differences; `columns_differ`: the columns' were printed above.
fn print_report(t: &TableConfig, d: &Differences, show: usize, columns_differ: bool) {
    let total = d.missing.len() + d.extra.len() + d.differing.len();
    if total == 0 {
        println!(
            "{}: {} ({} rows compared, {} queries, {} ms)",
            t.qualified(),
            if columns_differ {
                "rows identical"
            } else {
                "identical"
            },
            d.rows_compared,
            d.queries,
            d.elapsed_ms
        );
        return;
    }
    println!(
        "{}: {total} difference(s): {} missing from the target, {} extra in the target, {} differing ({} rows compared, {} ms)",
        t.qualified(),
        d.missing.len(),
        d.extra.len(),
        d.differing.len(),
        d.rows_compared,
        d.elapsed_ms
    );
    for (what, keys) in [
        ("missing", &d.missing),
        ("extra", &d.extra),
        ("differing", &d.differing),
    ] {
        if keys.is_empty() {
            continue;
        }
        let shown: Vec<String> = keys
            .iter()
            .take(show)
            .map(|k| format!("({})", k.join(", ")))
            .collect();
        let more = if keys.len() > show {
            format!(" and {} more", keys.len() - show)
        } else {
            String::new()
        };
        println!("  {what}: {}{more}", shown.join(" "));
    }
}

/// Writes repair requests for every differing key; returns how many keys were asked for.
async fn request_repair(
    config: &Config,
    t: &TableConfig,
    d: &Differences,
) -> Result<usize, VerifyError> {
    let producer: FutureProducer = kafka::producer_config(&config.kafka).create()?;
    let keys: Vec<&Vec<String>> = d
        .missing
        .iter()
        .chain(&d.extra)
        .chain(&d.differing)
        .collect();
    let topic = config.repair_topic();
    let table = t.qualified();
    for chunk in keys.chunks(5_000) {
        let body = serde_json::json!({ "keys": chunk }).to_string();
        producer
            .send(
                FutureRecord::to(&topic).key(&table).payload(&body),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(keys.len())
}
