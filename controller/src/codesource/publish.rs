//! Phase 5 of a CodeSource reconcile: publish. Puts the last build into the Config
//! named by `configRef` (the operator's `Config.spec.code`, in whichever shape its CRD
//! has), unless the status says it is there already. Its findings set, in `report`:
//! `ConfigUpdated`, and Ready False (`ConfigNotFound`) when the Config is missing or
//! refuses the write.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch};
use openvox_crds::codesource::ConfigRecord;
use openvox_crds::names::conditions as types;
use openvox_crds::operator::Config;
use openvox_crds::{CodeSource, CodeSourceStatus};
use tracing::info;

use super::config::{
    CONFIG_CRD, CodeTarget, ShapeKind, carries, code_patch, code_target, shape_from_crd,
};
use super::context::{Context, apply_params, key};
use super::decide::{JobState, JobSummary};
use super::error::{Error, kube};
use super::status::ConfigState;
use crate::conditions::is_true;

/// How long a detected Config shape is trusted before the CRD is read again.
const SHAPE_TTL: Duration = Duration::from_secs(600);

/// What publishing found.
#[derive(Debug)]
pub struct Published {
    /// Where the Config stands.
    pub state: ConfigState,
    /// What the Config carries once this reconcile is done, when that is ours.
    pub target: Option<CodeTarget>,
    /// Publishing failed; reported, then retried with backoff.
    pub error: Option<Error>,
}

/// Publishes the last build of `cs` (whose Jobs are `jobs`) into its Config, recording
/// what was written in `status.config`.
pub async fn publish(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    jobs: &[JobSummary],
    old: &CodeSourceStatus,
    status: &mut CodeSourceStatus,
    now: Timestamp,
) -> Published {
    let not_now = |state| Published {
        state,
        target: None,
        error: None,
    };
    let (Some(config_name), Some(build)) = (
        cs.spec.config_ref.as_ref().filter(|c| !c.is_empty()),
        &old.last_build,
    ) else {
        return not_now(ConfigState::NotWanted);
    };
    // The worker writes its record before it exits: until its Job has finished, the
    // Config waits for the record to settle.
    let job_active = build.job_name.as_deref().is_some_and(|j| {
        jobs.iter()
            .any(|s| s.name == j && s.state == JobState::Active)
    });
    if job_active {
        return not_now(ConfigState::Pending);
    }
    // The last build was made for another output (switched since): the Config keeps
    // what it has until the first build for this one lands.
    let Some(target) = code_target(&cs.spec.output, &build.image) else {
        return not_now(ConfigState::Pending);
    };
    match publish_config(ctx, cs, ns, config_name, &target, old, now).await {
        Ok(record) => {
            if let Some(record) = record {
                status.config = Some(record);
            }
            Published {
                state: ConfigState::Updated {
                    name: config_name.clone(),
                    image: build.image.clone(),
                },
                target: Some(target),
                error: None,
            }
        }
        Err(Error::ConfigNotFound(n)) => Published {
            state: ConfigState::NotFound(n.clone()),
            target: None,
            error: Some(Error::ConfigNotFound(n)),
        },
        Err(e) => Published {
            state: ConfigState::Failed(e.to_string()),
            target: None,
            error: Some(e),
        },
    }
}

async fn config_shape(ctx: &Context) -> Result<ShapeKind, Error> {
    if let Some((at, shape)) = *ctx.config_shape.lock().unwrap_or_else(|e| e.into_inner())
        && at.elapsed() < SHAPE_TTL
    {
        return Ok(shape);
    }
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let crd = crds
        .get_opt(CONFIG_CRD)
        .await
        .map_err(kube("get Config CRD"))?
        .ok_or_else(|| Error::ConfigShape(format!("CRD {CONFIG_CRD} is not installed")))?;
    let shape = shape_from_crd(&crd).map_err(Error::ConfigShape)?;
    *ctx.config_shape.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), shape));
    Ok(shape)
}

/// Puts `target` into the Config unless status says it is there already. Returns the
/// new record when something was written.
async fn publish_config(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    config_name: &str,
    target: &CodeTarget,
    old: &CodeSourceStatus,
    now: Timestamp,
) -> Result<Option<ConfigRecord>, Error> {
    let image = match target {
        CodeTarget::Image(i) => i.clone(),
        CodeTarget::Claim(_) => old
            .last_build
            .as_ref()
            .map(|b| b.image.clone())
            .unwrap_or_default(),
    };
    if old
        .config
        .as_ref()
        .is_some_and(|c| c.name == config_name && c.image == image)
        && is_true(&old.conditions, types::CONFIG_UPDATED)
    {
        return Ok(None);
    }
    let configs: Api<Config> = Api::namespaced(ctx.client.clone(), ns);
    let config = configs
        .get_opt(config_name)
        .await
        .map_err(kube("get Config"))?
        .ok_or_else(|| Error::ConfigNotFound(config_name.to_string()))?;
    if !carries(&config, target) {
        let shape = config_shape(ctx).await?;
        let patch = code_patch(shape, config.spec.code.as_ref(), target);
        if let Err(e) = configs
            .patch(config_name, &apply_params(), &Patch::Apply(&patch))
            .await
        {
            // The CRD may have changed shape under us: read it again next time.
            *ctx.config_shape.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Err(Error::Kube {
                action: "apply Config.spec.code",
                source: e,
            });
        }
        info!(codesource = %key(cs), config = config_name, image = %image, "Config updated");
    }
    Ok(Some(ConfigRecord {
        name: config_name.to_string(),
        image,
        updated_at: Time(now),
    }))
}
