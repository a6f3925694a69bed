//! `weir-csi`: the CSI node plugin of `csi.weir.io`.

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weir_csi::node::{KubeNode, NodeApi, NodeConfig};
use weir_csi::{CsiConfig, run};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's name (the Kubernetes node the plugin runs on).
    #[arg(long, env = "NODE_NAME")]
    node_id: String,
    #[arg(long, env = "KUBELET_ROOT", default_value = "/var/lib/kubelet")]
    kubelet_root: PathBuf,
    /// Datasets' FUSE mounts live below this directory.
    #[arg(long, default_value = "/var/lib/weir/mnt")]
    mount_root: PathBuf,
    #[arg(long, default_value = "/var/lib/weir/csi/state.json")]
    state_file: PathBuf,
    /// How long staging waits for a dataset's FUSE mount.
    #[arg(long, default_value_t = 90)]
    fuse_wait_secs: u64,
    #[arg(long, default_value_t = 1000)]
    repair_every_ms: u64,
    /// Neither label nodes nor write Events (no Kubernetes API, e.g.
    /// under csi-sanity).
    #[arg(long)]
    no_node_labels: bool,
    /// Mount and check mounts in the mount namespace of the host process
    /// of this name (`kubelet`, from a pod with `hostPID`) rather than in
    /// the plugin's own.
    #[arg(long)]
    mount_namespace_of: Option<String>,
    /// Hold FUSE processes' `/dev/fuse` descriptors at this unix socket
    /// (`weir fuse --fd-holder`), so a FUSE restart never breaks a mount.
    #[arg(long, env = "WEIR_CSI_FUSE_FD_HOLDER")]
    fuse_fd_holder: Option<PathBuf>,
    /// Serve Prometheus `/metrics` here.
    #[arg(long, env = "WEIR_CSI_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(serve(args));
    // A call still stuck on a mount must not keep the process (and the FUSE
    // descriptors it holds) alive once serving has stopped.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(process) = args.mount_namespace_of.clone() {
        weir_csi::mounts::use_mount_namespace_of(process, args.kubelet_root.clone());
    }
    let api: Option<Arc<dyn NodeApi>> = if args.no_node_labels {
        None
    } else {
        Some(Arc::new(KubeNode::new(
            kube::Client::try_default().await?,
            args.node_id.clone(),
        )))
    };
    let config = CsiConfig {
        node: NodeConfig {
            node_id: args.node_id,
            kubelet_root: args.kubelet_root,
            mount_root: args.mount_root,
            state_file: args.state_file,
            fuse_wait: Duration::from_secs(args.fuse_wait_secs),
        },
        endpoint: args.endpoint,
        repair_every: Duration::from_millis(args.repair_every_ms),
        metrics_listen: args.metrics_listen,
        fuse_fd_holder: args.fuse_fd_holder,
    };
    run(config, api).await?;
    Ok(())
}
