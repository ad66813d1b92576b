//! Operations against the real binary: SIGHUP reloads the configuration (an invalid one is
//! refused and the old one stays), SIGTERM drains and exits 0.

mod common;

use std::time::{Duration, Instant};

use common::{config, free_port, options, wait_until, Pki, Sbc};

#[test]
fn sighup_reloads_refuses_bad_config_and_sigterm_exits_zero() {
    let pki = Pki::new();
    let port = free_port();
    let cfg = pki.path("sbc.toml");
    std::fs::write(&cfg, config(port, 43000, r#""127.0.0.0/8""#)).unwrap();
    let mut sbc = Sbc::start(&cfg, pki.path("sbc.log"));
    assert!(
        wait_until(|| options(&pki, port).is_some()),
        "sbc did not come up: {}",
        std::fs::read_to_string(pki.path("sbc.log")).unwrap_or_default()
    );
    assert_eq!(options(&pki, port).as_deref(), Some("SIP/2.0 200 OK"));

    // An invalid file is refused; the running configuration stays.
    std::fs::write(&cfg, "[sip]\nlisten = [\"127.0.0.1:1\"]\nno_such_key = 1\n").unwrap();
    sbc.signal("-HUP");
    assert!(sbc.wait_log("reload refused"), "no refusal logged");
    assert_eq!(options(&pki, port).as_deref(), Some("SIP/2.0 200 OK"));

    // A valid change takes effect: loopback is no longer an allowed carrier source.
    std::fs::write(&cfg, config(port, 43000, r#""10.0.0.0/8""#)).unwrap();
    sbc.signal("-HUP");
    assert!(sbc.wait_log("configuration reloaded"), "no reload logged");
    assert!(
        wait_until(|| options(&pki, port).is_none()),
        "loopback still accepted after the reload"
    );

    sbc.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = sbc.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "sbc did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(sbc.wait_log("sbc stopped"));
}
