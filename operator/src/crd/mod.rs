//! Custom resource types of `data.weir.io/v1alpha1`. The YAML in `crds/` is
//! generated from these by `crdgen`; a test fails when it is stale.

pub mod dataload;
pub mod dataset;
pub mod runtime;

use kube::CustomResourceExt;
use kube::core::crd::merge_crds;

pub use dataload::{DataLoad, DataLoadSpec, DataLoadStatus};
pub use dataset::{Dataset, DatasetSpec, DatasetStatus};
pub use runtime::{CacheRuntime, CacheRuntimeSpec, CacheRuntimeStatus};

pub const GROUP: &str = "data.weir.io";
pub const VERSION: &str = "v1alpha1";

/// The generated CRDs as `(file name, YAML)`, in a fixed order.
pub fn rendered() -> crate::Result<Vec<(String, String)>> {
    [Dataset::crd(), CacheRuntime::crd(), DataLoad::crd()]
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.spec.names.plural);
            let merged = merge_crds(vec![crd], VERSION).expect("single-version CRD merges");
            Ok((file, serde_yaml::to_string(&merged)?))
        })
        .collect()
}
