//! The daemon's top: start (shared state, listeners), SIGHUP reload, SIGTERM drain. The parts:
//! `shared` (live configuration, counters), `conn` (connections), `dispatch` (which call a
//! message belongs to, admission), `call` (one task per call).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::audit::Audit;
use crate::call::CallInput;
use crate::conn::{accept_loop, bind_listener};
use crate::metrics as m;
use crate::ports::PortPool;
use crate::shared::{CounterTable, Live, Loaded, Shared};
use crate::sip::UasConfig;

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
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The metrics listener could not start.
    #[error("{0}")]
    Metrics(String),
}

/// Runs the daemon until SIGTERM/SIGINT, then drains.
pub async fn run(loaded: Loaded) -> Result<(), ServerError> {
    let counters = CounterTable::default();
    let live = Live::build(loaded, &counters);
    let config = Arc::clone(&live.config);
    // Lines waiting for the audit writer beyond which new calls are refused: two records per
    // call that can be up, and room for the refusals the gate lets through.
    let backlog_limit = (config.limits.max_concurrent_calls as usize)
        .saturating_mul(2)
        .max(crate::audit::DEFAULT_BACKLOG_LIMIT);
    let audit = Audit::open(&config.audit, backlog_limit)?;
    if let Some(mc) = &config.metrics {
        m::install(mc.listen).map_err(ServerError::Metrics)?;
    }
    let uas = UasConfig {
        t1: config.sip.t1,
        t2: config.sip.t2,
        t4: config.sip.t4,
        host: config.sip.host.clone(),
        port: config.sip.listen.first().map(|a| a.port()).unwrap_or(5061),
        server_header: config.sip.server_header.clone(),
        session_expires: config.sip.session_expires,
        min_se: config.sip.min_se,
    };
    // `[cluster]` is read at start only (a reload does not change it).
    let cluster = config
        .cluster
        .clone()
        .map(|c| {
            crate::cluster::Cluster::new(
                c,
                config
                    .trunks
                    .iter()
                    .map(|t| (t.name.clone(), t.max_concurrent_calls)),
            )
        })
        .transpose()?;
    let shared = Arc::new(Shared {
        live: std::sync::RwLock::new(Arc::new(live)),
        audit,
        ports: PortPool::new(
            config.media.bind_address,
            config.media.port_first,
            config.media.port_last,
        ),
        uas,
        dialogs: Default::default(),
        trunks: Default::default(),
        callbacks: crate::api::callbacks::Callbacks::spawn(),
        calls: crate::api::registry::CallRegistry::new(
            config.api.as_ref().map_or(1000, |a| a.recent_calls),
        ),
        per_ip: Mutex::new(HashMap::new()),
        counters,
        active_calls: AtomicU32::new(0),
        draining: AtomicBool::new(false),
        cluster,
        next_id: AtomicU64::new(1),
    });

    if let Some(c) = &shared.cluster {
        info!(
            instance = c.instance_id(),
            "cluster member (Redis); degraded until Redis answers"
        );
        c.spawn();
    }
    let ready = Arc::downgrade(&shared);
    m::set_readiness(Box::new(move || {
        let Some(shared) = ready.upgrade() else {
            return Err("stopping");
        };
        if shared.draining.load(Ordering::SeqCst) {
            return Err("draining");
        }
        match &shared.cluster {
            Some(c) if c.config().readyz_requires_redis && c.is_degraded() => {
                Err("Redis unreachable")
            }
            _ => Ok(()),
        }
    }));

    let mut listeners = Vec::new();
    for addr in &config.sip.listen {
        let l = bind_listener(*addr).map_err(|source| ServerError::Bind {
            addr: *addr,
            source,
        })?;
        info!(%addr, "SIP over TLS listening");
        listeners.push(tokio::spawn(accept_loop(l, Arc::clone(&shared))));
    }

    if let Some(api) = &config.api {
        let l = tokio::net::TcpListener::bind(api.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: api.listen,
                source,
            })?;
        info!(addr = %api.listen, "call-control API (HTTPS) listening");
        listeners.push(tokio::spawn(crate::api::serve(l, Arc::clone(&shared))));
    }

    wait_for_shutdown_signal(&shared).await;
    info!("shutdown requested: refusing new calls, draining active calls");
    shared.draining.store(true, Ordering::SeqCst);
    let drain_deadline = Instant::now() + config.limits.drain_timeout;
    while shared.active_calls.load(Ordering::SeqCst) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let remaining = shared.dialogs.all();
    if !remaining.is_empty() {
        info!(
            calls = remaining.len(),
            "drain timeout: hanging up remaining calls"
        );
        for tx in remaining {
            let _ = tx.try_send(CallInput::Hangup(crate::sip::HangupCause::Shutdown));
        }
        // Give the BYEs a moment and the call tasks time to write their end records.
        let hard = Instant::now() + Duration::from_secs(5);
        while shared.active_calls.load(Ordering::SeqCst) > 0 && Instant::now() < hard {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for l in listeners {
        l.abort();
    }
    if let Some(c) = &shared.cluster {
        c.leave().await;
    }
    // Every record of the drained calls reaches the file before the process exits.
    let audit_owner = Arc::clone(&shared);
    let _ = tokio::task::spawn_blocking(move || audit_owner.audit.flush()).await;
    info!("sbc stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the configuration meanwhile.
async fn wait_for_shutdown_signal(shared: &Shared) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).ok();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    match shared.reload() {
                        Ok(()) => info!("configuration reloaded"),
                        Err(e) => error!(error = %e, "reload refused: the running configuration stays"),
                    }
                }
            }
        },
        Err(e) => {
            warn!(error = %e, "cannot install SIGTERM handler; only Ctrl-C stops sbc");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
