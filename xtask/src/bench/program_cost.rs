//! Scenario "program-cost": what ferry's own tc program costs per packet,
//! run through BPF_PROG_TEST_RUN (bpftool) against the live maps of the
//! large Service set — the part of a connection's time that is ferry's.
use std::{net::Ipv4Addr, path::Path, process::Command};

use anyhow::{Context, Result};
use ferry_harness::packet::{Packet, TCP_ACK, TCP_SYN};

use super::{SERVER_IP, SERVER_PORT, pod_to_service::counters, report::Report, testbed::FerryNode};

pub const NAME: &str = "program-cost";

/// Runs per measurement; bpftool reports their average.
const REPEAT: u32 = 200_000;

/// A client address on the node's pod CIDR that no pod holds, so its flow
/// is the bench's own.
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 200), 45000);
/// The same client on another port: a connection of its own, never a
/// Service's.
const NO_SERVICE_CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 200), 45001);

/// Per-packet cost of ferry's from-pod program on `node`, which holds the
/// `services` Services.
pub fn run(node: &FerryNode, services: usize) -> Result<Report> {
    let prog = node.node.pin_dir.join("prog_from_pod");
    let scratch = node.cluster.root.join("frame.bin");
    // No translated packet: a test run's repeats reuse one skb, and the
    // first run rewrites a packet for a frontend to its backend's address,
    // so the repeats after it would measure the pod-IP path below (the
    // counters proved it: one translated, the rest passed). The frontend
    // is in the maps all the same, among `services`.
    let cost = [
        (
            "pod IP, no translation",
            Packet::tcp(CLIENT, (SERVER_IP, SERVER_PORT), TCP_ACK, &[]).bytes(),
        ),
        // A connection's first packet to a pod, which no Service's frontend
        // holds: what every direct (and socket-LB) connection pays once
        // more than its other packets.
        (
            "pod IP, no translation, SYN",
            Packet::tcp(NO_SERVICE_CLIENT, (SERVER_IP, SERVER_PORT), TCP_SYN, &[]).bytes(),
        ),
    ];
    // A test run comes in on loopback: record it as the client pod's veth,
    // or the anti-spoofing check drops every run (and that drop is all
    // that would be measured).
    let sources = node.node.pin_dir.join(ferry_common::MAP_POD_SOURCES);
    let [a, b, c, d] = CLIENT.0.octets();
    bpftool_map(
        &sources,
        &format!("update pinned {{}} key 1 0 0 0 value {a} {b} {c} {d}"),
    )?;
    let before = counters(&node.node)?;
    let measured = (|| -> Result<Vec<String>> {
        let mut costs = Vec::new();
        for (what, frame) in &cost {
            costs.push(format!(
                "{what} {:.0} ns",
                program_ns(&prog, frame, &scratch)?
            ));
        }
        Ok(costs)
    })();
    bpftool_map(&sources, "delete pinned {} key 1 0 0 0")?;
    let costs = measured?;
    let after = counters(&node.node)?;
    // Every run is counted under its outcome: the path measured is proven
    // by what moved (every run passed, nothing dropped).
    let moved = |key: &str| after[key].saturating_sub(before[key]);
    let dropped: u64 = after
        .keys()
        .filter(|k| k.starts_with("drop_") || k.starts_with("rejected"))
        .map(|k| moved(k))
        .sum();
    let mut report = Report::default();
    report.line(format!(
        "ferry's tc program per packet (BPF_PROG_TEST_RUN x{REPEAT}, {services}-Service maps): {}; over the runs the node counted translated +{}, passed +{}, dropped +{dropped}{} (a translated packet is not measured: the repeats of a test run reuse the skb the first run rewrote)",
        costs.join(", "),
        moved("translated"),
        moved("passed"),
        if dropped > 0 {
            " (NOT the paths named: the runs were dropped)"
        } else {
            ""
        }
    ));
    Ok(report)
}

/// `bpftool map ARGS`, the map's path in place of `{}`.
fn bpftool_map(map: &Path, args: &str) -> Result<()> {
    let path = map.display().to_string();
    let args: Vec<String> = args
        .split_whitespace()
        .map(|a| {
            if a == "{}" {
                path.clone()
            } else {
                a.to_string()
            }
        })
        .collect();
    let out = Command::new("bpftool")
        .arg("map")
        .args(&args)
        .output()
        .context("running bpftool (cargo xtask setup installs it)")?;
    if !out.status.success() {
        anyhow::bail!(
            "bpftool map {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Average nanoseconds of one run of the program pinned at `prog` on
/// `frame` (BPF_PROG_TEST_RUN through bpftool, repeated), against the live
/// maps of the node it belongs to.
fn program_ns(prog: &Path, frame: &[u8], scratch: &Path) -> Result<f64> {
    std::fs::write(scratch, frame)?;
    let out = Command::new("bpftool")
        .args(["prog", "run", "pinned"])
        .arg(prog)
        .arg("data_in")
        .arg(scratch)
        .args(["repeat", &REPEAT.to_string()])
        .output()
        .context("running bpftool (cargo xtask setup installs it)")?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.split("duration (average):")
        .nth(1)
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .split("ns")
                .next()
        })
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no duration in bpftool's output: {text}"))
}
