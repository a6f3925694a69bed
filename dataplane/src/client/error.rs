//! What the file system client fails with, in one place; FUSE maps each
//! case to one errno.

use crate::wire::ErrorKind;
use weir_api::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The masters' answer, or no answer.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A worker answered with an error that retrying elsewhere cannot fix.
    #[error("{message}")]
    Worker { kind: ErrorKind, message: String },
    /// The file changed in the under-storage after it was opened: the open
    /// reader cannot go on without mixing two versions.
    #[error("{path} changed in the under-storage while open ({reason}); open it again")]
    Stale { path: String, reason: String },
    /// Every worker that could serve a block failed.
    #[error("reading {path}: {reason}")]
    Data { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The gRPC code of the master's answer, when there was one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Api(e) => e.code(),
            _ => None,
        }
    }

    /// The master's final answer, when that is what failed.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Api(ApiError::Status(s)) => Some(s),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Api(ApiError::Status(s))
    }
}

pub type FsResult<T> = Result<T, ClientError>;
