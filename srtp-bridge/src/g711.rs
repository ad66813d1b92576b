//! G.711 mu-law and A-law (ITU-T G.711), and the conversion tables between them so the agent
//! always sees mu-law. The tables are computed at compile time through the 16-bit linear value.

/// Decodes one mu-law byte to linear PCM (G.711 §3, Table 2a; bias 0x84).
pub const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let t = ((((u & 0x0f) as i32) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// Encodes linear PCM to mu-law (G.711 §3; clip at 32635, bias 0x84).
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let mut x = sample as i32;
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    if x > 32635 {
        x = 32635;
    }
    x += 0x84;
    let exponent = (31 - x.leading_zeros()) as i32 - 7;
    let mantissa = (x >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Decodes one A-law byte to linear PCM (G.711 §2, Table 1a; even bits inverted).
pub const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0f) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (seg - 1),
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// Encodes linear PCM to A-law (G.711 §2; 13-bit magnitude, segment end points 0x1F..0xFFF).
pub const fn linear_to_alaw(sample: i16) -> u8 {
    let mut x = (sample as i32) >> 3;
    let mask: i32 = if x >= 0 {
        0xD5
    } else {
        x = -x - 1;
        0x55
    };
    let mut seg = 0;
    while seg < 8 && x > (0x20 << seg) - 1 {
        seg += 1;
    }
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mantissa = if seg < 2 {
        (x >> 1) & 0x0f
    } else {
        (x >> seg) & 0x0f
    };
    (((seg << 4) | mantissa) ^ mask) as u8
}

const fn build(a_to_u: bool) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if a_to_u {
            linear_to_ulaw(alaw_to_linear(i as u8))
        } else {
            linear_to_alaw(ulaw_to_linear(i as u8))
        };
        i += 1;
    }
    t
}

static ALAW_TO_ULAW: [u8; 256] = build(true);
static ULAW_TO_ALAW: [u8; 256] = build(false);

/// A-law byte to the nearest mu-law byte.
pub fn alaw_to_ulaw(a: u8) -> u8 {
    ALAW_TO_ULAW[usize::from(a)]
}

/// Mu-law byte to the nearest A-law byte.
pub fn ulaw_to_alaw(u: u8) -> u8 {
    ULAW_TO_ALAW[usize::from(u)]
}

/// Mu-law silence (linear 0).
pub const ULAW_SILENCE: u8 = 0xFF;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(ulaw_to_alaw(ULAW_SILENCE), 0xD5);
        assert_eq!(alaw_to_ulaw(0xD5), 0xFE); // A-law's smallest step is +8, mu-law 0xFE
    }

    #[test]
    fn encoders_invert_decoders() {
        for b in 0..=255u8 {
            // mu-law has two zeros (0x7F, 0xFF); every other code round-trips exactly.
            if b != 0x7F {
                assert_eq!(linear_to_ulaw(ulaw_to_linear(b)), b, "mu-law {b:#04x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "A-law {b:#04x}");
        }
    }

    #[test]
    fn conversion_is_close_and_monotonic() {
        for b in 0..=255u8 {
            let a = alaw_to_linear(b) as i32;
            let via = ulaw_to_linear(alaw_to_ulaw(b)) as i32;
            // Within one quantisation step of the coarser law (step grows with magnitude).
            assert!(
                (a - via).abs() <= a.abs() / 16 + 16,
                "A {b:#04x}: {a} vs {via}"
            );
            let u = ulaw_to_linear(b) as i32;
            let via = alaw_to_linear(ulaw_to_alaw(b)) as i32;
            assert!(
                (u - via).abs() <= u.abs() / 16 + 16,
                "u {b:#04x}: {u} vs {via}"
            );
            assert!(u * via >= 0, "sign kept for u {b:#04x}");
        }
        // Twice through the conversion is stable.
        for b in 0..=255u8 {
            let u = alaw_to_ulaw(b);
            assert_eq!(alaw_to_ulaw(ulaw_to_alaw(u)), u);
        }
    }
}
