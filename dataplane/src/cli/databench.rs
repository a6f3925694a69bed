//! Data-path benchmark tools: a whole-file read through the client, and an
//! under-storage object written or read directly (one streamed ranged GET,
//! the baseline a cold read through Weir is compared with).

use super::worker::DataArgs;
use super::{CliError, ConnArgs};
use crate::client::fs::FileSystem;
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

/// The transport's own ceiling for a remote read: a file sent over one
/// loopback TCP connection the way a worker sends a cached block
/// (sendfile, 4 MiB a call) and received the way the client receives one
/// (into a buffer of `chunk`, woken per half MiB), with no Weir code in
/// between.
#[derive(Debug, Args)]
pub struct TcpLoopbackArgs {
    pub file: std::path::PathBuf,
    /// Bytes asked for per receive call (as `read --chunk`).
    #[arg(long, default_value = "4MiB", value_parser = super::worker::parse_size)]
    pub chunk: u64,
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

fn report(what: &str, bytes: u64, elapsed: Duration) {
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
    let started = Instant::now();
    let mut offset = 0;
    loop {
        let n = reader.read_at(offset, &mut buf).await?;
        if n == 0 {
            break;
        }
        offset += n as u64;
    }
    report("weir-read", offset, started.elapsed());
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
                let mut stream = store.read_stream(&path, offset, len).await?;
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
    let mut stream = store.read_stream(&path, 0, size).await.map_err(failed)?;
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        got += chunk.map_err(failed)?.len() as u64;
    }
    report("ufs-ranged-get", got, started.elapsed());
    Ok(())
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Sends `len` bytes of `file` on a blocking socket, 4 MiB per sendfile
/// call, as the worker's data server does.
#[allow(unsafe_code)]
fn send_whole_file(
    sock: &std::net::TcpStream,
    file: &std::fs::File,
    len: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut offset: libc::off_t = 0;
    while (offset as u64) < len {
        let want = (len - offset as u64).min(4 << 20) as usize;
        // SAFETY: both descriptors outlive the call and the kernel writes
        // only `offset`, which lives on this stack frame.
        let sent = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut offset, want) };
        match sent {
            n if n > 0 => {}
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    Ok(())
}

pub fn tcp_loopback(args: TcpLoopbackArgs) -> Result<(), CliError> {
    use std::io::Read;
    let file = std::fs::File::open(&args.file).map_err(io_error("opening the file"))?;
    let len = file.metadata().map_err(io_error("stat of the file"))?.len();
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_error("binding on loopback"))?;
    let addr = listener
        .local_addr()
        .map_err(io_error("loopback address"))?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let (sock, _) = listener.accept()?;
        sock.set_nodelay(true)?;
        socket2::SockRef::from(&sock).set_send_buffer_size(8 << 20)?;
        send_whole_file(&sock, &file, len)
    });
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(io_error("a socket"))?;
    socket
        .set_recv_buffer_size(8 << 20)
        .map_err(io_error("receive buffer"))?;
    socket
        .connect(&addr.into())
        .map_err(io_error("connecting on loopback"))?;
    let mut conn: std::net::TcpStream = socket.into();
    conn.set_nodelay(true).map_err(io_error("nodelay"))?;
    let mut buf = vec![0u8; args.chunk.max(4096) as usize];
    let started = Instant::now();
    let mut got = 0u64;
    while got < len {
        let want = (len - got).min(buf.len() as u64) as usize;
        let mut done = 0;
        while done < want {
            crate::client::fs::set_rcvlowat(
                &conn,
                (want - done).min(crate::client::fs::RCVLOWAT_MAX),
            );
            match conn.read(&mut buf[done..want]) {
                Ok(0) => {
                    return Err(CliError::Usage(format!(
                        "the sender stopped after {} of {len} bytes",
                        got + done as u64
                    )));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("receiving")(e)),
            }
        }
        got += want as u64;
    }
    let elapsed = started.elapsed();
    sender
        .join()
        .map_err(|_| CliError::Usage("the sending thread panicked".into()))?
        .map_err(io_error("sending"))?;
    report("tcp-loopback", got, elapsed);
    Ok(())
}
