//! Changing a file that exists: `open` for writing, `O_APPEND`,
//! `O_TRUNC`, `truncate`. Weir's files never change under one inode id
//! (a block belongs to one version of one file), so a change is a new
//! version: the file's bytes are copied into a scratch file when it is
//! opened, changed there at any offset, and on close written as a new
//! file beside it that is renamed over it, in the under-storage as in
//! the namespace. Readers see the old version whole until the close,
//! then the new one whole; the new version has the old one's mode and
//! owner. Every handle writing one inode shares its scratch copy, so they
//! see each other's writes, as on a local file system.

use super::fs::{WeirFuse, errno};
use super::handles::Handle;
use super::scratch::Rewrite;
use crate::client::Maker;
use crate::proto::master as pb;
use fuser::{Errno, FileHandle, FopenFlags, INodeNo, OpenFlags, ReplyOpen};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes copied per read or write while seeding and committing.
const CHUNK: usize = 1 << 20;

/// Names of the new versions being written, unique in this process.
static NEXT: AtomicU64 = AtomicU64::new(0);

impl WeirFuse {
    /// `path` (`info`) opened for writing: its bytes copied into a scratch
    /// file unless the open truncates it.
    pub(super) fn start_rewrite(
        &self,
        path: &str,
        info: &pb::FileInfo,
        truncate: bool,
    ) -> Result<Rewrite, Errno> {
        let mut rewrite = Rewrite::new(path).map_err(|e| {
            tracing::warn!(%path, error = %e, "no scratch file for a rewrite");
            Errno::EIO
        })?;
        if truncate {
            // Emptying a file that had bytes is a change.
            rewrite.set_len(0).map_err(|_| Errno::EIO)?;
            if info.length > 0 {
                rewrite.changed();
            }
            return Ok(rewrite);
        }
        if info.length == 0 {
            return Ok(rewrite);
        }
        let seeded: Result<(), Errno> = self.rt.block_on(async {
            let mut reader = self.fs.open(path).await.map_err(|e| errno(&e))?;
            let mut buf = vec![0; CHUNK];
            loop {
                let at = rewrite.len();
                let n = reader.read_at(at, &mut buf).await.map_err(|e| errno(&e))?;
                if n == 0 {
                    return Ok(());
                }
                rewrite.write_at(at, &buf[..n]).map_err(|_| Errno::EIO)?;
            }
        });
        seeded?;
        // The copy is the file as it is: nothing to commit yet.
        rewrite.committed();
        Ok(rewrite)
    }

    /// Writes a changed file's new version and renames it over the old
    /// one; nothing is done when nothing changed. Errors reach the
    /// application's close().
    pub(super) fn commit_rewrite(&self, rewrite: &mut Rewrite) -> Result<(), Errno> {
        if !rewrite.is_dirty() {
            return Ok(());
        }
        let path = rewrite.path.clone();
        // Short whatever the file's name (a 255-byte name still fits).
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        let beside = format!(
            "{dir}/.weir-rewrite-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let committed = self.rt.block_on(async {
            // The new version is made with the mode and owner the file
            // has now (a chmod while it was open included).
            let old = match self.fs.status(&path).await {
                Ok(old) => old,
                // Removed while open: what was written goes with it, as
                // with any file unlinked while open.
                Err(e) if errno(&e) == Errno::ENOENT => return Ok(None),
                Err(e) => return Err(e),
            };
            let attr = self.attr(&old);
            let maker = Maker {
                mode: u32::from(attr.perm),
                uid: attr.uid,
                gid: attr.gid,
            };
            let mut writer = self.fs.create_as(&beside, maker).await?;
            let mut buf = vec![0; CHUNK];
            let mut at = 0;
            while at < rewrite.len() {
                let n = rewrite
                    .read_at(at, &mut buf)
                    .map_err(|e| crate::client::ClientError::Invalid(e.to_string()))?;
                if n == 0 {
                    break;
                }
                if let Err(e) = writer.write(&buf[..n]).await {
                    writer.abort().await;
                    return Err(e);
                }
                at += n as u64;
            }
            writer.close().await?;
            let new = match self.fs.rename(&beside, &path).await {
                Ok(new) => new,
                Err(e) => {
                    let _ = self.fs.delete(&beside, false).await;
                    return Err(e);
                }
            };
            Ok(Some(new))
        });
        let new = committed.map_err(|e| {
            tracing::warn!(%path, error = %e, "writing the new version of a file failed");
            errno(&e)
        })?;
        rewrite.committed();
        if let Some(new) = new {
            self.remember(&new);
        }
        Ok(())
    }

    /// `open` with write access: refused where Weir cannot write the
    /// path, else a rewrite handle.
    pub(super) fn open_to_write(
        &self,
        ino: INodeNo,
        path: &str,
        flags: OpenFlags,
        reply: ReplyOpen,
    ) {
        if self.read_only_at(path) {
            return reply.error(Errno::EROFS);
        }
        let info = match self.rt.block_on(self.fs.status(path)) {
            Ok(info) if info.is_dir => return reply.error(Errno::EISDIR),
            Ok(info) if self.ino_of(&info) != ino.0 => {
                return reply.error(self.newer_version(path));
            }
            Ok(info) => info,
            Err(e) => return reply.error(errno(&e)),
        };
        let truncate = flags.0 & libc::O_TRUNC != 0;
        match self.shared_rewrite(ino, path, &info, truncate) {
            Ok(rewrite) => {
                let fh = self.handles.add_writing(Handle::Rewrite(rewrite), ino);
                reply.opened(fh, FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    /// The scratch copy every handle writing `ino` shares: the open one
    /// (emptied when this open truncates), else a new one.
    fn shared_rewrite(
        &self,
        ino: INodeNo,
        path: &str,
        info: &pb::FileInfo,
        truncate: bool,
    ) -> Result<Arc<Mutex<Rewrite>>, Errno> {
        let rewrite = match self.handles.rewrite_of(ino) {
            Some(open) => open,
            None => self
                .handles
                .share_rewrite(ino, self.start_rewrite(path, info, truncate)?),
        };
        if truncate {
            rewrite
                .lock()
                .expect("rewrite")
                .set_len(0)
                .map_err(|_| Errno::EIO)?;
        }
        Ok(rewrite)
    }

    /// A new file's handle asked for more than writes front to back (a
    /// write elsewhere, a truncate, a write after a commit): what it wrote
    /// is committed, and it goes on as a rewrite of that file.
    pub(super) fn become_rewrite(&self, ino: INodeNo, h: &mut Handle) -> Result<(), Errno> {
        let Handle::Write(w) = h else {
            return Ok(());
        };
        if let Some(w) = w.take() {
            self.commit(*w)?;
        }
        let path = self.path_of(ino).ok_or(Errno::ENOENT)?;
        let info = self
            .rt
            .block_on(self.fs.status(&path))
            .map_err(|e| errno(&e))?;
        *h = Handle::Rewrite(self.shared_rewrite(ino, &path, &info, false)?);
        Ok(())
    }

    /// Before another call looks at `ino`: new files being written to it
    /// are committed as they are so far (`touch` then `utimensat`; the
    /// kernel releases a handle after close() returns), and rewrites are
    /// committed, so what was written is what the call sees.
    pub(super) fn settle(&self, ino: INodeNo) -> Result<(), Errno> {
        for h in self.handles.writing(ino) {
            if let Handle::Write(w) = &mut *h.lock().expect("handle")
                && let Some(w) = w.take()
            {
                self.commit(*w)?;
            }
        }
        match self.handles.rewrite_of(ino) {
            Some(r) => self.commit_rewrite(&mut r.lock().expect("rewrite")),
            None => Ok(()),
        }
    }

    /// `truncate`/`ftruncate` to `size`: in the open rewrite of the file
    /// if there is one, else as a rewrite of its own.
    pub(super) fn truncate(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        path: &str,
        info: &pb::FileInfo,
        size: u64,
    ) -> Result<(), Errno> {
        let open = fh.and_then(|fh| self.handles.get(fh));
        if let Some(h) = &open {
            self.become_rewrite(ino, &mut h.lock().expect("handle"))?;
        }
        if let Some(r) = self.handles.rewrite_of(ino) {
            return r
                .lock()
                .expect("rewrite")
                .set_len(size)
                .map_err(|_| Errno::EIO);
        }
        if size == info.length {
            return Ok(());
        }
        if info.is_dir {
            return Err(Errno::EISDIR);
        }
        if self.read_only_at(path) {
            return Err(Errno::EROFS);
        }
        let mut rewrite = self.start_rewrite(path, info, size == 0)?;
        rewrite.set_len(size).map_err(|_| Errno::EIO)?;
        self.commit_rewrite(&mut rewrite)
    }

    /// The length of `ino` while a handle rewrites it.
    pub(super) fn rewriting_len(&self, ino: INodeNo) -> Option<u64> {
        let r = self.handles.rewrite_of(ino)?;
        let len = r.lock().expect("rewrite").len();
        Some(len)
    }
}
