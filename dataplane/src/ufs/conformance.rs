//! The behaviour every under-storage must show. Tests call [`run_all`] with
//! a store rooted at an empty location.

use super::{AttrChange, Ufs, UfsError, UfsPath};
use bytes::Bytes;
use futures::TryStreamExt;

fn p(s: &str) -> UfsPath {
    UfsPath::parse(s).expect("valid test path")
}

async fn names(ufs: &dyn Ufs, dir: &str) -> Vec<(String, bool, u64)> {
    let mut v: Vec<_> = ufs
        .list(&p(dir))
        .try_collect::<Vec<_>>()
        .await
        .expect("list")
        .into_iter()
        .map(|s| (s.name, s.is_dir, s.length))
        .collect();
    v.sort();
    v
}

/// Runs every case.
pub async fn run_all(ufs: &dyn Ufs) {
    missing(ufs).await;
    write_stat_read(ufs).await;
    large_and_streamed(ufs).await;
    overwrite_rename_delete(ufs).await;
    versions(ufs).await;
    directories(ufs).await;
    attributes_and_links(ufs).await;
}

/// `chmod`, `chown`, `touch` and `ln -s` take effect, or the store says
/// it keeps no such thing (`Unsupported`); never an `Ok` that changes
/// nothing.
async fn attributes_and_links(ufs: &dyn Ufs) {
    ufs.write(&p("attrs/f"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let change = AttrChange {
        mode: Some(0o640),
        mtime_ms: Some(1_577_934_245_000),
        ..AttrChange::default()
    };
    match ufs.set_attributes(&p("attrs/f"), &change).await {
        Ok(()) => {
            let st = ufs.stat(&p("attrs/f")).await.unwrap().unwrap();
            assert_eq!(st.mode, Some(0o640), "a chmod the store took shows");
            assert_eq!(st.mtime_ms, 1_577_934_245_000, "so does a touch");
        }
        Err(UfsError::Unsupported { .. }) => {
            let st = ufs.stat(&p("attrs/f")).await.unwrap().unwrap();
            assert_ne!(st.mtime_ms, 1_577_934_245_000, "a refusal changes nothing");
        }
        Err(e) => panic!("set_attributes: {e}"),
    }
    match ufs.symlink(&p("attrs/link"), "f").await {
        Ok(()) => {
            let st = ufs.stat(&p("attrs/link")).await.unwrap().unwrap();
            assert_eq!(st.link.as_deref(), Some("f"), "a link is listed as one");
            assert!(!st.is_dir);
        }
        Err(UfsError::Unsupported { .. }) => {
            assert!(ufs.stat(&p("attrs/link")).await.unwrap().is_none());
        }
        Err(e) => panic!("symlink: {e}"),
    }
}

/// Missing things read as absent.
async fn missing(ufs: &dyn Ufs) {
    assert!(ufs.stat(&p("nothing/here")).await.unwrap().is_none());
    assert!(
        names(ufs, "no-such-dir").await.is_empty(),
        "a missing directory lists as empty"
    );
    assert!(matches!(
        ufs.read(&p("nothing"), 0, 1).await,
        Err(UfsError::NotFound(_))
    ));
}

/// Written objects stat and read back in ranges; a listing shows one level, directories marked.
async fn write_stat_read(ufs: &dyn Ufs) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    ufs.write(&p("d/a.bin"), Bytes::from(data.clone()))
        .await
        .unwrap();
    ufs.write(&p("d/empty"), Bytes::new()).await.unwrap();
    ufs.write(&p("d/sub/deep.txt"), Bytes::from_static(b"deep"))
        .await
        .unwrap();
    let st = ufs
        .stat(&p("d/a.bin"))
        .await
        .unwrap()
        .expect("written object exists");
    assert_eq!(
        (st.name.as_str(), st.is_dir, st.length),
        ("a.bin", false, 100_000)
    );
    assert!(st.mtime_ms > 0, "mtime is reported");
    assert_eq!(ufs.read(&p("d/a.bin"), 0, 100_000).await.unwrap(), data);
    assert_eq!(
        ufs.read(&p("d/a.bin"), 12_345, 1000).await.unwrap(),
        &data[12_345..13_345]
    );
    assert_eq!(
        ufs.read(&p("d/a.bin"), 99_990, 10).await.unwrap(),
        &data[99_990..]
    );
    assert_eq!(ufs.stat(&p("d/empty")).await.unwrap().unwrap().length, 0);
    let dir = ufs
        .stat(&p("d/sub"))
        .await
        .unwrap()
        .expect("a prefix stats as a directory");
    assert!(dir.is_dir);

    // One level of a listing, directories marked.
    assert_eq!(
        names(ufs, "d").await,
        vec![
            ("a.bin".into(), false, 100_000),
            ("empty".into(), false, 0),
            ("sub".into(), true, 0)
        ]
    );
    assert_eq!(
        names(ufs, "d/sub").await,
        vec![("deep.txt".into(), false, 4)]
    );
    assert!(
        names(ufs, "").await.iter().any(|(n, d, _)| n == "d" && *d),
        "the root lists too"
    );
}

/// Large objects (multipart where the store has it), streamed ranged reads and streaming writers.
async fn large_and_streamed(ufs: &dyn Ufs) {
    let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 253) as u8).collect();
    ufs.write(&p("big.bin"), Bytes::from(big.clone()))
        .await
        .unwrap();
    let back = ufs.read(&p("big.bin"), 0, big.len() as u64).await.unwrap();
    assert!(back == big, "20 MiB object read back differs");

    // Streamed ranged reads: exact bytes, and a range past the end fails
    // rather than returning fewer bytes silently.
    let streamed: Vec<u8> = ufs
        .read_stream(&p("big.bin"), 1 << 20, 10 << 20, None)
        .await
        .unwrap()
        .try_collect::<Vec<Bytes>>()
        .await
        .unwrap()
        .concat();
    assert!(streamed == big[1 << 20..11 << 20], "streamed range differs");
    let past_end = async {
        ufs.read_stream(&p("big.bin"), (20 << 20) - 10, 20, None)
            .await?
            .try_collect::<Vec<Bytes>>()
            .await
    };
    assert!(past_end.await.is_err(), "a short stream is an error");

    // A streaming writer: nothing visible until close; abort leaves nothing.
    let mut w = ufs.writer(&p("w/streamed.bin")).await.unwrap();
    for chunk in big.chunks(3 << 20) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    w.close().await.unwrap();
    let back = ufs
        .read(&p("w/streamed.bin"), 0, big.len() as u64)
        .await
        .unwrap();
    assert!(back == big, "streamed write read back differs");
    let mut w = ufs.writer(&p("w/aborted.bin")).await.unwrap();
    w.write(Bytes::from_static(b"never")).await.unwrap();
    w.abort().await.unwrap();
    assert!(ufs.stat(&p("w/aborted.bin")).await.unwrap().is_none());
}

/// Overwrites replace; renames move the bytes (S3: copy + delete); deletes are idempotent.
async fn overwrite_rename_delete(ufs: &dyn Ufs) {
    // Overwrite replaces.
    ufs.write(&p("d/empty"), Bytes::from_static(b"now full"))
        .await
        .unwrap();
    assert_eq!(
        ufs.read(&p("d/empty"), 0, 100).await.unwrap(),
        &b"now full"[..]
    );

    // Rename moves the bytes (S3: copy + delete), into missing parents too.
    ufs.rename(&p("d/sub/deep.txt"), &p("d/moved.txt"))
        .await
        .unwrap();
    assert!(ufs.stat(&p("d/sub/deep.txt")).await.unwrap().is_none());
    assert_eq!(
        ufs.read(&p("d/moved.txt"), 0, 10).await.unwrap(),
        &b"deep"[..]
    );
    ufs.rename(&p("d/moved.txt"), &p("d/new/parent/moved.txt"))
        .await
        .unwrap();
    assert_eq!(
        ufs.read(&p("d/new/parent/moved.txt"), 0, 10).await.unwrap(),
        &b"deep"[..]
    );
    assert!(matches!(
        ufs.rename(&p("d/not-there"), &p("d/x")).await,
        Err(UfsError::NotFound(_))
    ));
    for name in ["a", "b/c"] {
        ufs.write(&p(&format!("r/dir/{name}")), Bytes::from_static(b"in dir"))
            .await
            .unwrap();
    }
    ufs.rename(&p("r/dir"), &p("r/moved")).await.unwrap();
    assert!(ufs.stat(&p("r/dir")).await.unwrap().is_none());
    assert!(ufs.stat(&p("r/dir/b/c")).await.unwrap().is_none());
    assert_eq!(
        ufs.read(&p("r/moved/b/c"), 0, 10).await.unwrap(),
        &b"in dir"[..]
    );
    assert_eq!(names(ufs, "r").await, vec![("moved".into(), true, 0)]);

    // Delete, twice.
    ufs.delete(&p("d/a.bin")).await.unwrap();
    ufs.delete(&p("d/a.bin")).await.unwrap();
    assert!(ufs.stat(&p("d/a.bin")).await.unwrap().is_none());
    assert!(!names(ufs, "d").await.iter().any(|(n, _, _)| n == "a.bin"));
}

/// A rewrite is a new version even at the same length; a read pinned to
/// the old version fails instead of mixing.
async fn versions(ufs: &dyn Ufs) {
    let path = p("v/file.bin");
    ufs.write(&path, Bytes::from(vec![1u8; 4096]))
        .await
        .unwrap();
    let old = ufs.stat(&path).await.unwrap().unwrap().fingerprint();
    let pinned = ufs
        .read_stream(&path, 0, 4096, Some(&old))
        .await
        .unwrap()
        .try_collect::<Vec<Bytes>>()
        .await
        .unwrap()
        .concat();
    assert_eq!(
        pinned,
        vec![1u8; 4096],
        "a read pinned to the current version"
    );
    ufs.write(&path, Bytes::from(vec![2u8; 4096]))
        .await
        .unwrap();
    let new = ufs.stat(&path).await.unwrap().unwrap().fingerprint();
    assert!(
        !old.same_content(&new),
        "a same-length rewrite must change the fingerprint: {old} -> {new}"
    );
    let stale = async {
        ufs.read_stream(&path, 0, 4096, Some(&old))
            .await?
            .try_collect::<Vec<Bytes>>()
            .await
    };
    assert!(
        matches!(stale.await, Err(UfsError::Changed { .. })),
        "a read pinned to a replaced version"
    );
    let stat_again = ufs.stat(&path).await.unwrap().unwrap().fingerprint();
    assert_eq!(stat_again, new, "stat is stable while nothing changes");
}

/// Empty directories exist, and a tree goes at once.
async fn directories(ufs: &dyn Ufs) {
    ufs.create_dir(&p("t/empty")).await.unwrap();
    ufs.create_dir(&p("t/empty")).await.unwrap();
    assert!(ufs.stat(&p("t/empty")).await.unwrap().unwrap().is_dir);
    assert_eq!(names(ufs, "t").await, vec![("empty".into(), true, 0)]);
    assert!(names(ufs, "t/empty").await.is_empty());
    for i in 0..5 {
        ufs.write(&p(&format!("t/full/{i}/f")), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    ufs.delete_all(&p("t/full")).await.unwrap();
    assert!(ufs.stat(&p("t/full")).await.unwrap().is_none());
    assert!(ufs.stat(&p("t/full/3/f")).await.unwrap().is_none());
    ufs.delete(&p("t/empty")).await.unwrap();
    assert!(ufs.stat(&p("t/empty")).await.unwrap().is_none());
    ufs.delete_all(&p("t/never-was")).await.unwrap();
}

#[cfg(test)]
mod tests {
    use super::run_all;
    use crate::ufs::OpendalUfs;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn local_paths_conform() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("local://{}", dir.path().display());
        let ufs = crate::ufs::open(&uri, &BTreeMap::new(), &BTreeMap::new()).unwrap();
        run_all(ufs.as_ref()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_conforms_against_a_real_server() {
        let s3 = weir_testkit::S3Server::local("conformance").expect("starting the test S3 server");
        let dir = tempfile::tempdir().unwrap();
        let (key, secret) = (dir.path().join("key"), dir.path().join("secret"));
        std::fs::write(&key, "testing\n").unwrap();
        std::fs::write(&secret, "testing\n").unwrap();
        let options: BTreeMap<String, String> =
            [("endpoint".to_owned(), s3.endpoint.clone())].into();
        let creds: BTreeMap<String, String> = [
            ("accessKeyId".to_owned(), key.display().to_string()),
            ("secretAccessKey".to_owned(), secret.display().to_string()),
        ]
        .into();
        let ufs = OpendalUfs::open("s3://conformance/prefix", &options, &creds).unwrap();
        run_all(&ufs).await;
    }
}
