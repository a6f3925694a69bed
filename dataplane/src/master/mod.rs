//! The master: the namespace, the mount table, block and worker metadata,
//! replicated by Raft.

pub mod jobs;
pub mod metastore;
pub mod namespace;
pub mod node;
pub mod raft;
pub mod server;
pub mod service;
pub mod sync;
pub mod workers;
