//! Several sbc instances as one service (`[cluster]`, `docs/scaling.md`): which instance owns
//! each call, and cluster-wide concurrent-call limits per carrier and per account, in Redis.
//!
//! Decisions live in [`core::Core`] (pure, clock injected); this module is the thin driver that
//! runs them against Redis: one Lua script per operation, so that every check-and-increment is
//! atomic and one inbound call setup costs one Redis round trip (its end one more); an outbound
//! call costs two (its registration and its INVITE turn, [`Cluster::invite_turn`]).
//!
//! Redis keys (all under `sbc:`; one Redis or a primary with replicas, not Redis Cluster: the
//! scripts touch keys of several instances):
//! - `sbc:instances`: sorted set, instance id scored by its expiry (Redis `TIME`, ms);
//! - `sbc:inst:{id}`: hash `api` (`IP:port`), `name` (TLS server name) of its API;
//! - `sbc:calls:{id}`: hash CallSid → `carrier\naccount`: the instance's calls (the registry)
//!   and the slots they hold;
//! - `sbc:count:{id}`: hash `c:{carrier}` / `a:{account}` → calls: its slot counts;
//! - `sbc:cps:{trunk}`: the next free INVITE turn of an outbound trunk, in µs of Redis `TIME`
//!   (the cluster-wide calls-per-second limit, [`Cluster::invite_turn`]).
//!
//! An outbound call (`outbound.rs`) registers under the carrier name `trunk:{trunk}`, which no
//! `carrier_limits` entry can name, so only `account_limits` applies to it.
//!
//! The heartbeat refreshes the three hashes' TTL and the instance's score; when an instance dies
//! (`kill -9`) they expire after `cluster.ttl_ms`, and with them its slots and registry entries.
//!
//! Degraded mode: a Redis command that fails or passes `cluster.redis_timeout_ms` makes the
//! instance degraded. It then decides alone, under `cluster.degraded_share` of each limit, and
//! only the heartbeat talks to Redis: when Redis answers again it rewrites this instance's calls
//! and slots from its own table (a resync) and is connected again.

pub mod core;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{ClusterConfig, ConfigError};
use crate::metrics as m;
use core::{Beat, Core, Limits};
pub use core::{Full, Slot, TRUNK_PREFIX};

/// Added to a trunk's INVITE interval in the cluster-wide pacer (1/20 of it): INVITEs booked 1 s
/// apart leave two instances after their own wake-up and send delays, and the trunk counts
/// arrivals; 50 ms at 1 call per second covers that jitter on a loaded host.
const CPS_GUARD_DIVISOR: u32 = 20;

/// Releases waiting for the driver at most; beyond it the next heartbeat resyncs instead.
const RELEASE_QUEUE: usize = 4096;

/// Another instance, as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    /// Where its API listens (`IP:port`).
    pub api: String,
    /// The name its API certificate is verified for.
    pub server_name: String,
}

/// Redis is unreachable (degraded mode): the cluster's shared state cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cluster state unavailable: Redis unreachable")]
pub struct Unavailable;

/// One instance's membership in the cluster.
pub struct Cluster {
    cfg: ClusterConfig,
    core: Mutex<Core>,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    releases: mpsc::Sender<String>,
    releases_rx: Mutex<Option<mpsc::Receiver<String>>>,
    /// TLS for requests forwarded to other instances' APIs.
    pub forward_tls: Arc<rustls::ClientConfig>,
    scripts: Scripts,
    /// Redis commands sent (a round trip each), for the figures in `docs/scaling.md`.
    round_trips: AtomicU64,
    /// Held by a heartbeat while it writes and by [`Cluster::leave`], so that no heartbeat
    /// re-registers an instance that has left; the flag says it has.
    membership: tokio::sync::Mutex<bool>,
}

struct Scripts {
    acquire: Script,
    release: Script,
    refresh: Script,
    resync: Script,
    lookup: Script,
    peers: Script,
    cps: Script,
    leave: Script,
}

/// Common head of every script: `now` in ms from Redis' own clock (one clock for all
/// instances), and expired instances dropped from `sbc:instances`.
const HEAD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', 'sbc:instances', '-inf', now)
";

/// ARGV: id, ttl_ms, sid, carrier, account ('' = none), carrier limit, account limit (0 = none).
/// Returns {1 taken | 2 carrier full | 3 account full, 1 if this instance was registered}.
const ACQUIRE: &str = r"
local id, ttl = ARGV[1], tonumber(ARGV[2])
local known = redis.call('ZSCORE', 'sbc:instances', id) and 1 or 0
local live = redis.call('ZRANGE', 'sbc:instances', 0, -1)
if known == 0 then table.insert(live, id) end
local calls, counts = 'sbc:calls:' .. id, 'sbc:count:' .. id
if redis.call('HEXISTS', calls, ARGV[3]) == 1 then return {1, known} end
local function total(field)
  local n = 0
  for _, inst in ipairs(live) do
    n = n + tonumber(redis.call('HGET', 'sbc:count:' .. inst, field) or '0')
  end
  return n
end
local cl, al = tonumber(ARGV[6]), tonumber(ARGV[7])
if cl > 0 and total('c:' .. ARGV[4]) >= cl then return {2, known} end
if al > 0 and ARGV[5] ~= '' and total('a:' .. ARGV[5]) >= al then return {3, known} end
redis.call('HSET', calls, ARGV[3], ARGV[4] .. '\n' .. ARGV[5])
redis.call('HINCRBY', counts, 'c:' .. ARGV[4], 1)
if ARGV[5] ~= '' then redis.call('HINCRBY', counts, 'a:' .. ARGV[5], 1) end
redis.call('PEXPIRE', calls, ttl)
redis.call('PEXPIRE', counts, ttl)
return {1, known}
";

/// ARGV: id, sid. Returns 1 if the call held slots.
const RELEASE: &str = r"
local calls, counts = 'sbc:calls:' .. ARGV[1], 'sbc:count:' .. ARGV[1]
local v = redis.call('HGET', calls, ARGV[2])
if not v then return 0 end
redis.call('HDEL', calls, ARGV[2])
local nl = string.find(v, '\n', 1, true)
local fields = {'c:' .. string.sub(v, 1, nl - 1)}
if nl < #v then table.insert(fields, 'a:' .. string.sub(v, nl + 1)) end
for _, f in ipairs(fields) do
  if redis.call('HINCRBY', counts, f, -1) <= 0 then redis.call('HDEL', counts, f) end
end
return 1
";

/// Registers this instance (ARGV: id, ttl_ms, api, name) and refreshes its keys' TTL.
const REGISTER: &str = r"
local id, ttl = ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', 'sbc:instances', now + ttl, id)
redis.call('HSET', 'sbc:inst:' .. id, 'api', ARGV[3], 'name', ARGV[4])
redis.call('PEXPIRE', 'sbc:inst:' .. id, ttl)
redis.call('PEXPIRE', 'sbc:calls:' .. id, ttl)
redis.call('PEXPIRE', 'sbc:count:' .. id, ttl)
";

/// ARGV: id, ttl_ms, api, name, then (sid, carrier, account) for each live call.
const RESYNC_BODY: &str = r"
local id = ARGV[1]
local calls, counts = 'sbc:calls:' .. id, 'sbc:count:' .. id
redis.call('DEL', calls, counts)
for i = 5, #ARGV, 3 do
  redis.call('HSET', calls, ARGV[i], ARGV[i + 1] .. '\n' .. ARGV[i + 2])
  redis.call('HINCRBY', counts, 'c:' .. ARGV[i + 1], 1)
  if ARGV[i + 2] ~= '' then redis.call('HINCRBY', counts, 'a:' .. ARGV[i + 2], 1) end
end
";

/// ARGV: sid. Returns {id, api, name} of the live instance holding it, or {}.
const LOOKUP: &str = r"
for _, inst in ipairs(redis.call('ZRANGE', 'sbc:instances', 0, -1)) do
  if redis.call('HEXISTS', 'sbc:calls:' .. inst, ARGV[1]) == 1 then
    local h = 'sbc:inst:' .. inst
    return {inst, redis.call('HGET', h, 'api') or '', redis.call('HGET', h, 'name') or ''}
  end
end
return {}
";

/// ARGV: trunk, spacing in µs. Books the trunk's next INVITE turn: a token bucket of depth one
/// kept as the time its next token is due (GCRA's theoretical arrival time), so that turns
/// are `spacing` apart whichever instance asks. Returns the µs to wait for the booked turn.
/// Times are formatted with `%.0f`: Lua 5.1's `tostring` would write 16 digits as `1.7e+15`.
const CPS: &str = r"
local key, spacing = 'sbc:cps:' .. ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local at = math.max(now, tonumber(redis.call('GET', key) or '0'))
redis.call('SET', key, string.format('%.0f', at + spacing), 'PX', math.floor((at + spacing - now) / 1000) + 1000)
return at - now
";

/// ARGV: id. This instance leaves the cluster: its registration, calls and slots are gone at
/// once (not at the end of their TTL).
const LEAVE: &str = r"
redis.call('ZREM', 'sbc:instances', ARGV[1])
redis.call('DEL', 'sbc:inst:' .. ARGV[1], 'sbc:calls:' .. ARGV[1], 'sbc:count:' .. ARGV[1])
return 1
";

/// Returns {id, api, name, ...} of every live instance.
const PEERS: &str = r"
local out = {}
for _, inst in ipairs(redis.call('ZRANGE', 'sbc:instances', 0, -1)) do
  local h = 'sbc:inst:' .. inst
  table.insert(out, inst)
  table.insert(out, redis.call('HGET', h, 'api') or '')
  table.insert(out, redis.call('HGET', h, 'name') or '')
end
return out
";

impl Scripts {
    fn new() -> Scripts {
        let with_head = |body: &str| Script::new(&format!("{HEAD}{body}"));
        Scripts {
            acquire: with_head(ACQUIRE),
            release: Script::new(RELEASE),
            // Returns 1 if this instance was still registered (else its keys may be gone).
            refresh: with_head(&format!(
                "local known = redis.call('ZSCORE', 'sbc:instances', ARGV[1]) and 1 or 0\n{REGISTER}\nreturn known"
            )),
            resync: with_head(&format!("{RESYNC_BODY}\n{REGISTER}\nreturn 1")),
            lookup: with_head(LOOKUP),
            peers: with_head(PEERS),
            cps: Script::new(CPS),
            leave: Script::new(LEAVE),
        }
    }
}

/// `redis_url` with the AUTH password put in (percent-encoded), as redis-rs reads it.
fn url_with_password(url: &str, password: Option<&str>) -> String {
    let Some(pw) = password else {
        return url.to_string();
    };
    let enc: String = pw
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://:{enc}@{rest}"),
        None => url.to_string(),
    }
}

impl Cluster {
    /// Builds the client (no connection yet: the first heartbeat connects).
    ///
    /// `trunk_limits`: each `[[trunks]]` entry's name and `max_concurrent_calls`, which the
    /// cluster counts like a carrier limit (under `trunk:<name>`), so that N instances together
    /// never hold more calls on a trunk than it allows.
    pub fn new(
        cfg: ClusterConfig,
        trunk_limits: impl IntoIterator<Item = (String, u32)>,
    ) -> Result<Arc<Cluster>, ConfigError> {
        let url = zeroize::Zeroizing::new(url_with_password(
            &cfg.redis_url,
            cfg.redis_password.as_ref().map(|p| p.expose()),
        ));
        let client = match (&cfg.redis_ca, cfg.redis_url.starts_with("rediss://")) {
            (Some(ca), true) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| ConfigError::in_file(ca, format!("cannot read it: {e}")))?;
                redis::Client::build_with_tls(
                    url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            _ => redis::Client::open(url.as_str()),
        }
        .map_err(|e| ConfigError(format!("cluster.redis_url: {e}")))?;
        let forward_tls = crate::tls::cluster_client_config(&cfg)?;
        let limits = Limits {
            carriers: cfg
                .carrier_limits
                .iter()
                .cloned()
                .chain(
                    trunk_limits
                        .into_iter()
                        .map(|(name, limit)| (format!("{TRUNK_PREFIX}{name}"), limit)),
                )
                .collect(),
            accounts: cfg.account_limits.iter().cloned().collect(),
            degraded_share: cfg.degraded_share,
        };
        let (tx, rx) = mpsc::channel(RELEASE_QUEUE);
        m::cluster_degraded(true);
        Ok(Arc::new(Cluster {
            core: Mutex::new(Core::new(Instant::now(), limits, cfg.heartbeat)),
            cfg,
            client,
            conn: tokio::sync::Mutex::new(None),
            releases: tx,
            releases_rx: Mutex::new(Some(rx)),
            forward_tls,
            scripts: Scripts::new(),
            round_trips: AtomicU64::new(0),
            membership: tokio::sync::Mutex::new(false),
        }))
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.cfg.instance_id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Redis does not answer: the instance decides alone.
    pub fn is_degraded(&self) -> bool {
        self.core().is_degraded()
    }

    /// Redis commands sent so far (each one round trip).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Starts the heartbeat and release driver (inside the tokio runtime).
    pub fn spawn(self: &Arc<Self>) {
        let rx = self
            .releases_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = rx {
            tokio::spawn(Arc::clone(self).drive(rx));
        }
    }

    async fn drive(self: Arc<Self>, mut releases: mpsc::Receiver<String>) {
        loop {
            let deadline = self
                .core()
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + self.cfg.heartbeat);
            tokio::select! {
                sid = releases.recv() => {
                    let Some(sid) = sid else { return };
                    if self.is_degraded() {
                        continue; // the resync writes the truth
                    }
                    let mut inv = self.scripts.release.prepare_invoke();
                    inv.arg(&self.cfg.instance_id).arg(&sid);
                    let _ = self.invoke_prepared::<i64>("release", &inv).await;
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let beat = self.core().handle_timeout(Instant::now());
                    if let Some(beat) = beat {
                        self.beat(beat).await;
                    }
                }
            }
        }
    }

    async fn beat(&self, beat: Beat) {
        let left = self.membership.lock().await;
        if *left {
            return;
        }
        let ttl = self.cfg.ttl.as_millis().to_string();
        let api = self.cfg.api_address.to_string();
        match beat {
            Beat::Refresh => {
                let mut inv = self.scripts.refresh.prepare_invoke();
                inv.arg(&self.cfg.instance_id)
                    .arg(&ttl)
                    .arg(&api)
                    .arg(&self.cfg.api_server_name);
                match self.invoke_prepared::<i64>("refresh", &inv).await {
                    Ok(1) => {}
                    Ok(_) => {
                        warn!(
                            instance = %self.cfg.instance_id,
                            "cluster: Redis had forgotten this instance (TTL passed): re-registering its calls"
                        );
                        self.core().forgotten();
                    }
                    Err(()) => {}
                }
            }
            Beat::Resync => {
                let mut inv = self.scripts.resync.prepare_invoke();
                inv.arg(&self.cfg.instance_id)
                    .arg(&ttl)
                    .arg(&api)
                    .arg(&self.cfg.api_server_name);
                let (n, mark) = {
                    let core = self.core();
                    for (sid, slot) in core.calls() {
                        inv.arg(sid)
                            .arg(&slot.carrier)
                            .arg(slot.account.as_deref().unwrap_or(""));
                    }
                    (core.calls().count(), core.snapshot_mark())
                };
                if self.invoke_prepared::<i64>("resync", &inv).await.is_ok() {
                    let back = {
                        let mut core = self.core();
                        core.resynced(mark);
                        core.redis_ok(Instant::now())
                    };
                    if back {
                        m::cluster_degraded(false);
                        info!(
                            instance = %self.cfg.instance_id,
                            calls = n,
                            "cluster: Redis reachable; this instance's calls and slots registered"
                        );
                    }
                }
            }
        }
    }

    /// The end of a drain: this instance removes itself from Redis (registration, calls,
    /// slots), so that other instances stop listing and forwarding to it at once instead of
    /// after its TTL. No heartbeat registers it again. One attempt: if Redis is away, the TTL
    /// removes it as after a crash.
    pub async fn leave(&self) {
        let mut left = self.membership.lock().await;
        *left = true;
        let mut inv = self.scripts.leave.prepare_invoke();
        inv.arg(&self.cfg.instance_id);
        if self.invoke_prepared::<i64>("leave", &inv).await.is_ok() {
            info!(instance = %self.cfg.instance_id, "cluster: left (registration removed from Redis)");
        }
    }

    /// A connection to Redis, made on first use and kept (redis-rs reconnects it).
    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.cfg.redis_timeout))
            .set_response_timeout(Some(self.cfg.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let c = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one script within `redis_timeout`; a failure makes the instance degraded.
    async fn invoke_prepared<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ()> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(self.cfg.redis_timeout * 2, async {
            let mut conn = self.connection().await?;
            inv.invoke_async::<T>(&mut conn).await
        })
        .await;
        let err = match result {
            Ok(Ok(v)) => {
                m::cluster_redis_command(op, "ok");
                return Ok(v);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        m::cluster_redis_command(op, "error");
        if self.core().redis_failed(Instant::now()) {
            m::cluster_degraded(true);
            warn!(
                instance = %self.cfg.instance_id,
                op,
                error = %err,
                share = self.cfg.degraded_share,
                "cluster: Redis unreachable; degraded (local limits at the configured share)"
            );
        }
        Err(())
    }

    /// Takes the cluster slots of a new call `sid` (registering it as this instance's):
    /// atomically in Redis, or alone under the local share while degraded.
    /// `dialog` names the call task (`Cluster::dialog_key`), which releases with it.
    pub async fn acquire(&self, sid: &str, dialog: String, slot: Slot) -> Result<(), Full> {
        let (cl, al) = {
            let core = self.core();
            if core.is_degraded() {
                drop(core);
                return self.acquire_local(sid, dialog, slot);
            }
            core.cluster_limits(&slot)
        };
        let mut inv = self.scripts.acquire.prepare_invoke();
        inv.arg(&self.cfg.instance_id)
            .arg(self.cfg.ttl.as_millis().to_string())
            .arg(sid)
            .arg(&slot.carrier)
            .arg(slot.account.as_deref().unwrap_or(""))
            .arg(cl)
            .arg(al);
        match self.invoke_prepared::<(i64, i64)>("acquire", &inv).await {
            Ok((1, known)) => {
                let mut core = self.core();
                if known == 0 {
                    core.forgotten();
                }
                core.taken(sid.to_string(), dialog, slot);
                Ok(())
            }
            Ok((2, _)) => Err(Full::carrier_of(&slot)),
            Ok((_, _)) => Err(Full::Account),
            // Unknown whether Redis took it: the resync after the outage writes the truth.
            Err(()) => self.acquire_local(sid, dialog, slot),
        }
    }

    fn acquire_local(&self, sid: &str, dialog: String, slot: Slot) -> Result<(), Full> {
        let mut core = self.core();
        core.admit_local(&slot)?;
        core.taken(sid.to_string(), dialog, slot);
        Ok(())
    }

    /// How a call task is named for [`Cluster::acquire`] and [`Cluster::release`]: its
    /// carrier and SIP Call-ID (the dialog table's key).
    pub fn dialog_key(carrier: &str, sip_call_id: &str) -> String {
        format!("{carrier}\n{sip_call_id}")
    }

    /// A call task ended: gives its slots back, if it took any (never waits; called from the
    /// task's drop guard).
    pub fn release(&self, dialog: &str) {
        let Some(sid) = self.core().released(dialog) else {
            return;
        };
        if self.releases.try_send(sid).is_err() {
            // The driver is behind: rewrite everything at the next heartbeat instead.
            self.core().forgotten();
        }
    }

    /// When this instance's next INVITE to `trunk` may go out, so that the whole cluster sends
    /// at most `per_second` INVITEs per second to it (one Redis round trip: the turn is booked
    /// atomically, [`CPS`]). While degraded, or if Redis fails now, this instance paces alone
    /// at `degraded_share` of the rate ([`Core::local_invite_at`]).
    pub async fn invite_turn(&self, trunk: &str, per_second: std::num::NonZeroU32) -> Instant {
        let interval = Duration::from_secs(1) / per_second.get();
        if !self.is_degraded() {
            let spacing = interval + interval / CPS_GUARD_DIVISOR;
            let mut inv = self.scripts.cps.prepare_invoke();
            inv.arg(trunk).arg(spacing.as_micros() as u64);
            if let Ok(wait_us) = self.invoke_prepared::<i64>("cps", &inv).await {
                return Instant::now() + Duration::from_micros(wait_us.max(0) as u64);
            }
        }
        self.core().local_invite_at(trunk, interval, Instant::now())
    }

    /// The live instance that holds call `sid`, if any.
    pub async fn owner(&self, sid: &str) -> Result<Option<Peer>, Unavailable> {
        if self.is_degraded() {
            return Err(Unavailable);
        }
        let mut inv = self.scripts.lookup.prepare_invoke();
        inv.arg(sid);
        let v: Vec<String> = self
            .invoke_prepared("lookup", &inv)
            .await
            .map_err(|()| Unavailable)?;
        Ok(match v.as_slice() {
            [id, api, name] => Some(Peer {
                id: id.clone(),
                api: api.clone(),
                server_name: name.clone(),
            }),
            _ => None,
        })
    }

    /// Every live instance but this one.
    pub async fn peers(&self) -> Result<Vec<Peer>, Unavailable> {
        if self.is_degraded() {
            return Err(Unavailable);
        }
        let inv = self.scripts.peers.prepare_invoke();
        let v: Vec<String> = self
            .invoke_prepared("peers", &inv)
            .await
            .map_err(|()| Unavailable)?;
        Ok(v.chunks_exact(3)
            .map(|c| Peer {
                id: c[0].clone(),
                api: c[1].clone(),
                server_name: c[2].clone(),
            })
            .filter(|p| p.id != self.cfg.instance_id)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_goes_into_the_url_percent_encoded() {
        assert_eq!(
            url_with_password("rediss://r.example:6380/0", Some("p@ss/w:rd")),
            "rediss://:p%40ss%2Fw%3Ard@r.example:6380/0"
        );
        assert_eq!(
            url_with_password("redis://127.0.0.1", None),
            "redis://127.0.0.1"
        );
    }

    const MINIMAL: &str = crate::config::TEST_MINIMAL;

    fn parse(cluster: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse_str(
            &format!("{MINIMAL}{cluster}"),
            std::path::Path::new("/etc/sbc/t.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn without_cluster_section_there_is_no_cluster() {
        assert!(parse("").unwrap().cluster.is_none());
    }

    #[test]
    fn cluster_section_gets_the_documented_defaults() {
        let c = parse(
            "[cluster]\nredis_url = \"rediss://r.example:6380/0\"\ninstance_id = \"sbc-a\"\n\
             api_address = \"10.0.0.5:8443\"\ncarrier_limits = { lo = 50 }\n",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(1000));
        assert_eq!(c.ttl, Duration::from_millis(5000));
        assert_eq!(c.redis_timeout, Duration::from_millis(500));
        assert_eq!(c.degraded_share, 0.5);
        assert!(!c.readyz_requires_redis);
        assert_eq!(c.api_server_name, "10.0.0.5");
        assert_eq!(c.carrier_limits, vec![("lo".to_string(), 50)]);
        assert!(c.account_limits.is_empty());
    }

    #[test]
    fn cluster_section_refuses_what_cannot_work() {
        let base = "[cluster]\ninstance_id = \"a\"\napi_address = \"10.0.0.5:8443\"\n";
        for (extra, why) in [
            ("redis_url = \"http://r\"", "redis_url must be"),
            ("redis_url = \"redis://:pw@r\"", "must not hold credentials"),
            (
                "redis_url = \"redis://r\"\nttl_ms = 1500\nheartbeat_ms = 1000",
                "at least twice",
            ),
            ("redis_url = \"redis://r\"\ndegraded_share = 0.0", "degraded_share"),
            ("redis_url = \"redis://r\"\ndegraded_share = 1.5", "degraded_share"),
            (
                "redis_url = \"redis://r\"\ncarrier_limits = { nope = 5 }",
                "not one of [[carriers]]",
            ),
            (
                "redis_url = \"redis://r\"\ncarrier_limits = { lo = 0 }",
                "greater than 0",
            ),
            (
                "redis_url = \"redis://r\"\naccount_limits = { AC00000000000000000000000000000000 = 5 }",
                "not one of [[api.accounts]]",
            ),
            ("redis_url = \"redis://r\"\nredis_pasword_file = \"x\"", "unknown field"),
        ] {
            let err = parse(&format!("{base}{extra}\n")).unwrap_err();
            assert!(err.contains(why), "{extra}: {err}");
        }
        let err = parse(
            "[cluster]\nredis_url = \"redis://r\"\ninstance_id = \"a b\"\napi_address = \"10.0.0.5:8443\"\n",
        )
        .unwrap_err();
        assert!(err.contains("instance_id"), "{err}");
        assert!(
            err.contains("t.toml:"),
            "errors name file, line and column: {err}"
        );
    }
}
