//! The plugin's locks and the fd holder's: NodeGetVolumeStats (state, then
//! the holder) racing a stopping FUSE process's release (the holder, then
//! whether a staged volume uses the mount) must never deadlock.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use weir_csi::node::{NodeConfig, NodeService};
use weir_csi::proto as pb;

#[test]
fn stats_racing_a_release_never_deadlock() {
    let Ok(dev_fuse) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    else {
        eprintln!("skipped: no /dev/fuse");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let staging = dir
        .path()
        .join("kubelet/plugins/csi.weir.io/vol/globalmount");
    let mount_path = dir.path().join("mnt/team/data/fuse");
    // A volume staged earlier, as a restarted plugin finds it.
    let state_file = dir.path().join("csi/state.json");
    std::fs::create_dir_all(state_file.parent().unwrap()).unwrap();
    let state = serde_json::json!({
        "staged": {staging.to_string_lossy(): {
            "volume_id": "team-data",
            "mount_path": mount_path,
            "fuse_label": null,
            "on_demand": true,
        }},
        "published": {},
    });
    std::fs::write(&state_file, state.to_string()).unwrap();
    let service = Arc::new(
        NodeService::new(
            NodeConfig {
                node_id: "node-a".into(),
                kubelet_root: dir.path().join("kubelet"),
                mount_root: dir.path().join("mnt"),
                state_file,
                fuse_wait: Duration::from_secs(1),
            },
            None,
        )
        .unwrap(),
    );
    assert!(service.uses_mount(&mount_path));
    let socket = dir.path().join("csi/fuse-fds.sock");
    service.hold_fuse_descriptors(&socket).unwrap();
    let lodging = weir_handover::lodge(
        socket.clone(),
        weir_handover::MountState {
            mount_point: mount_path.clone(),
            device: "0:99".into(),
            passthrough: false,
            generation: 0,
        },
        OwnedFd::from(dev_fuse),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.held_fuse_mounts() != vec![mount_path.clone()] {
        assert!(Instant::now() < deadline, "the descriptor was never lodged");
        std::thread::sleep(Duration::from_millis(20));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (stats_calls, releases) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let asker = {
        let (service, stop, calls) = (service.clone(), stop.clone(), stats_calls.clone());
        let path = staging.to_string_lossy().into_owned();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = service.stats(pb::NodeGetVolumeStatsRequest {
                    volume_id: "team-data".into(),
                    volume_path: path.clone(),
                    ..Default::default()
                });
                calls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let releaser = {
        let (stop, calls) = (stop.clone(), releases.clone());
        let (socket, mount_path): (PathBuf, PathBuf) = (socket.clone(), mount_path.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let verdict = weir_handover::release(&socket, Path::new(&mount_path));
                assert_eq!(
                    verdict.unwrap(),
                    weir_handover::Verdict::Keep,
                    "a staged volume uses the mount"
                );
                calls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    // A deadlock leaves both threads stuck: give them a bounded time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(asker.is_finished() && releaser.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "deadlocked after {} stats calls and {} releases",
            stats_calls.load(Ordering::Relaxed),
            releases.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    asker.join().unwrap();
    releaser.join().unwrap();
    eprintln!(
        "{} stats calls and {} releases raced without a deadlock",
        stats_calls.load(Ordering::Relaxed),
        releases.load(Ordering::Relaxed)
    );
    assert!(stats_calls.load(Ordering::Relaxed) > 100 && releases.load(Ordering::Relaxed) > 100);
    lodging.stop();
}
