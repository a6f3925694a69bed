//! The committed CRD YAML must be exactly what the Rust types generate, and
//! every schema must be structural (the apiserver rejects anything else).

use serde_json::Value;

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, yaml) in weir_operator::crd::rendered().unwrap() {
        let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        assert!(
            committed == yaml,
            "crds/{file} is stale: run `cargo run -p weir-operator --bin crdgen`"
        );
    }
}

fn assert_structural(node: &Value, at: &str) {
    let Value::Object(map) = node else { return };
    assert!(
        !map.contains_key("$ref"),
        "{at}: $ref is not allowed in a CRD schema"
    );
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(Value::Array(branches)) = map.get(key) {
            for b in branches {
                let keys: Vec<_> = b
                    .as_object()
                    .map(|o| o.keys().collect())
                    .unwrap_or_default();
                assert!(
                    keys.iter().all(|k| *k == "required"),
                    "{at}.{key}: only `required` may appear inside, found {keys:?}"
                );
            }
        }
    }
    let typed = map.contains_key("type")
        || map.contains_key("x-kubernetes-int-or-string")
        || map.contains_key("x-kubernetes-preserve-unknown-fields");
    if map.contains_key("properties") || map.contains_key("items") {
        assert!(typed, "{at}: a node with properties or items needs a type");
    }
    for (k, v) in map {
        match k.as_str() {
            "properties" => {
                for (name, child) in v.as_object().into_iter().flatten() {
                    assert!(
                        child.get("type").is_some()
                            || child.get("x-kubernetes-int-or-string").is_some()
                            || child.get("x-kubernetes-preserve-unknown-fields").is_some(),
                        "{at}.{name}: property without a type"
                    );
                    assert_structural(child, &format!("{at}.{name}"));
                }
            }
            "items" | "additionalProperties" => assert_structural(v, &format!("{at}[]")),
            _ => {}
        }
    }
}

#[test]
fn schemas_are_structural() {
    for (file, yaml) in weir_operator::crd::rendered().unwrap() {
        let crd: Value = serde_yaml::from_str(&yaml).unwrap();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            assert_structural(&version["schema"]["openAPIV3Schema"], &file);
        }
    }
}
