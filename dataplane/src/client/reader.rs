//! Positional reads of one file. Each block is read, in this order, from
//! a co-located worker's data file (short-circuit), from bytes an open
//! stream already brought, from a worker that holds it, or through the
//! worker the placement rule picks, which reads it from the under-storage
//! and caches it. A worker that fails is skipped for a while and the read
//! retried elsewhere; a short or failed transfer is never returned as data.

use super::error::{ClientError, FsResult};
use super::fs::FileSystem;
use super::read_paths::ReadPath;
use super::short_circuit::LocalBlocks;
use super::stream::{BlockStream, read_exact_woken_late};
use super::workers::data_addr;
use crate::proto::master as pb;
use crate::wire::{self, ErrorKind, ReadRequest, Request, Response, UfsSource};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Attempts per block, one right after the other, on other workers.
const READ_ATTEMPTS: usize = 6;
/// After those, a read keeps trying this long (a worker restarting, a
/// rolling upgrade) before it fails.
const READ_RETRY_BUDGET: Duration = Duration::from_secs(15);
const READ_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How far ahead of an open stream a read may land and still use it: the
/// kernel's readahead arrives out of order from several FUSE threads, and
/// the bytes skipped are kept for the read that comes late.
const SKIP_AHEAD: u64 = 8 << 20;

/// How long a worker may take to bring the bytes a read waits for before
/// it counts as failed and the read goes elsewhere. A worker whose node is
/// cut off sends neither bytes nor a reset: only this ends the wait. A
/// cached block comes at memory or disk speed; a miss first waits on the
/// under-storage.
fn stall_limit(path: ReadPath) -> Duration {
    match path {
        ReadPath::Ufs => Duration::from_secs(30),
        _ => Duration::from_secs(5),
    }
}

fn stalled(path: ReadPath) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("nothing for {:?}", stall_limit(path)),
    )
}

impl FileSystem {
    /// Opens a file for positional reads.
    pub async fn open(self: &Arc<Self>, path: &str) -> FsResult<FileReader> {
        let info = self.block_info(path).await?;
        let file = info.file.clone().unwrap_or_default();
        if !file.completed {
            return Err(ClientError::Invalid(format!(
                "{path} is still being written"
            )));
        }
        Ok(FileReader::new(self.clone(), path, info))
    }
}

/// Positional reads of one file.
#[derive(Debug)]
pub struct FileReader {
    fs: Arc<FileSystem>,
    path: String,
    info: Arc<pb::FileBlockInfo>,
    stream: Option<BlockStream>,
    /// This file's blocks held by a worker on this machine.
    local: Arc<LocalBlocks>,
    last_end: u64,
    /// Bytes read past on a stream to reach a later read, at most
    /// `SKIP_AHEAD` in all.
    skipped: std::collections::VecDeque<Skipped>,
    /// Blocks up to this index have been asked for ahead of the reader.
    prefetched: usize,
}

/// Bytes of `block` from `start` that a stream brought ahead of the read
/// that wants them, and the way they came.
#[derive(Debug)]
struct Skipped {
    block: u64,
    start: u64,
    bytes: Vec<u8>,
    path: ReadPath,
}

enum Attempt {
    Done,
    /// Try again (another worker, fresh locations).
    Retry(String),
}

impl FileReader {
    pub(crate) fn new(fs: Arc<FileSystem>, path: &str, info: Arc<pb::FileBlockInfo>) -> Self {
        let local = Arc::new(LocalBlocks::new(fs.clone(), &info));
        Self {
            fs,
            path: path.to_owned(),
            info,
            stream: None,
            local,
            last_end: 0,
            skipped: std::collections::VecDeque::new(),
            prefetched: 0,
        }
    }

    /// This file's local blocks, for readers that answer from them
    /// without holding this reader (FUSE threads).
    pub fn local_blocks(&self) -> Arc<LocalBlocks> {
        self.local.clone()
    }

    pub fn info(&self) -> &pb::FileInfo {
        self.info
            .file
            .as_ref()
            .expect("block info carries the file")
    }

    pub fn len(&self) -> u64 {
        self.info().length
    }

    pub fn blocks(&self) -> &[pb::BlockInfo] {
        &self.info.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset` (less only at the end of the file).
    pub async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let len = self.len();
        if offset >= len || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(len - offset) as usize;
        let sequential = offset == self.last_end;
        let block_size = self.info().block_size.max(1);
        let mut done = 0;
        while done < want {
            let pos = offset + done as u64;
            let index = (pos / block_size) as usize;
            let block = self
                .info
                .blocks
                .get(index)
                .cloned()
                .ok_or_else(|| ClientError::Data {
                    path: self.path.clone(),
                    reason: format!("no block {index} in the block list"),
                })?;
            let in_block = pos - block.offset;
            let n = ((block.length - in_block) as usize).min(want - done);
            self.read_block(
                &block,
                in_block,
                &mut buf[done..done + n],
                sequential || in_block == 0,
            )
            .await?;
            done += n;
        }
        self.last_end = offset + want as u64;
        Ok(want)
    }

    fn source(&self, block: &pb::BlockInfo) -> Option<UfsSource> {
        let f = self.info();
        (f.mount_id != 0 && f.persist == pb::PersistState::Persisted as i32).then(|| UfsSource {
            mount_id: f.mount_id,
            path: f.ufs_relative.clone(),
            block_offset: block.offset,
            block_len: block.length,
        })
    }

    /// The under-storage version this file's bytes must come from, when
    /// the master knows it.
    fn pin(&self) -> Option<String> {
        let f = self.info();
        (!f.ufs_fingerprint.is_empty()).then(|| f.ufs_fingerprint.clone())
    }

    async fn read_block(
        &mut self,
        block: &pb::BlockInfo,
        off: u64,
        out: &mut [u8],
        sequential: bool,
    ) -> FsResult<()> {
        let mut block = block.clone();
        let mut first: Option<String> = None;
        let mut last = String::new();
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            if attempt >= READ_ATTEMPTS {
                if started.elapsed() >= READ_RETRY_BUDGET {
                    break;
                }
                // Every worker failed: wait for one to come back.
                tokio::time::sleep(READ_RETRY_PAUSE).await;
                self.fs.workers().forget_failures();
            }
            if attempt > 0 {
                // Locations may have changed: ask again.
                self.fs.invalidate(&self.path);
                if let Ok(info) = self.fs.block_info(&self.path).await
                    && info.file.as_ref().map(|f| f.id) == self.info.file.as_ref().map(|f| f.id)
                {
                    if let Some(b) = info.blocks.iter().find(|b| b.block_id == block.block_id) {
                        block = b.clone();
                    }
                    self.info = info;
                }
            }
            match self.try_block(&block, off, out, sequential).await? {
                Attempt::Done => return Ok(()),
                Attempt::Retry(why) => {
                    // The first cause says why: later attempts only find
                    // the failed workers paused.
                    if first.is_none() {
                        first = Some(why.clone());
                    }
                    last = why;
                }
            }
            attempt += 1;
        }
        let first = first.unwrap_or_default();
        Err(ClientError::Data {
            path: self.path.clone(),
            reason: if first == last {
                format!(
                    "block {} failed {attempt} times in {:?}: {last}",
                    block.block_id,
                    started.elapsed()
                )
            } else {
                format!(
                    "block {} failed {attempt} times in {:?}: first {first}; last {last}",
                    block.block_id,
                    started.elapsed()
                )
            },
        })
    }

    async fn try_block(
        &mut self,
        block: &pb::BlockInfo,
        off: u64,
        out: &mut [u8],
        sequential: bool,
    ) -> FsResult<Attempt> {
        // 1. Short-circuit, unless this block already streams to us.
        if self.stream.as_ref().map(|s| s.block) != Some(block.block_id) {
            let index = (block.offset / self.info().block_size.max(1)) as usize;
            if self.local.read(index, block, off, out).await {
                return Ok(Attempt::Done);
            }
        }
        // 2. Bytes an open stream already brought, or will bring next.
        if let Some(done) = self.read_open_stream(block, off, out).await {
            return Ok(done);
        }
        // 3. A new stream from a holder, else through a worker from the
        // under-storage.
        self.open_stream(block, off, out, sequential).await
    }

    /// Serves a read from bytes skipped earlier, or from the open stream if
    /// the read starts where it is or a little ahead; `None` when neither
    /// has it.
    async fn read_open_stream(
        &mut self,
        block: &pb::BlockInfo,
        off: u64,
        out: &mut [u8],
    ) -> Option<Attempt> {
        if let Some(kept) = self.skipped.iter().find(|k| {
            k.block == block.block_id
                && k.start <= off
                && off + out.len() as u64 <= k.start + k.bytes.len() as u64
        }) {
            let from = (off - kept.start) as usize;
            out.copy_from_slice(&kept.bytes[from..from + out.len()]);
            self.fs.read_paths().count(kept.path, out.len());
            return Some(Attempt::Done);
        }
        if let Some(s) = self.stream.as_mut()
            && s.block == block.block_id
            && off > s.pos
            && off - s.pos <= SKIP_AHEAD
            && s.remaining >= off - s.pos + out.len() as u64
        {
            let mut gap = vec![0u8; (off - s.pos) as usize];
            let read = tokio::time::timeout(stall_limit(s.path), s.conn.read_exact(&mut gap)).await;
            if !matches!(read, Ok(Ok(_))) {
                let addr = s.addr.clone();
                self.stream = None;
                self.fs.workers().mark_failed(&addr);
                return Some(Attempt::Retry(format!("{addr}: stream cut")));
            }
            s.pos += gap.len() as u64;
            s.remaining -= gap.len() as u64;
            let mut kept: u64 = self.skipped.iter().map(|k| k.bytes.len() as u64).sum();
            while kept + gap.len() as u64 > SKIP_AHEAD
                && let Some(old) = self.skipped.pop_front()
            {
                kept -= old.bytes.len() as u64;
            }
            self.skipped.push_back(Skipped {
                block: block.block_id,
                start: off - gap.len() as u64,
                bytes: gap,
                path: s.path,
            });
        }
        if let Some(s) = self.stream.take()
            && s.block == block.block_id
            && s.pos == off
            && s.remaining >= out.len() as u64
        {
            return Some(self.read_stream(s, out).await);
        }
        None
    }

    /// The worker to stream `block` from: a holder (one on this node
    /// first), else the worker the placement rule names for a miss; and the
    /// way the bytes will come. `Err` is the reason there is none.
    async fn source_worker(
        &self,
        block: &pb::BlockInfo,
        has_source: bool,
    ) -> FsResult<Result<(String, ReadPath), String>> {
        let holder = block
            .locations
            .iter()
            .filter_map(|l| l.worker.as_ref())
            .map(|w| (data_addr(w), self.fs.same_node(w)))
            .filter(|(a, _)| !self.fs.workers().failed_recently(a))
            .min_by_key(|(_, same_node)| !same_node);
        if let Some((addr, same_node)) = holder {
            return Ok(Ok((addr, ReadPath::of_stream(true, same_node))));
        }
        if !has_source {
            return Ok(Err(format!(
                "block {} is cached nowhere and {} is not in the under-storage",
                block.block_id, self.path
            )));
        }
        Ok(
            match self.fs.miss_worker(block.block_id, block.length).await? {
                Some(a) => Ok((a, ReadPath::Ufs)),
                None => Err("no live worker".into()),
            },
        )
    }

    /// Opens a new stream of `block` at `off` and reads `out` from it.
    async fn open_stream(
        &mut self,
        block: &pb::BlockInfo,
        off: u64,
        out: &mut [u8],
        sequential: bool,
    ) -> FsResult<Attempt> {
        let source = self.source(block);
        let (addr, path) = match self.source_worker(block, source.is_some()).await? {
            Ok(found) => found,
            Err(why) => return Ok(Attempt::Retry(why)),
        };
        if sequential {
            self.prefetch_after(block.block_id).await;
        }
        // Sequential readers ask for the rest of the block in one stream;
        // random reads ask for what they need (the worker then caches the
        // whole block in the background).
        let len = if sequential {
            block.length - off
        } else {
            out.len() as u64
        };
        let read = ReadRequest {
            block: block.block_id,
            offset: off,
            len,
            source,
            cache: true,
        };
        let req = match self.pin() {
            Some(fingerprint) => Request::ReadPinned { read, fingerprint },
            None => Request::Read(read),
        };
        let opened = async {
            let mut conn = self.fs.workers().connect(&addr).await?;
            wire::send(&mut conn, &req)
                .await
                .map_err(std::io::Error::other)?;
            let resp: Option<Response> =
                wire::recv(&mut conn).await.map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>((conn, resp))
        };
        let opened = async {
            tokio::time::timeout(stall_limit(path), opened)
                .await
                .unwrap_or_else(|_| Err(stalled(path)))
        };
        let (conn, resp) = match opened.await {
            Ok(x) => x,
            Err(e) => {
                self.fs.workers().mark_failed(&addr);
                return Ok(Attempt::Retry(format!("{addr}: {e}")));
            }
        };
        match resp {
            Some(Response::Data { len: got }) if got >= out.len() as u64 => {
                let s = BlockStream {
                    block: block.block_id,
                    pos: off,
                    remaining: got,
                    addr,
                    conn,
                    path,
                };
                Ok(self.read_stream(s, out).await)
            }
            Some(Response::Data { len: got }) => {
                // The worker's block is shorter than the master says.
                self.fs.workers().mark_failed(&addr);
                Ok(Attempt::Retry(format!(
                    "{addr} offered {got} bytes, {} needed",
                    out.len()
                )))
            }
            Some(Response::Error { kind, message }) => {
                self.fs.workers().give_back(&addr, conn);
                match kind {
                    // Evicted or lost since the master last heard: retry.
                    ErrorKind::NotFound if path != ReadPath::Ufs => Ok(Attempt::Retry(message)),
                    // The file changed in the under-storage since it was
                    // opened: none of the new bytes may follow the old.
                    ErrorKind::Stale => Err(ClientError::Stale {
                        path: self.path.clone(),
                        reason: message,
                    }),
                    ErrorKind::Internal => {
                        self.fs.workers().mark_failed(&addr);
                        Ok(Attempt::Retry(message))
                    }
                    _ => Err(ClientError::Worker { kind, message }),
                }
            }
            other => {
                self.fs.workers().mark_failed(&addr);
                Ok(Attempt::Retry(format!(
                    "{addr}: unexpected answer {other:?}"
                )))
            }
        }
    }

    /// Sequential readahead across blocks: the worker that will serve the
    /// next uncached block starts fetching it from the under-storage now,
    /// so the reader finds it cached (or in flight) when it gets there.
    async fn prefetch_after(&mut self, block_id: u64) {
        let Some(index) = self.info.blocks.iter().position(|b| b.block_id == block_id) else {
            return;
        };
        let next_index = index + 1;
        if next_index <= self.prefetched {
            return;
        }
        self.prefetched = next_index;
        let Some(next) = self.info.blocks.get(next_index).cloned() else {
            return;
        };
        let Some(source) = self.source(&next) else {
            return;
        };
        if !next.locations.is_empty() {
            return;
        }
        let Ok(Some(addr)) = self.fs.miss_worker(next.block_id, next.length).await else {
            return;
        };
        let asked = async {
            let mut conn = self.fs.workers().connect(&addr).await.ok()?;
            wire::send(
                &mut conn,
                &match self.pin() {
                    Some(fingerprint) => Request::PrefetchPinned {
                        block: next.block_id,
                        source,
                        fingerprint,
                    },
                    None => Request::Prefetch {
                        block: next.block_id,
                        source,
                    },
                },
            )
            .await
            .ok()?;
            match wire::recv::<_, Response>(&mut conn).await.ok()?? {
                Response::Queued => Some(conn),
                _ => None,
            }
        };
        // Readahead is a hint: a worker slow to take it is not waited for.
        match tokio::time::timeout(stall_limit(ReadPath::Local), asked).await {
            Ok(Some(conn)) => self.fs.workers().give_back(&addr, conn),
            Ok(None) => {}
            Err(_) => self.fs.workers().mark_failed(&addr),
        }
    }

    async fn read_stream(&mut self, mut s: BlockStream, out: &mut [u8]) -> Attempt {
        let read =
            tokio::time::timeout(stall_limit(s.path), read_exact_woken_late(&mut s.conn, out))
                .await
                .unwrap_or_else(|_| Err(stalled(s.path)));
        match read {
            Ok(_) => {
                self.fs.read_paths().count(s.path, out.len());
                s.pos += out.len() as u64;
                s.remaining -= out.len() as u64;
                if s.remaining == 0 {
                    self.fs.workers().give_back(&s.addr, s.conn);
                } else {
                    self.stream = Some(s);
                }
                Attempt::Done
            }
            Err(e) => {
                // Cut mid-block (the worker died, or its under-storage read
                // broke): none of these bytes count.
                self.fs.workers().mark_failed(&s.addr);
                Attempt::Retry(format!("{}: {e}", s.addr))
            }
        }
    }

    /// Reads the whole file into `sink`, `chunk` bytes at a time.
    pub async fn copy_to<W: std::io::Write>(
        &mut self,
        sink: &mut W,
        chunk: usize,
        mut progress: impl FnMut(u64),
    ) -> FsResult<u64> {
        let mut buf = vec![0u8; chunk.max(4096)];
        let mut offset = 0;
        loop {
            let n = self.read_at(offset, &mut buf).await?;
            if n == 0 {
                return Ok(offset);
            }
            sink.write_all(&buf[..n])
                .map_err(|e| ClientError::Invalid(format!("writing: {e}")))?;
            offset += n as u64;
            progress(offset);
        }
    }
}
