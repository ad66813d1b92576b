//! Calls the API can answer for: every call in progress (bounded by the admission limits) and
//! the most recently ended ones (bounded by `api.recent_calls`). Keyed by the CallSid the agent
//! saw in `start`; the carrier's `X-Twilio-CallSid` (trusted carriers only) resolves too.
//!
//! The call task writes its own entry (at answer, on transfer, at the end); the API reads
//! copies. Nothing here is on the media path: one short lock per call event or API request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use crate::call::CallInput;

/// Twilio's call statuses that sbc uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallStatus {
    /// An outbound call waiting for its CPS slot or its first provisional response.
    Queued,
    /// An outbound call the callee's side is alerting (180/183).
    Ringing,
    InProgress,
    Completed,
    /// Outbound: 486/600.
    Busy,
    /// Outbound: the ring timeout passed (CANCEL sent).
    NoAnswer,
    /// Outbound: any other failure before answer (DNS, TLS, 4xx-6xx, unusable SRTP answer).
    Failed,
    /// Outbound: cancelled through the API before answer.
    Canceled,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Queued => "queued",
            CallStatus::Ringing => "ringing",
            CallStatus::InProgress => "in-progress",
            CallStatus::Completed => "completed",
            CallStatus::Busy => "busy",
            CallStatus::NoAnswer => "no-answer",
            CallStatus::Failed => "failed",
            CallStatus::Canceled => "canceled",
        }
    }

    /// True once the call is over (whatever the outcome).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CallStatus::Queued | CallStatus::Ringing | CallStatus::InProgress
        )
    }

    /// The registry status for a UAC core's Twilio status.
    pub fn from_twilio(s: crate::sip::uac::TwilioStatus) -> CallStatus {
        use crate::sip::uac::TwilioStatus as T;
        match s {
            T::Queued => CallStatus::Queued,
            T::Ringing => CallStatus::Ringing,
            T::InProgress => CallStatus::InProgress,
            T::Completed => CallStatus::Completed,
            T::Busy => CallStatus::Busy,
            T::NoAnswer => CallStatus::NoAnswer,
            T::Failed => CallStatus::Failed,
            T::Canceled => CallStatus::Canceled,
        }
    }
}

/// Where a transfer stands, as the API shows it (`transfer` in the call resource).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferInfo {
    /// The `Refer-To` target (`tel:+E164` or a SIP URI).
    pub to: String,
    /// `requested`, `accepted` (202), `completed`, `failed`.
    pub outcome: String,
    /// The SIP status of the failure (REFER response or sipfrag), or 408 for a timeout.
    pub sip_status: Option<u16>,
}

/// One call as the API sees it.
#[derive(Clone, Debug)]
pub struct CallEntry {
    pub sid: String,
    /// The account that owns it (`agent.routes.account_sid`); `None`: no account sees it.
    pub account_sid: Option<String>,
    /// The carrier's `X-Twilio-CallSid`, when trusted and different from `sid`.
    pub alias: Option<String>,
    /// Twilio's `direction`: `inbound`, or `outbound-api` for a call created through the API.
    pub direction: &'static str,
    pub from: String,
    pub to: String,
    pub start: OffsetDateTime,
    pub end: Option<OffsetDateTime>,
    pub status: CallStatus,
    /// sbc's end reason once ended (`api_hangup`, `transferred`, `carrier_bye`, ...).
    pub end_reason: Option<String>,
    /// Transfer destinations allowed for this call (its route's `transfer_allow`).
    pub transfer_allow: Vec<String>,
    pub transfer: Option<TransferInfo>,
    /// The call task's mailbox while the call is in progress.
    pub mailbox: Option<mpsc::Sender<CallInput>>,
    /// Registration order, for listing newest first.
    pub seq: u64,
}

struct Inner {
    calls: HashMap<String, CallEntry>,
    aliases: HashMap<String, String>,
    ended: VecDeque<String>,
    next_seq: u64,
}

/// The call registry (see the module doc).
pub struct CallRegistry {
    inner: Mutex<Inner>,
    recent: usize,
    /// Bumped on every change: the API waits on it for a hang-up to take effect.
    changes: watch::Sender<u64>,
}

impl CallRegistry {
    /// Keeps up to `recent` ended calls.
    pub fn new(recent: usize) -> CallRegistry {
        CallRegistry {
            inner: Mutex::new(Inner {
                calls: HashMap::new(),
                aliases: HashMap::new(),
                ended: VecDeque::new(),
                next_seq: 0,
            }),
            recent,
            changes: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Adds a call in progress (its `seq` is assigned here).
    pub fn register(&self, mut entry: CallEntry) {
        let mut g = self.lock();
        entry.seq = g.next_seq;
        g.next_seq += 1;
        if let Some(a) = entry.alias.clone().filter(|a| *a != entry.sid) {
            g.aliases.insert(a, entry.sid.clone());
        }
        g.calls.insert(entry.sid.clone(), entry);
        drop(g);
        self.changed();
    }

    /// Changes a call's entry in place.
    pub fn update(&self, sid: &str, f: impl FnOnce(&mut CallEntry)) {
        let mut g = self.lock();
        if let Some(e) = g.calls.get_mut(sid) {
            f(e);
        }
        drop(g);
        self.changed();
    }

    /// Marks a call ended (`completed`); forgets the oldest ended calls beyond `recent`.
    pub fn end(&self, sid: &str, reason: &str) {
        self.end_with(sid, CallStatus::Completed, reason)
    }

    /// Marks a call ended with a final `status` (`busy`, `failed`, ... for an outbound call
    /// that was never answered).
    pub fn end_with(&self, sid: &str, status: CallStatus, reason: &str) {
        let mut g = self.lock();
        let Some(e) = g.calls.get_mut(sid) else {
            return;
        };
        if e.status.is_final() {
            return;
        }
        e.status = status;
        e.end = Some(OffsetDateTime::now_utc());
        e.end_reason = Some(reason.to_string());
        e.mailbox = None;
        g.ended.push_back(sid.to_string());
        while g.ended.len() > self.recent {
            if let Some(old) = g.ended.pop_front() {
                if let Some(e) = g.calls.remove(&old) {
                    if let Some(a) = e.alias {
                        g.aliases.remove(&a);
                    }
                }
            }
        }
        drop(g);
        self.changed();
    }

    /// A copy of the call known by `sid` (or by its carrier alias).
    pub fn get(&self, sid: &str) -> Option<CallEntry> {
        let g = self.lock();
        let key = g.aliases.get(sid).map(String::as_str).unwrap_or(sid);
        g.calls.get(key).cloned()
    }

    /// Copies of `account`'s calls matching `keep`, newest first.
    pub fn list(&self, account: &str, keep: impl Fn(&CallEntry) -> bool) -> Vec<CallEntry> {
        let g = self.lock();
        let mut v: Vec<CallEntry> = g
            .calls
            .values()
            .filter(|e| e.account_sid.as_deref() == Some(account) && keep(e))
            .cloned()
            .collect();
        drop(g);
        v.sort_by_key(|e| std::cmp::Reverse(e.seq));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sid: &str, account: &str) -> CallEntry {
        CallEntry {
            sid: sid.into(),
            account_sid: Some(account.into()),
            alias: Some(format!("{sid}-carrier")),
            direction: "inbound",
            from: "+1".into(),
            to: "+2".into(),
            start: OffsetDateTime::now_utc(),
            end: None,
            status: CallStatus::InProgress,
            end_reason: None,
            transfer_allow: vec![],
            transfer: None,
            mailbox: None,
            seq: 0,
        }
    }

    #[test]
    fn ended_calls_are_bounded_and_aliases_resolve() {
        let r = CallRegistry::new(2);
        for i in 0..4 {
            r.register(entry(&format!("CA{i}"), "AC1"));
        }
        assert_eq!(r.get("CA1-carrier").map(|e| e.sid), Some("CA1".into()));
        for i in 0..3 {
            r.end(&format!("CA{i}"), "carrier_bye");
        }
        // CA0 is forgotten (3 ended, 2 kept); the call in progress stays.
        assert!(r.get("CA0").is_none() && r.get("CA0-carrier").is_none());
        assert_eq!(r.get("CA1").map(|e| e.status), Some(CallStatus::Completed));
        assert!(r.get("CA3").is_some());
        let sids: Vec<_> = r.list("AC1", |_| true).into_iter().map(|e| e.sid).collect();
        assert_eq!(sids, vec!["CA3", "CA2", "CA1"]);
        assert!(r.list("AC2", |_| true).is_empty());
    }
}
