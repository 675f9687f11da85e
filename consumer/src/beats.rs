//! The producer's heartbeats, read from the heartbeat topic (see [`tunnel_shared::heartbeat`])
//! by a consumer of their own: no group, the topic's one partition assigned from its end, so
//! that every consumer process of the group sees the heartbeats of every partition it holds.
//!
//! A heartbeat waits here, per partition of its table, until the group consumer's position
//! there reached the end the heartbeat gave (the position passes transaction markers and
//! aborted records). It then joins the batch being cut, and counts as applied once that batch
//! committed: the lag of an idle partition is then the heartbeat's age.

use std::collections::VecDeque;
use std::sync::Arc;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use rustc_hash::{FxHashMap, FxHashSet};
use tracing::debug;
use tunnel_shared::config::KafkaConfig;
use tunnel_shared::heartbeat::Beat;
use tunnel_shared::kafka;

/// Most heartbeats a partition keeps waiting (the oldest go first: the lag is then reported a
/// little high until a newer one is reached).
const MOST_WAITING: usize = 16;

/// A partition of a table topic.
type Partition = (Arc<str>, i32);

pub(crate) struct Beats {
    consumer: StreamConsumer,
    pub(crate) waiting: Waiting,
}

/// The heartbeats not reached yet.
pub(crate) struct Waiting {
    /// The table topics this consumer reads.
    topics: FxHashSet<Arc<str>>,
    /// Per partition, the heartbeats not reached yet: (end, sent at).
    by_partition: FxHashMap<Partition, VecDeque<(i64, i64)>>,
}

impl Beats {
    /// Reads the heartbeats of `topics` from `heartbeat_topic`, from the end.
    pub(crate) fn new(
        kafka: &KafkaConfig,
        group: &str,
        heartbeat_topic: &str,
        topics: &[Arc<str>],
    ) -> Result<Self, KafkaError> {
        // the group id is never joined (the partition is assigned) nor committed to
        let consumer: StreamConsumer =
            kafka::consumer_config(kafka, &format!("{group}.heartbeats")).create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(heartbeat_topic, 0, Offset::End)?;
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            waiting: Waiting::new(topics),
        })
    }

    /// The next heartbeat record, taken in. A record that is no heartbeat is logged and
    /// skipped; an error of the client is handed back.
    pub(crate) async fn next(&mut self) -> Result<(), KafkaError> {
        let m = self.consumer.recv().await?;
        match Beat::parse(m.payload()) {
            Ok(beat) => self.waiting.take(beat),
            Err(e) => {
                debug!(offset = m.offset(), error = %e, "a record of the heartbeat topic that is no heartbeat is skipped")
            }
        }
        Ok(())
    }
}

impl Waiting {
    fn new(topics: &[Arc<str>]) -> Self {
        Self {
            topics: topics.iter().cloned().collect(),
            by_partition: FxHashMap::default(),
        }
    }

    /// Takes a heartbeat in (if it is of one of our topics).
    fn take(&mut self, beat: Beat) {
        let Some(topic) = self.topics.get(beat.topic.as_str()).cloned() else {
            return;
        };
        for (partition, end) in beat.ends {
            let q = self
                .by_partition
                .entry((topic.clone(), partition))
                .or_default();
            if q.len() >= MOST_WAITING {
                q.pop_front();
            }
            q.push_back((end, beat.at_ms));
        }
    }

    /// The partitions with heartbeats waiting.
    pub(crate) fn partitions(&self) -> Vec<Partition> {
        self.by_partition.keys().cloned().collect()
    }

    /// The partition is not this consumer's (any more): its heartbeats are another's.
    pub(crate) fn forget(&mut self, partition: &Partition) {
        self.by_partition.remove(partition);
    }

    /// The consumer's position in `partition` is `position`: the newest heartbeat it reached,
    /// if any (those before it are dropped too).
    pub(crate) fn reached(&mut self, partition: &Partition, position: i64) -> Option<i64> {
        let q = self.by_partition.get_mut(partition)?;
        let mut newest = None;
        while let Some(&(end, at_ms)) = q.front() {
            if end > position {
                break;
            }
            newest = Some(newest.map_or(at_ms, |n: i64| n.max(at_ms)));
            q.pop_front();
        }
        if q.is_empty() {
            self.by_partition.remove(partition);
        }
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beats(topics: &[&str]) -> Waiting {
        let topics: Vec<Arc<str>> = topics.iter().map(|t| Arc::from(*t)).collect();
        Waiting::new(&topics)
    }

    fn beat(topic: &str, at_ms: i64, ends: &[(i32, i64)]) -> Beat {
        Beat {
            topic: topic.into(),
            at_ms,
            ends: ends.to_vec(),
            version: String::new(),
        }
    }

    #[test]
    fn a_heartbeat_counts_once_the_position_reached_its_end() {
        let mut b = beats(&["t"]);
        b.take(beat("t", 100, &[(0, 10), (1, 0)]));
        b.take(beat("t", 200, &[(0, 20), (1, 0)]));
        b.take(beat("other", 300, &[(0, 0)]));
        let (p0, p1): (Partition, Partition) = ((Arc::from("t"), 0), (Arc::from("t"), 1));
        assert_eq!(b.partitions().len(), 2);
        assert_eq!(b.reached(&p0, 9), None);
        assert_eq!(b.reached(&p0, 15), Some(100));
        assert_eq!(b.reached(&p0, 15), None);
        assert_eq!(b.reached(&p1, 0), Some(200));
        assert_eq!(b.reached(&p0, 20), Some(200));
        assert!(b.partitions().is_empty());
    }

    #[test]
    fn a_partition_keeps_a_bounded_number_of_heartbeats_and_forgets_them_when_revoked() {
        let mut b = beats(&["t"]);
        for i in 0..100 {
            b.take(beat("t", i, &[(0, i)]));
        }
        let p: Partition = (Arc::from("t"), 0);
        assert_eq!(
            b.by_partition.get(&p).map(VecDeque::len),
            Some(MOST_WAITING)
        );
        assert_eq!(b.reached(&p, 1000), Some(99));
        b.take(beat("t", 1, &[(0, 5)]));
        b.forget(&p);
        assert_eq!(b.reached(&p, 1000), None);
    }
}
