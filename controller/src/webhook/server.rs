//! The HTTP side of the webhook receiver: `POST /hook/<namespace>/<codesource>`.
//!
//! A request is answered in this order, each step with its own status:
//! body too large (413) or unreadable (400) → no known signature header (401) → the
//! CodeSource watch has not listed yet, in the first seconds of the process (503) → no such
//! CodeSource, or it has no usable webhook secret (404) → signature or token wrong
//! (403) → body not a push payload (400) → ping, tag push, other event, other
//! repository, unwatched branch, suspended (200, with the reason) → head check
//! requested (202). Other methods get 405, other paths 404.
//!
//! Before all that, an address with too many failed attempts in the last minute gets
//! 429 (see [`super::limiter`]). A forged hook costs no API request: CodeSources come
//! from a watch cache, webhook secrets from [`super::secrets`]. The server closes a
//! connection that has not sent its request head within [`HEADER_TIMEOUT`] or not
//! finished within [`CONNECTION_TIMEOUT`], and holds at most [`MAX_CONNECTIONS`] at
//! once (more are closed as they arrive).
//!
//! A check is requested by writing a new value into the CodeSource's
//! `openvox.voxpupuli.org/checkRequestedAt` annotation. Any replica can do that, leader
//! or not, so the Service may send hooks to every pod; the leading controller sees the
//! change, lists the heads afresh and builds only if they moved.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use futures::StreamExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use openvox_crds::CodeSource;
use openvox_crds::names::{WEBHOOK_SECRET_KEY, annotations};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::limiter::FailureLimiter;
use super::matching::{Verdict, verdict};
use super::payload::{Event, parse};
use super::secrets::{Cached, Key, SecretCache};
use super::signature::{AuthError, Provider, authenticate, usable_secret};
use crate::client::{scoped_api, strip_managed_fields};
use crate::metrics::Metrics;

/// Time a client has to send its request head after connecting.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one connection may stay open, whatever it does (a hook is one small request).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a hook that arrives before the CodeSource watch has listed waits for it.
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// Largest body accepted. Push payloads of the big hosts stay well below (GitHub caps
/// its own at 25 MB but lists at most 20 commits; a control repository push is a few
/// KiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Field manager of the annotation the receiver writes.
pub const FIELD_MANAGER: &str = "openvox-code-webhook";

/// What the receiver needs: an API client, the namespace limit of the controller, and
/// the metrics it counts into.
#[derive(Clone)]
pub struct WebhookState {
    client: Client,
    namespace: Option<String>,
    metrics: Metrics,
    /// The CodeSources, once [`serve`] has started their watch.
    codesources: Option<Store<CodeSource>>,
    secrets: Arc<SecretCache>,
    limiter: Arc<FailureLimiter>,
}

/// The client's address, set per connection by [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl WebhookState {
    /// A receiver for CodeSources of every namespace.
    pub fn new(client: Client, metrics: Metrics) -> Self {
        Self {
            client,
            namespace: None,
            metrics,
            codesources: None,
            secrets: Arc::default(),
            limiter: Arc::default(),
        }
    }

    /// Answers only for CodeSources in `namespace` (when `Some`), like the controller's
    /// `--namespace`.
    pub fn namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }
}

/// The receiver's routes.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/hook/{namespace}/{codesource}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the receiver on `listener` until `shutdown` resolves: watches the
/// CodeSources (of the namespace limit) for the answers, bounds every connection in
/// time and their number, and lets requests in flight finish on shutdown.
pub async fn serve(
    listener: TcpListener,
    mut state: WebhookState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (store, writer) = reflector::store();
    let codesources: Api<CodeSource> = scoped_api(&state.client, state.namespace.as_deref());
    let watch = reflector::reflector(
        writer,
        watcher(codesources, watcher::Config::default()).modify(strip_managed_fields),
    )
    .default_backoff()
    .for_each(|event| async move {
        if let Err(e) = event {
            warn!("webhook: watching CodeSources: {e}");
        }
    });
    state.codesources = Some(store);
    let app = router(state);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    tokio::pin!(shutdown);
    let watching = tokio::spawn(watch);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    warn!("webhook: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%addr, "webhook: {MAX_CONNECTIONS} connections open; closing a new one");
            drop(stream);
            continue;
        };
        let service =
            TowerToHyperService::new(app.clone().layer(Extension(ClientAddr(client_ip(addr)))));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                debug!(%addr, "webhook connection: {e}");
            }
            drop(permit);
        });
    }
    watching.abort();
    // Requests in flight finish (each connection is bounded in time anyway).
    graceful.shutdown().await;
    Ok(())
}

/// IPv4 clients seen through a dual-stack socket count as their IPv4 address.
fn client_ip(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

/// The answer to one request: status, a stable result label (metrics, JSON body) and a
/// message for the sender (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// `accepted`, `ignored`, `ping`, `unauthorized`, `forbidden`, `bad_request`,
    /// `not_found`, `too_large`, `rate_limited`, `unavailable` or `error`.
    pub result: &'static str,
    /// What happened, for the sender's delivery log.
    pub message: String,
}

impl Answer {
    fn new(status: StatusCode, result: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            result,
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn ignored(message: impl Into<String>) -> Self {
        Self::new(StatusCode::OK, "ignored", message)
    }
    /// Whether the answer counts as a failed attempt of the sender: no or wrong
    /// credentials, or a target that does not take hooks (probing).
    fn is_failure(&self) -> bool {
        matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        )
    }
    fn error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "the controller could not handle the hook; see its log",
        )
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let body = json!({"result": self.result, "message": self.message}).to_string();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

async fn receive(
    State(state): State<WebhookState>,
    client: Option<Extension<ClientAddr>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let provider = Provider::detect(&headers);
    let label = provider.map_or("unknown", Provider::label);
    let client = client.map(|Extension(ClientAddr(ip))| ip);
    if let Some(wait) = client.and_then(|ip| state.limiter.blocked(ip, Instant::now())) {
        state.metrics.webhook(label, "rate_limited");
        return Answer::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many failed attempts from this address; try again in {} s",
                wait.as_secs().max(1)
            ),
        );
    }
    let answer = handle(&state, &namespace, &name, provider, &headers, body).await;
    if answer.is_failure()
        && let Some(ip) = client
    {
        state.limiter.failed(ip, Instant::now());
    }
    state.metrics.webhook(label, answer.result);
    match answer.status {
        StatusCode::ACCEPTED => {}
        s if s.is_server_error() || s == StatusCode::FORBIDDEN => warn!(
            codesource = %format!("{namespace}/{name}"),
            provider = label,
            status = s.as_u16(),
            "webhook refused: {}",
            answer.message
        ),
        s => debug!(
            codesource = %format!("{namespace}/{name}"),
            provider = label,
            status = s.as_u16(),
            "webhook: {}",
            answer.message
        ),
    }
    answer
}

async fn handle(
    state: &WebhookState,
    namespace: &str,
    name: &str,
    provider: Option<Provider>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Answer::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            );
        }
        Err(rejection) => return Answer::bad_request(rejection.body_text()),
    };
    let Some(provider) = provider else {
        return Answer::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no signature: expected X-Hub-Signature-256 (GitHub), X-Gitea-Signature or \
             X-Forgejo-Signature, X-Gitlab-Token, or Authorization: Bearer",
        );
    };
    if state.namespace.as_deref().is_some_and(|ns| ns != namespace) {
        return Answer::not_found(format!("CodeSource {namespace}/{name} not found"));
    }

    let codesources: Api<CodeSource> = Api::namespaced(state.client.clone(), namespace);
    let cs = match find_codesource(state, namespace, name).await {
        Ok(Some(cs)) => cs,
        Ok(None) => return Answer::not_found(format!("CodeSource {namespace}/{name} not found")),
        Err(why) => {
            warn!(codesource = %format!("{namespace}/{name}"), "webhook: {why}");
            return Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{why}; try again"),
            );
        }
    };
    let Some(secret_ref) = cs.spec.webhook.as_ref().map(|w| &w.secret_ref) else {
        return Answer::not_found(format!(
            "CodeSource {namespace}/{name} has no webhook (spec.webhook.secretRef is not set)"
        ));
    };
    let key: Key = (namespace.to_owned(), secret_ref.name.clone());
    let (mut cached, just_read) = match webhook_secret(state, &key).await {
        Ok(found) => found,
        Err(e) => {
            warn!(codesource = %format!("{namespace}/{name}"), secret = %secret_ref.name, "webhook: cannot read the Secret: {e}");
            return Answer::error();
        }
    };
    // A hook that matches the cached secret is confirmed against the Secret as it is
    // now (a removed or changed secret stops working at once; a good hook costs one
    // read beside its patch). One that does not match reads it again only when the
    // cached copy is old enough (a rotated secret), so forged hooks cost nothing.
    if !just_read
        && (signature_matches(provider, headers, &body, &cached)
            || cached.worth_rereading(Instant::now()))
    {
        match read_secret(state, &key).await {
            Ok(fresh) => cached = fresh,
            Err(e) => {
                warn!(codesource = %format!("{namespace}/{name}"), secret = %secret_ref.name, "webhook: cannot read the Secret: {e}");
                return Answer::error();
            }
        }
    }
    let stored = match cached.value {
        Some(stored) => stored,
        None => {
            warn!(
                codesource = %format!("{namespace}/{name}"),
                secret = %secret_ref.name,
                "webhook: the Secret is missing or its key {WEBHOOK_SECRET_KEY:?} is absent or empty"
            );
            return Answer::not_found(format!(
                "CodeSource {namespace}/{name} has no usable webhook secret"
            ));
        }
    };
    let Some(secret) = usable_secret(&stored) else {
        warn!(
            codesource = %format!("{namespace}/{name}"),
            secret = %secret_ref.name,
            "webhook: the Secret's key {WEBHOOK_SECRET_KEY:?} is empty"
        );
        return Answer::not_found(format!(
            "CodeSource {namespace}/{name} has no usable webhook secret"
        ));
    };
    match authenticate(provider, headers, &body, secret) {
        Ok(()) => {}
        Err(e @ AuthError::Missing(_)) => {
            return Answer::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
        }
        Err(e @ AuthError::Mismatch(_)) => {
            return Answer::new(StatusCode::FORBIDDEN, "forbidden", e.to_string());
        }
    }

    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
    {
        return Answer::bad_request(
            "form-encoded bodies are not read: set the hook's content type to application/json",
        );
    }
    let push = match parse(provider, provider.event(headers), &body) {
        Ok(Event::Push(push)) => push,
        Ok(Event::Ping) => return Answer::new(StatusCode::OK, "ping", "pong"),
        Ok(Event::Ignored(reason)) => return Answer::ignored(reason),
        Err(e) => return Answer::bad_request(e.to_string()),
    };
    let floating: Vec<_> = cs
        .status
        .as_ref()
        .and_then(|s| s.last_build.as_ref())
        .map(|b| {
            b.environments
                .iter()
                .flat_map(|e| e.floating.clone())
                .collect()
        })
        .unwrap_or_default();
    let branch = match verdict(&cs.spec, &floating, &push) {
        Verdict::Ignore(reason) => return Answer::ignored(reason),
        Verdict::Check { branch } => branch,
    };

    let value = jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {annotations::CHECK_REQUESTED_AT: value}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    if let Err(e) = codesources
        .patch(name, &params, &Patch::Merge(&patch))
        .await
    {
        warn!(codesource = %format!("{namespace}/{name}"), "webhook: cannot request a head check: {e}");
        return Answer::error();
    }
    info!(
        codesource = %format!("{namespace}/{name}"),
        provider = provider.label(),
        branch = branch.as_deref().unwrap_or("*"),
        "webhook: head check requested"
    );
    Answer::new(
        StatusCode::ACCEPTED,
        "accepted",
        match branch {
            Some(b) => format!("head check of {namespace}/{name} requested for a push to {b:?}"),
            None => format!("head check of {namespace}/{name} requested"),
        },
    )
}

/// The CodeSource from the watch cache (never from the API server: a forged hook must
/// cost no request). `Err` while the cache has not listed yet (the first seconds of
/// the process).
async fn find_codesource(
    state: &WebhookState,
    namespace: &str,
    name: &str,
) -> Result<Option<CodeSource>, &'static str> {
    let store = state
        .codesources
        .as_ref()
        .ok_or("the receiver is not serving")?;
    tokio::time::timeout(CACHE_WAIT, store.wait_until_ready())
        .await
        .map_err(|_| "the receiver has not listed the CodeSources yet")?
        .map_err(|_| "the receiver's CodeSource watch stopped")?;
    let key = ObjectRef::new(name).within(namespace);
    Ok(store.get(&key).map(|cs| (*cs).clone()))
}

/// Whether the hook's credentials match `cached` (false when there is no usable secret).
fn signature_matches(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    cached: &Cached,
) -> bool {
    cached
        .value
        .as_deref()
        .and_then(usable_secret)
        .is_some_and(|secret| authenticate(provider, headers, body, secret).is_ok())
}

/// The webhook secret of `key`, from the cache while fresh; true when read now.
async fn webhook_secret(state: &WebhookState, key: &Key) -> Result<(Cached, bool), kube::Error> {
    match state.secrets.fresh(key, Instant::now()) {
        Some(cached) => Ok((cached, false)),
        None => Ok((read_secret(state, key).await?, true)),
    }
}

/// Reads the bytes under the webhook key of the Secret `key` (`None` when the Secret or
/// the key does not exist) and caches them.
async fn read_secret(state: &WebhookState, key: &Key) -> Result<Cached, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &key.0);
    let value = secrets.get_opt(&key.1).await?.and_then(|s| {
        s.data
            .and_then(|mut d| d.remove(WEBHOOK_SECRET_KEY))
            .map(|v| v.0)
    });
    Ok(state.secrets.store(key.clone(), value, Instant::now()))
}
