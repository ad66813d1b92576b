//! SIP signalling without a call: OPTIONS, malformed requests, source address checks.

use std::time::Duration;

use interop_tests::tlsclient::{connect, sip_exchange, status_code};
use interop_tests::{SbcOptions, TestEnv};

#[test]
fn options_gets_200() {
    let env = TestEnv::new();
    let sbc = env.start_sbc(SbcOptions::builtin_echo());
    env.sipp("uac_options.xml")
        .timeout("10s")
        .run_expect(sbc.sip_port, 0);
}

#[test]
fn invite_without_from_gets_400() {
    let env = TestEnv::new();
    let sbc = env.start_sbc(SbcOptions::builtin_echo());
    env.sipp("uac_malformed.xml")
        .timeout("10s")
        .run_expect(sbc.sip_port, 0);
}

#[test]
fn invite_without_call_id_gets_400() {
    let env = TestEnv::new();
    let sbc = env.start_sbc(SbcOptions::builtin_echo());
    let req = format!(
        "INVITE sip:+15550002222@127.0.0.1:{p};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-nocallid-1\r\n\
         From: <sip:+15550001111@127.0.0.1:5999>;tag=abc\r\n\
         To: <sip:+15550002222@127.0.0.1:{p}>\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:+15550001111@127.0.0.1:5999;transport=tls>\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n",
        p = sbc.sip_port
    );
    let resp = sip_exchange(
        &env.pki,
        sbc.sip_port,
        req.as_bytes(),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| {
        panic!(
            "no response to an INVITE without Call-ID: {e}\nsbc log tail:\n{}",
            interop_tests::tail(&sbc.log(), 20)
        )
    });
    assert_eq!(
        status_code(&resp),
        Some(400),
        "expected 400 for an INVITE without Call-ID, got:\n{resp}"
    );
}

#[test]
fn source_not_allowed_is_refused() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.source_cidrs = vec!["10.0.0.0/8".into()];
    let sbc = env.start_sbc(opts);

    // A raw TLS client from 127.0.0.1 must not get a SIP response.
    let req = format!(
        "OPTIONS sip:127.0.0.1:{p};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-src-1\r\n\
         From: <sip:probe@127.0.0.1:5999>;tag=abc\r\n\
         To: <sip:127.0.0.1:{p}>\r\n\
         Call-ID: source-check-1@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n",
        p = sbc.sip_port
    );
    let r = sip_exchange(
        &env.pki,
        sbc.sip_port,
        req.as_bytes(),
        Duration::from_secs(5),
    );
    assert!(
        r.is_err(),
        "a connection from a source outside every carrier's source_cidrs got an answer: {r:?}"
    );

    // And SIPp's OPTIONS fails.
    let o = env
        .sipp("uac_options.xml")
        .timeout("5s")
        .hard_timeout(Duration::from_secs(30))
        .run(sbc.sip_port);
    assert_ne!(
        o.code,
        0,
        "SIPp OPTIONS from a refused source succeeded\n{}",
        o.describe()
    );
    let m = sbc.metrics();
    assert!(
        m.contains("sbc_connections_refused_total"),
        "metrics lack sbc_connections_refused_total:\n{m}"
    );
}

/// TLS 1.1 is below every allowed minimum: SIPp cannot even connect.
#[test]
fn sip_over_tls11_refused() {
    let env = TestEnv::new();
    let sbc = env.start_sbc(SbcOptions::builtin_echo());
    let o = env
        .sipp("uac_options.xml")
        .timeout("5s")
        .arg("-tls_version")
        .arg("1.1")
        .hard_timeout(Duration::from_secs(30))
        .run(sbc.sip_port);
    assert_ne!(
        o.code,
        0,
        "OPTIONS over TLS 1.1 succeeded\n{}",
        o.describe()
    );
    assert!(
        o.errors_log().contains("SSL") || o.screen.contains("SSL") || o.screen.contains("TLS"),
        "expected a TLS failure\n{}",
        o.describe()
    );
}

fn options(port: u16, n: u32) -> String {
    format!(
        "OPTIONS sip:127.0.0.1:{port};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-conn-{n}\r\n\
         From: <sip:probe@127.0.0.1:5999>;tag=t{n}\r\n\
         To: <sip:127.0.0.1:{port}>\r\n\
         Call-ID: conn-limit-{n}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// `[limits] max_connections_per_ip = 2`: a third TLS connection from 127.0.0.1 gets no SIP
/// service while two are open; once one closes, a new one works.
#[test]
fn connection_limit_per_ip() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.max_connections_per_ip = 2;
    let sbc = env.start_sbc(opts);
    let t = Duration::from_secs(5);
    let c1 = connect(&env.pki, sbc.sip_port, t).expect("first connection");
    let _c2 = connect(&env.pki, sbc.sip_port, t).expect("second connection");
    std::thread::sleep(Duration::from_millis(200));
    let third = sip_exchange(
        &env.pki,
        sbc.sip_port,
        options(sbc.sip_port, 3).as_bytes(),
        t,
    );
    assert!(
        third.is_err(),
        "a third connection beyond max_connections_per_ip = 2 got an answer: {third:?}"
    );
    drop(c1);
    std::thread::sleep(Duration::from_millis(500));
    let r = sip_exchange(
        &env.pki,
        sbc.sip_port,
        options(sbc.sip_port, 4).as_bytes(),
        t,
    )
    .unwrap_or_else(|e| panic!("after closing one connection a new one must work: {e}"));
    assert_eq!(status_code(&r), Some(200), "OPTIONS answer:\n{r}");
}
