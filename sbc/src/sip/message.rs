//! SIP message parsing and building (RFC 3261 §7, §20), rsip where it copes with real traffic,
//! our own parsing where it does not (compact forms, folding, `tel:` URIs, unknown methods).
//!
//! INTERFACE STUB: the SIP helper implements these and may add items.

use bytes::Bytes;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Update,
    Info,
    Refer,
    Prack,
    Register,
    Subscribe,
    Notify,
    Message,
    Publish,
    /// Any other token.
    Other(String),
}

/// Headers in order, names as written; lookups are case-insensitive and know compact forms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// First value of a header (`name` in its long form; compact forms match too).
    pub fn get(&self, name: &str) -> Option<&str> {
        let _ = name;
        unimplemented!("message stub")
    }
    /// All values of a header, in order (comma-separated values are not split).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let _ = name;
        std::iter::empty()
    }
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((name.to_string(), value.into()));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Request-URI as written.
    pub uri: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SipMessage {
    Request(Request),
    Response(Response),
}

/// A parse failure, with the byte offset where it happened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SIP parse error at byte {offset}: {reason}")]
pub struct ParseError {
    pub offset: usize,
    pub reason: String,
}

/// Why a request is answered without reaching a call (400/483/405/501...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
}

impl SipMessage {
    /// Parses one framed message.
    pub fn parse(data: &[u8]) -> Result<SipMessage, ParseError> {
        let _ = data;
        unimplemented!("message stub")
    }
    /// Serialises with CRLF and a correct Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        unimplemented!("message stub")
    }
    pub fn call_id(&self) -> Option<&str> {
        unimplemented!("message stub")
    }
}

impl Request {
    pub fn call_id(&self) -> Option<&str> {
        unimplemented!("message stub")
    }
    /// The user part of the Request-URI (`sip:` or `tel:`), e.g. `+15550002222`.
    pub fn called_number(&self) -> Option<String> {
        unimplemented!("message stub")
    }
    /// The user part of the From URI.
    pub fn caller_number(&self) -> Option<String> {
        unimplemented!("message stub")
    }
    /// Checks the mandatory headers and Max-Forwards (RFC 3261 §8.2): 400 with a reason phrase
    /// naming the missing header, 483 for `Max-Forwards: 0`, 501 for an unknown method, 405 for a
    /// known method sbc does not allow outside a dialog.
    pub fn validate(&self) -> Result<(), Rejection> {
        unimplemented!("message stub")
    }
    /// A stateless response to this request (Via, From, To, Call-ID, CSeq copied; `to_tag` added
    /// to To when given and To has none).
    pub fn response(&self, status: u16, reason: &str, to_tag: Option<&str>) -> Response {
        let _ = (status, reason, to_tag);
        unimplemented!("message stub")
    }
}

/// The `Allow` header value sbc sends.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO";
