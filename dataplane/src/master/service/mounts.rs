//! The mount table calls of the master's API.

use super::fs::{FsApi, parse};
use crate::master::command::{Command, Reply};
use crate::master::error::MasterError;
use crate::proto::master as pb;
use tonic::Status;
use weir_api::MountSpec;

impl FsApi {
    pub async fn mount(&self, request: pb::MountRequest) -> Result<pb::MountResponse, Status> {
        let r = request;
        let path = parse(&r.path)?;
        let spec = MountSpec {
            path: path.to_string(),
            ..MountSpec::from_request(r)
        };
        match self.proposer.write(Command::Mount(spec)).await? {
            Reply::Mounted { mount_id } => Ok(pb::MountResponse { mount_id }),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn unmount(&self, request: pb::PathRequest) -> Result<pb::Empty, Status> {
        let path = parse(&request.path)?;
        self.proposer
            .write(Command::Unmount {
                path: path.to_string(),
            })
            .await?;
        Ok(pb::Empty {})
    }

    pub async fn get_mount_table(&self, _request: pb::Empty) -> Result<pb::MountTable, Status> {
        self.proposer.linearize().await?;
        let mounts = self.namespace.mounts().map_err(MasterError::from)?;
        Ok(pb::MountTable {
            mounts: mounts
                .into_iter()
                .map(|m| m.spec.to_point(m.mount_id))
                .collect(),
        })
    }
}
