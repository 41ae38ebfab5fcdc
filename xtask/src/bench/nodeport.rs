//! Scenario "nodeport": an external client -> a NodePort on a node without
//! the backend -> the backend pod on another node, so every flow is
//! source-NATed to the entry node. ferry with XDP on the uplink, ferry tc
//! only, and kube-proxy's iptables NodePort rules (with MASQUERADE) on
//! plain nodes, holding as many Services as ferry and only 10; connection
//! rate, UDP request/response and one-way UDP packets per second, as
//! ratios against kube-proxy with the same Services.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use ferry_harness::{Binaries, Cluster, Fabric, Netns, Node, PlainNode, PlainPod, Pod, manifest};

use super::{
    Opts, SERVER_PORT, ServiceSpec, as_strs, datapath_drops, kube_proxy,
    programming::timed_load,
    report::{Cell, Report, Table, Target},
    serve_args, service_set,
    traffic::{
        concurrent, first_error, load_json, median, num, spread, tune_client, wait_reachable,
    },
};

pub const NAME: &str = "nodeport";

/// The XDP entry node's connection rate against kube-proxy's with the same
/// Services.
const TARGET_XDP_RATE: f64 = 2.0;

const NODEPORT_TCP: u16 = 30080;
const NODEPORT_UDP: u16 = 30053;
/// One-way UDP for packets per second: to the backends' sink port.
const NODEPORT_BLAST: u16 = 30054;
const SINK_PORT: u16 = 9090;

/// `ferry-load sink` on SINK_PORT, counting into `file`.
fn sink_args(file: &std::path::Path) -> [String; 3] {
    [
        "sink".into(),
        SINK_PORT.to_string(),
        file.display().to_string(),
    ]
}
const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
/// (name, fabric address, pod CIDR, agent arguments)
const NODEPORT_FERRY_NODES: [(&str, Ipv4Addr, &str, &[&str]); 3] = [
    (
        "np-xdp",
        Ipv4Addr::new(192, 168, 77, 11),
        "10.244.1.0/24",
        &["--xdp", "generic"],
    ),
    (
        "np-backend",
        Ipv4Addr::new(192, 168, 77, 12),
        "10.244.2.0/24",
        &[],
    ),
    (
        "np-tc",
        Ipv4Addr::new(192, 168, 77, 13),
        "10.244.3.0/24",
        &[],
    ),
];
const KP_ENTRY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 21);
const KP_BACKEND_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 22);
const KP_ENTRY_LARGE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 23);
const KP_SERVER: Ipv4Addr = Ipv4Addr::new(10, 245, 2, 3);
const KP_BACKEND_POD_CIDR: &str = "10.245.2.0/24";

/// External client -> NodePort on a node without the backend -> backend
/// pod on another node: ferry (XDP), ferry (tc only) and kube-proxy's
/// iptables NodePort rules (with MASQUERADE) on the same fabric.
struct NodePortSetup {
    _outside: Netns,
    _kp_server: PlainPod,
    _kp_nodes: Vec<PlainNode>,
    _server: Pod,
    _nodes: Vec<Node>,
    _cluster: Cluster,
    _fabric: Fabric,
    outside_path: PathBuf,
    iptables_ms: f64,
    ferry_sink: PathBuf,
    kp_sink: PathBuf,
}

/// A plain node on the fabric at `addr` that routes the kube-proxy backend
/// node's pod CIDR to it natively and holds `rules` (iptables-restore
/// input, kube-proxy's NodePort chains); how long loading them took.
fn kube_proxy_entry(
    run_id: &str,
    fabric: &Fabric,
    name: &str,
    addr: Ipv4Addr,
    rules: &str,
) -> Result<(PlainNode, Duration)> {
    let node = PlainNode::create(run_id, name)?;
    fabric.connect(&node.netns, "eth0", addr, 24)?;
    node.netns.exec(&[
        "ip",
        "route",
        "add",
        KP_BACKEND_POD_CIDR,
        "via",
        &KP_BACKEND_NODE.to_string(),
    ])?;
    let took = timed_load(&node.netns, kube_proxy::IPTABLES_RESTORE, &[], rules)?;
    Ok((node, took))
}

/// The sink's (unix ms, datagrams so far).
fn sink_reading(file: &Path) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("the packet sink has written nothing to {}", file.display()))?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(ms)), Some(Ok(n))) => Ok((ms, n)),
        _ => bail!("unreadable sink state {text:?} in {}", file.display()),
    }
}

impl NodePortSetup {
    fn create(
        bins: &Binaries,
        load: &Path,
        small: &[ServiceSpec],
        large: &[ServiceSpec],
    ) -> Result<Self> {
        let cluster = Cluster::new(bins.clone())?;
        let fabric = Fabric::create(&cluster.run_id)?;
        let node_docs: Vec<String> = NODEPORT_FERRY_NODES
            .iter()
            .map(|(n, a, cidr, _)| manifest::node_with_address(n, cidr, *a))
            .collect();
        cluster.write_manifest(&manifest::join(&node_docs))?;
        // Maps sized for the large set, as the ClusterIP nodes' are: at the
        // defaults, more than 16,384 frontends fill the services map.
        let sizes = super::testbed::map_size_args(large.len());
        let mut nodes = Vec::new();
        for (name, addr, _, extra) in NODEPORT_FERRY_NODES {
            let args: Vec<&str> = extra
                .iter()
                .copied()
                .chain(sizes.iter().map(String::as_str))
                .collect();
            nodes.push(cluster.node_on_fabric_with(name, &fabric, addr, "native", &args)?);
        }
        let mut server = nodes[1].add_pod("server")?;
        server.spawn(load, &as_strs(&serve_args()))?;
        let mut docs = node_docs;
        docs.push(manifest::node_port_service(
            "web",
            "NodePort",
            Ipv4Addr::new(10, 96, 0, 10),
            "",
            &[
                ("http", 80, "TCP", SERVER_PORT, NODEPORT_TCP),
                ("dns", 53, "UDP", SERVER_PORT, NODEPORT_UDP),
                ("blast", 54, "UDP", SINK_PORT, NODEPORT_BLAST),
            ],
        ));
        docs.push(manifest::endpoint_slice_on_nodes(
            "web",
            &[(server.ip, NODEPORT_FERRY_NODES[1].0)],
            &[
                ("http", SERVER_PORT, "TCP"),
                ("dns", SERVER_PORT, "UDP"),
                ("blast", SINK_PORT, "UDP"),
            ],
        ));
        let ferry_sink = cluster.root.join("sink-ferry");
        server.spawn(load, &as_strs(&sink_args(&ferry_sink)))?;
        // ferry holds as many Services as the larger kube-proxy rule set.
        for svc in large {
            docs.extend(svc.docs(NODEPORT_FERRY_NODES[1].0));
        }
        cluster.write_manifest(&manifest::join(&docs))?;

        // kube-proxy's NodePort: an entry node with its rules, the backend
        // on another node, routed natively.
        let mut kp_backend = PlainNode::create(&cluster.run_id, "kp-backend")?;
        fabric.connect(&kp_backend.netns, "eth0", KP_BACKEND_NODE, 24)?;
        let mut kp_server = kp_backend.add_pod("server", KP_SERVER)?;
        kp_server.spawn(load, &as_strs(&serve_args()))?;
        let kp_sink = cluster.root.join("sink-kube-proxy");
        kp_server.spawn(load, &as_strs(&sink_args(&kp_sink)))?;
        let nodeports = [
            kube_proxy::NodePortSpec {
                name: "web",
                protocol: "tcp",
                node_port: NODEPORT_TCP,
                endpoint: KP_SERVER,
                target_port: SERVER_PORT,
            },
            kube_proxy::NodePortSpec {
                name: "web",
                protocol: "udp",
                node_port: NODEPORT_UDP,
                endpoint: KP_SERVER,
                target_port: SERVER_PORT,
            },
            kube_proxy::NodePortSpec {
                name: "blast",
                protocol: "udp",
                node_port: NODEPORT_BLAST,
                endpoint: KP_SERVER,
                target_port: SINK_PORT,
            },
        ];
        let entry = |name, addr, services| {
            let rules = kube_proxy::iptables_with_nodeports(services, &nodeports);
            kube_proxy_entry(&cluster.run_id, &fabric, name, addr, &rules)
        };
        let (kp_entry, iptables) = entry("kp-entry", KP_ENTRY, small)?;
        let (kp_entry_large, _) = entry("kp-entry-large", KP_ENTRY_LARGE, large)?;

        let outside = Netns::create(&format!("fry-{}-outside", cluster.run_id))?;
        fabric.connect(&outside, "eth0", OUTSIDE_ADDR, 24)?;
        tune_client(&outside)?;
        // Full checksums on every endpoint, as on a physical network: XDP's
        // incremental update needs them, and every path pays the same.
        outside.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        server.full_checksums()?;
        kp_server
            .netns
            .exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        Ok(Self {
            ferry_sink,
            kp_sink,
            outside_path: outside.path(),
            _outside: outside,
            _kp_server: kp_server,
            _kp_nodes: vec![kp_entry, kp_entry_large, kp_backend],
            _server: server,
            _nodes: nodes,
            _cluster: cluster,
            _fabric: fabric,
            iptables_ms: iptables.as_secs_f64() * 1e3,
        })
    }
}

/// Packets the kernel dropped because a CPU's receive backlog was full
/// (/proc/net/softnet_stat, second column, summed over CPUs): on these
/// VMs every namespace's traffic shares them.
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

/// One entry node the external client asks, and its samples so far.
struct EntryPath {
    label: &'static str,
    entry: Ipv4Addr,
    conn: Vec<f64>,
    udp: Vec<f64>,
    pps: Vec<f64>,
}

impl EntryPath {
    fn new(label: &'static str, entry: Ipv4Addr) -> Self {
        Self {
            label,
            entry,
            conn: vec![],
            udp: vec![],
            pps: vec![],
        }
    }
}

pub fn run(bins: &Binaries, load: &Path, opts: &Opts) -> Result<Report> {
    // Compared with kube-proxy's iptables rules for the same Services: no
    // more of them than kube-proxy's rule sets are loaded for.
    let services = opts.largest().min(opts.kube_proxy_up_to);
    println!(
        "==> {NAME}: external client -> node without the backend -> backend on another node ({services} services loaded)"
    );
    let (small, _) = service_set(10);
    // Not the ClusterIP benchmark's addresses: endpoints on the backend node.
    let (large, _) = service_set(services);
    let setup = NodePortSetup::create(bins, load, &small, &large)?;
    let mut paths = [
        EntryPath::new(
            "ferry, XDP on the uplink (generic)",
            NODEPORT_FERRY_NODES[0].1,
        ),
        EntryPath::new("ferry, tc only", NODEPORT_FERRY_NODES[2].1),
        EntryPath::new(
            "kube-proxy iptables, same Services as ferry",
            KP_ENTRY_LARGE,
        ),
        EntryPath::new("kube-proxy iptables, 10 Services", KP_ENTRY),
    ];
    for s in &paths {
        wait_reachable(&setup.outside_path, load, (s.entry, NODEPORT_TCP).into())?;
    }
    let count = paths.len();
    for round in 1..=opts.rounds {
        for k in 0..count {
            let s = &mut paths[(k + round - 1) % count];
            let backlog_before = backlog_drops();
            let outside = &setup.outside_path;
            let run = |mode, port| {
                concurrent(outside, load, mode, SocketAddr::from((s.entry, port)), opts)
            };
            let crr = run("crr", NODEPORT_TCP)?;
            let udp = run("udp", NODEPORT_UDP)?;
            let sink = if s.entry == KP_ENTRY || s.entry == KP_ENTRY_LARGE {
                &setup.kp_sink
            } else {
                &setup.ferry_sink
            };
            let (_, before) = sink_reading(sink)?;
            let blast = load_json(
                &setup.outside_path,
                load,
                &[
                    "blast".into(),
                    format!("{}:{NODEPORT_BLAST}", s.entry),
                    opts.seconds.to_string(),
                ],
            )?;
            // Let the last datagrams land and the sink write its count.
            std::thread::sleep(Duration::from_millis(400));
            let (_, after) = sink_reading(sink)?;
            if let Some(e) = first_error(&crr) {
                eprintln!(
                    "    {}: first connection error: {e} (the kernel's per-CPU backlog dropped {} packets during the connection test)",
                    s.label,
                    backlog_drops().saturating_sub(backlog_before)
                );
            }
            let pps = (after - before) as f64 / num(&blast, "seconds");
            s.pps.push(pps);
            let conn = num(&crr, "connections") / num(&crr, "seconds");
            let exchanges = num(&udp, "exchanges") / num(&udp, "seconds");
            println!(
                "    round {round}: {:<44} {conn:>9.0} conn/s  {:>9.0} UDP req/resp pkts/s  {pps:>9.0} one-way pkts/s{}",
                s.label,
                2.0 * exchanges,
                match crr["errors"].as_u64() {
                    Some(e) if e > 0 => format!("  ({e} failed connections)"),
                    _ => String::new(),
                }
            );
            s.conn.push(conn);
            s.udp.push(2.0 * exchanges);
        }
    }
    // Ratios against kube-proxy holding the same Services as ferry (rule
    // sets of the same size); the 10-Service rule set, the most favourable
    // to kube-proxy, is reported beside it.
    let med = |s: &EntryPath| {
        (
            median(s.conn.clone()),
            median(s.udp.clone()),
            median(s.pps.clone()),
        )
    };
    let (kp_conn, kp_udp, kp_pps) = med(&paths[2]);
    let (small_conn, _, small_pps) = med(&paths[3]);
    let mut report = Report::default();
    report.line(format!(
        "\nNodePort, external client -> node -> backend pod on another node (native routing), {} clients; ferry and kube-proxy hold {} Services",
        opts.clients,
        services + 1
    ));
    let mut table = Table::new(
        ("path (median over rounds, ± their spread)", 44),
        &[
            ("conn/s", 8),
            ("±", 5),
            ("vs ipt", 7),
            ("UDP rr pps", 12),
            ("±", 5),
            ("vs ipt", 7),
            ("one-way pps", 12),
            ("±", 5),
            ("vs ipt", 7),
        ],
    );
    for s in &paths {
        let (c, u, p) = med(s);
        table.row(
            s.label,
            vec![
                Cell::Rate(c),
                Cell::Spread(spread(&s.conn)),
                Cell::Ratio(c / kp_conn),
                Cell::Rate(u),
                Cell::Spread(spread(&s.udp)),
                Cell::Ratio(u / kp_udp),
                Cell::Rate(p),
                Cell::Spread(spread(&s.pps)),
                Cell::Ratio(p / kp_pps),
            ],
        );
    }
    report.table(table);
    for node in &setup._nodes {
        report.line(format!(
            "{} datapath drops: {}",
            node.name,
            datapath_drops(node)?
        ));
    }
    let (xdp_conn, _, xdp_pps) = med(&paths[0]);
    report.line(format!(
        "(iptables-restore of the 10-Service rule set: {:.0} ms)",
        setup.iptables_ms
    ));
    report.line(format!(
        "ferry XDP against kube-proxy with only 10 Services: {:.2}x conn/s, {:.2}x one-way pps",
        xdp_conn / small_conn,
        xdp_pps / small_pps
    ));
    report.target(Target {
        what: format!(
            "ferry XDP >= {TARGET_XDP_RATE}x iptables NodePort connection rate (same Services)"
        ),
        ratio: xdp_conn / kp_conn,
        goal: TARGET_XDP_RATE,
    });
    drop(setup);
    Ok(report)
}
