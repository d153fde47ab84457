//! Log output on standard error: readable lines for `kubectl logs` (`text`, the
//! default), or one JSON object per line for log pipelines (`json`). Standard output
//! stays for the result (the pinned reference is its last line).

use std::io::IsTerminal;
use std::sync::OnceLock;

use clap::{Args, ValueEnum};

use crate::git::mask_text;

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// One readable line per step, with timing and size.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

impl LogFormat {
    /// The flag value (`text`, `json`), as the controller passes it on.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `--log-format`, accepted by every command.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format on standard error.
    #[arg(
        long,
        global = true,
        env = "OPENVOX_CODE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// The format [`init`] installed, for the final line of a run.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the subscriber (level from `RUST_LOG`, default `info`).
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// The last line of a failed run: `error: <reason>` as text, or an `ERROR` JSON event.
/// Credentials in the reason are masked either way.
pub fn final_error(reason: &str) {
    let reason = mask_text(&reason.replace('\n', " "));
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => eprintln!("error: {reason}"),
        LogFormat::Json => tracing::error!("{reason}"),
    }
}

/// A warning that the run succeeded only in part, in the same two shapes.
pub fn final_warning(text: &str) {
    let text = mask_text(&text.replace('\n', " "));
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => eprintln!("warning: {text}"),
        LogFormat::Json => tracing::warn!("{text}"),
    }
}
