//! Choosing DLQ entries: the filters shared by `dlq show` and `dlq replay`.

use std::collections::HashMap;

use tunnel_shared::key::KeyText;

use super::read::DlqEntry;

#[derive(Debug, Default, Clone)]
pub(crate) struct Filter {
    /// An error class (`rule`, `wire_format`...) or a rule's name.
    pub(crate) reason: Option<String>,
    /// A DLQ partition.
    pub(crate) partition: Option<i32>,
    /// DLQ offsets, both ends included.
    pub(crate) offsets: Option<(i64, i64)>,
    /// The decoded key.
    pub(crate) key: Option<KeyText>,
}

impl Filter {
    pub(crate) fn matches(&self, e: &DlqEntry) -> bool {
        self.reason
            .as_deref()
            .is_none_or(|r| e.class() == r || e.rule() == Some(r))
            && self.partition.is_none_or(|p| e.partition == p)
            && self
                .offsets
                .is_none_or(|(from, to)| (from..=to).contains(&e.offset))
            && self
                .key
                .as_ref()
                .is_none_or(|k| e.key_text().as_ref() == Some(k))
    }
}

/// Which pending entries a replay takes: those the filter matches, plus the earlier pending
/// entries of their keys (a key's entries are replayed in their order or not at all).
///
/// Whether an entry is taken can depend on a later one (the last match of its key), so with a
/// filter that matches only some entries of a key the DLQ is read twice: a first pass, without
/// the payloads, notes where the last match of each key is (`see`); the second streams the
/// entries and takes them (`takes`). What the first pass keeps is a key and a position per
/// matched key, never the entries. Without such a filter (none, or a key only: then every
/// entry of a matched key matches too), one pass does, and nothing is kept.
pub(crate) struct Choice<'f> {
    filter: &'f Filter,
    /// Per key, the position (partition, offset) of its last pending match.
    last_of_key: HashMap<KeyText, (i32, i64)>,
}

impl<'f> Choice<'f> {
    pub(crate) fn new(filter: &'f Filter) -> Self {
        Choice {
            filter,
            last_of_key: HashMap::new(),
        }
    }

    /// Whether a first pass over the pending entries (`see`) must come before `takes`.
    pub(crate) fn needs_first_pass(&self) -> bool {
        let Filter {
            reason,
            partition,
            offsets,
            key: _,
        } = self.filter;
        reason.is_some() || partition.is_some() || offsets.is_some()
    }

    /// First pass: notes pending entry `e`, in DLQ (partition, then offset) order.
    pub(crate) fn see(&mut self, e: &DlqEntry) {
        if self.filter.matches(e) {
            if let Some(k) = e.key_text() {
                self.last_of_key.insert(k, (e.partition, e.offset));
            }
        }
    }

    /// Second pass: whether pending entry `e` is replayed.
    pub(crate) fn takes(&self, e: &DlqEntry) -> bool {
        self.filter.matches(e)
            || e.key_text().is_some_and(|k| {
                self.last_of_key
                    .get(&k)
                    .is_some_and(|&last| (e.partition, e.offset) <= last)
            })
    }
}

/// `7`, `7..12` or `7..` (both ends included).
pub(crate) fn parse_offsets(s: &str) -> Result<(i64, i64), String> {
    let bad = || format!("offsets '{s}': expected N, N..M or N..");
    match s.split_once("..") {
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            Ok((n, n))
        }
        Some((a, b)) => {
            let from = a.trim().parse().map_err(|_| bad())?;
            let to = if b.trim().is_empty() {
                i64::MAX
            } else {
                b.trim().parse().map_err(|_| bad())?
            };
            if to < from {
                return Err(bad());
            }
            Ok((from, to))
        }
    }
}

/// A key as a JSON array of its columns' text values (`["7"]`, `["a", "1"]`), or for a
/// single-column key its value alone (`7`).
pub(crate) fn parse_key(s: &str) -> Result<KeyText, String> {
    let t = s.trim();
    if !t.starts_with('[') {
        return Ok(vec![Some(t.to_string())]);
    }
    let json: serde_json::Value =
        serde_json::from_str(t).map_err(|e| format!("key '{s}' is not a JSON array: {e}"))?;
    json.as_array()
        .ok_or_else(|| format!("key '{s}' is not a JSON array"))?
        .iter()
        .map(|v| match v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(x) => Ok(Some(x.clone())),
            serde_json::Value::Number(n) => Ok(Some(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Some(if *b { "t" } else { "f" }.to_string())),
            other => Err(format!("key '{s}': {other} is not a column value")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::{BTreeMap, BTreeSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::fixtures::key;
    use crate::model::header;

    /// A DLQ entry at `partition`/`offset` that named key `k` (when it could decode it).
    fn entry(partition: i32, offset: i64, k: Option<&str>, class: &str) -> DlqEntry {
        let mut headers = BTreeMap::from([(header::CLASS.to_string(), class.to_string())]);
        if let Some(k) = k {
            headers.insert(header::KEY.into(), tunnel_shared::key::to_json(&key(k)));
        }
        DlqEntry {
            partition,
            offset,
            key: None,
            value: None,
            headers,
        }
    }

    /// The entries of `pending` (in DLQ order) a replay takes, read in one or two passes.
    fn choose<'a>(pending: &[&'a DlqEntry], filter: &Filter) -> Vec<&'a DlqEntry> {
        let mut choice = Choice::new(filter);
        if choice.needs_first_pass() {
            pending.iter().for_each(|e| choice.see(e));
        }
        pending
            .iter()
            .copied()
            .filter(|e| choice.takes(e))
            .collect()
    }

    /// How entries were chosen when the whole DLQ was in memory.
    fn chosen_in_memory<'a>(pending: &[&'a DlqEntry], filter: &Filter) -> Vec<&'a DlqEntry> {
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

    #[test]
    fn choosing_an_entry_takes_the_earlier_pending_entries_of_its_key() {
        let entries = [
            entry(0, 0, Some("a"), "rule"),
            entry(0, 1, Some("b"), "rule"),
            entry(0, 2, Some("a"), "parked"),
            entry(0, 3, None, "wire_format"),
            entry(0, 4, Some("a"), "parked"),
        ];
        let pending: Vec<&DlqEntry> = entries.iter().collect();
        let filter = Filter {
            offsets: Some((2, 3)),
            ..Filter::default()
        };
        let offsets: Vec<i64> = choose(&pending, &filter).iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [0, 2, 3]);
    }

    #[test]
    fn the_streamed_choice_is_the_in_memory_one() {
        let mut rng = StdRng::seed_from_u64(7);
        let keys = [Some("a"), Some("b"), Some("c"), Some("d"), None];
        let classes = ["rule", "parked", "wire_format"];
        for _ in 0..500 {
            let mut entries = Vec::new();
            for partition in 0..3 {
                for offset in 0..rng.gen_range(0..12) {
                    let k = keys[rng.gen_range(0..keys.len())];
                    let class = classes[rng.gen_range(0..classes.len())];
                    entries.push(entry(partition, offset, k, class));
                }
            }
            let pending: Vec<&DlqEntry> = entries.iter().filter(|_| rng.gen_bool(0.8)).collect();
            let filter = Filter {
                reason: rng
                    .gen_bool(0.5)
                    .then(|| classes[rng.gen_range(0..classes.len())].to_string()),
                partition: rng.gen_bool(0.3).then(|| rng.gen_range(0..3)),
                offsets: rng.gen_bool(0.3).then(|| {
                    let from = rng.gen_range(0..12);
                    (from, from + rng.gen_range(0..6))
                }),
                key: rng
                    .gen_bool(0.3)
                    .then(|| key(keys[rng.gen_range(0..4)].unwrap_or("a"))),
            };
            let position = |es: Vec<&DlqEntry>| -> Vec<(i32, i64)> {
                es.iter().map(|e| (e.partition, e.offset)).collect()
            };
            assert_eq!(
                position(choose(&pending, &filter)),
                position(chosen_in_memory(&pending, &filter)),
                "{filter:?}"
            );
        }
    }

    #[test]
    fn offsets_and_keys_parse() {
        assert_eq!(parse_offsets("7"), Ok((7, 7)));
        assert_eq!(parse_offsets("7..12"), Ok((7, 12)));
        assert_eq!(parse_offsets("7.."), Ok((7, i64::MAX)));
        assert!(parse_offsets("12..7").is_err());
        assert!(parse_offsets("x").is_err());
        assert_eq!(parse_key("7"), Ok(vec![Some("7".into())]));
        assert_eq!(
            parse_key(r#"["a", 1]"#),
            Ok(vec![Some("a".into()), Some("1".into())])
        );
        assert!(parse_key("[{}]").is_err());
    }
}
