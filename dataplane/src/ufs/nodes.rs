//! Special files (fifos, sockets, character and block devices) and hard
//! links. A special file holds no data: what it is and its device number
//! are its content, kept as its version (`node:<kind>:<rdev>:<identity>`) as a link
//! keeps its target, so stored inodes and logged listings need no new
//! field. Local stores make them beneath the root; FUSE mounts are
//! `nodev`, so a device file shown grants nothing.

use super::beneath;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileTypeExt;

/// How a special file's kind and device number are kept as its version.
pub const NODE_VERSION_PREFIX: &str = "node:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl NodeKind {
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "socket",
            NodeKind::CharDevice => "char",
            NodeKind::BlockDevice => "block",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            NodeKind::Fifo,
            NodeKind::Socket,
            NodeKind::CharDevice,
            NodeKind::BlockDevice,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// The kind of a file type, `None` for files, directories and links.
    pub fn of(t: std::fs::FileType) -> Option<Self> {
        if t.is_fifo() {
            Some(NodeKind::Fifo)
        } else if t.is_socket() {
            Some(NodeKind::Socket)
        } else if t.is_char_device() {
            Some(NodeKind::CharDevice)
        } else if t.is_block_device() {
            Some(NodeKind::BlockDevice)
        } else {
            None
        }
    }

    /// Its `S_IF*` bits.
    pub fn type_bits(self) -> u32 {
        match self {
            NodeKind::Fifo => libc::S_IFIFO,
            NodeKind::Socket => libc::S_IFSOCK,
            NodeKind::CharDevice => libc::S_IFCHR,
            NodeKind::BlockDevice => libc::S_IFBLK,
        }
    }

    pub fn from_type_bits(mode: u32) -> Option<Self> {
        match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(NodeKind::Fifo),
            libc::S_IFSOCK => Some(NodeKind::Socket),
            libc::S_IFCHR => Some(NodeKind::CharDevice),
            libc::S_IFBLK => Some(NodeKind::BlockDevice),
            _ => None,
        }
    }

    /// The version of a special file of this kind: its device number and
    /// the store's identity of the file (a local version, which carries
    /// its change time).
    pub fn version(self, rdev: u64, identity: &str) -> String {
        format!("{NODE_VERSION_PREFIX}{}:{rdev}:{identity}", self.name())
    }

    /// The kind and device number a version says, if it is a special
    /// file's.
    pub fn parse_version(version: &str) -> Option<(Self, u64)> {
        let mut parts = version.strip_prefix(NODE_VERSION_PREFIX)?.splitn(3, ':');
        let kind = Self::from_name(parts.next()?)?;
        Some((kind, parts.next()?.parse().ok()?))
    }
}

/// Makes the special file `rel` beneath `root` (owner-only permissions
/// until the caller sets its own).
pub(super) fn make(
    root: &std::path::Path,
    rel: &str,
    kind: NodeKind,
    rdev: u64,
) -> std::io::Result<()> {
    let at = beneath::entry(root, rel, false).map_err(|r| r.into_io(rel))?;
    let (dir, name) = (
        at.parent().unwrap_or(&at),
        at.file_name().unwrap_or_default(),
    );
    let dir = std::fs::File::open(dir)?;
    let kind = nix::sys::stat::SFlag::from_bits_truncate(kind.type_bits());
    nix::sys::stat::mknodat(
        dir.as_fd(),
        name,
        kind,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        rdev as libc::dev_t,
    )
    .map_err(std::io::Error::from)
}

/// Gives the file `existing` the second name `new`, both beneath `root`.
pub(super) fn hard_link(root: &std::path::Path, existing: &str, new: &str) -> std::io::Result<()> {
    let from = beneath::open(
        root,
        existing,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW,
    )
    .map_err(|r| r.into_io(existing))?;
    if from.metadata()?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{existing} is a directory; directories have one name"),
        ));
    }
    let to = beneath::entry(root, new, false).map_err(|r| r.into_io(new))?;
    // Through the descriptor that was resolved beneath the root.
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        format!("/proc/self/fd/{}", from.as_raw_fd()).as_str(),
        nix::fcntl::AT_FDCWD,
        &to,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_versions_round_trip() {
        for kind in [
            NodeKind::Fifo,
            NodeKind::Socket,
            NodeKind::CharDevice,
            NodeKind::BlockDevice,
        ] {
            assert_eq!(
                NodeKind::parse_version(&kind.version(0x0801, "7.1.2")),
                Some((kind, 0x0801))
            );
            assert_eq!(
                NodeKind::from_type_bits(kind.type_bits() | 0o644),
                Some(kind)
            );
        }
        assert_eq!(NodeKind::parse_version("link:x"), None);
        assert_eq!(NodeKind::parse_version("123.456.7"), None);
    }
}
