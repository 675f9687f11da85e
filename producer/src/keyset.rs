//! The set of keys already shipped, for tables with a single integer primary key: a compact
//! `RoaringTreemap`, never stored in the source, kept as [`crate::shipped::ShippedKeys`] (which
//! rebuilds it at start from the compacted topic and keeps it current as events are shipped).
//! Besides telling inserts from updates, it is what delete scans compare with the source:
//! aggregates and lists of key ranges.

use std::ops::RangeInclusive;

use roaring::RoaringTreemap;
use tunnel_shared::event::{ChangeEvent, Op};

/// Maps an `i64` onto a `u64` in the same order (the sign bit flipped).
fn to_u64(k: i64) -> u64 {
    (k as u64) ^ (1 << 63)
}

fn to_i64(k: u64) -> i64 {
    (k ^ (1 << 63)) as i64
}

#[derive(Debug, Default, Clone)]
pub struct KeySet {
    keys: RoaringTreemap,
}

impl KeySet {
    pub(crate) fn insert(&mut self, k: i64) {
        self.keys.insert(to_u64(k));
    }

    pub(crate) fn remove(&mut self, k: i64) {
        self.keys.remove(to_u64(k));
    }

    pub(crate) fn len(&self) -> u64 {
        self.keys.len()
    }

    pub fn min(&self) -> Option<i64> {
        self.keys.min().map(to_i64)
    }

    pub fn max(&self) -> Option<i64> {
        self.keys.max().map(to_i64)
    }

    fn range(&self, r: &RangeInclusive<i64>) -> impl Iterator<Item = i64> + '_ {
        let (start, end) = (to_u64(*r.start()), to_u64(*r.end()));
        let mut it = self.keys.iter();
        it.advance_to(start);
        it.take_while(move |k| *k <= end).map(to_i64)
    }

    /// How many keys of a range have been shipped (and not deleted since).
    pub fn count(&self, r: RangeInclusive<i64>) -> i64 {
        let n = self
            .keys
            .range_cardinality(to_u64(*r.start())..=to_u64(*r.end()));
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    /// Whether `k` has been shipped (and not deleted since).
    pub(crate) fn contains(&self, k: i64) -> bool {
        self.keys.contains(to_u64(k))
    }

    /// The keys of a range, in order.
    pub fn keys(&self, r: RangeInclusive<i64>) -> Vec<i64> {
        self.range(&r).collect()
    }

    /// Keeps the set current with events just shipped: a delete removes its key, any other
    /// event adds it (through [`crate::shipped::ShippedKeys::apply`]).
    pub fn apply(&mut self, events: &[ChangeEvent]) {
        for e in events {
            if let Some(k) = key_i64(&e.key) {
                if e.op == Op::Delete {
                    self.remove(k);
                } else {
                    self.insert(k);
                }
            }
        }
    }

    /// Serialized size, for logs.
    pub(crate) fn serialized_bytes(&self) -> u64 {
        self.keys.serialized_size() as u64
    }

    /// The set in the portable roaring format (what [`KeySet::from_bytes`] reads).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.keys.serialized_size());
        // writing to a Vec cannot fail
        let _ = self.keys.serialize_into(&mut out);
        out
    }

    /// A set written by [`KeySet::to_bytes`]; the format is checked (never a panic), and bytes
    /// left over refuse it.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = bytes;
        let keys = RoaringTreemap::deserialize_from(&mut reader).map_err(|e| e.to_string())?;
        if !reader.is_empty() {
            return Err(format!("{} bytes after the key set", reader.len()));
        }
        Ok(Self { keys })
    }
}

/// A single integer key's value.
pub(crate) fn key_i64(key: &[apache_avro::types::Value]) -> Option<i64> {
    match key {
        [apache_avro::types::Value::Int(k)] => Some(i64::from(*k)),
        [apache_avro::types::Value::Long(k)] => Some(*k),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;
    use tunnel_shared::event::Detection;

    #[test]
    fn order_is_kept_across_the_sign() {
        let mut s = KeySet::default();
        for k in [-5, 3, i64::MIN, i64::MAX, 0] {
            s.insert(k);
        }
        assert_eq!(s.min(), Some(i64::MIN));
        assert_eq!(s.max(), Some(i64::MAX));
        assert_eq!(s.keys(-10..=10), vec![-5, 0, 3]);
        assert_eq!(s.count(-10..=10), 3);
        assert_eq!(s.count(i64::MIN..=i64::MAX), 5);
        assert_eq!(s.count(4..=i64::MAX), 1);
        s.remove(0);
        assert_eq!(s.count(0..=0), 0);
        assert_eq!(s.len(), 4);
    }

    fn event(op: Op, key: Value) -> ChangeEvent {
        ChangeEvent {
            op,
            key: vec![key],
            after: None,
            detected_by: Detection::KeyScan,
            updated_at: None,
            ts_ms: 0,
        }
    }

    #[test]
    fn the_set_round_trips_through_bytes_and_refuses_damaged_ones() {
        let mut s = KeySet::default();
        for k in (0..200_000).chain([i64::MIN, -1, i64::MAX]) {
            s.insert(k);
        }
        let bytes = s.to_bytes();
        let back = KeySet::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), s.len());
        assert_eq!(back.keys(i64::MIN..=i64::MAX), s.keys(i64::MIN..=i64::MAX));
        assert!(KeySet::from_bytes(&bytes[..bytes.len() - 3]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(KeySet::from_bytes(&longer).is_err());
        assert!(KeySet::from_bytes(&[0xff; 16]).is_err());
        assert_eq!(
            KeySet::from_bytes(&KeySet::default().to_bytes())
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn shipped_events_add_and_remove_keys() {
        let mut s = KeySet::default();
        s.apply(&[
            event(Op::Read, Value::Long(7)),
            event(Op::Create, Value::Int(8)),
            event(Op::Update, Value::Long(9)),
            // not a single integer key: not the set's
            event(Op::Create, Value::String("x".into())),
        ]);
        assert_eq!(s.keys(0..=100), vec![7, 8, 9]);
        s.apply(&[event(Op::Delete, Value::Int(8))]);
        assert_eq!(s.keys(0..=100), vec![7, 9]);
    }
}
