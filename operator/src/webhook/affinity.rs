//! What the scheduling webhook changes in a pod, as a pure function of the
//! pod and of where its datasets' caches are: a preferred node affinity for
//! the nodes running those caches' workers, and a weaker one for their
//! zones; optionally, pods that use no dataset get a preference for the
//! other nodes, leaving the cache nodes' memory and network to the readers.
//! A preference, never a requirement: a pod still runs when the preferred
//! nodes are full. A pod that states its own node affinity keeps it
//! untouched.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The label a node's host name is matched by.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Put on a pod the webhook steered, naming the datasets it was steered
/// toward, so `kubectl describe pod` says why it landed where it did.
pub const STEERED_ANNOTATION: &str = "data.weir.io/scheduled-near";
/// Put on a pod that uses no dataset and was steered off the cache nodes.
pub const AVOIDED_ANNOTATION: &str = "data.weir.io/scheduled-away-from-cache";
const NODE_WEIGHT: i32 = 100;
const ZONE_WEIGHT: i32 = 50;
const AWAY_WEIGHT: i32 = 50;

/// Where a pod's datasets are cached.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheNodes {
    /// The datasets found among the pod's claims.
    pub datasets: BTreeSet<String>,
    /// `kubernetes.io/hostname` of the nodes running their workers.
    pub hostnames: BTreeSet<String>,
    /// Zones of those nodes.
    pub zones: BTreeSet<String>,
}

/// The claims a pod mounts: a dataset's PVC has the dataset's name.
pub fn claims(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .collect()
}

/// Why a pod is left as it is, or `None` when it may be steered.
pub fn left_alone(pod: &Pod) -> Option<&'static str> {
    let spec = pod.spec.as_ref()?;
    if spec.node_name.is_some() {
        return Some("it names its node");
    }
    if spec
        .affinity
        .as_ref()
        .is_some_and(|a| a.node_affinity.is_some())
    {
        return Some("it sets its own node affinity");
    }
    None
}

/// The JSON patch (RFC 6902) steering `pod` toward `cache`, or `None`
/// when there is nothing to do.
pub fn patch(pod: &Pod, cache: &CacheNodes) -> Option<Vec<Value>> {
    if cache.hostnames.is_empty() || left_alone(pod).is_some() {
        return None;
    }
    let mut preferred = vec![json!({
        "weight": NODE_WEIGHT,
        "preference": {"matchExpressions": [{
            "key": HOSTNAME_LABEL, "operator": "In", "values": cache.hostnames,
        }]},
    })];
    if !cache.zones.is_empty() {
        preferred.push(json!({
            "weight": ZONE_WEIGHT,
            "preference": {"matchExpressions": [{
                "key": ZONE_LABEL, "operator": "In", "values": cache.zones,
            }]},
        }));
    }
    let names = cache.datasets.iter().cloned().collect::<Vec<_>>().join(",");
    Some(ops(pod, preferred, STEERED_ANNOTATION, names))
}

/// The JSON patch giving `pod`, which uses no dataset, a preference for
/// the nodes that run no cache worker (`cache_hostnames`), or `None`.
pub fn patch_away(pod: &Pod, cache_hostnames: &BTreeSet<String>) -> Option<Vec<Value>> {
    if cache_hostnames.is_empty() || left_alone(pod).is_some() {
        return None;
    }
    let preferred = vec![json!({
        "weight": AWAY_WEIGHT,
        "preference": {"matchExpressions": [{
            "key": HOSTNAME_LABEL, "operator": "NotIn", "values": cache_hostnames,
        }]},
    })];
    Some(ops(pod, preferred, AVOIDED_ANNOTATION, "true".into()))
}

/// The node affinity `preferred`, and `annotation: value`, added to `pod`
/// whatever it already has of either.
fn ops(pod: &Pod, preferred: Vec<Value>, annotation: &str, value: String) -> Vec<Value> {
    let node_affinity = json!({"preferredDuringSchedulingIgnoredDuringExecution": preferred});
    let has_affinity = pod.spec.as_ref().is_some_and(|s| s.affinity.is_some());
    vec![
        if has_affinity {
            json!({"op": "add", "path": "/spec/affinity/nodeAffinity", "value": node_affinity})
        } else {
            json!({"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": node_affinity}})
        },
        if pod.metadata.annotations.is_some() {
            // `/` in a key is `~1` in a JSON pointer.
            json!({"op": "add", "path": format!("/metadata/annotations/{}", annotation.replace('/', "~1")), "value": value})
        } else {
            json!({"op": "add", "path": "/metadata/annotations", "value": {annotation: value}})
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: Value) -> Pod {
        let mut p = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "imagenet"}},
                                 {"name": "t", "emptyDir": {}}]},
        });
        if let (Some(spec), Value::Object(extra)) = (p["spec"].as_object_mut(), extra) {
            spec.extend(extra);
        }
        serde_json::from_value(p).unwrap()
    }

    fn cache(zones: &[&str]) -> CacheNodes {
        CacheNodes {
            datasets: ["imagenet".to_owned()].into(),
            hostnames: ["n1".to_owned(), "n3".to_owned()].into(),
            zones: zones.iter().map(|z| (*z).to_owned()).collect(),
        }
    }

    fn apply(pod: &Pod, ops: Vec<Value>) -> Pod {
        let mut v = serde_json::to_value(pod).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut v, &patch).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_pod_mounting_a_dataset_prefers_its_cache_nodes_then_their_zone() {
        let p = pod(json!({}));
        assert_eq!(claims(&p), vec!["imagenet"]);
        let steered = apply(&p, patch(&p, &cache(&["z1"])).unwrap());
        let na = steered
            .spec
            .unwrap()
            .affinity
            .unwrap()
            .node_affinity
            .unwrap();
        assert!(
            na.required_during_scheduling_ignored_during_execution
                .is_none()
        );
        let preferred = na
            .preferred_during_scheduling_ignored_during_execution
            .unwrap();
        let terms: Vec<(i32, String, Vec<String>)> = preferred
            .iter()
            .map(|t| {
                let e = &t.preference.match_expressions.as_ref().unwrap()[0];
                (t.weight, e.key.clone(), e.values.clone().unwrap())
            })
            .collect();
        assert_eq!(
            terms,
            vec![
                (100, HOSTNAME_LABEL.into(), vec!["n1".into(), "n3".into()]),
                (50, ZONE_LABEL.into(), vec!["z1".into()]),
            ]
        );
        assert_eq!(
            steered.metadata.annotations.unwrap()[STEERED_ANNOTATION],
            "imagenet"
        );
    }

    #[test]
    fn other_affinities_and_annotations_are_kept() {
        let mut p = pod(
            json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}}}),
        );
        p.metadata.annotations = Some([("team".to_owned(), "vision".to_owned())].into());
        let steered = apply(&p, patch(&p, &cache(&[])).unwrap());
        let affinity = steered.spec.unwrap().affinity.unwrap();
        assert!(affinity.pod_anti_affinity.is_some(), "kept");
        assert_eq!(
            affinity
                .node_affinity
                .unwrap()
                .preferred_during_scheduling_ignored_during_execution
                .unwrap()
                .len(),
            1,
            "no zone term without zones"
        );
        let annotations = steered.metadata.annotations.unwrap();
        assert_eq!(annotations["team"], "vision");
        assert_eq!(annotations[STEERED_ANNOTATION], "imagenet");
    }

    #[test]
    fn a_pod_using_no_dataset_may_be_kept_off_cache_nodes() {
        let mut p = pod(json!({}));
        p.spec.as_mut().unwrap().volumes = None;
        let cache: BTreeSet<String> = ["n1".to_owned()].into();
        let steered = apply(&p, patch_away(&p, &cache).unwrap());
        let term = &steered
            .spec
            .unwrap()
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .preferred_during_scheduling_ignored_during_execution
            .unwrap()[0];
        let e = &term.preference.match_expressions.as_ref().unwrap()[0];
        assert_eq!((term.weight, e.operator.as_str()), (50, "NotIn"));
        assert_eq!(e.values, Some(vec!["n1".to_owned()]));
        assert_eq!(
            steered.metadata.annotations.unwrap()[AVOIDED_ANNOTATION],
            "true"
        );
        assert_eq!(patch_away(&p, &BTreeSet::new()), None, "no cache nodes");
    }

    #[test]
    fn a_pod_with_its_own_node_affinity_or_node_is_left_alone() {
        let own = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}}}}),
        );
        assert_eq!(left_alone(&own), Some("it sets its own node affinity"));
        assert_eq!(patch(&own, &cache(&["z1"])), None);
        let pinned = pod(json!({"nodeName": "n2"}));
        assert_eq!(patch(&pinned, &cache(&["z1"])), None);
        assert_eq!(
            patch(&pod(json!({})), &CacheNodes::default()),
            None,
            "no cache nodes"
        );
    }
}
