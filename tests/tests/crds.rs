//! Our CRDs in a real API server: the README examples are accepted exactly as written,
//! and invalid objects are rejected with the CEL and schema messages the README
//! promises.

// Test helpers panic like the tests themselves: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use harness::TestNamespace;
use harness::apply::{apply, readme_example};
use serde_json::{Value, json};

/// The README example of `kind`, with `edit` applied to it.
fn example(kind: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut object = readme_example(kind).unwrap();
    edit(&mut object);
    object
}

/// Applies `object` and returns the API server's refusal.
async fn rejection(ns: &TestNamespace, object: Value) -> String {
    match apply(ns.client(), Some(ns.name()), object).await {
        Ok(applied) => panic!("the API server accepted an invalid object: {applied:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_rejected_with(error: &str, message: &str) {
    assert!(
        error.contains("Invalid"),
        "expected a 422 Invalid, got: {error}"
    );
    assert!(error.contains(message), "expected {message:?} in: {error}");
}

#[tokio::test]
async fn the_readme_codesource_and_pool_examples_are_accepted() {
    let ns = TestNamespace::new("readme-examples").await.unwrap();
    for kind in ["CodeSource", "Pool"] {
        let applied = apply(ns.client(), Some(ns.name()), readme_example(kind).unwrap())
            .await
            .unwrap();
        assert_eq!(applied.types.as_ref().map(|t| t.kind.as_str()), Some(kind));
    }
}

#[tokio::test]
async fn a_codesource_output_with_both_image_and_claim_name_is_rejected() {
    let ns = TestNamespace::new("output-both").await.unwrap();
    let object = example("CodeSource", |o| {
        o["spec"]["output"]["claimName"] = json!("puppet-code")
    });
    let error = rejection(&ns, object).await;
    assert_rejected_with(
        &error,
        "exactly one of output.image and output.claimName must be set",
    );
}

#[tokio::test]
async fn a_codesource_output_with_neither_image_nor_claim_name_is_rejected() {
    let ns = TestNamespace::new("output-neither").await.unwrap();
    let object = example("CodeSource", |o| o["spec"]["output"] = json!({}));
    let error = rejection(&ns, object).await;
    assert_rejected_with(
        &error,
        "exactly one of output.image and output.claimName must be set",
    );
}

#[tokio::test]
async fn codesource_output_tags_without_an_image_are_rejected() {
    let ns = TestNamespace::new("tags-without-image").await.unwrap();
    let object = example("CodeSource", |o| {
        o["spec"]["output"] = json!({"claimName": "puppet-code", "tags": ["latest"]});
    });
    let error = rejection(&ns, object).await;
    assert_rejected_with(&error, "tags and pushSecretRef need output.image");
}

#[tokio::test]
async fn a_codesource_with_an_empty_branch_list_is_rejected() {
    let ns = TestNamespace::new("empty-branches").await.unwrap();
    let object = example("CodeSource", |o| o["spec"]["git"]["branches"] = json!([]));
    let error = rejection(&ns, object).await;
    assert_rejected_with(&error, "at least one branch is required");
}

#[tokio::test]
async fn a_codesource_schedule_in_words_is_rejected() {
    let ns = TestNamespace::new("bad-schedule").await.unwrap();
    let object = example("CodeSource", |o| {
        o["spec"]["schedule"] = json!("every 5 minutes")
    });
    let error = rejection(&ns, object).await;
    assert_rejected_with(&error, "schedule must have 5 cron fields");
}

#[tokio::test]
async fn a_pool_route_enabled_without_hostname_is_rejected() {
    let ns = TestNamespace::new("route-no-hostname").await.unwrap();
    let object = example("Pool", |o| {
        o["spec"]["route"]
            .as_object_mut()
            .unwrap()
            .remove("hostname");
    });
    let error = rejection(&ns, object).await;
    assert_rejected_with(&error, "hostname is required when route is enabled");
}

#[tokio::test]
async fn a_pool_route_enabled_without_gateway_name_is_rejected() {
    let ns = TestNamespace::new("route-no-gateway").await.unwrap();
    let object = example("Pool", |o| {
        o["spec"]["route"]["gatewayRef"] = json!({"name": ""})
    });
    let error = rejection(&ns, object).await;
    assert_rejected_with(&error, "gatewayRef.name is required when route is enabled");
}

#[tokio::test]
async fn a_pool_port_above_65535_is_rejected() {
    let ns = TestNamespace::new("pool-port").await.unwrap();
    let object = example("Pool", |o| o["spec"]["service"]["port"] = json!(70000));
    let error = rejection(&ns, object).await;
    assert_rejected_with(&error, "spec.service.port");
    assert_rejected_with(&error, "should be less than or equal to 65535");
}

#[tokio::test]
async fn kubectl_get_codesources_shows_ready_schedule_digest_rollout_job_and_age() {
    let ns = TestNamespace::new("printer-columns").await.unwrap();
    apply(
        ns.client(),
        Some(ns.name()),
        readme_example("CodeSource").unwrap(),
    )
    .await
    .unwrap();
    let control_plane = harness::ControlPlane::shared().unwrap();
    let output = control_plane
        .kubectl()
        .unwrap()
        .args(["get", "codesources", "-n", ns.name()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let header: Vec<&str> = stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "SCHEDULE",
            "DIGEST",
            "ROLLED-OUT",
            "JOB",
            "AGE"
        ],
        "{stdout}"
    );
    let row: Vec<&str> = stdout
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.first(), Some(&"production"), "{stdout}");
    assert!(stdout.contains("*/5 * * * *"), "{stdout}");
}
