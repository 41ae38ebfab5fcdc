//! Scenario "pod-to-service": a client pod to a server pod on one node,
//! through each path of the test bed — (a) no ferry, (b)/(c) ferry's
//! ClusterIP with 10 and with the large Service set, ferry straight to the
//! pod IP, (d)/(e) kube-proxy's iptables and nftables rule sets — as
//! connection rate and request/response latency, every figure the median
//! over rounds and a ratio against (a).
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::Result;

use super::{
    Opts, SERVER_IP, SERVER_PORT, SERVICE_PORT, datapath_drops,
    report::{Cell, Report, Table, Target},
    testbed::Testbed,
    traffic::{concurrent, first_error, load_json, median, num, wait_reachable},
};

pub const NAME: &str = "pod-to-service";

/// The connection rate ferry's ClusterIP (c) must keep against (a).
const TARGET_CLUSTER_IP_RATE: f64 = 0.95;

/// One path between the pods, and its samples so far.
struct ClientPath {
    label: String,
    client_ns: PathBuf,
    target: SocketAddr,
    samples: Vec<Sample>,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    rate: f64,
    errors: u64,
    p50_us: f64,
    p99_us: f64,
}

/// A round on one path: connections per second over `opts.clients`
/// concurrent clients, then latency on one connection.
fn measure(path: &ClientPath, load: &Path, opts: &Opts) -> Result<Sample> {
    let crr = concurrent(&path.client_ns, load, "crr", path.target, opts)?;
    let rr = load_json(
        &path.client_ns,
        load,
        &[
            "rr".into(),
            path.target.to_string(),
            opts.seconds.to_string(),
        ],
    )?;
    if let Some(e) = first_error(&crr) {
        eprintln!("    {}: first connection error: {e}", path.label);
    }
    Ok(Sample {
        rate: num(&crr, "connections") / num(&crr, "seconds"),
        errors: crr["errors"].as_u64().unwrap_or(0),
        p50_us: num(&rr, "p50_ns") / 1e3,
        p99_us: num(&rr, "p99_ns") / 1e3,
    })
}

/// Measure every path of `bed` (programmed by the programming scenario):
/// `small_vip` is the measured Service among 10, `large_vip` among the
/// large set.
pub fn run(
    bed: &Testbed,
    load: &Path,
    opts: &Opts,
    small_vip: Ipv4Addr,
    large_vip: Ipv4Addr,
) -> Result<Report> {
    let n = opts.services;
    let path = |label: String, client_ns: PathBuf, target: (Ipv4Addr, u16)| ClientPath {
        label,
        client_ns,
        target: target.into(),
        samples: vec![],
    };
    let mut paths = vec![
        path(
            "(a) direct to pod IP, kernel routing, no ferry".into(),
            bed.direct.client.netns.path(),
            (SERVER_IP, SERVER_PORT),
        ),
        path(
            "(b) ferry ClusterIP, 10 services".into(),
            bed.ferry_small.client.netns.path(),
            (small_vip, SERVICE_PORT),
        ),
        path(
            format!("(c) ferry ClusterIP, {n} services"),
            bed.ferry_large.client.netns.path(),
            (large_vip, SERVICE_PORT),
        ),
        path(
            "    ferry direct to pod IP (no translation)".into(),
            bed.ferry_small.client.netns.path(),
            (SERVER_IP, SERVER_PORT),
        ),
        path(
            format!("(d) kube-proxy iptables, {n} services"),
            bed.iptables.client.netns.path(),
            (large_vip, SERVICE_PORT),
        ),
        path(
            format!("(e) kube-proxy nftables, {n} services"),
            bed.nftables.client.netns.path(),
            (large_vip, SERVICE_PORT),
        ),
    ];
    for p in &paths {
        wait_reachable(&p.client_ns, load, p.target)?;
    }

    println!(
        "==> {NAME}: {} rounds; per path {} s of connections ({} concurrent clients: connect, 1-byte request, 1-byte response, close) then {} s of 1-byte request/response on one connection",
        opts.rounds, opts.seconds, opts.clients, opts.seconds
    );
    let count = paths.len();
    for round in 1..=opts.rounds {
        // Rotate the order each round: whatever the machine does at a given
        // moment (another tenant, the agents' conntrack sweep) should not
        // always land on the same path.
        for k in 0..count {
            let p = &mut paths[(k + round - 1) % count];
            let sample = measure(p, load, opts)?;
            println!(
                "    round {round}: {:<48} {:>9.0} conn/s  p50 {:>6.1} us  p99 {:>6.1} us{}",
                p.label,
                sample.rate,
                sample.p50_us,
                sample.p99_us,
                if sample.errors > 0 {
                    format!("  ({} failed connections)", sample.errors)
                } else {
                    String::new()
                }
            );
            p.samples.push(sample);
        }
    }

    let mut report = Report::default();
    let medians: Vec<(f64, f64, f64, u64)> = paths
        .iter()
        .map(|p| {
            let of = |f: fn(&Sample) -> f64| median(p.samples.iter().map(f).collect());
            (
                of(|x| x.rate),
                of(|x| x.p50_us),
                of(|x| x.p99_us),
                p.samples.iter().map(|x| x.errors).sum(),
            )
        })
        .collect();
    let (base_rate, base_p50, _, _) = medians[0];
    let mut table = Table::new(
        ("path (median over rounds)", 48),
        &[
            ("conn/s", 9),
            ("vs (a)", 8),
            ("p50 us", 9),
            ("vs (a)", 8),
            ("p99 us", 9),
            ("errors", 7),
        ],
    );
    for (p, &(rate, p50, p99, errors)) in paths.iter().zip(&medians) {
        table.row(
            &p.label,
            vec![
                Cell::Rate(rate),
                Cell::Ratio(rate / base_rate),
                Cell::Micros(p50),
                Cell::Ratio(p50 / base_p50),
                Cell::Micros(p99),
                Cell::Count(errors),
            ],
        );
    }
    report.table(table);
    report.line("(conn/s vs (a): higher is better; latency vs (a): lower is better)");
    // Anything ferry dropped on the way is named here, not hidden in a rate.
    for (label, node) in [
        ("ferry-10", &bed.ferry_small.node),
        ("ferry-large", &bed.ferry_large.node),
    ] {
        report.line(format!("{label} datapath drops: {}", datapath_drops(node)?));
    }
    report.target(Target {
        what: format!("(c) >= {TARGET_CLUSTER_IP_RATE}x (a) connection rate"),
        ratio: medians[2].0 / base_rate,
        goal: TARGET_CLUSTER_IP_RATE,
    });
    Ok(report)
}
