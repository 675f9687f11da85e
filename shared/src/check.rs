//! The report of `tunnel-producer check` and `tunnel-consumer check`: everything a run will
//! need, each item checked and printed as a line (✓ passed, ! works but something is lost,
//! ✗ the run would not start) with what was found and, for the others, the fix; as JSON with
//! `--json`, for scripts.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Serialize;

use crate::config::{redact_url, Config};
use crate::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// The run starts, without something (a measurement, an optional feature).
    Warn,
    /// The run would not start, or would stop.
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub check: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub items: Vec<Item>,
}

impl Report {
    fn push(&mut self, check: &str, status: Status, detail: String, fix: Option<String>) {
        self.items.push(Item {
            check: check.to_string(),
            status,
            detail,
            fix,
        });
    }

    pub fn ok(&mut self, check: &str, detail: impl Into<String>) {
        self.push(check, Status::Ok, detail.into(), None);
    }

    pub fn warn(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(check, Status::Warn, detail.into(), Some(fix.into()));
    }

    pub fn fail(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(check, Status::Fail, detail.into(), Some(fix.into()));
    }

    /// Whether the run would start: no item failed.
    pub fn passed(&self) -> bool {
        self.items.iter().all(|i| i.status != Status::Fail)
    }

    /// The report as lines, the last one a summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for i in &self.items {
            let mark = match i.status {
                Status::Ok => "✓",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            out.push_str(&format!("{mark} {}: {}\n", i.check, i.detail));
            if let Some(fix) = &i.fix {
                out.push_str(&format!("    fix: {fix}\n"));
            }
        }
        let failed = self
            .items
            .iter()
            .filter(|i| i.status == Status::Fail)
            .count();
        let warned = self
            .items
            .iter()
            .filter(|i| i.status == Status::Warn)
            .count();
        if failed == 0 {
            out.push_str(&format!(
                "all {} checks passed{}: the run can start\n",
                self.items.len(),
                if warned > 0 {
                    format!(" ({warned} with a warning)")
                } else {
                    String::new()
                }
            ));
        } else {
            out.push_str(&format!(
                "{failed} of {} checks failed: the run would not start\n",
                self.items.len()
            ));
        }
        out
    }

    /// The report as JSON: `{"passed": bool, "items": [...]}`.
    pub fn json(&self) -> String {
        serde_json::json!({ "passed": self.passed(), "items": self.items }).to_string()
    }

    /// Prints the report (text or JSON) on standard output.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json());
        } else {
            print!("{}", self.text());
        }
    }
}

/// How long a check waits for a server.
pub const WAIT: Duration = Duration::from_secs(10);

/// A PostgreSQL session for a check (`what` names it in `pg_stat_activity`), or why there is
/// none: the connection's error, or the server's silence past [`WAIT`].
pub async fn connect(
    url: &str,
    read_only: bool,
    what: &str,
) -> Result<tokio_postgres::Client, String> {
    let session = crate::pg::Session {
        application_name: format!("data-tunnel-check-{what}"),
        statement_timeout: WAIT,
        lock_timeout: Duration::from_secs(1),
        read_only,
        canonical_text: false,
    };
    match tokio::time::timeout(WAIT, crate::pg::connect(url, &session)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "{} did not answer within {WAIT:?}",
            redact_url(url)
        )),
    }
}

/// Kafka answers this client (its TLS and SASL settings included); whether it does.
pub async fn kafka(config: &Config, r: &mut Report) -> bool {
    let k = &config.kafka;
    match crate::kafka::check_access(k, WAIT).await {
        Ok(()) => {
            r.ok("kafka", format!("{} answers", k.brokers));
            true
        }
        Err(e) => {
            r.fail("kafka", e.to_string(), "check kafka.brokers, kafka.security_protocol, the SASL user and password (kafka.sasl_password_file or TUNNEL_KAFKA_PASSWORD) and the CA");
            false
        }
    }
}

/// A table's topic is there, or `creator` may create it (a creation validated, not made).
pub async fn topic(config: &Config, topic: &str, creator: &str, r: &mut Report) {
    let k = &config.kafka;
    let what = format!("topic {topic}");
    match topic_state(config, topic).await {
        Ok(TopicState::Present(n)) => r.ok(&what, format!("present, {n} partitions")),
        Ok(TopicState::Creatable) => r.ok(
            &what,
            format!(
                "absent; {creator} may create it ({} partitions, replication {})",
                k.partitions, k.replication_factor
            ),
        ),
        Err(e) => r.fail(
            &what,
            e.to_string(),
            "create the topic (compacted) beforehand, or allow the principal to CREATE topics with this prefix; check kafka.replication_factor against the brokers",
        ),
    }
}

enum TopicState {
    Present(usize),
    Creatable,
}

async fn topic_state(config: &Config, topic: &str) -> Result<TopicState, KafkaError> {
    let (k, name) = (config.kafka.clone(), topic.to_string());
    let marks =
        tokio::task::spawn_blocking(move || crate::kafka::partition_watermarks(&k, &name, WAIT))
            .await
            .map_err(|_| KafkaError::Canceled)??;
    if !marks.is_empty() {
        return Ok(TopicState::Present(marks.len()));
    }
    let admin = crate::kafka::admin(&config.kafka).map_err(|_| KafkaError::Canceled)?;
    let new = NewTopic::new(
        topic,
        config.kafka.partitions,
        TopicReplication::Fixed(config.kafka.replication_factor),
    );
    let opts = AdminOptions::new()
        .validate_only(true)
        .operation_timeout(Some(WAIT));
    for result in admin.create_topics([&new], &opts).await? {
        if let Err((_, code)) = result {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(TopicState::Creatable)
}

/// The schema registry answers, and its global compatibility level.
pub async fn registry(config: &Config, r: &mut Report) {
    let registry = match Registry::from_config(&config.registry) {
        Ok(reg) => reg,
        Err(e) => {
            r.fail("schema registry", e.to_string(), "check registry.url");
            return;
        }
    };
    let url = redact_url(&config.registry.url);
    match tokio::time::timeout(WAIT, registry.global_compatibility()).await {
        Ok(Ok(level)) => r.ok(
            "schema registry",
            format!(
                "{url} answers; global compatibility {} (the producer sets {} on its own subjects)",
                level.unwrap_or_else(|| "not set".into()),
                config.registry.compatibility
            ),
        ),
        Ok(Err(e)) => r.fail("schema registry", e.to_string(), "check registry.url (for Apicurio, the ccompat path: .../apis/ccompat/v7), its credentials and its CA"),
        Err(_) => r.fail(
            "schema registry",
            format!("{url} did not answer within {WAIT:?}"),
            "check registry.url and that the registry is running",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_passes_a_failure_does_not_and_both_say_the_fix() {
        let mut r = Report::default();
        r.ok("source", "reachable");
        r.warn(
            "pg_stat_statements",
            "not installed",
            "CREATE EXTENSION pg_stat_statements",
        );
        assert!(r.passed());
        assert!(r.text().contains("all 2 checks passed (1 with a warning)"));
        r.fail("table public.t", "no primary key", "add one");
        assert!(!r.passed());
        let text = r.text();
        assert!(text.contains("✗ table public.t: no primary key\n    fix: add one"));
        assert!(text.ends_with("1 of 3 checks failed: the run would not start\n"));
        let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap_or_default();
        assert_eq!(json["passed"], false);
        assert_eq!(json["items"][2]["status"], "fail");
    }
}
