//! One master process: the Raft node, the replicated namespace, and the
//! leader-only soft state (worker registry, block locations).

use super::jobs::scheduler::JobScheduler;
use super::metastore::{MemoryStore, MetaStore, RocksStore};
use super::namespace::{Command, FsError, Namespace, Reply};
use super::raft::log_store::LogStore;
use super::raft::network::Network;
use super::raft::state_machine::{StateMachine, SyncFn};
use super::raft::{NodeId, TypeConfig};
use super::sync::MetadataSync;
use super::workers::WorkerRegistry;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{BasicNode, Raft, ReadPolicy, ServerState};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the metadata lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetastoreKind {
    #[default]
    Rocks,
    Memory,
}

#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub id: NodeId,
    /// Every master of the cluster (this one included): id -> host:port.
    pub peers: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    pub metastore: MetastoreKind,
    pub cache_entries: usize,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub worker_timeout: Duration,
    /// Take a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_every: u64,
    /// How long a new leader lets workers report their blocks before it
    /// resumes jobs (so it does not fetch again what is already cached).
    pub job_settle: Duration,
    pub job_tasks_per_worker: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("not the leader; leader is {leader:?}")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("raft: {0}")]
    Raft(String),
    #[error("under-storage: {0}")]
    Ufs(String),
    #[error("starting the master: {0}")]
    Start(String),
}

pub type MasterResult<T> = Result<T, MasterError>;

/// A running master.
pub struct Master {
    pub config: MasterConfig,
    pub raft: Raft<TypeConfig, StateMachine>,
    pub namespace: Namespace,
    pub workers: WorkerRegistry,
    pub sync: Arc<MetadataSync>,
    pub jobs: Arc<JobScheduler>,
    pub apply_latency: prometheus_client::metrics::histogram::Histogram,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("id", &self.config.id)
            .finish()
    }
}

fn not_leader(peers: &BTreeMap<NodeId, String>, id: Option<NodeId>) -> MasterError {
    MasterError::NotLeader {
        leader: id.and_then(|id| peers.get(&id).map(|a| (id, a.clone()))),
    }
}

impl Master {
    /// Opens the stores under `data_dir` and starts the Raft node. The
    /// cluster is initialised by the lowest id when no peer has a leader.
    pub async fn start(config: MasterConfig) -> MasterResult<Arc<Self>> {
        let start_err = |e: &dyn std::fmt::Display| MasterError::Start(e.to_string());
        std::fs::create_dir_all(&config.data_dir).map_err(|e| start_err(&e))?;
        let log = LogStore::open(&config.data_dir.join("raft-log")).map_err(|e| start_err(&e))?;
        let (store, sync): (Arc<dyn MetaStore>, SyncFn) = match config.metastore {
            MetastoreKind::Rocks => {
                let rocks = Arc::new(
                    RocksStore::open(&config.data_dir.join("meta"), config.cache_entries)
                        .map_err(|e| start_err(&e))?,
                );
                let handle = rocks.clone();
                (
                    rocks,
                    Arc::new(move || handle.sync().map_err(std::io::Error::other)),
                )
            }
            MetastoreKind::Memory => (Arc::new(MemoryStore::new()), Arc::new(|| Ok(()))),
        };
        let sm = StateMachine::new(store, config.data_dir.join("snapshots"), sync)
            .map_err(|e| start_err(&e))?;
        let namespace = sm.namespace().clone();
        let apply_latency = sm.apply_latency();
        let heartbeat = config.heartbeat_interval.as_millis() as u64;
        let election = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "weir-master".into(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every / 2,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| start_err(&e))?);
        let raft = Raft::new(config.id, raft_config, Network, log, sm)
            .await
            .map_err(|e| start_err(&e))?;
        let workers = WorkerRegistry::new(config.worker_timeout);
        let jobs = Arc::new(JobScheduler::new(
            config.job_settle,
            config.job_tasks_per_worker,
        ));
        Ok(Arc::new(Self {
            jobs,
            config,
            raft,
            namespace,
            workers,
            sync: Arc::new(MetadataSync::new()),
            apply_latency,
        }))
    }

    /// Initialises the cluster from the static peer list if this node has
    /// the lowest id, has never been initialised, and no peer answers with a
    /// leader (a wiped node must rejoin, not found a new cluster).
    pub async fn bootstrap(&self, peers_have_leader: bool) -> MasterResult<bool> {
        let lowest = *self.config.peers.keys().next().unwrap_or(&self.config.id);
        if lowest != self.config.id || peers_have_leader {
            return Ok(false);
        }
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| MasterError::Raft(e.to_string()))?
        {
            return Ok(false);
        }
        let members: BTreeMap<NodeId, BasicNode> = self
            .config
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "cluster already initialised");
                Ok(false)
            }
            Err(e) => Err(MasterError::Raft(e.to_string())),
        }
    }

    /// Proposes `cmd`; returns once it is committed and applied.
    pub async fn write(&self, cmd: Command) -> MasterResult<Reply> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data.0?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(not_leader(&self.config.peers, f.leader_id))
            }
            Err(e) => Err(MasterError::Raft(e.to_string())),
        }
    }

    /// Makes a read linearizable: only the leader answers, and only once its
    /// state machine has applied everything committed before the read
    /// (a lease read: no round trip while the leader's lease holds).
    pub async fn linearize(&self) -> MasterResult<()> {
        match self.raft.ensure_linearizable(ReadPolicy::LeaseRead).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(not_leader(&self.config.peers, f.leader_id))
            }
            Err(e) => Err(MasterError::Raft(e.to_string())),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The leader as this node sees it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let id = self.raft.metrics().borrow_watched().current_leader?;
        self.config.peers.get(&id).map(|a| (id, a.clone()))
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
