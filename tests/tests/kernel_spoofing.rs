//! Anti-spoofing at the pod's veth (issue 13, item 3): an IPv4 packet whose
//! source is not the sending pod's address is dropped and counted before
//! it can touch any map, so no pod can remove, rewrite or create another
//! pod's conntrack, affinity or fragment entries.
use std::net::Ipv4Addr;

use ferry_agent::maps::Endpoints;
use ferry_common::{Endpoint, PROTO_TCP, PROTO_UDP, outcome};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX, backend, frontend},
    packet::{Packet, TCP_ACK, TCP_SYN, arp_request},
};

const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 66);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn spoofed_drops(k: &Kernel) -> (u64, u64) {
    let c = k.counters()[outcome::DROP_SPOOFED_SOURCE as usize];
    (c.packets, c.bytes)
}

fn source(frame: &[u8]) -> ([u8; 4], u16) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    (
        frame[26..30].try_into().unwrap(),
        u16::from_be_bytes([frame[14 + ihl], frame[15 + ihl]]),
    )
}

/// The attack issue 13 reported: a pod forges a SYN with the victim's
/// address and port, to the victim's backend. Without the check, the
/// clashing-reply cleanup removed the victim's reply entry and the
/// victim's connection stalled.
#[test]
fn a_forged_syn_cannot_cut_another_pods_service_connection() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(VIP, 80, PROTO_TCP), &[backend(SERVER, 8080)])
        .unwrap();
    let (verdict, _) = k.run(&Packet::tcp((VICTIM, 40000), (VIP, 80), TCP_SYN, b"").bytes());
    assert_eq!(verdict, TC_ACT_OK);
    let reply = Packet::tcp((SERVER, 8080), (VICTIM, 40000), TCP_SYN | TCP_ACK, b"");
    let (verdict, out) = k.run(&reply.bytes());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(source(&out), (VIP.octets(), 80), "the reply is translated");
    let before = k.conntrack.entries().unwrap();

    let forged = Packet::tcp((VICTIM, 40000), (SERVER, 8080), TCP_SYN, b"").bytes();
    let (verdict, out) = k.run_as_pod(ATTACKER, &forged);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(out, forged, "a dropped frame is not rewritten");
    assert_eq!(spoofed_drops(&k), (1, forged.len() as u64));
    assert_eq!(
        k.conntrack.entries().unwrap(),
        before,
        "the forged packet changed no conntrack entry"
    );

    // The victim's connection goes on: its backend's next segment is still
    // translated back to the ClusterIP.
    let data = Packet::tcp((SERVER, 8080), (VICTIM, 40000), TCP_ACK, b"hello");
    let (verdict, out) = k.run(&data.bytes());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(source(&out), (VIP.octets(), 80));

    // The same packet from the victim itself (reusing its own tuple towards
    // the backend directly) is its own business: the stale reply entry is
    // cleared, as before. So it was the check, not the tuple, that kept the
    // attacker out.
    let (verdict, _) = k.run(&forged);
    assert_eq!(verdict, TC_ACT_OK);
    assert_ne!(k.conntrack.entries().unwrap(), before);
}

#[test]
fn a_forged_request_to_a_service_creates_no_flow_for_the_victim() {
    let mut k = Kernel::load();
    k.services
        .upsert(frontend(VIP, 53, PROTO_UDP), &[backend(SERVER, 5353)])
        .unwrap();
    let forged = Packet::udp((VICTIM, 5000), (VIP, 53), b"q").bytes();
    let (verdict, out) = k.run_as_pod(ATTACKER, &forged);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(out, forged);
    assert!(k.conntrack.entries().unwrap().is_empty());
    let (verdict, out) = k.run_as_pod(VICTIM, &forged);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        out[30..34],
        SERVER.octets(),
        "the victim's own request is translated"
    );
}

#[test]
fn a_pod_sends_from_its_own_address_only() {
    let mut k = Kernel::load();
    let to_server = |src: Ipv4Addr| Packet::udp((src, 1000), (SERVER, 9), b"x").bytes();
    let cases: [(&str, Ipv4Addr, u32); 4] = [
        ("its own address", ATTACKER, TC_ACT_OK),
        ("another pod's address", VICTIM, TC_ACT_SHOT),
        (
            "the unspecified address",
            Ipv4Addr::UNSPECIFIED,
            TC_ACT_SHOT,
        ),
        (
            "a node-like address",
            Ipv4Addr::new(192, 168, 1, 1),
            TC_ACT_SHOT,
        ),
    ];
    for (what, src, expected) in cases {
        let (verdict, _) = k.run_as_pod(ATTACKER, &to_server(src));
        assert_eq!(verdict, expected, "from {what}");
    }
    // ICMP and later fragments are checked too: the check is before the
    // protocols part.
    let echo = Packet::icmp_echo(VICTIM, SERVER).bytes();
    assert_eq!(k.run_as_pod(ATTACKER, &echo).0, TC_ACT_SHOT, "ICMP");
    let fragments = Packet::udp((VICTIM, 1000), (SERVER, 9), &[7u8; 3000]).fragments(1480);
    assert_eq!(
        k.run_as_pod(ATTACKER, &fragments[1]).0,
        TC_ACT_SHOT,
        "a later fragment"
    );
    assert_eq!(spoofed_drops(&k).0, 5);
    // What a pod legitimately sends besides its own IPv4 passes.
    assert_eq!(k.run_as_pod(ATTACKER, &arp_request()).0, TC_ACT_OK, "ARP");
}

#[test]
fn a_veth_without_a_recorded_pod_carries_no_ipv4() {
    let mut k = Kernel::load();
    let frame = Packet::udp((VICTIM, 1000), (SERVER, 9), b"x").bytes();
    assert_eq!(k.run_from_unknown_veth(&frame).0, TC_ACT_SHOT);
    assert_eq!(k.run_from_unknown_veth(&arp_request()).0, TC_ACT_OK);
    assert_eq!(spoofed_drops(&k).0, 1);
}

/// The agent's side: ferry-cni's endpoint record gives the veth its source
/// and DEL takes it away; an agent starting over pods recorded before
/// `ferry_pod_srcs` existed gives them theirs.
#[test]
fn endpoint_records_keep_the_source_map_in_step() {
    let mut k = Kernel::load();
    let mut endpoints = Endpoints::open(k.pin_dir()).unwrap();
    let pod = Endpoint {
        ifindex: TEST_RUN_IFINDEX,
        flags: 0,
        pod_mac: [2, 0, 0, 0, 0, 1],
        host_mac: [2, 0, 0, 0, 0, 2],
    };
    let _ = k.pod_sources.remove(&TEST_RUN_IFINDEX);
    endpoints.insert(VICTIM, pod).unwrap();
    assert_eq!(endpoints.source_of(TEST_RUN_IFINDEX).unwrap(), Some(VICTIM));
    let frame = Packet::udp((VICTIM, 1000), (SERVER, 9), b"x").bytes();
    let run = |k: &mut Kernel| {
        k.dataplane
            .program(ferry_agent::loader::PROG_FROM_POD)
            .test_run(aya::programs::TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut vec![0u8; frame.len() + 256]),
                ..aya::programs::TestRunOptions::new()
            })
            .unwrap()
            .return_value
    };
    use aya::programs::TestRun;
    assert_eq!(run(&mut k), TC_ACT_OK, "recorded by insert");

    k.pod_sources.remove(&TEST_RUN_IFINDEX).unwrap();
    assert_eq!(
        run(&mut k),
        TC_ACT_SHOT,
        "the source entry is what admits it"
    );
    assert_eq!(endpoints.restore_sources().unwrap(), 1);
    assert_eq!(endpoints.restore_sources().unwrap(), 0, "only missing ones");
    assert_eq!(run(&mut k), TC_ACT_OK, "restored");

    endpoints.remove(VICTIM).unwrap();
    assert_eq!(endpoints.source_of(TEST_RUN_IFINDEX).unwrap(), None);
    assert_eq!(run(&mut k), TC_ACT_SHOT, "removed with the endpoint");
}
