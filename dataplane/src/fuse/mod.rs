//! `weir fuse`: the namespace (or a sub-path of it) as a FUSE file system
//! over the client. Inode numbers are Weir's inode ids (the mounted
//! sub-path's id shows as 1). Completed files never change under one id, so
//! the kernel keeps their pages across opens; a file whose every block this
//! machine's worker holds (in one data file, as it keeps a file's blocks on
//! a tier) is handed to the kernel as a passthrough file, which then reads
//! the worker's data file itself. New files are written once,
//! sequentially, and committed when closed.

mod takeover;

pub(crate) use takeover::mount_device;

use crate::client::fs::{ClientConfig, FileReader, FileSystem, FileWriter, LocalBlock, LocalFile};
use crate::client::master::ClientError;
use crate::proto::master as pb;
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("mounting {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct FuseConfig {
    pub client: ClientConfig,
    pub mount_point: PathBuf,
    /// The namespace path shown at the mount point.
    pub sub_path: String,
    pub read_only: bool,
    pub allow_other: bool,
    /// Attribute and entry TTL given to the kernel.
    pub attr_ttl: Duration,
    pub threads: usize,
    /// Let the kernel read locally cached single-block files directly.
    pub passthrough: bool,
    /// The owner every file and directory is shown with (a dataset's
    /// `owner`): pods that run as that user can read and write.
    pub uid: u32,
    pub gid: u32,
    /// The fd holder's socket (see `weir_handover`).
    pub fd_holder: Option<PathBuf>,
}

/// A FUSE process that died (killed, OOM) leaves its mount answering
/// ENOTCONN; the next one detaches it first, or it could not mount there.
fn clear_dead_mount(path: &std::path::Path) {
    let dead = std::fs::metadata(path)
        .err()
        .is_some_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
    if dead {
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => {
                tracing::warn!(mount_point = %path.display(), "detached the dead mount of an earlier FUSE process")
            }
            Err(e) => {
                tracing::warn!(mount_point = %path.display(), error = %e, "could not detach a dead mount")
            }
        }
    }
}

/// Entries fetched per listing page.
const DIR_PAGE: u32 = 1000;
/// Largest read the kernel is asked to send, and its readahead window.
const MAX_READ: u32 = 1 << 20;
const READAHEAD: u32 = 8 << 20;

enum Handle {
    Read {
        reader: Box<FileReader>,
        /// Reused for every read of this handle.
        buf: Vec<u8>,
        /// Passthrough: the kernel reads this leased block file itself.
        _backing: Option<Arc<Backing>>,
    },
    Write(Option<Box<FileWriter>>),
    Dir {
        path: String,
        entries: Vec<(u64, FileType, String)>,
        cursor: String,
        done: bool,
    },
}

/// A file as this machine's worker keeps it (every block leased, in one
/// file holding exactly its bytes), registered with the kernel for
/// passthrough reads. The kernel keeps one backing file per inode while any
/// passthrough open of it lasts and fails (EIO) an open that names another,
/// so every open of an inode shares one of these until the last is released.
struct Backing {
    id: BackingId,
    _file: LocalFile,
}

struct WeirFuse {
    rt: tokio::runtime::Handle,
    fs: Arc<FileSystem>,
    root: String,
    read_only: bool,
    ttl: Duration,
    /// Shared with `run`, which tells the fd holder what INIT granted.
    passthrough: Arc<AtomicBool>,
    /// FUSE processes that served this mount before this one: file handles
    /// carry it in their top bits, so a handle of an earlier process (the
    /// kernel keeps those across a takeover) is told from one of ours.
    generation: u64,
    /// Owner shown for every entry.
    owner: (u32, u32),
    /// Inode number -> namespace path, learnt from lookups.
    paths: Mutex<HashMap<u64, String>>,
    root_id: AtomicU64,
    handles: Mutex<HashMap<u64, Arc<Mutex<Handle>>>>,
    /// Per open file: its blocks held by a worker on this machine, leased,
    /// so reads inside one block are answered from the block file by any FUSE
    /// thread at once, without the handle's lock.
    local: Mutex<HashMap<u64, Arc<LocalReads>>>,
    /// Inode number -> its passthrough backing, while an open holds it.
    backings: Mutex<HashMap<u64, Weak<Backing>>>,
    next_fh: AtomicU64,
}

/// File handles are numbered from `generation << FH_GENERATION_SHIFT`.
const FH_GENERATION_SHIFT: u32 = 40;

/// Local block files one open file keeps leased at most.
const LEASES_PER_HANDLE: usize = 16;

thread_local! {
    /// Each FUSE thread's read buffer.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct LocalReads {
    blocks: Vec<pb::BlockInfo>,
    block_size: u64,
    leased: Mutex<HashMap<usize, Option<Arc<LocalBlock>>>>,
}

impl WeirFuse {
    /// Answers a read from a local block file, if the range lies in one.
    fn read_local(
        &self,
        fh: FileHandle,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) -> Option<ReplyData> {
        let Some(local) = self.local.lock().expect("local").get(&fh.0).cloned() else {
            return Some(reply);
        };
        let index = (offset / local.block_size.max(1)) as usize;
        let Some(block) = local.blocks.get(index) else {
            return Some(reply);
        };
        let within = offset - block.offset;
        let last = index + 1 == local.blocks.len();
        if within + size as u64 > block.length && !last {
            // Spans two blocks: a short answer would tell the kernel the
            // file ends here.
            return Some(reply);
        }
        let n = (size as u64).min(block.length.saturating_sub(within));
        let known = local.leased.lock().expect("leased").get(&index).cloned();
        let leased = match known {
            Some(m) => m,
            None => {
                let m = self.rt.block_on(self.fs.lease_local(block)).map(Arc::new);
                let mut leased = local.leased.lock().expect("leased");
                // Bounded: a long sequential read holds the blocks around
                // the reader, not every block it has passed.
                if leased.len() >= LEASES_PER_HANDLE {
                    leased.retain(|i, _| i.abs_diff(index) < LEASES_PER_HANDLE / 2);
                }
                leased.insert(index, m.clone());
                m
            }
        };
        let Some(local_block) = leased.filter(|m| within + n <= m.len) else {
            return Some(reply);
        };
        READ_BUF.with_borrow_mut(|buf| {
            if buf.len() < n as usize {
                buf.resize(n as usize, 0);
            }
            let buf = &mut buf[..n as usize];
            match local_block.read_exact_at(buf, within) {
                Ok(()) => {
                    reply.data(buf);
                    None
                }
                Err(_) => Some(reply),
            }
        })
    }
}

fn errno(e: &ClientError) -> Errno {
    use tonic::Code;
    match e {
        ClientError::Status(s) => match s.code() {
            Code::NotFound => Errno::ENOENT,
            Code::AlreadyExists => Errno::EEXIST,
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
        _ => Errno::EIO,
    }
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl WeirFuse {
    fn ino_of(&self, info: &pb::FileInfo) -> u64 {
        if info.id == self.root_id.load(Ordering::Relaxed) {
            1
        } else if info.id == 1 {
            // Weir's root is only reachable when it is the mounted path.
            self.root_id.load(Ordering::Relaxed)
        } else {
            info.id
        }
    }

    fn attr(&self, info: &pb::FileInfo) -> FileAttr {
        let kind = if info.is_dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        };
        let t = time(info.mtime_ms);
        FileAttr {
            ino: INodeNo(self.ino_of(info)),
            size: info.length,
            blocks: info.length.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: (info.mode & 0o7777) as u16,
            nlink: if info.is_dir { 2 } else { 1 },
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: MAX_READ,
            flags: 0,
        }
    }

    fn path_of(&self, ino: INodeNo) -> Option<String> {
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

    /// Whether `fh` was handed out by an earlier FUSE process of this mount.
    fn inherited(&self, fh: FileHandle) -> bool {
        fh.0 >> FH_GENERATION_SHIFT < self.generation
    }

    /// The handle `fh`; one an earlier FUSE process opened is opened again
    /// here (a file for reading, a directory listed from its start), so
    /// applications keep reading through a takeover. A file it was writing
    /// is lost with it: that handle stays unknown (EBADF).
    fn handle_or_inherited(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        dir: bool,
    ) -> Option<Arc<Mutex<Handle>>> {
        if let Some(h) = self.handle(fh) {
            return Some(h);
        }
        if !self.inherited(fh) {
            return None;
        }
        let path = self.path_of(ino)?;
        let handle = if dir {
            Handle::Dir {
                path,
                entries: Vec::new(),
                cursor: String::new(),
                done: false,
            }
        } else {
            let reader = self.rt.block_on(self.fs.open(&path)).ok()?;
            Handle::Read {
                reader: Box::new(reader),
                buf: Vec::new(),
                _backing: None,
            }
        };
        tracing::debug!(fh = fh.0, ino = ino.0, "reopened an inherited handle");
        let mut handles = self.handles.lock().expect("handles");
        Some(
            handles
                .entry(fh.0)
                .or_insert_with(|| Arc::new(Mutex::new(handle)))
                .clone(),
        )
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let dir = self.path_of(parent).ok_or(Errno::ENOENT)?;
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        Ok(if dir == "/" {
            format!("/{name}")
        } else {
            format!("{dir}/{name}")
        })
    }

    fn remember(&self, info: &pb::FileInfo) {
        let ino = self.ino_of(info);
        if ino != 1 {
            self.paths
                .lock()
                .expect("paths")
                .insert(ino, info.path.clone());
        }
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Mutex<Handle>>> {
        self.handles.lock().expect("handles").get(&fh.0).cloned()
    }

    fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .expect("handles")
            .insert(fh, Arc::new(Mutex::new(h)));
        FileHandle(fh)
    }

    /// Bytes written so far, when `fh` is a file being written.
    fn being_written(&self, fh: Option<FileHandle>) -> Option<u64> {
        let h = self.handle(fh?)?;
        let h = h.lock().expect("handle");
        match &*h {
            Handle::Write(Some(w)) => Some(w.written()),
            _ => None,
        }
    }

    /// A file being written: its size is what has been written so far.
    fn attr_written(&self, ino: INodeNo, written: u64) -> FileAttr {
        let mut attr = self.attr(&pb::FileInfo {
            length: written,
            mode: 0o644,
            ..Default::default()
        });
        attr.ino = ino;
        attr
    }

    /// The inode's passthrough backing: the one its open files share, or a
    /// new one over the file leased from this machine's worker.
    fn backing(&self, ino: u64, reader: &FileReader, reply: &ReplyOpen) -> Option<Arc<Backing>> {
        let shared =
            |backings: &HashMap<u64, Weak<Backing>>| backings.get(&ino).and_then(Weak::upgrade);
        if let Some(b) = shared(&self.backings.lock().expect("backings")) {
            return Some(b);
        }
        // The lease is a round trip to the worker: taken without the lock,
        // so opens of other files do not wait for it.
        let local = self.rt.block_on(self.fs.lease_local_file(reader))?;
        // Registered under the lock, so two first opens racing here end up
        // with one backing (the loser's lease is released).
        let mut backings = self.backings.lock().expect("backings");
        if let Some(b) = shared(&backings) {
            return Some(b);
        }
        match reply.open_backing(&local.file) {
            Ok(id) => {
                let backing = Arc::new(Backing { id, _file: local });
                backings.insert(ino, Arc::downgrade(&backing));
                Some(backing)
            }
            Err(e) => {
                tracing::info!(error = %e, "passthrough refused; reading through the daemon");
                self.passthrough.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Deletes `name` if it is a directory (`dir`) or a file (`!dir`).
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let path = match self.writable().and_then(|()| self.child(parent, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let result = self.rt.block_on(async {
            if self.fs.status(&path).await?.is_dir != dir {
                return Ok(false);
            }
            self.fs.delete(&path, false).await.map(|()| true)
        });
        match result {
            Ok(true) => reply.ok(),
            Ok(false) if dir => reply.error(Errno::ENOTDIR),
            Ok(false) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Commits a writer; errors reach the application's close().
    fn commit(&self, writer: FileWriter) -> Result<(), Errno> {
        let path = writer.written();
        self.rt.block_on(writer.close()).map(|_| ()).map_err(|e| {
            tracing::warn!(bytes = path, error = %e, "committing a file failed");
            errno(&e)
        })
    }
}

impl Filesystem for WeirFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(READAHEAD);
        let _ = config.set_max_write(MAX_READ);
        // Readahead requests are "background" requests: let a whole window
        // of them be in flight across the FUSE threads.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        if self.passthrough.load(Ordering::Relaxed) {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if !ok {
                tracing::info!("kernel has no FUSE passthrough; reading through the daemon");
            }
            self.passthrough.store(ok, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.rt.block_on(self.fs.status(&path)) {
            Ok(info) => {
                self.remember(&info);
                reply.entry(&self.ttl, &self.attr(&info), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(written) = self.being_written(fh) {
            return reply.attr(&Duration::ZERO, &self.attr_written(ino, written));
        }
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.rt.block_on(self.fs.status(&path)) {
            Ok(info) => reply.attr(&self.ttl, &self.attr(&info)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Only no-op truncations are possible on write-once files
        // (O_TRUNC on a fresh file, `truncate` to the current size).
        if let Some(written) = self.being_written(fh) {
            if size.is_some_and(|s| s != written) {
                return reply.error(Errno::EPERM);
            }
            return reply.attr(&Duration::ZERO, &self.attr_written(ino, written));
        }
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.rt.block_on(self.fs.status(&path)) {
            Ok(info) if size.is_some_and(|s| s != info.length) => reply.error(if self.read_only {
                Errno::EROFS
            } else {
                Errno::EPERM
            }),
            Ok(info) => reply.attr(&self.ttl, &self.attr(&info)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
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
        match self
            .rt
            .block_on(self.fs.mkdir(&path, mode & !umask & 0o7777))
        {
            Ok(info) => {
                self.remember(&info);
                reply.entry(&self.ttl, &self.attr(&info), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
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
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            // Files are written once, through create.
            return reply.error(if self.read_only {
                Errno::EROFS
            } else {
                Errno::EPERM
            });
        }
        let reader = match self.rt.block_on(self.fs.open(&path)) {
            Ok(r) => r,
            Err(e) => return reply.error(errno(&e)),
        };
        if self.passthrough.load(Ordering::Relaxed)
            && reader.info().length > 0
            && let Some(backing) = self.backing(ino.0, &reader, &reply)
        {
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing.id);
            self.handles.lock().expect("handles").insert(
                fh,
                Arc::new(Mutex::new(Handle::Read {
                    reader: Box::new(reader),
                    buf: Vec::new(),
                    _backing: Some(backing),
                })),
            );
            return;
        }
        let local = Arc::new(LocalReads {
            blocks: reader.blocks().to_vec(),
            block_size: reader.info().block_size,
            leased: Mutex::new(HashMap::new()),
        });
        let fh = self.add_handle(Handle::Read {
            reader: Box::new(reader),
            buf: Vec::new(),
            _backing: None,
        });
        self.local.lock().expect("local").insert(fh.0, local);
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
        let Some(reply) = self.read_local(fh, offset, size, reply) else {
            return;
        };
        let Some(h) = self.handle_or_inherited(ino, fh, false) else {
            return reply.error(Errno::EBADF);
        };
        let mut h = h.lock().expect("handle");
        let Handle::Read { reader, buf, .. } = &mut *h else {
            return reply.error(Errno::EBADF);
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
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.writable().and_then(|()| self.child(parent, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.rt.block_on(self.fs.create(&path, None)) {
            Ok(w) => {
                let mut info = w.info().clone();
                info.mode = mode & !umask & 0o7777;
                self.remember(&info);
                let fh = self.add_handle(Handle::Write(Some(Box::new(w))));
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
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let mut h = h.lock().expect("handle");
        let Handle::Write(Some(w)) = &mut *h else {
            return reply.error(Errno::EBADF);
        };
        if offset != w.written() {
            // Write-once files are written front to back.
            return reply.error(Errno::EINVAL);
        }
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
        let Some(h) = self.handle(fh) else {
            return reply.ok();
        };
        // A flush comes with every close of a duplicate descriptor too (a
        // shell's redirection flushes before anything is written): commit
        // once there is data, so close() reports a failed commit.
        let writer = match &mut *h.lock().expect("handle") {
            Handle::Write(w) if w.as_ref().is_some_and(|w| w.written() > 0) => w.take(),
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
        self.local.lock().expect("local").remove(&fh.0);
        let h = self.handles.lock().expect("handles").remove(&fh.0);
        if let Some(h) = &h
            && let Handle::Read {
                _backing: Some(_), ..
            } = &*h.lock().expect("handle")
        {
            let mut backings = self.backings.lock().expect("backings");
            if backings.get(&ino.0).is_some_and(|b| b.strong_count() <= 1) {
                backings.remove(&ino.0);
            }
        }
        if let Some(h) = h
            && let Handle::Write(w) = &mut *h.lock().expect("handle")
            && let Some(w) = w.take()
            && let Err(e) = self.commit(*w)
        {
            return reply.error(e);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let fh = self.add_handle(Handle::Dir {
            path,
            entries: Vec::new(),
            cursor: String::new(),
            done: false,
        });
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
                            let kind = if info.is_dir {
                                FileType::Directory
                            } else {
                                FileType::RegularFile
                            };
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
        self.handles.lock().expect("handles").remove(&fh.0);
        reply.ok();
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

/// The kernel offers FUSE mounts 128 KiB of readahead at INIT; sequential
/// reads go several times faster with a window of several MiB, set on the
/// mount's backing device afterwards (as root).
fn raise_readahead(mount_point: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mount_point) else {
        return;
    };
    let dev = meta.dev();
    let major = (dev >> 8) & 0xfff;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&knob, (READAHEAD / 1024).to_string()) {
        Ok(()) => tracing::debug!(knob, "readahead raised"),
        Err(e) => tracing::info!(knob, error = %e, "could not raise readahead"),
    }
}

/// A live mount of this mount point whose descriptor the holder keeps
/// (its FUSE process died or stopped while volumes used it).
fn held_mount(
    socket: &std::path::Path,
    mount_point: &std::path::Path,
) -> Option<(weir_handover::MountState, OwnedFd)> {
    let (state, fd) = match weir_handover::take(socket, mount_point) {
        Ok(Some(held)) => held,
        Ok(None) => return None,
        Err(e) => {
            tracing::info!(error = %e, "no fd holder to take a mount from; mounting");
            return None;
        }
    };
    let device = takeover::mount_device(mount_point);
    if device.as_deref() == Some(state.device.as_str()) {
        Some((state, fd))
    } else {
        tracing::info!(held = %state.device, mounted = ?device, "the held descriptor belongs to a mount that is gone; mounting");
        None
    }
}

/// A running session and what shutdown needs of it.
struct Served {
    session: fuser::BackgroundSession,
    /// A copy of the connection's descriptor, for the fd holder.
    fd: Option<OwnedFd>,
    /// Taken over from the holder: fuser did not mount it, so it does not
    /// unmount it either.
    adopted: bool,
    generation: u64,
}

/// Mounts (or takes over the live mount from the fd holder) and serves
/// until `shutdown` resolves; then unmounts, unless the fd holder says
/// volumes still use the mount: it is then left, alive, to the next FUSE
/// process.
pub async fn run(
    config: FuseConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), FuseError> {
    let fs = FileSystem::new(config.client.clone())?;
    let root = crate::path::WeirPath::parse(&config.sub_path)
        .map_err(|e| ClientError::Invalid(e.to_string()))?
        .to_string();
    let root_info = fs.status(&root).await?;
    if !root_info.is_dir {
        return Err(ClientError::Invalid(format!("{root} is not a directory")).into());
    }
    let mount_point = config.mount_point.clone();
    let held = match &config.fd_holder {
        Some(socket) => {
            let (socket, mp) = (socket.clone(), mount_point.clone());
            tokio::task::spawn_blocking(move || held_mount(&socket, &mp))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let generation = held.as_ref().map_or(0, |(s, _)| s.generation + 1);
    let passthrough = Arc::new(AtomicBool::new(
        config.passthrough && held.as_ref().is_none_or(|(s, _)| s.passthrough),
    ));
    let weir = WeirFuse {
        rt: tokio::runtime::Handle::current(),
        fs,
        root,
        read_only: config.read_only,
        ttl: config.attr_ttl,
        passthrough: passthrough.clone(),
        generation,
        owner: (config.uid, config.gid),
        paths: Mutex::new(HashMap::new()),
        root_id: AtomicU64::new(root_info.id),
        handles: Mutex::new(HashMap::new()),
        local: Mutex::new(HashMap::new()),
        backings: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new((generation << FH_GENERATION_SHIFT) + 1),
    };
    let mount_err = |source| FuseError::Mount {
        path: config.mount_point.clone(),
        source,
    };
    let mut fc = fuser::Config::default();
    fc.mount_options.extend([
        MountOption::FSName("weir".into()),
        MountOption::Subtype("weir".into()),
        MountOption::DefaultPermissions,
    ]);
    if config.read_only {
        fc.mount_options.push(MountOption::RO);
    }
    if config.allow_other {
        fc.mount_options
            .push(MountOption::CUSTOM("allow_other".into()));
    }
    fc.n_threads = Some(config.threads.max(1));
    // A cloned descriptor's unanswered requests fail when the process dies
    // (the kernel ends them as it closes that descriptor); on the one the
    // holder keeps they wait for the next process instead.
    fc.clone_fd = config.threads > 1 && config.fd_holder.is_none();
    let lodge = config.fd_holder.is_some();
    // Mounting blocks on the kernel's INIT, which needs the runtime the
    // file system calls into: mount off the runtime's threads.
    let served = match held {
        Some((state, fd)) => {
            let (session, fd) = tokio::task::spawn_blocking(move || {
                let session = takeover::adopt(weir, &fd, state.passthrough, READAHEAD, fc)?;
                let session = session.spawn()?;
                takeover::resend_pending(&fd)?;
                Ok::<_, std::io::Error>((session, fd))
            })
            .await
            .map_err(|e| mount_err(std::io::Error::other(e.to_string())))?
            .map_err(mount_err)?;
            tracing::info!(mount_point = %mount_point.display(), generation, "took over the live mount from the fd holder");
            Served {
                session,
                fd: Some(fd),
                adopted: true,
                generation,
            }
        }
        None => {
            clear_dead_mount(&mount_point);
            std::fs::create_dir_all(&mount_point).map_err(mount_err)?;
            let mp = mount_point.clone();
            let (session, fd) = tokio::task::spawn_blocking(move || {
                let session = fuser::Session::new(weir, &mp, &fc)?;
                let fd = if lodge {
                    Some(std::os::fd::AsFd::as_fd(&session).try_clone_to_owned()?)
                } else {
                    None
                };
                Ok::<_, std::io::Error>((session.spawn()?, fd))
            })
            .await
            .map_err(|e| mount_err(std::io::Error::other(e.to_string())))?
            .map_err(mount_err)?;
            tracing::info!(mount_point = %mount_point.display(), sub_path = %config.sub_path, "mounted");
            raise_readahead(&mount_point);
            Served {
                session,
                fd,
                adopted: false,
                generation,
            }
        }
    };
    let lodging = match (&config.fd_holder, served.fd) {
        (Some(socket), Some(fd)) => match takeover::mount_device(&mount_point) {
            Some(device) => Some(weir_handover::lodge(
                socket.clone(),
                weir_handover::MountState {
                    mount_point: mount_point.clone(),
                    device,
                    passthrough: passthrough.load(Ordering::Relaxed),
                    generation: served.generation,
                },
                fd,
            )),
            None => {
                tracing::warn!(mount_point = %mount_point.display(), "the mount is not in the mount table; nothing to lodge");
                None
            }
        },
        _ => None,
    };
    shutdown.await;
    if let (Some(socket), Some(lodging)) = (&config.fd_holder, &lodging) {
        lodging.stop();
        let (socket, mp) = (socket.clone(), mount_point.clone());
        let verdict = tokio::task::spawn_blocking(move || weir_handover::release(&socket, &mp))
            .await
            .map_err(|e| mount_err(std::io::Error::other(e.to_string())))?;
        match verdict {
            Ok(weir_handover::Verdict::Keep) => {
                tracing::info!(mount_point = %mount_point.display(), "volumes still use the mount: left to the fd holder for the next FUSE process");
                // Dropping the session would unmount; the process ends instead.
                std::mem::forget(served.session);
                return Ok(());
            }
            Ok(weir_handover::Verdict::Released) => {}
            Err(e) => tracing::warn!(error = %e, "the fd holder did not answer; unmounting"),
        }
    }
    let session = served.session;
    let adopted = served.adopted;
    let mp = mount_point.clone();
    tokio::task::spawn_blocking(move || {
        if !adopted {
            return session.umount_and_join();
        }
        match nix::mount::umount2(&mp, nix::mount::MntFlags::empty()) {
            Ok(()) => session.join(),
            Err(nix::errno::Errno::EBUSY) => {
                // Still in use: detached, it goes when its last user does,
                // served until this process exits.
                nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH)?;
                std::mem::forget(session);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
    .map_err(|e| mount_err(std::io::Error::other(e.to_string())))?
    .map_err(mount_err)?;
    tracing::info!(mount_point = %mount_point.display(), "unmounted");
    Ok(())
}
