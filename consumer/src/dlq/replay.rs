//! `dlq replay`: DLQ entries back through the normal path (decoding, the table's rules as the
//! config has them now, the same writes as the consumer), in DLQ order. An entry that fails
//! again goes back to the DLQ with its new reason, and so do the later entries of its key. What
//! a replay resolved is recorded in the target in the transaction that applied it, so a second
//! replay applies nothing twice. With `--dry-run` the writes run in a transaction that is rolled
//! back, and nothing is sent to the DLQ.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tunnel_shared::config::Config;
use tunnel_shared::pg::PgError;
use tunnel_shared::registry::Registry;

use super::read::{self, DlqEntry};
use super::select::Filter;
use super::{class, DlqCliError, DlqWriter, Rejected, Scope};
use crate::apply::{self, Item, KeyText, TargetTable};
use crate::decode::Decoder;
use crate::intake::{Intake, Raw};
use crate::{ddl, park};

pub struct ReplayOptions {
    pub table: Option<String>,
    pub filter: Filter,
    pub dry_run: bool,
}

/// Entries replayed per target transaction.
const CHUNK: usize = 500;

pub async fn replay(config: &Config, opts: &ReplayOptions) -> Result<(), DlqCliError> {
    let mut scope = Scope::open(config, opts.table.as_deref()).await?;
    let registry = Arc::new(Registry::new(&config.registry.url)?);
    let mut writer = DlqWriter::new(&config.kafka)?;
    let tables = std::mem::take(&mut scope.tables);
    let bk = config.target.bookkeeping_schema.clone();
    for t in &tables {
        let entries = read::read_all(&config.kafka, &t.dlq_topic)?;
        let resolved = read::resolved(&scope.target, &bk, &t.dlq_topic).await?;
        let pending: Vec<&DlqEntry> = entries
            .iter()
            .filter(|e| !resolved.contains_key(&(e.partition, e.offset)))
            .collect();
        let chosen = choose(&pending, &opts.filter);
        if chosen.is_empty() {
            println!("{}: nothing to replay", t.dlq_topic);
            continue;
        }
        let rules = t
            .table
            .parsed_rules()
            .map_err(|e| DlqCliError::Config(format!("table {}: {e}", t.table.qualified())))?;
        let source_topic: Arc<str> = Arc::from(t.source_topic.as_str());
        let mut intake = Intake::new(
            Decoder::new(registry.clone()),
            HashMap::from([(source_topic.clone(), rules)]),
        );
        let target = TargetTable {
            schema: t.table.target_schema().to_string(),
            name: t.table.target_name().to_string(),
        };
        let mut table_ready = false;
        let mut failed_keys: HashSet<KeyText> = HashSet::new();
        let (mut applied, mut back) = (0usize, Vec::new());
        for chunk in chosen.chunks(CHUNK) {
            let mut items = Vec::with_capacity(chunk.len());
            for e in chunk {
                let raw = Raw {
                    topic: source_topic.clone(),
                    partition: e.source_partition().unwrap_or(e.partition),
                    offset: e.source_offset().unwrap_or(-1),
                    key: e.key.clone(),
                    value: e.value.clone(),
                };
                items.push(intake.take(raw).await);
            }
            if !table_ready {
                if let Some(ev) = items.iter().find_map(|i| match i {
                    Item::Event(ev) => ev.value_schema.as_ref().map(|vs| (vs, &ev.key_schema)),
                    Item::Rejected(_) => None,
                }) {
                    ddl::ensure_table(
                        &mut scope.target,
                        &target.schema,
                        &target.name,
                        &ev.0.fields,
                        &ev.1.fields,
                    )
                    .await?;
                    table_ready = true;
                }
            }
            let tx = scope
                .target
                .transaction()
                .await
                .map_err(PgError::query("beginning a replay transaction"))?;
            // first thing, so that consumers (which lock the offsets rows first too) re-read
            // the parked keys this replay may free, and never wait on it in between
            tx.execute(
                &format!(
                    "UPDATE {} SET parked_generation = parked_generation + 1 WHERE topic = $1",
                    ddl::offsets_table(&bk)
                ),
                &[&t.source_topic],
            )
            .await
            .map_err(PgError::query("announcing the replay to the consumers"))?;
            let mut requeue: Vec<Rejected> = Vec::new();
            let mut outcomes: Vec<(i32, i64, &str)> = Vec::new();
            for (e, item) in chunk.iter().zip(&items) {
                let position = e.position(&t.dlq_topic);
                let original_key = e.key_text();
                let key = match item {
                    Item::Event(ev) => Some(ev.message.key.clone()),
                    Item::Rejected(r) => r.key.clone(),
                };
                let again = match item {
                    _ if key.as_ref().is_some_and(|k| failed_keys.contains(k)) => {
                        let mut r = rejected_of(item);
                        r.class = class::PARKED;
                        r.reason =
                            "an earlier event of this key failed again in this replay".into();
                        r.rule = None;
                        Some(r)
                    }
                    Item::Rejected(r) => Some(r.clone()),
                    Item::Event(ev) => {
                        let refused =
                            apply::write_isolating(&tx, &target, vec![(&ev.message.key, ev)])
                                .await?;
                        refused
                            .into_iter()
                            .next()
                            .map(|(ev, reason)| ev.rejected(class::TARGET_REJECTED, reason))
                    }
                };
                match again {
                    Some(mut r) => {
                        if let Some(k) = &key {
                            failed_keys.insert(k.clone());
                            if original_key.is_none() {
                                park::park(
                                    &tx,
                                    &bk,
                                    &t.source_topic,
                                    &[(r.partition, k.clone(), 1)],
                                )
                                .await?;
                            }
                        }
                        r.replay_of = Some(position);
                        outcomes.push((e.partition, e.offset, "requeued"));
                        requeue.push(r);
                    }
                    None => {
                        if let Some(k) = &original_key {
                            park::release_one(&tx, &bk, &t.source_topic, k).await?;
                        }
                        outcomes.push((e.partition, e.offset, "applied"));
                        applied += 1;
                    }
                }
            }
            if opts.dry_run {
                tx.rollback()
                    .await
                    .map_err(PgError::query("rolling back a dry run"))?;
            } else {
                // back in the DLQ (acknowledged) before the old entries are marked resolved
                writer.send_all(&requeue).await?;
                let parts: Vec<i32> = outcomes.iter().map(|o| o.0).collect();
                let offs: Vec<i64> = outcomes.iter().map(|o| o.1).collect();
                let outs: Vec<&str> = outcomes.iter().map(|o| o.2).collect();
                tx.execute(
                    &format!(
                        "INSERT INTO {} (dlq_topic, partition, dlq_offset, outcome)
                         SELECT $1, p, o, r FROM unnest($2::int4[], $3::int8[], $4::text[]) AS v(p, o, r)
                         ON CONFLICT DO NOTHING",
                        ddl::resolved_table(&bk)
                    ),
                    &[&t.dlq_topic, &parts, &offs, &outs],
                )
                .await
                .map_err(PgError::query("recording the replayed entries"))?;
                tx.commit()
                    .await
                    .map_err(PgError::query("committing a replay"))?;
            }
            back.extend(requeue);
        }
        let verb = if opts.dry_run { "would be" } else { "were" };
        println!(
            "{}: {} entries replayed{}: {applied} {verb} applied, {} {verb} sent back to the DLQ",
            t.dlq_topic,
            chosen.len(),
            if opts.dry_run { " (dry run)" } else { "" },
            back.len()
        );
        for r in &back {
            println!(
                "  {} -> {}: {}",
                r.replay_of.as_deref().unwrap_or("?"),
                r.class,
                r.reason
            );
        }
    }
    Ok(())
}

/// The pending entries the filter picks, plus the earlier pending entries of the same keys:
/// a key's entries are replayed in their order or not at all.
fn choose<'a>(pending: &[&'a DlqEntry], filter: &Filter) -> Vec<&'a DlqEntry> {
    let mut picked: BTreeSet<usize> = BTreeSet::new();
    let mut last_of_key: HashMap<KeyText, usize> = HashMap::new();
    for (i, e) in pending.iter().enumerate() {
        if filter.matches(e) {
            picked.insert(i);
            if let Some(k) = e.key_text() {
                last_of_key.insert(k, i);
            }
        }
    }
    for (i, e) in pending.iter().enumerate() {
        if let Some(k) = e.key_text() {
            if last_of_key.get(&k).is_some_and(|&last| i <= last) {
                picked.insert(i);
            }
        }
    }
    picked.into_iter().map(|i| pending[i]).collect()
}

fn rejected_of(item: &Item) -> Rejected {
    match item {
        Item::Rejected(r) => r.clone(),
        Item::Event(ev) => ev.rejected(class::PARKED, String::new()),
    }
}
