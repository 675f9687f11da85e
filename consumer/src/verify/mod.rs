//! `tunnel-consumer verify`: compares every configured source table with its replica, first
//! their columns (names, types, nullability, and the defaults that are constants: a default
//! such as `now()` or `nextval(...)` is never copied to the replica, and not compared), then
//! their rows by the same range bisection as the producer's reconciliation, and prints the
//! columns that differ, the keys missing from the target, extra in it, and differing (the
//! first N of each, and the totals). Rows are not compared while the replica lacks a column or
//! has another type. `--repair` asks the producer, through the topic `<prefix>._repairs`, to
//! ship the differing rows again: the replicas are only ever written by the consumer.
//!
//! A verify that finds a table's rows identical records both servers' transaction horizons in
//! the target's bookkeeping; `--incremental` then compares only what was written since
//! ([`incremental`]). The whole-table comparison reports its progress on standard error
//! ([`progress`]).

mod incremental;
mod progress;
mod report;

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_postgres::Client;
use tracing::warn;
use tunnel_shared::catalog::{self, TableInfo};
use tunnel_shared::columns;
use tunnel_shared::config::{Config, SchemaChangePolicy, TableConfig};
use tunnel_shared::kafka;
use tunnel_shared::pg::{self, PgError, Session};
use tunnel_shared::reconcile::{self, DiffOptions, Differences, Side, Tick};

use crate::error::VerifyError;
use incremental::{Horizons, Outcome};

pub(crate) struct Options {
    pub(crate) table: Option<String>,
    pub(crate) show: usize,
    pub(crate) repair: bool,
    /// Compare the rows written since the last verify that found the table identical.
    pub(crate) incremental: bool,
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
    let mut source = pg::connect(&config.source.url, &session(true)).await?;
    let mut target = pg::connect(&config.target.url, &session(true)).await?;
    // the horizons are recorded through a session of their own, which may write
    let mut recorder: Option<Client> = None;
    let mut identical = true;
    for t in tables {
        let info =
            catalog::load_table(&source, &t.schema, &t.name, t.watermark_column.as_deref()).await?;
        let (source_name, target_name) = incremental::names(t);
        let replica_columns = columns::load(&target, t.target_schema(), t.target_name()).await?;
        if replica_columns.is_empty() {
            return Err(VerifyError::NoReplica {
                table: t.qualified(),
                target: target_name,
            });
        }
        let source_columns = columns::load(&source, &t.schema, &t.name).await?;
        let source_columns = crate::stand_in::held_by(&target, source_columns).await?;
        let keep = t.on_schema_change == SchemaChangePolicy::KeepDropped;
        let cmp = columns::compare(&source_columns, &replica_columns, keep);
        report::print_columns(t, &cmp);
        if !cmp.is_empty() {
            identical = false;
        }
        if !cmp.rows_comparable() {
            println!("  rows not compared: the replica lacks a column or has another type");
            continue;
        }
        let no_replica = |e: PgError| match e.sqlstate() {
            Some("42P01") => VerifyError::NoReplica {
                table: t.qualified(),
                target: target_name.clone(),
            },
            _ => VerifyError::Pg(e),
        };
        let names = (source_name.as_str(), target_name.as_str());
        let compared = compare_rows(config, opts, t, &info, (&mut source, &mut target), names)
            .await
            .map_err(no_replica)?;
        report::print_report(
            t,
            &compared.diff,
            opts.show,
            !cmp.is_empty(),
            compared.scope.as_deref(),
        );
        if compared.diff.is_empty() {
            let recorded = record(
                config,
                &mut recorder,
                t,
                compared.horizons,
                compared.scope.is_none(),
            )
            .await;
            if let Err(e) = recorded {
                warn!(table = %t.qualified(), error = %e, "the verify's horizons could not be recorded: the next incremental verify compares the whole table");
            }
        } else {
            identical = false;
            if opts.repair {
                let n = request_repair(config, t, &compared.diff).await?;
                println!(
                    "  asked the producer to ship {n} key(s) again (topic {})",
                    config.repair_topic()
                );
            }
        }
    }
    Ok(identical)
}

/// The rows of one table compared.
struct Compared {
    diff: Differences,
    /// The horizons to record should the rows be identical.
    horizons: Horizons,
    /// What was compared when not the whole table.
    scope: Option<String>,
}

/// Compares the rows of `t`: those written since the last verify when asked and possible,
/// else the whole table. `names`: the qualified, quoted names on the source and the target.
async fn compare_rows(
    config: &Config,
    opts: &Options,
    t: &TableConfig,
    info: &TableInfo,
    (source, target): (&mut Client, &mut Client),
    names: (&str, &str),
) -> Result<Compared, PgError> {
    let estimated = progress::estimated_rows(source, names.0).await?;
    let total = u64::try_from(estimated).unwrap_or(0).saturating_mul(2);
    if opts.incremental {
        let since = incremental::recorded(target, &config.target.bookkeeping_schema, t).await?;
        let mut bar = progress::Progress::new(format!("{} (keys)", t.qualified()), total);
        let mut on_tick = |tick: Tick| bar.tick(tick);
        let outcome =
            incremental::compare(source, target, info, names, since, Some(&mut on_tick)).await;
        bar.finish();
        match outcome? {
            Outcome::Compared {
                diff,
                horizons,
                listed,
            } => {
                let scope = format!(
                    "incremental: {} row(s) written since the last verify on the source, {} on the target, keys of both compared",
                    listed.0, listed.1
                );
                return Ok(Compared {
                    diff,
                    horizons,
                    scope: Some(scope),
                });
            }
            Outcome::WholeTable(why) => {
                println!("{}: comparing the whole table: {why}", t.qualified());
            }
        }
    }
    // rows written after these are compared by the next incremental verify
    let horizons = incremental::horizons_now(source, target).await?;
    let correlation = match info.integer_key() {
        Some(k) => [
            progress::key_correlation(source, &t.schema, &t.name, &k.name).await?,
            progress::key_correlation(target, t.target_schema(), t.target_name(), &k.name).await?,
        ],
        None => [None, None],
    };
    let opts = DiffOptions {
        top_ranges: progress::top_ranges(estimated, correlation),
        ..DiffOptions::default()
    };
    let mut bar = progress::Progress::new(t.qualified(), total);
    let mut on_tick = |tick: Tick| bar.tick(tick);
    let diff = reconcile::diff_reporting(
        info,
        Side {
            client: source,
            table: names.0.to_string(),
        },
        Side {
            client: target,
            table: names.1.to_string(),
        },
        opts,
        Some(&mut on_tick),
    )
    .await;
    bar.finish();
    Ok(Compared {
        diff: diff?,
        horizons,
        scope: None,
    })
}

/// Records `h` for `t`, through a writable session to the target opened on first use.
async fn record(
    config: &Config,
    recorder: &mut Option<Client>,
    t: &TableConfig,
    h: Horizons,
    whole_table: bool,
) -> Result<(), PgError> {
    let client = match recorder {
        Some(c) => c,
        None => {
            let session = Session {
                application_name: "data-tunnel-verify".into(),
                statement_timeout: Duration::from_millis(config.source.statement_timeout_ms),
                lock_timeout: Duration::from_millis(config.source.lock_timeout_ms),
                read_only: false,
                canonical_text: false,
            };
            recorder.insert(pg::connect(&config.target.url, &session).await?)
        }
    };
    incremental::record(client, &config.target.bookkeeping_schema, t, h, whole_table).await
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
