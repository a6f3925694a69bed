//! Data-path benchmark tools: a whole-file read through the client, and an
//! under-storage object written or read directly (one streamed ranged GET,
//! the baseline a cold read through Weir is compared with).

use super::worker::DataArgs;
use super::{CliError, ConnArgs};
use crate::client::ClientError;
use crate::client::FileSystem;
use crate::ufs::{self, UfsPath};
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ReadBenchArgs {
    pub path: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Bytes asked for per read call.
    #[arg(long, default_value = "4MiB", value_parser = super::worker::parse_size)]
    pub chunk: u64,
}

/// An under-storage object: `--root s3://bucket` (or any mount URI) and
/// `--path key/below/it`.
#[derive(Debug, Args)]
pub struct UfsObjectArgs {
    #[arg(long)]
    pub root: String,
    #[arg(long)]
    pub path: String,
    #[arg(long = "option", value_parser = super::fs::parse_kv)]
    pub options: Vec<(String, String)>,
    #[arg(long = "credential-file", value_parser = super::fs::parse_kv)]
    pub credential_files: Vec<(String, String)>,
    /// For writes: the object's size.
    #[arg(long, default_value = "1GiB", value_parser = super::worker::parse_size)]
    pub bytes: u64,
}

/// Every object below an under-storage directory, read with parallel
/// ranged GETs of block size: the most a load job could get from the store.
#[derive(Debug, Args)]
pub struct UfsParallelReadArgs {
    #[command(flatten)]
    pub object: UfsObjectArgs,
    /// GETs in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Bytes per GET.
    #[arg(long, default_value = "64MiB", value_parser = super::worker::parse_size)]
    pub range: u64,
}

/// A load job, timed from submission to its end.
#[derive(Debug, Args)]
pub struct LoadBenchArgs {
    #[arg(required = true)]
    pub paths: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    #[arg(long, default_value_t = 0)]
    pub parallelism: u32,
}

pub(super) fn report(what: &str, bytes: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{}",
        json!({
            "bench": what,
            "bytes": bytes,
            "seconds": secs,
            "mib_per_s": bytes as f64 / (1 << 20) as f64 / secs,
        })
    );
}

pub async fn read(conn: &ConnArgs, args: ReadBenchArgs) -> Result<(), CliError> {
    let fs = FileSystem::new(
        args.data
            .client_config(conn.masters.clone(), Duration::from_secs(conn.timeout_secs)),
    )?;
    let mut reader = fs.open(&args.path).await?;
    let mut buf = vec![0u8; args.chunk.max(4096) as usize];
    // The reads run as a task on the runtime, as an application's readers
    // do: awaited from the thread that blocks on the runtime, every wait
    // for the socket is a wake-up handed across threads (measured: remote
    // reads a fifth below one bare loopback TCP connection; as a task they
    // match it).
    let reads = tokio::spawn(async move {
        let started = Instant::now();
        let mut offset = 0;
        loop {
            let n = reader.read_at(offset, &mut buf).await?;
            if n == 0 {
                break;
            }
            offset += n as u64;
        }
        Ok::<_, ClientError>((offset, started.elapsed()))
    });
    let (offset, elapsed) = reads
        .await
        .map_err(|e| CliError::Usage(format!("the read task: {e}")))??;
    report("weir-read", offset, elapsed);
    Ok(())
}

fn open(args: &UfsObjectArgs) -> Result<(std::sync::Arc<dyn ufs::Ufs>, UfsPath), CliError> {
    let options: BTreeMap<_, _> = args.options.iter().cloned().collect();
    let creds: BTreeMap<_, _> = args.credential_files.iter().cloned().collect();
    let usage = |e: ufs::UfsError| CliError::Usage(e.to_string());
    Ok((
        ufs::open(&args.root, &options, &creds).map_err(usage)?,
        UfsPath::parse(&args.path).map_err(usage)?,
    ))
}

pub async fn ufs_write(args: UfsObjectArgs) -> Result<(), CliError> {
    let (store, path) = open(&args)?;
    let failed = |e: ufs::UfsError| CliError::Usage(e.to_string());
    let mut w = store.writer(&path).await.map_err(failed)?;
    let mut chunk = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let started = Instant::now();
    let mut written = 0;
    while written < args.bytes {
        let n = (args.bytes - written).min(chunk.len() as u64) as usize;
        // Each chunk differs, so no store can deduplicate them.
        chunk[..8].copy_from_slice(&written.to_le_bytes());
        w.write(bytes::Bytes::copy_from_slice(&chunk[..n]))
            .await
            .map_err(failed)?;
        written += n as u64;
    }
    w.close().await.map_err(failed)?;
    report("ufs-write", written, started.elapsed());
    Ok(())
}

pub async fn ufs_parallel_read(args: UfsParallelReadArgs) -> Result<(), CliError> {
    let (store, root) = open(&args.object)?;
    let failed = |e: ufs::UfsError| CliError::Usage(e.to_string());
    let mut ranges = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        let mut listing = store.list(&dir);
        while let Some(entry) = futures::TryStreamExt::try_next(&mut listing)
            .await
            .map_err(failed)?
        {
            let path = dir.join(&entry.name).map_err(failed)?;
            if entry.is_dir {
                dirs.push(path);
                continue;
            }
            let mut offset = 0;
            while offset < entry.length {
                let len = (entry.length - offset).min(args.range.max(1));
                ranges.push((path.clone(), offset, len));
                offset += len;
            }
        }
    }
    let started = Instant::now();
    let total: u64 = futures::stream::iter(ranges)
        .map(|(path, offset, len)| {
            let store = store.clone();
            async move {
                let mut stream = store.read_stream(&path, offset, len, None).await?;
                let mut got = 0u64;
                while let Some(chunk) = stream.next().await {
                    got += chunk?.len() as u64;
                }
                Ok::<_, ufs::UfsError>(got)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .fold(Ok(0u64), |sum, got| async move { Ok(sum? + got?) })
        .await
        .map_err(failed)?;
    report("ufs-parallel-get", total, started.elapsed());
    Ok(())
}

pub async fn load(conn: &ConnArgs, args: LoadBenchArgs) -> Result<(), CliError> {
    let client = conn.client()?;
    let spec = crate::proto::master::JobSpec {
        kind: crate::proto::master::JobKind::Load as i32,
        paths: args.paths,
        replicas: args.replicas,
        parallelism: args.parallelism,
        ..Default::default()
    };
    let started = Instant::now();
    let job = client
        .call(|mut c| {
            let spec = spec.clone();
            async move { c.submit_job(spec).await }
        })
        .await?;
    let req = crate::proto::master::JobId { id: job.id };
    let done = loop {
        let now = client
            .call(|mut c| async move { c.get_job(req).await })
            .await?;
        if now.finished_ms > 0 {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    if done.state != crate::proto::master::JobState::Completed as i32 {
        return Err(CliError::Usage(format!(
            "load job {} ended {}: {}",
            done.id,
            super::job::state_name(done.state),
            done.message
        )));
    }
    report("weir-load", done.bytes_done, elapsed);
    Ok(())
}

pub async fn ufs_read(args: UfsObjectArgs) -> Result<(), CliError> {
    let (store, path) = open(&args)?;
    let failed = |e: ufs::UfsError| CliError::Usage(e.to_string());
    let size = store
        .stat(&path)
        .await
        .map_err(failed)?
        .ok_or_else(|| CliError::Usage(format!("{} not found", args.path)))?
        .length;
    let started = Instant::now();
    let mut stream = store
        .read_stream(&path, 0, size, None)
        .await
        .map_err(failed)?;
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        got += chunk.map_err(failed)?.len() as u64;
    }
    report("ufs-ranged-get", got, started.elapsed());
    Ok(())
}

pub(super) fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        what: what.to_owned(),
        source,
    }
}
