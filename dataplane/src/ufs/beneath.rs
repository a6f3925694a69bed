//! Paths of a local store resolved without ever leaving its root. Every
//! component, symbolic links included, must resolve beneath the root: the
//! kernel checks it in the same call that opens (`openat2` with
//! `RESOLVE_BENEATH`), so a link swapped between a check and a read cannot
//! lead a read out, and what is read is the descriptor that was checked. A
//! link pointing out of the root (`escape -> /etc/passwd`, `up -> ../..`),
//! a magic link of `/proc` and a link loop are refused as such.

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use std::fs::{File, Metadata};
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Why a path could not be opened beneath the root.
#[derive(Debug)]
pub(super) enum Refusal {
    /// Nothing is there.
    Missing,
    /// A link leads out of the root (or through `/proc`'s magic links).
    Outside,
    /// Links that loop or nest too deep.
    Loop,
    Io(std::io::Error),
}

impl Refusal {
    /// As an I/O error naming the path: a refused path is a permission
    /// error, final, never retried.
    pub fn into_io(self, rel: &str) -> std::io::Error {
        match self {
            Refusal::Missing => std::io::Error::new(ErrorKind::NotFound, rel.to_owned()),
            Refusal::Outside => std::io::Error::new(
                ErrorKind::PermissionDenied,
                format!("{rel} leads outside the mount's root through a symbolic link"),
            ),
            Refusal::Loop => std::io::Error::new(
                ErrorKind::PermissionDenied,
                format!("{rel}: symbolic links that loop"),
            ),
            Refusal::Io(e) => e,
        }
    }
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == ErrorKind::NotFound {
            Refusal::Missing
        } else {
            Refusal::Io(e)
        }
    }
}

/// A store's root directory, held open while paths are resolved beneath it.
pub(super) struct Root(File);

impl Root {
    pub fn open(root: &Path) -> Result<Self, Refusal> {
        Ok(Root(File::open(root)?))
    }

    /// `rel` (relative to the root, empty for the root itself) opened with
    /// `flags`, resolved beneath the root.
    pub fn file(&self, rel: &str, flags: OFlag) -> Result<File, Refusal> {
        let rel = if rel.is_empty() { "." } else { rel };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match openat2(self.0.as_fd(), rel, how) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::ENOENT) => Err(Refusal::Missing),
            Err(Errno::EXDEV) => Err(Refusal::Outside),
            Err(Errno::ELOOP) => Err(Refusal::Loop),
            Err(e) => Err(Refusal::Io(e.into())),
        }
    }

    /// What `rel` itself is, its last component not followed (its
    /// directories are, beneath the root), with a link's target.
    pub fn entry(&self, rel: &str) -> Result<(Metadata, Option<String>), Refusal> {
        let file = self.file(rel, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
        let m = file.metadata()?;
        if !m.file_type().is_symlink() {
            return Ok((m, None));
        }
        let target = nix::fcntl::readlinkat(file.as_fd(), "")
            .map_err(|e| Refusal::Io(e.into()))?
            .into_string()
            .map_err(|raw| {
                Refusal::Io(std::io::Error::new(
                    ErrorKind::InvalidData,
                    format!("{rel}: the link's target {raw:?} is not UTF-8"),
                ))
            })?;
        Ok((m, Some(target)))
    }
}

/// `rel` opened with `flags`, resolved beneath `root`.
pub(super) fn open(root: &Path, rel: &str, flags: OFlag) -> Result<File, Refusal> {
    Root::open(root)?.file(rel, flags)
}

/// The real path of directory `rel`, resolved beneath `root` (created,
/// each component beneath the root, when `create`). Calls by path made on
/// it after this check are as safe as its components: only someone who may
/// write the dataset's own directories could swap one for a link meanwhile.
pub(super) fn directory(root: &Path, rel: &str, create: bool) -> Result<PathBuf, Refusal> {
    let root_dir = Root::open(root)?;
    let mut done = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        let next = if done.is_empty() {
            part.to_owned()
        } else {
            format!("{done}/{part}")
        };
        match root_dir.file(&next, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(_) => {}
            Err(Refusal::Missing) if create => {
                let parent = root_dir.file(&done, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
                match nix::sys::stat::mkdirat(
                    parent.as_fd(),
                    part,
                    nix::sys::stat::Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(Refusal::Io(e.into())),
                }
            }
            Err(e) => return Err(e),
        }
        done = next;
    }
    let dir = root_dir.file(&done, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    Ok(std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))?)
}

/// The real path `rel` names beneath `root`: its directory resolved (and
/// created when `create`), then its own name, which is not followed.
pub(super) fn entry(root: &Path, rel: &str, create: bool) -> Result<PathBuf, Refusal> {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    Ok(directory(root, dir, create)?.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_followed_only_while_they_stay_beneath_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"outside").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/r1")).unwrap();
        std::fs::write(root.join("blobs/abc"), b"blob").unwrap();
        symlink("../../blobs/abc", root.join("snapshots/r1/model.bin")).unwrap();
        symlink(outside.path().join("secret"), root.join("escape")).unwrap();
        symlink("../..", root.join("up")).unwrap();
        symlink(outside.path(), root.join("elsewhere")).unwrap();
        symlink("loop-b", root.join("loop-a")).unwrap();
        symlink("loop-a", root.join("loop-b")).unwrap();
        symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();

        let read = |rel: &str| {
            open(&root, rel, OFlag::O_RDONLY).map(|f| {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut &f, &mut s).unwrap();
                s
            })
        };
        assert_eq!(read("snapshots/r1/model.bin").unwrap(), "blob");
        for (rel, want) in [
            ("escape", "outside"),
            ("up/etc/passwd", "outside"),
            ("elsewhere/secret", "outside"),
            ("magic", "outside"),
            ("snapshots/../../root-sibling", "outside"),
            ("loop-a", "loop"),
        ] {
            let got = match read(rel) {
                Err(Refusal::Outside) => "outside",
                Err(Refusal::Loop) => "loop",
                other => panic!("{rel}: {other:?}"),
            };
            assert_eq!(got, want, "{rel}");
        }
        assert!(matches!(read("missing"), Err(Refusal::Missing)));
        let root_dir = Root::open(&root).unwrap();
        assert!(root_dir.entry("blobs").unwrap().0.is_dir());
        let (_, link) = root_dir.entry("snapshots/r1/model.bin").unwrap();
        assert_eq!(
            link.as_deref(),
            Some("../../blobs/abc"),
            "a link is seen as one"
        );
        let (_, link) = root_dir.entry("escape").unwrap();
        assert!(link.is_some(), "seen as a link, not followed");
    }

    #[test]
    fn directories_made_for_writes_stay_beneath_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        symlink(outside.path(), root.join("link")).unwrap();
        let made = directory(&root, "a/b", true).unwrap();
        assert_eq!(made, root.canonicalize().unwrap().join("a/b"));
        assert!(made.is_dir());
        assert!(matches!(
            directory(&root, "link/sub", true),
            Err(Refusal::Outside)
        ));
        assert!(matches!(
            entry(&root, "link/file", false),
            Err(Refusal::Outside)
        ));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(
            entry(&root, "a/b/f", false).unwrap(),
            root.canonicalize().unwrap().join("a/b/f")
        );
    }
}
