//! Free jobs: the target's blocks dropped from every worker, pinned files
//! and files the under-storage lacks kept, and the job done once no worker
//! reports the blocks any more.

use super::tracker::Tracker;
use super::{JobRunner, Stop};
use crate::master::records::{Job, PersistState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a free job waits for workers to drop the blocks.
const FREE_WAIT: Duration = Duration::from_secs(60);

impl JobRunner {
    pub(super) async fn run_free(
        self: &Arc<Self>,
        job: &Job,
        tracker: &Arc<Mutex<Tracker>>,
    ) -> Result<Option<String>, Stop> {
        let files = self.walk(&job.spec).await?;
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
            let blocks: Vec<u64> = target.inode.blocks().map(|b| b.id).collect();
            self.workers.schedule_free(blocks.iter().copied());
            waiting.push((index, blocks));
        }
        let deadline = Instant::now() + FREE_WAIT;
        while !waiting.is_empty() {
            waiting.retain(|(index, blocks)| {
                if blocks.iter().any(|b| self.workers.is_cached(*b)) {
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
                self.workers.schedule_free(blocks.iter().copied());
            }
        }
        Ok((pinned > 0).then(|| format!("{pinned} pinned files kept their blocks")))
    }
}
