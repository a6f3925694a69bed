//! The Prometheus endpoint every Weir server offers: a registry rendered
//! in the text exposition format on `/metrics`, with `/healthz` beside it.

use crate::error::{ApiError, ApiResult};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

/// A registry behind a lock, rendered on demand.
#[derive(Debug, Default)]
pub struct Exporter {
    registry: Mutex<Registry>,
}

impl Exporter {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: Mutex::new(registry),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry");
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// `/metrics` (the registry) and `/healthz` (always "ok": the process
/// answers), for a server to serve alone or merge into its own router.
pub fn routes(registry: Registry) -> axum::Router {
    let exporter = Arc::new(Exporter::new(registry));
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(exporter.render())),
        )
        .route("/healthz", axum::routing::get(|| std::future::ready("ok")))
}

/// Serves [`routes`] on `listener` until the task is dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) -> ApiResult<()> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    axum::serve(listener, routes(registry))
        .await
        .map_err(|source| ApiError::Metrics { addr, source })
}

/// Binds `addr` and serves [`routes`] there.
pub async fn bind_and_serve(addr: std::net::SocketAddr, registry: Registry) -> ApiResult<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Metrics {
            addr: addr.to_string(),
            source,
        })?;
    serve(listener, registry).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_registry_is_served_on_metrics_and_the_process_on_healthz() {
        let mut registry = Registry::default();
        let calls = Counter::<u64>::default();
        registry.register("weir_test_calls", "Calls", calls.clone());
        calls.inc_by(3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, registry));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("weir_test_calls_total 3"), "{metrics}");
        assert!(get(addr, "/healthz").await.ends_with("ok"));
        server.abort();
    }
}
