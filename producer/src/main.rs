//! `tunnel-producer`: reads source tables through a SELECT-only role and ships their rows and
//! changes as keyed Avro events into Kafka.

mod budget;
mod capture;
mod check;
mod checkpoint;
mod contents;
mod deletescan;
mod detectors;
mod error;
mod horizon;
mod keyset;
mod keysnapshot;
mod lag;
mod observe;
mod publish;
mod repair;
mod setup;
mod shape;
mod shipped;
mod snapshot;
mod source;
mod stream;
mod trigger;
mod worker;

/// Both binaries allocate a few small buffers per row; mimalloc makes that markedly cheaper than
/// the system allocator (malloc/free were a fifth to a quarter of their CPU time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing::Instrument;

#[derive(Parser)]
#[command(
    name = "tunnel-producer",
    version,
    about = "Captures changes of read-only PostgreSQL tables into Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot the configured tables, then stream their changes until SIGINT/SIGTERM.
    Run {
        /// The TOML config file (see config/example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this address (e.g.
        /// 127.0.0.1:9641); off when not given.
        #[arg(long, env = "TUNNEL_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// A batch run: every detector of every table once (the snapshot first if it is not
        /// done), shipped with its checkpoint, then exit (0 done, 1 failed, 2 bad config).
        #[arg(long)]
        once: bool,
    },
    /// Has the next run snapshot a table again into the same target table, under the table's
    /// current schema even when the registry would refuse it (after a column changed type).
    /// Stop the producer first: this fences it.
    Resync {
        /// The TOML config file (see config/example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// The table, as in the config (`schema.name`, or `name` for the public schema).
        #[arg(long)]
        table: String,
    },
    /// Checks everything `run` will need (the source and its tables, Kafka, its topics and
    /// transactions, the registry) and prints each as ✓ / ! / ✗ with the fix; exit 0 only when
    /// the run would start.
    Check {
        /// The TOML config file (see config/example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Creates what trigger capture needs on the source (a schema, a change table per table,
    /// row and TRUNCATE triggers) for every table with capture = "trigger", or for --table.
    /// Run it as a role that owns the tables; idempotent.
    Install(CaptureObjects),
    /// Removes what install created for --table (in the config or not), or for every table
    /// that has a change table; the schema too when nothing else is left in it.
    Uninstall(CaptureObjects),
}

/// The arguments of `install` and `uninstall`.
#[derive(clap::Args)]
struct CaptureObjects {
    /// The TOML config file (see config/example.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// One table (`schema.name`, or `name` for the public schema).
    #[arg(long)]
    table: Option<String>,
    /// Connect with this URL instead of source.url (a role that owns the tables).
    #[arg(long, env = "TUNNEL_INSTALL_URL", hide_env_values = true)]
    url: Option<String>,
    /// Print the SQL instead of running it.
    #[arg(long)]
    dry_run: bool,
}

impl CaptureObjects {
    async fn run(self, install: bool) -> anyhow::Result<()> {
        let config = tunnel_shared::config::Config::load(&self.config)?;
        let request = trigger::install::Request {
            config: &config,
            table: self.table.as_deref(),
            url: self.url.as_deref(),
            dry_run: self.dry_run,
        };
        if install {
            trigger::install::install(request).await?;
        } else {
            trigger::install::uninstall(request).await?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tunnel_shared::startup::run(async move { tunnel_shared::startup::exit_code_of(run(cli).await) })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (config, metrics_addr, once) = match cli.command {
        Command::Run {
            config,
            metrics_addr,
            once,
        } => (config, metrics_addr, once),
        Command::Resync { config, table } => {
            let config = Arc::new(tunnel_shared::startup::load_reaching_kafka(&config).await?);
            return worker::resync(config, &table).await;
        }
        Command::Check { config, json } => {
            let config = tunnel_shared::config::Config::load(&config)?;
            let report = check::check(&config).await;
            report.print(json);
            if !report.passed() {
                anyhow::bail!("some checks failed: the run would not start");
            }
            return Ok(());
        }
        Command::Install(args) => return args.run(true).await,
        Command::Uninstall(args) => return args.run(false).await,
    };
    let config = Arc::new(tunnel_shared::startup::load_reaching_kafka(&config).await?);
    tunnel_shared::retry::start_up_within(std::time::Duration::from_secs(config.startup_timeout_s));
    if let Some(addr) = metrics_addr {
        tunnel_shared::metrics::serve(addr, tunnel_shared::metrics::Role::Producer).await?;
    }
    let _alerts =
        tunnel_shared::alerts::start(&config.alerts, tunnel_shared::metrics::Role::Producer);
    let stop_rx = tunnel_shared::shutdown::on_signal();
    let mut tasks = tokio::task::JoinSet::new();
    for table in config.tables.clone() {
        let span = tracing::info_span!("table", name = %table.qualified());
        let (config, stop) = (config.clone(), stop_rx.clone());
        tasks.spawn(
            async move {
                let name = table.qualified();
                let result = match worker::Worker::start(config, table, stop).await {
                    Ok(worker) => worker.run(once).await,
                    Err(e) => Err(e),
                };
                (name, result)
            }
            .instrument(span),
        );
    }
    let (mut first_error, mut stopped_tables) = (None, Vec::new());
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok((_, Ok(()))) => {}
            // a table whose shape the replica cannot follow stops alone
            Ok((name, Err(e))) if e.stops_only_the_table() => {
                tracing::error!(error = %e, "table stopped; the other tables go on");
                observe::TableObserver::new(&name, config.health.ready_within_s)
                    .stopped(&e.to_string());
                stopped_tables.push(e.to_string());
            }
            Ok((name, Err(e))) => {
                first_error.get_or_insert(anyhow::Error::from(e).context(format!("table {name}")));
                tasks.abort_all();
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::Error::from(e));
                tasks.abort_all();
            }
        }
    }
    if first_error.is_none() && !stopped_tables.is_empty() {
        first_error = Some(anyhow::anyhow!(stopped_tables.join("; ")));
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
