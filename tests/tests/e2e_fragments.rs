//! Large UDP datagrams through Services, end to end: 2,000 and 8,000
//! bytes leave their sender in IPv4 fragments (1,500-byte links), every
//! fragment must reach the first fragment's backend translated, and the
//! backend's echo comes back in fragments, translated back. From a pod to
//! a ClusterIP with its backend on the same node and on another node, and
//! from a client outside the cluster through a NodePort whose backend is
//! on another node (source-NATed to the node). Native routing, two nodes.
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Fabric, Node, manifest};
use ferry_tests::client::udp_exchange_in;

/// (node, fabric address, podCIDR)
const NODES: [(&str, Ipv4Addr, &str); 2] = [
    ("n1", Ipv4Addr::new(192, 168, 77, 11), "10.244.1.0/24"),
    ("n2", Ipv4Addr::new(192, 168, 77, 12), "10.244.2.0/24"),
];
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
/// Served by b1, on the client's node.
const NEAR_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Served by b2, on the other node; also a NodePort.
const FAR_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const FAR_NODEPORT: u16 = 30053;
const SIZES: [usize; 2] = [2000, 8000];

fn objects(b1: Ipv4Addr, b2: Ipv4Addr) -> String {
    let mut docs: Vec<String> = NODES
        .iter()
        .map(|(name, addr, cidr)| manifest::node_with_address(name, cidr, *addr))
        .collect();
    docs.push(manifest::service(
        "near",
        NEAR_VIP,
        &[("dns", 53, "UDP", 8080)],
    ));
    docs.push(manifest::endpoint_slice(
        "near",
        "n1",
        &[b1],
        &[("dns", 8080, "UDP")],
    ));
    docs.push(manifest::node_port_service(
        "far",
        "NodePort",
        FAR_VIP,
        "",
        &[("dns", 53, "UDP", 8080, FAR_NODEPORT)],
    ));
    docs.push(manifest::endpoint_slice(
        "far",
        "n2",
        &[b2],
        &[("dns", 8080, "UDP")],
    ));
    manifest::join(&docs)
}

fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "--- agent log of {} ---\n{}--- counters ---\n{}",
                n.name,
                n.agent_log(),
                n.inspect("counters").unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `len` bytes that differ with their position, the size and `salt`, so a
/// fragment misplaced, lost or taken from another datagram cannot compare
/// equal.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ ((i >> 8) as u8).wrapping_mul(31) ^ salt ^ (len as u8))
        .collect()
}

/// `inspect counters`: the packets counted under `outcome`.
fn counted(node: &Node, outcome: &str) -> u64 {
    let out = node.inspect("counters").unwrap();
    out.lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(outcome)).then(|| cols.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {outcome} in:\n{out}"))
}

/// Each size, from `netns` to `addr:port`, echoed back intact. UDP may
/// lose a datagram on a loaded machine, so each gets three tries; a
/// corrupted echo fails at once.
fn echoes_intact(nodes: &[Node], netns: &Path, addr: Ipv4Addr, port: u16, what: &str) {
    for (salt, len) in SIZES.into_iter().enumerate() {
        let sent = pattern(len, salt as u8);
        let mut last_error = None;
        let echoed = (0..3).find_map(|_| match udp_exchange_in(netns, addr, port, sent.clone()) {
            Ok(echo) => Some(echo),
            Err(e) => {
                last_error = Some(e);
                None
            }
        });
        let echoed = echoed.unwrap_or_else(|| {
            panic!(
                "{what}: no echo of {len} bytes from {addr}:{port}: {:#}\n{}",
                last_error.unwrap(),
                logs(nodes)
            )
        });
        assert_eq!(echoed.len(), len, "{what}: echo of {len} bytes, length");
        assert!(echoed == sent, "{what}: echo of {len} bytes differs");
    }
}

#[test]
fn large_udp_datagrams_cross_cluster_ips_and_node_ports_in_fragments() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let fabric = Fabric::create(&c.run_id).expect("fabric");
    let nodes = ferry_tests::fixture::nodes_on_fabric(&c, &fabric, &NODES, "native", &[]);
    let outside = c
        .external_host(&fabric, "outside", CLIENT_ADDR)
        .expect("external client");
    let client = nodes[0].add_pod("client").unwrap();
    let mut b1 = nodes[0].add_pod("b1").unwrap();
    b1.serve(8080).unwrap();
    let mut b2 = nodes[1].add_pod("b2").unwrap();
    b2.serve(8080).unwrap();
    c.write_manifest(&objects(b1.ip, b2.ip)).unwrap();

    // Ready when every path answers a small datagram.
    let pod = client.netns.path();
    let paths = [
        (
            pod.clone(),
            NEAR_VIP,
            53,
            "pod to a ClusterIP, backend on its node",
        ),
        (
            pod.clone(),
            FAR_VIP,
            53,
            "pod to a ClusterIP, backend on another node",
        ),
        (
            outside.path(),
            NODES[0].1,
            FAR_NODEPORT,
            "outside to n1's NodePort, backend on n2",
        ),
    ];
    let start = Instant::now();
    while !paths
        .iter()
        .all(|(netns, addr, port, _)| udp_exchange_in(netns, *addr, *port, b"?".to_vec()).is_ok())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "Services not answering within 10 s\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let translated = counted(&nodes[0], "translated");
    let reverse_translated = counted(&nodes[0], "reverse_translated");
    for (netns, addr, port, what) in &paths {
        echoes_intact(&nodes, netns, *addr, *port, what);
    }
    // n1 translated every path's datagrams fragment by fragment, both
    // ways: 2 fragments of 2,000 bytes and 6 of 8,000 per path at least
    // (more if a datagram was sent again).
    let min = (3 * (2 + 6)) as u64;
    let requests = counted(&nodes[0], "translated") - translated;
    let echoes = counted(&nodes[0], "reverse_translated") - reverse_translated;
    assert!(
        requests >= min && echoes >= min,
        "n1 translated {requests} request and {echoes} echo packets, expected >= {min} each\n{}",
        logs(&nodes)
    );
    for node in &nodes {
        assert_eq!(
            counted(node, "drop_fragment_untracked"),
            0,
            "{}: fragments dropped\n{}",
            node.name,
            logs(&nodes)
        );
    }
}
