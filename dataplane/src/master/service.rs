//! The master's gRPC API. Every call is traced; errors map to gRPC codes in
//! one place; followers answer FAILED_PRECONDITION with the leader's address
//! in `x-weir-leader`, so clients switch at once.

use super::jobs::{Job, JobKind, JobSpec, JobState};
use super::metastore::{Inode, PersistState, StoreError, WriteType};
use super::namespace::{
    AttrUpdate, Command, DEFAULT_BLOCK_SIZE, FsError, MountSpec, Reply, Stamp, block_id,
};
use super::node::{Master, MasterError};
use super::workers::{TierUsage, WorkerAddr};
use crate::metrics::RpcMetrics;
use crate::path::WeirPath;
use crate::proto::master as pb;
use crate::proto::master::master_service_server::MasterService;
use openraft::async_runtime::WatchReceiver;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Metadata key naming the leader in a NotLeader answer.
pub const LEADER_HEADER: &str = "x-weir-leader";
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

impl From<MasterError> for Status {
    fn from(e: MasterError) -> Self {
        match e {
            MasterError::Fs(fs) => match fs {
                FsError::InvalidArgument(m) => Status::invalid_argument(m),
                FsError::NotFound(m) => Status::not_found(m),
                FsError::AlreadyExists(m) => Status::already_exists(m),
                FsError::FailedPrecondition(m) => Status::failed_precondition(m),
                FsError::ReadOnly(m) => Status::permission_denied(format!("read-only: {m}")),
                FsError::Store(m) => Status::internal(m),
            },
            MasterError::NotLeader { leader } => {
                let mut status = Status::failed_precondition(match &leader {
                    Some((id, addr)) => {
                        format!("not the leader; the leader is master {id} at {addr}")
                    }
                    None => "not the leader; no leader is known yet".to_owned(),
                });
                if let Some((_, addr)) = leader
                    && let Ok(value) = addr.parse()
                {
                    status.metadata_mut().insert(LEADER_HEADER, value);
                }
                status
            }
            MasterError::Raft(m) => Status::unavailable(m),
            MasterError::Ufs(m) => Status::unavailable(format!("under-storage: {m}")),
            MasterError::Start(m) => Status::internal(m),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn parse(raw: &str) -> Result<WeirPath, Status> {
    WeirPath::parse(raw).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn persist_to_pb(p: PersistState) -> pb::PersistState {
    match p {
        PersistState::NotPersisted => pb::PersistState::NotPersisted,
        PersistState::ToBePersisted => pb::PersistState::ToBePersisted,
        PersistState::Persisted => pb::PersistState::Persisted,
    }
}

pub fn write_type_from_pb(w: i32) -> WriteType {
    match pb::WriteType::try_from(w).unwrap_or(pb::WriteType::MustCache) {
        pb::WriteType::MustCache => WriteType::MustCache,
        pb::WriteType::CacheThrough => WriteType::CacheThrough,
        pb::WriteType::Through => WriteType::Through,
        pb::WriteType::AsyncThrough => WriteType::AsyncThrough,
    }
}

fn write_type_to_pb(w: WriteType) -> pb::WriteType {
    match w {
        WriteType::MustCache => pb::WriteType::MustCache,
        WriteType::CacheThrough => pb::WriteType::CacheThrough,
        WriteType::Through => pb::WriteType::Through,
        WriteType::AsyncThrough => pb::WriteType::AsyncThrough,
    }
}

/// Byte ranges of a file's blocks: `(block id, offset, length)`.
pub fn blocks_of(inode: &Inode) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let size = inode.block_size.max(1);
    let count = if inode.is_dir() {
        0
    } else {
        inode.length.div_ceil(size)
    };
    (0..count).map(move |i| {
        let offset = i * size;
        (
            block_id(inode.id, i),
            offset,
            size.min(inode.length - offset),
        )
    })
}

/// The gRPC face of a [`Master`].
#[derive(Clone)]
pub struct MasterApi {
    master: Arc<Master>,
    metrics: Arc<RpcMetrics>,
}

impl MasterApi {
    pub fn new(master: Arc<Master>, metrics: Arc<RpcMetrics>) -> Self {
        Self { master, metrics }
    }

    fn info(&self, path: &WeirPath, inode: &Inode) -> pb::FileInfo {
        let cached_percent = if inode.is_dir() || inode.length == 0 {
            100
        } else {
            let cached: u64 = blocks_of(inode)
                .filter(|(b, _, _)| self.master.workers.is_cached(*b))
                .map(|(_, _, len)| len)
                .sum();
            (cached * 100 / inode.length) as u32
        };
        let (ufs_path, mount_id, ufs_relative) = self
            .master
            .namespace
            .mount_of(path)
            .ok()
            .flatten()
            .map(|m| {
                let rest = WeirPath::parse(&m.path)
                    .ok()
                    .and_then(|mp| path.strip_prefix(&mp).map(str::to_owned))
                    .unwrap_or_default();
                let full = if rest.is_empty() {
                    m.ufs_uri.clone()
                } else {
                    format!("{}/{rest}", m.ufs_uri.trim_end_matches('/'))
                };
                (full, m.mount_id, rest)
            })
            .unwrap_or_default();
        pb::FileInfo {
            id: inode.id,
            path: path.to_string(),
            name: inode.name.clone(),
            is_dir: inode.is_dir(),
            length: inode.length,
            block_size: inode.block_size,
            completed: inode.completed,
            mode: inode.mode,
            owner: inode.owner.clone(),
            group: inode.group.clone(),
            mtime_ms: inode.mtime_ms,
            pinned: inode.pinned,
            ttl_ms: inode.ttl_ms,
            replication_min: inode.replication_min,
            persist: persist_to_pb(inode.persist) as i32,
            cached_percent,
            ufs_path,
            mount_id,
            ufs_relative,
        }
    }

    async fn write_inode(&self, path: &WeirPath, cmd: Command) -> Result<pb::FileInfo, Status> {
        match self.master.write(cmd).await? {
            Reply::Inode(inode) => {
                // A rename's reply is the inode at its new path.
                Ok(self.info(path, &inode))
            }
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Runs a handler, recording its latency and outcome.
    async fn observe<T>(
        &self,
        method: &'static str,
        fut: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = fut.await;
        self.metrics.observe(
            method,
            result.as_ref().err().map(|s| s.code()),
            started.elapsed(),
        );
        result.map(Response::new)
    }

    /// The inode at `path` as of a linearizable read, loading it from the
    /// under-storage when the namespace does not have it yet.
    async fn linearized_inode(&self, path: &WeirPath) -> Result<Inode, Status> {
        self.master.linearize().await?;
        self.master
            .sync
            .resolve(&self.master, path)
            .await?
            .ok_or_else(|| Status::not_found(path.to_string()))
    }

    /// Soft-state calls (heartbeats, block commits) need the leader but no
    /// linearizable read: the leader's registry is the only one there is.
    fn require_leader(&self) -> Result<(), Status> {
        if self.master.is_leader() {
            Ok(())
        } else {
            Err(MasterError::NotLeader {
                leader: self.master.leader(),
            }
            .into())
        }
    }

    fn stamp(mode: u32, owner: String, group: String, default_mode: u32) -> Stamp {
        Stamp {
            owner: if owner.is_empty() {
                "root".into()
            } else {
                owner
            },
            group: if group.is_empty() {
                "root".into()
            } else {
                group
            },
            mode: if mode == 0 { default_mode } else { mode },
            now_ms: now_ms(),
        }
    }
}

type PageStream = Pin<Box<dyn Stream<Item = Result<pb::ListStatusPage, Status>> + Send>>;
type MetaResponses = Pin<Box<dyn Stream<Item = Result<pb::MetaResponse, Status>> + Send>>;

/// Operations of one metadata stream served at once; more wait in the
/// stream (HTTP/2 flow control pushes back on the client).
const STREAM_IN_FLIGHT: usize = 512;

fn meta_response<T>(
    id: u64,
    result: Result<Response<T>, Status>,
    wrap: impl FnOnce(T) -> pb::meta_response::Result,
) -> pb::MetaResponse {
    match result {
        Ok(r) => pb::MetaResponse {
            id,
            code: 0,
            message: String::new(),
            leader: String::new(),
            result: Some(wrap(r.into_inner())),
        },
        Err(status) => pb::MetaResponse {
            id,
            code: status.code() as i32,
            message: status.message().to_owned(),
            leader: status
                .metadata()
                .get(LEADER_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            result: None,
        },
    }
}

impl MasterApi {
    /// One operation of a metadata stream, through the same handler as its
    /// unary call.
    async fn serve_one(&self, req: pb::MetaRequest) -> pb::MetaResponse {
        use pb::meta_request::Op;
        use pb::meta_response::Result as R;
        let id = req.id;
        match req.op {
            Some(Op::GetStatus(r)) => {
                meta_response(id, self.get_status(Request::new(r)).await, R::File)
            }
            Some(Op::CreateFile(r)) => {
                meta_response(id, self.create_file(Request::new(r)).await, R::File)
            }
            Some(Op::CreateDirectory(r)) => {
                meta_response(id, self.create_directory(Request::new(r)).await, R::File)
            }
            Some(Op::CompleteFile(r)) => {
                meta_response(id, self.complete_file(Request::new(r)).await, R::File)
            }
            Some(Op::Delete(r)) => {
                meta_response(id, self.delete(Request::new(r)).await, R::Deleted)
            }
            Some(Op::Rename(r)) => meta_response(id, self.rename(Request::new(r)).await, R::File),
            None => meta_response::<pb::FileInfo>(
                id,
                Err(Status::invalid_argument("empty operation")),
                R::File,
            ),
        }
    }
}

#[tonic::async_trait]
impl MasterService for MasterApi {
    type ListStatusStream = PageStream;
    type MetaStreamStream = MetaResponses;

    #[tracing::instrument(skip_all)]
    async fn meta_stream(
        &self,
        request: Request<tonic::Streaming<pb::MetaRequest>>,
    ) -> Result<Response<Self::MetaStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_IN_FLIGHT);
        let api = self.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(STREAM_IN_FLIGHT));
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (api, tx) = (api.clone(), tx.clone());
                tokio::spawn(async move {
                    let response = api.serve_one(req).await;
                    drop(slot);
                    let _ = tx.send(Ok(response)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn get_status(
        &self,
        request: Request<pb::PathRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("GetStatus", async {
            let path = parse(&request.get_ref().path)?;
            let inode = self.linearized_inode(&path).await?;
            Ok(self.info(&path, &inode))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(id = request.get_ref().id))]
    async fn get_status_by_id(
        &self,
        request: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("GetStatusById", async {
            let id = request.get_ref().id;
            self.master.linearize().await?;
            let path = self
                .master
                .namespace
                .path_of(id)
                .map_err(MasterError::from)?
                .ok_or_else(|| Status::not_found(format!("inode {id}")))?;
            let inode = self.linearized_inode(&path).await?;
            Ok(self.info(&path, &inode))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn list_status(
        &self,
        request: Request<pb::ListStatusRequest>,
    ) -> Result<Response<Self::ListStatusStream>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let path = parse(&req.path)?;
        let dir = self.linearized_inode(&path).await?;
        if dir.is_dir() {
            self.master.sync.sync_dir(&self.master, &path).await?;
        }
        let page_size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let api = self.clone();
        let mut cursor = (!req.start_after.is_empty()).then_some(req.start_after);
        tokio::spawn(async move {
            if !dir.is_dir() {
                let page = pb::ListStatusPage {
                    entries: vec![api.info(&path, &dir)],
                    cursor: String::new(),
                };
                let _ = tx.send(Ok(page)).await;
                return;
            }
            // One page at a time: no lock or snapshot is held between pages,
            // and a slow reader only holds back its own stream.
            loop {
                let page = match api
                    .master
                    .namespace
                    .list(&path, cursor.as_deref(), page_size)
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(MasterError::from(e).into())).await;
                        return;
                    }
                };
                let last = page.len() < page_size;
                cursor = page.last().map(|i| i.name.clone());
                let entries = page
                    .iter()
                    .filter_map(|i| path.child(&i.name).ok().map(|p| api.info(&p, i)))
                    .collect();
                let msg = pb::ListStatusPage {
                    entries,
                    cursor: cursor.clone().unwrap_or_default(),
                };
                if tx.send(Ok(msg)).await.is_err() || last {
                    return;
                }
            }
        });
        self.metrics.observe("ListStatus", None, started.elapsed());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn create_directory(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("CreateDirectory", async {
            let r = request.into_inner();
            let path = parse(&r.path)?;
            let stamp = Self::stamp(r.mode, r.owner, r.group, 0o755);
            self.write_inode(
                &path,
                Command::CreateDirectory {
                    path: path.to_string(),
                    recursive: r.recursive,
                    stamp,
                },
            )
            .await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn create_file(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("CreateFile", async {
            let r = request.into_inner();
            let path = parse(&r.path)?;
            let stamp = Self::stamp(r.mode, r.owner, r.group, 0o644);
            let block_size = if r.block_size == 0 {
                DEFAULT_BLOCK_SIZE
            } else {
                r.block_size
            };
            self.write_inode(
                &path,
                Command::CreateFile {
                    path: path.to_string(),
                    recursive: r.recursive,
                    block_size,
                    stamp,
                },
            )
            .await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn complete_file(
        &self,
        request: Request<pb::CompleteFileRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("CompleteFile", async {
            let r = request.into_inner();
            let path = parse(&r.path)?;
            self.write_inode(
                &path,
                Command::CompleteFile {
                    path: path.to_string(),
                    length: r.length,
                    now_ms: now_ms(),
                },
            )
            .await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.observe("Delete", async {
            let r = request.into_inner();
            let path = parse(&r.path)?;
            match self
                .master
                .write(Command::Delete {
                    path: path.to_string(),
                    recursive: r.recursive,
                })
                .await?
            {
                Reply::Deleted { inodes } => Ok(pb::DeleteResponse { inodes }),
                other => Err(Status::internal(format!("unexpected reply {other:?}"))),
            }
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(src = %request.get_ref().src, dst = %request.get_ref().dst))]
    async fn rename(
        &self,
        request: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("Rename", async {
            let r = request.into_inner();
            let (src, dst) = (parse(&r.src)?, parse(&r.dst)?);
            self.write_inode(
                &dst,
                Command::Rename {
                    src: src.to_string(),
                    dst: dst.to_string(),
                    now_ms: now_ms(),
                },
            )
            .await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn set_attribute(
        &self,
        request: Request<pb::SetAttributeRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        self.observe("SetAttribute", async {
            let r = request.into_inner();
            let path = parse(&r.path)?;
            let update = AttrUpdate {
                pinned: r.pinned,
                ttl_ms: if r.clear_ttl {
                    Some(None)
                } else {
                    r.ttl_ms.map(Some)
                },
                replication_min: r.replication_min,
                mode: r.mode,
                owner: r.owner,
                group: r.group,
                persist: r
                    .persist
                    .map(|p| match pb::PersistState::try_from(p) {
                        Ok(pb::PersistState::Persisted) => Ok(PersistState::Persisted),
                        Ok(pb::PersistState::ToBePersisted) => Ok(PersistState::ToBePersisted),
                        Ok(pb::PersistState::NotPersisted) => Ok(PersistState::NotPersisted),
                        Err(_) => Err(Status::invalid_argument(format!(
                            "persist: unknown state {p}"
                        ))),
                    })
                    .transpose()?,
            };
            self.write_inode(
                &path,
                Command::SetAttribute {
                    path: path.to_string(),
                    update,
                },
            )
            .await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path, ufs = %request.get_ref().ufs_uri))]
    async fn mount(
        &self,
        request: Request<pb::MountRequest>,
    ) -> Result<Response<pb::MountResponse>, Status> {
        self.observe("Mount", async {
            let r = request.into_inner();
            let path = parse(&r.path)?;
            let spec = MountSpec {
                path: path.to_string(),
                ufs_uri: r.ufs_uri,
                read_only: r.read_only,
                write_type: write_type_from_pb(r.write_type),
                sync_interval_ms: r.sync_interval_ms,
                options: r.options.into_iter().collect(),
                credential_files: r.credential_files.into_iter().collect(),
            };
            match self.master.write(Command::Mount(spec)).await? {
                Reply::Mounted { mount_id } => Ok(pb::MountResponse { mount_id }),
                other => Err(Status::internal(format!("unexpected reply {other:?}"))),
            }
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn unmount(
        &self,
        request: Request<pb::PathRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.observe("Unmount", async {
            let path = parse(&request.get_ref().path)?;
            self.master
                .write(Command::Unmount {
                    path: path.to_string(),
                })
                .await?;
            Ok(pb::Empty {})
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_mount_table(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::MountTable>, Status> {
        self.observe("GetMountTable", async {
            self.master.linearize().await?;
            let mounts = self.master.namespace.mounts().map_err(MasterError::from)?;
            Ok(pb::MountTable {
                mounts: mounts
                    .into_iter()
                    .map(|m| pb::MountPoint {
                        path: m.path,
                        ufs_uri: m.ufs_uri,
                        read_only: m.read_only,
                        write_type: write_type_to_pb(m.write_type) as i32,
                        sync_interval_ms: m.sync_interval_ms,
                        options: m.options.into_iter().collect(),
                        credential_files: m.credential_files.into_iter().collect(),
                        mount_id: m.mount_id,
                    })
                    .collect(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn get_file_block_info(
        &self,
        request: Request<pb::PathRequest>,
    ) -> Result<Response<pb::FileBlockInfo>, Status> {
        self.observe("GetFileBlockInfo", async {
            let path = parse(&request.get_ref().path)?;
            let inode = self.linearized_inode(&path).await?;
            if inode.is_dir() {
                return Err(Status::failed_precondition(format!(
                    "{path} is a directory"
                )));
            }
            let blocks = blocks_of(&inode)
                .map(|(block_id, offset, length)| pb::BlockInfo {
                    block_id,
                    offset,
                    length,
                    locations: self
                        .master
                        .workers
                        .locations(block_id)
                        .into_iter()
                        .map(|(id, addr, tier)| pb::BlockLocation {
                            worker: Some(pb::WorkerAddress {
                                worker_id: id,
                                host: addr.host,
                                rpc_port: addr.rpc_port,
                                data_port: addr.data_port,
                            }),
                            tier,
                        })
                        .collect(),
                })
                .collect();
            Ok(pb::FileBlockInfo {
                file: Some(self.info(&path, &inode)),
                blocks,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(host = %request.get_ref().host))]
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        self.observe("RegisterWorker", async {
            self.master.linearize().await?;
            let r = request.into_inner();
            if r.block_ids.len() != r.block_tiers.len() {
                return Err(Status::invalid_argument(
                    "block_ids and block_tiers differ in length",
                ));
            }
            let worker_id = self.master.workers.register(
                WorkerAddr {
                    host: r.host,
                    rpc_port: r.rpc_port,
                    data_port: r.data_port,
                },
                r.tiers.into_iter().map(tier_from_pb).collect(),
                r.block_ids.into_iter().zip(r.block_tiers).collect(),
                (r.previous_id != 0).then_some(r.previous_id),
            );
            Ok(pb::RegisterWorkerResponse { worker_id })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(worker = request.get_ref().worker_id))]
    async fn worker_heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.observe("WorkerHeartbeat", async {
            self.require_leader()?;
            let r = request.into_inner();
            if r.added_blocks.len() != r.added_tiers.len() {
                return Err(Status::invalid_argument(
                    "added_blocks and added_tiers differ in length",
                ));
            }
            let answer = self.master.workers.heartbeat(
                r.worker_id,
                r.tiers.into_iter().map(tier_from_pb).collect(),
                r.added_blocks.into_iter().zip(r.added_tiers).collect(),
                r.removed_blocks,
                r.cache_hits,
                r.cache_misses,
            );
            Ok(pb::HeartbeatResponse {
                reregister: answer.reregister,
                free_blocks: answer.free_blocks,
                pinned_update: answer.pinned_blocks.is_some(),
                pinned_blocks: answer.pinned_blocks.unwrap_or_default(),
            })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(block = request.get_ref().block_id))]
    async fn commit_block(
        &self,
        request: Request<pb::CommitBlockRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.observe("CommitBlock", async {
            self.require_leader()?;
            let r = request.into_inner();
            if !self
                .master
                .workers
                .commit_block(r.worker_id, r.block_id, r.length, r.tier)
            {
                return Err(Status::failed_precondition(format!(
                    "worker {} is not registered",
                    r.worker_id
                )));
            }
            Ok(pb::Empty {})
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn free(
        &self,
        request: Request<pb::FreeRequest>,
    ) -> Result<Response<pb::FreeResponse>, Status> {
        self.observe("Free", async {
            let r = request.into_inner();
            let path = parse(&r.path)?;
            let root = self.linearized_inode(&path).await?;
            if root.is_dir() && !r.recursive {
                return Err(Status::failed_precondition(format!(
                    "{path} is a directory: free it with recursive"
                )));
            }
            let mut blocks = Vec::new();
            let mut stack = vec![root];
            while let Some(inode) = stack.pop() {
                if inode.pinned {
                    continue;
                }
                if inode.is_dir() {
                    let store = self.master.namespace.store();
                    let internal = |e: StoreError| Status::internal(e.to_string());
                    let mut after: Option<String> = None;
                    loop {
                        let page = store
                            .children(inode.id, after.as_deref(), 1000)
                            .map_err(internal)?;
                        let Some((last, _)) = page.last() else { break };
                        after = Some(last.clone());
                        for (_, id) in page {
                            stack.extend(store.inode(id).map_err(internal)?);
                        }
                    }
                } else {
                    blocks.extend(blocks_of(&inode).map(|(b, _, _)| b));
                }
            }
            let copies = self.master.workers.schedule_free(blocks);
            Ok(pb::FreeResponse { blocks: copies })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_leader(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::LeaderInfo>, Status> {
        self.observe("GetLeader", async {
            let term = self.master.raft.metrics().borrow_watched().current_term;
            Ok(match self.master.leader() {
                Some((id, addr)) => pb::LeaderInfo {
                    leader_id: id,
                    leader_address: addr,
                    term,
                    known: true,
                },
                None => pb::LeaderInfo {
                    leader_id: 0,
                    leader_address: String::new(),
                    term,
                    known: false,
                },
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    #[tracing::instrument(skip_all, fields(hosts = request.get_ref().hosts.len()))]
    async fn drain_workers(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.observe("DrainWorkers", async {
            self.require_leader()?;
            let hosts = request.into_inner().hosts.into_iter().collect();
            let workers = self
                .master
                .workers
                .set_draining(hosts)
                .into_iter()
                .map(|d| pb::DrainState {
                    worker_id: d.id,
                    host: d.host,
                    block_count: d.block_count,
                    sole_blocks: d.sole_blocks,
                })
                .collect();
            Ok(pb::DrainResponse { workers })
        })
        .await
    }

    async fn get_cluster_info(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        self.observe("GetClusterInfo", async {
            let (leader, applied) = {
                let m = self.master.raft.metrics().borrow_watched().clone();
                (
                    m.current_leader,
                    m.last_applied.map(|l| l.index()).unwrap_or(0),
                )
            };
            let masters = self
                .master
                .config
                .peers
                .iter()
                .map(|(id, addr)| pb::MasterInfo {
                    id: *id,
                    address: addr.clone(),
                    role: if Some(*id) == leader {
                        "leader".into()
                    } else {
                        "follower".into()
                    },
                    last_applied: if *id == self.master.config.id {
                        applied
                    } else {
                        0
                    },
                })
                .collect();
            let workers: Vec<pb::WorkerInfo> = self
                .master
                .workers
                .workers()
                .into_iter()
                .map(|w| pb::WorkerInfo {
                    address: Some(pb::WorkerAddress {
                        worker_id: w.id,
                        host: w.addr.host,
                        rpc_port: w.addr.rpc_port,
                        data_port: w.addr.data_port,
                    }),
                    tiers: w
                        .tiers
                        .into_iter()
                        .map(|t| pb::TierUsage {
                            tier: t.tier,
                            capacity_bytes: t.capacity,
                            used_bytes: t.used,
                            holdable_bytes: t.holdable,
                        })
                        .collect(),
                    block_count: w.block_count,
                    last_heartbeat_ms_ago: w.last_heartbeat.elapsed().as_millis() as u64,
                    lost: false,
                    draining: w.draining,
                })
                .collect();
            let (capacity, used) = workers
                .iter()
                .flat_map(|w| &w.tiers)
                .fold((0, 0), |(c, u), t| (c + t.capacity_bytes, u + t.used_bytes));
            let counts = self.master.sync.counts();
            let cached = self
                .master
                .namespace
                .cached_bytes_per_mount(&self.master.workers.cached_blocks())
                .map_err(MasterError::from)?;
            let mounts = self
                .master
                .namespace
                .mounts()
                .map_err(MasterError::from)?
                .into_iter()
                .map(|m| {
                    let c = counts.get(&m.path).cloned().unwrap_or_default();
                    let cached_bytes = cached.get(&m.path).copied().unwrap_or(0);
                    pb::MountStats {
                        path: m.path,
                        ufs_uri: m.ufs_uri,
                        cached_bytes,
                        ufs_total_bytes: c.bytes,
                        file_count: c.files,
                        count_complete: c.complete,
                    }
                })
                .collect();
            Ok(pb::ClusterInfo {
                masters,
                workers,
                mounts,
                capacity_bytes: capacity,
                used_bytes: used,
                inode_count: self
                    .master
                    .namespace
                    .inode_count()
                    .map_err(MasterError::from)?,
                hit_ratio: self.master.workers.hit_ratio(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(kind = request.get_ref().kind, paths = ?request.get_ref().paths))]
    async fn submit_job(
        &self,
        request: Request<pb::JobSpec>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        self.observe("SubmitJob", async {
            let spec = spec_from_pb(request.into_inner())?;
            let job = super::jobs::scheduler::submit(&self.master, spec).await?;
            Ok(job_to_pb(&job))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(id = request.get_ref().id))]
    async fn get_job(&self, request: Request<pb::JobId>) -> Result<Response<pb::JobInfo>, Status> {
        self.observe("GetJob", async {
            let id = request.into_inner().id;
            self.master.linearize().await?;
            let job = self
                .master
                .namespace
                .store()
                .job(id)
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::not_found(format!("job {id}")))?;
            Ok(job_to_pb(&job))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::JobList>, Status> {
        self.observe("ListJobs", async {
            let r = request.into_inner();
            self.master.linearize().await?;
            let limit = match r.limit as usize {
                0 => DEFAULT_PAGE,
                n => n.min(MAX_PAGE),
            };
            let after = (r.after > 0).then_some(r.after);
            let jobs = self
                .master
                .namespace
                .store()
                .jobs(after, limit)
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(pb::JobList {
                jobs: jobs.iter().map(job_to_pb).collect(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(id = request.get_ref().id))]
    async fn cancel_job(
        &self,
        request: Request<pb::JobId>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        self.observe("CancelJob", async {
            let id = request.into_inner().id;
            match self
                .master
                .write(Command::CancelJob {
                    id,
                    now_ms: now_ms(),
                })
                .await?
            {
                Reply::Job(job) => {
                    self.master.jobs.wake();
                    Ok(job_to_pb(&job))
                }
                other => Err(Status::internal(format!("unexpected reply {other:?}"))),
            }
        })
        .await
    }
}

fn spec_from_pb(r: pb::JobSpec) -> Result<JobSpec, Status> {
    let kind = match pb::JobKind::try_from(r.kind) {
        Ok(pb::JobKind::Load) => JobKind::Load,
        Ok(pb::JobKind::Persist) => JobKind::Persist,
        Ok(pb::JobKind::Free) => JobKind::Free,
        Ok(pb::JobKind::Replicate) => JobKind::Replicate,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "kind: unknown job kind {}",
                r.kind
            )));
        }
    };
    Ok(JobSpec {
        kind,
        paths: r.paths,
        replicas: r.replicas.max(1),
        parallelism: r.parallelism,
        bandwidth: r.bandwidth_bytes_per_sec,
        load_metadata: r.load_metadata,
        load_what_fits: r.load_what_fits,
    })
}

pub fn job_to_pb(job: &Job) -> pb::JobInfo {
    let now = now_ms();
    let p = &job.progress;
    pb::JobInfo {
        id: job.id,
        spec: Some(pb::JobSpec {
            kind: match job.spec.kind {
                JobKind::Load => pb::JobKind::Load,
                JobKind::Persist => pb::JobKind::Persist,
                JobKind::Free => pb::JobKind::Free,
                JobKind::Replicate => pb::JobKind::Replicate,
            } as i32,
            paths: job.spec.paths.clone(),
            replicas: job.spec.replicas,
            parallelism: job.spec.parallelism,
            bandwidth_bytes_per_sec: job.spec.bandwidth,
            load_metadata: job.spec.load_metadata,
            load_what_fits: job.spec.load_what_fits,
        }),
        state: match job.state {
            JobState::Pending => pb::JobState::Pending,
            JobState::Running => pb::JobState::Running,
            JobState::Completed => pb::JobState::Completed,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        } as i32,
        planned: p.planned,
        files_total: p.files_total,
        files_done: p.files_done,
        bytes_total: p.bytes_total,
        bytes_done: p.bytes_done,
        files_skipped: p.files_skipped,
        failed_count: p.failed_count,
        failed: p
            .failed
            .iter()
            .map(|f| pb::FailedFile {
                path: f.path.clone(),
                reason: f.reason.clone(),
            })
            .collect(),
        message: job.message.clone().unwrap_or_default(),
        submitted_ms: job.submitted_ms,
        started_ms: job.started_ms.unwrap_or(0),
        finished_ms: job.finished_ms.unwrap_or(0),
        throughput_bytes_per_sec: job.throughput(now),
        eta_seconds: job.eta_seconds(now),
    }
}

fn tier_from_pb(t: pb::TierUsage) -> TierUsage {
    TierUsage {
        tier: t.tier,
        capacity: t.capacity_bytes,
        used: t.used_bytes,
        // Workers that do not say hold up to their capacity.
        holdable: if t.holdable_bytes == 0 {
            t.capacity_bytes
        } else {
            t.holdable_bytes.min(t.capacity_bytes)
        },
    }
}
