//! `weir fs ...` and `weir admin report`: thin wrappers over the master API.

use super::worker::DataArgs;
use super::{CliError, ConnArgs};
use crate::client::FileSystem;
use crate::proto::master as pb;
use clap::Subcommand;
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_api::MasterClient;
use weir_api::{MountSpec, WriteType};

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
        /// Re-list directories older than this (0: load once).
        #[arg(long, default_value_t = 0)]
        sync_interval_ms: u64,
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

fn info_json(f: &pb::FileInfo) -> serde_json::Value {
    json!({
        "path": f.path, "id": f.id, "isDir": f.is_dir, "length": f.length, "blockSize": f.block_size,
        "completed": f.completed, "mode": format!("{:o}", f.mode), "owner": f.owner, "group": f.group,
        "mtimeMs": f.mtime_ms, "pinned": f.pinned, "ttlMs": f.ttl_ms, "cachedPercent": f.cached_percent,
        "persisted": f.persist == pb::PersistState::Persisted as i32, "ufsPath": f.ufs_path,
    })
}

fn info_line(f: &pb::FileInfo) -> String {
    let kind = if f.is_dir { 'd' } else { '-' };
    format!(
        "{kind}{:o} {:>8} {:>8} {:>14} {:>3}% {}",
        f.mode, f.owner, f.group, f.length, f.cached_percent, f.path
    )
}

pub async fn run(conn: &ConnArgs, data: &DataArgs, command: FsCommand) -> Result<(), CliError> {
    let client = &conn.client()?;
    let filesystem = || {
        FileSystem::new(
            data.client_config(conn.masters.clone(), Duration::from_secs(conn.timeout_secs)),
        )
    };
    match command {
        FsCommand::Cat { path } => {
            let fs = filesystem()?;
            let mut reader = fs.open(&path).await?;
            let mut out = std::io::stdout().lock();
            reader.copy_to(&mut out, 4 << 20, |_| {}).await?;
            out.flush().map_err(|source| CliError::Io {
                what: "writing to stdout".into(),
                source,
            })?;
            Ok(())
        }
        FsCommand::Cp {
            src,
            dst,
            write_type: wt,
            block_size,
            json,
        } => {
            let fs = filesystem()?;
            let started = Instant::now();
            let bytes = match (src.strip_prefix("file:"), dst.strip_prefix("file:")) {
                (Some(local), None) => {
                    copy_in(&fs, Path::new(local), &dst, wt, block_size.unwrap_or(0)).await?
                }
                (None, Some(local)) => {
                    let mut reader = fs.open(&src).await?;
                    let mut progress = Progress::new(reader.len());
                    let file = std::fs::File::create(local).map_err(|source| CliError::Io {
                        what: format!("creating {local}"),
                        source,
                    })?;
                    let mut out = std::io::BufWriter::with_capacity(4 << 20, file);
                    let n = reader
                        .copy_to(&mut out, 4 << 20, |done| progress.update(done))
                        .await?;
                    out.flush().map_err(|source| CliError::Io {
                        what: format!("writing {local}"),
                        source,
                    })?;
                    progress.finish();
                    n
                }
                _ => {
                    return Err(CliError::Usage(
                        "exactly one side of cp is local, marked file: (file:/tmp/a)".into(),
                    ));
                }
            };
            let secs = started.elapsed().as_secs_f64();
            if json {
                println!("{}", json!({"bytes": bytes, "seconds": secs}));
            } else {
                eprintln!(
                    "copied {bytes} bytes in {secs:.2} s ({:.1} MiB/s)",
                    bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
                );
            }
            Ok(())
        }
        FsCommand::Free { paths, follow } => {
            let spec = pb::JobSpec {
                kind: pb::JobKind::Free as i32,
                paths,
                ..Default::default()
            };
            super::job::submit(client, spec, &follow).await
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
                kind: pb::JobKind::Load as i32,
                paths,
                replicas,
                parallelism,
                bandwidth_bytes_per_sec: bandwidth.unwrap_or(0),
                load_metadata,
                load_what_fits,
            };
            super::job::submit(client, spec, &follow).await
        }
        FsCommand::Persist { paths, follow } => {
            let spec = pb::JobSpec {
                kind: pb::JobKind::Persist as i32,
                paths,
                ..Default::default()
            };
            super::job::submit(client, spec, &follow).await
        }
        FsCommand::Replicate {
            paths,
            replicas,
            follow,
        } => {
            let spec = pb::JobSpec {
                kind: pb::JobKind::Replicate as i32,
                paths,
                replicas,
                ..Default::default()
            };
            super::job::submit(client, spec, &follow).await
        }
        FsCommand::Ls { path, json } => {
            let mut cursor = String::new();
            loop {
                let req = pb::ListStatusRequest {
                    path: path.clone(),
                    start_after: cursor.clone(),
                    page_size: 1000,
                };
                let mut stream = client
                    .call(|mut c| {
                        let r = req.clone();
                        async move { c.list_status(r).await }
                    })
                    .await?;
                let mut got = 0usize;
                while let Some(page) = stream
                    .message()
                    .await
                    .map_err(|s| CliError::Client(s.into()))?
                {
                    for e in &page.entries {
                        got += 1;
                        if json {
                            println!("{}", info_json(e));
                        } else {
                            println!("{}", info_line(e));
                        }
                    }
                    cursor = page.cursor;
                }
                // A stream cut by a leader change resumes from its cursor.
                if got == 0 || cursor.is_empty() {
                    return Ok(());
                }
                if got < 1000 {
                    return Ok(());
                }
            }
        }
        FsCommand::Stat { path, json } => {
            let req = pb::PathRequest { path };
            let f = client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.get_status(r).await }
                })
                .await?;
            if json {
                println!("{}", info_json(&f))
            } else {
                println!("{}", info_line(&f))
            }
            Ok(())
        }
        FsCommand::Mkdir { path, parents } => {
            let req = pb::CreateRequest {
                path,
                recursive: parents,
                ..Default::default()
            };
            client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.create_directory(r).await }
                })
                .await?;
            Ok(())
        }
        FsCommand::Touch { path } => {
            let req = pb::CreateRequest {
                path: path.clone(),
                ..Default::default()
            };
            client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.create_file(r).await }
                })
                .await?;
            let done = pb::CompleteFileRequest { path, length: 0 };
            client
                .call(|mut c| {
                    let r = done.clone();
                    async move { c.complete_file(r).await }
                })
                .await?;
            Ok(())
        }
        FsCommand::Rm { path, recursive } => {
            let req = pb::DeleteRequest { path, recursive };
            let r = client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.delete(r).await }
                })
                .await?;
            eprintln!("removed {} inode(s)", r.inodes);
            Ok(())
        }
        FsCommand::Mv { src, dst } => {
            let req = pb::RenameRequest { src, dst };
            client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.rename(r).await }
                })
                .await?;
            Ok(())
        }
        FsCommand::Mount {
            path,
            ufs_uri,
            read_only,
            write_type: wt,
            sync_interval_ms,
            options,
            credential_files,
        } => {
            let req = MountSpec {
                path,
                ufs_uri,
                read_only,
                write_type: wt,
                sync_interval_ms,
                options: options.into_iter().collect(),
                credential_files: credential_files.into_iter().collect(),
            }
            .to_request();
            let r = client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.mount(r).await }
                })
                .await?;
            eprintln!("mounted (id {})", r.mount_id);
            Ok(())
        }
        FsCommand::Unmount { path } => {
            let req = pb::PathRequest { path };
            client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.unmount(r).await }
                })
                .await?;
            Ok(())
        }
        FsCommand::Mounts { json } => {
            let t = client
                .call(|mut c| async move { c.get_mount_table(pb::Empty {}).await })
                .await?;
            for m in t.mounts {
                let wt = pb::WriteType::try_from(m.write_type)
                    .map(|w| w.as_str_name())
                    .unwrap_or("?");
                if json {
                    println!(
                        "{}",
                        json!({"path": m.path, "ufsUri": m.ufs_uri, "readOnly": m.read_only, "writeType": wt, "syncIntervalMs": m.sync_interval_ms, "options": m.options, "mountId": m.mount_id})
                    );
                } else {
                    println!(
                        "{} -> {} ({}{})",
                        m.path,
                        m.ufs_uri,
                        wt,
                        if m.read_only { ", read-only" } else { "" }
                    );
                }
            }
            Ok(())
        }
        FsCommand::Pin { path } => set_pin(client, path, true).await,
        FsCommand::Unpin { path } => set_pin(client, path, false).await,
    }
}

async fn set_pin(client: &MasterClient, path: String, pinned: bool) -> Result<(), CliError> {
    let req = pb::SetAttributeRequest {
        path,
        pinned: Some(pinned),
        ..Default::default()
    };
    client
        .call(|mut c| {
            let r = req.clone();
            async move { c.set_attribute(r).await }
        })
        .await?;
    Ok(())
}

pub async fn report(client: &MasterClient, as_json: bool) -> Result<(), CliError> {
    let info = client
        .call(|mut c| async move { c.get_cluster_info(pb::Empty {}).await })
        .await?;
    if as_json {
        let v = json!({
            "masters": info.masters.iter().map(|m| json!({"id": m.id, "address": m.address, "role": m.role})).collect::<Vec<_>>(),
            "workers": info.workers.iter().map(|w| {
                let a = w.address.clone().unwrap_or_default();
                json!({"id": a.worker_id, "host": a.host, "rpcPort": a.rpc_port, "blocks": w.block_count,
                       "tiers": w.tiers.iter().map(|t| json!({"tier": t.tier, "capacity": t.capacity_bytes, "used": t.used_bytes})).collect::<Vec<_>>()})
            }).collect::<Vec<_>>(),
            "capacityBytes": info.capacity_bytes, "usedBytes": info.used_bytes,
            "inodes": info.inode_count, "hitRatio": info.hit_ratio,
            "mounts": info.mounts.iter().map(|m| json!({"path": m.path, "ufsUri": m.ufs_uri, "cachedBytes": m.cached_bytes, "ufsTotalBytes": m.ufs_total_bytes, "files": m.file_count, "countComplete": m.count_complete})).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!("masters:");
    for m in &info.masters {
        println!("  {:>3} {:<24} {}", m.id, m.address, m.role);
    }
    println!(
        "workers: {}  capacity {} B  used {} B  hit ratio {:.3}",
        info.workers.len(),
        info.capacity_bytes,
        info.used_bytes,
        info.hit_ratio
    );
    for w in &info.workers {
        let a = w.address.clone().unwrap_or_default();
        let tiers: Vec<String> = w
            .tiers
            .iter()
            .map(|t| format!("{} {}/{} B", t.tier, t.used_bytes, t.capacity_bytes))
            .collect();
        println!(
            "  {:>3} {}:{} (data {}) blocks {}  {}{}",
            a.worker_id,
            a.host,
            a.rpc_port,
            a.data_port,
            w.block_count,
            tiers.join(", "),
            if w.lost { "  LOST" } else { "" }
        );
    }
    println!("inodes: {}", info.inode_count);
    println!("mounts:");
    for m in &info.mounts {
        let pct = if m.ufs_total_bytes == 0 {
            0.0
        } else {
            m.cached_bytes as f64 * 100.0 / m.ufs_total_bytes as f64
        };
        println!(
            "  {} -> {}  cached {} of {} B ({pct:.1}%), {} files{}",
            m.path,
            m.ufs_uri,
            m.cached_bytes,
            m.ufs_total_bytes,
            m.file_count,
            if m.count_complete { "" } else { " (counting)" }
        );
    }
    Ok(())
}

async fn copy_in(
    fs: &Arc<FileSystem>,
    local: &Path,
    dst: &str,
    mode: Option<WriteType>,
    block_size: u64,
) -> Result<u64, CliError> {
    let io = |source| CliError::Io {
        what: format!("reading {}", local.display()),
        source,
    };
    let mut file = std::fs::File::open(local).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let mut progress = Progress::new(total);
    let mut writer = fs.create_with(dst, mode, block_size).await?;
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                writer.abort().await;
                return Err(io(e));
            }
        };
        if n == 0 {
            break;
        }
        if let Err(e) = writer.write(&buf[..n]).await {
            writer.abort().await;
            return Err(e.into());
        }
        progress.update(writer.written());
    }
    let info = writer.close().await?;
    progress.finish();
    Ok(info.length)
}

/// A one-line progress bar on stderr, drawn only on a terminal.
struct Progress {
    total: u64,
    started: Instant,
    drawn: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self {
            total,
            started: Instant::now(),
            drawn: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, done: u64) {
        if !self.tty || self.drawn.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.drawn = Instant::now();
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let rate = done as f64 / (1 << 20) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r[{}{}] {:>5.1}% {:.1} MiB/s ",
            "#".repeat(filled.min(width)),
            " ".repeat(width - filled.min(width)),
            frac * 100.0,
            rate
        );
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
