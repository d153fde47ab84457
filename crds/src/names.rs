//! Every name that crosses a process boundary, in one place: the API group, field
//! managers, labels, annotations, condition types and reasons. The controller, the
//! worker, the chart and the tests all read them from here so they cannot drift.

/// API group shared with openvox-operator's kinds.
pub const GROUP: &str = "openvox.voxpupuli.org";
/// API version of our kinds.
pub const VERSION: &str = "v1alpha1";

/// Field manager of the controller for server-side apply (children, status, Config).
pub const CONTROLLER_MANAGER: &str = "openvox-code-controller";
/// Field manager of the worker; it owns only `status.lastBuild` of its CodeSource.
pub const WORKER_MANAGER: &str = "openvox-code-worker";

/// Exit code of the worker for a failure that retrying cannot fix (bad credentials, a
/// Puppetfile that does not parse, an environment name collision). The worker Job's pod
/// failure policy fails the Job at once on it instead of retrying the pod.
pub const WORKER_PERMANENT_FAILURE_EXIT_CODE: i32 = 78;

/// Key of the webhook Secret (`spec.webhook.secretRef`) holding the shared secret.
pub const WEBHOOK_SECRET_KEY: &str = "token";

/// Labels put on every object we create.
pub mod labels {
    /// `app.kubernetes.io/name` of our objects.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/managed-by` of our objects.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// `app.kubernetes.io/component` of our objects (`worker`, `pool`).
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// Value of [`MANAGED_BY`] on everything openvox-code creates.
    pub const MANAGED_BY_VALUE: &str = "openvox-code";
    /// Value of [`MANAGED_BY`] on the objects openvox-operator writes (Pool Services,
    /// Deployments, Secrets).
    pub const MANAGED_BY_OPERATOR: &str = "openvox-operator";
    /// `app.kubernetes.io/part-of`: on our CRDs, tells them from the operator's CRD of
    /// the same name.
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    /// Value of [`PART_OF`] on our CRDs.
    pub const PART_OF_VALUE: &str = "openvox-code";
    /// Names the CodeSource a worker Job, pod, ServiceAccount or Role belongs to.
    pub const CODESOURCE: &str = "openvox.voxpupuli.org/codesource";
    /// The hash of the build inputs a worker Job was launched for.
    pub const INPUTS: &str = "openvox.voxpupuli.org/inputs";
    /// openvox-operator labels server pods `openvox.voxpupuli.org/pool-<pool>=true`
    /// for every entry in `Server.spec.poolRefs`; a Pool's Service selects on it.
    pub const POOL_PREFIX: &str = "openvox.voxpupuli.org/pool-";
    /// Value openvox-operator's labels use for membership in a Pool.
    pub const POOL_MEMBER_VALUE: &str = "true";
    /// `app.kubernetes.io/name` value openvox-operator puts on its objects; Pool
    /// Services carry it too so they look the same as the operator's.
    pub const OPENVOX_NAME_VALUE: &str = "openvox";
    /// On Certificates a Pool injected DNS alt names into (value `true`), so cleanup
    /// finds them with one list.
    pub const DNS_ALT_NAMES_INJECTED: &str = "openvox.voxpupuli.org/dns-alt-names-injected";

    /// The selector label of Pool `pool`.
    pub fn pool(pool: &str) -> String {
        format!("{POOL_PREFIX}{pool}")
    }
}

/// Annotations we read or write.
pub mod annotations {
    /// Set to any new value to ask for a check and, if needed, a build now
    /// (like Flux's `reconcile.fluxcd.io/requestedAt`).
    pub const REQUESTED_AT: &str = "openvox.voxpupuli.org/requestedAt";
    /// Set to any new value to ask for a head check now; a build follows only when the
    /// heads changed. The webhook receiver writes it (an RFC 3339 time) on a push to a
    /// watched branch. Unlike [`REQUESTED_AT`] it never forces a build.
    pub const CHECK_REQUESTED_AT: &str = "openvox.voxpupuli.org/checkRequestedAt";
    /// Cluster autoscaler: a running build pod must not be evicted to scale down.
    pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
    /// On a Server that takes its code from a Config we published into: the code the
    /// Config now carries. openvox-operator does not reconcile Servers when their
    /// Config changes, but does on any change of the Server object, so writing this
    /// is what makes it roll the servers to the new code.
    pub const PUBLISHED_CODE: &str = "openvox.voxpupuli.org/published-code";
    /// openvox-operator's pod-template annotation on a Server's Deployment: the code
    /// image reference (a comma-joined list with the list shape of `spec.code`).
    pub const CODE_IMAGE: &str = "openvox.voxpupuli.org/code-image";
    /// Records the DNS alt names a Pool added to a Certificate, so exactly those can be
    /// removed again later.
    pub const INJECTED_DNS_ALT_NAMES: &str = "openvox.voxpupuli.org/injected-dns-alt-names";
}

/// Condition types. `Ready`, `Reconciling` and `Stalled` follow kstatus (the last two
/// are abnormal-true and present only while true); the rest say which step failed.
pub mod conditions {
    /// The resource is reconciled and its output is current.
    pub const READY: &str = "Ready";
    /// Work is in progress (a check or a build).
    pub const RECONCILING: &str = "Reconciling";
    /// The controller cannot make progress until the spec changes.
    pub const STALLED: &str = "Stalled";
    /// Listing the remote heads failed (CodeSource).
    pub const FETCH_FAILED: &str = "FetchFailed";
    /// The last worker Job failed (CodeSource).
    pub const BUILD_FAILED: &str = "BuildFailed";
    /// The Config named by `configRef` carries the last built image (CodeSource).
    pub const CONFIG_UPDATED: &str = "ConfigUpdated";
    /// The Pool's route hostname is claimed by an older Pool (Pool).
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    /// The Pool's TLSRoute is in place (Pool).
    pub const ROUTE_READY: &str = "RouteReady";
    /// Every Server taking its code from the Config runs the published code
    /// (CodeSource).
    pub const ROLLED_OUT: &str = "RolledOut";
}

/// Condition reasons: CamelCase words, also used as Event reasons.
pub mod reasons {
    /// Everything is current.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Work is underway.
    pub const PROGRESSING: &str = "Progressing";
    /// A build was launched for new heads or a new spec.
    pub const BUILD_STARTED: &str = "BuildStarted";
    /// A build finished and published a new image.
    pub const NEW_ARTIFACT: &str = "NewArtifact";
    /// Nothing changed since the last build.
    pub const UP_TO_DATE: &str = "ArtifactUpToDate";
    /// A worker Job failed.
    pub const BUILD_FAILED: &str = "BuildFailed";
    /// A build published its image but some environments failed in it
    /// (`status.lastBuild.failed`); they are retried with backoff.
    pub const PARTIAL_BUILD: &str = "PartialBuild";
    /// Listing the remote heads failed.
    pub const GIT_OPERATION_FAILED: &str = "GitOperationFailed";
    /// The spec cannot work as written (for example an invalid schedule).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A Secret the spec names does not exist or lacks a key.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// No remote branch matches `git.branches`.
    pub const NO_MATCHING_BRANCHES: &str = "NoMatchingBranches";
    /// The CodeSource is suspended.
    pub const SUSPENDED: &str = "Suspended";
    /// The Config named by `configRef` does not exist.
    pub const CONFIG_NOT_FOUND: &str = "ConfigNotFound";
    /// The PersistentVolumeClaim named by `output.claimName` does not exist.
    pub const CLAIM_NOT_FOUND: &str = "ClaimNotFound";
    /// Config updated with a new image.
    pub const CONFIG_UPDATED: &str = "ConfigUpdated";
    /// The Pool's Service has ready endpoints.
    pub const ENDPOINTS_AVAILABLE: &str = "EndpointsAvailable";
    /// The Pool's Service has no ready endpoints.
    pub const NO_ENDPOINTS: &str = "NoEndpoints";
    /// Another Pool owns the route hostname.
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    /// The Gateway API CRDs are not installed.
    pub const GATEWAY_API_MISSING: &str = "GatewayAPIMissing";
    /// The route is disabled.
    pub const ROUTE_DISABLED: &str = "RouteDisabled";
    /// Every Server's Deployment runs the published code.
    pub const ROLLED_OUT: &str = "RolledOut";
    /// Servers were asked to roll to new code (Event).
    pub const ROLLOUT_STARTED: &str = "RolloutStarted";
    /// A Server's Deployment stopped progressing within its deadline.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// The Servers naming the Config all set their own `spec.code`.
    pub const SERVER_OVERRIDES_CODE: &str = "ServerOverridesCode";
    /// No Server names the Config.
    pub const NO_SERVERS: &str = "NoServers";
    /// Another controller (openvox-operator) manages the Pool; openvox-code leaves it
    /// alone.
    pub const MANAGED_ELSEWHERE: &str = "ManagedElsewhere";
    /// A Pool's TLSRoute was created (Event).
    pub const TLSROUTE_CREATED: &str = "TLSRouteCreated";
    /// A Pool's TLSRoute was removed (Event).
    pub const TLSROUTE_DELETED: &str = "TLSRouteDeleted";
    /// The openvox-code CodeConfig named by `spec.modules.codeConfig` is missing or
    /// cannot be read (CodeSource).
    pub const CODE_CONFIG_INVALID: &str = "CodeConfigInvalid";
    /// A reconcile failed on an API request (metrics label, Event reason).
    pub const KUBE_API_ERROR: &str = "KubeApiError";
}
