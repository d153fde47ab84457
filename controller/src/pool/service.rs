//! The Service of a Pool: named after the Pool, selecting the pods of the Servers
//! that join it, one `https` port forwarding to the servers' 8140.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use openvox_crds::Pool;
use openvox_crds::names::labels;

/// Port the OpenVox servers listen on; openvox-operator hard-codes it too.
pub const SERVER_PORT: i32 = 8140;

/// Selector of the pods of every Server whose `poolRefs` name `pool`.
pub fn selector(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(labels::pool(pool), labels::POOL_MEMBER_VALUE.to_string())])
}

/// The Service a Pool wants, with only the fields we manage: server-side apply keeps
/// whatever Kubernetes or other managers own (cluster IP, an assigned node port).
pub fn desired_service(pool: &Pool) -> Service {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let spec = &pool.spec.service;

    let mut service_labels = BTreeMap::from([
        (
            labels::NAME.to_string(),
            labels::OPENVOX_NAME_VALUE.to_string(),
        ),
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (labels::pool(&name), labels::POOL_MEMBER_VALUE.to_string()),
    ]);
    // User labels win over ours, as in openvox-operator.
    service_labels.extend(spec.labels.clone());

    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(service_labels),
            annotations: (!spec.annotations.is_empty()).then(|| spec.annotations.clone()),
            owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().to_string()),
            selector: Some(selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                protocol: Some("TCP".into()),
                port: spec.port,
                target_port: Some(IntOrString::Int(SERVER_PORT)),
                // Unset keeps the port Kubernetes assigned; a node port on a ClusterIP
                // Service would be rejected, so it is only sent where it means something.
                node_port: spec.node_port.filter(|_| spec.type_.has_node_ports()),
                ..ServicePort::default()
            }]),
            external_ips: (!spec.external_ips.is_empty()).then(|| spec.external_ips.clone()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openvox_crds::PoolSpec;
    use openvox_crds::pool::{PoolServiceSpec, ServiceType};

    fn pool(service: PoolServiceSpec) -> Pool {
        let mut pool = Pool::new(
            "puppet",
            PoolSpec {
                service,
                route: None,
            },
        );
        pool.metadata.namespace = Some("ns".into());
        pool.metadata.uid = Some("uid-1".into());
        pool
    }

    #[test]
    fn service_is_named_after_the_pool_and_selects_its_members() {
        let svc = desired_service(&pool(PoolServiceSpec::default()));
        assert_eq!(svc.metadata.name.as_deref(), Some("puppet"));
        assert_eq!(svc.metadata.namespace.as_deref(), Some("ns"));
        let spec = svc.spec.unwrap();
        assert_eq!(
            spec.selector.unwrap(),
            BTreeMap::from([(
                "openvox.voxpupuli.org/pool-puppet".to_string(),
                "true".to_string()
            )])
        );
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("https"), 8140));
        assert_eq!(port.target_port, Some(IntOrString::Int(8140)));
        assert_eq!(port.node_port, None);
        let owner = &svc.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Pool", Some(true))
        );
    }

    #[test]
    fn user_labels_win_and_annotations_are_copied() {
        let svc = desired_service(&pool(PoolServiceSpec {
            labels: BTreeMap::from([
                ("app.kubernetes.io/name".to_string(), "custom".to_string()),
                ("team".to_string(), "infra".to_string()),
            ]),
            annotations: BTreeMap::from([("lb".to_string(), "internal".to_string())]),
            ..PoolServiceSpec::default()
        }));
        let labels = svc.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "custom");
        assert_eq!(labels["team"], "infra");
        assert_eq!(labels["openvox.voxpupuli.org/pool-puppet"], "true");
        assert_eq!(svc.metadata.annotations.unwrap()["lb"], "internal");
    }

    #[test]
    fn node_port_and_external_ips_are_passed_for_node_port_services() {
        let svc = desired_service(&pool(PoolServiceSpec {
            type_: ServiceType::NodePort,
            port: 443,
            node_port: Some(30140),
            external_ips: vec!["192.0.2.10".into()],
            ..PoolServiceSpec::default()
        }));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.external_ips.unwrap(), vec!["192.0.2.10".to_string()]);
        let port = &spec.ports.unwrap()[0];
        assert_eq!((port.port, port.node_port), (443, Some(30140)));
    }

    #[test]
    fn node_port_is_not_sent_for_cluster_ip_services() {
        let svc = desired_service(&pool(PoolServiceSpec {
            node_port: Some(30140),
            ..PoolServiceSpec::default()
        }));
        assert_eq!(svc.spec.unwrap().ports.unwrap()[0].node_port, None);
    }
}
