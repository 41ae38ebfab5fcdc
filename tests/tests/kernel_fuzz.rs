//! The fuzz tier: a bounded, seeded fuzz of every packet program
//! (`ferry_tests::fuzz`), with its tables printed whether or not output is
//! captured. `FERRY_FUZZ_SEED` and `FERRY_FUZZ_FRAMES` override the seed
//! and length; `cargo xtask fuzz --frames N [--seed S]` runs a long one.
use ferry_tests::fuzz::{self, Config};

/// Frames of the bounded run: about 20 s on a slow two-core machine.
const FRAMES: u64 = 50_000;

/// Outcomes a run of this length reaches, or the world is broken and the
/// fuzz blind: translation both ways, ICMP errors translated, rejects,
/// malformed frames dropped.
const MUST_REACH: [&str; 5] = [
    "translated",
    "reverse_translated",
    "translated_icmp_error",
    "rejected_no_endpoints",
    "drop_malformed_ipv4",
];

#[test]
fn every_packet_program_survives_a_seeded_fuzz() {
    let report = fuzz::run(Config::from_env(FRAMES));
    report.print();
    assert!(report.failure_count == 0, "{}", report.failures_text());
    if report.stats.frames >= 10_000 {
        for name in MUST_REACH {
            assert!(
                report.counted(name) > 0,
                "the fuzz never reached {name}: is the world's setup broken?\n{}",
                report.table()
            );
        }
    }
}
