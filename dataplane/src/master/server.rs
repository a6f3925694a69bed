//! Runs a master: gRPC (client API and Raft) and HTTP (`/metrics`,
//! `/healthz`, `/readyz`) on one port, plus the background loops.

use super::namespace::{BLOCK_INDEX_BITS, Command, block_file, random_id_seed};
use super::node::{Master, MasterConfig, MasterError};
use super::raft::network::{MAX_RAFT_MESSAGE, RaftServer};
use super::service::MasterApi;
use crate::metrics::{Exporter, MasterGauges, RpcMetrics};
use crate::proto::master::master_service_client::MasterServiceClient;
use crate::proto::master::master_service_server::MasterServiceServer;
use crate::proto::master::raft_service_server::RaftServiceServer;
use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::ListenerExt;
use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Asks every other peer whether it knows a leader (one round, short
/// timeouts): a node that finds one must not found a new cluster.
async fn peers_have_leader(config: &MasterConfig) -> bool {
    for (id, addr) in &config.peers {
        if *id == config.id {
            continue;
        }
        let probe = async {
            let mut client = MasterServiceClient::connect(format!("http://{addr}"))
                .await
                .ok()?;
            let info = client
                .get_leader(crate::proto::master::Empty {})
                .await
                .ok()?
                .into_inner();
            Some(info.known || info.term > 0)
        };
        if let Ok(Some(true)) = tokio::time::timeout(Duration::from_millis(800), probe).await {
            return true;
        }
    }
    false
}

/// Serves until `shutdown` resolves, then leaves Raft cleanly.
pub async fn run(
    config: MasterConfig,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| MasterError::Start(format!("binding {listen}: {e}")))?;
    serve(config, listener, shutdown).await
}

/// Like [`run`], on a listener that is already bound (tests bind port 0).
pub async fn serve(
    config: MasterConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let master = Master::start(config.clone()).await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let rpc_metrics = Arc::new(RpcMetrics::new(&mut registry));
    let gauges = Arc::new(MasterGauges::default());
    gauges.register(&mut registry);
    registry.register(
        "weir_master_apply_latency_seconds",
        "Time to apply one Raft entry to the namespace",
        master.apply_latency.clone(),
    );
    master.jobs.register_metrics(&mut registry);
    let exporter = Arc::new(Exporter::new(registry));

    let api = MasterApi::new(master.clone(), rpc_metrics);
    let raft_server = RaftServer {
        raft: master.raft.clone(),
    };
    let grpc = tonic::service::Routes::new(MasterServiceServer::new(api))
        .add_service(
            RaftServiceServer::new(raft_server)
                .max_decoding_message_size(MAX_RAFT_MESSAGE)
                .max_encoding_message_size(MAX_RAFT_MESSAGE),
        )
        .into_axum_router();
    let ready_master = master.clone();
    let app = grpc
        .route(
            "/metrics",
            get(move || std::future::ready(exporter.render())),
        )
        .route("/healthz", get(|| std::future::ready("ok")))
        .route(
            "/readyz",
            get(move || {
                let m = ready_master.raft.metrics().borrow_watched().clone();
                let caught_up =
                    m.last_applied.map(|l| l.index()) >= m.local_committed.map(|c| c.index());
                let seeded = ready_master.namespace.ids_seeded().unwrap_or(false);
                std::future::ready(match (m.current_leader, caught_up) {
                    (Some(_), true) if !seeded => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "inode ids not seeded yet".to_owned(),
                    ),
                    (Some(leader), true) => (StatusCode::OK, format!("leader {leader}, applied")),
                    (None, _) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no leader known".to_owned(),
                    ),
                    (Some(_), false) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "applying the log".to_owned(),
                    ),
                })
            }),
        );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = {
        let master = master.clone();
        let gauges = gauges.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut ticks = 0u64;
            loop {
                ticks += 1;
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                if master.is_leader() {
                    if master.namespace.ids_seeded() == Ok(false)
                        && let Err(e) = master
                            .write(Command::SeedInodeIds {
                                start: random_id_seed(),
                            })
                            .await
                    {
                        tracing::warn!(error = %e, "seeding inode ids");
                    }
                    master.workers.expire();
                    if let Ok(mounts) = master.namespace.mounts() {
                        master.sync.start_counts(mounts);
                    }
                    if ticks.is_multiple_of(4) {
                        sweep_blocks(&master);
                    }
                }
                let m = master.raft.metrics().borrow_watched().clone();
                gauges.term.set(m.current_term as i64);
                gauges
                    .commit_index
                    .set(m.local_committed.map(|c| c.index() as i64).unwrap_or(0));
                gauges
                    .last_applied
                    .set(m.last_applied.map(|c| c.index() as i64).unwrap_or(0));
                gauges
                    .is_leader
                    .set(i64::from(m.state == openraft::ServerState::Leader));
                gauges
                    .inodes
                    .set(master.namespace.inode_count().unwrap_or(0) as i64);
                gauges.workers.set(master.workers.workers().len() as i64);
            }
        })
    };

    let job_loop = {
        let master = master.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = master.jobs.wait(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
                master.jobs.tick(&master);
            }
        })
    };

    let bootstrap = {
        let master = master.clone();
        tokio::spawn(async move {
            let found = peers_have_leader(&master.config).await;
            match master.bootstrap(found).await {
                Ok(true) => tracing::info!(
                    "initialised the cluster with {} master(s)",
                    master.config.peers.len()
                ),
                Ok(false) => tracing::info!("joining the existing cluster"),
                Err(e) => tracing::error!(error = %e, "bootstrap failed"),
            }
        })
    };

    tracing::info!(id = master.config.id, addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "master serving");
    // Without TCP_NODELAY a reply written in two pieces waits for the
    // client's delayed ACK: 40 ms for every getStatus of a lone client.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop_tx.send(true);
    bootstrap.abort();
    let _ = background.await;
    let _ = job_loop.await;
    master.shutdown().await;
    served.map_err(|e| MasterError::Start(format!("serving: {e}")))
}

/// Blocks of deleted files (or of a file's old, longer content) are still
/// on workers: tell their holders to drop them. Blocks of pinned files:
/// tell their holders to keep them.
fn sweep_blocks(master: &Master) {
    let store = master.namespace.store();
    let mut orphans = Vec::new();
    let mut pinned = std::collections::BTreeSet::new();
    for block in master.workers.cached_blocks() {
        match store.inode(block_file(block)) {
            Ok(Some(inode)) => {
                let index = block & ((1 << BLOCK_INDEX_BITS) - 1);
                if inode.is_dir() || (inode.completed && index * inode.block_size >= inode.length) {
                    orphans.push(block);
                } else if inode.pinned {
                    pinned.insert(block);
                }
            }
            Ok(None) => orphans.push(block),
            Err(_) => {}
        }
    }
    master.workers.set_pinned_blocks(&pinned);
    if !orphans.is_empty() {
        let copies = master.workers.schedule_free(orphans);
        tracing::debug!(copies, "freeing blocks of deleted files");
    }
}
