use clap::{Parser, Subcommand};
use weir::path::WeirPath;
use weir::telemetry::{self, LogFormat};

/// Weir: a Kubernetes-native data cache.
#[derive(Debug, Parser)]
#[command(name = "weir", version)]
struct Cli {
    #[arg(
        long,
        global = true,
        env = "WEIR_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the normalised form of namespace paths, or why each is invalid.
    CheckPath { paths: Vec<String> },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init("info", cli.log_format)?;
    match cli.command {
        Command::CheckPath { paths } => {
            let mut bad = 0;
            for raw in paths {
                match WeirPath::parse(&raw) {
                    Ok(p) => println!("{p}"),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}");
                    }
                }
            }
            anyhow::ensure!(bad == 0, "{bad} invalid path(s)");
        }
    }
    Ok(())
}
