//! `status.lastBuild` written into a real API server (the harness's control plane with
//! our CRDs): server-side apply under the worker's field manager, owning that field
//! only, readable back, and leaving the controller's fields alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use harness::TestNamespace;
use harness::apply::apply_readme_example;
use openvox_code_worker::status::{CodeSourceRef, StatusClient};
use openvox_crds::CodeSource;
use openvox_crds::codesource::{BuildRecord, EnvironmentRecord, ModuleRecord};
use openvox_crds::names::WORKER_MANAGER;

fn record(image: &str) -> BuildRecord {
    BuildRecord {
        image: image.to_owned(),
        short_digest: Some("0123456789ab".into()),
        inputs_hash: Some("inputs-1".into()),
        environments: vec![EnvironmentRecord {
            name: "production".into(),
            branch: "production".into(),
            revision: format!("production@sha1:{}", "a".repeat(40)),
            layer_digest: Some(format!("sha256:{}", "1".repeat(64))),
            modules: vec![ModuleRecord {
                name: "stdlib".into(),
                source: "puppetlabs-stdlib".into(),
                version: "9.6.0".into(),
                checksum: Some(format!("sha256:{}", "2".repeat(64))),
            }],
            floating: Vec::new(),
        }],
        failed: vec![openvox_crds::codesource::FailedEnvironment {
            branch: "feature/x".into(),
            name: Some("feature_x".into()),
            reason: "Puppetfile line 3: unsupported option :svn".into(),
            ..Default::default()
        }],
        job_name: Some("production-0123456789abcdef".into()),
        start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        )),
        completion_time: None,
    }
}

#[tokio::test]
async fn last_build_is_applied_under_the_worker_field_manager() {
    let ns = TestNamespace::new("worker-status").await.unwrap();
    let name = apply_readme_example(ns.client(), ns.name(), "CodeSource")
        .await
        .unwrap();

    let target = CodeSourceRef {
        namespace: ns.name().to_owned(),
        name: name.clone(),
    };
    let client = StatusClient::with_client(ns.client().clone(), target);
    assert_eq!(client.last_build().await.unwrap(), None);

    let first = record(&format!("r.example/code@sha256:{}", "f".repeat(64)));
    client.write_last_build(&first).await.unwrap();
    assert_eq!(client.last_build().await.unwrap(), Some(first.clone()));

    // A second build replaces the record; the worker owns status.lastBuild and nothing else.
    let second = BuildRecord {
        image: format!("r.example/code@sha256:{}", "e".repeat(64)),
        ..first
    };
    client.write_last_build(&second).await.unwrap();
    let api = ns.api::<CodeSource>();
    let object = api.get(&name).await.unwrap();
    assert_eq!(
        object.status.as_ref().and_then(|s| s.last_build.clone()),
        Some(second)
    );
    let managed = object.metadata.managed_fields.unwrap_or_default();
    let ours: Vec<_> = managed
        .iter()
        .filter(|m| m.manager.as_deref() == Some(WORKER_MANAGER))
        .collect();
    assert_eq!(ours.len(), 1, "{managed:?}");
    assert_eq!(ours[0].operation.as_deref(), Some("Apply"));
    assert_eq!(ours[0].subresource.as_deref(), Some("status"));
    let fields = ours[0].fields_v1.as_ref().unwrap().0.clone();
    let status_fields = fields["f:status"].as_object().unwrap();
    assert_eq!(
        status_fields.keys().collect::<Vec<_>>(),
        ["f:lastBuild"],
        "{fields}"
    );
}
