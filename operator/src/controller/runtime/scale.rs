//! Scaling workers in: the leaving workers (the highest ordinals) are
//! drained first, their blocks that no other worker holds copied away while
//! there is room; their pods go when that is done.

use crate::context::{Context, set_condition};
use crate::crd::CacheRuntime;
use crate::crd::runtime::{CacheRuntimeStatus, DrainStatus};
use crate::names::RuntimeNames;
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use std::time::Duration;
use weir_api::proto::master as pb;

/// How long a scale-in waits for blocks to be copied off leaving workers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The worker count to apply now. Scaling in, the leaving workers (the
/// highest ordinals) are first drained: the master places nothing new on
/// them, and a replicate job copies the blocks only they hold to the other
/// workers while there is room; their pods go when that finishes or
/// [`DRAIN_TIMEOUT`] passes. Reads meanwhile keep being served by them.
pub(super) async fn scale_in(
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
    let master = if master_up {
        ctx.masters(&names.namespace, &names.name).await?
    } else {
        None
    };
    let Some(master) = master else {
        // Without a master there is nothing to drain through.
        return Ok(desired);
    };
    let drain = Drain { ctx, master };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    if let Some(draining) = status.drain.clone() {
        return drain
            .go_on(rt, &pods, draining, desired, current, status)
            .await;
    }
    if desired >= current {
        return Ok(desired);
    }
    drain
        .start(rt, names, &pods, desired, current, status)
        .await
}

/// Drains workers through the runtime's leader.
struct Drain<'a> {
    ctx: &'a Context,
    master: std::sync::Arc<weir_api::MasterClient>,
}

impl Drain<'_> {
    /// Marks the workers at `hosts` as leaving (and every other as not);
    /// the leader answers with what only they hold.
    async fn hosts(&self, hosts: Vec<String>) -> Result<pb::DrainResponse> {
        let r = self
            .master
            .call(|mut c| {
                let hosts = hosts.clone();
                async move { c.drain_workers(pb::DrainRequest { hosts }).await }
            })
            .await;
        self.ctx.count_master_call("drain_workers", r.is_ok());
        r.map_err(Error::from)
    }

    /// A drain under way: ended (scaled back up, or the leaving pods gone),
    /// released (their blocks copied, or no room, or out of time), or still
    /// copying. Returns the worker count to apply.
    async fn go_on(
        &self,
        rt: &CacheRuntime,
        pods: &Api<Pod>,
        draining: DrainStatus,
        desired: i32,
        current: i32,
        status: &mut CacheRuntimeStatus,
    ) -> Result<i32> {
        let gone = {
            let mut all_gone = true;
            for pod in &draining.pods {
                all_gone &= pods.get_opt(pod).await?.is_none();
            }
            all_gone
        };
        if desired >= current && !draining.released || draining.released && gone {
            // Scaled back up mid-drain, or the leaving pods are gone.
            self.hosts(Vec::new()).await?;
            status.drain = None;
            set_condition(
                &mut status.conditions,
                "Scaling",
                true,
                "Scaled",
                format!("{desired} worker(s)"),
                rt.metadata.generation,
            );
            return Ok(desired);
        }
        if draining.released {
            return Ok(desired);
        }
        let report = self.hosts(draining.hosts.clone()).await?;
        let sole: u64 = report.workers.iter().map(|w| w.sole_blocks).sum();
        let job_over = match draining.job_id {
            None => true,
            Some(id) => {
                let job = self
                    .master
                    .call(|mut c| async move { c.get_job(pb::JobId { id }).await })
                    .await;
                self.ctx.count_master_call("get_job", job.is_ok());
                // A lost job (leader lost its state) ends the wait too.
                job.map(|j| {
                    j.state != pb::JobState::Running as i32
                        && j.state != pb::JobState::Pending as i32
                })
                .unwrap_or(true)
            }
        };
        let started: Timestamp = draining
            .started
            .parse()
            .unwrap_or_else(|_| Timestamp::now());
        let waited = Timestamp::now().duration_since(started).unsigned_abs();
        if sole == 0 || job_over || waited > DRAIN_TIMEOUT {
            let note = if sole == 0 {
                format!(
                    "drained {}: every block they held is on another worker",
                    draining.pods.join(", ")
                )
            } else {
                format!(
                    "removing {} with {sole} block(s) only there (no room elsewhere or {DRAIN_TIMEOUT:?} passed); they are read from the under-storage again when needed",
                    draining.pods.join(", ")
                )
            };
            self.ctx.event(rt, sole > 0, "WorkersDrained", note).await;
            status.drain = Some(DrainStatus {
                released: true,
                ..draining
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
                draining.pods.join(", ")
            ),
            rt.metadata.generation,
        );
        Ok(current)
    }

    /// Starts draining the workers a scale-in removes; they stay until the
    /// drain ends. Returns the worker count to apply.
    async fn start(
        &self,
        rt: &CacheRuntime,
        names: &RuntimeNames,
        pods: &Api<Pod>,
        desired: i32,
        current: i32,
        status: &mut CacheRuntimeStatus,
    ) -> Result<i32> {
        let mut leaving = Vec::new();
        let mut hosts = Vec::new();
        for ordinal in desired..current {
            let pod = format!("{}-{ordinal}", names.worker());
            if let Some(ip) = pods.get_opt(&pod).await?.and_then(|p| p.status?.pod_ip) {
                hosts.push(ip);
            }
            leaving.push(pod);
        }
        let report = self.hosts(hosts.clone()).await?;
        let sole: u64 = report.workers.iter().map(|w| w.sole_blocks).sum();
        let job_id = if sole > 0 {
            let spec = pb::JobSpec {
                kind: pb::JobKind::Replicate as i32,
                paths: vec!["/".into()],
                replicas: 1,
                load_what_fits: true,
                ..Default::default()
            };
            let job = self
                .master
                .call(|mut c| {
                    let spec = spec.clone();
                    async move { c.submit_job(spec).await }
                })
                .await;
            self.ctx.count_master_call("submit_job", job.is_ok());
            Some(job?.id)
        } else {
            None
        };
        self.ctx.event(
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
}
