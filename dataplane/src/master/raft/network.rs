//! Raft between masters over gRPC. openraft's messages travel as opaque
//! postcard payloads: both ends are Weir masters of the same build, and
//! mapping every openraft type to protobuf would add nothing but drift.

use super::{NodeId, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use crate::proto::master::RaftPayload;
use crate::proto::master::raft_service_client::RaftServiceClient;
use crate::proto::master::raft_service_server::RaftService;
use openraft::BasicNode;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// The largest Raft message accepted: snapshots of big namespaces are large.
pub const MAX_RAFT_MESSAGE: usize = 1 << 30;

/// An error as text, for openraft's error wrappers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Text(String);

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    postcard::to_allocvec(v).map_err(|e| Status::internal(format!("encoding raft message: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(bytes)
        .map_err(|e| Status::invalid_argument(format!("decoding raft message: {e}")))
}

/// Creates one client per peer; connections are made lazily and re-made by
/// tonic after failures.
#[derive(Debug, Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let endpoint = Endpoint::from_shared(format!("http://{}", node.addr))
            .map(|e| e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true));
        let client = endpoint.map(|e| {
            RaftServiceClient::new(e.connect_lazy())
                .max_decoding_message_size(MAX_RAFT_MESSAGE)
                .max_encoding_message_size(MAX_RAFT_MESSAGE)
        });
        PeerClient {
            target,
            client: client.map_err(|e| e.to_string()),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
}

impl PeerClient {
    /// Sends one payload and decodes the peer's `Result<T, String>`.
    async fn call<T, Fut>(
        &mut self,
        timeout: Duration,
        send: impl FnOnce(RaftServiceClient<Channel>, Request<RaftPayload>) -> Fut,
        payload: Vec<u8>,
    ) -> Result<T, RPCError<TypeConfig>>
    where
        T: DeserializeOwned,
        Fut: Future<Output = Result<Response<RaftPayload>, Status>>,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Text(e.clone())))),
        };
        let mut request = Request::new(RaftPayload { data: payload });
        request.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, send(client, request)).await {
            Err(_) => {
                let text = Text(format!(
                    "raft rpc to node {} timed out after {timeout:?}",
                    self.target
                ));
                return Err(RPCError::Network(NetworkError::new(&text)));
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&Text(
                    status.message().to_owned(),
                ))));
            }
            Ok(Err(status)) => {
                return Err(RPCError::Network(NetworkError::new(&Text(
                    status.to_string(),
                ))));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<T, String> = decode(&reply.data)
            .map_err(|s| RPCError::Network(NetworkError::new(&Text(s.to_string()))))?;
        result.map_err(|e| RPCError::Network(NetworkError::new(&Text(e))))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload =
            encode(&rpc).map_err(|s| RPCError::Network(NetworkError::new(&Text(s.to_string()))))?;
        self.call(
            option.soft_ttl(),
            |mut c, r| async move { c.append_entries(r).await },
            payload,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload =
            encode(&rpc).map_err(|s| RPCError::Network(NetworkError::new(&Text(s.to_string()))))?;
        self.call(
            option.soft_ttl(),
            |mut c, r| async move { c.vote(r).await },
            payload,
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let payload = encode(&(vote, snapshot.meta, snapshot.snapshot.into_inner()))
            .map_err(|s| StreamingError::Network(NetworkError::new(&Text(s.to_string()))))?;
        // Snapshots are large: give them the hard deadline, not the soft one.
        let send = self.call(
            option.hard_ttl(),
            |mut c, r| async move { c.install_snapshot(r).await },
            payload,
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result.map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                other => StreamingError::Network(NetworkError::new(&other)),
            }),
        }
    }
}

/// The server side: hands each message to the local Raft.
pub struct RaftServer {
    pub raft: openraft::Raft<TypeConfig, super::state_machine::StateMachine>,
}

fn reply<T: Serialize, E: std::fmt::Display>(
    result: Result<T, E>,
) -> Result<Response<RaftPayload>, Status> {
    let result: Result<T, String> = result.map_err(|e| e.to_string());
    Ok(Response::new(RaftPayload {
        data: encode(&result)?,
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&request.into_inner().data)?;
        reply(self.raft.append_entries(rpc).await)
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(&request.into_inner().data)?;
        reply(self.raft.vote(rpc).await)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let (vote, meta, data): (Vote, SnapshotMeta, Vec<u8>) = decode(&request.into_inner().data)?;
        let snapshot = Snapshot {
            meta,
            snapshot: std::io::Cursor::new(data),
        };
        reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }
}
