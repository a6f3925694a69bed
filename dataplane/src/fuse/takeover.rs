//! Serving a live mount whose `/dev/fuse` descriptor comes from the fd
//! holder, left by an earlier FUSE process of the same mount.
//!
//! The kernel negotiated the connection with that process at INIT and sends
//! no second INIT, but fuser only serves a descriptor after an INIT
//! handshake. So the session is created over one end of a socket pair that
//! carries a stand-in INIT (the reply goes nowhere), and the held descriptor
//! is then put in place of that end, under the same descriptor number,
//! before a single request is read. Requests the earlier process had read
//! but not answered are queued again with FUSE_NOTIFY_RESEND (Linux 6.9).

use fuser::{Filesystem, Session};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

const FUSE_INIT: u32 = 26;
const FUSE_INIT_EXT: u32 = 1 << 30;
/// FUSE_PASSTHROUGH is capability bit 37: bit 5 of `flags2`.
const FUSE_PASSTHROUGH_FLAGS2: u32 = 1 << 5;
const FUSE_NOTIFY_RESEND: i32 = 7;

/// A FUSE_INIT request as the kernel sends it: `fuse_in_header` (40 bytes)
/// and `fuse_init_in` (64 bytes), offering what the live connection has.
fn stand_in_init(passthrough: bool, max_readahead: u32) -> Vec<u8> {
    let mut init = Vec::with_capacity(104);
    let header_len = 40u32;
    let body_len = 64u32;
    init.extend((header_len + body_len).to_ne_bytes());
    init.extend(FUSE_INIT.to_ne_bytes());
    init.extend(1u64.to_ne_bytes()); // unique
    init.extend(0u64.to_ne_bytes()); // nodeid
    init.extend([0u8; 12]); // uid, gid, pid
    init.extend([0u8; 4]); // total_extlen, padding
    init.extend(7u32.to_ne_bytes()); // major
    init.extend(40u32.to_ne_bytes()); // minor: passthrough's ABI
    init.extend(max_readahead.to_ne_bytes());
    init.extend(FUSE_INIT_EXT.to_ne_bytes());
    let flags2 = if passthrough {
        FUSE_PASSTHROUGH_FLAGS2
    } else {
        0
    };
    init.extend(flags2.to_ne_bytes());
    init.extend([0u8; 44]); // unused
    init
}

/// A session over the live connection `fd`, ready to spawn.
pub(super) fn adopt<FS: Filesystem>(
    filesystem: FS,
    fd: &OwnedFd,
    passthrough: bool,
    max_readahead: u32,
    config: fuser::Config,
) -> std::io::Result<Session<FS>> {
    let (ours, stand_in) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    nix::unistd::write(&ours, &stand_in_init(passthrough, max_readahead))
        .map_err(std::io::Error::from)?;
    // `ours` stays open until the handshake's reply is written to it.
    let session = Session::from_fd(filesystem, stand_in, config.acl, config)?;
    let slot = session.as_fd().as_raw_fd();
    // dup2 swaps what the session's descriptor number refers to in one step;
    // nothing has read from it since the handshake, and the session's
    // threads (and their clones of it) start only afterwards.
    #[allow(unsafe_code)]
    let swapped = unsafe { libc::dup2(fd.as_raw_fd(), slot) };
    if swapped < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(ours);
    Ok(session)
}

/// Asks the kernel to send again every request an earlier FUSE process of
/// this connection read and never answered.
pub(super) fn resend_pending(fd: &OwnedFd) -> std::io::Result<()> {
    let mut notify = Vec::with_capacity(16);
    notify.extend(16u32.to_ne_bytes());
    notify.extend(FUSE_NOTIFY_RESEND.to_ne_bytes());
    notify.extend(0u64.to_ne_bytes());
    nix::unistd::write(fd.as_fd(), &notify).map_err(std::io::Error::from)?;
    Ok(())
}

/// The device ("major:minor") of the FUSE mount at `mount_point`, read from
/// the mount table: looking at the mount itself would wait for a FUSE
/// process to answer.
pub(crate) fn mount_device(mount_point: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    device_in(&table, mount_point)
}

fn device_in(mountinfo: &str, mount_point: &Path) -> Option<String> {
    let want = mount_point.to_str()?;
    mountinfo
        .lines()
        // Later lines are mounted on top.
        .rev()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount.split(' ').collect();
            let at = unescape(fields.get(4)?);
            let is_fuse = fs.split(' ').next()?.starts_with("fuse");
            (is_fuse && at == want).then(|| fields[2].to_owned())
        })
}

/// Mount table fields escape space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topmost_fuse_mount_at_a_path_names_its_device() {
        let table = "\
22 1 0:21 / / rw - ext4 /dev/root rw
40 22 0:50 / /mnt/a rw,nosuid - fuse.weir weir rw
41 22 0:51 / /mnt/b\\040c rw - fuse.weir weir rw
42 40 0:52 / /mnt/a rw - fuse.weir weir rw
43 22 0:53 / /mnt/t rw - tmpfs tmpfs rw
";
        assert_eq!(
            device_in(table, Path::new("/mnt/a")).as_deref(),
            Some("0:52")
        );
        assert_eq!(
            device_in(table, Path::new("/mnt/b c")).as_deref(),
            Some("0:51")
        );
        assert_eq!(device_in(table, Path::new("/mnt/t")), None, "not FUSE");
        assert_eq!(device_in(table, Path::new("/mnt")), None);
    }

    #[test]
    fn the_stand_in_init_is_a_whole_init_request() {
        let init = stand_in_init(true, 8 << 20);
        assert_eq!(init.len(), 104);
        assert_eq!(u32::from_ne_bytes(init[0..4].try_into().unwrap()), 104);
        assert_eq!(
            u32::from_ne_bytes(init[4..8].try_into().unwrap()),
            FUSE_INIT
        );
        assert_eq!(
            u32::from_ne_bytes(init[48..52].try_into().unwrap()),
            8 << 20
        );
        let flags2 = u32::from_ne_bytes(init[56..60].try_into().unwrap());
        assert_eq!(flags2, FUSE_PASSTHROUGH_FLAGS2);
        assert_eq!(
            u32::from_ne_bytes(stand_in_init(false, 0)[56..60].try_into().unwrap()),
            0
        );
    }
}
