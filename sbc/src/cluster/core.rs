//! The cluster's decisions, with no I/O and no clock of its own (time comes in as `now`): whether
//! this instance is degraded, which limit applies to a new call, what the heartbeat must do
//! next, and this instance's own view of its calls (what it re-registers when Redis comes back).
//!
//! Driven by [`super::Cluster`]: it reports each Redis outcome ([`Core::redis_ok`],
//! [`Core::redis_failed`]), asks [`Core::handle_timeout`] what the heartbeat must send, and
//! while degraded asks [`Core::admit_local`] instead of Redis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One call this instance holds: the slots it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub carrier: String,
    /// The API account the call belongs to (its route's `account_sid`), if any.
    pub account: Option<String>,
}

/// Why a call was refused a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// `cluster.carrier_limits` for the call's carrier.
    Carrier,
    /// `cluster.account_limits` for the call's account.
    Account,
    /// `[[trunks]] max_concurrent_calls` of an outbound call's trunk, counted across the
    /// cluster (the trunk is the carrier `trunk:<name>` of [`Slot`]).
    Trunk,
}

impl Full {
    /// For logs and audit records.
    pub fn why(self) -> &'static str {
        match self {
            Full::Carrier => "cluster carrier limit reached (cluster.carrier_limits)",
            Full::Account => "cluster account limit reached (cluster.account_limits)",
            Full::Trunk => "cluster trunk limit reached (trunks.max_concurrent_calls)",
        }
    }

    /// A slot's carrier limit was reached: a trunk's limit for an outbound call.
    pub fn carrier_of(slot: &Slot) -> Full {
        if slot.carrier.starts_with(TRUNK_PREFIX) {
            Full::Trunk
        } else {
            Full::Carrier
        }
    }
}

/// How an outbound call's trunk is named as the carrier of its [`Slot`] (`trunk:<name>`; a
/// carrier's name cannot hold `:`).
pub const TRUNK_PREFIX: &str = "trunk:";

/// Whether Redis answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Redis answers; cluster-wide limits and the registry are in Redis.
    Connected,
    /// Redis failed at `since`; local limits (scaled by the share) apply.
    Degraded { since: Instant },
}

/// What the heartbeat must send at a timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Beat {
    /// Refresh this instance's registration and slots' TTL.
    Refresh,
    /// Rewrite this instance's calls and slots in Redis from [`Core::calls`] (after an outage,
    /// or when Redis forgot this instance).
    Resync,
}

/// Cluster-wide limits, as configured.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// By carrier name; a trunk's `max_concurrent_calls` is here under `trunk:<name>`.
    pub carriers: HashMap<String, u32>,
    pub accounts: HashMap<String, u32>,
    /// Share of each limit applied alone while degraded (0 < share <= 1).
    pub degraded_share: f64,
}

impl Limits {
    pub fn carrier(&self, name: &str) -> Option<u32> {
        self.carriers.get(name).copied()
    }

    pub fn account(&self, sid: Option<&str>) -> Option<u32> {
        sid.and_then(|s| self.accounts.get(s).copied())
    }

    /// A limit scaled by the degraded share, rounded up (never 0: one call always fits).
    pub fn local(&self, limit: u32) -> u32 {
        ((f64::from(limit) * self.degraded_share).ceil() as u32).max(1)
    }
}

/// The pure state of one instance's cluster membership.
#[derive(Debug)]
pub struct Core {
    limits: Limits,
    heartbeat: Duration,
    mode: Mode,
    /// This instance's live calls by CallSid: the truth that a resync writes to Redis.
    calls: HashMap<String, Slot>,
    /// CallSid by the call task's dialog key (what its drop guard releases by).
    by_dialog: HashMap<String, String>,
    /// Redis may not hold all of `calls` (a failure, a timeout, an expired registration).
    needs_resync: bool,
    /// Calls taken so far: a resync whose snapshot is older than a call taken meanwhile (its
    /// `acquire` may have run in Redis before the resync rewrote the hash) must run again.
    taken_count: u64,
    next_beat: Option<Instant>,
    /// While degraded: when each trunk's next outbound INVITE may go out from this instance.
    local_invites: HashMap<String, Instant>,
}

impl Core {
    /// Starts degraded until Redis first answers (and with a resync due, so that the first
    /// heartbeat registers this instance).
    pub fn new(now: Instant, limits: Limits, heartbeat: Duration) -> Core {
        Core {
            limits,
            heartbeat,
            mode: Mode::Degraded { since: now },
            calls: HashMap::new(),
            by_dialog: HashMap::new(),
            needs_resync: true,
            taken_count: 0,
            next_beat: Some(now),
            local_invites: HashMap::new(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn is_degraded(&self) -> bool {
        matches!(self.mode, Mode::Degraded { .. })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// This instance's live calls (what a resync writes).
    pub fn calls(&self) -> impl Iterator<Item = (&String, &Slot)> {
        self.calls.iter()
    }

    /// The limits that apply to a new call in Redis: (carrier limit, account limit), 0 = none.
    pub fn cluster_limits(&self, slot: &Slot) -> (u32, u32) {
        (
            self.limits.carrier(&slot.carrier).unwrap_or(0),
            self.limits.account(slot.account.as_deref()).unwrap_or(0),
        )
    }

    /// While degraded: whether this instance alone may take one more call under the local
    /// share of each limit (its own calls count, nobody else's are known).
    pub fn admit_local(&self, slot: &Slot) -> Result<(), Full> {
        if let Some(limit) = self.limits.carrier(&slot.carrier) {
            let n = self
                .calls
                .values()
                .filter(|s| s.carrier == slot.carrier)
                .count();
            if n as u64 >= u64::from(self.limits.local(limit)) {
                return Err(Full::carrier_of(slot));
            }
        }
        if let Some(limit) = self.limits.account(slot.account.as_deref()) {
            let n = self
                .calls
                .values()
                .filter(|s| s.account == slot.account)
                .count();
            if n as u64 >= u64::from(self.limits.local(limit)) {
                return Err(Full::Account);
            }
        }
        Ok(())
    }

    /// While degraded: when this instance's next INVITE to `trunk` may go out, at most
    /// `degraded_share` of the trunk's rate (one INVITE per `interval / share`), and books it.
    /// Each instance paces alone, so N instances with a share of 1/N stay under the trunk's
    /// limit together.
    pub fn local_invite_at(&mut self, trunk: &str, interval: Duration, now: Instant) -> Instant {
        let spacing = interval.div_f64(self.limits.degraded_share);
        let at = self
            .local_invites
            .get(trunk)
            .map_or(now, |next| (*next).max(now));
        self.local_invites.insert(trunk.to_string(), at + spacing);
        at
    }

    /// A call took its slots (in Redis, or locally while degraded); `dialog` is how its task
    /// names it when it ends.
    pub fn taken(&mut self, sid: String, dialog: String, slot: Slot) {
        if let Some(old) = self.by_dialog.insert(dialog, sid.clone()) {
            self.calls.remove(&old);
        }
        self.calls.insert(sid, slot);
        self.taken_count += 1;
    }

    /// What [`Core::resynced`] needs to know of the snapshot a resync writes.
    pub fn snapshot_mark(&self) -> u64 {
        self.taken_count
    }

    /// The call of task `dialog` ended: the CallSid whose slots it held, if any.
    pub fn released(&mut self, dialog: &str) -> Option<String> {
        let sid = self.by_dialog.remove(dialog)?;
        self.calls.remove(&sid).map(|_| sid)
    }

    /// Redis answered. Returns true when this ends a degraded period.
    pub fn redis_ok(&mut self, _now: Instant) -> bool {
        let was = self.is_degraded();
        self.mode = Mode::Connected;
        was
    }

    /// A Redis command failed or timed out: degraded, and Redis must be rewritten once it is
    /// back (what it holds of this instance is unknown). Returns true when this starts a
    /// degraded period.
    pub fn redis_failed(&mut self, now: Instant) -> bool {
        self.needs_resync = true;
        if self.is_degraded() {
            return false;
        }
        self.mode = Mode::Degraded { since: now };
        true
    }

    /// Redis no longer knew this instance (its registration expired): rewrite it.
    pub fn forgotten(&mut self) {
        self.needs_resync = true;
    }

    /// A resync of the snapshot taken at `mark` ([`Core::snapshot_mark`]) went through; if a
    /// call was taken since, the next beat resyncs again.
    pub fn resynced(&mut self, mark: u64) {
        if mark == self.taken_count {
            self.needs_resync = false;
        }
    }

    /// When the heartbeat is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_beat
    }

    /// The heartbeat is due at `now`: what it must send. The next one is one interval later.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Beat> {
        match self.next_beat {
            Some(t) if t <= now => {
                self.next_beat = Some(now + self.heartbeat);
                Some(if self.needs_resync {
                    Beat::Resync
                } else {
                    Beat::Refresh
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            carriers: [("twilio".to_string(), 5)].into_iter().collect(),
            accounts: [("AC1".to_string(), 3)].into_iter().collect(),
            degraded_share: 0.5,
        }
    }

    fn slot(carrier: &str, account: Option<&str>) -> Slot {
        Slot {
            carrier: carrier.into(),
            account: account.map(Into::into),
        }
    }

    #[test]
    fn a_trunk_limit_is_named_as_such_when_full() {
        let mut l = limits();
        l.carriers.insert(format!("{TRUNK_PREFIX}term"), 2);
        let mut c = Core::new(Instant::now(), l, Duration::from_secs(1));
        // Share 0.5 of 2: one outbound call on the trunk while degraded.
        let trunk = slot("trunk:term", Some("AC9"));
        assert_eq!(c.admit_local(&trunk), Ok(()));
        c.taken("CA1".into(), "d1".into(), trunk.clone());
        assert_eq!(c.admit_local(&trunk), Err(Full::Trunk));
        assert!(Full::Trunk.why().contains("trunks.max_concurrent_calls"));
        // Inbound calls of a carrier are not counted against it.
        assert_eq!(c.admit_local(&slot("twilio", None)), Ok(()));
        assert_eq!(Full::carrier_of(&slot("twilio", None)), Full::Carrier);
    }

    #[test]
    fn starts_degraded_and_registers_on_the_first_beat() {
        let t0 = Instant::now();
        let mut c = Core::new(t0, limits(), Duration::from_secs(1));
        assert!(c.is_degraded());
        assert_eq!(c.poll_timeout(), Some(t0));
        assert_eq!(c.handle_timeout(t0), Some(Beat::Resync));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert!(c.redis_ok(t0));
        c.resynced(c.snapshot_mark());
        assert!(!c.is_degraded());
        assert_eq!(c.handle_timeout(t0 + Duration::from_millis(999)), None);
        assert_eq!(
            c.handle_timeout(t0 + Duration::from_secs(1)),
            Some(Beat::Refresh)
        );
    }

    #[test]
    fn a_failure_degrades_once_and_asks_for_a_resync_when_back() {
        let t0 = Instant::now();
        let mut c = Core::new(t0, limits(), Duration::from_secs(1));
        c.handle_timeout(t0);
        c.redis_ok(t0);
        c.resynced(c.snapshot_mark());
        let t1 = t0 + Duration::from_secs(3);
        assert!(c.redis_failed(t1));
        assert!(!c.redis_failed(t1 + Duration::from_secs(1)));
        assert_eq!(c.mode(), Mode::Degraded { since: t1 });
        assert_eq!(
            c.handle_timeout(t1 + Duration::from_secs(2)),
            Some(Beat::Resync)
        );
        assert!(c.redis_ok(t1 + Duration::from_secs(2)));
        // Still a resync until one went through.
        assert_eq!(
            c.handle_timeout(t1 + Duration::from_secs(3)),
            Some(Beat::Resync)
        );
        c.resynced(c.snapshot_mark());
        assert_eq!(
            c.handle_timeout(t1 + Duration::from_secs(4)),
            Some(Beat::Refresh)
        );
        c.forgotten();
        assert_eq!(
            c.handle_timeout(t1 + Duration::from_secs(5)),
            Some(Beat::Resync)
        );
    }

    #[test]
    fn a_call_taken_during_a_resync_asks_for_another() {
        let t0 = Instant::now();
        let mut c = Core::new(t0, limits(), Duration::from_secs(1));
        assert_eq!(c.handle_timeout(t0), Some(Beat::Resync));
        let mark = c.snapshot_mark();
        c.taken("CA1".into(), "d1".into(), slot("twilio", None));
        c.redis_ok(t0);
        c.resynced(mark);
        assert_eq!(
            c.handle_timeout(t0 + Duration::from_secs(1)),
            Some(Beat::Resync)
        );
        c.resynced(c.snapshot_mark());
        assert_eq!(
            c.handle_timeout(t0 + Duration::from_secs(2)),
            Some(Beat::Refresh)
        );
    }

    #[test]
    fn local_share_applies_to_carrier_and_account_rounded_up() {
        let t0 = Instant::now();
        let mut c = Core::new(t0, limits(), Duration::from_secs(1));
        // carrier 5 * 0.5 -> 3; account 3 * 0.5 -> 2.
        assert_eq!(c.limits().local(5), 3);
        assert_eq!(c.limits().local(1), 1);
        c.taken("CA1".into(), "d1".into(), slot("twilio", Some("AC1")));
        c.taken("CA2".into(), "d2".into(), slot("twilio", Some("AC1")));
        assert_eq!(
            c.admit_local(&slot("twilio", Some("AC1"))),
            Err(Full::Account)
        );
        assert_eq!(c.admit_local(&slot("twilio", None)), Ok(()));
        c.taken("CA3".into(), "d3".into(), slot("twilio", None));
        assert_eq!(c.admit_local(&slot("twilio", None)), Err(Full::Carrier));
        // Other carriers have no limit.
        assert_eq!(c.admit_local(&slot("other", None)), Ok(()));
        assert_eq!(c.released("d3").as_deref(), Some("CA3"));
        assert_eq!(c.released("d3"), None);
        assert_eq!(c.calls().count(), 2);
        assert_eq!(c.admit_local(&slot("twilio", None)), Ok(()));
    }

    #[test]
    fn degraded_invites_are_paced_at_the_share_of_the_trunk_rate() {
        let t0 = Instant::now();
        let mut c = Core::new(t0, limits(), Duration::from_secs(1));
        let second = Duration::from_secs(1);
        // share 0.5 of 1 call per second: one INVITE every 2 s from this instance.
        assert_eq!(c.local_invite_at("t", second, t0), t0);
        assert_eq!(c.local_invite_at("t", second, t0), t0 + 2 * second);
        assert_eq!(c.local_invite_at("t", second, t0 + second), t0 + 4 * second);
        // Another trunk has its own turn; an idle trunk sends at once.
        assert_eq!(c.local_invite_at("u", second, t0), t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(c.local_invite_at("t", second, later), later);
    }

    #[test]
    fn cluster_limits_are_zero_when_none_applies() {
        let c = Core::new(Instant::now(), limits(), Duration::from_secs(1));
        assert_eq!(c.cluster_limits(&slot("twilio", Some("AC1"))), (5, 3));
        assert_eq!(c.cluster_limits(&slot("other", Some("AC2"))), (0, 0));
    }
}
