//! The master: the namespace, the mount table, block and worker metadata,
//! replicated by Raft.

pub mod metastore;
pub mod namespace;
pub mod raft;
