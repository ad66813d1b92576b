//! Media hardening against the real binary (issue 13): concurrent calls under SIPp's strict echo
//! check, and the `[media]` checks on the carrier's `c=` address.

use interop_tests::{AgentBehaviour, SbcOptions, TestEnv};

/// The README's scenario: 10 calls at 5 per second, every echoed packet checked by SIPp with
/// `-audiotolerance 0.1` (SIPp fails a call when 10% of its packets fail the echo check).
fn strict_concurrent_echo(opts: SbcOptions, env: &TestEnv) {
    let sbc = env.start_sbc(opts);
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .calls(10, 5, 10)
        .audio_tolerance(0.1)
        .run(sbc.sip_port);
    let rc = o.rtp_check();
    assert!(
        o.code == 0 && rc.srtp_failures == 0 && rc.mismatches == 0,
        "SIPp exit {} with the strict echo check, {rc:?}\n{}",
        o.code,
        o.describe()
    );
}

#[test]
fn concurrent_calls_pass_the_strict_echo_check_builtin_echo() {
    let env = TestEnv::new();
    strict_concurrent_echo(SbcOptions::builtin_echo(), &env);
}

#[test]
fn concurrent_calls_pass_the_strict_echo_check_through_the_agent() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    strict_concurrent_echo(SbcOptions::agent(agent.url()), &env);
}
