//! Node simulation with the real Job controller: pods of Jobs run as local processes
//! and their exit codes decide, through kube-controller-manager, whether the Job
//! completes or fails.

// Test helpers panic like the tests themselves: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use harness::TestNamespace;
use harness::node_sim::{NodeSim, evict_like_cluster_autoscaler};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn node_for(ns: &TestNamespace) -> NodeSim {
    NodeSim::for_namespace(ns).await.unwrap()
}

fn job(name: &str, pod_spec: Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": pod_spec},
        },
    })
}

fn shell_pod(script: &str) -> Value {
    json!({
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}],
    })
}

/// Waits until the Job has condition `type_` True; panics after `timeout`.
async fn wait_for_job_condition(
    ns: &TestNamespace,
    name: &str,
    type_: &str,
    timeout: Duration,
) -> Job {
    let jobs: Api<Job> = ns.api();
    let deadline = Instant::now() + timeout;
    loop {
        let job = jobs.get(name).await.unwrap();
        let conditions = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
        {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {name} has no {type_} condition after {timeout:?}: {:#?}",
            job.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn job_pods(ns: &TestNamespace, job: &str) -> Vec<Pod> {
    let pods: Api<Pod> = ns.api();
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .unwrap()
        .items
}

fn terminated_exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

#[tokio::test]
async fn a_job_whose_command_exits_0_completes() {
    let ns = TestNamespace::new("job-succeeds").await.unwrap();
    let node = node_for(&ns).await;
    let spec = shell_pod("echo hello from the simulated node; exit 0");
    harness::apply::apply(ns.client(), Some(ns.name()), job("exit-0", spec))
        .await
        .unwrap();

    let job = wait_for_job_condition(&ns, "exit-0", "Complete", Duration::from_secs(60)).await;
    assert_eq!(job.status.and_then(|s| s.succeeded), Some(1));
    let pods = job_pods(&ns, "exit-0").await;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("openvox-node-sim")
    );
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    assert_eq!(terminated_exit_code(pod), Some(0));
    let name = pod.metadata.name.as_deref().unwrap();
    assert_eq!(
        node.log(ns.name(), name, "main"),
        "hello from the simulated node\n"
    );
}

#[tokio::test]
async fn a_job_whose_command_exits_3_fails_with_backoff_limit_0() {
    let ns = TestNamespace::new("job-fails").await.unwrap();
    let _node = node_for(&ns).await;
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        job("exit-3", shell_pod("exit 3")),
    )
    .await
    .unwrap();

    let job = wait_for_job_condition(&ns, "exit-3", "Failed", Duration::from_secs(60)).await;
    let failed = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .unwrap();
    let failed = failed.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    let pods = job_pods(&ns, "exit-3").await;
    assert_eq!(pods.len(), 1, "backoffLimit 0 allows no retry");
    assert_eq!(
        pods[0].status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed")
    );
    assert_eq!(terminated_exit_code(&pods[0]), Some(3));
}

#[tokio::test]
async fn secrets_reach_the_process_as_env_and_files_and_the_termination_message_is_reported() {
    let ns = TestNamespace::new("job-secrets").await.unwrap();
    let _node = node_for(&ns).await;
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"token": "from-env", "file": "from-volume"},
    });
    harness::apply::apply(ns.client(), Some(ns.name()), secret)
        .await
        .unwrap();
    // The paths are inside the container; the node simulation rewrites env values and
    // args that start with a mount path (and the termination message path).
    let spec = json!({
        "restartPolicy": "Never",
        "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}],
        "containers": [{
            "name": "main", "image": "busybox",
            "command": ["sh", "-c", "test \"$TOKEN\" = from-env && printf '%s' \"$(cat \"$CREDS\")\" > \"$MESSAGE\""],
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "CREDS", "value": "/etc/creds/file"},
                {"name": "MESSAGE", "value": "/dev/termination-log"},
            ],
            "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds", "readOnly": true}],
        }],
    });
    harness::apply::apply(ns.client(), Some(ns.name()), job("secrets", spec))
        .await
        .unwrap();

    wait_for_job_condition(&ns, "secrets", "Complete", Duration::from_secs(60)).await;
    let pods = job_pods(&ns, "secrets").await;
    let terminated = pods[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(terminated.message.as_deref(), Some("from-volume"));
}

#[tokio::test]
async fn a_pod_evicted_like_the_cluster_autoscaler_does_not_count_against_the_backoff_limit() {
    let ns = TestNamespace::new("job-disrupted").await.unwrap();
    let _node = node_for(&ns).await;
    let mut spec = job("evicted", shell_pod("sleep 60"));
    spec["spec"]["podFailurePolicy"] =
        json!({"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]});
    harness::apply::apply(ns.client(), Some(ns.name()), spec)
        .await
        .unwrap();

    // Wait until the first pod runs, then take its node away.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let running = job_pods(&ns, "evicted")
            .await
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        if let Some(pod) = running {
            break pod.metadata.name.unwrap();
        }
        assert!(Instant::now() < deadline, "no running pod");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    evict_like_cluster_autoscaler(ns.client(), ns.name(), &first)
        .await
        .unwrap();

    // The Job controller ignores the disrupted pod and makes a replacement.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let replaced = job_pods(&ns, "evicted")
            .await
            .iter()
            .any(|p| p.metadata.name.as_deref() != Some(&first));
        if replaced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replacement pod after the eviction"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jobs: Api<Job> = ns.api();
    let status = jobs
        .get("evicted")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert!(
        !status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == "True"),
        "the Job failed although the only failure was a disruption"
    );
    assert_eq!(
        status.failed.unwrap_or(0),
        0,
        "a disruption counted as a failure"
    );
}
