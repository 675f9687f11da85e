//! Logging set-up shared by the binaries: `tracing` to stderr, filtered by `RUST_LOG`
//! (default `info`), as JSON lines when `TUNNEL_LOG_FORMAT=json`, coloured on a terminal unless
//! `NO_COLOR` is set. On a terminal, the progress
//! bars of [`crate::progress`] are drawn below the log lines, which print above them.

use std::io::IsTerminal;

use tracing_indicatif::filter::IndicatifFilter;
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,tokio_postgres=warn"));
    // bars only for the spans that ask for one (crate::progress), none for the others
    let bars = IndicatifLayer::new();
    let writer = bars.get_stderr_writer();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false);
    let fmt = if std::env::var("TUNNEL_LOG_FORMAT").as_deref() == Ok("json") {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(bars.with_filter(IndicatifFilter::new(false)))
        .try_init();
}
