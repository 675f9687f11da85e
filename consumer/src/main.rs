//! `tunnel-consumer`: applies the change events of the configured tables to the target
//! database, exactly once per event.

mod apply;
mod ddl;
mod decode;
mod run;
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tunnel_shared::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run { config } => match runtime.block_on(run(config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Verify {
            config,
            table,
            show,
            repair,
        } => {
            let opts = verify::Options {
                table,
                show,
                repair,
            };
            let result = runtime.block_on(async {
                let config = Config::load(&config)?;
                Ok::<_, anyhow::Error>(verify::run(&config, &opts).await?)
            });
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

async fn run(config: PathBuf) -> anyhow::Result<()> {
    let config = Arc::new(Config::load(&config)?);
    let stop_rx = tunnel_shared::shutdown::on_signal();
    run::run(config, stop_rx).await?;
    Ok(())
}
