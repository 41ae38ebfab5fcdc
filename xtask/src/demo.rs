//! `cargo xtask demo`: one node, four pods, ferry serving a ClusterIP from
//! examples/demo.yaml, and how to look inside.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use ferry_harness::{Binaries, Cluster, Pod};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE: &str = "demo-node";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn ask_tcp(client: &Pod) -> Result<String> {
    client.run(|| -> Result<String> {
        let mut s = TcpStream::connect_timeout(&(VIP, 80).into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"?")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })?
}

fn ask_udp(client: &Pod) -> Result<String> {
    client.run(|| -> Result<String> {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.connect((VIP, 7))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send(b"?")?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })?
}

pub fn run(keep: bool, nodes: bool) -> Result<()> {
    if nodes {
        return run_nodes(keep);
    }
    let cluster = cluster_from_example("demo.yaml")?;
    println!(
        "==> node {NODE}: network namespace fry-{}-{NODE}, ferry-agent running",
        cluster.run_id
    );
    let node = cluster.node(NODE)?;
    let client = node.add_pod("client")?;
    let mut web = Vec::new();
    for i in 1..=3 {
        let mut p = node.add_pod(&format!("web-{i}"))?;
        p.serve(8080)?;
        web.push(p);
    }
    println!("==> pods created through ferry-cni:");
    for p in std::iter::once(&client).chain(&web) {
        println!("    {:<8} {}", p.name, p.ip);
    }
    if client.ip != Ipv4Addr::new(10, 244, 1, 2) || web[0].ip != Ipv4Addr::new(10, 244, 1, 3) {
        bail!("pod addresses differ from the ones examples/demo.yaml names");
    }
    // Wait for the agent to program the Service.
    let mut ready = false;
    for _ in 0..100 {
        if ask_tcp(&client).is_ok() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !ready {
        bail!("the ClusterIP never answered:\n{}", node.agent_log());
    }
    println!("==> 12 TCP connections from client to web's ClusterIP {VIP}:80");
    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    for i in 1..=12 {
        let name = ask_tcp(&client)?;
        println!("    connection {i:>2} -> {name}");
        *hits.entry(name).or_default() += 1;
    }
    println!("    per backend: {hits:?}");
    println!("==> 6 UDP datagrams to {VIP}:7");
    for i in 1..=6 {
        println!("    datagram {i} -> {}", ask_udp(&client)?);
    }
    println!("==> the agent's operational endpoints (inside the node's namespace, port 9402):");
    let node_ns = node.netns.path();
    let (ready_status, _) = http_get(&node_ns, "/readyz")?;
    println!("    GET /readyz -> {ready_status}");
    let (_, metrics) = http_get(&node_ns, "/metrics")?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("ferry_syncs_total")
            || l.starts_with("ferry_map_entries")
            || l.starts_with("ferry_network_programming_duration_seconds_count")
            || (l.starts_with("ferry_datapath_packets_total")
                && (l.contains("\"translated\"") || l.contains("\"reverse_translated\"")))
    }) {
        println!("    {line}");
    }
    println!(
        "    (all of it: nsenter --net={} -- bash -c 'exec 3<>/dev/tcp/127.0.0.1/9402; printf \"GET /metrics HTTP/1.0\\r\\n\\r\\n\" >&3; cat <&3')",
        node_ns.display()
    );
    println!("==> what the dataplane holds (ferry-agent inspect services):");
    print!("{}", indent(&node.inspect("services")?));
    println!("==> look inside yourself:");
    let agent = cluster.bins.agent.display();
    let pins = node.pin_dir.display();
    for what in [
        "services",
        "backends",
        "conntrack",
        "endpoints",
        "counters",
        "maps",
    ] {
        println!("    {agent} inspect {what} --pin-dir {pins}");
    }
    println!("    bpftool map dump pinned {pins}/ferry_services");
    // trace runs the packet on the pod's veth, which lives in the node's
    // namespace.
    println!(
        "    nsenter --net=/var/run/netns/fry-{}-{NODE} {agent} trace --from {} --to {VIP}:80 --pin-dir {pins}",
        cluster.run_id, client.ip
    );
    println!("    {agent} monitor --pin-dir {pins}   # then connect, below");
    println!(
        "    {agent} debug on --pin-dir {pins}   # a line per packet in the agent log; debug off to stop"
    );
    println!(
        "    nsenter --net=/var/run/netns/fry-{}-{NODE}-client -- bash -c 'exec 3<>/dev/tcp/{VIP}/80; printf ? >&3; head -1 <&3'",
        cluster.run_id
    );
    println!("    agent log: {}", node.log.display());
    println!("    edit the objects live: {}", cluster.manifest.display());
    keep_or_tear_down(keep, (web, client, node, cluster));
    Ok(())
}

const FABRIC_NODES: [(&str, Ipv4Addr); 3] = [
    ("n1", Ipv4Addr::new(192, 168, 77, 11)),
    ("n2", Ipv4Addr::new(192, 168, 77, 12)),
    ("n3", Ipv4Addr::new(192, 168, 77, 13)),
];
const NODEPORT: u16 = 30080;

/// Ask `addr:port` for its name from the namespace at `netns`.
fn ask_from(netns: &std::path::Path, addr: Ipv4Addr, port: u16) -> Result<String> {
    ferry_harness::in_netns(netns, move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"?")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })?
}

/// `cargo xtask demo --nodes`: three nodes on a fabric, a NodePort served
/// from every node to backends on n2 and n3, asked by a client outside the
/// cluster.
fn run_nodes(keep: bool) -> Result<()> {
    let cluster = cluster_from_example("demo-nodes.yaml")?;
    let fabric = ferry_harness::Fabric::create(&cluster.run_id)?;
    let mut nodes = Vec::new();
    for (name, addr) in FABRIC_NODES {
        nodes.push(cluster.node_on_fabric_with(
            name,
            &fabric,
            addr,
            "native",
            &["--xdp", "generic"],
        )?);
        println!(
            "==> node {name} at {addr}: namespace fry-{}-{name}, ferry-agent running (native routing, XDP on eth0)",
            cluster.run_id
        );
    }
    let mut web = Vec::new();
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let mut p = node.add_pod(&format!("web-{i}"))?;
        p.serve(8080)?;
        println!("    pod {} on {} at {}", p.name, node.name, p.ip);
        web.push(p);
    }
    if web[0].ip != Ipv4Addr::new(10, 244, 2, 2) || web[1].ip != Ipv4Addr::new(10, 244, 3, 2) {
        bail!("pod addresses differ from the ones examples/demo-nodes.yaml names");
    }
    let outside = cluster.external_host(&fabric, "outside", Ipv4Addr::new(192, 168, 77, 100))?;
    // Full checksums, as frames from a physical network carry: XDP's
    // incremental update relies on them.
    outside.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    for p in &web {
        p.full_checksums()?;
    }
    let client = outside.path();
    println!(
        "==> a client outside the cluster at 192.168.77.100 (namespace {})",
        outside.name
    );
    let start = std::time::Instant::now();
    while !FABRIC_NODES
        .iter()
        .all(|(_, a)| ask_from(&client, *a, NODEPORT).is_ok())
    {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the NodePorts never answered:\n{}", nodes[0].agent_log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (name, addr) in FABRIC_NODES {
        let mut hits: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..10 {
            *hits.entry(ask_from(&client, addr, NODEPORT)?).or_default() += 1;
        }
        println!("==> 10 connections to NodePort {addr}:{NODEPORT} (node {name}) -> {hits:?}");
    }
    println!("==> n1 has no backend: its NodePort traffic went to n2 and n3 through XDP:");
    let counters = nodes[0].inspect("counters")?;
    for line in counters
        .lines()
        .filter(|l| l.starts_with("OUTCOME") || l.contains("xdp"))
    {
        println!("    {line}");
    }
    println!("==> look inside yourself:");
    let agent = cluster.bins.agent.display();
    for node in &nodes {
        println!(
            "    {agent} inspect conntrack --pin-dir {}",
            node.pin_dir.display()
        );
    }
    println!(
        "    nsenter --net={} -- bash -c 'exec 3<>/dev/tcp/192.168.77.11/{NODEPORT}; printf ? >&3; head -1 <&3'",
        client.display()
    );
    println!("    edit the objects live: {}", cluster.manifest.display());
    keep_or_tear_down(keep, (outside, web, nodes, fabric, cluster));
    Ok(())
}

/// GET `path` from the agent's metrics address inside the namespace;
/// (status line, body).
fn http_get(netns: &std::path::Path, path: &'static str) -> Result<(String, String)> {
    ferry_harness::in_netns(netns, move || -> Result<(String, String)> {
        let mut s = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, 9402).into(),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or_default().to_string();
        Ok((status, body.to_string()))
    })?
}

/// Block until SIGINT or SIGTERM, then say the demo is going.
fn wait_for_ctrl_c() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    println!("==> running; press Ctrl-C to tear everything down");
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("==> tearing down");
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// Remove everything a kept demo (or a killed test run) left behind.
pub fn down() -> Result<()> {
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with("fry-") {
            continue;
        }
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", name])
            .output()?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: sending a signal.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .status();
        println!("removed netns {name}");
    }
    for entry in std::fs::read_dir("/sys/fs/bpf")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ferry-e2e-") || name.starts_with("ferry-test-") {
            let _ = std::fs::remove_dir_all(entry.path());
            println!("removed pins /sys/fs/bpf/{name}");
        }
    }
    // The nodes' cgroups (the socket programs' --cgroup-root): their
    // processes are killed and the cgroups removed with the links on them.
    if let Ok(mount) = ferry_harness::cgroup::cgroup2_mount() {
        for entry in std::fs::read_dir(&mount)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("ferry-") && entry.path().is_dir() {
                let cgroup = ferry_harness::Cgroup { path: entry.path() };
                match cgroup.remove() {
                    Ok(()) => println!("removed cgroup {}", entry.path().display()),
                    Err(e) => println!("{e:#}"),
                }
            }
        }
    }
    for entry in std::fs::read_dir(std::env::temp_dir())?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ferry-") && entry.path().join("objects.yaml").exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// With --keep, leave everything running (`cargo xtask down` removes it);
/// else wait for Ctrl-C and tear `everything` down, first element first
/// (a tuple drops its fields in order).
fn keep_or_tear_down<T>(keep: bool, everything: T) {
    if keep {
        println!("==> --keep: left running; tear down with `cargo xtask down`");
        std::mem::forget(everything);
        return;
    }
    wait_for_ctrl_c();
    drop(everything);
}

/// Set up, build, and start a harness cluster fed `examples/<file>`.
fn cluster_from_example(file: &str) -> Result<Cluster> {
    crate::setup::run()?;
    crate::build_bins(false)?;
    let root = std::env::current_dir()?;
    let manifest = std::fs::read_to_string(root.join("examples").join(file))
        .with_context(|| format!("reading examples/{file} (run from the repository root)"))?;
    let cluster = Cluster::new(Binaries::in_dir(&root.join("target/debug"))?)?;
    cluster.write_manifest(&manifest)?;
    Ok(cluster)
}
