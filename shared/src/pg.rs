//! PostgreSQL connections: one place that sets the application name and the timeouts that keep
//! the pipeline from ever blocking production.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::config::redact_url;
use crate::retry::Retryable;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("bad connection string '{url}': {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("{context}: {source}")]
    Query {
        context: String,
        source: tokio_postgres::Error,
    },
}

impl PgError {
    pub fn query(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let context = context.into();
        move |source| PgError::Query { context, source }
    }

    /// The SQLSTATE of a failed query, if the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Query { source, .. } | PgError::Connect { source, .. } => {
                source.code().map(|c| c.code())
            }
            PgError::BadUrl { .. } => None,
        }
    }
}

impl Retryable for PgError {
    fn is_retryable(&self) -> bool {
        match self {
            PgError::BadUrl { .. } => false,
            PgError::Connect { source, .. } => is_transient(source),
            PgError::Query { source, .. } => is_transient(source),
        }
    }
}

/// Connection failures, server shutdowns, timeouts, lock waits and serialization failures can
/// succeed later; anything else (syntax, permissions, constraint violations) cannot.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // no SQLSTATE: transient only if the connection broke (I/O), not for a client-side
        // error such as a parameter that cannot be bound
        None => {
            e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        }
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57") // operator intervention: shutdown, statement_timeout
                || c == "40001" // serialization failure
                || c == "40P01" // deadlock
                || c == "55P03" // lock_not_available (lock_timeout)
        }
    }
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
    /// Render `::text` the same way on every server ([`crate::reconcile::CANONICAL_TEXT`]).
    pub canonical_text: bool,
}

/// Opens one connection and drives it on the runtime.
pub async fn connect(url: &str, session: &Session) -> Result<Client, PgError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| PgError::BadUrl {
        url: redact_url(url),
        message: e.to_string(),
    })?;
    config.application_name(&session.application_name);
    config.connect_timeout(Duration::from_secs(10));
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
        options.push_str(crate::reconcile::CANONICAL_TEXT);
    }
    config.options(&options);
    let (client, connection) = config
        .connect(NoTls)
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
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("media"), "\"media\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(qualified("public", "media"), "\"public\".\"media\"");
    }
}
