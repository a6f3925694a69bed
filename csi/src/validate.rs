//! Input checks for everything the kubelet or a volume attribute hands the
//! plugin: ids become node-label values and directory names, target paths are
//! mounted over, sub-paths select part of a dataset. Nothing may point
//! outside where it belongs.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Longest volume id accepted; Kubernetes names are at most 253 bytes.
const MAX_VOLUME_ID: usize = 253;

/// A volume id is `<namespace>-<name>` of the PV the operator made: DNS-label
/// characters only, so it is safe in paths and label keys.
pub fn volume_id(id: &str) -> Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= MAX_VOLUME_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !id.starts_with(['-', '.'])
        && !id.contains("..");
    if ok {
        Ok(id)
    } else {
        Err(Error::InvalidArgument(format!(
            "volume id {id:?} must be 1-{MAX_VOLUME_ID} characters of a-z, 0-9, '-' and '.'"
        )))
    }
}

/// A target path the kubelet asks us to mount onto: absolute, lexically
/// clean, and below the kubelet's pods directory.
pub fn target_path(raw: &str, kubelet_root: &Path) -> Result<PathBuf> {
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "target path {raw:?} is not absolute"
        )));
    }
    // Checked on the raw text: `Path::components` silently drops inner `.`.
    if raw.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Error::InvalidArgument(format!(
            "target path {raw:?} contains . or .."
        )));
    }
    let pods = kubelet_root.join("pods");
    if !path.starts_with(&pods) {
        return Err(Error::InvalidArgument(format!(
            "target path {raw:?} is not under {}",
            pods.display()
        )));
    }
    Ok(path.to_path_buf())
}

/// A path the plugin works on that must lie below `root` (a staging path
/// under the kubelet's directory, a FUSE mount under the mount root):
/// absolute, without `.` or `..`.
pub fn under(raw: &str, root: &Path, what: &str) -> Result<PathBuf> {
    let path = Path::new(raw);
    if !path.is_absolute() || raw.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Error::InvalidArgument(format!(
            "{what} {raw:?} must be absolute, without . or .."
        )));
    }
    if !path.starts_with(root) || path == root {
        return Err(Error::InvalidArgument(format!(
            "{what} {raw:?} is not under {}",
            root.display()
        )));
    }
    Ok(path.to_path_buf())
}

/// The node label a volume asks for: `weir.io/fuse-<namespace>-<name>`,
/// a valid label key and nothing else.
pub fn fuse_label(raw: &str) -> Result<&str> {
    let name = raw.strip_prefix("weir.io/fuse-").unwrap_or_default();
    let ok = !name.is_empty()
        && raw.len() - "weir.io/".len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(raw)
    } else {
        Err(Error::InvalidArgument(format!(
            "volume attribute fuseLabel {raw:?} is not weir.io/fuse-<namespace>-<name>"
        )))
    }
}

/// Resolves a dataset sub-path inside `root`, following symlinks, and refuses
/// any result that leaves `root` (by `..`, an absolute path, or a symlink
/// that points elsewhere).
pub fn sub_path(root: &Path, raw: &str) -> Result<PathBuf> {
    let rel = Path::new(raw.trim_start_matches('/'));
    if raw.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Error::InvalidArgument(format!(
            "sub-path {raw:?} must not contain . or .."
        )));
    }
    let canonical_root = root.canonicalize().map_err(|source| Error::Io {
        what: "resolving dataset root",
        path: root.into(),
        source,
    })?;
    let joined = canonical_root.join(rel);
    let resolved = joined.canonicalize().map_err(|source| Error::Io {
        what: "resolving sub-path",
        path: joined.clone(),
        source,
    })?;
    if !resolved.starts_with(&canonical_root) {
        return Err(Error::InvalidArgument(format!(
            "sub-path {raw:?} resolves to {} outside the dataset",
            resolved.display()
        )));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::Component;

    #[test]
    fn volume_ids() {
        assert!(volume_id("default-imagenet").is_ok());
        assert!(volume_id("ns.1-a").is_ok());
        for bad in ["", "../etc", "a/b", "-x", "A", "a..b", &"x".repeat(254)] {
            assert!(volume_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn target_paths_stay_under_the_pods_dir() {
        let root = Path::new("/var/lib/kubelet");
        let ok = "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/pv/mount";
        assert_eq!(target_path(ok, root).unwrap(), Path::new(ok));
        for bad in [
            "relative/mount",
            "/var/lib/kubelet/pods/../../../etc",
            "/var/lib/kubelet/plugins/x",
            "/etc/passwd",
            "/var/lib/kubelet/pods/./x",
        ] {
            assert!(target_path(bad, root).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn plugin_paths_and_labels_stay_in_their_place() {
        let root = Path::new("/var/lib/weir/mnt");
        assert!(under("/var/lib/weir/mnt/ns/ds/fuse", root, "mountPath").is_ok());
        for bad in [
            "/var/lib/weir/mnt",
            "/var/lib/weir/mnt/../../etc",
            "/etc",
            "var/lib/weir/mnt/x",
            "/var/lib/weir/mntx/y",
        ] {
            let e = under(bad, root, "mountPath").unwrap_err().to_string();
            assert!(e.contains("mountPath"), "{bad:?}: {e}");
        }
        assert!(fuse_label("weir.io/fuse-team-imagenet").is_ok());
        for bad in [
            "weir.io/fuse-",
            "kubernetes.io/role",
            "weir.io/fuse-a/b",
            "weir.io/fuse-x-",
            &format!("weir.io/fuse-{}", "a".repeat(60)),
        ] {
            assert!(fuse_label(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sub_paths_cannot_escape_by_dots_or_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dataset");
        std::fs::create_dir_all(root.join("train/images")).unwrap();
        std::fs::create_dir_all(dir.path().join("secret")).unwrap();
        symlink(dir.path().join("secret"), root.join("escape")).unwrap();
        symlink(root.join("train"), root.join("alias")).unwrap();

        assert!(
            sub_path(&root, "train/images")
                .unwrap()
                .ends_with("dataset/train/images")
        );
        assert!(
            sub_path(&root, "/train")
                .unwrap()
                .ends_with("dataset/train")
        );
        assert!(
            sub_path(&root, "alias/images")
                .unwrap()
                .ends_with("dataset/train/images")
        );
        assert!(matches!(
            sub_path(&root, "../secret"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            sub_path(&root, "train/../../secret"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            sub_path(&root, "escape"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(sub_path(&root, "missing"), Err(Error::Io { .. })));
    }

    proptest::proptest! {
        #[test]
        fn no_accepted_target_path_has_dots(segs in proptest::collection::vec("[a-z.]{1,3}", 0..5)) {
            let raw = format!("/var/lib/kubelet/pods/{}", segs.join("/"));
            if let Ok(p) = target_path(&raw, Path::new("/var/lib/kubelet")) {
                proptest::prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_) | Component::RootDir)));
            }
        }
    }
}
