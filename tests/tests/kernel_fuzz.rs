//! The fuzz tier: a bounded, seeded fuzz of every packet program
//! (`ferry_tests::fuzz`), with its tables printed whether or not output is
//! captured. `FERRY_FUZZ_SEED` and `FERRY_FUZZ_FRAMES` override the seed
//! and length; `cargo xtask fuzz --frames N [--seed S]` runs a long one.
use ferry_tests::fuzz::{self, Config, check::Hook};

/// Frames of the bounded run: about 20 s on a slow two-core machine.
const FRAMES: u64 = 50_000;

/// What each program reaches in a run of this length, or the world is
/// broken and the fuzz blind there: translation both ways, ICMP errors
/// translated, rejects, malformed and spoofed frames dropped.
const MUST_REACH: [(&str, Hook); 11] = [
    ("translated", Hook::FromPod),
    ("translated", Hook::FromNetwork),
    ("translated_xdp", Hook::Xdp),
    ("reverse_translated", Hook::FromPod),
    ("reverse_translated", Hook::FromNetwork),
    ("reverse_translated_xdp", Hook::Xdp),
    ("translated_icmp_error", Hook::FromPod),
    ("translated_icmp_error", Hook::FromNetwork),
    ("rejected_no_endpoints", Hook::FromPod),
    ("drop_malformed_ipv4", Hook::FromPod),
    ("drop_spoofed_source", Hook::FromPod),
];

#[test]
fn every_packet_program_survives_a_seeded_fuzz() {
    let report = fuzz::run(Config::from_env(FRAMES));
    report.print();
    assert!(report.failure_count == 0, "{}", report.failures_text());
    if report.stats.frames >= 10_000 {
        for (name, hook) in MUST_REACH {
            assert!(
                report.counted_by(name, hook) > 0,
                "{} never reached {name}: is the world's setup broken?\n{}",
                hook.name(),
                report.table()
            );
        }
    }
}
