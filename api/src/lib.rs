//! Weir's master API as the rest of the system links it: the protobuf
//! service and its generated stubs, the master client that finds and
//! follows the leader, and the few types every component shares (write
//! types, mount specs, logging and the metrics endpoint). The operator and
//! the CSI plugin depend on this crate, not on the data plane.

pub mod client;
pub mod error;
pub mod metrics;
pub mod mount;
pub mod session;
pub mod telemetry;

pub use client::{LEADER_HEADER, MasterClient};
pub use error::{ApiError, ApiResult};
pub use mount::{MountSpec, SyncPolicy, WriteType};
pub use session::MetaSession;

/// Generated gRPC code, kept apart and exempt from the workspace lints.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
pub mod proto {
    pub mod master {
        tonic::include_proto!("weir.master.v1");
    }
}
