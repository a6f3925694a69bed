//! The names of everything the operator makes for a runtime: StatefulSets,
//! Services, the ConfigMap, the FUSE node label and mount path, the PV and
//! the PVC. One place, so the CSI plugin, the chart and the tests agree.
//!
//! Every derived name fits Kubernetes' limits for every valid namespace and
//! name: one that would not is shortened, keeping its suffix, with a hash of
//! the whole name in place of the cut, so it stays unique and stable.

/// Field manager of every server-side apply.
pub const MANAGER: &str = "weir-operator";
pub const CSI_DRIVER: &str = "csi.weir.io";
pub const MASTER_PORT: i32 = 19200;
pub const WORKER_DATA_PORT: i32 = 19300;
pub const WORKER_HTTP_PORT: i32 = 19301;
/// A FUSE client's `/metrics` (which way its reads came).
pub const FUSE_METRICS_PORT: i32 = 19302;
/// Where Secret-backed options appear in master and worker pods.
pub const SECRETS_DIR: &str = "/etc/weir/secrets";
/// Where `local://` and `pvc://` mounts appear in master and worker pods.
pub const UFS_DIR: &str = "/mnt/weir-ufs";
pub const FINALIZER_DATASET: &str = "data.weir.io/dataset";
pub const FINALIZER_RUNTIME: &str = "data.weir.io/runtime";

/// Longest name of a StatefulSet or DaemonSet: its pods carry a
/// `controller-revision-hash` label of the name plus up to 11 characters,
/// and a label value holds 63.
const MAX_WORKLOAD: usize = 52;
/// Longest DNS label: Service names, label names, volume names.
pub const MAX_LABEL: usize = 63;

/// `{base}-{suffix}`, or when that is longer than `max`, `base` cut short
/// followed by `-{hash of base}-{suffix}`.
pub fn fit(base: &str, suffix: &str, max: usize) -> String {
    let whole = if suffix.is_empty() {
        base.to_owned()
    } else {
        format!("{base}-{suffix}")
    };
    if whole.len() <= max {
        return whole;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(base.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let tail = if suffix.is_empty() {
        hash
    } else {
        format!("{hash}-{suffix}")
    };
    let keep = max.saturating_sub(tail.len() + 1);
    // Names are ASCII (DNS labels), so a byte cut is a character cut.
    let head = base[..keep.min(base.len())].trim_end_matches(['-', '.']);
    format!("{head}-{tail}")
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeNames {
    pub namespace: String,
    pub name: String,
}

impl RuntimeNames {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
    pub fn master(&self) -> String {
        fit(&self.name, "master", MAX_WORKLOAD)
    }
    pub fn master_client(&self) -> String {
        fit(&self.name, "master-client", MAX_WORKLOAD)
    }
    pub fn worker(&self) -> String {
        fit(&self.name, "worker", MAX_WORKLOAD)
    }
    pub fn fuse(&self) -> String {
        fit(&self.name, "fuse", MAX_WORKLOAD)
    }
    pub fn config(&self) -> String {
        fit(&self.name, "config", MAX_WORKLOAD)
    }
    pub fn pv(&self) -> String {
        format!("{}-{}", self.namespace, self.name)
    }
    pub fn pvc(&self) -> String {
        self.name.clone()
    }
    /// The node label that schedules this runtime's FUSE pod on a node.
    pub fn fuse_label(&self) -> String {
        let name = fit(
            &format!("fuse-{}-{}", self.namespace, self.name),
            "",
            MAX_LABEL,
        );
        format!("weir.io/{name}")
    }
    /// Host path of the dataset's FUSE mount.
    pub fn host_mount_dir(&self) -> String {
        format!("/var/lib/weir/mnt/{}/{}", self.namespace, self.name)
    }
    pub fn host_mount_path(&self) -> String {
        format!("{}/fuse", self.host_mount_dir())
    }
    /// The stable DNS name of master `ordinal` (headless Service).
    pub fn master_host(&self, ordinal: i32, cluster_domain: &str) -> String {
        format!(
            "{}-{ordinal}.{}.{}.svc.{cluster_domain}",
            self.master(),
            self.master(),
            self.namespace
        )
    }
    /// Labels of one component's pods; also the selectors.
    pub fn labels(&self, component: &str) -> std::collections::BTreeMap<String, String> {
        [
            ("app.kubernetes.io/name", "weir"),
            ("app.kubernetes.io/instance", self.name.as_str()),
            ("app.kubernetes.io/component", component),
            ("app.kubernetes.io/managed-by", MANAGER),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
    /// `labels(component)` as a label selector string.
    pub fn selector(&self, component: &str) -> String {
        self.labels(component)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let n = RuntimeNames::new("team", "imagenet");
        assert_eq!(n.master(), "imagenet-master");
        assert_eq!(n.master_client(), "imagenet-master-client");
        assert_eq!(n.worker(), "imagenet-worker");
        assert_eq!(n.fuse(), "imagenet-fuse");
        assert_eq!(n.config(), "imagenet-config");
        assert_eq!(n.pv(), "team-imagenet");
        assert_eq!(n.pvc(), "imagenet");
        assert_eq!(n.fuse_label(), "weir.io/fuse-team-imagenet");
        assert_eq!(n.host_mount_path(), "/var/lib/weir/mnt/team/imagenet/fuse");
        assert_eq!(
            n.master_host(2, "cluster.local"),
            "imagenet-master-2.imagenet-master.team.svc.cluster.local"
        );
    }

    #[test]
    fn names_of_any_valid_length_fit_kubernetes_limits() {
        let namespace = "n".repeat(63);
        let name = format!("d{}", "x".repeat(62));
        let n = RuntimeNames::new(&namespace, &name);
        for workload in [n.master(), n.worker(), n.fuse(), n.config()] {
            assert!(workload.len() <= MAX_WORKLOAD, "{workload}");
        }
        assert!(n.master_client().len() <= MAX_LABEL);
        assert!(n.master().ends_with("-master"), "{}", n.master());
        assert!(n.master_client().ends_with("-master-client"));
        let label_name = n.fuse_label().split_once('/').unwrap().1.to_owned();
        assert!(label_name.len() <= MAX_LABEL, "{label_name}");
        assert!(
            n.master_host(4, "cluster.local")
                .split('.')
                .all(|l| l.len() <= MAX_LABEL)
        );
        // Stable, and different for names that share their first characters.
        assert_eq!(n.master(), RuntimeNames::new(&namespace, &name).master());
        let other = RuntimeNames::new(&namespace, &format!("{}y", &name[..62]));
        assert_ne!(n.master(), other.master());
        assert_ne!(n.fuse_label(), other.fuse_label());
        assert_ne!(n.master(), n.worker());
    }

    #[test]
    fn short_names_are_kept_as_they_were() {
        assert_eq!(fit("a", "master", 52), "a-master");
        let cut = fit(&"a-".repeat(40), "worker", 52);
        assert!(cut.len() <= 52, "{cut}");
        assert!(!cut.contains("--"), "{cut}");
    }
}
