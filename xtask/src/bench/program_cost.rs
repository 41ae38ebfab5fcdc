//! Scenario "program-cost": what ferry's own tc program costs per packet,
//! run through BPF_PROG_TEST_RUN (bpftool) against the live maps of the
//! node with 10 Services and of the node with the large Service set — the
//! part of a connection's time that is ferry's, and whether it stays flat
//! as Services are added. A test run's repeats reuse one skb, which the
//! first run rewrites, so a translated packet is timed in runs of one
//! packet each; the kernel times the program alone in both cases. Those
//! single runs carry a cold-cache cost of about 10 us that swings from run
//! to run, so translated packets are also measured in traffic: the
//! kernel's run-time statistics of the program (BPF_ENABLE_STATS) over
//! real ClusterIP connections on each node, which the verdict rests on.
use std::{net::Ipv4Addr, path::Path, process::Command};

use anyhow::{Context, Result};
use ferry_harness::packet::{Packet, TCP_ACK, TCP_SYN};

use super::{
    Opts, SERVER_IP, SERVER_PORT, SERVICE_PORT,
    pod_to_service::counters,
    report::Report,
    testbed::FerryNode,
    traffic::{concurrent_in, median, spread},
};

pub const NAME: &str = "program-cost";

/// Runs per measurement; bpftool reports their average.
const REPEAT: u32 = 200_000;

/// A client address on the node's pod CIDR that no pod holds, so its flow
/// is the bench's own.
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 200), 45000);
/// The same client on another port: a connection of its own, never a
/// Service's.
const NO_SERVICE_CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 200), 45001);
/// The client port of the translated flow.
const FLOW_PORT: u16 = 45002;
/// New connections take client ports from here on.
const FIRST_NEW_PORT: u16 = 46000;

/// Test runs of one packet each for the translated figures: each comes
/// with a fresh skb, so each is translated; the kernel times the program
/// run alone (not the system call around it), and the figure is the
/// median.
const SINGLE_RUNS: u16 = 400;

/// The figures of one node.
struct Costs {
    pod_ip: f64,
    pod_ip_syn: f64,
    flow_packet: f64,
    new_connection: f64,
}

/// Per-packet cost of ferry's from-pod program on the node with 10
/// Services (`small`, whose measured frontend is `small_vip`) and on the
/// node with `services` (`large`, `large_vip`): the same figures side by
/// side, with the large node's as a ratio of the small one's.
pub fn run(
    small: &FerryNode,
    small_vip: Ipv4Addr,
    large: &FerryNode,
    large_vip: Ipv4Addr,
    services: usize,
    load: &Path,
    opts: &Opts,
) -> Result<Report> {
    let mut report = Report::default();
    let (ten, proof_small) = measure(small, small_vip)?;
    let (many, proof_large) = measure(large, large_vip)?;
    let traffic = in_traffic(small, small_vip, large, large_vip, load, opts)?;
    let line = |what: &str, a: f64, b: f64| {
        format!(
            "{what}: 10 Services {a:.0} ns, {services} Services {b:.0} ns ({:.2}x)",
            b / a
        )
    };
    report.line(format!(
        "ferry's tc program per packet (BPF_PROG_TEST_RUN; pod-IP figures averaged over {REPEAT} repeats, translated ones the median of {SINGLE_RUNS} runs of one packet, timed by the kernel around the program alone)"
    ));
    report.line(format!(
        "  {}",
        line("pod IP, no translation", ten.pod_ip, many.pod_ip)
    ));
    report.line(format!(
        "  {}",
        line(
            "pod IP, no translation, SYN",
            ten.pod_ip_syn,
            many.pod_ip_syn
        )
    ));
    report.line(format!(
        "  {}",
        line(
            "ClusterIP, a flow's packet (translated from conntrack)",
            ten.flow_packet,
            many.flow_packet
        )
    ));
    report.line(format!(
        "  {}",
        line(
            "ClusterIP, a new connection's SYN (frontend lookup, backend choice, flow created)",
            ten.new_connection,
            many.new_connection
        )
    ));
    report.line(format!(
        "  paths proven by the counters: ferry-10 {proof_small}; ferry-large {proof_large}"
    ));
    report.line(format!(
        "  in traffic (the kernel's own run-time statistics of the program, BPF_ENABLE_STATS, over {} s of ClusterIP connections per node, median of {} alternating runs; every packet of those connections, both directions, translated): 10 Services {:.0} ns (runs ±{:.0}%) over {} packets, {services} Services {:.0} ns (runs ±{:.0}%) over {} packets ({:.2}x)",
        opts.seconds,
        TRAFFIC_RUNS,
        traffic.small_ns,
        traffic.small_spread * 100.0,
        traffic.small_packets,
        traffic.large_ns,
        traffic.large_spread * 100.0,
        traffic.large_packets,
        traffic.large_ns / traffic.small_ns
    ));
    // The verdict rests on the in-traffic figure: a test run of one packet
    // carries a cold-cache cost of about 10 us that swings from run to
    // run far more than the program's own work.
    let ratio = traffic.large_ns / traffic.small_ns;
    report.line(format!(
        "  translated packets at {services} Services within 10% of 10 Services, in traffic (issue 15): {}",
        if ratio <= 1.10 { "met" } else { "NOT met" }
    ));
    Ok(report)
}

/// Alternating runs per node for the in-traffic figure.
const TRAFFIC_RUNS: usize = 3;

/// The from-pod program's mean cost per packet on each node while a
/// client opens connections to its ClusterIP.
struct InTraffic {
    small_ns: f64,
    small_packets: u64,
    /// How far the runs spread (`traffic::spread`).
    small_spread: f64,
    large_ns: f64,
    large_packets: u64,
    large_spread: f64,
}

fn in_traffic(
    small: &FerryNode,
    small_vip: Ipv4Addr,
    large: &FerryNode,
    large_vip: Ipv4Addr,
    load: &Path,
    opts: &Opts,
) -> Result<InTraffic> {
    // Run-time statistics cost every BPF program two clock reads a run:
    // on only while this runs, off when the descriptor closes.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("BPF_ENABLE_STATS (needs root and kernel 5.8+)")?;
    let one = |node: &FerryNode, vip: Ipv4Addr| -> Result<(f64, u64)> {
        let prog = node.node.pin_dir.join("prog_from_pod");
        let read = || -> Result<(u64, u64)> {
            let info = aya::programs::ProgramInfo::from_pin(&prog)
                .with_context(|| format!("reading {}", prog.display()))?;
            Ok((info.run_time().as_nanos() as u64, info.run_count()))
        };
        let before = read()?;
        concurrent_in(
            &node.client.netns.path(),
            None,
            load,
            "crr",
            std::net::SocketAddr::from((vip, SERVICE_PORT)),
            opts,
        )?;
        let after = read()?;
        let runs = after.1.saturating_sub(before.1);
        let ns = after.0.saturating_sub(before.0) as f64 / runs.max(1) as f64;
        Ok((ns, runs))
    };
    let (mut small_ns, mut large_ns) = (Vec::new(), Vec::new());
    let (mut small_packets, mut large_packets) = (0, 0);
    for _ in 0..TRAFFIC_RUNS {
        let (ns, n) = one(small, small_vip)?;
        small_ns.push(ns);
        small_packets += n;
        let (ns, n) = one(large, large_vip)?;
        large_ns.push(ns);
        large_packets += n;
    }
    Ok(InTraffic {
        small_spread: spread(&small_ns),
        small_ns: median(small_ns),
        small_packets,
        large_spread: spread(&large_ns),
        large_ns: median(large_ns),
        large_packets,
    })
}

/// The figures of `node`, and what its counters say the runs did.
fn measure(node: &FerryNode, vip: Ipv4Addr) -> Result<(Costs, String)> {
    let prog = node.node.pin_dir.join("prog_from_pod");
    let scratch = node.cluster.root.join("frame.bin");
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
    let measured = (|| -> Result<Costs> {
        let pod_ip = Packet::tcp(CLIENT, (SERVER_IP, SERVER_PORT), TCP_ACK, &[]).bytes();
        // A connection's first packet to a pod, which no Service's frontend
        // holds: what every direct (and socket-LB) connection pays once
        // more than its other packets.
        let pod_ip_syn =
            Packet::tcp(NO_SERVICE_CLIENT, (SERVER_IP, SERVER_PORT), TCP_SYN, &[]).bytes();
        // The flow first, then its packets, one run each: each is
        // translated again from the flow's entry.
        let flow = (CLIENT.0, FLOW_PORT);
        single_runs(&prog, &scratch, 1, |_| {
            Packet::tcp(flow, (vip, SERVICE_PORT), TCP_SYN, &[]).bytes()
        })?;
        let flow_packet = single_runs(&prog, &scratch, SINGLE_RUNS, |_| {
            Packet::tcp(flow, (vip, SERVICE_PORT), TCP_ACK, &[]).bytes()
        })?;
        // A new client port each run: a new connection each time.
        let new_connection = single_runs(&prog, &scratch, SINGLE_RUNS, |i| {
            Packet::tcp(
                (CLIENT.0, FIRST_NEW_PORT + i),
                (vip, SERVICE_PORT),
                TCP_SYN,
                &[],
            )
            .bytes()
        })?;
        Ok(Costs {
            pod_ip: program_ns(&prog, &pod_ip, &scratch, REPEAT)?,
            pod_ip_syn: program_ns(&prog, &pod_ip_syn, &scratch, REPEAT)?,
            flow_packet,
            new_connection,
        })
    })();
    bpftool_map(&sources, "delete pinned {} key 1 0 0 0")?;
    let costs = measured?;
    let after = counters(&node.node)?;
    // Every run is counted under its outcome: the path measured is proven
    // by what moved (every run passed or was translated, nothing dropped).
    let moved = |key: &str| after[key].saturating_sub(before[key]);
    let dropped: u64 = after
        .keys()
        .filter(|k| k.starts_with("drop_") || k.starts_with("rejected"))
        .map(|k| moved(k))
        .sum();
    let proof = format!(
        "translated +{} (expected {}), passed +{}, dropped +{dropped}{}",
        moved("translated"),
        1 + 2 * u32::from(SINGLE_RUNS),
        moved("passed"),
        if dropped > 0 {
            " (NOT the paths named: runs were dropped)"
        } else {
            ""
        }
    );
    Ok((costs, proof))
}

/// Median nanoseconds over `runs` test runs of one packet each, the i-th
/// on `frame(i)` (the median: a run now and then pays for a cold cache or
/// an interrupt, which a mean of a few hundred would carry).
fn single_runs(
    prog: &Path,
    scratch: &Path,
    runs: u16,
    frame: impl Fn(u16) -> Vec<u8>,
) -> Result<f64> {
    let mut all = Vec::with_capacity(usize::from(runs));
    for i in 0..runs {
        all.push(program_ns(prog, &frame(i), scratch, 1)?);
    }
    all.sort_by(f64::total_cmp);
    Ok(all.get(all.len() / 2).copied().unwrap_or(f64::NAN))
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
/// `frame` (BPF_PROG_TEST_RUN through bpftool, `repeat` times on one skb),
/// against the live maps of the node it belongs to, as the kernel timed
/// the runs (not the system call's own setup).
fn program_ns(prog: &Path, frame: &[u8], scratch: &Path, repeat: u32) -> Result<f64> {
    std::fs::write(scratch, frame)?;
    let out = Command::new("bpftool")
        .args(["prog", "run", "pinned"])
        .arg(prog)
        .arg("data_in")
        .arg(scratch)
        .args(["repeat", &repeat.to_string()])
        .output()
        .context("running bpftool (cargo xtask setup installs it)")?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // "duration (average): N ns" for repeats, "duration: Nns" for one run.
    text.split("duration")
        .nth(1)
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|rest| rest.trim().split("ns").next())
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no duration in bpftool's output: {text}"))
}
