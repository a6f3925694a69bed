//! A worker: the tiered block store, the data server that streams blocks
//! (reading them from the under-storage on a miss), the persister of
//! ASYNC_THROUGH files, and the registration and heartbeats that keep the
//! leader's block map current.

mod data;
mod peers;
mod persist;
pub mod store;

use crate::proto::master as pb;
use crate::ufs::{self, Ufs, UfsError};
use crate::wire::WireError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{BlockStore, EvictionPolicy, StoreError, TierConfig};
use tokio::sync::{mpsc, watch};
use weir_api::ApiError;
use weir_api::MasterClient;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ufs(#[from] UfsError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("master: {0}")]
    Master(#[from] ApiError),
    #[error("mount {0} is not in the master's mount table")]
    NoMount(u64),
    #[error("worker start: {what}: {source}")]
    Start {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type WorkerResult<T> = Result<T, WorkerError>;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub masters: Vec<String>,
    /// The host clients and the master reach this worker at.
    pub host: String,
    /// The node it runs on, for reports and locality.
    pub node: String,
    /// Raw block data.
    pub data_listen: SocketAddr,
    /// `/metrics`, `/healthz`.
    pub http_listen: SocketAddr,
    pub tiers: Vec<TierConfig>,
    pub policy: EvictionPolicy,
    /// The worker id and the ASYNC_THROUGH journal live here.
    pub state_dir: PathBuf,
    pub heartbeat: Duration,
    /// Whole blocks waiting to be cached after partial reads.
    pub async_cache_queue: usize,
    pub async_cache_threads: usize,
    /// Where the tier directories are on the node, as `(dir, node dir)`,
    /// when this worker sees them elsewhere (a container): short-circuit
    /// leases then name the node's path, which a client on the node (a
    /// FUSE pod) can open. Empty: the paths are the node's own.
    pub tier_host_dirs: Vec<(PathBuf, PathBuf)>,
}

impl WorkerConfig {
    /// `path` (a tier file) as a client on this node opens it; `None` when
    /// host directories are given and none holds it (a client could not
    /// open it, or would open another file at the same path).
    pub fn host_view(&self, path: &std::path::Path) -> Option<PathBuf> {
        if self.tier_host_dirs.is_empty() {
            return Some(path.to_path_buf());
        }
        self.tier_host_dirs
            .iter()
            .find_map(|(dir, host)| path.strip_prefix(dir).ok().map(|rest| host.join(rest)))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Debug, Default)]
struct WorkerMetrics {
    capacity: Family<TierLabels, Gauge>,
    used: Family<TierLabels, Gauge>,
    blocks: Family<TierLabels, Gauge>,
    bytes_served: Family<SourceLabels, Counter>,
    block_reads: Family<SourceLabels, Counter>,
    ufs_bytes_read: Counter,
    ufs_bytes_written: Counter,
    peer_bytes_read: Counter,
    async_cache_dropped: Counter,
    persist_pending: Gauge,
}

impl WorkerMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "weir_worker_tier_capacity_bytes",
            "Quota of each tier",
            self.capacity.clone(),
        );
        r.register(
            "weir_worker_tier_used_bytes",
            "Bytes held (or reserved) in each tier",
            self.used.clone(),
        );
        r.register(
            "weir_worker_tier_blocks",
            "Blocks held in each tier",
            self.blocks.clone(),
        );
        r.register(
            "weir_worker_bytes_served",
            "Block bytes sent to clients, by where they came from (cache, ufs)",
            self.bytes_served.clone(),
        );
        r.register(
            "weir_worker_block_reads",
            "Block read requests, by where they were served from (cache, ufs)",
            self.block_reads.clone(),
        );
        r.register(
            "weir_worker_ufs_bytes_read",
            "Bytes read from under-storage",
            self.ufs_bytes_read.clone(),
        );
        r.register(
            "weir_worker_ufs_bytes_written",
            "Bytes written to under-storage",
            self.ufs_bytes_written.clone(),
        );
        r.register(
            "weir_worker_peer_bytes_read",
            "Block bytes copied from other workers (replication)",
            self.peer_bytes_read.clone(),
        );
        r.register(
            "weir_worker_async_cache_dropped",
            "Whole-block cache requests dropped because the queue was full",
            self.async_cache_dropped.clone(),
        );
        r.register(
            "weir_worker_persist_pending",
            "ASYNC_THROUGH files waiting to be persisted",
            self.persist_pending.clone(),
        );
    }
}

/// Under-storages of the mounts, opened on first use.
#[derive(Debug)]
struct Mounts {
    master: Arc<MasterClient>,
    open: Mutex<HashMap<u64, Arc<dyn Ufs>>>,
}

impl Mounts {
    async fn get(&self, mount_id: u64) -> WorkerResult<Arc<dyn Ufs>> {
        if let Some(u) = self.open.lock().expect("mounts").get(&mount_id) {
            return Ok(u.clone());
        }
        let table = self
            .master
            .call(|mut c| async move { c.get_mount_table(pb::Empty {}).await })
            .await?;
        let mut open = self.open.lock().expect("mounts");
        for m in table.mounts {
            if open.contains_key(&m.mount_id) {
                continue;
            }
            let options: BTreeMap<_, _> = m.options.into_iter().collect();
            let creds: BTreeMap<_, _> = m.credential_files.into_iter().collect();
            open.insert(m.mount_id, ufs::open(&m.ufs_uri, &options, &creds)?);
        }
        open.get(&mount_id)
            .cloned()
            .ok_or(WorkerError::NoMount(mount_id))
    }
}

/// The running worker's shared state.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    store: BlockStore,
    master: Arc<MasterClient>,
    id: AtomicU64,
    data_port: u16,
    http_port: u16,
    mounts: Mounts,
    metrics: WorkerMetrics,
    /// Blocks being fetched from the under-storage; waiters learn whether
    /// the fetch cached the block.
    inflight: Mutex<HashMap<u64, watch::Receiver<Option<bool>>>>,
    cache_queue: mpsc::Sender<(u64, data::BlockSource)>,
    queued: Mutex<HashSet<u64>>,
    persister: persist::Persister,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Worker {
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    fn id_file(&self) -> PathBuf {
        self.config.state_dir.join("worker-id")
    }

    async fn register(&self) -> WorkerResult<()> {
        let previous_id = std::fs::read_to_string(self.id_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let (block_ids, block_tiers) = self.store.report().into_iter().unzip();
        let req = pb::RegisterWorkerRequest {
            host: self.config.host.clone(),
            rpc_port: u32::from(self.http_port),
            data_port: u32::from(self.data_port),
            tiers: self.tier_usage(),
            block_ids,
            block_tiers,
            previous_id,
            node: self.config.node.clone(),
        };
        let resp = self
            .master
            .call(|mut c| {
                let req = req.clone();
                async move { c.register_worker(req).await }
            })
            .await?;
        self.id.store(resp.worker_id, Ordering::Relaxed);
        let _ = std::fs::write(self.id_file(), resp.worker_id.to_string());
        // Removals before the full report are in it already.
        self.store.take_removed();
        tracing::info!(worker = resp.worker_id, "registered with the master");
        Ok(())
    }

    fn tier_usage(&self) -> Vec<pb::TierUsage> {
        self.store
            .usage()
            .into_iter()
            .zip(self.store.holdable())
            .map(
                |((tier, capacity_bytes, used_bytes), holdable_bytes)| pb::TierUsage {
                    tier,
                    capacity_bytes,
                    used_bytes,
                    holdable_bytes,
                },
            )
            .collect()
    }

    fn export_usage(&self) {
        let counts = self.store.block_counts();
        for (i, (tier, cap, used)) in self.store.usage().into_iter().enumerate() {
            let l = TierLabels { tier };
            self.metrics.capacity.get_or_create(&l).set(cap as i64);
            self.metrics.used.get_or_create(&l).set(used as i64);
            self.metrics.blocks.get_or_create(&l).set(counts[i] as i64);
        }
        self.metrics
            .persist_pending
            .set(self.persister.pending() as i64);
    }

    /// Tells the master this worker is going, before it stops serving:
    /// clients then stop being sent here at once rather than after the
    /// heartbeat timeout. Best effort: a master that does not hear it
    /// times the worker out as before.
    async fn leave(&self) {
        let req = pb::HeartbeatRequest {
            worker_id: self.id(),
            leaving: true,
            ..Default::default()
        };
        let told = tokio::time::timeout(
            Duration::from_secs(2),
            self.master.call(|mut c| {
                let req = req.clone();
                async move { c.worker_heartbeat(req).await }
            }),
        )
        .await;
        match told {
            Ok(Ok(_)) => tracing::info!(worker = self.id(), "told the master this worker leaves"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not tell the master this worker leaves")
            }
            Err(_) => tracing::warn!("the master did not hear this worker leave within 2s"),
        }
    }

    async fn heartbeat(&self) -> WorkerResult<()> {
        if let Err(e) = self.store.enforce_watermarks() {
            tracing::warn!(error = %e, "eviction failed");
        }
        let removed = self.store.take_removed();
        let req = pb::HeartbeatRequest {
            worker_id: self.id(),
            tiers: self.tier_usage(),
            added_blocks: vec![],
            added_tiers: vec![],
            removed_blocks: removed.clone(),
            cache_hits: self.hits.swap(0, Ordering::Relaxed),
            cache_misses: self.misses.swap(0, Ordering::Relaxed),
            leaving: false,
        };
        let resp = self
            .master
            .call(|mut c| {
                let req = req.clone();
                async move { c.worker_heartbeat(req).await }
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                // Report these again next time.
                self.store.requeue_removed(removed);
                return Err(e.into());
            }
        };
        if resp.reregister {
            self.register().await?;
        }
        for block in resp.free_blocks {
            self.store.free(block);
        }
        if resp.pinned_update {
            self.store
                .set_pinned_set(&resp.pinned_blocks.into_iter().collect());
        }
        self.export_usage();
        Ok(())
    }

    /// Tells the master a new block is here, so the next reader finds it.
    async fn commit_block(&self, block: u64, len: u64, tier: String) {
        let req = pb::CommitBlockRequest {
            worker_id: self.id(),
            block_id: block,
            length: len,
            tier,
        };
        let done = self
            .master
            .call(|mut c| {
                let req = req.clone();
                async move { c.commit_block(req).await }
            })
            .await;
        if let Err(e) = done {
            // The next registration reports it with the rest.
            tracing::warn!(block, error = %e, "committing a block failed");
        }
    }
}

/// Binds the data and HTTP ports, registers, and serves until `shutdown`.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> WorkerResult<()> {
    let start = |what: &str, source| WorkerError::Start {
        what: what.to_owned(),
        source,
    };
    std::fs::create_dir_all(&config.state_dir).map_err(|e| start("state directory", e))?;
    let data = tokio::net::TcpListener::bind(config.data_listen)
        .await
        .map_err(|e| start(&format!("binding {}", config.data_listen), e))?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| start(&format!("binding {}", config.http_listen), e))?;
    let store = BlockStore::open(config.tiers.clone(), config.policy)?;
    let master = Arc::new(
        MasterClient::new(config.masters.clone(), Duration::from_secs(10))
            .map_err(WorkerError::Master)?,
    );
    let (cache_tx, cache_rx) = mpsc::channel(config.async_cache_queue.max(1));
    let persister = persist::Persister::open(config.state_dir.join("persist"), &store)?;
    let worker = Arc::new(Worker {
        data_port: data.local_addr().map_err(|e| start("data port", e))?.port(),
        http_port: http.local_addr().map_err(|e| start("http port", e))?.port(),
        store,
        mounts: Mounts {
            master: master.clone(),
            open: Mutex::new(HashMap::new()),
        },
        master,
        id: AtomicU64::new(0),
        metrics: WorkerMetrics::default(),
        inflight: Mutex::new(HashMap::new()),
        cache_queue: cache_tx,
        queued: Mutex::new(HashSet::new()),
        persister,
        hits: AtomicU64::new(0),
        misses: AtomicU64::new(0),
        config,
    });
    let mut registry = Registry::default();
    worker.metrics.register(&mut registry);
    worker.export_usage();

    // Register before serving data: a worker the master does not know
    // would cache blocks nobody can find.
    let mut backoff = Duration::from_millis(200);
    loop {
        match worker.register().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "registration failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(data::serve(worker.clone(), data, stop_rx.clone())),
        tokio::spawn(data::async_cacher(
            worker.clone(),
            cache_rx,
            stop_rx.clone(),
        )),
        tokio::spawn(persist::run(worker.clone(), stop_rx.clone())),
    ];
    // The heartbeat stops first on shutdown, so the last word the master
    // hears is that this worker leaves (a heartbeat after it would have
    // it registered again).
    let (beat_stop_tx, beat_stop_rx) = watch::channel(false);
    let beating = {
        let worker = worker.clone();
        let mut stop = beat_stop_rx;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(worker.config.heartbeat);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                if let Err(e) = worker.heartbeat().await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        })
    };
    let app = weir_api::metrics::routes(registry);
    tracing::info!(
        host = %worker.config.host,
        data_port = worker.data_port,
        http_port = worker.http_port,
        "worker serving"
    );
    let served = axum::serve(http, app)
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = beat_stop_tx.send(true);
    let _ = beating.await;
    worker.leave().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    served.map_err(|source| WorkerError::Start {
        what: "serving".into(),
        source,
    })
}
