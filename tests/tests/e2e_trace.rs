//! `ferry-agent trace` against a running node (issue 14, item 1): a SYN
//! from a pod to a ClusterIP names the Service and a backend of its set; a
//! SYN to a Service without endpoints is rejected; a packet another pod's
//! address is forged into is dropped as spoofed; and no trace changes any
//! map (every pinned map dumped by bpftool before and after).
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Fabric, Node, manifest};
use ferry_tests::{
    client::{tcp_ask_in, wait_until_answers},
    fixture::client_and_three_backends,
    packet::{Packet, TCP_SYN},
};

const CIDR: &str = "10.244.1.0/24";
const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 70);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 71);

/// Agent arguments that keep garbage collection out of a test's way.
const NO_GC: &[&str] = &["--gc-interval-secs", "3600"];

/// The counters of the outcomes traces have. Compared alone, not the map
/// whole: the pods' own IPv6 (router solicitations, seconds apart) goes on
/// counting `passed_not_ipv4` meanwhile.
fn traced_counters(node: &Node) -> Vec<String> {
    let table = node.inspect("counters").unwrap();
    table
        .lines()
        .filter(|l| {
            let outcome = l.split_whitespace().next().unwrap_or("");
            ["translated", "rejected_no_endpoints", "passed"].contains(&outcome)
        })
        .map(str::to_string)
        .collect()
}

/// Every pinned map, once real traffic's last packets (a closing
/// handshake) have settled: two dumps a moment apart agree.
fn settled_maps(node: &Node) -> Vec<(String, String)> {
    let start = Instant::now();
    let mut before = node.dump_maps().unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let again = node.dump_maps().unwrap();
        if again == before {
            return before;
        }
        before = again;
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "maps never settled"
        );
    }
}

/// The maps that differ, the counters aside (see `traced_counters`).
fn changed_maps(before: &[(String, String)], after: &[(String, String)]) -> Vec<String> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b != a && b.0 != ferry_common::MAP_COUNTERS)
        .map(|(b, _)| b.0.clone())
        .collect()
}

#[test]
fn a_trace_explains_a_packet_and_changes_no_map() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    // No garbage collection during the test: the maps may change only by
    // what the test does.
    let node = c.node_with("n1", NO_GC).unwrap();
    let (client, backends) = client_and_three_backends(&node);
    let ips: Vec<Ipv4Addr> = backends.iter().map(|b| b.ip).collect();
    c.write_manifest(&manifest::join(&[
        manifest::node("n1", CIDR),
        manifest::service("web", WEB, &[("http", 80, "TCP", 8080)]),
        manifest::endpoint_slice("web", "n1", &ips, &[("http", 8080, "TCP")]),
        manifest::service("empty", EMPTY, &[("http", 80, "TCP", 8080)]),
        manifest::endpoint_slice("empty", "n1", &[], &[("http", 8080, "TCP")]),
    ]))
    .unwrap();
    wait_until_answers(&client, WEB, 80, || node.agent_log());
    let counters_before = traced_counters(&node);
    let before = settled_maps(&node);
    let from = format!("{}:41000", client.ip);

    let syn = node
        .trace(&["--from", &from, "--to", &format!("{WEB}:80")])
        .unwrap();
    assert_eq!(syn["frontend"]["service"], "default/web:http", "{syn:#}");
    assert_eq!(syn["flow"], "new flow", "{syn:#}");
    assert_eq!(syn["outcome"], "translated", "{syn:#}");
    let backend = syn["backend"].as_str().unwrap().to_string();
    let set: Vec<String> = ips.iter().map(|ip| format!("{ip}:8080")).collect();
    assert!(set.contains(&backend), "{backend} not of {set:?}");
    assert_eq!(syn["frontend"]["backends"].as_array().unwrap().len(), 3);
    assert!(
        syn["rewrites"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["field"] == "ip.dst" && r["after"] == backend.split(':').next().unwrap()),
        "{syn:#}"
    );
    assert!(
        syn["next_hop"].as_str().unwrap().contains("local pod"),
        "{syn:#}"
    );

    let text = node
        .trace_text(&["--from", &from, "--to", &format!("{WEB}:80")])
        .unwrap();
    eprintln!("{text}");
    assert!(
        text.contains("default/web:http") && text.contains("translated"),
        "{text}"
    );

    let reject = node
        .trace(&["--from", &from, "--to", &format!("{EMPTY}:80")])
        .unwrap();
    assert_eq!(reject["outcome"], "rejected_no_endpoints", "{reject:#}");
    assert!(
        reject["frontend"]["backends"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{reject:#}"
    );

    let udp = node
        .trace(&[
            "--from",
            &from,
            "--to",
            &format!("{}:8080", ips[0]),
            "--proto",
            "udp",
        ])
        .unwrap();
    assert_eq!(udp["outcome"], "passed", "{udp:#}");
    // Pod to pod: straight into the pod, only the MACs written.
    assert!(
        udp["rewrites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["field"].as_str().unwrap().starts_with("eth.")),
        "{udp:#}"
    );

    let changed = changed_maps(&before, &node.dump_maps().unwrap());
    assert!(changed.is_empty(), "the traces changed maps {changed:?}");
    assert_eq!(
        traced_counters(&node),
        counters_before,
        "the traces counted"
    );
    // The client's pod is the only one that can be traced from it.
    let err = node
        .trace(&["--from", "10.244.1.250", "--to", &format!("{WEB}:80")])
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not a pod on this node"),
        "{err:#}"
    );
}

/// The uplink (`--on uplink`): an external client's SYN to a NodePort
/// names the Service and a backend of its set, as described on the command
/// line and as read from a capture file; no map changes.
#[test]
fn an_uplink_trace_explains_an_external_packet_and_changes_no_map() {
    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
    const NODE_PORT: u16 = 30081;
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let fabric = Fabric::create(&c.run_id).expect("fabric");
    c.write_manifest(&manifest::node_with_address("n1", CIDR, NODE))
        .unwrap();
    let node = c
        .node_on_fabric_with("n1", &fabric, NODE, "native", NO_GC)
        .unwrap();
    let outside = c.external_host(&fabric, "outside", CLIENT).unwrap();
    let (_client, backends) = client_and_three_backends(&node);
    let ips: Vec<Ipv4Addr> = backends.iter().map(|b| b.ip).collect();
    let on_node: Vec<(Ipv4Addr, &str)> = ips.iter().map(|ip| (*ip, "n1")).collect();
    c.write_manifest(&manifest::join(&[
        manifest::node_with_address("n1", CIDR, NODE),
        manifest::node_port_service(
            "web",
            "NodePort",
            WEB,
            "",
            &[("http", 80, "TCP", 8080, NODE_PORT)],
        ),
        manifest::endpoint_slice_on_nodes("web", &on_node, &[("http", 8080, "TCP")]),
    ]))
    .unwrap();
    let start = Instant::now();
    while tcp_ask_in(&outside.path(), NODE, NODE_PORT, b"?").is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the NodePort never answered:\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let counters_before = traced_counters(&node);
    let before = settled_maps(&node);
    let set: Vec<String> = ips.iter().map(|ip| format!("{ip}:8080")).collect();
    let check = |report: &serde_json::Value| {
        assert_eq!(
            report["frontend"]["service"], "default/web:http",
            "{report:#}"
        );
        assert_eq!(report["flow"], "new flow", "{report:#}");
        assert_eq!(report["outcome"], "translated", "{report:#}");
        let backend = report["backend"].as_str().unwrap();
        assert!(set.iter().any(|b| b == backend), "{backend} not of {set:?}");
        assert!(
            report["hook"].as_str().unwrap().contains("uplink"),
            "{report:#}"
        );
    };

    let from = format!("{CLIENT}:42000");
    let to = format!("{NODE}:{NODE_PORT}");
    let described = node
        .trace(&["--on", "uplink", "--from", &from, "--to", &to])
        .unwrap();
    check(&described);
    eprintln!(
        "{}",
        node.trace_text(&["--on", "uplink", "--from", &from, "--to", &to])
            .unwrap()
    );

    // The same SYN as tcpdump would have written it, and a second packet
    // that is no Service's.
    let syn = Packet::tcp((CLIENT, 42000), (NODE, NODE_PORT), TCP_SYN, b"").bytes();
    let other = Packet::udp((CLIENT, 5000), (NODE, 9), b"x").bytes();
    let capture = CaptureFile::write(&[&syn, &other]);
    let reports = node
        .trace(&["--on", "uplink", "--pcap", capture.path()])
        .unwrap();
    let reports = reports.as_array().expect("a list of reports");
    assert_eq!(reports.len(), 2, "{reports:#?}");
    check(&reports[0]);
    assert!(reports[1]["frontend"].is_null(), "{:#}", reports[1]);
    assert_eq!(
        reports[1]["verdict"], "pass (not ferry's: the node's own traffic)",
        "{:#}",
        reports[1]
    );

    // XDP leaves a flow to a local backend to tc (bpf_redirect_peer).
    let xdp = node
        .trace(&["--on", "xdp", "--from", &from, "--to", &to])
        .unwrap();
    assert_eq!(xdp["verdict"], "pass (left to tc)", "{xdp:#}");
    assert!(xdp["hook"].as_str().unwrap().contains("XDP"), "{xdp:#}");
    assert_eq!(xdp["frontend"]["service"], "default/web:http", "{xdp:#}");

    let changed = changed_maps(&before, &node.dump_maps().unwrap());
    assert!(changed.is_empty(), "the traces changed maps {changed:?}");
    assert_eq!(
        traced_counters(&node),
        counters_before,
        "the traces counted"
    );
}

/// A classic pcap file (Ethernet) of `frames` in the temporary directory,
/// removed when dropped.
struct CaptureFile(std::path::PathBuf);

impl CaptureFile {
    fn write(frames: &[&[u8]]) -> Self {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        for frame in frames {
            f.extend_from_slice(&[0; 8]);
            f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            f.extend_from_slice(frame);
        }
        let path = std::env::temp_dir().join(format!("ferry-trace-{}.pcap", std::process::id()));
        std::fs::write(&path, f).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for CaptureFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
