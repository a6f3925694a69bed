//! Custom resource types of `data.weir.io/v1alpha1`. The YAML in `crds/` is
//! generated from these by `crdgen`; a test fails when it is stale.

pub mod dataload;
pub mod dataset;
pub mod runtime;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;
use kube::core::crd::merge_crds;

pub use dataload::{DataLoad, DataLoadSpec, DataLoadStatus};
pub use dataset::{Dataset, DatasetSpec, DatasetStatus};
pub use runtime::{CacheRuntime, CacheRuntimeSpec, CacheRuntimeStatus};

pub const GROUP: &str = "data.weir.io";
pub const VERSION: &str = "v1alpha1";

/// A Dataset's name is its PVC's and its runtime's, and a label value of
/// every object the runtime makes: a DNS label (RFC 1035), as Fluid has it.
/// A schema restriction, not a CEL rule: the apiserver names the value and
/// the limit itself, and a rule on `metadata.name` (a string of no declared
/// length) costs more than a CRD's budget.
pub const NAME_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
pub const NAME_MAX: i64 = 63;

fn with_dns_label_names(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let name = JSONSchemaProps {
        type_: Some("string".into()),
        max_length: Some(NAME_MAX),
        pattern: Some(NAME_PATTERN.into()),
        ..Default::default()
    };
    let metadata = JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some([("name".to_owned(), name)].into()),
        ..Default::default()
    };
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            root.properties
                .get_or_insert_with(Default::default)
                .insert("metadata".into(), metadata.clone());
        }
    }
    crd
}

/// The CRDs as the apiserver gets them, in a fixed order.
pub fn all() -> [CustomResourceDefinition; 3] {
    [
        with_dns_label_names(Dataset::crd()),
        with_dns_label_names(CacheRuntime::crd()),
        DataLoad::crd(),
    ]
}

/// The CRDs as `(file name, YAML)`, in a fixed order.
pub fn rendered() -> crate::Result<Vec<(String, String)>> {
    all()
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.spec.names.plural);
            let merged = merge_crds(vec![crd], VERSION).expect("single-version CRD merges");
            Ok((file, serde_yaml::to_string(&merged)?))
        })
        .collect()
}
