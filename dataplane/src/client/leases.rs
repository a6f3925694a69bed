//! Read leases on a co-located worker's blocks. A leased block is never
//! evicted, so its bytes can be read straight from the worker's data file.
//! Every lease held at one worker travels on one connection (a lease per
//! open costs a round trip, not a connection), and the worker lets go of
//! all of them when that connection closes, whatever happens to this
//! process.

use super::workers::Workers;
use crate::wire::{self, Request, Response};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A worker on this machine that takes longer than this to answer is
/// treated as gone: reads fall back to the data path.
const LEASE_ROUND_TRIP: Duration = Duration::from_secs(2);

/// Where a leased block's bytes are: `len` bytes of the file at `path`
/// from `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeasedBlock {
    pub path: String,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug)]
enum LeaseOp {
    Take {
        block: u64,
        /// `None` when the worker lacks the block.
        reply: oneshot::Sender<Option<LeasedBlock>>,
    },
    TakeFile {
        blocks: Vec<(u64, u64, u64)>,
        length: u64,
        reply: oneshot::Sender<Option<String>>,
    },
    Release {
        blocks: Vec<u64>,
    },
}

/// Releases its blocks' leases when dropped. Should the connection break
/// first, the worker has already let go of every lease on it; the leased
/// file stays readable through the open descriptor either way.
#[derive(Debug)]
pub(crate) struct LeaseGuard {
    blocks: Vec<u64>,
    channel: mpsc::UnboundedSender<LeaseOp>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let _ = self.channel.send(LeaseOp::Release {
            blocks: std::mem::take(&mut self.blocks),
        });
    }
}

/// The lease connections of this client, one per local worker.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    channels: Mutex<HashMap<String, mpsc::UnboundedSender<LeaseOp>>>,
}

impl Leases {
    /// Leases `block` at the worker at `addr`.
    pub async fn take(
        &self,
        workers: &Workers,
        addr: &str,
        block: u64,
    ) -> Option<(LeasedBlock, LeaseGuard)> {
        for _ in 0..2 {
            let channel = self.channel(workers, addr).await?;
            let (reply, answer) = oneshot::channel();
            let answer = match channel.send(LeaseOp::Take { block, reply }) {
                Ok(()) => answer.await.ok(),
                Err(_) => None,
            };
            match answer {
                Some(Some(leased)) => {
                    let guard = LeaseGuard {
                        blocks: vec![block],
                        channel,
                    };
                    return Some((leased, guard));
                }
                // The worker does not have it.
                Some(None) => return None,
                // The connection broke: forget it, try once on a new one.
                None => {
                    self.channels.lock().expect("leases").remove(addr);
                }
            }
        }
        None
    }

    /// Leases every block of a file (`(block, offset, len)` in file order)
    /// at the worker at `addr`, granted only when one file there holds
    /// exactly the file's bytes: that file's path.
    pub async fn take_file(
        &self,
        workers: &Workers,
        addr: &str,
        blocks: Vec<(u64, u64, u64)>,
        length: u64,
    ) -> Option<(String, LeaseGuard)> {
        let channel = self.channel(workers, addr).await?;
        let (reply, answer) = oneshot::channel();
        channel
            .send(LeaseOp::TakeFile {
                blocks: blocks.clone(),
                length,
                reply,
            })
            .ok()?;
        let path = answer.await.ok()??;
        let guard = LeaseGuard {
            blocks: blocks.into_iter().map(|b| b.0).collect(),
            channel,
        };
        Some((path, guard))
    }

    /// The lease connection to a local worker, opened on first use.
    async fn channel(
        &self,
        workers: &Workers,
        addr: &str,
    ) -> Option<mpsc::UnboundedSender<LeaseOp>> {
        if let Some(tx) = self.channels.lock().expect("leases").get(addr)
            && !tx.is_closed()
        {
            return Some(tx.clone());
        }
        let conn = workers.connect(addr).await.ok()?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(carry_leases(conn, rx));
        self.channels
            .lock()
            .expect("leases")
            .insert(addr.to_owned(), tx.clone());
        Some(tx)
    }
}

/// Serves one lease connection until it breaks or every sender is gone.
async fn carry_leases(mut conn: TcpStream, mut ops: mpsc::UnboundedReceiver<LeaseOp>) {
    while let Some(op) = ops.recv().await {
        let ok = match op {
            LeaseOp::Take { block, reply } => {
                match round_trip(&mut conn, &Request::Lease { block }).await {
                    Some(Response::Leased { path, offset, len }) => {
                        let _ = reply.send(Some(LeasedBlock { path, offset, len }));
                        true
                    }
                    // Not there (evicted): an answer, the connection is fine.
                    Some(Response::Error { .. }) => {
                        let _ = reply.send(None);
                        true
                    }
                    _ => false,
                }
            }
            LeaseOp::TakeFile {
                blocks,
                length,
                reply,
            } => match round_trip(&mut conn, &Request::LeaseFile { blocks, length }).await {
                Some(Response::LeasedFile { path }) => {
                    let _ = reply.send(Some(path));
                    true
                }
                Some(Response::Error { .. }) => {
                    let _ = reply.send(None);
                    true
                }
                _ => false,
            },
            LeaseOp::Release { blocks } => {
                let mut released = true;
                for block in blocks {
                    released &= matches!(
                        round_trip(&mut conn, &Request::Release { block }).await,
                        Some(Response::Released)
                    );
                }
                released
            }
        };
        if !ok {
            // Dropping the receiver fails every queued Take's reply.
            return;
        }
    }
}

/// One request and its answer; `None` when the connection broke or the
/// worker took longer than [`LEASE_ROUND_TRIP`].
async fn round_trip(conn: &mut TcpStream, req: &Request) -> Option<Response> {
    let exchange = async {
        wire::send(conn, req).await.ok()?;
        wire::recv::<_, Response>(conn).await.ok().flatten()
    };
    tokio::time::timeout(LEASE_ROUND_TRIP, exchange)
        .await
        .ok()
        .flatten()
}
