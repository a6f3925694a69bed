//! A master's parts, built once from its Raft node: the worker registry,
//! metadata sync and job runner, each handed the narrow handles it needs,
//! and the handles the API serves from.

use super::jobs::runner::{Handles, JobRunner};
use super::jobs::table::JobTable;
use super::namespace::Namespace;
use super::node::{MasterConfig, Node, Proposer};
use super::service::ApiHandles;
use super::sync::MetadataSync;
use super::workers::WorkerRegistry;
use std::sync::Arc;

/// A master's parts, each built once and handed the narrow handles it
/// needs.
#[derive(Debug, Clone)]
pub struct Parts {
    pub proposer: Proposer,
    pub namespace: Namespace,
    pub workers: Arc<WorkerRegistry>,
    pub sync: Arc<MetadataSync>,
    pub runner: Arc<JobRunner>,
    jobs: JobTable,
}

impl Parts {
    pub fn new(node: &Node, config: &MasterConfig) -> Self {
        let proposer = node.proposer.clone();
        let namespace = node.state.namespace().clone();
        let jobs = node.state.jobs().clone();
        let workers = Arc::new(WorkerRegistry::new(config.worker_timeout));
        let sync = Arc::new(MetadataSync::new(proposer.clone(), namespace.clone()));
        let runner = Arc::new(JobRunner::new(
            config.job_settle,
            config.job_tasks_per_worker,
            Handles {
                proposer: proposer.clone(),
                namespace: namespace.clone(),
                jobs: jobs.clone(),
                sync: sync.clone(),
                workers: workers.clone(),
            },
        ));
        Self {
            proposer,
            namespace,
            workers,
            sync,
            runner,
            jobs,
        }
    }

    pub fn api_handles(&self) -> ApiHandles {
        ApiHandles {
            proposer: self.proposer.clone(),
            namespace: self.namespace.clone(),
            jobs: self.jobs.clone(),
            sync: self.sync.clone(),
            workers: self.workers.clone(),
            runner: self.runner.clone(),
        }
    }
}
