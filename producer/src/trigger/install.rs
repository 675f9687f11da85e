//! `tunnel-producer install` and `uninstall`: the change table, trigger functions and triggers
//! of trigger capture, created or removed in one transaction per table, as a role that owns the
//! table (or a superuser); the producer's own role (the user of `source.url`) is then granted
//! what it needs to read and trim the change table, and nothing else.
//!
//! Every statement is built from the catalog's names and types, quoted here; `--dry-run` prints
//! them instead of running them.

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::Client;
use tunnel_shared::catalog::{self, CatalogError, TableInfo};
use tunnel_shared::config::{Capture, Config, SourceConfig, TableConfig};
use tunnel_shared::pg::{self, quote_ident, PgError, Session};

use super::names::{Objects, ROW_TRIGGER, TRUNCATE_TRIGGER};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("table {table}: {problem}")]
    Refused { table: String, problem: String },
    #[error("{0}")]
    Usage(String),
}

/// What to do.
pub struct Request<'a> {
    pub config: &'a Config,
    /// One table (`schema.name` or `name`); all that apply when `None`.
    pub table: Option<&'a str>,
    /// Connect as this role instead of `source.url`'s (one that owns the tables).
    pub url: Option<&'a str>,
    pub dry_run: bool,
}

/// Creates (or brings up to date) the objects of every table in trigger capture, or of
/// `request.table` whatever its capture.
pub async fn install(request: Request<'_>) -> Result<(), InstallError> {
    let tables: Vec<&TableConfig> = match request.table {
        Some(t) => vec![find_table(request.config, t)?],
        None => {
            let all: Vec<&TableConfig> = request
                .config
                .tables
                .iter()
                .filter(|t| t.capture == Capture::Trigger)
                .collect();
            if all.is_empty() {
                return Err(InstallError::Usage(
                    "no table has capture = \"trigger\" in the config: set it, or name a table with --table".into(),
                ));
            }
            all
        }
    };
    let source = &request.config.source;
    let client = connect(source, request.url).await?;
    let reader = reader_role(&source.url);
    for t in tables {
        let objects = Objects::new(source, t);
        let info = catalog::load_table(&client, &t.schema, &t.name, None).await?;
        check_rights(&client, &objects, reader.as_deref()).await?;
        let statements = install_sql(&objects, &info, reader.as_deref());
        if request.dry_run {
            print_statements(&format!("install {}", objects.source_name()), &statements);
            continue;
        }
        run_in_transaction(&client, &statements, source.lock_timeout_ms, &objects).await?;
        println!(
            "installed trigger capture on {} (change table {}.{}{})",
            objects.source_name(),
            objects.schema,
            objects.change_table,
            match (&reader, t.capture) {
                (_, Capture::Poll) =>
                    "; the table is still in poll capture: set capture = \"trigger\" to use it"
                        .to_string(),
                (Some(r), _) => format!("; role {r} may read and trim it"),
                (None, _) => String::new(),
            }
        );
    }
    Ok(())
}

/// Removes the objects of `request.table` (whether or not it is still in the config), or of
/// every table that has a change table in the capture schema; the schema goes too when
/// nothing else is left in it.
pub async fn uninstall(request: Request<'_>) -> Result<(), InstallError> {
    let source = &request.config.source;
    let client = connect(source, request.url).await?;
    let objects: Vec<Objects> = match request.table {
        Some(t) => {
            let (schema, name) = split_table(t);
            vec![Objects::of(source, schema, name)]
        }
        None => change_tables(&client, &source.capture_schema).await?,
    };
    for o in &objects {
        let source_exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&o.source_sql()])
            .await
            .map_err(PgError::query("looking up the table"))?
            .get(0);
        let statements = uninstall_sql(o, source_exists);
        if request.dry_run {
            print_statements(&format!("uninstall {}", o.source_name()), &statements);
            continue;
        }
        run_in_transaction(&client, &statements, source.lock_timeout_ms, o).await?;
        println!("removed trigger capture from {}", o.source_name());
    }
    let schema = &source.capture_schema;
    let left: Option<i64> = client
        .query_opt(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = n.oid)
                  + (SELECT count(*) FROM pg_proc WHERE pronamespace = n.oid)
                  + (SELECT count(*) FROM pg_type WHERE typnamespace = n.oid AND typrelid = 0)
               FROM pg_namespace n WHERE n.nspname = $1",
            &[schema],
        )
        .await
        .map_err(PgError::query(
            "counting what is left in the capture schema",
        ))?
        .map(|r| r.get(0));
    let drop = format!("DROP SCHEMA IF EXISTS {}", quote_ident(schema));
    match left {
        _ if request.dry_run => {
            println!("-- when nothing else is left in schema {schema}:\n{drop};")
        }
        Some(0) => {
            client
                .batch_execute(&drop)
                .await
                .map_err(PgError::query(format!("dropping schema {schema}")))?;
            println!("removed schema {schema}");
        }
        Some(n) => println!("schema {schema} kept: {n} other objects are in it"),
        None => {}
    }
    Ok(())
}

/// The config's entry for `name` (`schema.name`, or `name` in the public schema).
fn find_table<'a>(config: &'a Config, name: &str) -> Result<&'a TableConfig, InstallError> {
    let (schema, table) = split_table(name);
    config
        .tables
        .iter()
        .find(|t| t.schema == schema && t.name == table)
        .ok_or_else(|| {
            InstallError::Usage(format!(
                "table {name} is not in the config's [[tables]]: add it first"
            ))
        })
}

fn split_table(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or(("public", name))
}

async fn connect(source: &SourceConfig, url: Option<&str>) -> Result<Client, PgError> {
    let session = Session {
        application_name: format!("{}-install", source.application_name),
        statement_timeout: Duration::from_millis(source.statement_timeout_ms),
        lock_timeout: Duration::from_millis(source.lock_timeout_ms),
        read_only: false,
        canonical_text: false,
    };
    pg::connect(url.unwrap_or(&source.url), &session).await
}

/// The role the producer reads the source as: the user of `source.url`.
fn reader_role(url: &str) -> Option<String> {
    let (plain, _) = pg::tls::split_url(url).ok()?;
    tokio_postgres::Config::from_str(&plain)
        .ok()?
        .get_user()
        .map(str::to_string)
}

/// The change tables install created in `schema`, by their comment.
async fn change_tables(client: &Client, schema: &str) -> Result<Vec<Objects>, PgError> {
    let rows = client
        .query(
            "SELECT c.relname::text, obj_description(c.oid, 'pg_class')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'r'
              ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(PgError::query("listing the change tables"))?;
    let mut out = Vec::new();
    for r in rows {
        let (change_table, comment): (String, Option<String>) = (r.get(0), r.get(1));
        let Some(source) = comment.and_then(|c| {
            c.strip_prefix("data tunnel change table of ")
                .map(str::to_string)
        }) else {
            continue;
        };
        let (s, n) = split_table(&source);
        out.push(Objects {
            schema: schema.to_string(),
            change_table,
            source_schema: s.to_string(),
            source_name: n.to_string(),
        });
    }
    Ok(out)
}

/// What keeps trigger capture of a table from working, if anything: its change table missing
/// (or not readable), or its triggers missing or not enabled ALWAYS (writes under
/// `session_replication_role = replica` would not be recorded).
pub async fn installed(
    client: &Client,
    o: &Objects,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL
                    AND has_table_privilege(to_regclass($1), 'SELECT')
                    AND has_table_privilege(to_regclass($1), 'DELETE'),
                    (SELECT count(*) FROM pg_trigger
                      WHERE tgrelid = to_regclass($2) AND tgname IN ($3, $4) AND tgenabled = 'A')",
            &[
                &o.change_table_sql(),
                &o.source_sql(),
                &ROW_TRIGGER,
                &TRUNCATE_TRIGGER,
            ],
        )
        .await?;
    let (table_there, enabled): (Option<bool>, i64) = (row.get(0), row.get(1));
    Ok(if table_there != Some(true) {
        Some(format!(
            "its change table {}.{} does not exist, or the role may not read and trim it",
            o.schema, o.change_table
        ))
    } else if enabled != 2 {
        Some(format!(
            "its triggers {ROW_TRIGGER} and {TRUNCATE_TRIGGER} are missing or not enabled ALWAYS ({enabled} of 2 are)"
        ))
    } else {
        None
    })
}

/// Refuses, naming what is missing, when the connected role cannot create the objects.
async fn check_rights(
    client: &Client,
    o: &Objects,
    reader: Option<&str>,
) -> Result<(), InstallError> {
    let row = client
        .query_one(
            "SELECT current_user::text,
                    pg_has_role(current_user, c.relowner, 'USAGE'),
                    pg_get_userbyid(c.relowner)::text,
                    (SELECT oid FROM pg_namespace WHERE nspname = $2) IS NOT NULL,
                    has_database_privilege(current_database(), 'CREATE'),
                    COALESCE((SELECT has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = $2), false),
                    current_database()::text,
                    $3::text IS NULL OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $3),
                    (SELECT obj_description(t.oid, 'pg_class') FROM pg_class t
                      WHERE t.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $2)
                        AND t.relname = $4)
               FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&o.source_sql(), &o.schema, &reader, &o.change_table],
        )
        .await
        .map_err(PgError::query("checking the role's rights"))?;
    let refused = |problem: String| InstallError::Refused {
        table: o.source_name(),
        problem,
    };
    let (user, owns, owner): (String, bool, String) = (row.get(0), row.get(1), row.get(2));
    let (schema_exists, db_create, schema_create): (bool, bool, bool) =
        (row.get(3), row.get(4), row.get(5));
    let (database, reader_exists, comment): (String, bool, Option<String>) =
        (row.get(6), row.get(7), row.get(8));
    if !owns {
        return Err(refused(format!(
            "role {user} may not install triggers on it: enabling a trigger ALWAYS needs the table's owner ({owner}) or a superuser; run install as that role (--url or TUNNEL_INSTALL_URL)"
        )));
    }
    if !schema_exists && !db_create {
        return Err(refused(format!(
            "role {user} may not create schema {}: GRANT CREATE ON DATABASE {database} TO {user}, or create the schema and GRANT CREATE ON it",
            o.schema
        )));
    }
    if schema_exists && !schema_create {
        return Err(refused(format!(
            "role {user} may not create objects in schema {}: GRANT CREATE ON SCHEMA {} TO {user}",
            o.schema, o.schema
        )));
    }
    if !reader_exists {
        return Err(refused(format!(
            "role {} of source.url does not exist",
            reader.unwrap_or_default()
        )));
    }
    if let Some(c) = comment {
        if c != o.comment() {
            return Err(refused(format!(
                "{}.{} exists and is not its change table ({c}): rename one of the tables, or set source.capture_schema",
                o.schema, o.change_table
            )));
        }
    }
    Ok(())
}

/// A string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `jsonb_build_array(NEW."a", NEW."b")`.
fn key_array(table: &TableInfo, row: &str) -> String {
    let cols: Vec<String> = table
        .key_columns()
        .map(|c| format!("{row}.{}", quote_ident(&c.name)))
        .collect();
    format!("jsonb_build_array({})", cols.join(", "))
}

/// A dollar-quote tag that does not occur in `body`.
fn dollar_tag(body: &str) -> String {
    let mut n = 0;
    loop {
        let tag = format!("$tunnel{n}$");
        if !body.contains(&tag) {
            return tag;
        }
        n += 1;
    }
}

fn function_sql(name: &str, body: &str) -> String {
    let tag = dollar_tag(body);
    format!(
        "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {tag}\nBEGIN\n{body}  RETURN NULL;\nEND\n{tag}"
    )
}

/// The statements of `install` for one table, in order (one transaction).
pub fn install_sql(o: &Objects, table: &TableInfo, reader: Option<&str>) -> Vec<String> {
    let ct = o.change_table_sql();
    let src = o.source_sql();
    let key_tuple = |row: &str| {
        let cols: Vec<String> = table
            .key_columns()
            .map(|c| format!("{row}.{}", quote_ident(&c.name)))
            .collect();
        format!("({})", cols.join(", "))
    };
    let row_body = format!(
        "  IF TG_OP = 'DELETE' THEN\n    INSERT INTO {ct} (action, key) VALUES ('D', {old});\n  ELSIF TG_OP = 'UPDATE' THEN\n    INSERT INTO {ct} (action, key, old_key, \"row\") VALUES ('U', {new}, CASE WHEN {old_t} IS DISTINCT FROM {new_t} THEN {old} END, to_jsonb(NEW));\n  ELSE\n    INSERT INTO {ct} (action, key, \"row\") VALUES ('I', {new}, to_jsonb(NEW));\n  END IF;\n",
        old = key_array(table, "OLD"),
        new = key_array(table, "NEW"),
        old_t = key_tuple("OLD"),
        new_t = key_tuple("NEW"),
    );
    // a single integer key is kept by the producer as a set: a marker is enough for it to
    // find what a TRUNCATE removed; any other key is written out, one delete per row
    let mut truncate_body = String::new();
    if table.integer_key().is_none() {
        let _ = writeln!(
            truncate_body,
            "  INSERT INTO {ct} (action, key) SELECT 'D', {} FROM ONLY {src} t;",
            key_array(table, "t")
        );
    }
    let _ = writeln!(truncate_body, "  INSERT INTO {ct} (action) VALUES ('T');");
    let row_fn = o.row_function_sql();
    let truncate_fn = o.truncate_function_sql();
    let mut sql = vec![
        format!("CREATE SCHEMA IF NOT EXISTS {}", o.schema_sql()),
        format!(
            "CREATE TABLE IF NOT EXISTS {ct} (\n  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),\n  action \"char\" NOT NULL,\n  key jsonb,\n  old_key jsonb,\n  \"row\" jsonb,\n  at timestamptz NOT NULL DEFAULT now()\n)"
        ),
        format!("COMMENT ON TABLE {ct} IS {}", literal(&o.comment())),
        function_sql(&row_fn, &row_body),
        function_sql(&truncate_fn, &truncate_body),
        format!("REVOKE ALL ON FUNCTION {row_fn}(), {truncate_fn}() FROM PUBLIC"),
        format!(
            "CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {src} FOR EACH ROW EXECUTE FUNCTION {row_fn}()",
            quote_ident(ROW_TRIGGER)
        ),
        format!(
            "ALTER TABLE {src} ENABLE ALWAYS TRIGGER {}",
            quote_ident(ROW_TRIGGER)
        ),
        format!(
            "CREATE OR REPLACE TRIGGER {} BEFORE TRUNCATE ON {src} FOR EACH STATEMENT EXECUTE FUNCTION {truncate_fn}()",
            quote_ident(TRUNCATE_TRIGGER)
        ),
        format!(
            "ALTER TABLE {src} ENABLE ALWAYS TRIGGER {}",
            quote_ident(TRUNCATE_TRIGGER)
        ),
    ];
    if let Some(r) = reader {
        sql.push(format!(
            "GRANT USAGE ON SCHEMA {} TO {}",
            o.schema_sql(),
            quote_ident(r)
        ));
        sql.push(format!(
            "GRANT SELECT, DELETE ON {ct} TO {}",
            quote_ident(r)
        ));
    }
    sql
}

/// The statements of `uninstall` for one table (the triggers only if the table still exists).
pub fn uninstall_sql(o: &Objects, source_exists: bool) -> Vec<String> {
    let mut sql = Vec::new();
    if source_exists {
        for t in [ROW_TRIGGER, TRUNCATE_TRIGGER] {
            sql.push(format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                quote_ident(t),
                o.source_sql()
            ));
        }
    }
    sql.push(format!(
        "DROP FUNCTION IF EXISTS {}()",
        o.row_function_sql()
    ));
    sql.push(format!(
        "DROP FUNCTION IF EXISTS {}()",
        o.truncate_function_sql()
    ));
    sql.push(format!("DROP TABLE IF EXISTS {}", o.change_table_sql()));
    sql
}

fn print_statements(what: &str, statements: &[String]) {
    println!("-- {what}\nBEGIN;");
    for s in statements {
        println!("{s};");
    }
    println!("COMMIT;");
}

async fn run_in_transaction(
    client: &Client,
    statements: &[String],
    lock_timeout_ms: u64,
    o: &Objects,
) -> Result<(), InstallError> {
    let mut script = format!("BEGIN;\nSET LOCAL lock_timeout = {lock_timeout_ms};\n");
    for s in statements {
        script.push_str(s);
        script.push_str(";\n");
    }
    script.push_str("COMMIT;");
    if let Err(e) = client.batch_execute(&script).await {
        let _ = client.batch_execute("ROLLBACK").await;
        let hint = match e.code().map(|c| c.code()) {
            Some("55P03") => " (the table was busy: a long transaction holds it; try again)",
            Some("42501") => " (permission denied: run install as the table's owner)",
            _ => "",
        };
        return Err(InstallError::Refused {
            table: o.source_name(),
            problem: format!("{}{hint}", pg::PgError::query("running the statements")(e)),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tunnel_shared::catalog::{Column, ColumnKind};

    use super::*;

    fn table(key_kind: ColumnKind, type_name: &str) -> TableInfo {
        TableInfo {
            schema: "public".into(),
            name: "emp \"x\"".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_name: type_name.into(),
                    kind: key_kind,
                    nullable: false,
                    attnum: 1,
                    default: None,
                },
                Column {
                    name: "name".into(),
                    type_name: "text".into(),
                    kind: ColumnKind::Text,
                    nullable: true,
                    attnum: 2,
                    default: None,
                },
            ],
            key: vec![0],
            watermark: None,
        }
    }

    fn objects() -> Objects {
        Objects {
            schema: "data_tunnel".into(),
            change_table: "public_emp \"x\"_cdc".into(),
            source_schema: "public".into(),
            source_name: "emp \"x\"".into(),
        }
    }

    #[test]
    fn install_quotes_every_name_and_grants_the_reader() {
        let sql = install_sql(
            &objects(),
            &table(ColumnKind::Int4, "integer"),
            Some("reader"),
        );
        let all = sql.join(";\n");
        assert!(all.contains("\"public\".\"emp \"\"x\"\"\""), "{all}");
        assert!(all.contains("\"data_tunnel\".\"public_emp \"\"x\"\"_cdc\""));
        assert!(all.contains("ENABLE ALWAYS TRIGGER \"data_tunnel_capture\""));
        assert!(all.contains("BEFORE TRUNCATE"));
        assert!(all.contains("GRANT SELECT, DELETE ON"));
        assert!(all.contains("jsonb_build_array(OLD.\"id\")"));
        // an integer key: only a marker on TRUNCATE
        assert!(!all.contains("FROM ONLY"));
        assert!(all.contains("'emp \"x\"'") || all.contains("of public.emp \"x\"'"));
    }

    #[test]
    fn a_text_key_writes_every_key_out_on_truncate() {
        let sql = install_sql(&objects(), &table(ColumnKind::Text, "text"), None);
        let all = sql.join(";\n");
        assert!(all.contains("SELECT 'D', jsonb_build_array(t.\"id\") FROM ONLY"));
        assert!(!all.contains("GRANT"));
    }

    #[test]
    fn the_dollar_tag_is_not_in_the_body() {
        assert_eq!(dollar_tag("x"), "$tunnel0$");
        assert_eq!(dollar_tag("a $tunnel0$ b"), "$tunnel1$");
    }

    #[test]
    fn uninstall_drops_the_triggers_only_when_the_table_exists() {
        assert_eq!(uninstall_sql(&objects(), true).len(), 5);
        let gone = uninstall_sql(&objects(), false);
        assert_eq!(gone.len(), 3);
        assert!(gone.iter().all(|s| !s.contains("TRIGGER")));
    }

    #[test]
    fn the_reader_is_the_user_of_the_source_url() {
        assert_eq!(
            reader_role("postgres://tunnel_reader:pw@localhost:5432/app").as_deref(),
            Some("tunnel_reader")
        );
    }
}
