//! The leader's job runner. Each unfinished job in the metastore gets one
//! task on the leader: it walks the job's target, checks the cache can hold
//! it, splits it into block tasks and hands those to workers over their data
//! port (a bounded number in flight per worker), retrying failed tasks on
//! other workers with backoff. Progress is proposed through Raft about once
//! a second with a checkpoint (every file before it is finished), so a new
//! leader resumes there, after giving workers time to report their blocks.
//!
//! The first copy of a block always goes to the same worker (rendezvous
//! hashing over the live workers): a new leader that asks again for a block
//! the old one had in flight asks the worker already fetching it, which
//! joins that fetch instead of reading the under-storage twice.

use super::{
    Job, JobId, JobKind, JobProgress, JobSpec, JobState, glob_base, glob_matches, is_glob,
};
use crate::master::metastore::{Inode, PersistState};
use crate::master::namespace::{Command, FsError, Reply};
use crate::master::node::{Master, MasterError};
use crate::master::service::blocks_of;
use crate::master::workers::{WorkerAddr, WorkerId, WorkerState};
use crate::path::WeirPath;
use crate::wire::{
    self, ErrorKind, LoadRequest, Peer, PersistRequest, Request, Response, UfsSource,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Block tasks in flight per live worker when a job does not say.
const DEFAULT_PARALLELISM_PER_WORKER: usize = 4;
/// Attempts of one block task before its file is failed.
const TASK_ATTEMPTS: u32 = 6;
/// A worker that neither answers nor drops the connection in this long is
/// treated as failed for the task.
const TASK_TIMEOUT: Duration = Duration::from_secs(600);
/// How often progress is proposed while a job runs.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long a free job waits for workers to drop the blocks.
const FREE_WAIT: Duration = Duration::from_secs(60);

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

/// Runs the jobs while this master leads.
#[derive(Debug)]
pub struct JobScheduler {
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

/// A block task's failure.
#[derive(Debug)]
struct TaskError {
    reason: String,
    /// Retrying cannot help (the under-storage does not have the file).
    permanent: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Rendezvous score of `worker` for `block`: the highest score wins, so a
/// block's choice moves only when its winner leaves.
fn score(block: u64, worker: WorkerId) -> u64 {
    let mut z = block ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn peer(addr: &WorkerAddr) -> Peer {
    Peer {
        host: addr.host.clone(),
        port: addr.data_port as u16,
    }
}

/// Paces a job's reads to a byte rate.
#[derive(Debug)]
struct Throttle {
    bytes_per_sec: u64,
    next_free: tokio::sync::Mutex<Instant>,
}

impl Throttle {
    fn new(bytes_per_sec: u64) -> Option<Arc<Self>> {
        (bytes_per_sec > 0).then(|| {
            Arc::new(Self {
                bytes_per_sec,
                next_free: tokio::sync::Mutex::new(Instant::now()),
            })
        })
    }

    async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next_free.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// One file of a job's walk.
#[derive(Debug, Clone)]
struct Target {
    path: WeirPath,
    inode: Inode,
}

/// What the running job reports; shared by its block tasks and reporter.
#[derive(Debug)]
struct Tracker {
    progress: JobProgress,
    /// Files finished past the checkpoint, by walk position: their bytes
    /// when done, `None` when failed.
    finished: BTreeMap<u64, Option<u64>>,
    changed: bool,
}

impl Tracker {
    fn finish(&mut self, index: u64, bytes: u64, failure: Option<(String, String)>) {
        let outcome = match failure {
            None => {
                self.progress.files_done += 1;
                self.progress.bytes_done += bytes;
                Some(bytes)
            }
            Some((path, reason)) => {
                self.progress.record_failure(index, path, reason);
                None
            }
        };
        self.finished.insert(index, outcome);
        // Move the checkpoint over the finished run at its front.
        let cp = &mut self.progress.checkpoint;
        while let Some(outcome) = self.finished.remove(&cp.cursor) {
            match outcome {
                Some(bytes) => {
                    cp.files_done += 1;
                    cp.bytes_done += bytes;
                }
                None => cp.failed_count += 1,
            }
            cp.cursor += 1;
        }
        self.changed = true;
    }
}

impl JobScheduler {
    pub fn new(settle: Duration, tasks_per_worker: usize) -> Self {
        Self {
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
    pub fn tick(self: &Arc<Self>, master: &Arc<Master>) {
        let mut running = self.running.lock().expect("running jobs");
        if !master.is_leader() {
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
        let mut unfinished = HashSet::new();
        let mut after = None;
        loop {
            let page = match master.namespace.store().jobs(after, 1000) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "reading jobs");
                    return;
                }
            };
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for job in page.into_iter().filter(|j| !j.state.is_finished()) {
                unfinished.insert(job.id);
                if !running.contains_key(&job.id) {
                    let id = job.id;
                    let span = tracing::info_span!("job", id, kind = job.spec.kind.as_str());
                    let handle =
                        tokio::spawn(self.clone().run_job(master.clone(), job).instrument(span));
                    running.insert(id, handle.abort_handle());
                }
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

    async fn run_job(self: Arc<Self>, master: Arc<Master>, job: Job) {
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
            .propose(&master, job.id, JobState::Running, &tracker, None)
            .await
        {
            tracing::info!(error = ?e, "not starting the job");
            return;
        }
        let reporter = {
            let (sched, master, tracker) = (self.clone(), master.clone(), tracker.clone());
            let id = job.id;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REPORT_EVERY).await;
                    if sched
                        .propose(&master, id, JobState::Running, &tracker, None)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        let outcome = match job.spec.kind {
            JobKind::Load | JobKind::Replicate => self.run_load(&master, &job, &tracker).await,
            JobKind::Persist => self.run_persist(&master, &job, &tracker).await,
            JobKind::Free => self.run_free(&master, &job, &tracker).await,
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
        match self
            .propose(&master, job.id, state, &tracker, message.clone())
            .await
        {
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
        master: &Master,
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
        match master.write(cmd).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracker.lock().expect("tracker").changed = true;
                Err(Stop::from(e))
            }
        }
    }

    /// Every file the job's paths name, in a fixed walk order.
    async fn walk(&self, master: &Master, spec: &JobSpec) -> Result<Vec<Target>, Stop> {
        let mut out = Vec::new();
        for raw in &spec.paths {
            let (base, pattern) = if is_glob(raw) {
                (glob_base(raw), Some(raw.as_str()))
            } else {
                (raw.clone(), None)
            };
            let base =
                WeirPath::parse(&base).map_err(|e| Stop::Fail(format!("path {raw}: {e}")))?;
            let root = master
                .sync
                .resolve(master, &base)
                .await
                .map_err(|e| Stop::Fail(format!("path {raw}: {e}")))?;
            let Some(root) = root else {
                return Err(Stop::Fail(format!("path not found: {raw}")));
            };
            let before = out.len();
            let mut dirs = vec![(base.clone(), root)];
            while let Some((path, inode)) = dirs.pop() {
                if !inode.is_dir() {
                    if pattern.is_none_or(|p| glob_matches(p, path.as_str())) {
                        out.push(Target { path, inode });
                    }
                    continue;
                }
                master
                    .sync
                    .sync_dir_with(master, &path, spec.load_metadata)
                    .await
                    .map_err(|e| Stop::Fail(format!("listing {path}: {e}")))?;
                let mut cursor: Option<String> = None;
                let mut subdirs = Vec::new();
                loop {
                    let page = master.namespace.list(&path, cursor.as_deref(), 1000)?;
                    let Some(last) = page.last() else { break };
                    cursor = Some(last.name.clone());
                    for child in page {
                        let Ok(child_path) = path.child(&child.name) else {
                            continue;
                        };
                        if child.is_dir() {
                            subdirs.push((child_path, child));
                        } else if pattern.is_none_or(|p| glob_matches(p, child_path.as_str())) {
                            out.push(Target {
                                path: child_path,
                                inode: child,
                            });
                        }
                    }
                }
                dirs.extend(subdirs.into_iter().rev());
            }
            if let Some(p) = pattern
                && out.len() == before
            {
                return Err(Stop::Fail(format!("no file matches {p}")));
            }
        }
        Ok(out)
    }

    fn slots(&self, worker: WorkerId) -> Arc<Semaphore> {
        self.worker_slots
            .lock()
            .expect("worker slots")
            .entry(worker)
            .or_insert_with(|| Arc::new(Semaphore::new(self.tasks_per_worker)))
            .clone()
    }

    /// Bytes `worker` can take before evicting, less what is on its way.
    fn room(&self, master: &Master, worker: WorkerId) -> u64 {
        let reserved = self
            .reserved
            .lock()
            .expect("reserved")
            .get(&worker)
            .copied()
            .unwrap_or(0);
        master.workers.room(worker).saturating_sub(reserved)
    }

    fn reserve(&self, worker: WorkerId, bytes: u64, take: bool) {
        // Called through [`Reservation`] only.
        let mut reserved = self.reserved.lock().expect("reserved");
        let r = reserved.entry(worker).or_default();
        *r = if take {
            r.saturating_add(bytes)
        } else {
            r.saturating_sub(bytes)
        };
    }

    /// Tasks this leader has in flight on `worker`.
    fn busy(&self, worker: WorkerId) -> usize {
        self.tasks_per_worker - self.slots(worker).available_permits()
    }

    /// Sends one task to a worker (waiting for one of its slots) and
    /// returns its answer.
    async fn send_task(
        &self,
        kind: JobKind,
        worker: &WorkerState,
        request: Request,
    ) -> Result<Response, TaskError> {
        let slots = self.slots(worker.id);
        let _slot = slots.acquire().await.map_err(|_| TaskError {
            reason: "scheduler closed".into(),
            permanent: false,
        })?;
        let addr = format!("{}:{}", worker.addr.host, worker.addr.data_port);
        let exchange = async {
            let mut sock = tokio::net::TcpStream::connect(&addr).await?;
            let _ = sock.set_nodelay(true);
            wire::send(&mut sock, &request).await?;
            wire::recv::<_, Response>(&mut sock).await
        };
        let answer = match tokio::time::timeout(TASK_TIMEOUT, exchange).await {
            Ok(Ok(Some(Response::Error {
                kind: ErrorKind::NotFound,
                message,
            }))) => Err(TaskError {
                reason: message,
                permanent: true,
            }),
            Ok(Ok(Some(Response::Error { message, .. }))) => Err(TaskError {
                reason: format!("worker {addr}: {message}"),
                permanent: false,
            }),
            Ok(Ok(Some(resp))) => Ok(resp),
            Ok(Ok(None)) => Err(TaskError {
                reason: format!("worker {addr} closed the connection"),
                permanent: false,
            }),
            Ok(Err(e)) => Err(TaskError {
                reason: format!("worker {addr}: {e}"),
                permanent: false,
            }),
            Err(_) => Err(TaskError {
                reason: format!("worker {addr} did not answer in {TASK_TIMEOUT:?}"),
                permanent: false,
            }),
        };
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(e) if e.permanent => "failed",
            Err(_) => "retried",
        };
        self.metrics
            .tasks
            .get_or_create(&TaskLabels {
                kind: kind.as_str(),
                outcome,
            })
            .inc();
        answer
    }

    async fn run_load(
        self: &Arc<Self>,
        master: &Arc<Master>,
        job: &Job,
        tracker: &Arc<Mutex<Tracker>>,
    ) -> Result<Option<String>, Stop> {
        let spec = &job.spec;
        let mut files = self.walk(master, spec).await?;
        let live = master.workers.serving();
        let replicas = spec.replicas.max(1) as usize;
        if live.len() < replicas {
            return Err(Stop::Fail(format!(
                "replicas: {replicas} copies need {replicas} workers, {} are live",
                live.len()
            )));
        }
        let holdable: u64 = live
            .iter()
            .flat_map(|w| w.tiers.iter())
            .map(|t| t.holdable)
            .sum();
        let total: u64 = files.iter().map(|f| f.inode.length).sum();
        let mut note = None;
        let mut skipped = 0;
        if total.saturating_mul(replicas as u64) > holdable {
            if !spec.load_what_fits {
                return Err(Stop::Fail(format!(
                    "insufficient capacity: {} ({total} bytes) x {replicas} replicas does not fit in the {holdable} bytes the workers hold before evicting; free space, add workers, or load what fits",
                    files.len()
                )));
            }
            let mut used = 0u64;
            let fits = files
                .iter()
                .take_while(|f| {
                    used += f.inode.length * replicas as u64;
                    used <= holdable
                })
                .count();
            skipped = (files.len() - fits) as u64;
            files.truncate(fits);
            note = Some(format!(
                "loaded what fits: {skipped} files did not fit in the cache ({holdable} bytes)"
            ));
        }
        let start = self.plan_totals(tracker, &files, skipped);
        let parallelism = parallelism(spec, live.len());
        let throttle = Throttle::new(spec.bandwidth);
        let mut in_flight: JoinSet<(u64, Result<(), TaskError>)> = JoinSet::new();
        // Per file: blocks not yet finished, and its first failure.
        let mut open: HashMap<u64, (usize, Option<String>)> = HashMap::new();
        let mut queue: VecDeque<(u64, u64, UfsSource, u64)> = VecDeque::new();
        let mut next_file = start;
        loop {
            // Keep the queue of block tasks fed in walk order.
            while queue.len() < parallelism && (next_file as usize) < files.len() {
                let index = next_file;
                next_file += 1;
                let target = &files[index as usize];
                match self.block_sources(master, target) {
                    Ok(blocks) if blocks.is_empty() => {
                        tracker.lock().expect("tracker").finish(index, 0, None);
                    }
                    Ok(blocks) => {
                        open.insert(index, (blocks.len(), None));
                        for (block, src) in blocks {
                            let len = src.block_len;
                            queue.push_back((index, block, src, len));
                        }
                    }
                    Err(reason) => tracker.lock().expect("tracker").finish(
                        index,
                        0,
                        Some((target.path.to_string(), reason)),
                    ),
                }
            }
            while in_flight.len() < parallelism
                && let Some((index, block, src, len)) = queue.pop_front()
            {
                let (sched, master) = (self.clone(), master.clone());
                let throttle = throttle.clone();
                let kind = spec.kind;
                in_flight.spawn(async move {
                    let r = sched
                        .ensure_block(&master, kind, block, len, src, replicas, throttle)
                        .await;
                    (index, r)
                });
            }
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            let (index, result) = match joined {
                Ok(x) => x,
                Err(e) => return Err(Stop::Fail(format!("a block task failed: {e}"))),
            };
            let entry = open.get_mut(&index).expect("open file");
            entry.0 -= 1;
            if let Err(e) = result
                && entry.1.is_none()
            {
                entry.1 = Some(e.reason);
            }
            if entry.0 == 0 {
                let (_, failure) = open.remove(&index).expect("open file");
                let target = &files[index as usize];
                tracker.lock().expect("tracker").finish(
                    index,
                    target.inode.length,
                    failure.map(|r| (target.path.to_string(), r)),
                );
            }
        }
        Ok(note)
    }

    /// A file's blocks and where the under-storage has them; an error when
    /// the file cannot be loaded at all.
    fn block_sources(
        &self,
        master: &Master,
        target: &Target,
    ) -> Result<Vec<(u64, UfsSource)>, String> {
        let inode = &target.inode;
        if !inode.completed {
            return Err("still being written".into());
        }
        let mount = master
            .namespace
            .mount_of(&target.path)
            .map_err(|e| e.to_string())?;
        let (mount_id, relative) = match mount {
            Some(m) if inode.persist == PersistState::Persisted => {
                let root = WeirPath::parse(&m.path).map_err(|e| e.to_string())?;
                let rest = target
                    .path
                    .strip_prefix(&root)
                    .map(str::to_owned)
                    .unwrap_or_default();
                (m.mount_id, rest)
            }
            // Cache-only data: nothing to read it from but the cache.
            _ => (0, String::new()),
        };
        Ok(blocks_of(inode)
            .map(|(block, offset, len)| {
                (
                    block,
                    UfsSource {
                        mount_id,
                        path: relative.clone(),
                        block_offset: offset,
                        block_len: len,
                    },
                )
            })
            .collect())
    }

    /// Brings one block to `replicas` copies: the first from the
    /// under-storage on its rendezvous worker, the others copied from a
    /// holder to the least busy workers without it.
    #[allow(clippy::too_many_arguments)]
    async fn ensure_block(
        self: &Arc<Self>,
        master: &Arc<Master>,
        kind: JobKind,
        block: u64,
        len: u64,
        src: UfsSource,
        replicas: usize,
        throttle: Option<Arc<Throttle>>,
    ) -> Result<(), TaskError> {
        let mut excluded: HashSet<WorkerId> = HashSet::new();
        let mut attempt = 0;
        let mut last_error = String::new();
        loop {
            // Copies on draining workers serve reads but do not count: a
            // block only they hold is copied to a serving worker with room.
            let live = master.workers.serving();
            let holders = master.workers.locations(block);
            let serving_holders = holders
                .iter()
                .filter(|h| live.iter().any(|w| w.id == h.0))
                .count();
            let want = replicas.min(live.len().max(1));
            if serving_holders >= want {
                return Ok(());
            }
            if attempt >= TASK_ATTEMPTS {
                return Err(TaskError {
                    reason: format!("block {block}: {last_error}"),
                    permanent: false,
                });
            }
            if holders.is_empty() && (kind == JobKind::Replicate || src.mount_id == 0) {
                if kind == JobKind::Replicate {
                    // Nothing cached to copy: replication leaves it alone.
                    return Ok(());
                }
                return Err(TaskError {
                    reason: "its blocks are in no worker and it is not in the under-storage".into(),
                    permanent: true,
                });
            }
            let mut candidates: Vec<&WorkerState> = live
                .iter()
                .filter(|w| !excluded.contains(&w.id) && !holders.iter().any(|h| h.0 == w.id))
                .collect();
            if candidates.is_empty() {
                // Every worker failed once: give them all another chance.
                excluded.clear();
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            let (targets, from): (Vec<&WorkerState>, Option<Peer>) = if holders.is_empty() {
                // The block's own worker unless it is full: placement stays
                // stable across leaders while the cache has room.
                candidates.sort_by_key(|w| std::cmp::Reverse(score(block, w.id)));
                let pick = candidates
                    .iter()
                    .find(|w| self.room(master, w.id) >= len)
                    .unwrap_or(&candidates[0]);
                (vec![*pick], None)
            } else {
                candidates.sort_by_key(|w| {
                    (
                        self.room(master, w.id) < len,
                        self.busy(w.id),
                        std::cmp::Reverse(score(block, w.id)),
                    )
                });
                let source = holders
                    .iter()
                    .max_by_key(|h| score(block, h.0))
                    .map(|h| peer(&h.1));
                if serving_holders == 0 {
                    candidates.retain(|w| self.room(master, w.id) >= len);
                    if candidates.is_empty() {
                        // No room left on the serving workers: the copy on the
                        // leaving one is not worth evicting anything for.
                        return Ok(());
                    }
                }
                candidates.truncate(want - serving_holders);
                (candidates, source)
            };
            let request = Request::Load(LoadRequest {
                block,
                offset: src.block_offset,
                len,
                from: from.clone(),
                source: (kind == JobKind::Load && src.mount_id != 0).then(|| src.clone()),
            });
            let mut sends = Vec::new();
            for target in &targets {
                if let Some(t) = &throttle {
                    t.take(len).await;
                }
                let reservation = Reservation::new(self, target.id, len);
                let request = request.clone();
                sends.push(async move {
                    let answer = self.send_task(kind, target, request).await;
                    drop(reservation);
                    (target.id, answer)
                });
            }
            let mut failed = false;
            for (worker, answer) in futures::future::join_all(sends).await {
                match answer {
                    Ok(Response::Loaded { tier, fetched }) => {
                        master.workers.commit_block(worker, block, len, tier);
                        if fetched {
                            self.metrics.bytes_loaded.inc_by(len);
                        }
                    }
                    Ok(other) => {
                        failed = true;
                        last_error = format!("unexpected answer {other:?}");
                        excluded.insert(worker);
                    }
                    Err(e) if e.permanent => return Err(e),
                    Err(e) => {
                        tracing::warn!(block, worker, error = %e.reason, "block task failed; retrying elsewhere");
                        failed = true;
                        last_error = e.reason;
                        excluded.insert(worker);
                    }
                }
            }
            if failed {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }

    async fn run_persist(
        self: &Arc<Self>,
        master: &Arc<Master>,
        job: &Job,
        tracker: &Arc<Mutex<Tracker>>,
    ) -> Result<Option<String>, Stop> {
        let files = self.walk(master, &job.spec).await?;
        let start = self.plan_totals(tracker, &files, 0);
        let parallelism = parallelism(&job.spec, master.workers.workers().len());
        let files = Arc::new(files);
        let mut in_flight: JoinSet<(u64, Result<(), String>)> = JoinSet::new();
        let mut next = start;
        loop {
            while in_flight.len() < parallelism && (next as usize) < files.len() {
                let index = next;
                next += 1;
                let (sched, master, files) = (self.clone(), master.clone(), files.clone());
                in_flight.spawn(async move {
                    let r = sched.persist_file(&master, &files[index as usize]).await;
                    (index, r)
                });
            }
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            let (index, result) =
                joined.map_err(|e| Stop::Fail(format!("a persist task failed: {e}")))?;
            let target = &files[index as usize];
            tracker.lock().expect("tracker").finish(
                index,
                target.inode.length,
                result.err().map(|r| (target.path.to_string(), r)),
            );
        }
        Ok(None)
    }

    /// Records the walked target's totals; returns where scheduling starts
    /// (the checkpoint of an earlier leader, if any).
    fn plan_totals(&self, tracker: &Mutex<Tracker>, files: &[Target], skipped: u64) -> u64 {
        let mut t = tracker.lock().expect("tracker");
        let p = &mut t.progress;
        p.planned = true;
        p.files_total = files.len() as u64;
        p.bytes_total = files.iter().map(|f| f.inode.length).sum();
        p.files_skipped = skipped;
        t.changed = true;
        t.progress.checkpoint.cursor.min(files.len() as u64)
    }

    /// Writes one cache-only file to the under-storage through the worker
    /// holding most of its blocks.
    async fn persist_file(&self, master: &Master, target: &Target) -> Result<(), String> {
        let inode = &target.inode;
        if inode.persist == PersistState::Persisted {
            return Ok(());
        }
        if !inode.completed {
            return Err("still being written".into());
        }
        let mount = master
            .namespace
            .mount_of(&target.path)
            .map_err(|e| e.to_string())?
            .ok_or("not under a mount: there is no under-storage to persist to")?;
        if mount.read_only {
            return Err(format!("mount {} is read-only", mount.path));
        }
        let root = WeirPath::parse(&mount.path).map_err(|e| e.to_string())?;
        let ufs_path = target
            .path
            .strip_prefix(&root)
            .map(str::to_owned)
            .unwrap_or_default();
        let mut blocks = Vec::new();
        let mut held: HashMap<WorkerId, usize> = HashMap::new();
        for (block, _, len) in blocks_of(inode) {
            let holders = master.workers.locations(block);
            let Some(first) = holders.first() else {
                return Err(format!(
                    "block {block} is in no worker and the file is not in the under-storage: its data is lost"
                ));
            };
            for h in &holders {
                *held.entry(h.0).or_default() += 1;
            }
            blocks.push((block, len, Some(peer(&first.1))));
        }
        let live = master.workers.workers();
        let worker = live
            .iter()
            .max_by_key(|w| (held.get(&w.id).copied().unwrap_or(0), score(inode.id, w.id)))
            .ok_or("no live worker")?;
        let request = Request::Persist(PersistRequest {
            file_id: inode.id,
            path: target.path.to_string(),
            mount_id: mount.mount_id,
            ufs_path,
            length: inode.length,
            blocks,
        });
        let mut attempt = 0;
        loop {
            match self
                .send_task(JobKind::Persist, worker, request.clone())
                .await
            {
                Ok(_) => break,
                Err(e) if e.permanent || attempt + 1 >= TASK_ATTEMPTS => return Err(e.reason),
                Err(e) => {
                    tracing::warn!(file = %target.path, error = %e.reason, "persist task failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        match master
            .namespace
            .lookup(&target.path)
            .map_err(|e| e.to_string())?
        {
            Some(now) if now.id == inode.id && now.persist == PersistState::Persisted => Ok(()),
            Some(now) if now.id == inode.id => {
                Err("the worker finished without persisting it".into())
            }
            _ => Err("deleted or replaced while it was being persisted".into()),
        }
    }

    async fn run_free(
        self: &Arc<Self>,
        master: &Arc<Master>,
        job: &Job,
        tracker: &Arc<Mutex<Tracker>>,
    ) -> Result<Option<String>, Stop> {
        let files = self.walk(master, &job.spec).await?;
        let start = self.plan_totals(tracker, &files, 0);
        let mut pinned = 0u64;
        let mut waiting: Vec<(u64, Vec<u64>)> = Vec::new();
        for (index, target) in files.iter().enumerate().skip(start as usize) {
            let index = index as u64;
            if target.inode.pinned {
                pinned += 1;
                tracker
                    .lock()
                    .expect("tracker")
                    .finish(index, target.inode.length, None);
                continue;
            }
            if target.inode.persist != PersistState::Persisted {
                tracker.lock().expect("tracker").finish(
                    index,
                    0,
                    Some((
                        target.path.to_string(),
                        "not in the under-storage: freeing it would lose its data".into(),
                    )),
                );
                continue;
            }
            let blocks: Vec<u64> = blocks_of(&target.inode).map(|(b, _, _)| b).collect();
            master.workers.schedule_free(blocks.iter().copied());
            waiting.push((index, blocks));
        }
        let deadline = Instant::now() + FREE_WAIT;
        while !waiting.is_empty() {
            waiting.retain(|(index, blocks)| {
                if blocks.iter().any(|b| master.workers.is_cached(*b)) {
                    return true;
                }
                let length = files[*index as usize].inode.length;
                tracker
                    .lock()
                    .expect("tracker")
                    .finish(*index, length, None);
                false
            });
            if waiting.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for (index, _) in waiting.drain(..) {
                    tracker.lock().expect("tracker").finish(
                        index,
                        0,
                        Some((
                            files[index as usize].path.to_string(),
                            format!("its blocks were still cached after {FREE_WAIT:?}"),
                        )),
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            // Blocks re-cached by readers meanwhile are asked for again.
            for (_, blocks) in &waiting {
                master.workers.schedule_free(blocks.iter().copied());
            }
        }
        Ok((pinned > 0).then(|| format!("{pinned} pinned files kept their blocks")))
    }
}

/// Space held on a worker for a task in flight; released however the task
/// ends (an aborted job included).
struct Reservation<'a> {
    scheduler: &'a JobScheduler,
    worker: WorkerId,
    bytes: u64,
}

impl<'a> Reservation<'a> {
    fn new(scheduler: &'a JobScheduler, worker: WorkerId, bytes: u64) -> Self {
        scheduler.reserve(worker, bytes, true);
        Self {
            scheduler,
            worker,
            bytes,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.scheduler.reserve(self.worker, self.bytes, false);
    }
}

/// Tasks a job keeps in flight: its own setting, else a few per worker.
fn parallelism(spec: &JobSpec, workers: usize) -> usize {
    match spec.parallelism as usize {
        0 => DEFAULT_PARALLELISM_PER_WORKER * workers.max(1),
        n => n,
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5)).min(Duration::from_secs(5))
}

/// Submits `spec` and returns the new job.
pub async fn submit(master: &Master, spec: JobSpec) -> Result<Job, MasterError> {
    match master
        .write(Command::SubmitJob {
            spec,
            now_ms: now_ms(),
        })
        .await?
    {
        Reply::Job(job) => {
            master.jobs.wake();
            Ok(*job)
        }
        other => Err(MasterError::Raft(format!("unexpected reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker {
            progress: JobProgress::default(),
            finished: BTreeMap::new(),
            changed: false,
        }
    }

    #[test]
    fn the_checkpoint_covers_only_the_finished_front_of_the_walk() {
        let mut t = tracker();
        t.finish(1, 10, None);
        t.finish(3, 30, None);
        assert_eq!(t.progress.checkpoint.cursor, 0, "file 0 is not finished");
        assert_eq!((t.progress.files_done, t.progress.bytes_done), (2, 40));
        t.finish(0, 1, Some(("/a/0".into(), "gone".into())));
        let cp = t.progress.checkpoint.clone();
        assert_eq!(
            (cp.cursor, cp.files_done, cp.bytes_done, cp.failed_count),
            (2, 1, 10, 1)
        );
        t.finish(2, 20, None);
        assert_eq!(t.progress.checkpoint.cursor, 4);
        assert_eq!(t.progress.checkpoint.bytes_done, 60);

        // A new leader starts at the checkpoint with its counts: file 4,
        // done but past it, is counted again when it is redone.
        t.finish(5, 50, None);
        let resumed = t.progress.resume();
        assert_eq!((resumed.files_done, resumed.bytes_done), (3, 60));
        assert_eq!(resumed.failed.len(), 1);
        assert!(t.changed);
    }

    #[test]
    fn placement_is_stable_and_spread() {
        let workers = [1u64, 2, 3];
        let pick = |block: u64, ws: &[u64]| *ws.iter().max_by_key(|w| score(block, **w)).unwrap();
        let mut counts = HashMap::new();
        for block in 0..3000u64 {
            let first = pick(block, &workers);
            *counts.entry(first).or_insert(0) += 1;
            // Losing another worker never moves a block.
            let others: Vec<u64> = workers.iter().copied().filter(|w| *w != first).collect();
            let survivors = [first, others[0]];
            assert_eq!(pick(block, &survivors), first);
        }
        for (w, n) in counts {
            assert!((800..1200).contains(&n), "worker {w} got {n} of 3000");
        }
    }

    #[tokio::test]
    async fn the_throttle_paces_bytes() {
        let t = Throttle::new(100 << 20).unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            t.take(10 << 20).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(Throttle::new(0).is_none(), "0 means unlimited");
    }
}
