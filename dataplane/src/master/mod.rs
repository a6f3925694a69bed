//! The master: the namespace, the mount table, the job table, and the
//! leader's soft state about workers and blocks, replicated by Raft.
//!
//! Bottom to top, each module using only those below it:
//! - [`records`]: the replicated record types (inodes, mounts, jobs)
//! - [`metastore`]: where records are stored (RocksDB or memory)
//! - [`command`]: the replicated commands, their replies and errors
//! - [`namespace`], [`jobs::table`]: commands planned into store changes
//! - [`state`]: a command applied to the part that owns it, in one batch
//! - [`raft`]: openraft's log, network and state machine
//! - [`node`]: the Raft node, and the [`node::Proposer`] handle
//! - [`workers`]: the leader's registry of workers and block locations
//! - [`sync`]: metadata loaded from the under-storage
//! - [`jobs::runner`]: the leader running jobs on the workers
//! - [`stats`], [`service`]: the gRPC API
//! - [`parts`], [`housekeeping`], [`server`]: the parts assembled and served

pub mod command;
pub mod error;
pub mod housekeeping;
pub mod jobs;
pub mod metastore;
pub mod namespace;
pub mod node;
pub mod parts;
pub mod raft;
pub mod records;
pub mod server;
pub mod service;
pub mod state;
pub mod stats;
pub mod sync;
pub mod workers;

pub use error::{MasterError, MasterResult};
