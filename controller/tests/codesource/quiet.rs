//! Quiet at rest: a scheduled check that finds nothing new sends the API server
//! nothing (no status write, no Job list: Jobs come from the watch cache), and a Job
//! the cache has not seen yet still counts, so the build is never launched twice.

use std::collections::BTreeMap;

use jiff::Timestamp;
use openvox_code_controller::client::counted_client_from;

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

#[tokio::test]
async fn a_scheduled_check_that_finds_nothing_new_sends_no_request() -> Result<()> {
    let repo = ControlRepo::new();
    let scratch = Scratch::new();
    let ns = TestNamespace::new("cs-quiet").await?;
    let _node = node_running(&ns, "exit 0").await?;
    let metrics = Metrics::new();
    let client = counted_client_from(ns.control_plane().admin_config().await?, metrics.clone())?;
    let _controller = run_controller(
        &client,
        settings_for(ns.name(), scratch.dir.path()),
        metrics.clone(),
    );
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        codesource("prod", spec(&repo.url(), "* * * * *")),
    )
    .await?;
    completed_job(&ns, "prod").await?;
    report_build(&ns, "prod", "registry.example/puppet-code@sha256:1111").await?;
    eventually("Ready", || async {
        let st = status(&ns, "prod").await?;
        Ok(condition(&st, "Ready")
            .filter(|c| c["status"] == "True")
            .map(|_| ()))
    })
    .await?;

    // One whole schedule tick in the window: from 20 s after a minute to 20 s after
    // the next.
    until_next_minute_plus(20).await;
    let (requests, checks) = (api_requests(&metrics), head_checks(&metrics));
    let before = status(&ns, "prod").await?;
    until_next_minute_plus(20).await;
    let sent: BTreeMap<String, u64> = api_requests(&metrics)
        .into_iter()
        .map(|(k, n)| (k.clone(), n - requests.get(&k).copied().unwrap_or(0)))
        .filter(|(k, n)| *n > 0 && !k.starts_with("watch "))
        .collect();
    assert!(head_checks(&metrics) > checks, "the tick checked the heads");
    assert!(sent.is_empty(), "requests at rest: {sent:?}");
    assert_eq!(
        status(&ns, "prod").await?,
        before,
        "the status was not written"
    );
    assert_eq!(worker_jobs(&ns, "prod").await?.len(), 1, "no Job at rest");

    // Something new is still written at once: a moved head.
    let commit = repo.commit("moved");
    eventually("the new head in the status", || async {
        let st = status(&ns, "prod").await?;
        Ok((st["heads"]["production"] == format!("production@sha1:{commit}")).then_some(()))
    })
    .await?;
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
