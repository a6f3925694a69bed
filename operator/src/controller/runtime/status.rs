//! The Dataset's status while its runtime exists: phase, conditions, cache
//! states and lost workers from the leader's admin report.

use super::super::patch_status;
use crate::Result;
use crate::context::{Context, condition, set_condition, short};
use crate::crd::dataset::{CacheStates, DatasetPhase, DatasetStatus, MountStatus};
use crate::crd::{CacheRuntime, Dataset};
use crate::quantity::human;
use kube::{Api, ResourceExt};
use weir_api::MountSpec;
use weir_api::proto::master as pb;

/// The Dataset's phase and cache states. Counting files never holds back
/// `Bound`: while it runs, the totals say so.
pub(super) async fn update_dataset(
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
            write_type: m.write_type.name().into(),
            sync_policy: m.sync.to_string(),
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
            Ok(Some((states, total, files, lost))) => {
                status.cache_states = Some(states);
                status.ufs_total = Some(total);
                status.file_num = Some(files);
                workers_available(ctx, ds, &mut status, &lost).await;
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

/// The `WorkersAvailable` condition: false, naming each lost worker's node
/// and the capacity gone with it, while the master counts workers lost
/// (no heartbeat) whose node has not brought one back; an Event when a
/// worker is lost and when the last one is back.
async fn workers_available(
    ctx: &Context,
    ds: &Dataset,
    status: &mut DatasetStatus,
    lost: &[pb::LostWorker],
) {
    let was_lost =
        condition(&status.conditions, "WorkersAvailable").is_some_and(|c| c.status == "False");
    let (ok, reason, message) = if lost.is_empty() {
        (true, "AllLive", "every worker answers".to_owned())
    } else {
        let each: Vec<String> = lost
            .iter()
            .map(|l| {
                format!(
                    "worker on node {} ({}) with {} of cache capacity",
                    l.node,
                    l.host,
                    human(l.capacity_bytes)
                )
            })
            .collect();
        (
            false,
            "WorkerLost",
            format!(
                "lost (no heartbeat): {}; reads of its blocks go to other copies or the under-storage",
                each.join("; ")
            ),
        )
    };
    let changed = set_condition(
        &mut status.conditions,
        "WorkersAvailable",
        ok,
        reason,
        message.clone(),
        ds.metadata.generation,
    );
    if changed && !ok {
        ctx.event(ds, true, "WorkerLost", message).await;
    } else if changed && was_lost {
        ctx.event(
            ds,
            false,
            "WorkersBack",
            "every lost worker's node has a live worker again".into(),
        )
        .await;
    }
}

type CacheStatus = (CacheStates, String, String, Vec<pb::LostWorker>);

async fn cache_states(
    ctx: &Context,
    ns: &str,
    name: &str,
    mounts: &[MountSpec],
) -> Result<Option<CacheStatus>> {
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
        info.lost_workers,
    )))
}
