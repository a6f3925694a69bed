//! Proves the test bed is a real Kubernetes: CRDs with a status subresource,
//! StatefulSets with logs and exec, privileged FUSE mounts that propagate to
//! their node (and only there), ClusterIP Services and Service DNS, and
//! pods on different nodes talking over the nodes' links.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;
use weir_e2e::{in_namespace, install_crd, wait_for};
use weir_operator::crd::Dataset;

const E2E_IMAGE: &str = "weir.io/e2e:dev";

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("object literal")
}

async fn pod_phase(pods: &Api<Pod>, name: &str) -> weir_e2e::Result<Option<String>> {
    Ok(pods
        .get_opt(name)
        .await?
        .and_then(|p| p.status)
        .and_then(|s| s.phase))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_with_status_subresource_and_validation() -> anyhow::Result<()> {
    in_namespace("crd", async |ns| {
        install_crd(&ns.client, &weir_operator::crd::all()[0]).await?;

        let datasets: Api<Dataset> = ns.api();
        let ds: Dataset = from_json(json!({
            "apiVersion": "data.weir.io/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "demo"},
            "spec": {"mounts": [{"mountPoint": "s3://bucket/prefix"}]}
        }));
        // The CRD was just established; the apiserver may take a moment to serve it.
        wait_for("Dataset create", Duration::from_secs(20), || async {
            Ok(datasets
                .create(&PostParams::default(), &ds)
                .await
                .ok()
                .map(|_| ()))
        })
        .await?;
        datasets
            .patch_status(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Bound", "fileNum": "42"}})),
            )
            .await?;
        let got = datasets.get("demo").await?;
        let status = got.status.expect("status was patched");
        assert_eq!(status.file_num.as_deref(), Some("42"));
        assert_eq!(format!("{:?}", status.phase), "Bound");
        assert_eq!(
            got.spec.mounts[0].mount_point, "s3://bucket/prefix",
            "status patch kept the spec"
        );

        let bad: Dataset = from_json(json!({
            "apiVersion": "data.weir.io/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "no-scheme"},
            "spec": {"mounts": [{"mountPoint": "bucket/prefix"}]}
        }));
        let err = datasets
            .create(&PostParams::default(), &bad)
            .await
            .expect_err("no scheme is rejected");
        let message = err.to_string();
        assert!(
            message.contains("spec.mounts[0].mountPoint"),
            "error names the field: {message}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_runs_with_logs_and_exec() -> anyhow::Result<()> {
    in_namespace("sts", async |ns| {
        let sts: StatefulSet = from_json(json!({
            "metadata": {"name": "echo"},
            "spec": {
                "serviceName": "echo", "replicas": 2, "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": "echo"}},
                "template": {
                    "metadata": {"labels": {"app": "echo"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{
                            "name": "echo", "image": E2E_IMAGE, "imagePullPolicy": "Never",
                            "command": ["sh", "-c", "echo hello-from-$(hostname); exec sleep 3600"]
                        }]
                    }
                }
            }
        }));
        let api: Api<StatefulSet> = ns.api();
        api.create(&PostParams::default(), &sts).await?;
        wait_for("2 ready replicas", Duration::from_secs(90), || async {
            let s = api.get("echo").await?;
            Ok((s.status.and_then(|s| s.ready_replicas) == Some(2)).then_some(()))
        })
        .await?;
        let logs = ns.kubectl(&["logs", "echo-0"])?;
        assert_eq!(logs.trim(), "hello-from-echo-0");
        let exec = ns.kubectl(&["exec", "echo-1", "--", "cat", "/etc/hostname"])?;
        assert_eq!(exec.trim(), "echo-1");
        Ok(())
    })
    .await
}

/// A FUSE mount made in a pod (Bidirectional propagation) reaches its node,
/// and only its node: every node has a mount namespace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuse_mount_in_a_pod_propagates_to_its_node_only() -> anyhow::Result<()> {
    in_namespace("fuse", async |ns| {
    let host_dir = format!("/var/lib/weir/e2e/{}", ns.name);
    let token = format!("weir-fuse-{}", std::process::id());
    let nodes = ns.bed.node_names()?;
    let mut mounted = Vec::new();
    // One pod on each node (at most three), each with its own token.
    for (i, node) in nodes.iter().take(3).enumerate() {
        let pod: Pod = from_json(json!({
            "metadata": {"name": format!("fuse-{i}")},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 10,
                "containers": [{
                    "name": "fuse", "image": E2E_IMAGE, "imagePullPolicy": "Never",
                    "command": ["weir-e2e-fuse-probe", "/host/fuse", "--content", format!("{token}-{i}")],
                    "securityContext": {"privileged": true},
                    "volumeMounts": [{"name": "host", "mountPath": "/host", "mountPropagation": "Bidirectional"}]
                }],
                "volumes": [{"name": "host", "hostPath": {"path": host_dir, "type": "DirectoryOrCreate"}}]
            }
        }));
        let pods: Api<Pod> = ns.api();
        pods.create(&PostParams::default(), &pod).await?;
        mounted.push((node.clone(), format!("{token}-{i}")));
    }
    let mount_point = format!("{host_dir}/fuse");
    for (node, want) in &mounted {
        let hello = ns.bed.on_node(node, &format!("{mount_point}/hello"));
        let seen = wait_for(
            &format!("the FUSE file on {node}"),
            Duration::from_secs(90),
            || async { Ok(std::fs::read_to_string(&hello).ok().filter(|c| c == want)) },
        )
        .await?;
        assert_eq!(&seen, want, "{node} sees its own pod's mount");
    }
    // Each node's mount table holds one mount there: its own.
    for (node, _) in &mounted {
        let table = ns.bed.node_mounts(node);
        let here = table.lines().filter(|l| l.contains(&format!(" {mount_point} "))).count();
        assert_eq!(here, 1, "{node}: one FUSE mount at {mount_point}");
    }

    for i in 0..mounted.len() {
        ns.kubectl(&["delete", "pod", &format!("fuse-{i}"), "--wait=true", "--timeout=60s"])?;
    }
    for (node, _) in &mounted {
        wait_for(
            &format!("the FUSE mount to go from {node}"),
            Duration::from_secs(30),
            || async { Ok((!ns.bed.node_mounts(node).contains(&mount_point)).then_some(())) },
        )
        .await?;
        let _ = std::fs::remove_dir_all(ns.bed.on_node(node, &host_dir));
    }
    Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_service_and_headless_dns_work_from_a_pod() -> anyhow::Result<()> {
    in_namespace("svc", async |ns| {
    let token = format!("served-{}", std::process::id());
    // The server on the last node and the client on the first: on a bed
    // of several nodes the request crosses the nodes' links.
    let nodes = ns.bed.node_names()?;
    let (client_node, server_node) = (&nodes[0], nodes.last().expect("a node"));
    let server: Pod = from_json(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "nodeName": server_node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web", "image": E2E_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", format!("mkdir -p /www && echo {token} > /www/index.html && exec httpd -f -p 8080 -h /www")],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
            }]
        }
    }));
    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &server).await?;
    ns.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"])?;
    ns.kubectl(&[
        "create",
        "service",
        "clusterip",
        "web-headless",
        "--clusterip=None",
        "--tcp=8080:8080",
    ])?;
    // `kubectl create service` selects app=<name>; point the headless one at the server.
    ns.kubectl(&["set", "selector", "service", "web-headless", "app=web"])?;
    wait_for("web pod running", Duration::from_secs(60), || async {
        Ok((pod_phase(&pods, "web").await?.as_deref() == Some("Running")).then_some(()))
    })
    .await?;
    let web_ip = pods
        .get("web")
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .expect("pod ip");

    let svc_host = format!("web.{}.svc.cluster.local", ns.name);
    let headless_host = format!("web-headless.{}.svc.cluster.local", ns.name);
    // busybox-static's wget crashes inside containers (static glibc), so
    // HTTP is spoken with nc; nslookup has its own resolver.
    let script = format!(
        "lookup() {{ nslookup $1 2>/dev/null | sed -n 's/^Address: *//p' | grep -v ':53$' | tail -1; }}; \
         for i in $(seq 60); do \
           svc=$(lookup {svc_host}) && [ -n \"$svc\" ] && \
           body=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $svc 80 | tail -1) && \
           addr=$(lookup {headless_host}) && [ -n \"$addr\" ] && \
           echo \"body=$body addr=$addr svc=$svc\" && exit 0; sleep 1; done; \
         echo 'no answer'; nslookup {svc_host}; nslookup {headless_host}; exit 1"
    );
    let client: Pod = from_json(json!({
        "metadata": {"name": "client"},
        "spec": {
            "nodeName": client_node,
            "restartPolicy": "Never",
            "containers": [{"name": "client", "image": E2E_IMAGE, "imagePullPolicy": "Never",
                            "command": ["sh", "-c", script]}]
        }
    }));
    pods.create(&PostParams::default(), &client).await?;
    let phase = wait_for("client pod to finish", Duration::from_secs(120), || async {
        Ok(pod_phase(&pods, "client")
            .await?
            .filter(|p| p == "Succeeded" || p == "Failed"))
    })
    .await?;
    let logs = ns.kubectl(&["logs", "client"])?;
    assert_eq!(phase, "Succeeded", "client output: {logs}");
    let svc_ip = ns.kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    assert_eq!(logs.trim(), format!("body={token} addr={web_ip} svc={svc_ip}"));
    Ok(())
    })
    .await
}
