use super::{Ufs, UfsError, UfsPath, UfsResult, UfsStatus};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// A directory of this machine (or an NFS mount) as under-storage.
#[derive(Debug, Clone)]
pub struct LocalUfs {
    root: PathBuf,
}

impl LocalUfs {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn full(&self, path: &UfsPath) -> PathBuf {
        if path.as_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        }
    }
}

fn status(name: String, meta: &std::fs::Metadata) -> UfsStatus {
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    UfsStatus {
        name,
        is_dir: meta.is_dir(),
        length: if meta.is_dir() { 0 } else { meta.len() },
        mtime_ms,
    }
}

fn io(path: &Path, source: std::io::Error) -> UfsError {
    UfsError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[tonic::async_trait]
impl Ufs for LocalUfs {
    async fn stat(&self, path: &UfsPath) -> UfsResult<Option<UfsStatus>> {
        let full = self.full(path);
        // Follows symlinks, like reading the file would.
        match tokio::fs::metadata(&full).await {
            Ok(meta) => {
                let name = path
                    .as_str()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                Ok(Some(status(name, &meta)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&full, e)),
        }
    }

    fn list<'a>(&'a self, dir: &'a UfsPath) -> BoxStream<'a, UfsResult<UfsStatus>> {
        let full = self.full(dir);
        let opened = async move {
            match tokio::fs::read_dir(&full).await {
                Ok(rd) => Ok(rd),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(UfsError::NotFound(full.display().to_string()))
                }
                Err(e) => Err(io(&full, e)),
            }
        };
        futures::stream::once(opened)
            .flat_map(|opened| match opened {
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                Ok(rd) => futures::stream::unfold(rd, |mut rd| async move {
                    loop {
                        match rd.next_entry().await {
                            Ok(None) => return None,
                            Err(e) => return Some((Err(io(Path::new("read_dir"), e)), rd)),
                            Ok(Some(entry)) => {
                                let name = entry.file_name().to_string_lossy().into_owned();
                                // Entries that vanish between listing and stat, and
                                // dangling symlinks, are skipped.
                                match tokio::fs::metadata(entry.path()).await {
                                    Ok(meta) => return Some((Ok(status(name, &meta)), rd)),
                                    Err(_) => continue,
                                }
                            }
                        }
                    }
                })
                .boxed(),
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn stats_and_lists_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.bin"), b"12345").unwrap();
        let ufs = LocalUfs::new(dir.path().to_path_buf());
        let a = ufs
            .stat(&UfsPath::parse("a.bin").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.name.as_str(), a.length, a.is_dir), ("a.bin", 5, false));
        assert!(
            ufs.stat(&UfsPath::parse("missing").unwrap())
                .await
                .unwrap()
                .is_none()
        );
        let mut names: Vec<_> = ufs
            .list(&UfsPath::root())
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        names.sort();
        assert_eq!(names, ["a.bin", "sub"]);
        let missing = UfsPath::parse("nope").unwrap();
        let err = ufs
            .list(&missing)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert!(matches!(err, UfsError::NotFound(_)));
    }
}
