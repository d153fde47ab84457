//! Command-line flags, each with an environment variable fallback (the Helm chart sets
//! the environment).

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

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

    /// Watch only this namespace. Unset: all namespaces.
    #[arg(long, env = "OPENVOX_CODE_NAMESPACE")]
    pub namespace: Option<String>,

    /// Run the CodeSource controller.
    #[arg(long, env = "OPENVOX_CODE_ENABLE_CODESOURCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_codesource: bool,

    /// Run the Pool controller. Turn off when openvox-operator reconciles Pools itself.
    #[arg(long, env = "OPENVOX_CODE_ENABLE_POOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_pool: bool,

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

    /// Log format.
    #[arg(long, env = "OPENVOX_CODE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_enable_both_controllers_on_all_namespaces() {
        let args = Args::try_parse_from(["c", "--worker-image", "w:1"]).unwrap();
        assert!(args.enable_codesource && args.enable_pool);
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
        assert!(!args.enable_pool);
        assert_eq!(args.namespace.as_deref(), Some("puppet"));
    }

    #[test]
    fn the_worker_image_is_required() {
        assert!(
            Args::try_parse_from(["c"]).is_err()
                || std::env::var("OPENVOX_CODE_WORKER_IMAGE").is_ok()
        );
    }
}
