//! The CSI services over the node service: Identity, Node, and the
//! Controller's capabilities (volumes are provisioned statically).

use super::{DRIVER_NAME, NodeService, TOPOLOGY_KEY};
use crate::proto as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The gRPC face of the services.
#[derive(Debug, Clone)]
pub struct Plugin(pub Arc<NodeService>);

#[tonic::async_trait]
impl pb::identity_server::Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _r: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _r: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        // No controller service: datasets' PVs are made by the operator.
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn probe(
        &self,
        _r: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        Ok(Response::new(pb::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl pb::controller_server::Controller for Plugin {
    async fn controller_get_capabilities(
        &self,
        _r: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        // One UNKNOWN entry: "no capability", as a list a CO can tell from
        // an absent answer (an empty list does not survive the wire).
        use pb::controller_service_capability::{Rpc, Type, rpc};
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities: vec![pb::ControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::Unknown as i32,
                })),
            }],
        }))
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for Plugin {
    #[tracing::instrument(skip_all, fields(volume = %r.get_ref().volume_id))]
    async fn node_stage_volume(
        &self,
        r: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        self.0.stage(r.into_inner()).await?;
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %r.get_ref().volume_id))]
    async fn node_unstage_volume(
        &self,
        r: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        self.0.unstage(r.into_inner()).await?;
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %r.get_ref().volume_id))]
    async fn node_publish_volume(
        &self,
        r: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        self.0.publish(r.into_inner()).await?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %r.get_ref().volume_id))]
    async fn node_unpublish_volume(
        &self,
        r: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        self.0.unpublish(r.into_inner()).await?;
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        r: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        Ok(Response::new(self.0.stats(r.into_inner())?))
    }

    async fn node_get_capabilities(
        &self,
        _r: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        use pb::node_service_capability::{Rpc, Type, rpc};
        let cap = |t: rpc::Type| pb::NodeServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: vec![
                cap(rpc::Type::StageUnstageVolume),
                cap(rpc::Type::GetVolumeStats),
                cap(rpc::Type::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _r: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.0.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(pb::Topology {
                segments: [(TOPOLOGY_KEY.to_owned(), self.0.config.node_id.clone())].into(),
            }),
        }))
    }
}
