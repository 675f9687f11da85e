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

/// The exit code of a command's result: 0, or `failure` after printing the error (in its
/// alternate form: an `anyhow` error with its chain of causes).
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>, failure: u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(failure)
        }
    }
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
