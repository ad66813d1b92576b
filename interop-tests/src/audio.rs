//! Audio for the media tests: test signals, 8 kHz mono 16-bit WAV files, a G.711 decoder written
//! from the standard (independent of `srtp-bridge`'s tables), and a loudness-envelope comparison.
//!
//! G.711 audio cannot be compared byte for byte after a round trip through another client
//! (rounding, packet timing, jitter buffers), so [`compare_envelopes`] compares the RMS
//! envelope per 100 ms block, after finding the delay that aligns the two signals best.

use std::path::Path;

/// Samples per second.
pub const RATE: usize = 8000;
/// Samples per 20 ms packet.
pub const FRAME: usize = 160;
/// Samples per comparison block (100 ms).
pub const BLOCK: usize = 800;

/// Decodes one mu-law byte (ITU-T G.711 §3 Table 2): the complemented byte holds sign, a 3-bit
/// segment and a 4-bit step; the magnitude is `((2 * step + 33) << segment) - 33` in 14-bit
/// units, scaled here by 4 to 16 bits.
pub fn ulaw_decode(byte: u8) -> i16 {
    let b = !byte;
    let segment = u32::from((b >> 4) & 0x07);
    let step = i32::from(b & 0x0f);
    let magnitude = (((2 * step + 33) << segment) - 33) * 4;
    let v = if b & 0x80 != 0 { -magnitude } else { magnitude };
    v as i16
}

/// Decodes one A-law byte (ITU-T G.711 §2 Table 1): even bits inverted (XOR 0x55), then sign
/// (1 = positive), a 3-bit segment and a 4-bit step; the magnitude in 13-bit units is
/// `2 * step + 1` in segment 0 and `(2 * step + 33) << (segment - 1)` above, scaled by 8.
pub fn alaw_decode(byte: u8) -> i16 {
    let b = byte ^ 0x55;
    let segment = u32::from((b >> 4) & 0x07);
    let step = i32::from(b & 0x0f);
    let magnitude = if segment == 0 {
        2 * step + 1
    } else {
        (2 * step + 33) << (segment - 1)
    } * 8;
    let v = if b & 0x80 != 0 { magnitude } else { -magnitude };
    v as i16
}

/// The mu-law bytes whose decoded value is nearest to `linear` (one, or two on a tie).
pub fn nearest_ulaw(linear: i16) -> Vec<u8> {
    let dist = |u: u8| (i32::from(ulaw_decode(u)) - i32::from(linear)).abs();
    let best = (0..=255u8).map(dist).min().unwrap_or(0);
    (0..=255u8).filter(|&u| dist(u) == best).collect()
}

/// `amplitude * sin(2π f t)` for `secs` seconds.
pub fn tone(freq: f64, amplitude: f64, secs: f64) -> Vec<i16> {
    let n = (secs * RATE as f64) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / RATE as f64;
            (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
        })
        .collect()
}

/// `secs` seconds of digital silence.
pub fn silence(secs: f64) -> Vec<i16> {
    vec![0; (secs * RATE as f64) as usize]
}

/// Writes a RIFF/WAVE file: PCM, 1 channel, 8000 Hz, 16 bits.
pub fn write_wav(path: &Path, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&(RATE as u32).to_le_bytes());
    out.extend_from_slice(&(RATE as u32 * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Reads a PCM 16-bit WAV file; returns (sample rate, channels, samples of the first channel).
pub fn read_wav(path: &Path) -> Result<(u32, u16, Vec<i16>), String> {
    let b = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    if b.len() < 12 || &b[..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(format!("{}: not a RIFF/WAVE file", path.display()));
    }
    let mut at = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let len = u32::from_le_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]) as usize;
        let body = &b[at + 8..(at + 8 + len).min(b.len())];
        if id == b"fmt " && body.len() >= 16 {
            let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            fmt = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
        } else if id == b"data" {
            let (format, channels, rate, bits) =
                fmt.ok_or_else(|| format!("{}: data before fmt", path.display()))?;
            if format != 1 || bits != 16 || channels == 0 {
                return Err(format!(
                    "{}: not 16-bit PCM (format {format}, {bits} bits, {channels} channels)",
                    path.display()
                ));
            }
            let step = 2 * channels as usize;
            let samples = body
                .chunks_exact(step)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return Ok((rate, channels, samples));
        }
        at += 8 + len + (len & 1);
    }
    Err(format!("{}: no data chunk", path.display()))
}

/// RMS of consecutive blocks of `block` samples (a shorter last block is dropped).
pub fn rms_envelope(samples: &[i16], block: usize) -> Vec<f64> {
    samples
        .chunks_exact(block)
        .map(|c| (c.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

/// The outcome of [`compare_envelopes`].
#[derive(Debug, Clone)]
pub struct EnvelopeMatch {
    /// How much later the received audio starts, in 20 ms frames (may be negative).
    pub lag_frames: i64,
    /// 100 ms blocks compared (blocks next to a loud/quiet transition are skipped).
    pub blocks: usize,
    /// Of those, blocks whose loudness does not match.
    pub bad_blocks: Vec<String>,
    /// Source and received RMS per compared 100 ms block.
    pub source_rms: Vec<f64>,
    pub received_rms: Vec<f64>,
}

impl EnvelopeMatch {
    /// True when every compared block matches and at least `min_blocks` were compared.
    pub fn ok(&self, min_blocks: usize) -> bool {
        self.ok_within(min_blocks, 0.0)
    }

    /// True when at least `min_blocks` were compared and at most one in `1 / max_bad_share`
    /// did not match (a jitter buffer on a loaded machine may conceal a lost or late packet
    /// with silence, which takes a 100 ms block to 80% of its RMS).
    pub fn ok_within(&self, min_blocks: usize, max_bad_share: f64) -> bool {
        self.blocks >= min_blocks
            && self.bad_blocks.len() as f64 <= max_bad_share * self.blocks as f64
    }
}

/// Compares the loudness envelope of `received` with `source`.
///
/// The delay is found on the 20 ms RMS envelopes (the lag in `0..=max_lag_frames` frames,
/// either way, with the highest normalised correlation). Then, per 100 ms block of the
/// source: a quiet block (RMS < 1% of the source's loudest block) must stay quiet (RMS below
/// 2% of it) and a loud one must have 80-125% of the source's RMS. Blocks that touch a
/// quiet/loud transition (within one block) are not judged, so a delay that is not a whole
/// number of frames does not matter.
pub fn compare_envelopes(source: &[i16], received: &[i16], max_lag_frames: usize) -> EnvelopeMatch {
    let src_f = rms_envelope(source, FRAME);
    let rcv_f = rms_envelope(received, FRAME);
    let max_lag = max_lag_frames as i64;
    let mut best = (f64::MIN, 0i64);
    for lag in -max_lag..=max_lag {
        let pairs: Vec<(f64, f64)> = (0..src_f.len())
            .filter_map(|i| {
                let j = i as i64 + lag;
                (j >= 0 && (j as usize) < rcv_f.len()).then(|| (src_f[i], rcv_f[j as usize]))
            })
            .collect();
        if pairs.len() < src_f.len() / 2 {
            continue;
        }
        let dot: f64 = pairs.iter().map(|(a, b)| a * b).sum();
        let na: f64 = pairs.iter().map(|(a, _)| a * a).sum::<f64>().sqrt();
        let nb: f64 = pairs.iter().map(|(_, b)| b * b).sum::<f64>().sqrt();
        let c = if na > 0.0 && nb > 0.0 {
            dot / (na * nb)
        } else {
            0.0
        };
        if c > best.0 {
            best = (c, lag);
        }
    }
    let lag = best.1;
    // Align: drop the first `lag` frames of the received audio (or pad it with silence).
    let shift = lag * FRAME as i64;
    let aligned: Vec<i16> = if shift >= 0 {
        received.iter().skip(shift as usize).copied().collect()
    } else {
        std::iter::repeat_n(0, (-shift) as usize)
            .chain(received.iter().copied())
            .collect()
    };
    let src_b = rms_envelope(source, BLOCK);
    let rcv_b = rms_envelope(&aligned, BLOCK);
    let peak = src_b.iter().copied().fold(0.0, f64::max);
    let quiet = |x: f64| x < 0.01 * peak;
    let mut m = EnvelopeMatch {
        lag_frames: lag,
        blocks: 0,
        bad_blocks: Vec::new(),
        source_rms: Vec::new(),
        received_rms: Vec::new(),
    };
    for i in 0..src_b.len().min(rcv_b.len()) {
        let neighbours = [i.checked_sub(1), Some(i), Some(i + 1)];
        let kinds: Vec<bool> = neighbours
            .iter()
            .flatten()
            .filter(|&&k| k < src_b.len())
            .map(|&k| quiet(src_b[k]))
            .collect();
        if kinds.iter().any(|&q| q != quiet(src_b[i])) {
            continue;
        }
        m.blocks += 1;
        m.source_rms.push(src_b[i].round());
        m.received_rms.push(rcv_b[i].round());
        let good = if quiet(src_b[i]) {
            rcv_b[i] < 0.02 * peak
        } else {
            (0.8..=1.25).contains(&(rcv_b[i] / src_b[i]))
        };
        if !good {
            m.bad_blocks.push(format!(
                "block {i} ({} ms): source RMS {:.0}, received {:.0}",
                i * 100,
                src_b[i],
                rcv_b[i]
            ));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_reference_values() {
        // ITU-T G.711 Table 2: mu-law 0x80 / 0x00 are the largest magnitudes (8031 in 14 bits),
        // 0xFF / 0x7F zero.
        assert_eq!(ulaw_decode(0x80), 8031 * 4);
        assert_eq!(ulaw_decode(0x00), -8031 * 4);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        // Table 1: A-law 0xAA / 0x2A are the largest magnitudes (4032 in 13 bits), 0xD5 / 0x55
        // the smallest (1).
        assert_eq!(alaw_decode(0xAA), 4032 * 8);
        assert_eq!(alaw_decode(0x2A), -4032 * 8);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(nearest_ulaw(alaw_decode(0xAA)), vec![0x80]);
    }

    #[test]
    fn wav_round_trip_and_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.wav");
        let mut s = tone(440.0, 10000.0, 1.0);
        s.extend(silence(1.0));
        write_wav(&p, &s);
        let (rate, ch, back) = read_wav(&p).unwrap();
        assert_eq!((rate, ch), (8000, 1));
        assert_eq!(back, s);
        // Delayed by 130 ms: matches; attenuated to a third: does not.
        let mut late = silence(0.13);
        late.extend(&s);
        let m = compare_envelopes(&s, &late, 25);
        assert!(m.ok(12), "{m:?}");
        let quiet: Vec<i16> = s.iter().map(|x| x / 3).collect();
        assert!(!compare_envelopes(&s, &quiet, 25).ok(1));
        assert!(!compare_envelopes(&s, &silence(2.0), 25).ok(1));
    }
}
