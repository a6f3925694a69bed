//! Weir's CSI node plugin: the Identity and Node services over a unix
//! socket, binding a dataset's FUSE mount into pods and repairing those
//! binds when a FUSE daemon restarts.

pub mod mounts;
pub mod node;
pub mod validate;

/// The CSI v1 messages and services (generated from `proto/csi.proto`).
pub mod proto {
    tonic::include_proto!("csi.v1");
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Every failure of the CSI crate; mapped once to a gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something outside the plugin is not there yet (a FUSE mount, the
    /// apiserver); the CO retries.
    #[error("{0}")]
    Unavailable(String),
    #[error("{what} {path:?}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving on {endpoint}: {message}")]
    Serve { endpoint: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::Unavailable(_) => tonic::Status::unavailable(message),
            Error::Io { .. } | Error::Serve { .. } => tonic::Status::internal(message),
        }
    }
}

/// Settings of `weir-csi`.
#[derive(Debug, Clone)]
pub struct CsiConfig {
    pub node: node::NodeConfig,
    /// `unix:///path/to/csi.sock` or a plain path.
    pub endpoint: String,
    /// How often published mounts are checked for a dead FUSE source.
    pub repair_every: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The unix socket FUSE processes lodge their `/dev/fuse` descriptors
    /// at (`weir fuse --fd-holder`), if the plugin holds them.
    pub fuse_fd_holder: Option<PathBuf>,
}

/// How long in-flight calls may run once the plugin is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the plugin until SIGTERM / ctrl-c; a stale socket from an earlier
/// run is removed first.
pub async fn run(config: CsiConfig, api: Option<Arc<dyn node::NodeApi>>) -> Result<()> {
    let stop = shutdown();
    let path = PathBuf::from(config.endpoint.trim_start_matches("unix://"));
    let serve_err = |message: String| Error::Serve {
        endpoint: config.endpoint.clone(),
        message,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| serve_err(e.to_string()))?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(serve_err(e.to_string())),
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| serve_err(e.to_string()))?;
    let service = Arc::new(node::NodeService::new(config.node.clone(), api)?);
    if let Some(socket) = &config.fuse_fd_holder {
        service.hold_fuse_descriptors(socket)?;
    }
    let metrics_server = match config.metrics_listen {
        Some(addr) => {
            let mut registry = prometheus_client::registry::Registry::default();
            service.metrics.register(&mut registry);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| serve_err(format!("metrics on {addr}: {e}")))?;
            Some(tokio::spawn(weir_api::metrics::serve(listener, registry)))
        }
        None => None,
    };
    // Mounts broken while the plugin was down are repaired at once.
    let repaired = service.repair().await;
    tracing::info!(node = %config.node.node_id, socket = %path.display(), repaired, "CSI node plugin serving");
    let repairer = {
        let service = service.clone();
        let every = config.repair_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                service.repair().await;
            }
        })
    };
    let plugin = node::Plugin(service);
    let stopping = Arc::new(tokio::sync::Notify::new());
    let serving = tonic::transport::Server::builder()
        .add_service(proto::identity_server::IdentityServer::new(plugin.clone()))
        .add_service(proto::controller_server::ControllerServer::new(
            plugin.clone(),
        ))
        .add_service(proto::node_server::NodeServer::new(plugin))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), {
            let stopping = stopping.clone();
            async move {
                stop.await;
                stopping.notify_one();
            }
        });
    // In-flight calls get a few seconds to finish; a call stuck on a mount
    // must not keep the plugin (and the holder's descriptors) from going.
    let served = tokio::select! {
        served = serving => served,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "calls still running at shutdown: leaving them");
            Ok(())
        }
    };
    repairer.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    let _ = std::fs::remove_file(&path);
    served.map_err(|e| serve_err(e.to_string()))
}

/// Resolves on SIGTERM or Ctrl-C, with the handlers installed at the call:
/// as a container's PID 1 the plugin would otherwise lose a SIGTERM that
/// comes while it starts, and wait out the grace period.
fn shutdown() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
}
