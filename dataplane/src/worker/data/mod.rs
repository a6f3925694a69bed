//! The worker's data server (see [`crate::wire`]): one request at a time
//! per connection, each answered by the part that owns it:
//! - [`read`]: cached blocks from the tier files, misses from the
//!   under-storage (streamed to the client while the block is cached, one
//!   fetch per block however many readers miss it), whole-block caching
//!   after partial reads
//! - [`write`]: files written with the four write types
//! - [`tasks`]: a job's load and persist tasks
//!
//! Short-circuit leases live on the connection and end with it.

mod read;
mod tasks;
mod write;

pub(in crate::worker) use read::{BlockSource, async_cacher};

use super::store::{Lease, StoreError};
use super::{Worker, WorkerError, WorkerResult};
use crate::ufs::Fingerprint;
use crate::wire::{self, ErrorKind, Request, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncWrite, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

/// Bytes moved per read or write call on the data path.
pub(super) const CHUNK: usize = 4 << 20;

pub(in crate::worker) async fn serve(
    worker: Arc<Worker>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let _ = socket2::SockRef::from(&sock).set_send_buffer_size(8 << 20);
                    tokio::spawn(connection(worker.clone(), sock));
                }
                Err(e) => tracing::warn!(error = %e, "accepting a data connection"),
            },
            _ = stop.changed() => return,
        }
    }
}

pub(super) fn kind_of(e: &WorkerError) -> ErrorKind {
    match e {
        WorkerError::Store(StoreError::NoSpace { .. }) => ErrorKind::NoSpace,
        WorkerError::Ufs(crate::ufs::UfsError::Changed { .. }) => ErrorKind::Stale,
        WorkerError::Ufs(crate::ufs::UfsError::Denied { .. }) => ErrorKind::Denied,
        WorkerError::Store(StoreError::NotFound(_)) => ErrorKind::NotFound,
        WorkerError::Ufs(crate::ufs::UfsError::NotFound(_)) => ErrorKind::NotFound,
        WorkerError::Ufs(crate::ufs::UfsError::InvalidPath(..)) | WorkerError::Invalid(_) => {
            ErrorKind::Invalid
        }
        WorkerError::Ufs(_) | WorkerError::NoMount(_) => ErrorKind::Ufs,
        _ => ErrorKind::Internal,
    }
}

pub(super) async fn reply_err<W: AsyncWrite + Unpin>(
    out: &mut W,
    e: &WorkerError,
) -> WorkerResult<()> {
    wire::send(
        out,
        &Response::Error {
            kind: kind_of(e),
            message: e.to_string(),
        },
    )
    .await?;
    Ok(())
}

async fn connection(worker: Arc<Worker>, sock: tokio::net::TcpStream) {
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let (rd, mut out) = sock.into_split();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    // Short-circuit leases end with the connection at the latest.
    let mut leases = ConnectionLeases::default();
    loop {
        let req: Request = match wire::recv(&mut rd).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "data connection ended");
                return;
            }
        };
        let outcome = match req {
            Request::Read(r) => {
                let span = tracing::debug_span!(
                    "read_block",
                    block = r.block,
                    offset = r.offset,
                    len = r.len
                );
                read::read(&worker, r, None, &mut out)
                    .instrument(span)
                    .await
            }
            Request::ReadPinned {
                read: r,
                fingerprint,
            } => {
                let span = tracing::debug_span!(
                    "read_block",
                    block = r.block,
                    offset = r.offset,
                    len = r.len,
                    version = %fingerprint
                );
                let pin = Fingerprint::parse(&fingerprint);
                read::read(&worker, r, pin, &mut out).instrument(span).await
            }
            Request::Lease { block } => leases.take(&worker, block, &mut out).await,
            Request::LeaseFile { blocks, length } => {
                leases.take_file(&worker, &blocks, length, &mut out).await
            }
            Request::Release { block } => {
                leases.release(block);
                wire::send(&mut out, &Response::Released)
                    .await
                    .map_err(Into::into)
            }
            Request::Prefetch { block, source } => {
                let src = BlockSource {
                    ufs: source,
                    pin: None,
                };
                worker.queue_cache(block, src);
                wire::send(&mut out, &Response::Queued)
                    .await
                    .map_err(Into::into)
            }
            Request::PrefetchPinned {
                block,
                source,
                fingerprint,
            } => {
                let src = BlockSource {
                    ufs: source,
                    pin: Fingerprint::parse(&fingerprint),
                };
                worker.queue_cache(block, src);
                wire::send(&mut out, &Response::Queued)
                    .await
                    .map_err(Into::into)
            }
            Request::Load(r) => load(&worker, r, None, &mut out).await,
            Request::LoadPinned {
                load: r,
                fingerprint,
            } => load(&worker, r, Fingerprint::parse(&fingerprint), &mut out).await,
            Request::Persist(r) => {
                let span = tracing::info_span!("persist_file", file = %r.path);
                match tasks::persist_for_job(&worker, r).instrument(span).await {
                    Ok(()) => wire::send(&mut out, &Response::Persisted)
                        .await
                        .map_err(Into::into),
                    Err(e) => reply_err(&mut out, &e).await,
                }
            }
            Request::Write(w) => {
                let span = tracing::info_span!("write_file", file = w.file_id, mode = ?w.mode);
                write::write(&worker, w, &mut rd, &mut out)
                    .instrument(span)
                    .await
            }
        };
        if let Err(e) = outcome {
            // The reply stream is no longer in step with the requests; the
            // client sees the connection close, so say why here.
            tracing::warn!(%peer, error = %e, "closing data connection after a failed request");
            return;
        }
    }
}

/// A job's block task, answered on `out`.
async fn load<W: tokio::io::AsyncWrite + Unpin>(
    worker: &Arc<Worker>,
    r: crate::wire::LoadRequest,
    pin: Option<Fingerprint>,
    out: &mut W,
) -> WorkerResult<()> {
    let span = tracing::info_span!("load_block", block = r.block, from = ?r.from);
    match tasks::load(worker, r, pin).instrument(span).await {
        Ok(resp) => wire::send(out, &resp).await.map_err(Into::into),
        Err(e) => reply_err(out, &e).await,
    }
}

/// The short-circuit leases a client holds on one connection.
#[derive(Default)]
struct ConnectionLeases(HashMap<u64, Vec<Lease>>);

impl ConnectionLeases {
    /// Leases one block and answers where its bytes are.
    async fn take<W: AsyncWrite + Unpin>(
        &mut self,
        worker: &Worker,
        block: u64,
        out: &mut W,
    ) -> WorkerResult<()> {
        let leased = worker.store.lease(block).and_then(|lease| {
            let path = worker.config.host_view(&lease.path)?;
            Some((lease, path))
        });
        let Some((lease, path)) = leased else {
            return reply_err(out, &WorkerError::Store(StoreError::NotFound(block))).await;
        };
        let resp = Response::Leased {
            path: path.to_string_lossy().into_owned(),
            offset: lease.offset,
            len: lease.len,
        };
        self.0.entry(block).or_default().push(lease);
        worker.hits.fetch_add(1, Ordering::Relaxed);
        wire::send(out, &resp).await.map_err(Into::into)
    }

    /// Leases a whole file's blocks when one data file holds exactly the
    /// file, and answers that file's path.
    async fn take_file<W: AsyncWrite + Unpin>(
        &mut self,
        worker: &Worker,
        blocks: &[(u64, u64, u64)],
        length: u64,
        out: &mut W,
    ) -> WorkerResult<()> {
        let leased = worker.store.lease_file(blocks, length).and_then(|file| {
            let path = worker.config.host_view(&file.path)?;
            Some((file, path))
        });
        let Some((file, path)) = leased else {
            let first = blocks.first().map_or(0, |b| b.0);
            return reply_err(out, &WorkerError::Store(StoreError::NotFound(first))).await;
        };
        let resp = Response::LeasedFile {
            path: path.to_string_lossy().into_owned(),
        };
        for lease in file.leases {
            self.0.entry(lease.block()).or_default().push(lease);
        }
        worker
            .hits
            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
        wire::send(out, &resp).await.map_err(Into::into)
    }

    fn release(&mut self, block: u64) {
        if let Some(held) = self.0.get_mut(&block) {
            held.pop();
            if held.is_empty() {
                self.0.remove(&block);
            }
        }
    }
}
