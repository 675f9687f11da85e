//! Reading the families back, for the built-in notifier (a family cannot be iterated: its
//! samples are read through its own text encoding, once per check). Not used by scrapes.

use std::collections::BTreeMap;

use prometheus_client::registry::{Metric, Registry};

use super::{Boxed, DetectorLabels, Metrics};

impl Metrics {
    /// Entries written to each table's DLQ by this process, all error classes together.
    pub fn dlq_written_by_table(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (labels, v) in samples(&self.dlq_written) {
            if let Some(table) = labels.get("table") {
                *out.entry(table.clone()).or_insert(0) += v.max(0.0) as u64;
            }
        }
        out
    }

    /// Pending entries of each table's DLQ.
    pub fn dlq_pending_by_table(&self) -> BTreeMap<String, i64> {
        by_table(samples(&self.dlq_pending))
            .map(|(t, v)| (t, v as i64))
            .collect()
    }

    /// Each detector's configured interval in seconds.
    pub fn detector_intervals(&self) -> Vec<(DetectorLabels, f64)> {
        samples(&self.detector_interval)
            .into_iter()
            .filter_map(|(mut labels, v)| {
                Some((
                    DetectorLabels {
                        table: labels.remove("table")?,
                        detector: labels.remove("detector")?,
                    },
                    v,
                ))
            })
            .collect()
    }

    /// The tables marked stopped (`tunnel_producer_table_stopped` 1).
    pub fn stopped_tables(&self) -> Vec<String> {
        by_table(samples(&self.table_stopped))
            .filter(|(_, v)| *v >= 1.0)
            .map(|(t, _)| t)
            .collect()
    }
}

/// The samples of one family, read back through its own text encoding (a family cannot be
/// iterated): each sample's labels and value. For the built-in notifier, not for scrapes.
fn samples<M>(family: &M) -> Vec<(BTreeMap<String, String>, f64)>
where
    M: Metric + Clone,
{
    let mut r = Registry::default();
    r.register("sample", "", Boxed(Box::new(family.clone())));
    let mut text = String::new();
    // writing into a String does not fail
    let _ = prometheus_client::encoding::text::encode(&mut text, &r);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

/// `name{a="x",b="y"} 3` -> its labels and value.
pub(super) fn parse_sample(line: &str) -> Option<(BTreeMap<String, String>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse::<f64>().ok()?;
    let mut labels = BTreeMap::new();
    if let Some((_, rest)) = head.split_once('{') {
        let mut rest = rest.strip_suffix('}')?;
        while let Some((name, tail)) = rest.split_once("=\"") {
            let mut v = String::new();
            let mut chars = tail.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            v.push(if e == 'n' { '\n' } else { e });
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let end = end?;
            labels.insert(name.trim_start_matches(',').to_string(), v);
            rest = &tail[end + 1..];
        }
    }
    Some((labels, value))
}

/// The samples' values by their `table` label.
fn by_table(samples: Vec<(BTreeMap<String, String>, f64)>) -> impl Iterator<Item = (String, f64)> {
    samples
        .into_iter()
        .filter_map(|(mut labels, v)| Some((labels.remove("table")?, v)))
}
