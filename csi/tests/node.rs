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
    weir_testkit::free_local_port()
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

/// A `weir local up` over a small UFS, and the paths a node plugin of it
/// uses, all below one temporary directory.
struct Bed {
    /// First, so it is dropped first: `weir local down` needs the state
    /// directory (its pid files) that dropping `dir` removes.
    local: Local,
    dir: tempfile::TempDir,
    ufs: PathBuf,
    /// 3 MB at `train/data.bin`.
    big: Vec<u8>,
    mount_root: PathBuf,
    fuse_mount: PathBuf,
    kubelet: PathBuf,
}

impl Bed {
    fn up() -> Bed {
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
        let local = Local {
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
        Bed {
            local,
            dir,
            ufs,
            big,
            mount_root,
            fuse_mount,
            kubelet,
        }
    }

    fn service(&self) -> NodeService {
        NodeService::new(
            NodeConfig {
                node_id: "node-a".into(),
                kubelet_root: self.kubelet.clone(),
                mount_root: self.mount_root.clone(),
                state_file: self.dir.path().join("csi/state.json"),
                fuse_wait: Duration::from_secs(5),
            },
            None,
        )
        .unwrap()
    }

    /// The pid of the FUSE daemon `weir local up` started.
    fn local_fuse_pid(&self) -> String {
        std::fs::read_to_string(self.local.state.join("fuse.pid"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A `weir fuse` of the dataset at the FUSE mount; `wrapper` runs it
    /// through `sh -c` (to delay its exec).
    fn fuse_command(&self, extra: &[&str], wrapper: Option<&str>) -> Command {
        let master = format!("127.0.0.1:{}", self.local.master_port);
        let mut args = vec![
            "fuse",
            "--masters",
            &master,
            "--sub-path",
            "/data",
            "--allow-other",
        ];
        args.extend_from_slice(extra);
        let mut command = match wrapper {
            Some(script) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{script}; exec \"$0\" \"$@\""))
                    .arg(weir());
                c
            }
            None => Command::new(weir()),
        };
        command
            .args(args)
            .arg("--mount-point")
            .arg(&self.fuse_mount)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    fn staging(&self) -> PathBuf {
        self.kubelet
            .join("plugins/kubernetes.io/csi/csi.weir.io/abc/globalmount")
    }

    fn target(&self, pod: &str) -> PathBuf {
        self.kubelet.join(format!(
            "pods/{pod}/volumes/kubernetes.io~csi/team-imagenet/mount"
        ))
    }

    fn context(&self) -> HashMap<String, String> {
        [(
            "mountPath".to_owned(),
            self.fuse_mount.to_string_lossy().into_owned(),
        )]
        .into()
    }

    fn stage_request(&self) -> pb::NodeStageVolumeRequest {
        use pb::volume_capability::access_mode::Mode;
        pb::NodeStageVolumeRequest {
            volume_id: "team-imagenet".into(),
            staging_target_path: self.staging().to_string_lossy().into(),
            volume_capability: capability(Mode::MultiNodeReaderOnly),
            volume_context: self.context(),
            ..Default::default()
        }
    }

    fn publish_request(&self, pod: &str, sub: Option<&str>) -> pb::NodePublishVolumeRequest {
        use pb::volume_capability::access_mode::Mode;
        let mut ctx = self.context();
        if let Some(s) = sub {
            ctx.insert("subPath".into(), s.into());
        }
        pb::NodePublishVolumeRequest {
            volume_id: "team-imagenet".into(),
            staging_target_path: self.staging().to_string_lossy().into(),
            target_path: self.target(pod).to_string_lossy().into(),
            volume_capability: capability(Mode::MultiNodeReaderOnly),
            readonly: true,
            volume_context: ctx,
            ..Default::default()
        }
    }

    fn stats_request(&self, pod: &str) -> pb::NodeGetVolumeStatsRequest {
        pb::NodeGetVolumeStatsRequest {
            volume_id: "team-imagenet".into(),
            volume_path: self.target(pod).to_string_lossy().into(),
            ..Default::default()
        }
    }

    /// Unpublishes `pods` and unstages; asserts that nothing is left
    /// mounted in the kubelet's directories.
    async fn tear_down(&self, service: &NodeService, pods: &[&str]) {
        for pod in pods {
            let r = pb::NodeUnpublishVolumeRequest {
                volume_id: "team-imagenet".into(),
                target_path: self.target(pod).to_string_lossy().into(),
            };
            service.unpublish(r.clone()).await.unwrap();
            service
                .unpublish(r)
                .await
                .expect("unpublishing twice is fine");
            assert!(!self.target(pod).exists());
        }
        let r = pb::NodeUnstageVolumeRequest {
            volume_id: "team-imagenet".into(),
            staging_target_path: self.staging().to_string_lossy().into(),
        };
        service.unstage(r.clone()).await.unwrap();
        service.unstage(r).await.expect("unstaging twice is fine");
        let left: Vec<_> = mounts::mount_table()
            .unwrap()
            .into_iter()
            .filter(|m| m.target.starts_with(&self.kubelet))
            .collect();
        assert!(left.is_empty(), "mounts left: {left:?}");
        assert!(service.state().staged.is_empty() && service.state().published.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_publish_protect_and_repair_on_a_real_fuse_mount() {
    let mut bed = Bed::up();
    let service = bed.service();
    let stage = bed.stage_request();
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
    assert_eq!(mounts::mounted_at(&bed.staging()).unwrap(), None);

    service
        .publish(bed.publish_request("pod-1", None))
        .await
        .unwrap();
    service
        .publish(bed.publish_request("pod-1", None))
        .await
        .expect("publishing twice is fine");
    service
        .publish(bed.publish_request("pod-2", Some("train/images")))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(bed.target("pod-1").join("train/data.bin")).unwrap(),
        bed.big
    );
    assert_eq!(
        std::fs::read(bed.target("pod-2").join("a.txt")).unwrap(),
        b"image a\n"
    );
    let write = std::fs::write(bed.target("pod-1").join("new.txt"), b"x").unwrap_err();
    assert_eq!(
        write.raw_os_error(),
        Some(30),
        "a read-only volume refuses writes (EROFS): {write}"
    );

    // Escapes are refused, with the field named.
    let escape = service
        .publish(bed.publish_request("pod-3", Some("../../../../etc")))
        .await
        .unwrap_err();
    assert!(matches!(escape, Error::InvalidArgument(_)), "{escape}");
    let mut outside = stage.clone();
    outside
        .volume_context
        .insert("mountPath".into(), "/etc".into());
    let e = service.stage(outside).await.unwrap_err().to_string();
    assert!(e.contains("mountPath"), "{e}");
    let mut host_target = bed.publish_request("pod-4", None);
    host_target.target_path = "/etc/weir-target".into();
    assert!(matches!(
        service.publish(host_target).await,
        Err(Error::InvalidArgument(_))
    ));

    // Kill the FUSE daemon: the binds break (ENOTCONN) until a new daemon
    // mounts; the repair loop re-binds them, same targets.
    Command::new("kill")
        .args(["-KILL", &bed.local_fuse_pid()])
        .status()
        .unwrap();
    wait("the bind to break", Duration::from_secs(5), || {
        mounts::is_broken(&bed.target("pod-1"))
    })
    .await;
    let fuse = bed.fuse_command(&[], None).spawn().unwrap();
    bed.local.fuse = Some(fuse);
    let started = Instant::now();
    wait("a new FUSE mount", Duration::from_secs(15), || {
        mounts::fuse_mounted(&bed.fuse_mount).unwrap_or(false)
            && !mounts::is_broken(&bed.fuse_mount)
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
        std::fs::read(bed.target("pod-1").join("train/data.bin")).unwrap(),
        bed.big
    );
    assert_eq!(
        std::fs::read(bed.target("pod-2").join("a.txt")).unwrap(),
        b"image a\n"
    );
    eprintln!(
        "reads work again {:.1?} after the new FUSE daemon started",
        started.elapsed()
    );
    assert!(
        std::fs::write(bed.target("pod-1").join("new.txt"), b"x").is_err(),
        "still read-only"
    );

    // Stats of a published volume; a path that is not there is NotFound.
    let stats = service.stats(bed.stats_request("pod-1")).unwrap();
    assert_eq!(stats.usage.len(), 2);
    assert!(!stats.volume_condition.unwrap().abnormal);
    let missing = service.stats(pb::NodeGetVolumeStatsRequest {
        volume_id: "team-imagenet".into(),
        volume_path: bed
            .kubelet
            .join("pods/nobody/mount")
            .to_string_lossy()
            .into(),
        ..Default::default()
    });
    assert!(matches!(missing, Err(Error::NotFound(_))));

    // The FUSE daemon dies for good (its pod leaves the node): unpublish and
    // unstage leave no mount and no directory behind, the dead FUSE mount
    // included.
    let mut fuse = bed.local.fuse.take().expect("the restarted FUSE daemon");
    fuse.kill().unwrap();
    fuse.wait().unwrap();
    wait("the FUSE mount to die", Duration::from_secs(5), || {
        mounts::is_broken(&bed.fuse_mount)
    })
    .await;
    bed.tear_down(&service, &["pod-1", "pod-2"]).await;
    assert_eq!(
        mounts::mounted_at(&bed.fuse_mount).unwrap(),
        None,
        "the dead FUSE mount is unmounted with the last volume using it"
    );
    assert!(
        bed.ufs.join("train/data.bin").exists(),
        "the data is untouched"
    );
}

/// With the plugin holding the FUSE mount's `/dev/fuse` descriptor, a
/// SIGKILLed `weir fuse` leaves the mount alive: a read started in the gap
/// waits and gets the right bytes, the plugin answers NodeGetVolumeStats
/// and its repair pass without blocking on the waiting mount and refuses a
/// publish until the next `weir fuse` has taken the mount over, which it
/// counts as a takeover (nothing re-bound); at the last unstage it lets the
/// descriptor go and the FUSE daemon unmounts on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_mount_survives_its_fuse_daemon_and_the_plugin_never_blocks_on_it() {
    let mut bed = Bed::up();
    // The daemon of `weir local up` lodges nowhere: replace it with one
    // that lodges its descriptor with the plugin.
    Command::new("kill")
        .args(["-TERM", &bed.local_fuse_pid()])
        .status()
        .unwrap();
    wait("the first FUSE mount gone", Duration::from_secs(10), || {
        !mounts::fuse_mounted(&bed.fuse_mount).unwrap_or(true)
    })
    .await;
    let service = std::sync::Arc::new(bed.service());
    let socket = bed.dir.path().join("csi/fuse-fds.sock");
    service.hold_fuse_descriptors(&socket).unwrap();
    let holder = socket.to_string_lossy().into_owned();
    let fuse = bed
        .fuse_command(&["--fd-holder", &holder], None)
        .spawn()
        .unwrap();
    bed.local.fuse = Some(fuse);
    service.stage(bed.stage_request()).await.unwrap();
    wait("the descriptor lodged", Duration::from_secs(10), || {
        service.held_fuse_mounts() == vec![bed.fuse_mount.clone()]
    })
    .await;
    service
        .publish(bed.publish_request("pod-1", None))
        .await
        .unwrap();
    let file = bed.target("pod-1").join("train/data.bin");
    assert_eq!(std::fs::read(&file).unwrap(), bed.big);
    // The plugin's repair loop has seen the mount's first daemon.
    assert_eq!(service.repair().await, 0);

    // The next daemon is forked now, before anything here opens a file on
    // the mount (a process forking while it holds a file on a mount whose
    // daemon is gone would wait in exec for that very daemon), and execs
    // 1.5 s after the kill.
    let mut old = bed.local.fuse.take().unwrap();
    old.kill().unwrap();
    old.wait().unwrap();
    let killed = Instant::now();
    let next = bed
        .fuse_command(&["--fd-holder", &holder], Some("sleep 1.5"))
        .spawn()
        .unwrap();
    bed.local.fuse = Some(next);
    let (path, want) = (file.clone(), bed.big.clone());
    let reader = std::thread::spawn(move || {
        let read = std::fs::read(&path);
        (read.map(|got| got == want), killed.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let stats = service.stats(bed.stats_request("pod-1")).unwrap();
    let condition = stats.volume_condition.unwrap();
    assert!(
        condition.abnormal && condition.message.contains("restarting"),
        "{condition:?}"
    );
    assert_eq!(
        service.repair().await,
        0,
        "nothing to re-bind: the mount lives"
    );
    let refused = service.publish(bed.publish_request("pod-2", None)).await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "the plugin blocked on the waiting mount for {:?}",
        asked.elapsed()
    );
    assert!(!reader.is_finished(), "the read waits for the next daemon");

    let (read, after) = reader.join().unwrap();
    assert!(
        read.unwrap(),
        "the read across the restart got the right bytes"
    );
    eprintln!("a read started in the gap finished {after:.1?} after the kill");
    assert!(
        after >= Duration::from_millis(1500),
        "it waited for the next daemon"
    );
    // What the plugin's repair loop does every second.
    let mut repaired = 0;
    for _ in 0..5 {
        repaired += tokio::time::timeout(Duration::from_secs(5), service.repair())
            .await
            .expect("a repair pass after the takeover");
    }
    assert_eq!(service.metrics.takeovers.get(), 1, "the takeover counted");
    assert_eq!(repaired, 0, "a taken-over mount needs no re-bind");
    assert_eq!(service.metrics.recoveries.get(), 0);
    let stats = service.stats(bed.stats_request("pod-1")).unwrap();
    assert!(!stats.volume_condition.unwrap().abnormal);
    service
        .publish(bed.publish_request("pod-2", Some("train")))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(bed.target("pod-2").join("data.bin")).unwrap(),
        bed.big
    );

    // The volumes go: the descriptor is let go, and the daemon unmounts on
    // SIGTERM instead of leaving the mount to a holder.
    bed.tear_down(&service, &["pod-1", "pod-2"]).await;
    assert!(service.held_fuse_mounts().is_empty());
    let mut last = bed.local.fuse.take().unwrap();
    Command::new("kill")
        .args(["-TERM", &last.id().to_string()])
        .status()
        .unwrap();
    let status = last.wait().unwrap();
    assert!(status.success(), "weir fuse: {status}");
    assert_eq!(mounts::mounted_at(&bed.fuse_mount).unwrap(), None);
}
