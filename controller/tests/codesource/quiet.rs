//! Quiet at rest: a scheduled check that finds nothing new sends the API server
//! nothing (no status write, no Job list: Jobs come from the watch cache), and a Job
//! the cache has not seen yet still counts, so the build is never launched twice.

use std::collections::BTreeMap;

use harness::fixtures::forge::ForgeDir;
use harness::fixtures::servers::static_http;
use harness::fixtures::{Bare, file, git_daemon};
use jiff::Timestamp;
use openvox_code_controller::client::counted_client_from;
use openvox_crds::names::annotations;

use super::*;

/// `openvox_code_api_requests_total` by `verb resource`, summed over response codes.
fn api_requests(metrics: &Metrics) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.encode().lines() {
        let Some(rest) = line.strip_prefix("openvox_code_api_requests_total{") else {
            continue;
        };
        let Some((labels, count)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        *out.entry(format!("{} {}", label("verb"), label("resource")))
            .or_insert(0) += count.trim().parse::<u64>().unwrap_or(0);
    }
    out
}

fn head_checks(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| {
            l.strip_prefix("openvox_code_head_check_duration_seconds_count{result=\"ok\"} ")
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Sleeps until `seconds` past the next full minute.
async fn until_next_minute_plus(seconds: i64) {
    let now = Timestamp::now().as_second();
    let target = (now / 60 + 1) * 60 + seconds;
    tokio::time::sleep(Duration::from_secs(
        u64::try_from(target - now).unwrap_or(0),
    ))
    .await;
}

/// Lines of a server log that record `request`.
fn requests_in(log: &str, request: &str) -> usize {
    log.lines().filter(|l| l.contains(request)).count()
}

#[tokio::test]
async fn a_scheduled_check_that_finds_nothing_new_sends_no_request() -> Result<()> {
    // Two CodeSources of one control repository, whose last builds have floating
    // modules from one module repository (git daemon) and one Forge (static files).
    let repo = ControlRepo::new();
    let scratch = Scratch::new();
    let repos = scratch.mkdir("repos");
    let daemon = git_daemon(&repos, scratch.path("daemon.log"));
    let module = Bare::init(&repos.join("modules/shared.git"));
    let module_commit = module.commit(
        "main",
        "m",
        &[("manifests/init.pp", file("class shared {}\n"))],
    );
    let module_url = format!("git://127.0.0.1:{}/modules/shared.git", daemon.port);
    let forge_dir = ForgeDir::new(scratch.mkdir("forge"));
    forge_dir.release(
        "example-forged",
        "1.0.0",
        &[("manifests/init.pp", file("class forged {}\n"))],
        true,
    );
    let forge = static_http(&forge_dir.root, scratch.path("forge.log"));
    let forge_base = format!("http://127.0.0.1:{}", forge.port);
    let environments = json!([{
        "name": "production", "branch": "production",
        "revision": format!("production@sha1:{}", repo.head()),
        "floating": [
            {"name": "shared", "git": {"url": module_url,
                "refs": ["refs/heads/production", "refs/heads/main"], "commit": module_commit}},
            {"name": "forged", "forge": {"base": forge_base, "slug": "example-forged", "version": "1.0.0"}},
        ],
    }]);

    let ns = TestNamespace::new("cs-quiet").await?;
    let _node = node_running(&ns, "exit 0").await?;
    let metrics = Metrics::new();
    let client = counted_client_from(ns.control_plane().admin_config().await?, metrics.clone())?;
    let _controller = run_controller(
        &client,
        settings_for(ns.name(), scratch.dir.path()),
        metrics.clone(),
    );
    for name in ["prod", "prod2"] {
        harness::apply::apply(
            ns.client(),
            Some(ns.name()),
            codesource(name, spec(&repo.url(), "* * * * *")),
        )
        .await?;
        completed_job(&ns, name).await?;
        report_build_with(
            &ns,
            name,
            "registry.example/puppet-code@sha256:1111",
            environments.clone(),
        )
        .await?;
    }
    for name in ["prod", "prod2"] {
        eventually("Ready", || async {
            let st = status(&ns, name).await?;
            Ok(condition(&st, "Ready")
                .filter(|c| c["status"] == "True")
                .map(|_| ()))
        })
        .await?;
    }

    // One whole schedule tick in the window: from 20 s after a minute to 20 s after
    // the next.
    until_next_minute_plus(20).await;
    let (requests, checks) = (api_requests(&metrics), head_checks(&metrics));
    let before = status(&ns, "prod").await?;
    let (daemon_log, forge_log) = (daemon.log_text(), forge.log_text());
    until_next_minute_plus(20).await;
    let sent: BTreeMap<String, u64> = api_requests(&metrics)
        .into_iter()
        .map(|(k, n)| (k.clone(), n - requests.get(&k).copied().unwrap_or(0)))
        .filter(|(k, n)| *n > 0 && !k.starts_with("watch "))
        .collect();
    // One listing of the control repository and one of the module repository for both
    // CodeSources, one Forge lookup.
    assert_eq!(head_checks(&metrics) - checks, 2, "listings in the tick");
    let module_listings =
        requests_in(&daemon.log_text(), "upload-pack") - requests_in(&daemon_log, "upload-pack");
    assert_eq!(module_listings, 1, "{}", daemon.log_text());
    let forge_lookups = requests_in(&forge.log_text(), "GET /v3/modules/example-forged")
        - requests_in(&forge_log, "GET /v3/modules/example-forged");
    assert_eq!(forge_lookups, 1, "{}", forge.log_text());
    assert!(sent.is_empty(), "requests at rest: {sent:?}");
    assert_eq!(
        status(&ns, "prod").await?,
        before,
        "the status was not written"
    );
    for name in ["prod", "prod2"] {
        assert_eq!(worker_jobs(&ns, name).await?.len(), 1, "no Job at rest");
    }

    // Something new is still seen and written at once: a moved module builds both.
    module.commit(
        "main",
        "moved",
        &[("manifests/init.pp", file("class shared { }\n"))],
    );
    let codesources: Api<CodeSource> = ns.api();
    for name in ["prod", "prod2"] {
        // As a push from the module repository would (the next tick would too).
        codesources
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    annotations::CHECK_REQUESTED_AT: "module-moved"}}})),
            )
            .await?;
        eventually("a rebuild for the moved module", || async {
            Ok((worker_jobs(&ns, name).await?.len() == 2).then_some(()))
        })
        .await?;
    }
    let st = status(&ns, "prod").await?;
    assert!(st["lastLaunch"]["modules"].is_string(), "{st}");
    Ok(())
}

#[tokio::test]
async fn a_job_the_cache_has_not_seen_yet_is_never_launched_again() -> Result<()> {
    let repo = ControlRepo::new();
    let scratch = Scratch::new();
    let ns = TestNamespace::new("cs-cache-lag").await?;
    let _node = node_running(&ns, "sleep 30").await?;
    // Job events reach the controller's cache 5 s late.
    let mut settings = settings_for(ns.name(), scratch.dir.path());
    settings.job_events_delay = Duration::from_secs(5);
    let _controller = run_controller(ns.client(), settings, Metrics::new());
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        codesource("prod", spec(&repo.url(), "@hourly")),
    )
    .await?;
    let first = eventually("the first Job", || async {
        Ok(worker_jobs(&ns, "prod").await?.into_iter().next())
    })
    .await?;

    // Reconciles while the cache does not show the Job: every change of the
    // CodeSource wakes one.
    let codesources: Api<CodeSource> = ns.api();
    for i in 0..8 {
        codesources
            .patch(
                "prod",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"poke": i.to_string()}}})),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let st = status(&ns, "prod").await?;
        assert!(
            condition(&st, "BuildFailed").is_none(),
            "the running Job was taken for a failed one: {st}"
        );
        assert_eq!(st["activeJob"], first.name_any().as_str(), "{st}");
    }
    let jobs = worker_jobs(&ns, "prod").await?;
    assert_eq!(
        jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>(),
        [first.name_any()],
        "launched once"
    );
    Ok(())
}
