//! The tokio shell: listeners, connections, call tasks. (Lead's file.)

use crate::config::Config;

/// Errors that stop the daemon at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration or certificate problem found while starting.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let _ = config;
    unimplemented!("server stub")
}
