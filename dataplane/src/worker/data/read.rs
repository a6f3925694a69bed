//! Reads on the data path: a cached block sent from its tier file by
//! sendfile; a miss read from the under-storage, streamed to the client
//! and cached as it goes, one fetch per block however many readers miss
//! it; and whole-block caching in the background after a partial read.

use super::{CHUNK, reply_err};
use crate::ufs::{Fingerprint, UfsPath};
use crate::wire::{self, ReadRequest, Response, UfsSource};
use crate::worker::store::{BlockWriter, Lease, StoreError};
use crate::worker::{SourceLabels, Worker, WorkerError, WorkerResult};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc, watch};

/// Where a block's bytes are in the under-storage, and the version they
/// must be of (none: whatever is there, as clients of earlier releases ask).
#[derive(Debug, Clone)]
pub(crate) struct BlockSource {
    pub ufs: UfsSource,
    pub pin: Option<Fingerprint>,
}

/// Copies `len` bytes of `file` from `offset` into the socket in the
/// kernel (sendfile): the block's pages go from the tier's page cache to
/// the socket without passing through this process.
#[allow(unsafe_code)]
async fn send_file(
    file: &std::fs::File,
    mut offset: u64,
    len: u64,
    out: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock: &tokio::net::TcpStream = out.as_ref();
    let mut left = len;
    while left > 0 {
        sock.writable().await?;
        let sent = sock.try_io(tokio::io::Interest::WRITABLE, || {
            let mut off = offset as libc::off_t;
            let want = left.min(CHUNK as u64) as usize;
            // SAFETY: both descriptors stay open for the whole call and the
            // kernel writes only `off`, which lives on this stack frame.
            let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as u64)
            }
        });
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "block file shorter than recorded",
                ));
            }
            Ok(n) => {
                offset += n;
                left -= n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `len` bytes of a cached block from `offset`.
async fn serve_cached(
    worker: &Worker,
    lease: Lease,
    offset: u64,
    len: u64,
    out: &mut OwnedWriteHalf,
) -> WorkerResult<()> {
    let len = len.min(lease.len.saturating_sub(offset));
    let file = match std::fs::File::open(&lease.path) {
        Ok(f) => f,
        Err(e) => {
            return reply_err(
                out,
                &WorkerError::Invalid(format!("opening cached block: {e}")),
            )
            .await;
        }
    };
    wire::send(out, &Response::Data { len }).await?;
    send_file(&file, lease.offset + offset, len, out)
        .await
        .map_err(|e| WorkerError::Invalid(format!("sending {}: {e}", lease.path.display())))?;
    worker.hits.fetch_add(1, Ordering::Relaxed);
    let l = SourceLabels { source: "cache" };
    worker.metrics.block_reads.get_or_create(&l).inc();
    worker.metrics.bytes_served.get_or_create(&l).inc_by(len);
    Ok(())
}

pub(super) async fn read(
    worker: &Arc<Worker>,
    r: ReadRequest,
    pin: Option<Fingerprint>,
    out: &mut OwnedWriteHalf,
) -> WorkerResult<()> {
    if let Some(lease) = worker.store.lease(r.block) {
        return serve_cached(worker, lease, r.offset, r.len, out).await;
    }
    let Some(ufs) = r.source else {
        return reply_err(out, &WorkerError::Store(StoreError::NotFound(r.block))).await;
    };
    let src = BlockSource { ufs, pin };
    let len = r.len.min(src.ufs.block_len.saturating_sub(r.offset));
    worker.misses.fetch_add(1, Ordering::Relaxed);
    if r.cache && r.offset == 0 && len == src.ufs.block_len {
        return fetch_block(worker, r.block, &src, Some(out)).await;
    }
    // A fetch of this block under way will have it soon: wait and serve
    // from the cache rather than read the range from the under-storage too.
    let fetching = worker
        .inflight
        .lock()
        .expect("inflight")
        .get(&r.block)
        .cloned();
    if let Some(mut rx) = fetching {
        let _ = rx.wait_for(|v| v.is_some()).await;
        if let Some(lease) = worker.store.lease(r.block) {
            return serve_cached(worker, lease, r.offset, len, out).await;
        }
    }
    if r.cache {
        worker.queue_cache(r.block, src.clone());
    }
    stream_from_ufs(worker, &src, r.offset, len, out).await
}

/// A range straight from the under-storage, not cached.
async fn stream_from_ufs(
    worker: &Worker,
    src: &BlockSource,
    offset: u64,
    len: u64,
    out: &mut OwnedWriteHalf,
) -> WorkerResult<()> {
    let opened = async {
        let ufs = worker.mounts.get(src.ufs.mount_id).await?;
        let path = UfsPath::parse(&src.ufs.path)?;
        Ok::<_, WorkerError>(
            ufs.read_stream(&path, src.ufs.block_offset + offset, len, src.pin.as_ref())
                .await?,
        )
    };
    let mut stream = match opened.await {
        Ok(s) => s,
        Err(e) => return reply_err(out, &e).await,
    };
    wire::send(out, &Response::Data { len }).await?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        worker.metrics.ufs_bytes_read.inc_by(chunk.len() as u64);
        out.write_all(&chunk).await.map_err(wire::WireError::Io)?;
    }
    let l = SourceLabels { source: "ufs" };
    worker.metrics.block_reads.get_or_create(&l).inc();
    worker.metrics.bytes_served.get_or_create(&l).inc_by(len);
    Ok(())
}

/// Removes an in-flight fetch and wakes its waiters however the fetch ends.
struct Inflight<'a> {
    worker: &'a Worker,
    block: u64,
    tx: watch::Sender<Option<bool>>,
    cached: bool,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.worker
            .inflight
            .lock()
            .expect("inflight")
            .remove(&self.block);
        let _ = self.tx.send(Some(self.cached));
    }
}

/// Fetches a whole block from the under-storage into the cache, streaming
/// it to `out` as it arrives. Concurrent misses of one block wait for the
/// first fetch and are then served from the cache.
pub(super) async fn fetch_block(
    worker: &Arc<Worker>,
    block: u64,
    src: &BlockSource,
    out: Option<&mut OwnedWriteHalf>,
) -> WorkerResult<()> {
    let waiting = {
        let mut inflight = worker.inflight.lock().expect("inflight");
        match inflight.get(&block) {
            Some(rx) => Err(rx.clone()),
            None => {
                let (tx, rx) = watch::channel(None);
                inflight.insert(block, rx);
                Ok(tx)
            }
        }
    };
    let tx = match waiting {
        Ok(tx) => tx,
        Err(mut rx) => {
            let _ = rx.wait_for(|v| v.is_some()).await;
            let Some(out) = out else { return Ok(()) };
            return match worker.store.lease(block) {
                Some(lease) => serve_cached(worker, lease, 0, src.ufs.block_len, out).await,
                // The first fetch could not cache it: read it directly.
                None => stream_from_ufs(worker, src, 0, src.ufs.block_len, out).await,
            };
        }
    };
    let mut guard = Inflight {
        worker,
        block,
        tx,
        cached: false,
    };
    let mut out = out;
    let opened = async {
        let ufs = worker.mounts.get(src.ufs.mount_id).await?;
        let path = UfsPath::parse(&src.ufs.path)?;
        Ok::<_, WorkerError>(
            ufs.read_stream(
                &path,
                src.ufs.block_offset,
                src.ufs.block_len,
                src.pin.as_ref(),
            )
            .await?,
        )
    };
    let mut stream = match opened.await {
        Ok(s) => s,
        Err(e) => {
            return match out {
                Some(o) => reply_err(o, &e).await,
                None => Err(e),
            };
        }
    };
    let mut writer: Option<BlockWriter> =
        match worker
            .store
            .begin(block, src.ufs.block_offset, src.ufs.block_len, false)
        {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(block, error = %e, "serving without caching");
                None
            }
        };
    if let Some(o) = out.as_mut()
        && wire::send(
            *o,
            &Response::Data {
                len: src.ufs.block_len,
            },
        )
        .await
        .is_err()
    {
        out = None;
    }
    while let Some(chunk) = stream.next().await {
        // A broken fetch drops the writer: no partial block is ever kept.
        let chunk = chunk?;
        worker.metrics.ufs_bytes_read.inc_by(chunk.len() as u64);
        if let Some(w) = writer.as_mut()
            && let Err(e) = w.write(&chunk)
        {
            tracing::warn!(block, error = %e, "caching failed; still serving");
            writer = None;
        }
        if let Some(o) = out.as_mut()
            && o.write_all(&chunk).await.is_err()
        {
            // The reader left; finish caching for the next one.
            out = None;
        }
    }
    let l = SourceLabels { source: "ufs" };
    worker.metrics.block_reads.get_or_create(&l).inc();
    worker
        .metrics
        .bytes_served
        .get_or_create(&l)
        .inc_by(src.ufs.block_len);
    if let Some(w) = writer {
        let tier = w.commit()?;
        worker.commit_block(block, src.ufs.block_len, tier).await;
        guard.cached = true;
    }
    Ok(())
}

impl Worker {
    /// Queues a whole-block cache after a partial read; a full queue drops
    /// the request (the next partial read asks again).
    pub(super) fn queue_cache(&self, block: u64, src: BlockSource) {
        if self.store.contains(block) {
            return;
        }
        let mut queued = self.queued.lock().expect("queued");
        if !queued.insert(block) {
            return;
        }
        if self.cache_queue.try_send((block, src)).is_err() {
            queued.remove(&block);
            self.metrics.async_cache_dropped.inc();
        }
    }
}

pub(in crate::worker) async fn async_cacher(
    worker: Arc<Worker>,
    mut queue: mpsc::Receiver<(u64, BlockSource)>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(worker.config.async_cache_threads.max(1)));
    loop {
        let (block, src) = tokio::select! {
            next = queue.recv() => match next {
                Some(x) => x,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let worker = worker.clone();
        tokio::spawn(async move {
            if !worker.store.contains(block)
                && let Err(e) = fetch_block(&worker, block, &src, None).await
            {
                tracing::warn!(block, error = %e, "caching a whole block failed");
            }
            worker.queued.lock().expect("queued").remove(&block);
            drop(permit);
        });
    }
}
