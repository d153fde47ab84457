//! `injectDNSAltName`: which route hostnames belong on which Certificate, and how to
//! merge them into `spec.dnsAltNames` without touching names someone else put there.
//!
//! The wanted names are derived for the whole namespace at once (every Pool that owns
//! its hostname and asks for injection, through every Server that joins it), so one
//! apply per Certificate carries every Pool's names and none overwrites another's.

use std::collections::{BTreeMap, BTreeSet};

use openvox_crds::Pool;
use openvox_crds::operator::Server;

use super::hostname::{claimed_hostname, hostname_owner};

/// Hostnames to inject, by Certificate name.
pub type Injections = BTreeMap<String, BTreeSet<String>>;

/// The route hostnames each Certificate should carry, derived from the Pools and
/// Servers of one namespace. A Pool that lost its hostname to an older Pool injects
/// nothing.
pub fn wanted_injections(pools: &[Pool], servers: &[Server]) -> Injections {
    let mut wanted = Injections::new();
    for pool in pools {
        let inject = pool
            .spec
            .route
            .as_ref()
            .is_some_and(|r| r.inject_dns_alt_name);
        let (Some(name), Some(hostname)) = (pool.metadata.name.as_deref(), claimed_hostname(pool))
        else {
            continue;
        };
        if !inject || hostname_owner(pools, hostname) != Some(name) {
            continue;
        }
        for server in servers
            .iter()
            .filter(|s| s.spec.pool_refs.iter().any(|r| r == name))
        {
            if !server.spec.certificate_ref.is_empty() {
                wanted
                    .entry(server.spec.certificate_ref.clone())
                    .or_default()
                    .insert(hostname.to_ascii_lowercase());
            }
        }
    }
    wanted
}

/// The full `dnsAltNames` list for a Certificate whose list is atomic: the current
/// names, minus those we injected before and no longer want, plus the wanted ones.
/// Names we did not inject are never removed; order is kept, new names go last.
pub fn merged_alt_names(
    current: &[String],
    injected_before: &BTreeSet<String>,
    wanted: &BTreeSet<String>,
) -> Vec<String> {
    let mut merged: Vec<String> = current
        .iter()
        .filter(|n| wanted.contains(*n) || !injected_before.contains(*n))
        .cloned()
        .collect();
    for name in wanted {
        if !merged.contains(name) {
            merged.push(name.clone());
        }
    }
    merged
}

/// Reads the record of injected names kept in an annotation (a JSON list). A missing
/// or unreadable record counts as "nothing injected", which never removes a name.
pub fn parse_record(annotation: Option<&str>) -> BTreeSet<String> {
    annotation
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default()
}

/// The annotation value recording `names`.
pub fn record(names: &BTreeSet<String>) -> String {
    serde_json::to_string(names).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use openvox_crds::PoolSpec;
    use openvox_crds::operator::ServerSpec;
    use openvox_crds::pool::PoolRouteSpec;

    fn pool(name: &str, created: i64, hostname: &str, inject: bool) -> Pool {
        let mut p = Pool::new(
            name,
            PoolSpec {
                route: Some(PoolRouteSpec {
                    enabled: true,
                    hostname: Some(hostname.into()),
                    inject_dns_alt_name: inject,
                    ..PoolRouteSpec::default()
                }),
                ..PoolSpec::default()
            },
        );
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        p
    }

    fn server(name: &str, cert: &str, pools: &[&str]) -> Server {
        Server::new(
            name,
            ServerSpec {
                config_ref: "c".into(),
                certificate_ref: cert.into(),
                pool_refs: pools.iter().map(|p| p.to_string()).collect(),
                ..ServerSpec::default()
            },
        )
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn hostnames_go_to_the_certificates_of_the_pool_members() {
        let pools = [
            pool("a", 1, "a.example.com", true),
            pool("b", 2, "b.example.com", true),
        ];
        let servers = [
            server("s1", "cert1", &["a"]),
            server("s2", "cert2", &["a", "b"]),
            server("s3", "cert3", &[]),
        ];
        let wanted = wanted_injections(&pools, &servers);
        assert_eq!(wanted["cert1"], set(&["a.example.com"]));
        assert_eq!(wanted["cert2"], set(&["a.example.com", "b.example.com"]));
        assert!(!wanted.contains_key("cert3"));
    }

    #[test]
    fn pools_without_injection_or_losing_a_conflict_inject_nothing() {
        let pools = [
            pool("old", 1, "h.example.com", false),
            pool("new", 2, "h.example.com", true),
        ];
        let servers = [server("s", "cert", &["old", "new"])];
        assert!(wanted_injections(&pools, &servers).is_empty());
    }

    #[test]
    fn merging_keeps_foreign_names_and_replaces_our_old_ones() {
        let current = vec!["own.example.com".into(), "old-route.example.com".into()];
        let merged = merged_alt_names(
            &current,
            &set(&["old-route.example.com"]),
            &set(&["new-route.example.com"]),
        );
        assert_eq!(merged, vec!["own.example.com", "new-route.example.com"]);
    }

    #[test]
    fn merging_never_removes_a_name_we_did_not_inject() {
        let current = vec!["shared.example.com".into()];
        let merged = merged_alt_names(&current, &set(&[]), &set(&[]));
        assert_eq!(merged, vec!["shared.example.com"]);
    }

    #[test]
    fn records_round_trip_and_garbage_reads_as_empty() {
        let names = set(&["a", "b"]);
        assert_eq!(parse_record(Some(&record(&names))), names);
        assert!(parse_record(Some("not json")).is_empty());
        assert!(parse_record(None).is_empty());
    }
}
