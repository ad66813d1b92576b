//! State shared by connection and call tasks: the live configuration snapshot (swapped whole by
//! a reload), per-carrier counters that outlive reloads, the per-IP connection counts, the
//! dialog table and the admission counters.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_rustls::TlsAcceptor;
use tracing::warn;

use crate::audit::Audit;
use crate::config::{CarrierConfig, Config};
use crate::dispatch::Dialogs;
use crate::ports::PortPool;
use crate::server::ServerError;
use crate::sip::UasConfig;

/// Live counters of one carrier, keyed by its name in [`Shared`] and outside the reloadable
/// configuration: a reload hands the same counters to the carrier's new [`CarrierState`], so
/// calls that started before the reload decrement the very count that new calls increment.
#[derive(Debug)]
pub struct CarrierCounters {
    /// Calls of this carrier in progress.
    pub active: AtomicU32,
    /// Token bucket for `max_calls_per_second`: (tokens, last refill); `None` until first use.
    bucket: Mutex<Option<(f64, Instant)>>,
}

impl CarrierCounters {
    fn new() -> CarrierCounters {
        CarrierCounters {
            active: AtomicU32::new(0),
            bucket: Mutex::new(None),
        }
    }
}

/// Per-carrier admission state: the carrier's configuration in one snapshot, and its counters.
pub struct CarrierState {
    pub config: CarrierConfig,
    pub counters: Arc<CarrierCounters>,
}

impl CarrierState {
    /// Takes one call-rate token at `now` (a bucket of `max_calls_per_second` tokens, refilled
    /// at that rate); false when none is left.
    pub fn take_token(&self, now: Instant) -> bool {
        let rate = f64::from(self.config.max_calls_per_second.max(1));
        let mut guard = self
            .counters
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let b = guard.get_or_insert((rate, now));
        let elapsed = now.saturating_duration_since(b.1).as_secs_f64();
        b.0 = (b.0 + elapsed * rate).min(rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Calls of this carrier in progress.
    pub fn active(&self) -> &AtomicU32 {
        &self.counters.active
    }
}

/// What a reload (SIGHUP) replaces as a whole. Tasks take a snapshot (`Shared::live`); a call
/// keeps the snapshot it started with, so calls in progress are not disturbed by a reload.
pub struct Live {
    pub config: Arc<Config>,
    pub acceptor: TlsAcceptor,
    pub agent_tls: Arc<rustls::ClientConfig>,
    pub carrier_tls: Arc<rustls::ClientConfig>,
    pub carriers: Vec<Arc<CarrierState>>,
    /// The API listener's TLS (`[api]`); a reload may change its certificate, not its address.
    pub api_acceptor: Option<TlsAcceptor>,
    /// Status callback deliveries' TLS client (`[api]`).
    pub callback_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Live {
    /// Assembles a snapshot from a loaded configuration and the rustls configs built with it
    /// (once, by [`Loaded::load`]); the carriers' counters come from `counters`, by name.
    pub(crate) fn build(loaded: Loaded, counters: &CounterTable) -> Live {
        let Loaded { config, tls } = loaded;
        let carriers = config
            .carriers
            .iter()
            .map(|c| {
                Arc::new(CarrierState {
                    config: c.clone(),
                    counters: counters.get(&c.name),
                })
            })
            .collect();
        Live {
            config: Arc::new(config),
            acceptor: TlsAcceptor::from(tls.sip_server),
            agent_tls: tls.agent_client,
            carrier_tls: tls.carrier_client,
            carriers,
            api_acceptor: tls.api_server.map(TlsAcceptor::from),
            callback_tls: tls.callback_client,
        }
    }

    /// The carrier whose `source_cidrs` hold `ip`, in this snapshot.
    pub fn carrier_for(&self, ip: IpAddr) -> Option<&Arc<CarrierState>> {
        let ip = canonical_ip(ip);
        self.carriers
            .iter()
            .find(|c| c.config.sources.iter().any(|net| net.contains(&ip)))
    }
}

/// A configuration file read, checked and turned into the rustls configs it names, all once.
pub struct Loaded {
    pub config: Config,
    pub tls: crate::tls::TlsConfigs,
}

impl Loaded {
    /// [`Config::load`] without building the rustls configs a second time.
    pub fn load(path: &std::path::Path) -> Result<Loaded, crate::config::ConfigError> {
        let config = Config::parse_file(path)?;
        let tls = crate::tls::TlsConfigs::build(&config)?;
        Ok(Loaded { config, tls })
    }
}

/// Carrier counters by carrier name; an entry lives as long as the process (one per carrier
/// name ever configured, so bounded by what ops writes).
#[derive(Default)]
pub struct CounterTable(Mutex<HashMap<String, Arc<CarrierCounters>>>);

impl CounterTable {
    pub fn get(&self, name: &str) -> Arc<CarrierCounters> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            map.entry(name.to_string())
                .or_insert_with(|| Arc::new(CarrierCounters::new())),
        )
    }
}

/// State shared by connection and call tasks.
pub struct Shared {
    pub(crate) live: std::sync::RwLock<Arc<Live>>,
    pub audit: Audit,
    pub ports: Arc<PortPool>,
    pub uas: UasConfig,
    /// Which call a SIP message belongs to (`dispatch::Dialogs`).
    pub dialogs: Dialogs,
    /// Calls the API answers for (`api::registry`).
    pub calls: crate::api::registry::CallRegistry,
    /// The status callback delivery queue (`api::callbacks`).
    pub callbacks: crate::api::callbacks::Callbacks,
    /// Outbound calls' per-trunk pacers and concurrency counts (`outbound::TrunkTable`).
    pub trunks: crate::outbound::TrunkTable,
    pub(crate) per_ip: Mutex<HashMap<IpAddr, u32>>,
    pub counters: CounterTable,
    pub active_calls: AtomicU32,
    pub draining: AtomicBool,
    /// Membership of a cluster of instances (`[cluster]`); `None` when sbc runs alone.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub(crate) next_id: AtomicU64,
}

impl Shared {
    /// The current configuration snapshot.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the configuration file and swaps it in atomically; on any error the running
    /// configuration stays. Listen addresses, the media port range, SIP timers and the audit
    /// sink need a restart (a change to them is logged and ignored).
    pub fn reload(&self) -> Result<(), ServerError> {
        let old = self.live();
        let loaded = Loaded::load(&old.config.path)?;
        let config = &loaded.config;
        if config.sip.listen != old.config.sip.listen
            || config.media.port_first != old.config.media.port_first
            || config.media.port_last != old.config.media.port_last
            || config.api.as_ref().map(|a| a.listen) != old.config.api.as_ref().map(|a| a.listen)
        {
            warn!("reload: listen addresses (SIP, API) and the media port range change only on restart");
        }
        let live = Live::build(loaded, &self.counters);
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        Ok(())
    }

    /// The carrier that admits `ip` in the live configuration.
    pub fn carrier_for(&self, ip: IpAddr) -> Option<Arc<CarrierState>> {
        self.live().carrier_for(ip).cloned()
    }

    /// A fresh identifier (connections, calls).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) compare as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_compares_as_ipv4() {
        let ip: IpAddr = "::ffff:54.172.60.1".parse().unwrap();
        assert_eq!(canonical_ip(ip), "54.172.60.1".parse::<IpAddr>().unwrap());
    }
}
