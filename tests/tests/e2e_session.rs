//! Service behaviours that follow a client, end to end with real sockets:
//! sessionAffinity ClientIP through a ClusterIP (from a pod) and through a
//! NodePort from outside; loadBalancerSourceRanges on a load-balancer IP;
//! and the connection-preserving drain of a terminating endpoint.
//!
//! Backends are drawn at random, so "sticks to one backend" is asserted
//! over many connections among three backends, and checked against a
//! Service without affinity that does spread over the same backends.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Fabric, Netns, Node, Pod, manifest};
use ferry_tests::client::{FixedPortUdp, tcp_ask_in, tcp_whoami};

const CIDR: &str = "10.244.1.0/24";
const STICKY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const PLAIN_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const TRIES: usize = 12;

fn cluster() -> Cluster {
    ferry_tests::fixture::require_root();
    Cluster::new(Binaries::locate().expect("binaries")).expect("cluster")
}

/// A ClusterIP Service `name` on `vip` (TCP 80 and UDP 53 to 8080) with
/// `affinity` lines under its spec ("" for none), and its slice of
/// (address, conditions) endpoints on n1.
fn service_with(
    name: &str,
    vip: Ipv4Addr,
    affinity: &str,
    endpoints: &[(Ipv4Addr, &str)],
) -> String {
    let service = manifest::service(
        name,
        vip,
        &[("http", 80, "TCP", 8080), ("dns", 53, "UDP", 8080)],
    )
    .replace("  ports:\n", &format!("{affinity}  ports:\n"));
    let mut slice = manifest::endpoint_slice(
        name,
        "n1",
        &[],
        &[("http", 8080, "TCP"), ("dns", 8080, "UDP")],
    )
    .replace("endpoints: []\n", "endpoints:\n");
    for (addr, conditions) in endpoints {
        slice +=
            &format!("- addresses: [\"{addr}\"]\n  conditions: {conditions}\n  nodeName: n1\n");
    }
    manifest::join(&[service, slice])
}

const READY: &str = "{ready: true, serving: true, terminating: false}";
const TERMINATING: &str = "{ready: false, serving: true, terminating: true}";

fn ready(pods: &[&Pod]) -> Vec<(Ipv4Addr, &'static str)> {
    pods.iter().map(|p| (p.ip, READY)).collect()
}

/// Who answers `tries` fresh connections from `client` to `vip:80`.
fn answers(client: &Pod, vip: Ipv4Addr, tries: usize) -> Vec<String> {
    (0..tries)
        .map(|_| tcp_whoami(client, vip, 80).expect("the Service answers"))
        .collect()
}

fn distinct(answers: &[String]) -> BTreeSet<String> {
    answers.iter().cloned().collect()
}

/// Poll until `inspect services` shows `needle`.
fn wait_for(node: &Node, needle: &str) {
    let start = Instant::now();
    while !node.inspect("services").unwrap().contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no {needle:?} in\n{}\n{}",
            node.inspect("services").unwrap(),
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_ip_affinity_through_a_cluster_ip_holds_expires_and_follows_its_backend() {
    let c = cluster();
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    let all: Vec<&Pod> = backends.iter().collect();
    let objects = |affinity: &str, pods: &[&Pod]| {
        manifest::join(&[
            manifest::node("n1", CIDR),
            service_with("sticky", STICKY_VIP, affinity, &ready(pods)),
            service_with("plain", PLAIN_VIP, "", &ready(&all)),
        ])
    };
    let client_ip =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n";
    c.write_manifest(&objects(client_ip, &all)).unwrap();
    wait_for(&node, "ClientIP 1s");

    // The same backends without affinity spread; with it, one answers all.
    let plain = answers(&client, PLAIN_VIP, TRIES);
    assert!(
        distinct(&plain).len() > 1,
        "the control did not spread: {plain:?}"
    );
    let sticky = answers(&client, STICKY_VIP, TRIES);
    assert_eq!(distinct(&sticky).len(), 1, "{sticky:?}");

    // Back after the timeout, the client draws again: over several rounds
    // it lands elsewhere at least once (all on one is 3^-7).
    let mut rounds = BTreeSet::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(1_300));
        let round = answers(&client, STICKY_VIP, 3);
        assert_eq!(distinct(&round).len(), 1, "within the timeout: {round:?}");
        rounds.insert(round[0].clone());
    }
    assert!(rounds.len() > 1, "never drew again: {rounds:?}");

    // Its backend leaves: the client moves to another and sticks there.
    let had = answers(&client, STICKY_VIP, 1).remove(0);
    let remaining: Vec<&Pod> = all.iter().copied().filter(|p| p.name != had).collect();
    c.write_manifest(&objects(client_ip, &remaining)).unwrap();
    let start = Instant::now();
    while node
        .inspect("backends")
        .unwrap()
        .matches(&format!("{STICKY_VIP}:80 "))
        .count()
        != 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = answers(&client, STICKY_VIP, TRIES);
    assert_eq!(distinct(&after).len(), 1, "{after:?}");
    assert_ne!(after[0], had, "the departed backend kept the client");

    // Affinity switched off: new connections spread again.
    c.write_manifest(&objects("", &remaining)).unwrap();
    let start = Instant::now();
    while node.inspect("services").unwrap().contains("ClientIP") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let off = answers(&client, STICKY_VIP, TRIES);
    assert_eq!(distinct(&off).len(), 2, "{off:?}");
}

#[test]
fn a_terminating_backend_keeps_its_flows_and_gets_no_new_ones() {
    let c = cluster();
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    let (b1, b2) = (&backends[0], &backends[1]);
    let objects = |endpoints: &[(Ipv4Addr, &str)]| {
        manifest::join(&[
            manifest::node("n1", CIDR),
            service_with("web", STICKY_VIP, "", endpoints),
        ])
    };
    c.write_manifest(&objects(&ready(&[b1]))).unwrap();
    wait_for(&node, &STICKY_VIP.to_string());
    // A resolver-like client on a fixed port, reaching b1.
    let resolver = FixedPortUdp::open(&client, 5353, STICKY_VIP, 53).unwrap();
    let ask = || resolver.ask();
    let start = Instant::now();
    while ask().as_deref() != Some("b1") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b1 never answered"
        );
    }
    // b1 starts terminating (still serving), b2 is ready.
    c.write_manifest(&objects(&[(b1.ip, TERMINATING), (b2.ip, READY)]))
        .unwrap();
    let start = Instant::now();
    while node
        .inspect("backends")
        .unwrap()
        .contains(&b1.ip.to_string())
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // New connections go to b2 only; the established UDP flow stays on b1.
    let new = answers(&client, STICKY_VIP, TRIES);
    assert_eq!(
        distinct(&new),
        BTreeSet::from(["b2".to_string()]),
        "{new:?}"
    );
    for _ in 0..10 {
        assert_eq!(ask().as_deref(), Some("b1"), "the draining flow moved");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        node.agent_log().contains("stale_udp_flows=0"),
        "{}",
        node.agent_log()
    );
    // b1 is gone from the slice: the flow moves to b2 within a second.
    c.write_manifest(&objects(&ready(&[b2]))).unwrap();
    let moved = Instant::now();
    while ask().as_deref() != Some("b2") {
        assert!(
            moved.elapsed() < Duration::from_secs(3),
            "the flow stayed on the departed backend\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.wait_for_log(
        "stale_udp_flows=1",
        Duration::from_secs(5),
        "the flow moved, but no sync says it removed a stale UDP flow",
    );
}

/// (node, fabric address, podCIDR)
const NODES: [(&str, Ipv4Addr, &str); 2] = [
    ("n1", Ipv4Addr::new(192, 168, 77, 11), "10.244.1.0/24"),
    ("n2", Ipv4Addr::new(192, 168, 77, 12), "10.244.2.0/24"),
];
const ADMITTED: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
const REFUSED: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 101);
/// Routed by both outside hosts through n1, as a load balancer would.
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const STICKY_NODEPORT: u16 = 30080;
const LB_NODEPORT: u16 = 30090;

fn outside_objects(b1: Ipv4Addr, b2: Ipv4Addr, b3: Ipv4Addr) -> String {
    let mut docs: Vec<String> = NODES
        .iter()
        .map(|(name, addr, cidr)| manifest::node_with_address(name, cidr, *addr))
        .collect();
    let endpoints = [(b1, "n1"), (b2, "n2"), (b3, "n2")];
    docs.push(manifest::node_port_service(
        "sticky",
        "NodePort",
        STICKY_VIP,
        "  sessionAffinity: ClientIP\n",
        &[("http", 80, "TCP", 8080, STICKY_NODEPORT)],
    ));
    docs.push(manifest::endpoint_slice_on_nodes(
        "sticky",
        &endpoints,
        &[("http", 8080, "TCP")],
    ));
    docs.push(
        manifest::node_port_service(
            "lb",
            "LoadBalancer",
            PLAIN_VIP,
            &format!("  loadBalancerSourceRanges: [{ADMITTED}/32]\n"),
            &[("http", 80, "TCP", 8080, LB_NODEPORT)],
        ) + &format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n"),
    );
    docs.push(manifest::endpoint_slice_on_nodes(
        "lb",
        &endpoints,
        &[("http", 8080, "TCP")],
    ));
    manifest::join(&docs)
}

fn who(host: &Netns, addr: Ipv4Addr, port: u16) -> anyhow::Result<String> {
    tcp_ask_in(&host.path(), addr, port, b"?")
}

#[test]
fn from_outside_affinity_holds_through_a_node_port_and_source_ranges_fence_the_load_balancer_ip() {
    let c = cluster();
    let fabric = Fabric::create(&c.run_id).expect("fabric");
    // Native routing with XDP (generic): remote backends are XDP's flows.
    let xdp = ["--xdp", "generic"];
    let nodes = ferry_tests::fixture::nodes_on_fabric(&c, &fabric, &NODES, "native", &xdp);
    let mut b1 = nodes[0].add_pod("b1").unwrap();
    let mut b2 = nodes[1].add_pod("b2").unwrap();
    let mut b3 = nodes[1].add_pod("b3").unwrap();
    for b in [&mut b1, &mut b2, &mut b3] {
        b.serve(8080).unwrap();
    }
    let hosts: Vec<Netns> = [("admitted", ADMITTED), ("refused", REFUSED)]
        .iter()
        .map(|(name, addr)| {
            let host = c.external_host(&fabric, name, *addr).expect("outside host");
            host.exec(&[
                "ip",
                "route",
                "add",
                &format!("{LB_IP}/32"),
                "via",
                "192.168.77.11",
            ])
            .unwrap();
            host
        })
        .collect();
    c.write_manifest(&outside_objects(b1.ip, b2.ip, b3.ip))
        .unwrap();
    wait_for(&nodes[0], &format!("{ADMITTED}/32"));
    let n1 = NODES[0].1;

    // Affinity through n1's NodePort, for each outside client; the same
    // backends through the unfenced Service's NodePort spread.
    for host in &hosts {
        let sticky: Vec<String> = (0..TRIES)
            .map(|_| who(host, n1, STICKY_NODEPORT).expect("the NodePort answers"))
            .collect();
        assert_eq!(distinct(&sticky).len(), 1, "{sticky:?}");
    }
    let spread: Vec<String> = (0..TRIES)
        .map(|_| who(&hosts[0], n1, LB_NODEPORT).expect("the NodePort answers"))
        .collect();
    assert!(
        distinct(&spread).len() > 1,
        "the control did not spread: {spread:?}"
    );

    // The load-balancer IP admits the listed client only; the refused one
    // still reaches the same Service's NodePort.
    let counters = || nodes[0].inspect("counters").unwrap();
    who(&hosts[0], LB_IP, 80).expect("the admitted client reaches the LB IP");
    let refused = who(&hosts[1], LB_IP, 80);
    assert!(refused.is_err(), "the refused client got {refused:?}");
    let dropped = counters()
        .lines()
        .find(|l| l.starts_with("drop_source_range"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        .unwrap_or_default();
    assert!(dropped.parse::<u64>().unwrap_or(0) > 0, "{}", counters());
    who(&hosts[1], n1, LB_NODEPORT).expect("the NodePort is not fenced");
}
