//! A deleted runtime: what owner references cannot remove (the
//! cluster-scoped PV, the node labels), and the wait while a running pod
//! still uses the dataset's PVC.

use super::super::{patch_status, pods_using_claim};
use super::api_of;
use crate::context::{Context, set_condition};
use crate::crd::CacheRuntime;
use crate::names::RuntimeNames;
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use std::sync::Arc;

/// Removes what owner references cannot: the cluster-scoped PV and the
/// node labels. Waits (with a condition and an Event, retried every few
/// seconds) while a running pod still uses the dataset's PVC.
pub(super) async fn cleanup(rt: Arc<CacheRuntime>, ctx: &Context) -> Result<Action> {
    let ns = rt.namespace().unwrap_or_default();
    let name = rt.name_any();
    let names = RuntimeNames::new(&ns, &name);
    let users = pods_using_claim(&ctx.client, &ns, &names.pvc()).await?;
    if !users.is_empty() {
        let message = format!(
            "waiting for pods using PVC {}: {}",
            names.pvc(),
            users.join(", ")
        );
        let mut status = rt.status.clone().unwrap_or_default();
        if set_condition(
            &mut status.conditions,
            "Terminating",
            false,
            "ClaimInUse",
            &message,
            rt.metadata.generation,
        ) {
            ctx.event(rt.as_ref(), true, "DeletionBlocked", message.clone())
                .await;
        }
        patch_status(&api_of(ctx, &ns), &name, &status).await?;
        return Err(Error::Waiting(format!("runtime {ns}/{name}: {message}")));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let _ = claims.delete(&names.pvc(), &DeleteParams::default()).await;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match pvs.delete(&names.pv(), &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let label = names.fuse_label();
    for node in nodes.list(&ListParams::default().labels(&label)).await? {
        let patch = json!({"metadata": {"labels": {label.clone(): null}}});
        nodes
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }
    // Owned objects go with the runtime; the FUSE pods first, so no node
    // keeps a mount of a cache that is going away.
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
    let _ = daemonsets
        .delete(&names.fuse(), &DeleteParams::background())
        .await;
    ctx.forget_masters(&ns, &name);
    ctx.event(
        rt.as_ref(),
        false,
        "Deleted",
        format!("removed PV {} and the FUSE node label", names.pv()),
    )
    .await;
    Ok(Action::await_change())
}
