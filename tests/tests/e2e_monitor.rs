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

use ferry_harness::Node;
use ferry_tests::{
    capture::send_frame,
    client::{tcp_whoami, wait_until_answers},
    packet::{Packet, TCP_SYN},
    spoofing::{Cast, cast, on_the_wire},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);

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
    let Cast {
        victim,
        attacker,
        server,
        node,
        cluster: _cluster,
    } = cast(VIP);
    wait_until_answers(&victim, VIP, 80, || node.agent_log());

    let drops = monitor(&node, &["--type", "drop", "--json", "--count", "1"]);
    let forged = on_the_wire(
        &attacker,
        Packet::tcp((victim.ip, 5555), (server.ip, 8080), TCP_SYN, b""),
    );
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
