//! The mount operations the node plugin needs: bind mounts (read-only when
//! asked), unmounts (lazy when busy), the kernel's mount table, and whether
//! a mount's source died (a FUSE process that went away leaves
//! "Transport endpoint is not connected").

use crate::{Error, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct MountEntry {
    /// Path inside the source filesystem that is mounted (for binds).
    pub root: String,
    pub target: PathBuf,
    pub fs_type: String,
    pub read_only: bool,
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let fs_type = right.split(' ').next()?.to_owned();
            Some(MountEntry {
                root: unescape(f.get(3)?),
                target: PathBuf::from(unescape(f.get(4)?)),
                fs_type,
                read_only: f.get(5)?.split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

pub fn mount_table() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| Error::Io {
        what: "reading the mount table",
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    Ok(parse_mountinfo(&text))
}

/// The topmost mount at `path`, if `path` is a mount point.
pub fn mounted_at(path: &Path) -> Result<Option<MountEntry>> {
    Ok(mount_table()?.into_iter().rev().find(|m| m.target == path))
}

/// Whether a FUSE filesystem is mounted at `path`.
pub fn fuse_mounted(path: &Path) -> Result<bool> {
    Ok(mounted_at(path)?.is_some_and(|m| m.fs_type.starts_with("fuse")))
}

/// A mount whose FUSE daemon is gone answers every call with ENOTCONN.
pub fn is_broken(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(Errno::ENOTCONN as i32),
    }
}

/// The device of the filesystem at `path`: a new FUSE mount has a new one.
pub fn device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.dev())
}

fn io(what: &'static str, path: &Path, e: Errno) -> Error {
    Error::Io {
        what,
        path: path.into(),
        source: std::io::Error::from_raw_os_error(e as i32),
    }
}

/// Bind-mounts `source` onto `target` (which must exist), read-only when
/// asked: a read-only bind needs a second, remounting call.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io("bind-mounting onto", target, e))?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(io("making read-only", target, e));
        }
    }
    Ok(())
}

/// Unmounts `target`; a busy mount (a process still has a file open) is
/// detached lazily so the pod can go. Not mounted is fine.
pub fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) | Err(Errno::ENOTCONN) => umount2(target, MntFlags::MNT_DETACH)
            .or_else(|e| if e == Errno::EINVAL { Ok(()) } else { Err(e) })
            .map_err(|e| io("unmounting", target, e)),
        Err(e) => Err(io("unmounting", target, e)),
    }
}

/// Unmounts every mount stacked at `target` (each repair after a FUSE
/// restart adds one).
pub fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..256 {
        if mounted_at(target)?.is_none() {
            return Ok(());
        }
        unmount(target)?;
    }
    Ok(())
}

/// Total, free and used bytes and inodes of the filesystem at `path`.
pub fn usage(path: &Path) -> Result<(u64, u64, u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| io("statfs of", path, e))?;
    let frsize = s.fragment_size();
    Ok((
        s.blocks() * frsize,
        s.blocks_available() * frsize,
        s.files(),
        s.files_free(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 36 0:50 / /var/lib/weir/mnt/ns/ds/fuse ro,nosuid shared:9 - fuse.weir weir rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, PathBuf::from("/mnt two"));
        assert_eq!(m[0].root, "/mnt1");
        assert!(!m[0].read_only);
        assert_eq!(m[1].fs_type, "fuse.weir");
        assert!(m[1].read_only);
    }
}
