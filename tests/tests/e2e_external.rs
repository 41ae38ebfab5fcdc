//! Clients outside the cluster, end to end on three nodes: NodePorts on
//! every node reach every backend (TCP and UDP; SNAT to the node for
//! backends elsewhere), externalTrafficPolicy Local keeps the client's
//! address and refuses on nodes without a local backend while the
//! healthCheckNodePort answers 503 there, LoadBalancer ingress IPs and
//! externalIPs are served. Both routing modes.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Fabric, Netns, Node, manifest};
use ferry_tests::{
    capture::{Capture, checksums_ok, tcp_tuple},
    client::{http_get_in, tcp_ask_in, udp_ask_in},
};

/// (node, fabric address, podCIDR)
const NODES: [(&str, Ipv4Addr, &str); 3] = [
    ("n1", Ipv4Addr::new(192, 168, 77, 11), "10.244.1.0/24"),
    ("n2", Ipv4Addr::new(192, 168, 77, 12), "10.244.2.0/24"),
    ("n3", Ipv4Addr::new(192, 168, 77, 13), "10.244.3.0/24"),
];
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
/// Routed by the external client through n2 (as a load balancer would).
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Routed by the external client through n3.
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const WEB_NODEPORT: u16 = 30080;
const WEB_UDP_NODEPORT: u16 = 30053;
const LOCAL_NODEPORT: u16 = 30090;
const HEALTH_PORT: u16 = 32100;

fn objects(b2: Ipv4Addr, b3: Ipv4Addr) -> String {
    let mut docs: Vec<String> = NODES
        .iter()
        .map(|(name, addr, cidr)| manifest::node_with_address(name, cidr, *addr))
        .collect();
    docs.push(manifest::node_port_service(
        "web",
        "NodePort",
        Ipv4Addr::new(10, 96, 0, 10),
        &format!("  externalIPs: [{EXTERNAL_IP}]\n"),
        &[
            ("http", 80, "TCP", 8080, WEB_NODEPORT),
            ("dns", 53, "UDP", 8080, WEB_UDP_NODEPORT),
        ],
    ));
    docs.push(manifest::endpoint_slice_on_nodes(
        "web",
        &[(b2, "n2"), (b3, "n3")],
        &[("http", 8080, "TCP"), ("dns", 8080, "UDP")],
    ));
    docs.push(
        manifest::node_port_service(
            "local",
            "LoadBalancer",
            Ipv4Addr::new(10, 96, 0, 20),
            &format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_PORT}\n"),
            &[("http", 80, "TCP", 8080, LOCAL_NODEPORT)],
        ) + &format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n"),
    );
    docs.push(
        manifest::endpoint_slice_on_nodes("local", &[(b2, "n2")], &[("http", 8080, "TCP")])
            .replace("name: local-slice", "name: local-slice-1"),
    );
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

fn external(routing: &str) {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let fabric = Fabric::create(&c.run_id).expect("fabric");
    // Native routing with XDP on the uplink (generic mode, as veth offers
    // no native XDP_TX here); VXLAN has no XDP path.
    let xdp: &[&str] = if routing == "native" {
        &["--xdp", "generic"]
    } else {
        &[]
    };
    let nodes = ferry_tests::fixture::nodes_on_fabric(&c, &fabric, &NODES, routing, xdp);
    let outside: Netns = c
        .external_host(&fabric, "outside", CLIENT_ADDR)
        .expect("external client");
    // A load balancer would send LB_IP traffic to n2 and the externalIP to
    // n3; the client's routes stand in for it.
    outside
        .exec(&[
            "ip",
            "route",
            "add",
            &format!("{LB_IP}/32"),
            "via",
            "192.168.77.12",
        ])
        .unwrap();
    outside
        .exec(&[
            "ip",
            "route",
            "add",
            &format!("{EXTERNAL_IP}/32"),
            "via",
            "192.168.77.13",
        ])
        .unwrap();
    let client = outside.path();

    let mut b2 = nodes[1].add_pod("b2").unwrap();
    b2.serve(8080).unwrap();
    let mut b3 = nodes[2].add_pod("b3").unwrap();
    b3.serve(8080).unwrap();
    // Full checksums on every sender, as frames from a physical network
    // carry: XDP's incremental update needs them (an offloaded frame's
    // field holds only a partial sum). The fabric capture below checks every
    // checksum on the wire; receivers behind a veth would not.
    outside
        .exec(&["ethtool", "-K", "eth0", "tx", "off"])
        .unwrap();
    b2.full_checksums().unwrap();
    b3.full_checksums().unwrap();
    c.write_manifest(&objects(b2.ip, b3.ip)).unwrap();

    // Ready when every node answers its NodePort.
    let start = Instant::now();
    while !NODES
        .iter()
        .all(|(_, addr, _)| tcp_ask_in(&client, *addr, WEB_NODEPORT, b"?").is_ok())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "NodePorts not answering within 10 s\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The NodePort of every node reaches every backend, TCP and UDP; n1 has
    // no backend at all, so everything it serves went to another node.
    let both: BTreeSet<String> = ["b2", "b3"].iter().map(|s| s.to_string()).collect();
    // Every frame on the fabric while the NodePorts are asked: what ferry
    // (tc or XDP) wrote must carry valid IPv4 and TCP/UDP checksums. The
    // test checks them itself; receivers behind a veth would not.
    // The fabric's ports (p0..p3: n1, n2, n3, the client), not the bridge
    // device, which sees only what is addressed to it.
    let captures: Vec<Capture> = (0..4)
        .map(|i| Capture::start(&fabric.netns.path(), &format!("p{i}")).unwrap())
        .collect();
    for (name, addr, _) in NODES {
        let answers: Vec<String> = (0..40)
            .map(|_| {
                tcp_ask_in(&client, addr, WEB_NODEPORT, b"?").unwrap_or_else(|e| {
                    panic!(
                        "TCP to {name} {addr}:{WEB_NODEPORT}: {e:#}\n{}",
                        logs(&nodes)
                    )
                })
            })
            .collect();
        let tcp: BTreeSet<String> = answers.iter().cloned().collect();
        assert_eq!(tcp, both, "TCP NodePort on {name}\n{}", logs(&nodes));
        // Uniform over both backends, wherever they live (binomial(40, 1/2)
        // falls outside 8..=32 with probability 4e-5).
        let b2_hits = answers.iter().filter(|a| *a == "b2").count();
        assert!(
            (8..=32).contains(&b2_hits),
            "NodePort on {name}: b2 answered {b2_hits} of 40\n{}",
            logs(&nodes)
        );
        let udp: BTreeSet<String> = (0..40)
            .map(|_| {
                udp_ask_in(&client, addr, WEB_UDP_NODEPORT, b"?").unwrap_or_else(|e| {
                    panic!(
                        "UDP to {name} {addr}:{WEB_UDP_NODEPORT}: {e:#}\n{}",
                        logs(&nodes)
                    )
                })
            })
            .collect();
        assert_eq!(udp, both, "UDP NodePort on {name}\n{}", logs(&nodes));
    }
    if routing == "native" {
        // `trace --on xdp` on n1, which has no backend: XDP itself would
        // send the SYN on to n2 or n3, source-NATed to n1, out of the
        // uplink it came in on (XDP_TX), and records nothing doing so. (Now
        // that n1 has sent to both, it knows both neighbours: XDP sends
        // only to a resolved one.)
        let flows_before = nodes[0].inspect("conntrack").unwrap();
        let from = format!("{CLIENT_ADDR}:43000");
        let to = format!("{}:{WEB_NODEPORT}", NODES[0].1);
        let xdp = nodes[0]
            .trace(&["--on", "xdp", "--from", &from, "--to", &to])
            .unwrap();
        assert_eq!(xdp["outcome"], "translated_xdp", "{xdp:#}");
        assert_eq!(xdp["verdict"], "transmit (XDP_TX)", "{xdp:#}");
        assert_eq!(xdp["frontend"]["service"], "default/web:http", "{xdp:#}");
        let rewritten = |field: &str| {
            xdp["rewrites"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["field"] == field)
                .map(|r| r["after"].as_str().unwrap().to_string())
        };
        assert_eq!(
            rewritten("ip.src").as_deref(),
            Some("192.168.77.11"),
            "{xdp:#}"
        );
        let dst = rewritten("ip.dst").unwrap();
        assert!(
            dst.starts_with("10.244.2.") || dst.starts_with("10.244.3."),
            "{xdp:#}"
        );
        assert_eq!(
            nodes[0].inspect("conntrack").unwrap(),
            flows_before,
            "an XDP trace recorded a flow"
        );
    }

    let frames: Vec<Vec<u8>> = captures.into_iter().flat_map(Capture::finish).collect();
    let checked: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| checksums_ok(f).is_some())
        .collect();
    let bad: Vec<String> = checked
        .iter()
        .filter(|f| checksums_ok(f) == Some(false))
        .map(|f| format!("{:?}", tcp_tuple(f)))
        .collect();
    assert!(
        checked.len() > 100,
        "the capture saw the traffic: {} frames",
        frames.len()
    );
    assert!(
        bad.is_empty(),
        "{} of {} frames with a bad checksum, e.g. {:?}",
        bad.len(),
        checked.len(),
        &bad[..bad.len().min(5)]
    );
    // n1 has no backend: its NodePort traffic crossed the fabric again,
    // source-NATed to n1, towards the backends' nodes.
    let snat_frames = frames
        .iter()
        .filter_map(|f| tcp_tuple(f))
        .filter(|(src, dst, _, dport)| {
            *src == NODES[0].1.octets() && dst[..2] == [10, 244] && *dport == 8080
        })
        .count();
    // (Inside VXLAN's outer headers in that mode.)
    if routing == "native" {
        assert!(snat_frames > 0, "no source-NATed frames from n1 seen");
    }

    // With native routing, n1's NodePort traffic (all for other nodes) was
    // turned around in XDP, both ways; VXLAN has no XDP path.
    let counter = |n: &Node, outcome: &str| -> u64 {
        n.inspect("counters")
            .unwrap()
            .lines()
            .find(|l| l.split_whitespace().next() == Some(outcome))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let (xdp_out, xdp_back) = (
        counter(&nodes[0], "translated_xdp"),
        counter(&nodes[0], "reverse_translated_xdp"),
    );
    if routing == "native" {
        assert!(
            xdp_out > 0 && xdp_back > 0,
            "XDP on n1: {xdp_out} out, {xdp_back} back\n{}",
            logs(&nodes)
        );
    } else {
        assert_eq!((xdp_out, xdp_back), (0, 0));
    }
    // Sent to another node, the client's address was replaced by the
    // node's (the reply must come back through it): b3 seen through n1.
    let seen: BTreeSet<String> = (0..30)
        .filter_map(|_| {
            let who = tcp_ask_in(&client, NODES[0].1, WEB_NODEPORT, b"?").ok()?;
            let from = tcp_ask_in(&client, NODES[0].1, WEB_NODEPORT, b"@").ok()?;
            Some(format!("{who}:{from}"))
        })
        .collect();
    assert!(
        !seen.is_empty() && seen.iter().all(|s| s.ends_with(":192.168.77.11")),
        "backends behind n1's NodePort see n1's address: {seen:?}"
    );

    // externalTrafficPolicy Local: the backend sees the client's own
    // address; a node without a local backend drops (no answer), and its
    // health check says so.
    assert_eq!(
        tcp_ask_in(&client, NODES[1].1, LOCAL_NODEPORT, b"@").unwrap(),
        CLIENT_ADDR.to_string(),
        "eTP=Local keeps the client address\n{}",
        logs(&nodes)
    );
    for i in [0, 2] {
        let (name, addr, _) = NODES[i];
        let r = tcp_ask_in(&client, addr, LOCAL_NODEPORT, b"?");
        assert!(
            r.is_err(),
            "eTP=Local on {name} (no local backend) answered: {r:?}"
        );
        let (status, body) = http_get_in(&client, addr, HEALTH_PORT).unwrap();
        assert_eq!(status, 503, "health check on {name}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["localEndpoints"], 0);
        assert_eq!(json["service"]["name"], "local");
        assert_eq!(json["service"]["namespace"], "default");
    }
    let (status, body) = http_get_in(&client, NODES[1].1, HEALTH_PORT).unwrap();
    assert_eq!(status, 200, "health check on n2: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["localEndpoints"], 1);

    // Pods reach the same addresses: their own node's NodePorts, the
    // LoadBalancer IP and the externalIP, translated on their node to any
    // endpoint — for eTP=Local too (kube-proxy's short-circuit: c1's node
    // n1 has no local endpoint of `local`, yet c1 gets b2).
    let c1 = nodes[0].add_pod("c1").unwrap();
    for (what, addr, port) in [
        ("n1's own NodePort", NODES[0].1, WEB_NODEPORT),
        ("the externalIP", EXTERNAL_IP, 80),
    ] {
        let seen: BTreeSet<String> = (0..30)
            .map(|_| {
                ferry_tests::client::tcp_whoami(&c1, addr, port)
                    .unwrap_or_else(|e| panic!("pod -> {what}: {e:#}\n{}", logs(&nodes)))
            })
            .collect();
        assert_eq!(seen, both, "pod -> {what}\n{}", logs(&nodes));
    }
    for (what, addr, port) in [
        ("the eTP=Local LoadBalancer IP", LB_IP, 80),
        ("n1's eTP=Local NodePort", NODES[0].1, LOCAL_NODEPORT),
    ] {
        assert_eq!(
            ferry_tests::client::tcp_whoami(&c1, addr, port)
                .unwrap_or_else(|e| panic!("pod -> {what}: {e:#}\n{}", logs(&nodes))),
            "b2",
            "pod -> {what}"
        );
    }
    drop(c1);

    // The LoadBalancer ingress IP (eTP Local, through n2) and the
    // externalIP (eTP Cluster, through n3).
    assert_eq!(
        tcp_ask_in(&client, LB_IP, 80, b"@").unwrap(),
        CLIENT_ADDR.to_string(),
        "LoadBalancer IP\n{}",
        logs(&nodes)
    );
    let via_external_ip: BTreeSet<String> = (0..40)
        .map(|_| tcp_ask_in(&client, EXTERNAL_IP, 80, b"?").unwrap())
        .collect();
    assert_eq!(via_external_ip, both, "externalIP\n{}", logs(&nodes));
    // NodePorts answer on the node's own addresses only.
    assert!(tcp_ask_in(&client, LB_IP, WEB_NODEPORT, b"?").is_err());

    drop((b2, b3));
    drop(outside);
    drop(nodes);
    drop(fabric);
}

#[test]
fn external_clients_through_every_node_with_native_routing() {
    external("native");
}

#[test]
fn external_clients_through_every_node_with_vxlan() {
    external("vxlan");
}
