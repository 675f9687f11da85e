//! How both binaries start: logging first, then the multi-threaded runtime their command runs
//! on. A runtime that cannot start is reported on stderr and ends the process with status 1.

use std::future::Future;
use std::process::ExitCode;

/// Sets up logging ([`crate::logging::init`]) and runs `command` to completion on a new
/// runtime; its exit code is the process's.
pub fn run<F>(command: F) -> ExitCode
where
    F: Future<Output = ExitCode>,
{
    crate::logging::init();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code of a command's result: 0, or `failure` after printing the error with its
/// chain of causes.
/// The exit code of a failed run: 2 when the config is at fault (a scheduler should not retry
/// it), else 1.
pub fn failure_code(e: Option<&(dyn std::error::Error + 'static)>) -> u8 {
    let mut cause = e;
    while let Some(c) = cause {
        if c.is::<crate::config::ConfigError>()
            || matches!(c.downcast_ref::<LoadError>(), Some(LoadError::Config(_)))
        {
            return 2;
        }
        cause = c.source();
    }
    1
}

/// The exit code of `result`: 0, 2 for a config error, else 1 (printing the error).
pub fn exit_code_of<E>(result: Result<(), E>) -> ExitCode
where
    E: std::ops::Deref<Target = dyn std::error::Error + Send + Sync + 'static>,
{
    let failure = failure_code(
        result
            .as_ref()
            .err()
            .map(|e| -> &(dyn std::error::Error + 'static) { &**e }),
    );
    exit_code(result, failure)
}

pub fn exit_code<E>(result: Result<(), E>, failure: u8) -> ExitCode
where
    E: std::ops::Deref<Target = dyn std::error::Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain_text(&*e));
            ExitCode::from(failure)
        }
    }
}

/// An error and its causes joined by `: `, leaving out a cause its error already tells (some
/// errors print their causes themselves: it was said twice).
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        cause = c.source();
        let part = c.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Why a command could not start with its config.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::AccessError),
}

/// How long the start-up check waits for the brokers to refuse this client.
const KAFKA_ACCESS_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The config at `path`, once the brokers it names let this client in: a refused certificate
/// or password stops the command here, saying what to check.
pub async fn load_reaching_kafka(
    path: &std::path::Path,
) -> Result<crate::config::Config, LoadError> {
    let config = crate::config::Config::load(path)?;
    crate::kafka::check_access(&config.kafka, KAFKA_ACCESS_WITHIN).await?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect: {0}")]
    struct Telling(#[source] std::io::Error);

    #[test]
    fn a_config_error_exits_2_whatever_wraps_it_and_anything_else_1() {
        let code = |e: anyhow::Error| failure_code(Some(e.as_ref()));
        let config = || crate::config::ConfigError::Invalid {
            path: "p.toml".into(),
            message: "bad".into(),
        };
        assert_eq!(code(anyhow::Error::from(config())), 2);
        assert_eq!(code(anyhow::Error::from(LoadError::from(config()))), 2);
        assert_eq!(code(anyhow::Error::from(config()).context("starting")), 2);
        assert_eq!(code(anyhow::anyhow!("the source is down")), 1);
        assert_eq!(failure_code(None), 1);
    }

    #[test]
    fn a_cause_the_error_already_told_is_not_printed_again() {
        let inner = std::io::Error::other("password authentication failed");
        let e = anyhow::Error::from(Telling(inner)).context("table public.items");
        assert_eq!(
            chain_text(&*e),
            "table public.items: cannot connect: password authentication failed"
        );
    }
}
