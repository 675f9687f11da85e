//! `dlq replay`: DLQ entries back through the normal path (decoding, the table's rules as the
//! config has them now, the same writes as the consumer), in DLQ order. An entry that fails
//! again goes back to the DLQ with its new reason, and so do the later entries of its key. What
//! a replay resolved is recorded in the target in the transaction that applied it, so a second
//! replay applies nothing twice. With `--dry-run` the writes run in a transaction that is rolled
//! back, and nothing is sent to the DLQ.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rdkafka::error::KafkaError;
use tokio_postgres::{Client, Transaction};
use tunnel_shared::config::Config;
use tunnel_shared::key::KeyText;
use tunnel_shared::pg::PgError;
use tunnel_shared::registry::Registry;

use super::read::{self, DlqEntry};
use super::scope::{Scope, ScopeTable};
use super::select::{Choice, Filter};
use super::writer::DlqWriter;
use crate::decode::Decoder;
use crate::error::DlqCliError;
use crate::intake::{Intake, Raw};
use tunnel_shared::progress::Bar;

use crate::model::{class, Entry, Item, Rejected, TargetTable};
use crate::stand_in::TargetTypes;
use crate::{ddl, offsets, park, rows};

pub(crate) struct ReplayOptions {
    pub(crate) table: Option<String>,
    pub(crate) filter: Filter,
    pub(crate) dry_run: bool,
}

/// Entries replayed per target transaction.
const CHUNK: usize = 500;

pub(crate) async fn replay(config: &Config, opts: &ReplayOptions) -> Result<(), DlqCliError> {
    let mut scope = Scope::open(config, opts.table.as_deref()).await?;
    let registry = Arc::new(Registry::from_config(&config.registry)?);
    let mut writer = DlqWriter::new(&config.kafka)?;
    let tables = std::mem::take(&mut scope.tables);
    for t in &tables {
        replay_table(&mut scope.target, config, &registry, &mut writer, t, opts).await?;
    }
    Ok(())
}

/// Replays the chosen pending entries of one table's DLQ, a chunk per transaction, as they are
/// read: the DLQ is streamed (see [`Choice`] for when it is read twice), never held whole. The
/// entries read are those the DLQ held when the replay began, not those it sends back.
async fn replay_table(
    client: &mut Client,
    config: &Config,
    registry: &Arc<Registry>,
    writer: &mut DlqWriter,
    t: &ScopeTable<'_>,
    opts: &ReplayOptions,
) -> Result<(), DlqCliError> {
    let bk = config.target.bookkeeping_schema.as_str();
    let snapshot = read::Snapshot::take(&config.kafka, &t.dlq_topic).await?;
    let resolved = read::resolved_positions(client, bk, &t.dlq_topic).await?;
    let pending = |e: &DlqEntry| !resolved.contains(&(e.partition, e.offset));
    let mut choice = Choice::new(&opts.filter);
    if choice.needs_first_pass() {
        let mut entries = snapshot.headers(&config.kafka);
        while let Some(e) = entries.next().await? {
            if pending(&e) {
                choice.see(&e);
            }
        }
    }
    let chosen = |e: &DlqEntry| pending(e) && choice.takes(e);
    let mut entries = snapshot.entries(&config.kafka);
    let bar = Bar::new(
        &format!("replay {}", t.dlq_topic),
        snapshot.messages(),
        "entries",
    );
    let mut chunk = next_chunk(&mut entries, &chosen, &bar).await?;
    if chunk.is_empty() {
        println!("{}: nothing to replay", t.dlq_topic);
        return Ok(());
    }
    let mut replay = TableReplay::new(client, config, registry, writer, t, opts)?;
    let mut replayed = 0;
    while !chunk.is_empty() {
        replay.chunk(&chunk).await?;
        replayed += chunk.len();
        chunk = next_chunk(&mut entries, &chosen, &bar).await?;
    }
    replay.report(replayed);
    Ok(())
}

/// The next (up to) `CHUNK` entries that `chosen` keeps; `bar` counts every entry read.
async fn next_chunk(
    entries: &mut read::Entries,
    chosen: &impl Fn(&DlqEntry) -> bool,
    bar: &Bar,
) -> Result<Vec<DlqEntry>, KafkaError> {
    let mut chunk = Vec::with_capacity(CHUNK);
    while chunk.len() < CHUNK {
        let next = entries.next().await?;
        if next.is_some() {
            bar.inc(1);
        }
        match next {
            Some(e) if chosen(&e) => chunk.push(e),
            Some(_) => {}
            None => break,
        }
    }
    Ok(chunk)
}

/// What a replayed entry, taken in again, calls for before anything is written.
enum Verdict<'a> {
    /// Back to the DLQ: it fails again, or an earlier entry of its key did.
    Requeue(Rejected),
    /// An event to write.
    Write(&'a Entry),
    /// Nothing to write (a heartbeat of the producer): resolved as it is.
    Nothing,
}

fn verdict<'a>(item: &'a Item, failed_keys: &HashSet<KeyText>) -> Verdict<'a> {
    match item {
        _ if item.key().is_some_and(|k| failed_keys.contains(k)) => {
            let mut r = match item {
                Item::Rejected(r) => r.clone(),
                Item::Event(ev) => ev.rejected(class::PARKED, String::new()),
                Item::Heartbeat(_) => return Verdict::Nothing,
            };
            r.class = class::PARKED;
            r.reason = "an earlier event of this key failed again in this replay".into();
            r.rule = None;
            Verdict::Requeue(r)
        }
        Item::Rejected(r) => Verdict::Requeue(r.clone()),
        Item::Event(ev) => Verdict::Write(ev),
        Item::Heartbeat(_) => Verdict::Nothing,
    }
}

/// What became of a replayed entry, and what that changes to its key's parking.
#[derive(Debug)]
enum Outcome {
    /// Sent back to the DLQ; a key the old entry did not name is parked now.
    Requeued {
        entry: Rejected,
        park: Option<KeyText>,
    },
    /// Applied: one fewer pending entry for the key the old entry named.
    Applied { release: Option<KeyText> },
}

/// The outcome of entry `e` of `dlq_topic`, whose key (as taken in again) is `key`, and that
/// failed `again` or not; a key that failed again is remembered in `failed_keys`.
fn outcome(
    e: &DlqEntry,
    dlq_topic: &str,
    key: Option<&KeyText>,
    again: Option<Rejected>,
    failed_keys: &mut HashSet<KeyText>,
) -> Outcome {
    let original_key = e.key_text();
    match again {
        Some(mut entry) => {
            let mut park = None;
            if let Some(k) = key {
                failed_keys.insert(k.clone());
                if original_key.is_none() {
                    park = Some(k.clone());
                }
            }
            entry.replay_of = Some(e.position(dlq_topic));
            Outcome::Requeued { entry, park }
        }
        None => Outcome::Applied {
            release: original_key,
        },
    }
}

/// One table's replay under way.
struct TableReplay<'a> {
    client: &'a mut Client,
    writer: &'a mut DlqWriter,
    bk: &'a str,
    table: &'a ScopeTable<'a>,
    dry_run: bool,
    intake: Intake,
    source_topic: Arc<str>,
    target: TargetTable,
    table_ready: bool,
    /// Keys with an entry that failed again in this replay: their later entries follow it.
    failed_keys: HashSet<KeyText>,
    applied: usize,
    /// Entries sent back to the DLQ (each is printed once its chunk is done: a replay keeps
    /// no entry beyond its chunk).
    sent_back: usize,
}

impl<'a> TableReplay<'a> {
    /// The replay of table `t`'s entries, with the table's rules as the config has them now.
    fn new(
        client: &'a mut Client,
        config: &'a Config,
        registry: &Arc<Registry>,
        writer: &'a mut DlqWriter,
        t: &'a ScopeTable<'a>,
        opts: &ReplayOptions,
    ) -> Result<Self, DlqCliError> {
        let rules = t
            .table
            .parsed_rules()
            .map_err(|e| DlqCliError::Config(format!("table {}: {e}", t.table.qualified())))?;
        let source_topic: Arc<str> = Arc::from(t.source_topic.as_str());
        Ok(TableReplay {
            client,
            writer,
            bk: config.target.bookkeeping_schema.as_str(),
            table: t,
            dry_run: opts.dry_run,
            intake: Intake::new(
                Decoder::new(registry.clone(), Arc::new(TargetTypes::new(&config.target))),
                HashMap::from([(source_topic.clone(), rules)]),
            ),
            source_topic,
            target: TargetTable::new(
                t.table.target_schema(),
                t.table.target_name(),
                t.table.on_schema_change,
            ),
            table_ready: false,
            failed_keys: HashSet::new(),
            applied: 0,
            sent_back: 0,
        })
    }

    /// Replays `chunk` in one transaction.
    async fn chunk(&mut self, chunk: &[DlqEntry]) -> Result<(), DlqCliError> {
        let items = self.take(chunk).await;
        self.ensure_table(&items).await?;
        let (bk, topic) = (self.bk, self.table.source_topic.as_str());
        let tx = self
            .client
            .transaction()
            .await
            .map_err(PgError::query("beginning a replay transaction"))?;
        // first thing, so that consumers (which lock the offsets rows first too) re-read
        // the parked keys this replay may free, and never wait on it in between
        offsets::announce_replay(&tx, bk, topic).await?;
        // the replica's columns as they are now: entries of older schemas go to the columns
        // that hold their fields (renamed ones found, dropped ones left out)
        self.target.columns = ddl::load_columns(&tx, bk, &self.target).await?.into();
        let mut requeue: Vec<Rejected> = Vec::new();
        let mut outcomes: Vec<(i32, i64, &str)> = Vec::new();
        for (e, item) in chunk.iter().zip(&items) {
            let again = match verdict(item, &self.failed_keys) {
                Verdict::Requeue(r) => Some(r),
                Verdict::Nothing => None,
                Verdict::Write(ev) => {
                    let refused =
                        rows::write_isolating(&tx, &self.target, vec![(&ev.message.key, ev)])
                            .await?;
                    refused
                        .into_iter()
                        .next()
                        .map(|(ev, reason)| ev.rejected(class::TARGET_REJECTED, reason))
                }
            };
            let dlq_topic = &self.table.dlq_topic;
            match outcome(e, dlq_topic, item.key(), again, &mut self.failed_keys) {
                Outcome::Requeued { entry, park } => {
                    if let Some(k) = park {
                        park::park(&tx, bk, topic, &[(entry.partition, k, 1)]).await?;
                    }
                    outcomes.push((e.partition, e.offset, "requeued"));
                    requeue.push(entry);
                }
                Outcome::Applied { release } => {
                    if let Some(k) = &release {
                        park::release_one(&tx, bk, topic, k).await?;
                    }
                    outcomes.push((e.partition, e.offset, "applied"));
                    self.applied += 1;
                }
            }
        }
        if self.dry_run {
            tx.rollback()
                .await
                .map_err(PgError::query("rolling back a dry run"))?;
        } else {
            // back in the DLQ (acknowledged) before the old entries are marked resolved
            self.writer.send_all(&requeue).await?;
            record_resolved(&tx, bk, &self.table.dlq_topic, &outcomes).await?;
            tx.commit()
                .await
                .map_err(PgError::query("committing a replay"))?;
        }
        for r in &requeue {
            println!(
                "  {} -> {}: {}",
                r.replay_of.as_deref().unwrap_or("?"),
                r.class,
                r.reason
            );
        }
        self.sent_back += requeue.len();
        Ok(())
    }

    /// The entries of `chunk` taken in again, as the consumer would take them.
    async fn take(&mut self, chunk: &[DlqEntry]) -> Vec<Item> {
        let mut items = Vec::with_capacity(chunk.len());
        for e in chunk {
            let raw = Raw {
                topic: self.source_topic.clone(),
                partition: e.source_partition().unwrap_or(e.partition),
                offset: e.source_offset().unwrap_or(-1),
                key: e.key.clone(),
                value: e.value.clone(),
            };
            items.push(self.intake.take(raw).await);
        }
        items
    }

    /// Creates the target table from the first event with a value schema, once.
    async fn ensure_table(&mut self, items: &[Item]) -> Result<(), PgError> {
        if self.table_ready {
            return Ok(());
        }
        let Some((vs, ks)) = items.iter().find_map(|i| match i {
            Item::Event(ev) => ev.value_schema.as_ref().map(|vs| (vs, &ev.key_schema)),
            Item::Rejected(_) | Item::Heartbeat(_) => None,
        }) else {
            return Ok(());
        };
        let t = &self.target;
        ddl::ensure_table(self.client, self.bk, t, &vs.fields, &ks.fields, None).await?;
        self.table_ready = true;
        Ok(())
    }

    /// Prints what the replay of `replayed` entries did (after the entries sent back).
    fn report(&self, replayed: usize) {
        let verb = if self.dry_run { "would be" } else { "were" };
        println!(
            "{}: {replayed} entries replayed{}: {} {verb} applied, {} {verb} sent back to the DLQ",
            self.table.dlq_topic,
            if self.dry_run { " (dry run)" } else { "" },
            self.applied,
            self.sent_back
        );
    }
}

/// Records the outcomes (`partition`, `offset`, `applied` or `requeued`) of replayed entries
/// of `dlq_topic`.
async fn record_resolved(
    tx: &Transaction<'_>,
    bk: &str,
    dlq_topic: &str,
    outcomes: &[(i32, i64, &str)],
) -> Result<(), PgError> {
    let parts: Vec<i32> = outcomes.iter().map(|o| o.0).collect();
    let offs: Vec<i64> = outcomes.iter().map(|o| o.1).collect();
    let outs: Vec<&str> = outcomes.iter().map(|o| o.2).collect();
    tx.execute(
        &format!(
            "INSERT INTO {} (dlq_topic, partition, dlq_offset, outcome)
             SELECT $1, p, o, r FROM unnest($2::int4[], $3::int8[], $4::text[]) AS v(p, o, r)
             ON CONFLICT DO NOTHING",
            ddl::resolved_table(bk)
        ),
        &[&dlq_topic, &parts, &offs, &outs],
    )
    .await
    .map_err(PgError::query("recording the replayed entries"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use tunnel_shared::event::Op;

    use super::*;
    use crate::model::fixtures::{event, key, rejected};
    use crate::model::header;

    /// A DLQ entry at `offset` that named key `k` (when it could decode it).
    fn entry(offset: i64, k: Option<&str>, class: &str) -> DlqEntry {
        let mut headers = BTreeMap::from([(header::CLASS.to_string(), class.to_string())]);
        if let Some(k) = k {
            headers.insert(header::KEY.into(), tunnel_shared::key::to_json(&key(k)));
        }
        DlqEntry {
            partition: 0,
            offset,
            key: None,
            value: None,
            headers,
        }
    }

    #[test]
    fn an_entry_is_requeued_when_it_fails_again_or_an_earlier_one_of_its_key_did() {
        let failed: HashSet<KeyText> = HashSet::from([key("a")]);
        let later = event("t", 0, 5, "a", Op::Update);
        let Verdict::Requeue(r) = verdict(&later, &failed) else {
            panic!("a later event of a failed key is parked")
        };
        assert_eq!((r.class, r.rule.as_deref()), (class::PARKED, None));
        assert!(r.reason.contains("failed again"), "{}", r.reason);
        let broken = rejected("t", 0, 6, Some("b"));
        let Verdict::Requeue(r) = verdict(&broken, &failed) else {
            panic!("a message that fails again goes back")
        };
        assert_eq!((r.class, r.rule.as_deref()), (class::RULE, Some("r")));
        let fine = event("t", 0, 7, "b", Op::Update);
        assert!(matches!(verdict(&fine, &failed), Verdict::Write(ev) if ev.offset == 7));
    }

    #[test]
    fn outcomes_park_a_key_only_once_and_release_what_the_entry_named() {
        let mut failed = HashSet::new();
        let again = |offset| match rejected("t", 0, offset, Some("k")) {
            Item::Rejected(r) => Some(r),
            Item::Event(_) | Item::Heartbeat(_) => None,
        };
        // the old entry named no key (it did not decode then): the key is parked now
        let o = outcome(
            &entry(3, None, "avro_decode"),
            "t.dlq",
            Some(&key("k")),
            again(9),
            &mut failed,
        );
        let Outcome::Requeued { entry: r, park } = o else {
            panic!("{o:?}")
        };
        assert_eq!(r.replay_of.as_deref(), Some("t.dlq/0/3"));
        assert_eq!(park, Some(key("k")));
        assert!(failed.contains(&key("k")));
        // it named the key: the key is parked already
        let o = outcome(
            &entry(4, Some("k"), "rule"),
            "t.dlq",
            Some(&key("k")),
            again(10),
            &mut failed,
        );
        assert!(matches!(o, Outcome::Requeued { park: None, .. }), "{o:?}");
        // applied: the key it named has one entry fewer
        let o = outcome(
            &entry(5, Some("m"), "rule"),
            "t.dlq",
            Some(&key("m")),
            None,
            &mut failed,
        );
        assert!(
            matches!(&o, Outcome::Applied { release: Some(k) } if *k == key("m")),
            "{o:?}"
        );
        assert!(!failed.contains(&key("m")));
    }
}
