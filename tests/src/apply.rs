//! Putting objects of any kind into the cluster from YAML or JSON, the way
//! `kubectl apply --server-side` does, and the README examples the tests must accept.

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "openvox-code-tests";

/// Every non-empty document of a (multi-document) YAML string, as JSON values.
pub fn yaml_documents(yaml: &str) -> Result<Vec<Value>> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).context("parsing a YAML document")?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// Server-side applies every document of `yaml`. Namespaced objects go into
/// `namespace` when given (it replaces `metadata.namespace`).
pub async fn apply_yaml(
    client: &Client,
    namespace: Option<&str>,
    yaml: &str,
) -> Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for document in yaml_documents(yaml)? {
        applied.push(apply(client, namespace, document).await?);
    }
    Ok(applied)
}

/// Server-side applies one object (force: the tests own what they apply). The error
/// keeps the API server's message, so validation tests can check it.
pub async fn apply(
    client: &Client,
    namespace: Option<&str>,
    object: Value,
) -> Result<DynamicObject> {
    let (api, name, object) = api_for(client, namespace, object).await?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying {}", describe(&object)))
}

/// Creates one object (a plain POST, as `kubectl create` does).
pub async fn create(
    client: &Client,
    namespace: Option<&str>,
    object: Value,
) -> Result<DynamicObject> {
    let (api, _, object) = api_for(client, namespace, object).await?;
    let dynamic: DynamicObject = serde_json::from_value(object.clone())?;
    api.create(
        &PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        },
        &dynamic,
    )
    .await
    .with_context(|| format!("creating {}", describe(&object)))
}

async fn api_for(
    client: &Client,
    namespace: Option<&str>,
    mut object: Value,
) -> Result<(Api<DynamicObject>, String, Value)> {
    let api_version = object["apiVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("object without apiVersion"))?
        .to_owned();
    let kind = object["kind"]
        .as_str()
        .ok_or_else(|| anyhow!("object without kind"))?
        .to_owned();
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {api_version} {kind}"))?;
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("{kind} without metadata.name"))?
        .to_owned();
    let api = match capabilities.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            if let Some(namespace) = namespace {
                object["metadata"]["namespace"] = Value::from(namespace);
            }
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .ok_or_else(|| anyhow!("{kind} {name} needs a namespace"))?
                .to_owned();
            Api::namespaced_with(client.clone(), &namespace, &resource)
        }
    };
    Ok((api, name, object))
}

fn describe(object: &Value) -> String {
    format!(
        "{} {}",
        object["kind"].as_str().unwrap_or("object"),
        object["metadata"]["name"].as_str().unwrap_or("(unnamed)")
    )
}

/// Waits until the CRD `name` is Established (its kind is served).
pub async fn wait_for_crd(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let crd = crds.get_opt(name).await?;
        let established = crd
            .as_ref()
            .and_then(|crd| crd.status.as_ref())
            .is_some_and(|status| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        // Established is not enough: the API server's discovery document catches up a
        // moment later, and clients (kubectl, kube's discovery) resolve kinds through it.
        if let Some(crd) = crd.filter(|_| established)
            && served_by_discovery(client, &crd).await
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("CRD {name} not established after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether discovery resolves every served version of `crd`'s kind.
async fn served_by_discovery(client: &Client, crd: &CustomResourceDefinition) -> bool {
    for version in crd.spec.versions.iter().filter(|v| v.served) {
        let gvk = GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
        if kube::discovery::pinned_kind(client, &gvk).await.is_err() {
            return false;
        }
    }
    true
}

/// Applies the README's example object of `kind` into `namespace` and returns its name.
pub async fn apply_readme_example(client: &Client, namespace: &str, kind: &str) -> Result<String> {
    let mut object = readme_example(kind)?;
    object["metadata"]["namespace"] = namespace.into();
    let name = object["metadata"]["name"]
        .as_str()
        .with_context(|| format!("the README's {kind} has no name"))?
        .to_owned();
    apply(client, Some(namespace), object).await?;
    Ok(name)
}

/// The README's example object of `kind` (a ```yaml block in README.md), exactly as
/// the README shows it. The CRD tests apply these, so the README cannot drift from
/// what the API server accepts.
pub fn readme_example(kind: &str) -> Result<Value> {
    let path = crate::control_plane::repo_root().join("README.md");
    let readme =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut found = Vec::new();
    for block in yaml_blocks(&readme) {
        for document in yaml_documents(&block)? {
            if document["kind"] == kind {
                found.push(document);
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("README.md has no ```yaml example of kind {kind}"),
        n => bail!("README.md has {n} ```yaml examples of kind {kind}; expected one"),
    }
}

/// Contents of the ```yaml fenced blocks of a Markdown text.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let fence = line.trim_start();
        match current.as_mut() {
            None if fence.starts_with("```yaml") || fence.starts_with("```yml") => {
                current = Some(String::new())
            }
            Some(_) if fence.starts_with("```") => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_blocks_are_read_from_markdown_and_other_blocks_are_skipped() {
        let markdown = "text\n```sh\nls\n```\n```yaml\nkind: A\n---\nkind: B\n```\n";
        let blocks = yaml_blocks(markdown);
        assert_eq!(blocks, vec!["kind: A\n---\nkind: B\n".to_owned()]);
        let docs = yaml_documents(&blocks[0]).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["kind"], "B");
    }

    #[test]
    fn the_readme_has_one_codesource_and_one_pool_example() {
        assert_eq!(
            readme_example("CodeSource").unwrap()["apiVersion"],
            "openvox.voxpupuli.org/v1alpha1"
        );
        assert_eq!(
            readme_example("Pool").unwrap()["apiVersion"],
            "openvox.voxpupuli.org/v1alpha1"
        );
    }
}
