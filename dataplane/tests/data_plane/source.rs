//! The under-storage as the tests change it behind Weir's back: a local
//! directory (through the file system, so mtimes can be put back) or a
//! bucket of the S3 server (through its API).

use crate::cluster::{Cluster, hex};
use crate::common::{S3Server, creds};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir::proto::master as pb;
use weir::ufs::{Ufs, UfsPath};

pub enum Source {
    Local(PathBuf),
    S3 {
        ufs: Arc<dyn Ufs>,
        endpoint: String,
        /// `bucket` or `bucket/prefix`.
        bucket: String,
        creds: BTreeMap<String, String>,
        _server: Arc<S3Server>,
    },
}

/// A file shaped like parquet: the magic number at both ends, a body that
/// differs per `seed`.
pub fn parquet_like(len: usize, seed: u64) -> Vec<u8> {
    assert!(len >= 8);
    let mut v = weir_testkit::bytes(len, seed);
    v[..4].copy_from_slice(b"PAR1");
    v[len - 4..].copy_from_slice(b"PAR1");
    v
}

pub fn sha(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl Source {
    pub fn local(dir: &Path) -> Self {
        let root = dir.join("ufs");
        std::fs::create_dir_all(&root).unwrap();
        Source::Local(root)
    }

    pub async fn s3(dir: &Path, bucket: &str) -> Self {
        let server = crate::common::s3_server(bucket).await;
        let creds = creds(dir);
        let ufs = crate::cluster::s3_ufs(&server.endpoint, bucket, &creds);
        Source::S3 {
            ufs,
            endpoint: server.endpoint.clone(),
            bucket: bucket.into(),
            creds,
            _server: Arc::new(server),
        }
    }

    /// The part of the source below `dir`, as a source of its own.
    pub fn sub(&self, dir: &str) -> Source {
        match self {
            Source::Local(root) => Source::Local(root.join(dir)),
            Source::S3 {
                endpoint,
                bucket,
                creds,
                _server,
                ..
            } => {
                let bucket = format!("{bucket}/{dir}");
                let opts = [("endpoint".to_owned(), endpoint.clone())].into();
                let ufs = Arc::new(
                    weir::ufs::OpendalUfs::open(&format!("s3://{bucket}"), &opts, creds).unwrap(),
                );
                Source::S3 {
                    ufs,
                    endpoint: endpoint.clone(),
                    bucket,
                    creds: creds.clone(),
                    _server: _server.clone(),
                }
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Source::Local(_) => "local",
            Source::S3 { .. } => "s3",
        }
    }

    /// Mounts the source at `path`.
    pub async fn mount(
        &self,
        c: &Cluster,
        path: &str,
        wt: pb::WriteType,
        sync: pb::SyncMode,
        interval_ms: u64,
    ) {
        self.mount_at(c, path, "", wt, sync, interval_ms).await
    }

    /// Mounts the source's directory `dir` (all of it if empty) at `path`.
    pub async fn mount_at(
        &self,
        c: &Cluster,
        path: &str,
        dir: &str,
        wt: pb::WriteType,
        sync: pb::SyncMode,
        interval_ms: u64,
    ) {
        let below = |base: String| {
            if dir.is_empty() {
                base
            } else {
                format!("{base}/{dir}")
            }
        };
        let (uri, opts, creds) = match self {
            Source::Local(root) => (
                below(format!("local://{}", root.display())),
                vec![],
                BTreeMap::new(),
            ),
            Source::S3 {
                endpoint,
                bucket,
                creds,
                ..
            } => (
                below(format!("s3://{bucket}")),
                vec![("endpoint".to_owned(), endpoint.clone())],
                creds.clone(),
            ),
        };
        let req = pb::MountRequest {
            path: path.into(),
            ufs_uri: uri,
            read_only: false,
            write_type: wt as i32,
            sync_interval_ms: interval_ms,
            sync_mode: sync as i32,
            options: opts.into_iter().collect(),
            credential_files: creds.into_iter().collect(),
        };
        c.fs()
            .master()
            .call(|mut m| {
                let r = req.clone();
                async move { m.mount(r).await }
            })
            .await
            .unwrap();
    }

    pub async fn put(&self, name: &str, bytes: &[u8]) {
        match self {
            Source::Local(root) => {
                let p = root.join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, bytes).unwrap();
            }
            Source::S3 { ufs, .. } => ufs
                .write(&UfsPath::parse(name).unwrap(), bytes.to_vec().into())
                .await
                .unwrap(),
        }
    }

    /// Rewrites `name` in place; on a local directory the mtime is put
    /// back as it was, which object stores do not allow.
    pub async fn rewrite_keeping_mtime(&self, name: &str, bytes: &[u8]) {
        match self {
            Source::Local(root) => {
                let p = root.join(name);
                let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
                std::fs::write(&p, bytes).unwrap();
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(mtime)
                    .unwrap();
            }
            Source::S3 { .. } => self.put(name, bytes).await,
        }
    }

    pub async fn remove(&self, name: &str) {
        match self {
            Source::Local(root) => std::fs::remove_file(root.join(name)).unwrap(),
            Source::S3 { ufs, .. } => ufs.delete(&UfsPath::parse(name).unwrap()).await.unwrap(),
        }
    }

    pub async fn get(&self, name: &str) -> Option<Vec<u8>> {
        match self {
            Source::Local(root) => std::fs::read(root.join(name)).ok(),
            Source::S3 { ufs, .. } => {
                let p = UfsPath::parse(name).unwrap();
                let st = ufs.stat(&p).await.unwrap()?;
                Some(ufs.read(&p, 0, st.length).await.unwrap().to_vec())
            }
        }
    }

    /// Every file and directory below the root, directories ending in `/`
    /// (an object store's empty directory is its marker object).
    pub async fn tree(&self) -> Vec<String> {
        let ufs: Arc<dyn Ufs> = match self {
            Source::Local(root) => weir::ufs::open(
                &format!("local://{}", root.display()),
                &BTreeMap::new(),
                &BTreeMap::new(),
            )
            .unwrap(),
            Source::S3 { ufs, .. } => ufs.clone(),
        };
        let mut out = Vec::new();
        let mut dirs = vec![String::new()];
        while let Some(dir) = dirs.pop() {
            use futures::TryStreamExt;
            let entries: Vec<_> = ufs
                .list(&UfsPath::parse(&dir).unwrap())
                .try_collect()
                .await
                .unwrap();
            for e in entries {
                let path = if dir.is_empty() {
                    e.name.clone()
                } else {
                    format!("{dir}/{}", e.name)
                };
                if e.is_dir {
                    out.push(format!("{path}/"));
                    dirs.push(path);
                } else {
                    out.push(path);
                }
            }
        }
        out.sort();
        out
    }
}

/// The same walk through a FUSE mount.
pub fn mount_tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                dirs.push(e.path());
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}
