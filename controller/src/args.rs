//! Command-line flags, each with an environment variable fallback (the Helm chart sets
//! the environment).

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

use crate::pool::PoolControllerMode;

use crate::codesource::worker_defaults::{
    NodeSelector, Resources, Tolerations, WorkerDefaults, parse_node_selector, parse_resources,
    parse_tolerations,
};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The openvox-code controller: builds Puppet code from git into OCI images and pins
/// them into openvox-operator Configs; reconciles Pools.
#[derive(Clone, Debug, Parser)]
#[command(name = "openvox-code-controller", version, about)]
pub struct Args {
    /// Default worker image for build Jobs (a CodeSource may override it in spec.job.image).
    #[arg(long, env = "OPENVOX_CODE_WORKER_IMAGE")]
    pub worker_image: String,

    /// Default resources of the worker container, as JSON
    /// (`{"requests":{"cpu":"500m"},"limits":{"memory":"2Gi"}}`). A CodeSource's
    /// `spec.job.resources` replaces it whole.
    #[arg(long, env = "OPENVOX_CODE_WORKER_RESOURCES", value_name = "JSON", value_parser = parse_resources)]
    pub worker_resources: Option<Resources>,

    /// Default node selector of worker pods, as a JSON object (`{"pool":"builds"}`). A
    /// CodeSource's non-empty `spec.job.nodeSelector` replaces it whole.
    #[arg(long, env = "OPENVOX_CODE_WORKER_NODE_SELECTOR", value_name = "JSON", value_parser = parse_node_selector)]
    pub worker_node_selector: Option<NodeSelector>,

    /// Default tolerations of worker pods, as a JSON list
    /// (`[{"key":"builds","operator":"Exists","effect":"NoSchedule"}]`). A CodeSource's
    /// non-empty `spec.job.tolerations` replaces them whole.
    #[arg(long, env = "OPENVOX_CODE_WORKER_TOLERATIONS", value_name = "JSON", value_parser = parse_tolerations)]
    pub worker_tolerations: Option<Tolerations>,

    /// Watch only this namespace. Unset: all namespaces.
    #[arg(long, env = "OPENVOX_CODE_NAMESPACE")]
    pub namespace: Option<String>,

    /// Run the CodeSource controller.
    #[arg(long, env = "OPENVOX_CODE_ENABLE_CODESOURCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_codesource: bool,

    /// Run the Pool controller: `auto` runs it only while the installed Pool CRD is
    /// openvox-code's (openvox-operator installs its own and reconciles Pools itself),
    /// and leaves alone any Pool whose Service another controller manages; `true` runs
    /// it on any Pool CRD; `false` never.
    #[arg(
        long,
        env = "OPENVOX_CODE_ENABLE_POOL",
        default_value = "auto",
        value_name = "auto|true|false"
    )]
    pub enable_pool: PoolControllerMode,

    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(
        long,
        env = "OPENVOX_CODE_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,

    /// CodeSource reconciles running at once.
    #[arg(long, env = "OPENVOX_CODE_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,

    /// Pool reconciles running at once. A Pool reconcile is a handful of API calls and
    /// no local work, so its pace is set by round trips: with 4 at a time, 1,000 Pools
    /// took 70 s to reconcile once in the scale benchmark (docs/benchmarks.md).
    #[arg(long, env = "OPENVOX_CODE_POOL_CONCURRENCY", default_value_t = 16)]
    pub pool_concurrency: u16,

    /// Log format.
    #[arg(long, env = "OPENVOX_CODE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Run the controllers only while holding the Lease `openvox-code-controller`, so
    /// that several replicas are safe. Off for local runs; the Helm chart turns it on.
    #[arg(
        long,
        env = "OPENVOX_CODE_LEADER_ELECTION",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,

    /// Namespace of the leader Lease. Unset: POD_NAMESPACE, else the kubeconfig's
    /// namespace.
    #[arg(long, env = "OPENVOX_CODE_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Address of the webhook receiver (`POST /hook/<namespace>/<codesource>`). Unset:
    /// no receiver.
    #[arg(long, env = "OPENVOX_CODE_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,
}

impl Args {
    /// The worker pod defaults from `--worker-resources`, `--worker-node-selector`,
    /// `--worker-tolerations` and `--log-format`.
    pub fn worker_defaults(&self) -> WorkerDefaults {
        WorkerDefaults {
            resources: self.worker_resources.clone().and_then(|r| r.0),
            node_selector: self
                .worker_node_selector
                .clone()
                .map(|n| n.0)
                .unwrap_or_default(),
            tolerations: self
                .worker_tolerations
                .clone()
                .map(|t| t.0)
                .unwrap_or_default(),
            log_format: Some(match self.log_format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_enable_codesources_and_pools_where_ours_on_all_namespaces() {
        let args = Args::try_parse_from(["c", "--worker-image", "w:1"]).unwrap();
        assert!(args.enable_codesource);
        assert_eq!(args.enable_pool, PoolControllerMode::Auto);
        assert_eq!(args.namespace, None);
        assert_eq!(args.metrics_addr.port(), 8080);
    }

    #[test]
    fn controllers_can_be_switched_off_and_limited_to_a_namespace() {
        let args = Args::try_parse_from([
            "c",
            "--worker-image",
            "w:1",
            "--enable-pool",
            "false",
            "--namespace",
            "puppet",
        ])
        .unwrap();
        assert_eq!(args.enable_pool, PoolControllerMode::Off);
        assert_eq!(args.namespace.as_deref(), Some("puppet"));
        assert!(
            Args::try_parse_from(["c", "--worker-image", "w:1", "--enable-pool", "maybe"]).is_err()
        );
    }

    #[test]
    fn leader_election_and_webhooks_are_off_unless_asked_for() {
        let args = Args::try_parse_from(["c", "--worker-image", "w:1"]).unwrap();
        assert!(!args.leader_election || std::env::var("OPENVOX_CODE_LEADER_ELECTION").is_ok());
        assert!(args.webhook_addr.is_none() || std::env::var("OPENVOX_CODE_WEBHOOK_ADDR").is_ok());

        // The chart's form, and the bare flag.
        let args = Args::try_parse_from([
            "c",
            "--worker-image",
            "w:1",
            "--leader-election=true",
            "--leader-election-namespace",
            "openvox-code",
            "--webhook-addr=0.0.0.0:9292",
        ])
        .unwrap();
        assert!(args.leader_election);
        assert_eq!(
            args.leader_election_namespace.as_deref(),
            Some("openvox-code")
        );
        assert_eq!(args.webhook_addr.map(|a| a.port()), Some(9292));
        let bare =
            Args::try_parse_from(["c", "--worker-image", "w:1", "--leader-election"]).unwrap();
        assert!(bare.leader_election);
        let off = Args::try_parse_from(["c", "--worker-image", "w:1", "--leader-election=false"])
            .unwrap();
        assert!(!off.leader_election);
    }

    #[test]
    fn the_worker_image_is_required() {
        assert!(
            Args::try_parse_from(["c"]).is_err()
                || std::env::var("OPENVOX_CODE_WORKER_IMAGE").is_ok()
        );
    }

    #[test]
    fn worker_defaults_are_read_from_json_flags() {
        let args = Args::try_parse_from([
            "c",
            "--worker-image",
            "w:1",
            r#"--worker-resources={"requests":{"cpu":"500m"},"limits":{"memory":"2Gi"}}"#,
            r#"--worker-node-selector={"pool":"builds"}"#,
            r#"--worker-tolerations=[{"key":"builds","operator":"Exists","effect":"NoSchedule"}]"#,
        ])
        .unwrap();
        let d = args.worker_defaults();
        assert_eq!(d.resources.unwrap().requests.unwrap()["cpu"].0, "500m");
        assert_eq!(d.node_selector["pool"], "builds");
        assert_eq!(d.tolerations[0].key.as_deref(), Some("builds"));
    }

    #[test]
    fn a_wrong_worker_default_is_an_error_naming_the_flag() {
        for (flag, value) in [
            ("--worker-resources", r#"{"requests":{"cpu":"lots"}}"#),
            ("--worker-node-selector", "pool=builds"),
            (
                "--worker-tolerations",
                r#"[{"key":"a","operator":"Maybe"}]"#,
            ),
        ] {
            let e =
                Args::try_parse_from(["c", "--worker-image", "w:1", &format!("{flag}={value}")])
                    .unwrap_err()
                    .to_string();
            assert!(e.contains(flag), "{e}");
        }
    }
}
