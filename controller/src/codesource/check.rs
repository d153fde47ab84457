//! Phase 2 of a CodeSource reconcile: check heads. Lists the wanted heads of the
//! control repository (one listing per repository and credentials, shared by every
//! CodeSource asking meanwhile) and the floating modules of the last build, when a
//! trigger is due. Writes `status.heads`, `lastCheckTime`, `unreachableModules`; a
//! failed listing becomes `FetchFailed` (Ready False with its reason) in `report`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use openvox_crds::codesource::BuildRecord;
use openvox_crds::{CodeSource, CodeSourceStatus};
use openvox_git::Credentials;

use super::code_config::{CodeConfigFacts, control_url};
use super::context::{Context, key};
use super::error::{Error, kube};
use super::floating::{self, Found};
use super::heads::{
    HeadError, HeadRequest, RemoteHeads, instant_of, shared_listing_since, wanted_heads,
};
use super::observe::{Triggers, never_reconciled};

/// What the check found besides what it wrote into the status.
#[derive(Debug, Default)]
pub struct Checked {
    /// The listing failed; reported as `FetchFailed`, then retried with backoff.
    pub failed: Option<Error>,
    /// What moved among the floating modules, in words, when this check found it.
    pub moved: Option<String>,
}

/// Checks the heads when `triggers` say so, into `status`. `now` and `now_instant`
/// were read together: the tick's instant is derived from both (see `instant_of`).
#[allow(clippy::too_many_arguments)]
pub async fn check(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    code_config: Option<&CodeConfigFacts>,
    git_timeout: Duration,
    triggers: &Triggers,
    old: &CodeSourceStatus,
    status: &mut CodeSourceStatus,
    (now, now_instant): (Timestamp, Instant),
) -> Checked {
    if !triggers.check_now {
        return Checked::default();
    }
    // Which listings this check may share: see `shared_listing_since`.
    let created = cs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let since = shared_listing_since(
        triggers.fresh_wanted(old),
        never_reconciled(old),
        created,
        triggers.tick.due,
    );
    let not_before = match since {
        Some(since) => instant_of(since, now, now_instant),
        None => Instant::now(),
    };
    let (heads, auth) = match check_heads(ctx, cs, ns, code_config, git_timeout, not_before).await {
        Ok(found) => found,
        Err(e) => {
            return Checked {
                failed: Some(e),
                moved: None,
            };
        }
    };
    status.heads = heads;
    status.last_check_time = Some(Time(now));
    if triggers.check_request.is_some() {
        status.last_handled_check_requested_at = triggers.check_request.clone();
    }
    // The floating modules of the last build, looked at in the same check.
    let found = match &old.last_build {
        Some(build) => {
            check_floating(ctx, cs, code_config, build, &auth, git_timeout, not_before).await
        }
        None => Found::default(),
    };
    let moved = (!found.moved.is_empty()).then(|| found.describe_moved());
    ctx.memory.modules_moved(&key(cs), found.moved_digest());
    status.unreachable_modules = found.unreachable;
    Checked {
        failed: None,
        moved,
    }
}

/// The wanted heads of the control repository, and the credentials it was listed with.
async fn check_heads(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    code_config: Option<&CodeConfigFacts>,
    timeout: Duration,
    not_before: Instant,
) -> Result<(BTreeMap<String, String>, Credentials), Error> {
    let auth = match &cs.spec.git.secret_ref {
        None => Credentials::none(),
        Some(secret_ref) => match ctx.memory.git_secret(ns, &secret_ref.name) {
            Some(auth) => auth,
            None => read_git_secret(ctx, ns, &secret_ref.name).await?,
        },
    };
    let url = control_url(cs, code_config);
    // Static environments may name tags: then every branch and tag is listed, by full
    // name, as for a module repository (the credentials of the repository itself apply).
    let statics = code_config.filter(|c| !c.statics.is_empty());
    let request = HeadRequest {
        url: url.clone(),
        auth: auth.clone(),
        timeout,
        module_of: statics.map(|_| url.clone()),
    };
    let all = match ctx.heads.heads(request, not_before).await {
        Ok(all) => all,
        Err(e) => {
            // Perhaps the credentials changed: read the Secret again next time.
            if let Some(secret_ref) = &cs.spec.git.secret_ref {
                ctx.memory.forget_git_secret(ns, &secret_ref.name);
            }
            return Err(e.into());
        }
    };
    let branches: RemoteHeads = match statics {
        None => (*all).clone(),
        Some(_) => all
            .iter()
            .filter_map(|(name, commit)| {
                Some((name.strip_prefix("refs/heads/")?.to_owned(), commit.clone()))
            })
            .collect(),
    };
    let mut wanted = wanted_heads(
        &branches,
        &cs.spec.git.branches,
        &cs.spec.git.exclude_branches,
    );
    if let Some(code_config) = code_config {
        wanted.retain(|branch, _| code_config.selector.selects(branch));
    }
    if let Some(statics) = statics {
        statics.add_static_heads(&all, &mut wanted);
    }
    Ok((wanted, auth))
}

/// Reads the git Secret `name` and remembers what it holds (see `Memory::git_secret`).
async fn read_git_secret(ctx: &Context, ns: &str, name: &str) -> Result<Credentials, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(kube("get git Secret"))?
        .ok_or_else(|| Error::Secret {
            name: name.to_owned(),
            problem: "does not exist".into(),
        })?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    // Checked by the rules the worker applies to the same Secret, so a CodeSource the
    // worker would refuse fails its head check too.
    let auth = Credentials::from_secret_data(&data)
        .map_err(|e| Error::HeadCheck(HeadError::Credentials(e.to_string())))?;
    ctx.memory.remember_git_secret(ns, name, auth.clone());
    Ok(auth)
}

/// Looks at the floating modules of `build`: every module repository listed and every
/// Forge module looked up once per tick, shared with the other CodeSources (see
/// `floating` for what counts as moved). Module repositories get the credentials the
/// worker's fetches give them.
async fn check_floating(
    ctx: &Context,
    cs: &CodeSource,
    code_config: Option<&CodeConfigFacts>,
    build: &BuildRecord,
    auth: &Credentials,
    timeout: Duration,
    not_before: Instant,
) -> Found {
    let lookups = floating::lookups(build);
    if lookups.is_empty() {
        return Found::default();
    }
    let git = futures::future::join_all(lookups.git.iter().map(|url| async {
        let request = HeadRequest {
            url: url.clone(),
            auth: auth.clone(),
            timeout,
            module_of: Some(control_url(cs, code_config)),
        };
        let listed = ctx.heads.heads(request, not_before).await;
        (url.clone(), listed.map_err(|e| e.to_string()))
    }));
    let forge = futures::future::join_all(lookups.forge.iter().map(|(base, slug)| async {
        let current = ctx
            .forge
            .current(base, slug, auth.ca_pem.as_deref(), timeout, not_before)
            .await;
        ((base.clone(), slug.clone()), current)
    }));
    let (git, forge) = futures::join!(git, forge);
    floating::compare(
        build,
        &git.into_iter().collect(),
        &forge.into_iter().collect(),
    )
}
