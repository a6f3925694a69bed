//! The worker calls of the master's API: registration, heartbeats, block
//! commits, draining, and the cheap list of live workers that clients
//! place blocks with. All of it is the leader's soft state.

use super::convert::{tier_from_pb, worker_to_pb};
use crate::master::node::Proposer;
use crate::master::workers::{WorkerAddr, WorkerRegistry};
use crate::proto::master as pb;
use std::sync::Arc;
use tonic::Status;

#[derive(Debug, Clone)]
pub struct WorkerApi {
    pub(super) proposer: Proposer,
    pub(super) workers: Arc<WorkerRegistry>,
}

impl WorkerApi {
    pub async fn register_worker(
        &self,
        request: pb::RegisterWorkerRequest,
    ) -> Result<pb::RegisterWorkerResponse, Status> {
        self.proposer.linearize().await?;
        let r = request;
        if r.block_ids.len() != r.block_tiers.len() {
            return Err(Status::invalid_argument(
                "block_ids and block_tiers differ in length",
            ));
        }
        let worker_id = self.workers.register(
            WorkerAddr {
                host: r.host,
                rpc_port: r.rpc_port,
                data_port: r.data_port,
            },
            r.node,
            r.tiers.into_iter().map(tier_from_pb).collect(),
            r.block_ids.into_iter().zip(r.block_tiers).collect(),
            (r.previous_id != 0).then_some(r.previous_id),
        );
        Ok(pb::RegisterWorkerResponse { worker_id })
    }

    pub async fn worker_heartbeat(
        &self,
        request: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, Status> {
        self.proposer.require_leader()?;
        let r = request;
        if r.added_blocks.len() != r.added_tiers.len() {
            return Err(Status::invalid_argument(
                "added_blocks and added_tiers differ in length",
            ));
        }
        if r.leaving {
            self.workers.leave(r.worker_id);
            return Ok(pb::HeartbeatResponse::default());
        }
        let answer = self.workers.heartbeat(
            r.worker_id,
            r.tiers.into_iter().map(tier_from_pb).collect(),
            r.added_blocks.into_iter().zip(r.added_tiers).collect(),
            r.removed_blocks,
            r.cache_hits,
            r.cache_misses,
        );
        Ok(pb::HeartbeatResponse {
            reregister: answer.reregister,
            free_blocks: answer.free_blocks,
            pinned_update: answer.pinned_blocks.is_some(),
            pinned_blocks: answer.pinned_blocks.unwrap_or_default(),
        })
    }

    pub async fn commit_block(&self, request: pb::CommitBlockRequest) -> Result<pb::Empty, Status> {
        self.proposer.require_leader()?;
        let r = request;
        if !self
            .workers
            .commit_block(r.worker_id, r.block_id, r.length, r.tier)
        {
            return Err(Status::failed_precondition(format!(
                "worker {} is not registered",
                r.worker_id
            )));
        }
        Ok(pb::Empty {})
    }

    pub async fn drain_workers(
        &self,
        request: pb::DrainRequest,
    ) -> Result<pb::DrainResponse, Status> {
        self.proposer.require_leader()?;
        let hosts = request.hosts.into_iter().collect();
        let workers = self
            .workers
            .set_draining(hosts)
            .into_iter()
            .map(|d| pb::DrainState {
                worker_id: d.id,
                host: d.host,
                block_count: d.block_count,
                sole_blocks: d.sole_blocks,
            })
            .collect();
        Ok(pb::DrainResponse { workers })
    }

    pub async fn list_workers(&self, _request: pb::Empty) -> Result<pb::WorkerList, Status> {
        self.proposer.require_leader()?;
        Ok(pb::WorkerList {
            workers: self
                .workers
                .workers()
                .into_iter()
                .map(worker_to_pb)
                .collect(),
        })
    }
}
