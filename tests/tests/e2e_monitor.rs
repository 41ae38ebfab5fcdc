//! `ferry-agent monitor` against a running node (issue 14, item 2): a drop
//! caused on purpose (a pod forging another pod's address) is shown with
//! its reason and packet; a pod's new connection to a ClusterIP is shown
//! with its Service and backend; and the events are switched off again
//! when the monitor stops.
use std::{
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    process::Child,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Node, Pod, manifest};
use ferry_tests::{
    capture::send_frame,
    client::tcp_whoami,
    packet::{Packet, TCP_SYN},
};

const CIDR: &str = "10.244.1.0/24";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);

fn mac(pod: &Pod, interface: usize) -> [u8; 6] {
    let text = pod.result["interfaces"][interface]["mac"].as_str().unwrap();
    let bytes: Vec<u8> = text
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// Start a monitor and wait until it has switched the events on.
fn monitor(node: &Node, args: &[&str]) -> Child {
    let mut child = node.spawn_monitor(args).unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let line = lines.next().expect("monitor said nothing").unwrap();
    assert!(line.contains("listening"), "monitor: {line}");
    child
}

/// The JSON lines a monitor printed before it stopped by itself.
fn events(child: Child) -> Vec<serde_json::Value> {
    let start = Instant::now();
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("the monitor did not see its event");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn monitoring_switched_off(node: &Node) -> bool {
    node.dump_maps()
        .unwrap()
        .iter()
        .find(|(name, _)| name == ferry_common::MAP_MONITOR)
        .is_some_and(|(_, dump)| dump.contains("\"flags\": 0"))
}

#[test]
fn monitor_shows_a_spoofed_drop_and_a_new_flow() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
    let victim = node.add_pod("victim").unwrap();
    let attacker = node.add_pod("attacker").unwrap();
    let mut server = node.add_pod("server").unwrap();
    server.serve(8080).unwrap();
    c.write_manifest(&manifest::join(&[
        manifest::node("n1", CIDR),
        manifest::service("web", VIP, &[("http", 80, "TCP", 8080)]),
        manifest::endpoint_slice("web", "n1", &[server.ip], &[("http", 8080, "TCP")]),
    ]))
    .unwrap();
    let start = Instant::now();
    while tcp_whoami(&victim, VIP, 80).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let drops = monitor(&node, &["--type", "drop", "--json", "--count", "1"]);
    let forged = Packet::tcp((victim.ip, 5555), (server.ip, 8080), TCP_SYN, b"")
        .with_macs(mac(&attacker, 0), mac(&attacker, 1))
        .bytes();
    send_frame(&attacker.netns.path(), "eth0", forged).unwrap();
    let seen = events(drops);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["kind"], "drop");
    assert_eq!(seen[0]["reason"], "drop_spoofed_source");
    assert_eq!(seen[0]["src"], format!("{}:5555", victim.ip));
    assert_eq!(seen[0]["dst"], format!("{}:8080", server.ip));
    assert!(
        monitoring_switched_off(&node),
        "events left on after the monitor stopped"
    );

    let flows = monitor(
        &node,
        &[
            "--type",
            "flow",
            "--service",
            "default/web",
            "--json",
            "--count",
            "1",
        ],
    );
    assert_eq!(tcp_whoami(&attacker, VIP, 80).unwrap(), "server");
    let seen = events(flows);
    assert_eq!(seen[0]["kind"], "flow", "{seen:?}");
    assert_eq!(seen[0]["service"], "default/web:http");
    assert_eq!(seen[0]["backend"], format!("{}:8080", server.ip));
    assert!(
        seen[0]["src"]
            .as_str()
            .unwrap()
            .starts_with(&attacker.ip.to_string()),
        "{seen:?}"
    );
    assert_eq!(seen[0]["dst"], format!("{VIP}:80"));
    assert!(monitoring_switched_off(&node));
}
