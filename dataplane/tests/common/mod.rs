//! Helpers shared by the data plane's process-level tests: a byte-counting
//! proxy in front of the S3 server, and `weir` processes (free ports, the
//! S3 server and process teardown come from `weir-testkit`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use weir_testkit::{ChildGuard, S3Server};

pub fn free_port() -> u16 {
    weir_testkit::free_local_port()
}

/// A moto S3 server on a free loopback port with one bucket.
pub async fn s3_server(bucket: &str) -> S3Server {
    S3Server::local(bucket).expect("starting the test S3 server")
}

/// A fresh (empty) moto on a given port, e.g. to bring S3 "back" after
/// stopping it.
pub async fn s3_server_on(port: u16, bucket: &str) -> S3Server {
    S3Server::start("127.0.0.1", port, bucket).expect("starting the test S3 server")
}

/// A plain HTTP/1.0 GET; the body.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// A TCP proxy that counts the bytes the server sends back (a flat count
/// means the server was not read from) and records every HTTP request it
/// passes on as "METHOD TARGET RANGE".
pub struct CountingProxy {
    pub addr: String,
    pub bytes: Arc<AtomicU64>,
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

/// Splits the client side of HTTP/1.1 connections into requests.
#[derive(Default)]
struct RequestParser {
    pending: Vec<u8>,
    body_left: usize,
}

impl RequestParser {
    fn feed(&mut self, data: &[u8], out: &std::sync::Mutex<Vec<String>>) {
        self.pending.extend_from_slice(data);
        loop {
            let skip = self.body_left.min(self.pending.len());
            self.body_left -= skip;
            self.pending.drain(..skip);
            if self.body_left > 0 {
                return;
            }
            let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
            self.pending.drain(..end + 4);
            let mut lines = head.lines();
            let mut first = lines.next().unwrap_or_default().split(' ');
            let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
            let mut range = String::new();
            for line in lines {
                if let Some((k, v)) = line.split_once(':') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "content-length" => self.body_left = v.trim().parse().unwrap_or(0),
                        "range" => range = v.trim().to_owned(),
                        _ => {}
                    }
                }
            }
            out.lock()
                .unwrap()
                .push(format!("{method} {target} {range}").trim_end().to_owned());
        }
    }
}

impl CountingProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let bytes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, stopped, log) = (bytes.clone(), stop.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if stopped.load(Ordering::Relaxed) {
                    continue;
                }
                let upstream = upstream.clone();
                let counter = counter.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut parser = RequestParser::default();
                        let mut buf = vec![0u8; 256 << 10];
                        loop {
                            let n = cr.read(&mut buf).await?;
                            if n == 0 {
                                return sw.shutdown().await;
                            }
                            parser.feed(&buf[..n], &log);
                            sw.write_all(&buf[..n]).await?;
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 256 << 10];
                        loop {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let n = sr.read(&mut buf).await?;
                            if n == 0 {
                                return cw.shutdown().await;
                            }
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            cw.write_all(&buf[..n]).await?;
                        }
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self {
            addr,
            bytes,
            requests,
            stop,
        }
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within 15 s.
pub fn terminate(c: Child) {
    ChildGuard::new(c).terminate(Duration::from_secs(15));
}

pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// A `weir` process, killed on drop.
pub struct Proc {
    pub name: String,
    pub args: Vec<String>,
    pub log: PathBuf,
    child: Option<ChildGuard>,
}

impl Proc {
    pub fn start(name: &str, args: Vec<String>, log_dir: &Path) -> Self {
        let mut p = Self {
            name: name.into(),
            args,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        };
        p.restart();
        p
    }

    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(weir_bin())
            .args(&self.args)
            .env("RUST_LOG", "warn,weir=info")
            .env("WEIR_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn weir");
        self.child = Some(ChildGuard::new(child));
    }

    /// Forks the next run of this process now and lets it exec only at
    /// [`Proc::restart_prepared`]. A process forked while this one holds
    /// files open on a FUSE mount whose daemon is down hangs in exec
    /// (closing them waits for the daemon), so a test that restarts the
    /// daemon under its own readers forks its successor beforehand.
    pub fn prepare_restart(&self) -> (Child, std::process::ChildStdin) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"read -r go && exec "$0" "$@""#)
            .arg(weir_bin())
            .args(&self.args)
            .env("RUST_LOG", "warn,weir=info")
            .env("WEIR_LOG_FORMAT", "text")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sh");
        let go = child.stdin.take().expect("stdin");
        (child, go)
    }

    pub fn restart_prepared(&mut self, (child, mut go): (Child, std::process::ChildStdin)) {
        use std::io::Write;
        go.write_all(b"go\n").expect("start the prepared process");
        self.child = Some(ChildGuard::new(child));
    }

    /// The end of this process's log on stderr: a failed test's run shows
    /// what the processes said, after their files are gone.
    pub fn print_tail(&self, lines: usize) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        eprintln!(
            "--- last lines of {} ({}) ---",
            self.name,
            self.log.display()
        );
        for line in &all[all.len().saturating_sub(lines)..] {
            eprintln!("{line}");
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildGuard::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(15));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn is_mounted(mount_point: &Path) -> bool {
    let target = mount_point.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*target)))
        .unwrap_or(false)
}

/// Credential files for the test S3 servers (both accept any key), as the
/// mount options name them.
pub fn creds(dir: &Path) -> std::collections::BTreeMap<String, String> {
    weir_testkit::s3_credentials(dir)
}
