//! The job record: a load, persist, free or replicate job as the master
//! replicates it, with the progress a new leader resumes from.

use serde::{Deserialize, Serialize};

pub type JobId = u64;

/// At most this many failed files are kept by name (all are counted).
pub const MAX_FAILED_LISTED: usize = 100;
/// Finished jobs beyond this many are forgotten, oldest first.
pub const MAX_RETAINED_FINISHED: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Cache the target's blocks from the under-storage, `replicas` copies.
    Load,
    /// Write the target's cache-only files to the under-storage.
    Persist,
    /// Drop the target's blocks from every worker (pinned files stay).
    Free,
    /// Raise already cached blocks to `replicas` copies, worker to worker.
    Replicate,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Load => "load",
            JobKind::Persist => "persist",
            JobKind::Free => "free",
            JobKind::Replicate => "replicate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub kind: JobKind,
    /// Namespace paths; a path with `*`, `?` or `[` is a glob over the
    /// files below its longest plain prefix.
    pub paths: Vec<String>,
    /// Copies per block (load, replicate); at least 1.
    pub replicas: u32,
    /// Block tasks in flight for this job; 0 means the scheduler's default.
    pub parallelism: u32,
    /// Bytes per second read for this job; 0 means unlimited.
    pub bandwidth: u64,
    /// Re-list directories from the under-storage even when their listing
    /// is fresh.
    pub load_metadata: bool,
    /// When the target is larger than the cache: load the files that fit
    /// (in walk order) instead of failing.
    pub load_what_fits: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "Pending",
            JobState::Running => "Running",
            JobState::Completed => "Completed",
            JobState::Failed => "Failed",
            JobState::Cancelled => "Cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedFile {
    pub path: String,
    pub reason: String,
    /// The file's position in the job's walk.
    pub position: u64,
}

/// Where a new leader resumes a job: every file before `cursor` in the
/// walk is finished, with these counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub cursor: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    pub failed_count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// False until the target has been walked and counted.
    pub planned: bool,
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    /// Files left out because the cache cannot hold them (load what fits).
    pub files_skipped: u64,
    pub failed_count: u64,
    pub failed: Vec<FailedFile>,
    pub checkpoint: Checkpoint,
}

impl JobProgress {
    pub fn record_failure(&mut self, position: u64, path: String, reason: String) {
        self.failed_count += 1;
        if self.failed.len() < MAX_FAILED_LISTED {
            self.failed.push(FailedFile {
                path,
                reason,
                position,
            });
        }
    }

    /// The progress a new leader starts from: the checkpoint's counts (the
    /// files after it are walked and scheduled again).
    pub fn resume(&self) -> JobProgress {
        let cp = self.checkpoint.clone();
        JobProgress {
            files_done: cp.files_done,
            bytes_done: cp.bytes_done,
            failed_count: cp.failed_count,
            failed: self
                .failed
                .iter()
                .filter(|f| f.position < cp.cursor)
                .cloned()
                .collect(),
            checkpoint: cp,
            ..JobProgress::default()
        }
    }
}

/// One job as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    pub progress: JobProgress,
    /// Why the job failed (or what it skipped), for people.
    pub message: Option<String>,
    pub submitted_ms: u64,
    /// When it first ran (kept across leader changes).
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

impl Job {
    /// Bytes per second since the job started, as of `now_ms`.
    pub fn throughput(&self, now_ms: u64) -> f64 {
        let Some(started) = self.started_ms else {
            return 0.0;
        };
        let end = self.finished_ms.unwrap_or(now_ms);
        let secs = end.saturating_sub(started) as f64 / 1000.0;
        if secs <= 0.0 {
            0.0
        } else {
            self.progress.bytes_done as f64 / secs
        }
    }

    /// Seconds left at the current throughput; `None` when unknown.
    pub fn eta_seconds(&self, now_ms: u64) -> Option<u64> {
        if self.state.is_finished() || !self.progress.planned {
            return None;
        }
        let rate = self.throughput(now_ms);
        let left = self
            .progress
            .bytes_total
            .saturating_sub(self.progress.bytes_done);
        (rate > 0.0).then(|| (left as f64 / rate).ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_throughput() {
        let mut job = Job {
            id: 1,
            spec: JobSpec {
                kind: JobKind::Load,
                paths: vec!["/a".into()],
                replicas: 1,
                parallelism: 0,
                bandwidth: 0,
                load_metadata: false,
                load_what_fits: false,
            },
            state: JobState::Running,
            progress: JobProgress {
                planned: true,
                bytes_total: 1000,
                bytes_done: 250,
                ..JobProgress::default()
            },
            message: None,
            submitted_ms: 0,
            started_ms: Some(1000),
            finished_ms: None,
        };
        assert_eq!(job.throughput(2000), 250.0);
        assert_eq!(job.eta_seconds(2000), Some(3));
        job.state = JobState::Completed;
        assert_eq!(job.eta_seconds(2000), None);
        for n in 0..(MAX_FAILED_LISTED + 5) {
            job.progress
                .record_failure(n as u64, format!("/f{n}"), "gone".into());
        }
        assert_eq!(job.progress.failed.len(), MAX_FAILED_LISTED);
        assert_eq!(job.progress.failed_count, MAX_FAILED_LISTED as u64 + 5);
        job.progress.checkpoint = Checkpoint {
            cursor: 3,
            files_done: 0,
            bytes_done: 0,
            failed_count: 3,
        };
        let resumed = job.progress.resume();
        assert_eq!(resumed.failed_count, 3);
        assert_eq!(
            resumed.failed.len(),
            3,
            "failures past the checkpoint are retried"
        );
        assert!(!resumed.planned, "totals are counted again");
    }
}
