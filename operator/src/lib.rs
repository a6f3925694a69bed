//! Weir's Kubernetes face: the custom resource types and their controllers.

pub mod context;
pub mod controller;
pub mod crd;
pub mod cron;
pub mod leader;
pub mod names;
pub mod quantity;
pub mod render;

pub use context::{Context, OperatorConfig};
pub use controller::run;

/// Every failure of the operator crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rendering YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The user's spec cannot be realised; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The runtime's masters refused or could not be reached.
    #[error("master: {0}")]
    Master(String),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A deletion waits for something outside the operator (its status
    /// says what); the finalizer stays and the wait is retried.
    #[error("waiting: {0}")]
    Waiting(String),
    #[error("leader election: {0}")]
    Lease(String),
    #[error("serving metrics on {addr}: {source}")]
    Serve {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        Error::Finalizer(Box::new(e))
    }
}

impl From<weir::client::master::ClientError> for Error {
    fn from(e: weir::client::master::ClientError) -> Self {
        Error::Master(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
