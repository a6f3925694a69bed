//! The data plane as a user runs it: real `weir master`, `weir worker` and
//! `weir fuse` processes on loopback, a real S3-compatible server (moto),
//! real FUSE mounts. One test binary, a file per area.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod attributes;
mod cluster;
mod consistency;
mod failures;
mod links;
mod posix;
mod reads;
mod restart;
mod rewrites;
mod source;
mod ufs_writes;
mod writes;
