//! Host paths are the cluster admin's to grant: every directory of a node
//! that a runtime's pods would mount (a `local://` mount, a `hostPath`
//! tier) must lie under a prefix the operator was given
//! (`--allowed-host-paths`, the chart's `allowedHostPaths`, empty by
//! default). Whoever may create a Dataset may otherwise read any node's
//! files, other tenants' secrets under the kubelet's directory among them.

use crate::crd::runtime::VolumeType;
use crate::crd::{CacheRuntime, Dataset};
use crate::{Error, Result};

/// A host path a runtime would mount, and the field that asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPathUse {
    pub field: String,
    pub path: String,
}

/// Every host path the dataset's mounts and the runtime's tiers name.
pub fn host_paths(ds: &Dataset, rt: &CacheRuntime) -> Vec<HostPathUse> {
    let mut out = Vec::new();
    for (i, m) in ds.spec.mounts.iter().enumerate() {
        if let Some(rest) = m.mount_point.strip_prefix("local://") {
            out.push(HostPathUse {
                field: format!("spec.mounts[{i}].mountPoint"),
                path: format!("/{}", rest.trim_matches('/')),
            });
        }
    }
    for (i, level) in rt.spec.tieredstore.levels.iter().enumerate() {
        if level.volume_type != VolumeType::HostPath {
            continue;
        }
        let dirs = level.path.as_deref().unwrap_or_default().split(',');
        for dir in dirs.map(str::trim).filter(|d| !d.is_empty()) {
            out.push(HostPathUse {
                field: format!("spec.tieredstore.levels[{i}].path"),
                path: dir.to_owned(),
            });
        }
    }
    out
}

/// `path` made absolute and plain, or `None` when it has `.` or `..`
/// segments (which could climb out of a granted prefix) or is relative.
fn plain(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return None;
    }
    Some(format!("/{}", segments.join("/")))
}

fn granted(path: &str, allowed: &[String]) -> bool {
    allowed
        .iter()
        .filter_map(|a| plain(a))
        .any(|prefix| prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/")))
}

/// Refuses the pair, naming the field, when a host path it needs is not
/// under a granted prefix.
pub fn check_host_paths(ds: &Dataset, rt: &CacheRuntime, allowed: &[String]) -> Result<()> {
    for usage in host_paths(ds, rt) {
        let Some(path) = plain(&usage.path) else {
            return Err(Error::HostPathNotAllowed(format!(
                "{} {:?}: a host path must be absolute, without . or .. segments",
                usage.field, usage.path
            )));
        };
        if !granted(&path, allowed) {
            let grants = if allowed.is_empty() {
                "none are granted (the chart's allowedHostPaths is empty)".to_owned()
            } else {
                format!("granted: {}", allowed.join(", "))
            };
            return Err(Error::HostPathNotAllowed(format!(
                "{}: host path {path} is not under a path the cluster admin granted; {grants}",
                usage.field
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::dataset::{DatasetSpec, Mount};
    use crate::crd::runtime::{CacheRuntimeSpec, Level, TieredStore};

    fn pair(mount_point: &str, tier: Option<&str>) -> (Dataset, CacheRuntime) {
        let ds = Dataset::new(
            "d",
            DatasetSpec {
                mounts: vec![
                    Mount {
                        mount_point: "s3://bucket".into(),
                        ..Default::default()
                    },
                    Mount {
                        mount_point: mount_point.into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        );
        let mut levels = vec![Level {
            quota: "1Gi".into(),
            ..Default::default()
        }];
        if let Some(path) = tier {
            levels.push(Level {
                volume_type: VolumeType::HostPath,
                path: Some(path.into()),
                quota: "1Gi".into(),
                ..Default::default()
            });
        }
        let rt = CacheRuntime::new(
            "d",
            CacheRuntimeSpec {
                tieredstore: TieredStore { levels },
                ..Default::default()
            },
        );
        (ds, rt)
    }

    fn refusal(mount_point: &str, tier: Option<&str>, allowed: &[&str]) -> Option<String> {
        let (ds, rt) = pair(mount_point, tier);
        let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        match check_host_paths(&ds, &rt, &allowed) {
            Ok(()) => None,
            Err(Error::HostPathNotAllowed(m)) => Some(m),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let m = refusal("local:///etc", None, &[]).unwrap();
        assert!(
            m.starts_with("spec.mounts[1].mountPoint: host path /etc"),
            "{m}"
        );
        assert!(m.contains("allowedHostPaths is empty"), "{m}");
        assert_eq!(refusal("s3://other", None, &[]), None);
        assert_eq!(refusal("pvc://claim/sub", None, &[]), None);
    }

    #[test]
    fn a_grant_covers_the_paths_below_it_only() {
        let allowed = ["/srv/datasets/", "/data"];
        assert_eq!(refusal("local:///srv/datasets/a", None, &allowed), None);
        assert_eq!(refusal("local:///srv/datasets", None, &allowed), None);
        assert_eq!(refusal("local:///data//x/", None, &allowed), None);
        assert!(refusal("local:///srv/datasets-other", None, &allowed).is_some());
        assert!(refusal("local:///srv", None, &allowed).is_some());
        let climb = refusal("local:///srv/datasets/../../etc", None, &allowed).unwrap();
        assert!(climb.contains(". or .."), "{climb}");
        assert_eq!(refusal("local:///anything", None, &["/"]), None);
    }

    #[test]
    fn host_path_tiers_need_a_grant_too() {
        let m = refusal("s3://b", Some("/mnt/a, /var/lib/kubelet"), &["/mnt"]).unwrap();
        assert!(
            m.starts_with("spec.tieredstore.levels[1].path: host path /var/lib/kubelet"),
            "{m}"
        );
        assert_eq!(refusal("s3://b", Some("/mnt/a,/mnt/b"), &["/mnt"]), None);
    }
}
