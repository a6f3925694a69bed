//! The block data path between clients and workers: raw TCP, one request
//! at a time per connection. Headers are postcard messages behind a `u32`
//! length; block bytes follow a header raw, so a read costs the worker one
//! copy from its tier file into the socket and the client none beyond the
//! socket into its buffer (gRPC framing measured at a fraction of that on
//! loopback).
//!
//! Reads: `Request::Read` -> `Response::Data { len }` + exactly `len` bytes.
//! A worker that fails after the header (the under-storage stream broke)
//! closes the connection: a short read is an error to the client, never
//! fewer or wrong bytes.
//!
//! Writes: `Request::Write` + frames (`u32` length + bytes, a zero length
//! ends the file) -> `Response::Written`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weir_api::WriteType;

/// Largest header accepted; block bytes never travel inside a header.
const MAX_HEADER: u32 = 1 << 20;
/// Largest write frame accepted.
pub const MAX_FRAME: u32 = 16 << 20;

/// Where a block's bytes live in the under-storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UfsSource {
    pub mount_id: u64,
    /// Below the mount's root.
    pub path: String,
    /// The block's offset in the file, and its length.
    pub block_offset: u64,
    pub block_len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub block: u64,
    /// Offset inside the block.
    pub offset: u64,
    pub len: u64,
    /// How to fetch the block on a miss; `None` for blocks that exist only
    /// in the cache.
    pub source: Option<UfsSource>,
    /// Cache what is read from the under-storage.
    pub cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub file_id: u64,
    pub block_size: u64,
    pub mode: WriteType,
    /// The file's namespace path (ASYNC_THROUGH checks it still exists
    /// before persisting).
    pub path: String,
    /// Under-storage target; `None` for MUST_CACHE outside mounts.
    pub ufs: Option<(u64, String)>,
}

/// A worker's data address, for worker-to-worker copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A job's block task: make this worker hold `block` (a no-op when it
/// does), copying it from `from` if given, else (or if that fails) from
/// `source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadRequest {
    pub block: u64,
    /// The block's offset in its file (where the worker keeps it).
    pub offset: u64,
    pub len: u64,
    pub from: Option<Peer>,
    pub source: Option<UfsSource>,
}

/// A job's persist task: write a cached file to the under-storage. Blocks
/// this worker lacks are read from the named peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistRequest {
    pub file_id: u64,
    pub path: String,
    pub mount_id: u64,
    pub ufs_path: String,
    pub length: u64,
    /// `(block, length, a worker holding it)` in file order.
    pub blocks: Vec<(u64, u64, Option<Peer>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Read(ReadRequest),
    /// Short-circuit: where the block's bytes are, leased (never evicted)
    /// until released or the connection closes.
    Lease {
        block: u64,
    },
    Release {
        block: u64,
    },
    /// Short-circuit for a whole file: every block, as `(block, offset,
    /// len)` in file order, leased at once when one file on this worker
    /// holds exactly the file's bytes (what FUSE passthrough needs).
    /// Released with one `Release` per block.
    LeaseFile {
        blocks: Vec<(u64, u64, u64)>,
        length: u64,
    },
    Write(WriteRequest),
    /// Start caching a whole block from the under-storage in the
    /// background (a sequential reader is about to reach it).
    Prefetch {
        block: u64,
        source: UfsSource,
    },
    Load(LoadRequest),
    Persist(PersistRequest),
    /// [`Request::Read`] of bytes of one under-storage version only
    /// (`fingerprint` as the master records it): a miss that finds another
    /// version answers [`ErrorKind::Stale`], never other bytes.
    ReadPinned {
        read: ReadRequest,
        fingerprint: String,
    },
    /// [`Request::Prefetch`], pinned to a version.
    PrefetchPinned {
        block: u64,
        source: UfsSource,
        fingerprint: String,
    },
    /// [`Request::Load`], pinned to a version.
    LoadPinned {
        load: LoadRequest,
        fingerprint: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    NoSpace,
    Ufs,
    Invalid,
    Internal,
    /// The under-storage holds another version than the one asked for.
    Stale,
    /// The under-storage refused access.
    Denied,
}

impl ErrorKind {
    /// Whether asking again (elsewhere, later) cannot help.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ErrorKind::NotFound | ErrorKind::Invalid | ErrorKind::Stale | ErrorKind::Denied
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Data {
        len: u64,
    },
    /// The block is `len` bytes of the file at `path` from `offset`.
    Leased {
        path: String,
        offset: u64,
        len: u64,
    },
    /// The whole file is the file at `path`.
    LeasedFile {
        path: String,
    },
    Released,
    Queued,
    Written {
        blocks: Vec<(u64, String)>,
    },
    /// The block is cached in `tier`; `fetched` when this task read it (from
    /// a peer or the under-storage) rather than finding it already there.
    Loaded {
        tier: String,
        fetched: bool,
    },
    Persisted,
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("data connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("data connection: bad message: {0}")]
    Decode(String),
    #[error("data connection: {0} byte header is too large")]
    TooLarge(u32),
}

pub async fn send<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    let body = postcard::to_allocvec(msg).map_err(|e| WireError::Decode(e.to_string()))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    Ok(())
}

/// The next message, or `None` when the peer closed cleanly between
/// messages.
pub async fn recv<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|e| WireError::Decode(e.to_string()))
}

/// One write frame; an empty `data` ends the file.
pub async fn send_frame<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Result<(), WireError> {
    w.write_all(&(data.len() as u32).to_be_bytes()).await?;
    if !data.is_empty() {
        w.write_all(data).await?;
    }
    Ok(())
}

/// The next write frame into `buf` (cleared first); `false` at the end.
pub async fn recv_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<bool, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(buf).await?;
    Ok(len > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_and_frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let req = Request::Read(ReadRequest {
            block: 7,
            offset: 3,
            len: 9,
            source: Some(UfsSource {
                mount_id: 2,
                path: "x/y".into(),
                block_offset: 0,
                block_len: 100,
            }),
            cache: true,
        });
        send(&mut a, &req).await.unwrap();
        send_frame(&mut a, b"abc").await.unwrap();
        send_frame(&mut a, b"").await.unwrap();
        drop(a);
        assert_eq!(recv::<_, Request>(&mut b).await.unwrap(), Some(req));
        let mut buf = Vec::new();
        assert!(recv_frame(&mut b, &mut buf).await.unwrap());
        assert_eq!(buf, b"abc");
        assert!(!recv_frame(&mut b, &mut buf).await.unwrap());
        assert_eq!(
            recv::<_, Request>(&mut b).await.unwrap(),
            None,
            "clean close"
        );
    }

    #[tokio::test]
    async fn oversized_headers_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(MAX_HEADER + 1).to_be_bytes()).await.unwrap();
        assert!(matches!(
            recv::<_, Request>(&mut b).await,
            Err(WireError::TooLarge(_))
        ));
    }
}
