//! `tunnel-consumer`: applies the change events of the configured tables to the target
//! database, exactly once per event.

mod apply;
mod catchup;
mod check;
mod collect;
mod ddl;
mod decode;
mod dlq;
mod error;
mod evolve;
mod intake;
mod model;
mod observe;
mod offsets;
mod park;
mod plan;
mod rows;
mod run;
mod schemas;
mod stand_in;
mod target;
mod verify;

/// Both binaries allocate a few small buffers per row; mimalloc makes that markedly cheaper than
/// the system allocator (malloc/free were a fifth to a quarter of their CPU time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use tunnel_shared::config::Config;

#[derive(Parser)]
#[command(
    name = "tunnel-consumer",
    version,
    about = "Applies change events from Kafka to the target database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the configured tables' topics and apply them to the target until SIGINT/SIGTERM.
    Run {
        /// The TOML config file (see config/example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this address (e.g.
        /// 127.0.0.1:9642); off when not given.
        #[arg(long, env = "TUNNEL_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// A batch run: apply what the topics hold now (up to their ends at start), then exit
        /// (0 done, 1 failed, 2 bad config).
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Checks everything `run` will need (the target and its rights, Kafka and the topics, the
    /// registry, the validation rules) and prints each as ✓ / ! / ✗ with the fix; exit 0 only
    /// when the run would start.
    Check {
        /// The TOML config file (see config/example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare each source table with its replica; exit 0 when identical, 1 when not, 2 on error.
    Verify {
        /// The TOML config file (see config/example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Only this table (`schema.name` or `name`).
        #[arg(long)]
        table: Option<String>,
        /// How many keys of each kind of difference to print.
        #[arg(long, default_value_t = 10)]
        show: usize,
        /// Ask the producer to ship the differing rows again (the target is not written here).
        #[arg(long)]
        repair: bool,
        /// Compare only the rows written since the last verify that found the table identical
        /// (and the keys of both sides); the whole table when that cannot be done, saying why.
        #[arg(long)]
        incremental: bool,
    },
    /// Inspect and replay the dead-letter queues (`<topic>.dlq`).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Count the pending entries of each table's DLQ by reason.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this table (`schema.name` or `name`).
        #[arg(long)]
        table: Option<String>,
    },
    /// Print entries as JSON: where they came from, why, and their key and value decoded.
    Show {
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        select: Select,
        /// Entries already resolved by a replay too.
        #[arg(long)]
        all: bool,
        /// Most entries to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Apply entries again through the normal path, with the rules as the config has them now.
    /// Entries that fail again go back to the DLQ with their new reason.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        select: Select,
        /// Show what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which DLQ entries a command takes.
#[derive(clap::Args)]
struct Select {
    /// Only this table (`schema.name` or `name`).
    #[arg(long)]
    table: Option<String>,
    /// An error class (rule, wire_format, unknown_schema, avro_decode, not_an_event,
    /// target_rejected, parked) or a rule's name.
    #[arg(long)]
    reason: Option<String>,
    /// A DLQ partition.
    #[arg(long)]
    partition: Option<i32>,
    /// DLQ offsets: N, N..M or N.. (both ends included).
    #[arg(long, value_parser = dlq::select::parse_offsets)]
    offsets: Option<(i64, i64)>,
    /// A key: its value, or a JSON array of its columns' values (`["a", "1"]`).
    #[arg(long, value_parser = dlq::select::parse_key)]
    key: Option<tunnel_shared::key::KeyText>,
}

impl Select {
    fn filter(&self) -> dlq::select::Filter {
        dlq::select::Filter {
            reason: self.reason.clone(),
            partition: self.partition,
            offsets: self.offsets,
            key: self.key.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tunnel_shared::startup::run(command(cli.command))
}

async fn command(command: Command) -> ExitCode {
    use tunnel_shared::startup::exit_code;
    match command {
        Command::Run {
            config,
            metrics_addr,
            until_caught_up,
        } => tunnel_shared::startup::exit_code_of(run(config, metrics_addr, until_caught_up).await),
        Command::Check { config, json } => {
            tunnel_shared::startup::exit_code_of(check_command(config, json).await)
        }
        Command::Verify {
            config,
            table,
            show,
            repair,
            incremental,
        } => {
            let opts = verify::Options {
                table,
                show,
                repair,
                incremental,
            };
            let result = async {
                let config = Config::load(&config)?;
                Ok::<_, anyhow::Error>(verify::run(&config, &opts).await?)
            }
            .await;
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => exit_code(Err(e), 2),
            }
        }
        Command::Dlq { command } => exit_code(dlq_command(command).await, 1),
    }
}

async fn dlq_command(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { config, table } => {
            let config = tunnel_shared::startup::load_reaching_kafka(&config).await?;
            dlq::list(&config, table.as_deref()).await?;
        }
        DlqCommand::Show {
            config,
            select,
            all,
            limit,
        } => {
            let config = tunnel_shared::startup::load_reaching_kafka(&config).await?;
            let opts = dlq::ShowOptions {
                table: select.table.clone(),
                filter: select.filter(),
                all,
                limit,
            };
            dlq::show(&config, &opts).await?;
        }
        DlqCommand::Replay {
            config,
            select,
            dry_run,
        } => {
            let config = tunnel_shared::startup::load_reaching_kafka(&config).await?;
            let opts = dlq::ReplayOptions {
                table: select.table.clone(),
                filter: select.filter(),
                dry_run,
            };
            dlq::replay(&config, &opts).await?;
        }
    }
    Ok(())
}

async fn check_command(config: PathBuf, json: bool) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    let report = check::check(&config).await;
    report.print(json);
    if !report.passed() {
        anyhow::bail!("some checks failed: the run would not start");
    }
    Ok(())
}

async fn run(
    config: PathBuf,
    metrics_addr: Option<std::net::SocketAddr>,
    until_caught_up: bool,
) -> anyhow::Result<()> {
    let config = Arc::new(tunnel_shared::startup::load_reaching_kafka(&config).await?);
    tunnel_shared::retry::start_up_within(std::time::Duration::from_secs(config.startup_timeout_s));
    if let Some(addr) = metrics_addr {
        tunnel_shared::metrics::serve(addr, tunnel_shared::metrics::Role::Consumer).await?;
    }
    let _alerts =
        tunnel_shared::alerts::start(&config.alerts, tunnel_shared::metrics::Role::Consumer);
    let stop_rx = tunnel_shared::shutdown::on_signal();
    if !until_caught_up {
        run::run(config, stop_rx).await?;
        return Ok(());
    }
    // a signal or the goal reached stops the run after its current batch
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = {
        let (mut signal, tx) = (stop_rx, stop_tx.clone());
        tokio::spawn(async move {
            if signal.wait_for(|s| *s).await.is_ok() {
                let _ = tx.send(true);
            }
        })
    };
    let session = tunnel_shared::pg::Session {
        application_name: format!("{}-catch-up", config.source.application_name),
        statement_timeout: std::time::Duration::from_millis(config.target.statement_timeout_ms),
        lock_timeout: std::time::Duration::ZERO,
        read_only: true,
        canonical_text: false,
    };
    let target = tunnel_shared::pg::connect(&config.target.url, &session).await?;
    let goal = catchup::Goal::at_start(&config, &target).await?;
    let watcher = tokio::spawn(catchup::watch_until_caught_up(
        config.clone(),
        target,
        goal,
        stop_tx,
    ));
    let ran = run::run(config, stop).await;
    on_signal.abort();
    ran?;
    // the watcher stopped the run (caught up, or failed), or a signal did
    match tokio::time::timeout(std::time::Duration::from_secs(5), watcher).await {
        Ok(finished) => Ok(finished??),
        Err(_) => anyhow::bail!("stopped by a signal before catching up"),
    }
}
