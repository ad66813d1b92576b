//! Admission of a new INVITE: who may call (re-checked against the live configuration on every
//! INVITE, so a reload that removes or narrows a carrier takes effect at once, also on
//! connections that are already open), and how many calls at once and per second.
//!
//! Pure decisions on the shared state: no I/O, and the clock comes in as `now`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::audit::SipTls;
use crate::shared::{CarrierState, Shared};
use crate::sip::Request;

/// Seconds a carrier is asked to wait before retrying an INVITE refused for write pressure.
const OVERLOAD_RETRY_AFTER_SECS: u32 = 1;

/// What admission knows about the connection an INVITE came on.
pub struct ConnFacts<'a> {
    pub peer: SocketAddr,
    /// The carrier the connection was admitted as when it was opened.
    pub carrier: &'a str,
    pub sip_tls: &'a SipTls,
    /// sbc opened this connection itself (to send a BYE): it carries in-dialog requests only.
    pub outbound: bool,
    /// The connection's write queue has no room for one more call's responses (what is queued
    /// plus what the calls already in setup will send, `ConnHandle::reserve_setup`).
    pub write_backlogged: bool,
}

/// An INVITE admission refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    /// For the log and the audit record.
    pub why: &'static str,
    pub retry_after: Option<u32>,
    /// No carrier admits this connection any more: close it once its calls have ended.
    pub revoke: bool,
}

impl Refusal {
    fn forbidden(why: &'static str, revoke: bool) -> Refusal {
        Refusal {
            status: 403,
            reason: "Forbidden",
            why,
            retry_after: None,
            revoke,
        }
    }

    fn busy(why: &'static str, retry_after: u32) -> Refusal {
        Refusal {
            status: 503,
            reason: "Service Unavailable",
            why,
            retry_after: Some(retry_after),
            revoke: false,
        }
    }
}

/// A call admitted: its carrier (as the live configuration has it) and its slots, released on
/// drop unless handed to the call task with [`Admitted::into_carrier`].
pub struct Admitted {
    shared: Arc<Shared>,
    carrier: Option<Arc<CarrierState>>,
}

impl Admitted {
    /// The carrier; the call task now owns the slots and gives them back when it ends.
    pub fn into_carrier(mut self) -> Arc<CarrierState> {
        // `Some` until this call or the drop.
        self.carrier.take().expect("carrier present until taken")
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(c) = self.carrier.take() {
            c.active().fetch_sub(1, Ordering::SeqCst);
            self.shared.active_calls.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Cluster-wide limits (`[cluster]`): takes the call's carrier and account slots for CallSid
/// `sid` (one Redis round trip; alone under `cluster.degraded_share` while Redis is away), or
/// refuses with 503 and `Retry-After` when the cluster is full. Always admits without
/// `[cluster]`. The slots go back when the call task ends (`call::Release`).
pub async fn admit_cluster(
    shared: &Shared,
    sid: &str,
    carrier: &str,
    sip_call_id: &str,
    account: Option<&str>,
) -> Result<(), Refusal> {
    let Some(cluster) = &shared.cluster else {
        return Ok(());
    };
    let slot = crate::cluster::Slot {
        carrier: carrier.to_string(),
        account: account.map(str::to_string),
    };
    let dialog = crate::cluster::Cluster::dialog_key(carrier, sip_call_id);
    cluster
        .acquire(sid, dialog, slot)
        .await
        .map_err(|full| Refusal::busy(full.why(), 5))
}

/// `[cluster]`, for an outbound call `sid` through trunk `trunk` for API account `account`:
/// registers the call as this instance's (so that any instance's API forwards requests for it
/// here) and takes the account's cluster slot (`cluster.account_limits`) and the trunk's
/// (`[[trunks]] max_concurrent_calls`, counted across the cluster). Released by the outbound task's drop guard with
/// `Cluster::dialog_key(&outbound_carrier(trunk), sid)`.
pub async fn admit_outbound(
    shared: &Shared,
    sid: &str,
    trunk: &str,
    account: &str,
) -> Result<(), Refusal> {
    admit_cluster(shared, sid, &outbound_carrier(trunk), sid, Some(account)).await
}

/// The carrier name an outbound call through `trunk` is counted under (as `outbound.rs` routes
/// the trunk's connection).
pub fn outbound_carrier(trunk: &str) -> String {
    format!("{}{trunk}", crate::cluster::TRUNK_PREFIX)
}

/// `[cluster]`: when the next INVITE to `trunk` may go out under the trunk's cluster-wide
/// `max_calls_per_second` (`Cluster::invite_turn`); `None` without `[cluster]` (the local pacer
/// alone applies).
pub async fn cluster_invite_turn(
    shared: &Shared,
    trunk: &str,
    per_second: std::num::NonZeroU32,
) -> Option<Instant> {
    let cluster = shared.cluster.as_ref()?;
    Some(cluster.invite_turn(trunk, per_second).await)
}

/// Decides on a new INVITE (one without a To tag and for no known call).
pub fn admit(
    shared: &Arc<Shared>,
    conn: &ConnFacts<'_>,
    invite: &Request,
    now: Instant,
) -> Result<Admitted, Refusal> {
    if conn.outbound {
        return Err(Refusal::forbidden(
            "new INVITE on a connection sbc opened (in-dialog requests only)",
            false,
        ));
    }
    let live = shared.live();
    let Some(carrier) = live.carrier_for(conn.peer.ip()) else {
        return Err(Refusal::forbidden(
            "no carrier admits this source any more (configuration reloaded)",
            true,
        ));
    };
    if carrier.config.name != conn.carrier {
        return Err(Refusal::forbidden(
            "this source now belongs to another carrier (configuration reloaded)",
            true,
        ));
    }
    if !carrier.config.certificate_names.is_empty()
        && !crate::conn::certificate_names_match(
            conn.sip_tls.client_cert.as_deref(),
            &carrier.config.certificate_names,
        )
    {
        return Err(Refusal::forbidden(
            "carrier certificate not for a name the configuration expects",
            true,
        ));
    }
    if !carrier.config.twilio_account_sids.is_empty() {
        let sid = invite.headers.get("X-Twilio-AccountSid").map(str::trim);
        if !sid.is_some_and(|s| carrier.config.twilio_account_sids.iter().any(|a| a == s)) {
            return Err(Refusal::forbidden(
                "Twilio account not allowed (X-Twilio-AccountSid missing or not listed)",
                false,
            ));
        }
    }
    if shared.draining.load(Ordering::SeqCst) {
        return Err(Refusal::busy("shutting down", 30));
    }
    if shared.audit.backlogged() {
        // No call runs unaudited: while the audit writer is behind (a stalled disk), new calls
        // wait. Records of calls in progress are never dropped (`audit` module doc).
        return Err(Refusal::busy("audit log backlogged (writes stalled)", 5));
    }
    if conn.write_backlogged {
        // Past saturation (sbc's workers, or a peer reading slowly): the calls already in setup
        // keep the connection's write budget for their responses, and the carrier retries.
        return Err(Refusal::busy(
            "connection write queue backlogged (calls in setup)",
            OVERLOAD_RETRY_AFTER_SECS,
        ));
    }
    // Reserve global and carrier capacity; `Admitted` gives them back unless a call takes them.
    let global = shared.active_calls.fetch_add(1, Ordering::SeqCst);
    let c = carrier.active().fetch_add(1, Ordering::SeqCst);
    let admitted = Admitted {
        shared: Arc::clone(shared),
        carrier: Some(Arc::clone(carrier)),
    };
    if global >= live.config.limits.max_concurrent_calls {
        return Err(Refusal::busy("over capacity (max_concurrent_calls)", 5));
    }
    if c >= carrier.config.max_concurrent_calls {
        return Err(Refusal::busy(
            "carrier over capacity (max_concurrent_calls)",
            5,
        ));
    }
    if !carrier.take_token(now) {
        return Err(Refusal::busy(
            "carrier call rate limit (max_calls_per_second)",
            1,
        ));
    }
    Ok(admitted)
}
