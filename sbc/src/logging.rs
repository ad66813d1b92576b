//! tracing-subscriber setup from `[log]`. (Config helper's file.)

use crate::config::{ConfigError, LogConfig};

/// Installs the global subscriber: pretty for a terminal, JSON for production.
pub fn init(log: &LogConfig) -> Result<(), ConfigError> {
    let _ = log;
    unimplemented!("logging stub")
}
