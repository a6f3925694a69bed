//! Reconciler branches against a mocked apiserver: each test scripts the
//! requests a reconcile must make, in order, and the answers it gets.

use super::{dataload, dataset, runtime};
use crate::Error;
use crate::context::{Context, Metrics, OperatorConfig};
use crate::crd::{CacheRuntime, DataLoad, Dataset};
use crate::leader::Elector;
use crate::render::RenderConfig;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower_test::mock::{Handle, pair};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn context() -> (Arc<Context>, ApiHandle) {
    let (service, handle) = pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let config = OperatorConfig {
        render: RenderConfig {
            image: "weir.io/weir:dev".into(),
            image_pull_policy: "Never".into(),
            cluster_domain: "cluster.local".into(),
            ports: crate::render::Ports::default(),
            kubelet_root_dir: "/var/lib/kubelet".into(),
            allowed_host_paths: vec!["/srv".into()],
        },
        master_port: 19200,
        metrics_listen: ([127, 0, 0, 1], 0).into(),
        lease_namespace: "default".into(),
        lease_name: "weir-operator".into(),
        identity: "test".into(),
        pod_uid: None,
        lease_duration: Duration::from_secs(15),
        watch_namespace: None,
        cleanup_timeout: Duration::from_secs(600),
    };
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    (Arc::new(Context::new(client, config, metrics)), handle)
}

/// The next request must be `method` on a path containing `path`; it is
/// answered with `status` and `body`. Returns the request's JSON body.
async fn expect(
    handle: &mut ApiHandle,
    method: &str,
    path: &str,
    status: u16,
    body: Value,
) -> Value {
    let (request, reply) = handle
        .next_request()
        .await
        .unwrap_or_else(|| panic!("no request; expected {method} {path}"));
    let uri = request.uri().to_string();
    assert_eq!(request.method().as_str(), method, "{uri}");
    assert!(uri.contains(path), "expected {method} {path}, got {uri}");
    let bytes = request.into_body().collect_bytes().await.expect("body");
    reply.send_response(
        Response::builder()
            .status(StatusCode::from_u16(status).expect("status"))
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response"),
    );
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
        "code": 404, "message": format!("{kind} \"{name}\" not found")})
}

fn meta(name: &str, finalizer: &str) -> Value {
    json!({"name": name, "namespace": "team", "uid": "u-1", "generation": 1,
        "resourceVersion": "1", "finalizers": [finalizer]})
}

fn runtime_obj() -> Value {
    json!({"apiVersion": "data.weir.io/v1alpha1", "kind": "CacheRuntime",
        "metadata": meta("demo", crate::names::FINALIZER_RUNTIME),
        "spec": {"replicas": 2, "tieredstore": {"levels": [{"mediumtype": "MEM", "quota": "1Gi"}]}}})
}

fn dataset_obj(finalizer: &str) -> Value {
    json!({"apiVersion": "data.weir.io/v1alpha1", "kind": "Dataset",
        "metadata": meta("demo", finalizer),
        "spec": {"mounts": [{"mountPoint": "s3://bucket/train"}]}})
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The status a JSON patch `add /status` writes.
fn written_status(patch: &Value) -> &Value {
    assert_eq!(patch[0]["path"], "/status", "{patch}");
    &patch[0]["value"]
}

#[tokio::test]
async fn a_runtime_without_its_dataset_says_so() {
    let (ctx, mut api) = context();
    let rt: CacheRuntime = serde_json::from_value(runtime_obj()).unwrap();
    let task = tokio::spawn(runtime::reconcile(Arc::new(rt), ctx));
    expect(
        &mut api,
        "GET",
        "/datasets/demo",
        404,
        not_found("datasets", "demo"),
    )
    .await;
    let patch = expect(
        &mut api,
        "PATCH",
        "/cacheruntimes/demo/status",
        200,
        runtime_obj(),
    )
    .await;
    let c = condition(written_status(&patch), "Ready");
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("DatasetMissing"))
    );
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("Dataset named demo")
    );
    let action = task.await.unwrap().unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn an_unrealisable_spec_fails_both_objects_naming_the_field() {
    let (ctx, mut api) = context();
    let rt: CacheRuntime = serde_json::from_value(runtime_obj()).unwrap();
    let task = tokio::spawn(runtime::reconcile(Arc::new(rt), ctx));
    let mut ds = dataset_obj(crate::names::FINALIZER_DATASET);
    ds["spec"]["mounts"][0]["options"] = json!({"writeType": "SOMETIMES"});
    expect(&mut api, "GET", "/datasets/demo", 200, ds.clone()).await;
    let patch = expect(
        &mut api,
        "PATCH",
        "/cacheruntimes/demo/status",
        200,
        runtime_obj(),
    )
    .await;
    let c = condition(written_status(&patch), "Ready");
    assert_eq!(c["reason"], "InvalidSpec");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("spec.mounts[0].options.writeType")
    );
    let patch = expect(&mut api, "PATCH", "/datasets/demo/status", 200, ds).await;
    assert_eq!(written_status(&patch)["phase"], "Failed");
    for kind in ["CacheRuntime", "Dataset"] {
        let event = expect(&mut api, "POST", "/events", 201, json!({})).await;
        assert_eq!(event["reason"], "InvalidSpec");
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["regarding"]["kind"], kind, "{event}");
    }
    let action = task.await.unwrap().unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
}

#[tokio::test]
async fn an_apiserver_refusal_is_shown_on_both_objects() {
    let (ctx, mut api) = context();
    let rt: CacheRuntime = serde_json::from_value(runtime_obj()).unwrap();
    let task = tokio::spawn(runtime::reconcile(Arc::new(rt), ctx));
    let ds = dataset_obj(crate::names::FINALIZER_DATASET);
    expect(&mut api, "GET", "/datasets/demo", 200, ds.clone()).await;
    let refusal = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
        "reason": "Invalid", "message": "ConfigMap \"demo-config\" is invalid: exceeded quota"});
    expect(&mut api, "PATCH", "/configmaps/demo-config", 422, refusal).await;
    let patch = expect(
        &mut api,
        "PATCH",
        "/cacheruntimes/demo/status",
        200,
        runtime_obj(),
    )
    .await;
    let c = condition(written_status(&patch), "Ready");
    assert_eq!(c["reason"], "ApplyFailed");
    assert!(
        c["message"].as_str().unwrap().contains("exceeded quota"),
        "{c}"
    );
    let patch = expect(&mut api, "PATCH", "/datasets/demo/status", 200, ds).await;
    assert_eq!(
        condition(written_status(&patch), "Ready")["reason"],
        "ApplyFailed"
    );
    for _ in 0..2 {
        let event = expect(&mut api, "POST", "/events", 201, json!({})).await;
        assert_eq!(event["reason"], "ApplyFailed");
        assert_eq!(event["type"], "Warning");
    }
    // Still an error, so the reconcile is retried.
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn an_ungranted_host_path_is_refused_before_anything_is_made() {
    let (ctx, mut api) = context();
    let rt: CacheRuntime = serde_json::from_value(runtime_obj()).unwrap();
    let task = tokio::spawn(runtime::reconcile(Arc::new(rt), ctx));
    let mut ds = dataset_obj(crate::names::FINALIZER_DATASET);
    ds["spec"]["mounts"][0]["mountPoint"] = json!("local:///etc");
    expect(&mut api, "GET", "/datasets/demo", 200, ds.clone()).await;
    // The first request after the Dataset is the refusal: no object applied.
    let patch = expect(
        &mut api,
        "PATCH",
        "/cacheruntimes/demo/status",
        200,
        runtime_obj(),
    )
    .await;
    let c = condition(written_status(&patch), "Ready");
    assert_eq!(c["reason"], "HostPathNotAllowed");
    let message = c["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.mounts[0].mountPoint: host path /etc is not under"),
        "{message}"
    );
    assert!(message.contains("granted: /srv"), "{message}");
    let patch = expect(&mut api, "PATCH", "/datasets/demo/status", 200, ds).await;
    assert_eq!(written_status(&patch)["phase"], "Failed");
    for _ in 0..2 {
        let event = expect(&mut api, "POST", "/events", 201, json!({})).await;
        assert_eq!(event["reason"], "HostPathNotAllowed");
    }
    let action = task.await.unwrap().unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
}

#[tokio::test]
async fn a_dataset_without_runtime_is_not_bound() {
    let (ctx, mut api) = context();
    let ds: Dataset = serde_json::from_value(dataset_obj(crate::names::FINALIZER_DATASET)).unwrap();
    let task = tokio::spawn(dataset::reconcile(Arc::new(ds), ctx));
    expect(
        &mut api,
        "GET",
        "/cacheruntimes/demo",
        404,
        not_found("cacheruntimes", "demo"),
    )
    .await;
    let patch = expect(
        &mut api,
        "PATCH",
        "/datasets/demo/status",
        200,
        dataset_obj("x"),
    )
    .await;
    let status = written_status(&patch);
    assert_eq!(status["phase"], "NotBound");
    assert_eq!(condition(status, "Ready")["reason"], "NoRuntime");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_new_dataset_gets_the_finalizer_first() {
    let (ctx, mut api) = context();
    let mut obj = dataset_obj("x");
    obj["metadata"]["finalizers"] = json!([]);
    let ds: Dataset = serde_json::from_value(obj.clone()).unwrap();
    let task = tokio::spawn(dataset::reconcile(Arc::new(ds), ctx));
    let patch = expect(&mut api, "PATCH", "/datasets/demo", 200, obj).await;
    assert!(
        patch.to_string().contains(crate::names::FINALIZER_DATASET),
        "{patch}"
    );
    task.await.unwrap().unwrap();
}

fn pods_using_demo() -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
        {"metadata": {"name": "trainer"}, "spec": {"containers": [{"name": "c"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "demo"}}]},
         "status": {"phase": "Running"}},
        {"metadata": {"name": "finished"}, "spec": {"containers": [{"name": "c"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "demo"}}]},
         "status": {"phase": "Succeeded"}},
        {"metadata": {"name": "unrelated"}, "spec": {"containers": [{"name": "c"}]}},
    ]})
}

#[tokio::test]
async fn a_held_deletion_lets_go_after_the_cleanup_timeout() {
    let (ctx, mut api) = context();
    let mut obj = dataset_obj(crate::names::FINALIZER_DATASET);
    // Begun longer ago than the context's 600 s time-out.
    obj["metadata"]["deletionTimestamp"] = json!("2026-11-22T00:00:00Z");
    let ds: Dataset = serde_json::from_value(obj.clone()).unwrap();
    let task = tokio::spawn(dataset::reconcile(Arc::new(ds), ctx));
    expect(&mut api, "GET", "/pods", 200, pods_using_demo()).await;
    expect(
        &mut api,
        "GET",
        "/cacheruntimes/demo",
        404,
        not_found("cacheruntimes", "demo"),
    )
    .await;
    let event = expect(&mut api, "POST", "/events", 201, json!({})).await;
    assert_eq!(event["reason"], "DeletionTimedOut");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("after 600s") && note.contains("trainer"),
        "{note}"
    );
    // The finalizer goes.
    let patch = expect(&mut api, "PATCH", "/datasets/demo", 200, obj).await;
    assert!(patch.to_string().contains("finalizers"), "{patch}");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn deleting_a_dataset_in_use_waits_and_names_the_pods() {
    let (ctx, mut api) = context();
    let mut obj = dataset_obj(crate::names::FINALIZER_DATASET);
    obj["metadata"]["deletionTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
    let ds: Dataset = serde_json::from_value(obj.clone()).unwrap();
    let task = tokio::spawn(dataset::reconcile(Arc::new(ds), ctx));
    expect(&mut api, "GET", "/pods", 200, pods_using_demo()).await;
    let event = expect(&mut api, "POST", "/events", 201, json!({})).await;
    assert_eq!(event["reason"], "DeletionBlocked");
    let patch = expect(&mut api, "PATCH", "/datasets/demo/status", 200, obj).await;
    let c = condition(written_status(&patch), "Terminating");
    assert_eq!(c["reason"], "ClaimInUse");
    assert_eq!(c["status"], "True", "a held deletion is Terminating=True");
    assert!(
        c["message"].as_str().unwrap().contains("pods: trainer"),
        "{c}"
    );
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Finalizer(e) if matches!(e.as_ref(), kube::runtime::finalizer::Error::CleanupFailed(Error::Waiting(_)))
        ),
        "{err}"
    );
}

fn dataload_obj(spec: Value, status: Value) -> Value {
    json!({"apiVersion": "data.weir.io/v1alpha1", "kind": "DataLoad",
        "metadata": meta("warm", dataload::FINALIZER), "spec": spec, "status": status})
}

#[tokio::test]
async fn a_load_waits_while_its_dataset_is_not_bound() {
    let (ctx, mut api) = context();
    let obj = dataload_obj(
        json!({"dataset": {"name": "demo"}}),
        json!({"phase": "Pending"}),
    );
    let dl: DataLoad = serde_json::from_value(obj.clone()).unwrap();
    let task = tokio::spawn(dataload::reconcile(Arc::new(dl), ctx));
    let mut ds = dataset_obj("x");
    ds["status"] = json!({"phase": "NotBound"});
    expect(&mut api, "GET", "/datasets/demo", 200, ds).await;
    let patch = expect(&mut api, "PATCH", "/dataloads/warm/status", 200, obj).await;
    let status = written_status(&patch);
    assert_eq!(status["phase"], "Pending");
    let c = condition(status, "DatasetBound");
    assert_eq!(c["reason"], "DatasetNotBound");
    assert!(c["message"].as_str().unwrap().contains("team/demo"));
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_load_with_a_bad_option_fails_naming_it() {
    let (ctx, mut api) = context();
    let obj = dataload_obj(
        json!({"dataset": {"name": "demo"}, "options": {"speed": "fast"}}),
        json!({"phase": "Pending"}),
    );
    let dl: DataLoad = serde_json::from_value(obj.clone()).unwrap();
    let task = tokio::spawn(dataload::reconcile(Arc::new(dl), ctx));
    let mut ds = dataset_obj("x");
    ds["status"] = json!({"phase": "Bound"});
    expect(&mut api, "GET", "/datasets/demo", 200, ds).await;
    expect(
        &mut api,
        "GET",
        "/cacheruntimes/demo",
        404,
        not_found("cacheruntimes", "demo"),
    )
    .await;
    let event = expect(&mut api, "POST", "/events", 201, json!({})).await;
    assert_eq!(event["reason"], "InvalidSpec");
    let patch = expect(&mut api, "PATCH", "/dataloads/warm/status", 200, obj).await;
    let status = written_status(&patch);
    assert_eq!(status["phase"], "Failed");
    assert!(
        condition(status, "Failed")["message"]
            .as_str()
            .unwrap()
            .contains("spec.options.speed")
    );
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_finished_load_past_its_ttl_is_deleted() {
    let (ctx, mut api) = context();
    let obj = dataload_obj(
        json!({"dataset": {"name": "demo"}, "ttlSecondsAfterFinished": 5}),
        json!({"phase": "Complete", "finishTime": "2026-01-01T00:00:00Z"}),
    );
    let dl: DataLoad = serde_json::from_value(obj.clone()).unwrap();
    let task = tokio::spawn(dataload::reconcile(Arc::new(dl), ctx));
    expect(&mut api, "DELETE", "/dataloads/warm", 200, obj).await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_finished_load_before_its_ttl_waits_for_it() {
    let (ctx, _api) = context();
    let finished = k8s_openapi::jiff::Timestamp::now().to_string();
    let obj = dataload_obj(
        json!({"dataset": {"name": "demo"}, "ttlSecondsAfterFinished": 600}),
        json!({"phase": "Failed", "finishTime": finished}),
    );
    let dl: DataLoad = serde_json::from_value(obj).unwrap();
    let action = dataload::reconcile(Arc::new(dl), ctx).await.unwrap();
    let wait = format!("{action:?}");
    let secs: f64 = wait
        .split("Some(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a requeue: {wait}"));
    assert!(
        (590.0..=601.0).contains(&secs),
        "requeued at the TTL's end: {wait}"
    );
}

fn lease(holder: &str, renewed: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "weir-operator", "namespace": "default", "resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed,
            "leaseTransitions": 2}})
}

#[tokio::test]
async fn a_fresh_lease_of_another_replica_is_left_alone() {
    let (ctx, mut api) = context();
    let elector = Elector::new(
        ctx.client.clone(),
        "default",
        "weir-operator",
        "me",
        Duration::from_secs(15),
    );
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let task = tokio::spawn(async move { elector.try_acquire().await });
    expect(
        &mut api,
        "GET",
        "/leases/weir-operator",
        200,
        lease("other", &now),
    )
    .await;
    assert!(!task.await.unwrap().unwrap());
}

#[tokio::test]
async fn an_expired_lease_is_taken_with_its_resource_version() {
    let (ctx, mut api) = context();
    let elector = Elector::new(
        ctx.client.clone(),
        "default",
        "weir-operator",
        "me",
        Duration::from_secs(15),
    );
    let task = tokio::spawn(async move { elector.try_acquire().await });
    expect(
        &mut api,
        "GET",
        "/leases/weir-operator",
        200,
        lease("other", "2026-01-01T00:00:00.000000Z"),
    )
    .await;
    let put = expect(
        &mut api,
        "PUT",
        "/leases/weir-operator",
        200,
        lease("me", "2026-01-01T00:00:00.000000Z"),
    )
    .await;
    assert_eq!(
        put["metadata"]["resourceVersion"], "7",
        "the write is conditional"
    );
    assert_eq!(put["spec"]["holderIdentity"], "me");
    assert_eq!(put["spec"]["leaseTransitions"], 3);
    assert!(task.await.unwrap().unwrap());
}

#[tokio::test]
async fn losing_the_race_for_a_lease_is_not_an_error() {
    let (ctx, mut api) = context();
    let elector = Elector::new(
        ctx.client.clone(),
        "default",
        "weir-operator",
        "me",
        Duration::from_secs(15),
    );
    let task = tokio::spawn(async move { elector.try_acquire().await });
    expect(
        &mut api,
        "GET",
        "/leases/weir-operator",
        200,
        lease("other", "2026-01-01T00:00:00.000000Z"),
    )
    .await;
    let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "changed"});
    expect(&mut api, "PUT", "/leases/weir-operator", 409, conflict).await;
    assert!(!task.await.unwrap().unwrap());
}

#[test]
fn targets_group_by_replicas_and_default_to_the_runtimes() {
    let dl: DataLoad = serde_json::from_value(dataload_obj(
        json!({"dataset": {"name": "demo"}, "target": [
            {"path": "/a"}, {"path": "/b", "replicas": 3}, {"path": "/c"}],
            "options": {"bandwidth": "200Mi", "parallelism": "8"}}),
        json!({}),
    ))
    .unwrap();
    let specs = dataload::job_specs(&dl, 2).unwrap();
    let groups: Vec<(u32, Vec<String>)> = specs
        .iter()
        .map(|s| (s.replicas, s.paths.clone()))
        .collect();
    assert_eq!(
        groups,
        vec![(2, vec!["/a".into(), "/c".into()]), (3, vec!["/b".into()])]
    );
    assert!(
        specs
            .iter()
            .all(|s| s.bandwidth_bytes_per_sec == 200 << 20 && s.parallelism == 8)
    );
    let whole: DataLoad = serde_json::from_value(dataload_obj(
        json!({"dataset": {"name": "demo"}}),
        json!({}),
    ))
    .unwrap();
    assert_eq!(
        dataload::job_specs(&whole, 1).unwrap()[0].paths,
        vec!["/".to_owned()]
    );
}
