//! The metric names outside the code agree with `metrics::names::ALL`: docs/operations.md lists
//! every metric (with the right type), and every `tunnel_*` metric named in the docs, the alert
//! rules, the scrape configs and the Grafana dashboard exists.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::collections::BTreeSet;
use std::path::PathBuf;

use tunnel_shared::metrics::names::ALL;

/// `tunnel_*` words that are not metrics: the PostgreSQL roles of the local stack.
const NOT_METRICS: &[&str] = &["tunnel_reader", "tunnel_writer", "tunnel_tls"];

fn repo_file(path: &str) -> (PathBuf, String) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    (p, text)
}

/// Every `tunnel_[a-z_]+` word of `text`.
fn tunnel_words(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\btunnel_[a-z_]+").unwrap();
    re.find_iter(text)
        .map(|m| m.as_str().trim_end_matches('_').to_string())
        .collect()
}

/// A metric of the list, or a histogram's `_bucket` / `_sum` / `_count` series of one.
fn is_metric(word: &str) -> bool {
    ALL.iter().any(|n| n.name == word)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| word.strip_suffix(s))
            .any(|base| ALL.iter().any(|n| n.name == base))
}

#[test]
fn the_operations_doc_lists_every_metric_with_its_type() {
    let (path, text) = repo_file("docs/operations.md");
    let monitoring = text
        .split("\n## Monitoring\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{}: no '## Monitoring' section", path.display()));
    for n in ALL {
        let row = monitoring
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", n.name)))
            .unwrap_or_else(|| {
                panic!(
                    "{}: the metrics reference has no row for {} ({})",
                    path.display(),
                    n.name,
                    n.help
                )
            });
        let kind = row.split('|').nth(2).unwrap_or_default().trim();
        let expected: &[&str] = if n.name.ends_with("_total") {
            &["counter"]
        } else if n.name.ends_with("_duration_seconds") {
            &["histogram"]
        } else {
            &["gauge"]
        };
        assert!(
            expected.contains(&kind),
            "{}: {} is listed as a {kind}, expected {expected:?}",
            path.display(),
            n.name
        );
    }
}

#[test]
fn every_metric_named_in_the_docs_and_deploy_files_exists() {
    let files = [
        "docs/operations.md",
        "README.md",
        "config/example.toml",
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts.test.yml",
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/prometheus.compose.yml",
        "deploy/grafana/data-tunnel.json",
    ];
    let mut unknown = Vec::new();
    let mut named = 0;
    for f in files {
        let (_, text) = repo_file(f);
        for w in tunnel_words(&text) {
            if NOT_METRICS.contains(&w.as_str()) {
                continue;
            }
            named += 1;
            if !is_metric(&w) {
                unknown.push(format!("{f}: {w}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not in tunnel_shared::metrics::names::ALL:\n{}",
        unknown.join("\n")
    );
    assert!(named > ALL.len(), "too few metric names found: {named}");
}

#[test]
fn every_alert_has_the_annotations_an_operator_needs() {
    let (path, text) = repo_file("deploy/prometheus/alerts.yml");
    let alerts: Vec<&str> = text.split("- alert: ").skip(1).collect();
    assert!(
        alerts.len() >= 7,
        "{}: {} alerts",
        path.display(),
        alerts.len()
    );
    let (_, docs) = repo_file("docs/operations.md");
    let (_, tests) = repo_file("deploy/prometheus/alerts.test.yml");
    for a in alerts {
        let name = a.lines().next().unwrap_or_default().trim();
        for key in [
            "summary:",
            "description:",
            "runbook: docs/operations.md#monitoring",
        ] {
            assert!(a.contains(key), "{}: {name} has no {key}", path.display());
        }
        assert!(
            docs.contains(&format!("| `{name}` |")),
            "docs/operations.md does not explain {name}"
        );
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "alerts.test.yml does not test {name}"
        );
    }
}
