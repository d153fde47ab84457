//! Who reconciles Pools: openvox-operator's own Pool controller always runs wherever
//! the operator is installed, and two controllers writing one Service rewrite it in a
//! loop (measured: about 20 writes a second). These pure decisions keep ours out of
//! the way without the user having to know:
//!
//! - by kind: in `auto` mode our Pool controller runs only while the installed Pool
//!   CRD is ours (labelled by `crdgen`); the operator's chart installs its own;
//! - by Pool: even on our CRD (the operator installed after us keeps it), a Pool whose
//!   Service carries another controller's `app.kubernetes.io/managed-by` is left alone;
//! - by schema: where ours runs on a CRD that is not ours, status writes carry only the
//!   fields that CRD declares (the operator's Pool status has no `conditions`, and the
//!   API server answers a server-side apply of undeclared fields with HTTP 500).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use openvox_crds::names::{VERSION, labels};
use serde_json::Value;

/// Name of the Pool CRD, ours or openvox-operator's.
pub const POOL_CRD: &str = "pools.openvox.voxpupuli.org";

/// When the Pool controller runs (`--enable-pool`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PoolControllerMode {
    /// Only while the installed Pool CRD is ours.
    #[default]
    Auto,
    /// On any Pool CRD.
    On,
    /// Never.
    Off,
}

impl FromStr for PoolControllerMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "true" => Ok(Self::On),
            "false" => Ok(Self::Off),
            other => Err(format!("{other:?} is not one of auto, true, false")),
        }
    }
}

/// Whose Pool CRD is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdOwner {
    /// Ours (labelled `app.kubernetes.io/part-of=openvox-code`).
    Ours,
    /// Someone else's: openvox-operator's, as its chart installs it.
    Foreign,
    /// No Pool CRD at all.
    Missing,
}

/// Whose the installed Pool CRD is.
pub fn crd_owner(crd: Option<&CustomResourceDefinition>) -> CrdOwner {
    match crd {
        None => CrdOwner::Missing,
        Some(crd) if openvox_crds::crd::is_ours(crd) => CrdOwner::Ours,
        Some(_) => CrdOwner::Foreign,
    }
}

/// Whether our Pool controller runs, given the mode and the installed CRD.
pub fn runs(mode: PoolControllerMode, owner: CrdOwner) -> bool {
    match mode {
        PoolControllerMode::Off => false,
        PoolControllerMode::On => owner != CrdOwner::Missing,
        PoolControllerMode::Auto => owner == CrdOwner::Ours,
    }
}

/// Why the Pool controller does not run, in words for the log and the Event.
pub fn standing_aside_message(mode: PoolControllerMode, owner: CrdOwner) -> String {
    match (mode, owner) {
        (PoolControllerMode::Off, _) => {
            "the Pool controller is turned off (--enable-pool=false)".into()
        }
        (_, CrdOwner::Missing) => format!(
            "no Pool CRD ({POOL_CRD}) is installed; the Pool controller starts when one of openvox-code's is"
        ),
        (_, _) => format!(
            "Pools are managed by another controller: the installed {POOL_CRD} is not openvox-code's \
             (no label {}={}), so it is openvox-operator's, whose own Pool controller always runs. \
             openvox-code writes no Pool Service, TLSRoute, Certificate or status \
             (--enable-pool=true runs it anyway)",
            labels::PART_OF,
            labels::PART_OF_VALUE
        ),
    }
}

/// The other controller managing a Pool's Service, from the Service's labels: its
/// `app.kubernetes.io/managed-by` when that is neither ours nor a value the Pool's own
/// `spec.service.labels` put there (user labels win over ours, so a user may set it).
pub fn foreign_manager<'a>(
    service_labels: &'a BTreeMap<String, String>,
    pool_labels: &BTreeMap<String, String>,
) -> Option<&'a str> {
    let manager = service_labels.get(labels::MANAGED_BY)?;
    let from_user = pool_labels.get(labels::MANAGED_BY) == Some(manager);
    (manager != labels::MANAGED_BY_VALUE && !from_user).then_some(manager.as_str())
}

/// The status fields the CRD's schema declares (version `v1alpha1`), or `None` when
/// any field is accepted (no schema, or `x-kubernetes-preserve-unknown-fields`).
pub fn declared_status_fields(crd: &CustomResourceDefinition) -> Option<BTreeSet<String>> {
    let version = crd.spec.versions.iter().find(|v| v.name == VERSION)?;
    let status = version
        .schema
        .as_ref()?
        .open_api_v3_schema
        .as_ref()?
        .properties
        .as_ref()?
        .get("status")?;
    if status.x_kubernetes_preserve_unknown_fields == Some(true) {
        return None;
    }
    Some(
        status
            .properties
            .as_ref()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default(),
    )
}

/// `status` (a JSON object) with only the `declared` fields; all of it when `None`.
pub fn only_declared(mut status: Value, declared: Option<&BTreeSet<String>>) -> Value {
    if let (Some(declared), Some(map)) = (declared, status.as_object_mut()) {
        map.retain(|k, _| declared.contains(k));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(labels: Value, status: Value) -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": POOL_CRD, "labels": labels},
            "spec": {
                "group": "openvox.voxpupuli.org",
                "names": {"kind": "Pool", "plural": "pools"},
                "scope": "Namespaced",
                "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object",
                        "properties": {"status": status}}}}]
            }
        }))
        .unwrap()
    }

    /// The status of openvox-operator's Pool CRD: two fields only.
    fn operator_status() -> Value {
        json!({"type": "object", "properties": {
            "serviceName": {"type": "string"}, "endpoints": {"type": "integer"}}})
    }

    #[test]
    fn auto_runs_only_on_our_crd_and_on_runs_on_any() {
        let ours = crd_owner(Some(&openvox_crds::crd::all()[1].1));
        assert_eq!(ours, CrdOwner::Ours);
        let foreign = crd_owner(Some(&crd(json!({}), operator_status())));
        assert_eq!(foreign, CrdOwner::Foreign);
        assert_eq!(crd_owner(None), CrdOwner::Missing);

        use PoolControllerMode::*;
        let table = [
            (Auto, CrdOwner::Ours, true),
            (Auto, CrdOwner::Foreign, false),
            (Auto, CrdOwner::Missing, false),
            (On, CrdOwner::Ours, true),
            (On, CrdOwner::Foreign, true),
            (On, CrdOwner::Missing, false),
            (Off, CrdOwner::Ours, false),
            (Off, CrdOwner::Foreign, false),
        ];
        for (mode, owner, want) in table {
            assert_eq!(runs(mode, owner), want, "{mode:?} on {owner:?}");
        }
        assert!(standing_aside_message(Auto, CrdOwner::Foreign).contains("another controller"));
    }

    #[test]
    fn the_mode_flag_takes_auto_true_and_false() {
        assert_eq!("auto".parse(), Ok(PoolControllerMode::Auto));
        assert_eq!("true".parse(), Ok(PoolControllerMode::On));
        assert_eq!("false".parse(), Ok(PoolControllerMode::Off));
        assert!("yes".parse::<PoolControllerMode>().is_err());
    }

    #[test]
    fn a_service_labelled_by_another_manager_is_theirs_unless_the_pool_asked_for_it() {
        let labels = |m: &str| BTreeMap::from([(labels::MANAGED_BY.to_string(), m.to_string())]);
        let none = BTreeMap::new();
        assert_eq!(
            foreign_manager(&labels("openvox-operator"), &none),
            Some("openvox-operator")
        );
        assert_eq!(foreign_manager(&labels("openvox-code"), &none), None);
        assert_eq!(foreign_manager(&none, &none), None);
        // The Pool's spec.service.labels set it: our own apply wrote it.
        assert_eq!(foreign_manager(&labels("team-a"), &labels("team-a")), None);
    }

    #[test]
    fn status_writes_keep_only_what_the_schema_declares() {
        let declared = declared_status_fields(&crd(json!({}), operator_status())).unwrap();
        assert_eq!(
            declared,
            BTreeSet::from(["endpoints".to_string(), "serviceName".to_string()])
        );
        let status = json!({"observedGeneration": 2, "serviceName": "p", "endpoints": 1,
                            "conditions": [{"type": "Ready"}]});
        assert_eq!(
            only_declared(status.clone(), Some(&declared)),
            json!({"serviceName": "p", "endpoints": 1})
        );
        assert_eq!(only_declared(status.clone(), None), status);
        // Our own CRD declares everything we write.
        let ours = declared_status_fields(&openvox_crds::crd::all()[1].1).unwrap();
        assert!(ours.contains("conditions") && ours.contains("observedGeneration"));
        // A status that keeps unknown fields takes anything.
        let open = crd(
            json!({}),
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        assert_eq!(declared_status_fields(&open), None);
    }
}
