//! Load: 50 calls at 10 calls/s, every one with SIPp's SRTP echo check.
//!
//! In its own test binary so that it does not share the two CPU cores with the other call tests.
//! SIPp's echo check is re-read strictly by the harness (see `interop_tests::sipp::RtpCheck`):
//! every echo must decrypt and match; how many arrive before SIPp's next send depends on the
//! machine's load, so it is not judged here (`Sipp::echo_content_only`); sbc's audit shows that
//! each call's packets were relayed. Latency under load is measured by `benches/` (loadgen).

use std::time::Duration;

use interop_tests::{AgentBehaviour, SbcOptions, TestEnv};

#[test]
fn fifty_calls_at_ten_per_second() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let mut opts = SbcOptions::agent(agent.url());
    opts.log_level = "info".into();
    let sbc = env.start_sbc(opts);
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .calls(50, 10, 50)
        .echo_content_only()
        .timeout("90s")
        .hard_timeout(Duration::from_secs(120))
        .run_expect(sbc.sip_port, 0);
    let ids = o.call_ids();
    assert_eq!(ids.len(), 50, "SIPp made {} calls", ids.len());
    sbc.wait_audit(Duration::from_secs(15), |_| {
        sbc.audit()
            .iter()
            .filter(|v| v["event"] == "call.end" && v["end_reason"] == "carrier_bye")
            .count()
            >= 50
    });
    for end in sbc.audit().iter().filter(|v| v["event"] == "call.end") {
        let m = &end["media"];
        let rtp_in = m["rtp_in"].as_u64().unwrap_or(0);
        let rtp_out = m["rtp_out"].as_u64().unwrap_or(0);
        assert_eq!(m["auth_failures"], 0, "call.end: {end}");
        assert!(rtp_in >= 140, "each call sends ~150 packets: {end}");
        // SIPp sends its BYE right after its last packet; the echoes of the last packets are
        // still on their way through the agent (a round trip of 100-300 ms when the machine is
        // loaded) and are dropped with the call. 15 packets = 300 ms of tail.
        assert!(
            rtp_out + 15 >= rtp_in,
            "sbc must send back (nearly) every echoed packet: {end}"
        );
    }
    let conns = agent.wait_for("50 closed streams", Duration::from_secs(15), |c| {
        c.len() >= 50 && c.iter().all(|c| c.closed.is_some())
    });
    assert_eq!(conns.len(), 50, "one agent stream per call");
}
