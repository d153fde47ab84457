//! Pod volumes as directories on the host, and the path rewriting that lets a local
//! process find them: a container sees `/etc/creds/token`, the process gets
//! `<pod dir>/volumes/creds/token`.

use super::Context;
use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::Api;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Container path → host path, longest container path first so the most specific
/// mount wins.
#[derive(Debug, Default, Clone)]
pub(crate) struct Mounts {
    pairs: Vec<(String, PathBuf)>,
}

impl Mounts {
    pub fn add(&mut self, container_path: &str, host_path: PathBuf) {
        let trimmed = container_path.trim_end_matches('/');
        let container_path = if trimmed.is_empty() { "/" } else { trimmed };
        self.pairs.retain(|(path, _)| path != container_path);
        self.pairs.push((container_path.to_owned(), host_path));
        self.pairs
            .sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    }

    /// `value` with a leading mount path replaced by its host path. Also rewrites the
    /// value part of `--flag=/mount/path…`. Anything else is returned unchanged.
    pub fn rewrite(&self, value: &str) -> String {
        if let Some(rewritten) = self.rewrite_path(value) {
            return rewritten;
        }
        if let Some((flag, rest)) = value.split_once('=')
            && let Some(rewritten) = self.rewrite_path(rest)
        {
            return format!("{flag}={rewritten}");
        }
        value.to_owned()
    }

    fn rewrite_path(&self, value: &str) -> Option<String> {
        self.pairs.iter().find_map(|(container, host)| {
            let rest = value.strip_prefix(container.as_str())?;
            if rest.is_empty() {
                Some(host.display().to_string())
            } else {
                rest.strip_prefix('/')
                    .map(|rest| host.join(rest).display().to_string())
            }
        })
    }

    /// The host path of `container_path` if it lies under a mount.
    pub fn host_path(&self, container_path: &str) -> Option<PathBuf> {
        self.rewrite_path(container_path).map(PathBuf::from)
    }
}

/// The host directory of every volume of the pod, filled like the kubelet fills it.
/// Fails (and the caller retries, like the kubelet's FailedMount) while a Secret or
/// ConfigMap the pod needs does not exist.
pub(crate) async fn materialise(
    context: &Context,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<BTreeMap<String, PathBuf>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut dirs = BTreeMap::new();
    for volume in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let dir = volume_dir(context, namespace, pod_dir, volume);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fill(context, pod, namespace, volume, &dir)
            .await
            .with_context(|| format!("volume {}", volume.name))?;
        dirs.insert(volume.name.clone(), dir);
    }
    Ok(dirs)
}

fn volume_dir(context: &Context, namespace: &str, pod_dir: &Path, volume: &Volume) -> PathBuf {
    match &volume.persistent_volume_claim {
        // A claim outlives its pods: one directory per claim for the whole simulation.
        Some(claim) => context
            .config
            .work_dir
            .join("claims")
            .join(namespace)
            .join(&claim.claim_name),
        None => pod_dir.join("volumes").join(&volume.name),
    }
}

async fn fill(
    context: &Context,
    pod: &Pod,
    namespace: &str,
    volume: &Volume,
    dir: &Path,
) -> Result<()> {
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.as_deref().unwrap_or_default();
        let data = secret_data(context, namespace, name, secret.optional.unwrap_or(false)).await?;
        write_keys(dir, &data, secret.items.as_deref(), secret.default_mode)?;
    } else if let Some(config_map) = &volume.config_map {
        let data = config_map_data(
            context,
            namespace,
            &config_map.name,
            config_map.optional.unwrap_or(false),
        )
        .await?;
        write_keys(
            dir,
            &data,
            config_map.items.as_deref(),
            config_map.default_mode,
        )?;
    } else if let Some(downward) = &volume.downward_api {
        write_downward(dir, pod, downward.items.as_deref().unwrap_or_default())?;
    } else if let Some(projected) = &volume.projected {
        for source in projected.sources.as_deref().unwrap_or_default() {
            if let Some(secret) = &source.secret {
                let data = secret_data(
                    context,
                    namespace,
                    &secret.name,
                    secret.optional.unwrap_or(false),
                )
                .await?;
                write_keys(dir, &data, secret.items.as_deref(), projected.default_mode)?;
            }
            if let Some(config_map) = &source.config_map {
                let data = config_map_data(
                    context,
                    namespace,
                    &config_map.name,
                    config_map.optional.unwrap_or(false),
                )
                .await?;
                write_keys(
                    dir,
                    &data,
                    config_map.items.as_deref(),
                    projected.default_mode,
                )?;
            }
            if let Some(downward) = &source.downward_api {
                write_downward(dir, pod, downward.items.as_deref().unwrap_or_default())?;
            }
            if let Some(token) = &source.service_account_token {
                let value = service_account_token(
                    context,
                    pod,
                    token.audience.as_deref(),
                    token.expiration_seconds,
                )
                .await?;
                write_file(&dir.join(&token.path), value.as_bytes(), Some(0o600))?;
            }
        }
    }
    // emptyDir, persistentVolumeClaim, hostPath (never the host's own path) and every
    // other kind: an empty directory.
    Ok(())
}

async fn secret_data(
    context: &Context,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    match secrets.get_opt(name).await? {
        Some(secret) => {
            let mut data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (key, value) in secret.string_data.unwrap_or_default() {
                data.insert(key, value.into_bytes());
            }
            Ok(data)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("secret \"{name}\" not found"),
    }
}

async fn config_map_data(
    context: &Context,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let config_maps: Api<ConfigMap> = Api::namespaced(context.client.clone(), namespace);
    match config_maps.get_opt(name).await? {
        Some(config_map) => {
            let mut data: BTreeMap<String, Vec<u8>> = config_map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (key, value) in config_map.binary_data.unwrap_or_default() {
                data.insert(key, value.0);
            }
            Ok(data)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("configmap \"{name}\" not found"),
    }
}

/// Keys as files: all keys under their own names, or only the listed items under
/// their paths.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: Option<i32>,
) -> Result<()> {
    match items {
        None => {
            for (key, value) in data {
                write_file(&dir.join(key), value, mode)?;
            }
        }
        Some(items) => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .ok_or_else(|| anyhow!("key \"{}\" not found", item.key))?;
                write_file(&dir.join(&item.path), value, item.mode.or(mode))?;
            }
        }
    }
    Ok(())
}

fn write_downward(dir: &Path, pod: &Pod, items: &[DownwardAPIVolumeFile]) -> Result<()> {
    for item in items {
        let value = match &item.field_ref {
            Some(field) => field_value(pod, &field.field_path).unwrap_or_default(),
            // Resource fields (limits, requests) are not simulated.
            None => String::new(),
        };
        write_file(&dir.join(&item.path), value.as_bytes(), item.mode)?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], mode: Option<i32>) -> Result<()> {
    let relative_ok = path
        .components()
        .all(|c| !matches!(c, std::path::Component::ParentDir));
    if !relative_ok {
        bail!("volume path {} leaves the volume", path.display());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    let mode = mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A token of the pod's ServiceAccount, bound to the pod, from the TokenRequest API
/// (what the kubelet projects into `kube-api-access-*` volumes).
async fn service_account_token(
    context: &Context,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: Option<i64>,
) -> Result<String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let accounts: Api<ServiceAccount> = Api::namespaced(context.client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]),
            expiration_seconds: Some(expiration_seconds.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let response = accounts
        .create_token_request(account, &Default::default(), &request)
        .await
        .with_context(|| format!("requesting a token of serviceaccount {namespace}/{account}"))?;
    Ok(response.status.and_then(|s| s.token).unwrap_or_default())
}

/// The value of a downward-API field path, as the kubelet resolves it.
pub(crate) fn field_value(pod: &Pod, field_path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let lookup = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|m| m.get(key).cloned())
    };
    let format_map = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some(key) = field_path
        .strip_prefix("metadata.labels['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return lookup(&meta.labels, key);
    }
    if let Some(key) = field_path
        .strip_prefix("metadata.annotations['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return lookup(&meta.annotations, key);
    }
    match field_path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => Some(format_map(&meta.labels)),
        "metadata.annotations" => Some(format_map(&meta.annotations)),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.hostIP" | "status.podIP" => Some("127.0.0.1".to_owned()),
        "status.hostIPs" | "status.podIPs" => Some("127.0.0.1".to_owned()),
        _ => None,
    }
}

/// The mounts of one container: its volume mounts, and its termination message file.
pub(crate) fn container_mounts(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    termination_file: &Path,
) -> Result<Mounts> {
    let mut mounts = Mounts::default();
    for mount in container.volume_mounts.as_deref().unwrap_or_default() {
        let dir = volumes
            .get(&mount.name)
            .ok_or_else(|| anyhow!("volume mount {} names no volume of the pod", mount.name))?;
        let host = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
            Some(sub_path) => {
                let host = dir.join(sub_path);
                if !host.exists() {
                    std::fs::create_dir_all(&host)?;
                }
                host
            }
            None => dir.clone(),
        };
        mounts.add(&mount.mount_path, host);
    }
    let termination_path = container
        .termination_message_path
        .as_deref()
        .unwrap_or("/dev/termination-log");
    mounts.add(termination_path, termination_file.to_owned());
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_mount_are_rewritten_to_the_host_and_others_are_left_alone() {
        let mut mounts = Mounts::default();
        mounts.add("/etc/creds/", PathBuf::from("/tmp/pod/volumes/creds"));
        mounts.add("/etc/creds/ssh", PathBuf::from("/tmp/pod/volumes/ssh"));
        mounts.add(
            "/dev/termination-log",
            PathBuf::from("/tmp/pod/termination/worker"),
        );
        assert_eq!(mounts.rewrite("/etc/creds"), "/tmp/pod/volumes/creds");
        assert_eq!(
            mounts.rewrite("/etc/creds/token"),
            "/tmp/pod/volumes/creds/token"
        );
        assert_eq!(
            mounts.rewrite("/etc/creds/ssh/id"),
            "/tmp/pod/volumes/ssh/id"
        );
        assert_eq!(
            mounts.rewrite("--identity=/etc/creds/ssh/id"),
            "--identity=/tmp/pod/volumes/ssh/id"
        );
        assert_eq!(
            mounts.rewrite("/dev/termination-log"),
            "/tmp/pod/termination/worker"
        );
        assert_eq!(mounts.rewrite("/etc/credsX"), "/etc/credsX");
        assert_eq!(mounts.rewrite("relative/etc/creds"), "relative/etc/creds");
        assert_eq!(
            mounts.rewrite("--url=https://example.com"),
            "--url=https://example.com"
        );
    }
}
