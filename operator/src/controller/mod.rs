//! The three controllers, their shared helpers, and `run`: metrics server,
//! leader election, then the controllers until the Lease is lost or the
//! process is told to stop.

pub mod dataload;
pub mod dataset;
pub mod runtime;

#[cfg(test)]
mod tests;

use crate::context::{Context, ControllerLabels, Metrics, OperatorConfig, ReconcileLabels};
use crate::crd::{CacheRuntime, DataLoad, Dataset};
use crate::leader::Elector;
use crate::names::MANAGER;
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn ssa() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Server-side applies `obj` (namespaced) with the operator's field
/// manager and returns what the apiserver stored.
pub async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api.patch(&name, &ssa(), &Patch::Apply(obj)).await?)
}

/// Writes `status` through the status subresource, replacing it whole: a
/// field the new status leaves out (a finished drain, an old finish time)
/// is removed, which a merge patch would keep.
pub async fn patch_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "add", "path": "/status", "value": status}
    ]))
    .expect("a JSON patch literal");
    api.patch_status(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    Ok(())
}

/// A deletion that waits for something outside the operator: condition
/// `Terminating=True` with `reason` and `message` (and when the time-out
/// lets go), an Event when new and `announce`, then [`Error::Waiting`] so
/// the finalizer stays and the step is retried.
pub async fn hold_deletion<K, S>(
    ctx: &Context,
    obj: &K,
    mut status: S,
    conditions: impl FnOnce(
        &mut S,
    ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    reason: &str,
    message: String,
    announce: bool,
) -> Result<Action>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
    S: Serialize,
{
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let message = format!(
        "{message} (lets go {}s after the deletion began)",
        ctx.config.cleanup_timeout.as_secs()
    );
    let changed = crate::context::set_condition(
        conditions(&mut status),
        "Terminating",
        true,
        reason,
        &message,
        obj.meta().generation,
    );
    if changed && announce {
        ctx.event(obj, true, "DeletionBlocked", message.clone())
            .await;
    }
    patch_status(
        &Api::<K>::namespaced(ctx.client.clone(), &ns),
        &name,
        &status,
    )
    .await?;
    Err(Error::Waiting(format!(
        "{} {ns}/{name}: {message}",
        K::kind(&()).to_lowercase()
    )))
}

/// Pods in `namespace` that mount claim `claim` and have not finished.
pub async fn pods_using_claim(
    client: &Client,
    namespace: &str,
    claim: &str,
) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut users = Vec::new();
    for pod in pods.list(&ListParams::default()).await? {
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let uses = pod.spec.as_ref().is_some_and(|s| {
            s.volumes.iter().flatten().any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == claim)
            })
        });
        if uses && !finished {
            users.push(pod.name_any());
        }
    }
    users.sort();
    Ok(users)
}

/// Times and counts one reconcile.
async fn observed<F>(ctx: &Context, controller: &'static str, f: F) -> Result<Action>
where
    F: Future<Output = Result<Action>>,
{
    let started = Instant::now();
    let result = f.await;
    let m = &ctx.metrics;
    m.reconcile_seconds
        .get_or_create(&ControllerLabels { controller })
        .observe(started.elapsed().as_secs_f64());
    m.reconciles
        .get_or_create(&ReconcileLabels {
            controller,
            outcome: if result.is_ok() { "ok" } else { "error" },
        })
        .inc();
    result
}

fn error_policy<K>(obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action
where
    K: Resource,
{
    if let Error::Finalizer(e) = error
        && let kube::runtime::finalizer::Error::CleanupFailed(Error::Waiting(what)) = e.as_ref()
    {
        tracing::info!(%what, "deletion waits");
        return Action::requeue(Duration::from_secs(3));
    }
    tracing::warn!(
        object = obj.meta().name.as_deref().unwrap_or_default(),
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        error = %error,
        "reconcile failed; retrying"
    );
    Action::requeue(Duration::from_secs(3))
}

fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
}

/// The whole cluster, or the one namespace the operator was told to watch.
fn scoped<K>(ctx: &Context) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match &ctx.config.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// Runs the three controllers until one stream ends.
pub async fn controllers(ctx: Arc<Context>) {
    let runtimes = Controller::new(scoped::<CacheRuntime>(&ctx), watcher::Config::default())
        .owns(scoped::<StatefulSet>(&ctx), managed())
        .owns(scoped::<DaemonSet>(&ctx), managed())
        .watches(scoped::<Dataset>(&ctx), watcher::Config::default(), |ds| {
            Some(ObjectRef::<CacheRuntime>::new(&ds.name_any()).within(&ds.namespace()?))
        })
        .shutdown_on_signal()
        .run(
            |rt, ctx: Arc<Context>| async move {
                observed(&ctx.clone(), "cacheruntime", runtime::reconcile(rt, ctx)).await
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let datasets = Controller::new(scoped::<Dataset>(&ctx), watcher::Config::default())
        .watches(
            scoped::<CacheRuntime>(&ctx),
            watcher::Config::default(),
            |rt| Some(ObjectRef::<Dataset>::new(&rt.name_any()).within(&rt.namespace()?)),
        )
        .shutdown_on_signal()
        .run(
            |ds, ctx: Arc<Context>| async move {
                observed(&ctx.clone(), "dataset", dataset::reconcile(ds, ctx)).await
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let loads = Controller::new(scoped::<DataLoad>(&ctx), watcher::Config::default())
        .shutdown_on_signal()
        .run(
            |dl, ctx: Arc<Context>| async move {
                observed(&ctx.clone(), "dataload", dataload::reconcile(dl, ctx)).await
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    tokio::select! {
        _ = runtimes => {}
        _ = datasets => {}
        _ = loads => {}
    }
}

/// The operator: serves `/metrics`, waits to lead, then reconciles until
/// SIGTERM (releasing the Lease) or until leadership is lost (an error).
pub async fn run(config: OperatorConfig, client: Client) -> Result<()> {
    // Installed now: a standby's SIGTERM must not be lost (as PID 1 of its
    // container it would be) while it waits to lead.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Lease(format!("installing the SIGTERM handler: {e}")))?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let metrics_server = tokio::spawn(weir_api::metrics::bind_and_serve(
        config.metrics_listen,
        registry,
    ));
    let elector = Elector::new(
        client.clone(),
        &config.lease_namespace,
        &config.lease_name,
        &config.identity,
        config.lease_duration,
    );
    let elector = match &config.pod_uid {
        Some(uid) => elector.owned_by_pod(&config.identity, uid),
        None => elector,
    };
    tokio::select! {
        r = elector.acquire() => r?,
        r = metrics_server => return r.map_err(|e| Error::Lease(e.to_string()))?.map_err(Error::Metrics),
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = term.recv() => return Ok(()),
    }
    metrics.leader.set(1);
    let ctx = Arc::new(Context::new(client, config, metrics));
    tokio::select! {
        _ = controllers(ctx.clone()) => {
            elector.release().await;
            tracing::info!("controllers stopped");
            Ok(())
        }
        lost = elector.keep() => {
            ctx.metrics.leader.set(0);
            Err(lost)
        }
    }
}
