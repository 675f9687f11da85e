//! `tunnel-producer check`: everything `run` will need, checked one by one and reported
//! ([`tunnel_shared::check`]): the source (reachable, read-only, each table visible with a
//! primary key, how its changes will be found, `pg_locks` and `pg_stat_statements`), Kafka
//! (reachable, the tables' topics present or creatable, transactions usable) and the registry
//! (reachable, its compatibility level).

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use tokio_postgres::Client;
use tunnel_shared::catalog::{self, CatalogError};
use tunnel_shared::check::{self, Report, WAIT};
use tunnel_shared::config::{redact_url, Capture, Config, TableConfig};
use tunnel_shared::kafka;

use crate::detectors;
use crate::trigger::Objects;

pub async fn check(config: &Config) -> Report {
    let mut r = Report::default();
    source(config, &mut r).await;
    kafka_checks(config, &mut r).await;
    check::registry(config, &mut r).await;
    r
}

async fn source(config: &Config, r: &mut Report) {
    let url = &config.source.url;
    let client = match check::connect(url, true, "source").await {
        Ok(c) => c,
        Err(e) => {
            r.fail("source", e, "check source.url (host, port, database), the role's password (source.password_file or TUNNEL_SOURCE_PASSWORD), the TLS settings, that pg_hba.conf lets the role in, and that no firewall stands between");
            return;
        }
    };
    let about = client
        .query_one(
            "SELECT current_user::text, current_setting('server_version'), current_setting('transaction_read_only')",
            &[],
        )
        .await;
    match about {
        Ok(row) => {
            let (user, version, read_only): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            r.ok(
                "source",
                format!("{} as {user}, PostgreSQL {version}", redact_url(url)),
            );
            if read_only == "on" {
                r.ok(
                    "source session read-only",
                    "every statement of the producer runs read-only",
                );
            } else {
                r.fail(
                    "source session read-only",
                    "the session is not read-only",
                    "a setting of the server or the role overrides default_transaction_read_only: remove it",
                );
            }
        }
        Err(e) => r.fail(
            "source",
            e.to_string(),
            "check that the role may log in and run queries",
        ),
    }
    for t in &config.tables {
        table(config, t, &client, r).await;
    }
    match client.query_one("SELECT count(*) FROM pg_locks", &[]).await {
        Ok(_) => r.ok("pg_locks", "readable: the capture horizon sees the transactions in flight (late commits)"),
        Err(e) => r.fail("pg_locks", e.to_string(), "the role must be able to read pg_locks (any role can, unless a REVOKE took it away): GRANT SELECT ON pg_catalog.pg_locks TO the role"),
    }
    match client
        .query_one("SELECT count(*) FROM pg_stat_statements", &[])
        .await
    {
        Ok(_) => r.ok("pg_stat_statements", "readable: what the producer costs the source can be read there (docs/operations.md)"),
        Err(e) => r.warn(
            "pg_stat_statements",
            format!("not readable ({}): the producer runs without it, but its cost to the source is then only in its own metrics (tunnel_producer_pass_duration_seconds)", e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())),
            "CREATE EXTENSION pg_stat_statements (with shared_preload_libraries), and GRANT pg_read_all_stats TO the role",
        ),
    }
}

async fn table(config: &Config, t: &TableConfig, client: &Client, r: &mut Report) {
    let name = format!("table {}", t.qualified());
    let info = match catalog::load_table(client, &t.schema, &t.name, t.watermark_column.as_deref())
        .await
    {
        Ok(info) => info,
        Err(e) => {
            let fix = match &e {
                CatalogError::NotFound(_) => "check the table's schema and name in the config, and GRANT USAGE ON SCHEMA and SELECT ON the table TO the role".to_string(),
                CatalogError::NoPrimaryKey(_) => "add a primary key (ALTER TABLE ... ADD PRIMARY KEY): events are keyed by it, and deletes found by it".to_string(),
                CatalogError::NoSelect(_) => format!(
                    "GRANT USAGE ON SCHEMA {} TO the role, and GRANT SELECT ON {} TO it",
                    t.schema,
                    t.qualified()
                ),
                CatalogError::BadWatermark { .. } => "set watermark_column to a timestamp or timestamptz column the application moves on every write, or to \"\" for none".to_string(),
                CatalogError::Pg(_) => "check the role's rights on the catalog".to_string(),
            };
            r.fail(&name, e.to_string(), fix);
            return;
        }
    };
    let key: Vec<&str> = info.key_columns().map(|c| c.name.as_str()).collect();
    let watermark = match info.watermark {
        Some(w) => format!("watermark {}", info.columns[w].name),
        None => "no watermark column (updates found by reconciliation)".to_string(),
    };
    let found_by: Vec<&str> = detectors::for_table(config, t, &info)
        .iter()
        .map(|d| d.detection().as_str())
        .collect();
    r.ok(
        &name,
        format!(
            "primary key ({}), {watermark}; changes found by {}",
            key.join(", "),
            found_by.join(", ")
        ),
    );
    if t.capture == Capture::Trigger {
        let objects = Objects::new(&config.source, t);
        match crate::trigger::installed(client, &objects).await {
            Ok(None) => r.ok(
                &format!("trigger capture of {}", t.qualified()),
                format!(
                    "change table {}.{} readable, triggers enabled ALWAYS",
                    objects.schema, objects.change_table
                ),
            ),
            Ok(Some(problem)) => r.fail(
                &format!("trigger capture of {}", t.qualified()),
                problem,
                format!(
                    "run `tunnel-producer install --config <file> --table {}` as the table's owner, or set capture = \"poll\"",
                    t.qualified()
                ),
            ),
            Err(e) => r.fail(
                &format!("trigger capture of {}", t.qualified()),
                e.to_string(),
                "check the role's rights on the catalog",
            ),
        }
    }
}

async fn kafka_checks(config: &Config, r: &mut Report) {
    if !check::kafka(config, r).await {
        return;
    }
    for t in &config.tables {
        check::topic(config, &config.topic(t), "the producer", r).await;
    }
    let k = &config.kafka;
    let transactional_id = format!("{}.producer.check", k.topic_prefix);
    let cfg = kafka::transactional_producer_config(k, &transactional_id);
    let tried = tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
        let producer: BaseProducer = cfg.create()?;
        producer.init_transactions(WAIT)
    })
    .await;
    match tried {
        Ok(Ok(())) => r.ok("kafka transactions", format!("usable (transactional id {transactional_id})")),
        Ok(Err(e)) => r.fail("kafka transactions", e.to_string(), format!("allow the principal WRITE and DESCRIBE on the transactional ids {}.producer.* (prefixed ACL), and check that the brokers can hold the transaction state log (transaction.state.log.replication.factor and min.isr at most the number of brokers)", k.topic_prefix)),
        Err(e) => r.fail("kafka transactions", e.to_string(), "try again"),
    }
}
