//! A local (or NFS) directory as under-storage, through the file system's
//! own calls rather than OpenDAL's: only they tell a file's inode number
//! and change time, which make its version (a rewrite that keeps the size
//! and restores the mtime still changes both), and only a descriptor held
//! across a read can prove the bytes came from one version. Every path is
//! resolved beneath the mount's root ([`super::beneath`]): a symbolic link
//! is followed only while it stays inside, and one that leads out is left
//! out of listings (with a log line) and refused on open.

use super::beneath::{self, Refusal, Root};
use super::nodes::{self, NodeKind};
use super::{AttrChange, Fingerprint, Ufs, UfsError, UfsPath, UfsResult, UfsStatus, UfsWriter};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use nix::fcntl::OFlag;
use std::fs::{File, Metadata};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where files being written wait until they are closed (hidden from
/// listings), so a reader never sees half a file.
pub(super) const WRITING_DIR: &str = ".weir-writing";
/// Bytes read per call of a streamed read.
const CHUNK: u64 = 4 << 20;

/// A directory of this machine holding a mount's files.
#[derive(Debug, Clone)]
pub struct LocalUfs {
    uri: String,
    root: PathBuf,
}

fn mtime_ms(m: &Metadata) -> u64 {
    let secs = m.mtime().max(0) as u64;
    secs * 1000 + (m.mtime_nsec().max(0) as u64) / 1_000_000
}

/// A file's identity beyond length and mtime: which inode, and when it
/// last changed in any way.
fn version(m: &Metadata) -> String {
    if m.is_dir() {
        return String::new();
    }
    super::local_version(m.ino(), m.ctime(), m.ctime_nsec())
}

fn status(name: String, m: &Metadata, link: Option<String>) -> UfsStatus {
    if let Some(target) = link {
        // A link's content is its target: a new target, a new version.
        return UfsStatus {
            name,
            is_dir: false,
            length: target.len() as u64,
            mtime_ms: mtime_ms(m),
            version: format!("{}{target}", super::LINK_VERSION_PREFIX),
            mode: Some(0o777),
            uid: Some(m.uid()),
            gid: Some(m.gid()),
            link: Some(target),
        };
    }
    let node = NodeKind::of(m.file_type());
    UfsStatus {
        name,
        is_dir: m.is_dir(),
        length: if m.is_dir() || node.is_some() {
            0
        } else {
            m.len()
        },
        mtime_ms: mtime_ms(m),
        version: match node {
            Some(kind) => kind.version(
                m.rdev(),
                &super::local_version(m.ino(), m.ctime(), m.ctime_nsec()),
            ),
            None => version(m),
        },
        mode: Some(m.mode() & PERMISSION_BITS),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        link: None,
    }
}

/// The bits of a mode Weir shows: all of them but the file type. FUSE
/// mounts are nosuid, so a set-user-id bit shown never runs a file with
/// the rights of its owner.
const PERMISSION_BITS: u32 = 0o7777;

fn fingerprint(m: &Metadata) -> Fingerprint {
    Fingerprint {
        length: m.len(),
        mtime_ms: mtime_ms(m),
        version: version(m),
    }
}

impl LocalUfs {
    /// The store rooted at `root` (the part of `uri` after the scheme).
    pub fn open(uri: &str, root: &str) -> UfsResult<Self> {
        Ok(Self {
            uri: uri.to_owned(),
            root: PathBuf::from(format!("/{}", root.trim_matches('/'))),
        })
    }

    /// A path the root resolves to something outside it, or to links
    /// that loop: not part of the dataset, said once per look.
    fn left_out(&self, rel: &str, why: &Refusal) {
        tracing::warn!(uri = %self.uri, path = %rel, reason = ?why, "left out: a symbolic link that leads outside the mount's root or loops");
    }

    fn err(&self, path: &UfsPath, e: std::io::Error) -> UfsError {
        let name = format!("{} {}", self.uri, path.as_str());
        match e.kind() {
            ErrorKind::NotFound => UfsError::NotFound(name),
            ErrorKind::PermissionDenied => UfsError::Denied { path: name },
            _ => UfsError::Io {
                path: name,
                source: e,
            },
        }
    }

    /// Runs blocking file system calls off the runtime's threads.
    async fn blocking<T: Send + 'static>(
        &self,
        path: &UfsPath,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> UfsResult<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| self.err(path, std::io::Error::other(e.to_string())))?
            .map_err(|e| self.err(path, e))
    }

    /// A fresh name below the writing directory (made, beneath the root,
    /// if missing).
    fn temp_path(root: &Path) -> std::io::Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            beneath::directory(root, WRITING_DIR, true).map_err(|r| r.into_io(WRITING_DIR))?;
        Ok(dir.join(format!("{}-{n}", std::process::id())))
    }
}

#[tonic::async_trait]
impl Ufs for LocalUfs {
    async fn stat(&self, path: &UfsPath) -> UfsResult<Option<UfsStatus>> {
        let (root, rel, this) = (self.root.clone(), path.as_str().to_owned(), self.clone());
        let name = path
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let found = self
            .blocking(path, move || {
                match Root::open(&root).and_then(|r| r.entry(&rel)) {
                    Ok(found) => Ok(Some(found)),
                    Err(Refusal::Missing) => Ok(None),
                    Err(why @ (Refusal::Outside | Refusal::Loop)) => {
                        this.left_out(&rel, &why);
                        Ok(None)
                    }
                    Err(Refusal::Io(e)) => Err(e),
                }
            })
            .await?;
        Ok(found.map(|(m, link)| status(name, &m, link)))
    }

    fn list<'a>(&'a self, dir: &'a UfsPath) -> BoxStream<'a, UfsResult<UfsStatus>> {
        let rel = dir.as_str().to_owned();
        let at_root = rel.is_empty();
        let (root, this) = (self.root.clone(), self.clone());
        let read = async move {
            self.blocking(dir, move || {
                let root = Root::open(&root).map_err(|r| r.into_io(""))?;
                let opened = match root.file(&rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                    Ok(d) => d,
                    // A missing directory lists as empty, as on object stores.
                    Err(Refusal::Missing) => return Ok(Vec::new()),
                    Err(why @ (Refusal::Outside | Refusal::Loop)) => {
                        this.left_out(&rel, &why);
                        return Ok(Vec::new());
                    }
                    Err(Refusal::Io(e)) => return Err(e),
                };
                let mut entries = nix::dir::Dir::from_fd(opened.into()).map_err(std::io::Error::from)?;
                let mut out = Vec::new();
                for entry in entries.iter() {
                    let entry = entry.map_err(std::io::Error::from)?;
                    let bytes = entry.file_name().to_bytes();
                    if bytes == b"." || bytes == b".." {
                        continue;
                    }
                    let Ok(name) = std::str::from_utf8(bytes).map(str::to_owned) else {
                        tracing::warn!(dir = %rel, name = %String::from_utf8_lossy(bytes), uri = %this.uri, "left out of the listing: the name is not UTF-8, which Weir paths cannot hold");
                        continue;
                    };
                    if at_root && name == WRITING_DIR {
                        continue;
                    }
                    let path = if at_root { name.clone() } else { format!("{rel}/{name}") };
                    match root.entry(&path) {
                        Ok((m, link)) => out.push(status(name, &m, link)),
                        // Gone since the directory was read.
                        Err(Refusal::Missing) => {}
                        Err(why @ (Refusal::Outside | Refusal::Loop)) => this.left_out(&path, &why),
                        Err(Refusal::Io(e)) => return Err(e),
                    }
                }
                Ok(out)
            })
            .await
        };
        futures::stream::once(read)
            .map(|r| match r {
                Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
                Err(e) => futures::stream::once(async { Err(e) }).boxed(),
            })
            .flatten()
            .boxed()
    }

    async fn read(&self, path: &UfsPath, offset: u64, len: u64) -> UfsResult<Bytes> {
        let (root, rel) = (self.root.clone(), path.as_str().to_owned());
        self.blocking(path, move || {
            let file = beneath::open(&root, &rel, OFlag::O_RDONLY).map_err(|r| r.into_io(&rel))?;
            let size = file.metadata()?.len();
            let end = (offset.saturating_add(len)).min(size);
            let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn read_stream(
        &self,
        path: &UfsPath,
        offset: u64,
        len: u64,
        expect: Option<&Fingerprint>,
    ) -> UfsResult<BoxStream<'static, UfsResult<Bytes>>> {
        let (root, rel) = (self.root.clone(), path.as_str().to_owned());
        // One descriptor for the whole read, opened beneath the root: the
        // bytes all come from the inode it names, and its change time tells
        // whether anything was written to it meanwhile.
        let (file, opened) = self
            .blocking(path, move || {
                let file =
                    beneath::open(&root, &rel, OFlag::O_RDONLY).map_err(|r| r.into_io(&rel))?;
                let m = file.metadata()?;
                Ok((Arc::new(file), fingerprint(&m)))
            })
            .await?;
        let name = format!("{} {}", self.uri, path.as_str());
        if expect.is_some_and(|e| !e.same_content(&opened)) {
            return Err(UfsError::Changed { path: name });
        }
        let checked = expect.is_some();
        struct Cursor {
            file: Arc<File>,
            at: u64,
            left: u64,
            done: bool,
        }
        let start = Cursor {
            file,
            at: offset,
            left: len,
            done: len == 0,
        };
        let stream = futures::stream::unfold(start, move |mut c| {
            let (name, opened) = (name.clone(), opened.clone());
            async move {
                if c.done {
                    return None;
                }
                let want = c.left.min(CHUNK);
                let (file, at) = (c.file.clone(), c.at);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; want as usize];
                    let mut got = 0;
                    while got < buf.len() {
                        match file.read_at(&mut buf[got..], at + got as u64) {
                            Ok(0) => break,
                            Ok(n) => got += n,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    buf.truncate(got);
                    // Was the file written while these bytes were read?
                    // Asked after every chunk: none may leave if so.
                    let changed = if checked {
                        fingerprint(&file.metadata()?) != opened
                    } else {
                        false
                    };
                    Ok((buf, changed))
                })
                .await;
                let io = |e: std::io::Error| UfsError::Io {
                    path: name.clone(),
                    source: e,
                };
                let item = match read {
                    Err(e) => Err(io(std::io::Error::other(e.to_string()))),
                    Ok(Err(e)) => Err(io(e)),
                    Ok(Ok((_, true))) => Err(UfsError::Changed { path: name.clone() }),
                    Ok(Ok((buf, false))) if (buf.len() as u64) < want => {
                        Err(io(std::io::Error::new(
                            ErrorKind::UnexpectedEof,
                            format!(
                                "under-storage file ended {} bytes short of the range",
                                c.left - buf.len() as u64
                            ),
                        )))
                    }
                    Ok(Ok((buf, false))) => Ok(Bytes::from(buf)),
                };
                match &item {
                    Ok(b) => {
                        c.at += b.len() as u64;
                        c.left -= b.len() as u64;
                        c.done = c.left == 0;
                    }
                    Err(_) => c.done = true,
                }
                Some((item, c))
            }
        });
        Ok(stream.boxed())
    }

    async fn write(&self, path: &UfsPath, data: Bytes) -> UfsResult<()> {
        let mut w = self.writer(path).await?;
        w.write(data).await?;
        w.close().await
    }

    async fn writer(&self, path: &UfsPath) -> UfsResult<Box<dyn UfsWriter>> {
        let root = self.root.clone();
        let (file, temp) = self
            .blocking(path, move || {
                let temp = Self::temp_path(&root)?;
                Ok((File::create(&temp)?, temp))
            })
            .await?;
        Ok(Box::new(LocalWriter {
            file: Some(file),
            temp,
            root: self.root.clone(),
            rel: path.as_str().to_owned(),
            name: format!("{} {}", self.uri, path.as_str()),
        }))
    }

    async fn delete(&self, path: &UfsPath) -> UfsResult<()> {
        let (root, rel) = (self.root.clone(), path.as_str().to_owned());
        self.blocking(path, move || {
            let full = match beneath::entry(&root, &rel, false) {
                Ok(full) => full,
                Err(Refusal::Missing) => return Ok(()),
                Err(r) => return Err(r.into_io(&rel)),
            };
            let removed = match std::fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => std::fs::remove_dir(&full),
                Ok(_) => std::fs::remove_file(&full),
                Err(e) => Err(e),
            };
            match removed {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn delete_all(&self, path: &UfsPath) -> UfsResult<()> {
        let (root, rel) = (self.root.clone(), path.as_str().to_owned());
        self.blocking(path, move || {
            let full = match beneath::entry(&root, &rel, false) {
                Ok(full) => full,
                Err(Refusal::Missing) => return Ok(()),
                Err(r) => return Err(r.into_io(&rel)),
            };
            // Not followed: a link is removed, never what it points to.
            let removed = match std::fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full),
                Ok(_) => std::fs::remove_file(&full),
                Err(e) => Err(e),
            };
            match removed {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn create_dir(&self, path: &UfsPath) -> UfsResult<()> {
        let (root, rel) = (self.root.clone(), path.as_str().to_owned());
        self.blocking(path, move || {
            beneath::directory(&root, &rel, true)
                .map(drop)
                .map_err(|r| r.into_io(&rel))
        })
        .await
    }

    async fn set_attributes(&self, path: &UfsPath, change: &AttrChange) -> UfsResult<()> {
        let (root, rel, change) = (self.root.clone(), path.as_str().to_owned(), change.clone());
        self.blocking(path, move || {
            // Changed through the descriptor that was resolved beneath the
            // root: a link swapped meanwhile cannot redirect the change.
            let file = beneath::open(&root, &rel, OFlag::O_PATH).map_err(|r| r.into_io(&rel))?;
            let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            // The owner first: a chown clears set-user-id and set-group-id
            // bits that a chmod in the same call asks for.
            if change.uid.is_some() || change.gid.is_some() {
                std::os::unix::fs::chown(&by_fd, change.uid, change.gid)?;
            }
            if let Some(mode) = change.mode {
                std::fs::set_permissions(&by_fd, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if let Some(ms) = change.mtime_ms {
                let mtime = nix::sys::time::TimeSpec::new(
                    (ms / 1000) as i64,
                    ((ms % 1000) * 1_000_000) as i64,
                );
                nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    &by_fd,
                    &nix::sys::time::TimeSpec::UTIME_OMIT,
                    &mtime,
                    nix::sys::stat::UtimensatFlags::FollowSymlink,
                )
                .map_err(std::io::Error::from)?;
            }
            Ok(())
        })
        .await
    }

    async fn symlink(&self, path: &UfsPath, target: &str) -> UfsResult<()> {
        let (root, rel, target) = (
            self.root.clone(),
            path.as_str().to_owned(),
            target.to_owned(),
        );
        self.blocking(path, move || {
            // Its directory resolved beneath the root; the target is text,
            // resolved only by whoever reads the link.
            let at = beneath::entry(&root, &rel, false).map_err(|r| r.into_io(&rel))?;
            std::os::unix::fs::symlink(&target, &at)
        })
        .await
    }

    async fn make_node(&self, path: &UfsPath, kind: NodeKind, rdev: u64) -> UfsResult<()> {
        let (root, rel) = (self.root.clone(), path.as_str().to_owned());
        self.blocking(path, move || nodes::make(&root, &rel, kind, rdev))
            .await
    }

    async fn hard_link(&self, existing: &UfsPath, new: &UfsPath) -> UfsResult<()> {
        let root = self.root.clone();
        let (from, to) = (existing.as_str().to_owned(), new.as_str().to_owned());
        self.blocking(new, move || nodes::hard_link(&root, &from, &to))
            .await
    }

    async fn rename(&self, from: &UfsPath, to: &UfsPath) -> UfsResult<()> {
        let root = self.root.clone();
        let (from_rel, to_rel) = (from.as_str().to_owned(), to.as_str().to_owned());
        self.blocking(from, move || {
            let a = beneath::entry(&root, &from_rel, false).map_err(|r| r.into_io(&from_rel))?;
            std::fs::symlink_metadata(&a)?;
            let b = beneath::entry(&root, &to_rel, true).map_err(|r| r.into_io(&to_rel))?;
            std::fs::rename(&a, &b)
        })
        .await
    }
}

/// A file being written below [`WRITING_DIR`], moved into place whole when
/// closed.
struct LocalWriter {
    file: Option<File>,
    temp: PathBuf,
    root: PathBuf,
    rel: String,
    name: String,
}

impl LocalWriter {
    fn io(&self, source: std::io::Error) -> UfsError {
        UfsError::Io {
            path: self.name.clone(),
            source,
        }
    }
}

fn place(temp: &Path, root: &Path, rel: &str, file: File) -> std::io::Result<()> {
    file.sync_all()?;
    drop(file);
    let target = beneath::entry(root, rel, true).map_err(|r| r.into_io(rel))?;
    std::fs::rename(temp, target)
}

#[tonic::async_trait]
impl UfsWriter for LocalWriter {
    async fn write(&mut self, data: Bytes) -> UfsResult<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| self.io(std::io::Error::other("writer closed")))?;
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            file.write_all(&data).map(|()| file)
        })
        .await
        .map_err(|e| self.io(std::io::Error::other(e.to_string())))?;
        self.file = Some(written.map_err(|e| self.io(e))?);
        Ok(())
    }

    async fn close(&mut self) -> UfsResult<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| self.io(std::io::Error::other("writer closed")))?;
        let (temp, root, rel) = (self.temp.clone(), self.root.clone(), self.rel.clone());
        tokio::task::spawn_blocking(move || place(&temp, &root, &rel, file))
            .await
            .map_err(|e| self.io(std::io::Error::other(e.to_string())))?
            .map_err(|e| self.io(e))
    }

    async fn abort(&mut self) -> UfsResult<()> {
        self.file = None;
        match std::fs::remove_file(&self.temp) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.io(e)),
            _ => Ok(()),
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Neither closed nor aborted: nothing of it may stay behind.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::os::unix::ffi::OsStrExt;

    fn store(dir: &Path) -> LocalUfs {
        let root = dir.display().to_string();
        LocalUfs::open(&format!("local://{root}"), &root).unwrap()
    }

    /// The incident's trick: same size, mtime put back. The inode's change
    /// time still moves, so the version does.
    #[tokio::test]
    async fn a_rewrite_with_the_mtime_restored_is_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let ufs = store(dir.path());
        let file = dir.path().join("part-0.parquet");
        std::fs::write(&file, b"PAR1 old PAR1").unwrap();
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        let path = UfsPath::parse("part-0.parquet").unwrap();
        let before = ufs.stat(&path).await.unwrap().unwrap().fingerprint();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"PAR1 new PAR1").unwrap();
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let after = ufs.stat(&path).await.unwrap().unwrap().fingerprint();
        assert_eq!(
            (before.length, before.mtime_ms),
            (after.length, after.mtime_ms)
        );
        assert!(!before.same_content(&after), "{before} vs {after}");
    }

    #[tokio::test]
    async fn names_that_are_not_utf8_are_left_out_of_listings() {
        let dir = tempfile::tempdir().unwrap();
        let ufs = store(dir.path());
        let bad = std::ffi::OsStr::from_bytes(b"bad-\xff-name");
        std::fs::write(dir.path().join(bad), b"x").unwrap();
        std::fs::write(dir.path().join("good"), b"x").unwrap();
        let listed: Vec<String> = ufs
            .list(&UfsPath::root())
            .map_ok(|s| s.name)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed, vec!["good".to_owned()]);
    }

    #[tokio::test]
    async fn a_file_written_in_place_under_a_pinned_read_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let ufs = store(dir.path());
        let file = dir.path().join("f");
        std::fs::write(&file, vec![1u8; (CHUNK * 2) as usize]).unwrap();
        let path = UfsPath::parse("f").unwrap();
        let fp = ufs.stat(&path).await.unwrap().unwrap().fingerprint();
        let mut stream = ufs
            .read_stream(&path, 0, CHUNK * 2, Some(&fp))
            .await
            .unwrap();
        let first = stream.try_next().await.unwrap().unwrap();
        assert_eq!(first.len() as u64, CHUNK);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = File::options().write(true).open(&file).unwrap();
        f.write_all_at(&[2u8; 16], CHUNK + 5).unwrap();
        let rest = stream.try_next().await;
        assert!(matches!(rest, Err(UfsError::Changed { .. })), "{rest:?}");
    }
}
