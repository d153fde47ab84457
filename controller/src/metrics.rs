//! Prometheus metrics of the controller, served at `/metrics` in the OpenMetrics text
//! format. Label values are low-cardinality: controller, error reason, build result.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming the controller (`codesource`, `pool`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// Which controller.
    pub controller: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Which controller.
    pub controller: String,
    /// The error's stable reason.
    pub reason: String,
}

/// Labels of a finished build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// `started`, `succeeded` or `failed`.
    pub result: String,
}

/// Labels of a head check.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeadCheckLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of a request to the Kubernetes API.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …
    pub verb: String,
    /// Resource (plural), with the subresource: `jobs`, `codesources/status`.
    pub resource: String,
    /// HTTP status code, or `error` when no response came.
    pub code: String,
}

/// Labels of a webhook request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `github`, `gitlab`, `gitea`, `forgejo`, `generic` or `unknown`.
    pub provider: String,
    /// `accepted`, `ignored`, `ping`, `unauthorized`, `forbidden`, `bad_request`,
    /// `not_found`, `too_large` or `error`.
    pub result: String,
}

/// All metrics; cheap to clone (every family is reference counted).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    builds: Family<BuildLabels, Counter>,
    head_checks: Family<HeadCheckLabels, Histogram>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    webhooks: Family<WebhookLabels, Counter>,
    api_requests: Family<ApiRequestLabels, Counter>,
    pool_controller_running: Gauge,
    pools_managed_elsewhere: Gauge,
    rollout_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `openvox_code` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("openvox_code");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            errors.clone(),
        );
        let builds = Family::<BuildLabels, Counter>::default();
        registry.register("builds", "Worker builds by result", builds.clone());
        let head_checks = Family::<HeadCheckLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 10))
        });
        registry.register(
            "head_check_duration_seconds",
            "Time to list the remote heads (one listing per repository and credentials)",
            head_checks.clone(),
        );
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            });
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_duration.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook requests by provider and result",
            webhooks.clone(),
        );
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API by verb, resource and response code",
            api_requests.clone(),
        );
        let pool_controller_running = Gauge::default();
        registry.register(
            "pool_controller_running",
            "1 while the Pool controller runs; 0 while it stands aside (the installed Pool CRD is another controller's, or it is turned off)",
            pool_controller_running.clone(),
        );
        let pools_managed_elsewhere = Gauge::default();
        registry.register(
            "pools_managed_elsewhere",
            "Pools left alone because another controller manages their Service",
            pools_managed_elsewhere.clone(),
        );
        // From a few seconds (pods already pulled) to an hour (a slow rolling update).
        let rollout_duration = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register(
            "rollout_duration_seconds",
            "Time from writing new code into a Config to every Server's Deployment running it",
            rollout_duration.clone(),
        );
        Self {
            registry: Arc::new(registry),
            pool_controller_running,
            pools_managed_elsewhere,
            rollout_duration,
            reconciles,
            errors,
            builds,
            head_checks,
            reconcile_duration,
            webhooks,
            api_requests,
        }
    }

    /// Counts one request to the Kubernetes API.
    pub fn api_request(&self, verb: &str, resource: &str, code: &str) {
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                verb: verb.into(),
                resource: resource.into(),
                code: code.into(),
            })
            .inc();
    }

    /// Counts one webhook request.
    pub fn webhook(&self, provider: &str, result: &str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                provider: provider.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts one reconcile of `controller` that took `took`.
    pub fn reconciled(&self, controller: &str, took: Duration) {
        let labels = ControllerLabels {
            controller: controller.into(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, controller: &str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a build event (`started`, `succeeded`, `failed`).
    pub fn build(&self, result: &str) {
        self.builds
            .get_or_create(&BuildLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Records one head listing.
    pub fn head_check(&self, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.head_checks
            .get_or_create(&HeadCheckLabels {
                result: result.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Whether the Pool controller runs now.
    pub fn pool_controller_running(&self, running: bool) {
        self.pool_controller_running.set(i64::from(running));
    }

    /// How many Pools are left to another controller now.
    pub fn pools_managed_elsewhere(&self, pools: usize) {
        self.pools_managed_elsewhere
            .set(i64::try_from(pools).unwrap_or(i64::MAX));
    }

    /// Records one finished rollout.
    pub fn rolled_out(&self, took: Duration) {
        self.rollout_duration.observe(took.as_secs_f64());
    }

    /// The OpenMetrics text of all metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_metrics_name_what_happened() {
        let metrics = Metrics::new();
        metrics.reconciled("codesource", Duration::from_millis(3));
        metrics.failed("codesource", "GitOperationFailed");
        metrics.build("started");
        metrics.head_check(Duration::from_millis(80), true);
        metrics.pool_controller_running(false);
        metrics.pools_managed_elsewhere(2);
        metrics.rolled_out(Duration::from_secs(3));
        let text = metrics.encode();
        assert!(
            text.contains("openvox_code_reconciles_total{controller=\"codesource\"} 1"),
            "{text}"
        );
        assert!(text.contains("reason=\"GitOperationFailed\""));
        assert!(text.contains("openvox_code_builds_total{result=\"started\"} 1"));
        assert!(text.contains("openvox_code_head_check_duration_seconds_count{result=\"ok\"} 1"));
        assert!(
            text.contains("openvox_code_pool_controller_running 0"),
            "{text}"
        );
        assert!(text.contains("openvox_code_pools_managed_elsewhere 2"));
        assert!(text.contains("openvox_code_rollout_duration_seconds_bucket{le=\"4.0\"} 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
