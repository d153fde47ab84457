//! The controller's Kubernetes client, with every API request counted by verb,
//! resource and response code (`openvox_code_api_requests_total` on `/metrics`, the
//! counterpart of controller-runtime's `rest_client_requests_total`). The count is how
//! the scale benchmark measures the load the controller puts on the API server.

use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use kube::client::ClientBuilder;
use kube::{Client, Config};

use crate::metrics::Metrics;

/// An `Api` of a namespaced kind in `namespace`, or in all namespaces when `None`
/// (`--namespace` unset): the scope both controllers watch.
pub fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    }
}

/// Drops `managedFields` from an object before it goes into a watch cache: nothing here
/// reads them, and they are often the largest part of an object (the controller-runtime
/// default transform does the same). With 10,000 CodeSources this is tens of MiB.
pub fn strip_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Waits until `store` holds its first full listing. kube's own
/// `Store::wait_until_ready` wakes only one of several tasks waiting at once (measured:
/// of three reconciles started together two waited forever), so every waiter polls.
pub async fn store_ready<K>(store: &kube::runtime::reflector::Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while store.wait_until_ready().now_or_never().is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A client from the default configuration (in-cluster or `$KUBECONFIG`) whose
/// requests are counted in `metrics`.
pub async fn counted_client(metrics: Metrics) -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    counted_client_from(config, metrics)
}

/// A client from `config` whose requests are counted in `metrics`.
pub fn counted_client_from(config: Config, metrics: Metrics) -> Result<Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&CountRequestsLayer { metrics })
        .build())
}

/// Tower layer counting the requests that pass through it.
#[derive(Clone, Debug)]
pub struct CountRequestsLayer {
    metrics: Metrics,
}

impl<S> tower_layer::Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`CountRequestsLayer`].
#[derive(Clone, Debug)]
pub struct CountRequests<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> tower_service::Service<Request<B>> for CountRequests<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (verb, resource) = classify(
            request.method(),
            request.uri().path(),
            request.uri().query().unwrap_or(""),
        );
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        async move {
            let result = response.await;
            // A watch is counted once, when its response starts.
            let code = match &result {
                Ok(response) => response.status().as_str().to_owned(),
                Err(_) => "error".to_owned(),
            };
            metrics.api_request(verb, &resource, &code);
            result
        }
        .boxed()
    }
}

/// The Kubernetes verb and the resource (`jobs`, `codesources/status`, …) of a request,
/// from its method and path. Discovery and other non-resource paths are `""`.
/// Resource names never appear in the labels (they would not be low-cardinality).
pub fn classify(method: &Method, path: &str, query: &str) -> (&'static str, String) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[][..],
    };
    // namespaces/<ns>/<resource>/... names a namespaced resource; a bare `namespaces`
    // or `namespaces/<ns>` is the Namespace kind itself.
    let rest = match rest {
        ["namespaces", _ns, resource, tail @ ..] => {
            let mut v = vec![*resource];
            v.extend_from_slice(tail);
            v
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] => (String::new(), false),
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watch = query
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1");
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named || resource.is_empty() => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

/// Whether a `kube::Error` is the API server's 404.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Whether a `kube::Error` is the API server's 409 AlreadyExists/Conflict.
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_verb_and_resource() {
        let cases = [
            (
                Method::GET,
                "/api/v1/namespaces/a/secrets/git",
                "",
                "get",
                "secrets",
            ),
            (
                Method::GET,
                "/apis/batch/v1/namespaces/a/jobs",
                "labelSelector=x%3Dy",
                "list",
                "jobs",
            ),
            (
                Method::GET,
                "/apis/openvox.voxpupuli.org/v1alpha1/codesources",
                "watch=true&resourceVersion=5",
                "watch",
                "codesources",
            ),
            (
                Method::PATCH,
                "/apis/openvox.voxpupuli.org/v1alpha1/namespaces/a/codesources/x/status",
                "fieldManager=m&force=true",
                "patch",
                "codesources/status",
            ),
            (
                Method::POST,
                "/apis/batch/v1/namespaces/a/jobs",
                "",
                "create",
                "jobs",
            ),
            (
                Method::DELETE,
                "/apis/batch/v1/namespaces/a/jobs/j",
                "",
                "delete",
                "jobs",
            ),
            (Method::GET, "/api/v1/namespaces/a", "", "get", "namespaces"),
            (
                Method::GET,
                "/apis/gateway.networking.k8s.io/v1",
                "",
                "get",
                "",
            ),
            (Method::GET, "/version", "", "get", ""),
        ];
        for (method, path, query, verb, resource) in cases {
            assert_eq!(
                classify(&method, path, query),
                (verb, resource.to_owned()),
                "{method} {path}?{query}"
            );
        }
    }

    #[test]
    fn the_metric_counts_by_labels() {
        let metrics = Metrics::new();
        metrics.api_request("list", "jobs", "200");
        metrics.api_request("list", "jobs", "200");
        let text = metrics.encode();
        assert!(
            text.contains(
                "openvox_code_api_requests_total{verb=\"list\",resource=\"jobs\",code=\"200\"} 2"
            ),
            "{text}"
        );
    }
}
