//! The names of everything the operator makes for a runtime: StatefulSets,
//! Services, the ConfigMap, the FUSE node label and mount path, the PV and
//! the PVC. One place, so the CSI plugin, the chart and the tests agree.

/// Field manager of every server-side apply.
pub const MANAGER: &str = "weir-operator";
pub const CSI_DRIVER: &str = "csi.weir.io";
pub const MASTER_PORT: i32 = 19200;
pub const WORKER_DATA_PORT: i32 = 19300;
pub const WORKER_HTTP_PORT: i32 = 19301;
/// Where Secret-backed options appear in master and worker pods.
pub const SECRETS_DIR: &str = "/etc/weir/secrets";
/// Where `local://` and `pvc://` mounts appear in master and worker pods.
pub const UFS_DIR: &str = "/mnt/weir-ufs";
pub const FINALIZER_DATASET: &str = "data.weir.io/dataset";
pub const FINALIZER_RUNTIME: &str = "data.weir.io/runtime";

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
        format!("{}-master", self.name)
    }
    pub fn master_client(&self) -> String {
        format!("{}-master-client", self.name)
    }
    pub fn worker(&self) -> String {
        format!("{}-worker", self.name)
    }
    pub fn fuse(&self) -> String {
        format!("{}-fuse", self.name)
    }
    pub fn config(&self) -> String {
        format!("{}-config", self.name)
    }
    pub fn pv(&self) -> String {
        format!("{}-{}", self.namespace, self.name)
    }
    pub fn pvc(&self) -> String {
        self.name.clone()
    }
    /// The node label that schedules this runtime's FUSE pod on a node.
    pub fn fuse_label(&self) -> String {
        format!("weir.io/fuse-{}-{}", self.namespace, self.name)
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
}
