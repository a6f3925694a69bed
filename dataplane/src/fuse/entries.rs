//! Entries FUSE makes in the under-storage rather than in Weir alone:
//! symbolic links (`ln -s`), second names (`ln`) and special files
//! (`mknod`, `mkfifo`, a socket's name). Each is made where the store can
//! hold it (a local directory) and refused where it cannot (EPERM; EROFS
//! when read-only; EXDEV across mounts), with a log line saying why.

use super::fs::{WeirFuse, errno};
use crate::client::{FsResult, Maker};
use crate::proto::master as pb;
use fuser::{Errno, Generation, INodeNo, ReplyEntry};
use std::ffi::OsStr;

impl WeirFuse {
    /// The kernel's answer to an entry made (or refused) at `path`.
    pub(super) fn made(
        &self,
        what: &str,
        path: &str,
        made: FsResult<pb::FileInfo>,
        reply: ReplyEntry,
    ) {
        match made {
            Ok(info) => {
                self.remember(&info);
                reply.entry(&self.ttl, &self.attr(&info), Generation(0));
            }
            Err(e) => {
                tracing::info!(%path, error = %e, "{what} refused");
                reply.error(errno(&e))
            }
        }
    }

    pub(super) fn make_symlink(
        &self,
        parent: INodeNo,
        name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let path = match self.writable().and_then(|()| self.child(parent, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let Some(target) = target.to_str() else {
            tracing::info!(%path, target = ?target, "symlink refused: the target is not UTF-8");
            return reply.error(Errno::EINVAL);
        };
        let made = self.rt.block_on(self.fs.symlink(&path, target));
        self.made("symlink", &path, made, reply);
    }

    pub(super) fn make_link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let paths = self.writable().and_then(|()| {
            let existing = self.path_of(ino).ok_or(Errno::ENOENT)?;
            Ok((existing, self.child(newparent, newname)?))
        });
        let (existing, path) = match paths {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        // A new file still being written is complete first.
        if let Err(e) = self.settle(ino) {
            return reply.error(e);
        }
        let made = self.rt.block_on(self.fs.hard_link(&existing, &path));
        self.made("link", &path, made, reply);
    }

    /// A special file by `mode`'s type bits; an empty regular file when
    /// they say a regular file.
    pub(super) fn make_node(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        maker: Maker,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.writable().and_then(|()| self.child(parent, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let made = match crate::ufs::NodeKind::from_type_bits(mode) {
            Some(kind) => self
                .rt
                .block_on(self.fs.mknod(&path, maker, kind, u64::from(rdev))),
            None => self.rt.block_on(async {
                let writer = self.fs.create_as(&path, maker).await?;
                writer.close().await
            }),
        };
        self.made("mknod", &path, made, reply);
    }
}
