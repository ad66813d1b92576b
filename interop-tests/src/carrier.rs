//! A minimal carrier written for the tests, for media SIPp cannot send: RFC 4733 telephone-events
//! over SRTP (SIPp 3.8's `play_dtmf` replays pcap-style plain RTP, not SRTP).
//!
//! It speaks SIP over TLS through [`crate::rawcall::SipConn`] (INVITE with one
//! `AES_CM_128_HMAC_SHA1_80` SDES key, ACK, BYE), and protects/unprotects with the `webrtc-srtp`
//! crate directly; RTP headers, telephone-event payloads and key handling are its own, so only
//! the SRTP library itself is shared with sbc's `srtp-bridge`.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

use crate::rawcall::{body, header, tag, SipConn};
use crate::tlsclient::status_code;
use crate::TestEnv;

/// One RTP packet the carrier received from sbc (after SRTP).
#[derive(Debug, Clone)]
pub struct ReceivedRtp {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

/// What the receiving thread saw.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub rtp: Vec<ReceivedRtp>,
    /// Datagrams that failed SRTP authentication (or were not SRTP).
    pub auth_failures: usize,
    pub rtcp: usize,
}

/// A call from the test carrier to sbc, answered and acknowledged.
pub struct TestCarrier {
    sip: SipConn,
    sbc_port: u16,
    local_sip_port: u16,
    pub call_id: String,
    from_tag: String,
    to_tag: String,
    /// sbc's 200 OK to the INVITE.
    pub answer: String,
    sock: UdpSocket,
    remote_rtp: SocketAddr,
    tx: Context,
    seq: u16,
    /// Timestamp of the next audio frame.
    ts: u32,
    ssrc: u32,
    te_pt: u8,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    rx_thread: Option<std::thread::JoinHandle<()>>,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

/// An RTP header (RFC 3550 §5.1: V=2, no padding/extension/CSRC) and payload.
fn rtp_packet(marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push((u8::from(marker) << 7) | (pt & 0x7f));
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An `AES_CM_128_HMAC_SHA1_80` context from a 30-byte SDES key||salt (RFC 4568 §6.1).
fn srtp_context(key_salt: &[u8]) -> Context {
    Context::new(
        &key_salt[..16],
        &key_salt[16..],
        ProtectionProfile::Aes128CmHmacSha1_80,
        None,
        None,
    )
    .expect("SRTP context")
}

impl TestCarrier {
    /// Calls `number` at sbc (`127.0.0.1:sbc_port`) offering RTP/SAVP with `codec_pt`
    /// (0 PCMU or 8 PCMA) and telephone-event 101, waits for the 200 OK and sends the ACK.
    pub fn call(env: &TestEnv, sbc_port: u16, number: &str, codec_pt: u8) -> TestCarrier {
        TestCarrier::call_with(env, sbc_port, number, codec_pt, 101)
    }

    /// [`TestCarrier::call`] with telephone-event on payload type `te_pt`.
    pub fn call_with(
        env: &TestEnv,
        sbc_port: u16,
        number: &str,
        codec_pt: u8,
        te_pt: u8,
    ) -> TestCarrier {
        let timeout = Duration::from_secs(10);
        let sip = SipConn::connect(&env.pki, sbc_port);
        let local_sip_port = sip.local_addr().port();
        let sock = UdpSocket::bind(("127.0.0.1", env.ports.sipp_rtp_min)).expect("bind RTP");
        let rtp_port = env.ports.sipp_rtp_min;
        let key: [u8; 30] = random_bytes();
        let inline = base64::engine::general_purpose::STANDARD.encode(key);
        let codec = if codec_pt == 8 { "PCMA" } else { "PCMU" };
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {rtp_port} RTP/SAVP {codec_pt} {te_pt}\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{inline}\r\n\
             a=rtpmap:{codec_pt} {codec}/8000\r\na=rtpmap:{te_pt} telephone-event/8000\r\n\
             a=fmtp:{te_pt} 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        let [a, b, c, d]: [u8; 4] = random_bytes();
        let call_id = format!(
            "rust-carrier-{:02x}{:02x}{:02x}{:02x}@127.0.0.1",
            a, b, c, d
        );
        let from_tag = format!("rc{:02x}{:02x}", a, b);
        let invite = format!(
            "INVITE sip:{number}@127.0.0.1:{sbc_port};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS 127.0.0.1:{local_sip_port};branch=z9hG4bK-rc-1\r\n\
             From: <sip:+15550001111@127.0.0.1>;tag={from_tag}\r\n\
             To: <sip:{number}@127.0.0.1:{sbc_port}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:+15550001111@127.0.0.1:{local_sip_port};transport=tls>\r\n\
             Max-Forwards: 70\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        let ssrc = u32::from_be_bytes(random_bytes());
        let tx = srtp_context(&key);
        let mut c = TestCarrier {
            sip,
            sbc_port,
            local_sip_port,
            call_id,
            from_tag,
            to_tag: String::new(),
            answer: String::new(),
            sock,
            remote_rtp: SocketAddr::from(([127, 0, 0, 1], 9)),
            tx,
            seq: u16::from_be_bytes(random_bytes()) & 0x7fff,
            ts: u32::from_be_bytes(random_bytes()),
            ssrc,
            te_pt,
            received: Arc::default(),
            stop: Arc::default(),
            rx_thread: None,
        };
        c.send_sip(&invite);
        let answer = loop {
            let msg = c
                .read_sip(timeout)
                .unwrap_or_else(|e| panic!("waiting for the answer to the INVITE: {e}"));
            match status_code(&msg) {
                Some(s) if s < 200 => continue,
                Some(200) => break msg,
                _ => panic!("the INVITE was not answered with 200:\n{msg}"),
            }
        };
        c.to_tag = header(&answer, "To")
            .and_then(tag)
            .map(str::to_string)
            .unwrap_or_else(|| panic!("200 without a To tag:\n{answer}"));
        let sdp = body(&answer);
        let port: u16 = sdp
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no m=audio port in the answer:\n{answer}"));
        c.remote_rtp = SocketAddr::from(([127, 0, 0, 1], port));
        let answer_key = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"))
            .map(|k| k.split('|').next().unwrap_or(k).trim())
            .unwrap_or_else(|| panic!("no _80 crypto line answering tag 1:\n{answer}"));
        let answer_key = base64::engine::general_purpose::STANDARD
            .decode(answer_key)
            .expect("answer key base64");
        assert_eq!(answer_key.len(), 30, "answer key length");
        let rx = srtp_context(&answer_key);
        c.answer = answer;
        let ack = c.in_dialog("ACK", 1, "z9hG4bK-rc-2");
        c.send_sip(&ack);
        c.start_receiver(rx);
        c
    }

    fn in_dialog(&self, method: &str, cseq: u32, branch: &str) -> String {
        let contact = header(&self.answer, "Contact")
            .and_then(|v| Some(v.split_once('<')?.1.split_once('>')?.0.to_string()))
            .unwrap_or_else(|| format!("sip:127.0.0.1:{};transport=tls", self.sbc_port));
        format!(
            "{method} {contact} SIP/2.0\r\n\
             Via: SIP/2.0/TLS 127.0.0.1:{};branch={branch}\r\n\
             From: <sip:+15550001111@127.0.0.1>;tag={}\r\n\
             To: {};tag={}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n\
             Max-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n",
            self.local_sip_port,
            self.from_tag,
            header(&self.answer, "To")
                .and_then(|v| v.split(";tag=").next())
                .unwrap_or(""),
            self.to_tag,
            self.call_id,
        )
    }

    fn send_sip(&mut self, msg: &str) {
        self.sip.send(msg);
    }

    /// Reads one SIP message (CRLF keep-alives skipped).
    fn read_sip(&mut self, timeout: Duration) -> Result<String, String> {
        self.sip.recv(timeout).ok_or_else(|| {
            format!("no complete SIP message within {timeout:?}, or the connection closed")
        })
    }

    fn start_receiver(&mut self, mut rx: Context) {
        let sock = self.sock.try_clone().expect("clone UDP socket");
        sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let received = self.received.clone();
        let stop = self.stop.clone();
        self.rx_thread = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let d = &buf[..n];
                // RTCP packet types 200-204 (RFC 5761 §4): on the RTP port only with rtcp-mux.
                if n >= 2 && (200..=204).contains(&d[1]) {
                    let ok = rx.decrypt_rtcp(d).is_ok();
                    let mut r = received.lock().unwrap();
                    if ok {
                        r.rtcp += 1;
                    } else {
                        r.auth_failures += 1;
                    }
                    continue;
                }
                match rx.decrypt_rtp(d) {
                    Ok(plain) if plain.len() >= 12 => {
                        let p = &plain[..];
                        let cc = usize::from(p[0] & 0x0f);
                        let start = 12 + 4 * cc;
                        received.lock().unwrap().rtp.push(ReceivedRtp {
                            marker: p[1] & 0x80 != 0,
                            payload_type: p[1] & 0x7f,
                            seq: u16::from_be_bytes([p[2], p[3]]),
                            timestamp: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                            ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
                            payload: p.get(start..).unwrap_or_default().to_vec(),
                        });
                    }
                    _ => received.lock().unwrap().auth_failures += 1,
                }
            }
        }));
    }

    /// The next RTP packet (sequence number +1), SRTP-protected.
    fn protect(&mut self, marker: bool, pt: u8, ts: u32, payload: &[u8]) -> Vec<u8> {
        let p = rtp_packet(marker, pt, self.seq, ts, self.ssrc, payload);
        self.seq = self.seq.wrapping_add(1);
        self.tx.encrypt_rtp(&p).expect("SRTP protect").to_vec()
    }

    fn send_rtp(&mut self, marker: bool, pt: u8, ts: u32, payload: &[u8]) {
        let d = self.protect(marker, pt, ts, payload);
        self.send_datagram(&d);
    }

    /// Sends `frames` 20 ms audio frames of `pt`, paced in real time (the tick schedule is
    /// absolute, so a late wake-up does not stretch the stream).
    pub fn send_audio(&mut self, pt: u8, frames: &[[u8; 160]]) {
        let start = Instant::now();
        for (i, f) in frames.iter().enumerate() {
            let due = start + Duration::from_millis(20 * i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let ts = self.ts;
            self.send_rtp(false, pt, ts, f);
            self.ts = self.ts.wrapping_add(160);
        }
    }

    /// Sends one RFC 4733 event (§2.5): a packet every 20 ms, all with the event's start
    /// timestamp, the first with the marker bit, durations growing by 160, then the end
    /// packet three times (§2.5.1.4). Afterwards audio continues at start + duration.
    pub fn send_dtmf(&mut self, event: u8, duration_ms: u32) {
        self.send_dtmf_with(event, duration_ms, None, false);
    }

    /// [`TestCarrier::send_dtmf`], sending the datagram `inject` right after the event's second
    /// packet, and with `hold_last_end` keeping the third end packet back: it is returned
    /// (already protected) for the test to send late, out of order.
    pub fn send_dtmf_with(
        &mut self,
        event: u8,
        duration_ms: u32,
        inject: Option<&[u8]>,
        hold_last_end: bool,
    ) -> Option<Vec<u8>> {
        let start_ts = self.ts;
        let steps = (duration_ms / 20).max(2);
        let t0 = Instant::now();
        let mut held = None;
        for i in 1..=steps {
            let due = t0 + Duration::from_millis(20 * u64::from(i - 1));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let duration = (i * 160) as u16;
            let end = i == steps;
            let payload = [
                event,
                (u8::from(end) << 7) | 10, // volume: -10 dBm0
                (duration >> 8) as u8,
                duration as u8,
            ];
            let repeats = if end { 3 } else { 1 };
            for r in 0..repeats {
                let pt = self.te_pt;
                let pkt = self.protect(i == 1, pt, start_ts, &payload);
                if end && hold_last_end && r == repeats - 1 {
                    held = Some(pkt);
                } else {
                    self.send_datagram(&pkt);
                }
            }
            if i == 2 {
                if let Some(d) = inject {
                    self.send_datagram(d);
                }
            }
        }
        self.ts = start_ts.wrapping_add(steps * 160);
        held
    }

    /// Sends an already protected datagram to sbc's RTP port.
    pub fn send_datagram(&self, d: &[u8]) {
        self.sock.send_to(d, self.remote_rtp).expect("send RTP");
    }

    /// A snapshot of what arrived from sbc so far.
    pub fn received(&self) -> Received {
        self.received.lock().unwrap().clone()
    }

    /// Sends BYE and waits for its 200; returns the response.
    pub fn hang_up(&mut self) -> String {
        let bye = self.in_dialog("BYE", 2, "z9hG4bK-rc-3");
        self.send_sip(&bye);
        loop {
            let msg = self
                .read_sip(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("waiting for the 200 to BYE: {e}"));
            if msg.starts_with("SIP/2.0 ")
                && header(&msg, "CSeq").is_some_and(|c| c.ends_with("BYE"))
            {
                self.stop_receiver();
                return msg;
            }
        }
    }

    fn stop_receiver(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.rx_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestCarrier {
    fn drop(&mut self) {
        self.stop_receiver();
    }
}
