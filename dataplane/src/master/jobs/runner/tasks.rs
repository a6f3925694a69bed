//! Block tasks on their way to workers: a bounded number in flight per
//! worker, space reserved for them until they end, paced to a job's
//! bandwidth, with the answer classified as done, worth retrying, or
//! permanent.

use super::{JobRunner, TaskLabels};
use crate::master::records::{JobKind, JobSpec};
use crate::master::workers::{WorkerAddr, WorkerId, WorkerState};
use crate::wire::{self, ErrorKind, Peer, Request, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Block tasks in flight per live worker when a job does not say.
const DEFAULT_PARALLELISM_PER_WORKER: usize = 4;
/// Attempts of one block task before its file is failed.
pub(super) const TASK_ATTEMPTS: u32 = 6;
/// A worker that neither answers nor drops the connection in this long is
/// treated as failed for the task.
const TASK_TIMEOUT: Duration = Duration::from_secs(600);

/// A block task's failure.
#[derive(Debug)]
pub(super) struct TaskError {
    pub reason: String,
    /// Retrying cannot help (the under-storage does not have the file).
    pub permanent: bool,
}

/// Paces a job's reads to a byte rate.
#[derive(Debug)]
pub(super) struct Throttle {
    bytes_per_sec: u64,
    next_free: tokio::sync::Mutex<Instant>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Option<Arc<Self>> {
        (bytes_per_sec > 0).then(|| {
            Arc::new(Self {
                bytes_per_sec,
                next_free: tokio::sync::Mutex::new(Instant::now()),
            })
        })
    }

    pub async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next_free.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// A worker's data address, for a worker-to-worker copy.
pub(super) fn peer(addr: &WorkerAddr) -> Peer {
    Peer {
        host: addr.host.clone(),
        port: addr.data_port as u16,
    }
}

impl JobRunner {
    pub(super) fn slots(&self, worker: WorkerId) -> Arc<Semaphore> {
        self.worker_slots
            .lock()
            .expect("worker slots")
            .entry(worker)
            .or_insert_with(|| Arc::new(Semaphore::new(self.tasks_per_worker)))
            .clone()
    }

    /// Bytes `worker` can take before evicting, less what is on its way.
    pub(super) fn room(&self, worker: WorkerId) -> u64 {
        let reserved = self
            .reserved
            .lock()
            .expect("reserved")
            .get(&worker)
            .copied()
            .unwrap_or(0);
        self.workers.room(worker).saturating_sub(reserved)
    }

    pub(super) fn reserve(&self, worker: WorkerId, bytes: u64, take: bool) {
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
    pub(super) fn busy(&self, worker: WorkerId) -> usize {
        self.tasks_per_worker - self.slots(worker).available_permits()
    }

    /// Sends one task to a worker (waiting for one of its slots) and
    /// returns its answer.
    pub(super) async fn send_task(
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
}

/// Space held on a worker for a task in flight; released however the task
/// ends (an aborted job included).
pub(super) struct Reservation<'a> {
    runner: &'a JobRunner,
    worker: WorkerId,
    bytes: u64,
}

impl<'a> Reservation<'a> {
    pub fn new(runner: &'a JobRunner, worker: WorkerId, bytes: u64) -> Self {
        runner.reserve(worker, bytes, true);
        Self {
            runner,
            worker,
            bytes,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.runner.reserve(self.worker, self.bytes, false);
    }
}

/// Tasks a job keeps in flight: its own setting, else a few per worker.
pub(super) fn parallelism(spec: &JobSpec, workers: usize) -> usize {
    match spec.parallelism as usize {
        0 => DEFAULT_PARALLELISM_PER_WORKER * workers.max(1),
        n => n,
    }
}

pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5)).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

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
