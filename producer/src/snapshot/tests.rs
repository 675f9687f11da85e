//! The snapshot against a table in memory and a shipper that records what it ships.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use apache_avro::types::Value;
use tunnel_shared::fault::Classify;

use super::*;
use crate::error::{PublishError, SourceError};
use crate::horizon::Probe;
use crate::keyset::KeySet;

/// The time of every probe: the snapshot starts then.
const AT: i64 = 10_000_000;

struct Table {
    rows: BTreeMap<i64, SourceRow>,
    /// The running transactions each probe sees, in turn; none once used up.
    running: Mutex<VecDeque<Vec<&'static str>>>,
    /// Rows a late transaction changed behind the scan: the hash they have when read again.
    later: BTreeMap<i64, u64>,
}

impl Table {
    /// Rows `1..=n`; those in `recent` changed just before the snapshot.
    fn new(n: i64, recent: &[i64]) -> Self {
        let rows = (1..=n)
            .map(|k| {
                let watermark = if recent.contains(&k) { AT - 1 } else { 1_000 };
                let row = SourceRow {
                    key_text: vec![k.to_string()],
                    key: vec![Value::Long(k)],
                    row: vec![Some(Value::Long(k))],
                    hash: k as u64,
                    watermark: Some(watermark),
                };
                (k, row)
            })
            .collect();
        Self {
            rows,
            running: Mutex::new(VecDeque::new()),
            later: BTreeMap::new(),
        }
    }

    fn after(&self, after: Option<&[String]>) -> impl Iterator<Item = &SourceRow> {
        let from = after.map_or(i64::MIN, |k| k[0].parse::<i64>().unwrap() + 1);
        self.rows.range(from..).map(|(_, r)| r)
    }
}

impl SourceReader for Table {
    async fn probe(&self) -> Result<Probe, SourceError> {
        let running = self.running.lock().unwrap().pop_front().unwrap_or_default();
        Ok(Probe {
            at_micros: AT,
            running: running.into_iter().map(String::from).collect(),
        })
    }
    async fn max_key(&self) -> Result<Option<Vec<String>>, SourceError> {
        Ok(self.rows.values().last().map(|r| r.key_text.clone()))
    }
    async fn transaction_horizon(&self) -> Result<i64, SourceError> {
        Ok(42)
    }
    async fn estimated_rows(&self) -> Result<i64, SourceError> {
        Ok(self.rows.len() as i64)
    }
    async fn rows_after(
        &mut self,
        after: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        Ok(self.after(after).take(limit as usize).cloned().collect())
    }
    async fn rows_between(
        &mut self,
        after: Option<&[String]>,
        upto: &[String],
        limit: i64,
    ) -> Result<Vec<SourceRow>, SourceError> {
        let upto: i64 = upto[0].parse().unwrap();
        Ok(self
            .after(after)
            .filter(|r| r.key_text[0].parse::<i64>().unwrap() <= upto)
            .take(limit as usize)
            .map(|r| {
                let mut r = r.clone();
                if let Some(&h) = self.later.get(&r.key_text[0].parse::<i64>().unwrap()) {
                    r.hash = h;
                }
                r
            })
            .collect())
    }
}

/// Records each batch shipped: the keys of its events and its checkpoint. The publishes whose
/// number (from 1) is in `fail` fail, once each.
#[derive(Default)]
struct Recorder {
    batches: Mutex<Vec<(Vec<i64>, Checkpoint)>>,
    tried: Mutex<u32>,
    fail: Vec<u32>,
}

impl Shipper for Recorder {
    async fn publish(
        &self,
        events: &[ChangeEvent],
        checkpoint: &Checkpoint,
    ) -> Result<(), PublishError> {
        let n = {
            let mut tried = self.tried.lock().unwrap();
            *tried += 1;
            *tried
        };
        if self.fail.contains(&n) {
            return Err(PublishError::Kafka {
                context: "committing a transaction".into(),
                source: rdkafka::error::KafkaError::Canceled,
            });
        }
        assert!(events
            .iter()
            .all(|e| e.op == Op::Read && e.detected_by == Detection::Snapshot));
        let keys = events
            .iter()
            .map(|e| match e.key[..] {
                [Value::Long(k)] => k,
                _ => panic!("not a test key"),
            })
            .collect();
        self.batches
            .lock()
            .unwrap()
            .push((keys, checkpoint.clone()));
        Ok(())
    }
}

impl Recorder {
    fn keys(&self) -> Vec<Vec<i64>> {
        let batches = self.batches.lock().unwrap();
        batches.iter().map(|(k, _)| k.clone()).collect()
    }
}

fn snapshot() -> Snapshot {
    snapshot_with(ShippedKeys::Integer(KeySet::default()))
}

fn snapshot_with(shipped: ShippedKeys) -> Snapshot {
    let margins = Margins {
        overlap_micros: 100,
        max_wait_micros: i64::MAX,
    };
    Snapshot::new(2, margins, Checkpoint::new("public.media"), shipped)
}

fn never() -> watch::Receiver<bool> {
    watch::channel(false).1
}

/// A snapshot of `table` run to its end in one go, and what it shipped.
async fn complete(table: &mut Table) -> (Snapshot, Recorder) {
    let shipper = Recorder::default();
    let mut s = snapshot();
    s.run(table, &shipper, &never()).await.unwrap();
    assert!(s.done());
    (s, shipper)
}

#[tokio::test]
async fn chunks_are_shipped_with_their_checkpoints_and_the_result_handed_to_streaming() {
    let mut table = Table::new(5, &[2, 5]);
    let (s, shipper) = complete(&mut table).await;
    // the start first, then the chunks
    assert_eq!(
        shipper.keys(),
        vec![vec![], vec![1, 2], vec![3, 4], vec![5]]
    );
    let batches = shipper.batches.lock().unwrap();
    assert_eq!(batches[1].1.snapshot.after_key, Some(vec!["2".to_string()]));
    assert_eq!(batches[1].1.events, 2);
    let done = s.finish();
    assert_eq!(&done.checkpoint, &batches[3].1);
    let start = Bounds {
        key: Some(vec!["5".to_string()]),
        ts: Some(AT),
    };
    assert_eq!(done.checkpoint.snapshot.phase, SnapshotPhase::Done);
    assert_eq!(done.checkpoint.bounds, start);
    assert_eq!(done.checkpoint.events, 5);
    assert_eq!(done.checkpoint.max_key, Some(vec!["5".to_string()]));
    assert_eq!(done.checkpoint.max_watermark, Some(AT - 1));
    assert_eq!(done.checkpoint.reconciled_xmin, Some(42));
    assert_eq!(
        done.shipped.integer().unwrap().keys(0..=10),
        vec![1, 2, 3, 4, 5]
    );
    let mut remembered: Vec<_> = done.remembered.into_iter().collect();
    remembered.sort();
    assert_eq!(
        remembered,
        vec![(vec!["2".to_string()], 2), (vec!["5".to_string()], 5)]
    );
}

#[tokio::test]
async fn keys_read_while_older_transactions_were_open_are_read_again() {
    let mut table = Table::new(5, &[]);
    // open at the start, still at the first chunk's probe, gone at the second's
    table.running = Mutex::new(VecDeque::from([vec!["3/7"], vec!["3/7"]]));
    // and it changed row 2 behind the scan
    table.later.insert(2, 99);
    let (s, shipper) = complete(&mut table).await;
    // they ended after the first chunk: keys up to 2 are read again, and the one that changed
    // is shipped again
    assert_eq!(
        shipper.keys(),
        vec![vec![], vec![1, 2], vec![3, 4], vec![5], vec![2], vec![]]
    );
    let done = s.finish();
    assert_eq!(done.checkpoint.events, 6);
    assert_eq!(
        done.checkpoint.snapshot.drained_upto,
        Some(vec!["2".to_string()])
    );
}

#[tokio::test]
async fn after_a_failed_publish_the_snapshot_resumes_from_what_was_shipped() {
    let mut table = Table::new(5, &[]);
    // the chunk 3..4 fails
    let shipper = Recorder {
        fail: vec![3],
        ..Default::default()
    };
    let mut s = snapshot();
    let failed = s.run(&mut table, &shipper, &never()).await;
    assert!(failed.is_err_and(|e| e.is_transient()));
    assert!(!s.done());
    s.run(&mut table, &shipper, &never()).await.unwrap();
    assert!(s.done());
    let keys = shipper.keys();
    // the start is not shipped again; every row is shipped in order after the failure
    assert_eq!(keys.iter().filter(|k| k.is_empty()).count(), 1);
    assert_eq!(keys.last(), Some(&vec![5]));
    let done = s.finish();
    assert_eq!(done.checkpoint.snapshot.phase, SnapshotPhase::Done);
    assert_eq!(
        done.shipped.integer().unwrap().keys(0..=10),
        vec![1, 2, 3, 4, 5]
    );
}

/// A table whose key is kept as hashes (any key but a single integer one) learns the
/// snapshot's keys the same way.
#[tokio::test]
async fn the_snapshots_keys_are_shipped_keys_whatever_the_key() {
    let mut table = Table::new(5, &[]);
    let info = tunnel_shared::catalog::TableInfo {
        schema: "public".into(),
        name: "media".into(),
        columns: vec![tunnel_shared::catalog::Column {
            name: "id".into(),
            type_name: "bigint".into(),
            kind: tunnel_shared::catalog::ColumnKind::Int8,
            nullable: false,
            attnum: 0,
            default: None,
        }],
        key: vec![0],
        watermark: None,
    };
    let shipper = Recorder::default();
    let mut s = snapshot_with(crate::shipped::tests::hashed_for(&info));
    s.run(&mut table, &shipper, &never()).await.unwrap();
    let done = s.finish();
    assert!(done.shipped.integer().is_none());
    assert!((1..=5).all(|k| done.shipped.contains(&[Value::Long(k)])));
    assert!(!done.shipped.contains(&[Value::Long(6)]));
}

#[tokio::test]
async fn a_stop_ends_the_run_before_the_next_chunk() {
    let mut table = Table::new(5, &[]);
    let shipper = Recorder::default();
    let (tx, stop) = watch::channel(true);
    let mut s = snapshot();
    s.run(&mut table, &shipper, &stop).await.unwrap();
    drop(tx);
    assert!(!s.done());
    assert_eq!(shipper.keys(), vec![Vec::<i64>::new()]);
}

#[tokio::test]
async fn a_stop_ends_the_wait_for_transactions_older_than_the_snapshot() {
    let mut table = Table::new(3, &[]);
    // a transaction open at the start that never ends (and no limit on the wait)
    table.running = Mutex::new(VecDeque::from(vec![vec!["3/7"]; 100_000]));
    let shipper = Recorder::default();
    let (tx, stop) = watch::channel(false);
    let mut s = snapshot();
    let stopping = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(true).unwrap();
    };
    let (ran, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(s.run(&mut table, &shipper, &stop), stopping)
    })
    .await
    .expect("the run ended after the stop");
    ran.unwrap();
    assert!(!s.done());
    // every chunk was shipped; the snapshot has not switched to streaming
    assert_eq!(shipper.keys().concat(), vec![1, 2, 3]);
}
