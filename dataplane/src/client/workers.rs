//! The client's view of the workers: which are live (from the masters'
//! cheap `ListWorkers`, refreshed every few seconds), which failed lately
//! and are passed over for a while, the pool of idle data connections to
//! each, and which worker reads a block that no worker holds (the one
//! placement rule of [`crate::block`]).

use super::error::FsResult;
use crate::block::{self, BlockId};
use crate::proto::master as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use weir_api::MasterClient;

/// How long a worker that failed is passed over.
const FAILED_WORKER_PAUSE: Duration = Duration::from_secs(10);
/// How long the live list is trusted.
const LIVE_LIST_TTL: Duration = Duration::from_secs(3);
/// Idle data connections kept per worker.
const POOL_PER_WORKER: usize = 8;
/// Inside a cluster a connection is made in a millisecond or two; a worker
/// whose pod is gone (its address unanswered, not refused) must not hold
/// a read longer than this before another worker is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A worker that takes new blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveWorker {
    pub id: block::WorkerId,
    pub host: String,
    /// The node it registered.
    pub node: String,
    /// `host:data_port`
    pub data_addr: String,
    /// Bytes it can take before it evicts.
    pub room: u64,
}

/// `host:data_port` of a worker address.
pub fn data_addr(w: &pb::WorkerAddress) -> String {
    format!("{}:{}", w.host, w.data_port)
}

impl LiveWorker {
    fn from_pb(w: pb::WorkerInfo) -> Option<Self> {
        let addr = w.address?;
        Some(Self {
            id: addr.worker_id,
            data_addr: data_addr(&addr),
            host: addr.host,
            node: w.node,
            room: w
                .tiers
                .iter()
                .map(|t| t.holdable_bytes.saturating_sub(t.used_bytes))
                .sum(),
        })
    }
}

/// The worker a miss of `block` (`len` bytes) is read through, among the
/// live workers that have not failed lately.
pub fn pick_miss(
    block: BlockId,
    len: u64,
    live: &[LiveWorker],
    failed: impl Fn(&str) -> bool,
) -> Option<&LiveWorker> {
    let usable: Vec<&LiveWorker> = live.iter().filter(|w| !failed(&w.data_addr)).collect();
    block::place(block, len, &usable, |w| (w.id, w.room)).copied()
}

#[derive(Debug, Default)]
pub(crate) struct Workers {
    live: Mutex<Option<(Instant, Arc<Vec<LiveWorker>>)>>,
    failed: Mutex<HashMap<String, Instant>>,
    pool: Mutex<HashMap<String, Vec<TcpStream>>>,
}

impl Workers {
    /// The workers that take new blocks. A draining worker still serves
    /// the blocks it holds (found through block locations) but is left out.
    pub async fn live(&self, master: &MasterClient) -> FsResult<Arc<Vec<LiveWorker>>> {
        if let Some((at, w)) = self.live.lock().expect("live workers").as_ref()
            && at.elapsed() < LIVE_LIST_TTL
        {
            return Ok(w.clone());
        }
        let list = master
            .call(|mut c| async move { c.list_workers(pb::Empty {}).await })
            .await?;
        let workers: Arc<Vec<LiveWorker>> = Arc::new(
            list.workers
                .into_iter()
                .filter(|w| !w.lost && !w.draining)
                .filter_map(LiveWorker::from_pb)
                .collect(),
        );
        *self.live.lock().expect("live workers") = Some((Instant::now(), workers.clone()));
        Ok(workers)
    }

    /// The worker that reads `block`, which no worker holds, from the
    /// under-storage.
    pub async fn miss_worker(
        &self,
        master: &MasterClient,
        block: BlockId,
        len: u64,
    ) -> FsResult<Option<String>> {
        let live = self.live(master).await?;
        Ok(pick_miss(block, len, &live, |a| self.failed_recently(a)).map(|w| w.data_addr.clone()))
    }

    pub fn failed_recently(&self, addr: &str) -> bool {
        let mut failed = self.failed.lock().expect("failed workers");
        match failed.get(addr) {
            Some(at) if at.elapsed() < FAILED_WORKER_PAUSE => true,
            Some(_) => {
                failed.remove(addr);
                false
            }
            None => false,
        }
    }

    /// Every worker is worth a try again (and the live list is fetched
    /// anew): used when all of them failed and a read is still waiting.
    pub fn forget_failures(&self) {
        self.failed.lock().expect("failed workers").clear();
        *self.live.lock().expect("live workers") = None;
    }

    pub fn mark_failed(&self, addr: &str) {
        tracing::warn!(worker = addr, "worker failed; trying elsewhere");
        self.failed
            .lock()
            .expect("failed workers")
            .insert(addr.to_owned(), Instant::now());
        self.pool.lock().expect("pool").remove(addr);
        *self.live.lock().expect("live workers") = None;
    }

    /// An idle pooled connection to `addr`, or a new one.
    pub async fn connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        if let Some(s) = self
            .pool
            .lock()
            .expect("pool")
            .get_mut(addr)
            .and_then(Vec::pop)
        {
            return Ok(s);
        }
        let target: std::net::SocketAddr = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // A full block in flight per connection.
        let _ = socket.set_recv_buffer_size(8 << 20);
        let s = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// Returns a connection whose last exchange ended cleanly to the pool.
    pub fn give_back(&self, addr: &str, s: TcpStream) {
        let mut pool = self.pool.lock().expect("pool");
        let idle = pool.entry(addr.to_owned()).or_default();
        if idle.len() < POOL_PER_WORKER {
            idle.push(s);
        }
    }
}
