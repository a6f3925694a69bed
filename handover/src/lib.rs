//! Keeps a FUSE mount's connection alive while its FUSE process restarts.
//!
//! A FUSE mount lives as long as some process holds its `/dev/fuse`
//! descriptor; when the last one closes, every call on the mount fails with
//! "Transport endpoint is not connected" until something remounts it, and
//! pods that hold a copy of the dead mount never see a new one. So `weir
//! fuse` lodges a copy of its descriptor with a holder that outlives FUSE
//! pods (the CSI node plugin). A FUSE process that dies then leaves its
//! mount waiting (calls block, they do not fail), and the next one takes the
//! descriptor back and serves the same mount.
//!
//! The protocol runs over a unix stream socket: each message is a 4-byte
//! little-endian length and a JSON body, with the descriptor (when there is
//! one) attached as `SCM_RIGHTS` to the message's first byte.

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use nix::sys::stat::SFlag;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fd holder at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

pub type Result<T, E = HandoverError> = std::result::Result<T, E>;

/// What a FUSE process tells the holder about the mount it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountState {
    pub mount_point: PathBuf,
    /// The mount's device as `/proc/self/mountinfo` shows it ("0:52"): a
    /// held descriptor serves the mount at `mount_point` only while the
    /// mount there still has this device.
    pub device: String,
    /// Whether the kernel granted passthrough at the mount's INIT: a process
    /// that takes the mount over gets no INIT of its own.
    pub passthrough: bool,
    /// FUSE processes that served this mount before the sender, so each one
    /// numbers its file handles apart from those the kernel still holds.
    pub generation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Keep this descriptor (attached) for the mount.
    Hold(MountState),
    /// Send back the held descriptor of the mount, if any.
    Take { mount_point: PathBuf },
    /// The FUSE process is stopping: may it unmount?
    Release { mount_point: PathBuf },
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Held,
    Taken(MountState),
    Nothing,
    Keep,
    Released,
    Refused(String),
}

/// The holder's answer to a stopping FUSE process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Volumes still use the mount: leave it mounted; the holder keeps it
    /// alive for the next FUSE process.
    Keep,
    /// Nothing needs the mount: the holder let go of it; unmount.
    Released,
}

/// A message larger than this is not one of ours.
const MAX_MESSAGE: usize = 64 << 10;

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> HandoverError + 'a {
    move |source| HandoverError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn send<T: Serialize>(
    stream: &UnixStream,
    path: &Path,
    message: &T,
    fd: Option<BorrowedFd<'_>>,
) -> Result<()> {
    let body = serde_json::to_vec(message).map_err(|e| HandoverError::Protocol {
        path: path.into(),
        message: e.to_string(),
    })?;
    let len = (body.len() as u32).to_le_bytes();
    let iov = [IoSlice::new(&len), IoSlice::new(&body)];
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<UnixAddr>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
        .map_err(|e| io_err("sending to", path)(e.into()))?;
    if sent != len.len() + body.len() {
        // A unix stream socket takes a message this small whole or fails.
        return Err(HandoverError::Protocol {
            path: path.into(),
            message: format!("short send: {sent} bytes"),
        });
    }
    Ok(())
}

/// The next message and its descriptor; `None` at end of stream.
fn recv<T: DeserializeOwned>(
    stream: &mut UnixStream,
    path: &Path,
) -> Result<Option<(T, Option<OwnedFd>)>> {
    let mut len = [0u8; 4];
    let mut space = nix::cmsg_space!(RawFd);
    let (got, fd) = {
        let mut iov = [IoSliceMut::new(&mut len)];
        let msg = recvmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io_err("receiving from", path)(e.into()))?;
        let mut fd = None;
        for cmsg in msg
            .cmsgs()
            .map_err(|e| io_err("receiving from", path)(e.into()))?
        {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for r in raw {
                    // The kernel just installed these descriptors in this
                    // process for us alone; one is kept, extra ones close.
                    #[allow(unsafe_code)]
                    let owned = unsafe { OwnedFd::from_raw_fd(r) };
                    fd.get_or_insert(owned);
                }
            }
        }
        (msg.bytes, fd)
    };
    if got == 0 {
        return Ok(None);
    }
    stream
        .read_exact(&mut len[got..])
        .map_err(io_err("receiving from", path))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(HandoverError::Protocol {
            path: path.into(),
            message: format!("a message of {len} bytes"),
        });
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .map_err(io_err("receiving from", path))?;
    let message = serde_json::from_slice(&body).map_err(|e| HandoverError::Protocol {
        path: path.into(),
        message: e.to_string(),
    })?;
    Ok(Some((message, fd)))
}

/// One request and its reply on a fresh connection.
fn ask(socket: &Path, request: &Request) -> Result<(Reply, Option<OwnedFd>)> {
    let mut stream = UnixStream::connect(socket).map_err(io_err("connecting to", socket))?;
    // A holder that hangs must not hang a FUSE process's start or stop.
    let limit = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(limit)
        .and_then(|()| stream.set_write_timeout(limit))
        .map_err(io_err("connecting to", socket))?;
    send(&stream, socket, request, None)?;
    recv(&mut stream, socket)?.ok_or_else(|| HandoverError::Protocol {
        path: socket.into(),
        message: "closed without a reply".into(),
    })
}

fn unexpected(socket: &Path, reply: Reply) -> HandoverError {
    HandoverError::Protocol {
        path: socket.into(),
        message: format!("unexpected reply {reply:?}"),
    }
}

/// Takes back the descriptor the holder keeps for `mount_point`, if it
/// keeps one.
pub fn take(socket: &Path, mount_point: &Path) -> Result<Option<(MountState, OwnedFd)>> {
    let request = Request::Take {
        mount_point: mount_point.into(),
    };
    match ask(socket, &request)? {
        (Reply::Taken(state), Some(fd)) => Ok(Some((state, fd))),
        (Reply::Nothing, _) => Ok(None),
        (reply, _) => Err(unexpected(socket, reply)),
    }
}

/// Asks the holder whether a stopping FUSE process may unmount.
pub fn release(socket: &Path, mount_point: &Path) -> Result<Verdict> {
    let request = Request::Release {
        mount_point: mount_point.into(),
    };
    match ask(socket, &request)? {
        (Reply::Keep, _) => Ok(Verdict::Keep),
        (Reply::Released, _) => Ok(Verdict::Released),
        (reply, _) => Err(unexpected(socket, reply)),
    }
}

/// A descriptor lodged with the holder, lodged again whenever the holder
/// restarts (its connection closes) for as long as this process lives.
#[derive(Debug)]
pub struct Lodging {
    held: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Lodging {
    /// Whether the holder has the descriptor now.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Lodges no more (the mount is about to go).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// How long a FUSE process waits before lodging again with a holder that
/// went away or refused.
const RELODGE_AFTER: Duration = Duration::from_secs(1);

/// Lodges `fd` with the holder at `socket` from a thread of its own.
pub fn lodge(socket: PathBuf, state: MountState, fd: OwnedFd) -> Lodging {
    let held = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let lodging = Lodging {
        held: held.clone(),
        stop: stop.clone(),
    };
    let spawned = std::thread::Builder::new()
        .name("fd-lodging".into())
        .spawn(move || {
            let mut warned = false;
            while !stop.load(Ordering::SeqCst) {
                match lodge_once(&socket, &state, &fd, &held) {
                    Ok(()) => {
                        tracing::info!(socket = %socket.display(), "fd holder went away; lodging again");
                        warned = false;
                    }
                    Err(e) if !warned => {
                        tracing::warn!(error = %e, "could not lodge the FUSE descriptor; retrying");
                        warned = true;
                    }
                    Err(_) => {}
                }
                held.store(false, Ordering::SeqCst);
                std::thread::sleep(RELODGE_AFTER);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to lodge the FUSE descriptor");
    }
    lodging
}

/// Lodges once and waits until the holder's end of the connection closes.
fn lodge_once(socket: &Path, state: &MountState, fd: &OwnedFd, held: &AtomicBool) -> Result<()> {
    let mut stream = UnixStream::connect(socket).map_err(io_err("connecting to", socket))?;
    send(
        &stream,
        socket,
        &Request::Hold(state.clone()),
        Some(fd.as_fd()),
    )?;
    match recv::<Reply>(&mut stream, socket)? {
        Some((Reply::Held, _)) => {
            tracing::info!(socket = %socket.display(), mount_point = %state.mount_point.display(), "FUSE descriptor lodged");
            held.store(true, Ordering::SeqCst);
        }
        Some((reply, _)) => return Err(unexpected(socket, reply)),
        None => return Ok(()),
    }
    while recv::<Reply>(&mut stream, socket)?.is_some() {}
    Ok(())
}

/// Whether `fd` is an open `/dev/fuse` (character device 10:229): the
/// holder keeps nothing else.
fn is_fuse_device(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| {
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        kind == SFlag::S_IFCHR
            && nix::sys::stat::major(st.st_rdev) == 10
            && nix::sys::stat::minor(st.st_rdev) == 229
    })
}

struct HeldMount {
    state: MountState,
    fd: OwnedFd,
    /// The connection it was lodged on closed: its FUSE process is gone
    /// and calls on the mount wait for the next one.
    orphaned: bool,
}

/// The holder: keeps one descriptor per mount point for FUSE processes.
pub struct Holder {
    mounts: Mutex<HashMap<PathBuf, HeldMount>>,
    /// Whether volumes still use a mount point (asked when its FUSE process
    /// stops, with `mounts` locked: it must not wait for anything that waits
    /// for this holder).
    in_use: Box<dyn Fn(&Path) -> bool + Send + Sync>,
    /// Open connections, so [`Holder::close`] can end them.
    connections: Mutex<HashMap<u64, UnixStream>>,
    next_connection: AtomicU64,
    closed: AtomicBool,
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holder")
            .field("mounts", &self.held())
            .finish()
    }
}

impl Holder {
    pub fn new(in_use: impl Fn(&Path) -> bool + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            mounts: Mutex::new(HashMap::new()),
            in_use: Box::new(in_use),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Listens at `socket` (a stale socket file is replaced; only root may
    /// connect) and serves every connection from a thread of its own.
    pub fn listen(self: &Arc<Self>, socket: &Path) -> Result<()> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", socket)(e)),
        }
        let listener = UnixListener::bind(socket).map_err(io_err("binding", socket))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("restricting", socket))?;
        let holder = self.clone();
        let path = socket.to_path_buf();
        std::thread::Builder::new()
            .name("fd-holder".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let stream = match stream {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "fd holder: accept failed");
                            continue;
                        }
                    };
                    if holder.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    let id = holder.next_connection.fetch_add(1, Ordering::Relaxed);
                    if let Ok(copy) = stream.try_clone() {
                        holder
                            .connections
                            .lock()
                            .expect("connections")
                            .insert(id, copy);
                    }
                    let holder = holder.clone();
                    let path = path.clone();
                    let spawned = std::thread::Builder::new()
                        .name("fd-holder-conn".into())
                        .spawn(move || {
                            holder.serve(stream, &path);
                            holder.connections.lock().expect("connections").remove(&id);
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "fd holder: no thread for a connection");
                    }
                }
            })
            .map_err(io_err("serving", socket))?;
        tracing::info!(socket = %socket.display(), "holding FUSE descriptors");
        Ok(())
    }

    /// Stops serving as if the process ended: every connection closes, so
    /// living FUSE processes lodge their descriptors with the next holder.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for (_, stream) in self.connections.lock().expect("connections").drain() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        self.mounts.lock().expect("held mounts").clear();
    }

    /// Lets go of the mount's descriptor (its last volume left the node);
    /// true if one was held.
    pub fn forget(&self, mount_point: &Path) -> bool {
        let gone = self
            .mounts
            .lock()
            .expect("held mounts")
            .remove(mount_point)
            .is_some();
        if gone {
            tracing::info!(mount_point = %mount_point.display(), "let go of a FUSE descriptor");
        }
        gone
    }

    /// Whether the mount's FUSE process is gone and the mount waits, held,
    /// for the next one: looking at it (stat) would block until then.
    pub fn waiting(&self, mount_point: &Path) -> bool {
        self.mounts
            .lock()
            .expect("held mounts")
            .get(mount_point)
            .is_some_and(|m| m.orphaned)
    }

    /// The mounts whose descriptors are held.
    pub fn held(&self) -> Vec<MountState> {
        let mounts = self.mounts.lock().expect("held mounts");
        let mut held: Vec<MountState> = mounts.values().map(|m| m.state.clone()).collect();
        held.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
        held
    }

    fn serve(&self, mut stream: UnixStream, socket: &Path) {
        // What this connection lodged: orphaned when it closes.
        let mut lodged: Option<MountState> = None;
        loop {
            let (request, fd) = match recv::<Request>(&mut stream, socket) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "fd holder: a bad request");
                    break;
                }
            };
            if let Request::Hold(state) = &request {
                lodged = Some(state.clone());
            }
            let (reply, fd_out) = self.answer(request, fd);
            let sent = match &fd_out {
                Some(fd) => send(&stream, socket, &reply, Some(fd.as_fd())),
                None => send(&stream, socket, &reply, None),
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, "fd holder: could not reply");
                break;
            }
        }
        if let Some(state) = lodged {
            let mut mounts = self.mounts.lock().expect("held mounts");
            if let Some(held) = mounts.get_mut(&state.mount_point)
                && held.state == state
            {
                tracing::info!(mount_point = %state.mount_point.display(), "a FUSE process left its mount: holding it for the next one");
                held.orphaned = true;
            }
        }
    }

    fn answer(&self, request: Request, fd: Option<OwnedFd>) -> (Reply, Option<OwnedFd>) {
        let mut mounts = self.mounts.lock().expect("held mounts");
        match request {
            Request::Hold(state) => {
                let Some(fd) = fd.filter(is_fuse_device) else {
                    return (
                        Reply::Refused("no /dev/fuse descriptor attached".into()),
                        None,
                    );
                };
                tracing::info!(mount_point = %state.mount_point.display(), generation = state.generation, "holding a FUSE descriptor");
                mounts.insert(
                    state.mount_point.clone(),
                    HeldMount {
                        state,
                        fd,
                        orphaned: false,
                    },
                );
                (Reply::Held, None)
            }
            Request::Take { mount_point } => match mounts.get(&mount_point) {
                Some(held) => match held.fd.try_clone() {
                    Ok(fd) => (Reply::Taken(held.state.clone()), Some(fd)),
                    Err(e) => (Reply::Refused(e.to_string()), None),
                },
                None => (Reply::Nothing, None),
            },
            Request::Release { mount_point } => {
                if mounts.contains_key(&mount_point) && (self.in_use)(&mount_point) {
                    (Reply::Keep, None)
                } else {
                    if mounts.remove(&mount_point).is_some() {
                        tracing::info!(mount_point = %mount_point.display(), "released a FUSE descriptor");
                    }
                    (Reply::Released, None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn state(mount_point: &str, generation: u64) -> MountState {
        MountState {
            mount_point: mount_point.into(),
            device: "0:99".into(),
            passthrough: true,
            generation,
        }
    }

    fn dev_fuse() -> Option<OwnedFd> {
        File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .ok()
            .map(OwnedFd::from)
    }

    fn wait_until(mut ok: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_lodged_descriptor_is_taken_back_kept_while_in_use_and_lodged_again_after_a_holder_restart()
    {
        let Some(fd) = dev_fuse() else {
            eprintln!("skipped: no /dev/fuse");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("holder.sock");
        let in_use = Arc::new(AtomicBool::new(true));
        let flag = in_use.clone();
        let holder = Holder::new(move |_| flag.load(Ordering::SeqCst));
        holder.listen(&socket).unwrap();
        assert!(take(&socket, Path::new("/m")).unwrap().is_none());

        let lodging = lodge(socket.clone(), state("/m", 3), fd);
        wait_until(|| lodging.is_held());
        assert!(
            !holder.waiting(Path::new("/m")),
            "its FUSE process is there"
        );
        let (got, taken) = take(&socket, Path::new("/m")).unwrap().expect("held");
        assert_eq!(got, state("/m", 3));
        assert!(is_fuse_device(&taken), "what comes back is /dev/fuse");
        assert!(take(&socket, Path::new("/other")).unwrap().is_none());
        assert_eq!(release(&socket, Path::new("/m")).unwrap(), Verdict::Keep);
        assert_eq!(holder.held().len(), 1, "kept while in use");

        // A new holder at the same socket (the plugin restarted) gets the
        // descriptor again from the living FUSE process.
        let second = Holder::new(|_| false);
        second.listen(&socket).unwrap();
        holder.close();
        wait_until(|| second.held() == vec![state("/m", 3)]);
        assert!(holder.held().is_empty(), "a closed holder holds nothing");
        lodging.stop();
        assert_eq!(
            release(&socket, Path::new("/m")).unwrap(),
            Verdict::Released
        );
        assert!(second.held().is_empty(), "released when no volume uses it");
        assert!(take(&socket, Path::new("/m")).unwrap().is_none());
    }

    #[test]
    fn the_holder_refuses_anything_but_dev_fuse_and_forgets_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("holder.sock");
        let holder = Holder::new(|_| true);
        holder.listen(&socket).unwrap();
        let not_fuse = OwnedFd::from(File::open("/dev/null").unwrap());
        let stream = UnixStream::connect(&socket).unwrap();
        send(
            &stream,
            &socket,
            &Request::Hold(state("/m", 0)),
            Some(not_fuse.as_fd()),
        )
        .unwrap();
        let mut stream = stream;
        match recv::<Reply>(&mut stream, &socket).unwrap() {
            Some((Reply::Refused(why), None)) => assert!(why.contains("/dev/fuse"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(holder.held().is_empty());
        assert_eq!(
            release(&socket, Path::new("/m")).unwrap(),
            Verdict::Released,
            "nothing held: the FUSE process unmounts"
        );
        if let Some(fd) = dev_fuse() {
            let lodging = lodge(socket.clone(), state("/m", 0), fd);
            wait_until(|| lodging.is_held());
            // The lodging process goes away: the mount waits, held.
            let mut gone = UnixStream::connect(&socket).unwrap();
            let copy = dev_fuse().unwrap();
            send(
                &gone,
                &socket,
                &Request::Hold(state("/n", 1)),
                Some(copy.as_fd()),
            )
            .unwrap();
            assert!(matches!(
                recv::<Reply>(&mut gone, &socket).unwrap(),
                Some((Reply::Held, None))
            ));
            assert!(!holder.waiting(Path::new("/n")));
            drop(gone);
            wait_until(|| holder.waiting(Path::new("/n")));
            assert!(!holder.waiting(Path::new("/m")));
            assert!(holder.forget(Path::new("/m")));
            assert!(!holder.forget(Path::new("/m")));
            assert!(take(&socket, Path::new("/m")).unwrap().is_none());
        }
        let err = take(&dir.path().join("absent.sock"), Path::new("/m")).unwrap_err();
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }
}
