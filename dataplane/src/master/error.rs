//! What the master's operations fail with, above the state machine's own
//! [`FsError`]: not leading, Raft failing, the under-storage failing, or
//! the master not starting. Mapped to gRPC codes once, in
//! [`super::service::convert`].

use super::command::FsError;
use super::raft::NodeId;
use crate::ufs::UfsError;

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("not the leader; leader is {leader:?}")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("raft: {0}")]
    Raft(#[source] Source),
    #[error("under-storage: {0}")]
    Ufs(#[source] UfsError),
    #[error("{what}: {source}")]
    Start {
        what: String,
        #[source]
        source: Source,
    },
}

impl MasterError {
    pub fn raft(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        MasterError::Raft(Box::new(e))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, MasterError::Fs(FsError::NotFound(_)))
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, MasterError::Fs(FsError::AlreadyExists(_)))
    }

    pub fn start(what: impl Into<String>, e: impl Into<Source>) -> Self {
        MasterError::Start {
            what: what.into(),
            source: e.into(),
        }
    }
}

impl From<UfsError> for MasterError {
    /// What the under-storage says about a path is the namespace's answer;
    /// only its failures are the under-storage's.
    fn from(e: UfsError) -> Self {
        match e {
            UfsError::NotFound(p) => MasterError::Fs(FsError::NotFound(p)),
            UfsError::InvalidPath(..) => MasterError::Fs(FsError::InvalidArgument(e.to_string())),
            UfsError::Unsupported { .. } => {
                MasterError::Fs(FsError::FailedPrecondition(e.to_string()))
            }
            UfsError::Denied { .. } => MasterError::Fs(FsError::Denied(e.to_string())),
            UfsError::Io { .. } | UfsError::Changed { .. } => MasterError::Ufs(e),
        }
    }
}

pub type MasterResult<T> = Result<T, MasterError>;
