//! Trace runs in the kernel (issue 14, item 1): under the trace marker the
//! pod program writes the same bytes and returns the same verdict as for a
//! real packet, hands its outcome back in the context, and writes no map:
//! no conntrack or affinity entry, no counter, no state advanced.
use std::net::Ipv4Addr;

use ferry_agent::maps::AffinityTable;
use ferry_common::{PROTO_TCP, PROTO_UDP, outcome};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, backend, frontend},
    packet::{Packet, TCP_ACK, TCP_SYN},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);

#[test]
fn a_traced_packet_is_decided_as_a_real_one_and_writes_nothing() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(VIP, 80, PROTO_TCP), &[backend(POD, 8080)])
        .unwrap();
    k.services
        .upsert(frontend(EMPTY, 80, PROTO_TCP), &[])
        .unwrap();
    let syn = Packet::tcp((CLIENT, 40000), (VIP, 80), TCP_SYN, b"").bytes();

    let counters = k.counters();
    let (verdict, traced_out, traced_outcome) = k.run_traced(&syn);
    assert_eq!(traced_outcome, Some(outcome::TRANSLATED));
    assert!(k.flows().is_empty(), "a trace recorded a flow");
    assert_eq!(k.counters(), counters, "a trace counted");

    let (real_verdict, real_out) = k.run(&syn);
    assert_eq!((verdict, &traced_out), (real_verdict, &real_out));
    assert_eq!(real_out[30..34], POD.octets());

    // An existing flow: the trace finds it and advances nothing (the SYN
    // state and its expiry stay as they were).
    let before = k.flows();
    let ack = Packet::tcp((CLIENT, 40000), (VIP, 80), TCP_ACK, b"x").bytes();
    let (verdict, out, seen) = k.run_traced(&ack);
    assert_eq!((verdict, seen), (TC_ACT_OK, Some(outcome::TRANSLATED)));
    assert_eq!(out[30..34], POD.octets());
    assert_eq!(k.flows(), before);

    // Reject, and a packet for no Service: outcomes handed back, nothing
    // counted.
    let counters = k.counters();
    let to_empty = Packet::tcp((CLIENT, 40001), (EMPTY, 80), TCP_SYN, b"").bytes();
    assert_eq!(
        k.run_traced(&to_empty).2,
        Some(outcome::REJECTED_NO_ENDPOINTS)
    );
    let direct = Packet::udp((CLIENT, 40002), (POD, 53), b"q").bytes();
    assert_eq!(k.run_traced(&direct).2, Some(outcome::PASSED));
    assert_eq!(k.counters(), counters);
}

#[test]
fn a_trace_neither_records_nor_refreshes_affinity() {
    let mut k = Kernel::load();
    let fe = frontend(VIP, 53, PROTO_UDP);
    k.services
        .upsert_with_options(
            fe,
            &[backend(POD, 5353)],
            "default/dns:dns",
            0,
            &ferry_agent::maps::services::FrontendOptions {
                affinity_timeout_s: 600,
                source_ranges: None,
            },
        )
        .unwrap();
    let q = Packet::udp((CLIENT, 5000), (VIP, 53), b"q").bytes();
    let (_, _, seen) = k.run_traced(&q);
    assert_eq!(seen, Some(outcome::TRANSLATED));
    let affinity = AffinityTable::open(k.pin_dir()).unwrap();
    assert!(
        affinity.entries().unwrap().is_empty(),
        "a trace recorded affinity"
    );
    k.run(&q);
    let recorded = affinity.entries().unwrap();
    assert_eq!(recorded.len(), 1, "a real packet does");
    let q2 = Packet::udp((CLIENT, 5001), (VIP, 53), b"q").bytes();
    k.run_traced(&q2);
    assert_eq!(
        affinity.entries().unwrap(),
        recorded,
        "nor refreshed by a trace"
    );
}

/// The uplink's program under the trace marker (`trace --on uplink`): an
/// external client's SYN to a NodePort whose backend is on another node
/// gets the same rewrite (DNAT and source NAT to a free node port) as the
/// real packet would, and takes no port, records no flow, counts nothing.
#[test]
fn an_uplink_trace_is_decided_as_a_real_packet_and_writes_nothing() {
    use ferry_common::{SCOPE_EXTERNAL, ServiceKey};
    use ferry_tests::fixture::FABRIC_NODE;

    let node = FABRIC_NODE;
    let client = Ipv4Addr::new(192, 0, 2, 50);
    let mut k = Kernel::load();
    k.on_fabric();
    let node_port = ServiceKey {
        addr: node.octets(),
        port: 30080,
        protocol: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    };
    let id = k
        .services
        .upsert_frontend(node_port, &[backend(POD, 8080)], "default/web:http", 0)
        .unwrap();
    let syn = Packet::tcp((client, 40000), (node, 30080), TCP_SYN, b"").bytes();

    let counters = k.counters();
    let (verdict, out, seen) = k.run_traced_from_network(&syn);
    assert_eq!(seen, Some(outcome::TRANSLATED));
    assert_eq!(out[26..30], node.octets(), "source NAT to the node");
    assert_eq!(out[30..34], POD.octets(), "DNAT to the remote backend");
    assert!(k.flows().is_empty(), "a trace recorded a flow");
    assert_eq!(k.counters(), counters, "a trace counted");
    assert_eq!(k.service_stats(id), Default::default());

    // The real packet: same verdict and destination; its source port is
    // drawn afresh, so only the addresses are compared.
    let (real_verdict, real_out) = k.run_from_network(&syn);
    assert_eq!(verdict, real_verdict);
    assert_eq!(real_out[26..34], out[26..34]);
    assert_eq!(k.flows().len(), 2, "the real packet recorded its flow");
    assert_eq!(k.service_stats(id).new_connections, 1);

    // A trace of the flow's next packet finds it and leaves it as it was.
    let before = k.flows();
    let ack = Packet::tcp((client, 40000), (node, 30080), TCP_ACK, b"x").bytes();
    let (_, out, seen) = k.run_traced_from_network(&ack);
    assert_eq!(seen, Some(outcome::TRANSLATED));
    assert_eq!(out[26..34], real_out[26..34]);
    assert_eq!(k.flows(), before);
}
