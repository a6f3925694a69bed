//! Mounting and unmounting: a fresh mount, or the live mount taken over
//! from the fd holder (a FUSE process that died while volumes used its
//! mount), the descriptor lodged with the holder, and at shutdown either
//! an unmount or the mount left, alive, to the next FUSE process.

use super::fs::WeirFuse;
use super::handles::Handles;
use super::passthrough::LocalReads;
use super::{FuseConfig, FuseError, READAHEAD, takeover};
use crate::client::{ClientError, FileSystem};
use fuser::MountOption;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    let _metrics = match config.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, &fs).await?),
        None => None,
    };
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
        owner: (config.uid, config.gid),
        paths: Mutex::new(HashMap::new()),
        root_id: AtomicU64::new(root_info.id),
        handles: Handles::new(generation),
        reads: LocalReads::new(passthrough.clone()),
    };
    let mut served = match held {
        Some((state, fd)) => adopt(weir, &config, state, fd).await?,
        None => mount(weir, &config).await?,
    };
    let lodging = lodge(&config, &mut served, passthrough.load(Ordering::Relaxed));
    shutdown.await;
    if let Some(lodging) = lodging
        && leave_to_holder(&config, &lodging).await?
    {
        // Dropping the session would unmount; the process ends instead.
        std::mem::forget(served.session);
        return Ok(());
    }
    unmount(served, &config).await
}

/// The client's `/metrics` server, stopped when the mount ends.
struct MetricsServer(tokio::task::JoinHandle<()>);

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the client's `/metrics` on `addr`; a port taken fails the mount
/// with its reason rather than leaving it unobserved.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    fs: &FileSystem,
) -> Result<MetricsServer, FuseError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| FuseError::Metrics { addr, source })?;
    let mut registry = prometheus_client::registry::Registry::default();
    fs.read_paths().register(&mut registry);
    tracing::info!(%addr, "serving /metrics");
    Ok(MetricsServer(tokio::spawn(async move {
        if let Err(e) = weir_api::metrics::serve(listener, registry).await {
            tracing::warn!(error = %e, "metrics server ended");
        }
    })))
}

fn mount_err(config: &FuseConfig, source: std::io::Error) -> FuseError {
    FuseError::Mount {
        path: config.mount_point.clone(),
        source,
    }
}

/// The mount options and threading of this mount.
fn fuser_config(config: &FuseConfig) -> fuser::Config {
    let mut fc = fuser::Config::default();
    fc.mount_options.extend([
        MountOption::FSName("weir".into()),
        MountOption::Subtype("weir".into()),
        MountOption::DefaultPermissions,
        // Modes are shown as the store keeps them, set-user-id bits and
        // device files included; neither may grant anything on this host.
        MountOption::NoSuid,
        MountOption::NoDev,
    ]);
    if config.read_only {
        fc.mount_options.push(MountOption::RO);
    }
    if config.allow_other {
        // The session's ACL, not a bare mount option: fuser checks each
        // request's uid itself and answers EACCES to every user but the
        // mounting one unless the session allows all (it then also passes
        // `allow_other` to the kernel). `DefaultPermissions` keeps the
        // kernel checking each file's mode for those users.
        fc.acl = fuser::SessionACL::All;
    }
    fc.n_threads = Some(config.threads.max(1));
    // A cloned descriptor's unanswered requests fail when the process dies
    // (the kernel ends them as it closes that descriptor); on the one the
    // holder keeps they wait for the next process instead.
    fc.clone_fd = config.threads > 1 && config.fd_holder.is_none();
    fc
}

/// Takes the live mount over from the fd holder. Mounting blocks on the
/// kernel's INIT, which needs the runtime the file system calls into: it
/// runs off the runtime's threads.
async fn adopt(
    weir: WeirFuse,
    config: &FuseConfig,
    state: weir_handover::MountState,
    fd: OwnedFd,
) -> Result<Served, FuseError> {
    let fc = fuser_config(config);
    let generation = weir.handles.generation();
    let (session, fd) = tokio::task::spawn_blocking(move || {
        let session = takeover::adopt(weir, &fd, state.passthrough, READAHEAD, fc)?;
        let session = session.spawn()?;
        takeover::resend_pending(&fd)?;
        Ok::<_, std::io::Error>((session, fd))
    })
    .await
    .map_err(|e| mount_err(config, std::io::Error::other(e.to_string())))?
    .map_err(|e| mount_err(config, e))?;
    tracing::info!(mount_point = %config.mount_point.display(), generation, "took over the live mount from the fd holder");
    Ok(Served {
        session,
        fd: Some(fd),
        adopted: true,
        generation,
    })
}

/// A fresh mount (a dead one of an earlier process detached first).
async fn mount(weir: WeirFuse, config: &FuseConfig) -> Result<Served, FuseError> {
    let mount_point = config.mount_point.clone();
    clear_dead_mount(&mount_point);
    std::fs::create_dir_all(&mount_point).map_err(|e| mount_err(config, e))?;
    let fc = fuser_config(config);
    let lodge = config.fd_holder.is_some();
    let generation = weir.handles.generation();
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
    .map_err(|e| mount_err(config, std::io::Error::other(e.to_string())))?
    .map_err(|e| mount_err(config, e))?;
    tracing::info!(mount_point = %mount_point.display(), sub_path = %config.sub_path, "mounted");
    raise_readahead(&mount_point);
    Ok(Served {
        session,
        fd,
        adopted: false,
        generation,
    })
}

/// Lodges a copy of the connection's descriptor with the fd holder, so a
/// restart of this process finds the mount alive.
fn lodge(
    config: &FuseConfig,
    served: &mut Served,
    passthrough: bool,
) -> Option<weir_handover::Lodging> {
    let socket = config.fd_holder.as_ref()?;
    let fd = served.fd.take()?;
    let mount_point = &config.mount_point;
    let Some(device) = takeover::mount_device(mount_point) else {
        tracing::warn!(mount_point = %mount_point.display(), "the mount is not in the mount table; nothing to lodge");
        return None;
    };
    Some(weir_handover::lodge(
        socket.clone(),
        weir_handover::MountState {
            mount_point: mount_point.clone(),
            device,
            passthrough,
            generation: served.generation,
        },
        fd,
    ))
}

/// Asks the fd holder whether volumes still use the mount; `true` when
/// the mount is to be left, alive, to the next FUSE process.
async fn leave_to_holder(
    config: &FuseConfig,
    lodging: &weir_handover::Lodging,
) -> Result<bool, FuseError> {
    let Some(socket) = config.fd_holder.clone() else {
        return Ok(false);
    };
    lodging.stop();
    let mp = config.mount_point.clone();
    let verdict = tokio::task::spawn_blocking(move || weir_handover::release(&socket, &mp))
        .await
        .map_err(|e| mount_err(config, std::io::Error::other(e.to_string())))?;
    match verdict {
        Ok(weir_handover::Verdict::Keep) => {
            tracing::info!(mount_point = %config.mount_point.display(), "volumes still use the mount: left to the fd holder for the next FUSE process");
            Ok(true)
        }
        Ok(weir_handover::Verdict::Released) => Ok(false),
        Err(e) => {
            tracing::warn!(error = %e, "the fd holder did not answer; unmounting");
            Ok(false)
        }
    }
}

async fn unmount(served: Served, config: &FuseConfig) -> Result<(), FuseError> {
    let Served {
        session, adopted, ..
    } = served;
    let mp = config.mount_point.clone();
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
    .map_err(|e| mount_err(config, std::io::Error::other(e.to_string())))?
    .map_err(|e| mount_err(config, e))?;
    tracing::info!(mount_point = %config.mount_point.display(), "unmounted");
    Ok(())
}
