//! The CacheRuntime controller: config -> masters -> mounts -> workers ->
//! FUSE -> PV + PVC -> Dataset `Bound`, then the status of both from the
//! master's typed API. It also owns the Dataset's status while a runtime
//! exists, so one writer decides the phase.
//!
//! - [`mounts`]: the master's mount table made the dataset's
//! - [`scale`]: scaling workers in by draining the leaving ones first
//! - [`status`]: the Dataset's phase and cache states
//! - [`cleanup`]: what a deleted runtime leaves for the operator to remove

mod cleanup;
mod mounts;
mod scale;
mod status;

use super::{apply, patch_status};
use crate::context::{Context, condition, set_condition, short};
use crate::crd::dataset::DatasetPhase;
use crate::crd::runtime::{CacheRuntimeStatus, NetworkMode, RuntimePhase};
use crate::crd::{CacheRuntime, Dataset};
use crate::names::{FINALIZER_RUNTIME, MANAGER, RuntimeNames};
use crate::render::ports::{HOST_PORTS, choose_base};
use crate::render::{self, Ports, RenderConfig};
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use weir_api::MountSpec;

/// How often a bound runtime's status is refreshed from its master.
pub const STATUS_PERIOD: Duration = Duration::from_secs(5);

#[tracing::instrument(skip_all, fields(runtime = %rt.name_any(), namespace = rt.namespace().unwrap_or_default()))]
pub async fn reconcile(rt: Arc<CacheRuntime>, ctx: Arc<Context>) -> Result<Action> {
    let ns = rt.namespace().unwrap_or_default();
    let api: Api<CacheRuntime> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(finalizer(&api, FINALIZER_RUNTIME, rt, |event| async {
        match event {
            Finalizer::Apply(rt) => apply_runtime(rt, &ctx).await,
            Finalizer::Cleanup(rt) => cleanup::cleanup(rt, &ctx).await,
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

/// What a runtime renders to before anything is applied.
struct Rendered {
    config: ConfigMap,
    master_service: k8s_openapi::api::core::v1::Service,
    client_service: k8s_openapi::api::core::v1::Service,
    masters: StatefulSet,
    workers: StatefulSet,
    mounts: Vec<MountSpec>,
}

/// One reconcile of a runtime: one object after the other, each waiting
/// for what it needs, the conditions saying where it stands.
struct Step<'a> {
    ctx: &'a Context,
    rt: &'a CacheRuntime,
    names: RuntimeNames,
    generation: Option<i64>,
    status: CacheRuntimeStatus,
}

async fn apply_runtime(rt: Arc<CacheRuntime>, ctx: &Context) -> Result<Action> {
    let ns = rt.namespace().unwrap_or_default();
    let name = rt.name_any();
    let mut step = Step {
        ctx,
        rt: &rt,
        names: RuntimeNames::new(&ns, &name),
        generation: rt.metadata.generation,
        status: rt.status.clone().unwrap_or_default(),
    };
    step.status.selector = Some(step.names.selector("worker"));
    let datasets: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(ds) = datasets.get_opt(&name).await? else {
        step.condition(
            "Ready",
            false,
            "DatasetMissing",
            format!("waiting for a Dataset named {name} in {ns}"),
        );
        step.save().await?;
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
        .or_else(|| step.status.image.clone())
        .unwrap_or_else(|| ctx.config.render.image.clone());
    step.status.image = Some(image.clone());
    let ports = step.ports().await?;
    let cfg = &RenderConfig {
        image,
        ports,
        ..ctx.config.render.clone()
    };
    let Some(rendered) = step.render(&ds, cfg).await? else {
        return Ok(Action::await_change());
    };
    let applied = async {
        let mounted = step.masters_and_mounts(&rendered).await?;
        step.workers_and_fuse(&ds, cfg, rendered.workers.clone(), mounted)
            .await?;
        let claim_bound = step.volume(&ds).await?;
        Ok::<_, Error>((mounted, claim_bound))
    }
    .await;
    let (mounted, claim_bound) = match applied {
        Ok(done) => done,
        Err(e) => {
            // An apiserver refusal (a rejected object, a quota) or a master
            // error: on the objects, not only in the operator's log.
            let phase = ds.status.clone().unwrap_or_default().phase;
            step.fail(&ds, phase, "ApplyFailed", short(&e)).await?;
            return Err(e);
        }
    };
    // A worker must be there to serve a read: a pod that mounts the PVC
    // the moment the Dataset is Bound reads at once.
    let serving = rt.spec.replicas == 0 || step.status.worker_number_ready > 0;
    let unschedulable = step.unschedulable().await?;
    let ready = step.readiness(mounted, claim_bound, serving, unschedulable.clone());
    if let Some(why) = unschedulable
        && condition(&rt.status.clone().unwrap_or_default().conditions, "Ready")
            .is_none_or(|c| c.message != why)
    {
        ctx.event(rt.as_ref(), true, "Unschedulable", why.clone())
            .await;
        ctx.event(&ds, true, "Unschedulable", why).await;
    }
    step.save().await?;
    let bound = mounted && claim_bound && serving;
    status::update_dataset(ctx, &ds, &rt, &rendered.mounts, bound).await?;
    Ok(Action::requeue(if ready {
        STATUS_PERIOD
    } else {
        Duration::from_secs(2)
    }))
}

impl Step<'_> {
    /// The runtime's ports: the defaults on the pod network; on the host's,
    /// its own block, chosen on first use among the blocks no other
    /// runtime holds and saved in its status before anything listens.
    async fn ports(&mut self) -> Result<Ports> {
        if self.rt.spec.network_mode != NetworkMode::HostNetwork {
            return Ok(Ports::default());
        }
        if let Some(base) = self.status.host_port_base {
            return Ok(Ports::from_base(base));
        }
        // One choice at a time: two runtimes reconciled side by side must
        // not both take the same free block.
        let _turn = self.ctx.port_choice.lock().await;
        let all: Api<CacheRuntime> = Api::all(self.ctx.client.clone());
        let key = format!("{}/{}", self.names.namespace, self.names.name);
        let taken: BTreeSet<i32> = all
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|r| format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any()) != key)
            .filter_map(|r| r.status.as_ref()?.host_port_base)
            .collect();
        let base = choose_base(&key, &taken).ok_or_else(|| {
            Error::Invalid(format!(
                "spec.networkMode: HostNetwork: every block of host ports in {:?} is taken by another runtime",
                HOST_PORTS
            ))
        })?;
        self.status.host_port_base = Some(base);
        self.save().await?;
        tracing::info!(base, "host ports chosen");
        Ok(Ports::from_base(base))
    }

    fn condition(
        &mut self,
        kind: &str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> bool {
        set_condition(
            &mut self.status.conditions,
            kind,
            ok,
            reason,
            message,
            self.generation,
        )
    }

    async fn save(&self) -> Result<()> {
        patch_status(
            &api_of(self.ctx, &self.names.namespace),
            &self.names.name,
            &self.status,
        )
        .await
    }

    /// The runtime's objects, or `None` when the spec cannot be realised:
    /// both the runtime and the Dataset are then marked with the reason.
    async fn render(&mut self, ds: &Dataset, cfg: &RenderConfig) -> Result<Option<Rendered>> {
        let rt = self.rt;
        let rendered = (|| {
            render::check_host_paths(ds, rt, &cfg.allowed_host_paths)?;
            Ok::<_, Error>(Rendered {
                config: render::config_map(ds, rt, cfg)?,
                master_service: render::master_service(rt, cfg),
                client_service: render::client_service(rt, cfg),
                masters: render::master_statefulset(ds, rt, cfg)?,
                workers: render::worker_statefulset(ds, rt, cfg)?,
                mounts: render::desired_mounts(ds, rt)?,
            })
        })();
        let (reason, message) = match rendered {
            Ok(r) => return Ok(Some(r)),
            Err(Error::Invalid(message)) => ("InvalidSpec", message),
            Err(Error::HostPathNotAllowed(message)) => ("HostPathNotAllowed", message),
            Err(e) => return Err(e),
        };
        self.fail(ds, DatasetPhase::Failed, reason, message).await?;
        Ok(None)
    }

    /// Marks the runtime and its Dataset not ready for `reason`, with an
    /// Event on each when the reason or message is new: what the operator
    /// would otherwise only log is where the user looks.
    async fn fail(
        &mut self,
        ds: &Dataset,
        phase: DatasetPhase,
        reason: &str,
        message: String,
    ) -> Result<()> {
        let changed = self.condition("Ready", false, reason, &message);
        self.save().await?;
        let mut ds_status = ds.status.clone().unwrap_or_default();
        ds_status.phase = phase;
        set_condition(
            &mut ds_status.conditions,
            "Ready",
            false,
            reason,
            &message,
            ds.metadata.generation,
        );
        let datasets: Api<Dataset> =
            Api::namespaced(self.ctx.client.clone(), &self.names.namespace);
        patch_status(&datasets, &self.names.name, &ds_status).await?;
        if changed {
            self.ctx.event(self.rt, true, reason, message.clone()).await;
            self.ctx.event(ds, true, reason, message).await;
        }
        Ok(())
    }

    /// The config, Services and masters; then, once a quorum of masters is
    /// ready, the mounts. Returns whether the mounts are applied.
    async fn masters_and_mounts(&mut self, rendered: &Rendered) -> Result<bool> {
        let (ctx, rt, ns) = (self.ctx, self.rt, self.names.namespace.clone());
        apply(&ctx.client, &ns, &rendered.config).await?;
        apply(&ctx.client, &ns, &rendered.master_service).await?;
        apply(&ctx.client, &ns, &rendered.client_service).await?;
        let masters = apply(&ctx.client, &ns, &rendered.masters).await?;
        let want = rt.spec.master.replicas.max(1);
        self.status.master_number_ready = ready_replicas(&masters);
        self.status.master_phase = phase(self.status.master_number_ready, want);
        // Mounts need a leader, which needs a quorum of ready masters.
        let quorum = want / 2 + 1;
        if self.status.master_number_ready < quorum {
            let message = format!(
                "{} of {want} masters ready, {quorum} needed",
                self.status.master_number_ready
            );
            self.condition("MountsApplied", false, "WaitingForMasters", message);
            return Ok(false);
        }
        match mounts::apply_mounts(ctx, &ns, &self.names.name, &rendered.mounts).await {
            Ok(changes) => {
                if !changes.is_empty() {
                    self.status.mount_time = Some(Timestamp::now().to_string());
                    ctx.event(rt, false, "MountsApplied", changes.join("; "))
                        .await;
                }
                let message = format!("{} mount(s) on the master", rendered.mounts.len());
                self.condition("MountsApplied", true, "Mounted", message);
                Ok(true)
            }
            Err(e) => {
                let message = short(&e);
                if self.condition("MountsApplied", false, "MountFailed", &message) {
                    ctx.event(rt, true, "MountFailed", message).await;
                }
                Ok(false)
            }
        }
    }

    /// The workers (scaled in through a drain) and the FUSE DaemonSet.
    async fn workers_and_fuse(
        &mut self,
        ds: &Dataset,
        cfg: &RenderConfig,
        mut workers: StatefulSet,
        mounted: bool,
    ) -> Result<()> {
        let (ctx, rt, ns) = (self.ctx, self.rt, self.names.namespace.clone());
        let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        if !mounted && sets.get_opt(&self.names.worker()).await?.is_none() {
            // Workers register with a leader and serve the mounts: none
            // starts before the masters have both.
            self.status.worker_number_ready = 0;
            self.status.worker_phase = RuntimePhase::NotReady;
            return Ok(());
        }
        let replicas = scale::scale_in(ctx, rt, &self.names, mounted, &mut self.status).await?;
        if let Some(spec) = workers.spec.as_mut() {
            spec.replicas = Some(replicas);
        }
        let workers = apply(&ctx.client, &ns, &workers).await?;
        self.status.worker_number_ready = ready_replicas(&workers);
        self.status.worker_phase = phase(self.status.worker_number_ready, rt.spec.replicas);
        let fuse = apply(&ctx.client, &ns, &render::fuse_daemonset(ds, rt, cfg)).await?;
        let fuse_status = fuse.status.unwrap_or_default();
        self.status.fuse_number_ready = fuse_status.number_ready;
        self.status.fuse_phase = phase(
            fuse_status.number_ready,
            fuse_status.desired_number_scheduled,
        );
        Ok(())
    }

    /// The PV and the PVC; returns whether the PVC is bound.
    async fn volume(&self, ds: &Dataset) -> Result<bool> {
        let (ctx, rt) = (self.ctx, self.rt);
        let pv = render::persistent_volume(ds, rt);
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        pvs.patch(&self.names.pv(), &super::ssa(), &Patch::Apply(&pv))
            .await?;
        let claim = render::persistent_volume_claim(ds, rt);
        let claim = apply(&ctx.client, &self.names.namespace, &claim).await?;
        Ok(claim.status.and_then(|s| s.phase).as_deref() == Some("Bound"))
    }

    /// Why the runtime's pods that the scheduler cannot place wait, in the
    /// scheduler's words; `None` when every pod is placed.
    async fn unschedulable(&self) -> Result<Option<String>> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.names.namespace);
        let selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={MANAGER}",
            self.names.name
        );
        let mut stuck = Vec::new();
        for pod in pods.list(&ListParams::default().labels(&selector)).await? {
            let conditions = pod
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten());
            for c in conditions {
                if c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                {
                    let why = c.message.clone().unwrap_or_default();
                    stuck.push(format!("{}: {why}", pod.name_any()));
                }
            }
        }
        stuck.sort();
        Ok((!stuck.is_empty()).then(|| format!("pods cannot be scheduled: {}", stuck.join("; "))))
    }

    /// Sets the `Ready` condition from what the steps found; returns it.
    fn readiness(
        &mut self,
        mounted: bool,
        claim_bound: bool,
        serving: bool,
        unschedulable: Option<String>,
    ) -> bool {
        let want = self.rt.spec.master.replicas.max(1);
        let ready =
            mounted && claim_bound && serving && self.status.master_phase == RuntimePhase::Ready;
        let (reason, message) = if ready {
            (
                "Ready",
                "masters ready, mounts applied, workers serving, PVC bound".to_owned(),
            )
        } else if let Some(why) = unschedulable {
            ("Unschedulable", why)
        } else if !mounted {
            (
                "NotMounted",
                condition(&self.status.conditions, "MountsApplied")
                    .map(|c| c.message.clone())
                    .unwrap_or_default(),
            )
        } else if !claim_bound {
            (
                "ClaimPending",
                format!("PVC {} is not bound yet", self.names.pvc()),
            )
        } else if !serving {
            ("WorkersNotReady", "no worker is ready yet".to_owned())
        } else {
            (
                "MastersNotReady",
                format!(
                    "{} of {want} masters ready",
                    self.status.master_number_ready
                ),
            )
        };
        self.condition("Ready", ready, reason, message);
        ready
    }
}

pub(super) fn api_of(ctx: &Context, ns: &str) -> Api<CacheRuntime> {
    Api::namespaced(ctx.client.clone(), ns)
}

pub(super) fn ready_replicas(sts: &StatefulSet) -> i32 {
    sts.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}
