//! Every file shipped in `configs/` parses and converts; the loopback one also loads (it needs
//! no certificate files) and the production example is set up for a Twilio trunk.

use std::path::{Path, PathBuf};

use sbc::config::{
    AgentTarget, AuditSink, Config, RouteMatch, Tls12Suite, TlsIdentity, TlsVersion,
};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn every_shipped_config_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = Config::parse_str(&text, &path) {
                panic!("{e}");
            }
            n += 1;
        }
    }
    assert!(
        n >= 2,
        "expected sbc.toml and production.example.toml, found {n} files"
    );
}

#[test]
fn loopback_config_loads_and_runs_on_loopback_only() {
    let path = configs_dir().join("sbc.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(c.tls.identity, TlsIdentity::DevSelfSigned));
    assert!(c
        .sip
        .listen
        .iter()
        .all(|a| a.ip().is_loopback() && a.port() == 5061));
    assert_eq!(c.carriers.len(), 1);
    assert_eq!(c.carriers[0].name, "loopback");
    let sources: Vec<String> = c.carriers[0]
        .sources
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(sources, ["127.0.0.0/8", "::1/128"]);
    assert!(c.media.advertise_address.is_loopback());
    assert!(c
        .agent
        .routes
        .iter()
        .any(|r| r.matcher == RouteMatch::Default && r.target == AgentTarget::Echo));
    match &c.audit.sink {
        AuditSink::File(p) => assert!(p.starts_with(configs_dir()), "{}", p.display()),
        AuditSink::Stdout => panic!("audit to a file expected"),
    }
    assert_eq!(c.metrics.unwrap().listen.to_string(), "127.0.0.1:9090");
}

#[test]
fn production_example_is_a_twilio_trunk_with_the_defaults() {
    let path = configs_dir().join("production.example.toml");
    let c = Config::parse_str(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let sources: Vec<String> = c.carriers[0]
        .sources
        .iter()
        .map(|n| n.to_string())
        .collect();
    for na in ["54.172.60.0/30", "54.244.51.0/30"] {
        assert!(
            sources.iter().any(|s| s == na),
            "{na} missing from {sources:?}"
        );
    }
    assert!(matches!(c.tls.identity, TlsIdentity::Files { .. }));
    assert_eq!(c.tls.min_version, TlsVersion::Tls12);
    assert_eq!(c.tls.tls12_suites, Tls12Suite::ALL);
    assert_eq!(c.sip.server_header, None);
    assert_eq!(c.sip.t1.as_millis(), 500);
    assert_eq!((c.media.port_first, c.media.port_last), (20000, 29999));
    assert_eq!(c.limits.max_message_bytes, 16384);
    // It names certificate files that do not exist here: load must say which one.
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.starts_with("/etc/sbc/chain.pem: "), "{err}");
}

/// The production example's `[[trunks]]`: a Twilio termination trunk over TLS with Twilio's
/// default CPS, and the premium-rate deny list it spells out equal to the built-in default.
#[test]
fn production_example_has_a_twilio_termination_trunk() {
    let path = configs_dir().join("production.example.toml");
    let c = Config::parse_str(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    assert_eq!(c.trunks.len(), 1);
    let t = &c.trunks[0];
    assert_eq!(
        t.uri.to_string(),
        "sip:example.pstn.twilio.com;transport=tls"
    );
    assert_eq!(t.max_calls_per_second.get(), 1);
    assert_eq!(t.ring_timeout.as_secs(), 60);
    assert!(!t.early_media);
    assert_eq!(t.deny_destinations, sbc::trunk::DEFAULT_DENY_DESTINATIONS);
    assert_eq!(
        t.policy()
            .check(
                "AC00000000000000000000000000000000",
                "+14155550100",
                "+19005550123",
                0
            )
            .unwrap_err()
            .http_status(),
        403
    );
}
