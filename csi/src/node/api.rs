//! What the plugin asks of the Kubernetes API (node labels that bring a
//! dataset's FUSE pod to this node, and Events on pods whose mounts were
//! repaired), and its implementation on a real apiserver.

use super::state::PodRef;
use crate::{Error, Result};

/// What the plugin asks of the Kubernetes API: node labels (set when a
/// volume is staged, removed when unstaged) and Events.
pub trait NodeApi: Send + Sync {
    fn set_label(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> futures::future::BoxFuture<'_, Result<()>>;
    /// Tells a pod's owner that its mount was broken and is back.
    fn mount_repaired<'a>(
        &'a self,
        pod: &'a PodRef,
        note: String,
    ) -> futures::future::BoxFuture<'a, Result<()>>;
}

/// This node, through the Kubernetes API.
pub struct KubeNode {
    pub client: kube::Client,
    pub node: String,
    pub recorder: kube::runtime::events::Recorder,
}

impl KubeNode {
    pub fn new(client: kube::Client, node: String) -> Self {
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "csi.weir.io".into(),
                instance: Some(node.clone()),
            },
        );
        KubeNode {
            client,
            node,
            recorder,
        }
    }
}

impl NodeApi for KubeNode {
    fn mount_repaired<'a>(
        &'a self,
        pod: &'a PodRef,
        note: String,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        use kube::runtime::events::{Event, EventType};
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        };
        Box::pin(async move {
            let event = Event {
                type_: EventType::Normal,
                reason: "MountRecovered".into(),
                note: Some(note),
                action: "Rebind".into(),
                secondary: None,
            };
            self.recorder
                .publish(&event, &reference)
                .await
                .map_err(|e| Error::Unavailable(format!("recording an event: {e}")))
        })
    }

    fn set_label(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> futures::future::BoxFuture<'_, Result<()>> {
        use k8s_openapi::api::core::v1::Node;
        use kube::api::{Patch, PatchParams};
        let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
        Box::pin(async move {
            let nodes: kube::Api<Node> = kube::Api::all(self.client.clone());
            nodes
                .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| Error::Unavailable(format!("labelling node {}: {e}", self.node)))?;
            Ok(())
        })
    }
}
