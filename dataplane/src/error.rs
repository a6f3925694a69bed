use crate::path::PathError;

/// Every failure the data plane reports; mapped once to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("telemetry: {0}")]
    Telemetry(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
