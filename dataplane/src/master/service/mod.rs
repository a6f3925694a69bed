//! The master's gRPC API, split by concern: file system calls ([`fs`],
//! [`mounts`], [`stream`]), worker calls ([`workers`]), jobs ([`jobs`]) and
//! the admin report ([`admin`]). Each part holds only the handles it
//! needs. Every call is traced and counted here; errors and messages are
//! converted in one place ([`convert`]); followers answer
//! FAILED_PRECONDITION with the leader's address in `x-weir-leader`, so
//! clients switch at once.

pub mod admin;
pub mod convert;
pub mod fs;
pub mod jobs;
pub mod mounts;
pub mod stream;
pub mod workers;

use crate::master::jobs::runner::JobRunner;
use crate::master::jobs::table::JobTable;
use crate::master::namespace::Namespace;
use crate::master::node::Proposer;
use crate::master::sync::MetadataSync;
use crate::master::workers::WorkerRegistry;
use crate::metrics::RpcMetrics;
use crate::proto::master as pb;
use crate::proto::master::master_service_server::MasterService;
use admin::AdminApi;
use fs::FsApi;
use jobs::JobApi;
use std::sync::Arc;
use std::time::Instant;
use stream::{MetaResponses, PageStream};
use tonic::{Request, Response, Status};
use workers::WorkerApi;

/// The gRPC face of a master.
#[derive(Clone, Debug)]
pub struct MasterApi {
    fs: FsApi,
    workers: WorkerApi,
    jobs: JobApi,
    admin: AdminApi,
    metrics: Arc<RpcMetrics>,
}

/// What the API serves from.
#[derive(Debug, Clone)]
pub struct ApiHandles {
    pub proposer: Proposer,
    pub namespace: Namespace,
    pub jobs: JobTable,
    pub sync: Arc<MetadataSync>,
    pub workers: Arc<WorkerRegistry>,
    pub runner: Arc<JobRunner>,
}

impl MasterApi {
    pub fn new(h: ApiHandles, metrics: Arc<RpcMetrics>) -> Self {
        Self {
            fs: FsApi {
                proposer: h.proposer.clone(),
                namespace: h.namespace.clone(),
                sync: h.sync.clone(),
                workers: h.workers.clone(),
            },
            workers: WorkerApi {
                proposer: h.proposer.clone(),
                workers: h.workers.clone(),
            },
            jobs: JobApi {
                proposer: h.proposer.clone(),
                jobs: h.jobs,
                runner: h.runner,
            },
            admin: AdminApi {
                proposer: h.proposer,
                namespace: h.namespace,
                sync: h.sync,
                workers: h.workers,
            },
            metrics,
        }
    }

    /// Runs a handler, recording its latency and outcome.
    async fn observe<T>(
        &self,
        method: &'static str,
        fut: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = fut.await;
        self.metrics.observe(
            method,
            result.as_ref().err().map(|s| s.code()),
            started.elapsed(),
        );
        result.map(Response::new)
    }
}

#[tonic::async_trait]
impl MasterService for MasterApi {
    type ListStatusStream = PageStream;
    type MetaStreamStream = MetaResponses;

    #[tracing::instrument(skip_all)]
    async fn meta_stream(
        &self,
        request: Request<tonic::Streaming<pb::MetaRequest>>,
    ) -> Result<Response<Self::MetaStreamStream>, Status> {
        self.open_meta_stream(request)
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn list_status(
        &self,
        request: Request<pb::ListStatusRequest>,
    ) -> Result<Response<Self::ListStatusStream>, Status> {
        self.observe("ListStatus", self.fs.list_status(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn get_status(
        &self,
        request: Request<pb::PathRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("GetStatus", self.fs.get_status(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(id = request.get_ref().id))]
    async fn get_status_by_id(
        &self,
        request: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe(
            "GetStatusById",
            self.fs.get_status_by_id(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn create_directory(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe(
            "CreateDirectory",
            self.fs.create_directory(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn create_file(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("CreateFile", self.fs.create_file(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn complete_file(
        &self,
        request: Request<pb::CompleteFileRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("CompleteFile", self.fs.complete_file(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.observe("Delete", self.fs.delete(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(src = %request.get_ref().src, dst = %request.get_ref().dst))]
    async fn rename(
        &self,
        request: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("Rename", self.fs.rename(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn set_attribute(
        &self,
        request: Request<pb::SetAttributeRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("SetAttribute", self.fs.set_attribute(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path, ufs = %request.get_ref().ufs_uri))]
    async fn mount(
        &self,
        request: Request<pb::MountRequest>,
    ) -> Result<Response<pb::MountResponse>, Status> {
        self.observe("Mount", self.fs.mount(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn unmount(
        &self,
        request: Request<pb::PathRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.observe("Unmount", self.fs.unmount(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_mount_table(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::MountTable>, Status> {
        self.observe(
            "GetMountTable",
            self.fs.get_mount_table(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn get_file_block_info(
        &self,
        request: Request<pb::PathRequest>,
    ) -> Result<Response<pb::FileBlockInfo>, Status> {
        self.observe(
            "GetFileBlockInfo",
            self.fs.get_file_block_info(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn free(
        &self,
        request: Request<pb::FreeRequest>,
    ) -> Result<Response<pb::FreeResponse>, Status> {
        self.observe("Free", self.fs.free(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(host = %request.get_ref().host))]
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        self.observe(
            "RegisterWorker",
            self.workers.register_worker(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(worker = request.get_ref().worker_id))]
    async fn worker_heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.observe(
            "WorkerHeartbeat",
            self.workers.worker_heartbeat(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(block = request.get_ref().block_id))]
    async fn commit_block(
        &self,
        request: Request<pb::CommitBlockRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.observe(
            "CommitBlock",
            self.workers.commit_block(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(hosts = request.get_ref().hosts.len()))]
    async fn drain_workers(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.observe(
            "DrainWorkers",
            self.workers.drain_workers(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_workers(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::WorkerList>, Status> {
        self.observe(
            "ListWorkers",
            self.workers.list_workers(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_leader(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::LeaderInfo>, Status> {
        self.observe("GetLeader", self.admin.get_leader(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_cluster_info(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        self.observe(
            "GetClusterInfo",
            self.admin.get_cluster_info(request.into_inner()),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(kind = request.get_ref().kind, paths = ?request.get_ref().paths))]
    async fn submit_job(
        &self,
        request: Request<pb::JobSpec>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        self.observe("SubmitJob", self.jobs.submit_job(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(id = request.get_ref().id))]
    async fn get_job(&self, request: Request<pb::JobId>) -> Result<Response<pb::JobInfo>, Status> {
        self.observe("GetJob", self.jobs.get_job(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::JobList>, Status> {
        self.observe("ListJobs", self.jobs.list_jobs(request.into_inner()))
            .await
    }

    #[tracing::instrument(skip_all, fields(id = request.get_ref().id))]
    async fn cancel_job(
        &self,
        request: Request<pb::JobId>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        self.observe("CancelJob", self.jobs.cancel_job(request.into_inner()))
            .await
    }
}
