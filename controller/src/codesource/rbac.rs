//! Least privilege for the worker: per CodeSource a ServiceAccount, a Role that allows
//! reading that one CodeSource and patching only its status, and the RoleBinding
//! between them. All three are owned by the CodeSource and go with it.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use openvox_crds::CodeSource;
use openvox_crds::names::GROUP;

use super::job::worker_labels;
use super::names::worker_identity;

fn meta(cs: &CodeSource) -> ObjectMeta {
    ObjectMeta {
        name: Some(worker_identity(&cs.name_any())),
        namespace: cs.namespace(),
        labels: Some(worker_labels(&cs.name_any())),
        owner_references: cs.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The worker's ServiceAccount.
pub fn desired_service_account(cs: &CodeSource) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(cs),
        ..Default::default()
    }
}

/// The worker's Role: `get` on its CodeSource, `get`/`patch` on its status, by name.
pub fn desired_role(cs: &CodeSource) -> Role {
    let only_this = Some(vec![cs.name_any()]);
    Role {
        metadata: meta(cs),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![GROUP.into()]),
                resources: Some(vec!["codesources".into()]),
                resource_names: only_this.clone(),
                verbs: vec!["get".into()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec![GROUP.into()]),
                resources: Some(vec!["codesources/status".into()]),
                resource_names: only_this,
                verbs: vec!["get".into(), "patch".into()],
                ..Default::default()
            },
        ]),
    }
}

/// Binds the Role to the ServiceAccount.
pub fn desired_role_binding(cs: &CodeSource) -> RoleBinding {
    let name = worker_identity(&cs.name_any());
    RoleBinding {
        metadata: meta(cs),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: cs.namespace(),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codesource() -> CodeSource {
        let mut cs = CodeSource::new(
            "production",
            serde_json::from_value(serde_json::json!({
                "git": {"url": "https://g/r.git", "branches": ["production"]},
                "schedule": "@hourly",
                "output": {"image": "registry/code"}
            }))
            .unwrap(),
        );
        cs.metadata.namespace = Some("puppet".into());
        cs.metadata.uid = Some("uid-1".into());
        cs
    }

    #[test]
    fn the_role_allows_only_this_codesource_and_its_status() {
        let role = desired_role(&codesource());
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 2);
        for rule in &rules {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["production".to_string()][..])
            );
            assert_eq!(rule.api_groups.as_deref(), Some(&[GROUP.to_string()][..]));
            assert!(
                !rule
                    .verbs
                    .iter()
                    .any(|v| v == "*" || v == "delete" || v == "create")
            );
        }
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["codesources".to_string()][..])
        );
        assert_eq!(rules[0].verbs, ["get"]);
        assert_eq!(
            rules[1].resources.as_deref(),
            Some(&["codesources/status".to_string()][..])
        );
        assert_eq!(rules[1].verbs, ["get", "patch"]);
    }

    #[test]
    fn the_binding_ties_the_role_to_the_service_account_in_the_namespace() {
        let cs = codesource();
        let binding = desired_role_binding(&cs);
        let sa = desired_service_account(&cs);
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(
            binding.role_ref.name,
            desired_role(&cs).metadata.name.unwrap()
        );
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(Some(subject.name.clone()), sa.metadata.name);
        assert_eq!(subject.namespace.as_deref(), Some("puppet"));
    }

    #[test]
    fn all_three_are_owned_by_the_codesource() {
        let cs = codesource();
        for owners in [
            desired_service_account(&cs).metadata.owner_references,
            desired_role(&cs).metadata.owner_references,
            desired_role_binding(&cs).metadata.owner_references,
        ] {
            let owner = &owners.unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("CodeSource", "uid-1")
            );
        }
    }
}
