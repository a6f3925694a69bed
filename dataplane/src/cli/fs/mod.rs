//! `weir fs ...`: the namespace ([`namespace`]), copies in and out of
//! Weir ([`data`]), and jobs on paths (load, persist, free, replicate);
//! `weir admin report` ([`report`]).

mod data;
mod namespace;
mod report;

pub use report::report;

use super::worker::DataArgs;
use super::{CliError, ConnArgs};
use crate::client::FileSystem;
use crate::proto::master as pb;
use clap::Subcommand;
use std::time::Duration;
use weir_api::WriteType;

#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// List a directory (streamed page by page).
    Ls {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one file or directory.
    Stat {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Show which workers, on which nodes, hold each block of a file.
    Locate {
        path: String,
        #[arg(long)]
        json: bool,
    },
    Mkdir {
        path: String,
        /// Create missing parents; an existing directory is not an error.
        #[arg(short, long)]
        parents: bool,
    },
    /// Create an empty, complete file.
    Touch {
        path: String,
    },
    Rm {
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
    Mv {
        src: String,
        dst: String,
    },
    /// Show an under-storage location at a path of the namespace.
    Mount {
        path: String,
        ufs_uri: String,
        #[arg(long)]
        read_only: bool,
        /// MUST_CACHE, CACHE_THROUGH, THROUGH or ASYNC_THROUGH.
        #[arg(long, default_value = "CACHE_THROUGH")]
        write_type: WriteType,
        /// When known paths are checked against the under-storage again:
        /// `never` (an immutable dataset), `always` (every open), or an
        /// interval (`30s`).
        #[arg(long, default_value = "60s")]
        sync: weir_api::SyncPolicy,
        /// Under-storage options as key=value.
        #[arg(long = "option", value_parser = parse_kv)]
        options: Vec<(String, String)>,
        /// Credentials as key=/path/of/file/holding/the/secret.
        #[arg(long = "credential-file", value_parser = parse_kv)]
        credential_files: Vec<(String, String)>,
    },
    Unmount {
        path: String,
    },
    /// The mount table.
    Mounts {
        #[arg(long)]
        json: bool,
    },
    /// Keep a path's blocks in cache (never evicted).
    Pin {
        path: String,
    },
    Unpin {
        path: String,
    },
    /// Print a file (read through the cache).
    Cat {
        path: String,
    },
    /// Copy a file between Weir and this machine; `file:` marks the local
    /// side (`weir fs cp file:/tmp/a /data/a`, `weir fs cp /data/a file:/tmp/a`).
    Cp {
        src: String,
        dst: String,
        /// For copies into Weir; the mount's write type otherwise.
        #[arg(long)]
        write_type: Option<WriteType>,
        /// Block size of a file copied in [default: 64MiB].
        #[arg(long, value_parser = super::worker::parse_size)]
        block_size: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Drop the cached blocks of paths (directories recursively) from every
    /// worker; pinned files and files not yet in the under-storage keep
    /// theirs. Runs as a job.
    Free {
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        follow: super::job::FollowArgs,
    },
    /// Cache paths (directories recursively, globs such as /data/*.csv)
    /// from the under-storage ahead of reads. Runs as a job.
    Load {
        #[arg(required = true)]
        paths: Vec<String>,
        /// Copies of each block, on as many workers.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// Block tasks in flight [default: 4 per worker].
        #[arg(long, default_value_t = 0)]
        parallelism: u32,
        /// Read at most this many bytes per second (e.g. 200MiB) [default:
        /// unlimited].
        #[arg(long, value_parser = super::worker::parse_size)]
        bandwidth: Option<u64>,
        /// List directories from the under-storage again first.
        #[arg(long)]
        load_metadata: bool,
        /// When the cache cannot hold it all, load the files that fit
        /// instead of failing.
        #[arg(long)]
        load_what_fits: bool,
        #[command(flatten)]
        follow: super::job::FollowArgs,
    },
    /// Write cache-only files under paths to the under-storage. Runs as a job.
    Persist {
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        follow: super::job::FollowArgs,
    },
    /// Raise cached blocks under paths to this many copies, worker to
    /// worker (nothing is read from the under-storage). Runs as a job.
    Replicate {
        #[arg(required = true)]
        paths: Vec<String>,
        #[arg(long)]
        replicas: u32,
        #[command(flatten)]
        follow: super::job::FollowArgs,
    },
}

pub(super) fn parse_kv(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not key=value"))
}

pub async fn run(conn: &ConnArgs, data: &DataArgs, command: FsCommand) -> Result<(), CliError> {
    let client = &conn.client()?;
    let filesystem = || {
        FileSystem::new(
            data.client_config(conn.masters.clone(), Duration::from_secs(conn.timeout_secs)),
        )
    };
    let job = |kind: pb::JobKind, paths, replicas| pb::JobSpec {
        kind: kind as i32,
        paths,
        replicas,
        ..Default::default()
    };
    match command {
        FsCommand::Cat { path } => data::cat(&filesystem()?, &path).await,
        FsCommand::Cp {
            src,
            dst,
            write_type,
            block_size,
            json,
        } => data::cp(&filesystem()?, &src, &dst, write_type, block_size, json).await,
        FsCommand::Free { paths, follow } => {
            super::job::submit(client, job(pb::JobKind::Free, paths, 0), &follow).await
        }
        FsCommand::Load {
            paths,
            replicas,
            parallelism,
            bandwidth,
            load_metadata,
            load_what_fits,
            follow,
        } => {
            let spec = pb::JobSpec {
                parallelism,
                bandwidth_bytes_per_sec: bandwidth.unwrap_or(0),
                load_metadata,
                load_what_fits,
                ..job(pb::JobKind::Load, paths, replicas)
            };
            super::job::submit(client, spec, &follow).await
        }
        FsCommand::Persist { paths, follow } => {
            super::job::submit(client, job(pb::JobKind::Persist, paths, 0), &follow).await
        }
        FsCommand::Replicate {
            paths,
            replicas,
            follow,
        } => {
            super::job::submit(
                client,
                job(pb::JobKind::Replicate, paths, replicas),
                &follow,
            )
            .await
        }
        FsCommand::Ls { path, json } => namespace::ls(client, path, json).await,
        FsCommand::Stat { path, json } => namespace::stat(client, path, json).await,
        FsCommand::Locate { path, json } => namespace::locate(client, path, json).await,
        FsCommand::Mkdir { path, parents } => namespace::mkdir(client, path, parents).await,
        FsCommand::Touch { path } => namespace::touch(client, path).await,
        FsCommand::Rm { path, recursive } => namespace::rm(client, path, recursive).await,
        FsCommand::Mv { src, dst } => namespace::mv(client, src, dst).await,
        FsCommand::Mount {
            path,
            ufs_uri,
            read_only,
            write_type,
            sync,
            options,
            credential_files,
        } => {
            let spec = weir_api::MountSpec {
                path,
                ufs_uri,
                read_only,
                write_type,
                sync,
                options: options.into_iter().collect(),
                credential_files: credential_files.into_iter().collect(),
            };
            namespace::mount(client, spec).await
        }
        FsCommand::Unmount { path } => namespace::unmount(client, path).await,
        FsCommand::Mounts { json } => namespace::mounts(client, json).await,
        FsCommand::Pin { path } => namespace::set_pin(client, path, true).await,
        FsCommand::Unpin { path } => namespace::set_pin(client, path, false).await,
    }
}
