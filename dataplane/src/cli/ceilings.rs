//! The ceilings Weir's reads are measured against, with no Weir code in
//! them: a file sent over TCP the way a worker sends a cached block and
//! received the way the client receives one, on loopback (`tcp-loopback`)
//! or between two hosts (`tcp-send` on the worker's, `tcp-recv` on the
//! reader's: two nodes' network namespaces in the cross-node benchmark),
//! and a file read with pread (`pread`: what a short-circuit read does
//! without the lease).

use super::CliError;
use super::databench::{io_error, report};
use clap::Args;
use std::time::Instant;

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

/// Serves a file once over TCP: waits for one connection on `listen` and
/// sends the file on it as a worker sends a block (sendfile, 4 MiB a call).
#[derive(Debug, Args)]
pub struct TcpSendArgs {
    pub file: std::path::PathBuf,
    #[arg(long)]
    pub listen: std::net::SocketAddr,
}

/// Receives what `tcp-send` sends, `chunk` bytes per call as the client
/// reads, and prints MiB/s.
#[derive(Debug, Args)]
pub struct TcpRecvArgs {
    #[arg(long)]
    pub from: std::net::SocketAddr,
    /// The bytes to expect (the file's length).
    #[arg(long, value_parser = super::worker::parse_size)]
    pub bytes: u64,
    #[arg(long, default_value = "4MiB", value_parser = super::worker::parse_size)]
    pub chunk: u64,
}

/// Reads a file front to back with pread, `chunk` bytes a call, and prints
/// MiB/s.
#[derive(Debug, Args)]
pub struct PreadArgs {
    pub file: std::path::PathBuf,
    #[arg(long, default_value = "4MiB", value_parser = super::worker::parse_size)]
    pub chunk: u64,
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

/// The socket options the worker and the client ask for.
fn tune(sock: &std::net::TcpStream) -> Result<(), CliError> {
    sock.set_nodelay(true).map_err(io_error("nodelay"))?;
    let s = socket2::SockRef::from(sock);
    s.set_send_buffer_size(8 << 20)
        .map_err(io_error("send buffer"))?;
    s.set_recv_buffer_size(8 << 20)
        .map_err(io_error("receive buffer"))?;
    Ok(())
}

pub fn tcp_send(args: TcpSendArgs) -> Result<(), CliError> {
    let file = std::fs::File::open(&args.file).map_err(io_error("opening the file"))?;
    let len = file.metadata().map_err(io_error("stat of the file"))?.len();
    let listener = std::net::TcpListener::bind(args.listen).map_err(io_error("binding"))?;
    let (sock, _) = listener.accept().map_err(io_error("accepting"))?;
    tune(&sock)?;
    let started = Instant::now();
    send_range(&sock, &file, 0, len).map_err(io_error("sending"))?;
    report("tcp-send", len, started.elapsed());
    Ok(())
}

pub fn tcp_recv(args: TcpRecvArgs) -> Result<(), CliError> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(args.from),
        socket2::Type::STREAM,
        None,
    )
    .map_err(io_error("a socket"))?;
    // Set before connecting, so the window scales to it from the start.
    socket
        .set_recv_buffer_size(8 << 20)
        .map_err(io_error("receive buffer"))?;
    // The sender may still be starting: try for a while.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let mut sock: std::net::TcpStream = loop {
        match socket.connect(&args.from.into()) {
            Ok(()) => break socket.into(),
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => return Err(io_error("connecting")(e)),
        }
    };
    tune(&sock)?;
    sock.set_nonblocking(true)
        .map_err(io_error("non-blocking"))?;
    let mut buf = vec![0u8; args.chunk.max(4096) as usize];
    let started = Instant::now();
    let mut got = 0;
    while got < args.bytes {
        let n = (args.bytes - got).min(buf.len() as u64) as usize;
        receive_exact(&mut sock, &mut buf[..n]).map_err(io_error("receiving"))?;
        got += n as u64;
    }
    report("tcp-recv", got, started.elapsed());
    Ok(())
}

pub fn pread(args: PreadArgs) -> Result<(), CliError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(&args.file).map_err(io_error("opening the file"))?;
    let len = file.metadata().map_err(io_error("stat of the file"))?.len();
    let mut buf = vec![0u8; args.chunk.max(4096) as usize];
    let started = Instant::now();
    let mut at = 0;
    while at < len {
        let n = file.read_at(&mut buf, at).map_err(io_error("pread"))?;
        if n == 0 {
            break;
        }
        at += n as u64;
    }
    report("pread", at, started.elapsed());
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
