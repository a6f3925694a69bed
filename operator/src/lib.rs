//! Weir's Kubernetes face: the custom resource types and their controllers.

pub mod context;
pub mod controller;
pub mod crd;
pub mod cron;
pub mod leader;
pub mod names;
pub mod quantity;
pub mod render;
pub mod webhook;

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
    /// The spec asks for a host path the cluster admin did not grant; the
    /// message names the field.
    #[error("{0}")]
    HostPathNotAllowed(String),
    /// The runtime's masters refused or could not be reached.
    #[error("master: {0}")]
    Master(#[from] weir_api::ApiError),
    #[error("master: {what}: {source}")]
    MasterCall {
        what: String,
        #[source]
        source: weir_api::ApiError,
    },
    /// No master of the runtime can be asked yet.
    #[error("master: {0}")]
    NoMaster(String),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A deletion waits for something outside the operator (its status
    /// says what); the finalizer stays and the wait is retried.
    #[error("waiting: {0}")]
    Waiting(String),
    #[error("leader election: {0}")]
    Lease(String),
    #[error(transparent)]
    Metrics(weir_api::ApiError),
    /// The scheduling webhook's certificate or server.
    #[error("webhook: {0}")]
    Webhook(String),
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        Error::Finalizer(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
