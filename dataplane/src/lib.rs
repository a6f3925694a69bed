//! Weir's data plane: the master, workers, client and FUSE filesystem that
//! make up a cache cluster, and the `weir` binary that runs them.

pub mod cli;
pub mod client;
pub mod error;
pub mod fuse;
pub mod master;
pub mod metrics;
pub mod path;
pub mod telemetry;
pub mod ufs;
pub mod wire;
pub mod worker;

pub use error::{Error, Result};

/// Generated gRPC code, kept apart and exempt from the workspace lints.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
pub mod proto {
    pub mod master {
        tonic::include_proto!("weir.master.v1");
    }
}
