//! Weir's Kubernetes face: the custom resource types and their controllers.

pub mod crd;

/// Every failure of the operator crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rendering CRD YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
