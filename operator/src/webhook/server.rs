//! The webhook's HTTPS endpoint: `POST /mutate-pods` takes an
//! AdmissionReview of a pod being created, finds the Weir datasets among
//! its claims and the nodes their workers run on, and answers with the
//! patch of [`super::affinity`] (or, asked to, steers a pod that uses no
//! dataset off the cache nodes). It never refuses a pod: anything it
//! cannot work out (a lookup fails, the body is odd) admits the pod as it
//! came, and the apiserver is told to ignore the webhook when it is down.

use super::affinity::{self, CacheNodes, HOSTNAME_LABEL, ZONE_LABEL};
use super::cert::CertSlot;
use crate::crd::Dataset;
use crate::names::RuntimeNames;
use crate::{Error, Result};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Client};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer is dropped, so one slow peer cannot
/// hold the listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// TCP connections, each accepted once its TLS handshake is done.
struct TlsListener {
    tcp: TcpListener,
    tls: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "webhook handshake failed"),
                Err(_) => tracing::debug!(%peer, "webhook handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// What the handler needs: the API, and whether pods that use no dataset
/// are kept off cache nodes.
#[derive(Clone)]
struct Steering {
    client: Client,
    avoid_cache_nodes: bool,
}

/// Serves the webhook on `addr` with the certificate in `slot`.
pub async fn serve(
    addr: SocketAddr,
    slot: Arc<CertSlot>,
    client: Client,
    avoid_cache_nodes: bool,
) -> Result<()> {
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Webhook(format!("binding {addr}: {e}")))?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(slot);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TlsListener {
        tcp,
        tls: TlsAcceptor::from(Arc::new(tls)),
    };
    let app = Router::new()
        .route("/mutate-pods", post(mutate))
        .with_state(Steering {
            client,
            avoid_cache_nodes,
        });
    tracing::info!(%addr, avoid_cache_nodes, "serving the scheduling webhook");
    axum::serve(listener, app)
        .await
        .map_err(|e| Error::Webhook(format!("serving {addr}: {e}")))
}

#[tracing::instrument(skip_all, fields(pod, namespace))]
async fn mutate(
    State(steering): State<Steering>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "not an admission request");
            return Json(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let allowed = AdmissionResponse::from(&request);
    let (Some(pod), Some(namespace)) = (request.object.as_ref(), request.namespace.as_deref())
    else {
        return Json(allowed.into_review());
    };
    let span = tracing::Span::current();
    span.record("namespace", namespace);
    span.record(
        "pod",
        pod.metadata
            .name
            .as_deref()
            .or(pod.metadata.generate_name.as_deref())
            .unwrap_or_default(),
    );
    if let Some(why) = affinity::left_alone(pod) {
        tracing::debug!(why, "pod left as it is");
        return Json(allowed.into_review());
    }
    let ops = match steer(&steering, pod, namespace).await {
        Ok(Some(ops)) => ops,
        Ok(None) => return Json(allowed.into_review()),
        Err(e) => {
            tracing::warn!(error = %e, "could not find the cache nodes; pod admitted as it is");
            return Json(allowed.into_review());
        }
    };
    let patched = serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops))
        .map_err(|e| e.to_string())
        .and_then(|p| allowed.clone().with_patch(p).map_err(|e| e.to_string()));
    Json(
        match patched {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "patch not built; pod admitted as it is");
                allowed
            }
        }
        .into_review(),
    )
}

/// The patch for `pod`: toward its datasets' cache nodes; when it uses no
/// dataset and that is asked for, away from every cache node.
async fn steer(
    steering: &Steering,
    pod: &Pod,
    namespace: &str,
) -> Result<Option<Vec<serde_json::Value>>> {
    let client = &steering.client;
    let cache = cache_nodes(client, namespace, &affinity::claims(pod)).await?;
    if !cache.datasets.is_empty() {
        let ops = affinity::patch(pod, &cache);
        if ops.is_some() {
            tracing::info!(datasets = ?cache.datasets, nodes = ?cache.hostnames, "pod steered toward its cache");
        }
        return Ok(ops);
    }
    if !steering.avoid_cache_nodes {
        return Ok(None);
    }
    let workers: Api<Pod> = Api::all(client.clone());
    let running = workers
        .list(&ListParams::default().labels(CACHE_WORKERS))
        .await?
        .items;
    let (hostnames, _) = hostnames_and_zones(client, running_nodes(running)).await?;
    let ops = affinity::patch_away(pod, &hostnames);
    if ops.is_some() {
        tracing::info!(nodes = ?hostnames, "pod that uses no dataset steered off the cache nodes");
    }
    Ok(ops)
}

/// Every Weir worker pod, of any runtime.
const CACHE_WORKERS: &str = "app.kubernetes.io/name=weir,app.kubernetes.io/component=worker,app.kubernetes.io/managed-by=weir-operator";

/// The nodes the running ones of `pods` are on.
fn running_nodes(pods: Vec<Pod>) -> BTreeSet<String> {
    pods.into_iter()
        .filter_map(|p| {
            let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
            running.then(|| p.spec?.node_name).flatten()
        })
        .collect()
}

/// The `kubernetes.io/hostname` and zone labels of `nodes`.
async fn hostnames_and_zones(
    client: &Client,
    nodes: BTreeSet<String>,
) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let api: Api<Node> = Api::all(client.clone());
    let (mut hostnames, mut zones) = (BTreeSet::new(), BTreeSet::new());
    for name in nodes {
        let Some(node) = api.get_opt(&name).await? else {
            continue;
        };
        let labels = node.metadata.labels.unwrap_or_default();
        hostnames.insert(labels.get(HOSTNAME_LABEL).cloned().unwrap_or(name));
        if let Some(zone) = labels.get(ZONE_LABEL) {
            zones.insert(zone.clone());
        }
    }
    Ok((hostnames, zones))
}

/// The Weir datasets among `claims` and where their workers run.
async fn cache_nodes(client: &Client, namespace: &str, claims: &[String]) -> Result<CacheNodes> {
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut cache = CacheNodes::default();
    let mut nodes = BTreeSet::new();
    for claim in claims {
        if datasets.get_opt(claim).await?.is_none() {
            continue;
        }
        cache.datasets.insert(claim.clone());
        let workers = pods
            .list(
                &ListParams::default()
                    .labels(&RuntimeNames::new(namespace, claim).selector("worker")),
            )
            .await?;
        nodes.extend(running_nodes(workers.items));
    }
    (cache.hostnames, cache.zones) = hostnames_and_zones(client, nodes).await?;
    Ok(cache)
}
