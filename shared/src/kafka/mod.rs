//! Kafka client settings in one place, and the creation of topics with explicit configs.

mod access;
mod leader;

pub use access::{check_access, AccessError};
pub use leader::LeaderWatch;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot create topic {topic}: {source}")]
    Create { topic: String, source: KafkaError },
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Client { brokers: String, source: KafkaError },
}

/// Whether a Kafka error may go away by itself (broker restarting, leader moving, timeouts).
pub fn is_transient(e: &KafkaError) -> bool {
    // an admin operation's result carries its code, which `rdkafka_error_code` does not report
    let code = match e {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(code) => matches!(
            code,
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::ConcurrentTransactions
                | RDKafkaErrorCode::NotEnoughReplicas
                | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                | RDKafkaErrorCode::Resolve
        ),
        None => false,
    }
}

/// The settings every client shares: the brokers, the security settings, and the extra
/// properties of the config.
pub fn base_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in kafka.security_properties() {
        c.set(key, value);
    }
    with_user_properties(c, kafka)
}

/// The config's `[kafka.properties]` go on last, so that they override the defaults here.
fn with_user_properties(mut c: ClientConfig, kafka: &KafkaConfig) -> ClientConfig {
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

/// The largest message the producers send (before compression, as librdkafka counts it) and
/// the topics take (after it): 64 MiB, where Kafka's default is 1 MB. A bigger event is not
/// shipped (the producer says which row).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// [`MAX_MESSAGE_BYTES`] as the clients' and topics' settings take it.
pub const MAX_MESSAGE_BYTES_TEXT: &str = "67108864";

/// A transactional, idempotent producer: events and the checkpoint that covers them are
/// committed together or not at all.
pub fn transactional_producer_config(kafka: &KafkaConfig, transactional_id: &str) -> ClientConfig {
    let mut c = base_config(kafka);
    c.set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.max.bytes", MAX_MESSAGE_BYTES_TEXT)
        .set("transaction.timeout.ms", "60000")
        .set("message.timeout.ms", "55000")
        // the publisher only keeps failures (a commit fails anyway if a message was not
        // delivered): a report per delivered row was work for nothing
        .set("delivery.report.only.error", "true");
    with_user_properties(c, kafka)
}

/// A plain producer (DLQ writes, tests).
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = base_config(kafka);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.max.bytes", MAX_MESSAGE_BYTES_TEXT);
    with_user_properties(c, kafka)
}

/// A consumer that reads only committed transactions and never commits offsets to Kafka by
/// itself: the pipeline decides what is stored, and where.
pub fn consumer_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = base_config(kafka);
    c.set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // bounds what librdkafka prefetches, and so the consumer's memory when it is behind
        .set("queued.max.messages.kbytes", "16384")
        .set("queued.min.messages", "20000")
        .set("fetch.max.bytes", "16777216")
        // when the queue is full, fetch again as soon as it has room: librdkafka's default
        // (1 s) left a consumer that is behind idle for most of a second each time
        .set("fetch.queue.backoff.ms", "10");
    with_user_properties(c, kafka)
}

pub fn admin(kafka: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, TopicError> {
    base_config(kafka)
        .create()
        .map_err(|source| TopicError::Client {
            brokers: kafka.brokers.clone(),
            source,
        })
}

/// Creates a topic with the given configs if it does not exist yet.
pub async fn ensure_topic(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
) -> Result<(), TopicError> {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|source| TopicError::Create {
            topic: name.to_string(),
            source,
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(TopicError::Create {
                    topic: name.to_string(),
                    source: KafkaError::AdminOp(code),
                })
            }
        }
    }
    wait_until_visible(admin, name, Duration::from_secs(30)).await
}

/// Waits until the broker's metadata shows the topic with a leader for every partition. A
/// topic just created is not visible everywhere at once; a consumer that subscribes before it
/// is would only notice it at its next metadata refresh, minutes later.
async fn wait_until_visible(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    timeout: Duration,
) -> Result<(), TopicError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let ready = match without_blocking_the_runtime(|| {
            admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(5))
        }) {
            Ok(md) => md.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            }),
            Err(e) if is_transient(&e) => false,
            Err(source) => {
                return Err(TopicError::Create {
                    topic: name.to_string(),
                    source,
                })
            }
        };
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(TopicError::Create {
                topic: name.to_string(),
                source: KafkaError::Global(RDKafkaErrorCode::OperationTimedOut),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a synchronous librdkafka call that may wait for the broker (a metadata request, up to
/// its timeout) without holding up the other tasks of the runtime's worker thread: on a
/// multi-threaded runtime the thread hands its tasks over first. (Calls that need no borrowed
/// client go through `spawn_blocking` instead.)
pub fn without_blocking_the_runtime<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        _ => call(),
    }
}

/// A consumer context that does not report reaching the end of a partition as an error: that
/// is how readers know they have read everything.
pub struct EndIsExpected;

impl rdkafka::ClientContext for EndIsExpected {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!(error = %error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndIsExpected {}

/// A `read_committed` consumer that reports the end of each partition, for readers that assign
/// partitions themselves (no group membership, nothing committed).
pub fn reader(
    kafka: &KafkaConfig,
    group: &str,
) -> Result<rdkafka::consumer::BaseConsumer<EndIsExpected>, KafkaError> {
    let mut cfg = consumer_config(kafka, group);
    cfg.set("enable.partition.eof", "true");
    cfg.create_with_context(EndIsExpected)
}

/// Reads every partition of `topic` from the beginning to its end as a `read_committed`
/// reader sees it (without joining a group), handing each message to `each`.
pub fn read_to_end(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};

    let consumer = reader(kafka, &format!("{topic}.reader"))?;
    let partitions: Vec<i32> = non_empty_partitions(&consumer, topic, timeout)?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    if partitions.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut ended = std::collections::HashSet::new();
    while ended.len() < partitions.len() {
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => each(&m),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(KafkaError::Global(RDKafkaErrorCode::PartitionEOF))) => {}
            Some(Err(e)) if is_transient(&e) => {}
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(())
}

/// The partitions of `topic` that hold messages, in id order, each with its end (the offset
/// its next message will get) as a `read_committed` reader sees it now. A topic that does not
/// exist has none.
pub fn partition_ends(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, KafkaError> {
    let consumer = reader(kafka, &format!("{topic}.reader"))?;
    let mut ends = non_empty_partitions(&consumer, topic, timeout)?;
    ends.sort_unstable();
    Ok(ends)
}

/// The partitions of `topic` that hold messages, each with its end.
fn non_empty_partitions(
    consumer: &rdkafka::consumer::BaseConsumer<EndIsExpected>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, KafkaError> {
    use rdkafka::consumer::Consumer;

    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut partitions = Vec::new();
    for p in metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
    {
        // an empty partition has no end to report until a fetch waits out `fetch.wait.max.ms`
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            partitions.push((p, high));
        }
    }
    Ok(partitions)
}

/// Reads the partitions `ends` names (see [`partition_ends`]) one after the other, each from
/// its beginning up to its end, handing each message to `each`: in partition, then offset
/// order, and without the messages written since the ends were taken. `each` returns
/// [`ControlFlow::Break`](std::ops::ControlFlow::Break) to stop the reading. Only one partition
/// is assigned at a time, so what librdkafka fetches ahead is bounded by its queue settings
/// (`queued.max.messages.kbytes`). `idle_timeout` bounds each wait for the broker: the time
/// `each` takes does not count.
pub fn read_partitions(
    kafka: &KafkaConfig,
    topic: &str,
    ends: &[(i32, i64)],
    idle_timeout: Duration,
    each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> std::ops::ControlFlow<()>,
) -> Result<(), KafkaError> {
    let spans: Vec<Span> = ends
        .iter()
        .map(|&(partition, end)| Span {
            partition,
            from: rdkafka::Offset::Beginning,
            end,
        })
        .collect();
    read_spans(kafka, topic, &spans, idle_timeout, each)
}

/// Each partition of `topic` with its first offset and its end (the offset its next message
/// will get), empty ones too, in id order. A topic that does not exist has none.
pub fn partition_watermarks(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    use rdkafka::consumer::Consumer;

    let consumer = reader(kafka, &format!("{topic}.reader"))?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut marks = Vec::new();
    for p in metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
    {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        marks.push((p, low, high));
    }
    marks.sort_unstable();
    Ok(marks)
}

/// Reads partitions of `topic`, each from offset `from` (included) up to `end` (excluded), all
/// at once: messages come in offset order within a partition, interleaved across them (the
/// ends of the partitions are waited for together). A range with `from >= end` is not read.
/// `each` returns [`ControlFlow::Break`](std::ops::ControlFlow::Break) to stop the reading;
/// `idle_timeout` bounds each wait for the broker.
pub fn read_ranges(
    kafka: &KafkaConfig,
    topic: &str,
    ranges: &[(i32, i64, i64)],
    idle_timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> std::ops::ControlFlow<()>,
) -> Result<(), KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};

    // partition -> end, while it is being read
    let mut open: std::collections::HashMap<i32, i64> = ranges
        .iter()
        .filter(|&&(_, from, end)| from < end)
        .map(|&(p, _, end)| (p, end))
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    let consumer = reader(kafka, &format!("{topic}.reader"))?;
    let mut tpl = TopicPartitionList::new();
    for &(partition, from, end) in ranges {
        if from < end {
            tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
        }
    }
    consumer.assign(&tpl)?;
    let mut deadline = std::time::Instant::now() + idle_timeout;
    while !open.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                let (partition, offset) = (m.partition(), m.offset());
                let Some(&end) = open.get(&partition) else {
                    continue;
                };
                if offset >= end {
                    open.remove(&partition);
                    continue;
                }
                if each(&m).is_break() {
                    return Ok(());
                }
                if offset + 1 >= end {
                    open.remove(&partition);
                }
                deadline = std::time::Instant::now() + idle_timeout;
            }
            // the end, when the last messages before it are not data (transaction markers)
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(KafkaError::Global(RDKafkaErrorCode::PartitionEOF))) => {}
            Some(Err(e)) if is_transient(&e) => {}
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(())
}

/// A partition read from `from` up to `end` (excluded).
struct Span {
    partition: i32,
    from: rdkafka::Offset,
    end: i64,
}

fn read_spans(
    kafka: &KafkaConfig,
    topic: &str,
    spans: &[Span],
    idle_timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> std::ops::ControlFlow<()>,
) -> Result<(), KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Message;
    use rdkafka::TopicPartitionList;

    if spans.is_empty() {
        return Ok(());
    }
    let consumer = reader(kafka, &format!("{topic}.reader"))?;
    for &Span {
        partition,
        from,
        end,
    } in spans
    {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, from)?;
        consumer.assign(&tpl)?;
        let mut deadline = std::time::Instant::now() + idle_timeout;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                // left over from the partition before (there should be none)
                Some(Ok(m)) if m.partition() != partition => {}
                Some(Ok(m)) => {
                    let offset = m.offset();
                    if offset >= end {
                        break;
                    }
                    if each(&m).is_break() {
                        return Ok(());
                    }
                    if offset + 1 >= end {
                        break;
                    }
                    deadline = std::time::Instant::now() + idle_timeout;
                }
                // the end, when the last messages before it are not data (transaction markers)
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break,
                Some(Err(KafkaError::PartitionEOF(_)))
                | Some(Err(KafkaError::Global(RDKafkaErrorCode::PartitionEOF))) => {}
                Some(Err(e)) if is_transient(&e) => {}
                Some(Err(e)) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The configs of a table's topic: compacted, so that a new consumer group can rebuild the
/// table from the topic alone.
pub const TABLE_TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    // a row of large values (a document, an image) fits (see MAX_MESSAGE_BYTES)
    ("max.message.bytes", MAX_MESSAGE_BYTES_TEXT),
    ("min.compaction.lag.ms", "60000"),
    ("delete.retention.ms", "86400000"),
];
