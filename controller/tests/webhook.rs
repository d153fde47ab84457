//! The webhook receiver against a real kube-apiserver: the CodeSource and its webhook
//! Secret live in the API server, the receiver runs in-process on a loopback port and
//! is called over HTTP, and its one effect (the `checkRequestedAt` annotation) is read
//! back from the API server. The last test runs the CodeSource controller too and
//! shows that a hook leads to a fresh head check of a real git repository.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use harness::TestNamespace;
use harness::fixtures::{ControlRepo, Scratch, eventually};
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use openvox_code_controller::codesource::{self, Settings};
use openvox_code_controller::metrics::Metrics;
use openvox_code_controller::webhook::signature::sign_hex;
use openvox_code_controller::webhook::{self, MAX_BODY_BYTES, WebhookState};
use openvox_crds::CodeSource;
use openvox_crds::names::{annotations, labels};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const SECRET: &str = "a-webhook-secret";
const REPO: &str = "https://git.example.com/puppet/control.git";

/// A receiver on 127.0.0.1, stopped when dropped.
struct Receiver {
    addr: SocketAddr,
    metrics: Metrics,
    _stop: oneshot::Sender<()>,
}

async fn start_receiver(client: &Client, namespace: &str) -> Result<Receiver> {
    openvox_code_controller::tls::install_ring_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let metrics = Metrics::new();
    let state =
        WebhookState::new(client.clone(), metrics.clone()).namespace(Some(namespace.to_string()));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(webhook::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Ok(Receiver {
        addr,
        metrics,
        _stop: stop,
    })
}

impl Receiver {
    fn url(&self, namespace: &str, name: &str) -> String {
        format!("http://{}/hook/{namespace}/{name}", self.addr)
    }
}

fn http() -> reqwest::Client {
    openvox_code_controller::tls::install_ring_provider();
    reqwest::Client::new()
}

/// A GitHub push of `branch` to `repo`, with its signature under `secret`.
fn github_push(branch: &str, repo: &str, secret: &str) -> (Vec<u8>, String) {
    let body = json!({
        "ref": format!("refs/heads/{branch}"),
        "after": "59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5",
        "repository": {"full_name": "puppet/control", "clone_url": repo, "html_url": repo.trim_end_matches(".git")}
    })
    .to_string()
    .into_bytes();
    let signature = format!("sha256={}", sign_hex(secret.as_bytes(), &body));
    (body, signature)
}

async fn post_github(
    url: &str,
    event: &str,
    body: Vec<u8>,
    signature: &str,
) -> Result<(u16, Value)> {
    let response = http()
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await?;
    answer(response).await
}

async fn answer(response: reqwest::Response) -> Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

async fn setup(ns: &TestNamespace, name: &str, url: &str, with_webhook: bool) -> Result<()> {
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"},
               "stringData": {"token": format!("{SECRET}\n")}}),
    )
    .await?;
    let mut spec = json!({
        "git": {"url": url, "branches": ["production", "feature_*"], "excludeBranches": ["feature_wip*"]},
        "schedule": "0 0 1 1 *",
        "output": {"image": "registry.example/puppet-code"}
    });
    if with_webhook {
        spec["webhook"] = json!({"secretRef": {"name": "hook"}});
    }
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
               "metadata": {"name": name}, "spec": spec}),
    )
    .await?;
    Ok(())
}

async fn check_requested_at(ns: &TestNamespace, name: &str) -> Result<Option<String>> {
    let api: Api<CodeSource> = ns.api();
    Ok(api
        .get(name)
        .await?
        .annotations()
        .get(annotations::CHECK_REQUESTED_AT)
        .cloned())
}

#[tokio::test]
async fn a_signed_github_push_to_a_watched_branch_requests_a_head_check() -> Result<()> {
    let ns = TestNamespace::new("hook-github").await?;
    setup(&ns, "prod", REPO, true).await?;
    let receiver = start_receiver(ns.client(), ns.name()).await?;
    let url = receiver.url(ns.name(), "prod");

    // The same repository under its ssh URL, as GitHub also lists it.
    let (body, signature) = github_push(
        "production",
        "git@git.example.com:puppet/control.git",
        SECRET,
    );
    let (status, answer) = post_github(&url, "push", body, &signature).await?;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["result"], "accepted");
    let first = check_requested_at(&ns, "prod")
        .await?
        .context("no checkRequestedAt annotation after an accepted push")?;

    // A glob-matched branch asks again, with a new value.
    let (body, signature) = github_push("feature_roles", REPO, SECRET);
    let (status, answer) = post_github(&url, "push", body, &signature).await?;
    assert_eq!(status, 202, "{answer}");
    let second = check_requested_at(&ns, "prod")
        .await?
        .context("annotation gone")?;
    assert_ne!(first, second, "every accepted push must write a new value");

    // The manual trigger (always a build) is never touched by hooks.
    let api: Api<CodeSource> = ns.api();
    assert!(
        !api.get("prod")
            .await?
            .annotations()
            .contains_key(annotations::REQUESTED_AT)
    );

    let metrics = receiver.metrics.encode();
    assert!(
        metrics.contains("openvox_code_webhooks_total{provider=\"github\",result=\"accepted\"} 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_signature_is_forbidden_and_triggers_nothing() -> Result<()> {
    let ns = TestNamespace::new("hook-badsig").await?;
    setup(&ns, "prod", REPO, true).await?;
    let receiver = start_receiver(ns.client(), ns.name()).await?;
    let url = receiver.url(ns.name(), "prod");

    let (body, _) = github_push("production", REPO, SECRET);
    let (_, wrong) = github_push("production", REPO, "not-the-secret");
    let (status, answer) = post_github(&url, "push", body.clone(), &wrong).await?;
    assert_eq!(status, 403, "{answer}");
    assert!(!answer.to_string().contains(SECRET) && !answer.to_string().contains(&wrong));

    // Signed for another body: the body was changed on the way.
    let (_, other_signature) = github_push("staging", REPO, SECRET);
    let (status, _) = post_github(&url, "push", body.clone(), &other_signature).await?;
    assert_eq!(status, 403);

    // No signature at all.
    let response = http()
        .post(&url)
        .header("x-github-event", "push")
        .body(body.clone())
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);
    let response = http().post(&url).body(body).send().await?;
    assert_eq!(response.status().as_u16(), 401);

    assert_eq!(check_requested_at(&ns, "prod").await?, None);
    let metrics = receiver.metrics.encode();
    assert!(
        metrics.contains("openvox_code_webhooks_total{provider=\"github\",result=\"forbidden\"} 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn pushes_the_codesource_does_not_watch_are_answered_200_and_ignored() -> Result<()> {
    let ns = TestNamespace::new("hook-ignored").await?;
    setup(&ns, "prod", REPO, true).await?;
    let receiver = start_receiver(ns.client(), ns.name()).await?;
    let url = receiver.url(ns.name(), "prod");

    for (branch, repo, why) in [
        ("staging", REPO, "not watched"),
        ("feature_wip_x", REPO, "not watched"),
        (
            "production",
            "https://git.example.com/puppet/other.git",
            "another repository",
        ),
    ] {
        let (body, signature) = github_push(branch, repo, SECRET);
        let (status, answer) = post_github(&url, "push", body, &signature).await?;
        assert_eq!(status, 200, "{branch} {repo}: {answer}");
        assert_eq!(answer["result"], "ignored");
        assert!(
            answer["message"].as_str().unwrap_or_default().contains(why),
            "{answer}"
        );
    }

    // A tag push and a ping are answered too.
    let tag = json!({"ref": "refs/tags/v1", "repository": {"clone_url": REPO}})
        .to_string()
        .into_bytes();
    let signature = format!("sha256={}", sign_hex(SECRET.as_bytes(), &tag));
    let (status, answer) = post_github(&url, "push", tag, &signature).await?;
    assert_eq!((status, answer["result"].as_str()), (200, Some("ignored")));
    let ping = json!({"zen": "Design for failure.", "hook_id": 1})
        .to_string()
        .into_bytes();
    let signature = format!("sha256={}", sign_hex(SECRET.as_bytes(), &ping));
    let (status, answer) = post_github(&url, "ping", ping, &signature).await?;
    assert_eq!((status, answer["result"].as_str()), (200, Some("ping")));

    assert_eq!(check_requested_at(&ns, "prod").await?, None);
    Ok(())
}

#[tokio::test]
async fn gitlab_gitea_and_generic_callers_are_understood() -> Result<()> {
    let ns = TestNamespace::new("hook-providers").await?;
    setup(&ns, "prod", REPO, true).await?;
    let receiver = start_receiver(ns.client(), ns.name()).await?;
    let url = receiver.url(ns.name(), "prod");

    let gitlab = json!({"object_kind": "push", "ref": "refs/heads/production",
                        "project": {"git_http_url": REPO, "git_ssh_url": "git@git.example.com:puppet/control.git"}});
    let response = http()
        .post(&url)
        .header("x-gitlab-event", "Push Hook")
        .header("x-gitlab-token", SECRET)
        .body(gitlab.to_string())
        .send()
        .await?;
    assert_eq!(answer(response).await?.0, 202);
    let response = http()
        .post(&url)
        .header("x-gitlab-event", "Push Hook")
        .header("x-gitlab-token", "wrong")
        .body(gitlab.to_string())
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 403);

    let gitea = json!({"ref": "refs/heads/production",
                       "repository": {"clone_url": REPO, "ssh_url": "ssh://git@git.example.com:2222/puppet/control.git"}})
    .to_string();
    let response = http()
        .post(&url)
        .header("x-gitea-event", "push")
        .header(
            "x-gitea-signature",
            sign_hex(SECRET.as_bytes(), gitea.as_bytes()),
        )
        .body(gitea.clone())
        .send()
        .await?;
    assert_eq!(answer(response).await?.0, 202);
    let response = http()
        .post(&url)
        .header("x-forgejo-event", "push")
        .header(
            "x-forgejo-signature",
            sign_hex(SECRET.as_bytes(), gitea.as_bytes()),
        )
        .body(gitea)
        .send()
        .await?;
    assert_eq!(answer(response).await?.0, 202);

    // Generic: a bearer token and no body at all.
    let response = http()
        .post(&url)
        .header("authorization", format!("Bearer {SECRET}"))
        .send()
        .await?;
    assert_eq!(answer(response).await?.0, 202);
    let response = http()
        .post(&url)
        .header("authorization", "Bearer nope")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 403);

    let metrics = receiver.metrics.encode();
    for provider in ["gitlab", "gitea", "forgejo", "generic"] {
        assert!(
            metrics.contains(&format!(
                "openvox_code_webhooks_total{{provider=\"{provider}\",result=\"accepted\"}} 1"
            )),
            "{provider}: {metrics}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn unknown_targets_bad_bodies_and_wrong_methods_get_clear_4xx_answers() -> Result<()> {
    let ns = TestNamespace::new("hook-4xx").await?;
    setup(&ns, "prod", REPO, true).await?;
    setup(&ns, "nohook", REPO, false).await?;
    let receiver = start_receiver(ns.client(), ns.name()).await?;
    let bearer = format!("Bearer {SECRET}");

    let post = |url: String, body: Vec<u8>| {
        let bearer = bearer.clone();
        async move {
            let response = http()
                .post(url)
                .header("authorization", bearer)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            answer(response).await
        }
    };

    let (status, a) = post(receiver.url(ns.name(), "missing"), vec![]).await?;
    assert_eq!(status, 404, "{a}");
    let (status, a) = post(receiver.url(ns.name(), "nohook"), vec![]).await?;
    assert_eq!(status, 404, "{a}");
    assert!(
        a["message"]
            .as_str()
            .unwrap_or_default()
            .contains("webhook"),
        "{a}"
    );
    // Outside the controller's namespace.
    let (status, _) = post(receiver.url("kube-system", "prod"), vec![]).await?;
    assert_eq!(status, 404);

    let (status, a) = post(receiver.url(ns.name(), "prod"), b"{not json".to_vec()).await?;
    assert_eq!(status, 400, "{a}");
    let (status, a) = post(
        receiver.url(ns.name(), "prod"),
        vec![b' '; MAX_BODY_BYTES + 1],
    )
    .await?;
    assert_eq!(status, 413, "{a}");
    // At the bound exactly, the body is read and answered (a tag push: ignored); one
    // byte more and far more are refused with 413, and the receiver keeps answering.
    let at_bound = |extra: usize| {
        let mut body = br#"{"ref":"refs/tags/v1","pad":""#.to_vec();
        let end = br#""}"#;
        body.resize(MAX_BODY_BYTES - end.len() + extra, b'x');
        body.extend_from_slice(end);
        body
    };
    let (status, a) = post(receiver.url(ns.name(), "prod"), at_bound(0)).await?;
    assert_eq!(
        (status, a["result"].as_str()),
        (200, Some("ignored")),
        "{a}"
    );
    let (status, a) = post(receiver.url(ns.name(), "prod"), at_bound(1)).await?;
    assert_eq!(status, 413, "{a}");
    assert!(
        a["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("larger than {MAX_BODY_BYTES} bytes")),
        "{a}"
    );
    let (status, _) = post(
        receiver.url(ns.name(), "prod"),
        vec![b'x'; 16 * MAX_BODY_BYTES],
    )
    .await?;
    assert_eq!(status, 413);

    let response = http().get(receiver.url(ns.name(), "prod")).send().await?;
    assert_eq!(response.status().as_u16(), 405);
    let response = http()
        .post(format!("http://{}/hook/{}", receiver.addr, ns.name()))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 404);

    // The Secret loses its key: the hook stops working rather than accepting anything.
    let secrets: Api<Secret> = ns.api();
    let mut secret = secrets.get("hook").await?;
    secret.data = Some(BTreeMap::from([(
        "other".to_string(),
        ByteString(b"x".to_vec()),
    )]));
    secrets
        .replace("hook", &PostParams::default(), &secret)
        .await?;
    let (status, a) = post(receiver.url(ns.name(), "prod"), vec![]).await?;
    assert_eq!(status, 404, "{a}");

    assert_eq!(check_requested_at(&ns, "prod").await?, None);
    Ok(())
}

// --- The whole path: hook → annotation → the CodeSource controller lists the heads. ---

#[tokio::test]
async fn an_accepted_hook_makes_the_controller_list_the_heads_afresh_without_forcing_a_build()
-> Result<()> {
    let repo = ControlRepo::new();
    let first = repo.head();
    let scratch = Scratch::new();
    let repo_url = repo.url();

    let ns = TestNamespace::new("hook-e2e").await?;
    let (stop_controller, stopped) = oneshot::channel::<()>();
    let mut settings = Settings::new("openvox-code-worker:test");
    settings.namespace = Some(ns.name().to_string());
    settings.scratch_dir = scratch.dir.path().to_path_buf();
    tokio::spawn(codesource::run(
        ns.client().clone(),
        settings,
        Metrics::new(),
        async move {
            let _ = stopped.await;
        },
    ));
    setup(&ns, "prod", &repo_url, true).await?;
    let api: Api<CodeSource> = ns.api();

    // The first look (at creation) sees the first commit and launches the first build.
    let wanted = format!("production@sha1:{first}");
    eventually("the first head check", || async {
        let cs = api.get("prod").await?;
        Ok(cs
            .status
            .filter(|s| s.heads.get("production") == Some(&wanted))
            .map(|_| ()))
    })
    .await?;
    let jobs: Api<Job> = ns.api();
    let selector = format!("{}=prod", labels::CODESOURCE);
    let jobs_before = jobs
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .len();

    // A new commit; the yearly schedule would not look for months. The hook does.
    let second = repo.commit("second");
    let receiver = start_receiver(ns.client(), ns.name()).await?;
    let (body, signature) = github_push("production", &repo_url, SECRET);
    let (status, a) =
        post_github(&receiver.url(ns.name(), "prod"), "push", body, &signature).await?;
    assert_eq!(status, 202, "{a}");
    let requested = check_requested_at(&ns, "prod")
        .await?
        .context("no annotation")?;

    let wanted = format!("production@sha1:{second}");
    let status = eventually("the head check asked for by the hook", || async {
        let cs = api.get("prod").await?;
        Ok(cs.status.filter(|s| {
            s.heads.get("production") == Some(&wanted)
                && s.last_handled_check_requested_at.as_deref() == Some(requested.as_str())
        }))
    })
    .await?;
    assert!(
        status.last_handled_requested_at.is_none(),
        "a hook is not a manual trigger"
    );

    // The first build's Job never finishes here (no kubelet), so the moved head waits
    // for it: the hook asked for a look, not for a build.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs_after = jobs
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .len();
    assert_eq!(jobs_before, jobs_after);
    let _ = stop_controller.send(());
    Ok(())
}

/// The sum of the receiver's GET requests to the API server.
fn api_gets(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("openvox_code_api_requests_total{") && l.contains("verb=\"get\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// An HTTP client that connects from `local` (another loopback address is another
/// client address to the receiver).
fn http_from(local: [u8; 4]) -> reqwest::Client {
    openvox_code_controller::tls::install_ring_provider();
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(local))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

async fn post_from(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    signature: &str,
) -> Result<u16> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// The webhook cannot be turned against the API server or starved: a flood of forged
/// hooks costs no API request (the CodeSource comes from a watch cache, the secret from
/// the receiver's cache) and its sender is answered 429 after 20 failures; connections
/// that never finish their request head are closed after the header timeout, at most
/// MAX_CONNECTIONS are held; a good hook from another address is accepted promptly
/// throughout.
#[tokio::test]
async fn forged_and_slow_floods_cost_no_api_requests_and_do_not_starve_good_hooks() -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let ns = TestNamespace::new("hook-flood").await?;
    setup(&ns, "prod", REPO, true).await?;
    let metrics = Metrics::new();
    let config = ns.control_plane().admin_config().await?;
    let client = openvox_code_controller::client::counted_client_from(config, metrics.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = WebhookState::new(client, metrics.clone()).namespace(Some(ns.name().to_string()));
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(webhook::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}/hook/{}/prod", ns.name());
    let (body, good) = github_push("production", REPO, SECRET);
    let (_, forged) = github_push("production", REPO, "guessed");

    // A good hook (the secret is read once), after the CodeSource watch has listed.
    let good_client = http_from([127, 0, 0, 2]);
    eventually("a good hook accepted", || async {
        let status = post_from(&good_client, &url, body.clone(), &good).await?;
        Ok((status == 202).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gets_before = api_gets(&metrics);

    // 400 forged hooks from 127.0.0.1, 20 at a time.
    let flood = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let batch = (0..20).map(|_| post_from(&flood, &url, body.clone(), &forged));
        for status in futures::future::join_all(batch).await {
            statuses.push(status?);
        }
    }
    let forbidden = statuses.iter().filter(|s| **s == 403).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(forbidden + limited, 400, "{statuses:?}");
    assert!(forbidden <= 20, "{forbidden} answered 403 before the limit");
    assert_eq!(
        api_gets(&metrics),
        gets_before,
        "forged hooks made API requests:\n{}",
        metrics.encode()
    );
    let started = std::time::Instant::now();
    assert_eq!(
        post_from(&good_client, &url, body.clone(), &good).await?,
        202
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // 300 connections that send half a request head and then nothing.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"POST /hook/x/y HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await?;
        slow.push(stream);
    }
    let opened = std::time::Instant::now();
    // Beyond the cap, connections are closed at once.
    let mut closed_at_once = 0;
    for stream in &mut slow {
        let mut byte = [0u8; 1];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte)).await
            && matches!(read, Ok(0) | Err(_))
        {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 300 - webhook::server::MAX_CONNECTIONS,
        "{closed_at_once} of 300 closed at once"
    );
    // The rest are closed once the header timeout has passed (hyper answers 408).
    let deadline = Duration::from_secs(webhook::server::HEADER_TIMEOUT.as_secs() + 5);
    for stream in &mut slow {
        let mut rest = Vec::new();
        let left = deadline.saturating_sub(opened.elapsed());
        let ended = tokio::time::timeout(left, stream.read_to_end(&mut rest)).await;
        assert!(
            ended.is_ok(),
            "a slow connection was still open after {deadline:?}"
        );
    }
    // A good hook gets through afterwards, promptly.
    let started = std::time::Instant::now();
    assert_eq!(post_from(&good_client, &url, body, &good).await?, 202);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}
