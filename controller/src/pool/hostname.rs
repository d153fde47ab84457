//! Who owns a route hostname when several Pools claim it: the oldest Pool, with the
//! name breaking ties. Terminating Pools and disabled routes claim nothing.

use openvox_crds::Pool;

/// The hostname `pool` claims, if its route is enabled and it is not being deleted.
pub fn claimed_hostname(pool: &Pool) -> Option<&str> {
    if pool.metadata.deletion_timestamp.is_some() {
        return None;
    }
    pool.spec
        .route
        .as_ref()
        .filter(|r| r.enabled)
        .and_then(|r| r.hostname.as_deref())
        .filter(|h| !h.is_empty())
}

/// The name of the Pool that owns `hostname` among `pools` (one namespace), if any.
pub fn hostname_owner<'a>(
    pools: impl IntoIterator<Item = &'a Pool>,
    hostname: &str,
) -> Option<&'a str> {
    pools
        .into_iter()
        .filter(|p| claimed_hostname(p).is_some_and(|h| h.eq_ignore_ascii_case(hostname)))
        .min_by(|a, b| {
            let key = |p: &'a Pool| {
                (
                    p.metadata.creation_timestamp.clone().map(|t| t.0),
                    p.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        })
        .and_then(|p| p.metadata.name.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use openvox_crds::PoolSpec;
    use openvox_crds::pool::PoolRouteSpec;

    fn pool(name: &str, created: i64, hostname: &str, enabled: bool) -> Pool {
        let mut p = Pool::new(
            name,
            PoolSpec {
                route: Some(PoolRouteSpec {
                    enabled,
                    hostname: Some(hostname.into()),
                    ..PoolRouteSpec::default()
                }),
                ..PoolSpec::default()
            },
        );
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        p
    }

    #[test]
    fn the_oldest_pool_wins() {
        let pools = [pool("new", 200, "h", true), pool("old", 100, "h", true)];
        assert_eq!(hostname_owner(&pools, "h"), Some("old"));
    }

    #[test]
    fn the_name_breaks_a_tie() {
        let pools = [pool("b", 100, "h", true), pool("a", 100, "h", true)];
        assert_eq!(hostname_owner(&pools, "h"), Some("a"));
    }

    #[test]
    fn disabled_and_terminating_pools_release_the_hostname() {
        let mut terminating = pool("old", 100, "h", true);
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(300).unwrap()));
        let pools = [
            terminating,
            pool("off", 50, "h", false),
            pool("next", 200, "h", true),
        ];
        assert_eq!(hostname_owner(&pools, "h"), Some("next"));
    }

    #[test]
    fn hostnames_compare_without_case_and_unclaimed_ones_have_no_owner() {
        let pools = [pool("a", 100, "Puppet.Example.com", true)];
        assert_eq!(hostname_owner(&pools, "puppet.example.com"), Some("a"));
        assert_eq!(hostname_owner(&pools, "other"), None);
    }
}
