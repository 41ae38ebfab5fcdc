//! `cargo xtask bench`: ferry against the direct pod-IP path and against
//! kube-proxy-shaped rule sets, side by side in one run, as ratios.
//!
//! Every path is measured between two pods on one node with the same
//! addressing (a /32 per pod, a link-local gateway), the same load
//! generator and the same server; only what sits between them changes.
//! Rounds interleave the scenarios so that a noisy moment on the machine
//! hurts all of them alike, and each figure is the median over rounds.
mod kube_proxy;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ferry_harness::{
    Binaries, Cluster, Fabric, Netns, Node, PlainNode, PlainPod, Pod, manifest,
    packet::{Packet, TCP_ACK, TCP_SYN},
};
use serde_json::Value;

const POD_CIDR: &str = "10.244.1.0/24";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const SERVER_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const ENDPOINTS_PER_SERVICE: usize = 10;
/// Server threads: more than the concurrent clients, so none waits.
const SERVER_THREADS: &str = "16";
const NFT_SERVICES_PER_TRANSACTION: usize = 500;

#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Rounds over all scenarios; each figure is the median.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per connection-rate and per latency measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Concurrent connecting clients for the connection rate.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Services in the large scenarios (each with 10 endpoints).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Only the NodePort comparison.
    #[arg(long)]
    nodeport_only: bool,
}

/// One ClusterIP Service port of the benchmark's object set.
pub struct ServiceSpec {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
}

/// `count` Services of ENDPOINTS_PER_SERVICE endpoints each on addresses
/// nothing answers, except the measured one, in the middle of the list (as
/// an average Service sits in kube-proxy's KUBE-SERVICES chain), whose one
/// endpoint is the server pod.
fn service_set(count: usize) -> (Vec<ServiceSpec>, Ipv4Addr) {
    let measured = count / 2;
    let vip = |i: usize| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 16)) + i as u32);
    let services = (0..count)
        .map(|i| ServiceSpec {
            name: format!("svc-{i}"),
            vip: vip(i),
            port: SERVICE_PORT,
            target_port: SERVER_PORT,
            endpoints: if i == measured {
                vec![SERVER_IP]
            } else {
                (0..ENDPOINTS_PER_SERVICE)
                    .map(|j| {
                        Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(10, 128, 0, 0))
                                + (i * ENDPOINTS_PER_SERVICE + j) as u32,
                        )
                    })
                    .collect()
            },
        })
        .collect();
    (services, vip(measured))
}

fn ferry_manifest(node: &str, services: &[ServiceSpec]) -> String {
    let mut docs = vec![manifest::node(node, POD_CIDR)];
    for s in services {
        docs.push(manifest::service(
            &s.name,
            s.vip,
            &[("http", s.port, "TCP", s.target_port)],
        ));
        docs.push(manifest::endpoint_slice(
            &s.name,
            node,
            &s.endpoints,
            &[("http", s.target_port, "TCP")],
        ));
    }
    manifest::join(&docs)
}

/// Client sockets close first and land in TIME_WAIT; let connect reuse
/// them, and use the whole port range, so the rate measures the path
/// rather than port exhaustion.
fn tune_client(ns: &Netns) -> Result<()> {
    ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
    Ok(())
}

/// A ferry node, its own cluster and manifest, a client and a server pod.
/// Fields drop in order: pods, then the node, then the cluster's files.
struct FerryNode {
    client: Pod,
    _server: Pod,
    node: Node,
    cluster: Cluster,
}

impl FerryNode {
    fn create(bins: &Binaries, load: &Path, name: &str) -> Result<Self> {
        let cluster = Cluster::new(bins.clone())?;
        cluster.write_manifest(&manifest::node(name, POD_CIDR))?;
        let node = cluster.node(name)?;
        let client = node.add_pod("client")?;
        let mut server = node.add_pod("server")?;
        if (client.ip, server.ip) != (CLIENT_IP, SERVER_IP) {
            bail!(
                "ferry-cni gave {} and {}, the bench expects {CLIENT_IP} and {SERVER_IP}",
                client.ip,
                server.ip
            );
        }
        server.spawn(load, &["serve", &SERVER_PORT.to_string(), SERVER_THREADS])?;
        tune_client(&client.netns)?;
        Ok(Self {
            client,
            _server: server,
            node,
            cluster,
        })
    }

    /// Write `services` and wait for the agent's sync; its log line.
    fn load_services(&self, services: &[ServiceSpec]) -> Result<SyncLine> {
        let before = sync_lines(&self.node.log)?.len();
        self.cluster
            .write_manifest(&ferry_manifest(&self.node.name, services))?;
        let start = Instant::now();
        loop {
            let lines = sync_lines(&self.node.log)?;
            if lines.len() > before {
                return Ok(lines[before].clone());
            }
            if start.elapsed() > Duration::from_secs(300) {
                bail!(
                    "ferry-agent did not sync {} services within 300 s:\n{}",
                    services.len(),
                    self.node.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The agent's "synced" log fields: `key=value` pairs.
#[derive(Clone, Debug)]
struct SyncLine(Vec<(String, String)>);

impl SyncLine {
    fn ms(&self, key: &str) -> f64 {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

fn sync_lines(log: &Path) -> Result<Vec<SyncLine>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok(text
        .lines()
        .filter(|l| l.contains(" synced "))
        .map(|l| {
            SyncLine(
                l.split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        })
        .collect())
}

/// A node without ferry, a client and a server pod; optionally a rule set.
struct PlainSetup {
    client: PlainPod,
    _server: PlainPod,
    node: PlainNode,
}

impl PlainSetup {
    fn create(run_id: &str, name: &str, load: &Path) -> Result<Self> {
        let mut node = PlainNode::create(run_id, name)?;
        let client = node.add_pod("client", CLIENT_IP)?;
        let mut server = node.add_pod("server", SERVER_IP)?;
        server.spawn(load, &["serve", &SERVER_PORT.to_string(), SERVER_THREADS])?;
        tune_client(&client.netns)?;
        Ok(Self {
            client,
            _server: server,
            node,
        })
    }
}

/// Feed `input` to `program args` inside `ns`; how long it took.
fn timed_load(ns: &Netns, program: &str, args: &[&str], input: &str) -> Result<Duration> {
    use std::io::Write;
    let start = Instant::now();
    let mut child = ns
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} (cargo xtask setup installs it)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(start.elapsed())
}

struct Scenario {
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

fn load_json(client_ns: &Path, load: &Path, args: &[String]) -> Result<Value> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", client_ns.display()))
        .arg("--")
        .arg(load)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "ferry-load {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn measure(s: &Scenario, load: &Path, opts: &Opts) -> Result<Sample> {
    let target = s.target.to_string();
    let crr = load_json(
        &s.client_ns,
        load,
        &[
            "crr".into(),
            target.clone(),
            opts.clients.to_string(),
            opts.seconds.to_string(),
        ],
    )?;
    let rr = load_json(
        &s.client_ns,
        load,
        &["rr".into(), target, opts.seconds.to_string()],
    )?;
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    if let Some(e) = crr["first_error"].as_str().filter(|e| !e.is_empty()) {
        eprintln!("    {}: first connection error: {e}", s.label);
    }
    Ok(Sample {
        rate: num(&crr, "connections") / num(&crr, "seconds"),
        errors: crr["errors"].as_u64().unwrap_or(0),
        p50_us: num(&rr, "p50_ns") / 1e3,
        p99_us: num(&rr, "p99_ns") / 1e3,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Wait until `target` answers from `client_ns` (rules and maps in place).
fn wait_reachable(client_ns: &Path, load: &Path, target: SocketAddr) -> Result<()> {
    let start = Instant::now();
    loop {
        let ok = load_json(
            client_ns,
            load,
            &["rr".into(), target.to_string(), "0.05".into()],
        );
        if ok.is_ok() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "{target} never answered from {}: {ok:?}",
                client_ns.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tool_version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| format!("{program} (version unknown)"))
}

const NODEPORT_TCP: u16 = 30080;
const NODEPORT_UDP: u16 = 30053;
/// One-way UDP for packets per second: to the backends' sink port.
const NODEPORT_BLAST: u16 = 30054;
const SINK_PORT: u16 = 9090;
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
        let mut nodes = Vec::new();
        for (name, addr, _, extra) in NODEPORT_FERRY_NODES {
            nodes.push(cluster.node_on_fabric_with(name, &fabric, addr, "native", extra)?);
        }
        let mut server = nodes[1].add_pod("server")?;
        server.spawn(load, &["serve", &SERVER_PORT.to_string(), SERVER_THREADS])?;
        let mut docs = node_docs;
        docs.push(format!(
            "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: {SERVER_PORT}, nodePort: {NODEPORT_TCP}}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: {SERVER_PORT}, nodePort: {NODEPORT_UDP}}}
  - {{name: blast, port: 54, protocol: UDP, targetPort: {SINK_PORT}, nodePort: {NODEPORT_BLAST}}}
"
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
        server.spawn(
            load,
            &[
                "sink",
                &SINK_PORT.to_string(),
                &ferry_sink.display().to_string(),
            ],
        )?;
        // ferry holds as many Services as the larger kube-proxy rule set.
        for svc in large {
            docs.push(manifest::service(
                &svc.name,
                svc.vip,
                &[("http", svc.port, "TCP", svc.target_port)],
            ));
            docs.push(manifest::endpoint_slice_on_nodes(
                &svc.name,
                &svc.endpoints
                    .iter()
                    .map(|a| (*a, NODEPORT_FERRY_NODES[1].0))
                    .collect::<Vec<_>>(),
                &[("http", svc.target_port, "TCP")],
            ));
        }
        cluster.write_manifest(&manifest::join(&docs))?;

        // kube-proxy's NodePort: an entry node with its rules, the backend
        // on another node, routed natively.
        let mut kp_entry = PlainNode::create(&cluster.run_id, "kp-entry")?;
        fabric.connect(&kp_entry.netns, "eth0", KP_ENTRY, 24)?;
        let mut kp_backend = PlainNode::create(&cluster.run_id, "kp-backend")?;
        fabric.connect(&kp_backend.netns, "eth0", KP_BACKEND_NODE, 24)?;
        kp_entry.netns.exec(&[
            "ip",
            "route",
            "add",
            "10.245.2.0/24",
            "via",
            &KP_BACKEND_NODE.to_string(),
        ])?;
        let mut kp_server = kp_backend.add_pod("server", KP_SERVER)?;
        kp_server.spawn(load, &["serve", &SERVER_PORT.to_string(), SERVER_THREADS])?;
        let kp_sink = cluster.root.join("sink-kube-proxy");
        kp_server.spawn(
            load,
            &[
                "sink",
                &SINK_PORT.to_string(),
                &kp_sink.display().to_string(),
            ],
        )?;
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
        let rules = kube_proxy::iptables_with_nodeports(small, &nodeports);
        let iptables = timed_load(&kp_entry.netns, "iptables-restore", &[], &rules)?;
        let kp_entry_large = PlainNode::create(&cluster.run_id, "kp-entry-large")?;
        fabric.connect(&kp_entry_large.netns, "eth0", KP_ENTRY_LARGE, 24)?;
        kp_entry_large.netns.exec(&[
            "ip",
            "route",
            "add",
            "10.245.2.0/24",
            "via",
            &KP_BACKEND_NODE.to_string(),
        ])?;
        let rules = kube_proxy::iptables_with_nodeports(large, &nodeports);
        timed_load(&kp_entry_large.netns, "iptables-restore", &[], &rules)?;
        let _ = &mut kp_entry;

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

/// What a node's datapath dropped or rejected, by outcome ("none" if
/// nothing): anything ferry dropped is named, not hidden in a rate.
fn datapath_drops(node: &Node) -> Result<String> {
    let drops: Vec<String> = node
        .inspect("counters")?
        .lines()
        .filter(|l| l.starts_with("drop_") || l.starts_with("rejected"))
        .filter(|l| l.split_whitespace().nth(1) != Some("0"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("="))
        .collect();
    Ok(if drops.is_empty() {
        "none".to_string()
    } else {
        drops.join(", ")
    })
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

struct NodePortScenario {
    label: &'static str,
    entry: Ipv4Addr,
    conn: Vec<f64>,
    udp: Vec<f64>,
    pps: Vec<f64>,
}

fn nodeport_bench(bins: &Binaries, load: &Path, opts: &Opts, report: &mut String) -> Result<()> {
    println!(
        "==> NodePort: external client -> node without the backend -> backend on another node ({} services loaded)",
        opts.services
    );
    let (small, _) = service_set(10);
    // Not the ClusterIP benchmark's addresses: endpoints on the backend node.
    let (large, _) = service_set(opts.services);
    let setup = NodePortSetup::create(bins, load, &small, &large)?;
    let mut scenarios = [
        NodePortScenario {
            label: "ferry, XDP on the uplink (generic)",
            entry: NODEPORT_FERRY_NODES[0].1,
            conn: vec![],
            udp: vec![],
            pps: vec![],
        },
        NodePortScenario {
            label: "ferry, tc only",
            entry: NODEPORT_FERRY_NODES[2].1,
            conn: vec![],
            udp: vec![],
            pps: vec![],
        },
        NodePortScenario {
            label: "kube-proxy iptables, same Services as ferry",
            entry: KP_ENTRY_LARGE,
            conn: vec![],
            udp: vec![],
            pps: vec![],
        },
        NodePortScenario {
            label: "kube-proxy iptables, 10 Services",
            entry: KP_ENTRY,
            conn: vec![],
            udp: vec![],
            pps: vec![],
        },
    ];
    for s in &scenarios {
        wait_reachable(&setup.outside_path, load, (s.entry, NODEPORT_TCP).into())?;
    }
    let count = scenarios.len();
    for round in 1..=opts.rounds {
        for k in 0..count {
            let s = &mut scenarios[(k + round - 1) % count];
            let backlog_before = backlog_drops();
            let crr = load_json(
                &setup.outside_path,
                load,
                &[
                    "crr".into(),
                    format!("{}:{NODEPORT_TCP}", s.entry),
                    opts.clients.to_string(),
                    opts.seconds.to_string(),
                ],
            )?;
            let udp = load_json(
                &setup.outside_path,
                load,
                &[
                    "udp".into(),
                    format!("{}:{NODEPORT_UDP}", s.entry),
                    opts.clients.to_string(),
                    opts.seconds.to_string(),
                ],
            )?;
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
            if let Some(e) = crr["first_error"].as_str().filter(|e| !e.is_empty()) {
                eprintln!(
                    "    {}: first connection error: {e} (the kernel's per-CPU backlog dropped {} packets during the connection test)",
                    s.label,
                    backlog_drops().saturating_sub(backlog_before)
                );
            }
            let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
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
    let med = |s: &NodePortScenario| {
        (
            median(s.conn.clone()),
            median(s.udp.clone()),
            median(s.pps.clone()),
        )
    };
    let (kp_conn, kp_udp, kp_pps) = med(&scenarios[2]);
    let (small_conn, _, small_pps) = med(&scenarios[3]);
    writeln!(
        report,
        "\nNodePort, external client -> node -> backend pod on another node (native routing), {} clients; ferry and kube-proxy hold {} Services",
        opts.clients,
        opts.services + 1
    )?;
    writeln!(
        report,
        "{:<44} {:>8} {:>7} {:>12} {:>7} {:>12} {:>7}",
        "path (median over rounds)",
        "conn/s",
        "vs ipt",
        "UDP rr pps",
        "vs ipt",
        "one-way pps",
        "vs ipt"
    )?;
    for s in &scenarios {
        let (c, u, p) = med(s);
        writeln!(
            report,
            "{:<44} {c:>8.0} {:>6.2}x {u:>12.0} {:>6.2}x {p:>12.0} {:>6.2}x",
            s.label,
            c / kp_conn,
            u / kp_udp,
            p / kp_pps
        )?;
    }
    for node in &setup._nodes {
        writeln!(
            report,
            "{} datapath drops: {}",
            node.name,
            datapath_drops(node)?
        )?;
    }
    let (xdp_conn, _, xdp_pps) = med(&scenarios[0]);
    let xdp_ratio = xdp_conn / kp_conn;
    writeln!(
        report,
        "(iptables-restore of the 10-Service rule set: {:.0} ms)\nferry XDP against kube-proxy with only 10 Services: {:.2}x conn/s, {:.2}x one-way pps\ntarget ferry XDP >= 2x iptables NodePort connection rate (same Services): {} ({xdp_ratio:.2}x)",
        setup.iptables_ms,
        xdp_conn / small_conn,
        xdp_pps / small_pps,
        if xdp_ratio >= 2.0 { "met" } else { "NOT met" }
    )?;
    drop(setup);
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
        .args(["repeat", "200000"])
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

pub fn run(opts: &Opts) -> Result<()> {
    crate::setup::run()?;
    crate::build_bins(true)?;
    let root = std::env::current_dir()?;
    let bin_dir = root.join("target/release");
    let bins = Binaries::in_dir(&bin_dir)?;
    let load = bin_dir.join("ferry-load");
    if opts.nodeport_only {
        let mut report = String::new();
        nodeport_bench(&bins, &load, opts, &mut report)?;
        println!("{report}");
        return Ok(());
    }
    let n = opts.services;
    let (small, small_vip) = service_set(10);
    let (large, large_vip) = service_set(n);

    println!("==> bringing up five nodes (network namespaces), two pods each");
    let plain_run = Cluster::new(bins.clone())?;
    let direct = PlainSetup::create(&plain_run.run_id, "direct", &load)?;
    let ipt = PlainSetup::create(&plain_run.run_id, "kp-ipt", &load)?;
    let nft = PlainSetup::create(&plain_run.run_id, "kp-nft", &load)?;
    let f_small = FerryNode::create(&bins, &load, "ferry-10")?;
    let f_large = FerryNode::create(&bins, &load, "ferry-large")?;

    println!("==> loading {n} services x {ENDPOINTS_PER_SERVICE} endpoints into each large node");
    f_small.load_services(&small)?;
    let full = f_large.load_services(&large)?;
    // One endpoint of one Service changes with all the others in place:
    // what every rolling update costs.
    let mut changed = large;
    let last = changed.len() - 1;
    changed[last].endpoints[0] = Ipv4Addr::new(10, 127, 255, 254);
    let one = f_large.load_services(&changed)?;
    let ipt_input = kube_proxy::iptables(&changed);
    let ipt_time = timed_load(&ipt.node.netns, "iptables-restore", &[], &ipt_input)?;
    let mut nft_time = Duration::ZERO;
    for input in kube_proxy::nftables(&changed, NFT_SERVICES_PER_TRANSACTION) {
        nft_time += timed_load(&nft.node.netns, "nft", &["-f", "-"], &input)?;
    }

    let mut scenarios = vec![
        Scenario {
            label: "(a) direct to pod IP, kernel routing, no ferry".into(),
            client_ns: direct.client.netns.path(),
            target: (SERVER_IP, SERVER_PORT).into(),
            samples: vec![],
        },
        Scenario {
            label: "(b) ferry ClusterIP, 10 services".into(),
            client_ns: f_small.client.netns.path(),
            target: (small_vip, SERVICE_PORT).into(),
            samples: vec![],
        },
        Scenario {
            label: format!("(c) ferry ClusterIP, {n} services"),
            client_ns: f_large.client.netns.path(),
            target: (large_vip, SERVICE_PORT).into(),
            samples: vec![],
        },
        Scenario {
            label: "    ferry direct to pod IP (no translation)".into(),
            client_ns: f_small.client.netns.path(),
            target: (SERVER_IP, SERVER_PORT).into(),
            samples: vec![],
        },
        Scenario {
            label: format!("(d) kube-proxy iptables, {n} services"),
            client_ns: ipt.client.netns.path(),
            target: (large_vip, SERVICE_PORT).into(),
            samples: vec![],
        },
        Scenario {
            label: format!("(e) kube-proxy nftables, {n} services"),
            client_ns: nft.client.netns.path(),
            target: (large_vip, SERVICE_PORT).into(),
            samples: vec![],
        },
    ];
    for s in &scenarios {
        wait_reachable(&s.client_ns, &load, s.target)?;
    }

    println!(
        "==> {} rounds; per scenario {} s of connections ({} concurrent clients: connect, 1-byte request, 1-byte response, close) then {} s of 1-byte request/response on one connection",
        opts.rounds, opts.seconds, opts.clients, opts.seconds
    );
    let count = scenarios.len();
    for round in 1..=opts.rounds {
        // Rotate the order each round: whatever the machine does at a given
        // moment (another tenant, the agents' conntrack sweep) should not
        // always land on the same scenario.
        for k in 0..count {
            let s = &mut scenarios[(k + round - 1) % count];
            let sample = measure(s, &load, opts)?;
            println!(
                "    round {round}: {:<48} {:>9.0} conn/s  p50 {:>6.1} us  p99 {:>6.1} us{}",
                s.label,
                sample.rate,
                sample.p50_us,
                sample.p99_us,
                if sample.errors > 0 {
                    format!("  ({} failed connections)", sample.errors)
                } else {
                    String::new()
                }
            );
            s.samples.push(sample);
        }
    }

    let mut report = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(
        report,
        "ferry bench: {} rounds x {} s, {} clients, {cpus} CPUs, kernel {}",
        opts.rounds,
        opts.seconds,
        opts.clients,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    )?;
    writeln!(
        report,
        "{:<48} {:>9} {:>8} {:>9} {:>8} {:>9} {:>7}",
        "path (median over rounds)", "conn/s", "vs (a)", "p50 us", "vs (a)", "p99 us", "errors"
    )?;
    let medians: Vec<(f64, f64, f64, u64)> = scenarios
        .iter()
        .map(|s| {
            (
                median(s.samples.iter().map(|x| x.rate).collect()),
                median(s.samples.iter().map(|x| x.p50_us).collect()),
                median(s.samples.iter().map(|x| x.p99_us).collect()),
                s.samples.iter().map(|x| x.errors).sum(),
            )
        })
        .collect();
    let (base_rate, base_p50, _, _) = medians[0];
    for (s, (rate, p50, p99, errors)) in scenarios.iter().zip(&medians) {
        writeln!(
            report,
            "{:<48} {:>9.0} {:>7.2}x {:>9.1} {:>7.2}x {:>9.1} {:>7}",
            s.label,
            rate,
            rate / base_rate,
            p50,
            p50 / base_p50,
            p99,
            errors
        )?;
    }
    writeln!(
        report,
        "(conn/s vs (a): higher is better; latency vs (a): lower is better)"
    )?;
    writeln!(
        report,
        "full sync of {n} services x {ENDPOINTS_PER_SERVICE} endpoints, ferry-agent: {:.0} ms (parse {:.0}, model {:.0}, maps {:.0})",
        full.ms("elapsed_ms"),
        full.ms("parse_ms"),
        full.ms("model_ms"),
        full.ms("maps_ms")
    )?;
    writeln!(
        report,
        "one endpoint changed among {n} services, ferry-agent: {:.0} ms (parse {:.0}, model {:.0}, maps {:.1})",
        one.ms("elapsed_ms"),
        one.ms("parse_ms"),
        one.ms("model_ms"),
        one.ms("maps_ms")
    )?;
    writeln!(
        report,
        "same rule set, kube-proxy style: iptables-restore {:.0} ms ({}), nft -f {:.0} ms in transactions of {NFT_SERVICES_PER_TRANSACTION} services ({})",
        ipt_time.as_secs_f64() * 1e3,
        tool_version("iptables-restore"),
        nft_time.as_secs_f64() * 1e3,
        tool_version("nft")
    )?;
    // Anything ferry dropped on the way is named here, not hidden in a rate.
    for (label, node) in [("ferry-10", &f_small.node), ("ferry-large", &f_large.node)] {
        writeln!(report, "{label} datapath drops: {}", datapath_drops(node)?)?;
    }
    // What ferry's own code costs per packet, against the 10,000-Service
    // maps: the part of a connection's time that is ferry's.
    let prog = f_large.node.pin_dir.join("prog_from_pod");
    let scratch = f_large.cluster.root.join("frame.bin");
    let client = (Ipv4Addr::new(10, 244, 1, 200), 45000);
    let vip = (large_vip, SERVICE_PORT);
    let cost = [
        (
            "ClusterIP, flow's packets",
            Packet::tcp(client, vip, TCP_ACK, &[]).bytes(),
        ),
        (
            "pod IP, no translation",
            Packet::tcp(client, (SERVER_IP, SERVER_PORT), TCP_ACK, &[]).bytes(),
        ),
    ];
    // The first run creates the flow; the repeats measure its packets.
    let syn = Packet::tcp(client, vip, TCP_SYN, &[]).bytes();
    let _ = program_ns(&prog, &syn, &scratch)?;
    let mut costs = Vec::new();
    for (what, frame) in &cost {
        costs.push(format!(
            "{what} {:.0} ns",
            program_ns(&prog, frame, &scratch)?
        ));
    }
    writeln!(
        report,
        "ferry's tc program per packet (BPF_PROG_TEST_RUN x200000, {n}-Service maps): {}",
        costs.join(", ")
    )?;
    let c_ratio = medians[2].0 / base_rate;
    writeln!(
        report,
        "target (c) >= 0.95x (a) connection rate: {} ({c_ratio:.2}x)",
        if c_ratio >= 0.95 { "met" } else { "NOT met" }
    )?;
    // The one-node scenarios go first: their namespaces must not compete.
    drop(scenarios);
    drop(f_large);
    drop(f_small);
    drop(nft);
    drop(ipt);
    drop(direct);
    nodeport_bench(&bins, &load, opts, &mut report)?;
    println!("\n{report}");
    let out = root.join("target/bench-latest.txt");
    std::fs::write(&out, &report)?;
    println!("(saved to {})", out.display());
    drop(plain_run);
    Ok(())
}
