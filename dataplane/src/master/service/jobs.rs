//! The job calls of the master's API: submit, look at, list and cancel.

use super::convert::{job_to_pb, now_ms, spec_from_pb};
use crate::master::command::{Command, Reply};
use crate::master::error::MasterError;
use crate::master::jobs::runner::JobRunner;
use crate::master::jobs::table::JobTable;
use crate::master::node::Proposer;
use crate::proto::master as pb;
use std::sync::Arc;
use tonic::Status;

const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

#[derive(Debug, Clone)]
pub struct JobApi {
    pub(super) proposer: Proposer,
    pub(super) jobs: JobTable,
    pub(super) runner: Arc<JobRunner>,
}

impl JobApi {
    pub async fn submit_job(&self, request: pb::JobSpec) -> Result<pb::JobInfo, Status> {
        let spec = spec_from_pb(request)?;
        let job = self.runner.submit(spec).await?;
        Ok(job_to_pb(&job))
    }

    pub async fn get_job(&self, request: pb::JobId) -> Result<pb::JobInfo, Status> {
        let id = request.id;
        self.proposer.linearize().await?;
        let job = self
            .jobs
            .job(id)
            .map_err(MasterError::from)?
            .ok_or_else(|| Status::not_found(format!("job {id}")))?;
        Ok(job_to_pb(&job))
    }

    pub async fn list_jobs(&self, request: pb::ListJobsRequest) -> Result<pb::JobList, Status> {
        self.proposer.linearize().await?;
        let limit = match request.limit as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = (request.after > 0).then_some(request.after);
        let jobs = self.jobs.page(after, limit).map_err(MasterError::from)?;
        Ok(pb::JobList {
            jobs: jobs.iter().map(job_to_pb).collect(),
        })
    }

    pub async fn cancel_job(&self, request: pb::JobId) -> Result<pb::JobInfo, Status> {
        let cancel = Command::CancelJob {
            id: request.id,
            now_ms: now_ms(),
        };
        match self.proposer.write(cancel).await? {
            Reply::Job(job) => {
                self.runner.wake();
                Ok(job_to_pb(&job))
            }
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }
}
