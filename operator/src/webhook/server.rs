//! The webhook's HTTPS endpoint: `POST /mutate-pods` takes an
//! AdmissionReview of a pod being created, finds the Weir datasets among
//! its claims and the nodes their workers run on, and answers with the
//! patch of [`super::affinity`]. It never refuses a pod: anything it
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

/// Serves the webhook on `addr` with the certificate in `slot`.
pub async fn serve(addr: SocketAddr, slot: Arc<CertSlot>, client: Client) -> Result<()> {
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
        .with_state(client);
    tracing::info!(%addr, "serving the scheduling webhook");
    axum::serve(listener, app)
        .await
        .map_err(|e| Error::Webhook(format!("serving {addr}: {e}")))
}

#[tracing::instrument(skip_all, fields(pod, namespace))]
async fn mutate(
    State(client): State<Client>,
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
    let claims = affinity::claims(pod);
    if claims.is_empty() {
        return Json(allowed.into_review());
    }
    let cache = match cache_nodes(&client, namespace, &claims).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "could not find the cache nodes; pod admitted as it is");
            return Json(allowed.into_review());
        }
    };
    let Some(ops) = affinity::patch(pod, &cache) else {
        return Json(allowed.into_review());
    };
    tracing::info!(datasets = ?cache.datasets, nodes = ?cache.hostnames, "pod steered toward its cache");
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

/// The Weir datasets among `claims` and where their workers run.
async fn cache_nodes(client: &Client, namespace: &str, claims: &[String]) -> Result<CacheNodes> {
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let nodes: Api<Node> = Api::all(client.clone());
    let mut cache = CacheNodes::default();
    let mut node_names = std::collections::BTreeSet::new();
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
        node_names.extend(workers.items.into_iter().filter_map(|p| {
            let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
            running.then(|| p.spec?.node_name).flatten()
        }));
    }
    for name in node_names {
        let Some(node) = nodes.get_opt(&name).await? else {
            continue;
        };
        let labels = node.metadata.labels.unwrap_or_default();
        cache
            .hostnames
            .insert(labels.get(HOSTNAME_LABEL).cloned().unwrap_or(name));
        if let Some(zone) = labels.get(ZONE_LABEL) {
            cache.zones.insert(zone.clone());
        }
    }
    Ok(cache)
}
