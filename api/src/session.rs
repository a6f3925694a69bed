//! A pipelined metadata stream to the leader: many operations in flight on
//! one HTTP/2 stream, answered out of order and matched by id.

use crate::client::{LEADER_HEADER, MasterClient};
use crate::error::{ApiError, ApiResult};
use crate::proto::master as pb;
use pb::master_service_client::MasterServiceClient;
use std::collections::HashMap;
use std::sync::Mutex;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A pipelined metadata stream to one master: many operations in flight on
/// one HTTP/2 stream, answered out of order and matched by id. Open it on
/// the leader (see [`MasterClient::open_session`]); a "not the leader"
/// answer comes back as a [`ApiError::Status`] like any other error.
#[derive(Debug)]
pub struct MetaSession {
    requests: tokio::sync::mpsc::Sender<pb::MetaRequest>,
    pending: std::sync::Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<pb::MetaResponse>>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl MetaSession {
    async fn open(channel: Channel) -> ApiResult<Self> {
        use pb::MetaResponse;
        let (requests, rx) = tokio::sync::mpsc::channel(1024);
        let mut client = MasterServiceClient::new(channel);
        let mut responses = client
            .meta_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(ApiError::Status)?
            .into_inner();
        let pending: std::sync::Arc<
            Mutex<HashMap<u64, tokio::sync::oneshot::Sender<MetaResponse>>>,
        > = std::sync::Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = responses.message().await {
                if let Some(tx) = waiting.lock().expect("pending").remove(&resp.id) {
                    let _ = tx.send(resp);
                }
            }
            // The stream ended: every waiter gets "unavailable".
            waiting.lock().expect("pending").clear();
        });
        Ok(Self {
            requests,
            pending,
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Sends one operation and waits for its answer.
    pub async fn call(
        &self,
        op: pb::meta_request::Op,
    ) -> Result<pb::meta_response::Result, ApiError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().expect("pending").insert(id, tx);
        let unavailable = || ApiError::Status(Status::unavailable("metadata stream closed"));
        if self
            .requests
            .send(pb::MetaRequest { id, op: Some(op) })
            .await
            .is_err()
        {
            self.pending.lock().expect("pending").remove(&id);
            return Err(unavailable());
        }
        let resp = rx.await.map_err(|_| unavailable())?;
        if resp.code != 0 {
            let mut status = Status::new(Code::from_i32(resp.code), resp.message);
            if let Ok(v) = resp.leader.parse() {
                status.metadata_mut().insert(LEADER_HEADER, v);
            }
            return Err(ApiError::Status(status));
        }
        resp.result
            .ok_or_else(|| ApiError::Status(Status::internal("answer without a result")))
    }
}

impl MasterClient {
    /// Opens a metadata stream on the current leader.
    pub async fn open_session(&self) -> ApiResult<MetaSession> {
        let leader = self
            .call(|mut c| async move { c.get_leader(pb::Empty {}).await })
            .await?;
        if !leader.known {
            return Err(ApiError::NoLeader {
                deadline: self.deadline,
                last: "no leader known".into(),
            });
        }
        MetaSession::open(self.channel(&leader.leader_address)?).await
    }
}
