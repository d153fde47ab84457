//! One namespace per test, so tests share a control plane without seeing each other.

use crate::control_plane::ControlPlane;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Label on every namespace a test creates.
pub const TEST_NAMESPACE_LABEL: &str = "openvox-code.test/namespace";

/// Set to keep test namespaces after the test (for a look with kubectl).
pub const KEEP_NAMESPACES_ENV: &str = "OPENVOX_CODE_KEEP_NAMESPACES";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh namespace with an admin client made on the current tokio runtime. Deleted
/// (best effort, in the background of the API server) when dropped.
pub struct TestNamespace {
    name: String,
    client: Client,
    kubeconfig: PathBuf,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// A new namespace named `<prefix>-<unique suffix>` on the shared control plane.
    pub async fn new(prefix: &str) -> Result<Self> {
        Self::new_in(ControlPlane::shared()?, prefix).await
    }

    /// A new namespace on `control_plane`. Returns once the namespace's `default`
    /// ServiceAccount exists (the serviceaccount controller makes it), because pods
    /// cannot be created in the namespace before that.
    pub async fn new_in(control_plane: &ControlPlane, prefix: &str) -> Result<Self> {
        let client = control_plane.admin_client().await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let prefix = sanitize(prefix);
        let name = loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{prefix}-{:x}-{n}", std::process::id());
            let namespace = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([(
                        TEST_NAMESPACE_LABEL.to_owned(),
                        "true".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            match namespaces.create(&PostParams::default(), &namespace).await {
                Ok(_) => break name,
                // Left over from an earlier run against a reused control plane.
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(e).with_context(|| format!("creating namespace {name}")),
            }
        };
        let this = Self {
            name,
            client,
            kubeconfig: control_plane.kubeconfig().to_owned(),
        };
        this.wait_for_default_service_account().await?;
        Ok(this)
    }

    /// The control plane the namespace lives in (never stopped through this value).
    pub fn control_plane(&self) -> ControlPlane {
        ControlPlane::existing(self.kubeconfig.clone())
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin client this namespace was made with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A namespaced API of any kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    async fn wait_for_default_service_account(&self) -> Result<()> {
        let accounts: Api<ServiceAccount> = self.api();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if accounts.get_opt("default").await?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "namespace {}: no default ServiceAccount after 30s (is kube-controller-manager running?)",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_NAMESPACES_ENV).is_some() {
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down: delete from
        // a thread with a runtime and a client of its own.
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        let deleted = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let client = ControlPlane::existing(kubeconfig).admin_client().await?;
                let namespaces: Api<Namespace> = Api::all(client);
                namespaces
                    .delete(&name, &DeleteParams::background())
                    .await?;
                Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = deleted {
            eprintln!(
                "warning: could not delete test namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// `prefix` as a DNS label start: lowercase alphanumerics and dashes, at most 40 chars.
fn sanitize(prefix: &str) -> String {
    let cleaned: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        "test".to_owned()
    } else {
        cleaned.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn namespace_prefixes_become_dns_labels() {
        assert_eq!(sanitize("CodeSource_validation"), "codesource-validation");
        assert_eq!(sanitize("__"), "test");
        assert_eq!(sanitize(&"a".repeat(80)).len(), 40);
    }
}
