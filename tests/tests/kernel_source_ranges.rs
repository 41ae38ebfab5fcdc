//! loadBalancerSourceRanges in the kernel, through BPF_PROG_TEST_RUN on
//! exact bytes: a load-balancer IP admits new flows from clients inside its
//! ranges only, from outside (tc and XDP) and from pods; the others are
//! dropped and counted; a flow admitted before the ranges changed goes on
//! (the firewall applies to new connections, as kube-proxy's); a NodePort
//! of the same Service is not fenced.
use std::{collections::BTreeSet, net::Ipv4Addr};

use ferry_agent::maps::{Endpoints, services::FrontendOptions};
use ferry_common::{
    Endpoint, PROTO_TCP, SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS, ServiceKey, outcome,
};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_REDIRECT, TC_ACT_SHOT, backend},
    packet::{Packet, TCP_ACK, TCP_SYN},
};

const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
const NODE_PORT: u16 = 30080;
/// Inside 192.0.2.0/24, the range admitted.
const ADMITTED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const REFUSED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// A backend pod on this node.
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
const VETH_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0x05];
const XDP_PASS: u32 = 2;

fn key(addr: Ipv4Addr, port: u16, scope: u8) -> ServiceKey {
    ServiceKey {
        addr: addr.octets(),
        port,
        protocol: PROTO_TCP,
        scope,
    }
}

fn ranges(list: &[&str]) -> FrontendOptions {
    FrontendOptions {
        affinity_timeout_s: 0,
        source_ranges: Some(
            list.iter()
                .map(|r| r.parse().unwrap())
                .collect::<BTreeSet<_>>(),
        ),
    }
}

/// The LB IP (both scopes) fenced by `options`, and the Service's
/// NodePort unfenced, all over the local pod.
fn kernel(options: &FrontendOptions) -> Kernel {
    let mut k = Kernel::load();
    Endpoints::open(k.pin_dir())
        .unwrap()
        .insert(
            POD,
            Endpoint {
                ifindex: 7,
                flags: 0,
                pod_mac: POD_MAC,
                host_mac: VETH_MAC,
            },
        )
        .unwrap();
    let pods = [backend(POD, 8080)];
    for scope in [SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS] {
        k.services
            .upsert_with_options(key(LB_IP, 80, scope), &pods, "default/lb:http", 0, options)
            .unwrap();
    }
    k.services
        .upsert_frontend(
            key(NODE, NODE_PORT, SCOPE_EXTERNAL),
            &pods,
            "default/lb:http",
            0,
        )
        .unwrap();
    k
}

fn packets(k: &Kernel, outcome: u32) -> u64 {
    k.counters()[outcome as usize].packets
}

/// `pkt` through the uplink's tc program: delivered into the local pod,
/// translated to it, with its MACs.
fn assert_delivered(k: &mut Kernel, pkt: &Packet, what: &str) {
    let (verdict, out) = k.run_from_network(&pkt.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: into the pod");
    let expected = pkt.clone().with_dst(POD, 8080).with_macs(POD_MAC, VETH_MAC);
    assert_eq!(out, expected.bytes(), "{what}");
}

/// `pkt` through the uplink's tc program: dropped under drop_source_range.
fn assert_refused(k: &mut Kernel, pkt: &Packet, what: &str) {
    let before = packets(k, outcome::DROP_SOURCE_RANGE);
    let (verdict, _) = k.run_from_network(&pkt.bytes());
    assert_eq!(verdict, TC_ACT_SHOT, "{what}: dropped");
    assert_eq!(
        packets(k, outcome::DROP_SOURCE_RANGE),
        before + 1,
        "{what}: counted"
    );
}

#[test]
fn a_client_inside_the_ranges_reaches_the_load_balancer_ip_and_one_outside_is_dropped() {
    let mut k = kernel(&ranges(&["192.0.2.0/24", "198.18.0.0/15"]));
    let admitted = Packet::tcp((ADMITTED, 40_000), (LB_IP, 80), TCP_SYN, b"");
    assert_delivered(&mut k, &admitted, "inside 192.0.2.0/24");
    let second_range = Packet::tcp(
        (Ipv4Addr::new(198, 19, 7, 7), 40_000),
        (LB_IP, 80),
        TCP_SYN,
        b"",
    );
    assert_delivered(&mut k, &second_range, "inside 198.18.0.0/15");
    let refused = Packet::tcp((REFUSED, 40_000), (LB_IP, 80), TCP_SYN, b"");
    assert_refused(&mut k, &refused, "outside the ranges");
    let flows = k.conntrack.entries().unwrap();
    assert!(
        !flows
            .iter()
            .any(|(key, _)| key.src_addr == REFUSED.octets()),
        "a refused client leaves no flow behind"
    );
    // Its later packets are refused too: nothing was admitted.
    let data = Packet::tcp((REFUSED, 40_000), (LB_IP, 80), TCP_ACK, b"GET /");
    assert_refused(&mut k, &data, "the refused client's data");
}

#[test]
fn the_same_services_node_port_is_not_fenced() {
    let mut k = kernel(&ranges(&["192.0.2.0/24"]));
    let via_node_port = Packet::tcp((REFUSED, 40_000), (NODE, NODE_PORT), TCP_SYN, b"");
    assert_delivered(&mut k, &via_node_port, "the NodePort");
}

#[test]
fn ranges_with_no_ipv4_prefix_admit_no_client() {
    let mut k = kernel(&ranges(&[]));
    let pkt = Packet::tcp((ADMITTED, 40_000), (LB_IP, 80), TCP_SYN, b"");
    assert_refused(&mut k, &pkt, "every client");
}

#[test]
fn a_flow_admitted_before_the_ranges_changed_goes_on_and_new_ones_follow_the_new_ranges() {
    let options = ranges(&["192.0.2.0/24"]);
    let mut k = kernel(&options);
    let syn = Packet::tcp((ADMITTED, 40_000), (LB_IP, 80), TCP_SYN, b"");
    assert_delivered(&mut k, &syn, "admitted");
    // The operator narrows the ranges to another network.
    let narrowed = ranges(&["198.18.0.0/15"]);
    let pods = [backend(POD, 8080)];
    for scope in [SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS] {
        k.services
            .upsert_with_options(
                key(LB_IP, 80, scope),
                &pods,
                "default/lb:http",
                0,
                &narrowed,
            )
            .unwrap();
    }
    let data = Packet::tcp((ADMITTED, 40_000), (LB_IP, 80), TCP_ACK, b"GET /");
    assert_delivered(&mut k, &data, "the established flow");
    let new = Packet::tcp((ADMITTED, 40_001), (LB_IP, 80), TCP_SYN, b"");
    assert_refused(&mut k, &new, "a new flow from the old range");
    // Ranges removed: every client again.
    for scope in [SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS] {
        k.services
            .upsert_frontend(key(LB_IP, 80, scope), &pods, "default/lb:http", 0)
            .unwrap();
    }
    let open = Packet::tcp((REFUSED, 40_002), (LB_IP, 80), TCP_SYN, b"");
    assert_delivered(&mut k, &open, "ranges lifted");
}

#[test]
fn a_pod_outside_the_ranges_is_dropped_at_the_load_balancer_ip() {
    let mut k = kernel(&ranges(&["192.0.2.0/24"]));
    let pod_client = Ipv4Addr::new(10, 244, 1, 9);
    let pkt = Packet::tcp((pod_client, 40_000), (LB_IP, 80), TCP_SYN, b"");
    let before = packets(&k, outcome::DROP_SOURCE_RANGE);
    let (verdict, _) = k.run(&pkt.bytes());
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(packets(&k, outcome::DROP_SOURCE_RANGE), before + 1);
    // Admitted when its address is listed.
    let mut k = kernel(&ranges(&["10.244.1.0/24"]));
    let (verdict, out) = k.run(&pkt.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT, "into the local backend");
    let expected = pkt.clone().with_dst(POD, 8080).with_macs(POD_MAC, VETH_MAC);
    assert_eq!(out, expected.bytes());
}

#[test]
fn xdp_leaves_a_refused_client_to_tc_without_recording_a_flow() {
    let mut k = kernel(&ranges(&["192.0.2.0/24"]));
    let refused = Packet::tcp((REFUSED, 40_000), (LB_IP, 80), TCP_SYN, b"");
    let (action, out) = k.run_xdp(&refused.bytes());
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, refused.bytes(), "untouched");
    assert!(
        k.conntrack.entries().unwrap().is_empty(),
        "no flow recorded"
    );
    assert_refused(&mut k, &refused, "then tc drops it");
}
