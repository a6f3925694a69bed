//! A client of the master cluster used by every component: it finds the
//! leader by polling the configured masters, follows NotLeader hints at
//! once, and retries unavailable masters with backoff until a deadline.

use crate::master::service::LEADER_HEADER;
use crate::proto::master::master_service_client::MasterServiceClient;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no master list given")]
    NoMasters,
    #[error("bad master address {0:?}: {1}")]
    BadAddress(String, String),
    #[error("no leader answered within {deadline:?} (last error: {last})")]
    NoLeader { deadline: Duration, last: String },
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Status),
    /// A worker answered with an error that retrying elsewhere cannot fix.
    #[error("{message}")]
    Worker {
        kind: crate::wire::ErrorKind,
        message: String,
    },
    /// Every worker that could serve a block failed.
    #[error("reading {path}: {reason}")]
    Data { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// Leader-following client of the masters.
#[derive(Debug)]
pub struct MasterClient {
    addrs: Vec<String>,
    deadline: Duration,
    /// The address believed to be the leader.
    leader: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
}

fn not_leader_hint(status: &Status) -> Option<Option<String>> {
    if status.code() != Code::FailedPrecondition || !status.message().starts_with("not the leader")
    {
        return None;
    }
    Some(
        status
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    )
}

impl MasterClient {
    /// `addrs` are `host:port` of every master; `deadline` bounds how long
    /// one call keeps retrying while no leader answers.
    pub fn new(addrs: Vec<String>, deadline: Duration) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoMasters);
        }
        for a in &addrs {
            Endpoint::from_shared(format!("http://{a}"))
                .map_err(|e| ClientError::BadAddress(a.clone(), e.to_string()))?;
        }
        Ok(Self {
            addrs,
            deadline,
            leader: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
        })
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = self.channels.lock().expect("channels");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::BadAddress(addr.to_owned(), e.to_string()))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The master currently believed to lead (for status output).
    pub fn leader_hint(&self) -> Option<String> {
        self.leader.lock().expect("leader").clone()
    }

    /// Calls `f` on the leader, following hints and retrying with backoff;
    /// any answer other than "not the leader" or "unavailable" is final.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(MasterServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut next = 0usize;
        let mut last;
        let mut hops = 0;
        loop {
            let target = self
                .leader_hint()
                .unwrap_or_else(|| self.addrs[next % self.addrs.len()].clone());
            let client = MasterServiceClient::new(self.channel(&target)?)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            match f(client).await {
                Ok(resp) => {
                    *self.leader.lock().expect("leader") = Some(target);
                    return Ok(resp.into_inner());
                }
                Err(status) => {
                    if let Some(hint) = not_leader_hint(&status) {
                        last = status.message().to_owned();
                        let mut leader = self.leader.lock().expect("leader");
                        match hint {
                            // Follow a hint at once, but not around a loop of
                            // stale hints during an election.
                            Some(addr) if addr != target && hops < 3 => {
                                *leader = Some(addr);
                                hops += 1;
                                continue;
                            }
                            _ => *leader = None,
                        }
                    } else if matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    ) || status.message().contains("transport")
                    {
                        last = format!("{target}: {}", status.message());
                        *self.leader.lock().expect("leader") = None;
                    } else {
                        return Err(ClientError::Status(status));
                    }
                }
            }
            next += 1;
            hops = 0;
            if started.elapsed() + backoff > self.deadline {
                return Err(ClientError::NoLeader {
                    deadline: self.deadline,
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}

/// A pipelined metadata stream to one master: many operations in flight on
/// one HTTP/2 stream, answered out of order and matched by id. Open it on
/// the leader (see [`MasterClient::open_session`]); a "not the leader"
/// answer comes back as a [`ClientError::Status`] like any other error.
#[derive(Debug)]
pub struct MetaSession {
    requests: tokio::sync::mpsc::Sender<crate::proto::master::MetaRequest>,
    pending: std::sync::Arc<
        Mutex<HashMap<u64, tokio::sync::oneshot::Sender<crate::proto::master::MetaResponse>>>,
    >,
    next_id: std::sync::atomic::AtomicU64,
}

impl MetaSession {
    async fn open(channel: Channel) -> Result<Self, ClientError> {
        use crate::proto::master::MetaResponse;
        let (requests, rx) = tokio::sync::mpsc::channel(1024);
        let mut client = MasterServiceClient::new(channel);
        let mut responses = client
            .meta_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(ClientError::Status)?
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
        op: crate::proto::master::meta_request::Op,
    ) -> Result<crate::proto::master::meta_response::Result, ClientError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().expect("pending").insert(id, tx);
        let unavailable = || ClientError::Status(Status::unavailable("metadata stream closed"));
        if self
            .requests
            .send(crate::proto::master::MetaRequest { id, op: Some(op) })
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
            return Err(ClientError::Status(status));
        }
        resp.result
            .ok_or_else(|| ClientError::Status(Status::internal("answer without a result")))
    }
}

impl MasterClient {
    /// Opens a metadata stream on the current leader.
    pub async fn open_session(&self) -> Result<MetaSession, ClientError> {
        let leader = self
            .call(|mut c| async move { c.get_leader(crate::proto::master::Empty {}).await })
            .await?;
        if !leader.known {
            return Err(ClientError::NoLeader {
                deadline: self.deadline,
                last: "no leader known".into(),
            });
        }
        MetaSession::open(self.channel(&leader.leader_address)?).await
    }
}
