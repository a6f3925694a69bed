//! The dataset's PersistentVolume (the CSI driver's) and the claim named
//! after the dataset that pods mount.

use super::{meta, names_of, typed};
use crate::crd::{CacheRuntime, Dataset};
use crate::names::*;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde_json::{Value, json};

fn access_modes(ds: &Dataset) -> Vec<Value> {
    ds.spec.access_modes.iter().map(|m| json!(m)).collect()
}

/// Capacity a PV of a dataset claims: a dataset has no size of its own.
const PV_CAPACITY: &str = "100Pi";

/// The dataset's PV: cluster scoped, so it cannot be owned by the runtime
/// and is removed by the runtime's finalizer instead.
pub fn persistent_volume(ds: &Dataset, rt: &CacheRuntime) -> PersistentVolume {
    let names = names_of(rt);
    typed(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": names.pv(), "labels": names.labels("volume")},
        "spec": {
            "capacity": {"storage": PV_CAPACITY},
            "accessModes": access_modes(ds),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "weir",
            "claimRef": {"namespace": names.namespace, "name": names.pvc()},
            "csi": {
                "driver": CSI_DRIVER,
                "volumeHandle": names.pv(),
                "volumeAttributes": {
                    "runtimeName": names.name,
                    "runtimeNamespace": names.namespace,
                    "mountPath": names.host_mount_path(),
                    "fuseLabel": names.fuse_label(),
                    "cleanPolicy": match rt.spec.fuse.clean_policy {
                        crate::crd::runtime::CleanPolicy::OnDemand => "OnDemand",
                        crate::crd::runtime::CleanPolicy::OnRuntimeDeleted => "OnRuntimeDeleted",
                    },
                },
            },
        }
    }))
}

pub fn persistent_volume_claim(ds: &Dataset, rt: &CacheRuntime) -> PersistentVolumeClaim {
    let names = names_of(rt);
    typed(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(&names, names.pvc(), "volume", rt),
        "spec": {
            "accessModes": access_modes(ds),
            "storageClassName": "weir",
            "volumeName": names.pv(),
            "resources": {"requests": {"storage": PV_CAPACITY}},
        }
    }))
}
