//! The mount operations the node plugin needs: bind mounts (read-only when
//! asked), unmounts (lazy when busy), the kernel's mount table, and whether
//! a mount's source died (a FUSE process that went away leaves
//! "Transport endpoint is not connected").

use crate::{Error, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Set when the plugin works in the mount namespace of a host process (the
/// kubelet; the plugin's pod shares the host's PID namespace). Mounts
/// stacked by repairs propagate into each namespace's copy in its own
/// order, so only the kubelet's view (which is the pods') tells what a pod
/// sees: checks read it through `/proc/<pid>/root` and
/// `/proc/<pid>/mountinfo`, and mounts are made there with `nsenter`.
static HOST_PROCESS: OnceLock<(String, PathBuf)> = OnceLock::new();
static HOST_PID: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);

/// Works in the mount namespace of the host process named `comm` from now
/// on: of the one that sees `anchor` (a host directory this plugin has
/// mounted at the same path, the kubelet's root) as this plugin does, when
/// the PID namespace shows several (nodes sharing a machine).
pub fn use_mount_namespace_of(comm: String, anchor: PathBuf) {
    let _ = HOST_PROCESS.set((comm, anchor));
}

/// Whether `a` and `b` are the same file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The pid of the host process whose namespace is used, found again when
/// it restarted.
fn host_pid() -> Option<u32> {
    let (comm, anchor) = HOST_PROCESS.get()?;
    let named = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    };
    let ours = |pid: u32| {
        let theirs = Path::new(&format!("/proc/{pid}/root"))
            .join(anchor.strip_prefix("/").unwrap_or(anchor));
        same_file(&theirs, anchor)
    };
    let mut cached = HOST_PID.lock().expect("host pid");
    if let Some(pid) = *cached
        && named(pid)
        && ours(pid)
    {
        return Some(pid);
    }
    let candidates: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| named(*pid))
        .collect();
    // Ours when one sees the anchor as we do; else the only (or first) one.
    let found = candidates
        .iter()
        .copied()
        .find(|pid| ours(*pid))
        .or_else(|| candidates.first().copied());
    if found.is_none() {
        tracing::warn!(process = %comm, "no such host process: mounts are checked in the plugin's own namespace");
    }
    *cached = found;
    found
}

/// `path` as the host process sees it.
fn host_view(path: &Path) -> PathBuf {
    match host_pid() {
        Some(pid) => {
            Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
        }
        None => path.to_path_buf(),
    }
}

/// Runs `mount` or `umount` in the host process's mount namespace.
fn in_host(pid: u32, what: &'static str, target: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("-m/proc/{pid}/ns/mnt"))
        .arg("--")
        .args(args)
        .output()
        .map_err(|source| Error::Io {
            what,
            path: target.into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Io {
        what,
        path: target.into(),
        source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    })
}

/// Whether anything exists at `path` (a broken mount counts).
pub fn exists(path: &Path) -> bool {
    host_view(path).exists() || is_broken(path)
}

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
    let table = match host_pid() {
        Some(pid) => format!("/proc/{pid}/mountinfo"),
        None => "/proc/self/mountinfo".to_owned(),
    };
    let text = std::fs::read_to_string(&table).map_err(|source| Error::Io {
        what: "reading the mount table",
        path: table.into(),
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
    match std::fs::metadata(host_view(path)) {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(Errno::ENOTCONN as i32),
    }
}

/// The device of the filesystem at `path`: a new FUSE mount has a new one.
pub fn device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(host_view(path)).ok().map(|m| m.dev())
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
    if let Some(ns) = host_pid() {
        let (src, dst) = (source.to_string_lossy(), target.to_string_lossy());
        in_host(
            ns,
            "bind-mounting onto",
            target,
            &["mount", "--bind", &src, &dst],
        )?;
        if read_only
            && let Err(e) = in_host(
                ns,
                "making read-only",
                target,
                &["mount", "-o", "remount,bind,ro", &dst],
            )
        {
            let _ = in_host(ns, "unmounting", target, &["umount", "-l", &dst]);
            return Err(e);
        }
        return Ok(());
    }
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
    if let Some(ns) = host_pid() {
        if mounted_at(target)?.is_none() {
            return Ok(());
        }
        let t = target.to_string_lossy();
        return in_host(ns, "unmounting", target, &["umount", &t])
            .or_else(|_| in_host(ns, "unmounting", target, &["umount", "-l", &t]));
    }
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
    let s = nix::sys::statvfs::statvfs(&host_view(path)).map_err(|e| io("statfs of", path, e))?;
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
