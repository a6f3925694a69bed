//! The file system calls of the master's API: status, create, complete,
//! delete, rename, attributes, block locations and free. Reads are
//! linearizable and load missing paths from the under-storage first.

use super::convert::{now_ms, persist_from_pb, persist_to_pb, stamp};
use crate::block::DEFAULT_BLOCK_SIZE;
use crate::master::command::{AttrUpdate, Command, Reply};
use crate::master::error::MasterError;
use crate::master::metastore::{Inode, PersistState, StoreError};
use crate::master::namespace::Namespace;
use crate::master::node::Proposer;
use crate::master::sync::{MetadataSync, NewEntry};
use crate::master::workers::WorkerRegistry;
use crate::path::WeirPath;
use crate::proto::master as pb;
use crate::ufs::{AttrChange, NodeKind};
use std::sync::Arc;
use tonic::Status;

pub(super) fn parse(raw: &str) -> Result<WeirPath, Status> {
    WeirPath::parse(raw).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The file system side of the API.
#[derive(Debug, Clone)]
pub struct FsApi {
    pub(super) proposer: Proposer,
    pub(super) namespace: Namespace,
    pub(super) sync: Arc<MetadataSync>,
    pub(super) workers: Arc<WorkerRegistry>,
}

impl FsApi {
    pub(super) fn info(&self, path: &WeirPath, inode: &Inode) -> pb::FileInfo {
        let cached_percent = if !inode.is_file() || inode.length == 0 {
            100
        } else {
            let cached: u64 = inode
                .blocks()
                .filter(|b| self.workers.is_cached(b.id))
                .map(|b| b.len)
                .sum();
            (cached * 100 / inode.length) as u32
        };
        let (ufs_path, mount_id, ufs_relative) = self
            .namespace
            .mount_of(path)
            .ok()
            .flatten()
            .map(|m| {
                let rest = WeirPath::parse(m.path())
                    .ok()
                    .and_then(|mp| path.strip_prefix(&mp).map(str::to_owned))
                    .unwrap_or_default();
                let full = if rest.is_empty() {
                    m.spec.ufs_uri.clone()
                } else {
                    format!("{}/{rest}", m.spec.ufs_uri.trim_end_matches('/'))
                };
                (full, m.mount_id, rest)
            })
            .unwrap_or_default();
        pb::FileInfo {
            id: inode.id,
            path: path.to_string(),
            // The name asked for: a file with several has one record.
            name: path.name().unwrap_or_default().to_owned(),
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
            symlink_target: inode.symlink_target().unwrap_or_default(),
            node_kind: inode
                .node()
                .map(|(k, _)| k.name().into())
                .unwrap_or_default(),
            rdev: inode.node().map_or(0, |(_, rdev)| rdev),
            ctime_ms: inode
                .ufs_fingerprint
                .as_deref()
                .and_then(crate::ufs::Fingerprint::parse)
                .and_then(|f| crate::ufs::change_time_ms(&f.version))
                .unwrap_or(inode.mtime_ms),
            // Only a path the under-storage has (as far as Weir knows).
            ufs_path: if inode.persist == PersistState::Persisted {
                ufs_path
            } else {
                String::new()
            },
            ufs_fingerprint: match inode.persist {
                PersistState::Persisted => inode.ufs_fingerprint.clone().unwrap_or_default(),
                _ => String::new(),
            },
            mount_id,
            ufs_relative,
            nlink: self.namespace.link_count(inode).unwrap_or(1),
        }
    }

    pub(super) async fn write_inode(
        &self,
        path: &WeirPath,
        cmd: Command,
    ) -> Result<pb::FileInfo, Status> {
        match self.proposer.write(cmd).await? {
            Reply::Inode(inode) => {
                // A rename's reply is the inode at its new path.
                Ok(self.info(path, &inode))
            }
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// The inode at `path` as of a linearizable read, loading it from the
    /// under-storage when the namespace does not have it yet.
    pub(super) async fn linearized_inode(&self, path: &WeirPath) -> Result<Inode, Status> {
        self.proposer.linearize().await?;
        let found = self
            .sync
            .resolve(path)
            .await?
            .ok_or_else(|| Status::not_found(path.to_string()))?;
        // What the namespace knows, checked against the under-storage as
        // the mount's sync policy says.
        self.sync
            .validate(path, found)
            .await?
            .ok_or_else(|| Status::not_found(path.to_string()))
    }

    pub async fn get_status(&self, request: pb::PathRequest) -> Result<pb::FileInfo, Status> {
        let path = parse(&request.path)?;
        let inode = self.linearized_inode(&path).await?;
        Ok(self.info(&path, &inode))
    }

    pub async fn get_status_by_id(
        &self,
        request: pb::InodeRequest,
    ) -> Result<pb::FileInfo, Status> {
        let id = request.id;
        self.proposer.linearize().await?;
        let path = self
            .namespace
            .path_of(id)
            .map_err(MasterError::from)?
            .ok_or_else(|| Status::not_found(format!("inode {id}")))?;
        let inode = self.linearized_inode(&path).await?;
        Ok(self.info(&path, &inode))
    }

    pub async fn create_directory(
        &self,
        request: pb::CreateRequest,
    ) -> Result<pb::FileInfo, Status> {
        let r = request;
        let path = parse(&r.path)?;
        let stamp = stamp(r.mode, r.owner, r.group, 0o755);
        let cmd = Command::CreateDirectory {
            path: path.to_string(),
            recursive: r.recursive,
            stamp,
        };
        let inode = self.sync.create_directory(&path, cmd).await?;
        Ok(self.info(&path, &inode))
    }

    pub async fn create_file(&self, request: pb::CreateRequest) -> Result<pb::FileInfo, Status> {
        let r = request;
        let path = parse(&r.path)?;
        let stamp = stamp(r.mode, r.owner, r.group, 0o644);
        let linked;
        let new = if !r.symlink_target.is_empty() {
            Some(NewEntry::Symlink(&r.symlink_target))
        } else if !r.node_kind.is_empty() {
            let kind = NodeKind::from_name(&r.node_kind).ok_or_else(|| {
                Status::invalid_argument(format!("node_kind: unknown kind {:?}", r.node_kind))
            })?;
            Some(NewEntry::Node(kind, r.rdev))
        } else if !r.hard_link_to.is_empty() {
            linked = parse(&r.hard_link_to)?;
            Some(NewEntry::HardLink(&linked))
        } else {
            None
        };
        if let Some(new) = new {
            let inode = self.sync.create_entry(&path, new, &stamp).await?;
            return Ok(self.info(&path, &inode));
        }
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
    }

    pub async fn complete_file(
        &self,
        request: pb::CompleteFileRequest,
    ) -> Result<pb::FileInfo, Status> {
        let r = request;
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
    }

    pub async fn delete(&self, request: pb::DeleteRequest) -> Result<pb::DeleteResponse, Status> {
        let r = request;
        let path = parse(&r.path)?;
        match self.sync.delete(&path, r.recursive).await? {
            Reply::Deleted { inodes } => Ok(pb::DeleteResponse { inodes }),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn rename(&self, request: pb::RenameRequest) -> Result<pb::FileInfo, Status> {
        let r = request;
        let (src, dst) = (parse(&r.src)?, parse(&r.dst)?);
        let inode = self.sync.rename(&src, &dst, now_ms()).await?;
        Ok(self.info(&dst, &inode))
    }

    pub async fn set_attribute(
        &self,
        request: pb::SetAttributeRequest,
    ) -> Result<pb::FileInfo, Status> {
        let r = request;
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
            persist: r.persist.map(persist_from_pb).transpose()?,
        };
        let change = AttrChange {
            mode: update.mode,
            uid: r.uid,
            gid: r.gid,
            mtime_ms: r.mtime_ms,
        };
        if !change.is_empty() {
            let rest = AttrUpdate {
                mode: None,
                ..update.clone()
            };
            if rest != AttrUpdate::default() {
                return Err(Status::invalid_argument(
                    "mode, owner and times are set on their own, not with other attributes",
                ));
            }
            let inode = self.sync.change_attributes(&path, change, now_ms()).await?;
            return Ok(self.info(&path, &inode));
        }
        if update.persist == Some(PersistState::Persisted) {
            // Persisted is the under-storage's word: its version is
            // recorded with it, or the call fails.
            let rest = AttrUpdate {
                persist: None,
                ..update
            };
            if rest != AttrUpdate::default() {
                self.write_inode(
                    &path,
                    Command::SetAttribute {
                        path: path.to_string(),
                        update: rest,
                    },
                )
                .await?;
            }
            let inode = self.sync.mark_persisted(&path).await?;
            return Ok(self.info(&path, &inode));
        }
        self.write_inode(
            &path,
            Command::SetAttribute {
                path: path.to_string(),
                update,
            },
        )
        .await
    }

    pub async fn get_file_block_info(
        &self,
        request: pb::PathRequest,
    ) -> Result<pb::FileBlockInfo, Status> {
        let path = parse(&request.path)?;
        let inode = self.linearized_inode(&path).await?;
        if inode.is_dir() {
            return Err(Status::failed_precondition(format!(
                "{path} is a directory"
            )));
        }
        if let Some(target) = inode.symlink_target() {
            // Its target is resolved by the reader, in the reader's own
            // namespace: Weir never reads through a link.
            return Err(Status::failed_precondition(format!(
                "{path} is a symbolic link to {target}"
            )));
        }
        let blocks = inode
            .blocks()
            .map(|b| pb::BlockInfo {
                block_id: b.id,
                offset: b.offset,
                length: b.len,
                locations: self
                    .workers
                    .locations(b.id)
                    .into_iter()
                    .map(|l| pb::BlockLocation {
                        worker: Some(pb::WorkerAddress {
                            worker_id: l.worker,
                            host: l.addr.host,
                            rpc_port: l.addr.rpc_port,
                            data_port: l.addr.data_port,
                            node: l.node,
                        }),
                        tier: l.tier,
                    })
                    .collect(),
            })
            .collect();
        Ok(pb::FileBlockInfo {
            file: Some(self.info(&path, &inode)),
            blocks,
        })
    }

    pub async fn free(&self, request: pb::FreeRequest) -> Result<pb::FreeResponse, Status> {
        let r = request;
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
                let store = self.namespace.store();
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
                blocks.extend(inode.blocks().map(|b| b.id));
            }
        }
        let copies = self.workers.schedule_free(blocks);
        Ok(pb::FreeResponse { blocks: copies })
    }
}
