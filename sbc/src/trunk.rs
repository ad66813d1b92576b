//! The pure policy of a termination trunk (`[[trunks]]`): who may place a call through it, from
//! which caller ID, to which destinations, how many at once, and when each call may send its
//! INVITE (a calls-per-second pacer with a bounded queue).
//!
//! No I/O and no clock: `now` comes in as an argument. The API endpoint (`POST .../Calls.json`)
//! asks [`TrunkPolicy::check`] before any SIP goes out and answers the refusal's HTTP status;
//! then [`Pacer::admit`] says when the INVITE may leave (or that the queue is full: 429).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// A caller-ID entry: one number, or a prefix written with a trailing `*` (`+1415555*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NumberPattern {
    Exact(String),
    Prefix(String),
}

impl NumberPattern {
    /// Parses `+14155550100` or `+1415555*`. The number part must be E.164-shaped: `+` and 1 to
    /// 15 digits (ITU-T E.164 §6); a prefix may be shorter.
    pub fn parse(s: &str) -> Result<NumberPattern, String> {
        let (body, prefix) = match s.strip_suffix('*') {
            Some(b) => (b, true),
            None => (s, false),
        };
        if !is_e164_prefix(body) {
            return Err(format!(
                "{s:?} is not an E.164 number (+ and up to 15 digits), optionally ending in *"
            ));
        }
        Ok(if prefix {
            NumberPattern::Prefix(body.to_string())
        } else {
            NumberPattern::Exact(body.to_string())
        })
    }

    pub fn matches(&self, number: &str) -> bool {
        match self {
            NumberPattern::Exact(n) => n == number,
            NumberPattern::Prefix(p) => number.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for NumberPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumberPattern::Exact(n) => f.write_str(n),
            NumberPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// `+` followed by 1 to 15 digits.
fn is_e164_prefix(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// A full E.164 number: `+`, a non-zero country code digit, at most 15 digits in all.
pub fn is_e164(s: &str) -> bool {
    is_e164_prefix(s) && !s.starts_with("+0")
}

/// Premium-rate and other toll-fraud ranges denied when `deny_destinations` is not set. Each
/// entry is a prefix. Sources: the North American 900 and 976 premium services (NANP), the UK
/// 09 premium-rate and 070 personal numbers (Ofcom numbering plan), and countries that toll-fraud
/// reports name most often for international revenue share fraud (satellite networks +881/+882/
/// +883, Cuba +53, several small island and African destinations). Operators extend or replace
/// the list in their config; `deny_destinations = []` turns it off on purpose.
pub const DEFAULT_DENY_DESTINATIONS: &[&str] = &[
    "+1900", "+1976", // NANP premium-rate
    "+4470", "+449", // UK personal numbers and premium-rate
    "+881", "+882",
    "+883", // global satellite / international networks (ITU-T E.164 shared codes)
    "+53",  // Cuba
    "+252", // Somalia
    "+674", // Nauru
    "+675", // Papua New Guinea
    "+677", // Solomon Islands
    "+678", // Vanuatu
    "+679", // Fiji
    "+682", // Cook Islands
    "+685", // Samoa
    "+686", // Kiribati
    "+688", // Tuvalu
    "+690", // Tokelau
    "+691", // Micronesia
    "+692", // Marshall Islands
    "+239", // Sao Tome and Principe
    "+247", // Ascension
    "+290", // Saint Helena
];

/// Why a call is refused before any SIP goes out, with the HTTP status the API answers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The account may not use this trunk (403).
    #[error("account {0} may not use this trunk")]
    Account(String),
    /// `From` is not one of the trunk's caller IDs (400: Twilio would refuse it too).
    #[error("From {0} is not an allowed caller ID for this trunk")]
    CallerId(String),
    /// `To` or `From` is not an E.164 number (400).
    #[error("{field} {value:?} is not an E.164 number (+ and up to 15 digits)")]
    NotE164 { field: &'static str, value: String },
    /// The destination is outside the allow-list or inside the deny-list (403).
    #[error("destination {0} is not allowed on this trunk")]
    Destination(String),
    /// `max_concurrent_calls` outbound calls are already up (429).
    #[error("the trunk already carries {0} calls, its maximum")]
    Concurrency(u32),
    /// The pacing queue is full (429).
    #[error("the trunk's calls-per-second queue is full ({0} calls wait)")]
    QueueFull(usize),
}

impl Refusal {
    /// The HTTP status the call-creation API answers.
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::CallerId(_) | Refusal::NotE164 { .. } => 400,
            Refusal::Account(_) | Refusal::Destination(_) => 403,
            Refusal::Concurrency(_) | Refusal::QueueFull(_) => 429,
        }
    }
}

/// The static policy of one trunk, built from its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkPolicy {
    /// Empty: any account the API authenticates.
    pub account_sids: Vec<String>,
    /// Must not be empty (config refuses an empty list): Twilio refuses unknown caller IDs.
    pub caller_ids: Vec<NumberPattern>,
    /// Destination prefixes; empty allows every destination not denied.
    pub allow_destinations: Vec<String>,
    /// Destination prefixes always refused; a deny match wins over an allow match.
    pub deny_destinations: Vec<String>,
    pub max_concurrent_calls: u32,
}

impl TrunkPolicy {
    /// Checks a call request: account, `From`, `To`, and the number of outbound calls already up
    /// on the trunk. The checks run in that order, so the first refusal is reported.
    pub fn check(&self, account: &str, from: &str, to: &str, active: u32) -> Result<(), Refusal> {
        if !self.account_sids.is_empty() && !self.account_sids.iter().any(|a| a == account) {
            return Err(Refusal::Account(account.to_string()));
        }
        if !is_e164(from) {
            return Err(Refusal::NotE164 {
                field: "From",
                value: from.to_string(),
            });
        }
        if !self.caller_ids.iter().any(|p| p.matches(from)) {
            return Err(Refusal::CallerId(from.to_string()));
        }
        if !is_e164(to) {
            return Err(Refusal::NotE164 {
                field: "To",
                value: to.to_string(),
            });
        }
        let allowed = self.allow_destinations.is_empty()
            || self.allow_destinations.iter().any(|p| to.starts_with(p));
        let denied = self.deny_destinations.iter().any(|p| to.starts_with(p));
        if !allowed || denied {
            return Err(Refusal::Destination(to.to_string()));
        }
        if active >= self.max_concurrent_calls {
            return Err(Refusal::Concurrency(self.max_concurrent_calls));
        }
        Ok(())
    }
}

/// Calls-per-second pacing with a bounded queue: call `n` may send its INVITE at
/// `max(now, previous slot + 1/cps)`. Twilio counts calls per second per trunk (1 by default,
/// at most 15) and answers `503 Trunk CPS limit exceeded` beyond it, so sbc spaces its INVITEs
/// evenly instead of bursting. A call that would wait behind `queue` others is refused.
///
/// Pure: [`Pacer::admit`] returns the instant to send at; the driver sleeps until then. A call
/// dropped while it waits keeps its slot (the next calls are not moved earlier), which only
/// ever spaces INVITEs further apart.
#[derive(Clone, Debug)]
pub struct Pacer {
    interval: Duration,
    queue: usize,
    /// Slots handed out that are still in the future (`> now` at the last call).
    pending: VecDeque<Instant>,
    last: Option<Instant>,
}

impl Pacer {
    /// `cps` calls per second (at least 1), `queue` calls waiting at most.
    pub fn new(cps: std::num::NonZeroU32, queue: usize) -> Pacer {
        Pacer {
            interval: Duration::from_secs(1) / cps.get(),
            queue,
            pending: VecDeque::new(),
            last: None,
        }
    }

    /// The instant this call may send its INVITE, or [`Refusal::QueueFull`].
    pub fn admit(&mut self, now: Instant) -> Result<Instant, Refusal> {
        while self.pending.front().is_some_and(|&t| t <= now) {
            self.pending.pop_front();
        }
        let slot = match self.last {
            Some(last) => (last + self.interval).max(now),
            None => now,
        };
        if slot > now {
            if self.pending.len() >= self.queue {
                return Err(Refusal::QueueFull(self.pending.len()));
            }
            self.pending.push_back(slot);
        }
        self.last = Some(slot);
        Ok(slot)
    }

    /// Calls waiting for their slot at `now`.
    pub fn waiting(&self, now: Instant) -> usize {
        self.pending.iter().filter(|&&t| t > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn policy() -> TrunkPolicy {
        TrunkPolicy {
            account_sids: vec!["AC11111111111111111111111111111111".into()],
            caller_ids: vec![
                NumberPattern::parse("+14155550100").unwrap(),
                NumberPattern::parse("+1628555*").unwrap(),
            ],
            allow_destinations: vec!["+1".into(), "+44".into()],
            deny_destinations: DEFAULT_DENY_DESTINATIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_concurrent_calls: 2,
        }
    }

    const ACCOUNT: &str = "AC11111111111111111111111111111111";

    #[test]
    fn policy_table() {
        type Case<'a> = (&'a str, &'a str, &'a str, u32, Result<(), u16>);
        let cases: &[Case] = &[
            (ACCOUNT, "+14155550100", "+15105550123", 0, Ok(())),
            (ACCOUNT, "+16285550999", "+442071234567", 1, Ok(())),
            (
                "AC22222222222222222222222222222222",
                "+14155550100",
                "+15105550123",
                0,
                Err(403),
            ),
            (ACCOUNT, "+14155550101", "+15105550123", 0, Err(400)),
            (ACCOUNT, "14155550100", "+15105550123", 0, Err(400)),
            (ACCOUNT, "+14155550100", "5105550123", 0, Err(400)),
            (ACCOUNT, "+14155550100", "+15105550123x", 0, Err(400)),
            (ACCOUNT, "+14155550100", "+19005550123", 0, Err(403)),
            (ACCOUNT, "+14155550100", "+449091234567", 0, Err(403)),
            (ACCOUNT, "+14155550100", "+33142685300", 0, Err(403)),
            (ACCOUNT, "+14155550100", "+15105550123", 2, Err(429)),
        ];
        let p = policy();
        for (account, from, to, active, expected) in cases {
            let got = p
                .check(account, from, to, *active)
                .map_err(|r| r.http_status());
            assert_eq!(&got, expected, "{account} {from} -> {to} with {active} up");
        }
    }

    #[test]
    fn empty_lists_allow_any_account_and_destination() {
        let p = TrunkPolicy {
            account_sids: vec![],
            allow_destinations: vec![],
            deny_destinations: vec![],
            ..policy()
        };
        assert_eq!(
            p.check("ACanything", "+14155550100", "+33142685300", 0),
            Ok(())
        );
        assert_eq!(
            p.check("ACanything", "+14155550100", "+19005550123", 0),
            Ok(())
        );
    }

    #[test]
    fn number_patterns() {
        assert!(NumberPattern::parse("+1415*")
            .unwrap()
            .matches("+14155550100"));
        assert!(!NumberPattern::parse("+14155550100")
            .unwrap()
            .matches("+141555501001"));
        for bad in ["", "+", "1415", "+1415x", "+1234567890123456", "*", "+1*5"] {
            assert!(NumberPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(NumberPattern::parse("+44*").unwrap().to_string(), "+44*");
        assert!(!is_e164("+0123"));
    }

    /// Two calls with cps = 1 go out at least 1 s apart; the third waits 2 s.
    #[test]
    fn cps_one_spaces_invites_by_a_second() {
        let t0 = Instant::now();
        let mut p = Pacer::new(NonZeroU32::new(1).unwrap(), 10);
        let a = p.admit(t0).unwrap();
        let b = p.admit(t0 + Duration::from_millis(10)).unwrap();
        let c = p.admit(t0 + Duration::from_millis(20)).unwrap();
        assert_eq!(a, t0);
        assert!(b - a >= Duration::from_secs(1));
        assert_eq!(c - a, Duration::from_secs(2));
        assert_eq!(p.waiting(t0 + Duration::from_millis(20)), 2);
        // Long after, a call goes at once.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(p.admit(later).unwrap(), later);
    }

    #[test]
    fn pacing_rates_and_queue_bound() {
        // (cps, queue, arrivals at ms, expected send offsets in ms or None for 429)
        type Case<'a> = (u32, usize, &'a [u64], &'a [Option<u64>]);
        let cases: &[Case] = &[
            (1, 1, &[0, 0, 0], &[Some(0), Some(1000), None]),
            (2, 2, &[0, 0, 0, 0], &[Some(0), Some(500), Some(1000), None]),
            (15, 0, &[0, 0], &[Some(0), None]),
            (5, 0, &[0, 200, 400], &[Some(0), Some(200), Some(400)]),
            (
                1,
                1,
                &[0, 100, 1000, 1100],
                &[Some(0), Some(1000), Some(2000), None],
            ),
        ];
        for (cps, queue, arrivals, expected) in cases {
            let t0 = Instant::now();
            let mut p = Pacer::new(NonZeroU32::new(*cps).unwrap(), *queue);
            let got: Vec<Option<u64>> = arrivals
                .iter()
                .map(|&ms| {
                    p.admit(t0 + Duration::from_millis(ms))
                        .ok()
                        .map(|t| (t - t0).as_millis() as u64)
                })
                .collect();
            assert_eq!(&got, expected, "cps {cps} queue {queue}");
        }
    }

    #[test]
    fn queue_full_is_429() {
        let t0 = Instant::now();
        let mut p = Pacer::new(NonZeroU32::new(1).unwrap(), 0);
        p.admit(t0).unwrap();
        let e = p.admit(t0).unwrap_err();
        assert_eq!(e.http_status(), 429);
        assert!(e.to_string().contains("queue is full"));
    }

    /// The `[[trunks]]` config section: defaults, and refusals with their position.
    mod config_section {
        use crate::config::Config;
        use std::path::Path;

        const BASE: &str = include_str!("../../configs/sbc.toml");

        fn parse(trunk: &str) -> Result<Config, String> {
            let text = format!("{BASE}\n[[trunks]]\n{trunk}");
            Config::parse_str(&text, Path::new("/etc/sbc/sbc.toml")).map_err(|e| e.to_string())
        }

        const MIN: &str = "name = \"twilio\"\nuri = \"sip:example.pstn.twilio.com;transport=tls\"\nusername = \"sbc\"\npassword_file = \"trunk.password\"\ncaller_ids = [\"+14155550100\"]\n";

        #[test]
        fn defaults() {
            let c = parse(MIN).unwrap();
            let t = &c.trunks[0];
            assert_eq!(
                t.uri.to_string(),
                "sip:example.pstn.twilio.com;transport=tls"
            );
            assert_eq!(
                t.credentials.as_ref().unwrap().password_file,
                Path::new("/etc/sbc/trunk.password")
            );
            // Without credentials (a trunk that admits sbc by address or certificate).
            let bare: String = MIN
                .lines()
                .filter(|l| !l.starts_with("username") && !l.starts_with("password_file"))
                .map(|l| format!("{l}\n"))
                .collect();
            let c = parse(&bare).unwrap();
            assert!(c.trunks[0].credentials.is_none());
            assert!(c.trunks[0].load_password().unwrap().is_none());
            assert_eq!(t.max_calls_per_second.get(), 1);
            assert_eq!(t.queue, 10);
            assert_eq!(t.max_concurrent_calls, 10);
            assert!(!t.early_media);
            assert_eq!(t.ring_timeout.as_secs(), 60);
            assert!(t.account_sids.is_empty() && t.allow_destinations.is_empty());
            assert_eq!(
                t.deny_destinations.len(),
                super::DEFAULT_DENY_DESTINATIONS.len()
            );
            assert_eq!(
                t.policy().check("ACx", "+14155550100", "+19005550100", 0),
                Err(super::Refusal::Destination("+19005550100".into()))
            );
            // Without [[trunks]]: no outbound calls.
            let none = Config::parse_str(BASE, Path::new("sbc.toml")).unwrap();
            assert!(none.trunks.is_empty());
        }

        #[test]
        fn refusals_name_the_line() {
            let cases: &[(&str, &str)] = &[
                ("uri = \"sip:example.com\"\n", "transport=tls"),
                ("max_calls_per_second = 16\n", "1 to 15"),
                ("max_calls_per_second = 0\n", "1 to 15"),
                ("ring_timeout_secs = 1\n", "5 to 600"),
                ("max_concurrent_calls = 0\n", "greater than 0"),
                ("deny_destinations = [\"1900\"]\n", "not a number prefix"),
                ("account_sids = [\"AC1\"]\n", "Account SID"),
                ("colour = \"blue\"\n", "unknown field"),
            ];
            for (extra, needle) in cases {
                // Later keys override: put the extra key in a fresh trunk body.
                let key = extra.split(' ').next().unwrap();
                let body: String = MIN
                    .lines()
                    .filter(|l| !l.starts_with(key))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
                    + extra;
                let e = parse(&body).unwrap_err();
                assert!(e.contains(needle), "{extra}: {e}");
                assert!(e.starts_with("/etc/sbc/sbc.toml:"), "{extra}: {e}");
            }
            let e = parse(&MIN.replace("[\"+14155550100\"]", "[]")).unwrap_err();
            assert!(e.contains("caller_ids is empty"), "{e}");
            let e = parse(&MIN.replace("+14155550100", "4155550100")).unwrap_err();
            assert!(e.contains("not an E.164 number"), "{e}");
            let e = parse(&MIN.replace("password_file = \"trunk.password\"\n", "")).unwrap_err();
            assert!(e.contains("username without password_file"), "{e}");
            let e = parse(&MIN.replace("username = \"sbc\"\n", "")).unwrap_err();
            assert!(e.contains("password_file without username"), "{e}");
            let e = parse(&format!("{MIN}\n[[trunks]]\n{MIN}")).unwrap_err();
            assert!(e.contains("used twice"), "{e}");
        }

        #[test]
        fn password_file_must_be_private() {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("trunk.password");
            std::fs::write(&file, "s3cret\n").unwrap();
            let mut t = parse(MIN).unwrap().trunks.remove(0);
            t.credentials = Some(crate::config::TrunkCredentials {
                username: "sbc".into(),
                password_file: file.clone(),
            });
            for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
                let r = t.load_password();
                assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
                if let Err(e) = r {
                    assert!(e.to_string().contains("chmod 600"), "{e}");
                }
            }
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(!format!("{:?}", t.load_password().unwrap()).contains("s3cret"));
            std::fs::write(&file, "\n").unwrap();
            assert!(t.load_password().unwrap_err().to_string().contains("empty"));
            t.credentials.as_mut().unwrap().password_file = dir.path().join("missing");
            assert!(t
                .load_password()
                .unwrap_err()
                .to_string()
                .contains("cannot read"));
        }
    }
}
