//! `weir-operator`: the Dataset, CacheRuntime and DataLoad controllers.

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;
use weir_api::telemetry::{self, LogFormat};
use weir_operator::OperatorConfig;
use weir_operator::render::RenderConfig;
use weir_operator::webhook::WebhookConfig;
use weir_operator::webhook::cert::CertSettings;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Image of the masters, workers and FUSE pods.
    #[arg(long, env = "WEIR_IMAGE", default_value = "weir.io/weir:dev")]
    image: String,
    #[arg(long, env = "WEIR_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    image_pull_policy: String,
    #[arg(long, env = "WEIR_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// The nodes' kubelet directory: FUSE pods read the node's workers'
    /// cached blocks from the pod volumes under it.
    #[arg(
        long,
        env = "WEIR_KUBELET_ROOT_DIR",
        default_value = "/var/lib/kubelet"
    )]
    kubelet_root_dir: String,
    /// `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "WEIR_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, default_value = "weir-operator")]
    lease_name: String,
    /// This replica's name in the Lease [default: host name and pid].
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// This replica's pod UID (with `--identity` its pod name): the pod
    /// then owns the Lease it holds.
    #[arg(long, env = "POD_UID", requires = "identity")]
    pod_uid: Option<String>,
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Reconcile only this namespace [default: all namespaces].
    #[arg(long, env = "WEIR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Host path prefixes runtimes may mount (`local://` mounts, hostPath
    /// tiers), comma separated [default: none].
    #[arg(long, env = "WEIR_ALLOWED_HOST_PATHS", value_delimiter = ',')]
    allowed_host_paths: Vec<String>,
    /// How long a deletion waits for pods using the dataset's PVC, or for
    /// a clean-up step that keeps failing, before it lets go.
    #[arg(long, default_value_t = 600)]
    cleanup_timeout_seconds: u64,
    /// Serve the scheduling webhook here (HTTPS) [default: not served].
    #[arg(long, env = "WEIR_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// The Service the apiserver reaches the webhook through (in the
    /// operator's namespace): the certificate names it.
    #[arg(long, default_value = "weir-webhook")]
    webhook_service: String,
    /// The Secret (in the operator's namespace) holding the webhook's CA
    /// and certificate; the operator fills it.
    #[arg(long, default_value = "weir-webhook-tls")]
    webhook_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps.
    #[arg(long, default_value = "weir-scheduling")]
    webhook_configuration: String,
    /// Give pods that use no dataset a preference for the nodes that run no
    /// cache worker.
    #[arg(long, env = "WEIR_WEBHOOK_AVOID_CACHE_NODES")]
    webhook_avoid_cache_nodes: bool,
    /// Life of a serving certificate; a new one is made after two thirds.
    #[arg(long, default_value_t = 365)]
    webhook_cert_days: i64,
    /// Kubeconfig to use instead of the in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init("info", args.log_format)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let identity = args
        .identity
        .unwrap_or_else(|| format!("{}-{}", host.trim(), std::process::id()));
    let config = OperatorConfig {
        render: RenderConfig {
            image: args.image,
            image_pull_policy: args.image_pull_policy,
            cluster_domain: args.cluster_domain,
            ports: Default::default(),
            kubelet_root_dir: args.kubelet_root_dir,
            allowed_host_paths: args
                .allowed_host_paths
                .into_iter()
                .filter(|p| !p.trim().is_empty())
                .collect(),
        },
        master_port: 19200,
        metrics_listen: args.metrics_listen,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        pod_uid: args.pod_uid,
        lease_duration: Duration::from_secs(args.lease_seconds),
        watch_namespace: args.watch_namespace,
        cleanup_timeout: Duration::from_secs(args.cleanup_timeout_seconds),
    };
    let client = client(args.kubeconfig.as_deref()).await?;
    let Some(listen) = args.webhook_listen else {
        weir_operator::run(config, client).await?;
        return Ok(());
    };
    let namespace = config.lease_namespace.clone();
    let service = format!("{}.{namespace}.svc", args.webhook_service);
    let webhook = WebhookConfig {
        listen,
        avoid_cache_nodes: args.webhook_avoid_cache_nodes,
        cert: CertSettings {
            dns_names: vec![
                service.clone(),
                format!("{service}.{}", config.render.cluster_domain),
            ],
            namespace,
            secret: args.webhook_secret,
            configuration: args.webhook_configuration,
            life: time::Duration::days(args.webhook_cert_days.max(1)),
        },
    };
    // Every replica serves the webhook, the leader and the ones waiting.
    tokio::select! {
        r = weir_operator::run(config, client.clone()) => r?,
        r = weir_operator::webhook::run(webhook, client) => r?,
    }
    Ok(())
}
