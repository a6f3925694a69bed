//! One master's Raft node: the stores opened, the state machine and Raft
//! started, the cluster bootstrapped. Everything else reaches Raft through
//! a [`Proposer`], the narrow handle that proposes commands and answers
//! "am I the leader, and is my view linearizable".

use super::command::{Command, Reply};
use super::error::{MasterError, MasterResult};
use super::metastore::{MemoryStore, MetaStore, RocksStore};
use super::raft::log_store::LogStore;
use super::raft::network::Network;
use super::raft::state_machine::{StateMachine, SyncFn};
use super::raft::{NodeId, TypeConfig};
use super::state::ReplicatedState;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{BasicNode, Raft, RaftMetrics, ReadPolicy, ServerState};
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

/// Proposes commands and reads Raft's view of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    raft: Raft<TypeConfig, StateMachine>,
    id: NodeId,
    peers: Arc<BTreeMap<NodeId, String>>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").field("id", &self.id).finish()
    }
}

impl Proposer {
    fn not_leader(&self, id: Option<NodeId>) -> MasterError {
        MasterError::NotLeader {
            leader: id.and_then(|id| self.peers.get(&id).map(|a| (id, a.clone()))),
        }
    }

    /// Proposes `cmd`; returns once it is committed and applied.
    pub async fn write(&self, cmd: Command) -> MasterResult<Reply> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data.0?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_leader(f.leader_id))
            }
            Err(e) => Err(MasterError::raft(e)),
        }
    }

    /// Makes a read linearizable: only the leader answers, and only once its
    /// state machine has applied everything committed before the read
    /// (a lease read: no round trip while the leader's lease holds).
    pub async fn linearize(&self) -> MasterResult<()> {
        match self.raft.ensure_linearizable(ReadPolicy::LeaseRead).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(self.not_leader(f.leader_id))
            }
            Err(e) => Err(MasterError::raft(e)),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Fails with NotLeader (and the leader's address) unless this master
    /// leads: for soft state only the leader keeps.
    pub fn require_leader(&self) -> MasterResult<()> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(MasterError::NotLeader {
                leader: self.leader(),
            })
        }
    }

    /// The leader as this node sees it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let id = self.raft.metrics().borrow_watched().current_leader?;
        self.peers.get(&id).map(|a| (id, a.clone()))
    }

    /// This node's Raft metrics (term, indexes, role).
    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Every master of the cluster: id -> address.
    pub fn peers(&self) -> &BTreeMap<NodeId, String> {
        &self.peers
    }
}

/// A started Raft node and the state it replicates.
pub struct Node {
    pub proposer: Proposer,
    pub state: ReplicatedState,
    pub apply_latency: prometheus_client::metrics::histogram::Histogram,
    raft: Raft<TypeConfig, StateMachine>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.proposer.id)
            .finish()
    }
}

impl Node {
    /// Opens the stores under `data_dir` and starts the Raft node.
    pub async fn start(config: &MasterConfig) -> MasterResult<Self> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| MasterError::start(format!("creating {}", dir.display()), e))?;
        let log = LogStore::open(&dir.join("raft-log"))
            .map_err(|e| MasterError::start("opening the Raft log", e))?;
        let (store, sync): (Arc<dyn MetaStore>, SyncFn) = match config.metastore {
            MetastoreKind::Rocks => {
                let rocks = Arc::new(
                    RocksStore::open(&dir.join("meta"), config.cache_entries)
                        .map_err(|e| MasterError::start("opening the metadata store", e))?,
                );
                let handle = rocks.clone();
                (
                    rocks,
                    Arc::new(move || handle.sync().map_err(std::io::Error::other)),
                )
            }
            MetastoreKind::Memory => (Arc::new(MemoryStore::new()), Arc::new(|| Ok(()))),
        };
        let sm = StateMachine::new(store, dir.join("snapshots"), sync)
            .map_err(|e| MasterError::start("opening the state machine", e))?;
        let state = sm.state().clone();
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
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| MasterError::start("Raft settings", e))?,
        );
        let raft = Raft::new(config.id, raft_config, Network, log, sm)
            .await
            .map_err(|e| MasterError::start("starting Raft", e))?;
        Ok(Self {
            proposer: Proposer {
                raft: raft.clone(),
                id: config.id,
                peers: Arc::new(config.peers.clone()),
            },
            state,
            apply_latency,
            raft,
        })
    }

    /// The Raft handle, for serving the peers' Raft RPCs.
    pub fn raft(&self) -> &Raft<TypeConfig, StateMachine> {
        &self.raft
    }

    /// Initialises the cluster from the static peer list if this node has
    /// the lowest id, has never been initialised, and no peer answers with a
    /// leader (a wiped node must rejoin, not found a new cluster).
    pub async fn bootstrap(&self, peers_have_leader: bool) -> MasterResult<bool> {
        let id = self.proposer.id;
        let lowest = *self.proposer.peers.keys().next().unwrap_or(&id);
        if lowest != id || peers_have_leader {
            return Ok(false);
        }
        if self
            .raft
            .is_initialized()
            .await
            .map_err(MasterError::raft)?
        {
            return Ok(false);
        }
        let members: BTreeMap<NodeId, BasicNode> = self
            .proposer
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
            Err(e) => Err(MasterError::raft(e)),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
