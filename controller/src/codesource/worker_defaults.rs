//! Worker pod defaults set once for the whole controller (Helm values `worker.*`,
//! flags `--worker-resources`, `--worker-node-selector`, `--worker-tolerations`), and
//! how a CodeSource's `spec.job` overrides them.
//!
//! Precedence, field by field: a field that `spec.job` sets wins whole (it replaces the
//! default, it is not merged into it); a field it leaves unset takes the default.
//! "Unset" is `resources` absent, `nodeSelector` empty, `tolerations` empty. So a
//! CodeSource may set `resources: {}` to run without any requests or limits, but it
//! cannot drop a default node selector or toleration except by naming its own.
//!
//! The flag values are JSON (what the chart renders with `toJson`); `null`, `{}` and
//! `[]` mean "no default". They are checked when the controller starts, so a typo in
//! the Helm values stops the controller with the flag's name instead of failing every
//! Job at admission.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use openvox_crds::codesource::JobSpec;

/// Defaults for every worker pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerDefaults {
    /// Resources of the worker container; `None`: none.
    pub resources: Option<ResourceRequirements>,
    /// Node labels the worker pod must match.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the worker pod.
    pub tolerations: Vec<Toleration>,
    /// `--log-format` of the worker (`text`, `json`): the controller's own, so one log
    /// pipeline reads both. `None`: the worker's default.
    pub log_format: Option<&'static str>,
}

/// `--worker-resources` parsed; `None` when the value sets no request and no limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources(pub Option<ResourceRequirements>);

/// `--worker-node-selector` parsed (a newtype so clap does not read a map as a list).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSelector(pub BTreeMap<String, String>);

/// `--worker-tolerations` parsed (a newtype so clap takes one JSON list, not many flags).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tolerations(pub Vec<Toleration>);

/// `spec.job` with the defaults filled in where it leaves a field unset (see the
/// module documentation for the precedence).
pub fn effective_job(spec: &JobSpec, defaults: &WorkerDefaults) -> JobSpec {
    let mut out = spec.clone();
    if out.resources.is_none() {
        out.resources.clone_from(&defaults.resources);
    }
    if out.node_selector.is_empty() {
        out.node_selector.clone_from(&defaults.node_selector);
    }
    if out.tolerations.is_empty() {
        out.tolerations.clone_from(&defaults.tolerations);
    }
    out
}

fn is_null_or_blank(s: &str) -> bool {
    let t = s.trim();
    t.is_empty() || t == "null"
}

/// Parses `--worker-resources`: a `ResourceRequirements` as JSON, quantities checked.
pub fn parse_resources(s: &str) -> Result<Resources, String> {
    if is_null_or_blank(s) {
        return Ok(Resources(None));
    }
    let r: ResourceRequirements = serde_json::from_str(s).map_err(|e| {
        format!(r#"not a resources object ({e}); expected JSON like {{"requests":{{"cpu":"500m","memory":"512Mi"}},"limits":{{"memory":"2Gi"}}}}"#)
    })?;
    for (field, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (name, q) in map.iter().flatten() {
            if !is_quantity(q) {
                return Err(format!(
                    "{field}.{name}: {:?} is not a Kubernetes quantity (like 500m, 2, 512Mi, 1G)",
                    q.0
                ));
            }
        }
    }
    if r.claims.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err("claims: dynamic resource claims cannot be a worker default".into());
    }
    let empty = r.requests.as_ref().is_none_or(BTreeMap::is_empty)
        && r.limits.as_ref().is_none_or(BTreeMap::is_empty);
    Ok(Resources((!empty).then_some(r)))
}

/// Parses `--worker-node-selector`: a JSON object of label → value.
pub fn parse_node_selector(s: &str) -> Result<NodeSelector, String> {
    if is_null_or_blank(s) {
        return Ok(NodeSelector::default());
    }
    let map: BTreeMap<String, String> = serde_json::from_str(s).map_err(|e| {
        format!(r#"not a map of node labels ({e}); expected JSON like {{"pool":"builds"}}"#)
    })?;
    if let Some(k) = map.keys().find(|k| k.trim().is_empty()) {
        return Err(format!("empty label name {k:?}"));
    }
    Ok(NodeSelector(map))
}

/// Parses `--worker-tolerations`: a JSON list of tolerations, operators and effects
/// checked.
pub fn parse_tolerations(s: &str) -> Result<Tolerations, String> {
    if is_null_or_blank(s) {
        return Ok(Tolerations::default());
    }
    let list: Vec<Toleration> = serde_json::from_str(s).map_err(|e| {
        format!(
            r#"not a list of tolerations ({e}); expected JSON like [{{"key":"builds","operator":"Exists","effect":"NoSchedule"}}]"#
        )
    })?;
    for (i, t) in list.iter().enumerate() {
        match t.operator.as_deref() {
            None | Some("Equal" | "Exists") => {}
            Some(other) => {
                return Err(format!("[{i}].operator: {other:?} is not Equal or Exists"));
            }
        }
        if t.operator.as_deref() == Some("Exists")
            && t.value.as_deref().is_some_and(|v| !v.is_empty())
        {
            return Err(format!("[{i}]: operator Exists takes no value"));
        }
        match t.effect.as_deref() {
            None | Some("" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") => {}
            Some(other) => {
                return Err(format!(
                    "[{i}].effect: {other:?} is not NoSchedule, PreferNoSchedule or NoExecute"
                ));
            }
        }
        if t.key.as_deref().is_none_or(str::is_empty) && t.operator.as_deref() != Some("Exists") {
            return Err(format!(
                "[{i}]: a toleration without a key needs operator Exists"
            ));
        }
    }
    Ok(Tolerations(list))
}

/// A Kubernetes quantity: a signed decimal number with an optional exponent or a
/// binary/decimal SI suffix (the grammar of apimachinery's `resource.Quantity`).
fn is_quantity(q: &Quantity) -> bool {
    let s = q.0.as_str();
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let valid_number = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let valid_suffix = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    valid_number && valid_suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> WorkerDefaults {
        WorkerDefaults {
            resources: parse_resources(
                r#"{"requests":{"cpu":"500m","memory":"512Mi"},"limits":{"memory":"2Gi"}}"#,
            )
            .unwrap()
            .0,
            node_selector: parse_node_selector(r#"{"pool":"builds"}"#).unwrap().0,
            tolerations: parse_tolerations(
                r#"[{"key":"builds","operator":"Exists","effect":"NoSchedule"}]"#,
            )
            .unwrap()
            .0,
            log_format: None,
        }
    }

    fn job(v: serde_json::Value) -> JobSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn given_an_empty_spec_job_every_default_applies() {
        let got = effective_job(&job(serde_json::json!({})), &defaults());
        let d = defaults();
        assert_eq!(got.resources, d.resources);
        assert_eq!(got.node_selector, d.node_selector);
        assert_eq!(got.tolerations, d.tolerations);
    }

    #[test]
    fn given_fields_in_spec_job_each_replaces_its_default_and_only_that_one() {
        let got = effective_job(
            &job(serde_json::json!({"resources": {"requests": {"cpu": "2"}}})),
            &defaults(),
        );
        let requests = got.resources.as_ref().unwrap().requests.clone().unwrap();
        assert_eq!(
            requests.len(),
            1,
            "replaced whole, not merged: {requests:?}"
        );
        assert_eq!(requests["cpu"].0, "2");
        assert!(got.resources.unwrap().limits.is_none());
        assert_eq!(got.node_selector, defaults().node_selector);

        let got = effective_job(
            &job(serde_json::json!({"nodeSelector": {"disk": "ssd"},
                                    "tolerations": [{"operator": "Exists"}]})),
            &defaults(),
        );
        assert_eq!(got.node_selector.len(), 1);
        assert_eq!(got.node_selector["disk"], "ssd");
        assert_eq!(got.tolerations.len(), 1);
        assert_eq!(got.tolerations[0].key, None);
        assert_eq!(got.resources, defaults().resources);
    }

    #[test]
    fn given_empty_resources_in_spec_job_the_pod_runs_without_any() {
        let got = effective_job(&job(serde_json::json!({"resources": {}})), &defaults());
        assert_eq!(got.resources, Some(ResourceRequirements::default()));
    }

    #[test]
    fn given_no_defaults_spec_job_is_unchanged() {
        let spec = job(serde_json::json!({"priorityClassName": "low", "backoffLimit": 1}));
        assert_eq!(effective_job(&spec, &WorkerDefaults::default()), spec);
    }

    #[test]
    fn the_charts_empty_values_mean_no_default() {
        assert_eq!(parse_resources("{}").unwrap().0, None);
        assert_eq!(parse_resources("null").unwrap().0, None);
        assert_eq!(parse_resources(r#"{"requests":{}}"#).unwrap().0, None);
        assert!(parse_node_selector("{}").unwrap().0.is_empty());
        assert!(parse_node_selector("null").unwrap().0.is_empty());
        assert!(parse_tolerations("[]").unwrap().0.is_empty());
        assert!(parse_tolerations("").unwrap().0.is_empty());
    }

    #[test]
    fn wrong_values_are_refused_with_what_is_wrong() {
        let cases: [(Result<(), String>, &str); 8] = [
            (
                parse_resources("cpu=1").map(|_| ()),
                "not a resources object",
            ),
            (
                parse_resources(r#"{"requests":{"cpu":"half"}}"#).map(|_| ()),
                "requests.cpu",
            ),
            (
                parse_resources(r#"{"limits":{"memory":"2GB"}}"#).map(|_| ()),
                "limits.memory",
            ),
            (
                parse_node_selector(r#"["pool"]"#).map(|_| ()),
                "node labels",
            ),
            (
                parse_tolerations(r#"{"key":"a"}"#).map(|_| ()),
                "list of tolerations",
            ),
            (
                parse_tolerations(r#"[{"key":"a","operator":"In"}]"#).map(|_| ()),
                "[0].operator",
            ),
            (
                parse_tolerations(r#"[{"key":"a","effect":"NoRun"}]"#).map(|_| ()),
                "[0].effect",
            ),
            (
                parse_tolerations(r#"[{"value":"x"}]"#).map(|_| ()),
                "without a key",
            ),
        ];
        for (got, want) in cases {
            let e = got.unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for ok in [
            "1",
            "500m",
            "0.5",
            ".5",
            "2Gi",
            "1e3",
            "1E-2",
            "+1",
            "128974848",
            "129M",
        ] {
            assert!(is_quantity(&Quantity(ok.into())), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "2GB", "1 Gi", "half", "1e", "Gi"] {
            assert!(!is_quantity(&Quantity(bad.into())), "{bad}");
        }
    }
}
