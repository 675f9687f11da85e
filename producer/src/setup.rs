//! A table's setup in the registry and in Kafka: its schemas registered with their
//! compatibility level, and its topics created where missing. Each step is retried; the steps
//! that do not depend on each other run at once.

use tunnel_shared::config::KafkaConfig;
use tunnel_shared::kafka::{self, TABLE_TOPIC_CONFIGS};
use tunnel_shared::registry::Registry;
use tunnel_shared::retry::retry;
use tunnel_shared::schema;

use crate::worker::{WorkerError, SETUP_ATTEMPTS};

/// Registers the key and value schemas of `topic` (both at once) and sets their compatibility
/// level. Returns the schema ids.
pub(crate) async fn register_schemas(
    registry: &Registry,
    topic: &str,
    schemas: &schema::TableSchemas,
    compatibility: &str,
) -> Result<(u32, u32), WorkerError> {
    let key_subject = format!("{topic}-key");
    let value_subject = format!("{topic}-value");
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

/// Creates the table's topic, the checkpoint topic and the repair topic where missing (all at
/// once).
pub(crate) async fn ensure_topics(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    k: &KafkaConfig,
    topic: &str,
    cp_topic: &str,
    repair_topic: &str,
) -> Result<(), WorkerError> {
    // (what, name, partitions, configs)
    type TopicSpec<'a> = (&'a str, &'a str, i32, &'a [(&'a str, &'a str)]);
    let topics: [TopicSpec<'_>; 3] = [
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
    ];
    futures::future::try_join_all(topics.iter().map(|&(what, name, partitions, configs)| {
        retry(what, SETUP_ATTEMPTS, move || {
            kafka::ensure_topic(admin, name, partitions, k.replication_factor, configs)
        })
    }))
    .await?;
    Ok(())
}
