//! The node plugin on a real FUSE mount of a real Weir (`weir local up`):
//! stage and publish bind real mounts, read-only volumes refuse writes,
//! sub-paths and attributes cannot escape, a killed FUSE daemon's binds are
//! repaired once a new one mounts, and unpublish / unstage leave nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_csi::node::{NodeConfig, NodeService};
use weir_csi::proto as pb;
use weir_csi::{Error, mounts};

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_path_buf()
}

fn weir() -> PathBuf {
    let bin = profile_dir().join("weir");
    assert!(
        bin.exists(),
        "{} missing: build the workspace (cargo test --workspace --no-run)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn capability(mode: pb::volume_capability::access_mode::Mode) -> Option<pb::VolumeCapability> {
    Some(pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
    })
}

struct Local {
    /// Everything of the test lives below this.
    root: PathBuf,
    state: PathBuf,
    master_port: u16,
    fuse: Option<Child>,
}

impl Drop for Local {
    fn drop(&mut self) {
        // Binds left by a failed test keep a FUSE daemon from finishing.
        for m in mounts::mount_table().unwrap_or_default().iter().rev() {
            if m.target.starts_with(self.root.join("kubelet")) {
                let _ = mounts::unmount(&m.target);
            }
        }
        if let Some(mut c) = self.fuse.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(weir())
            .args(["local", "down", "--state-dir"])
            .arg(&self.state)
            .status();
    }
}

async fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_publish_protect_and_repair_on_a_real_fuse_mount() {
    let dir = tempfile::tempdir().unwrap();
    let ufs = dir.path().join("ufs");
    std::fs::create_dir_all(ufs.join("train/images")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(ufs.join("train/data.bin"), &big).unwrap();
    std::fs::write(ufs.join("train/images/a.txt"), b"image a\n").unwrap();
    let mount_root = dir.path().join("mnt");
    let fuse_mount = mount_root.join("team/imagenet/fuse");
    let kubelet = dir.path().join("kubelet");
    let (master_port, worker_port) = (free_port(), free_port());
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut local = Local {
        root: dir.path().to_path_buf(),
        state: dir.path().join("state"),
        master_port,
        fuse: None,
    };
    let up = Command::new(weir())
        .args(["local", "up"])
        .arg(&ufs)
        .arg("--mount-point")
        .arg(&fuse_mount)
        .arg("--state-dir")
        .arg(&local.state)
        .args([
            "--mem",
            "64MiB",
            "--master-port",
            &master_port.to_string(),
            "--worker-port",
            &worker_port.to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(up.success(), "weir local up");

    let service = NodeService::new(
        NodeConfig {
            node_id: "node-a".into(),
            kubelet_root: kubelet.clone(),
            mount_root: mount_root.clone(),
            state_file: dir.path().join("csi/state.json"),
            fuse_wait: Duration::from_secs(5),
        },
        None,
    )
    .unwrap();
    use pb::volume_capability::access_mode::Mode;
    let context: HashMap<String, String> = [(
        "mountPath".to_owned(),
        fuse_mount.to_string_lossy().into_owned(),
    )]
    .into();
    let staging = kubelet.join("plugins/kubernetes.io/csi/csi.weir.io/abc/globalmount");
    let stage = pb::NodeStageVolumeRequest {
        volume_id: "team-imagenet".into(),
        staging_target_path: staging.to_string_lossy().into(),
        volume_capability: capability(Mode::MultiNodeReaderOnly),
        volume_context: context.clone(),
        ..Default::default()
    };
    let mut no_capability = stage.clone();
    no_capability.volume_capability = None;
    assert!(matches!(
        service.stage(no_capability).await,
        Err(Error::InvalidArgument(_))
    ));
    service.stage(stage.clone()).await.unwrap();
    service
        .stage(stage.clone())
        .await
        .expect("staging twice is fine");
    // The kubelet refuses to unstage while another mount shares the
    // staging path's device (every target would): nothing is mounted there.
    assert_eq!(mounts::mounted_at(&staging).unwrap(), None);

    let target = |pod: &str| {
        kubelet.join(format!(
            "pods/{pod}/volumes/kubernetes.io~csi/team-imagenet/mount"
        ))
    };
    let publish = |pod: &str, sub: Option<&str>| {
        let mut ctx = context.clone();
        if let Some(s) = sub {
            ctx.insert("subPath".into(), s.into());
        }
        pb::NodePublishVolumeRequest {
            volume_id: "team-imagenet".into(),
            staging_target_path: staging.to_string_lossy().into(),
            target_path: target(pod).to_string_lossy().into(),
            volume_capability: capability(Mode::MultiNodeReaderOnly),
            readonly: true,
            volume_context: ctx,
            ..Default::default()
        }
    };
    service.publish(publish("pod-1", None)).await.unwrap();
    service
        .publish(publish("pod-1", None))
        .await
        .expect("publishing twice is fine");
    service
        .publish(publish("pod-2", Some("train/images")))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(target("pod-1").join("train/data.bin")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read(target("pod-2").join("a.txt")).unwrap(),
        b"image a\n"
    );
    let write = std::fs::write(target("pod-1").join("new.txt"), b"x").unwrap_err();
    assert_eq!(
        write.raw_os_error(),
        Some(30),
        "a read-only volume refuses writes (EROFS): {write}"
    );

    // Escapes are refused, with the field named.
    let escape = service
        .publish(publish("pod-3", Some("../../../../etc")))
        .await
        .unwrap_err();
    assert!(matches!(escape, Error::InvalidArgument(_)), "{escape}");
    let mut outside = stage.clone();
    outside
        .volume_context
        .insert("mountPath".into(), "/etc".into());
    let e = service.stage(outside).await.unwrap_err().to_string();
    assert!(e.contains("mountPath"), "{e}");
    let mut host_target = publish("pod-4", None);
    host_target.target_path = "/etc/weir-target".into();
    assert!(matches!(
        service.publish(host_target).await,
        Err(Error::InvalidArgument(_))
    ));

    // Kill the FUSE daemon: the binds break (ENOTCONN) until a new daemon
    // mounts; the repair loop re-binds them, same targets.
    let pid = std::fs::read_to_string(local.state.join("fuse.pid")).unwrap();
    Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    wait("the bind to break", Duration::from_secs(5), || {
        mounts::is_broken(&target("pod-1"))
    })
    .await;
    local.fuse = Some(
        Command::new(weir())
            .args([
                "fuse",
                "--masters",
                &format!("127.0.0.1:{}", local.master_port),
                "--sub-path",
                "/data",
                "--allow-other",
                "--mount-point",
            ])
            .arg(&fuse_mount)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    wait("a new FUSE mount", Duration::from_secs(15), || {
        mounts::fuse_mounted(&fuse_mount).unwrap_or(false) && !mounts::is_broken(&fuse_mount)
    })
    .await;
    // What the plugin's repair loop does every second.
    let mut repaired = 0;
    while repaired < 2 && started.elapsed() < Duration::from_secs(15) {
        repaired += service.repair().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(repaired, 2, "both targets re-bound");
    assert_eq!(
        std::fs::read(target("pod-1").join("train/data.bin")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read(target("pod-2").join("a.txt")).unwrap(),
        b"image a\n"
    );
    eprintln!(
        "reads work again {:.1?} after the new FUSE daemon started",
        started.elapsed()
    );
    assert!(
        std::fs::write(target("pod-1").join("new.txt"), b"x").is_err(),
        "still read-only"
    );

    // Stats of a published volume; a path that is not there is NotFound.
    let stats = service
        .stats(pb::NodeGetVolumeStatsRequest {
            volume_id: "team-imagenet".into(),
            volume_path: target("pod-1").to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stats.usage.len(), 2);
    assert!(!stats.volume_condition.unwrap().abnormal);
    let missing = service.stats(pb::NodeGetVolumeStatsRequest {
        volume_id: "team-imagenet".into(),
        volume_path: kubelet.join("pods/nobody/mount").to_string_lossy().into(),
        ..Default::default()
    });
    assert!(matches!(missing, Err(Error::NotFound(_))));

    // The FUSE daemon dies for good (its pod leaves the node): unpublish and
    // unstage leave no mount and no directory behind, the dead FUSE mount
    // included.
    let mut fuse = local.fuse.take().expect("the restarted FUSE daemon");
    fuse.kill().unwrap();
    fuse.wait().unwrap();
    wait("the FUSE mount to die", Duration::from_secs(5), || {
        mounts::is_broken(&fuse_mount)
    })
    .await;
    for pod in ["pod-1", "pod-2"] {
        let r = pb::NodeUnpublishVolumeRequest {
            volume_id: "team-imagenet".into(),
            target_path: target(pod).to_string_lossy().into(),
        };
        service.unpublish(r.clone()).await.unwrap();
        service
            .unpublish(r)
            .await
            .expect("unpublishing twice is fine");
        assert!(!target(pod).exists());
    }
    let r = pb::NodeUnstageVolumeRequest {
        volume_id: "team-imagenet".into(),
        staging_target_path: staging.to_string_lossy().into(),
    };
    service.unstage(r.clone()).await.unwrap();
    service.unstage(r).await.expect("unstaging twice is fine");
    let left: Vec<_> = mounts::mount_table()
        .unwrap()
        .into_iter()
        .filter(|m| m.target.starts_with(&kubelet))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert_eq!(
        mounts::mounted_at(&fuse_mount).unwrap(),
        None,
        "the dead FUSE mount is unmounted with the last volume using it"
    );
    assert!(service.state().staged.is_empty() && service.state().published.is_empty());
    assert!(ufs.join("train/data.bin").exists(), "the data is untouched");
}
