//! Under-storage: where a mount's data really lives. One trait; local
//! paths are read with the file system's own calls ([`LocalUfs`]), S3,
//! HTTP and HDFS through OpenDAL ([`OpendalUfs`]). Paths given to a store
//! are relative to the mount's root, `/`-separated, validated by
//! [`UfsPath`] so no request can climb out of the root.
//!
//! Every object has a version: its length, mtime, and what the store says
//! identifies its content (an S3 or HTTP ETag; a local file's inode number
//! and change time, which `touch -r` cannot restore). Reads can be pinned
//! to a version: bytes of any other version are refused
//! ([`UfsError::Changed`]), never returned.

mod beneath;
pub mod conformance;
mod fingerprint;
mod local;
mod nodes;
mod opendal;

pub use self::local::LocalUfs;
pub use self::opendal::OpendalUfs;
pub use fingerprint::{Fingerprint, LINK_VERSION_PREFIX, change_time_ms, local_version};
pub use nodes::NodeKind;

use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum UfsError {
    #[error("{0} not found in the under-storage")]
    NotFound(String),
    #[error("invalid under-storage path {0:?}: {1}")]
    InvalidPath(String, &'static str),
    #[error("under-storage {uri}: {reason}")]
    Unsupported { uri: String, reason: String },
    #[error("under-storage I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The object is not the version the read was pinned to any more.
    #[error("{path} changed in the under-storage since Weir last saw it")]
    Changed { path: String },
    #[error("{path}: permission denied by the under-storage")]
    Denied { path: String },
}

impl UfsError {
    /// Whether retrying the same request can help: a missing, refused,
    /// changed or invalid path stays so.
    pub fn is_final(&self) -> bool {
        !matches!(self, UfsError::Io { .. })
    }
}

pub type UfsResult<T> = Result<T, UfsError>;

/// A path below a mount's root: no `..`, `.`, NUL or empty components.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UfsPath(String);

impl UfsPath {
    pub fn root() -> Self {
        Self(String::new())
    }

    pub fn parse(raw: &str) -> UfsResult<Self> {
        let trimmed = raw.trim_matches('/');
        if trimmed.is_empty() {
            return Ok(Self::root());
        }
        for seg in trimmed.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(UfsError::InvalidPath(
                    raw.to_owned(),
                    "empty, `.` or `..` component",
                ));
            }
            if seg.contains('\0') {
                return Err(UfsError::InvalidPath(raw.to_owned(), "NUL byte"));
            }
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn join(&self, name: &str) -> UfsResult<Self> {
        if self.0.is_empty() {
            Self::parse(name)
        } else {
            Self::parse(&format!("{}/{name}", self.0))
        }
    }
}

/// One object or directory as the under-storage reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UfsStatus {
    pub name: String,
    pub is_dir: bool,
    pub length: u64,
    pub mtime_ms: u64,
    /// What the store says identifies this content beyond its length and
    /// mtime: an ETag, or a local file's inode number and change time.
    /// Empty where the store says nothing.
    pub version: String,
    /// Permission bits where the store keeps them (local directories);
    /// `None` on object stores.
    pub mode: Option<u32>,
    /// Owner and group ids where the store keeps them.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// For a symbolic link (local stores): its target. Shown as a link,
    /// never read through.
    pub link: Option<String>,
}

/// Mode, owner and modification time as a call (`chmod`, `chown`,
/// `touch`) changes them; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime_ms: Option<u64>,
}

impl AttrChange {
    pub fn is_empty(&self) -> bool {
        *self == AttrChange::default()
    }
}

impl UfsStatus {
    /// The version of this content as one value.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            length: self.length,
            mtime_ms: self.mtime_ms,
            version: self.version.clone(),
        }
    }
}

/// What Weir needs of an under-storage.
#[tonic::async_trait]
pub trait Ufs: Send + Sync + std::fmt::Debug {
    /// Status of one path; `None` when it does not exist.
    async fn stat(&self, path: &UfsPath) -> UfsResult<Option<UfsStatus>>;
    /// The entries of one directory, streamed as the store yields them
    /// (never the whole tree, never buffered whole). A missing directory
    /// lists as empty: object stores cannot tell it from an empty one.
    fn list<'a>(&'a self, dir: &'a UfsPath) -> BoxStream<'a, UfsResult<UfsStatus>>;
    /// Up to `len` bytes from `offset` (fewer at the end of the object).
    async fn read(&self, path: &UfsPath, offset: u64, len: u64) -> UfsResult<bytes::Bytes>;
    /// Exactly the bytes `offset..offset + len` as one request streamed in
    /// the chunks the store yields; a stream that ends early is an error.
    /// With `expect`, only bytes of that version: an object that is not it
    /// (or stops being it during the read) fails with
    /// [`UfsError::Changed`].
    async fn read_stream(
        &self,
        path: &UfsPath,
        offset: u64,
        len: u64,
        expect: Option<&Fingerprint>,
    ) -> UfsResult<BoxStream<'static, UfsResult<bytes::Bytes>>>;
    /// Creates or replaces an object whole (multipart where the store has it).
    async fn write(&self, path: &UfsPath, data: bytes::Bytes) -> UfsResult<()>;
    /// A streaming writer: the object appears (whole) when it is closed and
    /// not at all when it is aborted. Multipart on S3.
    async fn writer(&self, path: &UfsPath) -> UfsResult<Box<dyn UfsWriter>>;
    /// Removes an object; removing a missing one is not an error.
    async fn delete(&self, path: &UfsPath) -> UfsResult<()>;
    /// Removes a directory and everything below it; a missing one is not
    /// an error.
    async fn delete_all(&self, path: &UfsPath) -> UfsResult<()>;
    /// Creates a directory (and its missing parents); an existing one is
    /// not an error.
    async fn create_dir(&self, path: &UfsPath) -> UfsResult<()>;
    /// Moves a file or a directory. Local paths rename; object stores copy
    /// every object and delete the originals (a directory costs a copy of
    /// all it holds); stores that cannot (HTTP) answer `Unsupported`.
    async fn rename(&self, from: &UfsPath, to: &UfsPath) -> UfsResult<()>;
    /// Applies `change` to `path` (following a link inside the root);
    /// stores that keep no mode, owner or times answer `Unsupported`.
    async fn set_attributes(&self, path: &UfsPath, change: &AttrChange) -> UfsResult<()>;
    /// Makes `path` a symbolic link to `target` (its text, not resolved);
    /// stores that hold no links answer `Unsupported`.
    async fn symlink(&self, path: &UfsPath, target: &str) -> UfsResult<()>;
    /// Makes `path` a special file (`mknod`, `mkfifo`, a socket's name);
    /// stores that hold none answer `Unsupported`.
    async fn make_node(&self, path: &UfsPath, kind: NodeKind, rdev: u64) -> UfsResult<()>;
    /// Gives the file `existing` a second name, `new` (`ln`); stores
    /// without hard links answer `Unsupported`.
    async fn hard_link(&self, existing: &UfsPath, new: &UfsPath) -> UfsResult<()>;
}

/// An object being written; see [`Ufs::writer`].
#[tonic::async_trait]
pub trait UfsWriter: Send {
    async fn write(&mut self, data: bytes::Bytes) -> UfsResult<()>;
    async fn close(&mut self) -> UfsResult<()>;
    async fn abort(&mut self) -> UfsResult<()>;
}

/// Opens the under-storage behind a mount URI.
pub fn open(
    uri: &str,
    options: &BTreeMap<String, String>,
    credential_files: &BTreeMap<String, String>,
) -> UfsResult<Arc<dyn Ufs>> {
    if let Some(root) = uri
        .strip_prefix("local://")
        .or_else(|| uri.strip_prefix("file://"))
    {
        return Ok(Arc::new(LocalUfs::open(uri, root)?));
    }
    Ok(Arc::new(OpendalUfs::open(uri, options, credential_files)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ufs_paths_stay_below_the_root() {
        assert_eq!(UfsPath::parse("/a/b/").unwrap().as_str(), "a/b");
        assert_eq!(UfsPath::parse("").unwrap(), UfsPath::root());
        assert_eq!(UfsPath::root().join("x").unwrap().as_str(), "x");
        for bad in ["a/../b", "..", "a//b", "./a", "a/\0"] {
            assert!(UfsPath::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(UfsPath::parse("a").unwrap().join("..").is_err());
    }

    #[cfg(feature = "webhdfs")]
    #[tokio::test]
    async fn hdfs_goes_through_its_webhdfs_gateway() {
        let none = BTreeMap::new();
        // Nothing listens on port 9: the error names the store and path,
        // instead of "unsupported".
        for uri in ["webhdfs://127.0.0.1:9/data", "hdfs://127.0.0.1:9/data"] {
            let ufs = open(uri, &none, &none).unwrap();
            let err = ufs.stat(&UfsPath::parse("x").unwrap()).await.unwrap_err();
            assert!(matches!(err, UfsError::Io { .. }), "{uri}: {err:?}");
            assert!(err.to_string().contains(uri), "{err}");
        }
        assert!(open("hdfs:///data", &none, &none).is_err(), "no namenode");
    }
}
