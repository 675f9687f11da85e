//! A table's setup before anything is read: the source connection and catalog, the rules
//! checked against it, its schemas registered with their compatibility level, its topics
//! created where missing, the transactional publisher (which fences older producers of the
//! table), its checkpoint and the keys shipped so far. Each step is retried; the steps that do
//! not depend on each other run at once.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;
use tunnel_shared::catalog::TableInfo;
use tunnel_shared::config::{Config, KafkaConfig, TableConfig};
use tunnel_shared::event::EventEncoder;
use tunnel_shared::kafka::{self, TABLE_TOPIC_CONFIGS};
use tunnel_shared::registry::Registry;
use tunnel_shared::retry::retry;
use tunnel_shared::schema;

use crate::checkpoint::{self, Checkpoint};
use crate::error::{CheckpointError, PublishError, WorkerError, SETUP_ATTEMPTS};
use crate::keysnapshot::{self, KeySetSaver};
use crate::observe::TableObserver;
use crate::publish::{Publisher, PublisherTopics};
use crate::shipped::ShippedKeys;
use crate::source::Source;

/// What a table's worker starts with.
pub struct Prepared {
    pub link: Link,
    pub checkpoint: Checkpoint,
    /// The keys shipped so far.
    pub shipped: ShippedKeys,
    /// What saves them.
    pub key_saver: KeySetSaver,
}

/// A table's ends: the source it reads and the publisher it ships with, what reconnecting to
/// the source needs, and the shutdown signal.
pub struct Link {
    config: Arc<Config>,
    table: TableConfig,
    source: Source,
    publisher: Publisher,
    shutdown: watch::Receiver<bool>,
    observer: TableObserver,
}

impl Link {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the table's worker tells the metrics and the readiness check.
    pub fn observe(&self) -> &TableObserver {
        &self.observer
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn source_mut(&mut self) -> &mut Source {
        &mut self.source
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The source to read, the publisher and the shutdown signal at once (the snapshot's).
    pub fn ends(&mut self) -> (&mut Source, &Publisher, &watch::Receiver<bool>) {
        (&mut self.source, &self.publisher, &self.shutdown)
    }

    /// A receiver to wait on for the shutdown.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Whether the table's shape is another now than when its catalog was read (a read that
    /// failed as after a DDL asks; a connection that fails to answer says yes: setting the
    /// table up again finds out).
    pub async fn shape_changed_now(&self) -> bool {
        match self.source.activity().await {
            Ok(a) => self.source.shape_changed(&a),
            Err(_) => true,
        }
    }

    /// A second read-only connection to the source, for passes that run beside this one's;
    /// `None` when it read another shape of the table (a DDL since this one connected).
    pub async fn second_source(&self) -> Result<Option<Source>, WorkerError> {
        let other = connect(&self.config, &self.table, "connecting to the source").await?;
        Ok(self.source.same_shape(&other).then_some(other))
    }

    /// Connects again if the source connection broke.
    pub async fn reconnect_if_closed(&mut self) -> Result<(), WorkerError> {
        if self.source.is_closed() {
            self.source = connect(&self.config, &self.table, "reconnecting to the source").await?;
            info!("reconnected to the source");
            tunnel_shared::metrics::metrics()
                .restarted(&format!("{}/source connection", self.table.qualified()));
        }
        Ok(())
    }
}

/// Connects, checks the rules, registers schemas, creates topics, fences older producers of
/// this table and loads its checkpoint and shipped keys.
pub async fn prepare(
    config: Arc<Config>,
    table: TableConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Prepared, WorkerError> {
    prepare_with(config, table, shutdown, Registration::Checked).await
}

/// How a table's schemas are registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Only when the registry finds them compatible with the registered ones.
    Checked,
    /// Whatever the registry would say (`resync`): the subject's level is NONE while they are
    /// registered, then set back.
    Forced,
}

/// [`prepare`], registering the schemas as `registration` says.
pub async fn prepare_with(
    config: Arc<Config>,
    table: TableConfig,
    shutdown: watch::Receiver<bool>,
    registration: Registration,
) -> Result<Prepared, WorkerError> {
    let source = connect(&config, &table, "connecting to the source").await?;
    let info = source.table().clone();
    info!(
        columns = info.columns.len(),
        key = %info.key_order(),
        watermark = info.watermark.map(|i| info.columns[i].name.as_str()).unwrap_or("none"),
        "read the source catalog"
    );
    check_rules(&table, &info)?;
    let (publisher, checkpoint, key_set_header) =
        publisher_and_checkpoint(&config, &table, &info, registration).await?;
    // nothing was ever shipped for a table without a checkpoint: no topic to read back
    let none_yet = ShippedKeys::empty(&info, publisher.encoder());
    // (a table snapshotted again after a DDL or a resync has shipped events before)
    let shipped_before = (checkpoint.snapshot.started_at_micros, checkpoint.events) != (0, 0);
    let loaded = keysnapshot::load_or_rebuild(
        &config,
        &table,
        key_set_header,
        none_yet,
        shipped_before,
        checkpoint.events,
    )
    .await?;
    let observer = TableObserver::new(&table.qualified(), config.health.ready_within_s);
    observer.source(true);
    // the schemas were registered (or found) just now
    tunnel_shared::metrics::metrics()
        .dependency(tunnel_shared::metrics::Dependency::Registry, true);
    let link = Link {
        config,
        table,
        source,
        publisher,
        shutdown,
        observer,
    };
    Ok(Prepared {
        link,
        checkpoint,
        shipped: loaded.keys,
        key_saver: loaded.saver,
    })
}

/// A read-only connection to the source, with the table's catalog (`what`: for the log of a
/// retry).
async fn connect(config: &Config, table: &TableConfig, what: &str) -> Result<Source, WorkerError> {
    let p = &config.producer;
    Ok(retry(what, SETUP_ATTEMPTS, || {
        Source::connect(&config.source, table, p.max_rows_per_second)
    })
    .await?)
}

/// The consumer applies the rules; a rule on a column the table lacks is refused here
/// already, before anything is shipped.
fn check_rules(table: &TableConfig, info: &TableInfo) -> Result<(), WorkerError> {
    let columns: Vec<(&str, &str)> = info
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str()))
        .collect();
    let rule_error = |source| WorkerError::Rule {
        table: table.qualified(),
        source,
    };
    let rules = table.parsed_rules().map_err(rule_error)?;
    tunnel_shared::rules::compile(&rules, &columns).map_err(rule_error)?;
    Ok(())
}

/// Schemas and topics, then the transactional publisher; the checkpoint (and the header of the
/// saved key set) is read meanwhile.
async fn publisher_and_checkpoint(
    config: &Config,
    table: &TableConfig,
    info: &TableInfo,
    registration: Registration,
) -> Result<(Publisher, Checkpoint, Option<Vec<u8>>), WorkerError> {
    let topic = config.topic(table);
    let cp_topic = config.checkpoint_topic();
    let encoder = schemas_and_topics(config, info, &topic, &cp_topic, registration).await?;
    // the checkpoint is read while the transactional producer fences older ones
    let kcfg = config.kafka.clone();
    let (t2, key2) = (cp_topic.clone(), table.qualified());
    let header_key = keysnapshot::header_key(&key2);
    let loading =
        tokio::task::spawn_blocking(move || checkpoint::load(&kcfg, &t2, &key2, &header_key));
    let table_key = table.qualified();
    let txn_id = format!("{}.producer.{}", config.kafka.topic_prefix, table_key);
    let publisher = retry(
        "starting the transactional producer",
        SETUP_ATTEMPTS,
        || {
            Publisher::new(
                &config.kafka,
                &txn_id,
                PublisherTopics {
                    table: topic.clone(),
                    checkpoints: cp_topic.clone(),
                    keysets: config.keysets_topic(),
                },
                table_key.clone(),
                encoder.clone(),
            )
        },
    )
    .await?;
    let loaded = match loading.await {
        Ok(loaded) => loaded,
        // a loader that did not finish is no reason to snapshot the table again from scratch
        Err(e) => {
            tracing::error!(error = %e, "loading the checkpoint ended abnormally");
            Err(CheckpointError::Read {
                topic: cp_topic.clone(),
                source: rdkafka::error::KafkaError::Canceled,
            })
        }
    };
    let loaded = loaded?;
    let checkpoint = match loaded.checkpoint {
        Some(cp) => {
            info!(phase = ?cp.snapshot.phase, events = cp.events, "resuming from checkpoint");
            cp
        }
        None => Checkpoint::new(&table_key),
    };
    Ok((publisher, checkpoint, loaded.key_set_header))
}

/// Registers the table's schemas and creates its topics (at once: they do not depend on each
/// other). Returns the encoder of its events.
async fn schemas_and_topics(
    config: &Config,
    info: &TableInfo,
    topic: &str,
    cp_topic: &str,
    registration: Registration,
) -> Result<EventEncoder, WorkerError> {
    let schemas = schema::derive(info, &config.kafka.topic_prefix)?;
    let registry = Registry::from_config(&config.registry)?;
    let admin = kafka::admin(&config.kafka)?;
    let repair_topic = config.repair_topic();
    let keysets_topic = config.keysets_topic();
    let ((key_id, value_id), ()) = tokio::try_join!(
        register_schemas(
            &registry,
            topic,
            info,
            &schemas,
            &config.registry.compatibility,
            registration
        ),
        ensure_topics(
            &admin,
            &config.kafka,
            [topic, cp_topic, &repair_topic, &keysets_topic]
        ),
    )?;
    Ok(EventEncoder::new(schemas, key_id, value_id, info).map_err(PublishError::from)?)
}

/// Registers the key and value schemas of `topic` (both at once) and sets their compatibility
/// level. Returns the schema ids.
async fn register_schemas(
    registry: &Registry,
    topic: &str,
    info: &TableInfo,
    schemas: &schema::TableSchemas,
    compatibility: &str,
    registration: Registration,
) -> Result<(u32, u32), WorkerError> {
    let key_subject = format!("{topic}-key");
    let value_subject = format!("{topic}-value");
    // a changed table's new schemas are checked before anything is registered
    for (subject, json) in [
        (&key_subject, &schemas.key_json),
        (&value_subject, &schemas.value_json),
    ] {
        if registration == Registration::Forced {
            retry("setting schema compatibility", SETUP_ATTEMPTS, || {
                registry.set_compatibility(subject, "NONE")
            })
            .await?;
            continue;
        }
        let compatible = retry("checking schema compatibility", SETUP_ATTEMPTS, || {
            registry.is_compatible(subject, json)
        })
        .await?;
        if !compatible {
            return Err(incompatible(registry, subject, info, compatibility).await);
        }
    }
    let ids = tokio::try_join!(
        retry("registering the key schema", SETUP_ATTEMPTS, || {
            registry.register(&key_subject, &schemas.key_json)
        }),
        retry("registering the value schema", SETUP_ATTEMPTS, || {
            registry.register(&value_subject, &schemas.value_json)
        }),
    )?;
    let compatible = |subject: &str| {
        let subject = subject.to_string();
        async move {
            retry("setting schema compatibility", SETUP_ATTEMPTS, || {
                registry.set_compatibility(&subject, compatibility)
            })
            .await
        }
    };
    tokio::try_join!(compatible(&key_subject), compatible(&value_subject))?;
    Ok(ids)
}

/// The error of a table whose new schema the registry refuses: the columns whose type changed
/// since the registered schema (when it can be read), and the ways out.
async fn incompatible(
    registry: &Registry,
    subject: &str,
    info: &TableInfo,
    compatibility: &str,
) -> WorkerError {
    let registered = match registry.latest_id(subject).await {
        Ok(Some(id)) => registry.schema(id).await.ok(),
        _ => None,
    };
    let mut changes: Vec<String> = Vec::new();
    if let Some(fields) = registered.and_then(|s| schema::row_fields(&s, "value").ok()) {
        for c in &info.columns {
            if let Some(f) = fields.iter().find(|f| f.column == c.name) {
                if f.pg_type != c.type_name {
                    changes.push(format!(
                        "column {} changed from {} to {}",
                        c.name, f.pg_type, c.type_name
                    ));
                }
            }
        }
    }
    let what = if subject.ends_with("-key") {
        "the primary key changed (its columns or their types)".to_string()
    } else if changes.is_empty() {
        "the table's new shape".to_string()
    } else {
        changes.join(", ")
    };
    let table = info.qualified_name();
    WorkerError::Shape {
        problem: format!(
            "{what}: the schema registry refuses the new schema of {subject} under {compatibility} compatibility (consumers of the topic could not read its events). Ways out: change the column back; or stop the producer, run `tunnel-producer resync --config <file> --table {table}` (it registers the new schema and has the next run snapshot the table again into the same target table), and start the producer"
        ),
        table,
    }
}

/// Creates the table's topic, the checkpoint topic, the repair topic and the key sets' topic
/// where missing (all at once).
async fn ensure_topics(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    k: &KafkaConfig,
    [topic, cp_topic, repair_topic, keysets_topic]: [&str; 4],
) -> Result<(), WorkerError> {
    // (what, name, partitions, configs)
    type TopicSpec<'a> = (&'a str, &'a str, i32, &'a [(&'a str, &'a str)]);
    let topics: [TopicSpec<'_>; 4] = [
        (
            "creating the table's topic",
            topic,
            k.partitions,
            TABLE_TOPIC_CONFIGS,
        ),
        (
            "creating the checkpoint topic",
            cp_topic,
            1,
            &[("cleanup.policy", "compact")],
        ),
        (
            "creating the repair topic",
            repair_topic,
            1,
            &[("retention.ms", "604800000")],
        ),
        (
            "creating the key sets' topic",
            keysets_topic,
            1,
            &[
                ("cleanup.policy", "compact"),
                // so that the generations replaced are compacted away soon
                ("segment.bytes", "67108864"),
            ],
        ),
    ];
    futures::future::try_join_all(topics.iter().map(|&(what, name, partitions, configs)| {
        retry(what, SETUP_ATTEMPTS, move || {
            kafka::ensure_topic(admin, name, partitions, k.replication_factor, configs)
        })
    }))
    .await?;
    Ok(())
}
