//! The FUSE callbacks: each turns a kernel request into calls on the
//! client and one reply. New files are written front to back through
//! `create`; files that exist are changed through a rewrite
//! ([`super::rewrite`]); both are committed when closed.

use super::fs::{WeirFuse, errno, kind_of};
use super::handles::Handle;
use super::{DIR_PAGE, MAX_READ, READAHEAD};
use crate::proto::master as pb;
use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

impl Filesystem for WeirFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(READAHEAD);
        let _ = config.set_max_write(MAX_READ);
        // Readahead requests are "background" requests: let a whole window
        // of them be in flight across the FUSE threads.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        if self.reads.passthrough() {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if !ok {
                tracing::info!("kernel has no FUSE passthrough; reading through the daemon");
            }
            self.reads.set_passthrough(ok);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            // A name Weir cannot hold is in no Weir directory; creating
            // one is refused (EINVAL).
            Err(Errno::EINVAL) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        match self.rt.block_on(self.fs.status(&path)) {
            Ok(mut info) => {
                self.remember(&info);
                // A file open for writing: its size as written so far (the
                // kernel takes a lookup's attributes as the inode's).
                match self.rewriting_len(INodeNo(self.ino_of(&info))) {
                    Some(len) => {
                        info.length = len;
                        reply.entry(&Duration::ZERO, &self.attr(&info), Generation(0));
                    }
                    None => reply.entry(&self.ttl, &self.attr(&info), Generation(0)),
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(written) = self.handles.being_written(fh) {
            return reply.attr(&Duration::ZERO, &self.attr_written(ino, written));
        }
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.rt.block_on(self.fs.status(&path)) {
            Ok(mut info) => match self.rewriting_len(ino) {
                Some(len) => {
                    info.length = len;
                    reply.attr(&Duration::ZERO, &self.attr(&info))
                }
                None => reply.attr(&self.ttl, &self.attr(&info)),
            },
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // A new file is streamed front to back: only no-op truncations
        // are possible while it is written (O_TRUNC on a fresh file).
        let only_size = mode.is_none() && uid.is_none() && gid.is_none() && mtime.is_none();
        if let Some(written) = self.handles.being_written(fh)
            && only_size
            && size.is_none_or(|s| s == written)
        {
            return reply.attr(&Duration::ZERO, &self.attr_written(ino, written));
        }
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if let Err(e) = self.settle(ino) {
            return reply.error(e);
        }
        let info = match self.rt.block_on(self.fs.status(&path)) {
            Ok(info) => info,
            Err(e) => return reply.error(errno(&e)),
        };
        if let Some(size) = size
            && let Err(e) = self.truncate(ino, fh, &path, &info, size)
        {
            return reply.error(e);
        }
        let info = match self.rewriting_len(ino) {
            Some(length) => pb::FileInfo { length, ..info },
            None if size.is_some() => match self.rt.block_on(self.fs.status(&path)) {
                Ok(info) => info,
                Err(e) => return reply.error(errno(&e)),
            },
            None => info,
        };
        let change = self.attribute_change(&info, mode, uid, gid, mtime);
        if change.is_empty() {
            return reply.attr(&self.ttl, &self.attr(&info));
        }
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        match self.rt.block_on(self.fs.change_attributes(&path, change)) {
            Ok(info) => reply.attr(&self.ttl, &self.attr(&info)),
            Err(e) => {
                tracing::info!(%path, error = %e, "chmod, chown or touch refused");
                reply.error(errno(&e))
            }
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.writable().and_then(|()| self.child(parent, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let maker = self.maker(req, mode & !umask & 0o7777);
        let made = self.rt.block_on(self.fs.mkdir(&path, maker));
        self.made("mkdir", &path, made, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let paths = self
            .writable()
            .and_then(|()| Ok((self.child(parent, name)?, self.child(newparent, newname)?)));
        let (src, dst) = match paths {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Ok(info) = self.rt.block_on(self.fs.status(&src))
            && let Err(e) = self.settle(INodeNo(self.ino_of(&info)))
        {
            return reply.error(e);
        }
        match self.rt.block_on(self.fs.rename(&src, &dst)) {
            Ok(info) => {
                self.remember(&info);
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if let Err(e) = self.settle(ino) {
            return reply.error(e);
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return self.open_to_write(ino, &path, flags, reply);
        }
        let reader = match self.rt.block_on(self.fs.open(&path)) {
            Ok(r) => r,
            Err(e) => return reply.error(errno(&e)),
        };
        if self.ino_of(reader.info()) != ino.0 {
            return reply.error(self.newer_version(&path));
        }
        if self.reads.passthrough()
            && reader.info().length > 0
            && let Some(backing) = self
                .reads
                .backing(&self.rt, &self.fs, ino.0, &reader, &reply)
        {
            let fh = self
                .handles
                .add(Handle::read(reader, Some(backing.clone())));
            reply.opened_passthrough(fh, FopenFlags::empty(), &backing.id);
            return;
        }
        let local = reader.local_blocks();
        let fh = self.handles.add(Handle::read(reader, None));
        self.reads.track(fh, local);
        reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(reply) = self.reads.read(&self.rt, fh, offset, size, reply) else {
            return;
        };
        let Some(h) = self.handle_or_inherited(ino, fh, false) else {
            return reply.error(Errno::EBADF);
        };
        let mut h = h.lock().expect("handle");
        let (reader, buf) = match &mut *h {
            Handle::Read { reader, buf, .. } => (reader, buf),
            Handle::Rewrite(r) => {
                let mut buf = vec![0; size as usize];
                return match r.lock().expect("rewrite").read_at(offset, &mut buf) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(_) => reply.error(Errno::EIO),
                };
            }
            _ => return reply.error(Errno::EBADF),
        };
        if buf.len() < size as usize {
            buf.resize(size as usize, 0);
        }
        let buf = &mut buf[..size as usize];
        match self.rt.block_on(reader.read_at(offset, buf)) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => {
                tracing::warn!(error = %e, "read failed");
                reply.error(errno(&e))
            }
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.writable().and_then(|()| self.child(parent, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let maker = self.maker(req, mode & !umask & 0o7777);
        let read_only = flags & libc::O_ACCMODE == libc::O_RDONLY;
        match self.rt.block_on(self.fs.create_as(&path, maker)) {
            Ok(w) => {
                let info = w.info().clone();
                self.remember(&info);
                // Opened for reading only: nothing will be written, so the
                // empty file is complete now, not when the kernel releases.
                let w = if read_only {
                    if let Err(e) = self.commit(w) {
                        return reply.error(e);
                    }
                    None
                } else {
                    Some(Box::new(w))
                };
                let fh = self
                    .handles
                    .add_writing(Handle::Write(w), INodeNo(self.ino_of(&info)));
                reply.created(
                    &Duration::ZERO,
                    &self.attr(&info),
                    Generation(0),
                    fh,
                    FopenFlags::empty(),
                );
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(h) = self.handles.get(fh) else {
            return reply.error(Errno::EBADF);
        };
        let mut h = h.lock().expect("handle");
        let streamed = matches!(&*h, Handle::Write(Some(w)) if w.written() == offset);
        if !streamed && let Err(e) = self.become_rewrite(ino, &mut h) {
            return reply.error(e);
        }
        let w = match &mut *h {
            Handle::Write(Some(w)) => w,
            Handle::Rewrite(r) => {
                let mut r = r.lock().expect("rewrite");
                return match r.write_at(offset, data) {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(e) => {
                        tracing::warn!(path = %r.path, error = %e, "scratch write failed");
                        reply.error(Errno::EIO)
                    }
                };
            }
            _ => return reply.error(Errno::EBADF),
        };
        match self.rt.block_on(w.write(data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let Some(h) = self.handles.get(fh) else {
            return reply.ok();
        };
        // A flush comes with every close of a duplicate descriptor too (a
        // shell's redirection flushes before anything is written): commit
        // once there is data, so close() reports a failed commit.
        let writer = match &mut *h.lock().expect("handle") {
            Handle::Write(w) if w.as_ref().is_some_and(|w| w.written() > 0) => w.take(),
            Handle::Rewrite(r) => {
                return match self.commit_rewrite(&mut r.lock().expect("rewrite")) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(e),
                };
            }
            _ => None,
        };
        match writer.map(|w| self.commit(*w)) {
            Some(Err(e)) => reply.error(e),
            _ => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let h = self.handles.remove(fh);
        let had_backing = h.as_ref().is_some_and(|h| {
            matches!(
                &*h.lock().expect("handle"),
                Handle::Read {
                    _backing: Some(_),
                    ..
                }
            )
        });
        // While `h` still holds its share of the backing.
        self.reads.closed(fh, ino.0, had_backing);
        let committed = match h.as_ref().map(|h| h.lock().expect("handle")).as_deref_mut() {
            Some(Handle::Write(w)) => w.take().map_or(Ok(()), |w| self.commit(*w)),
            Some(Handle::Rewrite(r)) => self.commit_rewrite(&mut r.lock().expect("rewrite")),
            _ => Ok(()),
        };
        match committed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let fh = self.handles.add(Handle::dir(path));
        reply.opened(fh, FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(h) = self.handle_or_inherited(ino, fh, true) else {
            return reply.error(Errno::EBADF);
        };
        let mut h = h.lock().expect("handle");
        let Handle::Dir {
            path,
            entries,
            cursor,
            done,
        } = &mut *h
        else {
            return reply.error(Errno::EBADF);
        };
        // Offsets 0 and 1 are "." and ".."; entry i is at offset i + 2.
        let mut next = offset;
        loop {
            if next < 2 {
                let name = if next == 0 { "." } else { ".." };
                next += 1;
                if reply.add(ino, next, FileType::Directory, name) {
                    return reply.ok();
                }
                continue;
            }
            let i = (next - 2) as usize;
            if i >= entries.len() {
                if *done {
                    return reply.ok();
                }
                // Stream the next page only when the kernel gets this far.
                match self.rt.block_on(self.fs.list_page(path, cursor, DIR_PAGE)) {
                    Ok((page, c)) => {
                        if page.is_empty() {
                            *done = true;
                        }
                        for info in &page {
                            self.remember(info);
                            let kind = kind_of(info);
                            entries.push((self.ino_of(info), kind, info.name.clone()));
                        }
                        *cursor = if c.is_empty() {
                            page.last().map(|i| i.name.clone()).unwrap_or_default()
                        } else {
                            c
                        };
                        if page.len() < DIR_PAGE as usize {
                            *done = true;
                        }
                        continue;
                    }
                    Err(e) => return reply.error(errno(&e)),
                }
            }
            let (child, kind, name) = &entries[i];
            next += 1;
            if reply.add(INodeNo(*child), next, *kind, name) {
                return reply.ok();
            }
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(fh);
        reply.ok();
    }

    /// `posix_fallocate`: space for `offset + length` bytes, as zeros past
    /// the end, in a file open for writing. Other modes (punching holes,
    /// keeping the size) are refused.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            tracing::info!(
                ino = ino.0,
                mode,
                "fallocate refused: only plain allocation is done"
            );
            return reply.error(Errno::EOPNOTSUPP);
        }
        let Some(h) = self.handles.get(fh) else {
            return reply.error(Errno::EBADF);
        };
        let mut h = h.lock().expect("handle");
        if let Err(e) = self.become_rewrite(ino, &mut h) {
            return reply.error(e);
        }
        let Handle::Rewrite(r) = &mut *h else {
            return reply.error(Errno::EBADF);
        };
        match r.lock().expect("rewrite").grow_to(offset + length) {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    /// A link found in the under-storage: its target, for the reader's
    /// own kernel to resolve.
    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.rt.block_on(self.fs.status(&path)) {
            Ok(info) if !info.symlink_target.is_empty() => {
                reply.data(info.symlink_target.as_bytes())
            }
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        self.make_symlink(parent, link_name, target, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.make_link(ino, newparent, newname, reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let maker = self.maker(req, mode & !umask & 0o7777);
        self.make_node(parent, name, mode, maker, rdev, reply);
    }

    // Calls Weir does not do, each refused with the errno its callers
    // expect and a line saying why (never a 0 that changes nothing).

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        tracing::info!(path = ?self.path_of(ino), ?name, "setxattr refused: extended attributes are not kept");
        reply.error(Errno::EOPNOTSUPP);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        tracing::info!(path = ?self.path_of(ino), ?name, "removexattr refused: extended attributes are not kept");
        reply.error(Errno::EOPNOTSUPP);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u64 = 4096;
        match self.rt.block_on(self.fs.capacity()) {
            Ok((capacity, used)) => {
                let blocks = capacity / BSIZE;
                let free = capacity.saturating_sub(used) / BSIZE;
                reply.statfs(blocks, free, free, 0, 0, BSIZE as u32, 255, BSIZE as u32);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}
