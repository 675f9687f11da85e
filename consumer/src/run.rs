//! The consumer loop: poll a batch, decode it, make sure the target tables exist, apply it in
//! one target transaction (with its offsets), then tell Kafka the committed position so that
//! lag is visible to the usual tools. Transient failures are retried with back-off, never
//! skipped; SIGINT/SIGTERM finish the batch in hand before exiting.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::{info, warn};
use tunnel_shared::config::{Config, KafkaConfig};
use tunnel_shared::fault::Classify;
use tunnel_shared::kafka::{self, TABLE_TOPIC_CONFIGS};
use tunnel_shared::pg::{self, PgError, Session};
use tunnel_shared::registry::Registry;
use tunnel_shared::retry::{retry, Backoff};
use tunnel_shared::rules::{self, Rule};
use tunnel_shared::schema::{self, FieldShape};

use crate::apply;
use crate::collect::{Batch, Collector, Done, Subscription};
use crate::ddl;
use crate::decode::Decoder;
use crate::dlq::writer::{DlqWriter, DLQ_TOPIC_CONFIGS};
use crate::error::{ApplyError, RunError};
use crate::intake::Intake;
use crate::model::{dlq_topic, Applied, Item, TargetTable, WriterSchema};
use crate::observe::{self, ApplyObserver};
use crate::park::ParkedCache;
use crate::schemas::Schemas;
use crate::stand_in::TargetTypes;
use crate::target::BatchTransaction;

const SETUP_ATTEMPTS: u32 = 20;

pub(crate) async fn run(config: Arc<Config>, stop: watch::Receiver<bool>) -> Result<(), RunError> {
    let registry = Arc::new(Registry::from_config(&config.registry)?);
    let session = Session {
        application_name: format!("{}-consumer", config.source.application_name),
        statement_timeout: Duration::from_millis(config.target.statement_timeout_ms),
        lock_timeout: Duration::ZERO,
        read_only: false,
        canonical_text: false,
    };
    let client = connect(&config.target.url, &session).await?;
    let bk = &config.target.bookkeeping_schema;
    retry("creating the bookkeeping table", SETUP_ATTEMPTS, || async {
        let mut c = pg::connect(&config.target.url, &session).await?;
        ddl::ensure_bookkeeping(&mut c, bk).await
    })
    .await?;
    let admin = kafka::admin(&config.kafka)?;
    let dlq = DlqWriter::new(&config.kafka)?;
    let mut tables = prepare_tables(&config, &registry, &admin).await?;
    let group = config.kafka.consumer_group.clone();
    let observer = ApplyObserver::new(&config, std::mem::take(&mut tables.names));
    let topics: Vec<Arc<str>> = tables.targets.keys().cloned().collect();
    let subscription = Subscription {
        kafka: config.kafka.clone(),
        group: group.clone(),
        names: observer.names(),
        topics: topics.clone(),
    };
    let consumer = subscription.subscribe()?;
    tunnel_shared::retry::started();
    info!(group = %group, topics = ?topics, "consuming");

    let lookup = connect(&config.target.url, &session).await?;
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
    let types = Arc::new(TargetTypes::new(&config.target));
    let intake = Intake::new(Decoder::new(registry.clone(), types.clone()), tables.rules);
    let collector = Collector::new(
        subscription,
        consumer,
        intake,
        lookup,
        session.clone(),
        &config,
        done_rx,
    );
    let applier = Applier {
        registry: registry.clone(),
        types,
        client,
        config: config.clone(),
        session,
        group,
        targets: tables.targets,
        ready: HashSet::new(),
        dlq,
        parked: ParkedCache::default(),
        schemas: Schemas::default(),
    };
    // the collector runs on a task of its own, one batch ahead: decoding the next batch uses
    // the other core while this one is applied (within one task they would only take turns)
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
    let collecting = tokio::spawn(collector.run(stop, batch_tx));
    let census = tokio::spawn(observe::dlq_census(config.clone(), observer.names()));
    let applied = apply_batches(applier, batch_rx, collecting, done_tx, &observer).await;
    census.abort();
    applied?;
    info!("stopped");
    Ok(())
}

async fn connect(url: &str, session: &Session) -> Result<Client, PgError> {
    retry("connecting to the target", SETUP_ATTEMPTS, || {
        pg::connect(url, session)
    })
    .await
}

/// Per topic: the table its rows go to, the rules they must pass, and the source table's name
/// (for metrics).
#[derive(Default)]
struct Tables {
    targets: HashMap<Arc<str>, TargetTable>,
    rules: HashMap<Arc<str>, Vec<Rule>>,
    names: HashMap<Arc<str>, String>,
}

/// Creates the topics of the configured tables and their DLQs, and checks the tables' rules.
async fn prepare_tables(
    config: &Config,
    registry: &Registry,
    admin: &AdminClient<DefaultClientContext>,
) -> Result<Tables, RunError> {
    let mut tables = Tables::default();
    for t in &config.tables {
        let topic = config.topic(t);
        ensure_topics(admin, &config.kafka, &topic).await?;
        let table_rules = t
            .parsed_rules()
            .map_err(|e| RunError::Rules(format!("table {}: {e}", t.qualified())))?;
        check_rules_at_start(registry, &topic, &t.qualified(), &table_rules).await?;
        let topic: Arc<str> = Arc::from(topic.as_str());
        tables.names.insert(topic.clone(), t.qualified());
        tables.rules.insert(topic.clone(), table_rules);
        tables.targets.insert(
            topic,
            TargetTable::new(t.target_schema(), t.target_name(), t.on_schema_change),
        );
    }
    Ok(tables)
}

/// Creates a table's topic and its DLQ topic if they do not exist.
async fn ensure_topics(
    admin: &AdminClient<DefaultClientContext>,
    k: &KafkaConfig,
    topic: &str,
) -> Result<(), RunError> {
    for (what, name, configs) in [
        (
            "creating the table's topic",
            topic.to_string(),
            TABLE_TOPIC_CONFIGS,
        ),
        (
            "creating the table's DLQ topic",
            dlq_topic(topic),
            DLQ_TOPIC_CONFIGS,
        ),
    ] {
        retry(what, SETUP_ATTEMPTS, || {
            kafka::ensure_topic(admin, &name, k.partitions, k.replication_factor, configs)
        })
        .await?;
    }
    Ok(())
}

/// Applies the collector's batches until it stops (or fails), handing every committed batch
/// back through `done`.
async fn apply_batches(
    mut applier: Applier,
    mut batches: mpsc::Receiver<Batch>,
    mut collecting: JoinHandle<Result<(), RunError>>,
    done: mpsc::UnboundedSender<Done>,
    observer: &ApplyObserver,
) -> Result<(), RunError> {
    loop {
        tokio::select! {
            batch = batches.recv() => {
                // no more batches: the collector ended, and how it ended is the consumer's end
                // (a stop, or its error: this branch may win the race with the one below)
                let Some(batch) = batch else { return collector_end((&mut collecting).await) };
                let started = std::time::Instant::now();
                match applier.apply(&batch.items).await {
                    Ok(applied) => {
                        observer.committed(&applied, &batch.stamps, started.elapsed());
                        let _ = done.send((applied, batch.items));
                    }
                    Err(e) => {
                        collecting.abort();
                        return Err(e);
                    }
                }
            }
            // the collector failed (or stopped) with no batch on its way
            ended = &mut collecting, if batches.is_empty() => return collector_end(ended),
        }
    }
}

/// The collecting task's result: its own, or the reason it did not finish.
fn collector_end(
    ended: Result<Result<(), RunError>, tokio::task::JoinError>,
) -> Result<(), RunError> {
    match ended {
        Ok(result) => result,
        Err(e) => Err(RunError::Collector(e.to_string())),
    }
}

/// Applies batches to the target: tables created when first needed, transient failures
/// retried on the same batch.
struct Applier {
    registry: Arc<Registry>,
    /// Which of the schemas' column types the target has.
    types: Arc<TargetTypes>,
    client: Client,
    config: Arc<Config>,
    session: Session,
    group: String,
    targets: HashMap<Arc<str>, TargetTable>,
    ready: HashSet<Arc<str>>,
    dlq: DlqWriter,
    parked: ParkedCache,
    /// The target tables' columns, kept up with the events' schemas.
    schemas: Schemas,
}

impl Applier {
    async fn apply(&mut self, items: &[Item]) -> Result<Applied, RunError> {
        self.ensure_tables(items).await?;
        let mut usable = self.usable();
        let mut backoff = Backoff::default();
        let mut created_again = false;
        loop {
            match self.apply_once(&usable, items).await {
                Ok(a) => return Ok(a),
                Err(e) if e.table_missing() && !created_again => {
                    warn!(error = %e, "a replica or bookkeeping table was dropped while the consumer ran: creating it again; the rows it held are gone from it until `tunnel-consumer verify --repair` has them shipped again (or `tunnel-producer resync --table <table>` snapshots the table again)");
                    created_again = true;
                    self.create_again(items).await?;
                    usable = self.usable();
                }
                Err(e) if e.is_transient() => {
                    tunnel_shared::metrics::metrics()
                        .dependency(tunnel_shared::metrics::Dependency::Target, false);
                    backoff.wait_after("applying a batch", &e).await;
                    // a new connection whenever the old one may not serve: closed, or a COPY
                    // refused at its start left it out of step with the server
                    if self.client.is_closed() || e.copy_refused() {
                        let (url, session) = (&self.config.target.url, &self.session);
                        self.client = retry("reconnecting to the target", u32::MAX, || {
                            pg::connect(url, session)
                        })
                        .await?;
                        tunnel_shared::metrics::metrics().restarted("target connection");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The tables created in the target, by topic.
    fn usable(&self) -> HashMap<Arc<str>, TargetTable> {
        self.targets
            .iter()
            .filter(|(t, _)| self.ready.contains(*t))
            .map(|(t, v)| (t.clone(), v.clone()))
            .collect()
    }

    /// After a table was dropped in the target: a new connection (the failed statement may
    /// have left the old one out of step), the bookkeeping tables, and the batch's tables
    /// created again, their columns read afresh.
    async fn create_again(&mut self, items: &[Item]) -> Result<(), RunError> {
        let (url, session) = (&self.config.target.url, &self.session);
        self.client = retry("reconnecting to the target", SETUP_ATTEMPTS, || {
            pg::connect(url, session)
        })
        .await?;
        let bk = &self.config.target.bookkeeping_schema;
        ddl::ensure_bookkeeping(&mut self.client, bk).await?;
        self.ready.clear();
        self.schemas = Schemas::default();
        self.ensure_tables(items).await
    }

    /// One attempt at applying `items`, in one transaction.
    async fn apply_once(
        &mut self,
        tables: &HashMap<Arc<str>, TargetTable>,
        items: &[Item],
    ) -> Result<Applied, ApplyError> {
        let bk = &self.config.target.bookkeeping_schema;
        let tx = BatchTransaction::begin(&mut self.client, bk, &self.group).await?;
        // the tables evolved to the batch's newest schemas first, in the same transaction
        let prepared = self.schemas.prepare(tx.tx(), bk, tables, items).await?;
        let applied =
            apply::apply_batch(tx, &mut self.dlq, &prepared.tables, items, &mut self.parked)
                .await?;
        self.schemas.committed(prepared);
        Ok(applied)
    }

    /// Creates the target tables of the batch's topics not created yet, from the newest value
    /// schema registered for the topic (see [`newest_value_schema`]).
    async fn ensure_tables(&mut self, items: &[Item]) -> Result<(), RunError> {
        for e in items.iter().filter_map(|i| match i {
            Item::Event(e) => Some(e),
            Item::Rejected(_) | Item::Heartbeat(_) => None,
        }) {
            if self.ready.contains(&e.topic) {
                continue;
            }
            let (Some(vs), Some(target)) = (&e.value_schema, self.targets.get(&e.topic)) else {
                continue;
            };
            let (id, vf) = newest_value_schema(&self.registry, &e.topic, vs).await?;
            // the newest schema's types as the target can hold them, as the decoder keeps
            // every writer schema's
            let vf = retry(
                "looking up the column types in the target",
                SETUP_ATTEMPTS,
                || self.types.fit(vf.clone()),
            )
            .await?;
            let kf = e.key_schema.fields.clone();
            let (url, session) = (&self.config.target.url, &self.session);
            let bk = &self.config.target.bookkeeping_schema;
            let version = Some((e.topic.as_ref(), id));
            retry("creating the target table", SETUP_ATTEMPTS, || async {
                let mut c = pg::connect(url, session).await?;
                ddl::ensure_table(&mut c, bk, target, &vf, &kf, version).await
            })
            .await?;
            info!(table = %target.display(), "target table ready");
            self.ready.insert(e.topic.clone());
        }
        Ok(())
    }
}

/// The id and fields of the value schema a table is created from: the newest registered for
/// the topic, else (none newer, or not a row schema) that of its first event `first`. The
/// first events may be of an older schema: events shipped before a type change that
/// `tunnel-producer resync` registered, still unapplied when the target table was dropped. A
/// table created from them would hold values that the evolution to the new type, which the
/// next events bring, could not convert.
async fn newest_value_schema(
    registry: &Registry,
    topic: &str,
    first: &WriterSchema,
) -> Result<(u32, Vec<FieldShape>), RunError> {
    let subject = format!("{topic}-value");
    let id = retry("reading the latest value schema", SETUP_ATTEMPTS, || {
        registry.latest_id(&subject)
    })
    .await?;
    let newest = match id {
        Some(id) if id > first.id => {
            let writer = retry("reading the latest value schema", SETUP_ATTEMPTS, || {
                registry.schema(id)
            })
            .await?;
            schema::row_fields(&writer, "value")
                .ok()
                .map(|fields| (id, fields))
        }
        _ => None,
    };
    Ok(newest.unwrap_or_else(|| (first.id, first.fields.clone())))
}

/// Checks the rules against the latest value schema registered for the topic, so that a rule on
/// a column the table does not have stops the consumer at start-up. A topic with no schema yet
/// is checked when its first event arrives (the events then go to the DLQ with the reason).
async fn check_rules_at_start(
    registry: &Registry,
    topic: &str,
    table: &str,
    table_rules: &[Rule],
) -> Result<(), RunError> {
    if table_rules.is_empty() {
        return Ok(());
    }
    let subject = format!("{topic}-value");
    let id = retry("reading the latest value schema", SETUP_ATTEMPTS, || {
        registry.latest_id(&subject)
    })
    .await?;
    let Some(id) = id else {
        return Ok(());
    };
    let writer = retry("reading the latest value schema", SETUP_ATTEMPTS, || {
        registry.schema(id)
    })
    .await?;
    let fields = schema::row_fields(&writer, "value")
        .map_err(|e| RunError::Rules(format!("table {table}: {e}")))?;
    let columns: Vec<(&str, &str)> = fields
        .iter()
        .map(|f| (f.column.as_str(), f.pg_type.as_str()))
        .collect();
    rules::compile(table_rules, &columns)
        .map_err(|e| RunError::Rules(format!("table {table}: {e}")))?;
    Ok(())
}
