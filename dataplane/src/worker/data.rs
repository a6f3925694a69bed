//! The worker's data server (see [`crate::wire`]): cached blocks from the
//! tier files, misses from the under-storage (streamed to the client while
//! the block is cached, one fetch per block however many readers miss it),
//! whole-block caching after partial reads, short-circuit leases, and file
//! writes with the four write types.

use super::persist::PersistTask;
use super::store::{BlockWriter, Lease};
use super::{SourceLabels, Worker, WorkerError, WorkerResult};
use crate::block::block_id;
use crate::ufs::{UfsPath, UfsWriter};
use crate::wire::{
    self, ErrorKind, LoadRequest, Peer, PersistRequest, ReadRequest, Request, Response, UfsSource,
    WriteRequest,
};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument;
use weir_api::WriteType;

/// Bytes moved per read or write call on the data path.
const CHUNK: usize = 4 << 20;

pub(super) async fn serve(
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

fn kind_of(e: &WorkerError) -> ErrorKind {
    match e {
        WorkerError::Store(super::store::StoreError::NoSpace { .. }) => ErrorKind::NoSpace,
        WorkerError::Store(super::store::StoreError::NotFound(_)) => ErrorKind::NotFound,
        WorkerError::Ufs(crate::ufs::UfsError::NotFound(_)) => ErrorKind::NotFound,
        WorkerError::Ufs(crate::ufs::UfsError::InvalidPath(..)) | WorkerError::Invalid(_) => {
            ErrorKind::Invalid
        }
        WorkerError::Ufs(_) | WorkerError::NoMount(_) => ErrorKind::Ufs,
        _ => ErrorKind::Internal,
    }
}

async fn reply_err<W: AsyncWrite + Unpin>(out: &mut W, e: &WorkerError) -> WorkerResult<()> {
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
    let mut leases: HashMap<u64, Vec<Lease>> = HashMap::new();
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
                read(&worker, r, &mut out).instrument(span).await
            }
            Request::Lease { block } => match worker.store.lease(block) {
                Some(lease) => {
                    let resp = Response::Leased {
                        path: lease.path.to_string_lossy().into_owned(),
                        offset: lease.offset,
                        len: lease.len,
                    };
                    leases.entry(block).or_default().push(lease);
                    worker.hits.fetch_add(1, Ordering::Relaxed);
                    wire::send(&mut out, &resp).await.map_err(Into::into)
                }
                None => {
                    reply_err(
                        &mut out,
                        &WorkerError::Store(super::store::StoreError::NotFound(block)),
                    )
                    .await
                }
            },
            Request::LeaseFile { blocks, length } => {
                match worker.store.lease_file(&blocks, length) {
                    Some(file) => {
                        let resp = Response::LeasedFile {
                            path: file.path.to_string_lossy().into_owned(),
                        };
                        for lease in file.leases {
                            leases.entry(lease.block()).or_default().push(lease);
                        }
                        worker
                            .hits
                            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
                        wire::send(&mut out, &resp).await.map_err(Into::into)
                    }
                    None => {
                        let first = blocks.first().map_or(0, |b| b.0);
                        reply_err(
                            &mut out,
                            &WorkerError::Store(super::store::StoreError::NotFound(first)),
                        )
                        .await
                    }
                }
            }
            Request::Release { block } => {
                if let Some(held) = leases.get_mut(&block) {
                    held.pop();
                    if held.is_empty() {
                        leases.remove(&block);
                    }
                }
                wire::send(&mut out, &Response::Released)
                    .await
                    .map_err(Into::into)
            }
            Request::Prefetch { block, source } => {
                worker.queue_cache(block, source);
                wire::send(&mut out, &Response::Queued)
                    .await
                    .map_err(Into::into)
            }
            Request::Load(r) => {
                let span = tracing::info_span!("load_block", block = r.block, from = ?r.from);
                match load(&worker, r).instrument(span).await {
                    Ok(resp) => wire::send(&mut out, &resp).await.map_err(Into::into),
                    Err(e) => reply_err(&mut out, &e).await,
                }
            }
            Request::Persist(r) => {
                let span = tracing::info_span!("persist_file", file = %r.path);
                match persist_for_job(&worker, r).instrument(span).await {
                    Ok(()) => wire::send(&mut out, &Response::Persisted)
                        .await
                        .map_err(Into::into),
                    Err(e) => reply_err(&mut out, &e).await,
                }
            }
            Request::Write(w) => {
                let span = tracing::info_span!("write_file", file = w.file_id, mode = ?w.mode);
                write(&worker, w, &mut rd, &mut out).instrument(span).await
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

async fn read(worker: &Arc<Worker>, r: ReadRequest, out: &mut OwnedWriteHalf) -> WorkerResult<()> {
    if let Some(lease) = worker.store.lease(r.block) {
        return serve_cached(worker, lease, r.offset, r.len, out).await;
    }
    let Some(src) = r.source else {
        return reply_err(
            out,
            &WorkerError::Store(super::store::StoreError::NotFound(r.block)),
        )
        .await;
    };
    let len = r.len.min(src.block_len.saturating_sub(r.offset));
    worker.misses.fetch_add(1, Ordering::Relaxed);
    if r.cache && r.offset == 0 && len == src.block_len {
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
    src: &UfsSource,
    offset: u64,
    len: u64,
    out: &mut OwnedWriteHalf,
) -> WorkerResult<()> {
    let opened = async {
        let ufs = worker.mounts.get(src.mount_id).await?;
        let path = UfsPath::parse(&src.path)?;
        Ok::<_, WorkerError>(
            ufs.read_stream(&path, src.block_offset + offset, len)
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
async fn fetch_block(
    worker: &Arc<Worker>,
    block: u64,
    src: &UfsSource,
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
                Some(lease) => serve_cached(worker, lease, 0, src.block_len, out).await,
                // The first fetch could not cache it: read it directly.
                None => stream_from_ufs(worker, src, 0, src.block_len, out).await,
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
        let ufs = worker.mounts.get(src.mount_id).await?;
        let path = UfsPath::parse(&src.path)?;
        Ok::<_, WorkerError>(
            ufs.read_stream(&path, src.block_offset, src.block_len)
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
            .begin(block, src.block_offset, src.block_len, false)
        {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(block, error = %e, "serving without caching");
                None
            }
        };
    if let Some(o) = out.as_mut()
        && wire::send(*o, &Response::Data { len: src.block_len })
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
        .inc_by(src.block_len);
    if let Some(w) = writer {
        let tier = w.commit()?;
        worker.commit_block(block, src.block_len, tier).await;
        guard.cached = true;
    }
    Ok(())
}

/// A job's block task. The work is not tied to the connection: a master
/// that fails over mid-task finds the block cached when it asks again.
async fn load(worker: &Arc<Worker>, r: LoadRequest) -> WorkerResult<Response> {
    if let Some(tier) = worker.store.tier_of(r.block) {
        return Ok(Response::Loaded {
            tier,
            fetched: false,
        });
    }
    let mut peer_error = None;
    if let Some(peer) = &r.from
        && let Err(e) = copy_from_peer(worker, r.block, r.offset, r.len, peer).await
    {
        tracing::warn!(block = r.block, %peer, error = %e, "copying from a peer failed");
        peer_error = Some(e);
    }
    if !worker.store.contains(r.block) {
        match (&r.source, peer_error) {
            (Some(src), _) => fetch_block(worker, r.block, src, None).await?,
            (None, Some(e)) => return Err(e),
            (None, None) => {
                return Err(WorkerError::Invalid(format!(
                    "block {}: no peer and no under-storage source to load it from",
                    r.block
                )));
            }
        }
    }
    match worker.store.tier_of(r.block) {
        Some(tier) => Ok(Response::Loaded {
            tier,
            fetched: true,
        }),
        None => Err(WorkerError::Store(super::store::StoreError::NoSpace {
            needed: r.len,
        })),
    }
}

/// Asks `peer` for a whole cached block; returns the connection positioned
/// at the block's first byte.
pub(super) async fn open_peer_block(
    peer: &Peer,
    block: u64,
    len: u64,
) -> WorkerResult<impl AsyncRead + Unpin> {
    let mut sock = tokio::net::TcpStream::connect((peer.host.as_str(), peer.port))
        .await
        .map_err(|e| WorkerError::Invalid(format!("connecting to peer {peer}: {e}")))?;
    let _ = sock.set_nodelay(true);
    let req = Request::Read(ReadRequest {
        block,
        offset: 0,
        len,
        source: None,
        cache: false,
    });
    wire::send(&mut sock, &req).await?;
    let mut rd = BufReader::with_capacity(1 << 20, sock);
    match wire::recv(&mut rd).await? {
        Some(Response::Data { len: n }) if n == len => Ok(rd.take(len)),
        Some(Response::Error { message, .. }) => Err(WorkerError::Invalid(format!(
            "peer {peer}: block {block}: {message}"
        ))),
        other => Err(WorkerError::Invalid(format!(
            "peer {peer}: block {block}: unexpected reply {other:?}"
        ))),
    }
}

/// Copies a block a peer holds into this worker's store.
async fn copy_from_peer(
    worker: &Arc<Worker>,
    block: u64,
    offset: u64,
    len: u64,
    peer: &Peer,
) -> WorkerResult<()> {
    let mut rd = open_peer_block(peer, block, len).await?;
    // A broken copy drops the writer: no partial block is ever kept.
    let mut writer = worker.store.begin(block, offset, len, false)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0;
    while copied < len {
        let n = rd.read(&mut buf).await.map_err(wire::WireError::Io)?;
        if n == 0 {
            return Err(WorkerError::Invalid(format!(
                "peer {peer}: block {block} ended after {copied} of {len} bytes"
            )));
        }
        writer.write(&buf[..n])?;
        copied += n as u64;
    }
    worker.metrics.peer_bytes_read.inc_by(len);
    let tier = writer.commit()?;
    worker.commit_block(block, len, tier).await;
    Ok(())
}

/// A job's persist task, run by the persister in turn with ASYNC_THROUGH
/// files (joining the queued entry when the file is already there).
async fn persist_for_job(worker: &Arc<Worker>, r: PersistRequest) -> WorkerResult<()> {
    for (block, _, _) in &r.blocks {
        // Local blocks stay until the file is in the under-storage.
        let _ = worker.store.mark_unpersisted(*block);
    }
    let task = PersistTask {
        seq: 0,
        file_id: r.file_id,
        path: r.path,
        mount_id: r.mount_id,
        ufs_path: r.ufs_path,
        blocks: r.blocks.iter().map(|(b, _, _)| *b).collect(),
        length: r.length,
        peers: r.blocks.into_iter().map(|(_, len, p)| (len, p)).collect(),
    };
    let seq = worker.persister.enqueue_or_join(task)?;
    worker.persister.wait_done(seq).await;
    Ok(())
}

impl Worker {
    /// Queues a whole-block cache after a partial read; a full queue drops
    /// the request (the next partial read asks again).
    fn queue_cache(&self, block: u64, src: UfsSource) {
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

pub(super) async fn async_cacher(
    worker: Arc<Worker>,
    mut queue: mpsc::Receiver<(u64, UfsSource)>,
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

/// A file arriving on a data connection: cut into blocks for the cache
/// and/or streamed to the under-storage, as the write type says.
struct FileSink<'a> {
    worker: &'a Arc<Worker>,
    req: &'a WriteRequest,
    ufs: Option<Box<dyn UfsWriter>>,
    current: Option<BlockWriter>,
    index: u64,
    length: u64,
    committed: Vec<(u64, String, u64)>,
}

impl FileSink<'_> {
    async fn push(&mut self, data: &[u8]) -> WorkerResult<()> {
        if let Some(u) = self.ufs.as_mut() {
            u.write(Bytes::copy_from_slice(data)).await?;
            self.worker
                .metrics
                .ufs_bytes_written
                .inc_by(data.len() as u64);
        }
        self.length += data.len() as u64;
        if !self.req.mode.caches() {
            return Ok(());
        }
        let size = self.req.block_size;
        let mut rest = data;
        while !rest.is_empty() {
            if self.current.is_none() {
                self.current = Some(self.worker.store.begin_growable(
                    block_id(self.req.file_id, self.index),
                    self.index * size,
                    rest.len() as u64,
                    size,
                    self.req.mode == WriteType::AsyncThrough,
                )?);
            }
            let w = self.current.as_mut().expect("just set");
            let n = ((size - w.written()) as usize).min(rest.len());
            w.write(&rest[..n])?;
            rest = &rest[n..];
            if w.written() == size {
                self.seal()?;
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> WorkerResult<()> {
        if let Some(w) = self.current.take() {
            let len = w.written();
            let tier = w.commit()?;
            self.committed
                .push((block_id(self.req.file_id, self.index), tier, len));
            self.index += 1;
        }
        Ok(())
    }

    async fn finish(&mut self) -> WorkerResult<()> {
        self.seal()?;
        if let Some(u) = self.ufs.as_mut() {
            u.close().await?;
        }
        Ok(())
    }

    async fn abort(&mut self) {
        self.current = None;
        if let Some(u) = self.ufs.as_mut() {
            let _ = u.abort().await;
        }
        for (block, _, _) in self.committed.drain(..) {
            self.worker.store.remove(block);
        }
    }
}

async fn write(
    worker: &Arc<Worker>,
    req: WriteRequest,
    rd: &mut BufReader<OwnedReadHalf>,
    out: &mut OwnedWriteHalf,
) -> WorkerResult<()> {
    let opened = async {
        if req.block_size == 0 {
            return Err(WorkerError::Invalid("block size 0".into()));
        }
        if !req.mode.writes_through() && req.mode != WriteType::AsyncThrough {
            return Ok(None);
        }
        let (mount, path) = req.ufs.as_ref().ok_or_else(|| {
            WorkerError::Invalid(format!(
                "{:?} needs an under-storage: {} is not under a mount",
                req.mode, req.path
            ))
        })?;
        let ufs = worker.mounts.get(*mount).await?;
        let path = UfsPath::parse(path)?;
        if req.mode.writes_through() {
            Ok(Some(ufs.writer(&path).await?))
        } else {
            Ok(None)
        }
    };
    let (ufs, mut failed) = match opened.await {
        Ok(u) => (u, None),
        Err(e) => (None, Some(e)),
    };
    let mut sink = FileSink {
        worker,
        req: &req,
        ufs,
        current: None,
        index: 0,
        length: 0,
        committed: Vec::new(),
    };
    let mut buf = Vec::with_capacity(CHUNK);
    // Frames are read to the end even after a failure, so the connection
    // stays in step and the client gets the reason.
    loop {
        match wire::recv_frame(rd, &mut buf).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // The client went away mid-file: nothing of it stays.
                sink.abort().await;
                return Err(e.into());
            }
        }
        if failed.is_none()
            && let Err(e) = sink.push(&buf).await
        {
            failed = Some(e);
        }
    }
    if failed.is_none()
        && let Err(e) = sink.finish().await
    {
        failed = Some(e);
    }
    if let Some(e) = failed {
        sink.abort().await;
        tracing::warn!(file = req.file_id, error = %e, "write failed");
        return reply_err(out, &e).await;
    }
    for (block, tier, len) in &sink.committed {
        worker.commit_block(*block, *len, tier.clone()).await;
    }
    if req.mode == WriteType::AsyncThrough
        && let Some((mount_id, ufs_path)) = &req.ufs
    {
        let task = PersistTask {
            seq: 0,
            file_id: req.file_id,
            path: req.path.clone(),
            mount_id: *mount_id,
            ufs_path: ufs_path.clone(),
            blocks: sink.committed.iter().map(|(b, _, _)| *b).collect(),
            length: sink.length,
            peers: Vec::new(),
        };
        if let Err(e) = worker.persister.enqueue(task) {
            let blocks: Vec<u64> = sink.committed.iter().map(|(b, _, _)| *b).collect();
            for b in blocks {
                let _ = worker.store.set_persisted(b);
                worker.store.remove(b);
            }
            return reply_err(out, &e).await;
        }
    }
    let blocks = sink
        .committed
        .iter()
        .map(|(b, t, _)| (*b, t.clone()))
        .collect();
    wire::send(out, &Response::Written { blocks }).await?;
    Ok(())
}
