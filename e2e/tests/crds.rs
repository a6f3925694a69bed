//! Weir's CRDs on the real apiserver: good objects are accepted, bad ones are
//! refused at apply time with the offending field and value named, and a
//! CacheRuntime scales through the scale subresource.

use kube::Api;
use kube::api::{DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use std::time::Duration;
use weir_e2e::{TestNamespace, in_namespace, install_crd, wait_for};

async fn install_crds(ns: &TestNamespace) -> anyhow::Result<()> {
    for crd in weir_operator::crd::all() {
        install_crd(&ns.client, &crd).await?;
    }
    Ok(())
}

fn api(ns: &TestNamespace, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("data.weir.io", "v1alpha1", kind);
    Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "data.weir.io/v1alpha1", "kind": kind,
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("object literal")
}

fn runtime_spec() -> Value {
    json!({
        "master": {"replicas": 3},
        "replicas": 2,
        "tieredstore": {"levels": [
            {"mediumtype": "MEM", "quota": "2Gi", "high": 0.95, "low": 0.8},
            {"mediumtype": "SSD", "volumeType": "hostPath", "path": "/mnt/a,/mnt/b", "quota": "100Gi"}
        ]},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_are_refused_naming_the_field() -> anyhow::Result<()> {
    in_namespace("crds", async |ns| {
        install_crds(ns).await?;
        let datasets = api(ns, "Dataset", "datasets");
        let runtimes = api(ns, "CacheRuntime", "cacheruntimes");
        let loads = api(ns, "DataLoad", "dataloads");
        let pp = PostParams::default();

        // Good objects (the apiserver may need a moment to serve new CRDs).
        let ds = object(
            "Dataset",
            "demo",
            json!({"mounts": [{"mountPoint": "s3://bucket/prefix", "name": "s3",
                "encryptOptions": [{"name": "secretAccessKey",
                    "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}}]}]}),
        );
        wait_for("Dataset create", Duration::from_secs(20), || async {
            Ok(datasets.create(&pp, &ds).await.ok().map(|_| ()))
        })
        .await?;
        let rt = object("CacheRuntime", "demo", runtime_spec());
        wait_for("CacheRuntime create", Duration::from_secs(20), || async {
            Ok(runtimes.create(&pp, &rt).await.ok().map(|_| ()))
        })
        .await?;
        let dl = object(
            "DataLoad",
            "nightly",
            json!({"dataset": {"name": "demo"}, "target": [{"path": "/s3/train", "replicas": 2}],
                "policy": "Cron", "schedule": "0 3 * * *", "ttlSecondsAfterFinished": 600}),
        );
        wait_for("DataLoad create", Duration::from_secs(20), || async {
            Ok(loads.create(&pp, &dl).await.ok().map(|_| ()))
        })
        .await?;
        let got = runtimes.get("demo").await?;
        assert_eq!(got.data["spec"]["tieredstore"]["levels"][1]["high"], 0.95, "defaulted");

        let bad_runtime = |name: &str, edit: &dyn Fn(&mut Value)| {
            let mut spec = runtime_spec();
            edit(&mut spec);
            object("CacheRuntime", name, spec)
        };
        let s3 = || json!({"mounts": [{"mountPoint": "s3://bucket"}]});
        let too_long = "d".repeat(64);
        let cases: Vec<(&Api<DynamicObject>, DynamicObject, &str, &str)> = vec![
            (
                &datasets,
                object("Dataset", "no-scheme", json!({"mounts": [{"mountPoint": "bucket/prefix"}]})),
                "spec.mounts[0].mountPoint",
                "mountPoint \"bucket/prefix\" must start with s3://",
            ),
            (
                &datasets,
                object("Dataset", &too_long, s3()),
                "metadata.name",
                "63",
            ),
            (
                &datasets,
                object("Dataset", "9lives", s3()),
                "metadata.name: Invalid value: \"9lives\"",
                weir_operator::crd::NAME_PATTERN,
            ),
            (
                &runtimes,
                object("CacheRuntime", "dotted.name", runtime_spec()),
                "metadata.name: Invalid value: \"dotted.name\"",
                weir_operator::crd::NAME_PATTERN,
            ),
            (
                &runtimes,
                bad_runtime("negative-quota", &|s| s["tieredstore"]["levels"][0]["quota"] = json!("-1Gi")),
                "spec.tieredstore.levels[0].quota",
                "quota \"-1Gi\" must be a positive quantity",
            ),
            (
                &runtimes,
                bad_runtime("high-below-low", &|s| {
                    s["tieredstore"]["levels"][0]["high"] = json!(0.5);
                    s["tieredstore"]["levels"][0]["low"] = json!(0.7);
                }),
                "spec.tieredstore.levels[0].high",
                "high must be greater than low",
            ),
            (
                &runtimes,
                bad_runtime("even-masters", &|s| s["master"]["replicas"] = json!(2)),
                "spec.master.replicas",
                "Unsupported value: 2",
            ),
            (
                &runtimes,
                bad_runtime("interval-of-zero", &|s| {
                    s["management"] = json!({"metadataSyncPolicy": {"mode": "Interval", "syncIntervalSeconds": 0}});
                }),
                "spec.management.metadataSyncPolicy.syncIntervalSeconds",
                "above 0 with mode Interval, not 0",
            ),
            (
                &runtimes,
                bad_runtime("unknown-sync-mode", &|s| {
                    s["management"] = json!({"metadataSyncPolicy": {"mode": "Sometimes"}});
                }),
                "spec.management.metadataSyncPolicy.mode",
                "\"Sometimes\"",
            ),
            (
                &loads,
                object("DataLoad", "bad-cron", json!({"dataset": {"name": "demo"}, "policy": "Cron", "schedule": "every night"})),
                "spec.schedule",
                "schedule \"every night\" must be a cron expression",
            ),
            (
                &loads,
                object("DataLoad", "cron-without-schedule", json!({"dataset": {"name": "demo"}, "policy": "Cron"})),
                "spec.schedule",
                "schedule is required",
            ),
        ];
        for (api, obj, field, shows) in cases {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let err = api
                .create(&pp, &obj)
                .await
                .expect_err(&format!("{name} is refused"));
            let message = err.to_string();
            assert!(message.contains(field), "{name}: the error names {field}: {message}");
            assert!(message.contains(shows), "{name}: the error says {shows:?}: {message}");
        }

        // `kubectl scale` goes through the scale subresource.
        ns.kubectl(&["scale", "cacheruntime/demo", "--replicas=3"])?;
        let got = runtimes.get("demo").await?;
        assert_eq!(got.data["spec"]["replicas"], 3);
        Ok(())
    })
    .await
}
