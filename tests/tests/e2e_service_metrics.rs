//! Per-Service metrics end to end (issue 14, item 3): TCP connections to
//! one Service raise that Service's `ferry_service_*` counters on the
//! agent's `/metrics`, and no other Service's; connections to a Service
//! without endpoints show up as its `rejected_no_endpoints` drops.
use std::net::Ipv4Addr;

use ferry_harness::{Binaries, Cluster, Node, manifest};
use ferry_tests::{
    client::{tcp_connect_error, tcp_whoami, wait_until_answers},
    metrics::{sample, scrape, service_labels},
};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const API: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const CIDR: &str = "10.244.1.0/24";

/// One Service port's counters at one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    packets: f64,
    bytes: f64,
    new_connections: f64,
    rejected: f64,
}

fn counts(text: &str, service: &str) -> Counts {
    let labels = service_labels("default", service, "http", "TCP");
    let get = |name: &str, labels: &str| {
        sample(text, name, labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in the scrape:\n{text}"))
    };
    Counts {
        packets: get("ferry_service_packets_total", &labels),
        bytes: get("ferry_service_bytes_total", &labels),
        new_connections: get("ferry_service_new_connections_total", &labels),
        rejected: get(
            "ferry_service_drops_total",
            &format!("{labels},reason=\"rejected_no_endpoints\""),
        ),
    }
}

/// The lines of `text` about `services` and the node-wide gauges: what
/// the README shows.
fn excerpt(text: &str) -> String {
    text.lines()
        .filter(|l| {
            (l.starts_with("ferry_service_") && !l.contains(",reason=\"drop_"))
                || l.starts_with("ferry_conntrack_flows")
                || l.starts_with("ferry_snat_ports")
                || l.starts_with("ferry_sync_last_timestamp_seconds ")
                || l.starts_with("ferry_datapath_packets_total{outcome=\"rejected_no_endpoints\"}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn per_service_counters_rise_on_the_right_service_only() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    // Garbage collection every second: the conntrack gauges come from it.
    let node: Node = c.node_with("n1", &["--gc-interval-secs", "1"]).unwrap();
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    let port = [("http", 80, "TCP", 8080)];
    let slice_ports = [("http", 8080, "TCP")];
    c.write_manifest(&manifest::join(&[
        manifest::node("n1", CIDR),
        manifest::service("web", WEB, &port),
        manifest::endpoint_slice("web", "n1", &ips, &slice_ports),
        manifest::service("api", API, &port),
        manifest::endpoint_slice("api", "n1", &ips, &slice_ports),
        manifest::service("empty", EMPTY, &port),
    ]))
    .unwrap();
    wait_until_answers(&client, WEB, 80, || node.agent_log());

    let before = scrape(&node).unwrap();
    let (web0, api0, empty0) = (
        counts(&before, "web"),
        counts(&before, "api"),
        counts(&before, "empty"),
    );
    // Only the connections that found web answering went there so far.
    assert!(web0.new_connections >= 1.0, "{web0:?}\n{before}");
    assert_eq!(api0.new_connections, 0.0, "{api0:?}");

    const CONNECTIONS: usize = 10;
    for _ in 0..CONNECTIONS {
        tcp_whoami(&client, WEB, 80).expect("web answers");
    }
    let after = scrape(&node).unwrap();
    let (web1, api1, empty1) = (
        counts(&after, "web"),
        counts(&after, "api"),
        counts(&after, "empty"),
    );
    let n = CONNECTIONS as f64;
    assert_eq!(
        web1.new_connections - web0.new_connections,
        n,
        "one new connection each: {web0:?} -> {web1:?}"
    );
    // A connection is at least SYN, ACK, request, FIN, ACK one way and
    // SYN-ACK, answer, FIN, ACK the other, every one translated.
    assert!(
        web1.packets - web0.packets >= 8.0 * n,
        "packets: {web0:?} -> {web1:?}"
    );
    // Each of them at least an IPv4 and a TCP header.
    assert!(
        web1.bytes - web0.bytes >= 40.0 * (web1.packets - web0.packets),
        "bytes: {web0:?} -> {web1:?}"
    );
    assert_eq!(web1.rejected, web0.rejected, "web dropped nothing");
    assert_eq!(api1, api0, "api got none of web's traffic");
    assert_eq!(empty1, empty0, "empty got none of web's traffic");

    // A Service without endpoints refuses, and counts why.
    const REFUSED: usize = 3;
    for _ in 0..REFUSED {
        let e = tcp_connect_error(&client, EMPTY, 80).unwrap();
        assert_eq!(e, Some(std::io::ErrorKind::ConnectionRefused));
    }
    // The conntrack gauges of a walk after the connections.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let last = scrape(&node).unwrap();
    let (web2, api2, empty2) = (
        counts(&last, "web"),
        counts(&last, "api"),
        counts(&last, "empty"),
    );
    assert!(
        empty2.rejected - empty1.rejected >= REFUSED as f64,
        "rejected_no_endpoints: {empty1:?} -> {empty2:?}"
    );
    assert_eq!(
        empty2.new_connections, 0.0,
        "a refused connection is no new connection"
    );
    assert_eq!(web2, web1, "web got none of the refused connections");
    assert_eq!(api2, api0, "api got nothing at all");
    let rejected = |t: &str| {
        sample(
            t,
            "ferry_datapath_packets_total",
            "outcome=\"rejected_no_endpoints\"",
        )
        .unwrap()
    };
    assert!(rejected(&last) - rejected(&after) >= REFUSED as f64);
    // The node-wide gauges: the default --snat-ports 61000-65535, and the
    // garbage collection walk's live TCP flows (closed ones live 10 s).
    assert_eq!(sample(&last, "ferry_snat_ports_capacity", ""), Some(4536.0));
    let tcp_flows = sample(&last, "ferry_conntrack_flows", "protocol=\"TCP\"");
    assert!(tcp_flows.is_some_and(|f| f >= 1.0), "{last}");
    assert!(sample(&last, "ferry_sync_last_timestamp_seconds", "").is_some_and(|t| t > 1.7e9));
    println!("{}", excerpt(&last));
    drop(backends);
    drop(client);
}
