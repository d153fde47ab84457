//! From a control repository to Puppet environments: list the heads, pick the branches,
//! fetch them shallow in one go, read each branch's modules (its Puppetfile, or with
//! `--code-config` its openvox-code module files, see [`crate::codeconfig`]), resolve
//! them (shared across environments), and assemble each environment's tree.
//!
//! The result is, per environment, an [`EnvironmentTree`] and its [`EnvironmentInputs`]
//! (branch, commit, modules with versions and checksums). A branch whose name is refused,
//! whose Puppetfile or module files are malformed, whose module fails or whose tree is
//! unsafe fails alone; the other environments are still built.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openvox_crds::codesource::ModuleRecord;

use crate::branches::{
    BranchError, BranchSelection, EnvironmentPlan, InvalidBranches, make_room_for_statics,
    plan_environments,
};
use crate::codeconfig::CodeConfigModules;
use crate::codeconfig::branch::read_environment_modules;
use crate::codeconfig::statics::find_statics;
use crate::decode::decode_ahead;
use crate::forge::{ForgeClient, ForgeError};
use crate::git::fetch::Depth;
use crate::git::{Credentials, FetchWant, FetchedRepo, GitAccess, GitError, RepoUrl, error_chain};
pub use crate::inputs::{EnvironmentInputs, FORMAT_VERSION};
use crate::limits::{Bytes, Limits};
use crate::module_reuse::PreviousLayers;
use crate::pins::Pins;
use crate::progress::{Step, count};
use crate::puppetfile::resolve::{ModuleContent, ResolvedModule, Resolver};
use crate::puppetfile::{ModuleDecl, Puppetfile, parse_puppetfile, puppetfile_text};
use crate::tree::{ContentReader, EnvironmentTree, TreeStats};
use crate::unchanged::{
    Check, Decision, RecordedEnvironment, decide, forge_check_holds, git_check_holds,
};
use crate::validate::Problem;
use crate::validate::builtin::{CheckCache, Checked, check_environment};
use crate::validate::puppet::{PuppetValidation, validate};

/// What to build: the repository, the branches and how to reach everything.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub url: String,
    pub selection: BranchSelection,
    pub invalid_branches: InvalidBranches,
    pub credentials: Credentials,
    /// Forge v3 API base URL.
    pub forge_url: String,
    /// Time limit of one git operation or one Forge request.
    pub timeout: Duration,
    pub limits: Limits,
    /// Network operations at a time.
    pub jobs: usize,
    /// Accept full history from servers that ignore depth 1 (see [`GitError::NotShallow`]).
    pub allow_full_history: bool,
    /// Where Forge downloads are unpacked (a temporary directory inside it is removed
    /// when the build is dropped).
    pub work_dir: PathBuf,
    /// Puppet's parser in the validator container, when `spec.validate` asks for it.
    pub puppet: Option<PuppetValidation>,
    /// `--code-config`: each branch's modules come from openvox-code's module files
    /// under this configuration instead of its Puppetfile.
    pub code_config: Option<Arc<CodeConfigModules>>,
}

/// An error that stops the whole build (as opposed to one environment).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Forge(#[from] ForgeError),
    #[error(transparent)]
    Branches(#[from] BranchError),
    #[error("no branch of {url} matches {patterns} (the repository has {available} branches)")]
    NoBranches {
        url: String,
        patterns: String,
        available: usize,
    },
    #[error("{0}")]
    Local(String),
}

/// A built environment.
#[derive(Debug, Clone)]
pub struct Environment {
    pub inputs: EnvironmentInputs,
    pub tree: EnvironmentTree,
    pub stats: TreeStats,
}

/// A selected branch that did not become an environment, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentFailure {
    /// The environment name, when the branch has one.
    pub name: Option<String>,
    pub branch: String,
    pub reason: String,
    /// The file a check found wrong, with its line and column.
    pub problem: Option<Problem>,
}

impl std::fmt::Display for EnvironmentFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) if name != &self.branch => {
                write!(f, "{name} (branch {}): {}", self.branch, self.reason)
            }
            Some(name) => write!(f, "{name}: {}", self.reason),
            None => write!(f, "branch {}: {}", self.branch, self.reason),
        }
    }
}

/// The outcome of a build.
#[derive(Debug)]
pub struct Environments {
    /// Built environments in name order.
    pub built: Vec<Environment>,
    /// Environments found unchanged since the recorded build, not fetched, in name
    /// order.
    pub unchanged: Vec<RecordedEnvironment>,
    /// What an image records about the modules of each built environment, by name
    /// (missing when a module URL carries credentials: see [`Pins::new`]).
    pub pins: BTreeMap<String, Pins>,
    /// Selected branches that failed, in branch order.
    pub failed: Vec<EnvironmentFailure>,
    /// Names of all environments the selected branches map to, built or failed. An
    /// output must not purge these: a failed environment keeps its previous version.
    pub selected_names: BTreeSet<String>,
    /// The control repository (kept while trees refer to it).
    pub control: Option<Arc<FetchedRepo>>,
    _work: Option<tempfile::TempDir>,
}

/// Builds the environments described by `options`.
pub async fn build_environments(options: &SourceOptions) -> Result<Environments, BuildError> {
    build_environments_reusing(options, &BTreeMap::new(), None).await
}

/// Builds the environments described by `options`, except those `recorded` (by
/// environment name) shows unchanged: their branch head is the recorded commit and
/// their modules still resolve the same (see [`crate::unchanged`]). Those are neither
/// fetched nor built, and come back in [`Environments::unchanged`]. Git modules that
/// `previous` holds are taken from its layers instead of being fetched.
pub async fn build_environments_reusing(
    options: &SourceOptions,
    recorded: &BTreeMap<String, RecordedEnvironment>,
    previous: Option<Arc<PreviousLayers>>,
) -> Result<Environments, BuildError> {
    let url = RepoUrl::parse(&options.url).map_err(GitError::from)?;
    // Every temporary file of this build lives below `work`: dropping it removes them
    // all, even those of an operation abandoned at its deadline.
    let work = tempfile::Builder::new()
        .prefix("openvox-code-work-")
        .tempdir_in(&options.work_dir)
        .map_err(|e| {
            BuildError::Local(format!(
                "work directory in {}: {e}",
                options.work_dir.display()
            ))
        })?;
    let access = GitAccess::new_in(
        options.credentials.clone(),
        url.clone(),
        options.timeout,
        work.path(),
    )?
    .with_full_history_allowed(options.allow_full_history);
    let origin = access.origin()?;

    // 1. Heads (and tags, when static environments may name them).
    let statics = options
        .code_config
        .as_ref()
        .filter(|c| !c.config.environments.is_empty());
    let step = Step::start("list", &url);
    let remote = origin.clone();
    let prefixes: &'static [&'static str] = match statics {
        Some(_) => &["refs/heads/", "refs/tags/"],
        None => &["refs/heads/"],
    };
    let listed = tokio::task::spawn_blocking(move || remote.list_refs(prefixes))
        .await
        .map_err(|e| BuildError::Local(format!("listing heads stopped: {e}")))?;
    let refs: BTreeMap<String, gix::ObjectId> = match listed {
        Ok(refs) => refs.iter().map(|r| (r.name.clone(), r.commit())).collect(),
        Err(e) => {
            step.failed(&e);
            return Err(e.into());
        }
    };
    let heads: BTreeMap<&str, gix::ObjectId> = refs
        .iter()
        .filter_map(|(name, commit)| Some((name.strip_prefix("refs/heads/")?, *commit)))
        .collect();
    let selected = options.selection.select(heads.keys().copied());
    let found_statics = statics.map(|c| find_statics(&c.config, &refs));
    let static_count = found_statics.as_ref().map_or(0, Vec::len);
    step.done(format!(
        "{} branches, {} selected{}",
        heads.len(),
        selected.len(),
        match static_count {
            0 => String::new(),
            n => format!(", {n} static environment{}", if n == 1 { "" } else { "s" }),
        }
    ));
    if selected.is_empty() && static_count == 0 {
        return Err(BuildError::NoBranches {
            url: url.to_string(),
            patterns: options
                .selection
                .include()
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            available: heads.len(),
        });
    }

    // 2. Names; a static environment wins over a branch of its name.
    let (mut plans, mut refused) = plan_environments(&selected, options.invalid_branches);
    let mut commits: BTreeMap<String, gix::ObjectId> = plans
        .iter()
        .filter_map(|p| Some((p.name.clone(), *heads.get(p.branch.as_str())?)))
        .collect();
    let mut failed = Vec::new();
    let found_statics = found_statics.unwrap_or_default();
    let static_names: BTreeSet<&str> = statics
        .map(|c| c.config.environments.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for lost in make_room_for_statics(&mut plans, &mut refused, &static_names) {
        let message = format!("static environment {} wins over this branch", lost.name);
        tracing::info!(
            "{}",
            crate::progress::line("branch", &lost.branch, &message, Duration::ZERO)
        );
    }
    for found in found_statics {
        match found {
            Ok(found) => {
                commits.insert(found.plan.name.clone(), found.commit);
                plans.push(found.plan);
            }
            // Named by the environment alone: the reason names its ref.
            Err(missing) => failed.push(EnvironmentFailure {
                name: Some(missing.name.clone()),
                branch: missing.name,
                reason: missing.reason,
                problem: None,
            }),
        }
    }
    plans.sort();
    failed.extend(refused.iter().map(|r| EnvironmentFailure {
        name: r.environment.clone(),
        branch: r.branch.clone(),
        reason: r.reason.to_string(),
        problem: None,
    }));
    for f in &failed {
        tracing::warn!(
            "{}",
            crate::progress::line(
                "branch",
                &f.branch,
                &format!("FAILED: {}", f.reason),
                Duration::ZERO
            )
        );
    }
    let mut selected_names: BTreeSet<String> = plans.iter().map(|p| p.name.clone()).collect();
    selected_names.extend(failed.iter().filter_map(|f| f.name.clone()));
    if plans.is_empty() {
        failed.sort_by(|a, b| a.branch.cmp(&b.branch));
        return Ok(Environments {
            built: Vec::new(),
            unchanged: Vec::new(),
            pins: BTreeMap::new(),
            failed,
            selected_names,
            control: None,
            _work: Some(work),
        });
    }

    // 3. Modules are resolved through one resolver, shared by the unchanged checks and
    // the environments built.
    let forge = ForgeClient::new(
        options.timeout,
        options.credentials.ca_pem.as_deref(),
        options.limits,
        work.path(),
    )?;
    let resolver = Arc::new(
        Resolver::new(
            access,
            forge,
            &options.forge_url,
            options.jobs,
            options.limits,
        )
        .with_previous_modules(previous.clone()),
    );

    // 4. Environments that did not change since the recorded build are not fetched.
    let (unchanged, plans) = split_unchanged(plans, &commits, recorded, &resolver, options).await;
    if plans.is_empty() {
        failed.sort_by(|a, b| a.branch.cmp(&b.branch));
        return Ok(Environments {
            built: Vec::new(),
            unchanged,
            pins: BTreeMap::new(),
            failed,
            selected_names,
            control: None,
            _work: Some(work),
        });
    }

    // 5. One shallow fetch of all other wanted branches (and static refs).
    let step = Step::start("fetch", &url);
    let wants: Vec<FetchWant> = plans
        .iter()
        .map(|p| p.fetch_want(commits[&p.name]))
        .collect();
    let remote = origin.clone();
    // A static environment may want what a branch environment wants too.
    let fetch_wants: Vec<FetchWant> = wants
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let wanted_refs = fetch_wants.len();
    let fetched = tokio::task::spawn_blocking(move || remote.fetch(&fetch_wants, Depth::Shallow))
        .await
        .map_err(|e| BuildError::Local(format!("fetch stopped: {e}")))?;
    let control = match fetched {
        Ok(repo) => Arc::new(repo),
        Err(e) => {
            step.failed(&e);
            return Err(e.into());
        }
    };
    step.done(format!(
        "{wanted_refs} ref{}, {} received",
        if wanted_refs == 1 { "" } else { "s" },
        Bytes(control.received_bytes())
    ));
    options
        .limits
        .check_fetched(control.received_bytes())
        .map_err(BuildError::Local)?;
    let decoding = control.clone();
    let limits = options.limits;
    if let Err(e) = tokio::task::spawn_blocking(move || decode_ahead(&decoding, limits)).await {
        tracing::warn!("decoding blobs stopped: {e}; reading blobs from the pack instead");
    }

    // 6. Environments, concurrently; modules are shared through the resolver, and the
    // results of the built-in checks by blob (files of a previous layer passed them).
    let checks = Arc::new(CheckCache::default());
    let mut tasks = tokio::task::JoinSet::new();
    for (plan, want) in plans.into_iter().zip(wants) {
        let checks = checks.clone();
        let previous = previous.clone();
        let resolver = resolver.clone();
        let control = control.clone();
        let limits = options.limits;
        let code_config = options.code_config.clone();
        tasks.spawn(async move {
            let step = Step::start("env", &plan.name);
            let result = build_one(
                &plan,
                &want,
                &control,
                &resolver,
                code_config.as_ref(),
                limits,
            )
            .await;
            let result = match result {
                Ok((env, pins, described)) => {
                    step.done(format!(
                        "{} files, {}, {} module{} {described}, {}",
                        count(env.stats.files),
                        Bytes(env.stats.bytes),
                        env.inputs.modules.len(),
                        if env.inputs.modules.len() == 1 {
                            ""
                        } else {
                            "s"
                        },
                        env.inputs.revision()
                    ));
                    if let Some(previous) = &previous
                        && let Some(files) = previous.published_files(&plan.name).await
                    {
                        checks.trust(&files);
                    }
                    check_built(env, checks).await.map(|env| (env, pins))
                }
                Err(reason) => {
                    step.failed(&reason);
                    Err((reason, None))
                }
            };
            (plan, result)
        });
    }
    let mut built = Vec::new();
    let mut pins = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (plan, result) =
            joined.map_err(|e| BuildError::Local(format!("an environment task stopped: {e}")))?;
        match result {
            Ok((env, env_pins)) => {
                if let Some(p) = env_pins {
                    pins.insert(env.inputs.name.clone(), p);
                }
                built.push(env);
            }
            Err((reason, problem)) => failed.push(EnvironmentFailure {
                name: Some(plan.name),
                branch: plan.branch,
                reason,
                problem,
            }),
        }
    }
    built.sort_by(|a, b| a.inputs.name.cmp(&b.inputs.name));

    // 7. Puppet's parser, when asked for: an environment it rejects is held back.
    if let Some(puppet) = &options.puppet {
        let rebuilt: Vec<_> = built
            .iter()
            .map(|env| (env.inputs.name.clone(), env.tree.clone()))
            .collect();
        let mut rejected = validate(puppet, &rebuilt).await;
        built.retain(|env| match rejected.remove(&env.inputs.name) {
            None => true,
            Some(rejection) => {
                pins.remove(&env.inputs.name);
                failed.push(EnvironmentFailure {
                    name: Some(env.inputs.name.clone()),
                    branch: env.inputs.branch.clone(),
                    reason: rejection.reason,
                    problem: rejection.problem,
                });
                false
            }
        });
    }
    built.sort_by(|a, b| a.inputs.name.cmp(&b.inputs.name));
    failed.sort_by(|a, b| a.branch.cmp(&b.branch));
    Ok(Environments {
        built,
        unchanged,
        pins,
        failed,
        selected_names,
        control: Some(control),
        _work: Some(work),
    })
}

/// Splits `plans` into environments unchanged since `recorded` (checked with cheap
/// lookups only) and the plans to fetch and build.
async fn split_unchanged(
    plans: Vec<EnvironmentPlan>,
    commits: &BTreeMap<String, gix::ObjectId>,
    recorded: &BTreeMap<String, RecordedEnvironment>,
    resolver: &Resolver,
    options: &SourceOptions,
) -> (Vec<RecordedEnvironment>, Vec<EnvironmentPlan>) {
    if recorded.is_empty() {
        return (Vec::new(), plans);
    }
    let verdicts = futures_join_all(plans.iter().map(|plan| async move {
        let record = recorded.get(&plan.name)?;
        let head = commits.get(&plan.name)?.to_string();
        let step = Step::start("check", &plan.name);
        let digest = options.code_config.as_ref().map(|c| c.digest_for(plan));
        let checks = match decide(
            record,
            &plan.branch,
            plan.follows(),
            &head,
            &options.forge_url,
            digest.as_deref(),
        ) {
            Decision::Unchanged(checks) => checks,
            Decision::Fetch(reason) => {
                step.done(format!("{reason}; fetching"));
                return None;
            }
        };
        match failed_check(&checks, resolver).await {
            None => {
                step.done(format!(
                    "unchanged at {}, {} floating module{} checked; not fetched",
                    &head[..head.len().min(12)],
                    checks.len(),
                    if checks.len() == 1 { "" } else { "s" }
                ));
                Some(record.clone())
            }
            Some(reason) => {
                step.done(format!("{reason}; fetching"));
                None
            }
        }
    }))
    .await;
    let mut unchanged = Vec::new();
    let mut rest = Vec::new();
    for (plan, verdict) in plans.into_iter().zip(verdicts) {
        match verdict {
            Some(record) => unchanged.push(record),
            None => rest.push(plan),
        }
    }
    (unchanged, rest)
}

/// Runs the lookups of `checks`; the first that does not hold, as a reason.
async fn failed_check(checks: &[Check], resolver: &Resolver) -> Option<String> {
    let results = futures_join_all(checks.iter().map(|check| async move {
        match check {
            Check::Git { module, url, .. } => match resolver.list(url).await {
                Ok(refs) if git_check_holds(check, &refs) => None,
                Ok(_) => Some(format!("module {module} moved")),
                Err(e) => Some(format!("module {module}: {e}")),
            },
            Check::ForgeCurrent {
                module, base, slug, ..
            } => match resolver.forge_release(base, slug, None).await {
                Ok(current) if forge_check_holds(check, &current) => None,
                Ok(current) => Some(format!(
                    "module {module} has a new release {}",
                    current.version
                )),
                Err(e) => Some(format!("module {module}: {e}")),
            },
        }
    }))
    .await;
    results.into_iter().flatten().next()
}

/// Reads and parses the Puppetfile at the root of `tree`, if there is one.
fn read_puppetfile(
    control: &FetchedRepo,
    tree: gix::ObjectId,
    limits: Limits,
) -> Result<Option<Puppetfile>, String> {
    let repo = control.repo();
    let tree = repo.find_tree(tree).map_err(|e| error_chain(&e))?;
    let Some(entry) = tree.find_entry("Puppetfile") else {
        return Ok(None);
    };
    if !entry.mode().is_blob() {
        return Err("Puppetfile is not a regular file".into());
    }
    let id = entry.object_id();
    let size = repo.find_header(id).map_err(|e| error_chain(&e))?.size();
    if size > limits.max_puppetfile_bytes {
        return Err(format!(
            "Puppetfile has {} (limit {})",
            Bytes(size),
            Bytes(limits.max_puppetfile_bytes)
        ));
    }
    let blob = repo.find_object(id).map_err(|e| error_chain(&e))?;
    let text = puppetfile_text(&blob.data)?;
    parse_puppetfile(text).map(Some).map_err(|e| e.to_string())
}

/// A branch's modules, and what described them in words for the log: `from
/// Puppetfile`, `(no Puppetfile)` or `from openvox-code.yaml + modules/base.yaml`.
fn read_modules(
    control: &FetchedRepo,
    tree: gix::ObjectId,
    plan: &EnvironmentPlan,
    code_config: Option<&CodeConfigModules>,
    limits: Limits,
) -> Result<(Option<Puppetfile>, String), String> {
    let Some(config) = code_config else {
        let puppetfile = read_puppetfile(control, tree, limits)?;
        let described = match &puppetfile {
            Some(_) => "from Puppetfile",
            None => "(no Puppetfile)",
        };
        return Ok((puppetfile, described.to_owned()));
    };
    let modules = read_environment_modules(config, control, tree, plan)?;
    for stale in &modules.stale_locks {
        tracing::warn!(
            "{}",
            crate::progress::line("lock", &plan.name, stale, Duration::ZERO)
        );
    }
    let described = format!("from {}", modules.description(&config.main_file));
    Ok((Some(modules.puppetfile), described))
}

async fn build_one(
    plan: &EnvironmentPlan,
    want: &FetchWant,
    control: &Arc<FetchedRepo>,
    resolver: &Resolver,
    code_config: Option<&Arc<CodeConfigModules>>,
    limits: Limits,
) -> Result<(Environment, Option<Pins>, String), String> {
    let commit = control
        .commit_of(want)
        .ok_or_else(|| format!("{want} was not fetched"))?;
    let tree_id = control.tree_of(commit).map_err(|e| e.to_string())?;
    let (puppetfile, described) = {
        let control = control.clone();
        let plan = plan.clone();
        let code_config = code_config.cloned();
        tokio::task::spawn_blocking(move || {
            read_modules(&control, tree_id, &plan, code_config.as_deref(), limits)
        })
        .await
        .map_err(|e| e.to_string())??
    };
    let digest = code_config.map(|c| c.digest_for(plan));
    let (decls, forge_line): (Vec<ModuleDecl>, Option<String>) = match puppetfile {
        Some(p) => (p.modules, p.forge),
        None => (Vec::new(), None),
    };
    check_module_paths(&decls)?;

    let resolutions = futures_join_all(decls.iter().map(|decl| {
        let wanted_by = (plan.name.as_str(), plan.follows());
        resolver.resolve(decl, wanted_by, forge_line.as_deref())
    }))
    .await;
    let mut modules: Vec<(ModuleDecl, ResolvedModule)> = Vec::new();
    let mut errors = Vec::new();
    for (decl, result) in decls.into_iter().zip(resolutions) {
        match result {
            Ok(resolved) => modules.push((decl, resolved)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    modules.sort_by(|(a, _), (b, _)| a.path.cmp(&b.path));

    let inputs = EnvironmentInputs {
        name: plan.name.clone(),
        branch: plan.branch.clone(),
        follows: plan.declared.map(|_| plan.name.clone()),
        commit: commit.to_string(),
        modules: modules.iter().map(|(_, m)| m.record.clone()).collect(),
        code_config: digest.clone(),
    };
    let declared: Vec<(&ModuleDecl, &ModuleRecord)> =
        modules.iter().map(|(d, m)| (d, &m.record)).collect();
    let pins = Pins::new(
        forge_line.as_deref(),
        &resolver.forge_base(forge_line.as_deref()),
        digest.as_deref(),
        &declared,
    );
    let control = control.clone();
    let tree = tokio::task::spawn_blocking(move || assemble(&control, tree_id, &modules, limits))
        .await
        .map_err(|e| e.to_string())??;
    let stats = tree.stats();
    Ok((
        Environment {
            inputs,
            tree,
            stats,
        },
        pins,
        described,
    ))
}

/// The built-in checks of a built environment (see [`crate::validate::builtin`]), with
/// one progress line.
async fn check_built(
    env: Environment,
    cache: Arc<CheckCache>,
) -> Result<Environment, (String, Option<Problem>)> {
    let step = Step::start("verify", &env.inputs.name);
    let checked = tokio::task::spawn_blocking(move || {
        let checked = check_environment(&env.tree, &mut ContentReader::new(), &cache);
        (env, checked)
    })
    .await;
    let (
        env,
        Checked {
            problems,
            files,
            known,
        },
    ) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            let reason = format!("the built-in checks stopped: {e}");
            step.failed(&reason);
            return Err((reason, None));
        }
    };
    match problems.first() {
        None => {
            step.done(format!(
                "{} files Puppet reads parse ({} known from before)",
                count(files as u64),
                count(known as u64)
            ));
            Ok(env)
        }
        Some(first) => {
            let more = match problems.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            let reason = format!("built-in check: {first}{more}");
            step.failed(&reason);
            Err((reason, Some(first.clone())))
        }
    }
}

/// The control repository's tree with every module mounted at its path.
fn assemble(
    control: &Arc<FetchedRepo>,
    tree_id: gix::ObjectId,
    modules: &[(ModuleDecl, ResolvedModule)],
    limits: Limits,
) -> Result<EnvironmentTree, String> {
    let mut tree = EnvironmentTree::new(limits);
    tree.add_git_tree("", control, tree_id, &[])
        .map_err(|e| e.to_string())?;
    for (decl, module) in modules {
        let what = format!("module {}", decl.name);
        let exclude: &[&str] = if decl.exclude_spec { &["spec"] } else { &[] };
        let located =
            |e: crate::tree::TreeError| format!("module {} ({}): {e}", decl.name, decl.location());
        tree.replace_with_directory(&decl.path, &what)
            .map_err(located)?;
        match &module.content {
            ModuleContent::Git {
                repo,
                tree: module_tree,
            } => {
                tree.add_git_tree(&decl.path, repo, *module_tree, exclude)
                    .map_err(located)?;
            }
            ModuleContent::Forge(unpacked) => {
                tree.add_local_tree(&decl.path, &unpacked.dir, &unpacked.entries, exclude)
                    .map_err(located)?;
            }
            ModuleContent::Reused(reused) => {
                tree.add_local_tree(&decl.path, &reused.dir, &reused.entries, exclude)
                    .map_err(located)?;
            }
        }
    }
    tree.check().map_err(|e| e.to_string())?;
    Ok(tree)
}

/// Module paths must not nest (one module inside another's directory).
fn check_module_paths(decls: &[ModuleDecl]) -> Result<(), String> {
    let mut paths: Vec<(&str, &ModuleDecl)> = decls.iter().map(|d| (d.path.as_str(), d)).collect();
    paths.sort_by(|a, b| a.0.cmp(b.0));
    for pair in paths.windows(2) {
        let (outer, a) = pair[0];
        let (inner, b) = pair[1];
        if inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'/') {
            return Err(format!(
                "module {} ({}) at {inner:?} lies inside module {} ({}) at {outer:?}",
                b.name,
                b.location(),
                a.name,
                a.short_location()
            ));
        }
    }
    Ok(())
}

/// Awaits all futures concurrently (on this task), keeping their order.
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::puppetfile::parse_puppetfile;

    #[test]
    fn nested_module_paths_are_refused() {
        let p = parse_puppetfile(
            "mod 'a-apache', '1.0.0'\nmod 'b-inner', '1.0.0', :install_path => 'modules/apache'\nmod 'c-apache2', '1.0.0'",
        )
        .unwrap();
        let err = check_module_paths(&p.modules).unwrap_err();
        assert!(err.contains("module inner (Puppetfile line 2)"), "{err}");
        assert!(err.contains("inside module apache (line 1)"), "{err}");
        let p = parse_puppetfile("mod 'a-apache', '1.0.0'\nmod 'c-apache2', '1.0.0'").unwrap();
        check_module_paths(&p.modules).unwrap();
    }

    #[test]
    fn input_digests_change_with_any_input() {
        let base = EnvironmentInputs {
            name: "production".into(),
            branch: "production".into(),
            follows: None,
            commit: "a".repeat(40),
            code_config: None,
            modules: vec![ModuleRecord {
                name: "stdlib".into(),
                source: "puppetlabs-stdlib".into(),
                version: "9.6.0".into(),
                checksum: Some("sha256:00".into()),
            }],
        };
        let same = base.clone();
        assert_eq!(base.digest(), same.digest());
        let mut other_commit = base.clone();
        other_commit.commit = "b".repeat(40);
        let mut other_module = base.clone();
        other_module.modules[0].version = "9.7.0".into();
        assert_ne!(base.digest(), other_commit.digest());
        assert_ne!(base.digest(), other_module.digest());
        assert_eq!(
            base.revision(),
            format!("production@sha1:{}", "a".repeat(40))
        );
        let record = base.to_record(None);
        assert_eq!(record.modules.len(), 1);
        assert_eq!(record.revision, base.revision());
    }

    #[tokio::test]
    async fn join_all_keeps_order() {
        let out = futures_join_all((0..5u64).map(|i| async move {
            tokio::time::sleep(Duration::from_millis(50 - i * 10)).await;
            i
        }))
        .await;
        assert_eq!(out, [0, 1, 2, 3, 4]);
    }
}
