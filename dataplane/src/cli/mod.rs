//! The `weir` command line: argument types and what each subcommand runs.
//! `main` only parses, starts telemetry and calls [`run`].

mod bench;
mod fs;

use crate::client::master::{ClientError, MasterClient};
use crate::master::node::{MasterConfig, MasterError, MetastoreKind};
use crate::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Weir: a Kubernetes-native data cache.
#[derive(Debug, Parser)]
#[command(name = "weir", version)]
pub struct Cli {
    #[arg(
        long,
        global = true,
        env = "WEIR_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a master (one member of the Raft group).
    Master(MasterArgs),
    /// File system commands against a running cluster.
    Fs {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: fs::FsCommand,
    },
    /// Cluster administration.
    Admin {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Benchmarks against a running cluster.
    Bench {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Print the normalised form of namespace paths, or why each is invalid.
    CheckPath { paths: Vec<String> },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Metadata operations per second (create, getStatus).
    Meta(bench::MetaBenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Masters, workers, capacity and mounts.
    Report {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Masters as host:port, comma separated.
    #[arg(
        long,
        env = "WEIR_MASTERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:19200"
    )]
    pub masters: Vec<String>,
    /// How long a command keeps looking for a leader.
    #[arg(long, env = "WEIR_TIMEOUT_SECS", default_value_t = 15)]
    pub timeout_secs: u64,
}

impl ConnArgs {
    pub fn client(&self) -> Result<MasterClient, ClientError> {
        MasterClient::new(self.masters.clone(), Duration::from_secs(self.timeout_secs))
    }
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// This master's id (unique in the group, never reused after removal).
    #[arg(long, env = "WEIR_MASTER_ID")]
    pub id: Option<u64>,
    /// Take the id from the trailing ordinal of the host name (StatefulSet
    /// pods `<name>-master-<n>`).
    #[arg(long, env = "WEIR_MASTER_ID_FROM_HOSTNAME")]
    pub id_from_hostname: bool,
    /// Every master as id=host:port, comma separated (this one included).
    #[arg(
        long,
        env = "WEIR_MASTER_PEERS",
        value_delimiter = ',',
        required = true
    )]
    pub peers: Vec<String>,
    /// Address to serve gRPC and HTTP on.
    #[arg(long, env = "WEIR_MASTER_LISTEN", default_value = "0.0.0.0:19200")]
    pub listen: SocketAddr,
    #[arg(
        long,
        env = "WEIR_MASTER_DATA_DIR",
        default_value = "/var/lib/weir/master"
    )]
    pub data_dir: PathBuf,
    #[arg(long, env = "WEIR_MASTER_METASTORE", value_enum, default_value_t)]
    pub metastore: MetastoreKind,
    /// Inodes (and as many directory entries) cached in front of RocksDB.
    #[arg(long, env = "WEIR_MASTER_CACHE_ENTRIES", default_value_t = 200_000)]
    pub cache_entries: usize,
    #[arg(long, env = "WEIR_MASTER_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    #[arg(long, env = "WEIR_MASTER_ELECTION_MS", default_value_t = 600)]
    pub election_ms: u64,
    #[arg(long, env = "WEIR_WORKER_TIMEOUT_MS", default_value_t = 10_000)]
    pub worker_timeout_ms: u64,
    #[arg(long, env = "WEIR_MASTER_SNAPSHOT_EVERY", default_value_t = 50_000)]
    pub snapshot_every: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl MasterArgs {
    pub fn config(&self) -> Result<MasterConfig, CliError> {
        let mut peers = BTreeMap::new();
        for p in &self.peers {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("peer {p:?} is not id=host:port")))?;
            let id: u64 = id
                .parse()
                .map_err(|_| CliError::Usage(format!("peer id {id:?} is not a number")))?;
            peers.insert(id, addr.to_owned());
        }
        let id = match (self.id, self.id_from_hostname) {
            (Some(id), _) => id,
            (None, true) => {
                let host =
                    std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(|source| {
                        CliError::Io {
                            what: "reading the host name".into(),
                            source,
                        }
                    })?;
                host.trim()
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        CliError::Usage(format!("host name {host:?} has no trailing ordinal"))
                    })?
            }
            (None, false) => return Err(CliError::Usage("give --id or --id-from-hostname".into())),
        };
        if !peers.contains_key(&id) {
            return Err(CliError::Usage(format!("id {id} is not in --peers")));
        }
        Ok(MasterConfig {
            id,
            peers,
            data_dir: self.data_dir.clone(),
            metastore: self.metastore,
            cache_entries: self.cache_entries,
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            election_timeout: Duration::from_millis(self.election_ms),
            worker_timeout: Duration::from_millis(self.worker_timeout_ms),
            snapshot_every: self.snapshot_every.max(10),
        })
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Master(args) => {
            let config = args.config()?;
            crate::master::server::run(config, args.listen, shutdown_signal()).await?;
            Ok(())
        }
        Command::Fs { conn, command } => fs::run(&conn.client()?, command).await,
        Command::Admin {
            conn,
            command: AdminCommand::Report { json },
        } => fs::report(&conn.client()?, json).await,
        Command::Bench {
            conn,
            command: BenchCommand::Meta(args),
        } => bench::meta(&conn, args).await,
        Command::CheckPath { paths } => {
            let mut bad = 0;
            for raw in paths {
                match crate::path::WeirPath::parse(&raw) {
                    Ok(p) => println!("{p}"),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}");
                    }
                }
            }
            if bad > 0 {
                Err(CliError::Usage(format!("{bad} invalid path(s)")))
            } else {
                Ok(())
            }
        }
    }
}
