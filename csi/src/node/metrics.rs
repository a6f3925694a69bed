//! The plugin's metrics on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// What `/metrics` shows of the plugin.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub recoveries: Counter,
    pub takeovers: Counter,
    pub recovery_failures: Counter,
    pub staged: Gauge,
    pub published: Gauge,
}

impl Metrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "weir_csi_mount_recoveries",
            "Mounts re-bound after their FUSE daemon came back",
            self.recoveries.clone(),
        );
        registry.register(
            "weir_csi_fuse_takeovers",
            "FUSE restarts that took over a live mount held here (readers waited, none failed)",
            self.takeovers.clone(),
        );
        registry.register(
            "weir_csi_mount_recovery_failures",
            "Attempts to re-bind a broken mount that failed",
            self.recovery_failures.clone(),
        );
        registry.register(
            "weir_csi_staged_volumes",
            "Volumes staged on this node",
            self.staged.clone(),
        );
        registry.register(
            "weir_csi_published_volumes",
            "Volumes published into pods on this node",
            self.published.clone(),
        );
    }
}
