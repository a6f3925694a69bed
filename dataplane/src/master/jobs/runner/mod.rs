//! The leader's job runner. Each unfinished job in the job table gets one
//! task on the leader: it walks the job's target, checks the cache can hold
//! it, splits it into block tasks and hands those to workers over their data
//! port (a bounded number in flight per worker), retrying failed tasks on
//! other workers with backoff. Progress is proposed through Raft about once
//! a second with a checkpoint (every file before it is finished), so a new
//! leader resumes there, after giving workers time to report their blocks.
//!
//! The first copy of a block goes where [`crate::block::place`] says, as a
//! client's miss does: a new leader that asks again for a block the old one
//! had in flight asks the worker already fetching it, which joins that
//! fetch instead of reading the under-storage twice.

mod free;
mod load;
mod persist;
mod tasks;
mod tracker;
mod walk;

pub use load::first_copy;

use crate::master::command::{Command, FsError, Reply};
use crate::master::error::{MasterError, MasterResult};
use crate::master::jobs::table::JobTable;
use crate::master::namespace::Namespace;
use crate::master::node::Proposer;
use crate::master::records::{Job, JobId, JobKind, JobProgress, JobSpec, JobState};
use crate::master::sync::MetadataSync;
use crate::master::workers::{WorkerId, WorkerRegistry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tracing::Instrument;
use tracker::Tracker;

/// How often progress is proposed while a job runs.
const REPORT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Default)]
struct JobMetrics {
    tasks: Family<TaskLabels, Counter>,
    running: Gauge,
    bytes_loaded: Counter,
    finished: Family<TaskLabels, Counter>,
}

/// What the runner works through: narrow handles on the rest of the
/// master, not the master itself.
#[derive(Debug, Clone)]
pub struct Handles {
    pub proposer: Proposer,
    pub namespace: Namespace,
    pub jobs: JobTable,
    pub sync: Arc<MetadataSync>,
    pub workers: Arc<WorkerRegistry>,
}

/// Runs the jobs while this master leads.
#[derive(Debug)]
pub struct JobRunner {
    proposer: Proposer,
    namespace: Namespace,
    jobs: JobTable,
    sync: Arc<MetadataSync>,
    workers: Arc<WorkerRegistry>,
    settle: Duration,
    tasks_per_worker: usize,
    running: Mutex<HashMap<JobId, tokio::task::AbortHandle>>,
    leader_since: Mutex<Option<Instant>>,
    worker_slots: Mutex<HashMap<WorkerId, Arc<Semaphore>>>,
    /// Bytes of block tasks in flight per worker, not yet in its usage.
    reserved: Mutex<HashMap<WorkerId, u64>>,
    wake: Notify,
    metrics: JobMetrics,
}

/// Why a job stopped before finishing its work.
#[derive(Debug)]
enum Stop {
    /// The job fails with this reason.
    Fail(String),
    /// Not the leader any more, or the job was cancelled: just stop.
    Abandon,
}

impl From<MasterError> for Stop {
    fn from(e: MasterError) -> Self {
        match e {
            MasterError::NotLeader { .. } | MasterError::Raft(_) => Stop::Abandon,
            MasterError::Fs(FsError::FailedPrecondition(_)) => Stop::Abandon,
            other => Stop::Fail(other.to_string()),
        }
    }
}

impl From<FsError> for Stop {
    fn from(e: FsError) -> Self {
        Stop::from(MasterError::Fs(e))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl JobRunner {
    pub fn new(settle: Duration, tasks_per_worker: usize, handles: Handles) -> Self {
        Self {
            proposer: handles.proposer,
            namespace: handles.namespace,
            jobs: handles.jobs,
            sync: handles.sync,
            workers: handles.workers,
            settle,
            tasks_per_worker: tasks_per_worker.max(1),
            running: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(None),
            worker_slots: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            metrics: JobMetrics::default(),
        }
    }

    pub fn register_metrics(&self, r: &mut Registry) {
        r.register(
            "weir_master_job_tasks",
            "Job tasks sent to workers, by job kind and outcome",
            self.metrics.tasks.clone(),
        );
        r.register(
            "weir_master_jobs_running",
            "Jobs this leader is running",
            self.metrics.running.clone(),
        );
        r.register(
            "weir_master_job_bytes_loaded",
            "Block bytes that load and replicate tasks cached",
            self.metrics.bytes_loaded.clone(),
        );
        r.register(
            "weir_master_jobs_finished",
            "Jobs finished by this leader, by kind and final state",
            self.metrics.finished.clone(),
        );
    }

    /// A job was submitted: look for it now rather than at the next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for the next tick or a wake-up.
    pub async fn wait(&self, tick: Duration) {
        let _ = tokio::time::timeout(tick, self.wake.notified()).await;
    }

    /// Starts the unfinished jobs this leader is not running yet and stops
    /// the ones that finished (a cancel); stops everything when not leading.
    pub fn tick(self: &Arc<Self>) {
        let mut running = self.running.lock().expect("running jobs");
        if !self.proposer.is_leader() {
            *self.leader_since.lock().expect("leader since") = None;
            for (_, handle) in running.drain() {
                handle.abort();
            }
            self.metrics.running.set(0);
            return;
        }
        let since = *self
            .leader_since
            .lock()
            .expect("leader since")
            .get_or_insert_with(Instant::now);
        running.retain(|_, h| !h.is_finished());
        if since.elapsed() < self.settle {
            return;
        }
        let jobs = match self.jobs.unfinished() {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "reading jobs");
                return;
            }
        };
        let unfinished: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
        for job in jobs {
            if !running.contains_key(&job.id) {
                let id = job.id;
                let span = tracing::info_span!("job", id, kind = job.spec.kind.as_str());
                let handle = tokio::spawn(self.clone().run_job(job).instrument(span));
                running.insert(id, handle.abort_handle());
            }
        }
        running.retain(|id, handle| {
            let keep = unfinished.contains(id);
            if !keep {
                handle.abort();
            }
            keep
        });
        self.metrics.running.set(running.len() as i64);
    }

    async fn run_job(self: Arc<Self>, job: Job) {
        let resumed = job.state == JobState::Running;
        tracing::info!(paths = ?job.spec.paths, resumed, "running job");
        let tracker = Arc::new(Mutex::new(Tracker {
            progress: if resumed {
                job.progress.resume()
            } else {
                JobProgress::default()
            },
            finished: BTreeMap::new(),
            changed: true,
        }));
        if let Err(e) = self
            .propose(job.id, JobState::Running, &tracker, None)
            .await
        {
            tracing::info!(error = ?e, "not starting the job");
            return;
        }
        let reporter = {
            let (runner, tracker) = (self.clone(), tracker.clone());
            let id = job.id;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REPORT_EVERY).await;
                    if runner
                        .propose(id, JobState::Running, &tracker, None)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        let outcome = match job.spec.kind {
            JobKind::Load | JobKind::Replicate => self.run_load(&job, &tracker).await,
            JobKind::Persist => self.run_persist(&job, &tracker).await,
            JobKind::Free => self.run_free(&job, &tracker).await,
        };
        reporter.abort();
        let (state, message) = match outcome {
            Ok(note) => {
                let p = &tracker.lock().expect("tracker").progress;
                if p.failed_count == 0 {
                    (JobState::Completed, note)
                } else {
                    let first = p
                        .failed
                        .first()
                        .map(|f| format!(": {}: {}", f.path, f.reason))
                        .unwrap_or_default();
                    (
                        JobState::Failed,
                        Some(format!(
                            "{} of {} files failed{first}",
                            p.failed_count, p.files_total
                        )),
                    )
                }
            }
            Err(Stop::Fail(reason)) => (JobState::Failed, Some(reason)),
            Err(Stop::Abandon) => return,
        };
        tracker.lock().expect("tracker").changed = true;
        match self.propose(job.id, state, &tracker, message.clone()).await {
            Ok(()) => {
                self.metrics
                    .finished
                    .get_or_create(&TaskLabels {
                        kind: job.spec.kind.as_str(),
                        outcome: match state {
                            JobState::Completed => "completed",
                            _ => "failed",
                        },
                    })
                    .inc();
                tracing::info!(state = state.as_str(), message = ?message, "job finished");
            }
            Err(e) => tracing::info!(error = ?e, "could not record the job's end"),
        }
    }

    /// Proposes the job's progress if it changed (always for a final
    /// state). A refusal means the job was cancelled or this master no
    /// longer leads.
    async fn propose(
        &self,
        id: JobId,
        state: JobState,
        tracker: &Mutex<Tracker>,
        message: Option<String>,
    ) -> Result<(), Stop> {
        let progress = {
            let mut t = tracker.lock().expect("tracker");
            if !t.changed && !state.is_finished() {
                return Ok(());
            }
            t.changed = false;
            t.progress.clone()
        };
        let cmd = Command::UpdateJob {
            id,
            state,
            progress,
            message,
            now_ms: now_ms(),
        };
        match self.proposer.write(cmd).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracker.lock().expect("tracker").changed = true;
                Err(Stop::from(e))
            }
        }
    }

    /// Submits `spec` and returns the new job.
    pub async fn submit(&self, spec: JobSpec) -> MasterResult<Job> {
        match self
            .proposer
            .write(Command::SubmitJob {
                spec,
                now_ms: now_ms(),
            })
            .await?
        {
            Reply::Job(job) => {
                self.wake();
                Ok(*job)
            }
            other => Err(FsError::Store(format!("unexpected reply {other:?}")).into()),
        }
    }
}
