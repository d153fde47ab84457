//! Ready endpoints of a Pool's Service, counted across its EndpointSlices.

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label the EndpointSlice controller puts on the slices of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Number of ready endpoints in `slices`. Per the EndpointSlice API, a missing `ready`
/// condition means "unknown", which consumers treat as ready.
pub fn ready_endpoints<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> i32 {
    let count = slices
        .into_iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .count();
    i32::try_from(count).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    fn endpoint(ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec!["10.0.0.1".into()],
            conditions: Some(EndpointConditions {
                ready,
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        }
    }

    fn slice(endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn counts_ready_endpoints_across_slices() {
        let slices = [
            slice(vec![endpoint(Some(true)), endpoint(Some(false))]),
            slice(vec![endpoint(Some(true)), endpoint(None)]),
            slice(vec![]),
        ];
        assert_eq!(ready_endpoints(&slices), 3);
    }

    #[test]
    fn no_slices_means_no_endpoints() {
        assert_eq!(ready_endpoints(&[]), 0);
    }
}
