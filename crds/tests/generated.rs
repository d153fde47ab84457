//! The committed CRD YAML is exactly what `crdgen` writes, and every property in it is
//! documented (descriptions become `kubectl explain`).

use openvox_crds::crd;
use serde_json::Value;

#[test]
fn committed_crds_match_what_crdgen_generates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for place in [dir.to_path_buf(), crd::chart_crd_dir(dir)] {
        for (file, crd) in crd::all() {
            let path = place.join(file);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds`", path.display()));
            let generated = crd::to_yaml(&crd).unwrap();
            assert!(
                committed == generated,
                "{} differs from the Rust types; run `make crds` and commit the result",
                path.display()
            );
        }
    }
}

#[test]
fn committed_api_reference_matches_the_crds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = crd::reference_path(dir);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == crd::reference(),
        "{} differs from the CRDs; run `make crds` and commit the result",
        path.display()
    );
}

/// Paths of schema properties that have no description.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            let documented = prop
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            // apiVersion/kind/metadata are documented by Kubernetes itself.
            let standard =
                path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
            if !documented && !standard {
                out.push(here.clone());
            }
            undocumented(prop, &here, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = schema.get(key).filter(|v| v.is_object()) {
            undocumented(inner, &format!("{path}[]"), out);
        }
    }
}

#[test]
fn every_schema_property_has_a_description() {
    for (file, crd) in crd::all() {
        let crd = serde_json::to_value(&crd).unwrap();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let schema = &version["schema"]["openAPIV3Schema"];
            let mut missing = Vec::new();
            undocumented(schema, "", &mut missing);
            assert!(
                missing.is_empty(),
                "{file}: properties without description: {missing:#?}"
            );
        }
    }
}

#[test]
fn the_description_check_notices_a_missing_description() {
    let schema = serde_json::json!({
        "properties": {"spec": {"description": "d", "properties": {"x": {"type": "string"}}}}
    });
    let mut missing = Vec::new();
    undocumented(&schema, "", &mut missing);
    assert_eq!(missing, vec![".spec.x".to_string()]);
}

#[test]
fn our_kinds_have_status_subresources_and_the_agreed_columns() {
    let all = crd::all();
    for (_, crd) in &all {
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.group, openvox_crds::names::GROUP);
        assert!(crd::is_ours(crd), "labelled as ours");
        // `cs` is ComponentStatus's: kubectl would resolve it to the built-in kind.
        for short in crd.spec.names.short_names.iter().flatten() {
            assert_ne!(short, "cs");
        }
    }
    let columns = |i: usize| -> Vec<String> {
        all[i].1.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(
        columns(0),
        ["Ready", "Schedule", "Digest", "Rolled-Out", "Job", "Age"]
    );
    assert_eq!(columns(1), ["Type", "Endpoints", "Age"]);
}
