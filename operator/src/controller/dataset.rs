//! The Dataset controller: `NotBound` while no runtime of its name exists,
//! and deletion: refused (condition + Event naming the pods) while a
//! running pod uses the dataset's PVC, else the runtime goes first.

use super::{hold_deletion, patch_status, pods_using_claim};
use crate::Result;
use crate::context::{Context, deleting_for, set_condition};
use crate::crd::dataset::DatasetPhase;
use crate::crd::{CacheRuntime, Dataset};
use crate::names::FINALIZER_DATASET;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use std::sync::Arc;

#[tracing::instrument(skip_all, fields(dataset = %ds.name_any(), namespace = ds.namespace().unwrap_or_default()))]
pub async fn reconcile(ds: Arc<Dataset>, ctx: Arc<Context>) -> Result<Action> {
    let ns = ds.namespace().unwrap_or_default();
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(finalizer(&api, FINALIZER_DATASET, ds, |event| async {
        match event {
            Finalizer::Apply(ds) => unbound_without_runtime(ds, &ctx).await,
            Finalizer::Cleanup(ds) => delete(ds, &ctx).await,
        }
    })
    .await?)
}

async fn unbound_without_runtime(ds: Arc<Dataset>, ctx: &Context) -> Result<Action> {
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let runtimes: Api<CacheRuntime> = Api::namespaced(ctx.client.clone(), &ns);
    if runtimes.get_opt(&name).await?.is_some() {
        // The runtime controller writes the status from here on.
        return Ok(Action::await_change());
    }
    let mut status = ds.status.clone().unwrap_or_default();
    status.phase = DatasetPhase::NotBound;
    status.runtimes.clear();
    status.cache_states = None;
    set_condition(
        &mut status.conditions,
        "Ready",
        false,
        "NoRuntime",
        format!("no CacheRuntime named {name} in {ns}"),
        ds.metadata.generation,
    );
    if ds.status.as_ref() != Some(&status) {
        patch_status(
            &Api::<Dataset>::namespaced(ctx.client.clone(), &ns),
            &name,
            &status,
        )
        .await?;
    }
    Ok(Action::await_change())
}

async fn delete(ds: Arc<Dataset>, ctx: &Context) -> Result<Action> {
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let timed_out = deleting_for(&ds.metadata) >= ctx.config.cleanup_timeout;
    let users = pods_using_claim(&ctx.client, &ns, &name).await?;
    if !users.is_empty() && !timed_out {
        let message = format!("PVC {name} is in use by running pods: {}", users.join(", "));
        return wait(&ds, ctx, "ClaimInUse", message).await;
    }
    let runtimes: Api<CacheRuntime> = Api::namespaced(ctx.client.clone(), &ns);
    let runtime = match runtimes.get_opt(&name).await {
        Ok(runtime) => runtime,
        Err(e) if !timed_out => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the runtime; the deletion lets go");
            None
        }
    };
    if let Some(rt) = runtime {
        if rt.metadata.deletion_timestamp.is_none() {
            runtimes.delete(&name, &DeleteParams::background()).await?;
            ctx.event(
                ds.as_ref(),
                false,
                "DeletingRuntime",
                format!("deleting CacheRuntime {name}"),
            )
            .await;
        }
        if !timed_out {
            let message =
                format!("waiting for CacheRuntime {name} to clean up (PV, node labels, pods)");
            return wait(&ds, ctx, "DeletingRuntime", message).await;
        }
        // The runtime's own finalizer lets go after the same time-out.
        let message = format!(
            "gave up waiting for CacheRuntime {name} after {}s (the clean-up time-out); \
             it may remain until its own clean-up ends",
            ctx.config.cleanup_timeout.as_secs()
        );
        ctx.event(ds.as_ref(), true, "DeletionTimedOut", message)
            .await;
    }
    if !users.is_empty() {
        let message = format!(
            "gave up waiting for pods using PVC {name} after {}s: {}",
            ctx.config.cleanup_timeout.as_secs(),
            users.join(", ")
        );
        ctx.event(ds.as_ref(), true, "DeletionTimedOut", message)
            .await;
    }
    Ok(Action::await_change())
}

/// Says why the deletion waits; an Event only for pods in the way (the
/// runtime's own wait has its own).
async fn wait(ds: &Dataset, ctx: &Context, reason: &str, message: String) -> Result<Action> {
    let status = ds.status.clone().unwrap_or_default();
    let announce = reason == "ClaimInUse";
    hold_deletion(
        ctx,
        ds,
        status,
        |s| &mut s.conditions,
        reason,
        message,
        announce,
    )
    .await
}
