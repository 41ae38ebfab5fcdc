//! Service CIDRs (`--service-cidr`) in the kernel, through
//! BPF_PROG_TEST_RUN: from a pod, a ClusterIP's unserved port is rejected
//! with ICMP port unreachable, an unallocated address in the range is
//! dropped, and neither leaves the node; outside the range nothing changes.
use std::net::Ipv4Addr;

use ferry_agent::maps::ServiceRanges;
use ferry_common::{
    PROTO_TCP, SERVICE_RANGE_ALLOCATED, SERVICE_RANGE_UNALLOCATED, ServiceRange, outcome,
};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, backend, frontend},
    packet::{self, Packet, TCP_ACK, TCP_SYN},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const UNALLOCATED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 10);

/// web (10.96.0.10:80/TCP) and the service CIDR 10.96.0.0/16 with web's
/// ClusterIP allocated, written as the agent writes them.
fn kernel() -> Kernel {
    let mut k = Kernel::load();
    let web = frontend(WEB_VIP, 80, PROTO_TCP);
    k.services.upsert(web, &[backend(WEB_POD, 8080)]).unwrap();
    let mut ranges = ServiceRanges::open(k.pin_dir()).unwrap();
    let kind = |kind| ServiceRange { kind };
    ranges
        .insert(
            &"10.96.0.0/16".parse().unwrap(),
            kind(SERVICE_RANGE_UNALLOCATED),
        )
        .unwrap();
    ranges
        .insert(
            &"10.96.0.10/32".parse().unwrap(),
            kind(SERVICE_RANGE_ALLOCATED),
        )
        .unwrap();
    k
}

/// Run `input`; assert the verdict, the output bytes and that exactly
/// `outcome`'s counter rose by one.
fn check(k: &mut Kernel, what: &str, input: &[u8], verdict: u32, bytes: &[u8], outcome: u32) {
    let before = k.counters();
    let (got, out) = k.run(input);
    assert_eq!(got, verdict, "{what}: verdict");
    assert_eq!(out, bytes, "{what}: output bytes");
    let after = k.counters();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let want = b.packets + u64::from(i as u32 == outcome);
        assert_eq!(a.packets, want, "{what}: counter {}", outcome::NAMES[i]);
    }
}

#[test]
fn a_cluster_ips_unserved_port_is_rejected_with_icmp_port_unreachable() {
    let mut k = kernel();
    let syn = Packet::tcp((CLIENT, 40000), (WEB_VIP, 81), TCP_SYN, b"");
    check(
        &mut k,
        "TCP SYN to ClusterIP:81",
        &syn.bytes(),
        TC_ACT_REDIRECT,
        &packet::port_unreachable_for(&syn),
        outcome::REJECTED_UNSERVED_PORT,
    );
    let udp = Packet::udp((CLIENT, 40000), (WEB_VIP, 80), b"the other protocol");
    check(
        &mut k,
        "UDP to ClusterIP:80 (the Service serves TCP only)",
        &udp.bytes(),
        TC_ACT_REDIRECT,
        &packet::port_unreachable_for(&udp),
        outcome::REJECTED_UNSERVED_PORT,
    );
    // The served port is still translated.
    let served = Packet::tcp((CLIENT, 40001), (WEB_VIP, 80), TCP_SYN, b"");
    check(
        &mut k,
        "TCP SYN to ClusterIP:80",
        &served.bytes(),
        TC_ACT_OK,
        &served.clone().with_dst(WEB_POD, 8080).bytes(),
        outcome::TRANSLATED,
    );
    assert_eq!(
        k.conntrack.entries().unwrap().len(),
        2,
        "only the served flow is tracked"
    );
}

#[test]
fn an_unallocated_service_address_is_dropped_and_counted() {
    let mut k = kernel();
    let udp = Packet::udp((CLIENT, 40000), (UNALLOCATED, 53), b"anyone?");
    check(
        &mut k,
        "UDP to an unallocated address in the CIDR",
        &udp.bytes(),
        TC_ACT_SHOT,
        &udp.bytes(),
        outcome::DROP_UNALLOCATED_SERVICE_IP,
    );
    let syn = Packet::tcp((CLIENT, 40000), (UNALLOCATED, 80), TCP_SYN, b"");
    check(
        &mut k,
        "TCP SYN to an unallocated address in the CIDR",
        &syn.bytes(),
        TC_ACT_SHOT,
        &syn.bytes(),
        outcome::DROP_UNALLOCATED_SERVICE_IP,
    );
    for dst in [UNALLOCATED, WEB_VIP] {
        let ping = Packet::icmp_echo(CLIENT, dst).bytes();
        check(
            &mut k,
            &format!("ICMP echo to {dst}"),
            &ping,
            TC_ACT_SHOT,
            &ping,
            outcome::DROP_SERVICE_IP_OTHER_PROTOCOL,
        );
    }
    assert!(k.conntrack.entries().unwrap().is_empty(), "nothing tracked");
}

#[test]
fn outside_the_service_cidrs_traffic_without_a_frontend_passes_untouched() {
    let mut k = kernel();
    for input in [
        Packet::udp((CLIENT, 40000), (OUTSIDE, 53), b"x").bytes(),
        Packet::tcp((CLIENT, 40000), (OUTSIDE, 80), TCP_SYN, b"").bytes(),
        Packet::tcp((CLIENT, 40000), (WEB_POD, 8080), TCP_ACK, b"").bytes(),
        Packet::icmp_echo(CLIENT, OUTSIDE).bytes(),
    ] {
        check(
            &mut k,
            "outside",
            &input,
            TC_ACT_OK,
            &input,
            outcome::PASSED,
        );
    }
}

#[test]
fn pins_of_a_release_without_the_service_range_map_are_adopted() {
    let k = kernel();
    let pin_dir = k.pin_dir().to_path_buf();
    // The release before had no ferry_svc_cidrs: remove its pin, load again.
    std::fs::remove_file(pin_dir.join(ferry_common::MAP_SERVICE_RANGES)).unwrap();
    let again = ferry_agent::loader::Dataplane::load(&pin_dir).expect("adopt the older pins");
    assert!(pin_dir.join(ferry_common::MAP_SERVICE_RANGES).exists());
    assert_eq!(k.services.list().unwrap().len(), 1, "services kept");
    assert!(
        ServiceRanges::open(&pin_dir)
            .unwrap()
            .list()
            .unwrap()
            .is_empty(),
        "a new, empty map"
    );
    drop(again);
}
