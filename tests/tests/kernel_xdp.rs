//! The uplink's XDP program through BPF_PROG_TEST_RUN: what it takes on and
//! what it leaves to tc, and that a flow it records is the flow tc follows
//! (one conntrack for both paths). Sending happens only with a resolved next
//! hop, which a test run (no ingress device) never has: XDP then passes
//! every packet, untouched, and the tc program continues the flow.
use std::net::Ipv4Addr;

use ferry_common::{
    Backend, PROTO_TCP, SCOPE_EXTERNAL, SERVICE_FLAG_LOCAL_ONLY, SNAT_PORT_MAX, SNAT_PORT_MIN,
    ServiceKey,
};
use ferry_tests::{
    fixture::{FABRIC_NODE, Kernel, TC_ACT_OK, TC_ACT_REDIRECT},
    packet::{Packet, TCP_SYN},
};

const XDP_PASS: u32 = 2;
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const NODE: Ipv4Addr = FABRIC_NODE;
const NODE_PORT: u16 = 30080;
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);

fn node_port() -> ServiceKey {
    ServiceKey {
        addr: NODE.octets(),
        port: NODE_PORT,
        protocol: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    }
}

fn backend(addr: Ipv4Addr) -> Backend {
    Backend {
        addr: addr.octets(),
        port: 8080,
        pad: [0; 2],
    }
}

fn node(k: &Kernel) {
    k.on_fabric();
    k.add_local_pod(LOCAL_POD);
}

fn syn() -> Packet {
    Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, b"")
}

/// (source, destination) of the frame's IPv4/L4 headers.
fn addresses(frame: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
    let ip = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    let port = |o: usize| u16::from_be_bytes([frame[o], frame[o + 1]]);
    ((ip(26), port(l4)), (ip(30), port(l4 + 2)))
}

#[test]
fn a_flow_xdp_records_for_another_nodes_backend_is_the_flow_tc_follows() {
    let mut k = Kernel::load();
    node(&k);
    k.services
        .upsert_frontend(node_port(), &[backend(REMOTE_POD)], "default/web:http", 0)
        .unwrap();
    let (action, out) = k.run_xdp(&syn().bytes());
    assert_eq!(action, XDP_PASS, "no next hop in a test run: passed on");
    assert_eq!(out, syn().bytes(), "passed untouched");
    let entries = k.conntrack.entries().unwrap();
    assert_eq!(entries.len(), 2, "XDP recorded the flow: {entries:?}");
    let snat_port = entries
        .iter()
        .find(|(key, _)| key.src_addr == REMOTE_POD.octets())
        .map(|(key, _)| key.dst_port)
        .expect("the reply entry");
    assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&snat_port));

    // tc, next on the same packet, follows the recorded flow: same backend,
    // same source port.
    let (verdict, out) = k.run_from_network(&syn().bytes());
    assert!(
        verdict == TC_ACT_OK || verdict == TC_ACT_REDIRECT,
        "{verdict}"
    );
    assert_eq!(
        addresses(&out),
        ((NODE, snat_port), (REMOTE_POD, 8080)),
        "tc wrote the flow XDP recorded"
    );
    assert_eq!(k.conntrack.entries().unwrap().len(), 2, "no second flow");
}

#[test]
fn a_local_backend_drawn_in_xdp_is_the_one_tc_delivers_to() {
    let mut k = Kernel::load();
    node(&k);
    // Two backends, one local: whichever XDP draws, tc must deliver there.
    k.services
        .upsert_frontend(
            node_port(),
            &[backend(LOCAL_POD), backend(REMOTE_POD)],
            "default/web:http",
            0,
        )
        .unwrap();
    for port in 40000..40064u16 {
        let syn = Packet::tcp((CLIENT, port), (NODE, NODE_PORT), TCP_SYN, b"");
        let (action, _) = k.run_xdp(&syn.bytes());
        assert_eq!(action, XDP_PASS);
        let entries = k.conntrack.entries().unwrap();
        let recorded = entries
            .iter()
            .find(|(key, _)| key.src_addr == CLIENT.octets() && key.src_port == port)
            .map(|(_, e)| e.nat_addr);
        let (verdict, out) = k.run_from_network(&syn.bytes());
        let ((src, _), (dst, _)) = addresses(&out);
        assert_eq!(
            Some(dst.octets()),
            recorded,
            "port {port}: tc sent to the backend XDP drew (verdict {verdict})"
        );
        if dst == LOCAL_POD {
            assert_eq!(src, CLIENT, "a local backend sees the client");
            assert_eq!(verdict, TC_ACT_REDIRECT);
        } else {
            assert_eq!(src, NODE, "another node's backend sees this node");
        }
    }
}

#[test]
fn what_xdp_leaves_alone_it_does_not_record() {
    let mut k = Kernel::load();
    node(&k);
    // externalTrafficPolicy Local: the tc path's (client address kept).
    k.services
        .upsert_frontend(
            node_port(),
            &[backend(LOCAL_POD)],
            "default/web:http",
            SERVICE_FLAG_LOCAL_ONLY,
        )
        .unwrap();
    let (action, out) = k.run_xdp(&syn().bytes());
    assert_eq!((action, out), (XDP_PASS, syn().bytes()));
    // Not a frontend: pod traffic from another node, the node's own ports.
    for p in [
        Packet::tcp((REMOTE_POD, 5000), (LOCAL_POD, 8080), TCP_SYN, b""),
        Packet::tcp((CLIENT, 40000), (NODE, 22), TCP_SYN, b""),
        Packet::udp((CLIENT, 40000), (NODE, NODE_PORT), b"x"),
    ] {
        let (action, out) = k.run_xdp(&p.bytes());
        assert_eq!((action, out), (XDP_PASS, p.bytes()));
    }
    assert!(k.conntrack.entries().unwrap().is_empty());
}

/// The XDP program under the trace marker (`trace --on xdp`): it decides
/// as for the real packet and writes nothing. A test run has no next hop,
/// so XDP leaves the SYN to tc, as it does the real one; but the trace
/// records no flow where the real packet does.
#[test]
fn an_xdp_trace_decides_as_the_real_packet_and_records_nothing() {
    let mut k = Kernel::load();
    node(&k);
    let id = k
        .services
        .upsert_frontend(node_port(), &[backend(REMOTE_POD)], "default/web:http", 0)
        .unwrap();
    let counters = k.counters();
    let (action, out, outcome) = k.run_xdp_traced(&syn().bytes());
    assert_eq!(action, XDP_PASS, "no next hop in a test run: left to tc");
    assert_eq!(outcome, None, "a packet left to tc hands no outcome back");
    assert_eq!(out, syn().bytes(), "the frame after the marker, untouched");
    assert!(k.flows().is_empty(), "a trace recorded a flow");
    assert_eq!(k.counters(), counters);
    assert_eq!(k.service_stats(id), Default::default());

    let (real, _) = k.run_xdp(&syn().bytes());
    assert_eq!(real, action);
    assert_eq!(k.flows().len(), 2, "the real packet recorded its flow");
    assert_eq!(k.service_stats(id).new_connections, 1);
}
