//! tracing-subscriber setup from `[log]`. Logs go to stderr (stdout may carry audit records when
//! `audit.path = "-"`). `RUST_LOG`, when set, overrides `log.level` for one run.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, LogConfig, LogFormat};

/// Installs the global subscriber: pretty for a terminal, JSON for production.
pub fn init(log: &LogConfig) -> Result<(), ConfigError> {
    let directive = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => log.level.clone(),
    };
    let filter = EnvFilter::builder()
        .parse(&directive)
        .map_err(|e| ConfigError(format!("log level {directive:?}: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log shippers get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    let result = match log.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result.map_err(|e| ConfigError(format!("cannot install the log subscriber: {e}")))
}
