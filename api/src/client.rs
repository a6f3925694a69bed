//! The client of the master cluster that every component uses: it finds
//! the leader by polling the configured masters, follows NotLeader hints at
//! once, and retries unavailable masters with backoff until a deadline.

use crate::error::{ApiError, ApiResult};
use crate::proto::master::master_service_client::MasterServiceClient;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

/// Metadata key naming the leader in a NotLeader answer.
pub const LEADER_HEADER: &str = "x-weir-leader";

/// Leader-following client of the masters.
#[derive(Debug)]
pub struct MasterClient {
    addrs: Vec<String>,
    pub(crate) deadline: Duration,
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
    pub fn new(addrs: Vec<String>, deadline: Duration) -> ApiResult<Self> {
        if addrs.is_empty() {
            return Err(ApiError::NoMasters);
        }
        for a in &addrs {
            Endpoint::from_shared(format!("http://{a}")).map_err(|source| {
                ApiError::BadAddress {
                    address: a.clone(),
                    source,
                }
            })?;
        }
        Ok(Self {
            addrs,
            deadline,
            leader: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn channel(&self, addr: &str) -> ApiResult<Channel> {
        let mut channels = self.channels.lock().expect("channels");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| ApiError::BadAddress {
                address: addr.to_owned(),
                source,
            })?
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
    pub async fn call<T, F, Fut>(&self, f: F) -> ApiResult<T>
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
                        return Err(ApiError::Status(status));
                    }
                }
            }
            next += 1;
            hops = 0;
            if started.elapsed() + backoff > self.deadline {
                return Err(ApiError::NoLeader {
                    deadline: self.deadline,
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}
