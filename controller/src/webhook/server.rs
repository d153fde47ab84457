//! The HTTP side of the webhook receiver: `POST /hook/<namespace>/<codesource>`.
//!
//! A request is answered in this order, each step with its own status:
//! body too large (413) or unreadable (400) → no known signature header (401) → no such
//! CodeSource, or it has no usable webhook secret (404) → signature or token wrong
//! (403) → body not a push payload (400) → ping, tag push, other event, other
//! repository, unwatched branch, suspended (200, with the reason) → head check
//! requested (202). Other methods get 405, other paths 404.
//!
//! A check is requested by writing a new value into the CodeSource's
//! `openvox.voxpupuli.org/checkRequestedAt` annotation. Any replica can do that, leader
//! or not, so the Service may send hooks to every pod; the leading controller sees the
//! change, lists the heads afresh and builds only if they moved.

use std::future::Future;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use openvox_crds::CodeSource;
use openvox_crds::names::{WEBHOOK_SECRET_KEY, annotations};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::matching::{Verdict, verdict};
use super::payload::{Event, parse};
use super::signature::{AuthError, Provider, authenticate, usable_secret};
use crate::metrics::Metrics;

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
}

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

/// Serves the receiver on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: WebhookState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The answer to one request: status, a stable result label (metrics, JSON body) and a
/// message for the sender (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// `accepted`, `ignored`, `ping`, `unauthorized`, `forbidden`, `bad_request`,
    /// `not_found`, `too_large` or `error`.
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
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let provider = Provider::detect(&headers);
    let label = provider.map_or("unknown", Provider::label);
    let answer = handle(&state, &namespace, &name, provider, &headers, body).await;
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
    let cs = match codesources.get_opt(name).await {
        Ok(Some(cs)) => cs,
        Ok(None) => return Answer::not_found(format!("CodeSource {namespace}/{name} not found")),
        Err(e) => {
            warn!(codesource = %format!("{namespace}/{name}"), "webhook: cannot read the CodeSource: {e}");
            return Answer::error();
        }
    };
    let Some(secret_ref) = cs.spec.webhook.as_ref().map(|w| &w.secret_ref) else {
        return Answer::not_found(format!(
            "CodeSource {namespace}/{name} has no webhook (spec.webhook.secretRef is not set)"
        ));
    };
    let stored = match read_secret_key(state, namespace, &secret_ref.name).await {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            warn!(
                codesource = %format!("{namespace}/{name}"),
                secret = %secret_ref.name,
                "webhook: the Secret is missing or its key {WEBHOOK_SECRET_KEY:?} is absent or empty"
            );
            return Answer::not_found(format!(
                "CodeSource {namespace}/{name} has no usable webhook secret"
            ));
        }
        Err(e) => {
            warn!(codesource = %format!("{namespace}/{name}"), secret = %secret_ref.name, "webhook: cannot read the Secret: {e}");
            return Answer::error();
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

/// The bytes under the webhook key of Secret `name`, `None` when the Secret or the
/// key does not exist.
async fn read_secret_key(
    state: &WebhookState,
    namespace: &str,
    name: &str,
) -> Result<Option<Vec<u8>>, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), namespace);
    Ok(secrets.get_opt(name).await?.and_then(|s| {
        s.data
            .and_then(|mut d| d.remove(WEBHOOK_SECRET_KEY))
            .map(|v| v.0)
    }))
}
