//! A deleted runtime: what owner references cannot remove (the
//! cluster-scoped PV, the node labels), and the wait while a running pod
//! still uses the dataset's PVC. Every step is bounded: past the
//! operator's clean-up time-out the finalizer lets go, with an Event
//! naming what may remain.

use super::super::{hold_deletion, pods_using_claim};
use crate::Result;
use crate::context::{Context, deleting_for, short};
use crate::crd::CacheRuntime;
use crate::names::RuntimeNames;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use std::sync::Arc;

/// Removes what owner references cannot: the cluster-scoped PV and the
/// node labels. Waits (with a condition and an Event, retried every few
/// seconds) while a running pod still uses the dataset's PVC, or while a
/// step fails, until the clean-up time-out.
pub(super) async fn cleanup(rt: Arc<CacheRuntime>, ctx: &Context) -> Result<Action> {
    let ns = rt.namespace().unwrap_or_default();
    let name = rt.name_any();
    let names = RuntimeNames::new(&ns, &name);
    let timed_out = deleting_for(&rt.metadata) >= ctx.config.cleanup_timeout;
    let mut left = Vec::new();
    let users = pods_using_claim(&ctx.client, &ns, &names.pvc()).await?;
    if !users.is_empty() {
        let message = format!(
            "waiting for pods using PVC {}: {}",
            names.pvc(),
            users.join(", ")
        );
        if !timed_out {
            return wait(&rt, ctx, "ClaimInUse", message).await;
        }
        left.push(format!(
            "PVC {} and PV {} until pods {} stop using them",
            names.pvc(),
            names.pv(),
            users.join(", ")
        ));
    }
    if let Err(e) = remove(ctx, &names).await {
        let message = format!("cleaning up: {}", short(&e));
        if !timed_out {
            return wait(&rt, ctx, "CleanupFailed", message).await;
        }
        left.push(format!(
            "possibly PV {} and node label {} ({message})",
            names.pv(),
            names.fuse_label()
        ));
    }
    ctx.forget_masters(&ns, &name);
    if left.is_empty() {
        ctx.event(
            rt.as_ref(),
            false,
            "Deleted",
            format!("removed PV {} and the FUSE node label", names.pv()),
        )
        .await;
    } else {
        let message = format!(
            "gave up waiting after {}s (the clean-up time-out); left behind: {}",
            ctx.config.cleanup_timeout.as_secs(),
            left.join("; ")
        );
        tracing::warn!(runtime = %name, namespace = %ns, %message, "deletion let go");
        ctx.event(rt.as_ref(), true, "DeletionTimedOut", message)
            .await;
    }
    Ok(Action::await_change())
}

/// Says why the deletion waits.
async fn wait(rt: &CacheRuntime, ctx: &Context, reason: &str, message: String) -> Result<Action> {
    let status = rt.status.clone().unwrap_or_default();
    hold_deletion(
        ctx,
        rt,
        status,
        |s| &mut s.conditions,
        reason,
        message,
        true,
    )
    .await
}

/// The PVC, the PV, the node labels and the FUSE DaemonSet; each tolerant
/// of an object that was never made.
async fn remove(ctx: &Context, names: &RuntimeNames) -> Result<()> {
    let gone = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    gone(
        claims
            .delete(&names.pvc(), &DeleteParams::default())
            .await
            .map(drop),
    )?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    gone(
        pvs.delete(&names.pv(), &DeleteParams::default())
            .await
            .map(drop),
    )?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let label = names.fuse_label();
    for node in nodes.list(&ListParams::default().labels(&label)).await? {
        let patch = json!({"metadata": {"labels": {label.clone(): null}}});
        gone(
            nodes
                .patch(
                    &node.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map(drop),
        )?;
    }
    // Owned objects go with the runtime; the FUSE pods first, so no node
    // keeps a mount of a cache that is going away.
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &names.namespace);
    gone(
        daemonsets
            .delete(&names.fuse(), &DeleteParams::background())
            .await
            .map(drop),
    )?;
    Ok(())
}
