//! The file system client's core: the namespace as the masters serve it
//! (file metadata and block locations cached for a short TTL, the mount
//! table), and the calls that change it. Reading a file is
//! [`super::reader`], writing one [`super::writer`], local copies
//! [`super::short_circuit`].

use super::error::{ClientError, FsResult};
use super::leases::Leases;
use super::read_paths::ReadCounters;
use super::workers::Workers;
use crate::block::BlockId;
use crate::proto::master as pb;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_api::MasterClient;

/// How long the mount table is trusted.
const MOUNT_TABLE_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub masters: Vec<String>,
    pub timeout: Duration,
    /// The host workers on this machine register with; `None` treats
    /// loopback workers as local.
    pub local_host: Option<String>,
    /// The node this client runs on (`spec.nodeName`): workers that
    /// registered the same node are preferred and their reads counted
    /// as local.
    pub node: Option<String>,
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
            node: None,
            short_circuit: true,
            metadata_ttl: Duration::from_secs(1),
            metadata_entries: 10_000,
        }
    }
}

type Cached<T> = Mutex<LruCache<String, (Instant, T)>>;

/// A Weir file system; share it (`Arc`) between readers and writers.
#[derive(Debug)]
pub struct FileSystem {
    cfg: ClientConfig,
    master: MasterClient,
    blocks: Cached<Arc<pb::FileBlockInfo>>,
    mounts: Mutex<Option<(Instant, Arc<pb::MountTable>)>>,
    workers: Workers,
    leases: Leases,
    read_paths: ReadCounters,
}

impl FileSystem {
    pub fn new(cfg: ClientConfig) -> FsResult<Arc<Self>> {
        let master = MasterClient::new(cfg.masters.clone(), cfg.timeout)?;
        let entries = NonZeroUsize::new(cfg.metadata_entries.max(1)).expect("positive");
        Ok(Arc::new(Self {
            blocks: Mutex::new(LruCache::new(entries)),
            master,
            cfg,
            mounts: Mutex::new(None),
            workers: Workers::default(),
            leases: Leases::default(),
            read_paths: ReadCounters::default(),
        }))
    }

    pub fn master(&self) -> &MasterClient {
        &self.master
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub(crate) fn workers(&self) -> &Workers {
        &self.workers
    }

    pub(crate) fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Which way this client's reads came, so far.
    pub fn read_paths(&self) -> &ReadCounters {
        &self.read_paths
    }

    /// Whether `w` runs where this client does: on its node when both
    /// know theirs, else on this machine. Its blocks are then read from
    /// its data files (short-circuit): a worker in a container names them
    /// as the node sees them.
    pub(crate) fn same_node(&self, w: &pb::WorkerAddress) -> bool {
        self.runs_here(&w.host, &w.node)
    }

    /// [`Self::same_node`] of a worker registered as `host` on `node`.
    pub(crate) fn runs_here(&self, host: &str, node: &str) -> bool {
        match &self.cfg.node {
            Some(mine) if !node.is_empty() => mine == node,
            _ => self.is_local(host),
        }
    }

    /// Whether a worker registered as `host` runs on this machine.
    fn is_local(&self, host: &str) -> bool {
        match &self.cfg.local_host {
            Some(h) => h == host,
            None => host == "localhost" || host.starts_with("127."),
        }
    }

    /// The worker that reads `block` (`len` bytes), which no worker holds,
    /// from the under-storage.
    pub(crate) async fn miss_worker(&self, block: BlockId, len: u64) -> FsResult<Option<String>> {
        self.workers.miss_worker(&self.master, block, len).await
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
            .map_err(ClientError::from)
    }

    /// The file or directory with inode id `id`, wherever it is now.
    pub async fn status_by_id(&self, id: u64) -> FsResult<pb::FileInfo> {
        let req = pb::InodeRequest { id };
        self.master
            .call(|mut c| async move { c.get_status_by_id(req).await })
            .await
            .map_err(ClientError::from)
    }

    /// One page of a directory listing, after `start_after`.
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
            .map_err(ClientError::from)
    }

    pub async fn mount_table(&self) -> FsResult<Arc<pb::MountTable>> {
        if let Some((at, t)) = self.mounts.lock().expect("mounts").as_ref()
            && at.elapsed() < MOUNT_TABLE_TTL
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

    pub(crate) async fn set_persist(&self, path: &str, state: pb::PersistState) -> FsResult<()> {
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

    /// `chmod`, `chown`, `touch`: done in the under-storage and Weir, or
    /// refused with the reason.
    pub async fn change_attributes(
        &self,
        path: &str,
        change: crate::ufs::AttrChange,
    ) -> FsResult<pb::FileInfo> {
        self.invalidate(path);
        let req = pb::SetAttributeRequest {
            path: path.into(),
            mode: change.mode,
            uid: change.uid,
            gid: change.gid,
            mtime_ms: change.mtime_ms,
            ..Default::default()
        };
        self.master
            .call(|mut c| {
                let req = req.clone();
                async move { c.set_attribute(req).await }
            })
            .await
            .map_err(ClientError::from)
    }

    /// `ln -s`: a link to `target` made in the under-storage, or refused
    /// with the reason.
    pub async fn symlink(&self, path: &str, target: &str) -> FsResult<pb::FileInfo> {
        self.create_entry(pb::CreateRequest {
            path: path.into(),
            symlink_target: target.into(),
            ..Default::default()
        })
        .await
    }

    /// `mknod`/`mkfifo`: a special file made in the under-storage by
    /// `maker`, or refused with the reason.
    pub async fn mknod(
        &self,
        path: &str,
        maker: super::Maker,
        kind: crate::ufs::NodeKind,
        rdev: u64,
    ) -> FsResult<pb::FileInfo> {
        self.create_entry(pb::CreateRequest {
            node_kind: kind.name().into(),
            rdev,
            ..maker.request(path)
        })
        .await
    }

    /// `ln`: `path` made a second name of the file `existing`, in the
    /// under-storage, or refused with the reason.
    pub async fn hard_link(&self, existing: &str, path: &str) -> FsResult<pb::FileInfo> {
        self.invalidate(existing);
        self.create_entry(pb::CreateRequest {
            path: path.into(),
            hard_link_to: existing.into(),
            ..Default::default()
        })
        .await
    }

    async fn create_entry(&self, req: pb::CreateRequest) -> FsResult<pb::FileInfo> {
        self.invalidate(&req.path);
        self.master
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_file(req).await }
            })
            .await
            .map_err(ClientError::from)
    }

    pub async fn mkdir(&self, path: &str, maker: super::Maker) -> FsResult<pb::FileInfo> {
        let req = maker.request(path);
        self.master
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_directory(req).await }
            })
            .await
            .map_err(ClientError::from)
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
            .map_err(ClientError::from)
    }

    /// Cache capacity and use over the live workers (draining ones too).
    pub async fn capacity(&self) -> FsResult<(u64, u64)> {
        let list = self
            .master
            .call(|mut c| async move { c.list_workers(pb::Empty {}).await })
            .await?;
        Ok(list
            .workers
            .iter()
            .flat_map(|w| &w.tiers)
            .fold((0, 0), |(c, u), t| (c + t.capacity_bytes, u + t.used_bytes)))
    }
}
