//! Scenario "pod-to-service": a client pod to a server pod on one node,
//! through each path of the test bed — (a) no ferry, (b)/(c) ferry's
//! ClusterIP with 10 and with the large Service set (tc), ferry straight to
//! the pod IP, (d)/(e) kube-proxy's iptables and nftables rule sets, (f)/(g)
//! ferry's ClusterIP translated at connect() (socket LB) with 10 and with
//! the large set — as connection rate and request/response latency, every
//! figure the median over rounds and a ratio against (a). (b) is measured
//! once more with `ferry-agent monitor --type all` listening: the cost of
//! a listener (with none, the events cost nothing but a flag test on a new
//! flow or a drop).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use ferry_harness::{Cgroup, Node};

use super::cpu::CpuSampler;
use super::{
    Opts, SERVER_IP, SERVER_PORT, SERVICE_PORT, datapath_drops,
    report::{Cell, Report, Table, Target},
    testbed::Testbed,
    traffic::{concurrent_in, first_error, load_json_in, median, num, spread, wait_reachable_in},
};

pub const NAME: &str = "pod-to-service";

/// The connection rate ferry's tc ClusterIP rows (b), (c) must keep
/// against (a) (issue 12).
const TARGET_CLUSTER_IP_RATE: f64 = 0.97;
/// ... ferry's no-translation path (pod IP, `bpf_redirect_peer`).
const TARGET_NO_TRANSLATION_RATE: f64 = 1.00;
/// ... (c) against kube-proxy's iptables rule set (d) (issue 15).
const TARGET_OVER_IPTABLES: f64 = 2.0;
/// ... from this many Services up.
const TARGET_OVER_IPTABLES_AT: usize = 100_000;
/// ... the socket-LB ClusterIP rows (f), (g).
const TARGET_SOCKET_LB_RATE: f64 = 1.00;

/// Connections per second (medians) of the paths the plots show.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub direct: f64,
    pub ferry_small: f64,
    pub ferry_large: f64,
    pub iptables: f64,
    pub nftables: f64,
    pub socket_lb_small: f64,
    pub socket_lb_large: f64,
}

/// One path between the pods, and its samples so far.
struct ClientPath<'a> {
    label: String,
    client_ns: PathBuf,
    /// The cgroup the client runs in: a pod's, for the socket-LB rows
    /// (the node's socket programs act on it); None: the harness's own,
    /// outside every node's tree (the tc path).
    cgroup: Option<&'a Cgroup>,
    /// For the socket-LB rows: the node whose counters prove the path.
    socket_lb: Option<&'a Node>,
    target: SocketAddr,
    samples: Vec<Sample>,
    /// Counter movements over this path's measurements (socket-LB rows).
    proof: Proof,
    /// A node to run `ferry-agent monitor --type all` on while this path
    /// is measured (the listener's cost), and the events it printed.
    monitor: Option<&'a Node>,
    monitor_events: u64,
}

/// `ferry-agent monitor --type all` on `node`, its events counted as they
/// are printed, until the returned guard is finished.
struct Listener {
    child: std::process::Child,
    reader: std::thread::JoinHandle<u64>,
}

impl Listener {
    fn start(node: &Node) -> Result<Self> {
        use std::io::{BufRead, BufReader};
        let mut child = node.spawn_monitor(&["--type", "all"])?;
        // It says "listening" on stderr once the events are switched on.
        let stderr = child.stderr.take().expect("piped");
        let mut ready = String::new();
        BufReader::new(stderr).read_line(&mut ready)?;
        if !ready.contains("listening") {
            let _ = child.kill();
            bail!("ferry-agent monitor did not start: {ready}");
        }
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || BufReader::new(stdout).lines().count() as u64);
        Ok(Self { child, reader })
    }

    /// Stop it (it switches the events off as it goes); the events it saw.
    fn finish(mut self) -> Result<u64> {
        // SIGINT: the monitor's clean stop.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        Ok(self.reader.join().unwrap_or(0))
    }
}

/// What a node's counters moved by while a socket-LB row was measured,
/// against the connections it made: every connection translated at
/// connect() (`sock_translated`), none by tc (`translated`).
#[derive(Clone, Copy, Debug, Default)]
struct Proof {
    connections: u64,
    sock_translated: u64,
    tc_translated: u64,
}

impl Proof {
    fn holds(&self) -> bool {
        self.connections > 0 && self.sock_translated >= self.connections && self.tc_translated == 0
    }
}

/// The node's datapath counters: outcome name -> packets.
pub(super) fn counters(node: &Node) -> Result<BTreeMap<String, u64>> {
    let text = node.inspect("counters")?;
    let map: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            let packets = words.next()?.parse().ok()?;
            Some((name.to_string(), packets))
        })
        .collect();
    if !map.contains_key("translated") || !map.contains_key("sock_translated") {
        bail!("no translated / sock_translated counters in `inspect counters`:\n{text}");
    }
    Ok(map)
}

/// How far `key` moved from `before` to `after`.
fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    after[key].saturating_sub(before[key])
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
fn measure(path: &mut ClientPath, load: &Path, opts: &Opts) -> Result<Sample> {
    let before = path.socket_lb.map(counters).transpose()?;
    let listener = path.monitor.map(Listener::start).transpose()?;
    let crr = concurrent_in(&path.client_ns, path.cgroup, load, "crr", path.target, opts)?;
    let rr = load_json_in(
        &path.client_ns,
        path.cgroup,
        load,
        &[
            "rr".into(),
            path.target.to_string(),
            opts.seconds.to_string(),
        ],
    )?;
    if let Some(listener) = listener {
        path.monitor_events += listener.finish()?;
    }
    if let Some(e) = first_error(&crr) {
        eprintln!("    {}: first connection error: {e}", path.label);
    }
    if let (Some(node), Some(before)) = (path.socket_lb, before) {
        let after = counters(node)?;
        // Every connection attempted, failed ones too, and rr's one.
        path.proof.connections +=
            num(&crr, "connections") as u64 + crr["errors"].as_u64().unwrap_or(0) + 1;
        path.proof.sock_translated += moved(&before, &after, "sock_translated");
        path.proof.tc_translated += moved(&before, &after, "translated");
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
pub fn run<'a>(
    bed: &'a Testbed,
    load: &Path,
    opts: &Opts,
    n: usize,
    small_vip: Ipv4Addr,
    large_vip: Ipv4Addr,
    kube_proxy: super::kube_proxy::Extent,
) -> Result<(Report, Rates)> {
    let part = match kube_proxy {
        super::kube_proxy::Extent::Whole => "",
        super::kube_proxy::Extent::Walked => ", walked part",
    };
    let path = |label: String, client_ns: PathBuf, target: (Ipv4Addr, u16)| ClientPath {
        label,
        client_ns,
        cgroup: None,
        socket_lb: None,
        target: target.into(),
        samples: vec![],
        proof: Proof::default(),
        monitor: None,
        monitor_events: 0,
    };
    // The same node, maps and target as (b)/(c); the client in the client
    // pod's cgroup, where the node's connect4 program translates it.
    let socket_lb =
        |label: String, ferry: &'a super::testbed::FerryNode, vip: Ipv4Addr| ClientPath {
            cgroup: Some(&ferry.client.cgroup),
            socket_lb: Some(&ferry.node),
            ..path(label, ferry.client.netns.path(), (vip, SERVICE_PORT))
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
        ClientPath {
            monitor: Some(&bed.ferry_small.node),
            ..path(
                "(b) with `ferry-agent monitor --type all` on".into(),
                bed.ferry_small.client.netns.path(),
                (small_vip, SERVICE_PORT),
            )
        },
        path(
            "    ferry direct to pod IP (no translation)".into(),
            bed.ferry_small.client.netns.path(),
            (SERVER_IP, SERVER_PORT),
        ),
        path(
            format!("(d) kube-proxy iptables, {n} services{part}"),
            bed.iptables.client.netns.path(),
            (large_vip, SERVICE_PORT),
        ),
        path(
            format!("(e) kube-proxy nftables, {n} services{part}"),
            bed.nftables.client.netns.path(),
            (large_vip, SERVICE_PORT),
        ),
        socket_lb(
            "(f) ferry ClusterIP, socket LB, 10 services".into(),
            &bed.ferry_small,
            small_vip,
        ),
        socket_lb(
            format!("(g) ferry ClusterIP, socket LB, {n} services"),
            &bed.ferry_large,
            large_vip,
        ),
    ];
    for p in &paths {
        wait_reachable_in(&p.client_ns, p.cgroup, load, p.target)?;
    }

    println!(
        "==> {NAME}: {} rounds; per path {} s of connections ({} concurrent clients: connect, 1-byte request, 1-byte response, close) then {} s of 1-byte request/response on one connection",
        opts.rounds, opts.seconds, opts.clients, opts.seconds
    );
    let count = paths.len();
    // The agents' CPU over every round, in 1-s windows.
    let sample = |f: &super::testbed::FerryNode| f.node.agent_pid().map(CpuSampler::start);
    let cpu = (sample(&bed.ferry_small), sample(&bed.ferry_large));
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

    let windows = |s: Option<CpuSampler>| s.map(CpuSampler::finish).unwrap_or_default();
    let (cpu_small, cpu_large) = (windows(cpu.0), windows(cpu.1));
    let mut report = Report::default();
    let busiest = cpu_small
        .iter()
        .chain(&cpu_large)
        .copied()
        .fold(0.0, f64::max);
    report.line(format!(
        "agent CPU during these runs: ferry-10 {}; ferry-large ({n} services) {}; no window above 10% of a core (issue 15): {}",
        super::cpu::describe(&cpu_small),
        super::cpu::describe(&cpu_large),
        if busiest <= 0.10 { "met" } else { "NOT met" }
    ));
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
    let spread_of = |p: &ClientPath, f: fn(&Sample) -> f64| {
        spread(&p.samples.iter().map(f).collect::<Vec<_>>())
    };
    let mut table = Table::new(
        ("path (median over rounds, ± their spread)", 48),
        &[
            ("conn/s", 9),
            ("±", 5),
            ("vs (a)", 8),
            ("p50 us", 9),
            ("±", 5),
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
                Cell::Spread(spread_of(p, |x| x.rate)),
                Cell::Ratio(rate / base_rate),
                Cell::Micros(p50),
                Cell::Spread(spread_of(p, |x| x.p50_us)),
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
    // The socket-LB rows went through socket LB: the node's connect4
    // translated every connection, tc translated nothing meanwhile.
    for p in paths.iter().filter(|p| p.socket_lb.is_some()) {
        let Proof {
            connections,
            sock_translated,
            tc_translated,
        } = p.proof;
        report.line(format!(
            "{}: {connections} connections; over them the node counted sock_translated +{sock_translated}, tc translated +{tc_translated}: {}",
            p.label.trim(),
            if p.proof.holds() {
                "every connection translated at connect(), none by tc"
            } else {
                "NOT all through socket LB"
            }
        ));
    }
    // The listener's cost: the same path as (b), a monitor printing every
    // new flow meanwhile. With nobody listening, (b) is the cost.
    let listened = &paths[3];
    report.line(format!(
        "(b) with a monitor listening: {:.3}x (b)'s connection rate, p50 {:.3}x; the monitor printed {} events ({:.2} per connection)",
        medians[3].0 / medians[1].0,
        medians[3].1 / medians[1].1,
        listened.monitor_events,
        listened.monitor_events as f64
            / (medians[3].0 * opts.seconds * opts.rounds as f64).max(1.0),
    ));
    let rates = Rates {
        direct: medians[0].0,
        ferry_small: medians[1].0,
        ferry_large: medians[2].0,
        iptables: medians[5].0,
        nftables: medians[6].0,
        socket_lb_small: medians[7].0,
        socket_lb_large: medians[8].0,
    };
    let rate = |i: usize| medians[i].0 / base_rate;
    for (what, i, goal) in [
        ("(b)", 1, TARGET_CLUSTER_IP_RATE),
        ("(c)", 2, TARGET_CLUSTER_IP_RATE),
        (
            "ferry direct to pod IP (no translation)",
            4,
            TARGET_NO_TRANSLATION_RATE,
        ),
        ("(f)", 7, TARGET_SOCKET_LB_RATE),
        ("(g)", 8, TARGET_SOCKET_LB_RATE),
    ] {
        report.target(Target {
            what: format!("{what} >= {goal:.2}x (a) connection rate"),
            ratio: rate(i),
            goal,
        });
    }
    let over_iptables = rates.ferry_large / rates.iptables;
    if n >= TARGET_OVER_IPTABLES_AT {
        report.target(Target {
            what: format!(
                "(c) >= {TARGET_OVER_IPTABLES:.2}x (d) connection rate, {n} services (issue 15)"
            ),
            ratio: over_iptables,
            goal: TARGET_OVER_IPTABLES,
        });
    } else {
        report.line(format!(
            "(c) against (d), {n} services: {over_iptables:.2}x the connection rate"
        ));
    }
    Ok((report, rates))
}
