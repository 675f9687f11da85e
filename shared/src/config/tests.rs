//! The config's parsing, defaults, overrides and validation.
use super::*;

const MINIMAL: &str = r#"
[source]
url = "postgres://r:pw@127.0.0.1:5433/source"
[target]
url = "postgres://w:pw@127.0.0.1:5434/target"
[kafka]
brokers = "127.0.0.1:9092"
[registry]
url = "http://127.0.0.1:8081/apis/ccompat/v7"
[[tables]]
name = "media"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL, "t.toml", &[]).unwrap();
    assert_eq!(c.tables[0].schema, "public");
    assert_eq!(c.producer.snapshot_chunk_rows, 10_000);
    assert_eq!(c.kafka.partitions, 6);
    assert_eq!(c.topic(&c.tables[0]), "tunnel.public.media");
    assert_eq!(c.tables[0].on_schema_change, SchemaChangePolicy::Evolve);
}

#[test]
fn the_schema_change_policy_is_read_and_checked() {
    let text = format!("{MINIMAL}on_schema_change = \"keep_dropped\"\n");
    let c = Config::parse(&text, "t.toml", &[]).unwrap();
    assert_eq!(
        c.tables[0].on_schema_change,
        SchemaChangePolicy::KeepDropped
    );
    let text = format!("{MINIMAL}on_schema_change = \"drop_all\"\n");
    let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("drop_all"), "{err}");
}

#[test]
fn partial_producer_section_merges_over_defaults() {
    let text = format!("{MINIMAL}\n[producer]\nsnapshot_chunk_rows = 7\n");
    let c = Config::parse(&text, "t.toml", &[]).unwrap();
    assert_eq!(c.producer.snapshot_chunk_rows, 7);
    assert_eq!(c.producer.scan_chunk_rows, 100_000);
}

#[test]
fn unknown_field_is_refused_with_its_name() {
    let text = MINIMAL.replace("[kafka]", "[kafka]\nbrokerz = 1");
    let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("brokerz"), "{err}");
    assert!(err.contains("t.toml"), "{err}");
}

#[test]
fn rules_are_parsed_at_load_and_a_malformed_one_is_a_config_error() {
    let good = format!("{MINIMAL}[[tables.rules]]\nname = \"floor\"\ncheck = \"salary > 10000\"\n");
    let c = Config::parse(&good, "t.toml", &[]).unwrap();
    assert_eq!(c.tables[0].parsed_rules().unwrap()[0].name, "floor");
    let bad = good.replace("salary > 10000", "salary >> 10000");
    let err = Config::parse(&bad, "t.toml", &[]).unwrap_err().to_string();
    assert!(
        err.contains("public.media") && err.contains("floor"),
        "{err}"
    );
    let twice = format!("{good}[[tables.rules]]\nname = \"floor\"\ncheck = \"a > 1\"\n");
    let err = Config::parse(&twice, "t.toml", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("two rules are named 'floor'"), "{err}");
}

#[test]
fn env_overrides_win() {
    let env = vec![("TUNNEL_KAFKA_BROKERS".to_string(), "k:1".to_string())];
    let c = Config::parse(MINIMAL, "t.toml", &env).unwrap();
    assert_eq!(c.kafka.brokers, "k:1");
}

#[test]
fn bad_url_is_refused_without_its_password() {
    let text = MINIMAL.replace("postgres://r:pw@", "mysql://r:secret@");
    let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("source.url"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn no_tables_is_refused() {
    let text = MINIMAL.replace("[[tables]]\nname = \"media\"", "");
    let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("[[tables]]"), "{err}");
}

#[test]
fn properties_that_would_break_exactly_once_are_refused() {
    for key in [
        "isolation.level",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.idempotence",
        "transactional.id",
        "group.id",
    ] {
        let text = MINIMAL.replace(
            "[[tables]]",
            &format!("[kafka.properties]\n\"{key}\" = \"x\"\n[[tables]]"),
        );
        let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains("remove it"), "{err}");
    }
    let ok = MINIMAL.replace(
        "[[tables]]",
        "[kafka.properties]\n\"security.protocol\" = \"SSL\"\n[[tables]]",
    );
    let c = Config::parse(&ok, "t.toml", &[]).unwrap();
    assert_eq!(c.kafka.properties["security.protocol"], "SSL");
}

#[test]
fn settings_too_large_for_the_arithmetic_on_them_are_refused_with_their_name() {
    for (section, name) in [
        ("source", "statement_timeout_ms"),
        ("target", "statement_timeout_ms"),
        ("producer", "heartbeat_interval_ms"),
        ("producer", "horizon_max_wait_s"),
        ("producer", "key_snapshot_max_mb"),
        ("producer", "max_rows_per_second"),
        ("consumer", "batch_max_events"),
        ("consumer", "batch_max_wait_ms"),
        ("health", "ready_within_s"),
        ("alerts", "repeat_after_s"),
    ] {
        // TOML's integers stop at i64::MAX
        let setting = format!("[{section}]\n{name} = {}\n", i64::MAX);
        let header = format!("[{section}]\n");
        let text = if MINIMAL.contains(&header) {
            MINIMAL.replace(&header, &setting)
        } else {
            format!("{MINIMAL}{setting}")
        };
        let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
        assert!(err.contains(name), "{section}.{name}: {err}");
    }
    for name in ["snapshot_chunk_rows", "scan_chunk_rows"] {
        let text = format!("{MINIMAL}[producer]\n{name} = {}\n", i64::MAX);
        let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
        assert!(err.contains(name), "{name}: {err}");
    }
    let text = format!("startup_timeout_s = {}\n{MINIMAL}", i64::MAX);
    let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("startup_timeout_s"), "{err}");
    let text = MINIMAL.replace(
        "[kafka]\n",
        &format!("[kafka]\npartitions = {}\n", i32::MAX),
    );
    let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("kafka.partitions"), "{err}");
    // the largest values allowed load
    let text = format!(
        "{MINIMAL}[producer]\nheartbeat_interval_ms = {}\nscan_chunk_rows = 10000000\n",
        365 * 24 * 3600 * 1000_u64
    );
    assert!(Config::parse(&text, "t.toml", &[]).is_ok());
}

#[test]
fn zero_intervals_are_refused_but_reconciliation_may_be_off() {
    for name in [
        "delete_interval_ms",
        "repair_interval_ms",
        "insert_interval_ms",
    ] {
        let text = format!("{MINIMAL}[producer]\n{name} = 0\n");
        let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
    let text = format!("{MINIMAL}[producer]\nreconcile_interval_ms = 0\n");
    assert!(Config::parse(&text, "t.toml", &[]).is_ok());
}

#[test]
fn redacts_passwords() {
    assert_eq!(
        redact_url("postgres://u:secret@h:1/db"),
        "postgres://u:***@h:1/db"
    );
    assert_eq!(redact_url("postgres://u@h:1/db"), "postgres://u@h:1/db");
    assert_eq!(redact_url("http://h:8081/x"), "http://h:8081/x");
}

#[test]
fn tls_keys_go_into_the_url_as_libpq_parameters() {
    let text = MINIMAL.replace(
        "url = \"postgres://r:pw@127.0.0.1:5433/source\"",
        "url = \"postgres://r:pw@127.0.0.1:5433/source\"\nsslmode = \"verify-full\"\nsslrootcert = \"/etc/ssl/ca.pem\"",
    );
    let c = Config::parse(&text, "t.toml", &[]).unwrap();
    assert_eq!(
        c.source.url,
        "postgres://r:pw@127.0.0.1:5433/source?sslmode=verify-full&sslrootcert=%2Fetc%2Fssl%2Fca.pem"
    );
    let env = [(
        "TUNNEL_SOURCE_URL".to_string(),
        "postgres://r:pw@db:5432/s?sslmode=disable".to_string(),
    )];
    let e = Config::parse(&text, "t.toml", &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("source.sslmode = 'verify-full' contradicts"),
        "{e}"
    );
}

#[test]
fn a_password_from_a_file_or_the_environment_goes_into_the_url() {
    let dir = std::env::temp_dir().join(format!("tunnel_cfgpw_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("pw");
    std::fs::write(&f, "fi:le\n").unwrap();
    let text = MINIMAL.replace(
        "url = \"postgres://r:pw@127.0.0.1:5433/source\"",
        &format!(
            "url = \"postgres://r@127.0.0.1:5433/source\"\npassword_file = \"{}\"",
            f.display()
        ),
    );
    let c = Config::parse(&text, "t.toml", &[]).unwrap();
    assert_eq!(c.source.url, "postgres://r:fi%3Ale@127.0.0.1:5433/source");
    let env = [("TUNNEL_SOURCE_PASSWORD".to_string(), "env".to_string())];
    let c = Config::parse(&text, "t.toml", &env).unwrap();
    assert_eq!(c.source.url, "postgres://r:env@127.0.0.1:5433/source");
    // the minimal config's URL has a password: a second one is refused, not shown
    let env = [("TUNNEL_TARGET_PASSWORD".to_string(), "s3cret".to_string())];
    let e = Config::parse(MINIMAL, "t.toml", &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("target.url has a password already") && !e.contains("s3cret"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_toml_error_is_one_line_with_its_line_and_column() {
    let text = "[source]\nurl = \"x\"\n[target]\nurl = \n";
    let err = Config::parse(text, "t.toml", &[]).unwrap_err().to_string();
    assert!(!err.contains('\n'), "{err}");
    assert!(
        err.starts_with("config file t.toml is not valid: line 4, column 7: "),
        "{err}"
    );
    let text = format!("{MINIMAL}bogus = 1\n");
    let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(
        err.contains("line 12, column 1: unknown field `bogus`"),
        "{err}"
    );
    assert!(!err.contains('|'), "{err}");
}

#[test]
fn trigger_capture_is_read_per_table_and_its_change_table_name_checked() {
    let text = format!("{MINIMAL}capture = \"trigger\"\n");
    let c = Config::parse(&text, "t.toml", &[]).unwrap();
    assert_eq!(c.tables[0].capture, Capture::Trigger);
    assert_eq!(c.tables[0].change_table_name(), "public_media_cdc");
    assert_eq!(c.source.capture_schema, "data_tunnel");
    let long = "x".repeat(60);
    let text = MINIMAL.replace(
        "name = \"media\"",
        &format!("name = \"{long}\"\ncapture = \"trigger\""),
    );
    let err = Config::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("longer than PostgreSQL's 63 bytes"), "{err}");
}
