//! The job service: heavy filesystem work (load, persist, free, replicate)
//! that the leader plans and the workers carry out. A job's record lives in
//! the replicated metastore, so a new leader resumes it from its last
//! replicated progress; the running part ([`scheduler`]) is leader-only
//! soft state rebuilt from those records.

pub mod scheduler;

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

/// Whether `pattern` is a glob rather than a plain path.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The longest leading run of plain components of a glob: the directory
/// its matches are searched below.
pub fn glob_base(pattern: &str) -> String {
    let mut base = String::new();
    for part in pattern.split('/').filter(|p| !p.is_empty()) {
        if is_glob(part) {
            break;
        }
        base.push('/');
        base.push_str(part);
    }
    if base.is_empty() { "/".into() } else { base }
}

/// Shell-style match of a whole path: `*` and `?` stay inside one path
/// component, `**` crosses components, `[abc]` / `[a-z]` / `[!x]` classes.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
        // Returns (matched, length of the class including brackets).
        let mut i = 1;
        let negate = matches!(p.get(1), Some(b'!') | Some(b'^'));
        if negate {
            i += 1;
        }
        let mut hit = false;
        let start = i;
        while i < p.len() && (p[i] != b']' || i == start) {
            if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                hit |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((hit != negate, i + 1))
    }
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                (0..=s.len()).any(|k| go(rest, &s[k..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                let mut k = 0;
                loop {
                    if go(rest, &s[k..]) {
                        return true;
                    }
                    if k == s.len() || s[k] == b'/' {
                        return false;
                    }
                    k += 1;
                }
            }
            Some(b'?') => !s.is_empty() && s[0] != b'/' && go(&p[1..], &s[1..]),
            Some(b'[') => match (s.first(), class(p, *s.first().unwrap_or(&0))) {
                (Some(&c), Some((true, len))) if c != b'/' => go(&p[len..], &s[1..]),
                (_, None) => !s.is_empty() && s[0] == b'[' && go(&p[1..], &s[1..]),
                _ => false,
            },
            Some(&c) => s.first() == Some(&c) && go(&p[1..], &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_matches("/d/*.csv", "/d/a.csv"));
        assert!(!glob_matches("/d/*.csv", "/d/x/a.csv"));
        assert!(glob_matches("/d/**/*.csv", "/d/x/y/a.csv"));
        assert!(glob_matches("/d/part-?", "/d/part-7"));
        assert!(!glob_matches("/d/part-?", "/d/part-10"));
        assert!(glob_matches("/d/[ab]*", "/d/beta"));
        assert!(!glob_matches("/d/[!ab]*", "/d/beta"));
        assert!(glob_matches("/d/f[0-9]", "/d/f5"));
        assert!(!glob_matches("/d/f[0-9]", "/d/fx"));
        assert_eq!(glob_base("/d/x/*.csv"), "/d/x");
        assert_eq!(glob_base("/*/a"), "/");
        assert!(is_glob("/a/*") && !is_glob("/a/b"));
    }

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
