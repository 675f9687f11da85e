//! `tunnel-consumer check`: everything `run` will need, checked one by one and reported
//! ([`tunnel_shared::check`]): the target (reachable, writable, the replica tables and the
//! bookkeeping schema creatable or writable), Kafka (reachable, the tables' topics), the
//! registry, and each table's validation rules against its columns.

use tokio_postgres::Client;
use tunnel_shared::catalog;
use tunnel_shared::check::{self, Report};
use tunnel_shared::config::{redact_url, Config, TableConfig};
use tunnel_shared::pg::qualified;
use tunnel_shared::registry::Registry;
use tunnel_shared::{rules, schema};

pub async fn check(config: &Config) -> Report {
    let mut r = Report::default();
    target(config, &mut r).await;
    if check::kafka(config, &mut r).await {
        for t in &config.tables {
            check::topic(config, &config.topic(t), "the consumer", &mut r).await;
        }
    }
    check::registry(config, &mut r).await;
    for t in config.tables.iter().filter(|t| !t.rules.is_empty()) {
        rules_of(config, t, &mut r).await;
    }
    r
}

async fn target(config: &Config, r: &mut Report) {
    let url = &config.target.url;
    let client = match check::connect(url, false, "target").await {
        Ok(c) => c,
        Err(e) => {
            r.fail("target", e, "check target.url (host, port, database), the role's password (target.password_file or TUNNEL_TARGET_PASSWORD), the TLS settings, and pg_hba.conf");
            return;
        }
    };
    let about = client
        .query_one(
            "SELECT current_user::text, current_setting('server_version'),
                    pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
            &[],
        )
        .await;
    let user = match about {
        Ok(row) => {
            let (user, version, read_only): (String, String, bool) =
                (row.get(0), row.get(1), row.get(2));
            r.ok(
                "target",
                format!("{} as {user}, PostgreSQL {version}", redact_url(url)),
            );
            if read_only {
                r.fail("target writable", "the session is read-only (a standby, or default_transaction_read_only)", "point target.url at the primary, and take default_transaction_read_only off the role");
            } else {
                r.ok("target writable", "the session may write");
            }
            user
        }
        Err(e) => {
            r.fail(
                "target",
                e.to_string(),
                "check that the role may log in and run queries",
            );
            return;
        }
    };
    let bookkeeping = &config.target.bookkeeping_schema;
    schema_creatable(&client, bookkeeping, "bookkeeping schema", &user, r).await;
    for t in &config.tables {
        replica_table(&client, t, &user, r).await;
    }
}

/// `schema` exists and the role may create in it, or the role may create it.
async fn schema_creatable(client: &Client, schema: &str, what: &str, user: &str, r: &mut Report) {
    let row = client
        .query_one(
            "SELECT (SELECT has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = $1),
                    has_database_privilege(current_database(), 'CREATE'), current_database()::text",
            &[&schema],
        )
        .await;
    let name = format!("{what} {schema}");
    match row {
        Ok(row) => {
            let (in_schema, in_db, db): (Option<bool>, bool, String) =
                (row.get(0), row.get(1), row.get(2));
            match in_schema {
                Some(true) => r.ok(&name, "exists; the role may create tables in it"),
                Some(false) => r.fail(&name, "exists, but the role may not create tables in it", format!("GRANT CREATE ON SCHEMA {schema} TO {user}")),
                None if in_db => r.ok(&name, "absent; the role may create it"),
                None => r.fail(&name, "absent, and the role may not create it", format!("CREATE SCHEMA {schema} AUTHORIZATION {user}, or GRANT CREATE ON DATABASE {db} TO {user}")),
            }
        }
        Err(e) => r.fail(
            &name,
            e.to_string(),
            "check the role's rights on the catalog",
        ),
    }
}

/// The replica table exists and the role may write it, or the role may create it.
async fn replica_table(client: &Client, t: &TableConfig, user: &str, r: &mut Report) {
    let name = qualified(t.target_schema(), t.target_name());
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL,
                    COALESCE(has_table_privilege(to_regclass($1), 'INSERT')
                         AND has_table_privilege(to_regclass($1), 'UPDATE')
                         AND has_table_privilege(to_regclass($1), 'DELETE'), false)",
            &[&name],
        )
        .await;
    let what = format!("replica {}.{}", t.target_schema(), t.target_name());
    match row {
        Ok(row) => {
            let (exists, writable): (bool, bool) = (row.get(0), row.get(1));
            if exists && writable {
                r.ok(&what, "exists; the role may insert, update and delete");
            } else if exists {
                r.fail(&what, "exists, but the role may not write it", format!("GRANT INSERT, UPDATE, DELETE ON {name} TO {user} (or make the role its owner: schema changes alter it)"));
            } else {
                schema_creatable(
                    client,
                    t.target_schema(),
                    &format!("{what}: absent; its schema"),
                    user,
                    r,
                )
                .await;
            }
        }
        Err(e) => r.fail(
            &what,
            e.to_string(),
            "check the role's rights on the catalog",
        ),
    }
}

/// The table's rules compile against its columns: those of the latest value schema in the
/// registry, else the source's catalog.
async fn rules_of(config: &Config, t: &TableConfig, r: &mut Report) {
    let what = format!("rules of {}", t.qualified());
    let parsed = match t.parsed_rules() {
        Ok(p) => p,
        Err(e) => {
            r.fail(&what, e.to_string(), "fix the rule in the config");
            return;
        }
    };
    let columns = match columns(config, t).await {
        Ok(c) => c,
        Err(e) => {
            r.warn(&what, format!("not checked: the table's columns cannot be read ({e})"), "fix the source or the registry connection; the rules are checked again when the consumer starts");
            return;
        }
    };
    let refs: Vec<(&str, &str)> = columns
        .iter()
        .map(|(c, ty)| (c.as_str(), ty.as_str()))
        .collect();
    match rules::compile(&parsed, &refs) {
        Ok(_) => r.ok(
            &what,
            format!("{} rule(s) valid against the table's columns", parsed.len()),
        ),
        Err(e) => r.fail(
            &what,
            e.to_string(),
            "change the rule, or the column it names, in the config",
        ),
    }
}

/// The table's columns (name, type): the registry's latest value schema, else the source's
/// catalog (a table not shipped yet).
async fn columns(config: &Config, t: &TableConfig) -> Result<Vec<(String, String)>, String> {
    let registry = Registry::from_config(&config.registry).map_err(|e| e.to_string())?;
    let subject = format!("{}-value", config.topic(t));
    if let Ok(Some(id)) = registry.latest_id(&subject).await {
        let writer = registry.schema(id).await.map_err(|e| e.to_string())?;
        let fields = schema::row_fields(&writer, "value").map_err(|e| e.to_string())?;
        return Ok(fields.into_iter().map(|f| (f.column, f.pg_type)).collect());
    }
    let client = check::connect(&config.source.url, true, "source").await?;
    let info = catalog::load_table(&client, &t.schema, &t.name, t.watermark_column.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    Ok(info
        .columns
        .into_iter()
        .map(|c| (c.name, c.type_name))
        .collect())
}
