//! The admin calls of the master's API: who leads, and the cluster report
//! (masters, workers, mounts with their cached and under-storage bytes).
//! The report walks every cached block: it is for people and the
//! operator's status, never for the read path.

use super::convert::worker_to_pb;
use crate::master::error::MasterError;
use crate::master::namespace::Namespace;
use crate::master::node::Proposer;
use crate::master::stats::cached_bytes_per_mount;
use crate::master::sync::MetadataSync;
use crate::master::workers::WorkerRegistry;
use crate::proto::master as pb;
use std::sync::Arc;
use tonic::Status;

#[derive(Debug, Clone)]
pub struct AdminApi {
    pub(super) proposer: Proposer,
    pub(super) namespace: Namespace,
    pub(super) sync: Arc<MetadataSync>,
    pub(super) workers: Arc<WorkerRegistry>,
}

impl AdminApi {
    pub async fn get_leader(&self, _request: pb::Empty) -> Result<pb::LeaderInfo, Status> {
        let term = self.proposer.metrics().current_term;
        Ok(match self.proposer.leader() {
            Some((id, addr)) => pb::LeaderInfo {
                leader_id: id,
                leader_address: addr,
                term,
                known: true,
            },
            None => pb::LeaderInfo {
                leader_id: 0,
                leader_address: String::new(),
                term,
                known: false,
            },
        })
    }

    pub async fn get_cluster_info(&self, _request: pb::Empty) -> Result<pb::ClusterInfo, Status> {
        // Workers register with the leader alone: a follower's registry is
        // empty or stale, so the report is the leader's (clients follow).
        self.proposer.require_leader()?;
        let metrics = self.proposer.metrics();
        let leader = metrics.current_leader;
        let applied = metrics.last_applied.map(|l| l.index()).unwrap_or(0);
        let masters = self
            .proposer
            .peers()
            .iter()
            .map(|(id, addr)| pb::MasterInfo {
                id: *id,
                address: addr.clone(),
                role: if Some(*id) == leader {
                    "leader".into()
                } else {
                    "follower".into()
                },
                last_applied: if *id == self.proposer.id() {
                    applied
                } else {
                    0
                },
            })
            .collect();
        let workers: Vec<pb::WorkerInfo> = self
            .workers
            .workers()
            .into_iter()
            .map(worker_to_pb)
            .collect();
        let (capacity, used) = workers
            .iter()
            .flat_map(|w| &w.tiers)
            .fold((0, 0), |(c, u), t| (c + t.capacity_bytes, u + t.used_bytes));
        let counts = self.sync.counts();
        let cached = cached_bytes_per_mount(&self.namespace, &self.workers.cached_blocks())
            .map_err(MasterError::from)?;
        let mounts = self
            .namespace
            .mounts()
            .map_err(MasterError::from)?
            .into_iter()
            .map(|m| {
                let c = counts.get(m.path()).cloned().unwrap_or_default();
                let cached_bytes = cached.get(m.path()).copied().unwrap_or(0);
                pb::MountStats {
                    path: m.spec.path,
                    ufs_uri: m.spec.ufs_uri,
                    cached_bytes,
                    ufs_total_bytes: c.bytes,
                    file_count: c.files,
                    count_complete: c.complete,
                }
            })
            .collect();
        Ok(pb::ClusterInfo {
            masters,
            workers,
            mounts,
            capacity_bytes: capacity,
            used_bytes: used,
            inode_count: self.namespace.inode_count().map_err(MasterError::from)?,
            hit_ratio: self.workers.hit_ratio(),
            lost_workers: self
                .workers
                .lost_workers()
                .into_iter()
                .map(|l| pb::LostWorker {
                    worker_id: l.id,
                    host: l.host,
                    node: l.node,
                    capacity_bytes: l.capacity,
                    lost_ms_ago: l.at.elapsed().as_millis() as u64,
                })
                .collect(),
        })
    }
}
