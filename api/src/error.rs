//! The one error type of this crate: what calling the masters, or setting
//! up logging and metrics, can fail with.

use std::time::Duration;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no master list given")]
    NoMasters,
    #[error("bad master address {address:?}: {source}")]
    BadAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("no leader answered within {deadline:?} (last error: {last})")]
    NoLeader { deadline: Duration, last: String },
    /// The leader's final answer: anything but "not the leader" or
    /// "unavailable", which are retried.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Status),
    #[error("log filter: {0}")]
    LogFilter(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("serving metrics on {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl ApiError {
    /// The gRPC code of a final answer from the master.
    pub fn code(&self) -> Option<Code> {
        match self {
            ApiError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
