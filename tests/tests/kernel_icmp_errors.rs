//! ICMP errors about a Service flow's packets in the kernel, through
//! BPF_PROG_TEST_RUN on exact bytes: the quoted packet is translated back
//! to what its sender sent (addresses, ports, the quoted IPv4 and L4
//! checksums), the outer header follows (the error goes to that sender;
//! it comes from the frontend only when the quoted packet's recipient sent
//! it, a router keeps its address), and the ICMP and outer IPv4 checksums
//! are right. Every expected packet is built from scratch by the packet
//! builder, so no incremental checksum update is checked against itself.
//!
//! A pod's veth in these tests is the device BPF_PROG_TEST_RUN puts the skb
//! on: the loopback device (ifindex 1). Packets leaving by fib lookup are
//! compared as in `kernel_external` (see its module comment).
use std::net::Ipv4Addr;

use ferry_agent::maps::{Endpoints, NodeMap};
use ferry_common::{
    Backend, Endpoint, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, ServiceKey,
    conntrack::STATE_TCP_SYN_SENT, outcome,
};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, backend, frontend},
    packet::{
        ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED, Packet,
        TCP_ACK, TCP_PSH, TCP_SYN, icmp_error, next_hop_mtu,
    },
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// A pod that is no end of the flows under test.
const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const DNS_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);
/// A backend pod on another node.
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
/// A router between the nodes, and one on an external client's side.
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const CLIENT_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// This node's address, and a client outside the cluster.
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
const NODE_PORT: u16 = 30080;
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);

/// The device BPF_PROG_TEST_RUN's skb arrives on (loopback): the veth of
/// the pod that sends in a test.
const SENDING_VETH: u32 = 1;
/// Any other pod's veth.
const OTHER_VETH: u32 = 9;
const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x63];
const VETH_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0x63];

const UNREACHABLE: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH);
const FRAG_NEEDED: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
const TTL_EXCEEDED: (u8, u8) = (ICMP_TIME_EXCEEDED, 0);

#[derive(Clone, Copy)]
enum Hook {
    /// A pod's veth (`ferry_from_pod`), sent by the pod owning the
    /// packet's source address.
    Pod,
    /// The veth of the pod with this address, whatever the source.
    PodOf(Ipv4Addr),
    /// The uplink (`ferry_from_network`).
    Network,
}

/// How the packet must leave.
#[derive(Clone, Copy)]
enum Leaves {
    /// With this verdict, exactly the expected bytes.
    As(u32),
    /// Into the local pod's veth (`bpf_redirect_peer`), MACs of its link.
    IntoPod,
    /// By fib lookup: TC_ACT_OK with the bytes as rewritten, or
    /// TC_ACT_REDIRECT with the next hop's MACs (compared from IPv4 on).
    ByFib,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Register `addr` as a pod on this node whose host-side veth is `ifindex`.
fn pod(k: &Kernel, addr: Ipv4Addr, ifindex: u32) {
    Endpoints::open(k.pin_dir())
        .unwrap()
        .insert(
            addr,
            Endpoint {
                ifindex,
                flags: 0,
                pod_mac: POD_MAC,
                host_mac: VETH_MAC,
            },
        )
        .unwrap();
}

fn conntrack(k: &Kernel) -> Vec<String> {
    let mut flows: Vec<String> = k
        .conntrack
        .entries()
        .unwrap()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    flows.sort();
    flows
}

fn run(k: &mut Kernel, hook: Hook, input: &[u8]) -> (u32, Vec<u8>) {
    match hook {
        Hook::Pod => k.run(input),
        Hook::PodOf(owner) => k.run_as_pod(owner, input),
        Hook::Network => k.run_from_network(input),
    }
}

/// Run `input` through `hook`; assert how it leaves, its bytes, that
/// exactly `outcome`'s counter rose by one, and that conntrack is exactly
/// as before (an ICMP error neither refreshes nor ends a flow).
fn check(
    k: &mut Kernel,
    hook: Hook,
    what: &str,
    input: &Packet,
    leaves: Leaves,
    expected: &Packet,
    outcome: u32,
) {
    let counters = k.counters();
    let flows = conntrack(k);
    let (verdict, out) = run(k, hook, &input.bytes());
    match leaves {
        Leaves::As(want) => {
            assert_eq!(verdict, want, "{what}: verdict");
            assert_eq!(
                hex(&out),
                hex(&expected.bytes()),
                "{what}: bytes (got vs expected)"
            );
        }
        Leaves::IntoPod => {
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: verdict (redirect_peer)");
            let expected = expected.clone().with_macs(POD_MAC, VETH_MAC);
            assert_eq!(
                hex(&out),
                hex(&expected.bytes()),
                "{what}: bytes (got vs expected)"
            );
        }
        Leaves::ByFib => {
            let expected = expected.bytes();
            match verdict {
                TC_ACT_OK => assert_eq!(hex(&out), hex(&expected), "{what}: bytes"),
                TC_ACT_REDIRECT => assert_eq!(
                    hex(&out[14..]),
                    hex(&expected[14..]),
                    "{what}: bytes from the IPv4 header on"
                ),
                v => panic!("{what}: verdict {v}, expected the fib path's 0 or 7"),
            }
        }
    }
    for (i, (b, a)) in counters.iter().zip(&k.counters()).enumerate() {
        let want = b.packets + u64::from(i as u32 == outcome);
        assert_eq!(a.packets, want, "{what}: counter {}", outcome::NAMES[i]);
    }
    assert_eq!(conntrack(k), flows, "{what}: conntrack unchanged");
}

/// Run a flow's packet whose output the test does not look at.
fn send(k: &mut Kernel, hook: Hook, packet: &Packet) -> Vec<u8> {
    run(k, hook, &packet.bytes()).1
}

fn node_port(protocol: u8) -> ServiceKey {
    ServiceKey {
        addr: NODE.octets(),
        port: NODE_PORT,
        protocol,
        scope: SCOPE_EXTERNAL,
    }
}

#[test]
fn a_backends_port_unreachable_reaches_the_client_from_the_cluster_ip() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(DNS_VIP, 53, PROTO_UDP), &[backend(DNS_POD, 5353)])
        .unwrap();
    // The backend sends through its own veth.
    pod(&k, DNS_POD, SENDING_VETH);
    let query = Packet::udp((CLIENT, 40000), (DNS_VIP, 53), b"who is web?");
    send(&mut k, Hook::Pod, &query);
    // Nothing listens on the backend's port: its kernel answers with port
    // unreachable, quoting the whole datagram as it arrived.
    let arrived = query.clone().with_dst(DNS_POD, 5353);
    let all = 8 + 11;
    check(
        &mut k,
        Hook::Pod,
        "port unreachable quoting the whole datagram",
        &icmp_error(DNS_POD, &arrived, UNREACHABLE, [0; 4], all),
        Leaves::ByFib,
        &icmp_error(DNS_VIP, &query, UNREACHABLE, [0; 4], all),
        outcome::TRANSLATED_ICMP_ERROR,
    );
    check(
        &mut k,
        Hook::Pod,
        "port unreachable quoting 8 bytes (RFC 792)",
        &icmp_error(DNS_POD, &arrived, UNREACHABLE, [0; 4], 8),
        Leaves::ByFib,
        &icmp_error(DNS_VIP, &query, UNREACHABLE, [0; 4], 8),
        outcome::TRANSLATED_ICMP_ERROR,
    );
    // A datagram without a UDP checksum is quoted without one, still.
    let bare = Packet::udp((CLIENT, 40001), (DNS_VIP, 53), b"no checksum").zero_udp_checksum();
    send(&mut k, Hook::Pod, &bare);
    let arrived = bare.clone().with_dst(DNS_POD, 5353);
    let expected = icmp_error(DNS_VIP, &bare, UNREACHABLE, [0; 4], 8);
    assert_eq!(
        &expected.bytes()[62 + 6..62 + 8],
        &[0, 0],
        "quoted zero checksum"
    );
    check(
        &mut k,
        Hook::Pod,
        "port unreachable about a datagram without checksum",
        &icmp_error(DNS_POD, &arrived, UNREACHABLE, [0; 4], 8),
        Leaves::ByFib,
        &expected,
        outcome::TRANSLATED_ICMP_ERROR,
    );
    // Delivered into the client pod when it lives here, like the replies.
    pod(&k, CLIENT, OTHER_VETH);
    check(
        &mut k,
        Hook::Pod,
        "into the client pod",
        &icmp_error(DNS_POD, &arrived, UNREACHABLE, [0; 4], 8),
        Leaves::IntoPod,
        &expected,
        outcome::TRANSLATED_ICMP_ERROR,
    );
}

#[test]
fn frag_needed_and_time_exceeded_from_a_router_keep_the_routers_address() {
    let mut k = Kernel::load();
    k.services
        .upsert(
            frontend(WEB_VIP, 80, PROTO_TCP),
            &[backend(REMOTE_POD, 8080)],
        )
        .unwrap();
    pod(&k, CLIENT, OTHER_VETH);
    let c = (CLIENT, 40000);
    send(
        &mut k,
        Hook::Pod,
        &Packet::tcp(c, (WEB_VIP, 80), TCP_SYN, b""),
    );
    let data = Packet::tcp(c, (WEB_VIP, 80), TCP_ACK | TCP_PSH, &[b'x'; 1400]);
    send(&mut k, Hook::Pod, &data);
    // On the way to the other node a router cannot forward it: the error
    // comes back over the uplink, from the router, to the client pod.
    let arrived = data.clone().with_dst(REMOTE_POD, 8080);
    let mtu = next_hop_mtu(1300);
    check(
        &mut k,
        Hook::Network,
        "fragmentation needed quoting the TCP header and some payload",
        &icmp_error(ROUTER, &arrived, FRAG_NEEDED, mtu, 28),
        Leaves::IntoPod,
        &icmp_error(ROUTER, &data, FRAG_NEEDED, mtu, 28),
        outcome::TRANSLATED_ICMP_ERROR,
    );
    check(
        &mut k,
        Hook::Network,
        "time exceeded quoting 8 bytes (no TCP checksum quoted)",
        &icmp_error(ROUTER, &arrived, TTL_EXCEEDED, [0; 4], 8),
        Leaves::IntoPod,
        &icmp_error(ROUTER, &data, TTL_EXCEEDED, [0; 4], 8),
        outcome::TRANSLATED_ICMP_ERROR,
    );
    // IPv4 options on the error and on the quoted packet.
    let mut with_options = Packet::tcp((CLIENT, 40001), (WEB_VIP, 80), TCP_SYN, b"");
    with_options.options = vec![1, 1, 1, 0];
    send(&mut k, Hook::Pod, &with_options);
    let arrived = with_options.clone().with_dst(REMOTE_POD, 8080);
    let mut input = icmp_error(ROUTER, &arrived, FRAG_NEEDED, mtu, 20);
    input.options = vec![1, 1, 1, 0];
    let mut expected = icmp_error(ROUTER, &with_options, FRAG_NEEDED, mtu, 20);
    expected.options = vec![1, 1, 1, 0];
    check(
        &mut k,
        Hook::Network,
        "options on the outer and the quoted header",
        &input,
        Leaves::IntoPod,
        &expected,
        outcome::TRANSLATED_ICMP_ERROR,
    );
}

#[test]
fn the_clients_error_about_a_reply_reaches_the_backend() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(DNS_VIP, 53, PROTO_UDP), &[backend(DNS_POD, 5353)])
        .unwrap();
    pod(&k, CLIENT, SENDING_VETH);
    pod(&k, DNS_POD, OTHER_VETH);
    let c = (CLIENT, 40000);
    send(&mut k, Hook::Pod, &Packet::udp(c, (DNS_VIP, 53), b"query"));
    let answer = Packet::udp((DNS_POD, 5353), c, b"late answer");
    send(&mut k, Hook::Pod, &answer);
    // The client closed its socket already: its kernel answers the reply
    // (from the ClusterIP) with port unreachable, towards the ClusterIP.
    let got = answer.clone().with_src(DNS_VIP, 53);
    check(
        &mut k,
        Hook::Pod,
        "client's port unreachable about a reply",
        &icmp_error(CLIENT, &got, UNREACHABLE, [0; 4], 8 + 11),
        Leaves::IntoPod,
        &icmp_error(CLIENT, &answer, UNREACHABLE, [0; 4], 8 + 11),
        outcome::TRANSLATED_ICMP_ERROR,
    );
}

#[test]
fn a_source_natted_nodeport_flows_errors_are_translated_both_ways() {
    let mut k = Kernel::load();
    NodeMap::open(k.pin_dir())
        .unwrap()
        .set_address(Some(NODE))
        .unwrap();
    let remote = Backend {
        addr: REMOTE_POD.octets(),
        port: 8080,
        pad: [0; 2],
    };
    k.services
        .upsert_frontend(node_port(PROTO_UDP), &[remote], "", 0)
        .unwrap();
    let c = (EXTERNAL, 40000);
    let request = Packet::udp(c, (NODE, NODE_PORT), b"request");
    let out = send(&mut k, Hook::Network, &request);
    let snat_port = u16::from_be_bytes([out[34], out[35]]);
    let snat = (NODE, snat_port);
    let arrived = Packet::udp(snat, (REMOTE_POD, 8080), b"request");

    // The backend (on another node) has nothing on its port.
    check(
        &mut k,
        Hook::Network,
        "the remote backend's port unreachable",
        &icmp_error(REMOTE_POD, &arrived, UNREACHABLE, [0; 4], 8),
        Leaves::ByFib,
        &icmp_error(NODE, &request, UNREACHABLE, [0; 4], 8),
        outcome::TRANSLATED_ICMP_ERROR,
    );
    check(
        &mut k,
        Hook::Network,
        "a router's error on the way to the backend",
        &icmp_error(ROUTER, &arrived, FRAG_NEEDED, next_hop_mtu(1400), 8),
        Leaves::ByFib,
        &icmp_error(ROUTER, &request, FRAG_NEEDED, next_hop_mtu(1400), 8),
        outcome::TRANSLATED_ICMP_ERROR,
    );

    // The reply goes out from the NodePort; the client's side cannot take
    // it: the error reaches the backend about what it sent.
    let reply = Packet::udp((REMOTE_POD, 8080), snat, &[b'r'; 1200]);
    send(&mut k, Hook::Network, &reply);
    let got = Packet::udp((NODE, NODE_PORT), c, &[b'r'; 1200]);
    check(
        &mut k,
        Hook::Network,
        "fragmentation needed from the client's router",
        &icmp_error(CLIENT_ROUTER, &got, FRAG_NEEDED, next_hop_mtu(1280), 8),
        Leaves::ByFib,
        &icmp_error(CLIENT_ROUTER, &reply, FRAG_NEEDED, next_hop_mtu(1280), 8),
        outcome::TRANSLATED_ICMP_ERROR,
    );
    // From the client itself: from the flow's source-NAT address, the only
    // client the backend knows.
    check(
        &mut k,
        Hook::Network,
        "the external client's own port unreachable",
        &icmp_error(EXTERNAL, &got, UNREACHABLE, [0; 4], 8),
        Leaves::ByFib,
        &icmp_error(NODE, &reply, UNREACHABLE, [0; 4], 8),
        outcome::TRANSLATED_ICMP_ERROR,
    );
}

#[test]
fn errors_about_untracked_packets_and_other_icmp_pass_unchanged() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(WEB_VIP, 80, PROTO_TCP), &[backend(WEB_POD, 8080)])
        .unwrap();
    pod(&k, WEB_POD, SENDING_VETH);
    let syn = Packet::tcp((CLIENT, 40000), (WEB_VIP, 80), TCP_SYN, b"");
    send(&mut k, Hook::Pod, &syn);
    let arrived = syn.clone().with_dst(WEB_POD, 8080);

    let echo = Packet::icmp_echo(CLIENT, WEB_POD);
    check(
        &mut k,
        Hook::Pod,
        "echo",
        &echo,
        Leaves::IntoPod,
        &echo,
        outcome::PASSED,
    );
    let direct = Packet::udp((CLIENT, 40000), (WEB_POD, 53), b"direct");
    let untracked = icmp_error(WEB_POD, &direct, UNREACHABLE, [0; 4], 8);
    check(
        &mut k,
        Hook::Pod,
        "error about a packet of no Service flow",
        &untracked,
        Leaves::As(TC_ACT_OK),
        &untracked,
        outcome::PASSED,
    );
    // Source quench (deprecated) and redirects are no errors ferry maps.
    let quench = icmp_error(WEB_POD, &arrived, (4, 0), [0; 4], 8);
    check(
        &mut k,
        Hook::Pod,
        "source quench about a tracked packet",
        &quench,
        Leaves::As(TC_ACT_OK),
        &quench,
        outcome::PASSED,
    );
    // Sent to someone else than the quoted packet's source.
    let mut misaddressed = icmp_error(WEB_POD, &arrived, UNREACHABLE, [0; 4], 8);
    misaddressed.dst = OTHER_POD;
    check(
        &mut k,
        Hook::Pod,
        "error not for the quoted packet's source",
        &misaddressed,
        Leaves::As(TC_ACT_OK),
        &misaddressed,
        outcome::PASSED,
    );
    // On the uplink, for a local pod: delivered to it, untranslated.
    pod(&k, CLIENT, OTHER_VETH);
    let from_afar = icmp_error(ROUTER, &direct, UNREACHABLE, [0; 4], 8);
    check(
        &mut k,
        Hook::Network,
        "untracked error for a local pod over the uplink",
        &from_afar,
        Leaves::IntoPod,
        &from_afar,
        outcome::PASSED,
    );

    // An expired flow is no flow: its error is not translated, and the
    // entries stay expired.
    let mut entries = k.conntrack.entries().unwrap();
    for (key, entry) in &mut entries {
        entry.expires_ns = 1;
        k.conntrack.insert(*key, *entry).unwrap();
    }
    let stale = icmp_error(WEB_POD, &arrived, UNREACHABLE, [0; 4], 8);
    check(
        &mut k,
        Hook::Pod,
        "error about an expired flow",
        &stale,
        Leaves::IntoPod,
        &stale,
        outcome::PASSED,
    );
}

#[test]
fn a_pod_cannot_get_an_error_translated_into_another_pods_flow() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(WEB_VIP, 80, PROTO_TCP), &[backend(WEB_POD, 8080)])
        .unwrap();
    // The sender in this test is OTHER_POD: the test run's device is its
    // veth; the flow's two pods have veths of their own.
    pod(&k, OTHER_POD, SENDING_VETH);
    pod(&k, WEB_POD, OTHER_VETH);
    pod(&k, CLIENT, OTHER_VETH + 1);
    let c = (CLIENT, 40000);
    let syn = Packet::tcp(c, (WEB_VIP, 80), TCP_SYN, b"");
    send(&mut k, Hook::Pod, &syn);
    let syn_ack = Packet::tcp((WEB_POD, 8080), c, TCP_SYN | TCP_ACK, b"");
    send(&mut k, Hook::Pod, &syn_ack);
    let arrived = syn.clone().with_dst(WEB_POD, 8080);
    let got = syn_ack.clone().with_src(WEB_VIP, 80);

    for (what, forged, outcome) in [
        (
            "from its own address, about a packet sent to the backend",
            icmp_error(OTHER_POD, &arrived, UNREACHABLE, [0; 4], 8),
            outcome::DROP_ICMP_ERROR_FOREIGN,
        ),
        (
            "from the backend's address",
            icmp_error(WEB_POD, &arrived, UNREACHABLE, [0; 4], 8),
            outcome::DROP_SPOOFED_SOURCE,
        ),
        (
            "from its own address, about a reply sent to the client",
            icmp_error(OTHER_POD, &got, UNREACHABLE, [0; 4], 8),
            outcome::DROP_ICMP_ERROR_FOREIGN,
        ),
        (
            "from the client's address",
            icmp_error(CLIENT, &got, UNREACHABLE, [0; 4], 8),
            outcome::DROP_SPOOFED_SOURCE,
        ),
    ] {
        check(
            &mut k,
            Hook::PodOf(OTHER_POD),
            what,
            &forged,
            Leaves::As(TC_ACT_SHOT),
            &forged,
            outcome,
        );
    }

    // The same error from the backend's own veth is its to send.
    pod(&k, WEB_POD, SENDING_VETH);
    check(
        &mut k,
        Hook::Pod,
        "the backend's own error",
        &icmp_error(WEB_POD, &arrived, UNREACHABLE, [0; 4], 8),
        Leaves::IntoPod,
        &icmp_error(WEB_VIP, &syn, UNREACHABLE, [0; 4], 8),
        outcome::TRANSLATED_ICMP_ERROR,
    );
}

#[test]
fn an_error_neither_refreshes_nor_advances_its_flow() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(WEB_VIP, 80, PROTO_TCP), &[backend(WEB_POD, 8080)])
        .unwrap();
    pod(&k, WEB_POD, SENDING_VETH);
    let syn = Packet::tcp((CLIENT, 40000), (WEB_VIP, 80), TCP_SYN, b"");
    send(&mut k, Hook::Pod, &syn);
    let before = k.conntrack.entries().unwrap();
    assert!(before.iter().all(|(_, e)| e.state == STATE_TCP_SYN_SENT));
    // Time passes (a refresh would move the expiry), then errors arrive.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let arrived = syn.clone().with_dst(WEB_POD, 8080);
    for kind in [UNREACHABLE, FRAG_NEEDED, TTL_EXCEEDED, (12, 0)] {
        let (verdict, _) = k.run(&icmp_error(WEB_POD, &arrived, kind, [0; 4], 8).bytes());
        assert!(
            verdict == TC_ACT_OK || verdict == TC_ACT_REDIRECT,
            "{kind:?} translated and sent on by fib: verdict {verdict}"
        );
    }
    assert_eq!(
        k.counters()[outcome::TRANSLATED_ICMP_ERROR as usize].packets,
        4
    );
    let mut after = k.conntrack.entries().unwrap();
    let mut before = before;
    before.sort_by_key(|(key, _)| key.direction);
    after.sort_by_key(|(key, _)| key.direction);
    assert_eq!(after, before, "same state, same expiry");
}

#[test]
fn a_pod_that_is_its_own_backend_hears_its_own_error_from_the_cluster_ip() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(DNS_VIP, 53, PROTO_UDP), &[backend(DNS_POD, 5353)])
        .unwrap();
    pod(&k, DNS_POD, SENDING_VETH);
    let query = Packet::udp((DNS_POD, 40000), (DNS_VIP, 53), b"myself?");
    send(&mut k, Hook::Pod, &query);
    // Hairpin: the pod gets its own query from the hairpin address.
    let hairpin = Ipv4Addr::from(ferry_common::HAIRPIN_SNAT_ADDR);
    let arrived = Packet::udp((hairpin, 40000), (DNS_POD, 5353), b"myself?");
    check(
        &mut k,
        Hook::Pod,
        "port unreachable to the hairpin address",
        &icmp_error(DNS_POD, &arrived, UNREACHABLE, [0; 4], 8 + 7),
        Leaves::IntoPod,
        &icmp_error(DNS_VIP, &query, UNREACHABLE, [0; 4], 8 + 7),
        outcome::TRANSLATED_ICMP_ERROR,
    );
}
