//! The rendered objects, one concern per test.

use super::fuse::{FUSE_FD_HOLDER, FUSE_FD_HOLDER_DIR};
use super::*;
use crate::crd::dataset::{DatasetSpec, EncryptValueSource, SecretKeyRef};
use crate::crd::dataset::{EncryptOption, Mount, Placement};
use crate::crd::runtime::{CacheRuntimeSpec, Level, TieredStore};
use k8s_openapi::api::apps::v1::StatefulSet;
use weir_api::WriteType;

pub fn pair() -> (Dataset, CacheRuntime, RenderConfig) {
    let mut ds = Dataset::new(
        "imagenet",
        DatasetSpec {
            mounts: vec![
                Mount {
                    mount_point: "s3://bucket/train".into(),
                    options: [("endpoint".to_owned(), "http://s3:9000".to_owned())].into(),
                    encrypt_options: vec![EncryptOption {
                        name: "secretAccessKey".into(),
                        value_from: EncryptValueSource {
                            secret_key_ref: SecretKeyRef {
                                name: "s3-creds".into(),
                                key: "secret".into(),
                            },
                        },
                    }],
                    ..Default::default()
                },
                Mount {
                    mount_point: "local:///data/labels".into(),
                    read_only: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    );
    ds.metadata.namespace = Some("team".into());
    let mut rt = CacheRuntime::new(
        "imagenet",
        CacheRuntimeSpec {
            replicas: 2,
            tieredstore: TieredStore {
                levels: vec![Level {
                    quota: "2Gi".into(),
                    high: 0.9,
                    low: 0.7,
                    ..Default::default()
                }],
            },
            ..Default::default()
        },
    );
    rt.metadata.namespace = Some("team".into());
    rt.metadata.uid = Some("uid-1".into());
    rt.spec.master.replicas = 3;
    let cfg = RenderConfig {
        image: "weir.io/weir:dev".into(),
        image_pull_policy: "Never".into(),
        cluster_domain: "cluster.local".into(),
        ports: crate::render::Ports::default(),
        kubelet_root_dir: "/var/lib/kubelet".into(),
        allowed_host_paths: vec!["/srv".into()],
    };
    (ds, rt, cfg)
}

#[test]
fn mounts_get_paths_uris_and_credential_files_not_values() {
    let (ds, rt, _) = pair();
    let m = desired_mounts(&ds, &rt).unwrap();
    assert_eq!(m[0].path, "/train");
    assert_eq!(m[0].ufs_uri, "s3://bucket/train");
    assert_eq!(
        m[0].write_type,
        WriteType::CacheThrough,
        "CACHE_THROUGH by default"
    );
    assert_eq!(
        m[0].credential_files["secretAccessKey"],
        "/etc/weir/secrets/s3-creds/secret"
    );
    assert_eq!(m[1].path, "/labels");
    assert_eq!(m[1].ufs_uri, "local:///mnt/weir-ufs/1");
    assert!(m[1].read_only);
}

#[test]
fn bad_mounts_are_named() {
    let (mut ds, rt, _) = pair();
    ds.spec.mounts[1].name = Some("train".into());
    let e = desired_mounts(&ds, &rt).unwrap_err().to_string();
    assert!(e.contains("spec.mounts[1]") && e.contains("/train"), "{e}");
    let (mut ds, rt, _) = pair();
    ds.spec.mounts[0]
        .options
        .insert("writeType".into(), "SOMETIMES".into());
    let e = desired_mounts(&ds, &rt).unwrap_err().to_string();
    assert!(e.contains("spec.mounts[0].options.writeType"), "{e}");
    let (mut ds, rt, _) = pair();
    ds.spec.mounts[0].path = Some("/".into());
    assert!(
        desired_mounts(&ds, &rt)
            .unwrap_err()
            .to_string()
            .contains("spec.mounts[0].path")
    );
}

#[test]
fn the_sync_policy_reaches_every_mount_and_old_runtimes_keep_their_meaning() {
    use crate::crd::runtime::{MetadataSyncPolicy, SyncMode};
    use std::time::Duration;
    use weir_api::SyncPolicy;
    let with = |mode, secs| {
        let (ds, mut rt, _) = pair();
        rt.spec.management.metadata_sync_policy = MetadataSyncPolicy {
            mode,
            sync_interval_seconds: secs,
        };
        desired_mounts(&ds, &rt).map(|m| m.iter().map(|m| m.sync).collect::<Vec<_>>())
    };
    let minute = SyncPolicy::Interval(Duration::from_secs(60));
    assert_eq!(
        with(None, None).unwrap(),
        [minute, minute],
        "a minute unless said"
    );
    assert_eq!(
        with(None, Some(0)).unwrap()[0],
        SyncPolicy::Never,
        "0 without a mode loads once, as before modes"
    );
    assert_eq!(
        with(None, Some(5)).unwrap()[0],
        SyncPolicy::Interval(Duration::from_secs(5))
    );
    assert_eq!(
        with(Some(SyncMode::Always), Some(5)).unwrap()[0],
        SyncPolicy::Always
    );
    assert_eq!(
        with(Some(SyncMode::Never), None).unwrap()[0],
        SyncPolicy::Never
    );
    let e = with(Some(SyncMode::Interval), Some(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.management.metadataSyncPolicy"), "{e}");
}

#[test]
fn config_map_names_peers_and_tiers_and_holds_no_secret() {
    let (ds, rt, cfg) = pair();
    let cm = config_map(&ds, &rt, &cfg).unwrap();
    let data = cm.data.unwrap();
    let master = &data["master.yaml"];
    assert!(
        master.contains("2=imagenet-master-2.imagenet-master.team.svc.cluster.local:19200"),
        "{master}"
    );
    let worker = &data["worker.yaml"];
    assert!(
        worker.contains(&format!("MEM:/var/lib/weir/tier/0:{}:0.9:0.7", 2u64 << 30)),
        "{worker}"
    );
    assert!(!master.contains("s3-creds") && !worker.contains("s3-creds"));
}

#[test]
fn pods_mount_secrets_as_files_and_tiers_as_volumes() {
    let (ds, rt, cfg) = pair();
    let sts = worker_statefulset(&ds, &rt, &cfg).unwrap();
    let text = serde_json::to_string(&sts).unwrap();
    assert!(text.contains(r#""secretName":"s3-creds""#));
    assert!(text.contains(r#""medium":"Memory""#));
    assert!(text.contains(r#""path":"/data/labels""#));
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(2));
    let master = master_statefulset(&ds, &rt, &cfg).unwrap();
    assert_eq!(master.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(
        master.metadata.owner_references.unwrap()[0].kind,
        "CacheRuntime"
    );
}

#[test]
fn fuse_runs_on_labelled_nodes_and_the_pv_names_the_host_mount() {
    let (ds, rt, cfg) = pair();
    let ds_fuse = fuse_daemonset(&ds, &rt, &cfg);
    let fuse_spec = ds_fuse.spec.unwrap();
    assert_eq!(
        fuse_spec.update_strategy.and_then(|u| u.type_).as_deref(),
        Some("OnDelete"),
        "an upgrade must not restart FUSE under readers"
    );
    let pod = fuse_spec.template.spec.unwrap();
    let sel = pod.node_selector.clone().unwrap();
    assert_eq!(sel["weir.io/fuse-team-imagenet"], "true");
    let args = pod.containers[0].args.clone().unwrap();
    let holder = args.iter().position(|a| a == "--fd-holder").unwrap();
    assert_eq!(
        args[holder + 1],
        FUSE_FD_HOLDER,
        "the chart's CSI plugin holds it"
    );
    assert!(FUSE_FD_HOLDER.starts_with(FUSE_FD_HOLDER_DIR));
    let metrics = args.iter().position(|a| a == "--metrics-listen").unwrap();
    assert_eq!(args[metrics + 1], "0.0.0.0:19302");
    let env = pod.containers[0].env.clone().unwrap();
    assert!(
        env.iter().any(|e| e.name == "WEIR_NODE_NAME"),
        "the client knows its node: {env:?}"
    );
    let host_dirs: Vec<String> = pod
        .volumes
        .unwrap()
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert!(host_dirs.contains(&FUSE_FD_HOLDER_DIR.to_owned()));
    let pv = persistent_volume(&ds, &rt);
    let csi = pv.spec.unwrap().csi.unwrap();
    assert_eq!(csi.driver, "csi.weir.io");
    assert_eq!(
        csi.volume_attributes.unwrap()["mountPath"],
        "/var/lib/weir/mnt/team/imagenet/fuse"
    );
    let pvc = persistent_volume_claim(&ds, &rt);
    assert_eq!(
        pvc.spec.unwrap().volume_name.as_deref(),
        Some("team-imagenet")
    );
}

#[test]
fn placement_keeps_exclusive_caches_apart_and_owner_reaches_fuse() {
    let (mut ds, rt, cfg) = pair();
    let text =
        |ds: &Dataset| serde_json::to_string(&worker_statefulset(ds, &rt, &cfg).unwrap()).unwrap();
    let exclusive = text(&ds);
    assert!(exclusive.contains(r#""weir.io/placement":"Exclusive""#));
    assert!(exclusive.contains(r#""operator":"NotIn","values":["imagenet"]"#));
    let terms = &serde_json::to_value(worker_statefulset(&ds, &rt, &cfg).unwrap()).unwrap()["spec"]
        ["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(
        terms[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"], "imagenet",
        "one worker of the runtime per node: {terms}"
    );
    assert_eq!(terms[0]["topologyKey"], "kubernetes.io/hostname");
    ds.spec.placement = Placement::Shared;
    let shared = text(&ds);
    assert!(shared.contains(r#""key":"weir.io/placement","operator":"In","values":["Exclusive"]"#));
    ds.spec.owner = Some(crate::crd::dataset::Owner {
        uid: 1000,
        gid: 100,
    });
    let args = fuse_daemonset(&ds, &rt, &cfg)
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.windows(2).any(|w| w == ["--uid", "1000"])
            && args.windows(2).any(|w| w == ["--gid", "100"]),
        "{args:?}"
    );
}

#[test]
fn a_bad_tier_is_named() {
    let (ds, mut rt, cfg) = pair();
    rt.spec.tieredstore.levels[0].quota = "lots".into();
    let e = config_map(&ds, &rt, &cfg).unwrap_err().to_string();
    assert!(e.contains("spec.tieredstore.levels[0].quota"), "{e}");
}

/// The digest on pod templates must not change with the compiler or the
/// operator's build: a changed digest rolls every cache's pods.
#[test]
fn the_config_digest_is_pinned_for_a_fixed_config() {
    let data: BTreeMap<String, String> = [
        ("master.yaml".to_owned(), "peers:\n- 0=m:19998\n".to_owned()),
        ("worker.yaml".to_owned(), "tiers: []\n".to_owned()),
    ]
    .into();
    // As Python's hashlib gives it for the same bytes:
    // sha256(len(n) n len(c) c ...) with big-endian u64 lengths, 8 bytes.
    assert_eq!(config_hash(Some(&data)), "06012042daf66041");
    let mut changed = data.clone();
    changed.insert("worker.yaml".into(), "tiers: [MEM]\n".into());
    assert_ne!(config_hash(Some(&changed)), config_hash(Some(&data)));
    // Moving bytes between a name and its content is a change too.
    let shifted: BTreeMap<String, String> = [("ab".to_owned(), "c".to_owned())].into();
    let other: BTreeMap<String, String> = [("a".to_owned(), "bc".to_owned())].into();
    assert_ne!(config_hash(Some(&shifted)), config_hash(Some(&other)));
}

fn fuse_pod(
    ds: &Dataset,
    rt: &CacheRuntime,
    cfg: &RenderConfig,
) -> k8s_openapi::api::core::v1::PodSpec {
    fuse_daemonset(ds, rt, cfg)
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
}

#[test]
fn a_host_network_runtime_listens_on_its_own_block_everywhere() {
    let (ds, mut rt, mut cfg) = pair();
    rt.spec.network_mode = crate::crd::runtime::NetworkMode::HostNetwork;
    cfg.ports = Ports::from_base(20400);
    let data = config_map(&ds, &rt, &cfg).unwrap().data.unwrap();
    assert!(
        data["master.yaml"].contains("0.0.0.0:20400"),
        "{}",
        data["master.yaml"]
    );
    assert!(data["master.yaml"].contains("svc.cluster.local:20400"));
    assert!(
        data["worker.yaml"].contains("0.0.0.0:20401")
            && data["worker.yaml"].contains("0.0.0.0:20402")
    );
    let ports_of = |pod: k8s_openapi::api::core::v1::PodSpec| -> Vec<i32> {
        assert_eq!(pod.host_network, Some(true));
        pod.containers[0]
            .ports
            .clone()
            .unwrap()
            .iter()
            .map(|p| p.container_port)
            .collect()
    };
    let template = |sts: StatefulSet| sts.spec.unwrap().template.spec.unwrap();
    let master = template(master_statefulset(&ds, &rt, &cfg).unwrap());
    let env = master.containers[0].env.clone().unwrap();
    assert!(
        env.iter().any(|e| e.name == "POD_NAME"),
        "the Raft id is not the node's host name"
    );
    assert!(
        env.iter()
            .any(|e| e.name == "WEIR_MASTERS" && e.value.as_deref() == Some("127.0.0.1:20400"))
    );
    assert_eq!(ports_of(master), vec![20400]);
    let worker = template(worker_statefulset(&ds, &rt, &cfg).unwrap());
    assert_eq!(ports_of(worker), vec![20401, 20402]);
    let fuse = fuse_pod(&ds, &rt, &cfg);
    assert_eq!(ports_of(fuse), vec![20403]);
    let svc = master_service(&rt, &cfg).spec.unwrap();
    assert_eq!(svc.ports.unwrap()[0].port, 20400);
}

#[test]
fn fuse_pods_see_the_node_paths_the_workers_name_for_their_tiers() {
    let (ds, mut rt, cfg) = pair();
    rt.spec.tieredstore.levels.push(Level {
        quota: "10Gi".into(),
        high: 0.9,
        low: 0.7,
        volume_type: crate::crd::runtime::VolumeType::HostPath,
        path: Some("/mnt/ssd".into()),
        ..Default::default()
    });
    let worker = worker_statefulset(&ds, &rt, &cfg).unwrap();
    let env = worker.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let at = |name: &str| env.iter().position(|e| e.name == name).unwrap();
    // Kubernetes expands $(VAR) only from variables defined before it.
    assert!(at("POD_UID") < at("WEIR_WORKER_TIER_HOST_DIRS"));
    assert!(at("POD_NAME") < at("WEIR_WORKER_TIER_HOST_DIRS"));
    let dirs = env[at("WEIR_WORKER_TIER_HOST_DIRS")].value.clone().unwrap();
    assert_eq!(
        dirs,
        "/var/lib/weir/tier/0=/var/lib/kubelet/pods/$(POD_UID)/volumes/kubernetes.io~empty-dir/tier-0;\
         /var/lib/weir/tier/1/0=/mnt/ssd/$(POD_NAMESPACE)-$(POD_NAME)"
    );
    let fuse = fuse_pod(&ds, &rt, &cfg);
    let mount = fuse.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "kubelet-pods")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/lib/kubelet/pods");
    assert_eq!(mount.read_only, Some(true));
}
