//! PostgreSQL connections: one place that sets the application name and the timeouts that keep
//! the pipeline from ever blocking production, and TLS as libpq's `sslmode` means it ([`tls`]).

pub mod tls;

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("bad connection string '{url}': {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot set up TLS for {url}: {message}")]
    Tls { url: String, message: String },
    #[error(
        "cannot connect to {url}: {}{}",
        with_causes(source),
        connect_hint(source)
    )]
    Connect {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("{context}: {}", with_causes(source))]
    Query {
        context: String,
        source: tokio_postgres::Error,
    },
}

/// What to check after a failed connection, where the cause says.
fn connect_hint(e: &tokio_postgres::Error) -> &'static str {
    let text = with_causes(e);
    if text.contains("Connection refused") {
        " (is PostgreSQL running there, and is the port right?)"
    } else if text.contains("password authentication failed") {
        " (check the role's password: the URL, the password file or the TUNNEL_*_PASSWORD variable)"
    } else if text.contains("does not exist") && text.contains("database") {
        " (check the database name at the end of the URL)"
    } else if text.contains("no pg_hba.conf entry") {
        " (the server's pg_hba.conf does not let this role in from here, or requires TLS: see sslmode)"
    } else {
        ""
    }
}

/// An error with the errors that caused it (tokio-postgres says "error performing TLS
/// handshake" and keeps the reason, an unknown issuer say, as its source).
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

impl PgError {
    pub fn query(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let context = context.into();
        move |source| PgError::Query { context, source }
    }

    /// A bookkeeping table read back with a column of another type than the one created: an
    /// operator changed it by hand.
    pub fn changed_by_hand(
        table: impl std::fmt::Display,
    ) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        Self::query(format!(
            "reading {table}: a column does not have the type the consumer created it with (changed by hand?)"
        ))
    }

    /// The SQLSTATE of a failed query, if the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Query { source, .. } | PgError::Connect { source, .. } => {
                source.code().map(|c| c.code())
            }
            PgError::BadUrl { .. } | PgError::Tls { .. } => None,
        }
    }
}

/// Settings that make `::text` render the same on both servers, for the columns hashed as text.
/// (`work_mem` too: the per-bucket aggregates are sorted to disk under the default 4 MB.)
pub const CANONICAL_TEXT: &str =
    "-c DateStyle=ISO,YMD -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=1 -c bytea_output=hex -c work_mem=64MB";

/// [`CANONICAL_TEXT`] as `SET` statements (`SET LOCAL`: for the current transaction only),
/// each ending in `;`.
pub fn canonical_set(local: bool) -> String {
    let scope = if local { "SET LOCAL" } else { "SET" };
    canonical_settings()
        .map(|(k, v)| format!("{scope} {k} = '{v}';"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `RESET` statements for the settings of [`canonical_set`], each ending in `;`.
pub fn canonical_reset() -> String {
    canonical_settings()
        .map(|(k, _)| format!("RESET {k};"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The (name, value) pairs of [`CANONICAL_TEXT`].
fn canonical_settings() -> impl Iterator<Item = (&'static str, &'static str)> {
    CANONICAL_TEXT
        .split("-c ")
        .filter_map(|kv| kv.trim().split_once('='))
}

/// How a connection behaves on the server.
#[derive(Debug, Clone)]
pub struct Session {
    pub application_name: String,
    pub statement_timeout: Duration,
    /// Zero: PostgreSQL's default (wait for locks for as long as the statement may run).
    pub lock_timeout: Duration,
    /// Every transaction read-only (`default_transaction_read_only`).
    pub read_only: bool,
    /// Render `::text` the same way on every server ([`CANONICAL_TEXT`]).
    pub canonical_text: bool,
}

/// Opens one connection and drives it on the runtime.
pub async fn connect(url: &str, session: &Session) -> Result<Client, PgError> {
    let bad = |message: String| PgError::BadUrl {
        url: redact_url(url),
        message,
    };
    let (plain, tls) = tls::split_url(url).map_err(bad)?;
    let mut config = tokio_postgres::Config::from_str(&plain).map_err(|e| bad(e.to_string()))?;
    config.ssl_mode(tls.ssl_mode());
    let connector = tls::client_config(&tls)
        .map(tokio_postgres_rustls::MakeRustlsConnect::new)
        .map_err(|message| PgError::Tls {
            url: redact_url(url),
            message,
        })?;
    config.application_name(&session.application_name);
    config.connect_timeout(Duration::from_secs(10));
    detect_dead_peers(&mut config);
    let mut options = format!(
        "-c client_min_messages=warning -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        session.statement_timeout.as_millis(),
        (session.statement_timeout.as_millis() * 2).max(60_000)
    );
    if !session.lock_timeout.is_zero() {
        options.push_str(&format!(
            " -c lock_timeout={}",
            session.lock_timeout.as_millis()
        ));
    }
    if session.read_only {
        options.push_str(" -c default_transaction_read_only=on");
    }
    if session.canonical_text {
        options.push(' ');
        options.push_str(CANONICAL_TEXT);
    }
    config.options(&options);
    let (client, connection) =
        config
            .connect(connector)
            .await
            .map_err(|source| PgError::Connect {
                url: redact_url(url),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// libpq's default: no keepalive probe before two hours of silence.
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// A connection that a firewall or a failed host dropped without a word is found dead within
/// about half a minute, instead of an apply or a pass hanging for hours: TCP keepalives after
/// 15 s of silence (every 5 s, 3 unanswered probes), and data left unacknowledged for 60 s
/// closes the connection (`TCP_USER_TIMEOUT`). Settings the URL gives (`keepalives_idle`,
/// `keepalives_interval`, `keepalives_retries`, `tcp_user_timeout`) are kept.
fn detect_dead_peers(config: &mut tokio_postgres::Config) {
    config.keepalives(true);
    if config.get_keepalives_idle() == DEFAULT_KEEPALIVES_IDLE {
        config.keepalives_idle(Duration::from_secs(15));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(5));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(60));
    }
}

/// Quotes an identifier for SQL (`"a""b"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

#[cfg(test)]
mod tests {
    #[test]
    fn connections_detect_a_silently_dropped_peer_unless_the_url_says_otherwise() {
        use std::str::FromStr;
        use std::time::Duration;
        let mut c = tokio_postgres::Config::from_str("postgres://u@h/db").unwrap();
        super::detect_dead_peers(&mut c);
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(15));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(60)));
        let mut c = tokio_postgres::Config::from_str(
            "postgres://u@h/db?keepalives_idle=100&tcp_user_timeout=7",
        )
        .unwrap();
        super::detect_dead_peers(&mut c);
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(100));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(7)));
    }

    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("media"), "\"media\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(qualified("public", "media"), "\"public\".\"media\"");
    }

    #[test]
    fn canonical_settings_become_set_statements() {
        let s = canonical_set(false);
        assert!(s.contains("SET TimeZone = 'UTC';"), "{s}");
        assert!(s.contains("SET DateStyle = 'ISO,YMD';"), "{s}");
        assert!(canonical_set(true).starts_with("SET LOCAL DateStyle = 'ISO,YMD';"));
        assert!(canonical_reset().starts_with("RESET DateStyle; RESET IntervalStyle;"));
    }
}
