//! Routing of each SIP message a connection reads: to the call it belongs to, to admission for
//! a new INVITE, or a stateless answer. The dialog table lives here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::admission::{self, ConnFacts};
use crate::audit::{CallRecord, Decision, SipTls};
use crate::call::{self, CallInput};
use crate::conn::ConnHandle;
use crate::metrics as m;
use crate::shared::{CarrierState, Shared};
use crate::sip::{strict, Method, Request, Response, SipMessage};

/// (carrier name, Call-ID) → the mailbox of the call task that owns it.
///
/// A message reaches a call only from a connection of the call's carrier: the carrier is half of
/// the key. Within the carrier, the call itself decides whether a request belongs to its dialog
/// or INVITE transaction (`UasCall::match_request`) before anything in the call changes; a
/// request that does not match is answered 481 on the connection it came on. One exception, for
/// outbound calls: an in-dialog request on a carrier's connection may reach a trunk's dialog
/// (`ConnCtx::deliver_to_trunk_dialog`), where `UacCall::matches_request` checks both tags.
#[derive(Default)]
pub struct Dialogs {
    calls: Mutex<HashMap<DialogKey, mpsc::Sender<CallInput>>>,
}

/// The carrier (by name, which admission keeps equal to the connection's) and the Call-ID.
type DialogKey = (String, String);

fn key(carrier: &str, sip_call_id: &str) -> DialogKey {
    (carrier.to_string(), sip_call_id.to_string())
}

impl Dialogs {
    /// Removes a call (called when its task has ended, so its mailbox is closed). A newer call
    /// registered under the same key since (its mailbox still open) stays.
    pub fn unregister(&self, carrier: &str, sip_call_id: &str) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(carrier, sip_call_id);
        if calls.get(&k).is_some_and(|tx| tx.is_closed()) {
            calls.remove(&k);
        }
    }

    pub(crate) fn insert(&self, carrier: &str, sip_call_id: &str, tx: mpsc::Sender<CallInput>) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key(carrier, sip_call_id), tx);
    }

    pub(crate) fn lookup(
        &self,
        carrier: &str,
        sip_call_id: &str,
    ) -> Option<mpsc::Sender<CallInput>> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key(carrier, sip_call_id))
            .filter(|tx| !tx.is_closed())
            .cloned()
    }

    /// Every live call's mailbox (shutdown).
    pub(crate) fn all(&self) -> Vec<mpsc::Sender<CallInput>> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// What a connection task knows when it routes a message.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) carrier: Arc<CarrierState>,
    pub(crate) sip_tls: SipTls,
    pub(crate) handle: ConnHandle,
    /// Set when admission found that no carrier admits this connection any more (a reload):
    /// the connection closes once no call uses it.
    pub(crate) revoked: AtomicBool,
}

impl ConnCtx {
    pub(crate) fn new(
        shared: Arc<Shared>,
        carrier: Arc<CarrierState>,
        sip_tls: SipTls,
        handle: ConnHandle,
    ) -> ConnCtx {
        ConnCtx {
            shared,
            carrier,
            sip_tls,
            handle,
            revoked: AtomicBool::new(false),
        }
    }

    /// True once admission revoked this connection and no call holds it any more.
    pub(crate) fn revoked_and_unused(&self) -> bool {
        self.revoked.load(Ordering::Relaxed) && self.handle.strong_count() <= 1
    }

    /// The carrier this connection was admitted as: half of every dialog-table key.
    fn carrier_name(&self) -> &str {
        &self.carrier.config.name
    }

    pub(crate) fn reply(&self, req: &Request, status: u16, reason: &str, extra: &[(&str, String)]) {
        let retry_after = extra
            .iter()
            .find(|(k, _)| *k == "Retry-After")
            .and_then(|(_, v)| v.parse().ok());
        let mut rng = rand::thread_rng();
        let mut resp: Response = crate::sip::stateless_response(
            req,
            status,
            reason,
            &self.shared.uas,
            retry_after,
            &mut rng,
        );
        for (k, v) in extra.iter().filter(|(k, _)| *k != "Retry-After") {
            resp.headers.push(k, v.clone());
        }
        self.handle.send(&SipMessage::Response(resp));
    }

    pub(crate) fn handle_message(&self, data: &[u8]) {
        let line_problem = strict::request_line_problem(data);
        let msg = match SipMessage::parse(data) {
            Ok(m) => m,
            Err(e) => {
                let reason = line_problem.map(|p| p.1).unwrap_or("Bad Request");
                match strict::bad_request_for_unparsable(data, reason) {
                    Some(resp) => {
                        info!(error = %e, "unparsable SIP request: 400");
                        m::sip_response(400);
                        let _ = self.handle.tx.try_send(Bytes::from(resp));
                    }
                    // Without Via/Call-ID/CSeq there is nothing to address a response to.
                    None => warn!(error = %e, "unparsable SIP message dropped"),
                }
                return;
            }
        };
        if let SipMessage::Request(req) = &msg {
            if let Some((status, reason)) = line_problem.or_else(|| strict::header_problem(req)) {
                info!(method = ?req.method, status, reason, "malformed request rejected");
                if req.method != Method::Ack {
                    self.reply(req, status, reason, &[]);
                }
                return;
            }
        }
        match msg {
            SipMessage::Response(resp) => {
                // Only a call of this connection's carrier; the call then checks the branch.
                let tx = resp
                    .headers
                    .get("Call-ID")
                    .and_then(|id| self.shared.dialogs.lookup(self.carrier_name(), id));
                match tx {
                    Some(tx) => {
                        let _ = tx.try_send(CallInput::Response(Box::new(resp)));
                    }
                    None => debug!(status = resp.status, "response for no known call dropped"),
                }
            }
            SipMessage::Request(req) => self.handle_request(req, data.len()),
        }
    }

    /// `len`: the request's size on the wire.
    fn handle_request(&self, req: Request, len: usize) {
        if req.headers.0.len() > self.shared.live().config.limits.max_headers {
            warn!(count = req.headers.0.len(), "too many headers");
            if req.method != Method::Ack {
                self.reply(&req, 400, "Too Many Headers", &[]);
            }
            return;
        }
        if let Err(rej) = req.validate() {
            info!(method = ?req.method, status = rej.status, reason = %rej.reason, "request rejected");
            if req.method != Method::Ack {
                self.reply(&req, rej.status, &rej.reason, &[]);
            }
            return;
        }
        let call_id = req.call_id().unwrap_or_default().to_string();
        // A call of another carrier is not reachable from here, whatever the Call-ID; within the
        // carrier the call matches tags or branch before it acts (or answers 481 here).
        if let Some(tx) = self.shared.dialogs.lookup(self.carrier_name(), &call_id) {
            if tx
                .try_send(CallInput::Request(Box::new(req), self.handle.clone()))
                .is_err()
            {
                warn!(%call_id, "call mailbox full or closed: request dropped");
            }
            return;
        }
        let has_to_tag = req
            .headers
            .get("To")
            .is_some_and(|t| t.contains(";tag=") || t.contains("; tag="));
        if has_to_tag && self.deliver_to_trunk_dialog(&req, &call_id) {
            return;
        }
        match req.method {
            Method::Invite => {
                if has_to_tag {
                    self.reply(&req, 481, "Call/Transaction Does Not Exist", &[]);
                } else {
                    self.new_invite(req, call_id, len);
                }
            }
            // Out of any dialog: a keep-alive or capability query. With a To tag it names a
            // dialog this carrier does not have (RFC 3261 §12.2.2).
            Method::Options if !has_to_tag => self.reply(&req, 200, "OK", &[]),
            Method::Ack => debug!(%call_id, "ACK for no known call dropped"),
            _ => self.reply(&req, 481, "Call/Transaction Does Not Exist", &[]),
        }
    }

    /// An in-dialog request (To tag) on a carrier connection for an outbound call's dialog: the
    /// trunk's callee may send its BYE, re-INVITE or UPDATE to sbc's Contact, i.e. on a new
    /// connection to the listener (RFC 3261 §12.2.1.1), which dispatch knows as the carrier
    /// whose `source_cidrs` admitted it. Such a connection may reach any trunk's dialog with this
    /// Call-ID; the call then matches the full dialog identifiers (Call-ID, both tags:
    /// `UacCall::matches_request`) before anything changes, and answers 481 on this connection
    /// otherwise. A connection admitted as a trunk (`trunk:<name>`, from an address that trunk
    /// resolved to) reaches its own trunk's dialogs only, by the lookup in `handle_request`.
    /// True when the request was handed to a call.
    fn deliver_to_trunk_dialog(&self, req: &Request, call_id: &str) -> bool {
        if self.carrier_name().starts_with("trunk:") {
            return false;
        }
        let live = self.shared.live();
        for trunk in &live.config.trunks {
            let name = format!("trunk:{}", trunk.name);
            if let Some(tx) = self.shared.dialogs.lookup(&name, call_id) {
                debug!(%call_id, trunk = %trunk.name, "in-dialog request on a carrier connection for an outbound call");
                if tx
                    .try_send(CallInput::Request(
                        Box::new(req.clone()),
                        self.handle.clone(),
                    ))
                    .is_err()
                {
                    warn!(%call_id, "call mailbox full or closed: request dropped");
                }
                return true;
            }
        }
        false
    }

    fn new_invite(&self, req: Request, call_id: String, len: usize) {
        let shared = &self.shared;
        let now = Instant::now();
        // Ended by the final response, whichever it is (a refusal below included).
        let write_room = self.handle.reserve_setup(&call_id, len);
        let facts = ConnFacts {
            peer: self.handle.peer,
            carrier: &self.carrier.config.name,
            sip_tls: &self.sip_tls,
            outbound: self.handle.outbound,
            write_backlogged: !write_room,
        };
        let admitted = match admission::admit(shared, &facts, &req, now) {
            Ok(a) => a,
            Err(refusal) => {
                info!(%call_id, status = refusal.status, why = refusal.why, "INVITE refused at admission");
                if refusal.revoke {
                    self.revoked.store(true, Ordering::Relaxed);
                }
                let extra: Vec<(&str, String)> = refusal
                    .retry_after
                    .map(|r| ("Retry-After", r.to_string()))
                    .into_iter()
                    .collect();
                self.reply(&req, refusal.status, refusal.reason, &extra);
                let rec = CallRecord {
                    call_id: format!("c{}", shared.next_id()),
                    sip_call_id: call_id.clone(),
                    carrier: self.carrier.config.name.clone(),
                    source: self.handle.peer.to_string(),
                    sip_tls: self.sip_tls.clone(),
                    from: shared
                        .audit
                        .number(&req.caller_number().unwrap_or_default()),
                    to: shared
                        .audit
                        .number(&req.called_number().unwrap_or_default()),
                    decision: Decision {
                        outcome: "refused",
                        status: refusal.status,
                        reason: refusal.why.to_string(),
                    },
                    received_at: crate::audit::now_rfc3339(),
                    ..Default::default()
                };
                shared.audit.write_admission_refusal(&rec);
                m::call_outcome("refused");
                return;
            }
        };
        let (tx, rx) = mpsc::channel(256);
        shared
            .dialogs
            .insert(&self.carrier.config.name, &call_id, tx);
        let setup = call::CallSetup {
            shared: Arc::clone(shared),
            carrier: admitted.into_carrier(),
            invite: req,
            conn: self.handle.clone(),
            sip_tls: self.sip_tls.clone(),
            sip_call_id: call_id,
            rx,
            received: now,
        };
        tokio::spawn(call::run(Box::new(setup)));
    }
}
