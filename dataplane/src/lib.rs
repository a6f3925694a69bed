//! Weir's data plane: the master, workers, client and FUSE filesystem that
//! make up a cache cluster, and the `weir` binary that runs them.

pub mod block;
pub mod cli;
pub mod client;
pub mod fuse;
pub mod master;
pub mod metrics;
pub mod path;
pub mod ufs;
pub mod wire;
pub mod worker;

pub use weir_api::proto;

#[cfg(test)]
mod placement_tests;
