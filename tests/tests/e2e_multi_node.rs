//! Three nodes on one L2 fabric, end to end: pods on different nodes reach
//! each other by pod IP, and a ClusterIP lands on backends on other nodes
//! (and on the caller's own node), over TCP and UDP, with the agents routing
//! natively or through VXLAN.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Fabric, Node, Pod, manifest};
use ferry_tests::client::{tcp_whoami, udp_whoami};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// (node, fabric address, podCIDR)
const NODES: [(&str, Ipv4Addr, &str); 3] = [
    ("n1", Ipv4Addr::new(192, 168, 77, 11), "10.244.1.0/24"),
    ("n2", Ipv4Addr::new(192, 168, 77, 12), "10.244.2.0/24"),
    ("n3", Ipv4Addr::new(192, 168, 77, 13), "10.244.3.0/24"),
];
// A bound, not a measure: three agents loading their programs at once on
// a busy 2-core machine take seconds in the verifier.
const READY_WITHIN: Duration = Duration::from_secs(30);

fn nodes_manifest() -> Vec<String> {
    NODES
        .iter()
        .map(|(name, addr, cidr)| manifest::node_with_address(name, cidr, *addr))
        .collect()
}

fn web_manifest(backends: &[&Pod], node_of: &[&str]) -> String {
    let endpoints: Vec<(Ipv4Addr, &str)> = backends
        .iter()
        .zip(node_of)
        .map(|(p, n)| (p.ip, *n))
        .collect();
    let mut docs = nodes_manifest();
    docs.push(manifest::service(
        "web",
        VIP,
        &[("http", 80, "TCP", 8080), ("dns", 53, "UDP", 8080)],
    ));
    docs.push(manifest::endpoint_slice_on_nodes(
        "web",
        &endpoints,
        &[("http", 8080, "TCP"), ("dns", 8080, "UDP")],
    ));
    manifest::join(&docs)
}

/// Every agent's log, for failure messages.
fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- agent log of {} ---\n{}", n.name, n.agent_log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `inspect backends` rows for VIP:80 on `node`.
fn vip_backends(node: &Node) -> usize {
    node.inspect("backends")
        .map(|out| {
            out.lines()
                .filter(|l| l.starts_with(&format!("{VIP}:80 ")))
                .count()
        })
        .unwrap_or(0)
}

/// Poll `ready` until it holds, or panic after READY_WITHIN with `what` and
/// the agents' logs.
fn wait_for(nodes: &[Node], what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < READY_WITHIN,
            "{what}: not within {READY_WITHIN:?}\n{}",
            logs(nodes)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn names_seen(
    nodes: &[Node],
    tries: usize,
    what: &str,
    mut ask: impl FnMut() -> anyhow::Result<String>,
) -> BTreeSet<String> {
    (0..tries)
        .map(|_| ask().unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", logs(nodes))))
        .collect()
}

fn expect_name(nodes: &[Node], what: &str, got: anyhow::Result<String>, want: &str) {
    match got {
        Ok(name) => assert_eq!(name, want, "{what}\n{}", logs(nodes)),
        Err(e) => panic!("{what}: {e:#}\n{}", logs(nodes)),
    }
}

fn cross_node(routing: &str) {
    ferry_tests::fixture::require_root();
    // The agents program their kernel routes and the VXLAN device with no
    // `ip` on their PATH, and ferry-cni wires the pods the same way.
    let c = Cluster::new(Binaries::locate().expect("binaries"))
        .and_then(Cluster::without_node_tools)
        .expect("cluster");
    let fabric = Fabric::create(&c.run_id).expect("fabric");
    let nodes = ferry_tests::fixture::nodes_on_fabric(&c, &fabric, &NODES, routing, &[]);
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    let client = n1.add_pod("client").unwrap();
    let c2 = n2.add_pod("c2").unwrap();
    let mut b2 = n2.add_pod("b2").unwrap();
    b2.serve(8080).unwrap();
    let mut b3 = n3.add_pod("b3").unwrap();
    b3.serve(8080).unwrap();
    c.write_manifest(&web_manifest(&[&b2, &b3], &["n2", "n3"]))
        .unwrap();

    // Ready: every agent programmed both backends, and the pods on n1 reach
    // both remote backends by IP.
    wait_for(&nodes, "2 backends for the ClusterIP on every node", || {
        nodes.iter().all(|n| vip_backends(n) == 2)
    });
    wait_for(&nodes, "client on n1 reaches b2 and b3 by pod IP", || {
        tcp_whoami(&client, b2.ip, 8080).is_ok() && tcp_whoami(&client, b3.ip, 8080).is_ok()
    });

    // (a) Pod to pod across nodes, by pod IP.
    for b in [&b2, &b3] {
        let what = format!("client on n1 -> {} at {}:8080", b.name, b.ip);
        expect_name(
            &nodes,
            &format!("TCP {what}"),
            tcp_whoami(&client, b.ip, 8080),
            &b.name,
        );
        expect_name(
            &nodes,
            &format!("UDP {what}"),
            udp_whoami(&client, b.ip, 8080),
            &b.name,
        );
    }
    let what = format!("b3 on n3 -> b2 at {}:8080", b2.ip);
    expect_name(
        &nodes,
        &format!("TCP {what}"),
        tcp_whoami(&b3, b2.ip, 8080),
        "b2",
    );
    expect_name(
        &nodes,
        &format!("UDP {what}"),
        udp_whoami(&b3, b2.ip, 8080),
        "b2",
    );

    // The node itself (host network: the kubelet, host-network pods)
    // reaches pods on the other nodes too, through the routes the agent
    // installs for their pod CIDRs.
    for b in [&b2, &b3] {
        let (ip, want) = (b.ip, b.name.clone());
        let got = ferry_harness::in_netns(&n1.netns.path(), move || -> anyhow::Result<String> {
            let mut s = TcpStream::connect_timeout(&(ip, 8080).into(), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"?")?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        })
        .unwrap();
        match got {
            Ok(name) => assert_eq!(name, want),
            Err(e) => panic!("node n1 -> {want} at {ip}: {e:#}\n{}", logs(&nodes)),
        }
    }

    // (b) The ClusterIP from n1 lands on both remote backends.
    let both: BTreeSet<String> = ["b2", "b3"].iter().map(|s| s.to_string()).collect();
    let tcp = names_seen(&nodes, 60, "TCP client -> ClusterIP:80", || {
        tcp_whoami(&client, VIP, 80)
    });
    assert_eq!(
        tcp,
        both,
        "TCP through the ClusterIP from n1\n{}",
        logs(&nodes)
    );
    let udp = names_seen(&nodes, 60, "UDP client -> ClusterIP:53", || {
        udp_whoami(&client, VIP, 53)
    });
    assert_eq!(
        udp,
        both,
        "UDP through the ClusterIP from n1\n{}",
        logs(&nodes)
    );

    // (c) From n2 too: some answers come from its own node's b2, which is
    // fine; none from anything but b2 or b3.
    let tcp = names_seen(&nodes, 20, "TCP c2 -> ClusterIP:80", || {
        tcp_whoami(&c2, VIP, 80)
    });
    assert!(
        !tcp.is_empty() && tcp.is_subset(&both),
        "TCP through the ClusterIP from n2: {tcp:?}\n{}",
        logs(&nodes)
    );
    let udp = names_seen(&nodes, 20, "UDP c2 -> ClusterIP:53", || {
        udp_whoami(&c2, VIP, 53)
    });
    assert!(
        !udp.is_empty() && udp.is_subset(&both),
        "UDP through the ClusterIP from n2: {udp:?}\n{}",
        logs(&nodes)
    );

    // The kernel routes to the other nodes' pod CIDRs, as the mode wants
    // them, and the VXLAN device as ferry makes it.
    for (_, addr, cidr) in &NODES[1..] {
        let route = route_on(n1, cidr);
        let want = match routing {
            "vxlan" => format!("{cidr} encap ip id 1 src 0.0.0.0 dst {addr} "),
            _ => format!("{cidr} via {addr} dev eth0"),
        };
        assert!(route.starts_with(&want), "n1's route to {cidr}: {route}");
        if routing == "vxlan" {
            assert!(route.ends_with(" dev ferry-vxlan scope link"), "{route}");
        }
    }
    if routing == "vxlan" {
        let device = n1
            .netns
            .exec(&["ip", "-d", "link", "show", "ferry-vxlan"])
            .unwrap();
        for want in [
            "NOARP",
            "UP",
            "vxlan external",
            "dstport 4789",
            "nolearning",
        ] {
            assert!(device.contains(want), "ferry-vxlan lacks {want}: {device}");
        }
    }

    // (d) The mode is the one asked for: VXLAN carries the traffic, or no
    // VXLAN device exists at all.
    let vxlan = n3
        .netns
        .exec(&["ip", "-j", "-s", "link", "show", "ferry-vxlan"]);
    match routing {
        "vxlan" => {
            let json = vxlan.unwrap_or_else(|e| panic!("no VXLAN device on n3: {e:#}"));
            let stats: serde_json::Value = serde_json::from_str(&json).unwrap();
            let rx = stats[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0);
            assert!(rx > 0, "nothing was decapsulated on n3: {json}");
        }
        _ => assert!(vxlan.is_err(), "native routing made a VXLAN device"),
    }

    // (e) An established connection through the ClusterIP to a backend on
    // another node survives every agent restarting, and a restarted agent
    // reuses the uplink's attachment instead of stacking a second program.
    let mut conn = client
        .run(|| TcpStream::connect_timeout(&(VIP, 80).into(), Duration::from_secs(2)))
        .unwrap()
        .expect("connect to the ClusterIP");
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut ask = |msg: &[u8]| -> String {
        conn.write_all(msg).unwrap();
        let mut buf = [0u8; 256];
        let n = conn.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    let backend = ask(b"?");
    let mut nodes = nodes;
    for n in &mut nodes {
        n.kill_agent().unwrap();
    }
    assert_eq!(
        ask(b"?"),
        backend,
        "agents down: same connection, same backend"
    );
    for n in &mut nodes {
        n.start_agent().unwrap();
    }
    wait_for(&nodes, "every restarted agent synced", || {
        nodes.iter().all(|n| {
            let log = n.agent_log();
            log.matches("dataplane loaded").count() == 2
                && log
                    .rsplit_once("dataplane loaded")
                    .is_some_and(|(_, after)| after.contains("frontends="))
        })
    });
    assert_eq!(
        ask(b"?"),
        backend,
        "agents back: same connection, same backend"
    );
    for n in &nodes {
        let programs = ferry_harness::in_netns(&n.netns.path(), || {
            aya::programs::SchedClassifier::query_tcx("eth0", aya::programs::TcAttachType::Ingress)
                .map(|(_, progs)| progs.len())
                .map_err(|e| e.to_string())
        })
        .unwrap()
        .unwrap();
        assert_eq!(programs, 1, "programs on the uplink of {}", n.name);
    }
    drop(conn);

    // A node that leaves takes its route along.
    c.write_manifest(&manifest::join(&nodes_manifest()[..2]))
        .unwrap();
    let gone = NODES[2].2;
    wait_for(&nodes, "n1's route to n3's pod CIDR removed", || {
        route_on(&nodes[0], gone).is_empty()
    });
    assert!(!route_on(&nodes[0], NODES[1].2).is_empty());

    // Pods go before their nodes, nodes before the fabric.
    drop((client, c2, b2, b3));
    drop(nodes);
    drop(fabric);
}

/// `ip -4 route show CIDR` on `node`, single-spaced.
fn route_on(node: &Node, cidr: &str) -> String {
    let out = node
        .netns
        .exec(&["ip", "-4", "route", "show", cidr])
        .unwrap();
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn pods_and_clusterip_across_nodes_with_native_routing() {
    cross_node("native");
}

#[test]
fn pods_and_clusterip_across_nodes_with_vxlan() {
    cross_node("vxlan");
}
