//! Reading a DLQ topic back: its entries with their headers, and which of them a replay has
//! already resolved (recorded in the target).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::Duration;

use futures::TryStreamExt;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Row};
use tunnel_shared::config::KafkaConfig;
use tunnel_shared::kafka;
use tunnel_shared::key::KeyText;
use tunnel_shared::pg::PgError;

use crate::ddl;
use crate::model::header;

/// One DLQ entry as stored in Kafka.
#[derive(Debug, Clone)]
pub(crate) struct DlqEntry {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: BTreeMap<String, String>,
}

impl DlqEntry {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    pub(crate) fn class(&self) -> &str {
        self.header(header::CLASS).unwrap_or("unknown")
    }
    pub(crate) fn rule(&self) -> Option<&str> {
        self.header(header::RULE)
    }
    /// The decoded key recorded by the consumer, if it could decode it.
    pub(crate) fn key_text(&self) -> Option<KeyText> {
        tunnel_shared::key::from_json(self.header(header::KEY)?)
    }
    pub(crate) fn source_partition(&self) -> Option<i32> {
        self.header(header::SOURCE_PARTITION)?.parse().ok()
    }
    pub(crate) fn source_offset(&self) -> Option<i64> {
        self.header(header::SOURCE_OFFSET)?.parse().ok()
    }
    /// `rule <name>` for a rule violation, else the class: what `dlq list` counts by.
    pub(crate) fn reason_group(&self) -> String {
        match self.rule() {
            Some(r) => format!("rule '{r}'"),
            None => self.class().to_string(),
        }
    }
    /// `topic/partition/offset`: how a replayed entry names the one it replaces.
    pub(crate) fn position(&self, dlq_topic: &str) -> String {
        format!("{dlq_topic}/{}/{}", self.partition, self.offset)
    }
}

/// Entries a reader hands over at most ahead of their use: with librdkafka's fetch queue
/// (bounded by `queued.max.messages.kbytes`), what reading a DLQ holds in memory, whatever its
/// size.
const AHEAD: usize = 2048;

/// How long reading a DLQ waits for the broker before it gives up.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A DLQ topic as it ended when it was looked at: the partitions that hold entries, and where
/// each ended. Its reads leave out the entries written since (such as those a replay sends
/// back while it reads), and two reads of it see the same entries.
pub(crate) struct Snapshot {
    topic: String,
    ends: Vec<(i32, i64)>,
}

impl Snapshot {
    /// Where `dlq_topic` ends now. A topic that does not exist has no entries.
    pub(crate) async fn take(
        kafka_config: &KafkaConfig,
        dlq_topic: &str,
    ) -> Result<Snapshot, KafkaError> {
        let (kafka_config, topic) = (kafka_config.clone(), dlq_topic.to_string());
        tokio::task::spawn_blocking(move || {
            let ends = kafka::partition_ends(&kafka_config, &topic, TIMEOUT)?;
            Ok(Snapshot { topic, ends })
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }

    /// How many messages the DLQ held when the snapshot was taken (at most: its partitions'
    /// ends).
    pub(crate) fn messages(&self) -> u64 {
        self.ends.iter().map(|&(_, end)| end.max(0) as u64).sum()
    }

    /// The entries, in partition and offset order, read as they are taken.
    pub(crate) fn entries(&self, kafka_config: &KafkaConfig) -> Entries {
        self.read(kafka_config, true)
    }

    /// The entries without their key and value bytes (positions and headers only).
    pub(crate) fn headers(&self, kafka_config: &KafkaConfig) -> Entries {
        self.read(kafka_config, false)
    }

    fn read(&self, kafka_config: &KafkaConfig, payloads: bool) -> Entries {
        let (kafka_config, topic, ends) =
            (kafka_config.clone(), self.topic.clone(), self.ends.clone());
        Entries::spawn(AHEAD, move |hand_over| {
            kafka::read_partitions(&kafka_config, &topic, &ends, TIMEOUT, |m| {
                hand_over(entry(m, payloads))
            })
        })
    }
}

fn entry(m: &BorrowedMessage<'_>, payloads: bool) -> DlqEntry {
    let mut headers = BTreeMap::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            if let Some(v) = h.value {
                headers.insert(h.key.to_string(), String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    let bytes = |b: Option<&[u8]>| b.filter(|_| payloads).map(<[u8]>::to_vec);
    DlqEntry {
        partition: m.partition(),
        offset: m.offset(),
        key: bytes(m.key()),
        value: bytes(m.payload()),
        headers,
    }
}

/// Entries read on a thread of their own (librdkafka's calls block), handed over through a
/// bounded channel: the reader waits while `capacity` entries are waiting for their use.
/// Dropping it stops the reader at its next entry.
pub(crate) struct Entries {
    rx: mpsc::Receiver<DlqEntry>,
    reader: Option<JoinHandle<Result<(), KafkaError>>>,
}

impl Entries {
    /// Runs `read` on a blocking thread; it hands each entry to the function it is given, and
    /// stops when that function returns `Break` (nobody reads the entries any more).
    fn spawn<F>(capacity: usize, read: F) -> Entries
    where
        F: FnOnce(&mut dyn FnMut(DlqEntry) -> ControlFlow<()>) -> Result<(), KafkaError>
            + Send
            + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let reader = tokio::task::spawn_blocking(move || {
            read(&mut |e| match tx.blocking_send(e) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            })
        });
        Entries {
            rx,
            reader: Some(reader),
        }
    }

    /// The next entry; `None` after the last one, or the error that stopped the reading.
    pub(crate) async fn next(&mut self) -> Result<Option<DlqEntry>, KafkaError> {
        if let Some(e) = self.rx.recv().await {
            return Ok(Some(e));
        }
        match self.reader.take() {
            Some(reader) => reader
                .await
                .unwrap_or(Err(KafkaError::Canceled))
                .map(|()| None),
            None => Ok(None),
        }
    }
}

/// The entries of `dlq_topic` a replay has resolved, and how (`applied`, `requeued`).
pub(crate) async fn resolved(
    client: &Client,
    bk: &str,
    dlq_topic: &str,
) -> Result<HashMap<(i32, i64), String>, PgError> {
    let mut resolved = HashMap::new();
    each_resolved(client, bk, dlq_topic, "outcome", |row| {
        resolved.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
        Ok(())
    })
    .await?;
    Ok(resolved)
}

/// The positions (partition, offset) of the entries of `dlq_topic` a replay has resolved.
pub(crate) async fn resolved_positions(
    client: &Client,
    bk: &str,
    dlq_topic: &str,
) -> Result<HashSet<(i32, i64)>, PgError> {
    let mut resolved = HashSet::new();
    each_resolved(client, bk, dlq_topic, "NULL", |row| {
        resolved.insert((row.try_get(0)?, row.try_get(1)?));
        Ok(())
    })
    .await?;
    Ok(resolved)
}

/// Hands each row (partition, offset, `third`) of the resolved entries of `dlq_topic` to
/// `each` as it arrives.
async fn each_resolved(
    client: &Client,
    bk: &str,
    dlq_topic: &str,
    third: &str,
    mut each: impl FnMut(&Row) -> Result<(), tokio_postgres::Error>,
) -> Result<(), PgError> {
    let reading = "reading the resolved DLQ entries";
    let rows = client
        .query_raw(
            &format!(
                "SELECT partition, dlq_offset, {third} FROM {} WHERE dlq_topic = $1",
                ddl::resolved_table(bk)
            ),
            [dlq_topic],
        )
        .await
        .map_err(PgError::query(reading))?;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.try_next().await.map_err(PgError::query(reading))? {
        each(&row).map_err(PgError::query("reading the resolved DLQ entries: a column does not have the type the consumer created it with (changed by hand?)"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    fn at(offset: i64) -> DlqEntry {
        DlqEntry {
            partition: 0,
            offset,
            key: None,
            value: Some(vec![0; 100]),
            headers: BTreeMap::new(),
        }
    }

    /// Entries that `read` hands over from 0 to `n`, counting them in `read_so_far`, and
    /// noting in `stopped` whether it stopped before the last.
    fn counting(
        n: i64,
        read_so_far: &Arc<AtomicUsize>,
        stopped: &Arc<AtomicBool>,
    ) -> impl FnOnce(&mut dyn FnMut(DlqEntry) -> ControlFlow<()>) -> Result<(), KafkaError> {
        let (read_so_far, stopped) = (read_so_far.clone(), stopped.clone());
        move |hand_over| {
            for offset in 0..n {
                read_so_far.fetch_add(1, Ordering::SeqCst);
                if hand_over(at(offset)).is_break() {
                    stopped.store(true, Ordering::SeqCst);
                    return Ok(());
                }
            }
            Ok(())
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_reader_runs_at_most_its_capacity_ahead_of_the_entries_taken() {
        let (read_so_far, stopped) = Default::default();
        let mut entries = Entries::spawn(16, counting(10_000, &read_so_far, &stopped));
        assert_eq!(entries.next().await.unwrap().unwrap().offset, 0);
        let read = || read_so_far.load(Ordering::SeqCst);
        until("the reader reads ahead", || read() >= 16).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // one taken, 16 waiting, one in hand: the reader waits for room
        assert!(read() <= 18, "{} entries read for one taken", read());
        for want in 1..10_000 {
            assert_eq!(entries.next().await.unwrap().unwrap().offset, want);
            assert!(read() as i64 <= want + 18);
        }
        assert!(entries.next().await.unwrap().is_none());
        assert!(entries.next().await.unwrap().is_none());
        assert!(!stopped.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn dropping_the_entries_stops_the_reader() {
        let (read_so_far, stopped) = Default::default();
        let mut entries = Entries::spawn(4, counting(1_000_000, &read_so_far, &stopped));
        entries.next().await.unwrap().unwrap();
        drop(entries);
        until("the reader stops", || stopped.load(Ordering::SeqCst)).await;
        assert!(read_so_far.load(Ordering::SeqCst) <= 7);
    }

    #[tokio::test]
    async fn an_error_comes_after_the_entries_read_before_it() {
        let mut entries = Entries::spawn(2, |hand_over| {
            for offset in 0..3 {
                let _ = hand_over(at(offset));
            }
            Err(KafkaError::Global(
                rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
            ))
        });
        for want in 0..3 {
            assert_eq!(entries.next().await.unwrap().unwrap().offset, want);
        }
        assert!(entries.next().await.is_err());
    }
}
