//! The Pool status and conditions: a pure function of what the reconcile saw.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use openvox_crds::names::{conditions, reasons};

use crate::conditions::{ConditionFacts, is_true};

/// What one reconcile found out, reduced to what the status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Ready endpoints behind the Service.
    pub endpoints: i32,
    /// State of the route.
    pub route: RouteState,
}

/// Where the Pool's route stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteState {
    /// No route is wanted.
    Disabled,
    /// The TLSRoute is applied.
    Applied,
    /// The Gateway API CRDs are not installed, so no route could be made.
    GatewayApiMissing,
    /// Another, older Pool owns the hostname.
    Conflict { hostname: String, owner: String },
}

/// The conditions that describe `observed`. `Ready` is true when endpoints are
/// available and the route (if wanted) is in place; `HostnameConflict` is present only
/// while the Pool loses its hostname (abnormal-true).
pub fn pool_conditions(observed: &Observed) -> Vec<ConditionFacts> {
    let mut out = Vec::new();
    let ready = match &observed.route {
        RouteState::Conflict { hostname, owner } => (
            "False",
            reasons::HOSTNAME_CONFLICT,
            format!("hostname {hostname} is owned by the older Pool {owner}; no route is created"),
        ),
        _ if observed.endpoints == 0 => (
            "False",
            reasons::NO_ENDPOINTS,
            "the Service has no ready endpoints: no Server that joins this Pool is ready".into(),
        ),
        _ => (
            "True",
            reasons::ENDPOINTS_AVAILABLE,
            format!("{} ready endpoint(s)", observed.endpoints),
        ),
    };
    out.push((conditions::READY, ready.0, ready.1, ready.2));

    let route = match &observed.route {
        RouteState::Disabled => (
            "True",
            reasons::ROUTE_DISABLED,
            "no route is wanted".to_string(),
        ),
        RouteState::Applied => ("True", reasons::SUCCEEDED, "TLSRoute is applied".into()),
        RouteState::GatewayApiMissing => (
            "False",
            reasons::GATEWAY_API_MISSING,
            "the Gateway API TLSRoute CRD is not installed; the route is created once it is".into(),
        ),
        RouteState::Conflict { hostname, owner } => (
            "False",
            reasons::HOSTNAME_CONFLICT,
            format!("hostname {hostname} is owned by Pool {owner}"),
        ),
    };
    out.push((conditions::ROUTE_READY, route.0, route.1, route.2));

    if let RouteState::Conflict { hostname, owner } = &observed.route {
        out.push((
            conditions::HOSTNAME_CONFLICT,
            "True",
            reasons::HOSTNAME_CONFLICT,
            format!("hostname {hostname} is owned by the older Pool {owner}"),
        ));
    }
    out
}

/// Whether the stored conditions say the Pool currently loses a hostname conflict.
pub fn in_conflict(conditions: &[Condition]) -> bool {
    is_true(conditions, conditions::HOSTNAME_CONFLICT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(facts: &'a [ConditionFacts], type_: &str) -> Option<&'a ConditionFacts> {
        facts.iter().find(|c| c.0 == type_)
    }

    #[test]
    fn endpoints_and_an_applied_route_make_the_pool_ready() {
        let facts = pool_conditions(&Observed {
            endpoints: 2,
            route: RouteState::Applied,
        });
        assert_eq!(find(&facts, "Ready").unwrap().1, "True");
        assert_eq!(find(&facts, "RouteReady").unwrap().1, "True");
        assert!(find(&facts, "HostnameConflict").is_none());
    }

    #[test]
    fn no_endpoints_is_not_ready() {
        let facts = pool_conditions(&Observed {
            endpoints: 0,
            route: RouteState::Disabled,
        });
        let ready = find(&facts, "Ready").unwrap();
        assert_eq!((ready.1, ready.2), ("False", "NoEndpoints"));
    }

    #[test]
    fn a_lost_conflict_names_the_owner() {
        let facts = pool_conditions(&Observed {
            endpoints: 3,
            route: RouteState::Conflict {
                hostname: "h".into(),
                owner: "old".into(),
            },
        });
        let ready = find(&facts, "Ready").unwrap();
        assert_eq!((ready.1, ready.2), ("False", "HostnameConflict"));
        assert!(find(&facts, "HostnameConflict").unwrap().3.contains("old"));
    }

    #[test]
    fn a_missing_gateway_api_is_reported_on_the_route() {
        let facts = pool_conditions(&Observed {
            endpoints: 1,
            route: RouteState::GatewayApiMissing,
        });
        assert_eq!(find(&facts, "Ready").unwrap().1, "True");
        assert_eq!(find(&facts, "RouteReady").unwrap().2, "GatewayAPIMissing");
    }
}
