//! Runs a master: gRPC (client API and Raft) and HTTP (`/metrics`,
//! `/healthz`, `/readyz`) on one port, plus the background loops.

use super::error::MasterError;
use super::housekeeping::housekeeping;
use super::node::{MasterConfig, Node};
use super::parts::Parts;
use super::raft::network::{MAX_RAFT_MESSAGE, RaftServer};
use super::service::MasterApi;
use crate::metrics::{MasterGauges, RpcMetrics};
use crate::proto::master::master_service_client::MasterServiceClient;
use crate::proto::master::master_service_server::MasterServiceServer;
use crate::proto::master::raft_service_server::RaftServiceServer;
use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::ListenerExt;
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
        .map_err(|e| MasterError::start(format!("binding {listen}"), e))?;
    serve(config, listener, shutdown).await
}

/// Like [`run`], on a listener that is already bound (tests bind port 0).
pub async fn serve(
    config: MasterConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let node = Arc::new(Node::start(&config).await?);
    let parts = Parts::new(&node, &config);
    let mut registry = prometheus_client::registry::Registry::default();
    let rpc_metrics = Arc::new(RpcMetrics::new(&mut registry));
    let gauges = Arc::new(MasterGauges::default());
    gauges.register(&mut registry);
    registry.register(
        "weir_master_apply_latency_seconds",
        "Time to apply one Raft entry to the namespace",
        node.apply_latency.clone(),
    );
    parts.runner.register_metrics(&mut registry);
    parts.sync.register_metrics(&mut registry);

    let api = MasterApi::new(parts.api_handles(), rpc_metrics);
    let raft_server = RaftServer {
        raft: node.raft().clone(),
    };
    let grpc = tonic::service::Routes::new(MasterServiceServer::new(api))
        .add_service(
            RaftServiceServer::new(raft_server)
                .max_decoding_message_size(MAX_RAFT_MESSAGE)
                .max_encoding_message_size(MAX_RAFT_MESSAGE),
        )
        .into_axum_router();
    let (ready_proposer, ready_namespace) = (parts.proposer.clone(), parts.namespace.clone());
    let app = grpc.merge(weir_api::metrics::routes(registry)).route(
        "/readyz",
        get(move || {
            let m = ready_proposer.metrics();
            let caught_up =
                m.last_applied.map(|l| l.index()) >= m.local_committed.map(|c| c.index());
            let seeded = ready_namespace.ids_seeded().unwrap_or(false);
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
    let background = tokio::spawn(housekeeping(parts.clone(), gauges, stop_rx.clone()));
    let job_loop = {
        let runner = parts.runner.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = runner.wait(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
                runner.tick();
            }
        })
    };
    let bootstrap = {
        let (config, node) = (config.clone(), node.clone());
        tokio::spawn(async move {
            let found = peers_have_leader(&config).await;
            match node.bootstrap(found).await {
                Ok(true) => tracing::info!(
                    "initialised the cluster with {} master(s)",
                    config.peers.len()
                ),
                Ok(false) => tracing::info!("joining the existing cluster"),
                Err(e) => tracing::error!(error = %e, "bootstrap failed"),
            }
        })
    };

    tracing::info!(id = config.id, addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "master serving");
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
    node.shutdown().await;
    served.map_err(|e| MasterError::start("serving", e))
}
