//! The job table: job records as the replicated state machine keeps them.
//! Submitting, progress updates and cancels are planned here into store
//! changes; the running of jobs is the leader's [`super::runner`].

use crate::master::command::{Command, FsError, FsResult, Reply};
use crate::master::jobs::glob::{glob_base, is_glob};
use crate::master::metastore::{MetaStore, Op, counter_op, read_counter};
use crate::master::records::{Job, JobId, JobProgress, JobSpec, JobState, MAX_RETAINED_FINISHED};
use crate::path::WeirPath;
use std::sync::Arc;

const META_NEXT_JOB_ID: &str = "next_job_id";
/// Copies per block a job may ask for.
pub const MAX_REPLICAS: u32 = 16;

/// The job records of a metadata store.
#[derive(Clone)]
pub struct JobTable {
    store: Arc<dyn MetaStore>,
}

impl std::fmt::Debug for JobTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTable").finish_non_exhaustive()
    }
}

impl JobTable {
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Self { store }
    }

    pub fn job(&self, id: JobId) -> FsResult<Option<Job>> {
        Ok(self.store.job(id)?)
    }

    /// Jobs in submission order, strictly after `after`, at most `limit`.
    pub fn page(&self, after: Option<JobId>, limit: usize) -> FsResult<Vec<Job>> {
        Ok(self.store.jobs(after, limit)?)
    }

    /// Every job not finished yet.
    pub fn unfinished(&self) -> FsResult<Vec<Job>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.page(after, 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            out.extend(page.into_iter().filter(|j| !j.state.is_finished()));
        }
        Ok(out)
    }

    /// Plans a job command into store changes; nothing is written.
    pub fn plan(&self, cmd: &Command) -> FsResult<(Vec<Op>, Reply)> {
        let mut ops = Vec::new();
        let reply = match cmd {
            Command::SubmitJob { spec, now_ms } => self.plan_submit(&mut ops, spec, *now_ms),
            Command::UpdateJob {
                id,
                state,
                progress,
                message,
                now_ms,
            } => {
                let mut job = self.running_job(*id)?;
                job.state = *state;
                job.progress = progress.clone();
                job.message = message.clone();
                if *state != JobState::Pending && job.started_ms.is_none() {
                    job.started_ms = Some(*now_ms);
                }
                if state.is_finished() {
                    job.finished_ms = Some(*now_ms);
                }
                ops.push(Op::PutJob(job.clone()));
                Ok(Reply::Job(Box::new(job)))
            }
            Command::CancelJob { id, now_ms } => {
                let mut job = self
                    .store
                    .job(*id)?
                    .ok_or_else(|| FsError::NotFound(format!("job {id}")))?;
                if !job.state.is_finished() {
                    job.state = JobState::Cancelled;
                    job.finished_ms = Some(*now_ms);
                    job.message = Some("cancelled".into());
                    ops.push(Op::PutJob(job.clone()));
                }
                Ok(Reply::Job(Box::new(job)))
            }
            other => Err(FsError::InvalidArgument(format!(
                "{other} is not a job command"
            ))),
        }?;
        Ok((ops, reply))
    }

    fn running_job(&self, id: JobId) -> FsResult<Job> {
        let job = self
            .store
            .job(id)?
            .ok_or_else(|| FsError::NotFound(format!("job {id}")))?;
        if job.state.is_finished() {
            return Err(FsError::FailedPrecondition(format!(
                "job {id} is already {}",
                job.state.as_str()
            )));
        }
        Ok(job)
    }

    fn plan_submit(&self, ops: &mut Vec<Op>, spec: &JobSpec, now_ms: u64) -> FsResult<Reply> {
        if spec.paths.is_empty() {
            return Err(FsError::InvalidArgument("paths: at least one path".into()));
        }
        for p in &spec.paths {
            let plain = if is_glob(p) { glob_base(p) } else { p.clone() };
            WeirPath::parse(&plain)
                .map_err(|e| FsError::InvalidArgument(format!("paths: {p}: {e}")))?;
        }
        if !(1..=MAX_REPLICAS).contains(&spec.replicas) {
            return Err(FsError::InvalidArgument(format!(
                "replicas: {} is not between 1 and {MAX_REPLICAS}",
                spec.replicas
            )));
        }
        let id = read_counter(self.store.as_ref(), META_NEXT_JOB_ID, 1)?;
        ops.push(counter_op(META_NEXT_JOB_ID, id + 1));
        // Old finished jobs go first once there are too many to keep.
        let mut finished = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.jobs(after, 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            finished.extend(page.iter().filter(|j| j.state.is_finished()).map(|j| j.id));
        }
        let excess = finished.len().saturating_sub(MAX_RETAINED_FINISHED - 1);
        ops.extend(finished.into_iter().take(excess).map(Op::DeleteJob));
        let job = Job {
            id,
            spec: spec.clone(),
            state: JobState::Pending,
            progress: JobProgress::default(),
            message: None,
            submitted_ms: now_ms,
            started_ms: None,
            finished_ms: None,
        };
        ops.push(Op::PutJob(job.clone()));
        Ok(Reply::Job(Box::new(job)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::metastore::MemoryStore;
    use crate::master::records::JobKind;
    use crate::master::state::ReplicatedState;

    fn state() -> ReplicatedState {
        ReplicatedState::open(Arc::new(MemoryStore::new())).unwrap()
    }

    fn load_spec(paths: &[&str], replicas: u32) -> JobSpec {
        JobSpec {
            kind: JobKind::Load,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            replicas,
            parallelism: 0,
            bandwidth: 0,
            load_metadata: false,
            load_what_fits: false,
        }
    }

    fn submit(ns: &ReplicatedState, spec: JobSpec) -> FsResult<Job> {
        match ns.apply(&Command::SubmitJob { spec, now_ms: 5 }, vec![])? {
            Reply::Job(j) => Ok(*j),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jobs_get_ids_in_order_refuse_bad_specs_and_stay_cancelled() {
        let ns = state();
        let a = submit(&ns, load_spec(&["/data"], 1)).unwrap();
        let b = submit(&ns, load_spec(&["/data/*.csv", "/x"], 2)).unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(a.state, JobState::Pending);
        for (spec, field) in [
            (load_spec(&[], 1), "paths"),
            (load_spec(&["relative"], 1), "paths: relative"),
            (load_spec(&["/a"], 0), "replicas"),
            (load_spec(&["/a"], MAX_REPLICAS + 1), "replicas"),
        ] {
            let e = submit(&ns, spec).unwrap_err();
            assert!(
                matches!(&e, FsError::InvalidArgument(m) if m.starts_with(field)),
                "{e}"
            );
        }
        let progress = JobProgress {
            planned: true,
            bytes_total: 10,
            bytes_done: 4,
            ..JobProgress::default()
        };
        let update = |state| Command::UpdateJob {
            id: 1,
            state,
            progress: progress.clone(),
            message: None,
            now_ms: 7,
        };
        let Reply::Job(running) = ns.apply(&update(JobState::Running), vec![]).unwrap() else {
            panic!()
        };
        assert_eq!(
            (running.started_ms, running.progress.bytes_done),
            (Some(7), 4)
        );
        ns.apply(&Command::CancelJob { id: 1, now_ms: 8 }, vec![])
            .unwrap();
        // A late update from the scheduler does not undo the cancel.
        assert!(matches!(
            ns.apply(&update(JobState::Running), vec![]),
            Err(FsError::FailedPrecondition(_))
        ));
        let job = ns.jobs().job(1).unwrap().unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.finished_ms, Some(8));
        assert!(matches!(
            ns.apply(&Command::CancelJob { id: 99, now_ms: 8 }, vec![]),
            Err(FsError::NotFound(_))
        ));
    }

    #[test]
    fn only_the_newest_finished_jobs_are_kept() {
        let ns = state();
        let total = MAX_RETAINED_FINISHED as u64 + 5;
        for id in 1..=total {
            submit(&ns, load_spec(&["/a"], 1)).unwrap();
            ns.apply(&Command::CancelJob { id, now_ms: 9 }, vec![])
                .unwrap();
        }
        let running = submit(&ns, load_spec(&["/a"], 1)).unwrap();
        let kept = ns.jobs().page(None, usize::MAX).unwrap();
        assert_eq!(kept.len(), MAX_RETAINED_FINISHED);
        assert_eq!(kept.last().unwrap().id, running.id, "unfinished jobs stay");
        assert_eq!(kept[0].id, running.id + 1 - MAX_RETAINED_FINISHED as u64);
    }
}
