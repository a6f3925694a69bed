//! Under-storage through OpenDAL: S3 (any S3-compatible endpoint), HTTP(S)
//! read-only, and HDFS through WebHDFS, behind the one [`Ufs`] trait. An
//! object's version is its ETag; a read pinned to a version sends it as
//! `If-Match`, so the store itself refuses other content.

use super::{
    AttrChange, Fingerprint, NodeKind, Ufs, UfsError, UfsPath, UfsResult, UfsStatus, UfsWriter,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use opendal::{EntryMode, ErrorKind, Operator};
use std::collections::BTreeMap;
use std::sync::Once;

/// An OpenDAL operator rooted at a mount's location.
#[derive(Debug, Clone)]
pub struct OpendalUfs {
    op: Operator,
    uri: String,
    /// HTTP is read-only: no rename, no directories of its own.
    can_rename: bool,
}

fn install_transport() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Weir uses one TLS provider (ring) everywhere; a second one
        // installed by a dependency would make the first TLS use panic.
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
    });
}

fn err(uri: &str, path: &str, e: opendal::Error) -> UfsError {
    match e.kind() {
        ErrorKind::NotFound => UfsError::NotFound(format!("{uri} {path}")),
        ErrorKind::ConditionNotMatch => UfsError::Changed {
            path: format!("{uri} {path}"),
        },
        ErrorKind::PermissionDenied => UfsError::Denied {
            path: format!("{uri} {path}"),
        },
        ErrorKind::Unsupported => UfsError::Unsupported {
            uri: uri.to_owned(),
            reason: e.to_string(),
        },
        _ => UfsError::Io {
            path: format!("{uri} {path}"),
            source: std::io::Error::other(e.to_string()),
        },
    }
}

/// Reads a credential from the file a mount names for it (Secrets are
/// mounted as files; their values never travel in options).
fn credential(files: &BTreeMap<String, String>, key: &str) -> UfsResult<Option<String>> {
    match files.get(key) {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path)
            .map(|v| Some(v.trim().to_owned()))
            .map_err(|source| UfsError::Io {
                path: path.clone(),
                source,
            }),
    }
}

impl OpendalUfs {
    /// Builds the operator for `uri` (`s3://bucket/prefix`, `http(s)://host/path`,
    /// `webhdfs://namenode/path`) with `options` (endpoint, region, virtual_host_style)
    /// and credentials read from `credential_files` (accessKeyId,
    /// secretAccessKey), falling back to the AWS_* environment.
    pub fn open(
        uri: &str,
        options: &BTreeMap<String, String>,
        credential_files: &BTreeMap<String, String>,
    ) -> UfsResult<Self> {
        install_transport();
        let unsupported = |reason: String| UfsError::Unsupported {
            uri: uri.to_owned(),
            reason,
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| unsupported("no scheme".into()))?;
        let built = match scheme {
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(unsupported("no bucket".into()));
                }
                let mut b = opendal::services::S3::default()
                    .bucket(bucket)
                    .root(&format!("/{}", prefix.trim_matches('/')))
                    .region(
                        options
                            .get("region")
                            .map(String::as_str)
                            .unwrap_or("us-east-1"),
                    )
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(endpoint) = options.get("endpoint") {
                    b = b.endpoint(endpoint);
                }
                if options
                    .get("virtual_host_style")
                    .is_some_and(|v| v == "true")
                {
                    b = b.enable_virtual_host_style();
                }
                let key = credential(credential_files, "accessKeyId")?
                    .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
                let secret = credential(credential_files, "secretAccessKey")?
                    .or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok());
                match (key, secret) {
                    (Some(k), Some(s)) => b = b.access_key_id(&k).secret_access_key(&s),
                    _ => b = b.skip_signature(),
                }
                Operator::new(b).map(|op| (op, true))
            }
            "http" | "https" => {
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                let b = opendal::services::Http::default()
                    .endpoint(&format!("{scheme}://{host}"))
                    .root(&format!("/{}", path.trim_matches('/')));
                Operator::new(b).map(|op| (op, false))
            }
            #[cfg(feature = "webhdfs")]
            "webhdfs" | "hdfs" => {
                // HDFS is reached through the namenode's WebHDFS gateway
                // (HTTP); `hdfs://` names the same gateway.
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                if host.is_empty() {
                    return Err(unsupported("no namenode host".into()));
                }
                let host = if host.contains(':') {
                    host.to_owned()
                } else {
                    format!("{host}:9870")
                };
                let mut b = opendal::services::Webhdfs::default()
                    .endpoint(&format!("http://{host}"))
                    .root(&format!("/{}", path.trim_matches('/')));
                if let Some(user) = options.get("user") {
                    b = b.user_name(user);
                }
                if let Some(token) = credential(credential_files, "delegationToken")? {
                    b = b.delegation(&token);
                }
                Operator::new(b).map(|op| (op, true))
            }
            other => {
                return Err(unsupported(format!(
                    "no {other} under-storage in this build"
                )));
            }
        };
        let (op, can_rename) = built.map_err(|e| unsupported(e.to_string()))?;
        let op = op.layer(opendal::layers::RetryLayer::new().with_max_times(3));
        Ok(Self {
            op,
            uri: uri.to_owned(),
            can_rename,
        })
    }

    fn dir_path(path: &UfsPath) -> String {
        if path.as_str().is_empty() {
            "/".into()
        } else {
            format!("{}/", path.as_str())
        }
    }
}

#[tonic::async_trait]
impl Ufs for OpendalUfs {
    /// A whole range of an object; `len` bytes from `offset` (fewer at the end).
    async fn read(&self, path: &UfsPath, offset: u64, len: u64) -> UfsResult<Bytes> {
        match self
            .op
            .read_with(path.as_str())
            .range(offset..offset + len)
            .await
        {
            Ok(buf) => Ok(buf.to_bytes()),
            // A range that runs past the end: stores differ (an error, or
            // "too little data"), Weir's contract is the bytes that exist.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::RangeNotSatisfied | ErrorKind::Unexpected
                ) =>
            {
                let size = self
                    .op
                    .stat(path.as_str())
                    .await
                    .map_err(|e| err(&self.uri, path.as_str(), e))?
                    .content_length();
                if offset >= size {
                    return Ok(Bytes::new());
                }
                let buf = self
                    .op
                    .read_with(path.as_str())
                    .range(offset..size)
                    .await
                    .map_err(|e| err(&self.uri, path.as_str(), e))?;
                Ok(buf.to_bytes())
            }
            Err(e) => Err(err(&self.uri, path.as_str(), e)),
        }
    }

    async fn read_stream(
        &self,
        path: &UfsPath,
        offset: u64,
        len: u64,
        expect: Option<&Fingerprint>,
    ) -> UfsResult<BoxStream<'static, UfsResult<Bytes>>> {
        let wrap = |e| err(&self.uri, path.as_str(), e);
        if let Some(want) = expect
            && want.version.is_empty()
        {
            // No ETag to send: length and mtime are what there is.
            let now = self
                .stat(path)
                .await?
                .ok_or_else(|| UfsError::NotFound(format!("{} {}", self.uri, path.as_str())))?;
            if !want.same_content(&now.fingerprint()) {
                return Err(UfsError::Changed {
                    path: format!("{} {}", self.uri, path.as_str()),
                });
            }
        }
        if len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let mut reader = self.op.reader_with(path.as_str());
        if let Some(want) = expect.filter(|w| !w.version.is_empty()) {
            reader = reader.if_match(&want.version);
        }
        let stream = reader
            .await
            .map_err(wrap)?
            .into_bytes_stream(offset..offset + len)
            .await
            .map_err(wrap)?;
        let name = format!("{} {}", self.uri, path.as_str());
        let mut seen = 0u64;
        let checked = stream
            .map(move |chunk| {
                chunk.map_err(|source| {
                    let changed = source
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<opendal::Error>())
                        .is_some_and(|e| e.kind() == ErrorKind::ConditionNotMatch);
                    if changed {
                        UfsError::Changed { path: name.clone() }
                    } else {
                        UfsError::Io {
                            path: name.clone(),
                            source,
                        }
                    }
                })
            })
            .chain(futures::stream::once(async { Ok(Bytes::new()) }))
            .filter_map(move |chunk| {
                let out = match chunk {
                    // The end marker: a short object or a cut connection.
                    Ok(c) if c.is_empty() && seen < len => Some(Err(UfsError::Io {
                        path: String::new(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("under-storage stream ended after {seen} of {len} bytes"),
                        ),
                    })),
                    Ok(c) if c.is_empty() => None,
                    Ok(c) => {
                        seen += c.len() as u64;
                        Some(Ok(c))
                    }
                    Err(e) => Some(Err(e)),
                };
                std::future::ready(out)
            });
        Ok(checked.boxed())
    }

    async fn writer(&self, path: &UfsPath) -> UfsResult<Box<dyn UfsWriter>> {
        let w = self
            .op
            .writer_with(path.as_str())
            .chunk(8 << 20)
            .await
            .map_err(|e| err(&self.uri, path.as_str(), e))?;
        Ok(Box::new(OpendalWriter {
            inner: w,
            name: format!("{} {}", self.uri, path.as_str()),
        }))
    }

    async fn write(&self, path: &UfsPath, data: Bytes) -> UfsResult<()> {
        let mut w = self
            .op
            .writer_with(path.as_str())
            .chunk(8 << 20)
            .await
            .map_err(|e| err(&self.uri, path.as_str(), e))?;
        w.write(data)
            .await
            .map_err(|e| err(&self.uri, path.as_str(), e))?;
        w.close()
            .await
            .map_err(|e| err(&self.uri, path.as_str(), e))?;
        Ok(())
    }

    async fn delete(&self, path: &UfsPath) -> UfsResult<()> {
        // A file, or an empty directory's marker object: whichever exists.
        for candidate in [path.as_str().to_owned(), Self::dir_path(path)] {
            match self.op.delete(&candidate).await {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(err(&self.uri, path.as_str(), e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn delete_all(&self, path: &UfsPath) -> UfsResult<()> {
        self.delete(path).await?;
        match self
            .op
            .delete_with(&Self::dir_path(path))
            .recursive(true)
            .await
        {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(err(&self.uri, path.as_str(), e)),
            _ => Ok(()),
        }
    }

    async fn create_dir(&self, path: &UfsPath) -> UfsResult<()> {
        self.op
            .create_dir(&Self::dir_path(path))
            .await
            .map_err(|e| err(&self.uri, path.as_str(), e))
    }

    async fn set_attributes(&self, _path: &UfsPath, _change: &AttrChange) -> UfsResult<()> {
        Err(UfsError::Unsupported {
            uri: self.uri.clone(),
            reason: "the store keeps no mode, owner or modification time of its own; \
                     chmod, chown and touch are refused"
                .into(),
        })
    }

    async fn symlink(&self, _path: &UfsPath, _target: &str) -> UfsResult<()> {
        Err(UfsError::Unsupported {
            uri: self.uri.clone(),
            reason: "the store holds no symbolic links".into(),
        })
    }

    async fn make_node(&self, _path: &UfsPath, kind: NodeKind, _rdev: u64) -> UfsResult<()> {
        Err(UfsError::Unsupported {
            uri: self.uri.clone(),
            reason: format!("the store holds no special files (a {})", kind.name()),
        })
    }

    async fn hard_link(&self, _existing: &UfsPath, _new: &UfsPath) -> UfsResult<()> {
        Err(UfsError::Unsupported {
            uri: self.uri.clone(),
            reason: "the store holds no hard links; an object has one name".into(),
        })
    }

    async fn rename(&self, from: &UfsPath, to: &UfsPath) -> UfsResult<()> {
        if !self.can_rename {
            return Err(UfsError::Unsupported {
                uri: self.uri.clone(),
                reason: "rename is not supported".into(),
            });
        }
        let e = |e| err(&self.uri, from.as_str(), e);
        match self.op.rename(from.as_str(), to.as_str()).await {
            Err(x) if x.kind() == ErrorKind::Unsupported => {}
            other => return other.map_err(e),
        }
        // No rename on an object store: copy each object, then delete the
        // originals (a directory is every object below its prefix).
        let status = self
            .stat(from)
            .await?
            .ok_or_else(|| UfsError::NotFound(format!("{} {}", self.uri, from.as_str())))?;
        if !status.is_dir {
            self.op.copy(from.as_str(), to.as_str()).await.map_err(e)?;
            return self.delete(from).await;
        }
        let (src, dst) = (Self::dir_path(from), Self::dir_path(to));
        let mut objects = self.op.lister_with(&src).recursive(true).await.map_err(e)?;
        while let Some(entry) = objects.try_next().await.map_err(e)? {
            let path = entry.path().to_owned();
            let Some(rest) = path.strip_prefix(&src) else {
                continue;
            };
            let target = format!("{dst}{rest}");
            if path.ends_with('/') {
                self.op.create_dir(&target).await.map_err(e)?;
            } else {
                self.op.copy(&path, &target).await.map_err(e)?;
            }
        }
        self.op.create_dir(&dst).await.map_err(e)?;
        self.op.delete_with(&src).recursive(true).await.map_err(e)
    }

    async fn stat(&self, path: &UfsPath) -> UfsResult<Option<UfsStatus>> {
        let name = path
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if path.as_str().is_empty() {
            return Ok(Some(UfsStatus {
                name,
                is_dir: true,
                length: 0,
                mtime_ms: 0,
                version: String::new(),
                mode: None,
                uid: None,
                gid: None,
                link: None,
            }));
        }
        // Object stores have no directories of their own: a "directory" is
        // a prefix, so a missing object is retried as one.
        for candidate in [path.as_str().to_owned(), Self::dir_path(path)] {
            match self.op.stat(&candidate).await {
                Ok(meta) => {
                    let is_dir = meta.mode() == EntryMode::DIR;
                    let mtime_ms = meta
                        .last_modified()
                        .map(|t| t.into_inner().as_millisecond().max(0) as u64)
                        .unwrap_or(0);
                    return Ok(Some(UfsStatus {
                        name,
                        is_dir,
                        length: if is_dir { 0 } else { meta.content_length() },
                        mtime_ms,
                        version: meta.etag().unwrap_or_default().to_owned(),
                        mode: None,
                        uid: None,
                        gid: None,
                        link: None,
                    }));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(err(&self.uri, path.as_str(), e)),
            }
        }
        Ok(None)
    }

    fn list<'a>(&'a self, dir: &'a UfsPath) -> BoxStream<'a, UfsResult<UfsStatus>> {
        let prefix = Self::dir_path(dir);
        let lister = async move {
            match self.op.lister(&prefix).await {
                Ok(l) => Ok(Some(l)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(err(&self.uri, &prefix, e)),
            }
        };
        futures::stream::once(lister)
            .try_filter_map(|l| async move { Ok(l) })
            .map_ok(move |lister| {
                lister
                    .map_err(move |e| err(&self.uri, dir.as_str(), e))
                    .try_filter_map(move |entry| async move {
                        let full = entry.path().trim_end_matches('/');
                        let name = full.rsplit('/').next().unwrap_or_default().to_owned();
                        // Listings include the directory itself.
                        if name.is_empty() || full == dir.as_str().trim_end_matches('/') {
                            return Ok(None);
                        }
                        let meta = entry.metadata();
                        let is_dir = meta.mode() == EntryMode::DIR;
                        let length = if is_dir { 0 } else { meta.content_length() };
                        let mtime_ms = meta
                            .last_modified()
                            .map(|t| t.into_inner().as_millisecond().max(0) as u64)
                            .unwrap_or(0);
                        Ok(Some(UfsStatus {
                            name,
                            is_dir,
                            length,
                            mtime_ms,
                            version: meta.etag().unwrap_or_default().to_owned(),
                            mode: None,
                            uid: None,
                            gid: None,
                            link: None,
                        }))
                    })
            })
            .try_flatten()
            .boxed()
    }
}

struct OpendalWriter {
    inner: opendal::Writer,
    name: String,
}

impl OpendalWriter {
    fn err(&self, e: opendal::Error) -> UfsError {
        UfsError::Io {
            path: self.name.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl UfsWriter for OpendalWriter {
    async fn write(&mut self, data: Bytes) -> UfsResult<()> {
        self.inner.write(data).await.map_err(|e| self.err(e))
    }

    async fn close(&mut self) -> UfsResult<()> {
        self.inner
            .close()
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    async fn abort(&mut self) -> UfsResult<()> {
        self.inner.abort().await.map_err(|e| self.err(e))
    }
}
