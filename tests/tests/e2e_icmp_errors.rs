//! ICMP errors about Service flows, end to end with real sockets: a UDP
//! client of a ClusterIP whose backend has nothing on the port is refused
//! at once (the backend's port unreachable reaches its socket), and
//! path-MTU discovery works through a ClusterIP and through NodePorts
//! (backend on the node, and on another node behind source NAT): a router
//! with a narrow link sends "fragmentation needed", and a transfer that
//! stalls without it completes.
//!
//! Topology of the PMTU test, every piece a namespace the harness made:
//! nodes n1 and n2 and a router on the fabric (192.168.77.0/24); behind
//! the router, over a link of MTU 1280 on the router's side, a host "far"
//! (198.51.100.2) that is a ClusterIP's endpoint and a NodePort client.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Fabric, Netns, Node, Pod, in_netns, manifest};
use ferry_tests::client::udp_whoami;

const CIDR: &str = "10.244.1.0/24";
const NODES: [(&str, Ipv4Addr, &str); 2] = [
    ("n1", Ipv4Addr::new(192, 168, 77, 11), "10.244.1.0/24"),
    ("n2", Ipv4Addr::new(192, 168, 77, 12), "10.244.2.0/24"),
];
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
const ROUTER_FAR_SIDE: &str = "198.51.100.1";
const FAR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const NARROW_MTU: u32 = 1280;
/// A ClusterIP whose endpoint is the far host.
const SINK_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const SINK_PORT: u16 = 9000;
/// NodePorts on n1 of a bulk sender on n1 and of one on n2.
const LOCAL_NODEPORT: u16 = 30090;
const REMOTE_NODEPORT: u16 = 30091;
const BULK_PORT: u16 = 8090;
/// Large enough to need many full-sized segments.
const TRANSFER: usize = 512 * 1024;
const PATIENCE: Duration = Duration::from_secs(10);

fn cluster() -> Cluster {
    ferry_tests::fixture::require_root();
    Cluster::new(Binaries::locate().expect("binaries")).expect("cluster")
}

/// Wait until `inspect backends` on `node` lists every frontend of `wanted`.
fn wait_for_frontends(node: &Node, wanted: &[String]) {
    let start = Instant::now();
    loop {
        let out = node.inspect("backends").unwrap();
        if wanted.iter().all(|f| out.contains(&format!("{f} "))) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "frontends {wanted:?} not programmed:\n{out}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn packets(node: &Node, outcome: &str) -> u64 {
    let out = node.inspect("counters").unwrap();
    out.lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(outcome)).then(|| cols.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no counter {outcome}:\n{out}"))
}

#[test]
fn udp_to_a_cluster_ip_whose_backend_has_no_listener_is_refused_at_once() {
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
    let c = cluster();
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
    let client = node.add_pod("client").unwrap();
    // ferry-echo listens on 8080; the Service sends to 9999, where the
    // backend's kernel answers with port unreachable.
    let mut backend = node.add_pod("deaf").unwrap();
    backend.serve(8080).unwrap();
    c.write_manifest(&manifest::join(&[
        manifest::node("n1", CIDR),
        manifest::service(
            "deaf",
            VIP,
            &[("dns", 53, "UDP", 9999), ("echo", 54, "UDP", 8080)],
        ),
        manifest::endpoint_slice(
            "deaf",
            "n1",
            &[backend.ip],
            &[("dns", 9999, "UDP"), ("echo", 8080, "UDP")],
        ),
    ]))
    .unwrap();
    wait_for_frontends(&node, &[format!("{VIP}:53"), format!("{VIP}:54")]);
    // The Service works where the backend listens...
    assert_eq!(udp_whoami(&client, VIP, 54).unwrap(), "deaf");
    // ...and where it does not, the client hears so at once.
    let before = packets(&node, "translated_icmp_error");
    let start = Instant::now();
    let err = udp_whoami(&client, VIP, 53).unwrap_err();
    let kind = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(|e| e.kind());
    assert_eq!(
        kind,
        Some(std::io::ErrorKind::ConnectionRefused),
        "recv on the connected socket: {err:#}\n{}",
        node.inspect("counters").unwrap()
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "refused, not timed out"
    );
    assert!(packets(&node, "translated_icmp_error") > before);
}

/// The router namespace on `fabric` and, behind it over the narrow link,
/// the far host; routes both ways.
fn router_and_far_host(c: &Cluster, fabric: &Fabric) -> (Netns, Netns) {
    let router = c.external_host(fabric, "router", ROUTER).unwrap();
    let far = Netns::create(&format!("fry-{}-far", c.run_id)).unwrap();
    router
        .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    router
        .exec(&[
            "ip", "link", "add", "far0", "type", "veth", "peer", "name", "eth0", "netns", &far.name,
        ])
        .unwrap();
    let mtu = NARROW_MTU.to_string();
    for argv in [
        vec!["ip", "link", "set", "far0", "mtu", &mtu, "up"],
        vec!["ip", "addr", "add", "198.51.100.1/24", "dev", "far0"],
        vec!["ip", "route", "add", NODES[0].2, "via", "192.168.77.11"],
        vec!["ip", "route", "add", NODES[1].2, "via", "192.168.77.12"],
    ] {
        router.exec(&argv).unwrap();
    }
    // The far host's own link stays at 1500, so its SYN offers a segment
    // size only the router's narrow link refuses.
    for argv in [
        vec!["ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"],
        vec!["ip", "link", "set", "eth0", "up"],
        vec!["ip", "route", "add", "default", "via", ROUTER_FAR_SIDE],
    ] {
        far.exec(&argv).unwrap();
    }
    (router, far)
}

/// A listener on `addr:port` inside `netns` that takes one connection on
/// a thread and runs `serve` on it.
fn listen<T: Send + 'static>(
    netns: std::path::PathBuf,
    addr: Ipv4Addr,
    port: u16,
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> JoinHandle<T> {
    let listener = in_netns(&netns, move || TcpListener::bind((addr, port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        serve(s)
    })
}

fn connect(netns: std::path::PathBuf, addr: Ipv4Addr, port: u16) -> TcpStream {
    let s = in_netns(&netns, move || {
        TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("connect {addr}:{port}: {e}"));
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Read to the end; the byte count.
fn drain(mut s: TcpStream) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}

/// Write TRANSFER bytes in large writes, then close.
fn pour(mut s: TcpStream) -> std::io::Result<()> {
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..TRANSFER / chunk.len() {
        s.write_all(&chunk)?;
    }
    s.shutdown(Shutdown::Write)
}

/// The path MTU `netns` learned towards `dst` (`ip route get`'s "mtu N").
fn learned_mtu(netns: &Netns, dst: Ipv4Addr) -> Option<u32> {
    let out = netns
        .exec(&["ip", "route", "get", &dst.to_string()])
        .unwrap();
    let mut words = out.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// The far host reads a NodePort's bulk sender to the end.
fn download(far: &Netns, bulk: &Pod, node_port: u16) -> usize {
    let sender = listen(bulk.netns.path(), Ipv4Addr::UNSPECIFIED, BULK_PORT, pour);
    let s = connect(far.path(), NODES[0].1, node_port);
    let got = drain(s).unwrap_or_else(|e| panic!("download via NodePort {node_port}: {e}"));
    sender.join().unwrap().unwrap();
    got
}

#[test]
fn path_mtu_discovery_works_through_a_cluster_ip_and_node_ports() {
    path_mtu_discovery("native", false);
}

/// XDP turns the source-NATed NodePort flow around before tc sees it; the
/// errors about it still take tc (XDP hands ICMP on), over the same
/// conntrack.
#[test]
fn path_mtu_discovery_works_through_node_ports_with_xdp_on_the_uplink() {
    path_mtu_discovery("native", true);
}

#[test]
fn path_mtu_discovery_works_through_a_cluster_ip_and_node_ports_over_vxlan() {
    path_mtu_discovery("vxlan", false);
}

fn path_mtu_discovery(routing: &str, xdp: bool) {
    let c = cluster();
    let fabric = Fabric::create(&c.run_id).unwrap();
    // Generic XDP, as in e2e_external; it needs senders computing full
    // checksums (see the README), which the far host and the backend behind
    // source NAT are made to do below.
    let extra: &[&str] = if xdp { &["--xdp", "generic"] } else { &[] };
    let nodes = ferry_tests::fixture::nodes_on_fabric(&c, &fabric, &NODES, routing, extra);
    let (_router, far) = router_and_far_host(&c, &fabric);
    for n in &nodes {
        n.netns
            .exec(&[
                "ip",
                "route",
                "add",
                "198.51.100.0/24",
                "via",
                "192.168.77.254",
            ])
            .unwrap();
    }
    let client = nodes[0].add_pod("client").unwrap();
    let bulk1 = nodes[0].add_pod("bulk1").unwrap();
    let bulk2 = nodes[1].add_pod("bulk2").unwrap();
    if xdp {
        far.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
        bulk2.full_checksums().unwrap();
    }
    let mut docs: Vec<String> = NODES
        .iter()
        .map(|(n, a, cidr)| manifest::node_with_address(n, cidr, *a))
        .collect();
    docs.push(manifest::service(
        "sink",
        SINK_VIP,
        &[("tcp", SINK_PORT, "TCP", SINK_PORT)],
    ));
    docs.push(manifest::endpoint_slice(
        "sink",
        "n1",
        &[FAR],
        &[("tcp", SINK_PORT, "TCP")],
    ));
    for (name, vip, node_port, pod, node) in [
        (
            "bulk1",
            Ipv4Addr::new(10, 96, 0, 61),
            LOCAL_NODEPORT,
            &bulk1,
            "n1",
        ),
        (
            "bulk2",
            Ipv4Addr::new(10, 96, 0, 62),
            REMOTE_NODEPORT,
            &bulk2,
            "n2",
        ),
    ] {
        docs.push(manifest::node_port_service(
            name,
            "NodePort",
            vip,
            "",
            &[("tcp", 80, "TCP", BULK_PORT, node_port)],
        ));
        docs.push(manifest::endpoint_slice(
            name,
            node,
            &[pod.ip],
            &[("tcp", BULK_PORT, "TCP")],
        ));
    }
    c.write_manifest(&manifest::join(&docs)).unwrap();
    let n1 = NODES[0].1;
    wait_for_frontends(
        &nodes[0],
        &[
            format!("{SINK_VIP}:{SINK_PORT}"),
            format!("{n1}:{LOCAL_NODEPORT}"),
            format!("{n1}:{REMOTE_NODEPORT}"),
        ],
    );
    let logs = || {
        nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.inspect("counters").unwrap()))
            .collect::<String>()
    };

    // A pod uploads to the far host through the ClusterIP: the router's
    // errors quote the packets as translated (to the far host); the pod
    // must hear them about the ClusterIP.
    let sink = listen(far.path(), FAR, SINK_PORT, drain);
    let upload = connect(client.netns.path(), SINK_VIP, SINK_PORT);
    pour(upload).unwrap_or_else(|e| panic!("upload through the ClusterIP: {e}\n{}", logs()));
    let got = sink
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("sink: {e}\n{}", logs()));
    assert_eq!(got, TRANSFER, "upload through the ClusterIP");
    assert_eq!(
        learned_mtu(&client.netns, SINK_VIP),
        Some(NARROW_MTU),
        "the client pod's path MTU to the ClusterIP"
    );

    // The far host downloads through n1's NodePort from a backend on n1
    // (client address kept): the router's errors are about the replies
    // from the NodePort; the backend must hear them about the far host.
    let got = download(&far, &bulk1, LOCAL_NODEPORT);
    assert_eq!(got, TRANSFER, "download, backend on the node\n{}", logs());
    assert_eq!(
        learned_mtu(&bulk1.netns, FAR),
        Some(NARROW_MTU),
        "the local backend's path MTU to the far host"
    );

    // ...and from a backend on n2, source-NATed to n1: it must hear them
    // about n1's address and port, the only client it knows.
    let got = download(&far, &bulk2, REMOTE_NODEPORT);
    assert_eq!(
        got,
        TRANSFER,
        "download, backend on another node\n{}",
        logs()
    );
    assert_eq!(
        learned_mtu(&bulk2.netns, n1),
        Some(NARROW_MTU),
        "the remote backend's path MTU to n1 (its source-NAT peer)"
    );
    assert!(
        packets(&nodes[0], "translated_icmp_error") >= 3,
        "{}",
        logs()
    );
    if xdp {
        assert!(
            packets(&nodes[0], "translated_xdp") > 0,
            "the source-NATed flow went through XDP\n{}",
            logs()
        );
    }
}
