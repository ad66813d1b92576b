//! The probe inside every 160-byte G.711 payload the generator sends: which call, which packet,
//! and when it left, for each direction. sbc relays mu-law bytes unchanged (PCMU both legs, no
//! transcoding), so the probe survives SRTP, the Twilio `media` JSON and the re-pacing.
//!
//! Layout (big-endian): `b"LG"`, call index (u32), carrier sequence (u32), carrier send time
//! (u64 ns since the generator's epoch), agent sequence (u32), agent send time (u64 ns), then
//! mu-law silence. The agent copies the carrier half and fills in its own half.

/// Bytes of one 20 ms G.711 frame.
pub const FRAME: usize = 160;
const MAGIC: [u8; 2] = *b"LG";
/// mu-law silence, the filler after the probe.
const FILL: u8 = 0xff;

/// What one payload carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// Index of the call in the run.
    pub call: u32,
    /// Carrier-side packet number of this call, from 0.
    pub carrier_seq: u32,
    /// When the carrier side sent it (ns since the generator's epoch).
    pub carrier_ns: u64,
    /// Agent-side frame number of this call, from 0 (0 in carrier-to-agent payloads).
    pub agent_seq: u32,
    /// When the agent sent it (ns; 0 in carrier-to-agent payloads).
    pub agent_ns: u64,
}

impl Probe {
    /// The 160-byte payload.
    pub fn encode(&self) -> [u8; FRAME] {
        let mut out = [FILL; FRAME];
        out[0..2].copy_from_slice(&MAGIC);
        out[2..6].copy_from_slice(&self.call.to_be_bytes());
        out[6..10].copy_from_slice(&self.carrier_seq.to_be_bytes());
        out[10..18].copy_from_slice(&self.carrier_ns.to_be_bytes());
        out[18..22].copy_from_slice(&self.agent_seq.to_be_bytes());
        out[22..30].copy_from_slice(&self.agent_ns.to_be_bytes());
        out
    }

    /// The probe in `payload`, `None` when it is not one of ours (wrong length or magic).
    pub fn decode(payload: &[u8]) -> Option<Probe> {
        if payload.len() != FRAME || payload[0..2] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| {
            u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
        };
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Some(Probe {
            call: u32_at(2),
            carrier_seq: u32_at(6),
            carrier_ns: u64_at(10),
            agent_seq: u32_at(18),
            agent_ns: u64_at(22),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let p = Probe {
            call: 1999,
            carrier_seq: 0x0102_0304,
            carrier_ns: 0x1122_3344_5566_7788,
            agent_seq: 7,
            agent_ns: u64::MAX - 1,
        };
        let bytes = p.encode();
        assert_eq!(Probe::decode(&bytes), Some(p));
        assert!(bytes[30..].iter().all(|&b| b == FILL));
        assert_eq!(Probe::decode(&bytes[..159]), None);
        let mut other = bytes;
        other[0] = b'X';
        assert_eq!(Probe::decode(&other), None);
        assert_eq!(
            Probe::decode(&[0xaa; FRAME]),
            None,
            "SIPp's pattern is not a probe"
        );
    }
}
