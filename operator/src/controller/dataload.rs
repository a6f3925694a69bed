//! The DataLoad controller: a load job on the dataset's masters, its
//! progress mirrored into status; Cron runs on schedule (missed runs
//! collapse into one, as a CronJob's do); finished loads deleted after
//! their TTL; a deleted, running load cancels its jobs.

use super::patch_status;
use crate::context::{Context, set_condition, short};
use crate::crd::dataload::{LoadPhase, LoadPolicy, LoadProgress};
use crate::crd::dataset::DatasetPhase;
use crate::crd::{CacheRuntime, DataLoad, DataLoadStatus, Dataset};
use crate::cron::Schedule;
use crate::{Error, Result, quantity};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use weir_api::MasterClient;
use weir_api::proto::master as pb;

pub const FINALIZER: &str = "data.weir.io/dataload";

#[tracing::instrument(skip_all, fields(dataload = %dl.name_any(), namespace = dl.namespace().unwrap_or_default()))]
pub async fn reconcile(dl: Arc<DataLoad>, ctx: Arc<Context>) -> Result<Action> {
    let ns = dl.namespace().unwrap_or_default();
    let api: Api<DataLoad> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(finalizer(&api, FINALIZER, dl, |event| async {
        match event {
            Finalizer::Apply(dl) => apply(dl, &ctx).await,
            Finalizer::Cleanup(dl) => cancel(dl, &ctx).await,
        }
    })
    .await?)
}

fn dataset_of(dl: &DataLoad) -> (String, String) {
    let ns = dl
        .spec
        .dataset
        .namespace
        .clone()
        .unwrap_or_else(|| dl.namespace().unwrap_or_default());
    (ns, dl.spec.dataset.name.clone())
}

/// The jobs one run submits: targets grouped by replica count (a target
/// that names none takes the runtime's `data.replicas`).
pub fn job_specs(dl: &DataLoad, default_replicas: u32) -> Result<Vec<pb::JobSpec>> {
    let mut parallelism = 0;
    let mut bandwidth = 0;
    let mut load_what_fits = false;
    for (k, v) in &dl.spec.options {
        let bad = |why: &str| Error::Invalid(format!("spec.options.{k} {v:?}: {why}"));
        match k.as_str() {
            "parallelism" => parallelism = v.parse().map_err(|_| bad("not a whole number"))?,
            "bandwidth" => {
                bandwidth = quantity::bytes(v)
                    .or_else(|| quantity::bytes(v.strip_suffix('B')?))
                    .ok_or_else(|| bad("not a size such as 200Mi"))?
            }
            "loadWhatFits" => load_what_fits = v.parse().map_err(|_| bad("not true or false"))?,
            _ => return Err(bad("unknown option (parallelism, bandwidth, loadWhatFits)")),
        }
    }
    let mut groups: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    if dl.spec.target.is_empty() {
        groups.entry(default_replicas).or_default().push("/".into());
    }
    for t in &dl.spec.target {
        groups
            .entry(t.replicas.unwrap_or(default_replicas))
            .or_default()
            .push(t.path.clone());
    }
    Ok(groups
        .into_iter()
        .map(|(replicas, paths)| pb::JobSpec {
            kind: pb::JobKind::Load as i32,
            paths,
            replicas,
            parallelism,
            bandwidth_bytes_per_sec: bandwidth,
            load_metadata: dl.spec.load_metadata,
            load_what_fits,
        })
        .collect())
}

fn human_duration(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn parse_time(t: &Option<String>) -> Option<Timestamp> {
    t.as_deref().and_then(|t| t.parse().ok())
}

async fn apply(dl: Arc<DataLoad>, ctx: &Context) -> Result<Action> {
    let ns = dl.namespace().unwrap_or_default();
    let name = dl.name_any();
    let api: Api<DataLoad> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = dl.metadata.generation;
    let mut status = dl.status.clone().unwrap_or_default();
    let now = Timestamp::now();

    if status.phase == LoadPhase::Executing {
        return executing(ctx, &dl, &api, status).await;
    }

    // Is a run due?
    let schedule = match dl.spec.policy {
        LoadPolicy::Once => None,
        LoadPolicy::Cron => {
            let expr = dl.spec.schedule.clone().unwrap_or_default();
            match Schedule::parse(&expr) {
                Ok(s) => Some(s),
                Err(message) => {
                    return fail(
                        ctx,
                        &dl,
                        &api,
                        status,
                        "BadSchedule",
                        format!("spec.schedule: {message}"),
                    )
                    .await;
                }
            }
        }
    };
    let due_at = match &schedule {
        None if status.phase == LoadPhase::Pending => Some(now),
        None => None,
        Some(s) => {
            let since = parse_time(&status.last_schedule_time)
                .or_else(|| dl.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .unwrap_or(now);
            s.latest_due(since, now)
        }
    };
    let Some(due_at) = due_at else {
        return finished_or_waiting(ctx, &dl, &api, &status, schedule.as_ref(), now).await;
    };

    let (ds_ns, ds_name) = dataset_of(&dl);
    let datasets: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ds_ns);
    let bound = datasets
        .get_opt(&ds_name)
        .await?
        .and_then(|d| d.status)
        .is_some_and(|s| s.phase == DatasetPhase::Bound);
    if !bound {
        let message = format!("waiting for Dataset {ds_ns}/{ds_name} to be Bound");
        if status.phase == LoadPhase::Pending || schedule.is_none() {
            status.phase = LoadPhase::Pending;
        }
        if set_condition(
            &mut status.conditions,
            "DatasetBound",
            false,
            "DatasetNotBound",
            &message,
            generation,
        ) {
            patch_status(&api, &name, &status).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    set_condition(
        &mut status.conditions,
        "DatasetBound",
        true,
        "Bound",
        format!("Dataset {ds_ns}/{ds_name} is Bound"),
        generation,
    );

    submit(ctx, &dl, &api, status, due_at).await
}

/// A load under way: its jobs followed, and its end told as an Event.
async fn executing(
    ctx: &Context,
    dl: &DataLoad,
    api: &Api<DataLoad>,
    mut status: DataLoadStatus,
) -> Result<Action> {
    let action = follow(ctx, dl, &mut status).await?;
    if dl.status.as_ref() != Some(&status) {
        patch_status(api, &dl.name_any(), &status).await?;
        if matches!(status.phase, LoadPhase::Complete | LoadPhase::Failed) {
            let warning = status.phase == LoadPhase::Failed;
            let outcome = if warning { "Failed" } else { "Complete" };
            let note = status
                .conditions
                .iter()
                .find(|c| c.type_ == outcome)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            ctx.event(
                dl,
                warning,
                if warning {
                    "LoadFailed"
                } else {
                    "LoadComplete"
                },
                note,
            )
            .await;
        }
    }
    Ok(action)
}

/// A run that is due: one load job per distinct replica count of the
/// targets, submitted to the dataset's leader.
async fn submit(
    ctx: &Context,
    dl: &DataLoad,
    api: &Api<DataLoad>,
    mut status: DataLoadStatus,
    due_at: Timestamp,
) -> Result<Action> {
    let (ds_ns, ds_name) = dataset_of(dl);
    let runtimes: Api<CacheRuntime> = Api::namespaced(ctx.client.clone(), &ds_ns);
    let default_replicas = runtimes
        .get_opt(&ds_name)
        .await?
        .and_then(|rt| rt.spec.data.replicas)
        .unwrap_or(1);
    let specs = match job_specs(dl, default_replicas) {
        Ok(s) => s,
        Err(Error::Invalid(message)) => {
            return fail(ctx, dl, api, status, "InvalidSpec", message).await;
        }
        Err(e) => return Err(e),
    };
    let Some(master) = ctx.masters(&ds_ns, &ds_name).await? else {
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let mut ids = Vec::new();
    for spec in specs {
        let submitted = master
            .call(|mut c| {
                let spec = spec.clone();
                async move { c.submit_job(spec).await }
            })
            .await;
        ctx.count_master_call("submit_job", submitted.is_ok());
        match submitted {
            Ok(job) => ids.push(job.id),
            Err(weir_api::ApiError::Status(s)) if s.code() == tonic::Code::InvalidArgument => {
                return fail(ctx, dl, api, status, "JobRefused", s.message().to_owned()).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    status.phase = LoadPhase::Executing;
    status.job_ids = ids.clone();
    status.last_schedule_time = Some(due_at.to_string());
    status.finish_time = None;
    status.duration = None;
    status.progress = None;
    for c in ["Complete", "Failed"] {
        status.conditions.retain(|x| x.type_ != c);
    }
    set_condition(
        &mut status.conditions,
        "Executing",
        true,
        "JobSubmitted",
        format!("load job(s) {ids:?} on the master"),
        dl.metadata.generation,
    );
    patch_status(api, &dl.name_any(), &status).await?;
    ctx.event(
        dl,
        false,
        "LoadStarted",
        format!("submitted load job(s) {ids:?}"),
    )
    .await;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Mirrors the running jobs into `status`; moves to Complete or Failed
/// when they end.
async fn follow(ctx: &Context, dl: &DataLoad, status: &mut DataLoadStatus) -> Result<Action> {
    let (ds_ns, ds_name) = dataset_of(dl);
    let Some(master) = ctx.masters(&ds_ns, &ds_name).await? else {
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let mut jobs = Vec::new();
    for id in status.job_ids.clone() {
        match get_job(ctx, &master, id).await {
            Ok(j) => jobs.push(j),
            Err(weir_api::ApiError::Status(s)) if s.code() == tonic::Code::NotFound => {
                // The masters lost their state (one master, pod deleted):
                // the run starts again.
                status.phase = LoadPhase::Pending;
                status.job_ids.clear();
                set_condition(
                    &mut status.conditions,
                    "Executing",
                    false,
                    "JobLost",
                    format!("job {id} is gone from the master; resubmitting"),
                    dl.metadata.generation,
                );
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let sum = |f: fn(&pb::JobInfo) -> u64| jobs.iter().map(f).sum::<u64>();
    let (bytes_done, bytes_total) = (sum(|j| j.bytes_done), sum(|j| j.bytes_total));
    status.progress = Some(LoadProgress {
        files_done: sum(|j| j.files_done),
        files_total: sum(|j| j.files_total),
        bytes_done,
        bytes_total,
        percentage: if bytes_total > 0 {
            format!("{:.1}%", bytes_done as f64 / bytes_total as f64 * 100.0)
        } else if jobs.iter().all(|j| j.planned) {
            "100.0%".into()
        } else {
            "0.0%".into()
        },
    });
    let started = parse_time(&status.last_schedule_time).unwrap_or_else(Timestamp::now);
    status.duration = Some(human_duration(Timestamp::now().duration_since(started)));
    let generation = dl.metadata.generation;
    let failed = jobs.iter().find(|j| {
        j.state == pb::JobState::Failed as i32 || j.state == pb::JobState::Cancelled as i32
    });
    if let Some(j) = failed {
        let mut reason = j.message.clone();
        for f in j.failed.iter().take(5) {
            reason.push_str(&format!("; {}: {}", f.path, f.reason));
        }
        status.phase = LoadPhase::Failed;
        status.finish_time = Some(Timestamp::now().to_string());
        set_condition(
            &mut status.conditions,
            "Executing",
            false,
            "Finished",
            "",
            generation,
        );
        set_condition(
            &mut status.conditions,
            "Failed",
            true,
            "JobFailed",
            format!("job {}: {reason}", j.id),
            generation,
        );
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if jobs
        .iter()
        .all(|j| j.state == pb::JobState::Completed as i32)
    {
        status.phase = LoadPhase::Complete;
        let now = Timestamp::now().to_string();
        status.finish_time = Some(now.clone());
        status.last_successful_time = Some(now);
        let skipped = sum(|j| j.files_skipped);
        set_condition(
            &mut status.conditions,
            "Executing",
            false,
            "Finished",
            "",
            generation,
        );
        set_condition(
            &mut status.conditions,
            "Complete",
            true,
            "Loaded",
            format!(
                "{} files, {} loaded{}",
                sum(|j| j.files_done),
                quantity::human(bytes_done),
                if skipped > 0 {
                    format!(", {skipped} skipped (did not fit)")
                } else {
                    String::new()
                }
            ),
            generation,
        );
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(Duration::from_secs(2)))
}

async fn get_job(
    ctx: &Context,
    master: &MasterClient,
    id: u64,
) -> Result<pb::JobInfo, weir_api::ApiError> {
    let r = master
        .call(|mut c| async move { c.get_job(pb::JobId { id }).await })
        .await;
    ctx.count_master_call("get_job", r.is_ok());
    r
}

async fn fail(
    ctx: &Context,
    dl: &DataLoad,
    api: &Api<DataLoad>,
    mut status: DataLoadStatus,
    reason: &str,
    message: String,
) -> Result<Action> {
    status.phase = LoadPhase::Failed;
    status.finish_time = Some(Timestamp::now().to_string());
    if set_condition(
        &mut status.conditions,
        "Failed",
        true,
        reason,
        &message,
        dl.metadata.generation,
    ) {
        ctx.event(dl, true, reason, message).await;
    }
    patch_status(api, &dl.name_any(), &status).await?;
    Ok(Action::await_change())
}

/// Between runs: TTL for finished one-off loads, the next run for Cron.
async fn finished_or_waiting(
    ctx: &Context,
    dl: &DataLoad,
    api: &Api<DataLoad>,
    status: &DataLoadStatus,
    schedule: Option<&Schedule>,
    now: Timestamp,
) -> Result<Action> {
    if let Some(s) = schedule {
        let wait = s
            .next_after(now)
            .map(|n| n.duration_since(now).unsigned_abs())
            .unwrap_or(Duration::from_secs(3600));
        return Ok(Action::requeue(wait.max(Duration::from_secs(1))));
    }
    let (Some(ttl), Some(finished)) = (
        dl.spec.ttl_seconds_after_finished,
        parse_time(&status.finish_time),
    ) else {
        return Ok(Action::await_change());
    };
    let expires = finished + SignedDuration::from_secs(ttl.max(0));
    if now >= expires {
        tracing::info!("TTL after finishing passed: deleting");
        match api
            .delete(&dl.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let _ = ctx;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(
        expires.duration_since(now).unsigned_abs() + Duration::from_millis(200),
    ))
}

/// A DataLoad deleted while its jobs run cancels them (once; an
/// unreachable master does not hold the deletion).
async fn cancel(dl: Arc<DataLoad>, ctx: &Context) -> Result<Action> {
    let status = dl.status.clone().unwrap_or_default();
    if status.phase != LoadPhase::Executing {
        return Ok(Action::await_change());
    }
    let (ds_ns, ds_name) = dataset_of(&dl);
    if let Ok(Some(master)) = ctx.masters(&ds_ns, &ds_name).await {
        for id in status.job_ids {
            let r = master
                .call(|mut c| async move { c.cancel_job(pb::JobId { id }).await })
                .await;
            ctx.count_master_call("cancel_job", r.is_ok());
            if let Err(e) = r {
                tracing::warn!(job = id, error = %short(&e.into()), "could not cancel");
            }
        }
    }
    Ok(Action::await_change())
}
