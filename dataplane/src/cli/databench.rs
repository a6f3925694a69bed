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

/// The transport's own ceiling for a remote read: a file sent over one
/// loopback TCP connection the way a worker sends a cached block
/// (sendfile, 4 MiB a call) and received the way the client receives one
/// (into a buffer of `chunk`, woken per half MiB), with no Weir code in
/// between.
#[derive(Debug, Args)]
pub struct TcpLoopbackArgs {
    pub file: std::path::PathBuf,
    /// Bytes of the file per read call (as `read --chunk`).
    #[arg(long, default_value = "4MiB", value_parser = super::worker::parse_size)]
    pub chunk: u64,
    /// Connections each read call is split across (one stripe of the call
    /// on each, received by a thread of its own); the call ends when its
    /// last stripe is in.
    #[arg(long, default_value_t = 1)]
    pub connections: u64,
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

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Sends `len` bytes of `file` from `offset` on a blocking socket, 4 MiB
/// per sendfile call, as the worker's data server does.
#[allow(unsafe_code)]
fn send_range(
    sock: &std::net::TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let end = offset + len;
    let mut at = offset as libc::off_t;
    while (at as u64) < end {
        let want = (end - at as u64).min(4 << 20) as usize;
        // SAFETY: both descriptors outlive the call and the kernel writes
        // only `at`, which lives on this stack frame.
        let sent = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut at, want) };
        match sent {
            n if n > 0 => {}
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    Ok(())
}

/// Fills `buf` from `conn` (non-blocking), woken per half MiB as the
/// client is: a read takes what is there and only then waits, in poll,
/// for the next half MiB. (A blocking recv would wait inside the call with
/// the watermark it started with, and the kernel wakes it only once that
/// much is queued beyond what it has copied: at a stream's tail that never
/// comes.)
#[allow(unsafe_code)]
fn receive_exact(conn: &mut std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < buf.len() {
        match conn.read(&mut buf[done..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = buf.len() - done;
                crate::client::stream::set_rcvlowat(
                    conn,
                    left.min(crate::client::stream::RCVLOWAT_MAX),
                );
                let mut ready = libc::pollfd {
                    fd: conn.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd on this stack frame, for a descriptor
                // that outlives the call.
                let n = unsafe { libc::poll(&mut ready, 1, 30_000) };
                match n {
                    0 => return Err(std::io::ErrorKind::TimedOut.into()),
                    n if n < 0 => {
                        let e = std::io::Error::last_os_error();
                        if e.kind() != std::io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                    _ => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where stripe `k` of every read call lies: a call reads `chunk` bytes,
/// split into `connections` stripes, the k-th on connection k.
struct Striping {
    len: u64,
    chunk: u64,
    stripe: u64,
}

impl Striping {
    fn calls(&self) -> u64 {
        self.len.div_ceil(self.chunk)
    }

    /// `(offset, len)` of connection `k`'s stripe in call `call`, if any.
    fn stripe(&self, call: u64, k: u64) -> Option<(u64, u64)> {
        let start = call * self.chunk + k * self.stripe;
        let end = ((call + 1) * self.chunk).min(self.len);
        (start < end).then(|| (start, self.stripe.min(end - start)))
    }
}

pub fn tcp_loopback(args: TcpLoopbackArgs) -> Result<(), CliError> {
    let file = std::fs::File::open(&args.file).map_err(io_error("opening the file"))?;
    let len = file.metadata().map_err(io_error("stat of the file"))?.len();
    let connections = args.connections.max(1);
    let chunk = args.chunk.max(4096);
    let striping = Striping {
        len,
        chunk,
        stripe: chunk.div_ceil(connections),
    };
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_error("binding on loopback"))?;
    let addr = listener
        .local_addr()
        .map_err(io_error("loopback address"))?;
    let mut pairs = Vec::new();
    for _ in 0..connections {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(io_error("a socket"))?;
        // The buffers the worker and the client ask for.
        socket
            .set_recv_buffer_size(8 << 20)
            .map_err(io_error("receive buffer"))?;
        socket
            .connect(&addr.into())
            .map_err(io_error("connecting on loopback"))?;
        let receiver: std::net::TcpStream = socket.into();
        receiver
            .set_nonblocking(true)
            .map_err(io_error("non-blocking"))?;
        let (sender, _) = listener.accept().map_err(io_error("accepting"))?;
        for sock in [&receiver, &sender] {
            sock.set_nodelay(true).map_err(io_error("nodelay"))?;
        }
        socket2::SockRef::from(&sender)
            .set_send_buffer_size(8 << 20)
            .map_err(io_error("send buffer"))?;
        pairs.push((sender, receiver));
    }
    // Every call waits for all of its stripes, as a positional read does.
    let call_starts = std::sync::Barrier::new(connections as usize);
    let started = Instant::now();
    let outcome = std::thread::scope(|scope| {
        let (file, striping, call_starts) = (&file, &striping, &call_starts);
        let mut threads = Vec::new();
        for (k, (sender, receiver)) in pairs.iter_mut().enumerate() {
            let k = k as u64;
            let sender = &*sender;
            threads.push(scope.spawn(move || {
                for call in 0..striping.calls() {
                    if let Some((offset, len)) = striping.stripe(call, k) {
                        send_range(sender, file, offset, len)?;
                    }
                }
                Ok::<_, std::io::Error>(())
            }));
            threads.push(scope.spawn(move || {
                let mut buf = vec![0u8; striping.stripe as usize];
                let mut failed = None;
                for call in 0..striping.calls() {
                    call_starts.wait();
                    if failed.is_some() {
                        continue;
                    }
                    if let Some((_, len)) = striping.stripe(call, k)
                        && let Err(e) = receive_exact(receiver, &mut buf[..len as usize])
                    {
                        // Its sender must not wait on a full socket; the
                        // other receivers still need this one at each call.
                        let _ = receiver.shutdown(std::net::Shutdown::Both);
                        failed = Some(e);
                    }
                }
                failed.map_or(Ok(()), Err)
            }));
        }
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a thread panicked")))
            })
            .collect::<Result<Vec<()>, _>>()
    });
    let elapsed = started.elapsed();
    outcome.map_err(io_error("loopback transfer"))?;
    report("tcp-loopback", len, elapsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Striping;

    /// Every byte of the file is in exactly one stripe, each call's stripes
    /// are in order and stay inside the call, for lengths that divide
    /// evenly and lengths that do not.
    #[test]
    fn stripes_cover_each_byte_once() {
        for (len, chunk, connections) in
            [(64u64, 16u64, 4u64), (100, 16, 3), (5, 16, 4), (17, 16, 1)]
        {
            let striping = Striping {
                len,
                chunk,
                stripe: chunk.div_ceil(connections),
            };
            let mut next = 0;
            for call in 0..striping.calls() {
                for k in 0..connections {
                    if let Some((offset, n)) = striping.stripe(call, k) {
                        assert_eq!(offset, next, "len {len} call {call} stripe {k}");
                        assert!(n > 0 && offset + n <= ((call + 1) * chunk).min(len));
                        next += n;
                    }
                }
            }
            assert_eq!(next, len, "len {len}: every byte once");
        }
    }
}
