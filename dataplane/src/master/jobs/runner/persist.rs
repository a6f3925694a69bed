//! Persist jobs: cache-only files written to the under-storage, each by
//! the worker that holds most of its blocks, and marked persisted.

use super::tasks::{TASK_ATTEMPTS, backoff, parallelism, peer};
use super::tracker::Tracker;
use super::walk::Target;
use super::{JobRunner, Stop};
use crate::block::{self, BlockRange};
use crate::master::records::{Job, JobKind, PersistState};
use crate::master::workers::WorkerId;
use crate::path::WeirPath;
use crate::wire::{PersistRequest, Request};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;

impl JobRunner {
    pub(super) async fn run_persist(
        self: &Arc<Self>,
        job: &Job,
        tracker: &Arc<Mutex<Tracker>>,
    ) -> Result<Option<String>, Stop> {
        let files = self.walk(&job.spec).await?;
        let start = self.plan_totals(tracker, &files, 0);
        let parallelism = parallelism(&job.spec, self.workers.workers().len());
        let files = Arc::new(files);
        let mut in_flight: JoinSet<(u64, Result<(), String>)> = JoinSet::new();
        let mut next = start;
        loop {
            while in_flight.len() < parallelism && (next as usize) < files.len() {
                let index = next;
                next += 1;
                let (runner, files) = (self.clone(), files.clone());
                in_flight.spawn(async move {
                    let r = runner.persist_file(&files[index as usize]).await;
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

    /// Writes one cache-only file to the under-storage through the worker
    /// holding most of its blocks.
    async fn persist_file(&self, target: &Target) -> Result<(), String> {
        let inode = &target.inode;
        if inode.persist == PersistState::Persisted {
            return Ok(());
        }
        if !inode.completed {
            return Err("still being written".into());
        }
        let mount = self
            .namespace
            .mount_of(&target.path)
            .map_err(|e| e.to_string())?
            .ok_or("not under a mount: there is no under-storage to persist to")?;
        if mount.spec.read_only {
            return Err(format!("mount {} is read-only", mount.path()));
        }
        let root = WeirPath::parse(mount.path()).map_err(|e| e.to_string())?;
        let ufs_path = target
            .path
            .strip_prefix(&root)
            .map(str::to_owned)
            .unwrap_or_default();
        let mut blocks = Vec::new();
        let mut held: HashMap<WorkerId, usize> = HashMap::new();
        for BlockRange { id: block, len, .. } in inode.blocks() {
            let holders = self.workers.locations(block);
            let Some(first) = holders.first() else {
                return Err(format!(
                    "block {block} is in no worker and the file is not in the under-storage: its data is lost"
                ));
            };
            for h in &holders {
                *held.entry(h.worker).or_default() += 1;
            }
            blocks.push((block, len, Some(peer(&first.addr))));
        }
        let live = self.workers.workers();
        let worker = live
            .iter()
            .max_by_key(|w| {
                (
                    held.get(&w.id).copied().unwrap_or(0),
                    block::score(inode.id, w.id),
                )
            })
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
        match self
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
}
