//! Service frontends reached from outside the cluster (NodePort, and by the
//! same keys LoadBalancer ingress IPs and externalIPs), through
//! BPF_PROG_TEST_RUN of the from-network program (tc ingress of the node's
//! uplink) on exact packet bytes, checksums included:
//! externalTrafficPolicy Cluster to a backend on this node (DNAT only) and
//! on another node (DNAT + source NAT to the node's address and a port of
//! its own), Local (no backend here: dropped), no backends at all (ICMP
//! port unreachable), and the node's other ports left alone.
//!
//! A few packets leave through `bpf_fib_lookup` from the packet's ingress
//! interface (a reply to the external client; a packet for a pod no route
//! of ferry's covers). What the lookup answers is the test machine's
//! routing, not ferry's: under BPF_PROG_TEST_RUN the skb has no ingress
//! interface (ingress_ifindex 0), the lookup fails (-ENODEV on the kernels
//! tried) and the packet is handed to the kernel (TC_ACT_OK) exactly as
//! rewritten. Should a kernel resolve it instead, the verdict is
//! TC_ACT_REDIRECT with the next hop's MACs, and only the bytes from the
//! IPv4 header on are compared (`assert_sent_by_fib`).
use std::{collections::BTreeMap, net::Ipv4Addr};

use ferry_agent::maps::{Endpoints, NodeMap, Routes};
use ferry_common::{
    Backend, CT_DIR_ORIGINAL, CT_DIR_REPLY, CtKey, Endpoint, PROTO_TCP, PROTO_UDP,
    ROUTE_MODE_VXLAN, Route, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL, SERVICE_FLAG_LOCAL_ONLY,
    SNAT_PORT_MAX, SNAT_PORT_MIN, ServiceKey,
    conntrack::{SNAT_PORT_REST_MIN_NS, SNAT_PORT_REST_NS, TIMEOUT_TIME_WAIT_NS},
    outcome,
};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    packet::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, port_unreachable_for},
};

/// A client outside the cluster (TEST-NET-1).
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 51);
/// This node's address on the uplink.
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
const NODE_PORT: u16 = 30080;
/// A backend pod on this node (in the endpoints map).
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// A backend pod on another node (pod CIDR 10.244.2.0/24).
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const POD_PORT: u16 = 8080;
const LOCAL_POD_IFINDEX: u32 = 7;
const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
const VETH_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0x05];

fn node_port(protocol: u8) -> ServiceKey {
    ServiceKey {
        addr: NODE.octets(),
        port: NODE_PORT,
        protocol,
        scope: SCOPE_EXTERNAL,
    }
}

fn backend(addr: Ipv4Addr) -> Backend {
    Backend {
        addr: addr.octets(),
        port: POD_PORT,
        pad: [0; 2],
    }
}

fn with_local_pod(k: &Kernel) {
    Endpoints::open(k.pin_dir())
        .unwrap()
        .insert(
            LOCAL_POD,
            Endpoint {
                ifindex: LOCAL_POD_IFINDEX,
                flags: 0,
                pod_mac: POD_MAC,
                host_mac: VETH_MAC,
            },
        )
        .unwrap();
}

fn set_node_address(k: &Kernel, addr: Option<Ipv4Addr>) {
    let mut node = NodeMap::open(k.pin_dir()).unwrap();
    node.set_address(addr).unwrap();
    assert_eq!(
        node.get().unwrap().node_addr,
        addr.map_or([0; 4], |a| a.octets())
    );
}

/// A VXLAN route for the other node's pod CIDR (as the agent writes it).
fn with_route_to_remote_pods(k: &Kernel) {
    let mut desired = BTreeMap::new();
    desired.insert(
        "10.244.2.0/24".parse().unwrap(),
        Route {
            node_addr: [192, 168, 77, 12],
            mode: ROUTE_MODE_VXLAN,
            ifindex: 1,
            vni: 7,
        },
    );
    Routes::open(k.pin_dir()).unwrap().sync(&desired).unwrap();
}

fn packets(k: &Kernel, outcome: u32) -> u64 {
    k.counters()[outcome as usize].packets
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A packet ferry sent by fib lookup (see the module comment): TC_ACT_OK
/// (no usable route from the test run's skb: handed to the kernel exactly as
/// ferry rewrote it, Ethernet header untouched) or TC_ACT_REDIRECT (the
/// lookup succeeded and wrote the next hop's MACs: compared from the IPv4
/// header on).
fn assert_sent_by_fib(verdict: u32, out: &[u8], expected: &Packet, what: &str) {
    let expected = expected.bytes();
    match verdict {
        TC_ACT_OK => assert_eq!(
            hex(out),
            hex(&expected),
            "{what}: handed to the kernel, bytes (got vs expected)"
        ),
        TC_ACT_REDIRECT => {
            assert!(out.len() >= 14, "{what}: frame too short: {}", hex(out));
            assert_eq!(
                hex(&out[14..]),
                hex(&expected[14..]),
                "{what}: redirected by fib lookup, IPv4 header and payload (got vs expected)"
            );
        }
        _ => panic!(
            "{what}: verdict {verdict}, expected TC_ACT_OK (0) or TC_ACT_REDIRECT (7) from the fib path"
        ),
    }
}

/// Source port of a TCP/UDP frame without IPv4 options.
fn source_port(frame: &[u8]) -> u16 {
    assert_eq!(frame[14], 0x45, "no IPv4 options expected");
    u16::from_be_bytes([frame[34], frame[35]])
}

fn snat_port_of(frame: &[u8], what: &str) -> u16 {
    let port = source_port(frame);
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port),
        "{what}: source port {port} outside {SNAT_PORT_MIN}..={SNAT_PORT_MAX}"
    );
    port
}

#[test]
fn nodeport_to_a_backend_on_this_node_keeps_the_client_address() {
    let mut k = Kernel::load();
    with_local_pod(&k);
    set_node_address(&k, Some(NODE));
    k.services
        .upsert_frontend(
            node_port(PROTO_TCP),
            &[backend(LOCAL_POD)],
            "default/web:http",
            0,
        )
        .unwrap();

    let syn = Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, b"");
    let before = packets(&k, outcome::TRANSLATED);
    let (verdict, out) = k.run_from_network(&syn.bytes());
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "redirected (redirect_peer) into the pod"
    );
    assert_eq!(
        hex(&out),
        hex(&syn
            .clone()
            .with_dst(LOCAL_POD, POD_PORT)
            .with_macs(POD_MAC, VETH_MAC)
            .bytes()),
        "DNAT only: the pod sees the client's own address; MACs of the pod's link"
    );
    assert_eq!(packets(&k, outcome::TRANSLATED), before + 1);

    // No source NAT recorded: the reply is addressed to the client itself.
    let entries = k.conntrack.entries().unwrap();
    assert_eq!(entries.len(), 2, "one flow, two entries: {entries:?}");
    assert!(entries.iter().all(|(_, e)| e.peer_nat_addr == [0; 4]));

    // The pod answers through its veth: the from-pod program puts the
    // NodePort back as the source. The client is not a pod, so the packet
    // leaves by fib lookup (module comment).
    let syn_ack = Packet::tcp(
        (LOCAL_POD, POD_PORT),
        (CLIENT, 40000),
        TCP_SYN | TCP_ACK,
        b"",
    )
    .with_macs(VETH_MAC, POD_MAC);
    let before = packets(&k, outcome::REVERSE_TRANSLATED);
    let (verdict, out) = k.run(&syn_ack.bytes());
    assert_sent_by_fib(
        verdict,
        &out,
        &syn_ack.clone().with_src(NODE, NODE_PORT),
        "reply from the NodePort",
    );
    assert_eq!(packets(&k, outcome::REVERSE_TRANSLATED), before + 1);

    // The client's next packet follows the flow into the same pod.
    let ack = Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_ACK, b"GET /");
    let (verdict, out) = k.run_from_network(&ack.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        hex(&out),
        hex(&ack
            .clone()
            .with_dst(LOCAL_POD, POD_PORT)
            .with_macs(POD_MAC, VETH_MAC)
            .bytes())
    );
}

#[test]
fn nodeport_to_a_backend_on_another_node_is_source_natted_to_the_node_and_back() {
    let mut k = Kernel::load();
    set_node_address(&k, Some(NODE));
    k.services
        .upsert_frontend(node_port(PROTO_TCP), &[backend(REMOTE_POD)], "", 0)
        .unwrap();

    let syn = Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, b"");
    let before = packets(&k, outcome::TRANSLATED);
    let (verdict, out) = k.run_from_network(&syn.bytes());
    // No route of ferry's covers 10.244.2.0/24 here: sent by fib lookup.
    let snat_port = snat_port_of(&out, "SYN towards the remote backend");
    assert_sent_by_fib(
        verdict,
        &out,
        &Packet::tcp((NODE, snat_port), (REMOTE_POD, POD_PORT), TCP_SYN, b""),
        "DNAT to the backend, SNAT to the node",
    );
    assert_eq!(packets(&k, outcome::TRANSLATED), before + 1);

    // Conntrack: the client's tuple and the backend's reply to the node's
    // port, each naming the other side's rewrite.
    let entries = k.conntrack.entries().unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let original = CtKey {
        src_addr: CLIENT.octets(),
        dst_addr: NODE.octets(),
        src_port: 40000,
        dst_port: NODE_PORT,
        protocol: PROTO_TCP,
        direction: CT_DIR_ORIGINAL,
        pad: [0; 2],
    };
    let reply = CtKey {
        src_addr: REMOTE_POD.octets(),
        dst_addr: NODE.octets(),
        src_port: POD_PORT,
        dst_port: snat_port,
        protocol: PROTO_TCP,
        direction: CT_DIR_REPLY,
        pad: [0; 2],
    };
    let (_, o) = entries.iter().find(|(key, _)| *key == original).unwrap();
    assert_eq!((o.nat_addr, o.nat_port), (REMOTE_POD.octets(), POD_PORT));
    assert_eq!(
        (o.peer_nat_addr, o.peer_nat_port),
        (NODE.octets(), snat_port)
    );
    let (_, r) = entries.iter().find(|(key, _)| *key == reply).unwrap();
    assert_eq!((r.nat_addr, r.nat_port), (NODE.octets(), NODE_PORT));
    assert_eq!((r.peer_nat_addr, r.peer_nat_port), (CLIENT.octets(), 40000));

    // The backend's answer arrives on the uplink, for the node's port: it
    // goes back to the client from the NodePort.
    let syn_ack = Packet::tcp(
        (REMOTE_POD, POD_PORT),
        (NODE, snat_port),
        TCP_SYN | TCP_ACK,
        b"",
    );
    let before = packets(&k, outcome::REVERSE_TRANSLATED);
    let (verdict, out) = k.run_from_network(&syn_ack.bytes());
    assert_sent_by_fib(
        verdict,
        &out,
        &syn_ack
            .clone()
            .with_src(NODE, NODE_PORT)
            .with_dst(CLIENT, 40000),
        "reply from the NodePort to the client",
    );
    assert_eq!(packets(&k, outcome::REVERSE_TRANSLATED), before + 1);

    // The flow's next packet: same backend, same node port.
    let ack = Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_ACK, b"GET /");
    let (verdict, out) = k.run_from_network(&ack.bytes());
    assert_sent_by_fib(
        verdict,
        &out,
        &ack.clone()
            .with_dst(REMOTE_POD, POD_PORT)
            .with_src(NODE, snat_port),
        "second packet of the flow",
    );

    // Another client with the same source port: its own node port, so the
    // backend's replies to either cannot be confused.
    let other = Packet::tcp((OTHER_CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, b"");
    let (verdict, out) = k.run_from_network(&other.bytes());
    let other_port = snat_port_of(&out, "second client's SYN");
    assert_ne!(
        other_port, snat_port,
        "two clients with source port 40000 share a node port"
    );
    assert_sent_by_fib(
        verdict,
        &out,
        &other
            .clone()
            .with_dst(REMOTE_POD, POD_PORT)
            .with_src(NODE, other_port),
        "second client's SYN",
    );
    assert_eq!(k.conntrack.entries().unwrap().len(), 4);

    // And each reply finds its own client.
    for (port, client) in [(other_port, OTHER_CLIENT), (snat_port, CLIENT)] {
        let data = Packet::tcp((REMOTE_POD, POD_PORT), (NODE, port), TCP_ACK, b"200 OK");
        let (verdict, out) = k.run_from_network(&data.bytes());
        assert_sent_by_fib(
            verdict,
            &out,
            &data
                .clone()
                .with_src(NODE, NODE_PORT)
                .with_dst(client, 40000),
            &format!("reply for {client}"),
        );
    }
}

#[test]
fn nodeport_to_another_node_follows_ferrys_route_with_exact_bytes() {
    let mut k = Kernel::load();
    set_node_address(&k, Some(NODE));
    with_route_to_remote_pods(&k);
    k.services
        .upsert_frontend(node_port(PROTO_TCP), &[backend(REMOTE_POD)], "", 0)
        .unwrap();

    let syn = Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, b"");
    let (verdict, out) = k.run_from_network(&syn.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT, "into the VXLAN device");
    let snat_port = snat_port_of(&out, "SYN");
    assert_eq!(
        hex(&out),
        hex(&syn
            .clone()
            .with_dst(REMOTE_POD, POD_PORT)
            .with_src(NODE, snat_port)
            .bytes()),
        "translated, Ethernet header untouched (the VXLAN device adds its own)"
    );
}

#[test]
fn udp_nodeport_to_another_node_is_source_natted_with_valid_checksums() {
    let mut k = Kernel::load();
    set_node_address(&k, Some(NODE));
    k.services
        .upsert_frontend(node_port(PROTO_UDP), &[backend(REMOTE_POD)], "", 0)
        .unwrap();

    let query = Packet::udp((CLIENT, 40000), (NODE, NODE_PORT), b"a query");
    let (verdict, out) = k.run_from_network(&query.bytes());
    let snat_port = snat_port_of(&out, "query");
    assert_sent_by_fib(
        verdict,
        &out,
        &query
            .clone()
            .with_dst(REMOTE_POD, POD_PORT)
            .with_src(NODE, snat_port),
        "query",
    );

    let answer = Packet::udp((REMOTE_POD, POD_PORT), (NODE, snat_port), b"an answer");
    let (verdict, out) = k.run_from_network(&answer.bytes());
    assert_sent_by_fib(
        verdict,
        &out,
        &answer
            .clone()
            .with_src(NODE, NODE_PORT)
            .with_dst(CLIENT, 40000),
        "answer",
    );
}

#[test]
fn nodeport_to_another_node_is_dropped_while_the_node_address_is_unknown() {
    let mut k = Kernel::load();
    set_node_address(&k, None);
    k.services
        .upsert_frontend(node_port(PROTO_TCP), &[backend(REMOTE_POD)], "", 0)
        .unwrap();

    let syn = Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, b"");
    let before = packets(&k, outcome::DROP_CONNTRACK_WRITE);
    let (verdict, _) = k.run_from_network(&syn.bytes());
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(packets(&k, outcome::DROP_CONNTRACK_WRITE), before + 1);
    assert!(
        k.conntrack.entries().unwrap().is_empty(),
        "a dropped flow is not tracked"
    );

    // Once the agent has written the address, the next SYN goes through.
    set_node_address(&k, Some(NODE));
    let (verdict, out) = k.run_from_network(&syn.bytes());
    let port = snat_port_of(&out, "SYN after the address is known");
    assert_sent_by_fib(
        verdict,
        &out,
        &syn.clone()
            .with_dst(REMOTE_POD, POD_PORT)
            .with_src(NODE, port),
        "SYN after the address is known",
    );
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_drops_without_local_backends() {
    let mut k = Kernel::load();
    with_local_pod(&k);
    set_node_address(&k, Some(NODE));
    let syn = Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, b"");

    // A backend on this node: DNAT only, into the pod.
    k.services
        .upsert_frontend(
            node_port(PROTO_TCP),
            &[backend(LOCAL_POD)],
            "",
            SERVICE_FLAG_LOCAL_ONLY,
        )
        .unwrap();
    let (verdict, out) = k.run_from_network(&syn.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        hex(&out),
        hex(&syn
            .clone()
            .with_dst(LOCAL_POD, POD_PORT)
            .with_macs(POD_MAC, VETH_MAC)
            .bytes())
    );

    // No backend on this node: dropped (the load balancer's health check
    // steers away), not rejected, and nothing tracked.
    let mut k = Kernel::load();
    set_node_address(&k, Some(NODE));
    k.services
        .upsert_frontend(node_port(PROTO_TCP), &[], "", SERVICE_FLAG_LOCAL_ONLY)
        .unwrap();
    let dropped = packets(&k, outcome::DROP_NO_LOCAL_ENDPOINTS);
    let rejected = packets(&k, outcome::REJECTED_NO_ENDPOINTS);
    let (verdict, _) = k.run_from_network(&syn.bytes());
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(packets(&k, outcome::DROP_NO_LOCAL_ENDPOINTS), dropped + 1);
    assert_eq!(packets(&k, outcome::REJECTED_NO_ENDPOINTS), rejected);
    assert!(k.conntrack.entries().unwrap().is_empty());
}

#[test]
fn nodeport_without_endpoints_answers_icmp_port_unreachable_from_the_node() {
    let mut k = Kernel::load();
    set_node_address(&k, Some(NODE));
    k.services
        .upsert_frontend(node_port(PROTO_TCP), &[], "", 0)
        .unwrap();
    k.services
        .upsert_frontend(node_port(PROTO_UDP), &[], "", 0)
        .unwrap();

    let tcp = Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, b"");
    let udp = Packet::udp(
        (CLIENT, 40000),
        (NODE, NODE_PORT),
        b"a query with some payload",
    );
    for (what, input) in [("TCP SYN", tcp), ("UDP datagram", udp)] {
        let before = packets(&k, outcome::REJECTED_NO_ENDPOINTS);
        let (verdict, out) = k.run_from_network(&input.bytes());
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "{what}: sent back out of the uplink"
        );
        assert_eq!(
            hex(&out),
            hex(&port_unreachable_for(&input)),
            "{what}: ICMP port unreachable from {NODE} (got vs expected)"
        );
        assert_eq!(
            packets(&k, outcome::REJECTED_NO_ENDPOINTS),
            before + 1,
            "{what}"
        );
    }
    assert!(
        k.conntrack.entries().unwrap().is_empty(),
        "a rejected flow is not tracked"
    );
}

#[test]
fn the_nodes_other_ports_and_addresses_pass_untouched() {
    let mut k = Kernel::load();
    with_local_pod(&k);
    set_node_address(&k, Some(NODE));
    k.services
        .upsert_frontend(node_port(PROTO_TCP), &[backend(LOCAL_POD)], "", 0)
        .unwrap();
    // A ClusterIP frontend with the node's address and port is not a
    // NodePort: the uplink looks up external frontends only.
    k.services
        .upsert(
            ServiceKey {
                scope: SCOPE_CLUSTER_IP,
                ..node_port(PROTO_UDP)
            },
            &[backend(LOCAL_POD)],
        )
        .unwrap();

    for (what, input) in [
        (
            "ssh to the node",
            Packet::tcp((CLIENT, 40000), (NODE, 22), TCP_SYN, b""),
        ),
        (
            "UDP to the NodePort's number (TCP only)",
            Packet::udp((CLIENT, 40000), (NODE, NODE_PORT), b"x"),
        ),
        (
            "the NodePort's number on another address",
            Packet::tcp(
                (CLIENT, 40000),
                (Ipv4Addr::new(192, 168, 77, 12), NODE_PORT),
                TCP_SYN,
                b"",
            ),
        ),
    ] {
        let translated = packets(&k, outcome::TRANSLATED);
        let (verdict, out) = k.run_from_network(&input.bytes());
        assert_eq!(verdict, TC_ACT_OK, "{what}: verdict");
        assert_eq!(hex(&out), hex(&input.bytes()), "{what}: bytes");
        assert_eq!(packets(&k, outcome::TRANSLATED), translated, "{what}");
    }
    assert!(k.conntrack.entries().unwrap().is_empty());
}

#[test]
fn a_source_nat_port_is_reused_only_once_its_flow_is_over() {
    // One source port only, to make the choice visible.
    let mut k = nodeport_to_remote_pod_with_snat_ports((61000, 61000));
    let syn = |client: Ipv4Addr| Packet::tcp((client, 40000), (NODE, NODE_PORT), TCP_SYN, b"");

    let (_, out) = k.run_from_network(&syn(CLIENT).bytes());
    assert_eq!(snat_port_of(&out, "first flow"), 61000);
    // The port is taken by a live flow: another client's flow cannot have
    // it, and is dropped rather than given the same tuple.
    let before = packets(&k, outcome::DROP_SNAT_PORTS_EXHAUSTED);
    let (verdict, _) = k.run_from_network(&syn(OTHER_CLIENT).bytes());
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(packets(&k, outcome::DROP_SNAT_PORTS_EXHAUSTED), before + 1);
    assert_eq!(
        k.conntrack.entries().unwrap().len(),
        2,
        "only the first flow"
    );

    // The first flow expires: the port is taken over, and the old flow's
    // entries go with it.
    let now = ferry_agent::maps::monotonic_now_ns();
    for (key, mut entry) in k.conntrack.entries().unwrap() {
        entry.expires_ns = now - 1;
        k.conntrack.insert(key, entry).unwrap();
    }
    let (_, out) = k.run_from_network(&syn(OTHER_CLIENT).bytes());
    assert_eq!(snat_port_of(&out, "second flow"), 61000);
    let entries = k.conntrack.entries().unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|(key, e)| key.src_addr == OTHER_CLIENT.octets()
                || e.peer_nat_addr == OTHER_CLIENT.octets()),
        "only the second client's flow is left: {entries:?}"
    );
}

/// Move every conntrack entry `ns` into the past, as if that much time had
/// gone by since its last packet.
fn age_conntrack(k: &mut Kernel, ns: u64) {
    for (key, mut entry) in k.conntrack.entries().unwrap() {
        entry.expires_ns -= ns;
        k.conntrack.insert(key, entry).unwrap();
    }
}

/// A packet of a fixed flow direction, given its TCP flags.
type FlowPacket = fn(u8) -> Packet;

/// A kernel serving a TCP NodePort whose one backend is on another node,
/// source-NATed with ports from `range`.
fn nodeport_to_remote_pod_with_snat_ports(range: (u16, u16)) -> Kernel {
    let mut k = Kernel::load();
    NodeMap::open(k.pin_dir())
        .unwrap()
        .set(Some(NODE), range)
        .unwrap();
    k.services
        .upsert_frontend(node_port(PROTO_TCP), &[backend(REMOTE_POD)], "", 0)
        .unwrap();
    k
}

/// A one-port range (61000 only), a NodePort flow to a remote backend
/// through it, and the packets of the flow, after its handshake.
fn one_port_flow() -> (Kernel, FlowPacket, FlowPacket) {
    let mut k = nodeport_to_remote_pod_with_snat_ports((61000, 61000));
    let from_client: FlowPacket =
        |flags| Packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), flags, b"");
    let from_pod: FlowPacket =
        |flags| Packet::tcp((REMOTE_POD, POD_PORT), (NODE, 61000), flags, b"");
    k.run_from_network(&from_client(TCP_SYN).bytes());
    k.run_from_network(&from_pod(TCP_SYN | TCP_ACK).bytes());
    k.run_from_network(&from_client(TCP_ACK).bytes());
    (k, from_client, from_pod)
}

/// Does a SYN from another client get the range's only port? Counts the
/// refusal as port exhaustion.
fn next_flow_gets_the_port(k: &mut Kernel, what: &str) -> bool {
    let next = Packet::tcp((OTHER_CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, b"");
    let exhausted = packets(k, outcome::DROP_SNAT_PORTS_EXHAUSTED);
    let (verdict, out) = k.run_from_network(&next.bytes());
    if verdict == TC_ACT_SHOT {
        assert_eq!(
            packets(k, outcome::DROP_SNAT_PORTS_EXHAUSTED),
            exhausted + 1,
            "{what}: the refusal is counted as port exhaustion"
        );
        return false;
    }
    assert_eq!(snat_port_of(&out, what), 61000);
    true
}

#[test]
fn a_closed_connections_port_rests_before_reuse() {
    let (mut k, from_client, from_pod) = one_port_flow();
    // The client closes first. Both FINs: closing, but the backend's FIN
    // is not acknowledged yet; it may still retransmit it to this port.
    k.run_from_network(&from_client(TCP_FIN | TCP_ACK).bytes());
    k.run_from_network(&from_pod(TCP_FIN | TCP_ACK).bytes());
    assert!(!next_flow_gets_the_port(&mut k, "before the last ACK"));
    // The last ACK: closed on both ends, but the ACK may still be on its
    // way to the backend (a SYN overtaking it would meet LAST_ACK).
    k.run_from_network(&from_client(TCP_ACK).bytes());
    assert!(!next_flow_gets_the_port(&mut k, "just after the last ACK"));
    // The only port of the range: under that pressure it is given after
    // the shorter rest (a margin of 200 ms over it).
    age_conntrack(&mut k, SNAT_PORT_REST_MIN_NS + 200_000_000);
    assert!(next_flow_gets_the_port(&mut k, "rested under pressure"));
}

#[test]
fn a_fully_rested_port_is_preferred_to_a_briefly_rested_one() {
    let mut k = nodeport_to_remote_pod_with_snat_ports((61000, 61001));
    let front = (NODE, NODE_PORT);
    // Two connections, one on each port, each closed by its client.
    let mut ports = vec![];
    for client in [(CLIENT, 40000), (CLIENT, 40001)] {
        let (_, out) = k.run_from_network(&Packet::tcp(client, front, TCP_SYN, b"").bytes());
        ports.push(snat_port_of(&out, "connection"));
    }
    let close = |k: &mut Kernel, client: (Ipv4Addr, u16), port: u16| {
        let pod = (REMOTE_POD, POD_PORT);
        for (from_client, flags) in [
            (false, TCP_SYN | TCP_ACK),
            (true, TCP_ACK),
            (true, TCP_FIN | TCP_ACK),
            (false, TCP_FIN | TCP_ACK),
            (true, TCP_ACK),
        ] {
            let packet = if from_client {
                Packet::tcp(client, front, flags, b"")
            } else {
                Packet::tcp(pod, (NODE, port), flags, b"")
            };
            k.run_from_network(&packet.bytes());
        }
    };
    // The second closed 2 s ago, the first 300 ms ago.
    close(&mut k, (CLIENT, 40001), ports[1]);
    age_conntrack(&mut k, 2 * SNAT_PORT_REST_NS - 300_000_000);
    close(&mut k, (CLIENT, 40000), ports[0]);
    age_conntrack(&mut k, 300_000_000);
    let next = |j: u16| Packet::tcp((OTHER_CLIENT, 50000 + j), front, TCP_SYN, b"");
    let (_, out) = k.run_from_network(&next(0).bytes());
    assert_eq!(
        snat_port_of(&out, "new connection"),
        ports[1],
        "the fully rested port first"
    );
    // With that one taken, the briefly rested one rather than a refusal.
    let (_, out) = k.run_from_network(&next(1).bytes());
    assert_eq!(snat_port_of(&out, "next connection"), ports[0]);
}

#[test]
fn a_port_the_backend_closed_first_waits_out_its_time_wait() {
    let (mut k, from_client, from_pod) = one_port_flow();
    // The backend closes first: its socket holds the tuple in TIME_WAIT
    // for 60 s, where another client's SYN could be answered with an ACK.
    k.run_from_network(&from_pod(TCP_FIN | TCP_ACK).bytes());
    k.run_from_network(&from_client(TCP_FIN | TCP_ACK).bytes());
    k.run_from_network(&from_pod(TCP_ACK).bytes());
    age_conntrack(&mut k, 30_000_000_000);
    assert!(!next_flow_gets_the_port(&mut k, "30 s into TIME_WAIT"));
    age_conntrack(&mut k, TIMEOUT_TIME_WAIT_NS - 30_000_000_000 + 1_000_000);
    assert!(next_flow_gets_the_port(&mut k, "after TIME_WAIT"));
}

#[test]
fn a_reset_frees_the_port_after_the_rest() {
    let (mut k, from_client, from_pod) = one_port_flow();
    k.run_from_network(&from_pod(TCP_FIN | TCP_ACK).bytes());
    // The client aborts: the RST ends the backend's TIME_WAIT too.
    k.run_from_network(&from_client(TCP_RST | TCP_ACK).bytes());
    assert!(!next_flow_gets_the_port(&mut k, "just after the reset"));
    age_conntrack(&mut k, SNAT_PORT_REST_NS + 1_000_000);
    assert!(next_flow_gets_the_port(&mut k, "after the rest"));
}

#[test]
fn a_new_flow_finds_a_free_port_in_a_mostly_taken_range() {
    let mut k = nodeport_to_remote_pod_with_snat_ports((61000, 61023));
    let syn = |client: (Ipv4Addr, u16)| Packet::tcp(client, (NODE, NODE_PORT), TCP_SYN, b"");
    // 20 of the 24 ports held by live connections.
    for i in 0..20 {
        let (verdict, out) = k.run_from_network(&syn((CLIENT, 40000 + i)).bytes());
        assert_ne!(verdict, TC_ACT_SHOT, "connection {i}");
        snat_port_of(&out, "a held port");
    }
    // Random probes hit a held port 5 times in 6: a search of 16 probes
    // would miss the free ones in about 1 flow of 19 (and this test would
    // fail with a chance of 94%); 64 probes miss once in 100,000.
    for j in 0..50 {
        let (verdict, out) = k.run_from_network(&syn((OTHER_CLIENT, 50000 + j)).bytes());
        assert_ne!(
            verdict,
            TC_ACT_SHOT,
            "flow {j} found no free port; drops: {}",
            packets(&k, outcome::DROP_SNAT_PORTS_EXHAUSTED)
        );
        let port = snat_port_of(&out, "a free port");
        assert!(port <= 61023, "port {port} outside the range");
        // Hand the port back (the flow expires) to keep 20 of 24 held.
        let past = ferry_agent::maps::monotonic_now_ns() - 1;
        for (key, mut entry) in k.conntrack.entries().unwrap() {
            if key.src_addr == OTHER_CLIENT.octets() || entry.peer_nat_addr == OTHER_CLIENT.octets()
            {
                entry.expires_ns = past;
                k.conntrack.insert(key, entry).unwrap();
            }
        }
    }
}

#[test]
fn a_client_reusing_its_port_leaves_the_backends_time_wait_port_held() {
    let mut k = nodeport_to_remote_pod_with_snat_ports((61000, 61001));
    let client = (CLIENT, 40000);
    let front = (NODE, NODE_PORT);
    let (_, out) = k.run_from_network(&Packet::tcp(client, front, TCP_SYN, b"").bytes());
    let held = snat_port_of(&out, "first connection");
    let from_pod = |flags: u8| Packet::tcp((REMOTE_POD, POD_PORT), (NODE, held), flags, b"");
    let from_client = |flags: u8| Packet::tcp(client, front, flags, b"");
    k.run_from_network(&from_pod(TCP_SYN | TCP_ACK).bytes());
    k.run_from_network(&from_client(TCP_ACK).bytes());
    // The backend closes first: TIME_WAIT on (backend, node:held).
    k.run_from_network(&from_pod(TCP_FIN | TCP_ACK).bytes());
    k.run_from_network(&from_client(TCP_FIN | TCP_ACK).bytes());
    k.run_from_network(&from_pod(TCP_ACK).bytes());
    // The client has no TIME_WAIT (it closed second) and reuses its port
    // at once. Its new connection gets the other port...
    age_conntrack(&mut k, SNAT_PORT_REST_NS + 1_000_000);
    let (_, out) = k.run_from_network(&from_client(TCP_SYN).bytes());
    let second = snat_port_of(&out, "the client's port reused");
    assert_ne!(second, held, "the backend still holds {held} in TIME_WAIT");
    let pod = (REMOTE_POD, POD_PORT);
    k.run_from_network(&Packet::tcp(pod, (NODE, second), TCP_SYN | TCP_ACK, b"").bytes());
    k.run_from_network(&from_client(TCP_ACK).bytes());
    // ...and the held port stays held for everyone else.
    let other = Packet::tcp((OTHER_CLIENT, 40000), front, TCP_SYN, b"");
    let (verdict, _) = k.run_from_network(&other.bytes());
    assert_eq!(verdict, TC_ACT_SHOT, "both ports are held");
    let reply_key = CtKey {
        src_addr: REMOTE_POD.octets(),
        dst_addr: NODE.octets(),
        src_port: POD_PORT,
        dst_port: held,
        protocol: PROTO_TCP,
        direction: CT_DIR_REPLY,
        pad: [0; 2],
    };
    let entries: BTreeMap<_, _> = k
        .conntrack
        .entries()
        .unwrap()
        .into_iter()
        .map(|(key, e)| ((key.src_addr, key.src_port, key.dst_port, key.direction), e))
        .collect();
    assert!(
        entries.contains_key(&(
            reply_key.src_addr,
            reply_key.src_port,
            reply_key.dst_port,
            CT_DIR_REPLY
        )),
        "the old flow's reply entry holds {held}: {entries:?}"
    );
    // Once TIME_WAIT is over, the port is free again.
    age_conntrack(&mut k, TIMEOUT_TIME_WAIT_NS);
    let (_, out) = k.run_from_network(&other.bytes());
    assert_eq!(snat_port_of(&out, "after TIME_WAIT"), held);
}
