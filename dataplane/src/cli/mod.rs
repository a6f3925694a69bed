//! The `weir` command line: argument types and what each subcommand runs.
//! `main` only parses, starts telemetry and calls [`run`].

mod bench;
mod ceilings;
mod databench;
mod fs;
mod fsbench;
mod job;
mod local;
mod worker;

use crate::client::ClientError;
use crate::master::MasterError;
use crate::master::node::{MasterConfig, MetastoreKind};
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use weir_api::telemetry::LogFormat;
use weir_api::{ApiError, MasterClient};

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
    /// Run a worker: tiered block storage and the block data server.
    Worker(worker::WorkerArgs),
    /// Mount the namespace (or a sub-path) with FUSE.
    Fuse(worker::FuseArgs),
    /// A master, a worker and a FUSE mount on this machine.
    Local {
        #[command(subcommand)]
        command: local::LocalCommand,
    },
    /// File system commands against a running cluster.
    Fs {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        data: worker::DataArgs,
        #[command(subcommand)]
        command: fs::FsCommand,
    },
    /// Jobs: load, persist, free and replicate work run by the workers.
    Job {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: job::JobCommand,
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
    /// Read one file through the client; prints MiB/s as JSON.
    Read(databench::ReadBenchArgs),
    /// Write a test object straight to an under-storage.
    UfsWrite(databench::UfsObjectArgs),
    /// Read an under-storage object with one streamed ranged GET.
    UfsRead(databench::UfsObjectArgs),
    /// Read every object below an under-storage path with parallel ranged
    /// GETs (the baseline of a load job).
    UfsParallelRead(databench::UfsParallelReadArgs),
    /// Run a load job and time it from submission to its end.
    Load(databench::LoadBenchArgs),
    /// Send a file over one loopback TCP connection with no Weir code in
    /// between (the transport's ceiling for a remote read); prints MiB/s.
    TcpLoopback(ceilings::TcpLoopbackArgs),
    /// Serve a file once over TCP as a worker sends a block (the sending
    /// half of the ceiling between two hosts).
    TcpSend(ceilings::TcpSendArgs),
    /// Receive what `tcp-send` serves as the client receives a block;
    /// prints MiB/s.
    TcpRecv(ceilings::TcpRecvArgs),
    /// Read a file with pread (the ceiling of a short-circuit read);
    /// prints MiB/s.
    Pread(ceilings::PreadArgs),
    /// Sequential and random reads and writes and small files against any
    /// mounted directory: throughput, ops/s and latency percentiles.
    Fs(fsbench::FsBenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Masters, workers, capacity and mounts.
    Report {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args, Clone)]
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
    pub fn client(&self) -> Result<MasterClient, ApiError> {
        MasterClient::new(self.masters.clone(), Duration::from_secs(self.timeout_secs))
    }
}

/// `weir master` settings. Each comes from its flag, else its environment
/// variable, else the `--config` file (YAML, same names in snake_case), else
/// the default shown.
#[derive(Debug, Args)]
pub struct MasterArgs {
    /// YAML file with any of the settings below.
    #[arg(long, env = "WEIR_MASTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// This master's id (unique in the group, never reused after removal).
    #[arg(long, env = "WEIR_MASTER_ID")]
    pub id: Option<u64>,
    /// Take the id from the trailing ordinal of the pod's name (`POD_NAME`;
    /// a host-network pod's host name is its node's), else of the host
    /// name (StatefulSet pods `<name>-master-<n>`).
    #[arg(long, env = "WEIR_MASTER_ID_FROM_HOSTNAME")]
    pub id_from_hostname: bool,
    /// Every master as id=host:port, comma separated (this one included).
    #[arg(long, env = "WEIR_MASTER_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Address to serve gRPC and HTTP on [default: 0.0.0.0:19200].
    #[arg(long, env = "WEIR_MASTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// [default: /var/lib/weir/master]
    #[arg(long, env = "WEIR_MASTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// [default: rocks]
    #[arg(long, env = "WEIR_MASTER_METASTORE", value_enum)]
    pub metastore: Option<MetastoreKind>,
    /// Inodes (and as many directory entries) cached in front of RocksDB
    /// [default: 200000].
    #[arg(long, env = "WEIR_MASTER_CACHE_ENTRIES")]
    pub cache_entries: Option<usize>,
    /// [default: 100]
    #[arg(long, env = "WEIR_MASTER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// [default: 600]
    #[arg(long, env = "WEIR_MASTER_ELECTION_MS")]
    pub election_ms: Option<u64>,
    /// [default: 10000]
    #[arg(long, env = "WEIR_WORKER_TIMEOUT_MS")]
    pub worker_timeout_ms: Option<u64>,
    /// Snapshot (and purge the log) every this many entries [default: 50000].
    #[arg(long, env = "WEIR_MASTER_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// A new leader waits this long for workers to report their blocks
    /// before it resumes jobs [default: 3000].
    #[arg(long, env = "WEIR_MASTER_JOB_SETTLE_MS")]
    pub job_settle_ms: Option<u64>,
    /// Job tasks in flight per worker [default: 4].
    #[arg(long, env = "WEIR_MASTER_JOB_TASKS_PER_WORKER")]
    pub job_tasks_per_worker: Option<usize>,
}

/// The `--config` file of `weir master`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterFile {
    pub id: Option<u64>,
    #[serde(default)]
    pub peers: Vec<String>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub metastore: Option<MetastoreKind>,
    pub cache_entries: Option<usize>,
    pub heartbeat_ms: Option<u64>,
    pub election_ms: Option<u64>,
    pub worker_timeout_ms: Option<u64>,
    pub snapshot_every: Option<u64>,
    pub job_settle_ms: Option<u64>,
    pub job_tasks_per_worker: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
    #[error(transparent)]
    Fuse(#[from] crate::fuse::FuseError),
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
    fn file(&self) -> Result<MasterFile, CliError> {
        let Some(path) = &self.config else {
            return Ok(MasterFile::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
    }

    /// The listen address, after flags, environment and file.
    pub fn listen(&self) -> Result<SocketAddr, CliError> {
        Ok(self
            .listen
            .or(self.file()?.listen)
            .unwrap_or_else(|| ([0, 0, 0, 0], 19200).into()))
    }

    pub fn config(&self) -> Result<MasterConfig, CliError> {
        let file = self.file()?;
        let peer_list = if self.peers.is_empty() {
            &file.peers
        } else {
            &self.peers
        };
        if peer_list.is_empty() {
            return Err(CliError::Usage(
                "give --peers (or peers: in --config)".into(),
            ));
        }
        let mut peers = BTreeMap::new();
        for p in peer_list {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("peer {p:?} is not id=host:port")))?;
            let id: u64 = id
                .parse()
                .map_err(|_| CliError::Usage(format!("peer id {id:?} is not a number")))?;
            if peers.insert(id, addr.to_owned()).is_some() {
                return Err(CliError::Usage(format!("peer id {id} appears twice")));
            }
        }
        let id = match (self.id.or(file.id), self.id_from_hostname) {
            (Some(id), _) => id,
            (None, true) => {
                let host =
                    match std::env::var("POD_NAME") {
                        Ok(pod) if !pod.is_empty() => pod,
                        _ => std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(
                            |source| CliError::Io {
                                what: "reading the host name".into(),
                                source,
                            },
                        )?,
                    };
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
            return Err(CliError::Usage(format!("id {id} is not in the peer list")));
        }
        Ok(MasterConfig {
            id,
            peers,
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| "/var/lib/weir/master".into()),
            metastore: self.metastore.or(file.metastore).unwrap_or_default(),
            cache_entries: self.cache_entries.or(file.cache_entries).unwrap_or(200_000),
            heartbeat_interval: Duration::from_millis(
                self.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(100),
            ),
            election_timeout: Duration::from_millis(
                self.election_ms.or(file.election_ms).unwrap_or(600),
            ),
            worker_timeout: Duration::from_millis(
                self.worker_timeout_ms
                    .or(file.worker_timeout_ms)
                    .unwrap_or(10_000),
            ),
            snapshot_every: self
                .snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(50_000)
                .max(10),
            job_settle: Duration::from_millis(
                self.job_settle_ms.or(file.job_settle_ms).unwrap_or(3000),
            ),
            job_tasks_per_worker: self
                .job_tasks_per_worker
                .or(file.job_tasks_per_worker)
                .unwrap_or(4)
                .max(1),
        })
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when the future is first polled: in a container the process
/// is PID 1, and a SIGTERM that comes while it starts (before a handler
/// exists) would be dropped by the kernel, leaving the kubelet to SIGKILL it
/// after the grace period, with its FUSE mount still on the host.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {}
            _ = wait(interrupt) => {}
        }
        tracing::info!("shutting down");
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Master(args) => {
            let config = args.config()?;
            crate::master::server::run(config, args.listen()?, shutdown_signal()).await?;
            Ok(())
        }
        Command::Worker(args) => {
            crate::worker::run(args.config()?, shutdown_signal()).await?;
            Ok(())
        }
        Command::Fuse(args) => {
            crate::fuse::run(args.config(), shutdown_signal()).await?;
            Ok(())
        }
        Command::Local { command } => local::run(command).await,
        Command::Fs {
            conn,
            data,
            command,
        } => fs::run(&conn, &data, command).await,
        Command::Job { conn, command } => job::run(&conn, command).await,
        Command::Admin {
            conn,
            command: AdminCommand::Report { json },
        } => fs::report(&conn.client()?, json).await,
        Command::Bench { conn, command } => match command {
            BenchCommand::Meta(args) => bench::meta(&conn, args).await,
            BenchCommand::Read(args) => databench::read(&conn, args).await,
            BenchCommand::UfsWrite(args) => databench::ufs_write(args).await,
            BenchCommand::UfsRead(args) => databench::ufs_read(args).await,
            BenchCommand::UfsParallelRead(args) => databench::ufs_parallel_read(args).await,
            BenchCommand::Load(args) => databench::load(&conn, args).await,
            BenchCommand::TcpLoopback(args) => blocking(move || ceilings::tcp_loopback(args)).await,
            BenchCommand::TcpSend(args) => blocking(move || ceilings::tcp_send(args)).await,
            BenchCommand::TcpRecv(args) => blocking(move || ceilings::tcp_recv(args)).await,
            BenchCommand::Pread(args) => blocking(move || ceilings::pread(args)).await,
            BenchCommand::Fs(args) => blocking(move || fsbench::fs(args)).await,
        },
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

/// Runs a blocking benchmark off the runtime's threads.
async fn blocking(
    f: impl FnOnce() -> Result<(), CliError> + Send + 'static,
) -> Result<(), CliError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CliError::Usage(format!("benchmark thread: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> MasterArgs {
        let mut full = vec!["weir", "master"];
        full.extend_from_slice(args);
        match Cli::parse_from(full).command {
            Command::Master(m) => m,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn flags_win_over_the_config_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("master.yaml");
        std::fs::write(
            &file,
            "id: 2\npeers: [\"1=a:1\", \"2=b:2\"]\nelection_ms: 900\ndata_dir: /data\n",
        )
        .unwrap();
        let cfg = file.to_str().unwrap();
        let c = parse(&["--config", cfg, "--election-ms", "700"])
            .config()
            .unwrap();
        assert_eq!((c.id, c.peers.len()), (2, 2));
        assert_eq!(c.election_timeout, Duration::from_millis(700), "flag wins");
        assert_eq!(
            c.data_dir,
            PathBuf::from("/data"),
            "file wins over the default"
        );
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100), "default");
    }

    #[test]
    fn bad_master_settings_are_named() {
        let err = |args: &[&str]| parse(args).config().unwrap_err().to_string();
        assert!(err(&["--id", "1"]).contains("--peers"));
        assert!(
            err(&["--id", "3", "--peers", "1=a:1,2=b:2"]).contains("id 3 is not in the peer list")
        );
        assert!(err(&["--id", "1", "--peers", "1=a:1,1=b:2"]).contains("appears twice"));
        assert!(err(&["--id", "1", "--peers", "x"]).contains("not id=host:port"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, "electon_ms: 5\n").unwrap();
        assert!(err(&["--config", file.to_str().unwrap()]).contains("unknown field `electon_ms`"));
    }
}
