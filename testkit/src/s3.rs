//! A real S3-compatible server for tests: moto (installed by
//! `e2e/cluster/install.sh` into `~/.cache/weir/venv`), one per test, on
//! loopback or on an address of the test bed's own network.

use crate::process::ChildGuard;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The moto server binary: `WEIR_MOTO_SERVER`, else the test bed's venv.
pub fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_MOTO_SERVER") {
        return p.into();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache/weir/venv/bin/moto_server")
}

/// A moto server holding one bucket; stopped on drop.
#[derive(Debug)]
pub struct S3Server {
    process: ChildGuard,
    pub host: String,
    pub port: u16,
    /// `http://host:port`
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    /// Starts moto on `host:port` (0: any free port) and creates `bucket`.
    pub fn start(host: &str, port: u16, bucket: &str) -> std::io::Result<Self> {
        let server = moto_server();
        if !server.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} missing: run e2e/cluster/install.sh", server.display()),
            ));
        }
        let port = if port == 0 {
            crate::free_port(host)
        } else {
            port
        };
        let child = Command::new(server)
            .args(["-H", host, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let s3 = S3Server {
            process: ChildGuard::new(child),
            host: host.to_owned(),
            port,
            endpoint: format!("http://{host}:{port}"),
            bucket: bucket.to_owned(),
        };
        let addr = s3.addr();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("moto did not start on {addr}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        s3.request("PUT", &format!("/{bucket}"), b"")?;
        Ok(s3)
    }

    /// On a free loopback port.
    pub fn local(bucket: &str) -> std::io::Result<Self> {
        Self::start("127.0.0.1", 0, bucket)
    }

    /// `host:port`
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Stores `body` as `key` in the bucket.
    /// Readable and writable without signing (moto refuses unsigned
    /// overwrites of private objects), so tests can rewrite it behind
    /// Weir's back.
    pub fn put(&self, key: &str, body: &[u8]) -> std::io::Result<()> {
        self.send(
            "PUT",
            &format!("/{}/{key}", self.bucket),
            body,
            "x-amz-acl: public-read-write\r\n",
        )
        .map(drop)
    }

    /// Deletes `key` from the bucket.
    pub fn delete(&self, key: &str) -> std::io::Result<()> {
        self.request("DELETE", &format!("/{}/{key}", self.bucket), b"")
            .map(drop)
    }

    /// An unsigned request (moto accepts them); the status line, or an
    /// error unless the status is 200 or 204.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<String> {
        self.send(method, path, body, "")
    }

    /// [`Self::request`] with extra header lines (each ending in CRLF).
    fn send(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &str,
    ) -> std::io::Result<String> {
        let addr = self.addr();
        let mut s = std::net::TcpStream::connect(&addr)?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
            body.len()
        )?;
        s.write_all(body)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out);
        let status = text.lines().next().unwrap_or_default().to_owned();
        if status.contains(" 200") || status.contains(" 204") {
            Ok(status)
        } else {
            Err(std::io::Error::other(format!("{method} {path}: {status}")))
        }
    }

    /// Stops the server now (a test of S3 going away).
    pub fn stop(&mut self) {
        self.process.kill();
    }
}

/// Credential files for a test S3 server (moto accepts any key), as a
/// mount's `credential_files` names them.
pub fn s3_credentials(dir: &Path) -> BTreeMap<String, String> {
    std::fs::write(dir.join("key"), "testing").expect("writing the key file");
    std::fs::write(dir.join("secret"), "testing").expect("writing the secret file");
    [
        (
            "accessKeyId".to_owned(),
            dir.join("key").display().to_string(),
        ),
        (
            "secretAccessKey".to_owned(),
            dir.join("secret").display().to_string(),
        ),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::S3Server;

    #[test]
    fn objects_can_be_rewritten_without_signing() {
        let s3 = S3Server::local("rewrite").expect("moto");
        s3.put("k", b"first").unwrap();
        s3.put("k", b"second").unwrap();
        let got = s3.request("GET", "/rewrite/k", b"").unwrap();
        assert!(got.contains("200"), "{got}");
        s3.delete("k").unwrap();
    }
}
