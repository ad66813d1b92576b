//! RTP fixed header (RFC 3550 §5.1) parsing and writing, and RTP/RTCP demultiplexing on one port
//! (RFC 5761 §4).

/// Why a datagram is not an RTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than the fixed header, its CSRCs or its extension.
    #[error("RTP packet truncated ({len} bytes)")]
    Truncated {
        /// Datagram length.
        len: usize,
    },
    /// Version field is not 2.
    #[error("RTP version {version}")]
    Version {
        /// The version found.
        version: u8,
    },
    /// The padding count exceeds the payload.
    #[error("RTP padding longer than the payload")]
    BadPadding,
    /// An RFC 8285 header extension element runs past the extension block.
    #[error("RTP header extension element overruns its block")]
    BadExtension,
}

/// The fields of an RTP header sbc uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    /// M bit.
    pub marker: bool,
    /// PT (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence_number: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Length of the header with CSRCs and extension, in bytes.
    pub header_len: usize,
    /// P bit.
    pub padding: bool,
}

impl RtpHeader {
    /// Parses the header of `packet` (RFC 3550 §5.1, extension §5.3.1).
    pub fn parse(packet: &[u8]) -> Result<Self, RtpError> {
        let truncated = RtpError::Truncated { len: packet.len() };
        if packet.len() < 12 {
            return Err(truncated);
        }
        let version = packet[0] >> 6;
        if version != 2 {
            return Err(RtpError::Version { version });
        }
        let cc = usize::from(packet[0] & 0x0f);
        let mut header_len = 12 + 4 * cc;
        if packet[0] & 0x10 != 0 {
            let ext = packet.get(header_len..header_len + 4).ok_or(truncated)?;
            let profile = u16::from_be_bytes([ext[0], ext[1]]);
            let start = header_len + 4;
            header_len = start + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            let block = packet.get(start..header_len).ok_or(truncated)?;
            if !rfc8285_elements_fit(profile, block) {
                return Err(RtpError::BadExtension);
            }
        }
        if packet.len() < header_len {
            return Err(truncated);
        }
        Ok(Self {
            marker: packet[1] & 0x80 != 0,
            payload_type: packet[1] & 0x7f,
            sequence_number: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            header_len,
            padding: packet[0] & 0x20 != 0,
        })
    }

    /// The payload of a (decrypted) packet with this header, padding removed (RFC 3550 §5.1 P).
    pub fn payload<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], RtpError> {
        let body = packet
            .get(self.header_len..)
            .ok_or(RtpError::Truncated { len: packet.len() })?;
        if !self.padding {
            return Ok(body);
        }
        let pad = usize::from(*body.last().ok_or(RtpError::BadPadding)?);
        if pad == 0 || pad > body.len() {
            return Err(RtpError::BadPadding);
        }
        Ok(&body[..body.len() - pad])
    }
}

/// Whether every element of an RFC 8285 header extension block lies inside the block (other
/// profiles are opaque, RFC 3550 §5.3.1). One-byte form (profile 0xBEDE, §4.2): a byte `ID|L`,
/// L+1 data bytes, 0 is padding, ID 15 ends processing. Two-byte form (0x100 in the top 12 bits,
/// §4.3): `ID`, `L`, L data bytes, ID 0 is padding.
///
/// Checked by hand before webrtc-srtp sees the packet: its `rtp` 0.17 header parser reads element
/// lengths without bounding them by the block and panics on a packet whose element claims more
/// bytes than the datagram holds (found by the `srtp_unprotect` fuzz target; no key is needed to
/// send one, since the header is parsed before authentication).
fn rfc8285_elements_fit(profile: u16, block: &[u8]) -> bool {
    let two_byte = profile & 0xfff0 == 0x1000;
    if profile != 0xbede && !two_byte {
        return true;
    }
    let mut i = 0;
    while i < block.len() {
        let b = block[i];
        if b == 0 {
            i += 1;
            continue;
        }
        let (head, len) = if two_byte {
            match block.get(i + 1) {
                Some(&l) => (2, usize::from(l)),
                None => return false,
            }
        } else {
            if b >> 4 == 15 {
                return true;
            }
            (1, usize::from(b & 0x0f) + 1)
        };
        i += head + len;
        if i > block.len() {
            return false;
        }
    }
    true
}

/// Writes an RTP packet with a 12-byte header and no CSRC, extension or padding.
pub fn write_rtp(
    marker: bool,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + payload.len() + 10);
    out.push(0x80);
    out.push((u8::from(marker) << 7) | (payload_type & 0x7f));
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whether a datagram on a multiplexed port is RTCP: RFC 5761 §4 reserves RTP payload types
/// 64-95, so a second byte whose low 7 bits fall in 64..=95 is an RTCP packet type 192-223.
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && (64..=95).contains(&(datagram[1] & 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse() {
        let p = write_rtp(true, 0, 65535, 0xdead_beef, 0x1234_5678, &[1, 2, 3]);
        let h = RtpHeader::parse(&p).unwrap();
        assert!(h.marker);
        assert_eq!(
            (h.payload_type, h.sequence_number, h.timestamp, h.ssrc),
            (0, 65535, 0xdead_beef, 0x1234_5678)
        );
        assert_eq!(h.payload(&p).unwrap(), &[1, 2, 3]);
    }

    #[test]
    fn csrc_extension_and_padding() {
        let mut p = vec![0x80 | 0x20 | 0x10 | 1, 8, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend_from_slice(&[9, 9, 9, 9]); // CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x12, 7, 7, 7]); // one-word extension: ID 1, 3 bytes
        p.extend_from_slice(&[0xaa, 0xbb, 0, 0, 3]); // payload + 3 bytes padding
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.header_len, 24);
        assert_eq!(h.payload(&p).unwrap(), &[0xaa, 0xbb]);
        *p.last_mut().unwrap() = 40;
        assert_eq!(h.payload(&p), Err(RtpError::BadPadding));
    }

    #[test]
    fn truncated_and_garbage_never_panic() {
        assert!(RtpHeader::parse(&[]).is_err());
        assert!(RtpHeader::parse(&[0x8f; 12]).is_err()); // 15 CSRCs missing
        assert!(
            RtpHeader::parse(&[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).is_err()
        );
        assert_eq!(
            RtpHeader::parse(&[0x40; 12]),
            Err(RtpError::Version { version: 1 })
        );
        for len in 0..40 {
            let d: Vec<u8> = (0..len).map(|i| (i * 37 + 0x90) as u8).collect();
            if let Ok(h) = RtpHeader::parse(&d) {
                let _ = h.payload(&d);
            }
        }
    }

    /// RFC 8285 §4.2/§4.3 elements must stay inside the extension block.
    #[test]
    fn rfc8285_elements_are_bounded() {
        let packet = |ext: &[u8]| {
            let mut p = vec![0x90, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
            p.extend_from_slice(ext);
            p.extend_from_slice(&[0xaa; 20]);
            p
        };
        // One-byte: ID 1, L=1 (2 bytes), padding.
        assert!(RtpHeader::parse(&packet(&[0xbe, 0xde, 0, 1, 0x11, 7, 7, 0])).is_ok());
        // One-byte: ID 1, L=15 (16 bytes) in a one-word block.
        assert_eq!(
            RtpHeader::parse(&packet(&[0xbe, 0xde, 0, 1, 0x1f, 7, 7, 7])),
            Err(RtpError::BadExtension)
        );
        // One-byte: ID 15 stops processing, whatever follows.
        assert!(RtpHeader::parse(&packet(&[0xbe, 0xde, 0, 1, 0xff, 0xff, 0xff, 0xff])).is_ok());
        // Two-byte (appbits 3): ID 1, L=2, padding.
        assert!(RtpHeader::parse(&packet(&[0x10, 0x03, 0, 1, 1, 2, 7, 7])).is_ok());
        // Two-byte: ID 1, L=245 in a one-word block; and a length byte outside the block.
        assert_eq!(
            RtpHeader::parse(&packet(&[0x10, 0x00, 0, 1, 1, 245, 7, 7])),
            Err(RtpError::BadExtension)
        );
        assert_eq!(
            RtpHeader::parse(&packet(&[0x10, 0x00, 0, 1, 0, 0, 0, 9])),
            Err(RtpError::BadExtension)
        );
        // Other profiles are opaque (RFC 3550 §5.3.1).
        assert!(RtpHeader::parse(&packet(&[0x12, 0x34, 0, 1, 0xff, 0xff, 0xff, 0xff])).is_ok());
    }

    #[test]
    fn rfc5761_demux() {
        assert!(is_rtcp(&[0x80, 200])); // SR
        assert!(is_rtcp(&[0x80, 201])); // RR
        assert!(!is_rtcp(&[0x80, 0])); // PCMU
        assert!(!is_rtcp(&[0x80, 0x80 | 101])); // telephone-event with marker
        assert!(!is_rtcp(&[0x80, 0x80 | 8]));
        assert!(!is_rtcp(&[0x80]));
    }
}
