//! Writing a file: created on the master, its bytes streamed in frames to
//! one worker (a local one first), which caches them and, by the write
//! type, writes them to the under-storage; committed on the master when
//! closed, deleted when anything fails.

use super::error::{ClientError, FsResult};
use super::fs::FileSystem;
use super::workers::LiveWorker;
use crate::block;
use crate::proto::master as pb;
use crate::wire::{self, Request, Response, WriteRequest};
use std::sync::Arc;
use tokio::net::TcpStream;
use weir_api::WriteType;

/// Bytes buffered by a writer before they go out as one frame.
const WRITE_FRAME: usize = 1 << 20;

/// Who makes a file or directory, and its permission bits: a FUSE
/// caller, whose new entries are theirs (in the under-storage too, where
/// it keeps owners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maker {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Maker {
    /// A request to make `path` as this maker.
    pub fn request(&self, path: &str) -> pb::CreateRequest {
        pb::CreateRequest {
            path: path.into(),
            mode: self.mode,
            owner: self.uid.to_string(),
            group: self.gid.to_string(),
            ..Default::default()
        }
    }
}

impl FileSystem {
    /// Creates a file for writing with `mode`, or with its mount's write
    /// type when `None` (MUST_CACHE outside mounts).
    pub async fn create(
        self: &Arc<Self>,
        path: &str,
        mode: Option<WriteType>,
    ) -> FsResult<FileWriter> {
        self.create_with(path, mode, 0).await
    }

    /// [`FileSystem::create`] with a block size (0: the default).
    pub async fn create_with(
        self: &Arc<Self>,
        path: &str,
        mode: Option<WriteType>,
        block_size: u64,
    ) -> FsResult<FileWriter> {
        let req = pb::CreateRequest {
            path: path.into(),
            recursive: true,
            block_size,
            ..Default::default()
        };
        self.create_from(req, mode).await
    }

    /// A file made by `maker` (a FUSE caller), with its mount's write
    /// type; not its missing directories.
    pub async fn create_as(self: &Arc<Self>, path: &str, maker: Maker) -> FsResult<FileWriter> {
        self.create_from(maker.request(path), None).await
    }

    async fn create_from(
        self: &Arc<Self>,
        req: pb::CreateRequest,
        mode: Option<WriteType>,
    ) -> FsResult<FileWriter> {
        let path = req.path.as_str();
        let info = self
            .master()
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_file(req).await }
            })
            .await?;
        let mode = match mode {
            Some(m) => m,
            None if info.mount_id == 0 => WriteType::MustCache,
            None => {
                let table = self.mount_table().await?;
                table
                    .mounts
                    .iter()
                    .find(|m| m.mount_id == info.mount_id)
                    .map_or(WriteType::MustCache, |m| WriteType::from_pb(m.write_type))
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
        mode: WriteType,
    ) -> FsResult<FileWriter> {
        let ufs = (info.mount_id != 0).then(|| (info.mount_id, info.ufs_relative.clone()));
        if mode != WriteType::MustCache && ufs.is_none() {
            return Err(ClientError::Invalid(format!(
                "{mode:?} needs an under-storage: {path} is not under a mount"
            )));
        }
        if mode == WriteType::AsyncThrough {
            self.set_persist(path, pb::PersistState::ToBePersisted)
                .await?;
        }
        // A worker on this node first (its copy is then read short-circuit), else
        // the file's own worker by the placement rule's score.
        let workers = self.workers().live(self.master()).await?;
        let mut candidates: Vec<&LiveWorker> = workers.iter().collect();
        block::rank(info.id, &mut candidates, |w| w.id);
        candidates.sort_by_key(|w| !self.runs_here(&w.host, &w.node));
        let header = Request::Write(WriteRequest {
            file_id: info.id,
            block_size: info.block_size,
            mode,
            path: path.to_owned(),
            ufs,
        });
        for w in candidates {
            let addr = w.data_addr.clone();
            if self.workers().failed_recently(&addr) {
                continue;
            }
            let Ok(mut conn) = self.workers().connect(&addr).await else {
                self.workers().mark_failed(&addr);
                continue;
            };
            if wire::send(&mut conn, &header).await.is_err() {
                self.workers().mark_failed(&addr);
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
}

/// A file being written (once, sequentially); [`FileWriter::close`]
/// commits it.
#[derive(Debug)]
pub struct FileWriter {
    fs: Arc<FileSystem>,
    path: String,
    /// The file as the master created it.
    info: pb::FileInfo,
    mode: WriteType,
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

    pub fn mode(&self) -> WriteType {
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
            Some(Response::Written { .. }) => self.fs.workers().give_back(&self.addr, conn),
            Some(Response::Error { kind, message }) => {
                return Err(ClientError::Worker { kind, message });
            }
            other => return Err(self.broken(format!("unexpected answer {other:?}"))),
        }
        let req = pb::CompleteFileRequest {
            path: self.path.clone(),
            length: self.written,
        };
        let complete = async {
            let completed = self.fs.master().call(|mut c| {
                let req = req.clone();
                async move { c.complete_file(req).await }
            });
            completed.await.map_err(ClientError::from)
        };
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
