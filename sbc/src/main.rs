//! The `sbc` command: `run` the daemon, or `check-config` a file without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sbc::config::{Config, TlsIdentity};

/// sbc: edge session border controller. Carriers send SIP over TLS (port 5061) with SDES-SRTP;
/// sbc bridges each call to a voice agent over a TLS 1.3 WebSocket (Twilio Media Streams).
#[derive(Parser, Debug)]
#[command(
    name = "sbc",
    version,
    after_help = "Examples:\n  \
        sbc check-config /etc/sbc/sbc.toml     validate a config, its certificates and keys; exit 0 or 1\n  \
        sbc run --config /etc/sbc/sbc.toml     start the daemon (SIGTERM drains calls, then exits)\n\n\
        Every key is documented in docs/configuration.md and configs/production.example.toml.\n\
        Logs go to stderr; RUST_LOG overrides [log] level for one run."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the daemon with a configuration file.
    ///
    /// The file is fully validated first (as check-config does); on any error sbc prints it and
    /// exits 1 without listening.
    Run {
        /// Path of the TOML configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file without starting anything.
    ///
    /// Parses the TOML, checks every value, loads the certificate and key files, checks that each
    /// key matches its certificate and builds the TLS configurations. Prints one line and exits 0
    /// when the file is good; prints the first error as FILE:LINE:COLUMN: MESSAGE (or FILE:
    /// MESSAGE for certificate files) and exits 1 otherwise.
    CheckConfig {
        /// Path of the TOML configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Ask a running sbc to reload its configuration (the same as `kill -HUP PID`).
    ///
    /// The daemon re-reads the file it was started with and the certificates it names, validates
    /// them and swaps them in atomically; calls in progress keep their settings. An invalid file is
    /// refused with an error line in the daemon's log and the running configuration stays. Run
    /// `sbc check-config FILE` first to see the error here.
    Reload {
        /// Process id of the running sbc (e.g. `$(systemctl show -p MainPID --value sbc)`).
        #[arg(value_name = "PID")]
        pid: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                println!("{}: ok ({})", file.display(), summary(&config));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sbc: configuration error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => run(config),
        Command::Reload { pid } => reload(pid),
    }
}

/// Sends SIGHUP through kill(1): the crate forbids `unsafe`, which a direct libc::kill needs.
fn reload(pid: u32) -> ExitCode {
    match std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
    {
        Ok(s) if s.success() => {
            println!("sbc: reload requested from process {pid}; see its log for the result");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("sbc: could not signal process {pid}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sbc: cannot run kill: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    let loaded = match sbc::shared::Loaded::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sbc: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = sbc::logging::init(&loaded.config.log) {
        eprintln!("sbc: {e}");
        return ExitCode::FAILURE;
    }
    // tokio-tungstenite and anything else that asks rustls for the process default gets
    // aws-lc-rs. Err means one is installed already, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Unset: tokio's default, one worker per CPU in the affinity mask.
    if let Some(n) = loaded.config.limits.worker_threads {
        builder.worker_threads(n.get());
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sbc: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "starting");
    match runtime.block_on(sbc::server::run(loaded)) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "sbc stopped on an error");
            eprintln!("sbc: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One line for ops: what the file sets up.
fn summary(c: &Config) -> String {
    let listen: Vec<String> = c.sip.listen.iter().map(|a| a.to_string()).collect();
    let identity = match &c.tls.identity {
        TlsIdentity::DevSelfSigned => "development self-signed certificate".to_string(),
        TlsIdentity::Files { certificate, .. } => format!("certificate {}", certificate.display()),
    };
    format!(
        "listen {}, {}, {} carrier(s), {} agent route(s)",
        listen.join(" "),
        identity,
        c.carriers.len(),
        c.agent.routes.len()
    )
}
