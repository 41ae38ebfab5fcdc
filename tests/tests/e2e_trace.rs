//! `ferry-agent trace` against a running node (issue 14, item 1): a SYN
//! from a pod to a ClusterIP names the Service and a backend of its set; a
//! SYN to a Service without endpoints is rejected; a packet another pod's
//! address is forged into is dropped as spoofed; and no trace changes any
//! map (every pinned map dumped by bpftool before and after).
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, manifest};
use ferry_tests::{client::wait_until_answers, fixture::client_and_three_backends};

const CIDR: &str = "10.244.1.0/24";
const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 70);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 71);

#[test]
fn a_trace_explains_a_packet_and_changes_no_map() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
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
    let start = Instant::now();
    // Real traffic made entries (conntrack, counters): the trace must leave
    // them exactly as they are. First let that traffic's last packets (the
    // closing handshake) settle: two dumps a moment apart agree.
    let traced_counters = || {
        let table = node.inspect("counters").unwrap();
        table
            .lines()
            .filter(|l| {
                let outcome = l.split_whitespace().next().unwrap_or("");
                ["translated", "rejected_no_endpoints", "passed"].contains(&outcome)
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let counters_before = traced_counters();
    let mut before = node.dump_maps().unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let again = node.dump_maps().unwrap();
        if again == before {
            break;
        }
        before = again;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "maps never settled"
        );
    }
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

    let after = node.dump_maps().unwrap();
    // The counters are compared for the outcomes the traces had, not
    // whole: the pods' own IPv6 (router solicitations, seconds apart) goes
    // on counting `passed_not_ipv4` meanwhile.
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a && b.0 != ferry_common::MAP_COUNTERS)
        .map(|(b, _)| b.0.as_str())
        .collect();
    assert!(changed.is_empty(), "the traces changed maps {changed:?}");
    assert_eq!(traced_counters(), counters_before, "the traces counted");
    // The client's pod is the only one that can be traced from it.
    let err = node
        .trace(&["--from", "10.244.1.250", "--to", &format!("{WEB}:80")])
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not a pod on this node"),
        "{err:#}"
    );
}
