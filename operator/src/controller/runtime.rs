//! The CacheRuntime controller: config -> masters -> mounts -> workers ->
//! FUSE -> PV + PVC -> Dataset `Bound`, then the status of both from the
//! master's typed API. It also owns the Dataset's status while a runtime
//! exists, so one writer decides the phase.

use super::{apply, patch_status, pods_using_claim};
use crate::context::{Context, condition, set_condition, short};
use crate::crd::dataset::{CacheStates, DatasetPhase, MountStatus};
use crate::crd::runtime::{CacheRuntimeStatus, DrainStatus, RuntimePhase};
use crate::crd::{CacheRuntime, Dataset};
use crate::names::{FINALIZER_RUNTIME, RuntimeNames};
use crate::quantity::human;
use crate::render;
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use weir_api::MountSpec;
use weir_api::proto::master as pb;

/// How often a bound runtime's status is refreshed from its master.
pub const STATUS_PERIOD: Duration = Duration::from_secs(5);

#[tracing::instrument(skip_all, fields(runtime = %rt.name_any(), namespace = rt.namespace().unwrap_or_default()))]
pub async fn reconcile(rt: Arc<CacheRuntime>, ctx: Arc<Context>) -> Result<Action> {
    let ns = rt.namespace().unwrap_or_default();
    let api: Api<CacheRuntime> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(finalizer(&api, FINALIZER_RUNTIME, rt, |event| async {
        match event {
            Finalizer::Apply(rt) => apply_runtime(rt, &ctx).await,
            Finalizer::Cleanup(rt) => cleanup(rt, &ctx).await,
        }
    })
    .await?)
}

fn phase(ready: i32, desired: i32) -> RuntimePhase {
    if ready >= desired {
        RuntimePhase::Ready
    } else if ready > 0 {
        RuntimePhase::PartialReady
    } else {
        RuntimePhase::NotReady
    }
}

async fn apply_runtime(rt: Arc<CacheRuntime>, ctx: &Context) -> Result<Action> {
    let ns = rt.namespace().unwrap_or_default();
    let name = rt.name_any();
    let names = RuntimeNames::new(&ns, &name);
    let generation = rt.metadata.generation;
    let mut status = rt.status.clone().unwrap_or_default();
    status.selector = Some(names.selector("worker"));
    let datasets: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(ds) = datasets.get_opt(&name).await? else {
        set_condition(
            &mut status.conditions,
            "Ready",
            false,
            "DatasetMissing",
            format!("waiting for a Dataset named {name} in {ns}"),
            generation,
        );
        patch_status(&api_of(ctx, &ns), &name, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    if ds.metadata.deletion_timestamp.is_some() {
        // The Dataset's finalizer deletes this runtime; nothing to build.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    // Pinned at creation: an operator upgrade does not roll the cache.
    let image = rt
        .spec
        .image
        .clone()
        .or_else(|| status.image.clone())
        .unwrap_or_else(|| ctx.config.render.image.clone());
    status.image = Some(image.clone());
    let cfg = &crate::render::RenderConfig {
        image,
        ..ctx.config.render.clone()
    };
    let rendered = (|| {
        Ok::<_, Error>((
            render::config_map(&ds, &rt, cfg)?,
            render::master_statefulset(&ds, &rt, cfg)?,
            render::worker_statefulset(&ds, &rt, cfg)?,
            render::desired_mounts(&ds, &rt)?,
        ))
    })();
    let (config, masters, workers, mounts) = match rendered {
        Ok(r) => r,
        Err(Error::Invalid(message)) => {
            let changed = set_condition(
                &mut status.conditions,
                "Ready",
                false,
                "InvalidSpec",
                &message,
                generation,
            );
            patch_status(&api_of(ctx, &ns), &name, &status).await?;
            let mut ds_status = ds.status.clone().unwrap_or_default();
            ds_status.phase = DatasetPhase::Failed;
            set_condition(
                &mut ds_status.conditions,
                "Ready",
                false,
                "InvalidSpec",
                &message,
                ds.metadata.generation,
            );
            patch_status(&datasets, &name, &ds_status).await?;
            if changed {
                ctx.event(rt.as_ref(), true, "InvalidSpec", message).await;
            }
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };

    apply(&ctx.client, &ns, &config).await?;
    apply(&ctx.client, &ns, &render::master_service(&rt)).await?;
    apply(&ctx.client, &ns, &render::client_service(&rt)).await?;
    let masters = apply(&ctx.client, &ns, &masters).await?;
    let want_masters = rt.spec.master.replicas.max(1);
    status.master_number_ready = ready_replicas(&masters);
    status.master_phase = phase(status.master_number_ready, want_masters);

    // Mounts need a leader, which needs a quorum of ready masters.
    let quorum = want_masters / 2 + 1;
    let mounted = if status.master_number_ready >= quorum {
        match apply_mounts(ctx, &ns, &name, &mounts).await {
            Ok(changes) => {
                if !changes.is_empty() {
                    status.mount_time = Some(Timestamp::now().to_string());
                    ctx.event(rt.as_ref(), false, "MountsApplied", changes.join("; "))
                        .await;
                }
                set_condition(
                    &mut status.conditions,
                    "MountsApplied",
                    true,
                    "Mounted",
                    format!("{} mount(s) on the master", mounts.len()),
                    generation,
                );
                true
            }
            Err(e) => {
                let message = short(&e);
                if set_condition(
                    &mut status.conditions,
                    "MountsApplied",
                    false,
                    "MountFailed",
                    &message,
                    generation,
                ) {
                    ctx.event(rt.as_ref(), true, "MountFailed", message).await;
                }
                false
            }
        }
    } else {
        set_condition(
            &mut status.conditions,
            "MountsApplied",
            false,
            "WaitingForMasters",
            format!(
                "{} of {want_masters} masters ready, {quorum} needed",
                status.master_number_ready
            ),
            generation,
        );
        false
    };

    let mut workers = workers;
    let replicas = scale_in(ctx, &rt, &names, mounted, &mut status).await?;
    if let Some(spec) = workers.spec.as_mut() {
        spec.replicas = Some(replicas);
    }
    let workers = apply(&ctx.client, &ns, &workers).await?;
    status.worker_number_ready = ready_replicas(&workers);
    status.worker_phase = phase(status.worker_number_ready, rt.spec.replicas);
    let fuse = apply(&ctx.client, &ns, &render::fuse_daemonset(&ds, &rt, cfg)).await?;
    let fuse_status = fuse.status.unwrap_or_default();
    status.fuse_number_ready = fuse_status.number_ready;
    status.fuse_phase = phase(
        fuse_status.number_ready,
        fuse_status.desired_number_scheduled,
    );

    let pv = render::persistent_volume(&ds, &rt);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    pvs.patch(&names.pv(), &super::ssa(), &Patch::Apply(&pv))
        .await?;
    let claim = apply(&ctx.client, &ns, &render::persistent_volume_claim(&ds, &rt)).await?;
    let claim_bound = claim.status.and_then(|s| s.phase).as_deref() == Some("Bound");

    // A worker must be there to serve a read: a pod that mounts the PVC
    // the moment the Dataset is Bound reads at once.
    let serving = rt.spec.replicas == 0 || status.worker_number_ready > 0;
    let ready = mounted && claim_bound && serving && status.master_phase == RuntimePhase::Ready;
    let (reason, message) = if ready {
        (
            "Ready",
            "masters ready, mounts applied, workers serving, PVC bound".to_owned(),
        )
    } else if !mounted {
        (
            "NotMounted",
            condition(&status.conditions, "MountsApplied")
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        )
    } else if !claim_bound {
        (
            "ClaimPending",
            format!("PVC {} is not bound yet", names.pvc()),
        )
    } else if !serving {
        ("WorkersNotReady", "no worker is ready yet".to_owned())
    } else {
        (
            "MastersNotReady",
            format!(
                "{} of {want_masters} masters ready",
                status.master_number_ready
            ),
        )
    };
    set_condition(
        &mut status.conditions,
        "Ready",
        ready,
        reason,
        message,
        generation,
    );
    patch_status(&api_of(ctx, &ns), &name, &status).await?;

    update_dataset(ctx, &ds, &rt, &mounts, mounted && claim_bound && serving).await?;
    Ok(Action::requeue(if ready {
        STATUS_PERIOD
    } else {
        Duration::from_secs(2)
    }))
}

/// How long a scale-in waits for blocks to be copied off leaving workers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The worker count to apply now. Scaling in, the leaving workers (the
/// highest ordinals) are first drained: the master places nothing new on
/// them, and a replicate job copies the blocks only they hold to the other
/// workers while there is room; their pods go when that finishes or
/// [`DRAIN_TIMEOUT`] passes. Reads meanwhile keep being served by them.
async fn scale_in(
    ctx: &Context,
    rt: &CacheRuntime,
    names: &RuntimeNames,
    master_up: bool,
    status: &mut CacheRuntimeStatus,
) -> Result<i32> {
    let desired = rt.spec.replicas;
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let current = sets
        .get_opt(&names.worker())
        .await?
        .and_then(|s| s.spec?.replicas)
        .unwrap_or(desired);
    let generation = rt.metadata.generation;
    let master = if master_up {
        ctx.masters(&names.namespace, &names.name).await?
    } else {
        None
    };
    let Some(master) = master else {
        // Without a master there is nothing to drain through.
        return Ok(desired);
    };
    let drain_hosts = |hosts: Vec<String>| {
        let master = master.clone();
        async move {
            let r = master
                .call(|mut c| {
                    let hosts = hosts.clone();
                    async move { c.drain_workers(pb::DrainRequest { hosts }).await }
                })
                .await;
            ctx.count_master_call("drain_workers", r.is_ok());
            r.map_err(Error::from)
        }
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    if let Some(drain) = status.drain.clone() {
        let gone = {
            let mut all_gone = true;
            for pod in &drain.pods {
                all_gone &= pods.get_opt(pod).await?.is_none();
            }
            all_gone
        };
        if desired >= current && !drain.released || drain.released && gone {
            // Scaled back up mid-drain, or the leaving pods are gone.
            drain_hosts(Vec::new()).await?;
            status.drain = None;
            set_condition(
                &mut status.conditions,
                "Scaling",
                true,
                "Scaled",
                format!("{desired} worker(s)"),
                generation,
            );
            return Ok(desired);
        }
        if drain.released {
            return Ok(desired);
        }
        let report = drain_hosts(drain.hosts.clone()).await?;
        let sole: u64 = report.workers.iter().map(|w| w.sole_blocks).sum();
        let job_over = match drain.job_id {
            None => true,
            Some(id) => {
                let job = master
                    .call(|mut c| async move { c.get_job(pb::JobId { id }).await })
                    .await;
                ctx.count_master_call("get_job", job.is_ok());
                // A lost job (leader lost its state) ends the wait too.
                job.map(|j| {
                    j.state != pb::JobState::Running as i32
                        && j.state != pb::JobState::Pending as i32
                })
                .unwrap_or(true)
            }
        };
        let started: Timestamp = drain.started.parse().unwrap_or_else(|_| Timestamp::now());
        let waited = Timestamp::now().duration_since(started).unsigned_abs();
        if sole == 0 || job_over || waited > DRAIN_TIMEOUT {
            let note = if sole == 0 {
                format!(
                    "drained {}: every block they held is on another worker",
                    drain.pods.join(", ")
                )
            } else {
                format!(
                    "removing {} with {sole} block(s) only there (no room elsewhere or {DRAIN_TIMEOUT:?} passed); they are read from the under-storage again when needed",
                    drain.pods.join(", ")
                )
            };
            ctx.event(rt, sole > 0, "WorkersDrained", note).await;
            status.drain = Some(DrainStatus {
                released: true,
                ..drain
            });
            return Ok(desired);
        }
        set_condition(
            &mut status.conditions,
            "Scaling",
            false,
            "Draining",
            format!(
                "draining {}: {sole} block(s) only there, copying them to the other workers",
                drain.pods.join(", ")
            ),
            generation,
        );
        return Ok(current);
    }
    if desired >= current {
        return Ok(desired);
    }
    let mut leaving = Vec::new();
    let mut hosts = Vec::new();
    for ordinal in desired..current {
        let pod = format!("{}-{ordinal}", names.worker());
        if let Some(ip) = pods.get_opt(&pod).await?.and_then(|p| p.status?.pod_ip) {
            hosts.push(ip);
        }
        leaving.push(pod);
    }
    let report = drain_hosts(hosts.clone()).await?;
    let sole: u64 = report.workers.iter().map(|w| w.sole_blocks).sum();
    let job_id = if sole > 0 {
        let spec = pb::JobSpec {
            kind: pb::JobKind::Replicate as i32,
            paths: vec!["/".into()],
            replicas: 1,
            load_what_fits: true,
            ..Default::default()
        };
        let job = master
            .call(|mut c| {
                let spec = spec.clone();
                async move { c.submit_job(spec).await }
            })
            .await;
        ctx.count_master_call("submit_job", job.is_ok());
        Some(job?.id)
    } else {
        None
    };
    ctx.event(
        rt,
        false,
        "Draining",
        format!(
            "scaling workers {current} -> {desired}: draining {} ({sole} block(s) only there)",
            leaving.join(", ")
        ),
    )
    .await;
    status.drain = Some(DrainStatus {
        pods: leaving,
        hosts,
        job_id,
        started: Timestamp::now().to_string(),
        released: false,
    });
    // The next reconcile checks the drain (soon: it is usually quick).
    Ok(current)
}

fn api_of(ctx: &Context, ns: &str) -> Api<CacheRuntime> {
    Api::namespaced(ctx.client.clone(), ns)
}

fn ready_replicas(sts: &StatefulSet) -> i32 {
    sts.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn same_mount(have: &pb::MountPoint, want: &MountSpec) -> bool {
    MountSpec::from_point(have.clone()).0 == *want
}

/// Makes the master's mount table the dataset's: mounts what is missing
/// (also after a master lost its state), re-mounts what changed, unmounts
/// what the dataset no longer has. Returns what it changed.
async fn apply_mounts(
    ctx: &Context,
    ns: &str,
    name: &str,
    desired: &[MountSpec],
) -> Result<Vec<String>> {
    let master = ctx
        .masters(ns, name)
        .await?
        .ok_or_else(|| Error::NoMaster("no master pod has an address yet".into()))?;
    let table = master
        .call(|mut c| async move { c.get_mount_table(pb::Empty {}).await })
        .await;
    ctx.count_master_call("mount_table", table.is_ok());
    let table = table?;
    let mut changes = Vec::new();
    for have in &table.mounts {
        if !desired.iter().any(|d| d.path == have.path) {
            unmount(ctx, &master, &have.path).await?;
            changes.push(format!("unmounted {}", have.path));
        }
    }
    for want in desired {
        match table.mounts.iter().find(|m| m.path == want.path) {
            Some(have) if same_mount(have, want) => continue,
            Some(_) => {
                unmount(ctx, &master, &want.path).await?;
                changes.push(format!("re-mounted {} from {}", want.path, want.ufs_uri));
            }
            None => changes.push(format!("mounted {} from {}", want.path, want.ufs_uri)),
        }
        let req = want.to_request();
        let done = master
            .call(|mut c| {
                let req = req.clone();
                async move { c.mount(req).await }
            })
            .await;
        ctx.count_master_call("mount", done.is_ok());
        done.map_err(|source| Error::MasterCall {
            what: format!("mounting {} at {}", want.ufs_uri, want.path),
            source,
        })?;
    }
    Ok(changes)
}

async fn unmount(ctx: &Context, master: &weir_api::MasterClient, path: &str) -> Result<()> {
    let req = pb::PathRequest { path: path.into() };
    let done = master
        .call(|mut c| {
            let req = req.clone();
            async move { c.unmount(req).await }
        })
        .await;
    ctx.count_master_call("unmount", done.is_ok());
    done.map_err(|source| Error::MasterCall {
        what: format!("unmounting {path}"),
        source,
    })?;
    Ok(())
}

/// The Dataset's phase and cache states. Counting files never holds back
/// `Bound`: while it runs, the totals say so.
async fn update_dataset(
    ctx: &Context,
    ds: &Dataset,
    rt: &CacheRuntime,
    mounts: &[MountSpec],
    bound: bool,
) -> Result<()> {
    let ns = rt.namespace().unwrap_or_default();
    let name = rt.name_any();
    let mut status = ds.status.clone().unwrap_or_default();
    status.runtimes = vec![format!("{ns}/{name}")];
    status.mounts = mounts
        .iter()
        .map(|m| MountStatus {
            mount_point: m.ufs_uri.clone(),
            path: m.path.clone(),
            read_only: m.read_only,
        })
        .collect();
    if bound {
        status.phase = DatasetPhase::Bound;
        set_condition(
            &mut status.conditions,
            "Ready",
            true,
            "Bound",
            format!("bound to runtime {name}; PVC {name}"),
            ds.metadata.generation,
        );
    } else if status.phase != DatasetPhase::Bound {
        status.phase = DatasetPhase::NotBound;
        set_condition(
            &mut status.conditions,
            "Ready",
            false,
            "RuntimeNotReady",
            format!("runtime {name} is starting"),
            ds.metadata.generation,
        );
    }
    if bound {
        match cache_states(ctx, &ns, &name, mounts).await {
            Ok(Some((states, total, files))) => {
                status.cache_states = Some(states);
                status.ufs_total = Some(total);
                status.file_num = Some(files);
                set_condition(
                    &mut status.conditions,
                    "StatusCurrent",
                    true,
                    "FromMaster",
                    "cache states read from the leader",
                    ds.metadata.generation,
                );
            }
            Ok(None) => {}
            Err(e) => {
                set_condition(
                    &mut status.conditions,
                    "StatusCurrent",
                    false,
                    "MasterUnreachable",
                    short(&e),
                    ds.metadata.generation,
                );
            }
        }
    }
    if ds.status.as_ref() != Some(&status) {
        patch_status(
            &Api::<Dataset>::namespaced(ctx.client.clone(), &ns),
            &name,
            &status,
        )
        .await?;
    }
    Ok(())
}

async fn cache_states(
    ctx: &Context,
    ns: &str,
    name: &str,
    mounts: &[MountSpec],
) -> Result<Option<(CacheStates, String, String)>> {
    let Some(master) = ctx.masters(ns, name).await? else {
        return Ok(None);
    };
    let info = master
        .call(|mut c| async move { c.get_cluster_info(pb::Empty {}).await })
        .await;
    ctx.count_master_call("cluster_info", info.is_ok());
    let info = info?;
    let ours: Vec<&pb::MountStats> = info
        .mounts
        .iter()
        .filter(|m| mounts.iter().any(|d| d.path == m.path))
        .collect();
    let cached: u64 = ours.iter().map(|m| m.cached_bytes).sum();
    let total: u64 = ours.iter().map(|m| m.ufs_total_bytes).sum();
    let files: u64 = ours.iter().map(|m| m.file_count).sum();
    let counting = ours.iter().any(|m| !m.count_complete);
    let percentage = if total > 0 {
        format!("{:.1}%", (cached as f64 / total as f64 * 100.0).min(100.0))
    } else {
        "0.0%".into()
    };
    let suffix = if counting { " (counting)" } else { "" };
    Ok(Some((
        CacheStates {
            cached: human(cached),
            cache_capacity: human(info.capacity_bytes),
            cached_percentage: format!("{percentage}{suffix}"),
            cache_hit_ratio: format!("{:.1}%", info.hit_ratio * 100.0),
        },
        format!("{}{suffix}", human(total)),
        format!("{files}{suffix}"),
    )))
}

/// Removes what owner references cannot: the cluster-scoped PV and the
/// node labels. Waits (with a condition and an Event, retried every few
/// seconds) while a running pod still uses the dataset's PVC.
async fn cleanup(rt: Arc<CacheRuntime>, ctx: &Context) -> Result<Action> {
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
