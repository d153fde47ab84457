//! The API reference in Markdown, generated from the CRD schemas so it can never
//! disagree with `kubectl explain`. Written to `docs/api.md` by `crdgen`.

use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// Markdown reference of `crds`: one section per kind, one table row per field.
pub fn markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::from(
        "# API reference\n\nGenerated from the CRDs by `make crds`; do not edit. \
         `kubectl explain <kind>.<field>` shows the same text.\n",
    );
    for crd in crds {
        let Some(version) = crd.spec.versions.first() else {
            continue;
        };
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or_default();
        let _ = write!(
            out,
            "\n## {} (`{}/{}`)\n\n{}\n",
            crd.spec.names.kind,
            crd.spec.group,
            version.name,
            one_line(&schema["description"])
        );
        for part in ["spec", "status"] {
            let _ = write!(
                out,
                "\n### `{part}`\n\n| field | type | default | description |\n|---|---|---|---|\n"
            );
            rows(&schema["properties"][part], part, &mut out);
        }
    }
    out
}

fn one_line(description: &Value) -> String {
    description
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn type_of(schema: &Value) -> String {
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", type_of(&schema["items"])),
        Some("object")
            if schema.get("properties").is_none() && schema["additionalProperties"].is_object() =>
        {
            format!("map[string]{}", type_of(&schema["additionalProperties"]))
        }
        Some(t) => t.to_string(),
        None if schema["x-kubernetes-int-or-string"] == true => "int or string".into(),
        None => "any".into(),
    }
}

/// Rows for the properties under `schema`, depth first. Kubernetes' own types
/// (ResourceRequirements, Affinity, Condition, …) stop at their top level: their
/// reference is Kubernetes' documentation.
fn rows(schema: &Value, path: &str, out: &mut String) {
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    for (name, prop) in props {
        let here = format!("{path}.{name}");
        let default = prop
            .get("default")
            .map(|d| format!("`{d}`"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{here}` | {} | {default} | {} |",
            type_of(prop),
            one_line(&prop["description"]).replace('|', "\\|")
        );
        if !is_kubernetes_type(name) {
            rows(prop, &here, out);
            if prop["type"] == "array" {
                rows(&prop["items"], &format!("{here}[]"), out);
            }
        }
    }
}

fn is_kubernetes_type(field: &str) -> bool {
    matches!(
        field,
        "resources" | "affinity" | "tolerations" | "conditions" | "secretRef" | "pushSecretRef"
    )
}
