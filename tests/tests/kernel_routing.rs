//! The network side and cross-node forwarding, through BPF_PROG_TEST_RUN on
//! exact packet bytes: replies from a backend on another node are
//! translated back where the client lives, packets for another node's pod
//! CIDR follow the route map, and the node's own traffic is left alone.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ferry_agent::maps::{Endpoints, Routes};
use ferry_common::{Endpoint, PROTO_TCP, ROUTE_MODE_VXLAN, Route, outcome};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, TC_ACT_REDIRECT, backend, frontend},
    packet::{Packet, TCP_ACK, TCP_SYN, arp_request},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A backend on another node (pod CIDR 10.244.2.0/24).
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02];
const HOST_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0x01];

fn with_local_client(k: &Kernel) {
    let mut endpoints = Endpoints::open(k.pin_dir()).unwrap();
    endpoints
        .insert(
            CLIENT,
            Endpoint {
                ifindex: 1,
                flags: 0,
                pod_mac: POD_MAC,
                host_mac: HOST_MAC,
            },
        )
        .unwrap();
}

#[test]
fn reply_from_a_backend_on_another_node_is_translated_back_and_delivered() {
    let mut k = Kernel::load();
    with_local_client(&k);
    let key = frontend(VIP, 80, PROTO_TCP);
    k.services
        .upsert(key, &[backend(REMOTE_POD, 8080)])
        .unwrap();

    let syn = Packet::tcp((CLIENT, 40000), (VIP, 80), TCP_SYN, b"");
    let (verdict, out) = k.run(&syn.bytes());
    // No route to 10.244.2.0/24 in this test: the kernel gets it, DNATed.
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, syn.clone().with_dst(REMOTE_POD, 8080).bytes());

    let before = k.counters()[outcome::REVERSE_TRANSLATED as usize].packets;
    let syn_ack = Packet::tcp((REMOTE_POD, 8080), (CLIENT, 40000), TCP_SYN | TCP_ACK, b"");
    let (verdict, out) = k.run_from_network(&syn_ack.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered into the client pod");
    assert_eq!(
        out,
        syn_ack
            .clone()
            .with_src(VIP, 80)
            .with_macs(POD_MAC, HOST_MAC)
            .bytes(),
        "source back to the ClusterIP, checksums fixed, MACs of the pod's link"
    );
    assert_eq!(
        k.counters()[outcome::REVERSE_TRANSLATED as usize].packets,
        before + 1
    );

    // A pod on another node reaching a local pod directly: delivered as is.
    let direct = Packet::tcp((REMOTE_POD, 9999), (CLIENT, 8080), TCP_SYN, b"");
    let (verdict, out) = k.run_from_network(&direct.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, direct.clone().with_macs(POD_MAC, HOST_MAC).bytes());
}

#[test]
fn the_nodes_own_traffic_passes_the_network_side_untouched() {
    let mut k = Kernel::load();
    with_local_client(&k);
    let node_ip = Ipv4Addr::new(192, 168, 77, 11);
    for input in [
        Packet::tcp(
            (Ipv4Addr::new(192, 168, 77, 12), 40000),
            (node_ip, 22),
            TCP_ACK,
            b"x",
        )
        .bytes(),
        Packet::udp(
            (Ipv4Addr::new(192, 168, 77, 12), 40000),
            (node_ip, 4789),
            b"vxlan",
        )
        .bytes(),
        arp_request(),
        // Cut short: not ours to judge on the uplink.
        Packet::tcp((REMOTE_POD, 1), (CLIENT, 2), TCP_SYN, b"").bytes()[..40].to_vec(),
    ] {
        let (verdict, out) = k.run_from_network(&input);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, input);
    }
}

#[test]
fn packets_for_another_nodes_pods_follow_the_route_map() {
    let mut k = Kernel::load();
    let mut routes = Routes::open(k.pin_dir()).unwrap();
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
    routes.sync(&desired).unwrap();
    assert_eq!(routes.list().unwrap(), desired);

    // Covered by the route: encapsulated and redirected, bytes unchanged
    // (the VXLAN device adds the outer headers).
    let to_remote = Packet::tcp((CLIENT, 40000), (REMOTE_POD, 8080), TCP_SYN, b"");
    let (verdict, out) = k.run(&to_remote.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, to_remote.bytes());

    // Not covered by any route: the kernel decides.
    let elsewhere = Packet::tcp(
        (CLIENT, 40000),
        (Ipv4Addr::new(10, 244, 3, 5), 80),
        TCP_SYN,
        b"",
    );
    let (verdict, out) = k.run(&elsewhere.bytes());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, elsewhere.bytes());

    // The node left the cluster: its route goes, its pods are no longer sent.
    routes.sync(&BTreeMap::new()).unwrap();
    assert!(routes.list().unwrap().is_empty());
    let (verdict, _) = k.run(&to_remote.bytes());
    assert_eq!(verdict, TC_ACT_OK);
}
