//! Topology hints end to end on two nodes in two zones: with hints, traffic
//! stays in the client's zone — pod to ClusterIP, and outside client to each
//! node's NodePort — and without them it spreads over every endpoint.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Fabric, Node, manifest};
use ferry_tests::client::{tcp_ask_in, tcp_whoami};

/// (node, fabric address, podCIDR, zone)
const NODES: [(&str, Ipv4Addr, &str, &str); 2] = [
    (
        "n1",
        Ipv4Addr::new(192, 168, 77, 11),
        "10.244.1.0/24",
        "zone-a",
    ),
    (
        "n2",
        Ipv4Addr::new(192, 168, 77, 12),
        "10.244.2.0/24",
        "zone-b",
    ),
];
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODEPORT: u16 = 30080;

/// The nodes with their zones, a NodePort Service, and its slice: b1 on n1,
/// b2 on n2, each hinted for its own zone when `hints`.
fn objects(b1: Ipv4Addr, b2: Ipv4Addr, hints: bool) -> String {
    let mut docs: Vec<String> = NODES
        .iter()
        .map(|(name, addr, cidr, zone)| {
            manifest::node_with_address(name, cidr, *addr).replace(
                &format!("  name: {name}\n"),
                &format!("  name: {name}\n  labels: {{topology.kubernetes.io/zone: {zone}}}\n"),
            )
        })
        .collect();
    docs.push(manifest::node_port_service(
        "web",
        "NodePort",
        VIP,
        "  trafficDistribution: PreferClose\n",
        &[("http", 80, "TCP", 8080, NODEPORT)],
    ));
    let mut slice = manifest::endpoint_slice_on_nodes(
        "web",
        &[(b1, "n1"), (b2, "n2")],
        &[("http", 8080, "TCP")],
    );
    if hints {
        for (name, _, _, zone) in NODES {
            slice = slice.replace(
                &format!("  nodeName: {name}\n"),
                &format!("  nodeName: {name}\n  hints: {{forZones: [{{name: {zone}}}]}}\n"),
            );
        }
    }
    docs.push(slice);
    manifest::join(&docs)
}

fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- agent log of {} ---\n{}", n.name, n.agent_log()))
        .collect()
}

#[test]
fn hints_keep_cluster_ip_and_nodeport_traffic_in_the_clients_zone() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let fabric = Fabric::create(&c.run_id).expect("fabric");
    let plain_nodes: Vec<String> = NODES
        .iter()
        .map(|(n, a, cidr, _)| manifest::node_with_address(n, cidr, *a))
        .collect();
    c.write_manifest(&manifest::join(&plain_nodes)).unwrap();
    let nodes: Vec<Node> = NODES
        .iter()
        .map(|(name, addr, _, _)| c.node_on_fabric(name, &fabric, *addr, "native").unwrap())
        .collect();
    let outside = c
        .external_host(&fabric, "outside", CLIENT_ADDR)
        .expect("external client");
    let mut b1 = nodes[0].add_pod("b1").unwrap();
    b1.serve(8080).unwrap();
    let mut b2 = nodes[1].add_pod("b2").unwrap();
    b2.serve(8080).unwrap();
    let client = nodes[0].add_pod("client").unwrap();
    c.write_manifest(&objects(b1.ip, b2.ip, true)).unwrap();

    let asked = |what: &str, ask: &dyn Fn() -> anyhow::Result<String>| -> BTreeSet<String> {
        (0..30)
            .map(|_| ask().unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", logs(&nodes))))
            .collect()
    };
    let start = Instant::now();
    while tcp_ask_in(&outside.path(), NODES[1].1, NODEPORT, b"?").is_err()
        || tcp_whoami(&client, VIP, 80).is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not serving within 10 s\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let only = |name: &str| BTreeSet::from([name.to_string()]);
    assert_eq!(
        asked("pod on n1 to the ClusterIP", &|| tcp_whoami(
            &client, VIP, 80
        )),
        only("b1")
    );
    for ((name, addr, _, _), backend) in NODES.iter().zip(["b1", "b2"]) {
        let seen = asked(&format!("outside to {name}'s NodePort"), &|| {
            tcp_ask_in(&outside.path(), *addr, NODEPORT, b"?")
        });
        assert_eq!(seen, only(backend), "NodePort on {name}\n{}", logs(&nodes));
    }

    // Without hints, every endpoint again: the hints were what narrowed it.
    c.write_manifest(&objects(b1.ip, b2.ip, false)).unwrap();
    let both: BTreeSet<String> = ["b1", "b2"].iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    loop {
        let seen = asked("pod on n1 without hints", &|| tcp_whoami(&client, VIP, 80));
        if seen == both {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "without hints still {seen:?}\n{}",
            logs(&nodes)
        );
    }
}
