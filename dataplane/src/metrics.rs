//! Prometheus metrics shared by Weir's servers, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub method: &'static str,
    pub code: String,
}

/// Per-RPC latency and outcome counts.
#[derive(Debug)]
pub struct RpcMetrics {
    latency: Family<MethodLabels, Histogram>,
    calls: Family<OutcomeLabels, Counter>,
}

impl RpcMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            // 20 µs .. ~5 s
            Histogram::new(exponential_buckets(0.00002, 2.0, 18))
        });
        let calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "weir_rpc_latency_seconds",
            "Latency of gRPC calls served",
            latency.clone(),
        );
        registry.register(
            "weir_rpc_calls",
            "gRPC calls served, by method and status code",
            calls.clone(),
        );
        Self { latency, calls }
    }

    pub fn observe(&self, method: &'static str, error: Option<tonic::Code>, elapsed: Duration) {
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
        let code = match error {
            None => "OK".to_owned(),
            Some(c) => format!("{c:?}"),
        };
        self.calls
            .get_or_create(&OutcomeLabels { method, code })
            .inc();
    }
}

/// Gauges of a master's Raft and namespace.
#[derive(Debug, Default)]
pub struct MasterGauges {
    pub term: Gauge,
    pub commit_index: Gauge,
    pub last_applied: Gauge,
    pub is_leader: Gauge,
    pub inodes: Gauge,
    pub workers: Gauge,
}

impl MasterGauges {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weir_master_raft_term",
            "Current Raft term",
            self.term.clone(),
        );
        registry.register(
            "weir_master_raft_commit_index",
            "Raft commit index",
            self.commit_index.clone(),
        );
        registry.register(
            "weir_master_raft_last_applied",
            "Last log index applied",
            self.last_applied.clone(),
        );
        registry.register(
            "weir_master_is_leader",
            "1 on the leading master",
            self.is_leader.clone(),
        );
        registry.register(
            "weir_master_inodes",
            "Inodes in the namespace",
            self.inodes.clone(),
        );
        registry.register(
            "weir_master_workers",
            "Live workers known to this master",
            self.workers.clone(),
        );
    }
}
