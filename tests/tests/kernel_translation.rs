//! ferry's tc program in the kernel, through BPF_PROG_TEST_RUN: each case
//! fills the maps through the agent's own map API, feeds exact packet bytes
//! and compares the verdict, every output byte (checksums included) and the
//! outcome counter.
use std::net::Ipv4Addr;

use ferry_common::{PROTO_TCP, PROTO_UDP, outcome};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, backend, frontend},
    packet::{self, Packet, TCP_ACK, TCP_PSH, TCP_SYN},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const DNS_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

enum Expect {
    /// The packet leaves exactly as given.
    Bytes(Vec<u8>),
    /// The packet leaves unmodified.
    Unchanged,
}

struct Case {
    description: &'static str,
    input: Vec<u8>,
    verdict: u32,
    expect: Expect,
    outcome: u32,
}

fn services(k: &mut Kernel) {
    k.services
        .upsert(frontend(WEB_VIP, 80, PROTO_TCP), &[backend(WEB_POD, 8080)])
        .unwrap();
    k.services
        .upsert(frontend(DNS_VIP, 53, PROTO_UDP), &[backend(DNS_POD, 5353)])
        .unwrap();
    k.services
        .upsert(frontend(EMPTY_VIP, 80, PROTO_TCP), &[])
        .unwrap();
    k.services
        .upsert(frontend(EMPTY_VIP, 53, PROTO_UDP), &[])
        .unwrap();
}

fn run_table(k: &mut Kernel, cases: Vec<Case>) {
    for case in cases {
        let before = k.counters()[case.outcome as usize].packets;
        let (verdict, out) = k.run(&case.input);
        assert_eq!(verdict, case.verdict, "{}: verdict", case.description);
        let expected = match &case.expect {
            Expect::Bytes(b) => b,
            Expect::Unchanged => &case.input,
        };
        assert_eq!(
            hex(&out),
            hex(expected),
            "{}: output bytes (got vs expected)",
            case.description
        );
        let after = k.counters()[case.outcome as usize].packets;
        assert_eq!(
            after,
            before + 1,
            "{}: counter {}",
            case.description,
            outcome::NAMES[case.outcome as usize]
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn tcp_flow_is_translated_both_ways() {
    let mut k = Kernel::load();
    services(&mut k);
    let c = (CLIENT, 40000);
    let vip = (WEB_VIP, 80);
    let pod = (WEB_POD, 8080);
    let syn = Packet::tcp(c, vip, TCP_SYN, b"");
    let data = Packet::tcp(c, vip, TCP_ACK | TCP_PSH, b"GET / HTTP/1.1\r\n\r\n");
    let syn_ack = Packet::tcp(pod, c, TCP_SYN | TCP_ACK, b"");
    let response = Packet::tcp(pod, c, TCP_ACK | TCP_PSH, b"HTTP/1.1 200 OK\r\n\r\nhello");
    run_table(
        &mut k,
        vec![
            Case {
                description: "TCP SYN to a ClusterIP is DNATed to its backend",
                input: syn.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Bytes(syn.clone().with_dst(pod.0, pod.1).bytes()),
                outcome: outcome::TRANSLATED,
            },
            Case {
                description: "the backend's SYN-ACK is reverse-NATed to the ClusterIP",
                input: syn_ack.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Bytes(syn_ack.clone().with_src(vip.0, vip.1).bytes()),
                outcome: outcome::REVERSE_TRANSLATED,
            },
            Case {
                description: "the next packet of the flow goes to the same backend",
                input: data.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Bytes(data.clone().with_dst(pod.0, pod.1).bytes()),
                outcome: outcome::TRANSLATED,
            },
            Case {
                description: "a reply with payload is reverse-NATed",
                input: response.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Bytes(response.clone().with_src(vip.0, vip.1).bytes()),
                outcome: outcome::REVERSE_TRANSLATED,
            },
            Case {
                description: "the backend's own traffic to another port passes untouched",
                input: Packet::tcp(pod, (CLIENT, 40001), TCP_SYN, b"").bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                outcome: outcome::PASSED,
            },
        ],
    );
    let entries = k.conntrack.entries().unwrap();
    assert_eq!(entries.len(), 2, "one entry per flow and direction");
    for (_, e) in entries {
        assert_eq!(
            e.state,
            ferry_common::conntrack::STATE_TCP_ESTABLISHED,
            "both directions agree the flow is established"
        );
    }
}

#[test]
fn udp_with_and_without_checksum() {
    let mut k = Kernel::load();
    services(&mut k);
    let c = (CLIENT, 33333);
    let vip = (DNS_VIP, 53);
    let pod = (DNS_POD, 5353);
    let query = Packet::udp(c, vip, b"\x12\x34\x01\x00\x00\x01query");
    let answer = Packet::udp(pod, c, b"\x12\x34\x81\x80answer!");
    let bare = Packet::udp((CLIENT, 33334), vip, b"no checksum").zero_udp_checksum();
    let bare_answer = Packet::udp(pod, (CLIENT, 33334), b"none here").zero_udp_checksum();
    run_table(
        &mut k,
        vec![
            Case {
                description: "UDP to a ClusterIP is DNATed with its checksum updated",
                input: query.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Bytes(query.clone().with_dst(pod.0, pod.1).bytes()),
                outcome: outcome::TRANSLATED,
            },
            Case {
                description: "the UDP reply is reverse-NATed",
                input: answer.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Bytes(answer.clone().with_src(vip.0, vip.1).bytes()),
                outcome: outcome::REVERSE_TRANSLATED,
            },
            Case {
                description: "UDP without checksum is DNATed and its checksum stays zero",
                input: bare.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Bytes(bare.clone().with_dst(pod.0, pod.1).bytes()),
                outcome: outcome::TRANSLATED,
            },
            Case {
                description: "a UDP reply without checksum keeps it zero",
                input: bare_answer.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Bytes(bare_answer.clone().with_src(vip.0, vip.1).bytes()),
                outcome: outcome::REVERSE_TRANSLATED,
            },
        ],
    );
}

#[test]
fn traffic_that_is_not_for_a_service_passes_untouched() {
    let mut k = Kernel::load();
    services(&mut k);
    let mut fragment = Packet::udp((CLIENT, 1000), (DNS_POD, 53), b"first fragment");
    fragment.frag = 0x2000; // more fragments
    let mut later_fragment = Packet::udp((CLIENT, 1000), (DNS_VIP, 53), b"later fragment");
    later_fragment.frag = 0x0003;
    run_table(
        &mut k,
        vec![
            Case {
                description: "pod to pod by IP",
                input: Packet::tcp((CLIENT, 40000), (WEB_POD, 8080), TCP_SYN, b"").bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                outcome: outcome::PASSED,
            },
            Case {
                description: "a ClusterIP on a port that is not a service port (no service CIDRs)",
                input: Packet::tcp((CLIENT, 40000), (WEB_VIP, 81), TCP_SYN, b"").bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                outcome: outcome::PASSED,
            },
            Case {
                description: "a ClusterIP and port with the other protocol",
                input: Packet::udp((CLIENT, 40000), (WEB_VIP, 80), b"x").bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                outcome: outcome::PASSED,
            },
            Case {
                description: "ICMP echo to a ClusterIP, no service CIDRs (kube-proxy does not answer it either)",
                input: Packet::icmp_echo(CLIENT, WEB_VIP).bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                outcome: outcome::PASSED,
            },
            Case {
                description: "a non-IP frame (ARP)",
                input: packet::arp_request(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                outcome: outcome::PASSED_NOT_IPV4,
            },
            Case {
                description: "a first fragment to a pod by address",
                input: fragment.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                outcome: outcome::PASSED_FRAGMENT,
            },
            Case {
                description: "a later fragment to a ClusterIP whose first fragment was not seen, no service CIDRs",
                input: later_fragment.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                outcome: outcome::PASSED_FRAGMENT,
            },
        ],
    );
    assert!(k.conntrack.entries().unwrap().is_empty(), "nothing tracked");
}

#[test]
fn ipv4_options_are_kept_and_the_flow_translated() {
    let mut k = Kernel::load();
    services(&mut k);
    let mut syn = Packet::tcp((CLIENT, 40000), (WEB_VIP, 80), TCP_SYN, b"");
    // Router Alert (RFC 2113) then a NOP and an end-of-list, 8 bytes.
    syn.options = vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00];
    let mut expected = syn.clone().with_dst(WEB_POD, 8080);
    expected.options = syn.options.clone();
    run_table(
        &mut k,
        vec![Case {
            description: "TCP SYN with IPv4 options (IHL 7) to a ClusterIP",
            input: syn.bytes(),
            verdict: TC_ACT_OK,
            expect: Expect::Bytes(expected.bytes()),
            outcome: outcome::TRANSLATED,
        }],
    );
}

#[test]
fn a_service_without_endpoints_rejects_with_icmp_port_unreachable() {
    let mut k = Kernel::load();
    services(&mut k);
    let tcp = Packet::tcp((CLIENT, 40000), (EMPTY_VIP, 80), TCP_SYN, b"");
    let udp = Packet::udp(
        (CLIENT, 40000),
        (EMPTY_VIP, 53),
        b"a query with some payload",
    );
    let mut with_options = Packet::tcp((CLIENT, 40002), (EMPTY_VIP, 80), TCP_SYN, b"");
    with_options.options = vec![0x01, 0x01, 0x01, 0x00];
    run_table(
        &mut k,
        vec![
            Case {
                description: "TCP SYN: ICMP port unreachable back out of the pod's veth",
                input: tcp.bytes(),
                verdict: TC_ACT_REDIRECT,
                expect: Expect::Bytes(packet::port_unreachable_for(&tcp)),
                outcome: outcome::REJECTED_NO_ENDPOINTS,
            },
            Case {
                description: "UDP datagram (longer than the reply): ICMP port unreachable",
                input: udp.bytes(),
                verdict: TC_ACT_REDIRECT,
                expect: Expect::Bytes(packet::port_unreachable_for(&udp)),
                outcome: outcome::REJECTED_NO_ENDPOINTS,
            },
            Case {
                description: "the quote carries the offending header's options",
                input: with_options.bytes(),
                verdict: TC_ACT_REDIRECT,
                expect: Expect::Bytes(packet::port_unreachable_for(&with_options)),
                outcome: outcome::REJECTED_NO_ENDPOINTS,
            },
        ],
    );
    assert!(
        k.conntrack.entries().unwrap().is_empty(),
        "a rejected flow is not tracked"
    );
}

#[test]
fn malformed_and_truncated_packets_are_dropped_with_a_reason() {
    let mut k = Kernel::load();
    services(&mut k);
    let syn = Packet::tcp((CLIENT, 40000), (WEB_VIP, 80), TCP_SYN, b"").bytes();
    // Cut inside the TCP header, with the IPv4 total length saying so too.
    let mut truncated_tcp = syn[..14 + 20 + 12].to_vec();
    truncated_tcp[16..18].copy_from_slice(&32u16.to_be_bytes());
    fix_ip_checksum(&mut truncated_tcp);
    let udp = Packet::udp((CLIENT, 40000), (DNS_VIP, 53), b"").bytes();
    let mut truncated_udp = udp[..14 + 20 + 4].to_vec();
    truncated_udp[16..18].copy_from_slice(&24u16.to_be_bytes());
    fix_ip_checksum(&mut truncated_udp);
    // The frame is shorter than the IPv4 total length claims.
    let short_frame = syn[..syn.len() - 4].to_vec();
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x44;
    let mut not_v4 = syn.clone();
    not_v4[14] = 0x65;
    run_table(
        &mut k,
        vec![
            Case {
                description: "TCP header cut short",
                input: truncated_tcp,
                verdict: TC_ACT_SHOT,
                expect: Expect::Unchanged,
                outcome: outcome::DROP_TRUNCATED_L4,
            },
            Case {
                description: "UDP header cut short",
                input: truncated_udp,
                verdict: TC_ACT_SHOT,
                expect: Expect::Unchanged,
                outcome: outcome::DROP_TRUNCATED_L4,
            },
            Case {
                description: "frame shorter than the IPv4 total length",
                input: short_frame,
                verdict: TC_ACT_SHOT,
                expect: Expect::Unchanged,
                outcome: outcome::DROP_MALFORMED_IPV4,
            },
            Case {
                description: "IPv4 header length below 20 bytes",
                input: bad_ihl,
                verdict: TC_ACT_SHOT,
                expect: Expect::Unchanged,
                outcome: outcome::DROP_MALFORMED_IPV4,
            },
            Case {
                description: "IP version 6 in an IPv4 ethertype",
                input: not_v4,
                verdict: TC_ACT_SHOT,
                expect: Expect::Unchanged,
                outcome: outcome::DROP_MALFORMED_IPV4,
            },
        ],
    );
    assert!(k.conntrack.entries().unwrap().is_empty());
}

fn fix_ip_checksum(frame: &mut [u8]) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

const WEB_POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x11];
const WEB_HOST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x11];
const CLIENT_POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x05];
const CLIENT_HOST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x05];

fn local_endpoints(k: &Kernel) {
    let mut eps = ferry_agent::maps::Endpoints::open(k.pin_dir()).unwrap();
    eps.insert(
        WEB_POD,
        ferry_common::Endpoint {
            ifindex: 11,
            flags: 0,
            pod_mac: WEB_POD_MAC,
            host_mac: WEB_HOST_MAC,
        },
    )
    .unwrap();
    eps.insert(
        CLIENT,
        ferry_common::Endpoint {
            ifindex: 5,
            flags: 0,
            pod_mac: CLIENT_POD_MAC,
            host_mac: CLIENT_HOST_MAC,
        },
    )
    .unwrap();
}

#[test]
fn traffic_for_local_pods_is_redirected_into_the_pod_with_its_macs() {
    let mut k = Kernel::load();
    services(&mut k);
    local_endpoints(&k);
    let c = (CLIENT, 40000);
    let syn = Packet::tcp(c, (WEB_VIP, 80), TCP_SYN, b"");
    let syn_ack = Packet::tcp((WEB_POD, 8080), c, TCP_SYN | TCP_ACK, b"");
    let direct = Packet::tcp((CLIENT, 40001), (WEB_POD, 8080), TCP_SYN, b"");
    let ping = Packet::icmp_echo(CLIENT, WEB_POD);
    let to_remote = Packet::tcp(
        (CLIENT, 40002),
        (Ipv4Addr::new(10, 244, 7, 7), 80),
        TCP_SYN,
        b"",
    );
    run_table(
        &mut k,
        vec![
            Case {
                description: "ClusterIP -> local backend: DNAT, then straight into the pod",
                input: syn.bytes(),
                verdict: TC_ACT_REDIRECT,
                expect: Expect::Bytes(
                    syn.clone()
                        .with_dst(WEB_POD, 8080)
                        .with_macs(WEB_POD_MAC, WEB_HOST_MAC)
                        .bytes(),
                ),
                outcome: outcome::TRANSLATED,
            },
            Case {
                description: "the reply is reverse-NATed and put into the client pod",
                input: syn_ack.bytes(),
                verdict: TC_ACT_REDIRECT,
                expect: Expect::Bytes(
                    syn_ack
                        .clone()
                        .with_src(WEB_VIP, 80)
                        .with_macs(CLIENT_POD_MAC, CLIENT_HOST_MAC)
                        .bytes(),
                ),
                outcome: outcome::REVERSE_TRANSLATED,
            },
            Case {
                description: "pod to local pod by IP",
                input: direct.bytes(),
                verdict: TC_ACT_REDIRECT,
                expect: Expect::Bytes(direct.clone().with_macs(WEB_POD_MAC, WEB_HOST_MAC).bytes()),
                outcome: outcome::PASSED,
            },
            Case {
                description: "ICMP to a local pod",
                input: ping.bytes(),
                verdict: TC_ACT_REDIRECT,
                expect: Expect::Bytes(ping.clone().with_macs(WEB_POD_MAC, WEB_HOST_MAC).bytes()),
                outcome: outcome::PASSED,
            },
            Case {
                description: "an address that is not a local pod goes to the kernel",
                input: to_remote.bytes(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                outcome: outcome::PASSED,
            },
        ],
    );
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_hairpinned() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(WEB_VIP, 80, PROTO_TCP), &[backend(CLIENT, 8080)])
        .unwrap();
    local_endpoints(&k);
    let hairpin = Ipv4Addr::from(ferry_common::HAIRPIN_SNAT_ADDR);
    let syn = Packet::tcp((CLIENT, 40000), (WEB_VIP, 80), TCP_SYN, b"");
    let syn_ack = Packet::tcp((CLIENT, 8080), (hairpin, 40000), TCP_SYN | TCP_ACK, b"");
    run_table(
        &mut k,
        vec![
            Case {
                description: "SYN to its own ClusterIP: DNAT to itself, source to the hairpin address",
                input: syn.bytes(),
                verdict: TC_ACT_REDIRECT,
                expect: Expect::Bytes(
                    syn.clone()
                        .with_dst(CLIENT, 8080)
                        .with_src(hairpin, 40000)
                        .with_macs(CLIENT_POD_MAC, CLIENT_HOST_MAC)
                        .bytes(),
                ),
                outcome: outcome::TRANSLATED,
            },
            Case {
                description: "its answer to the hairpin address comes back from the ClusterIP",
                input: syn_ack.bytes(),
                verdict: TC_ACT_REDIRECT,
                expect: Expect::Bytes(
                    syn_ack
                        .clone()
                        .with_src(WEB_VIP, 80)
                        .with_dst(CLIENT, 40000)
                        .with_macs(CLIENT_POD_MAC, CLIENT_HOST_MAC)
                        .bytes(),
                ),
                outcome: outcome::REVERSE_TRANSLATED,
            },
        ],
    );
    let entries = k.conntrack.entries().unwrap();
    assert_eq!(entries.len(), 2);
    for (key, entry) in &entries {
        let partner = ferry_agent::maps::conntrack::partner_key(key, entry);
        assert!(entries.iter().any(|(k, _)| *k == partner), "pair intact");
    }
}
