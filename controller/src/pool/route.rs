//! The Gateway API TLSRoute of a Pool (`gateway.networking.k8s.io/v1`), built as a
//! dynamic object so the controller runs, and says so, on clusters without the CRD.

use kube::Resource;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use openvox_crds::Pool;
use openvox_crds::names::labels;
use serde_json::json;

/// API group of the Gateway API.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Name of the TLSRoute CRD whose presence turns routes on.
pub const TLSROUTE_CRD: &str = "tlsroutes.gateway.networking.k8s.io";

/// The TLSRoute kind, as served since Gateway API v1.5.
pub fn tlsroute_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GATEWAY_GROUP, "v1", "TLSRoute"),
        "tlsroutes",
    )
}

/// The route a Pool wants, or `None` when its route is disabled or incomplete (the CRD
/// rules reject an enabled route without hostname or gateway, so `None` here means
/// "no route").
pub fn desired_route(pool: &Pool) -> Option<DynamicObject> {
    let route = pool.spec.route.as_ref().filter(|r| r.enabled)?;
    let hostname = route.hostname.as_deref().filter(|h| !h.is_empty())?;
    let gateway = route.gateway_ref.as_ref().filter(|g| !g.name.is_empty())?;
    let name = pool.metadata.name.clone()?;

    let mut parent = json!({"name": gateway.name});
    if let Some(section) = gateway.section_name.as_deref().filter(|s| !s.is_empty()) {
        parent["sectionName"] = json!(section);
    }
    let mut object = DynamicObject::new(&name, &tlsroute_resource()).data(json!({
        "spec": {
            "parentRefs": [parent],
            "hostnames": [hostname],
            "rules": [{"backendRefs": [{"name": name, "port": pool.spec.service.port}]}],
        }
    }));
    object.metadata.namespace = pool.metadata.namespace.clone();
    object.metadata.labels = Some(
        [
            (
                labels::NAME.to_string(),
                labels::OPENVOX_NAME_VALUE.to_string(),
            ),
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
            (labels::pool(&name), labels::POOL_MEMBER_VALUE.to_string()),
        ]
        .into(),
    );
    object.metadata.owner_references = pool.controller_owner_ref(&()).map(|o| vec![o]);
    Some(object)
}

/// Whether `object` is controlled by `pool` (same UID in a controller owner reference):
/// only such routes may be deleted when the route is turned off.
pub fn is_controlled_by(object: &DynamicObject, pool: &Pool) -> bool {
    let uid = pool.metadata.uid.as_deref();
    object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openvox_crds::PoolSpec;
    use openvox_crds::pool::{GatewayRef, PoolRouteSpec};

    fn pool(route: Option<PoolRouteSpec>) -> Pool {
        let mut pool = Pool::new(
            "puppet",
            PoolSpec {
                route,
                ..PoolSpec::default()
            },
        );
        pool.metadata.namespace = Some("ns".into());
        pool.metadata.uid = Some("uid-1".into());
        pool
    }

    fn enabled(section: Option<&str>) -> PoolRouteSpec {
        PoolRouteSpec {
            enabled: true,
            hostname: Some("puppet.example.com".into()),
            gateway_ref: Some(GatewayRef {
                name: "gw".into(),
                section_name: section.map(Into::into),
            }),
            inject_dns_alt_name: false,
        }
    }

    #[test]
    fn enabled_route_points_the_hostname_at_the_pool_service() {
        let route = desired_route(&pool(Some(enabled(None)))).unwrap();
        assert_eq!(route.metadata.name.as_deref(), Some("puppet"));
        assert_eq!(
            route.types.as_ref().unwrap().api_version,
            "gateway.networking.k8s.io/v1"
        );
        assert_eq!(
            route.data["spec"],
            json!({
                "parentRefs": [{"name": "gw"}],
                "hostnames": ["puppet.example.com"],
                "rules": [{"backendRefs": [{"name": "puppet", "port": 8140}]}],
            })
        );
        assert!(is_controlled_by(&route, &pool(None)));
    }

    #[test]
    fn section_name_and_custom_port_are_carried() {
        let mut p = pool(Some(enabled(Some("tls"))));
        p.spec.service.port = 443;
        let route = desired_route(&p).unwrap();
        assert_eq!(route.data["spec"]["parentRefs"][0]["sectionName"], "tls");
        assert_eq!(
            route.data["spec"]["rules"][0]["backendRefs"][0]["port"],
            443
        );
    }

    #[test]
    fn disabled_or_missing_route_wants_nothing() {
        assert!(desired_route(&pool(None)).is_none());
        let mut off = enabled(None);
        off.enabled = false;
        assert!(desired_route(&pool(Some(off))).is_none());
    }

    #[test]
    fn a_route_owned_by_another_pool_is_not_ours() {
        let route = desired_route(&pool(Some(enabled(None)))).unwrap();
        let mut other = pool(None);
        other.metadata.uid = Some("uid-2".into());
        assert!(!is_controlled_by(&route, &other));
    }
}
