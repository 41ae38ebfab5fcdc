//! `ferry_svc_stats`, the per-frontend counters behind the per-Service
//! metrics, through BPF_PROG_TEST_RUN: a packet is counted for the frontend
//! whose flow it belongs to (both directions), a flow once when it starts,
//! a refused packet under its reason, and nothing for any other frontend.
use std::net::Ipv4Addr;

use ferry_common::{
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SERVICE_DROP_OUTCOMES, ServiceKey, ServiceStats, outcome,
};
use ferry_tests::{
    fixture::{FABRIC_NODE, Kernel, TC_ACT_OK, TC_ACT_REDIRECT, backend, frontend},
    packet::{Packet, TCP_ACK, TCP_PSH, TCP_SYN},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const DNS_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const XDP_PASS: u32 = 2;

/// The frame's length as the programs count it.
fn len(p: &Packet) -> u64 {
    p.bytes().len() as u64
}

fn drops(stats: &ServiceStats, outcome: u32) -> u64 {
    let slot = SERVICE_DROP_OUTCOMES
        .iter()
        .position(|o| *o == outcome)
        .expect("a per-Service drop reason");
    stats.drops[slot]
}

#[test]
fn a_flow_counts_for_its_frontend_only_both_ways_and_starts_once() {
    let mut k = Kernel::load();
    let web = k
        .services
        .upsert(frontend(WEB_VIP, 80, PROTO_TCP), &[backend(WEB_POD, 8080)])
        .unwrap();
    let dns = k
        .services
        .upsert(frontend(DNS_VIP, 53, PROTO_UDP), &[backend(DNS_POD, 5353)])
        .unwrap();
    let c = (CLIENT, 40000);
    let vip = (WEB_VIP, 80);
    let pod = (WEB_POD, 8080);
    let syn = Packet::tcp(c, vip, TCP_SYN, b"");
    let syn_ack = Packet::tcp(pod, c, TCP_SYN | TCP_ACK, b"");
    let data = Packet::tcp(c, vip, TCP_ACK | TCP_PSH, b"GET / HTTP/1.1\r\n\r\n");

    assert_eq!(k.run(&syn.bytes()).0, TC_ACT_OK);
    let after_syn = k.service_stats(web);
    assert_eq!(
        (
            after_syn.packets,
            after_syn.bytes,
            after_syn.new_connections
        ),
        (1, len(&syn), 1),
        "the SYN started one flow of web and is its first packet"
    );

    assert_eq!(k.run(&syn_ack.bytes()).0, TC_ACT_OK);
    assert_eq!(k.run(&data.bytes()).0, TC_ACT_OK);
    let after = k.service_stats(web);
    assert_eq!(
        (after.packets, after.bytes, after.new_connections),
        (3, len(&syn) + len(&syn_ack) + len(&data), 1),
        "the reply and the next packet count for the same flow, which started once"
    );
    assert_eq!(after.drops, [0; ferry_common::SERVICE_DROP_REASONS]);
    assert_eq!(
        k.service_stats(dns),
        ServiceStats::default(),
        "another Service's frontend counted nothing"
    );

    // A packet that is no Service's counts for none.
    let direct = Packet::tcp(c, (DNS_POD, 9000), TCP_SYN, b"");
    k.run(&direct.bytes());
    assert_eq!(k.service_stats(web), after);
    assert_eq!(k.service_stats(dns), ServiceStats::default());

    // The datagram to the other Service counts there.
    let query = Packet::udp((CLIENT, 5000), (DNS_VIP, 53), b"query");
    k.run(&query.bytes());
    let dns_stats = k.service_stats(dns);
    assert_eq!(
        (
            dns_stats.packets,
            dns_stats.bytes,
            dns_stats.new_connections
        ),
        (1, len(&query), 1)
    );
    assert_eq!(k.service_stats(web), after, "web unchanged by dns traffic");
}

#[test]
fn a_refused_packet_counts_as_a_drop_of_its_frontend_under_its_reason() {
    let mut k = Kernel::load();
    let empty = k
        .services
        .upsert(frontend(EMPTY_VIP, 80, PROTO_TCP), &[])
        .unwrap();
    let web = k
        .services
        .upsert(frontend(WEB_VIP, 80, PROTO_TCP), &[backend(WEB_POD, 8080)])
        .unwrap();
    let syn = Packet::tcp((CLIENT, 40001), (EMPTY_VIP, 80), TCP_SYN, b"");
    let (verdict, _) = k.run(&syn.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT, "rejected with an ICMP answer");
    let stats = k.service_stats(empty);
    assert_eq!(drops(&stats, outcome::REJECTED_NO_ENDPOINTS), 1);
    assert_eq!(
        (stats.packets, stats.bytes, stats.new_connections),
        (0, 0, 0),
        "a refused packet is no packet of a flow"
    );
    assert_eq!(stats.drops.iter().sum::<u64>(), 1, "one reason only");
    assert_eq!(k.service_stats(web), ServiceStats::default());
}

#[test]
fn a_trace_counts_nothing_for_the_frontend() {
    let mut k = Kernel::load();
    let web = k
        .services
        .upsert(frontend(WEB_VIP, 80, PROTO_TCP), &[backend(WEB_POD, 8080)])
        .unwrap();
    let empty = k
        .services
        .upsert(frontend(EMPTY_VIP, 80, PROTO_TCP), &[])
        .unwrap();
    let syn = Packet::tcp((CLIENT, 40002), (WEB_VIP, 80), TCP_SYN, b"");
    let (_, _, traced) = k.run_traced(&syn.bytes());
    assert_eq!(traced, Some(outcome::TRANSLATED));
    let refused = Packet::tcp((CLIENT, 40003), (EMPTY_VIP, 80), TCP_SYN, b"");
    let (_, _, traced) = k.run_traced(&refused.bytes());
    assert_eq!(traced, Some(outcome::REJECTED_NO_ENDPOINTS));
    assert_eq!(k.service_stats(web), ServiceStats::default());
    assert_eq!(k.service_stats(empty), ServiceStats::default());
    // The real packet counts.
    k.run(&syn.bytes());
    assert_eq!(k.service_stats(web).new_connections, 1);
}

#[test]
fn an_external_flow_started_in_xdp_and_carried_by_tc_counts_once() {
    let node = FABRIC_NODE;
    let client = Ipv4Addr::new(192, 0, 2, 50);
    let mut k = Kernel::load();
    k.on_fabric();
    k.add_local_pod(WEB_POD);
    let node_port = ServiceKey {
        addr: node.octets(),
        port: 30080,
        protocol: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    };
    let id = k
        .services
        .upsert_frontend(node_port, &[backend(WEB_POD, 8080)], "default/web:http", 0)
        .unwrap();
    let syn = Packet::tcp((client, 40000), (node, 30080), TCP_SYN, b"");
    // XDP records the flow to the local backend and leaves its packets to tc.
    let (action, _) = k.run_xdp(&syn.bytes());
    assert_eq!(action, XDP_PASS);
    let stats = k.service_stats(id);
    assert_eq!(
        (stats.packets, stats.new_connections),
        (0, 1),
        "the flow started in XDP"
    );
    let (verdict, _) = k.run_from_network(&syn.bytes());
    assert!(
        verdict == TC_ACT_OK || verdict == TC_ACT_REDIRECT,
        "{verdict}"
    );
    let stats = k.service_stats(id);
    assert_eq!(
        (stats.packets, stats.bytes, stats.new_connections),
        (1, len(&syn), 1),
        "tc counted the packet it translated, not a second flow"
    );
    // The backend's answer comes back through the pod hook.
    let syn_ack = Packet::tcp((WEB_POD, 8080), (client, 40000), TCP_SYN | TCP_ACK, b"");
    k.run(&syn_ack.bytes());
    assert_eq!(k.service_stats(id).packets, 2);
}
