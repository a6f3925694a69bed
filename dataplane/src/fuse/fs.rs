//! The state of a mounted Weir file system: the client, the inode number
//! to path map the kernel's lookups build, attributes as the kernel sees
//! them, and the one mapping of client errors to errnos.

use super::MAX_READ;
use super::handles::{Handle, Handles};
use super::passthrough::LocalReads;
use crate::client::{ClientError, FileSystem, FileWriter, Maker};
use crate::proto::master as pb;
use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, ReplyEmpty};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) struct WeirFuse {
    pub(super) rt: tokio::runtime::Handle,
    pub(super) fs: Arc<FileSystem>,
    pub(super) root: String,
    pub(super) read_only: bool,
    pub(super) ttl: Duration,
    /// Owner and group shown for every entry when set (a dataset's
    /// `owner`); else each entry's own, by id.
    pub(super) owner: (Option<u32>, Option<u32>),
    /// Inode number -> namespace path, learnt from lookups.
    pub(super) paths: Mutex<HashMap<u64, String>>,
    pub(super) root_id: AtomicU64,
    pub(super) handles: Handles,
    pub(super) reads: LocalReads,
}

/// What an entry is to the kernel.
pub(super) fn kind_of(info: &pb::FileInfo) -> FileType {
    if info.is_dir {
        FileType::Directory
    } else if !info.symlink_target.is_empty() {
        FileType::Symlink
    } else if let Some(kind) = crate::ufs::NodeKind::from_name(&info.node_kind) {
        match kind {
            crate::ufs::NodeKind::Fifo => FileType::NamedPipe,
            crate::ufs::NodeKind::Socket => FileType::Socket,
            crate::ufs::NodeKind::CharDevice => FileType::CharDevice,
            crate::ufs::NodeKind::BlockDevice => FileType::BlockDevice,
        }
    } else {
        FileType::RegularFile
    }
}

pub(super) fn errno(e: &ClientError) -> Errno {
    use tonic::Code;
    match e {
        ClientError::Api(weir_api::ApiError::Status(s)) => match s.code() {
            Code::NotFound => Errno::ENOENT,
            Code::AlreadyExists => Errno::EEXIST,
            // mv across mounts: callers such as mv(1) then copy and delete.
            Code::InvalidArgument if s.message().contains("different mounts") => Errno::EXDEV,
            Code::InvalidArgument => Errno::EINVAL,
            Code::PermissionDenied if s.message().contains("read-only") => Errno::EROFS,
            Code::PermissionDenied => Errno::EACCES,
            Code::FailedPrecondition => {
                let m = s.message();
                if m.contains("not empty") {
                    Errno::ENOTEMPTY
                } else if m.contains("not a directory") || m.contains("is a file") {
                    Errno::ENOTDIR
                } else if m.contains("is a directory") {
                    Errno::EISDIR
                } else {
                    Errno::EPERM
                }
            }
            _ => Errno::EIO,
        },
        ClientError::Worker {
            kind: crate::wire::ErrorKind::NotFound,
            ..
        } => Errno::ENOENT,
        ClientError::Worker {
            kind: crate::wire::ErrorKind::NoSpace,
            ..
        } => Errno::ENOSPC,
        ClientError::Invalid(_) => Errno::EINVAL,
        ClientError::Stale { .. } => Errno::ESTALE,
        ClientError::Worker {
            kind: crate::wire::ErrorKind::Denied,
            ..
        } => Errno::EACCES,
        _ => Errno::EIO,
    }
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl WeirFuse {
    pub(super) fn ino_of(&self, info: &pb::FileInfo) -> u64 {
        if info.id == self.root_id.load(Ordering::Relaxed) {
            1
        } else if info.id == 1 {
            // Weir's root is only reachable when it is the mounted path.
            self.root_id.load(Ordering::Relaxed)
        } else {
            info.id
        }
    }

    pub(super) fn attr(&self, info: &pb::FileInfo) -> FileAttr {
        let kind = kind_of(info);
        let t = time(info.mtime_ms);
        FileAttr {
            ino: INodeNo(self.ino_of(info)),
            size: info.length,
            blocks: info.length.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: if info.ctime_ms == 0 {
                t
            } else {
                time(info.ctime_ms)
            },
            crtime: t,
            kind,
            perm: (info.mode & 0o7777) as u16,
            nlink: if info.is_dir { 2 } else { info.nlink.max(1) },
            uid: self
                .owner
                .0
                .or_else(|| info.owner.parse().ok())
                .unwrap_or(0),
            gid: self
                .owner
                .1
                .or_else(|| info.group.parse().ok())
                .unwrap_or(0),
            rdev: info.rdev as u32,
            blksize: MAX_READ,
            flags: 0,
        }
    }

    /// What a `setattr` asks to change beyond what `info` already shows:
    /// empty when it changes nothing (`chmod` to the same mode, a `chown`
    /// to the shown owner), so such calls succeed without a round trip.
    pub(super) fn attribute_change(
        &self,
        info: &pb::FileInfo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        mtime: Option<fuser::TimeOrNow>,
    ) -> crate::ufs::AttrChange {
        let shown = self.attr(info);
        let mtime_ms = mtime.map(|t| {
            let at = match t {
                fuser::TimeOrNow::SpecificTime(at) => at,
                fuser::TimeOrNow::Now => std::time::SystemTime::now(),
            };
            at.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        });
        crate::ufs::AttrChange {
            mode: mode
                .map(|m| m & 0o7777)
                .filter(|m| *m != u32::from(shown.perm)),
            uid: uid.filter(|u| *u != shown.uid),
            gid: gid.filter(|g| *g != shown.gid),
            mtime_ms: mtime_ms.filter(|ms| *ms != info.mtime_ms),
        }
    }

    /// Whether writes at `path` are refused with EROFS: the whole FUSE
    /// mount, or the Weir mount holding the path, is read-only.
    pub(super) fn read_only_at(&self, path: &str) -> bool {
        let read_only_mount = || {
            let table = self.rt.block_on(self.fs.mount_table()).ok()?;
            let mount = table
                .mounts
                .iter()
                .filter(|m| path == m.path || path.starts_with(&format!("{}/", m.path)))
                .max_by_key(|m| m.path.len())?;
            Some(mount.read_only)
        };
        self.read_only || read_only_mount().unwrap_or(false)
    }

    pub(super) fn path_of(&self, ino: INodeNo) -> Option<String> {
        if ino.0 == 1 {
            return Some(self.root.clone());
        }
        if let Some(path) = self.paths.lock().expect("paths").get(&ino.0) {
            return Some(path.clone());
        }
        // An inode the kernel learnt from an earlier FUSE process of this
        // mount: the master knows where it is now.
        let id = if ino.0 == self.root_id.load(Ordering::Relaxed) {
            1
        } else {
            ino.0
        };
        let info = self.rt.block_on(self.fs.status_by_id(id)).ok()?;
        let inside = self.root == "/"
            || info.path == self.root
            || info.path.starts_with(&format!("{}/", self.root));
        if !inside {
            return None;
        }
        self.remember(&info);
        Some(info.path)
    }

    pub(super) fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        // NAME_MAX, as the kernel's own file systems say it.
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let dir = self.path_of(parent).ok_or(Errno::ENOENT)?;
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        Ok(if dir == "/" {
            format!("/{name}")
        } else {
            format!("{dir}/{name}")
        })
    }

    pub(super) fn remember(&self, info: &pb::FileInfo) {
        let ino = self.ino_of(info);
        if ino != 1 {
            self.paths
                .lock()
                .expect("paths")
                .insert(ino, info.path.clone());
        }
    }

    /// The answer to an open of an inode whose path now holds a newer
    /// version (rewritten, or changed in the under-storage): ESTALE, on
    /// which the kernel looks the path up again and opens the new inode.
    /// Opening the new version under the old inode would mix the two in
    /// the kernel (its cached pages, a passthrough reader of the old).
    pub(super) fn newer_version(&self, path: &str) -> Errno {
        tracing::debug!(%path, "opened under an older inode; the kernel looks it up again");
        Errno::ESTALE
    }

    /// Who makes an entry: the caller, with `mode` (the master gives it
    /// the group of a set-group-id directory, as POSIX file systems do).
    pub(super) fn maker(&self, req: &fuser::Request, mode: u32) -> Maker {
        Maker {
            mode,
            uid: req.uid(),
            gid: req.gid(),
        }
    }

    /// Deletes `name` if it is a directory (`dir`) or a file (`!dir`).
    pub(super) fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let path = match self.writable().and_then(|()| self.child(parent, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let result = self.rt.block_on(self.fs.status(&path)).and_then(|info| {
            if info.is_dir != dir {
                return Ok(false);
            }
            // A new file still being committed is committed first, so its
            // commit does not come after the delete.
            if let Err(e) = self.settle(INodeNo(self.ino_of(&info))) {
                tracing::info!(%path, errno = ?e, "a file deleted while its commit failed");
            }
            self.rt.block_on(self.fs.delete(&path, false))?;
            // A file with other names stays: its inode is found by one of
            // those from now on.
            let ino = self.ino_of(&info);
            let mut paths = self.paths.lock().expect("paths");
            if paths.get(&ino) == Some(&path) {
                paths.remove(&ino);
            }
            Ok(true)
        });
        match result {
            Ok(true) => reply.ok(),
            Ok(false) if dir => reply.error(Errno::ENOTDIR),
            Ok(false) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Commits a writer; errors reach the application's close().
    pub(super) fn commit(&self, writer: FileWriter) -> Result<(), Errno> {
        let path = writer.written();
        self.rt.block_on(writer.close()).map(|_| ()).map_err(|e| {
            tracing::warn!(bytes = path, error = %e, "committing a file failed");
            errno(&e)
        })
    }

    /// The handle `fh`; one an earlier FUSE process opened is opened again
    /// here (a file for reading, a directory listed from its start), so
    /// applications keep reading through a takeover. A file it was writing
    /// is lost with it: that handle stays unknown (EBADF).
    pub(super) fn handle_or_inherited(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        dir: bool,
    ) -> Option<Arc<Mutex<Handle>>> {
        if let Some(h) = self.handles.get(fh) {
            return Some(h);
        }
        if !self.handles.inherited(fh) {
            return None;
        }
        let path = self.path_of(ino)?;
        let handle = if dir {
            Handle::dir(path)
        } else {
            Handle::read(self.rt.block_on(self.fs.open(&path)).ok()?, None)
        };
        tracing::debug!(fh = fh.0, ino = ino.0, "reopened an inherited handle");
        Some(self.handles.get_or_insert(fh, handle))
    }

    /// A file being written: its size is what has been written so far.
    pub(super) fn attr_written(&self, ino: INodeNo, written: u64) -> FileAttr {
        let mut attr = self.attr(&pb::FileInfo {
            length: written,
            mode: 0o644,
            ..Default::default()
        });
        attr.ino = ino;
        attr
    }
}
