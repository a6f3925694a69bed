//! The one place where the master's domain types meet the protobuf
//! messages: errors to gRPC statuses, records to and from their messages.

use crate::master::command::{FsError, Stamp};
use crate::master::error::MasterError;
use crate::master::records::{Job, JobKind, JobSpec, JobState, PersistState};
use crate::master::workers::{TierUsage, WorkerState};
use crate::proto::master as pb;
use tonic::Status;
use weir_api::LEADER_HEADER;

impl From<MasterError> for Status {
    fn from(e: MasterError) -> Self {
        match e {
            MasterError::Fs(fs) => match fs {
                FsError::InvalidArgument(m) => Status::invalid_argument(m),
                FsError::NotFound(m) => Status::not_found(m),
                FsError::AlreadyExists(m) => Status::already_exists(m),
                FsError::FailedPrecondition(m) => Status::failed_precondition(m),
                FsError::ReadOnly(m) => Status::permission_denied(format!("read-only: {m}")),
                FsError::Store(m) => Status::internal(m),
                FsError::Denied(m) => Status::permission_denied(m),
            },
            MasterError::NotLeader { leader } => {
                let mut status = Status::failed_precondition(match &leader {
                    Some((id, addr)) => {
                        format!("not the leader; the leader is master {id} at {addr}")
                    }
                    None => "not the leader; no leader is known yet".to_owned(),
                });
                if let Some((_, addr)) = leader
                    && let Ok(value) = addr.parse()
                {
                    status.metadata_mut().insert(LEADER_HEADER, value);
                }
                status
            }
            MasterError::Raft(e) => Status::unavailable(format!("raft: {e}")),
            MasterError::Ufs(e) => Status::unavailable(format!("under-storage: {e}")),
            e @ MasterError::Start { .. } => Status::internal(e.to_string()),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn persist_to_pb(p: PersistState) -> pb::PersistState {
    match p {
        PersistState::NotPersisted => pb::PersistState::NotPersisted,
        PersistState::ToBePersisted => pb::PersistState::ToBePersisted,
        PersistState::Persisted => pb::PersistState::Persisted,
    }
}

pub fn persist_from_pb(p: i32) -> Result<PersistState, Status> {
    match pb::PersistState::try_from(p) {
        Ok(pb::PersistState::Persisted) => Ok(PersistState::Persisted),
        Ok(pb::PersistState::ToBePersisted) => Ok(PersistState::ToBePersisted),
        Ok(pb::PersistState::NotPersisted) => Ok(PersistState::NotPersisted),
        Err(_) => Err(Status::invalid_argument(format!(
            "persist: unknown state {p}"
        ))),
    }
}

/// Who and when a create is stamped with: the caller's owner, group and
/// mode, or root and `default_mode`.
pub fn stamp(mode: u32, owner: String, group: String, default_mode: u32) -> Stamp {
    let or_root = |s: String| if s.is_empty() { "root".into() } else { s };
    Stamp {
        owner: or_root(owner),
        group: or_root(group),
        mode: if mode == 0 { default_mode } else { mode },
        now_ms: now_ms(),
    }
}

pub fn spec_from_pb(r: pb::JobSpec) -> Result<JobSpec, Status> {
    let kind = match pb::JobKind::try_from(r.kind) {
        Ok(pb::JobKind::Load) => JobKind::Load,
        Ok(pb::JobKind::Persist) => JobKind::Persist,
        Ok(pb::JobKind::Free) => JobKind::Free,
        Ok(pb::JobKind::Replicate) => JobKind::Replicate,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "kind: unknown job kind {}",
                r.kind
            )));
        }
    };
    Ok(JobSpec {
        kind,
        paths: r.paths,
        replicas: r.replicas.max(1),
        parallelism: r.parallelism,
        bandwidth: r.bandwidth_bytes_per_sec,
        load_metadata: r.load_metadata,
        load_what_fits: r.load_what_fits,
    })
}

pub fn job_to_pb(job: &Job) -> pb::JobInfo {
    let now = now_ms();
    let p = &job.progress;
    pb::JobInfo {
        id: job.id,
        spec: Some(pb::JobSpec {
            kind: match job.spec.kind {
                JobKind::Load => pb::JobKind::Load,
                JobKind::Persist => pb::JobKind::Persist,
                JobKind::Free => pb::JobKind::Free,
                JobKind::Replicate => pb::JobKind::Replicate,
            } as i32,
            paths: job.spec.paths.clone(),
            replicas: job.spec.replicas,
            parallelism: job.spec.parallelism,
            bandwidth_bytes_per_sec: job.spec.bandwidth,
            load_metadata: job.spec.load_metadata,
            load_what_fits: job.spec.load_what_fits,
        }),
        state: match job.state {
            JobState::Pending => pb::JobState::Pending,
            JobState::Running => pb::JobState::Running,
            JobState::Completed => pb::JobState::Completed,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        } as i32,
        planned: p.planned,
        files_total: p.files_total,
        files_done: p.files_done,
        bytes_total: p.bytes_total,
        bytes_done: p.bytes_done,
        files_skipped: p.files_skipped,
        failed_count: p.failed_count,
        failed: p
            .failed
            .iter()
            .map(|f| pb::FailedFile {
                path: f.path.clone(),
                reason: f.reason.clone(),
            })
            .collect(),
        message: job.message.clone().unwrap_or_default(),
        submitted_ms: job.submitted_ms,
        started_ms: job.started_ms.unwrap_or(0),
        finished_ms: job.finished_ms.unwrap_or(0),
        throughput_bytes_per_sec: job.throughput(now),
        eta_seconds: job.eta_seconds(now),
    }
}

pub fn tier_from_pb(t: pb::TierUsage) -> TierUsage {
    TierUsage {
        tier: t.tier,
        capacity: t.capacity_bytes,
        used: t.used_bytes,
        // Workers that do not say hold up to their capacity.
        holdable: if t.holdable_bytes == 0 {
            t.capacity_bytes
        } else {
            t.holdable_bytes.min(t.capacity_bytes)
        },
    }
}

/// A live worker as the admin report and `ListWorkers` show it.
pub fn worker_to_pb(w: WorkerState) -> pb::WorkerInfo {
    pb::WorkerInfo {
        address: Some(pb::WorkerAddress {
            worker_id: w.id,
            host: w.addr.host,
            rpc_port: w.addr.rpc_port,
            data_port: w.addr.data_port,
            node: w.node.clone(),
        }),
        tiers: w
            .tiers
            .into_iter()
            .map(|t| pb::TierUsage {
                tier: t.tier,
                capacity_bytes: t.capacity,
                used_bytes: t.used,
                holdable_bytes: t.holdable,
            })
            .collect(),
        block_count: w.block_count,
        last_heartbeat_ms_ago: w.last_heartbeat.elapsed().as_millis() as u64,
        lost: false,
        draining: w.draining,
        node: w.node,
    }
}
