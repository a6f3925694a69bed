//! `csi-sanity` (the Kubernetes CSI conformance suite, Identity and Node)
//! against the `weir-csi` binary on a unix socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_path_buf()
}

fn csi_sanity() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let bin = std::env::var_os("WEIR_CACHE")
        .map(PathBuf::from)
        .unwrap_or(home.join(".cache/weir"))
        .join("bin/csi-sanity");
    assert!(
        bin.exists(),
        "{} missing: run e2e/cluster/install.sh",
        bin.display()
    );
    bin
}

#[test]
fn csi_sanity_passes_with_no_failures() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let kubelet = dir.path().join("kubelet");
    // csi-sanity makes the last path component itself, not its parents.
    std::fs::create_dir_all(kubelet.join("pods/sanity")).unwrap();
    std::fs::create_dir_all(kubelet.join("plugins/sanity")).unwrap();
    let mut plugin = Command::new(profile_dir().join("weir-csi"))
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args([
            "--node-id",
            "sanity-node",
            "--no-node-labels",
            "--fuse-wait-secs",
            "2",
        ])
        .arg("--kubelet-root")
        .arg(&kubelet)
        .arg("--mount-root")
        .arg(dir.path().join("mnt"))
        .arg("--state-file")
        .arg(dir.path().join("state.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir-csi");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "weir-csi did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(csi_sanity())
        .arg(format!("--csi.endpoint=unix://{}", socket.display()))
        .arg(format!(
            "--csi.mountdir={}",
            kubelet.join("pods/sanity/mount").display()
        ))
        .arg(format!(
            "--csi.stagingdir={}",
            kubelet.join("plugins/sanity/staging").display()
        ))
        // Identity and Node: the plugin has no controller service (PVs are
        // static), so the controller suites do not apply, nor do the three
        // node specs that first create a volume through CreateVolume (their
        // checks are in tests/node.rs on a real mount).
        .arg("--ginkgo.skip=Controller Server|GroupController")
        .arg("--ginkgo.skip=NodeUnpublishVolume should remove target path")
        .arg("--ginkgo.skip=NodeStageVolume should fail when no volume capability is provided")
        .arg("--ginkgo.skip=NodeGetVolumeStats should fail when volume does not exist on the specified path")
        .arg("--ginkgo.no-color")
        .output()
        .expect("run csi-sanity");
    let _ = plugin.kill();
    let _ = plugin.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Passed") || l.starts_with("Ran "))
        .collect();
    eprintln!("{}", summary.join("\n"));
    assert!(
        out.status.success(),
        "csi-sanity failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("| 0 Failed |"), "{text}");
}
