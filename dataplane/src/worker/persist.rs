//! ASYNC_THROUGH persistence on the worker that cached the file: a journal
//! of files to persist (one small file each, written before the client is
//! told the write succeeded), worked through strictly in the order written.
//! Blocks stay unevictable until their file is in the under-storage; a
//! file deleted first is cancelled (its blocks dropped, nothing written).

use super::store::BlockStore;
use super::{Worker, WorkerError, WorkerResult};
use crate::proto::master as pb;
use crate::ufs::UfsPath;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{Notify, watch};
use weir_api::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistTask {
    /// Position in the journal (assigned on enqueue).
    pub seq: u64,
    pub file_id: u64,
    pub path: String,
    pub mount_id: u64,
    pub ufs_path: String,
    pub blocks: Vec<u64>,
    pub length: u64,
    /// Per block (when given): its length and a peer holding it, for blocks
    /// this worker does not have (a persist job's file).
    #[serde(default)]
    pub peers: Vec<(u64, Option<crate::wire::Peer>)>,
}

#[derive(Debug)]
pub struct Persister {
    dir: PathBuf,
    queue: Mutex<VecDeque<PersistTask>>,
    next_seq: AtomicU64,
    wake: Notify,
    /// The highest sequence number finished; the queue runs in order, so
    /// every lower one is finished too.
    finished: watch::Sender<u64>,
}

impl Persister {
    /// Loads the journal left by a previous run and protects its blocks.
    pub fn open(dir: PathBuf, store: &BlockStore) -> WorkerResult<Self> {
        let io = |source: std::io::Error| WorkerError::Start {
            what: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut tasks = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read(&path).map_err(io)?;
                match serde_json::from_slice::<PersistTask>(&text) {
                    Ok(t) => tasks.push(t),
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "unreadable persist journal entry")
                    }
                }
            }
        }
        tasks.sort_by_key(|t| t.seq);
        for t in &tasks {
            for b in &t.blocks {
                if store.mark_unpersisted(*b).is_err() {
                    tracing::error!(file = %t.path, block = b, "a block waiting to be persisted is gone");
                }
            }
        }
        let next = tasks.last().map_or(1, |t| t.seq + 1);
        if !tasks.is_empty() {
            tracing::info!(files = tasks.len(), "resuming ASYNC_THROUGH persistence");
        }
        Ok(Self {
            dir,
            queue: Mutex::new(tasks.into()),
            next_seq: AtomicU64::new(next),
            wake: Notify::new(),
            finished: watch::channel(next - 1).0,
        })
    }

    fn entry(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Journals the task (durably) and queues it behind earlier writes.
    pub fn enqueue(&self, mut task: PersistTask) -> WorkerResult<u64> {
        // The lock orders sequence numbers and queue positions alike.
        let mut queue = self.queue.lock().expect("persist queue");
        task.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.entry(task.seq);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec(&task).map_err(|e| WorkerError::Invalid(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| WorkerError::Start {
            what: "persist journal".into(),
            source,
        })?;
        let seq = task.seq;
        queue.push_back(task);
        self.wake.notify_one();
        Ok(seq)
    }

    /// Queues `task` unless its file is already queued; returns the
    /// sequence number to wait for.
    pub fn enqueue_or_join(&self, task: PersistTask) -> WorkerResult<u64> {
        {
            let queue = self.queue.lock().expect("persist queue");
            if let Some(queued) = queue.iter().find(|t| t.file_id == task.file_id) {
                return Ok(queued.seq);
            }
        }
        self.enqueue(task)
    }

    /// Resolves once the task numbered `seq` has finished (persisted or
    /// cancelled).
    pub async fn wait_done(&self, seq: u64) {
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|done| *done >= seq).await;
    }

    pub fn pending(&self) -> usize {
        self.queue.lock().expect("persist queue").len()
    }

    fn done(&self, seq: u64) {
        let _ = std::fs::remove_file(self.entry(seq));
        let mut queue = self.queue.lock().expect("persist queue");
        if queue.front().is_some_and(|t| t.seq == seq) {
            queue.pop_front();
        }
        self.finished.send_if_modified(|done| {
            let advanced = seq > *done;
            *done = (*done).max(seq);
            advanced
        });
    }
}

enum Outcome {
    Persisted,
    Cancelled,
    /// Not complete yet (the client has not closed it): ask again soon.
    NotReady,
}

pub(super) async fn run(worker: std::sync::Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let next = worker
            .persister
            .queue
            .lock()
            .expect("persist queue")
            .front()
            .cloned();
        let Some(task) = next else {
            tokio::select! {
                _ = worker.persister.wake.notified() => continue,
                _ = stop.changed() => return,
            }
        };
        let span = tracing::info_span!("persist", file = %task.path, blocks = task.blocks.len());
        let outcome = tracing::Instrument::instrument(persist_one(&worker, &task), span).await;
        let wait = match outcome {
            Ok(Outcome::Persisted) => {
                tracing::info!(file = %task.path, bytes = task.length, "persisted");
                worker.persister.done(task.seq);
                backoff = Duration::from_millis(100);
                continue;
            }
            Ok(Outcome::Cancelled) => {
                tracing::info!(file = %task.path, "deleted before persistence: cancelled");
                for b in &task.blocks {
                    let _ = worker.store.set_persisted(*b);
                    worker.store.remove(*b);
                }
                worker.persister.done(task.seq);
                continue;
            }
            Ok(Outcome::NotReady) => Duration::from_millis(50),
            Err(e) => {
                tracing::warn!(file = %task.path, error = %e, "persisting failed; will retry");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

fn is_not_found(e: &ApiError) -> bool {
    e.code() == Some(tonic::Code::NotFound)
}

/// The file `task` persists, wherever it is now (a file renamed before it
/// was persisted is written under its new name).
async fn current(worker: &Worker, task: &PersistTask) -> WorkerResult<Option<pb::FileInfo>> {
    let req = pb::InodeRequest { id: task.file_id };
    match worker
        .master
        .call(|mut c| async move { c.get_status_by_id(req).await })
        .await
    {
        Ok(i) if i.mount_id == task.mount_id => Ok(Some(i)),
        // Moved out of its mount (it cannot be: mounts do not share
        // renames) or gone.
        Ok(_) => Ok(None),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn persist_one(worker: &Worker, task: &PersistTask) -> WorkerResult<Outcome> {
    let Some(info) = current(worker, task).await? else {
        return Ok(Outcome::Cancelled);
    };
    if !info.completed {
        return Ok(Outcome::NotReady);
    }
    let ufs = worker.mounts.get(task.mount_id).await?;
    let mut path = UfsPath::parse(&info.ufs_relative)?;
    let mut writer = ufs.writer(&path).await?;
    let copied = async {
        let mut buf = vec![0u8; 4 << 20];
        for (i, block) in task.blocks.iter().enumerate() {
            let lease = worker.store.lease(*block);
            let mut f: Box<dyn tokio::io::AsyncRead + Unpin + Send> =
                match (&lease, task.peers.get(i)) {
                    (Some(lease), _) => {
                        let failed =
                            |e| WorkerError::Invalid(format!("{}: {e}", lease.path.display()));
                        let mut f = tokio::fs::File::open(&lease.path).await.map_err(failed)?;
                        f.seek(std::io::SeekFrom::Start(lease.offset))
                            .await
                            .map_err(failed)?;
                        Box::new(f.take(lease.len))
                    }
                    (None, Some((len, Some(peer)))) => {
                        Box::new(super::peers::open_peer_block(peer, *block, *len).await?)
                    }
                    (None, _) => {
                        return Err(WorkerError::Store(super::store::StoreError::NotFound(
                            *block,
                        )));
                    }
                };
            loop {
                let n = f
                    .read(&mut buf)
                    .await
                    .map_err(|e| WorkerError::Invalid(format!("block {block}: {e}")))?;
                if n == 0 {
                    break;
                }
                writer.write(Bytes::copy_from_slice(&buf[..n])).await?;
                worker.metrics.ufs_bytes_written.inc_by(n as u64);
            }
        }
        writer.close().await?;
        Ok::<_, WorkerError>(())
    };
    if let Err(e) = copied.await {
        let _ = writer.abort().await;
        return Err(e);
    }
    // Marked persisted at the path it has; renamed meanwhile, the object
    // follows it first (a few times at most: each round is a rename).
    let mut at = info.path;
    for _ in 0..5 {
        let req = pb::SetAttributeRequest {
            path: at.clone(),
            persist: Some(pb::PersistState::Persisted as i32),
            ..Default::default()
        };
        let replaced = match worker
            .master
            .call(|mut c| {
                let req = req.clone();
                async move { c.set_attribute(req).await }
            })
            .await
        {
            Ok(i) if i.id == task.file_id => break,
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(e.into()),
        };
        let Some(now) = current(worker, task).await? else {
            // Deleted while it was being written out: take it back, unless
            // a new file has the name (its own write decides the bytes).
            if !replaced {
                let _ = ufs.delete(&path).await;
            }
            return Ok(Outcome::Cancelled);
        };
        let to = UfsPath::parse(&now.ufs_relative)?;
        if to != path {
            tracing::info!(from = %at, to = %now.path, "renamed before it was persisted: the under-storage object follows");
            ufs.rename(&path, &to).await?;
            path = to;
        }
        at = now.path;
    }
    for b in &task.blocks {
        let _ = worker.store.set_persisted(*b);
    }
    Ok(Outcome::Persisted)
}
