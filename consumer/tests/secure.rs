//! The whole pipeline through the stack's secured listeners (`scripts/stack.sh` makes them):
//! both databases over TLS (`verify-full` against the stack's CA; the source's settings in its
//! URL, the target's as config keys) as a role that may only log
//! in over TLS, Kafka over SASL_SSL with SCRAM-SHA-512, and a registry over HTTPS (checked
//! against `registry.ca_file`) behind HTTP basic authentication; every password from a file. Then the failures an operator meets first: a
//! wrong CA or a wrong password stops the process within seconds, naming the endpoint and what
//! to check, never a secret; and no log of the run holds one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tunnel_shared::testkit::{self as tk, Databases, PrivateRegistry, Proc};

const TIMEOUT: Duration = Duration::from_secs(90);
/// How soon a refused certificate or password must stop a process.
const FAIL_FAST: Duration = Duration::from_secs(30);

const ITEMS: &str = "CREATE TABLE items (
    id int PRIMARY KEY, name text, qty int NOT NULL, updated_at timestamp DEFAULT now());
    INSERT INTO items (id, name, qty) SELECT i, 'item ' || i, i FROM generate_series(1, 50) i";

/// What `scripts/stack.sh env` says about the secured listeners.
struct Secured {
    tls_dir: PathBuf,
    kafka_brokers: String,
    kafka_user: String,
    pg_user: String,
}

impl Secured {
    fn from_env() -> Secured {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests through scripts/test.sh (or eval \"$(scripts/stack.sh env)\")")
            })
        };
        Secured {
            tls_dir: PathBuf::from(var("TUNNEL_STACK_TLS_DIR")),
            kafka_brokers: var("TUNNEL_STACK_KAFKA_SECURE_BROKERS"),
            kafka_user: var("TUNNEL_STACK_KAFKA_USER"),
            pg_user: var("TUNNEL_STACK_PG_TLS_USER"),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.tls_dir.join(name)
    }

    fn secret(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.file(name)).unwrap();
        text.trim_end_matches(['\n', '\r']).to_string()
    }

    /// `url` (a stack URL with its database) as the TLS-only role, verifying the server
    /// against `ca`.
    fn pg_url(&self, url: &str, ca: &Path) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let host_and_db = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        format!(
            "{scheme}://{}@{host_and_db}?sslmode=verify-full&sslrootcert={}",
            self.pg_user,
            ca.display()
        )
    }
}

/// The databases with `items`, the TLS-only role granted what the pipeline needs: SELECT on
/// the source, the target's database to create its tables and bookkeeping in.
async fn databases(s: &Secured) -> Databases {
    let dbs = Databases::create().await;
    let source = dbs.source().await;
    source.batch_execute(ITEMS).await.unwrap();
    source
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {db} TO {u}; GRANT USAGE ON SCHEMA public TO {u}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {u}",
            db = dbs.name,
            u = s.pg_user
        ))
        .await
        .unwrap();
    let target = dbs.target().await;
    target
        .batch_execute(&format!(
            "GRANT CONNECT, CREATE ON DATABASE {db} TO {u}; GRANT ALL ON SCHEMA public TO {u}",
            db = dbs.name,
            u = s.pg_user
        ))
        .await
        .unwrap();
    // the tables the consumer creates, as the TLS role, readable by the test's role
    let (_, rest) = dbs.target_url.split_once("://").unwrap();
    let test_role = rest.split([':', '@']).next().unwrap();
    let url = s.pg_url(&dbs.target_url, &s.file("ca.pem")).replacen(
        '@',
        &format!(":{}@", s.secret("pg-password")),
        1,
    );
    let session = tunnel_shared::pg::Session {
        application_name: "secure-test".into(),
        statement_timeout: Duration::from_secs(30),
        lock_timeout: Duration::ZERO,
        read_only: false,
        canonical_text: false,
    };
    tunnel_shared::pg::connect(&url, &session)
        .await
        .unwrap()
        .batch_execute(&format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {test_role}"
        ))
        .await
        .unwrap();
    dbs
}

/// A config that reaches everything through the secured listeners; `kafka` and `source_ca`
/// replace the right settings for the failure cases.
struct Settings<'a> {
    source_ca: PathBuf,
    kafka: String,
    registry: &'a str,
    /// `registry.ca_file`, for an https:// registry.
    registry_ca: Option<PathBuf>,
}

fn write_config(s: &Secured, dbs: &Databases, settings: &Settings<'_>) -> PathBuf {
    let dir = std::env::temp_dir().join(tk::unique("tunnel_secure"));
    std::fs::create_dir_all(&dir).unwrap();
    let registry_pw = dir.join("registry-password");
    std::fs::write(&registry_pw, format!("{REGISTRY_PASSWORD}\n")).unwrap();
    let text = format!(
        r#"[source]
url = "{source}"
password_file = "{pg_pw}"
[target]
url = "{target}"
password_file = "{pg_pw}"
sslmode = "verify-full"
sslrootcert = "{target_ca}"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
consumer_group = "{group}"
partitions = 3
{kafka}
[registry]
url = "{registry}"
username = "tunnel"
password_file = "{registry_pw}"
{registry_ca}
[producer]
insert_interval_ms = 50
update_interval_ms = 100
delete_interval_ms = 200
checkpoint_interval_ms = 500
[consumer]
batch_max_wait_ms = 20
[[tables]]
name = "items"
[[tables.rules]]
name = "qty_not_negative"
check = "qty >= 0"
"#,
        source = s.pg_url(&dbs.source_admin_url, &settings.source_ca),
        // the source's TLS settings in its URL, the target's as config keys
        target = s
            .pg_url(&dbs.target_url, &s.file("ca.pem"))
            .split('?')
            .next()
            .unwrap(),
        target_ca = s.file("ca.pem").display(),
        pg_pw = s.file("pg-password").display(),
        brokers = s.kafka_brokers,
        prefix = tk::unique("sec"),
        group = tk::unique("g"),
        kafka = settings.kafka,
        registry = settings.registry,
        registry_pw = registry_pw.display(),
        registry_ca = settings
            .registry_ca
            .as_ref()
            .map_or(String::new(), |ca| format!(
                "ca_file = \"{}\"",
                ca.display()
            )),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const REGISTRY_PASSWORD: &str = "s3cret-registry-pw";

/// SASL_SSL with SCRAM-SHA-512, the password from `password_file`, trusting `ca`.
fn kafka_settings(s: &Secured, password_file: &Path, ca: &Path) -> String {
    format!(
        "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
         sasl_username = \"{}\"\nsasl_password_file = \"{}\"\nssl_ca_location = \"{}\"",
        s.kafka_user,
        password_file.display(),
        ca.display()
    )
}

/// Waits until `dlq list` counts `n` pending entries.
async fn wait_dlq_pending(config: &Path, n: usize) {
    tk::wait_for("the DLQ entries", TIMEOUT, || async {
        let (code, out, _) = tk::consumer_cli(&["dlq", "list"], config, &[]);
        (code == 0 && out.contains(&format!(": {n} pending"))).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_through_the_secured_listeners_and_no_log_holds_a_secret() {
    let s = Secured::from_env();
    let (cert, key) = (s.file("server.pem"), s.file("server.key"));
    let registry = tokio::task::spawn_blocking(move || {
        PrivateRegistry::start_secured(&tk::brokers(), "tunnel", REGISTRY_PASSWORD, &cert, &key)
    })
    .await
    .unwrap();
    let dbs = databases(&s).await;
    let settings = Settings {
        source_ca: s.file("ca.pem"),
        kafka: kafka_settings(&s, &s.file("kafka-password"), &s.file("ca.pem")),
        registry: &registry.url(),
        registry_ca: Some(s.file("ca.pem")),
    };
    let config = write_config(&s, &dbs, &settings);
    let producer = Proc::start("producer", &config);
    let consumer = Proc::start("consumer", &config);
    // the snapshot
    tk::wait_identical(&dbs, "items", TIMEOUT, &[&producer, &consumer]).await;
    // streaming: an insert, an update, a delete
    let source = dbs.source().await;
    source
        .batch_execute(
            "INSERT INTO items (id, name, qty) VALUES (51, 'new', 5); \
             UPDATE items SET name = 'changed', updated_at = now() WHERE id = 5; \
             DELETE FROM items WHERE id = 7",
        )
        .await
        .unwrap();
    tk::wait_identical(&dbs, "items", TIMEOUT, &[&producer, &consumer]).await;
    // a row the rule refuses goes to the DLQ; its delete follows it there (the key is parked)
    source
        .batch_execute("INSERT INTO items (id, name, qty) VALUES (52, 'bad', -1)")
        .await
        .unwrap();
    wait_dlq_pending(&config, 1).await;
    source
        .batch_execute("DELETE FROM items WHERE id = 52")
        .await
        .unwrap();
    tk::wait_identical(&dbs, "items", TIMEOUT, &[&producer, &consumer]).await;
    let (_, shown, shown_err) = tk::consumer_cli(&["dlq", "show"], &config, &[]);
    assert!(shown.contains("qty_not_negative"), "{shown}{shown_err}");
    let (code, verified) = tk::verify(&config, &[]);
    assert_eq!(code, 0, "verify: {verified}");

    let secrets = [
        s.secret("pg-password"),
        s.secret("kafka-password"),
        REGISTRY_PASSWORD.to_string(),
    ];
    let outputs = [
        ("the producer's log", producer.log_text()),
        ("the consumer's log", consumer.log_text()),
        ("dlq show", format!("{shown}{shown_err}")),
        ("verify", verified),
    ];
    for (what, text) in &outputs {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} shows a secret");
        }
    }

    // the registry's certificate checked against a CA that did not sign it: refused at once
    let wrong = Settings {
        registry_ca: Some(s.file("other-ca.pem")),
        ..settings
    };
    let log = fails_fast(&write_config(&s, &dbs, &wrong));
    assert!(
        log.contains(&registry.url()) && log.contains("registry.ca_file"),
        "{log}"
    );
    assert!(!log.contains(REGISTRY_PASSWORD), "{log}");
}

/// Runs `tunnel-producer run` with `config` and returns its log once it exited, which must be
/// within [`FAIL_FAST`] and with a failure.
fn fails_fast(config: &Path) -> String {
    let started = Instant::now();
    let mut producer = Proc::start("producer", config);
    let status = producer.wait_exit(FAIL_FAST);
    let log = producer.log_text();
    assert!(!status.success(), "the producer ran: {log}");
    assert!(started.elapsed() < FAIL_FAST, "{log}");
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_or_password_stops_the_process_at_once_naming_the_endpoint() {
    let s = Secured::from_env();
    let dbs = databases(&s).await;
    let (ca, other_ca) = (s.file("ca.pem"), s.file("other-ca.pem"));
    let dir = std::env::temp_dir().join(tk::unique("tunnel_wrong"));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong_pw = dir.join("wrong-password");
    std::fs::write(&wrong_pw, "not-the-password\n").unwrap();
    let registry = tk::registry_url();
    let secrets = [s.secret("pg-password"), s.secret("kafka-password")];
    let no_secret = |log: &str| {
        for secret in &secrets {
            assert!(!log.contains(secret.as_str()), "a secret is shown: {log}");
        }
        assert!(!log.contains("not-the-password"), "{log}");
    };

    // Kafka: a password the brokers refuse, then a CA that did not sign their certificate
    for (password, trusted, expected) in [
        (&wrong_pw, &ca, "kafka.sasl_username"),
        (
            &s.file("kafka-password"),
            &other_ca,
            "kafka.ssl_ca_location",
        ),
    ] {
        let settings = Settings {
            source_ca: ca.clone(),
            kafka: kafka_settings(&s, password, trusted),
            registry: &registry,
            registry_ca: None,
        };
        let log = fails_fast(&write_config(&s, &dbs, &settings));
        assert!(
            log.contains(&format!("kafka at {} refused this client", s.kafka_brokers))
                && log.contains(expected),
            "{log}"
        );
        no_secret(&log);
    }

    // PostgreSQL: a CA that did not sign the server's certificate
    let settings = Settings {
        source_ca: other_ca.clone(),
        kafka: kafka_settings(&s, &s.file("kafka-password"), &ca),
        registry: &registry,
        registry_ca: None,
    };
    let log = fails_fast(&write_config(&s, &dbs, &settings));
    assert!(
        log.contains(&format!("postgres://{}:***@127.0.0.1", s.pg_user))
            && log.contains("invalid peer certificate"),
        "{log}"
    );
    no_secret(&log);

    // PostgreSQL: a password the server refuses
    let settings = Settings {
        source_ca: ca.clone(),
        kafka: kafka_settings(&s, &s.file("kafka-password"), &ca),
        registry: &registry,
        registry_ca: None,
    };
    let config = write_config(&s, &dbs, &settings);
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        &format!("password_file = \"{}\"", s.file("pg-password").display()),
        &format!("password_file = \"{}\"", wrong_pw.display()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let log = fails_fast(&config);
    assert!(
        log.contains(&format!("postgres://{}:***@127.0.0.1", s.pg_user))
            && log.contains("password authentication failed"),
        "{log}"
    );
    no_secret(&log);
}
