//! Load and replicate jobs: every block of the target brought to its
//! number of copies, the first from the under-storage on the worker the
//! placement rule names, the others copied from a holder to the least busy
//! workers without one.

use super::tasks::{Reservation, TASK_ATTEMPTS, TaskError, Throttle, backoff, parallelism, peer};
use super::tracker::Tracker;
use super::walk::Target;
use super::{JobRunner, Stop};
use crate::block::{self, BlockId};
use crate::master::records::{Job, JobKind, JobSpec, PersistState};
use crate::master::workers::{WorkerId, WorkerState};
use crate::path::WeirPath;
use crate::wire::{LoadRequest, Peer, Request, Response, UfsSource};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;

/// Where the first copy of `block` (`len` bytes) goes among `candidates`,
/// given the bytes each can take now: the placement rule a client's miss
/// follows too.
pub fn first_copy<'a>(
    block: BlockId,
    len: u64,
    candidates: &[&'a WorkerState],
    room: impl Fn(WorkerId) -> u64,
) -> Option<&'a WorkerState> {
    block::place(block, len, candidates, |w| (w.id, room(w.id))).copied()
}

/// One block a load or replicate job brings to its copies.
#[derive(Debug, Clone)]
struct BlockTask {
    kind: JobKind,
    block: BlockId,
    len: u64,
    src: UfsSource,
    /// The under-storage version the block must be read at.
    pin: Option<String>,
    replicas: usize,
}

/// What a block needs next.
enum Next<'a> {
    /// It has its copies.
    Done,
    /// Nothing holds it and nothing can read it.
    Lost,
    /// Every candidate failed once.
    NoCandidate,
    /// Copies to make: on `targets`, from the peer `from` or else the
    /// under-storage.
    Copy {
        targets: Vec<&'a WorkerState>,
        from: Option<Peer>,
    },
}

impl JobRunner {
    pub(super) async fn run_load(
        self: &Arc<Self>,
        job: &Job,
        tracker: &Arc<Mutex<Tracker>>,
    ) -> Result<Option<String>, Stop> {
        let spec = &job.spec;
        let files = self.walk(spec).await?;
        let live = self.workers.serving();
        let replicas = spec.replicas.max(1) as usize;
        if live.len() < replicas {
            return Err(Stop::Fail(format!(
                "replicas: {replicas} copies need {replicas} workers, {} are live",
                live.len()
            )));
        }
        let (files, skipped, note) = fit_to_cache(spec, files, &live, replicas)?;
        let start = self.plan_totals(tracker, &files, skipped);
        let parallelism = parallelism(spec, live.len());
        let throttle = Throttle::new(spec.bandwidth);
        let mut in_flight: JoinSet<(u64, Result<(), TaskError>)> = JoinSet::new();
        // Per file: blocks not yet finished, and its first failure.
        let mut open: HashMap<u64, (usize, Option<String>)> = HashMap::new();
        let mut queue: VecDeque<(u64, BlockTask)> = VecDeque::new();
        let mut next_file = start;
        loop {
            // Keep the queue of block tasks fed in walk order.
            while queue.len() < parallelism && (next_file as usize) < files.len() {
                let index = next_file;
                next_file += 1;
                let target = &files[index as usize];
                match self.block_sources(target) {
                    Ok(blocks) if blocks.is_empty() => {
                        tracker.lock().expect("tracker").finish(index, 0, None);
                    }
                    Ok(blocks) => {
                        open.insert(index, (blocks.len(), None));
                        let pin = target
                            .inode
                            .ufs_fingerprint
                            .clone()
                            .filter(|_| target.inode.persist == PersistState::Persisted);
                        for (block, src) in blocks {
                            let task = BlockTask {
                                kind: spec.kind,
                                block,
                                len: src.block_len,
                                src,
                                pin: pin.clone(),
                                replicas,
                            };
                            queue.push_back((index, task));
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
                && let Some((index, task)) = queue.pop_front()
            {
                let (runner, throttle) = (self.clone(), throttle.clone());
                in_flight.spawn(async move {
                    let r = runner.ensure_block(&task, throttle.as_deref()).await;
                    (index, r)
                });
            }
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            let (index, result) =
                joined.map_err(|e| Stop::Fail(format!("a block task failed: {e}")))?;
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
    fn block_sources(&self, target: &Target) -> Result<Vec<(BlockId, UfsSource)>, String> {
        let inode = &target.inode;
        if !inode.completed {
            return Err("still being written".into());
        }
        let mount = self
            .namespace
            .mount_of(&target.path)
            .map_err(|e| e.to_string())?;
        let (mount_id, relative) = match mount {
            Some(m) if inode.persist == PersistState::Persisted => {
                let root = WeirPath::parse(m.path()).map_err(|e| e.to_string())?;
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
        Ok(inode
            .blocks()
            .map(|b| {
                let src = UfsSource {
                    mount_id,
                    path: relative.clone(),
                    block_offset: b.offset,
                    block_len: b.len,
                };
                (b.id, src)
            })
            .collect())
    }

    /// Brings one block to its copies, retrying failed workers elsewhere.
    async fn ensure_block(
        self: &Arc<Self>,
        task: &BlockTask,
        throttle: Option<&Throttle>,
    ) -> Result<(), TaskError> {
        let mut excluded: HashSet<WorkerId> = HashSet::new();
        let mut attempt = 0;
        let mut last_error = String::new();
        loop {
            // Copies on draining workers serve reads but do not count: a
            // block only they hold is copied to a serving worker with room.
            let live = self.workers.serving();
            let next = self.next_copies(task, &live, &excluded);
            if matches!(next, Next::Done) {
                return Ok(());
            }
            if attempt >= TASK_ATTEMPTS {
                return Err(TaskError {
                    reason: format!("block {}: {last_error}", task.block),
                    permanent: false,
                });
            }
            let (targets, from) = match next {
                Next::Done => return Ok(()),
                Next::Lost => {
                    return Err(TaskError {
                        reason: "its blocks are in no worker and it is not in the under-storage"
                            .into(),
                        permanent: true,
                    });
                }
                Next::NoCandidate => {
                    // Every worker failed once: give them all another chance.
                    excluded.clear();
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Next::Copy { targets, from } => (targets, from),
            };
            let failures = self.send_copies(task, &targets, from, throttle).await?;
            if !failures.is_empty() {
                for (worker, reason) in failures {
                    excluded.insert(worker);
                    last_error = reason;
                }
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }

    /// Which copies of the block to make now, on which workers.
    fn next_copies<'a>(
        &self,
        task: &BlockTask,
        live: &'a [WorkerState],
        excluded: &HashSet<WorkerId>,
    ) -> Next<'a> {
        let holders = self.workers.locations(task.block);
        let serving_holders = holders
            .iter()
            .filter(|h| live.iter().any(|w| w.id == h.worker))
            .count();
        let want = task.replicas.min(live.len().max(1));
        if serving_holders >= want {
            return Next::Done;
        }
        if holders.is_empty() && (task.kind == JobKind::Replicate || task.src.mount_id == 0) {
            // Replication leaves a block nothing holds alone.
            return if task.kind == JobKind::Replicate {
                Next::Done
            } else {
                Next::Lost
            };
        }
        let mut candidates: Vec<&WorkerState> = live
            .iter()
            .filter(|w| !excluded.contains(&w.id) && !holders.iter().any(|h| h.worker == w.id))
            .collect();
        if candidates.is_empty() {
            return Next::NoCandidate;
        }
        if holders.is_empty() {
            let pick = first_copy(task.block, task.len, &candidates, |w| self.room(w))
                .expect("candidates is not empty");
            return Next::Copy {
                targets: vec![pick],
                from: None,
            };
        }
        // A second copy on a node that already has one does not survive
        // that node's loss: other nodes first.
        let held_on =
            |w: &WorkerState| !w.node.is_empty() && holders.iter().any(|h| h.node == w.node);
        candidates.sort_by_key(|w| {
            (
                held_on(w),
                self.room(w.id) < task.len,
                self.busy(w.id),
                std::cmp::Reverse(block::score(task.block, w.id)),
            )
        });
        let from = holders
            .iter()
            .max_by_key(|h| block::score(task.block, h.worker))
            .map(|h| peer(&h.addr));
        if serving_holders == 0 {
            candidates.retain(|w| self.room(w.id) >= task.len);
            if candidates.is_empty() {
                // No room left on the serving workers: the copy on the
                // leaving one is not worth evicting anything for.
                return Next::Done;
            }
        }
        candidates.truncate(want - serving_holders);
        Next::Copy {
            targets: candidates,
            from,
        }
    }

    /// Sends the block's load tasks to `targets` at once; the workers that
    /// failed, and why. A permanent failure ends the block.
    async fn send_copies(
        &self,
        task: &BlockTask,
        targets: &[&WorkerState],
        from: Option<Peer>,
        throttle: Option<&Throttle>,
    ) -> Result<Vec<(WorkerId, String)>, TaskError> {
        let load = LoadRequest {
            block: task.block,
            offset: task.src.block_offset,
            len: task.len,
            from,
            source: (task.kind == JobKind::Load && task.src.mount_id != 0)
                .then(|| task.src.clone()),
        };
        let request = match (&load.source, &task.pin) {
            (Some(_), Some(fingerprint)) => Request::LoadPinned {
                load,
                fingerprint: fingerprint.clone(),
            },
            _ => Request::Load(load),
        };
        let mut sends = Vec::new();
        for target in targets {
            if let Some(t) = throttle {
                t.take(task.len).await;
            }
            let reservation = Reservation::new(self, target.id, task.len);
            let request = request.clone();
            sends.push(async move {
                let answer = self.send_task(task.kind, target, request).await;
                drop(reservation);
                (target.id, answer)
            });
        }
        let mut failures = Vec::new();
        for (worker, answer) in futures::future::join_all(sends).await {
            match answer {
                Ok(Response::Loaded { tier, fetched }) => {
                    self.workers
                        .commit_block(worker, task.block, task.len, tier);
                    if fetched {
                        self.metrics.bytes_loaded.inc_by(task.len);
                    }
                }
                Ok(other) => failures.push((worker, format!("unexpected answer {other:?}"))),
                Err(e) if e.permanent => return Err(e),
                Err(e) => {
                    tracing::warn!(block = task.block, worker, error = %e.reason, "block task failed; retrying elsewhere");
                    failures.push((worker, e.reason));
                }
            }
        }
        Ok(failures)
    }
}

/// The target cut to what the workers hold before evicting: all of it, or
/// (load what fits) the files that fit in walk order; refused otherwise.
/// Returns the files, how many were left out, and a note saying so.
fn fit_to_cache(
    spec: &JobSpec,
    mut files: Vec<Target>,
    live: &[WorkerState],
    replicas: usize,
) -> Result<(Vec<Target>, u64, Option<String>), Stop> {
    let holdable: u64 = live
        .iter()
        .flat_map(|w| w.tiers.iter())
        .map(|t| t.holdable)
        .sum();
    let total: u64 = files.iter().map(|f| f.inode.length).sum();
    if total.saturating_mul(replicas as u64) <= holdable {
        return Ok((files, 0, None));
    }
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
    let skipped = (files.len() - fits) as u64;
    files.truncate(fits);
    let note =
        format!("loaded what fits: {skipped} files did not fit in the cache ({holdable} bytes)");
    Ok((files, skipped, Some(note)))
}
