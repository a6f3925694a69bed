//! The file system client: metadata from the masters (cached for a short
//! TTL), block bytes from workers. A block is read, in this order, from a
//! co-located worker's block file (short-circuit, under a read lease), from
//! a worker that holds it, or through a worker picked by locality then by
//! rendezvous hashing on the block id, which reads it from the
//! under-storage and caches it. A worker that fails is skipped for a while
//! and the read retried elsewhere; a short or failed transfer is never
//! returned as data.

use super::master::{ClientError, MasterClient};
use crate::proto::master as pb;
use crate::wire::{
    self, ErrorKind, ReadRequest, Request, Response, UfsSource, WriteMode, WriteRequest,
};
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub type FsResult<T> = Result<T, ClientError>;

/// How long a worker that failed is passed over.
const FAILED_WORKER_PAUSE: Duration = Duration::from_secs(10);
/// Attempts per block, one right after the other, on other workers.
const READ_ATTEMPTS: usize = 6;
/// After those, a read keeps trying this long (a worker restarting, a
/// rolling upgrade) before it fails.
const READ_RETRY_BUDGET: Duration = Duration::from_secs(15);
const READ_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Bytes buffered by a writer before they go out as one frame.
const WRITE_FRAME: usize = 1 << 20;
/// Idle data connections kept per worker.
const POOL_PER_WORKER: usize = 8;
/// How far ahead of an open stream a read may land and still use it: the
/// kernel's readahead arrives out of order from several FUSE threads, and
/// the bytes skipped are kept for the read that comes late.
const SKIP_AHEAD: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub masters: Vec<String>,
    pub timeout: Duration,
    /// The host workers on this machine register with; `None` treats
    /// loopback workers as local.
    pub local_host: Option<String>,
    /// Read blocks of local workers from their files directly.
    pub short_circuit: bool,
    /// How long file metadata and block locations are trusted.
    pub metadata_ttl: Duration,
    pub metadata_entries: usize,
}

impl ClientConfig {
    pub fn new(masters: Vec<String>) -> Self {
        Self {
            masters,
            timeout: Duration::from_secs(15),
            local_host: None,
            short_circuit: true,
            metadata_ttl: Duration::from_secs(1),
            metadata_entries: 10_000,
        }
    }
}

fn addr_of(w: &pb::WorkerAddress) -> String {
    format!("{}:{}", w.host, w.data_port)
}

/// splitmix64: spreads (worker, block) pairs evenly for rendezvous hashing.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

type Cached<T> = Mutex<LruCache<String, (Instant, T)>>;

/// A Weir file system; share it (`Arc`) between readers and writers.
#[derive(Debug)]
pub struct FileSystem {
    cfg: ClientConfig,
    master: MasterClient,
    blocks: Cached<Arc<pb::FileBlockInfo>>,
    workers: Mutex<Option<(Instant, Arc<Vec<pb::WorkerAddress>>)>>,
    mounts: Mutex<Option<(Instant, Arc<pb::MountTable>)>>,
    pool: Mutex<HashMap<String, Vec<TcpStream>>>,
    failed: Mutex<HashMap<String, Instant>>,
    /// Local worker address -> the connection that carries every lease
    /// held there.
    leases: Mutex<HashMap<String, mpsc::UnboundedSender<LeaseOp>>>,
}

impl FileSystem {
    pub fn new(cfg: ClientConfig) -> FsResult<Arc<Self>> {
        let master = MasterClient::new(cfg.masters.clone(), cfg.timeout)?;
        let entries = NonZeroUsize::new(cfg.metadata_entries.max(1)).expect("positive");
        Ok(Arc::new(Self {
            blocks: Mutex::new(LruCache::new(entries)),
            master,
            cfg,
            workers: Mutex::new(None),
            mounts: Mutex::new(None),
            pool: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
        }))
    }

    pub fn master(&self) -> &MasterClient {
        &self.master
    }

    fn is_local(&self, host: &str) -> bool {
        match &self.cfg.local_host {
            Some(h) => h == host,
            None => host == "localhost" || host.starts_with("127."),
        }
    }

    /// Forgets cached metadata of `path` (after this client changed it).
    pub fn invalidate(&self, path: &str) {
        self.blocks.lock().expect("cache").pop(path);
    }

    /// A file's status and block locations, from the cache when fresh.
    pub async fn block_info(&self, path: &str) -> FsResult<Arc<pb::FileBlockInfo>> {
        if let Some((at, info)) = self.blocks.lock().expect("cache").get(path)
            && at.elapsed() < self.cfg.metadata_ttl
        {
            return Ok(info.clone());
        }
        let req = pb::PathRequest { path: path.into() };
        let info = Arc::new(
            self.master
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.get_file_block_info(req).await }
                })
                .await?,
        );
        self.blocks
            .lock()
            .expect("cache")
            .put(path.to_owned(), (Instant::now(), info.clone()));
        Ok(info)
    }

    pub async fn status(&self, path: &str) -> FsResult<pb::FileInfo> {
        if let Some((at, info)) = self.blocks.lock().expect("cache").get(path)
            && at.elapsed() < self.cfg.metadata_ttl
        {
            return Ok(info.file.clone().unwrap_or_default());
        }
        let req = pb::PathRequest { path: path.into() };
        self.master
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_status(req).await }
            })
            .await
    }

    /// One page of a directory listing, after `start_after`.
    /// The file or directory with inode id `id`, wherever it is now.
    pub async fn status_by_id(&self, id: u64) -> FsResult<pb::FileInfo> {
        let req = pb::InodeRequest { id };
        self.master
            .call(|mut c| async move { c.get_status_by_id(req).await })
            .await
    }

    pub async fn list_page(
        &self,
        path: &str,
        start_after: &str,
        page_size: u32,
    ) -> FsResult<(Vec<pb::FileInfo>, String)> {
        let req = pb::ListStatusRequest {
            path: path.into(),
            start_after: start_after.into(),
            page_size,
        };
        self.master
            .call(|mut c| {
                let req = req.clone();
                async move {
                    let mut stream = c.list_status(req).await?.into_inner();
                    let page = stream.message().await?.unwrap_or_default();
                    Ok(tonic::Response::new(page))
                }
            })
            .await
            .map(|p| (p.entries, p.cursor))
    }

    async fn live_workers(&self) -> FsResult<Arc<Vec<pb::WorkerAddress>>> {
        if let Some((at, w)) = self.workers.lock().expect("workers").as_ref()
            && at.elapsed() < Duration::from_secs(3)
        {
            return Ok(w.clone());
        }
        let info = self
            .master
            .call(|mut c| async move { c.get_cluster_info(pb::Empty {}).await })
            .await?;
        let workers: Arc<Vec<_>> = Arc::new(
            info.workers
                .into_iter()
                // A draining worker still serves the blocks it holds (found
                // through block locations) but is given no new ones.
                .filter(|w| !w.lost && !w.draining)
                .filter_map(|w| w.address)
                .collect(),
        );
        *self.workers.lock().expect("workers") = Some((Instant::now(), workers.clone()));
        Ok(workers)
    }

    pub async fn mount_table(&self) -> FsResult<Arc<pb::MountTable>> {
        if let Some((at, t)) = self.mounts.lock().expect("mounts").as_ref()
            && at.elapsed() < Duration::from_secs(5)
        {
            return Ok(t.clone());
        }
        let t = Arc::new(
            self.master
                .call(|mut c| async move { c.get_mount_table(pb::Empty {}).await })
                .await?,
        );
        *self.mounts.lock().expect("mounts") = Some((Instant::now(), t.clone()));
        Ok(t)
    }

    fn failed_recently(&self, addr: &str) -> bool {
        let mut failed = self.failed.lock().expect("failed");
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
    fn forget_failures(&self) {
        self.failed.lock().expect("failed").clear();
        *self.workers.lock().expect("workers") = None;
    }

    fn mark_failed(&self, addr: &str) {
        tracing::warn!(worker = addr, "worker failed; trying elsewhere");
        self.failed
            .lock()
            .expect("failed")
            .insert(addr.to_owned(), Instant::now());
        self.pool.lock().expect("pool").remove(addr);
        *self.workers.lock().expect("workers") = None;
    }

    async fn connect(&self, addr: &str) -> std::io::Result<TcpStream> {
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
        let s = tokio::time::timeout(Duration::from_secs(3), socket.connect(target))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn give_back(&self, addr: &str, s: TcpStream) {
        let mut pool = self.pool.lock().expect("pool");
        let idle = pool.entry(addr.to_owned()).or_default();
        if idle.len() < POOL_PER_WORKER {
            idle.push(s);
        }
    }

    /// The worker that reads a block nobody holds from the under-storage:
    /// a local one if there is one, else the rendezvous-hash winner.
    async fn ufs_worker(&self, block: u64) -> FsResult<Option<String>> {
        let workers = self.live_workers().await?;
        let usable = || {
            workers
                .iter()
                .filter(|w| !self.failed_recently(&addr_of(w)))
        };
        if let Some(local) = usable().find(|w| self.is_local(&w.host)) {
            return Ok(Some(addr_of(local)));
        }
        Ok(usable()
            .max_by_key(|w| mix(w.worker_id ^ mix(block)))
            .map(addr_of))
    }

    /// Opens a file for positional reads.
    pub async fn open(self: &Arc<Self>, path: &str) -> FsResult<FileReader> {
        let info = self.block_info(path).await?;
        let file = info.file.clone().unwrap_or_default();
        if !file.completed {
            return Err(ClientError::Invalid(format!(
                "{path} is still being written"
            )));
        }
        Ok(FileReader {
            fs: self.clone(),
            path: path.to_owned(),
            info,
            stream: None,
            local: None,
            last_end: 0,
            skipped: std::collections::VecDeque::new(),
            prefetched: 0,
        })
    }

    /// Takes a read lease on a block of a local worker and opens its file.
    pub async fn lease_local(&self, block: &pb::BlockInfo) -> Option<LocalBlock> {
        if !self.cfg.short_circuit {
            return None;
        }
        let holder = block
            .locations
            .iter()
            .filter_map(|l| l.worker.as_ref())
            .find(|w| self.is_local(&w.host) && !self.failed_recently(&addr_of(w)))?;
        let addr = addr_of(holder);
        for _ in 0..2 {
            let channel = self.lease_channel(&addr).await?;
            let (reply, answer) = oneshot::channel();
            let asked = channel.send(LeaseOp::Take {
                block: block.block_id,
                reply,
            });
            let answer = match asked {
                Ok(()) => answer.await.ok(),
                Err(_) => None,
            };
            let (path, offset, len) = match answer {
                Some(Some(leased)) => leased,
                // The worker does not have it.
                Some(None) => return None,
                None => {
                    // The connection broke: forget it, try once on a new one.
                    self.leases.lock().expect("leases").remove(&addr);
                    continue;
                }
            };
            let lease = LeaseGuard {
                blocks: vec![block.block_id],
                channel,
            };
            if len != block.length {
                return None;
            }
            let file = std::fs::File::open(path).ok()?;
            return Some(LocalBlock {
                block: block.block_id,
                offset,
                len,
                file,
                _lease: lease,
            });
        }
        None
    }

    /// Leases every block of a file from a local worker that keeps them in
    /// one file holding exactly the file's bytes, and opens that file: what
    /// FUSE hands the kernel to read the file itself. `None` when no local
    /// worker has all of it that way.
    pub async fn lease_local_file(&self, reader: &FileReader) -> Option<LocalFile> {
        if !self.cfg.short_circuit {
            return None;
        }
        let (first, rest) = reader.blocks().split_first()?;
        let holder = first
            .locations
            .iter()
            .filter_map(|l| l.worker.as_ref())
            .filter(|w| self.is_local(&w.host) && !self.failed_recently(&addr_of(w)))
            .find(|w| {
                rest.iter().all(|b| {
                    b.locations.iter().any(|l| {
                        l.worker
                            .as_ref()
                            .is_some_and(|o| o.worker_id == w.worker_id)
                    })
                })
            })?;
        let addr = addr_of(holder);
        let blocks: Vec<(u64, u64, u64)> = reader
            .blocks()
            .iter()
            .map(|b| (b.block_id, b.offset, b.length))
            .collect();
        let channel = self.lease_channel(&addr).await?;
        let (reply, answer) = oneshot::channel();
        channel
            .send(LeaseOp::TakeFile {
                blocks: blocks.clone(),
                length: reader.len(),
                reply,
            })
            .ok()?;
        let path = answer.await.ok()??;
        let lease = LeaseGuard {
            blocks: blocks.into_iter().map(|b| b.0).collect(),
            channel,
        };
        let file = std::fs::File::open(path).ok()?;
        Some(LocalFile {
            file,
            _lease: lease,
        })
    }

    /// The lease connection to a local worker, opened on first use.
    async fn lease_channel(&self, addr: &str) -> Option<mpsc::UnboundedSender<LeaseOp>> {
        if let Some(tx) = self.leases.lock().expect("leases").get(addr)
            && !tx.is_closed()
        {
            return Some(tx.clone());
        }
        let conn = self.connect(addr).await.ok()?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(carry_leases(conn, rx));
        self.leases
            .lock()
            .expect("leases")
            .insert(addr.to_owned(), tx.clone());
        Some(tx)
    }

    /// Creates a file for writing with `mode`, or with its mount's write
    /// type when `None` (MUST_CACHE outside mounts).
    pub async fn create(
        self: &Arc<Self>,
        path: &str,
        mode: Option<WriteMode>,
    ) -> FsResult<FileWriter> {
        self.create_with(path, mode, 0).await
    }

    /// [`FileSystem::create`] with a block size (0: the default).
    pub async fn create_with(
        self: &Arc<Self>,
        path: &str,
        mode: Option<WriteMode>,
        block_size: u64,
    ) -> FsResult<FileWriter> {
        let req = pb::CreateRequest {
            path: path.into(),
            recursive: true,
            block_size,
            ..Default::default()
        };
        let info = self
            .master
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_file(req).await }
            })
            .await?;
        let mode = match mode {
            Some(m) => m,
            None if info.mount_id == 0 => WriteMode::MustCache,
            None => {
                let table = self.mount_table().await?;
                let wt = table
                    .mounts
                    .iter()
                    .find(|m| m.mount_id == info.mount_id)
                    .map_or(pb::WriteType::MustCache as i32, |m| m.write_type);
                match pb::WriteType::try_from(wt).unwrap_or(pb::WriteType::MustCache) {
                    pb::WriteType::MustCache => WriteMode::MustCache,
                    pb::WriteType::CacheThrough => WriteMode::CacheThrough,
                    pb::WriteType::Through => WriteMode::Through,
                    pb::WriteType::AsyncThrough => WriteMode::AsyncThrough,
                }
            }
        };
        let started = self.start_write(path, &info, mode).await;
        match started {
            Ok(w) => Ok(w),
            Err(e) => {
                let _ = self.delete(path, false).await;
                Err(e)
            }
        }
    }

    async fn start_write(
        self: &Arc<Self>,
        path: &str,
        info: &pb::FileInfo,
        mode: WriteMode,
    ) -> FsResult<FileWriter> {
        let ufs = (info.mount_id != 0).then(|| (info.mount_id, info.ufs_relative.clone()));
        if mode != WriteMode::MustCache && ufs.is_none() {
            return Err(ClientError::Invalid(format!(
                "{mode:?} needs an under-storage: {path} is not under a mount"
            )));
        }
        if mode == WriteMode::AsyncThrough {
            self.set_persist(path, pb::PersistState::ToBePersisted)
                .await?;
        }
        let workers = self.live_workers().await?;
        let mut candidates: Vec<&pb::WorkerAddress> = workers.iter().collect();
        candidates.sort_by_key(|w| {
            (
                !self.is_local(&w.host),
                u64::MAX - mix(w.worker_id ^ mix(info.id)),
            )
        });
        let header = Request::Write(WriteRequest {
            file_id: info.id,
            block_size: info.block_size,
            mode,
            path: path.to_owned(),
            ufs,
        });
        for w in candidates {
            let addr = addr_of(w);
            if self.failed_recently(&addr) {
                continue;
            }
            let Ok(mut conn) = self.connect(&addr).await else {
                self.mark_failed(&addr);
                continue;
            };
            if wire::send(&mut conn, &header).await.is_err() {
                self.mark_failed(&addr);
                continue;
            }
            return Ok(FileWriter {
                fs: self.clone(),
                path: path.to_owned(),
                info: info.clone(),
                mode,
                conn: Some(conn),
                addr,
                buf: Vec::with_capacity(WRITE_FRAME),
                written: 0,
            });
        }
        Err(ClientError::Data {
            path: path.to_owned(),
            reason: "no live worker to write to".into(),
        })
    }

    async fn set_persist(&self, path: &str, state: pb::PersistState) -> FsResult<()> {
        let req = pb::SetAttributeRequest {
            path: path.into(),
            persist: Some(state as i32),
            ..Default::default()
        };
        self.master
            .call(|mut c| {
                let req = req.clone();
                async move { c.set_attribute(req).await }
            })
            .await?;
        Ok(())
    }

    pub async fn delete(&self, path: &str, recursive: bool) -> FsResult<()> {
        self.invalidate(path);
        let req = pb::DeleteRequest {
            path: path.into(),
            recursive,
        };
        self.master
            .call(|mut c| {
                let req = req.clone();
                async move { c.delete(req).await }
            })
            .await?;
        Ok(())
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> FsResult<pb::FileInfo> {
        let req = pb::CreateRequest {
            path: path.into(),
            mode,
            ..Default::default()
        };
        self.master
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_directory(req).await }
            })
            .await
    }

    pub async fn rename(&self, src: &str, dst: &str) -> FsResult<pb::FileInfo> {
        self.invalidate(src);
        self.invalidate(dst);
        let req = pb::RenameRequest {
            src: src.into(),
            dst: dst.into(),
        };
        self.master
            .call(|mut c| {
                let req = req.clone();
                async move { c.rename(req).await }
            })
            .await
    }

    /// Cache capacity and use over all live workers.
    pub async fn capacity(&self) -> FsResult<(u64, u64)> {
        let info = self
            .master
            .call(|mut c| async move { c.get_cluster_info(pb::Empty {}).await })
            .await?;
        Ok((info.capacity_bytes, info.used_bytes))
    }
}

/// A block of a local worker (`len` bytes of `file` from `offset`),
/// leased until this is dropped.
#[derive(Debug)]
pub struct LocalBlock {
    pub block: u64,
    file: std::fs::File,
    offset: u64,
    pub len: u64,
    _lease: LeaseGuard,
}

/// A whole file as a local worker keeps it, every block leased until this
/// is dropped.
#[derive(Debug)]
pub struct LocalFile {
    pub file: std::fs::File,
    _lease: LeaseGuard,
}

#[derive(Debug)]
enum LeaseOp {
    Take {
        block: u64,
        /// Path, offset and length, or `None` when the worker lacks it.
        reply: oneshot::Sender<Option<(String, u64, u64)>>,
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
struct LeaseGuard {
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

/// A worker on this machine that takes longer than this to answer is
/// treated as gone: reads fall back to the data path.
const LEASE_ROUND_TRIP: Duration = Duration::from_secs(2);

/// Serves one lease connection: a lease per open of a local block costs one
/// round trip on it instead of a connection of its own.
async fn carry_leases(mut conn: TcpStream, mut ops: mpsc::UnboundedReceiver<LeaseOp>) {
    while let Some(op) = ops.recv().await {
        let ok = match op {
            LeaseOp::Take { block, reply } => {
                match lease_round_trip(&mut conn, &Request::Lease { block }).await {
                    Some(Response::Leased { path, offset, len }) => {
                        let _ = reply.send(Some((path, offset, len)));
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
            } => match lease_round_trip(&mut conn, &Request::LeaseFile { blocks, length }).await {
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
                        lease_round_trip(&mut conn, &Request::Release { block }).await,
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
async fn lease_round_trip(conn: &mut TcpStream, req: &Request) -> Option<Response> {
    let exchange = async {
        wire::send(conn, req).await.ok()?;
        wire::recv::<_, Response>(conn).await.ok().flatten()
    };
    tokio::time::timeout(LEASE_ROUND_TRIP, exchange)
        .await
        .ok()
        .flatten()
}

impl LocalBlock {
    // Plain reads: mapping tmpfs block files measured several times slower
    // here (page faults) than copying them with pread.
    /// Reads from `off` within the block.
    pub fn read_exact_at(&self, out: &mut [u8], off: u64) -> std::io::Result<()> {
        self.file.read_exact_at(out, self.offset + off)
    }
}

/// An open remote read: `remaining` bytes of `block` from `pos` still to
/// come on `conn`.
#[derive(Debug)]
struct BlockStream {
    block: u64,
    pos: u64,
    remaining: u64,
    addr: String,
    conn: TcpStream,
}

/// Positional reads of one file.
#[derive(Debug)]
pub struct FileReader {
    fs: Arc<FileSystem>,
    path: String,
    info: Arc<pb::FileBlockInfo>,
    stream: Option<BlockStream>,
    local: Option<LocalBlock>,
    last_end: u64,
    /// Bytes read past on a stream to reach a later read: `(block, offset
    /// in block, bytes)`, at most `SKIP_AHEAD` in all.
    skipped: std::collections::VecDeque<(u64, u64, Vec<u8>)>,
    /// Blocks up to this index have been asked for ahead of the reader.
    prefetched: usize,
}

enum Attempt {
    Done,
    /// Try again (another worker, fresh locations).
    Retry(String),
}

impl FileReader {
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
                self.fs.forget_failures();
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
        // 1. Short-circuit.
        if self.local.as_ref().map(|l| l.block) != Some(block.block_id) {
            self.local = None;
            if self.stream.as_ref().map(|s| s.block) != Some(block.block_id) {
                self.local = self.fs.lease_local(block).await;
            }
        }
        if let Some(local) = &self.local {
            match local.read_exact_at(out, off) {
                Ok(()) => return Ok(Attempt::Done),
                Err(e) => {
                    self.local = None;
                    return Ok(Attempt::Retry(format!("short-circuit read: {e}")));
                }
            }
        }
        // 2. Bytes skipped earlier, or the open stream if this read starts
        // where it is or a little ahead.
        if let Some((_, start, bytes)) = self.skipped.iter().find(|(b, start, bytes)| {
            *b == block.block_id
                && *start <= off
                && off + out.len() as u64 <= start + bytes.len() as u64
        }) {
            let from = (off - start) as usize;
            out.copy_from_slice(&bytes[from..from + out.len()]);
            return Ok(Attempt::Done);
        }
        if let Some(s) = self.stream.as_mut()
            && s.block == block.block_id
            && off > s.pos
            && off - s.pos <= SKIP_AHEAD
            && s.remaining >= off - s.pos + out.len() as u64
        {
            let mut gap = vec![0u8; (off - s.pos) as usize];
            if s.conn.read_exact(&mut gap).await.is_ok() {
                s.pos += gap.len() as u64;
                s.remaining -= gap.len() as u64;
                let mut kept: u64 = self.skipped.iter().map(|(_, _, b)| b.len() as u64).sum();
                while kept + gap.len() as u64 > SKIP_AHEAD
                    && let Some((_, _, old)) = self.skipped.pop_front()
                {
                    kept -= old.len() as u64;
                }
                self.skipped
                    .push_back((block.block_id, off - gap.len() as u64, gap));
            } else {
                let addr = s.addr.clone();
                self.stream = None;
                self.fs.mark_failed(&addr);
                return Ok(Attempt::Retry(format!("{addr}: stream cut")));
            }
        }
        if let Some(s) = self.stream.take()
            && s.block == block.block_id
            && s.pos == off
            && s.remaining >= out.len() as u64
        {
            return Ok(self.read_stream(s, out).await);
        }
        // 3. A new stream from a holder, else through a worker from the
        // under-storage.
        let holders: Vec<String> = {
            let mut h: Vec<&pb::WorkerAddress> = block
                .locations
                .iter()
                .filter_map(|l| l.worker.as_ref())
                .collect();
            h.sort_by_key(|w| !self.fs.is_local(&w.host));
            h.into_iter()
                .map(addr_of)
                .filter(|a| !self.fs.failed_recently(a))
                .collect()
        };
        let source = self.source(block);
        let addr = match holders.first() {
            Some(a) => a.clone(),
            None if source.is_some() => match self.fs.ufs_worker(block.block_id).await? {
                Some(a) => a,
                None => return Ok(Attempt::Retry("no live worker".into())),
            },
            None => {
                return Ok(Attempt::Retry(format!(
                    "block {} is cached nowhere and {} is not in the under-storage",
                    block.block_id, self.path
                )));
            }
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
        let req = Request::Read(ReadRequest {
            block: block.block_id,
            offset: off,
            len,
            source,
            cache: true,
        });
        let opened = async {
            let mut conn = self.fs.connect(&addr).await?;
            wire::send(&mut conn, &req)
                .await
                .map_err(std::io::Error::other)?;
            let resp: Option<Response> =
                wire::recv(&mut conn).await.map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>((conn, resp))
        };
        let (conn, resp) = match opened.await {
            Ok(x) => x,
            Err(e) => {
                self.fs.mark_failed(&addr);
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
                };
                Ok(self.read_stream(s, out).await)
            }
            Some(Response::Data { len: got }) => {
                // The worker's block is shorter than the master says.
                self.fs.mark_failed(&addr);
                Ok(Attempt::Retry(format!(
                    "{addr} offered {got} bytes, {} needed",
                    out.len()
                )))
            }
            Some(Response::Error { kind, message }) => {
                self.fs.give_back(&addr, conn);
                match kind {
                    // Evicted or lost since the master last heard: retry.
                    ErrorKind::NotFound if !holders.is_empty() => Ok(Attempt::Retry(message)),
                    ErrorKind::Internal => {
                        self.fs.mark_failed(&addr);
                        Ok(Attempt::Retry(message))
                    }
                    _ => Err(ClientError::Worker { kind, message }),
                }
            }
            other => {
                self.fs.mark_failed(&addr);
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
        let Ok(Some(addr)) = self.fs.ufs_worker(next.block_id).await else {
            return;
        };
        let asked = async {
            let mut conn = self.fs.connect(&addr).await.ok()?;
            wire::send(
                &mut conn,
                &Request::Prefetch {
                    block: next.block_id,
                    source,
                },
            )
            .await
            .ok()?;
            match wire::recv::<_, Response>(&mut conn).await.ok()?? {
                Response::Queued => Some(conn),
                _ => None,
            }
        };
        if let Some(conn) = asked.await {
            self.fs.give_back(&addr, conn);
        }
    }

    async fn read_stream(&mut self, mut s: BlockStream, out: &mut [u8]) -> Attempt {
        let read = read_exact_woken_late(&mut s.conn, out).await;
        match read {
            Ok(_) => {
                s.pos += out.len() as u64;
                s.remaining -= out.len() as u64;
                if s.remaining == 0 {
                    self.fs.give_back(&s.addr, s.conn);
                } else {
                    self.stream = Some(s);
                }
                Attempt::Done
            }
            Err(e) => {
                // Cut mid-block (the worker died, or its under-storage read
                // broke): none of these bytes count.
                self.fs.mark_failed(&s.addr);
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

/// The most a block stream's reader waits to have before it is woken.
/// Measured on loopback (2 cores, 4 MiB reads): 512 KiB read 2.9-3.3 GB/s,
/// 1 MiB 2.3-3.3, 2 MiB and more under 2, no watermark 1.5-2.3.
pub(crate) const RCVLOWAT_MAX: usize = 512 << 10;

/// Wakes a reader of `conn` only once `bytes` are there (or the peer
/// closes): a stream read in one large call then costs the kernel a wakeup
/// per `bytes` instead of one per segment. Only while bytes that many are
/// sure to come: a smaller reply would never wake the reader.
#[allow(unsafe_code)]
pub(crate) fn set_rcvlowat(conn: &impl std::os::fd::AsRawFd, bytes: usize) {
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: the option value is a c_int on this stack frame, its size
    // passed with it, on a descriptor that outlives the call.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `read_exact`, woken once up to [`RCVLOWAT_MAX`] of what is still
/// wanted has arrived rather than at every segment; only the bytes wanted
/// are waited for, so the end of a stream never waits for more.
async fn read_exact_woken_late(conn: &mut TcpStream, out: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    let result = loop {
        if done == out.len() {
            break Ok(());
        }
        set_rcvlowat(conn, (out.len() - done).min(RCVLOWAT_MAX));
        match conn.read(&mut out[done..]).await {
            Ok(0) => break Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) => break Err(e),
        }
    };
    set_rcvlowat(conn, 1);
    result
}

/// A file being written (once, sequentially); [`FileWriter::close`]
/// commits it.
#[derive(Debug)]
pub struct FileWriter {
    fs: Arc<FileSystem>,
    path: String,
    /// The file as the master created it.
    info: pb::FileInfo,
    mode: WriteMode,
    conn: Option<TcpStream>,
    addr: String,
    buf: Vec<u8>,
    written: u64,
}

impl FileWriter {
    /// The new file's status as of its creation (length 0, incomplete).
    pub fn info(&self) -> &pb::FileInfo {
        &self.info
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn mode(&self) -> WriteMode {
        self.mode
    }

    fn broken(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Data {
            path: self.path.clone(),
            reason: format!("writing to {}: {e}", self.addr),
        }
    }

    async fn flush_frame(&mut self) -> FsResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| ClientError::Invalid("writer closed".into()))?;
        let sent = wire::send_frame(conn, &self.buf).await;
        self.buf.clear();
        sent.map_err(|e| self.broken(e))
    }

    pub async fn write(&mut self, mut data: &[u8]) -> FsResult<()> {
        while !data.is_empty() {
            let room = WRITE_FRAME - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.written += n as u64;
            if self.buf.len() == WRITE_FRAME {
                self.flush_frame().await?;
            }
        }
        Ok(())
    }

    /// Sends the rest, waits for the worker to commit, then completes the
    /// file on the master. On failure the file is deleted.
    pub async fn close(mut self) -> FsResult<pb::FileInfo> {
        let result = self.finish().await;
        if result.is_err() {
            let _ = self.fs.delete(&self.path, false).await;
        }
        result
    }

    async fn finish(&mut self) -> FsResult<pb::FileInfo> {
        self.flush_frame().await?;
        let mut conn = self
            .conn
            .take()
            .ok_or_else(|| ClientError::Invalid("writer closed".into()))?;
        wire::send_frame(&mut conn, &[])
            .await
            .map_err(|e| self.broken(e))?;
        let resp: Option<Response> = wire::recv(&mut conn).await.map_err(|e| self.broken(e))?;
        match resp {
            Some(Response::Written { .. }) => self.fs.give_back(&self.addr, conn),
            Some(Response::Error { kind, message }) => {
                return Err(ClientError::Worker { kind, message });
            }
            other => return Err(self.broken(format!("unexpected answer {other:?}"))),
        }
        let req = pb::CompleteFileRequest {
            path: self.path.clone(),
            length: self.written,
        };
        let complete = self.fs.master.call(|mut c| {
            let req = req.clone();
            async move { c.complete_file(req).await }
        });
        let info = if self.mode.writes_through() {
            // The worker answered after closing the under-storage object,
            // so the file is persisted whichever of the two lands first;
            // sent together, neither waits for the other's commit.
            let (mut info, ()) = tokio::try_join!(
                complete,
                self.fs.set_persist(&self.path, pb::PersistState::Persisted)
            )?;
            info.persist = pb::PersistState::Persisted as i32;
            info
        } else {
            complete.await?
        };
        self.fs.invalidate(&self.path);
        Ok(info)
    }

    /// Gives up: the file is deleted.
    pub async fn abort(mut self) {
        self.conn = None;
        let _ = self.fs.delete(&self.path, false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A stream that ends in a tail smaller than the watermark, and one cut
    /// short: the first is read whole, the second fails, neither waits.
    #[tokio::test]
    async fn late_wakeups_never_wait_past_the_end_of_what_is_wanted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let total = 3 * RCVLOWAT_MAX + 17;
        let sent: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
        let to_send = sent.clone();
        let server = tokio::spawn(async move {
            let (mut whole, _) = listener.accept().await.unwrap();
            for piece in to_send.chunks(100_003) {
                whole.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let (mut cut, _) = listener.accept().await.unwrap();
            cut.write_all(&to_send[..1000]).await.unwrap();
            // Kept open a while, then closed short of what the reader wants.
            tokio::time::sleep(Duration::from_millis(200)).await;
            (whole, cut)
        });
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let mut got = vec![0; total];
        tokio::time::timeout(
            Duration::from_secs(10),
            read_exact_woken_late(&mut conn, &mut got),
        )
        .await
        .expect("the tail arrived but the reader was never woken")
        .unwrap();
        assert!(got == sent);
        let mut cut = TcpStream::connect(addr).await.unwrap();
        let mut buf = vec![0; 5000];
        let server = server.await.unwrap();
        drop(server);
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            read_exact_woken_late(&mut cut, &mut buf),
        )
        .await
        .expect("a closed stream woke no one")
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
