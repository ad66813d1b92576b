//! sbc: an edge session border controller. Carriers send SIP over TLS with SDES-SRTP audio; sbc
//! answers with its own keys and bridges each call to a voice agent over a TLS 1.3 WebSocket that
//! speaks the Twilio Media Streams protocol.
#![forbid(unsafe_code)]

pub mod admission;
pub mod agent;
pub mod agent_tls;
pub mod api;
pub mod audit;
pub mod call;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod dispatch;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod ports;
pub mod resolve;
pub mod server;
pub mod shared;
pub mod sip;
pub mod tls;
pub mod trunk;
pub mod udp_recv;
