//! Writes with the four write types, and bad input.

use crate::cluster::*;
use crate::common::{creds, s3_server, s3_server_on};
use std::sync::Arc;
use std::time::Duration;
use weir::client::FileSystem;
use weir::proto::master as pb;
use weir::ufs::UfsPath;
use weir_api::WriteType;

async fn write_file(
    fs: &Arc<FileSystem>,
    path: &str,
    p: &Pattern,
    len: u64,
    mode: Option<WriteType>,
) {
    let mut w = fs.create(path, mode).await.unwrap();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(3 << 20) as usize;
        w.write(&p.bytes(off, n)).await.unwrap();
        off += n as u64;
    }
    let info = w.close().await.unwrap();
    assert_eq!(info.length, len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t40_write_types_leave_cache_and_s3_as_they_promise() {
    let mut s3 = s3_server("bkt").await;
    let cred_dir = tempfile::tempdir().unwrap();
    let creds = creds(cred_dir.path());
    let mut c = Cluster::start(1, "2GiB").await;
    // Signed stats: moto answers unsigned HEADs of private objects 403.
    let direct = s3_ufs(&s3.endpoint, "bkt", &creds);
    let in_s3 = |path: &str| {
        let path = UfsPath::parse(path).unwrap();
        let direct = direct.clone();
        async move { direct.stat(&path).await.unwrap().is_some() }
    };
    for (dir, wt) in [
        ("mc", pb::WriteType::MustCache),
        ("ct", pb::WriteType::CacheThrough),
        ("th", pb::WriteType::Through),
        ("at", pb::WriteType::AsyncThrough),
    ] {
        c.mount(
            &format!("/{dir}"),
            &format!("s3://bkt/{dir}"),
            &[("endpoint", &s3.endpoint)],
            &creds,
            wt,
            false,
        )
        .await;
    }
    let fs = c.fs();
    let p = Pattern::new(77);
    let len = BLOCK + (3 << 20);
    for dir in ["mc", "ct", "th", "at"] {
        write_file(&fs, &format!("/{dir}/f"), &p, len, None).await;
    }
    let persisted = pb::PersistState::Persisted as i32;
    let cases = [
        // (dir, in S3 at once, cached, persist state right after close)
        ("mc", false, 100, pb::PersistState::NotPersisted as i32),
        ("ct", true, 100, persisted),
        ("th", true, 0, persisted),
    ];
    for (dir, stored, cached, state) in cases {
        let st = c.status(&format!("/{dir}/f")).await;
        assert_eq!(in_s3(&format!("{dir}/f")).await, stored, "{dir} in S3");
        assert_eq!((st.cached_percent, st.persist), (cached, state), "{dir}");
        assert_eq!(
            client_sha(&fs, &format!("/{dir}/f")).await,
            p.sha256(len),
            "{dir} reads back"
        );
    }
    // ASYNC_THROUGH: cached at once, in S3 soon after.
    assert_eq!(c.status("/at/f").await.cached_percent, 100);
    wait("the ASYNC_THROUGH file to be persisted", || async {
        c.status("/at/f").await.persist == persisted
    })
    .await;
    assert!(in_s3("at/f").await);
    let back = direct
        .read(&UfsPath::parse("at/f").unwrap(), 0, len)
        .await
        .unwrap();
    assert!(back == p.bytes(0, len as usize), "persisted bytes differ");

    // Persisted in the order written: a file queued behind a big one and
    // deleted before its turn is never written to S3.
    write_file(&fs, "/at/big", &p, 3 * BLOCK, None).await;
    write_file(&fs, "/at/late", &p, 1 << 20, None).await;
    fs.delete("/at/late", false).await.unwrap();
    wait("the big file to be persisted", || async {
        c.status("/at/big").await.persist == persisted
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!in_s3("at/late").await, "a deleted file was persisted");
    assert!(in_s3("at/big").await);

    // Journaled: an ASYNC_THROUGH file written while S3 is down survives
    // its worker being killed, and lands once S3 is back.
    let port = s3.port;
    s3.stop();
    write_file(&fs, "/at/journaled", &p, 5 << 20, None).await;
    c.workers[0].kill9();
    c.workers[0].restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.wait_workers(1).await;
    assert_ne!(c.status("/at/journaled").await.persist, persisted);
    // (The worker may persist it the moment S3 answers again.)
    let s3 = s3_server_on(port, "bkt").await;
    wait("the journaled file to be persisted", || async {
        c.status("/at/journaled").await.persist == persisted
    })
    .await;
    let back = direct
        .read(&UfsPath::parse("at/journaled").unwrap(), 0, 5 << 20)
        .await
        .unwrap();
    assert!(back == p.bytes(0, 5 << 20), "journaled bytes differ");
    drop(s3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t50_bad_input_gets_the_right_errors() {
    let ufs = tempfile::tempdir().unwrap();
    std::fs::write(ufs.path().join("a.txt"), b"alpha").unwrap();
    std::fs::create_dir(ufs.path().join("many")).unwrap();
    for i in 0..2500 {
        std::fs::write(ufs.path().join(format!("many/f{i:05}")), b"").unwrap();
    }
    let mut c = Cluster::start(1, "64MiB").await;
    c.mount_local("/ro", ufs.path(), true).await;
    let rw = c.fuse("/", &[]).await;
    // Without passthrough, so the kernel's own page cache holds what is read.
    let ro = c.fuse("/ro", &["--read-only", "--no-passthrough"]).await;
    assert_eq!(std::fs::read(ro.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(rw.join("ro/a.txt")).unwrap(), b"alpha");
    // A directory larger than one listing page, listed through FUSE.
    let mut names: Vec<String> = std::fs::read_dir(ro.join("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = (0..2500).map(|i| format!("f{i:05}")).collect();
    assert_eq!(names, want, "readdir across pages");
    let enoent = std::fs::read(rw.join("ro/missing")).unwrap_err();
    assert_eq!(enoent.raw_os_error(), Some(2), "{enoent}");
    for target in [ro.join("new.txt"), rw.join("ro/new.txt")] {
        let err = std::fs::write(&target, b"x").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(30),
            "EROFS for {}: {err}",
            target.display()
        );
    }
    // A writable part of the namespace takes new files, and changes them.
    std::fs::create_dir(rw.join("scratch")).unwrap();
    std::fs::write(rw.join("scratch/n.txt"), b"new").unwrap();
    let back = std::fs::read(rw.join("scratch/n.txt"))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.fuses[0].0.log_tail()));
    assert_eq!(back, b"new");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(rw.join("scratch/n.txt"))
        .unwrap();
    std::io::Write::write_all(&mut f, b" and appended").unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(rw.join("scratch/n.txt")).unwrap(),
        b"new and appended"
    );

    // statfs reports the cache: 64 MiB.
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%b %S"])
        .arg(&rw)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(nums[0] * nums[1], 64 << 20, "statfs: {text}");

    let fs = c.fs();
    let missing = fs.open("/ro/missing").await.unwrap_err();
    assert_eq!(missing.code(), Some(tonic::Code::NotFound), "{missing}");
    // `..` never reaches an under-storage: refused at mount time, and by
    // a worker asked to read such a path directly.
    let out = std::process::Command::new(crate::common::weir_bin())
        .args([
            "fs",
            "--masters",
            &c.master_addr,
            "mount",
            "/evil",
            "local:///tmp/../etc",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`..`"));
    let info = fs.block_info("/ro/a.txt").await.unwrap();
    let mount_id = info.file.as_ref().unwrap().mount_id;
    let worker = fs
        .master()
        .call(|mut m| async move { m.get_cluster_info(pb::Empty {}).await })
        .await
        .unwrap()
        .workers[0]
        .address
        .clone()
        .unwrap();
    let mut conn = tokio::net::TcpStream::connect(format!("127.0.0.1:{}", worker.data_port))
        .await
        .unwrap();
    use weir::wire::{ErrorKind, ReadRequest, Request, Response, UfsSource};
    weir::wire::send(
        &mut conn,
        &Request::Read(ReadRequest {
            block: 999 << 24,
            offset: 0,
            len: 10,
            source: Some(UfsSource {
                mount_id,
                path: "../../etc/passwd".into(),
                block_offset: 0,
                block_len: 10,
            }),
            cache: true,
        }),
    )
    .await
    .unwrap();
    let resp: Response = weir::wire::recv(&mut conn).await.unwrap().unwrap();
    assert!(
        matches!(
            resp,
            Response::Error {
                kind: ErrorKind::Invalid,
                ..
            }
        ),
        "{resp:?}"
    );

    // Completed files keep the kernel's page cache across opens: with the
    // only worker gone, a file read before still reads.
    c.workers[0].kill9();
    assert_eq!(
        std::fs::read(ro.join("a.txt")).unwrap(),
        b"alpha",
        "page cache kept"
    );
}
