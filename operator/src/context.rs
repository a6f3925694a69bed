//! What every reconcile shares: the API client, the event recorder, the
//! rendered-object settings, metrics, and connections to each runtime's
//! masters.

use crate::render::RenderConfig;
use crate::{Error, Result};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_api::MasterClient;

/// Settings of `weir-operator`.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub render: RenderConfig,
    /// The port masters serve on (tests run masters elsewhere).
    pub master_port: u16,
    pub metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// This replica's pod UID when it runs in a pod named `identity`.
    pub pod_uid: Option<String>,
    pub lease_duration: Duration,
    /// Reconcile only this namespace's objects (a namespaced install).
    pub watch_namespace: Option<String>,
    /// How long a deletion waits for what it cannot finish (pods still
    /// using the PVC, an object the apiserver refuses to remove) before
    /// it lets go, with an Event naming what may remain.
    pub cleanup_timeout: Duration,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

/// The operator's Prometheus metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_seconds: Family<ControllerLabels, Histogram>,
    pub leader: Gauge,
    pub master_calls: Family<ReconcileLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_seconds: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            leader: Gauge::default(),
            master_calls: Family::default(),
        };
        registry.register(
            "weir_operator_reconciles",
            "Reconciles by controller and outcome",
            m.reconciles.clone(),
        );
        registry.register(
            "weir_operator_reconcile_seconds",
            "Time spent in one reconcile",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "weir_operator_leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        registry.register(
            "weir_operator_master_calls",
            "Calls to runtimes' masters by kind and outcome",
            m.master_calls.clone(),
        );
        m
    }
}

/// `(namespace, name)` of a runtime.
type RuntimeKey = (String, String);
/// The master addresses a client was made for, and the client.
type MasterConnection = (Vec<String>, Arc<MasterClient>);

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub recorder: Recorder,
    pub metrics: Metrics,
    masters: Mutex<HashMap<RuntimeKey, MasterConnection>>,
    /// Held while a host-network runtime chooses its ports.
    pub port_choice: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish()
    }
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Metrics) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: crate::names::MANAGER.into(),
                instance: Some(config.identity.clone()),
            },
        );
        Context {
            client,
            config,
            recorder,
            metrics,
            masters: Mutex::new(HashMap::new()),
            port_choice: tokio::sync::Mutex::new(()),
        }
    }

    /// A client of runtime `name`'s masters, addressed by their pods' IPs
    /// (the operator may run outside the cluster's DNS). `None` while no
    /// master pod has an address.
    pub async fn masters(&self, namespace: &str, name: &str) -> Result<Option<Arc<MasterClient>>> {
        let names = crate::names::RuntimeNames::new(namespace, name);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default().labels(&names.selector("master")))
            .await?;
        let mut addrs: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                // The port the pod was made with (a host-network runtime's
                // own), else the default.
                let port = p
                    .spec
                    .as_ref()?
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|port| port.name.as_deref() == Some("rpc"))
                    .map_or(i32::from(self.config.master_port), |port| {
                        port.container_port
                    });
                Some(format!("{ip}:{port}"))
            })
            .collect();
        if addrs.is_empty() {
            return Ok(None);
        }
        addrs.sort();
        let key = (namespace.to_owned(), name.to_owned());
        let mut cache = self.masters.lock().expect("masters");
        if let Some((known, client)) = cache.get(&key)
            && *known == addrs
        {
            return Ok(Some(client.clone()));
        }
        let client = Arc::new(MasterClient::new(addrs.clone(), Duration::from_secs(8))?);
        cache.insert(key, (addrs, client.clone()));
        Ok(Some(client))
    }

    pub fn forget_masters(&self, namespace: &str, name: &str) {
        self.masters
            .lock()
            .expect("masters")
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Publishes an Event about `obj`; failing to record one is logged, not
    /// fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not record an event");
        }
    }

    pub fn count_master_call(&self, kind: &'static str, ok: bool) {
        self.metrics
            .master_calls
            .get_or_create(&ReconcileLabels {
                controller: kind,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}

/// Sets condition `type_` in `conditions`, keeping its transition time when
/// its status did not change. Returns whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> bool {
    let status = if ok { "True" } else { "False" };
    let message = message.into();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        let changed = c.status != status || c.reason != reason || c.message != message;
        if c.status != status {
            c.last_transition_time = Time(Timestamp::now());
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message;
        c.observed_generation = generation;
        return changed;
    }
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    });
    true
}

/// How long ago the object's deletion began; zero while it is not deleted.
pub fn deleting_for(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Duration {
    meta.deletion_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default()
}

pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Error text safe to show: master errors are about paths and addresses,
/// never option values, but the whole text is bounded.
pub fn short(e: &Error) -> String {
    let mut s = e.to_string();
    if s.len() > 512 {
        s.truncate(512);
        s.push('…');
    }
    s
}
