//! `weir fuse`: the namespace (or a sub-path of it) as a FUSE file system
//! over the client. Inode numbers are Weir's inode ids (the mounted
//! sub-path's id shows as 1). Completed files never change under one id, so
//! the kernel keeps their pages across opens; a file whose every block this
//! machine's worker holds (in one data file, as it keeps a file's blocks on
//! a tier) is handed to the kernel as a passthrough file, which then reads
//! the worker's data file itself. New files are streamed to a worker as
//! they are written, front to back, and committed when closed; a file
//! that exists is changed in a scratch copy that becomes its new version
//! on close.
//!
//! - [`fs`]: the mounted file system's state, attributes and errnos
//! - [`entries`]: links and special files made in the under-storage
//! - [`ops`]: the FUSE callbacks
//! - [`handles`]: open files and directories, across takeovers
//! - [`passthrough`]: reads that bypass the daemon or the data path
//! - [`rewrite`]: changing a file that exists (a new version on close)
//! - [`scratch`]: the scratch copy a rewrite changes
//! - [`mount`]: mounting, taking over, lodging, unmounting
//! - [`takeover`]: the kernel side of taking a live mount over

mod entries;
mod fs;
mod handles;
mod mount;
mod ops;
mod passthrough;
mod rewrite;
mod scratch;
mod takeover;

pub use mount::run;
pub(crate) use takeover::mount_device;

use crate::client::{ClientConfig, ClientError};
use std::path::PathBuf;
use std::time::Duration;

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
    #[error("serving metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
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
    /// `owner`): pods that run as that user can read and write. Unset, each
    /// shows the owner the under-storage keeps (by id), else root.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The fd holder's socket (see `weir_handover`).
    pub fd_holder: Option<PathBuf>,
    /// Where `/metrics` (the client's read paths) is served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Entries fetched per listing page.
pub(crate) const DIR_PAGE: u32 = 1000;
/// Largest read the kernel is asked to send, and its readahead window.
pub(crate) const MAX_READ: u32 = 1 << 20;
pub(crate) const READAHEAD: u32 = 8 << 20;
