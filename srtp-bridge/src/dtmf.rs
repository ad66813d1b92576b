//! RFC 4733 telephone-events for DTMF: payload format (§2.3), receiver de-duplication and the
//! sender's packet schedule (§2.5).

/// The event code of a DTMF digit (RFC 4733 §3.2, Table 7): 0-9, * = 10, # = 11, A-D = 12-15.
pub fn digit_to_event(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        d @ '0'..='9' => Some(d as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        d @ 'A'..='D' => Some(d as u8 - b'A' + 12),
        _ => None,
    }
}

/// The digit of a DTMF event code; `None` for non-DTMF events (16 = flash and above).
pub fn event_to_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// One telephone-event payload (RFC 4733 §2.3, Figure 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code.
    pub event: u8,
    /// E bit: last packets of the event.
    pub end: bool,
    /// Power level in -dBm0 (0-63).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first 4 bytes of a payload; `None` if shorter.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let p = payload.get(..4)?;
        Some(Self {
            event: p[0],
            end: p[1] & 0x80 != 0,
            volume: p[1] & 0x3f,
            duration: u16::from_be_bytes([p[2], p[3]]),
        })
    }

    /// The 4-byte payload.
    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// Turns the carrier's telephone-event packets into digits, once per event: all packets of an
/// event share its RTP timestamp (§2.5.1.1) and the end packet is sent three times (§2.5.1.4).
///
/// Later events start later, so a packet of the same stream whose timestamp is before the
/// current event's (by less than [`LATE_WINDOW`], in RFC 3550 wrap-around arithmetic) is a late,
/// reordered packet of an earlier event and is ignored: it neither reports that event again nor
/// cuts the current one short. A new SSRC starts afresh.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    current: Option<CurrentEvent>,
}

#[derive(Debug, Clone, Copy)]
struct CurrentEvent {
    ssrc: u32,
    timestamp: u32,
    event: u8,
    reported: bool,
}

/// How far back (in 8 kHz timestamp units) a packet counts as a late one of an earlier event:
/// 8 s, the longest an event runs before §2.5.1.3 makes the sender start a new segment. A
/// timestamp further back is taken as a new event (a sender that reset its timestamps).
pub const LATE_WINDOW: u32 = 64_000;

impl DtmfReceiver {
    /// Feeds one telephone-event packet of stream `ssrc`; returns the digits completed by it (an
    /// event whose end packets were all lost is reported when the next event starts).
    pub fn on_packet(&mut self, ssrc: u32, timestamp: u32, ev: TelephoneEvent) -> Vec<char> {
        let mut out = Vec::new();
        match self.current {
            Some(c) if c.ssrc == ssrc && c.timestamp == timestamp => {}
            Some(c)
                if c.ssrc == ssrc
                    && c.timestamp.wrapping_sub(timestamp).wrapping_sub(1) < LATE_WINDOW =>
            {
                // Behind the current event: a late packet of an earlier one.
                return out;
            }
            previous => {
                if let Some(CurrentEvent {
                    event,
                    reported: false,
                    ..
                }) = previous
                {
                    out.extend(event_to_digit(event));
                }
                self.current = Some(CurrentEvent {
                    ssrc,
                    timestamp,
                    event: ev.event,
                    reported: false,
                });
            }
        }
        if let Some(c) = &mut self.current {
            if ev.end && !c.reported {
                c.reported = true;
                out.extend(event_to_digit(c.event));
            }
        }
        out
    }
}

/// Default tone length when the agent gives none.
pub const DEFAULT_DURATION_SAMPLES: u32 = 800; // 100 ms at 8 kHz
/// Packets are sent every 20 ms (160 samples at 8 kHz).
const STEP: u32 = 160;
/// Number of end packets (RFC 4733 §2.5.1.4 recommends three).
pub const END_PACKETS: usize = 3;

/// One outgoing event in progress.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    event: u8,
    total: u32,
    elapsed: u32,
    timestamp: Option<u32>,
}

/// A packet the sender wants on the wire now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    /// Marker bit (first packet of the event, §2.5.1.3).
    pub marker: bool,
    /// RTP timestamp: the event's start for every packet (§2.5.1.1).
    pub timestamp: u32,
    /// Payload.
    pub payload: [u8; 4],
}

impl DtmfSender {
    /// An event lasting `duration_samples` (at least 2 packets, at most 8 s: the 16-bit duration
    /// field must not wrap, §2.5.1.3).
    pub fn new(event: u8, duration_samples: u32) -> Self {
        Self {
            event,
            total: duration_samples.clamp(2 * STEP, 64_000).div_ceil(STEP) * STEP,
            elapsed: 0,
            timestamp: None,
        }
    }

    /// The packets for the 20 ms tick whose audio timestamp is `tick_ts`; returns `done = true`
    /// with the end packets.
    pub fn tick(&mut self, tick_ts: u32) -> (Vec<DtmfPacket>, bool) {
        let first = self.timestamp.is_none();
        let timestamp = *self.timestamp.get_or_insert(tick_ts);
        self.elapsed = (self.elapsed + STEP).min(self.total);
        let end = self.elapsed >= self.total;
        let ev = TelephoneEvent {
            event: self.event,
            end,
            volume: 10,
            duration: self.elapsed as u16,
        };
        let pkt = DtmfPacket {
            marker: first,
            timestamp,
            payload: ev.to_bytes(),
        };
        if end {
            let mut v = vec![pkt; END_PACKETS];
            for p in v.iter_mut().skip(1) {
                p.marker = false;
            }
            (v, true)
        } else {
            (vec![pkt], false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_codes_rfc4733_table_7() {
        for (d, e) in [
            ('0', 0),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('d', 15),
        ] {
            assert_eq!(digit_to_event(d), Some(e));
            assert_eq!(event_to_digit(e), Some(d.to_ascii_uppercase()));
        }
        assert_eq!(digit_to_event('x'), None);
        assert_eq!(event_to_digit(16), None);
    }

    #[test]
    fn payload_round_trip() {
        let ev = TelephoneEvent {
            event: 5,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(ev.to_bytes(), [5, 0x8a, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&ev.to_bytes()), Some(ev));
        assert_eq!(TelephoneEvent::parse(&[1, 2, 3]), None);
    }

    const SSRC: u32 = 0xca11_0001;

    #[test]
    fn three_end_packets_give_one_digit() {
        let mut rx = DtmfReceiver::default();
        let mut digits = Vec::new();
        for d in [160u16, 320, 480] {
            digits.extend(rx.on_packet(
                SSRC,
                1000,
                TelephoneEvent {
                    event: 7,
                    end: false,
                    volume: 10,
                    duration: d,
                },
            ));
        }
        for _ in 0..3 {
            digits.extend(rx.on_packet(
                SSRC,
                1000,
                TelephoneEvent {
                    event: 7,
                    end: true,
                    volume: 10,
                    duration: 640,
                },
            ));
        }
        assert_eq!(digits, vec!['7']);
        // Same digit again is a new event (new timestamp).
        let d = rx.on_packet(
            SSRC,
            5000,
            TelephoneEvent {
                event: 7,
                end: true,
                volume: 10,
                duration: 640,
            },
        );
        assert_eq!(d, vec!['7']);
    }

    #[test]
    fn lost_end_is_reported_at_next_event() {
        let mut rx = DtmfReceiver::default();
        assert!(rx
            .on_packet(
                SSRC,
                10,
                TelephoneEvent {
                    event: 1,
                    end: false,
                    volume: 0,
                    duration: 160
                }
            )
            .is_empty());
        let d = rx.on_packet(
            SSRC,
            900,
            TelephoneEvent {
                event: 2,
                end: true,
                volume: 0,
                duration: 160,
            },
        );
        assert_eq!(d, vec!['1', '2']);
    }

    fn te(event: u8, end: bool, duration: u16) -> TelephoneEvent {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
    }

    #[test]
    fn late_end_packet_of_the_previous_event_is_ignored() {
        let mut rx = DtmfReceiver::default();
        let mut digits = Vec::new();
        digits.extend(rx.on_packet(SSRC, 1000, te(1, false, 160)));
        digits.extend(rx.on_packet(SSRC, 1000, te(1, true, 800)));
        digits.extend(rx.on_packet(SSRC, 1000, te(1, true, 800)));
        digits.extend(rx.on_packet(SSRC, 3000, te(5, false, 160)));
        // The third end packet of 1 arrives now, out of order.
        digits.extend(rx.on_packet(SSRC, 1000, te(1, true, 800)));
        digits.extend(rx.on_packet(SSRC, 3000, te(5, false, 320)));
        digits.extend(rx.on_packet(SSRC, 3000, te(5, true, 800)));
        assert_eq!(digits, vec!['1', '5']);
        // Also across the 32-bit wrap.
        let mut rx = DtmfReceiver::default();
        assert_eq!(
            rx.on_packet(SSRC, u32::MAX - 100, te(2, true, 800)),
            vec!['2']
        );
        assert_eq!(
            rx.on_packet(SSRC, 700, te(3, false, 160)),
            Vec::<char>::new()
        );
        assert!(rx
            .on_packet(SSRC, u32::MAX - 100, te(2, true, 800))
            .is_empty());
        assert_eq!(rx.on_packet(SSRC, 700, te(3, true, 800)), vec!['3']);
    }

    #[test]
    fn new_stream_or_far_older_timestamp_is_a_new_event() {
        let mut rx = DtmfReceiver::default();
        assert_eq!(rx.on_packet(SSRC, 100_000, te(4, true, 800)), vec!['4']);
        // Another SSRC (e.g. after a re-INVITE) with a smaller timestamp: a new event.
        assert_eq!(rx.on_packet(SSRC + 1, 5_000, te(6, true, 800)), vec!['6']);
        // The same SSRC, more than LATE_WINDOW back: a sender that reset its timestamps.
        assert_eq!(
            rx.on_packet(
                SSRC + 1,
                5_000u32.wrapping_sub(LATE_WINDOW + 1),
                te(8, true, 800)
            ),
            vec!['8']
        );
        // Within the window: late.
        assert!(rx
            .on_packet(
                SSRC + 1,
                5_000u32.wrapping_sub(LATE_WINDOW + 1) - 10,
                te(9, true, 800)
            )
            .is_empty());
    }

    #[test]
    fn sender_schedule() {
        let mut tx = DtmfSender::new(11, 800);
        let mut all = Vec::new();
        let mut ts = 5000u32;
        loop {
            let (p, done) = tx.tick(ts);
            all.extend(p);
            ts += 160;
            if done {
                break;
            }
        }
        assert_eq!(all.len(), 4 + END_PACKETS);
        assert!(all[0].marker && all[1..].iter().all(|p| !p.marker));
        assert!(all.iter().all(|p| p.timestamp == 5000));
        let evs: Vec<_> = all
            .iter()
            .map(|p| TelephoneEvent::parse(&p.payload).unwrap())
            .collect();
        assert_eq!(evs[0].duration, 160);
        assert_eq!(evs[3].duration, 640);
        assert!(evs[4..]
            .iter()
            .all(|e| e.end && e.duration == 800 && e.event == 11));
        assert!(evs[..4].iter().all(|e| !e.end));
    }
}
